"""The durable job queue (ARCHITECTURE §5).

Delivery is at-least-once with leases. A claim moves a job to ``running``, bumps its attempt,
and gives it a fresh ``lease_id`` and a lease expiry; the worker heartbeats to extend it. Every
later write of that attempt (output, condition, finish) is fenced on the ``lease_id``: once the
reaper has handed the job to another attempt, a zombie's writes change nothing. A result is
therefore recorded once.

On PostgreSQL candidates are picked with ``FOR UPDATE SKIP LOCKED`` and per-event concurrency
limits are made exact with transaction-scoped advisory locks taken in key order. On SQLite
every write transaction is ``BEGIN IMMEDIATE``, which serializes claims.

Methods that change a job take an optional ``conn`` so that a caller can do them inside its
own transaction (transactional enqueue, finish + workflow advance in one commit).
"""

from __future__ import annotations

import builtins
import zlib
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import schema
from .datastore import DataStore, new_id
from .errors import JobNotFound, ValidationError
from .events import Event
from .executors import UNSET
from .jobs import FINISHED_STATUSES, Job, JobStatus, LogLine, Stream, Trigger

__all__ = ["FinishResult", "Heartbeat", "JobQueue", "ReapResult"]

J = schema.jobs
#: cap on the stored log of one job; past it lines are dropped and a marker is stored
DEFAULT_MAX_LOG_BYTES = 16 * 1024 * 1024


@attrs.frozen
class Heartbeat:
    alive: bool  #: False: the lease is gone (reaped, re-claimed, cancelled while queued)
    cancel_requested: bool


@attrs.frozen
class FinishResult:
    job: Job
    retrying: bool  #: the attempt failed and the job went back to the queue


@attrs.frozen
class ReapResult:
    requeued: builtins.list[Job]
    failed: builtins.list[Job]


