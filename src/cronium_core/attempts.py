"""Which attempts are running, as the runtime API needs to know on every call
(:meth:`RuntimeService.authorize <cronium_core.runtime.RuntimeService.authorize>`):

- :class:`LiveAttempts`: the attempts this process's own worker runs, answered from memory while
  the worker surely holds their leases;
- :class:`AttemptReader`: any other attempt, checked against the job's row on every call (on a
  SQLite file on a plain ``sqlite3`` connection, in place, and only while something has been
  committed since the row was last read).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections import OrderedDict
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from . import schema
from .datastore import NotInPlace
from .errors import InvalidToken, JobNotFound
from .executors import UNSET
from .jobs import Job, JobStatus
from .queue import JobQueue

__all__ = ["LEASE_MARGIN", "AttemptReader", "LiveAttempt", "LiveAttempts"]

log = logging.getLogger("cronium.runtime")

#: seconds taken off a lease's end before the runtime API stops trusting a live attempt's
#: memory (the database's clock and ours may tick at slightly different rates)
LEASE_MARGIN = 1.0


@attrs.define(eq=False)
class LiveAttempt:
    """An attempt run by a worker of this process, as the runtime API sees it."""

    job: Job
    owner: str
    output: Any = UNSET
    condition: bool | None = None
    #: ``time.monotonic()`` up to which the lease is surely this worker's (see LiveAttempts)
    leased_until: float = 0.0

    @property
    def surely_held(self) -> bool:
        return time.monotonic() < self.leased_until - LEASE_MARGIN


class LiveAttempts:
    """The attempts this process's worker is running. For them the runtime API answers from
    memory — no database round trip per call — and the worker records the output and the
    condition with the job's result, in its one fenced write. A script served by another
    process (a sidecar for container or SSH jobs) goes through the database as before.

    Revocation: the worker closes an attempt before recording its end, and from then on the
    token is checked against the database, where the lease is gone. While the attempt runs,
    memory is trusted only as long as the lease is certainly this worker's: until
    ``leased_until`` (the moment the worker *asked* to claim or extend the lease, plus the
    lease's length, less :data:`LEASE_MARGIN`). No other worker can re-claim the job before
    its lease runs out, so up to then nothing can have revoked the token but the worker itself;
    past it (heartbeats failing, the process stalled) every call is checked against the job's
    row, where a re-claimed attempt has another lease."""

    def __init__(self) -> None:
        self._by_job: dict[str, LiveAttempt] = {}

    def open(self, job: Job, owner: str, *, leased_until: float = 0.0) -> LiveAttempt:
        """``leased_until``: a ``time.monotonic()`` before which the lease is surely held."""
        attempt = LiveAttempt(job=job, owner=owner, leased_until=leased_until)
        self._by_job[job.id] = attempt
        return attempt

    def renew(self, job_id: str, lease_id: str, leased_until: float) -> None:
        """The lease was extended: memory may be trusted until ``leased_until``."""
        attempt = self.get(job_id, lease_id)
        if attempt is not None:
            attempt.leased_until = max(attempt.leased_until, leased_until)

    def close(self, job_id: str) -> LiveAttempt | None:
        return self._by_job.pop(job_id, None)

    def get(self, job_id: str, lease_id: str) -> LiveAttempt | None:
        attempt = self._by_job.get(job_id)
        if attempt is None or attempt.job.lease_id != lease_id:
            return None
        return attempt


#: attempts whose job row is kept by :class:`AttemptReader` (a Job is a couple of KB)
MAX_KEPT_ATTEMPTS = 10_000
#: what :meth:`AttemptReader._peek` says when it cannot read the row here and now
_UNKNOWN: Any = object()


def _attempt_query() -> str:
    jobs = schema.jobs
    query = sa.select(jobs.c.status, jobs.c.lease_id, jobs.c.condition).where(
        jobs.c.id == sa.bindparam("id")
    )
    return str(query.compile(dialect=sqlite_dialect.dialect()))


_ATTEMPT_QUERY = _attempt_query()
_RUNNING = JobStatus.RUNNING.value  # an enum member's .value is a property: slow per call


@attrs.define(eq=False)
class AttemptReader:
    """Whether a job still runs a given attempt, read from its row on every call.

    On a SQLite file the status, lease and condition are read with one ``SELECT`` by primary
    key, in place (:meth:`DataStore.read_in_place
    <cronium_core.datastore.DataStore.read_in_place>`: no thread hop, a few microseconds).
    Each statement is its own read transaction, so it sees every commit made before it, by any
    process. It never waits: when SQLite answers busy, or anything else goes wrong, the call
    falls back to :meth:`JobQueue.get <cronium_core.queue.JobQueue.get>`. PostgreSQL and
    in-memory SQLite always use :meth:`JobQueue.get`.

    The job's other columns do not change while an attempt runs, so on SQLite the row read by
    an attempt's first call is kept for its next ones (:data:`MAX_KEPT_ATTEMPTS` of them, the
    least recently used dropped); only the status, lease and condition are read every time.

    Not even those while nothing has been committed to the database since they were read:
    :meth:`DataStore.commit_mark <cronium_core.datastore.DataStore.commit_mark>` (the WAL
    index's header, one ``pread``) changes with every commit of any connection, of any
    process; where it cannot be read, the reader's ``PRAGMA data_version`` (every commit of
    another connection: this reader never writes). Either costs less than the ``SELECT``. The
    mark is read before the row, so a commit between the two is only ever taken for a change
    yet to come (the row is read again next time)."""

    queue: JobQueue
    #: job id -> the row read at the first call of its current attempt
    _jobs: OrderedDict[str, Job] = attrs.field(init=False, factory=OrderedDict)
    #: job id -> (status, lease, condition) or ``None``, as read at the commit mark (or data
    #: version) ``_as_of`` of the connection it names
    _states: dict[str, tuple[Any, ...] | None] = attrs.field(init=False, factory=dict)
    _as_of: tuple[sqlite3.Connection, Any] | None = attrs.field(init=False, default=None)

    async def running(self, job_id: str, lease_id: str) -> Job:
        """The job, if ``lease_id`` is its running attempt; else ``InvalidToken``."""
        state = self._peek(job_id)
        if state is _UNKNOWN:
            job = self._check(await self._get(job_id), lease_id)
            return self._keep(job) if self.queue.store.sqlite_path is not None else job
        if state is None:
            self._jobs.pop(job_id, None)
            raise InvalidToken("execution gone")
        status, lease, condition = state
        if status != _RUNNING or lease != lease_id:
            self._jobs.pop(job_id, None)
            raise InvalidToken("attempt over (ended or re-claimed)")
        kept = self._jobs.get(job_id)
        if kept is None or kept.lease_id != lease_id:
            # the attempt's first call here: the whole row, checked again (it may have moved)
            return self._keep(self._check(await self._get(job_id), lease_id))
        self._jobs.move_to_end(job_id)
        job = kept
        condition = None if condition is None else bool(condition)
        if job.condition is not condition:  # set since, by another process
            job = self._jobs[job_id] = attrs.evolve(job, condition=condition)
        return job

    async def _get(self, job_id: str) -> Job:
        try:
            return await self.queue.get(job_id)
        except JobNotFound:
            self._jobs.pop(job_id, None)
            raise InvalidToken("execution gone") from None

    def _check(self, job: Job, lease_id: str) -> Job:
        if job.status is not JobStatus.RUNNING or job.lease_id != lease_id:
            self._jobs.pop(job.id, None)
            raise InvalidToken("attempt over (ended or re-claimed)")
        return job

    def _keep(self, job: Job) -> Job:
        self._jobs[job.id] = job
        self._jobs.move_to_end(job.id)
        if len(self._jobs) > MAX_KEPT_ATTEMPTS:
            self._jobs.popitem(last=False)
        return job

    def _peek(self, job_id: str) -> Any:
        """(status, lease id, condition); ``None`` when there is no such job; ``_UNKNOWN``
        when the row cannot be read here and now."""
        if self.queue.store.sqlite_path is None:
            return _UNKNOWN
        try:
            return self.queue.store.read_in_place(functools.partial(self._state, job_id))
        except NotInPlace as exc:
            log.debug("attempt check: %s; reading through the queue", exc)
            return _UNKNOWN

    def _state(self, job_id: str, conn: sqlite3.Connection) -> tuple[Any, ...] | None:
        store = self.queue.store
        version: Any = store.commit_mark()
        if version is None:
            # fetchall, not fetchone: a statement left unfinished would hold its transaction
            version = conn.execute("PRAGMA data_version").fetchall()[0][0]
        as_of = self._as_of
        if as_of is None or as_of[0] is not conn:
            self._states.clear()  # a new connection
        elif as_of[1] != version and not store.jobs_unchanged(as_of[1], version):
            self._states.clear()  # something was committed (not only variables, here)
        elif job_id in self._states:
            self._as_of = (conn, version)
            return self._states[job_id]
        self._as_of = (conn, version)
        rows = conn.execute(_ATTEMPT_QUERY, (job_id,)).fetchall()
        state = tuple(rows[0]) if rows else None
        if len(self._states) >= MAX_KEPT_ATTEMPTS:
            self._states.clear()
        self._states[job_id] = state
        return state
