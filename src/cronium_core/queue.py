"""The durable job queue (ARCHITECTURE §5).

Delivery is at-least-once with leases. A claim moves a job to ``running``, bumps its attempt,
and gives it a fresh ``lease_id`` and a lease expiry; the worker heartbeats to extend it. Every
later write of that attempt (output, condition, finish) is fenced on the ``lease_id``: once the
reaper has handed the job to another attempt, a zombie's writes change nothing. A result is
therefore recorded once.

On PostgreSQL candidates are picked with ``FOR UPDATE SKIP LOCKED`` and per-event concurrency
limits are made exact with transaction-scoped advisory locks, taken in the order of their ids.
On SQLite every write transaction is ``BEGIN IMMEDIATE``, which serializes claims.

Methods that change a job take an optional ``conn`` so that a caller can do them inside its
own transaction (transactional enqueue, finish + workflow advance in one commit).

How it is kept fast (``docs/benchmarks.md``, "Queue throughput", has the measurements): every
write is a synchronous function run by :meth:`DataStore.transact`: on SQLite one trip to a
worker thread per transaction, on PostgreSQL in autocommit when it writes with one statement.
The hot statements are built once, with parameters. The common claim (no concurrency-limited
job among the candidates) is one statement, and so is a finish (on PostgreSQL the retry
decision is a ``CASE`` on the row; on SQLite a failure reads the row first). The batches,
:meth:`JobQueue.enqueue_many` and :meth:`JobQueue.finish_many`, are one statement each. The
claim reads a partial index in its own order (``schema``).
"""

from __future__ import annotations

import builtins
import functools
import json
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar, cast

import anyio
import anyio.lowlevel
import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from . import schema
from .datastore import DataStore, NotInPlace, new_id, new_ids
from .errors import JobNotFound, ValidationError
from .events import Event
from .executors import UNSET
from .jobs import FINISHED_STATUSES, Job, JobStatus, LogLine, Stream, Trigger

__all__ = [
    "EnqueueItem",
    "FinishItem",
    "FinishResult",
    "Heartbeat",
    "JobQueue",
    "ReapResult",
]

J = schema.jobs
T = TypeVar("T")
#: cap on the stored log of one job; past it lines are dropped and a marker is stored
DEFAULT_MAX_LOG_BYTES = 16 * 1024 * 1024
#: batches from this size make their Job objects while the database stores them (below it,
#: the task that takes costs more than it saves)
_OVERLAP_FROM = 32
#: statuses whose attempt is retried while attempts are left (a cancelled one is not)
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT})


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


@attrs.frozen(kw_only=True)
class EnqueueItem:
    """One job for :meth:`JobQueue.enqueue_many`; the fields mean what ``enqueue``'s do."""

    event: Event
    input: Any = None
    trigger: Trigger = Trigger.MANUAL
    priority: int | None = None
    run_after: datetime | None = None
    idempotency_key: str | None = None
    fire_time: datetime | None = None
    backfilled: bool = False
    workflow_run_id: str | None = None
    node_id: str | None = None


class FinishItem(NamedTuple):
    """How one attempt ended, for :meth:`JobQueue.finish_many`; a plain tuple in this order
    does as well."""

    job_id: str
    lease_id: str
    status: JobStatus
    exit_code: int | None = None
    error: str | None = None
    output: Any = UNSET
    condition: bool | None = None


#: the position of each column in a row of ``jobs`` (every query that makes a Job selects or
#: returns the whole row, in table order)
_AT = {column.name: i for i, column in enumerate(J.c)}


def _job(row: Any) -> Job:
    t = tuple(row)
    return Job(
        id=t[_AT["id"]],
        event_id=t[_AT["event_id"]],
        status=t[_AT["status"]],
        trigger=t[_AT["trigger"]],
        input=t[_AT["input"]] if t[_AT["input"]] is not None else {},
        priority=t[_AT["priority"]],
        attempt=t[_AT["attempt"]],
        max_attempts=t[_AT["max_attempts"]],
        run_after=t[_AT["run_after"]],
        created_at=t[_AT["created_at"]],
        executor=t[_AT["executor"]],
        lease_owner=t[_AT["lease_owner"]],
        lease_id=t[_AT["lease_id"]],
        lease_expires=t[_AT["lease_expires"]],
        heartbeat_at=t[_AT["heartbeat_at"]],
        started_at=t[_AT["started_at"]],
        finished_at=t[_AT["finished_at"]],
        exit_code=t[_AT["exit_code"]],
        output=t[_AT["output"]],
        condition=t[_AT["condition"]],
        error=t[_AT["error"]],
        cancel_requested=bool(t[_AT["cancel_requested"]]),
        fire_time=t[_AT["fire_time"]],
        workflow_run_id=t[_AT["workflow_run_id"]],
        node_id=t[_AT["node_id"]],
        idempotency_key=t[_AT["idempotency_key"]],
        timeout=t[_AT["timeout"]],
        backfilled=bool(t[_AT["backfilled"]]),
        log_truncated=bool(t[_AT["log_truncated"]]),
    )


def _new_job(values: Mapping[str, Any]) -> Job:
    """The job a fresh insert of ``values`` stores, without reading it back."""
    data = values["input"]
    if not (type(data) is dict and not data):
        # what the database gives back: JSON's idea of the value (tuples become lists, …)
        data = json.loads(json.dumps(data))
    return Job(
        id=values["id"],
        event_id=values["event_id"],
        status=JobStatus.QUEUED,
        trigger=values["trigger"],
        input=data,
        priority=values["priority"],
        attempt=0,
        max_attempts=values["max_attempts"],
        run_after=values["run_after"],
        created_at=values["created_at"],
        executor=values["executor"],
        fire_time=values["fire_time"],
        workflow_run_id=values["workflow_run_id"],
        node_id=values["node_id"],
        idempotency_key=values["idempotency_key"],
        timeout=float(values["timeout"]),
        backfilled=bool(values["backfilled"]),
    )


def _backoff(base: float, cap: float, attempt: int) -> float:
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


