"""What happens around a job: starting and advancing workflow runs, conditional actions,
event run counters, and the notices that wake workers and waiters.

Everything that follows from a job's end is written in the same transaction as the job's
final status, and that transaction is fenced on the attempt's lease. So a workflow advances
once per node, a join runs at most once, and a conditional action fires once per run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import schema
from .broker import EventBroker, Notice
from .datastore import DataStore, new_id, workflow_from_dict, workflow_to_dict
from .errors import EventNotFound, NotFound, ValidationError
from .events import Event, EventStatus, When
from .executors import UNSET
from .jobs import Job, JobStatus, Trigger
from .queue import FinishResult, JobQueue, ReapResult
from .workflows import EdgeKind, NodeState, NodeStatus, Workflow, edge_fires, plan

__all__ = ["NodeRun", "RunEngine", "WorkflowRun", "WorkflowRunNotFound"]

R = schema.workflow_runs
N = schema.workflow_node_runs


class WorkflowRunNotFound(NotFound):
    kind = "workflow run"


@attrs.frozen(kw_only=True)
class NodeRun:
    node_id: str
    status: NodeStatus
    job_id: str | None
    output: Any
    condition: bool | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


@attrs.frozen(kw_only=True)
class WorkflowRun:
    id: str
    workflow_id: str
    status: str  #: running | succeeded | failed | cancelled
    trigger: Trigger
    input: Any
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    nodes: dict[str, NodeRun]

    @property
    def finished(self) -> bool:
        return self.status != "running"

    @property
    def duration(self) -> float | None:
        return (self.finished_at - self.created_at).total_seconds() if self.finished_at else None


_WHEN_TO_EDGE = {
    When.ON_SUCCESS: EdgeKind.ON_SUCCESS,
    When.ON_FAILURE: EdgeKind.ON_FAILURE,
    When.ALWAYS: EdgeKind.ALWAYS,
    When.ON_CONDITION: EdgeKind.ON_CONDITION,
}


@attrs.define(kw_only=True, eq=False)
class RunEngine:
    store: DataStore
    queue: JobQueue
    broker: EventBroker

    @property
    def clock(self) -> Any:
        return self.store.clock

    # -- starting work ------------------------------------------------------------------

    async def enqueue(self, event: Event, **kwargs: Any) -> Job:
        """Queue a run of an event and wake a worker."""
        job = await self.queue.enqueue(event, **kwargs)
        if kwargs.get("conn") is None:
            await self.notify_queued([job])
        return job

    async def notify_queued(self, jobs: list[Job]) -> None:
        if jobs:
            await self.broker.publish(Notice("job.queued", {"n": len(jobs)}))

    async def start_workflow_run(
        self,
        workflow: Workflow,
        *,
        input: Any = None,
        trigger: Trigger = Trigger.MANUAL,
        fire_time: datetime | None = None,
        conn: AsyncConnection | None = None,
    ) -> WorkflowRun:
        run_id = new_id()
        queued: list[Job] = []
        now = self.clock.now()
        own = conn is None
        async with self.store.begin() if conn is None else _nullcontext(conn) as c:
            await c.execute(
                sa.insert(R).values(
                    id=run_id,
                    workflow_id=workflow.id,
                    status="running",
                    definition=workflow_to_dict(workflow),
                    trigger=Trigger(trigger).value,
                    input=input if input is not None else {},
                    fire_time=fire_time,
                    created_at=now,
                )
            )
            await c.execute(
                sa.insert(N),
                [
                    {"run_id": run_id, "node_id": n.id, "status": NodeStatus.PENDING.value}
                    for n in workflow.nodes
                ],
            )
            queued, _ = await self._advance(c, run_id)
            run = await self._load_run(c, run_id)
        if own:
            await self.notify_queued(queued)
            if run.finished:
                await self.broker.publish(Notice("run.finished", {"id": run.id}))
        return run

    # -- a job ended ------------------------------------------------------------------

    async def finish_job(
        self,
        job_id: str,
        lease_id: str,
        *,
        status: JobStatus,
        exit_code: int | None = None,
        error: str | None = None,
        output: Any = UNSET,
        condition: bool | None = None,
    ) -> FinishResult | None:
        """Record an attempt's end and everything that follows from it, in one transaction."""
        queued: list[Job] = []
        run_done: str | None = None
        async with self.store.begin() as conn:
            result = await self.queue.finish(
                job_id,
                lease_id,
                status=status,
                exit_code=exit_code,
                error=error,
                output=output,
                condition=condition,
                conn=conn,
            )
            if result is not None and not result.retrying:
                queued, run_done = await self._after_job(conn, result.job)
        if result is not None:
            await self._publish_after(result.job, queued, run_done, result.retrying)
        return result

    async def reap(self) -> ReapResult:
        queued: list[tuple[Job, list[Job], str | None]] = []
        async with self.store.begin() as conn:
            result = await self.queue.reap(conn=conn)
            for job in result.failed:
                q, done = await self._after_job(conn, job)
                queued.append((job, q, done))
        for job, q, done in queued:
            await self._publish_after(job, q, done, retrying=False)
        if result.requeued:
            await self.notify_queued(result.requeued)
        return result

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one ends now; a running one is stopped by its worker."""
        async with self.store.begin() as conn:
            job, after = await self.cancel_in(conn, job_id)
        await after()
        return job

    async def cancel_in(
        self, conn: AsyncConnection, job_id: str
    ) -> tuple[Job, Callable[[], Awaitable[None]]]:
        """Cancel inside the caller's transaction; await the returned function after the
        commit to send the notices."""
        before = await self.queue.get(job_id, conn)
        job = await self.queue.request_cancel(job_id, conn=conn)
        queued: list[Job] = []
        done: str | None = None
        ended_now = before.status is JobStatus.QUEUED and job.status is JobStatus.CANCELLED
        if ended_now:
            queued, done = await self._after_job(conn, job)

        async def after() -> None:
            if job.status is JobStatus.RUNNING:
                await self.broker.publish(Notice("job.cancel", {"id": job.id}))
            elif ended_now:
                await self._publish_after(job, queued, done, retrying=False)

        return job, after

    async def _publish_after(
        self, job: Job, queued: list[Job], run_done: str | None, retrying: bool
    ) -> None:
        if retrying:
            await self.broker.publish(Notice("job.queued", {"n": 1}))
            return
        await self.broker.publish(
            Notice("job.finished", {"id": job.id, "status": job.status.value})
        )
        await self.notify_queued(queued)
        if run_done:
            await self.broker.publish(Notice("run.finished", {"id": run_done}))

    async def _after_job(self, conn: AsyncConnection, job: Job) -> tuple[list[Job], str | None]:
        """Counters, conditional actions, workflow advance for a job that reached its end."""
        queued: list[Job] = []
        definition = await self._count_run(conn, job)
        if job.trigger is not Trigger.WORKFLOW and definition.get("conditional_actions"):
            queued += await self._conditional_actions(conn, job)
        run_done = None
        if job.workflow_run_id and job.node_id:
            await conn.execute(
                sa.update(N)
                .where(N.c.run_id == job.workflow_run_id, N.c.node_id == job.node_id)
                .values(
                    status=NodeStatus.from_job(job.status).value,
                    output=job.output,
                    condition=job.condition,
                    error=job.error,
                    finished_at=job.finished_at,
                )
            )
            started, ended = await self._advance(conn, job.workflow_run_id)
            queued += started
            if ended:
                run_done = job.workflow_run_id
        return queued, run_done

    async def _count_run(self, conn: AsyncConnection, job: Job) -> dict[str, Any]:
        """Count the run on its event; returns the event's stored definition ({} if gone)."""
        E = schema.events
        ok = job.status is JobStatus.SUCCEEDED
        row = (
            await conn.execute(
                sa.update(E)
                .where(E.c.id == job.event_id)
                .values(
                    runs_total=E.c.runs_total + 1,
                    runs_succeeded=E.c.runs_succeeded + (1 if ok else 0),
                    runs_failed=E.c.runs_failed + (0 if ok else 1),
                    last_run_at=job.finished_at,
                )
                .returning(E.c.runs_total, E.c.definition)
            )
        ).first()
        if row is None:
            return {}
        max_runs = row.definition.get("max_runs")
        if max_runs is not None and row.runs_total >= max_runs:
            definition = dict(row.definition, status=EventStatus.PAUSED.value)
            await conn.execute(
                sa.update(E)
                .where(E.c.id == job.event_id)
                .values(status=EventStatus.PAUSED.value, definition=definition, next_fire_time=None)
            )
        return dict(row.definition)

    async def _conditional_actions(self, conn: AsyncConnection, job: Job) -> list[Job]:
        try:
            event = await self.store.get_event(job.event_id, conn)
        except EventNotFound:
            return []
        queued: list[Job] = []
        ok = job.status is JobStatus.SUCCEEDED
        for action in event.conditional_actions:
            if not edge_fires(_WHEN_TO_EDGE[action.when], ok, job.condition):
                continue
            try:
                target = await self.store.get_event(action.run_event, conn)
            except EventNotFound:
                continue  # the target was deleted after the action was saved
            queued.append(
                await self.queue.enqueue(
                    target, input=job.output, trigger=Trigger.ACTION, conn=conn
                )
            )
        return queued

    async def _advance(self, conn: AsyncConnection, run_id: str) -> tuple[list[Job], bool]:
        """Apply the plan for the run's current node states: the jobs started, and whether
        the run has ended."""
        lock = sa.select(R).where(R.c.id == run_id)
        if self.store.is_postgres:
            lock = lock.with_for_update()
        run_row = (await conn.execute(lock)).one()
        if run_row.status != "running":
            return [], True
        workflow = workflow_from_dict(run_row.definition)
        node_rows = (await conn.execute(sa.select(N).where(N.c.run_id == run_id))).all()
        states = {
            r.node_id: NodeState(status=r.status, output=r.output, condition=r.condition)
            for r in node_rows
        }
        step = plan(workflow, states, run_row.input)
        now = self.clock.now()
        queued: list[Job] = []
        for node_id, node_input in step.start.items():
            node = workflow.node(node_id)
            try:
                event = await self.store.get_event(node.event_id, conn)
            except EventNotFound:
                await conn.execute(
                    sa.update(N)
                    .where(N.c.run_id == run_id, N.c.node_id == node_id)
                    .values(
                        status=NodeStatus.FAILED.value,
                        error="event was deleted",
                        started_at=now,
                        finished_at=now,
                    )
                )
                more, ended = await self._advance(conn, run_id)
                return queued + more, ended
            job = await self.queue.enqueue(
                event,
                input=node_input,
                trigger=Trigger.WORKFLOW,
                workflow_run_id=run_id,
                node_id=node_id,
                conn=conn,
            )
            queued.append(job)
            await conn.execute(
                sa.update(N)
                .where(N.c.run_id == run_id, N.c.node_id == node_id)
                .values(status=NodeStatus.RUNNING.value, job_id=job.id, started_at=now)
            )
        if step.skip:
            await conn.execute(
                sa.update(N)
                .where(N.c.run_id == run_id, N.c.node_id.in_(step.skip))
                .values(status=NodeStatus.SKIPPED.value)
            )
        if step.finished:
            error = None
            if step.failed:
                failed = sorted(n for n, s in states.items() if s.status is NodeStatus.FAILED)
                error = "unhandled failure in " + ", ".join(failed)
            await conn.execute(
                sa.update(R)
                .where(R.c.id == run_id)
                .values(
                    status="failed" if step.failed else "succeeded", finished_at=now, error=error
                )
            )
        return queued, step.finished

    # -- reading runs -----------------------------------------------------------------

    async def get_run(self, run_id: str) -> WorkflowRun:
        async with self.store.read() as conn:
            return await self._load_run(conn, run_id)

    async def _load_run(self, conn: AsyncConnection, run_id: str) -> WorkflowRun:
        row = (await conn.execute(sa.select(R).where(R.c.id == run_id))).first()
        if row is None:
            raise WorkflowRunNotFound(run_id)
        nodes = (await conn.execute(sa.select(N).where(N.c.run_id == run_id))).all()
        return WorkflowRun(
            id=row.id,
            workflow_id=row.workflow_id,
            status=row.status,
            trigger=Trigger(row.trigger),
            input=row.input,
            error=row.error,
            created_at=row.created_at,
            finished_at=row.finished_at,
            nodes={
                n.node_id: NodeRun(
                    node_id=n.node_id,
                    status=NodeStatus(n.status),
                    job_id=n.job_id,
                    output=n.output,
                    condition=n.condition,
                    error=n.error,
                    started_at=n.started_at,
                    finished_at=n.finished_at,
                )
                for n in nodes
            },
        )

    async def list_runs(self, workflow_id: str | None = None, limit: int = 50) -> list[WorkflowRun]:
        query = sa.select(R.c.id).order_by(R.c.created_at.desc()).limit(limit)
        if workflow_id is not None:
            query = query.where(R.c.workflow_id == workflow_id)
        async with self.store.read() as conn:
            ids = list((await conn.execute(query)).scalars())
            return [await self._load_run(conn, i) for i in ids]


class _nullcontext:
    def __init__(self, value: AsyncConnection) -> None:
        self.value = value

    async def __aenter__(self) -> AsyncConnection:
        return self.value

    async def __aexit__(self, *exc: object) -> None:
        return None


def check_action_chain(events: dict[str, Event], changed: Event) -> None:
    """Refuse conditional actions that would loop (A runs B runs A)."""
    graph = {e.id: [a.run_event for a in e.conditional_actions] for e in events.values()}
    graph[changed.id] = [a.run_event for a in changed.conditional_actions]
    by_name = {e.name: e.id for e in events.values()}
    by_name[changed.name] = changed.id

    def resolve(ref: str) -> str | None:
        return ref if ref in graph else by_name.get(ref)

    path: list[str] = []

    def visit(node: str) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            names = {e.id: e.name for e in events.values()} | {changed.id: changed.name}
            raise ValidationError(
                "conditional_actions", "would loop: " + " -> ".join(names.get(n, n) for n in cycle)
            )
        path.append(node)
        for ref in graph.get(node, []):
            target = resolve(ref)
            if target is not None:
                visit(target)
        path.pop()

    visit(changed.id)
