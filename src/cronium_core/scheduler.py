"""The scheduler: turns schedules into jobs (ARCHITECTURE §6).

Each event and workflow row keeps ``next_fire_time``, the first fire time not yet handled.
A tick takes the due rows and, per row in one transaction, lists the fire times from there up
to now, lets the misfire policy (:func:`~cronium_core.schedules.plan_fires`) and the event's
overlap policy decide each one, and records every fire time in ``schedule_fires`` with what
happened to it (enqueued, skipped, missed) and why. The primary key of ``schedule_fires``
(owner, fire time) is what makes a fire time exactly one job when several schedulers run:
a second scheduler's insert conflicts and it enqueues nothing. No lock is held in memory.

Clock jumps: a backward jump finds nothing due (the stored next fire time lies ahead); a
forward jump makes the skipped-over fire times due, and the misfire policy decides them.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import anyio
import attrs
import sqlalchemy as sa
from anyio.abc import TaskStatus
from sqlalchemy.ext.asyncio import AsyncConnection

from . import schema
from .broker import Notice
from .datastore import workflow_from_dict
from .engine import RunEngine
from .events import Event, EventStatus, OverlapPolicy
from .jobs import JobStatus, Trigger
from .marshal import event_from_dict
from .schedules import MAX_FIRES_PER_STEP, FireDecision, Manual, fire_times, plan_fires
from .worker import default_worker_id

__all__ = ["Scheduler"]

log = logging.getLogger("cronium.scheduler")
F = schema.schedule_fires


@attrs.frozen
class FireRecord:
    owner_id: str
    fire_time: datetime
    status: str  #: enqueued | skipped | missed
    reason: str | None
    job_id: str | None
    backfilled: bool


@attrs.define(kw_only=True, eq=False)
class Scheduler:
    engine: RunEngine
    id: str = attrs.field(factory=lambda: "scheduler:" + default_worker_id())
    #: never sleep longer than this (a notice or a new schedule may come meanwhile)
    max_sleep: float = 30.0
    batch: int = 200
    #: unique-key conflicts seen (another scheduler recorded the same fire first)
    conflicts: int = 0
    #: notices to send once the current fire's transaction has committed
    _after_commit: list[Any] = attrs.field(init=False, factory=list)

    @property
    def store(self) -> Any:
        return self.engine.store

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        wake = anyio.Event()

        async def listen(*, task_status: TaskStatus[None]) -> None:
            nonlocal wake
            async with self.engine.broker.subscribe() as notices:
                task_status.started()
                async for notice in notices:
                    if notice.topic == "schedule.changed":
                        wake.set()

        async with anyio.create_task_group() as tg:
            await tg.start(listen, name="scheduler notices")
            task_status.started()
            while True:
                wake = anyio.Event()
                try:
                    next_time = await self.tick()
                except Exception:
                    log.exception("scheduler tick failed")
                    next_time = None
                delay = self.max_sleep
                if next_time is not None:
                    delay = min(delay, (next_time - self.engine.clock.now()).total_seconds())
                with anyio.move_on_after(max(delay, 0.01)):
                    await wake.wait()

    async def tick(self) -> datetime | None:
        """Handle everything due now; return the earliest next fire time (or None)."""
        now = self.engine.clock.now()
        for table, kind in ((schema.events, "event"), (schema.workflows, "workflow")):
            while True:
                async with self.store.read() as conn:
                    ids = list(
                        (
                            await conn.execute(
                                sa.select(table.c.id)
                                .where(
                                    table.c.status == EventStatus.ACTIVE.value,
                                    table.c.next_fire_time <= now,
                                )
                                .order_by(table.c.next_fire_time)
                                .limit(self.batch)
                            )
                        ).scalars()
                    )
                progressed = False
                for owner_id in ids:
                    progressed |= await self._fire(table, kind, owner_id, now)
                if len(ids) < self.batch or not progressed:
                    break
        async with self.store.read() as conn:
            nexts = [
                await conn.scalar(
                    sa.select(sa.func.min(t.c.next_fire_time)).where(
                        t.c.status == EventStatus.ACTIVE.value
                    )
                )
                for t in (schema.events, schema.workflows)
            ]
        times = [t for t in nexts if t is not None]
        return min(times) if times else None

    async def _fire(self, table: sa.Table, kind: str, owner_id: str, now: datetime) -> bool:
        self._after_commit = []
        started = 0
        async with self.store.begin() as conn:
            select = sa.select(table).where(table.c.id == owner_id)
            if self.store.is_postgres:
                select = select.with_for_update(skip_locked=True)
            row = (await conn.execute(select)).first()
            if row is None or row.next_fire_time is None or row.next_fire_time > now:
                return False  # another scheduler has it, or handled it already
            if row.status != EventStatus.ACTIVE.value:
                return False
            definition = dict(row.definition)
            definition["id"] = row.id
            target: Event | Any
            target = (
                event_from_dict(definition) if kind == "event" else workflow_from_dict(definition)
            )
            schedule = target.schedule
            if isinstance(schedule, Manual):
                await conn.execute(
                    sa.update(table).where(table.c.id == owner_id).values(next_fire_time=None)
                )
                return True
            anchor = row.created_at
            due = [row.next_fire_time]
            for t in fire_times(schedule, row.next_fire_time, anchor=anchor):
                if t > now or len(due) >= MAX_FIRES_PER_STEP:
                    break
                due.append(t)
            for decision in plan_fires(schedule, due, now):
                started += await self._decide(conn, kind, target, decision)
            following = next(iter(fire_times(schedule, due[-1], anchor=anchor)), None)
            await conn.execute(
                sa.update(table)
                .where(table.c.id == owner_id, table.c.next_fire_time == row.next_fire_time)
                .values(next_fire_time=following)
            )
        after, self._after_commit = self._after_commit, []
        for send in after:
            await send()
        if started:
            await self.engine.broker.publish(Notice("job.queued", {"n": started}))
        return True

    async def _decide(
        self, conn: AsyncConnection, kind: str, target: Any, decision: FireDecision
    ) -> bool:
        """Record one fire time; True when it started something."""
        status, reason = "enqueued", decision.reason
        if not decision.run:
            status = "missed"
        elif kind == "event":
            status, reason = await self._overlap(conn, target, reason)
        inserted = await self._record_fire(conn, kind, target.id, decision, status, reason)
        if not inserted:
            self.conflicts += 1
            log.debug(
                "fire %s of %s already recorded by another scheduler", decision.fire_time, target.id
            )
            return False
        if status != "enqueued":
            if status == "skipped":
                log.info("skipped fire %s of %s: %s", decision.fire_time, target.name, reason)
            return False
        job_id: str | None
        if kind == "event":
            job = await self.engine.queue.enqueue(
                target,
                trigger=Trigger.SCHEDULE,
                fire_time=decision.fire_time,
                backfilled=decision.backfilled,
                conn=conn,
            )
            job_id = job.id
        else:
            run = await self.engine.start_workflow_run(
                target, trigger=Trigger.SCHEDULE, fire_time=decision.fire_time, conn=conn
            )
            job_id = run.id
        await conn.execute(
            sa.update(F)
            .where(F.c.owner_id == target.id, F.c.fire_time == decision.fire_time)
            .values(job_id=job_id)
        )
        return True

    async def _overlap(
        self, conn: AsyncConnection, event: Event, reason: str | None
    ) -> tuple[str, str | None]:
        policy = event.overlap
        if policy in (OverlapPolicy.ALLOW, OverlapPolicy.QUEUE_ALL):
            return "enqueued", reason
        active = await self.engine.queue.active_for_event(event.id, conn)
        if not active:
            return "enqueued", reason
        waiting = [j for j in active if j.status is JobStatus.QUEUED]
        if policy is OverlapPolicy.SKIP:
            return "skipped", f"overlap: run {active[0].id} is still {active[0].status}"
        if policy is OverlapPolicy.BUFFER_ONE:
            if waiting:
                return "skipped", f"overlap: run {waiting[0].id} is already waiting"
            return "enqueued", reason
        # CANCEL_RUNNING: stop what runs (its worker kills it), end what waits; through the
        # engine, so counters, actions and workflows follow as for any cancel
        for job in active:
            _, after = await self.engine.cancel_in(conn, job.id)
            self._after_commit.append(after)
        return "enqueued", f"overlap: cancelled {len(active)} earlier run(s)"

    async def _record_fire(
        self,
        conn: AsyncConnection,
        kind: str,
        owner_id: str,
        decision: FireDecision,
        status: str,
        reason: str | None,
    ) -> bool:
        values = {
            "owner_id": owner_id,
            "fire_time": decision.fire_time,
            "owner_kind": kind,
            "status": status,
            "reason": reason,
            "backfilled": decision.backfilled and status == "enqueued",
            "scheduler": self.id,
            "recorded_at": self.engine.clock.now(),
        }
        if self.store.is_postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        result = await conn.execute(insert(F).values(**values).on_conflict_do_nothing())
        return bool(result.rowcount)

    async def fires(self, owner_id: str) -> list[FireRecord]:
        """Every recorded fire time of an event or workflow, oldest first."""
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(F).where(F.c.owner_id == owner_id).order_by(F.c.fire_time)
                )
            ).all()
        return [
            FireRecord(r.owner_id, r.fire_time, r.status, r.reason, r.job_id, bool(r.backfilled))
            for r in rows
        ]