def _status_is(column: Any, status: JobStatus) -> Any:
    # a literal, not a bound parameter: the planners use the partial indexes (WHERE status =
    # 'queued' / 'running') only when they can see the value
    return column == sa.literal_column(f"'{status.value}'", sa.String)


def _claim_order(t: Any) -> builtins.list[Any]:
    # fire_time keeps catch-up runs queued in one tick in slot order; NULLs last, spelled so
    # that SQLite too can read it from the index (ix_jobs_claim) instead of sorting
    return [
        t.c.priority.desc(),
        t.c.run_after,
        t.c.created_at,
        t.c.fire_time.is_(None),
        t.c.fire_time,
        t.c.id,
    ]


def _param(name: str, type_: Any = None) -> Any:
    return sa.bindparam(name, type_=type_)


def _array(name: str, item_type: Any) -> Any:
    return sa.bindparam(name, type_=postgresql.ARRAY(item_type))


_NOW = functools.partial(_param, "p_now", schema.UTCDateTime())

#: the columns an enqueue writes (the others start from their server defaults), with the
#: types of their parameters
_INSERTED: tuple[tuple[str, Any], ...] = (
    ("id", sa.String),
    ("event_id", sa.String),
    ("status", sa.String),
    ("trigger", sa.String),
    ("input", sa.Text),  # as JSON text, cast to jsonb in the statement
    ("priority", sa.Integer),
    ("max_attempts", sa.Integer),
    ("backoff_base", sa.Float),
    ("backoff_max", sa.Float),
    ("timeout", sa.Float),
    ("executor", sa.String),
    ("run_after", schema.UTCDateTime()),
    ("created_at", schema.UTCDateTime()),
    ("concurrency_key", sa.String),
    ("concurrency_limit", sa.Integer),
    ("fire_time", schema.UTCDateTime()),
    ("backfilled", sa.Boolean),
    ("workflow_run_id", sa.String),
    ("node_id", sa.String),
    ("idempotency_key", sa.String),
)


