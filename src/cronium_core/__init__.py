"""Cronium core: events, schedules, the durable job queue, workflows, the worker."""

from __future__ import annotations

from .clock import Clock, FakeClock, SystemClock
from .cronium import Cronium
from .engine import NodeRun, WorkflowRun
from .errors import (
    Conflict,
    CroniumError,
    EventNotFound,
    ExecutorNotFound,
    InvalidSchedule,
    InvalidWorkflow,
    JobNotFound,
    JobWaitTimeout,
    LeaseLost,
    NotFound,
    SchemaVersionError,
    ValidationError,
    WorkflowNotFound,
)
from .events import (
    ConditionalAction,
    Event,
    EventStatus,
    HttpRequest,
    OverlapPolicy,
    RetryPolicy,
    Script,
    ToolAction,
    When,
)
from .executors import ExecutionRequest, Executor, LogSink, Outcome
from .hookspecs import hookimpl
from .jobs import Job, JobStatus, LogLine, Stream, Trigger
from .schedules import Cron, Interval, Manual, MisfirePolicy, Once
from .workflows import Edge, EdgeKind, Node, NodeStatus, Workflow

__all__ = [
    "Clock",
    "ConditionalAction",
    "Conflict",
    "Cron",
    "Cronium",
    "CroniumError",
    "Edge",
    "EdgeKind",
    "Event",
    "EventNotFound",
    "EventStatus",
    "ExecutionRequest",
    "Executor",
    "ExecutorNotFound",
    "FakeClock",
    "HttpRequest",
    "Interval",
    "InvalidSchedule",
    "InvalidWorkflow",
    "Job",
    "JobNotFound",
    "JobStatus",
    "JobWaitTimeout",
    "LeaseLost",
    "LogLine",
    "LogSink",
    "Manual",
    "MisfirePolicy",
    "Node",
    "NodeRun",
    "NodeStatus",
    "NotFound",
    "Once",
    "Outcome",
    "OverlapPolicy",
    "RetryPolicy",
    "SchemaVersionError",
    "Script",
    "Stream",
    "SystemClock",
    "ToolAction",
    "Trigger",
    "ValidationError",
    "When",
    "Workflow",
    "WorkflowNotFound",
    "WorkflowRun",
    "hookimpl",
]