def _job(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        event_id=m["event_id"],
        status=m["status"],
        trigger=m["trigger"],
        input=m["input"] if m["input"] is not None else {},
        priority=m["priority"],
        attempt=m["attempt"],
        max_attempts=m["max_attempts"],
        run_after=m["run_after"],
        created_at=m["created_at"],
        executor=m["executor"],
        lease_owner=m["lease_owner"],
        lease_id=m["lease_id"],
        lease_expires=m["lease_expires"],
        heartbeat_at=m["heartbeat_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        exit_code=m["exit_code"],
        output=m["output"],
        condition=m["condition"],
        error=m["error"],
        cancel_requested=bool(m["cancel_requested"]),
        fire_time=m["fire_time"],
        workflow_run_id=m["workflow_run_id"],
        node_id=m["node_id"],
        idempotency_key=m["idempotency_key"],
        timeout=m["timeout"],
        backfilled=bool(m["backfilled"]),
        log_truncated=bool(m["log_truncated"]),
    )


def _backoff(base: float, cap: float, attempt: int) -> float:
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


@attrs.define(kw_only=True, eq=False)
class JobQueue:
    store: DataStore
    #: seconds a claim lasts without a heartbeat
    lease_seconds: float = 30.0
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES

    @property
    def clock(self) -> Any:
        return self.store.clock

    def _lease_time(self, seconds: float = 0.0) -> Any:
        """``now + seconds`` for lease bookkeeping, as SQL: the database's clock unless the
        store's clock is authoritative (tests). On SQLite "the database" is this host."""
        if self.clock.authoritative:
            return sa.literal(self.clock.now() + timedelta(seconds=seconds), schema.UTCDateTime())
        if self.store.is_postgres:
            return sa.func.statement_timestamp(type_=schema.UTCDateTime()) + sa.literal(
                timedelta(seconds=seconds), sa.Interval()
            )
        return sa.func.strftime(
            "%Y-%m-%d %H:%M:%f", "now", f"{seconds:+.3f} seconds", type_=schema.UTCDateTime()
        )

    @asynccontextmanager
    async def _tx(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if conn is not None:
            yield conn
        else:
            async with self.store.begin() as own:
                yield own

    # -- enqueue ------------------------------------------------------------------------

    async def enqueue(
        self,
        event: Event,
        *,
        input: Any = None,
        trigger: Trigger = Trigger.MANUAL,
        priority: int | None = None,
        run_after: datetime | None = None,
        idempotency_key: str | None = None,
        fire_time: datetime | None = None,
        backfilled: bool = False,
        workflow_run_id: str | None = None,
        node_id: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> Job:
        """Add a run of ``event``. With an ``idempotency_key`` already used, returns the job
        made the first time instead of a new one (decided by a unique index)."""
        if not event.id:
            raise ValidationError("event", "must be stored before it can run")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
            raise ValidationError("idempotency_key", "must be 1-200 characters")
        now = self.clock.now()
        values = {
            "id": new_id(),
            "event_id": event.id,
            "status": JobStatus.QUEUED.value,
            "trigger": Trigger(trigger).value,
            "input": input if input is not None else {},
            "priority": event.priority if priority is None else priority,
            "attempt": 0,
            "max_attempts": event.retry.max_attempts,
            "backoff_base": event.retry.backoff_base,
            "backoff_max": event.retry.backoff_max,
            "timeout": event.timeout,
            "executor": event.executor,
            "run_after": run_after or now,
            "created_at": now,
            "concurrency_key": event.id if event.concurrency_limit is not None else None,
            "concurrency_limit": event.concurrency_limit,
            "fire_time": fire_time,
            "backfilled": backfilled,
            "workflow_run_id": workflow_run_id,
            "node_id": node_id,
            "idempotency_key": idempotency_key,
        }
        async with self._tx(conn) as c:
            if idempotency_key is None:
                row = (await c.execute(sa.insert(J).values(**values).returning(J))).one()
                return _job(row)
            insert = self._insert_ignoring_conflict(values)
            row = (await c.execute(insert.returning(J))).first()
            if row is None:
                row = (
                    await c.execute(sa.select(J).where(J.c.idempotency_key == idempotency_key))
                ).one()
            return _job(row)

    def _insert_ignoring_conflict(self, values: dict[str, Any]) -> Any:
        if self.store.is_postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return (
                pg_insert(J)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["idempotency_key"])
            )
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return (
            sqlite_insert(J)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )

    # -- claim, heartbeat ---------------------------------------------------------------

    async def claim(
        self, worker_id: str, limit: int = 1, *, executors: Collection[str] | None = None
    ) -> builtins.list[Job]:
        """Claim up to ``limit`` due jobs, highest priority first, then oldest ``run_after``."""
        if limit < 1:
            return []
        now = self.clock.now()
        running = J.alias("running")
        busy = (
            sa.select(sa.func.count())
            .select_from(running)
            .where(
                running.c.concurrency_key == J.c.concurrency_key,
                running.c.status == JobStatus.RUNNING.value,
            )
            .scalar_subquery()
        )
        query = (
            sa.select(J.c.id, J.c.concurrency_key, J.c.concurrency_limit)
            .where(
                J.c.status == JobStatus.QUEUED.value,
                J.c.run_after <= now,
                sa.or_(J.c.concurrency_limit.is_(None), busy < J.c.concurrency_limit),
            )
            # fire_time keeps catch-up runs queued in one tick in slot order
            .order_by(
                J.c.priority.desc(),
                J.c.run_after,
                J.c.created_at,
                J.c.fire_time.asc().nulls_last(),
                J.c.id,
            )
            .limit(limit)
        )
        if executors is not None:
            query = query.where(J.c.executor.in_(list(executors)))
        if self.store.is_postgres:
            query = query.with_for_update(skip_locked=True, of=J)
        async with self.store.begin() as conn:
            candidates = (await conn.execute(query)).all()
            if not candidates:
                return []
            chosen = await self._respect_concurrency(conn, candidates)
            if not chosen:
                return []
            # one fresh lease id per claimed row: this claim's batch id + the job id
            batch = new_id()
            rows = (
                await conn.execute(
                    sa.update(J)
                    .where(J.c.id.in_(chosen), J.c.status == JobStatus.QUEUED.value)
                    .values(
                        status=JobStatus.RUNNING.value,
                        attempt=J.c.attempt + 1,
                        lease_owner=worker_id,
                        lease_id=sa.literal(batch + ":", sa.String) + J.c.id,
                        lease_expires=self._lease_time(self.lease_seconds),
                        heartbeat_at=now,
                        started_at=now,
                    )
                    .returning(J)
                )
            ).all()
            jobs = [_job(row) for row in rows]
        order = {job_id: i for i, job_id in enumerate(chosen)}
        jobs.sort(key=lambda j: order[j.id])
        return jobs

    async def _respect_concurrency(
        self, conn: AsyncConnection, candidates: Sequence[Any]
    ) -> builtins.list[str]:
        keys = sorted({c.concurrency_key for c in candidates if c.concurrency_limit is not None})
        if not keys:
            return [c.id for c in candidates]
        if self.store.is_postgres:
            # serialize claimers per key (in key order: no deadlock), then count afresh
            for key in keys:
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:k)"),
                    {"k": zlib.crc32(key.encode()) - 2**31},
                )
        rows = await conn.execute(
            sa.select(J.c.concurrency_key, sa.func.count())
            .where(J.c.concurrency_key.in_(keys), J.c.status == JobStatus.RUNNING.value)
            .group_by(J.c.concurrency_key)
        )
        counts: dict[str, int] = {key: n for key, n in rows.all()}
        chosen = []
        for c in candidates:
            if c.concurrency_limit is None:
                chosen.append(c.id)
            elif counts.get(c.concurrency_key, 0) < c.concurrency_limit:
                counts[c.concurrency_key] = counts.get(c.concurrency_key, 0) + 1
                chosen.append(c.id)
        return chosen

    async def heartbeat(self, job_id: str, lease_id: str) -> Heartbeat:
        now = self.clock.now()
        async with self.store.begin() as conn:
            row = (
                await conn.execute(
                    sa.update(J)
                    .where(
                        J.c.id == job_id,
                        J.c.lease_id == lease_id,
                        J.c.status == JobStatus.RUNNING.value,
                    )
                    .values(
                        heartbeat_at=now,
                        lease_expires=self._lease_time(self.lease_seconds),
                    )
                    .returning(J.c.cancel_requested)
                )
            ).first()
        if row is None:
            return Heartbeat(alive=False, cancel_requested=True)
        return Heartbeat(alive=True, cancel_requested=bool(row.cancel_requested))

    # -- results ------------------------------------------------------------------------

    async def set_output(self, job_id: str, lease_id: str, output: Any) -> bool:
        return await self._set_running_field(job_id, lease_id, output=output)

    async def set_condition(self, job_id: str, lease_id: str, condition: bool) -> bool:
        return await self._set_running_field(job_id, lease_id, condition=bool(condition))

    async def _set_running_field(self, job_id: str, lease_id: str, **values: Any) -> bool:
        async with self.store.begin() as conn:
            result = await conn.execute(
                sa.update(J)
                .where(
                    J.c.id == job_id,
                    J.c.lease_id == lease_id,
                    J.c.status == JobStatus.RUNNING.value,
                )
                .values(**values)
            )
        return bool(result.rowcount)

    async def finish(
        self,
        job_id: str,
        lease_id: str,
        *,
        status: JobStatus,
        exit_code: int | None = None,
        error: str | None = None,
        output: Any = UNSET,
        condition: bool | None = None,
        conn: AsyncConnection | None = None,
    ) -> FinishResult | None:
        """Record how an attempt ended. ``None`` when the attempt was fenced (its lease is
        gone): nothing is written. A failed, timed-out attempt with attempts left goes back to
        the queue after its backoff instead (``retrying``)."""
        if not status.finished:
            raise ValueError(f"finish() needs a final status, not {status}")
        now = self.clock.now()
        async with self._tx(conn) as c:
            select = sa.select(J).where(J.c.id == job_id)
            if self.store.is_postgres:
                select = select.with_for_update()
            row = (await c.execute(select)).first()
            if row is None:
                raise JobNotFound(job_id)
            current = _job(row)
            if current.status is not JobStatus.RUNNING or current.lease_id != lease_id:
                return None
            values: dict[str, Any] = {"exit_code": exit_code, "error": error}
            if output is not UNSET:
                values["output"] = output
            if condition is not None:
                values["condition"] = condition
            retry = (
                status in (JobStatus.FAILED, JobStatus.TIMED_OUT)
                and current.attempt < current.max_attempts
                and not current.cancel_requested
            )
            if retry:
                delay = _backoff(row.backoff_base, row.backoff_max, current.attempt)
                values.update(
                    status=JobStatus.QUEUED.value,
                    run_after=now + timedelta(seconds=delay),
                    lease_owner=None,
                    lease_id=None,
                    lease_expires=None,
                )
            else:
                values.update(
                    status=status.value, finished_at=now, lease_expires=None, lease_id=None
                )
            updated = (
                await c.execute(
                    sa.update(J)
                    .where(J.c.id == job_id, J.c.lease_id == lease_id)
                    .values(**values)
                    .returning(J)
                )
            ).one()
        return FinishResult(job=_job(updated), retrying=retry)

    async def release(self, job_id: str, lease_id: str) -> bool:
        """Give a running attempt back without counting it (the worker is shutting down)."""
        async with self.store.begin() as conn:
            result = await conn.execute(
                sa.update(J)
                .where(
                    J.c.id == job_id,
                    J.c.lease_id == lease_id,
                    J.c.status == JobStatus.RUNNING.value,
                )
                .values(
                    status=JobStatus.QUEUED.value,
                    attempt=J.c.attempt - 1,
                    lease_owner=None,
                    lease_id=None,
                    lease_expires=None,
                    run_after=self.clock.now(),
                )
            )
        return bool(result.rowcount)

    async def request_cancel(self, job_id: str, conn: AsyncConnection | None = None) -> Job:
        """Cancel: a queued job ends at once; a running one is flagged and its worker stops it."""
        now = self.clock.now()
        async with self._tx(conn) as c:
            row = (
                await c.execute(
                    sa.update(J)
                    .where(J.c.id == job_id, J.c.status == JobStatus.QUEUED.value)
                    .values(
                        status=JobStatus.CANCELLED.value,
                        cancel_requested=True,
                        finished_at=now,
                        error="cancelled before it started",
                    )
                    .returning(J)
                )
            ).first()
            if row is None:
                row = (
                    await c.execute(
                        sa.update(J)
                        .where(J.c.id == job_id, J.c.status == JobStatus.RUNNING.value)
                        .values(cancel_requested=True)
                        .returning(J)
                    )
                ).first()
            if row is None:
                row = (await c.execute(sa.select(J).where(J.c.id == job_id))).first()
                if row is None:
                    raise JobNotFound(job_id)
        return _job(row)

    async def reap(self, conn: AsyncConnection | None = None) -> ReapResult:
        """Return jobs whose lease expired (their worker is gone) to the queue, or fail them
        when their attempts are spent."""
        now = self.clock.now()
        requeued: builtins.list[Job] = []
        failed: builtins.list[Job] = []
        async with self._tx(conn) as c:
            select = sa.select(J).where(
                J.c.status == JobStatus.RUNNING.value, J.c.lease_expires < self._lease_time()
            )
            if self.store.is_postgres:
                select = select.with_for_update(skip_locked=True)
            for row in (await c.execute(select)).all():
                job = _job(row)
                reason = f"worker {job.lease_owner} lost (lease expired)"
                if job.attempt < job.max_attempts and not job.cancel_requested:
                    delay = _backoff(row.backoff_base, row.backoff_max, job.attempt)
                    values: dict[str, Any] = dict(
                        status=JobStatus.QUEUED.value,
                        run_after=now + timedelta(seconds=delay),
                        error=reason,
                    )
                    target = requeued
                else:
                    status = JobStatus.CANCELLED if job.cancel_requested else JobStatus.FAILED
                    values = dict(status=status.value, finished_at=now, error=reason)
                    target = failed
                new = (
                    await c.execute(
                        sa.update(J)
                        .where(J.c.id == job.id, J.c.lease_id == job.lease_id)
                        .values(lease_owner=None, lease_id=None, lease_expires=None, **values)
                        .returning(J)
                    )
                ).one()
                target.append(_job(new))
        return ReapResult(requeued=requeued, failed=failed)

    # -- reading ------------------------------------------------------------------------

    async def get(self, job_id: str, conn: AsyncConnection | None = None) -> Job:
        query = sa.select(J).where(J.c.id == job_id)
        if conn is not None:
            row = (await conn.execute(query)).first()
        else:
            async with self.store.read() as c:
                row = (await c.execute(query)).first()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    async def list(
        self,
        *,
        event_id: str | None = None,
        status: Collection[JobStatus] | None = None,
        workflow_run_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[Job]:
        query = sa.select(J).order_by(J.c.created_at.desc(), J.c.id).limit(limit).offset(offset)
        if event_id is not None:
            query = query.where(J.c.event_id == event_id)
        if status is not None:
            query = query.where(J.c.status.in_([s.value for s in status]))
        if workflow_run_id is not None:
            query = query.where(J.c.workflow_run_id == workflow_run_id)
        async with self.store.read() as conn:
            return [_job(r) for r in (await conn.execute(query)).all()]

    async def count(self, status: JobStatus | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(J)
        if status is not None:
            query = query.where(J.c.status == status.value)
        async with self.store.read() as conn:
            return int(await conn.scalar(query) or 0)

    async def active_for_event(self, event_id: str, conn: AsyncConnection) -> builtins.list[Job]:
        rows = await conn.execute(
            sa.select(J).where(
                J.c.event_id == event_id,
                J.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
            )
        )
        return [_job(r) for r in rows.all()]

    # -- logs ---------------------------------------------------------------------------

    async def append_logs(
        self, job_id: str, attempt: int, lines: Sequence[tuple[Stream, datetime, str]]
    ) -> builtins.list[LogLine]:
        """Store lines in order; returns them with their sequence numbers. Past the log cap,
        lines are dropped and one system line says so."""
        if not lines:
            return []
        async with self.store.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(J.c.log_seq, J.c.log_bytes, J.c.log_truncated).where(J.c.id == job_id)
                )
            ).first()
            if row is None:
                raise JobNotFound(job_id)
            if row.log_truncated:
                return []
            seq, size = row.log_seq, row.log_bytes
            stored: builtins.list[LogLine] = []
            truncated = False
            for stream, time, text in lines:
                size += len(text.encode("utf-8", "replace")) + 1
                if size > self.max_log_bytes:
                    seq += 1
                    stored.append(
                        LogLine(
                            job_id=job_id,
                            seq=seq,
                            stream=Stream.SYSTEM,
                            time=time,
                            text=f"[log truncated: over {self.max_log_bytes} bytes]",
                            attempt=attempt,
                        )
                    )
                    truncated = True
                    break
                seq += 1
                stored.append(
                    LogLine(
                        job_id=job_id, seq=seq, stream=stream, time=time, text=text, attempt=attempt
                    )
                )
            await conn.execute(
                sa.insert(schema.job_logs),
                [
                    {
                        "job_id": job_id,
                        "seq": ln.seq,
                        "attempt": ln.attempt,
                        "stream": ln.stream.value,
                        "time": ln.time,
                        "text": ln.text,
                    }
                    for ln in stored
                ],
            )
            await conn.execute(
                sa.update(J)
                .where(J.c.id == job_id)
                .values(log_seq=seq, log_bytes=size, log_truncated=truncated)
            )
        return stored

    async def read_logs(
        self, job_id: str, *, after: int = 0, limit: int = 1000
    ) -> builtins.list[LogLine]:
        L = schema.job_logs
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(L)
                    .where(L.c.job_id == job_id, L.c.seq > after)
                    .order_by(L.c.seq)
                    .limit(limit)
                )
            ).all()
        return [
            LogLine(
                job_id=r.job_id,
                seq=r.seq,
                stream=r.stream,
                time=r.time,
                text=r.text,
                attempt=r.attempt,
            )
            for r in rows
        ]


__all__ += ["FINISHED_STATUSES"]