@attrs.define(kw_only=True, eq=False)
class JobQueue:
    store: DataStore
    #: seconds a claim lasts without a heartbeat
    lease_seconds: float = 30.0
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    #: the hot statements, built once with parameters: building a statement (and its cache
    #: key) costs SQLAlchemy more than running it, and a reused one keeps its compiled form
    _statements: dict[Any, Any] = attrs.field(init=False, factory=dict)

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

    def _lease_end(self) -> Any:
        """:meth:`_lease_time` of the lease, for a prebuilt statement: SQL with a parameter
        whose value :meth:`_lease_params` gives."""
        if self.clock.authoritative:
            return _param("p_lease_end", schema.UTCDateTime())
        if self.store.is_postgres:
            return sa.func.statement_timestamp(type_=schema.UTCDateTime()) + _param(
                "p_lease", sa.Interval()
            )
        return sa.func.strftime(
            "%Y-%m-%d %H:%M:%f", "now", _param("p_lease", sa.String), type_=schema.UTCDateTime()
        )

    def _lease_params(self) -> dict[str, Any]:
        seconds = self.lease_seconds
        if self.clock.authoritative:
            return {"p_lease_end": self.clock.now() + timedelta(seconds=seconds)}
        if self.store.is_postgres:
            return {"p_lease": timedelta(seconds=seconds)}
        return {"p_lease": f"{seconds:+.3f} seconds"}

    def _statement(self, key: Any, build: Callable[[], Any]) -> Any:
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = build()
        return statement

    async def _run(
        self,
        fn: Callable[[sa.Connection], T],
        conn: AsyncConnection | None = None,
        *,
        one_statement: bool = False,
    ) -> T:
        """Run the synchronous ``fn`` in the caller's transaction or in one of its own (see
        :meth:`DataStore.transact`; ``one_statement``: ``fn`` writes with one statement)."""
        if conn is not None:
            return await conn.run_sync(fn)
        return await self.store.transact(fn, one_statement=one_statement)

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
        item = EnqueueItem(
            event=event,
            input=input,
            trigger=trigger,
            priority=priority,
            run_after=run_after,
            idempotency_key=idempotency_key,
            fire_time=fire_time,
            backfilled=backfilled,
            workflow_run_id=workflow_run_id,
            node_id=node_id,
        )
        [job] = await self.enqueue_many([item], conn=conn)
        return job

    async def enqueue_many(
        self,
        items: Sequence[EnqueueItem | tuple[Event, Mapping[str, Any]]],
        conn: AsyncConnection | None = None,
    ) -> builtins.list[Job]:
        """Add many jobs at once, in one transaction (the caller's with ``conn``); returns
        them in the order given. An item is an :class:`EnqueueItem` or ``(event, kwargs)``
        with ``enqueue``'s keyword arguments. Idempotency keys work as in ``enqueue``: an item
        whose key is already used (also by an earlier item of the same call) gives the job
        made first. Items are claimed in the order given (other things equal): their
        ``created_at`` are a microsecond apart. One ``INSERT`` for the lot on PostgreSQL, one
        executemany on SQLite."""
        if not items:
            return []
        now = self.clock.now()
        ids = new_ids(len(items))
        by_event: dict[int, dict[str, Any]] = {}
        rows: builtins.list[dict[str, Any]] = []
        for job_id, item in zip(ids, items, strict=True):
            options: Mapping[str, Any]
            if isinstance(item, EnqueueItem):
                event = item.event
                options = attrs.asdict(item, recurse=False, filter=lambda a, _: a.name != "event")
            else:
                event, options = item
            # what comes from the event is the same for all of its jobs
            common = by_event.get(id(event))
            if common is None:
                common = by_event[id(event)] = _event_values(event)
            rows.append(_job_values(job_id, common, options, now, len(rows)))
        insert = functools.partial(self._insert, rows)
        if len(rows) < _OVERLAP_FROM:
            taken = await self._run(insert, conn, one_statement=True)
            return [taken.get(i) or _new_job(r) for i, r in enumerate(rows)]
        taken = {}
        # errors are raised below as they are, not in an exception group; the database's first
        failed: builtins.list[Exception] = []
        jobs: builtins.list[Job] = []

        async def write() -> None:
            try:
                taken.update(await self._run(insert, conn, one_statement=True))
            except Exception as error:
                failed.insert(0, error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            # the insert sends its statement and waits for the database; meanwhile, make the
            # jobs it stores (measured on PostgreSQL: 45,000 -> 80,000 jobs/s)
            await anyio.lowlevel.checkpoint()
            try:
                jobs = [_new_job(r) for r in rows]
            except Exception as error:
                failed.append(error)
        if failed:
            raise failed[0]
        for i, job in taken.items():
            jobs[i] = job
        return jobs

    def _insert(self, rows: builtins.list[dict[str, Any]], c: sa.Connection) -> dict[int, Job]:
        """Insert ``rows``; returns, by position, the jobs that an item's idempotency key gave
        instead of a new one (the other jobs are as in ``rows``)."""
        keyed = [r for r in rows if r["idempotency_key"] is not None]
        inserted: set[str] | None = None
        if self.store.is_postgres:
            statement, params = self._pg_insert(rows, keyed=bool(keyed))
            result = c.execute(statement, params)
            if keyed:
                inserted = set(result.scalars())
        else:
            self._sqlite_insert(rows, keyed=bool(keyed), c=c)
            if keyed:
                present = self._statement("present", self._present)
                found = c.execute(present, {"p_ids": [r["id"] for r in keyed]}).scalars()
                inserted = set(found)
        taken: dict[int, Job] = {}
        if inserted is not None and len(inserted) < len(keyed):
            # the key was taken (earlier, or by an earlier item of this call): the first job
            keys = builtins.list({r["idempotency_key"] for r in keyed if r["id"] not in inserted})
            by_key = self._statement("by keys", self._by_keys)
            first = {
                job.idempotency_key: job for job in map(_job, c.execute(by_key, {"p_keys": keys}))
            }
            for i, r in enumerate(rows):
                if r["idempotency_key"] is not None and r["id"] not in inserted:
                    taken[i] = first[r["idempotency_key"]]
        return taken

    def _sqlite_insert(
        self, rows: builtins.list[dict[str, Any]], *, keyed: bool, c: sa.Connection
    ) -> None:
        """An executemany of the driver's own SQL, the values converted here as the column
        types would (SQLAlchemy's per-row parameter handling cost twice the insert itself)."""
        sql, names = self._statement(("insert sqlite", keyed), lambda: _sqlite_insert_sql(keyed))
        dialect = c.dialect
        to_text = schema.UTCDateTime().process_bind_param
        at = names.index
        data, times = at("input"), [at("run_after"), at("created_at"), at("fire_time")]
        params = []
        for r in rows:
            values = [r[name] for name in names]
            values[data] = json.dumps(values[data])
            for i in times:
                values[i] = to_text(values[i], dialect)
            params.append(tuple(values))
        c.exec_driver_sql(sql, params)

    @staticmethod
    def _present() -> Any:
        return sa.select(J.c.id).where(J.c.id.in_(sa.bindparam("p_ids", expanding=True)))

    @staticmethod
    def _by_keys() -> Any:
        return sa.select(J).where(J.c.idempotency_key.in_(sa.bindparam("p_keys", expanding=True)))

    def _pg_insert(
        self, rows: builtins.list[dict[str, Any]], *, keyed: bool
    ) -> tuple[Any, dict[str, Any]]:
        """One ``INSERT … SELECT FROM unnest(arrays)``: a parameter per column, whatever the
        number of rows; a column whose value is the same in every row (the event's settings,
        the time, usually the input) is one scalar parameter instead of an array."""
        params: dict[str, Any] = {}
        shared: builtins.list[str] = []
        for name, _ in _INSERTED:
            values = [r[name] for r in rows]
            if name == "input":
                if all(type(v) is dict and not v for v in values):
                    values = ["{}"] * len(values)
                else:
                    # compared as JSON: 1 == 1.0 == True, but they are stored apart
                    values = [json.dumps(v) for v in values]
            if values.count(values[0]) == len(values):
                shared.append(name)
                params[f"e_{name}"] = values[0]
            else:
                params[f"e_{name}"] = values
        key = ("insert", frozenset(shared), keyed)
        return self._statement(key, lambda: _pg_insert_statement(set(shared), keyed)), params

    # -- claim, heartbeat ---------------------------------------------------------------

    async def claim(
        self, worker_id: str, limit: int = 1, *, executors: Collection[str] | None = None
    ) -> builtins.list[Job]:
        """Claim up to ``limit`` due jobs, highest priority first, then oldest ``run_after``.

        Candidates are the first ``limit`` due jobs whose event is under its concurrency
        limit; of those, a limited event's jobs beyond what its limit allows right now are
        left queued (the claim may then return fewer than it could have)."""
        if limit < 1:
            return []
        now = self.clock.now()
        params = {
            "p_now": now,
            "p_limit": limit,
            "p_worker": worker_id,
            # one fresh lease id per claimed row: this claim's batch id + the job id
            "p_batch": new_id() + ":",
            **self._lease_params(),
        }
        if executors is not None:
            params["p_executors"] = builtins.list(executors)
        by_executor = executors is not None
        if self.store.is_postgres:
            # the common case in one autocommit statement; it claims nothing (and says so)
            # when a candidate has a concurrency limit, which needs the careful path below
            fast = functools.partial(self._claim_fast, by_executor, params)
            jobs = await self.store.transact(fast, one_statement=True)
            if jobs is not None:
                return jobs
            careful = functools.partial(self._claim_careful, by_executor, params)
        else:
            careful = functools.partial(self._claim_sqlite, by_executor, params)
        return await self.store.transact(careful)

    def _candidates(self, by_executor: bool) -> Any:
        running = J.alias("running")
        busy = (
            sa.select(sa.func.count())
            .select_from(running)
            .where(
                running.c.concurrency_key == J.c.concurrency_key,
                _status_is(running.c.status, JobStatus.RUNNING),
            )
            .scalar_subquery()
        )
        query = (
            sa.select(
                J.c.id,
                J.c.concurrency_key,
                J.c.concurrency_limit,
                J.c.priority,
                J.c.run_after,
                J.c.created_at,
                J.c.fire_time,
            )
            .where(
                _status_is(J.c.status, JobStatus.QUEUED),
                J.c.run_after <= _NOW(),
                sa.or_(J.c.concurrency_limit.is_(None), busy < J.c.concurrency_limit),
            )
            .order_by(*_claim_order(J))
            .limit(_param("p_limit", sa.Integer))
        )
        if by_executor:
            query = query.where(J.c.executor.in_(sa.bindparam("p_executors", expanding=True)))
        if self.store.is_postgres:
            query = query.with_for_update(skip_locked=True, of=J)
        return query

    def _claim_values(self) -> dict[str, Any]:
        return {
            "status": JobStatus.RUNNING.value,
            "attempt": J.c.attempt + 1,
            "lease_owner": _param("p_worker", sa.String),
            "lease_id": _param("p_batch", sa.String) + J.c.id,
            "lease_expires": self._lease_end(),
            "heartbeat_at": _NOW(),
            "started_at": _NOW(),
        }

    def _claim_fast_statement(self, by_executor: bool) -> Any:
        cand = self._candidates(by_executor).cte("cand")
        limited = (
            sa.select(sa.literal(1)).select_from(cand).where(cand.c.concurrency_limit.isnot(None))
        )
        claimed = (
            sa.update(J)
            .where(
                J.c.id.in_(sa.select(cand.c.id)),
                _status_is(J.c.status, JobStatus.QUEUED),
                ~limited.exists(),
            )
            .values(**self._claim_values())
            .returning(*J.c)
            .cte("claimed")
        )
        return (
            sa.select(*claimed.c)
            .select_from(cand.outerjoin(claimed, claimed.c.id == cand.c.id))
            .order_by(*_claim_order(cand))
        )

    def _claim_fast(
        self, by_executor: bool, params: dict[str, Any], c: sa.Connection
    ) -> builtins.list[Job] | None:
        """PostgreSQL, one statement: lock the candidates, claim them all unless one has a
        concurrency limit, return them in claim order. ``None``: a limited candidate."""
        statement = self._statement(
            ("claim fast", by_executor), lambda: self._claim_fast_statement(by_executor)
        )
        rows = c.execute(statement, params).all()
        if any(row.id is None for row in rows):
            return None
        return [_job(row) for row in rows]

    def _claim_sqlite(
        self, by_executor: bool, params: dict[str, Any], c: sa.Connection
    ) -> builtins.list[Job]:
        """SQLite: the fast statement (no concurrency-limited candidate) and, when it claimed
        nothing, the careful path, in one transaction. The writer lock makes both exact."""
        statement = self._statement(
            ("claim sqlite", by_executor), lambda: self._claim_sqlite_statement(by_executor)
        )
        jobs = [_job(row) for row in c.execute(statement, params)]
        if not jobs:
            return self._claim_careful(by_executor, params, c)
        # RETURNING has no order: sort as the claim does (SQLite compares ids and timestamps,
        # stored as text of one format, as Python compares them)
        jobs.sort(
            key=lambda j: (
                -j.priority,
                j.run_after,
                j.created_at,
                j.fire_time is None,
                j.fire_time or j.created_at,
                j.id,
            )
        )
        return jobs

    def _claim_sqlite_statement(self, by_executor: bool) -> Any:
        cand = self._candidates(by_executor).cte("cand")
        limited = (
            sa.select(sa.literal(1)).select_from(cand).where(cand.c.concurrency_limit.isnot(None))
        )
        return (
            sa.update(J)
            .where(
                J.c.id.in_(sa.select(cand.c.id)),
                _status_is(J.c.status, JobStatus.QUEUED),
                ~limited.exists(),
            )
            .values(**self._claim_values())
            .returning(*J.c)
        )

    def _claim_careful(
        self, by_executor: bool, params: dict[str, Any], c: sa.Connection
    ) -> builtins.list[Job]:
        candidates_query = self._statement(
            ("candidates", by_executor), lambda: self._candidates(by_executor)
        )
        candidates = c.execute(candidates_query, params).all()
        if not candidates:
            return []
        chosen = self._respect_concurrency(c, candidates)
        if not chosen:
            return []
        update = self._statement(
            "claim",
            lambda: (
                sa.update(J)
                .where(
                    J.c.id.in_(sa.bindparam("p_ids", expanding=True)),
                    _status_is(J.c.status, JobStatus.QUEUED),
                )
                .values(**self._claim_values())
                .returning(*J.c)
            ),
        )
        rows = c.execute(update, {**params, "p_ids": chosen}).all()
        order = {job_id: i for i, job_id in enumerate(chosen)}
        return sorted((_job(row) for row in rows), key=lambda j: order[j.id])

    def _respect_concurrency(
        self, c: sa.Connection, candidates: Sequence[Any]
    ) -> builtins.list[str]:
        keys = sorted({c.concurrency_key for c in candidates if c.concurrency_limit is not None})
        if not keys:
            return [c.id for c in candidates]
        if self.store.is_postgres:
            # serialize claimers per key, then count afresh (the next statement's snapshot
            # sees every claim committed before the lock was ours). All claimers lock in the
            # order of the lock ids, so two that share keys cannot deadlock.
            locks = sorted({zlib.crc32(key.encode()) - 2**31 for key in keys})
            lock = self._statement(
                "lock keys",
                lambda: sa.text(
                    "SELECT pg_advisory_xact_lock(k) FROM unnest(:p_locks) AS k"
                ).bindparams(_array("p_locks", sa.BigInteger)),
            )
            c.execute(lock, {"p_locks": locks})
        count = self._statement(
            "running per key",
            lambda: (
                sa.select(J.c.concurrency_key, sa.func.count())
                .where(
                    J.c.concurrency_key.in_(sa.bindparam("p_keys", expanding=True)),
                    _status_is(J.c.status, JobStatus.RUNNING),
                )
                .group_by(J.c.concurrency_key)
            ),
        )
        counts: dict[str, int] = {key: n for key, n in c.execute(count, {"p_keys": keys}).all()}
        chosen = []
        for cand in candidates:
            if cand.concurrency_limit is None:
                chosen.append(cand.id)
            elif counts.get(cand.concurrency_key, 0) < cand.concurrency_limit:
                counts[cand.concurrency_key] = counts.get(cand.concurrency_key, 0) + 1
                chosen.append(cand.id)
        return chosen

    async def heartbeat(self, job_id: str, lease_id: str) -> Heartbeat:
        params = {"p_job_id": job_id, "p_lease_id": lease_id, "p_now": self.clock.now()}
        params.update(self._lease_params())

        statement = self._statement(
            "heartbeat",
            lambda: (
                _fenced_update()
                .values(heartbeat_at=_NOW(), lease_expires=self._lease_end())
                .returning(J.c.cancel_requested)
            ),
        )
        if self.store.sqlite_path is not None:
            try:
                # on the loop when SQLite is free: in a thread it held the writer lock (and
                # every in-place write of this process) while the thread waited for the GIL
                rows = await self.store.execute_in_place(statement, params)
            except NotInPlace:
                pass
            else:
                return _heartbeat(rows[0][0] if rows else None)

        def beat(c: sa.Connection) -> Any:
            return c.execute(statement, params).first()

        row = await self._run(beat, one_statement=True)
        return _heartbeat(row.cancel_requested if row is not None else None)

    # -- results ------------------------------------------------------------------------

    async def set_output(self, job_id: str, lease_id: str, output: Any) -> bool:
        return await self._set_running_field(job_id, lease_id, "output", output)

    async def set_condition(self, job_id: str, lease_id: str, condition: bool) -> bool:
        return await self._set_running_field(job_id, lease_id, "condition", bool(condition))

    async def _set_running_field(self, job_id: str, lease_id: str, name: str, value: Any) -> bool:
        """Set a column of a running attempt's row: False when the attempt is over. On SQLite
        in place, like :meth:`heartbeat` (a large output goes to a thread)."""
        statement = self._statement(
            ("set", name),
            lambda: (
                _fenced_update().values({name: _param("p_value", J.c[name].type)}).returning(J.c.id)
            ),
        )
        params = {"p_job_id": job_id, "p_lease_id": lease_id, "p_value": value}
        if self.store.sqlite_path is not None:
            try:
                return bool(await self.store.execute_in_place(statement, params))
            except NotInPlace:
                pass

        def write(c: sa.Connection) -> bool:
            return c.execute(statement, params).first() is not None

        return await self._run(write, one_statement=True)

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
        the queue after its backoff instead (``retrying``); a cancel request means no retry.

        One fenced ``UPDATE … RETURNING`` (on SQLite a failure reads the row first)."""
        item = FinishItem(job_id, lease_id, status, exit_code, error, output, condition)
        _check_final(item.status)
        now = self.clock.now()
        fn = functools.partial(self._finish_one, item, now, False)
        return await self._run(fn, conn, one_statement=True)

    async def finish_many(
        self,
        results: Sequence[FinishItem | tuple[Any, ...]],
        conn: AsyncConnection | None = None,
    ) -> builtins.list[FinishResult | None]:
        """Record how many attempts ended, in one transaction (the caller's with ``conn``);
        one result per item, in order, each what :meth:`finish` would give — except that a job
        that does not exist gives ``None`` here instead of raising. An item is a
        :class:`FinishItem` or a tuple ``(job_id, lease_id, status, exit_code, error, output,
        condition)`` (the trailing fields optional). One statement on PostgreSQL."""
        items = [FinishItem(*r) for r in results]
        for item in items:
            _check_final(item.status)
        if not items:
            return []
        now = self.clock.now()
        repeated = len({item.job_id for item in items}) < len(items)
        fn = functools.partial(self._finish_batch, items, now)
        # a job named twice is finished in turn after the batch statement: more than one write
        return await self._run(fn, conn, one_statement=not repeated)

    def _finish_batch(
        self, items: builtins.list[FinishItem], now: datetime, c: sa.Connection
    ) -> builtins.list[FinishResult | None]:
        """One statement for the first mention of each job (on SQLite: each that cannot be
        retried; SQLite decides a retry in Python, one job at a time), then the rest in turn."""
        pg = self.store.is_postgres
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            first.setdefault(item.job_id, i)
        bulk = [i for i in first.values() if pg or JobStatus(items[i].status) not in RETRYABLE]
        done: dict[str, Any] = {}
        if bulk:
            batch = [items[i] for i in bulk]
            if pg:
                statement = self._statement("finish many", self._pg_finish_many)
                params = _pg_finish_many_params(batch, now)
            else:
                statement = self._statement("finish many", self._sqlite_finish_many)
                params = {"p_now": now, "p_batch": _sqlite_finish_many_batch(batch)}
            done = {row.id: row for row in c.execute(statement, params).all()}
        in_bulk = set(bulk)
        results: builtins.list[FinishResult | None] = []
        for i, item in enumerate(items):
            if i not in in_bulk:
                # a retryable end on SQLite, or a job named again (as if finished after its
                # first mention, which has taken effect)
                results.append(self._finish_one(item, now, True, c))
            elif (row := done.get(item.job_id)) is None:
                results.append(None)
            else:
                job = _job(row)
                results.append(FinishResult(job=job, retrying=job.status is JobStatus.QUEUED))
        return results

    def _sqlite_finish_many(self) -> Any:
        """SQLite: ``UPDATE … FROM json_each(:batch)``, one row per attempt, each a JSON array
        (SQLite has no arrays to bind); final statuses only."""
        each = sa.func.json_each(_param("p_batch", sa.String)).table_valued("value")
        fields = ("id", "lease_id", "status", "exit_code", "error", "has_output", "output")
        v = sa.select(
            *(sa.func.json_extract(each.c.value, f"$[{n}]").label(f) for n, f in enumerate(fields)),
            sa.func.json_extract(each.c.value, f"$[{len(fields)}]").label("condition"),
        ).subquery("v")
        return (
            sa.update(J)
            .where(
                J.c.id == v.c.id,
                J.c.lease_id == v.c.lease_id,
                _status_is(J.c.status, JobStatus.RUNNING),
            )
            .values(
                exit_code=v.c.exit_code,
                error=v.c.error,
                # the output travels as JSON text, which is how the column stores it
                output=sa.case((v.c.has_output != 0, v.c.output), else_=J.c.output),
                condition=sa.func.coalesce(v.c.condition, J.c.condition),
                status=v.c.status,
                finished_at=_NOW(),
                lease_expires=None,
                lease_id=None,
            )
            .returning(*J.c)
        )

    def _pg_finish_many(self) -> Any:
        v = (
            sa.func.unnest(
                _array("f_ids", sa.String),
                _array("f_leases", sa.String),
                _array("f_statuses", sa.String),
                _array("f_exit_codes", sa.Integer),
                _array("f_errors", sa.Text),
                _array("f_has_outputs", sa.Boolean),
                _array("f_outputs", sa.Text),
                _array("f_conditions", sa.Boolean),
            )
            .table_valued(
                sa.column("id", sa.String),
                sa.column("lease_id", sa.String),
                sa.column("status", sa.String),
                sa.column("exit_code", sa.Integer),
                sa.column("error", sa.Text),
                sa.column("has_output", sa.Boolean),
                sa.column("output", sa.Text),
                sa.column("condition", sa.Boolean),
            )
            .render_derived(name="v")
        )
        retry = sa.and_(
            v.c.status.in_([s.value for s in RETRYABLE]),
            J.c.attempt < J.c.max_attempts,
            sa.not_(J.c.cancel_requested),
        )
        return (
            sa.update(J)
            .where(
                J.c.id == v.c.id,
                J.c.lease_id == v.c.lease_id,
                _status_is(J.c.status, JobStatus.RUNNING),
            )
            .values(
                exit_code=v.c.exit_code,
                error=v.c.error,
                output=sa.case(
                    (v.c.has_output, sa.cast(v.c.output, postgresql.JSONB)), else_=J.c.output
                ),
                condition=sa.func.coalesce(v.c.condition, J.c.condition),
                **_pg_end_values(retry, v.c.status),
            )
            .returning(*J.c)
        )

    def _finish_one(
        self, item: FinishItem, now: datetime, missing_ok: bool, c: sa.Connection
    ) -> FinishResult | None:
        status = JobStatus(item.status)
        has_output, has_condition = item.output is not UNSET, item.condition is not None
        if status not in RETRYABLE:
            how = "final"
        elif self.store.is_postgres:
            how = "decided by the row"
        else:
            return self._finish_reading_first(item, status, now, missing_ok, c)
        statement = self._statement(
            ("finish", how, has_output, has_condition),
            lambda: _finish_statement(how, has_output, has_condition),
        )
        row = c.execute(statement, _finish_params(item, status, now)).first()
        if row is None:
            if not missing_ok and not self._exists(c, item.job_id):
                raise JobNotFound(item.job_id)
            return None
        job = _job(row)
        return FinishResult(job=job, retrying=job.status is JobStatus.QUEUED)

    def _finish_reading_first(
        self, item: FinishItem, status: JobStatus, now: datetime, missing_ok: bool, c: sa.Connection
    ) -> FinishResult | None:
        """A failure on SQLite: the retry decision in Python (SQLite's date arithmetic stops
        at milliseconds). The writer lock keeps the row as read."""
        read = self._statement(
            "finish read",
            lambda: sa.select(
                J.c.status,
                J.c.lease_id,
                J.c.attempt,
                J.c.max_attempts,
                J.c.cancel_requested,
                J.c.backoff_base,
                J.c.backoff_max,
            ).where(J.c.id == _param("p_job_id", sa.String)),
        )
        row = c.execute(read, {"p_job_id": item.job_id}).first()
        if row is None:
            if missing_ok:
                return None
            raise JobNotFound(item.job_id)
        if row.status != JobStatus.RUNNING.value or row.lease_id != item.lease_id:
            return None
        retry = row.attempt < row.max_attempts and not row.cancel_requested
        how = "retry" if retry else "final"
        has_output, has_condition = item.output is not UNSET, item.condition is not None
        statement = self._statement(
            ("finish", how, has_output, has_condition),
            lambda: _finish_statement(how, has_output, has_condition),
        )
        params = _finish_params(item, status, now)
        if retry:
            delay = _backoff(row.backoff_base, row.backoff_max, row.attempt)
            params["p_run_after"] = now + timedelta(seconds=delay)
        updated = c.execute(statement, params).one()
        return FinishResult(job=_job(updated), retrying=retry)

    def _exists(self, c: sa.Connection, job_id: str) -> bool:
        exists = self._statement(
            "exists", lambda: sa.select(J.c.id).where(J.c.id == _param("p_job_id", sa.String))
        )
        return c.execute(exists, {"p_job_id": job_id}).first() is not None

    async def release(self, job_id: str, lease_id: str) -> bool:
        """Give a running attempt back without counting it (the worker is shutting down)."""
        params = {"p_job_id": job_id, "p_lease_id": lease_id, "p_now": self.clock.now()}

        def give_back(c: sa.Connection) -> bool:
            statement = self._statement(
                "release",
                lambda: _fenced_update().values(
                    status=JobStatus.QUEUED.value,
                    attempt=J.c.attempt - 1,
                    lease_owner=None,
                    lease_id=None,
                    lease_expires=None,
                    run_after=_NOW(),
                ),
            )
            return bool(c.execute(statement, params).rowcount)

        return await self._run(give_back, one_statement=True)

    async def request_cancel(self, job_id: str, conn: AsyncConnection | None = None) -> Job:
        """Cancel: a queued job ends at once; a running one is flagged and its worker stops it."""
        now = self.clock.now()

        def cancel(c: sa.Connection) -> Job:
            row = c.execute(
                sa.update(J)
                .where(J.c.id == job_id, J.c.status == JobStatus.QUEUED.value)
                .values(
                    status=JobStatus.CANCELLED.value,
                    cancel_requested=True,
                    finished_at=now,
                    error="cancelled before it started",
                )
                .returning(*J.c)
            ).first()
            if row is None:
                row = c.execute(
                    sa.update(J)
                    .where(J.c.id == job_id, J.c.status == JobStatus.RUNNING.value)
                    .values(cancel_requested=True)
                    .returning(*J.c)
                ).first()
            if row is None:
                row = c.execute(sa.select(J).where(J.c.id == job_id)).first()
                if row is None:
                    raise JobNotFound(job_id)
            return _job(row)

        return await self._run(cancel, conn)

    async def reap(self, conn: AsyncConnection | None = None) -> ReapResult:
        """Return jobs whose lease expired (their worker is gone) to the queue, or fail them
        when their attempts are spent."""
        now = self.clock.now()

        def sweep(c: sa.Connection) -> ReapResult:
            requeued: builtins.list[Job] = []
            failed: builtins.list[Job] = []
            select = sa.select(J).where(
                _status_is(J.c.status, JobStatus.RUNNING), J.c.lease_expires < self._lease_time()
            )
            if self.store.is_postgres:
                select = select.with_for_update(skip_locked=True)
            for row in c.execute(select).all():
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
                new = c.execute(
                    sa.update(J)
                    .where(J.c.id == job.id, J.c.lease_id == job.lease_id)
                    .values(lease_owner=None, lease_id=None, lease_expires=None, **values)
                    .returning(*J.c)
                ).one()
                target.append(_job(new))
            return ReapResult(requeued=requeued, failed=failed)

        return await self._run(sweep, conn)

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

        def append(c: sa.Connection) -> builtins.list[LogLine]:
            row = c.execute(
                sa.select(J.c.log_seq, J.c.log_bytes, J.c.log_truncated).where(J.c.id == job_id)
            ).first()
            if row is None:
                raise JobNotFound(job_id)
            if row.log_truncated:
                return []
            seq, size = row.log_seq, row.log_bytes
            stored: builtins.list[LogLine] = []
            truncated = False
            for stream, time, raw in lines:
                # PostgreSQL text cannot hold NUL: what a job printed is kept, NUL replaced
                text = raw.replace("\x00", "\ufffd")
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
            c.execute(
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
            c.execute(
                sa.update(J)
                .where(J.c.id == job_id)
                .values(log_seq=seq, log_bytes=size, log_truncated=truncated)
            )
            return stored

        return await self._run(append)

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


def _heartbeat(cancel_requested: Any) -> Heartbeat:
    """A heartbeat's answer from the ``cancel_requested`` the update returned (``None``: it
    updated no row, the attempt is over)."""
    if cancel_requested is None:
        return Heartbeat(alive=False, cancel_requested=True)
    return Heartbeat(alive=True, cancel_requested=bool(cancel_requested))


def _fenced_update() -> Any:
    """An update of a running attempt, fenced on its lease (parameters p_job_id, p_lease_id)."""
    return sa.update(J).where(
        J.c.id == _param("p_job_id", sa.String),
        J.c.lease_id == _param("p_lease_id", sa.String),
        _status_is(J.c.status, JobStatus.RUNNING),
    )


def _pg_end_values(retry: Any, status: Any) -> dict[str, Any]:
    """The columns an attempt's end sets on PostgreSQL, the retry decision made by the row
    (``CASE``): the backoff is ``min(backoff_max, backoff_base · 2^(attempt-1))`` seconds,
    rounded to the microsecond as Python's ``timedelta`` does (as the reaper computes it)."""
    delay = sa.func.least(
        J.c.backoff_max,
        J.c.backoff_base
        * sa.func.power(sa.literal(2.0, sa.Float), sa.func.greatest(0, J.c.attempt - 1)),
    )
    # whole seconds exactly, the fraction rounded half-even, as timedelta(seconds=delay)
    whole = sa.func.trunc(delay)
    micros = whole * 1_000_000 + sa.func.round((delay - whole) * 1_000_000)
    retry_at = _NOW() + micros * sa.literal_column("interval '1 microsecond'", sa.Interval)
    return {
        "status": sa.case((retry, JobStatus.QUEUED.value), else_=status),
        "run_after": sa.case((retry, retry_at), else_=J.c.run_after),
        "finished_at": sa.case((retry, J.c.finished_at), else_=_NOW()),
        "lease_owner": sa.case((retry, sa.null()), else_=J.c.lease_owner),
        "lease_id": None,
        "lease_expires": None,
    }


def _finish_statement(how: str, has_output: bool, has_condition: bool) -> Any:
    """The fenced update that ends an attempt: ``final`` (the status given), ``retry`` (back
    to the queue at p_run_after) or ``decided by the row`` (PostgreSQL, :func:`_pg_end_values`)."""
    values: dict[str, Any] = {
        "exit_code": _param("p_exit_code", sa.Integer),
        "error": _param("p_error", sa.Text),
    }
    if has_output:
        values["output"] = _param("p_output", J.c.output.type)
    if has_condition:
        values["condition"] = _param("p_condition", sa.Boolean)
    if how == "final":
        values.update(
            status=_param("p_status", sa.String),
            finished_at=_NOW(),
            lease_expires=None,
            lease_id=None,
        )
    elif how == "retry":
        values.update(
            status=JobStatus.QUEUED.value,
            run_after=_param("p_run_after", schema.UTCDateTime()),
            lease_owner=None,
            lease_id=None,
            lease_expires=None,
        )
    else:
        retry = sa.and_(J.c.attempt < J.c.max_attempts, sa.not_(J.c.cancel_requested))
        values.update(_pg_end_values(retry, _param("p_status", sa.String)))
    return _fenced_update().values(**values).returning(*J.c)


def _finish_params(item: FinishItem, status: JobStatus, now: datetime) -> dict[str, Any]:
    params = {
        "p_job_id": item.job_id,
        "p_lease_id": item.lease_id,
        "p_status": status.value,
        "p_now": now,
        "p_exit_code": item.exit_code,
        "p_error": item.error,
    }
    if item.output is not UNSET:
        params["p_output"] = item.output
    if item.condition is not None:
        params["p_condition"] = item.condition
    return params


def _pg_finish_many_params(batch: builtins.list[FinishItem], now: datetime) -> dict[str, Any]:
    return {
        "p_now": now,
        "f_ids": [i.job_id for i in batch],
        "f_leases": [i.lease_id for i in batch],
        "f_statuses": [JobStatus(i.status).value for i in batch],
        "f_exit_codes": [i.exit_code for i in batch],
        "f_errors": [i.error for i in batch],
        "f_has_outputs": [i.output is not UNSET for i in batch],
        "f_outputs": [None if i.output is UNSET else json.dumps(i.output) for i in batch],
        "f_conditions": [i.condition for i in batch],
    }


def _sqlite_finish_many_batch(batch: builtins.list[FinishItem]) -> str:
    return json.dumps(
        [
            [
                i.job_id,
                i.lease_id,
                JobStatus(i.status).value,
                i.exit_code,
                i.error,
                i.output is not UNSET,
                None if i.output is UNSET else json.dumps(i.output),
                i.condition,
            ]
            for i in batch
        ]
    )


def _sqlite_insert_sql(keyed: bool) -> tuple[str, builtins.list[str]]:
    """SQLite's enqueue as the driver's SQL, and the order of its parameters."""
    insert = sqlite_dialect.insert(J)
    if keyed:
        insert = insert.on_conflict_do_nothing(
            index_elements=["idempotency_key"], index_where=J.c.idempotency_key.isnot(None)
        )
    compiled = insert.compile(
        dialect=sqlite_dialect.dialect(), column_keys=[name for name, _ in _INSERTED]
    )
    assert compiled.positiontup is not None
    return compiled.string, builtins.list(compiled.positiontup)


def _pg_insert_statement(shared: set[str], keyed: bool) -> Any:
    """PostgreSQL's enqueue: ``INSERT … SELECT FROM unnest(e_col, …)`` with the ``shared``
    columns as scalar parameters (a single row: all of them, and no unnest)."""
    arrays = [(name, type_) for name, type_ in _INSERTED if name not in shared]
    v = None
    if arrays:
        v = (
            sa.func.unnest(*(_array(f"e_{name}", type_) for name, type_ in arrays))
            .table_valued(*(sa.column(name, type_) for name, type_ in arrays))
            .render_derived(name="v")
        )
    columns = []
    for name, type_ in _INSERTED:
        column = _param(f"e_{name}", type_) if name in shared or v is None else v.c[name]
        columns.append(sa.cast(column, postgresql.JSONB) if name == "input" else column)
    select = sa.select(*columns)
    if v is not None:
        select = select.select_from(v)
    insert = postgresql.insert(J).from_select([name for name, _ in _INSERTED], select)
    if keyed:
        return insert.on_conflict_do_nothing(
            index_elements=["idempotency_key"], index_where=J.c.idempotency_key.isnot(None)
        ).returning(J.c.id)
    return insert


def _event_values(event: Event) -> dict[str, Any]:
    if not event.id:
        raise ValidationError("event", "must be stored before it can run")
    limit = event.concurrency_limit
    return {
        "event_id": event.id,
        "status": JobStatus.QUEUED.value,
        "priority": event.priority,
        "max_attempts": event.retry.max_attempts,
        "backoff_base": event.retry.backoff_base,
        "backoff_max": event.retry.backoff_max,
        "timeout": event.timeout,
        "executor": event.executor,
        "concurrency_key": event.id if limit is not None else None,
        "concurrency_limit": limit,
    }


_ENQUEUE_OPTIONS = frozenset(
    {
        "input",
        "trigger",
        "priority",
        "run_after",
        "idempotency_key",
        "fire_time",
        "backfilled",
        "workflow_run_id",
        "node_id",
    }
)


#: a trigger as given (None, a member, its value) -> its value, without an enum call per job
_TRIGGERS: dict[Any, str] = {None: Trigger.MANUAL.value}
_TRIGGERS.update({t: t.value for t in Trigger})


def _job_values(
    job_id: str, common: dict[str, Any], options: Mapping[str, Any], now: datetime, nth: int
) -> dict[str, Any]:
    unknown = options.keys() - _ENQUEUE_OPTIONS
    if unknown:
        raise TypeError(f"enqueue() got unexpected keyword arguments {sorted(unknown)}")
    get = options.get
    key = get("idempotency_key")
    if key is not None and not 1 <= len(key) <= 200:
        raise ValidationError("idempotency_key", "must be 1-200 characters")
    data = get("input")
    priority = get("priority")
    trigger = get("trigger")
    return {
        **common,
        "id": job_id,
        "trigger": _TRIGGERS.get(trigger) or Trigger(cast(str, trigger)).value,
        "input": data if data is not None else {},
        "priority": common["priority"] if priority is None else priority,
        "run_after": get("run_after") or now,
        # a microsecond apart, so that a batch is claimed in its order (as a loop of enqueue()
        # calls would be), not in the order of its random ids
        "created_at": now + timedelta(microseconds=nth),
        "fire_time": get("fire_time"),
        "backfilled": bool(get("backfilled", False)),
        "workflow_run_id": get("workflow_run_id"),
        "node_id": get("node_id"),
        "idempotency_key": key,
    }


def _check_final(status: JobStatus) -> None:
    if not JobStatus(status).finished:
        raise ValueError(f"finish() needs a final status, not {status}")


__all__ += ["FINISHED_STATUSES"]
