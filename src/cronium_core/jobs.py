"""Jobs (one run of an event), their log lines, and what a finished job looks like."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs

__all__ = ["Job", "JobStatus", "LogLine", "Trigger"]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


FINISHED_STATUSES = tuple(s for s in JobStatus if s.finished)


class Trigger(enum.StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    WEBHOOK = "webhook"
    WORKFLOW = "workflow"
    ACTION = "action"  #: a conditional action of another event


class Stream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    SYSTEM = "system"


@attrs.frozen(kw_only=True)
class Job:
    id: str
    event_id: str
    status: JobStatus = attrs.field(converter=JobStatus)
    trigger: Trigger = attrs.field(converter=Trigger)
    input: Any = attrs.field(factory=dict)
    priority: int = 0
    attempt: int = 0
    max_attempts: int = 1
    run_after: datetime
    created_at: datetime
    executor: str = "local"
    lease_owner: str | None = None
    lease_id: str | None = None
    lease_expires: datetime | None = None
    heartbeat_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    output: Any = None
    condition: bool | None = None
    error: str | None = None
    cancel_requested: bool = False
    fire_time: datetime | None = None
    workflow_run_id: str | None = None
    node_id: str | None = None
    idempotency_key: str | None = None
    timeout: float = 3600.0
    backfilled: bool = False
    #: set when a log line's body was cut (flood guard) so readers know the log is partial
    log_truncated: bool = False

    @property
    def duration(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


@attrs.frozen(kw_only=True)
class LogLine:
    job_id: str
    seq: int
    stream: Stream = attrs.field(converter=Stream)
    time: datetime
    text: str
    attempt: int = 1
