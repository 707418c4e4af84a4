"""The data store: one SQLAlchemy async engine (SQLite file or PostgreSQL) and the CRUD of
events and workflows. The job queue (:mod:`.queue`) and the engines work on the same store.

SQLite: WAL, ``BEGIN IMMEDIATE`` for every transaction (one writer, no upgrade deadlocks),
a busy timeout for other processes, and an in-process lock so that the tasks of one process
queue for the writer instead of spinning on SQLITE_BUSY. Correct, not distributed.
PostgreSQL: READ COMMITTED, row locks and ``SKIP LOCKED`` in the queue.

:meth:`DataStore.transact` runs a whole write transaction given as a synchronous function: on
SQLite in one trip to a worker thread over the plain ``sqlite3`` driver (aiosqlite pays a trip
to its thread and back through the event loop for every cursor call, a dozen per transaction),
on PostgreSQL on the async connection, optionally in autocommit when the function's writes are
one statement (no ``BEGIN``/``COMMIT`` round trips). The job queue's hot paths use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import anyio
import attrs
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

from . import schema
from .clock import Clock, SystemClock
from .errors import Conflict, EventNotFound, WorkflowNotFound
from .events import Event, EventStatus
from .marshal import event_from_dict, event_to_dict, schedule_from_dict, schedule_to_dict
from .schedules import Manual, Schedule, next_fire_time
from .workflows import Edge, Node, Workflow

__all__ = ["DataStore", "EventRecord", "NotInPlace", "WriteBusy", "new_id", "new_ids"]

T = TypeVar("T")

#: seconds after which a pooled PostgreSQL connection is replaced instead of reused
POOL_RECYCLE_SECONDS = 1800
#: a pooled PostgreSQL connection idle for longer than this is pinged before it is handed out
#: (and replaced if the ping fails: the server restarted, a proxy dropped it). A busy pool is
#: not pinged at all: SQLAlchemy's pre-ping on every checkout cost three round trips
#: (BEGIN, an empty statement, ROLLBACK), as much as the statement it guarded.
IDLE_PING_SECONDS = 10.0
#: in-place commits (:meth:`DataStore.transact_in_place`) between two passive checkpoints of
#: the WAL in a thread (a few pages each)
CHECKPOINT_EVERY = 200
#: bytes of WAL past which the next in-place write has it started over first (holding the
#: writers off for a few ms): the file's size stays about this
WAL_LIMIT = 64 * 1024 * 1024
#: milliseconds a restart of the WAL waits for other connections' readers to move off it: the
#: writers wait as long (a long read elsewhere makes it give up and try after the next
#: checkpoint instead)
RESTART_WAIT_MS = 200
#: bytes before each page in a WAL file
WAL_FRAME_HEADER = 24
#: the most bytes of text and blobs :meth:`DataStore.execute_in_place` writes on the event
#: loop; larger values go to a thread (SQLite releases the GIL while it writes them there)
IN_PLACE_MAX_BYTES = 64 * 1024
#: the WAL index (the ``-shm`` file, https://sqlite.org/walformat.html §2.5.1) begins with two
#: copies of its 48-byte header; the first field is the index format's version, 3007000,
#: in the machine's byte order
WAL_INDEX_HEADER = 96
WAL_INDEX_VERSION = (3007000).to_bytes(4, sys.byteorder)
#: the in-place commits that wrote no job remembered at most (DataStore.jobs_unchanged)
MAX_JOBLESS_COMMITS = 1024

log = logging.getLogger("cronium.store")


def new_id() -> str:
    return str(uuid.uuid4())


def new_ids(n: int) -> list[str]:
    """``n`` ids like :func:`new_id`'s (random UUID 4), from one read of the system's random
    source: a batch enqueue makes thousands, and ``uuid4()`` costs more than the insert."""
    raw = bytearray(os.urandom(16 * n))
    ids = []
    for i in range(0, 16 * n, 16):
        raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40  # version 4
        raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw[i : i + 16].hex()
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def normalize_url(url: str) -> str:
    """Accept the plain forms people type and pick the async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


@attrs.frozen(kw_only=True)
class EventRecord:
    """An event as stored, with its run counters."""

    event: Event
    next_fire_time: datetime | None
    runs_total: int
    runs_succeeded: int
    runs_failed: int
    last_run_at: datetime | None
    created_at: datetime


def workflow_to_dict(wf: Workflow) -> dict[str, Any]:
    return {
        "id": wf.id,
        "name": wf.name,
        "owner": wf.owner,
        "status": str(wf.status),
        "nodes": [{"id": n.id, "event_id": n.event_id} for n in wf.nodes],
        "edges": [{"source": e.source, "target": e.target, "kind": str(e.kind)} for e in wf.edges],
        "schedule": schedule_to_dict(wf.schedule),
    }


def workflow_from_dict(data: dict[str, Any]) -> Workflow:
    return Workflow(
        id=data.get("id", ""),
        name=data["name"],
        owner=data.get("owner", "admin"),
        status=EventStatus(data.get("status", "active")),
        nodes=tuple(Node(**n) for n in data["nodes"]),
        edges=tuple(Edge(**e) for e in data.get("edges", ())),
        schedule=schedule_from_dict(dict(data.get("schedule") or {"kind": "manual"})),
    )


@attrs.define(kw_only=True, eq=False)
class DataStore:
    url: str
    clock: Clock = attrs.field(factory=SystemClock)
    engine: AsyncEngine = attrs.field(init=False)
    #: PostgreSQL: the same pool, with connections handed out in autocommit mode
    _autocommit: AsyncEngine = attrs.field(init=False)
    #: SQLite only: the same file over the synchronous driver, for :meth:`transact`
    _sync_engine: sa.Engine | None = attrs.field(init=False, default=None)
    _write_lock: anyio.Lock = attrs.field(init=False, factory=anyio.Lock)
    #: SQLite file only: the plain ``sqlite3`` connections of :meth:`transact_in_place` and
    #: :meth:`read_in_place`
    _in_place: sqlite3.Connection | None = attrs.field(init=False, default=None)
    _reader: sqlite3.Connection | None = attrs.field(init=False, default=None)
    #: the reader's WAL index, open as long as the reader (``None``: not known, see
    #: :meth:`commit_mark`)
    _wal_index: int | None = attrs.field(init=False, default=None)
    #: commit marks after -> before of this store's in-place commits that wrote no job (see
    #: :meth:`jobs_unchanged`)
    _jobless: dict[bytes, bytes] = attrs.field(init=False, factory=dict)
    _checkpointer: _Checkpointer | None = attrs.field(init=False, default=None)
    _in_place_commits: int = attrs.field(init=False, default=0)
    #: a checkpoint left over WAL_LIMIT of frames: the next in-place write restarts the WAL first
    _restart_due: bool = attrs.field(init=False, default=False)
    #: statements of :meth:`execute_in_place`, compiled for SQLite once
    _compiled: dict[Any, _Compiled] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.url = normalize_url(self.url)
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}
        else:
            kwargs.update(pool_size=20, max_overflow=20, pool_recycle=POOL_RECYCLE_SECONDS)
        self.engine = create_async_engine(self.url, **kwargs)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        if self.is_postgres:
            _ping_idle_connections(self.engine.sync_engine)
            _no_bitmap_scans(self.engine.sync_engine)
        if self.is_sqlite:
            _tune_sqlite(self.engine.sync_engine)
            url = sa.make_url(self.url)
            in_memory = url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
            if not in_memory:
                # an in-memory database is private to its connection: only a file can be
                # shared by two engines
                self._sync_engine = sa.create_engine(
                    url.set(drivername="sqlite+pysqlite"),
                    connect_args={"timeout": 60, "check_same_thread": False},
                )
                _tune_sqlite(self._sync_engine)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def sqlite_path(self) -> str | None:
        """The file of a SQLite store, if a plain ``sqlite3`` connection can open it as the
        store does; else ``None`` (not SQLite, in memory, or URI options)."""
        engine = self._sync_engine
        if engine is None or engine.url.query:
            return None
        return engine.url.database or None

    @property
    def thread_engine(self) -> sa.Engine | None:
        """SQLite (a file): the synchronous engine that :meth:`transact` runs in a worker
        thread, e.g. to watch its statements; ``None`` otherwise."""
        return self._sync_engine

    async def start(self, exit_stack: AsyncExitStack, *, upgrade: bool = False) -> None:
        exit_stack.push_async_callback(self.engine.dispose)
        exit_stack.callback(self._close_in_place)
        exit_stack.callback(self._close_reader)
        exit_stack.callback(self._stop_checkpointer)
        if self._sync_engine is not None:
            exit_stack.callback(self._sync_engine.dispose)
        if upgrade:
            await schema.upgrade(self.engine)
        await schema.check_schema(self.engine)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction. On SQLite, tasks of this process take turns at the writer."""
        if self.is_sqlite:
            async with self._write_lock, self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    async def transact(self, fn: Callable[[sa.Connection], T], *, one_statement: bool = False) -> T:
        """Run ``fn`` in a write transaction of its own and return what it returns; ``fn`` gets
        a synchronous connection and must not block on anything but the database.

        SQLite: the whole transaction is one trip to a worker thread (under the writer lock),
        not one per driver call. PostgreSQL: ``one_statement=True`` promises that ``fn`` writes
        with at most one statement (any others only read), which is atomic on its own, so it
        runs in autocommit and saves the ``BEGIN`` and ``COMMIT`` round trips.
        """
        if self._sync_engine is not None:
            async with self._write_lock:
                # not cancellable: once the thread runs, the transaction is let finish
                return await anyio.to_thread.run_sync(self._transact_in_thread, fn)
        if self.is_postgres:
            # checkout, fn and checkin in one greenlet (AsyncConnection would take three)
            engine = self._autocommit if one_statement else self.engine
            return await greenlet_spawn(_transact_sync, engine.sync_engine, fn)
        async with self.begin() as conn:
            return await conn.run_sync(fn)

    async def transact_in_place(
        self, fn: Callable[[sqlite3.Connection], T], *, writes_jobs: bool = True
    ) -> T:
        """SQLite file only: run ``fn`` in a write transaction of its own on a plain
        ``sqlite3`` connection, on the event loop, if the database is free for writing at once;
        return what ``fn`` returns. For short transactions whose statements are known: no
        thread hop and no SQLAlchemy around them (a group of variable writes: ~50 µs instead
        of ~400). ``fn`` gets the connection inside ``BEGIN IMMEDIATE`` and must not commit.

        Raises :class:`WriteBusy` without waiting when another process holds the write lock
        (or this store is not a SQLite file): the caller then uses :meth:`transact`, which
        waits in a thread. An error in ``fn`` rolls back and propagates; a ``sqlite3`` error
        also closes the connection (opened again next time). The connection never runs a
        checkpoint (``wal_autocheckpoint=0``), which could take milliseconds of the loop: every
        :data:`CHECKPOINT_EVERY` commits, a thread of the store's runs a passive one, and once
        the WAL is over :data:`WAL_LIMIT` the next call has it started over first, in a
        thread.

        The transaction runs without a pause, so while this process's writer lock is free it
        need not be taken (taking it costs a turn of the event loop); while it is held, the
        transaction waits for it like any other write of this process.

        ``writes_jobs=False``: ``fn`` writes no row of the jobs table (a variable's write). The
        commit is then remembered as one that changed no job (see :meth:`jobs_unchanged`)."""
        if self._write_lock.locked() or self._restart_due:
            async with self._write_lock:
                if self._restart_due:
                    self._restart_due = False
                    # like SQLite's own automatic checkpoint, with this write waiting for it
                    # (and the ones after it, for the lock), but in a thread
                    await anyio.to_thread.run_sync(self._restart_wal)
                return self._transact_now(fn, writes_jobs)
        return self._transact_now(fn, writes_jobs)

    def transact_in_place_now(
        self, fn: Callable[[sqlite3.Connection], T], *, writes_jobs: bool = True
    ) -> T:
        """:meth:`transact_in_place` without awaiting anything: :class:`WriteBusy` also when a
        write of this process holds the writer lock or a WAL restart is due (the caller then
        awaits :meth:`transact_in_place`, which waits its turn). A caller that cannot be
        cancelled between its own checks and the commit, and needs no turn of the loop."""
        if self._write_lock.locked() or self._restart_due:
            raise WriteBusy("a write of this process is under way")
        return self._transact_now(fn, writes_jobs)

    async def execute_in_place(
        self, statement: sa.ClauseElement, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """:meth:`transact_in_place` for one short keyed write given as a SQLAlchemy statement
        (bound as SQLAlchemy binds it on SQLite, compiled once per statement object): the rows
        it returns, as the driver gives them (no result processing). Raises
        :class:`NotInPlace` (:class:`WriteBusy`) when it cannot run here and now, and when
        SQLite fails: the caller then runs it the usual way, which reports any real error.

        Also :class:`NotInPlace` for values over :data:`IN_PLACE_MAX_BYTES` in all (text and
        blobs as bound): writing those would hold the event loop for milliseconds.

        The job queue's heartbeats, outputs and conditions use it: done in a thread, each one
        held the writer lock for a millisecond or more under load (the thread waiting for the
        GIL), and every in-place write of the process waited behind it."""
        compiled = self._compiled.get(statement)
        if compiled is None:
            if self._sync_engine is None:
                raise NotInPlace("not a SQLite file")
            compiled = self._compiled[statement] = _Compiled.of(statement, self._sync_engine)
        values = compiled.values(params)
        size = sum(len(v) for v in values if isinstance(v, str | bytes))
        if size > IN_PLACE_MAX_BYTES:
            raise NotInPlace(f"{size} bytes of values: written in a thread")
        try:
            return await self.transact_in_place(
                lambda conn: conn.execute(compiled.sql, values).fetchall()
            )
        except sqlite3.Error as exc:
            raise NotInPlace(f"{type(exc).__name__}: {exc}") from None

    def _transact_now(self, fn: Callable[[sqlite3.Connection], T], writes_jobs: bool) -> T:
        conn = self._in_place if self._in_place is not None else self._open_in_place()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise WriteBusy(str(exc)) from None
        # holding the write lock: the database as it is, and as it stays until the COMMIT
        before = None if writes_jobs else self.commit_mark()
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                self._close_in_place()
            raise
        if before is not None:
            self._note_jobless_commit(before)
        self._in_place_commits += 1
        if self._in_place_commits >= CHECKPOINT_EVERY:
            self._in_place_commits = 0
            path = self.sqlite_path
            assert path is not None
            if self._checkpointer is None:
                self._checkpointer = _Checkpointer(path, self._wal_oversized)
            self._checkpointer.ask()
            # let its thread have the GIL now: writes on the loop, back to back, could keep
            # it waiting (and the WAL growing) for many switch intervals
            time.sleep(0)
        return result

    def _wal_oversized(self) -> None:
        # called by the checkpointer's thread once its checkpoint is done: the restart then
        # has only the frames committed since to copy, and no checkpoint to wait for
        self._restart_due = True

    def _restart_wal(self) -> None:
        """Copy what is left of the WAL and have the next write start it over from its first
        frame (the in-place connection is idle: the writer lock is held). Not truncated: the
        file keeps its size, and freeing its blocks (tens of ms for 64 MiB) would hold the
        writers off for longer."""
        conn = self._in_place
        if conn is None:
            return
        try:
            # this runs in a thread: it may wait a little, for the store's own passive
            # checkpoint (the lock) and for readers of other connections (the busy timeout)
            conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
            try:
                with self._checkpointer.lock if self._checkpointer else contextlib.nullcontext():
                    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()[0]
            finally:
                conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error as exc:
            log.debug("WAL restart: %s", exc)
            return
        if busy:  # another process reads or writes: next time
            log.debug("WAL restart: the database is busy; trying again later")

    def _stop_checkpointer(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()

    def _open_in_place(self) -> sqlite3.Connection:
        path = self.sqlite_path
        if path is None:
            raise WriteBusy("not a SQLite file")
        conn = _connect_now(path, "synchronous=NORMAL", "foreign_keys=ON", "wal_autocheckpoint=0")
        self._in_place = conn
        return conn

    def _close_in_place(self) -> None:
        conn, self._in_place = self._in_place, None
        if conn is not None:
            conn.close()

    def read_in_place(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """SQLite file only: run ``fn`` on a plain read-only ``sqlite3`` connection, right
        here (on the event loop), and return what it returns. For short indexed reads: a few
        microseconds, where SQLAlchemy and a thread hop take a few hundred.

        Each statement is its own read transaction, and sees every commit made before it, by
        any process, as long as ``fn`` runs it to its end (``fetchall``): a statement left
        open would keep the connection on its snapshot. Raises :class:`NotInPlace` at once,
        without waiting, when the store is not a SQLite file or SQLite answers busy or fails
        (the connection is opened again next time): the caller then reads the usual way."""
        conn = self._reader
        if conn is None:
            conn = self._reader = self._open_reader()
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            self._close_reader()
            raise NotInPlace(f"{type(exc).__name__}: {exc}") from None

    def commit_mark(self) -> bytes | None:
        """SQLite file, reader open (call it from :meth:`read_in_place`'s ``fn``): bytes that
        change with every commit to the database, by any connection of any process, read
        without a transaction or a lock. ``None`` when they cannot be read: ask the reader's
        ``PRAGMA data_version`` instead (a read transaction: ~2 µs alone, 7-12 µs amid other
        work, where this costs one ``pread``).

        They are the WAL index's header (https://sqlite.org/walformat.html §2.5.1), which a
        writer rewrites before its ``COMMIT`` returns (a commit appends frames: the frame
        count and checksums change; a restart of the WAL changes its salts). SQLite rewrites
        it in place under other readers, so two reads may differ while nothing was committed
        (a torn read, a recovery): that only costs the caller a read it did not need.
        The index file is opened once the reader has read (so it exists) and closed with it;
        while the reader is open, no connection can delete or truncate it."""
        fd = self._wal_index
        if fd is None:
            return None
        try:
            return os.pread(fd, WAL_INDEX_HEADER, 0)
        except OSError:
            return None

    def jobs_unchanged(self, since: Any, now: Any) -> bool:
        """Whether the commits between two :meth:`commit_mark` marks, ``since`` then ``now``,
        were all this store's own in-place commits that wrote no job (``writes_jobs=False``):
        then no job row changed meanwhile, whatever the marks say. False when not known.

        Such a commit is remembered (mark after -> mark before) only when the WAL index's
        change counter (``iChange``, +1 per commit) says it was the only commit between the
        mark read under its write lock and the mark read after it; a commit of anyone else in
        between (or a torn read) leaves it out, and the caller reads again."""
        for _ in range(len(self._jobless) + 1):
            if now == since:
                return True
            now = self._jobless.get(now)
            if now is None:
                return False
        return False

    def _note_jobless_commit(self, before: bytes) -> None:
        after = self.commit_mark()
        if after is None or _change_counter(after) != (_change_counter(before) + 1) % 2**32:
            return
        if len(self._jobless) >= MAX_JOBLESS_COMMITS:
            self._jobless.clear()
        self._jobless[after] = before

    def _open_reader(self) -> sqlite3.Connection:
        path = self.sqlite_path
        if path is None:
            raise NotInPlace("not a SQLite file")
        try:
            conn = _connect_now(path, "query_only = ON")
        except sqlite3.Error as exc:
            raise NotInPlace(f"{type(exc).__name__}: {exc}") from None
        self._wal_index = _open_wal_index(conn, path)
        return conn

    def _close_reader(self) -> None:
        conn, self._reader = self._reader, None
        fd, self._wal_index = self._wal_index, None
        self._jobless.clear()
        if fd is not None:
            os.close(fd)
        if conn is not None:
            conn.close()

    def _transact_in_thread(self, fn: Callable[[sa.Connection], T]) -> T:
        assert self._sync_engine is not None
        return _transact_sync(self._sync_engine, fn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A short read transaction (on SQLite WAL, readers do not block the writer)."""
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(cronium_read=True)
            yield conn

    # -- events -----------------------------------------------------------------------

    async def add_event(self, event: Event) -> Event:
        now = self.clock.now()
        event = attrs.evolve(event, id=event.id or new_id())
        values = {
            "id": event.id,
            "name": event.name,
            "owner": event.owner,
            "status": str(event.status),
            "definition": event_to_dict(event),
            "next_fire_time": self._first_fire(event.schedule, event.status, now),
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self.begin() as conn:
                await conn.execute(sa.insert(schema.events).values(**values))
        except IntegrityError:
            raise Conflict(
                f"an event named {event.name!r} already exists for {event.owner!r}"
            ) from None
        return event

    async def update_event(self, event: Event) -> Event:
        now = self.clock.now()
        async with self.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        schema.events.c.definition,
                        schema.events.c.next_fire_time,
                        schema.events.c.created_at,
                    ).where(schema.events.c.id == event.id)
                )
            ).first()
            if row is None:
                raise EventNotFound(event.id)
            old = event_from_dict(row.definition)
            next_fire = row.next_fire_time
            if old.schedule != event.schedule or old.status != event.status:
                next_fire = self._first_fire(event.schedule, event.status, now, row.created_at)
            await conn.execute(
                sa.update(schema.events)
                .where(schema.events.c.id == event.id)
                .values(
                    name=event.name,
                    owner=event.owner,
                    status=str(event.status),
                    definition=event_to_dict(event),
                    next_fire_time=next_fire,
                    updated_at=now,
                )
            )
        return event

    @staticmethod
    def _first_fire(
        schedule: Schedule, status: EventStatus, now: datetime, anchor: datetime | None = None
    ) -> datetime | None:
        """The first fire time after now; intervals count from the row's creation (the same
        anchor the scheduler uses), so an edit does not shift the grid."""
        if status is not EventStatus.ACTIVE or isinstance(schedule, Manual):
            return None
        return next_fire_time(schedule, now, anchor=anchor or now)

    async def get_event_record(
        self, event_id: str, conn: AsyncConnection | None = None
    ) -> EventRecord:
        query = sa.select(schema.events).where(schema.events.c.id == event_id)
        if conn is None:
            async with self.read() as c:
                row = (await c.execute(query)).first()
        else:
            row = (await conn.execute(query)).first()
        if row is None:
            raise EventNotFound(event_id)
        return _record(row)

    async def get_event(self, event_id: str, conn: AsyncConnection | None = None) -> Event:
        return (await self.get_event_record(event_id, conn)).event

    async def find_event(self, name_or_id: str, owner: str | None = None) -> Event:
        query = sa.select(schema.events).where(
            sa.or_(schema.events.c.id == name_or_id, schema.events.c.name == name_or_id)
        )
        if owner is not None:
            query = query.where(schema.events.c.owner == owner)
        async with self.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise EventNotFound(name_or_id)
        return _record(row).event

    async def list_events(self, *, owner: str | None = None) -> list[EventRecord]:
        query = sa.select(schema.events).order_by(schema.events.c.created_at, schema.events.c.id)
        if owner is not None:
            query = query.where(schema.events.c.owner == owner)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(r) for r in rows]

    async def remove_event(self, event_id: str) -> None:
        async with self.begin() as conn:
            result = await conn.execute(
                sa.delete(schema.events).where(schema.events.c.id == event_id)
            )
        if result.rowcount == 0:
            raise EventNotFound(event_id)

    # -- workflows --------------------------------------------------------------------

    async def add_workflow(self, workflow: Workflow) -> Workflow:
        now = self.clock.now()
        workflow = attrs.evolve(workflow, id=workflow.id or new_id())
        async with self.begin() as conn:
            known = set(
                (
                    await conn.execute(
                        sa.select(schema.events.c.id).where(
                            schema.events.c.id.in_({n.event_id for n in workflow.nodes})
                        )
                    )
                ).scalars()
            )
            for node in workflow.nodes:
                if node.event_id not in known:
                    raise EventNotFound(node.event_id)
            try:
                await conn.execute(
                    sa.insert(schema.workflows).values(
                        id=workflow.id,
                        name=workflow.name,
                        owner=workflow.owner,
                        status=str(workflow.status),
                        definition=workflow_to_dict(workflow),
                        next_fire_time=self._first_fire(workflow.schedule, workflow.status, now),
                        created_at=now,
                        updated_at=now,
                    )
                )
            except IntegrityError:
                raise Conflict(f"a workflow named {workflow.name!r} already exists") from None
        return workflow

    async def get_workflow(self, workflow_id: str, conn: AsyncConnection | None = None) -> Workflow:
        query = sa.select(schema.workflows.c.definition).where(
            sa.or_(schema.workflows.c.id == workflow_id, schema.workflows.c.name == workflow_id)
        )
        if conn is None:
            async with self.read() as c:
                definition = await c.scalar(query)
        else:
            definition = await conn.scalar(query)
        if definition is None:
            raise WorkflowNotFound(workflow_id)
        return workflow_from_dict(definition)

    async def list_workflows(self) -> list[Workflow]:
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(schema.workflows.c.definition).order_by(schema.workflows.c.created_at)
                )
            ).scalars()
            return [workflow_from_dict(d) for d in rows]


@attrs.frozen
class _Compiled:
    """A statement compiled for SQLite: its SQL, and per positional parameter its name and
    the bind processor of its type."""

    sql: str
    compiled: SQLCompiler
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]

    @classmethod
    def of(cls, statement: sa.ClauseElement, sync_engine: sa.Engine) -> _Compiled:
        dialect = sync_engine.dialect
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        names = compiled.positiontup or ()
        binds = tuple((n, compiled.binds[n].type.bind_processor(dialect)) for n in names)
        return cls(compiled.string, compiled, binds)

    def values(self, params: dict[str, Any]) -> tuple[Any, ...]:
        given = self.compiled.construct_params(params)
        assert given is not None
        return tuple(given[n] if p is None else p(given[n]) for n, p in self.binds)


class _Checkpointer:
    """Passive checkpoints of a SQLite file's WAL, in a thread of their own, for the in-place
    writer, whose connection never checkpoints on its own (that could hold the event loop for
    milliseconds): with no other connection committing (a runtime API serving only variable
    writes) the WAL would otherwise grow without end.

    A passive checkpoint copies what it can without holding anyone up, and SQLite releases the
    GIL meanwhile. (Not at a lower priority: a starved checkpoint holds SQLite's checkpoint
    lock, and the restart below, which holds the writers off, would wait for it.) That alone
    does not bound the file: under a steady stream of writes the WAL is never all copied at the
    moment a writer begins, so SQLite never starts it over. When a checkpoint leaves more than
    :data:`WAL_LIMIT` of frames in it, the next in-place write has it started over first
    (:meth:`DataStore.transact_in_place`), with only the frames committed since to copy and no
    checkpoint to wait for: the writers are held off for two ``fsync`` calls, not for a whole
    passive checkpoint besides."""

    def __init__(self, path: str, oversized: Callable[[], None]) -> None:
        self.path = path
        #: called (in the thread) after a checkpoint that left over :data:`WAL_LIMIT` of
        #: frames in the WAL
        self.oversized = oversized
        self.runs = 0
        #: held while a checkpoint runs: SQLite lets one run at a time, and answers a second
        #: one "busy" at once instead of waiting (DataStore._restart_wal waits on this)
        self.lock = threading.Lock()
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="cronium-checkpoint", daemon=True)
        self._thread.start()

    def ask(self) -> None:
        """A checkpoint soon (asks made while one runs count as one)."""
        self._wanted.set()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        frame = 0  # bytes: the page size and the frame's header
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    if conn is None:
                        conn = _connect_now(self.path)
                        frame = conn.execute("PRAGMA page_size").fetchall()[0][0] + WAL_FRAME_HEADER
                    with self.lock:
                        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                    self.runs += 1
                    # the frames in use, not the file's size, which a restart leaves as it is
                    if frames * frame > WAL_LIMIT:
                        self.oversized()
                except sqlite3.Error as exc:
                    log.debug("WAL checkpoint: %s", exc)
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()


def _connect_now(path: str, *pragmas: str) -> sqlite3.Connection:
    """A plain ``sqlite3`` connection that never waits (busy timeout zero), in autocommit
    (transactions are begun by hand), usable from any thread, with ``pragmas`` set."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    try:
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _change_counter(header: bytes) -> int:
    """A WAL index header's ``iChange``, which every commit increments."""
    return int.from_bytes(header[8:12], sys.byteorder)


def _open_wal_index(conn: sqlite3.Connection, path: str) -> int | None:
    """The WAL index of ``conn``'s database, opened for :meth:`DataStore.commit_mark`, if
    the database is in WAL mode and the index's header has the version and layout expected;
    else ``None`` (also where there is no ``os.pread``: Windows)."""
    if not hasattr(os, "pread"):
        return None
    try:
        # a read (a transaction of its own) opens the WAL and its index if there is none yet
        [(mode,)] = conn.execute("PRAGMA journal_mode").fetchall()
        conn.execute("PRAGMA schema_version").fetchall()
    except sqlite3.Error:
        return None
    if mode != "wal":
        return None
    try:
        fd = os.open(f"{path}-shm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        header = os.pread(fd, WAL_INDEX_HEADER, 0)
    except OSError:
        header = b""
    # the version, and "initialized" (isInit, the 13th byte) in both copies
    half = WAL_INDEX_HEADER // 2
    if (
        len(header) != WAL_INDEX_HEADER
        or header[:4] != WAL_INDEX_VERSION
        or header[half : half + 4] != WAL_INDEX_VERSION
        or header[12] != 1
    ):
        os.close(fd)
        return None
    return fd


class NotInPlace(Exception):
    """A statement cannot run in place here and now (:meth:`DataStore.read_in_place`,
    :meth:`DataStore.transact_in_place`): go the usual way."""


class WriteBusy(NotInPlace):
    """:meth:`DataStore.transact_in_place` cannot write here and now: use ``transact``."""


def _transact_sync(sync_engine: sa.Engine, fn: Callable[[sa.Connection], T]) -> T:
    with sync_engine.begin() as conn:
        return fn(conn)


def _no_bitmap_scans(sync_engine: sa.Engine) -> None:
    """Cronium's sessions plan without bitmap scans. The claim must read ``ix_jobs_claim`` in
    order and stop after a few rows; with statistics that lag behind a burst of jobs (a fresh
    table, before autovacuum's next ANALYZE) PostgreSQL estimates one queued row and prefers a
    bitmap scan of *every* queued job and a sort, on every claim (measured: 6x the server time
    per job at 10,000 queued). Cronium's other queries are key lookups and small scans, for
    which plain index scans do as well."""

    @sa_event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # on the driver's connection itself: outside a transaction, whose rollback would undo it
        dbapi_conn.run_async(lambda conn: conn.execute("SET enable_bitmapscan = off"))


def _ping_idle_connections(sync_engine: sa.Engine) -> None:
    pool, dialect = sync_engine.pool, sync_engine.dialect

    @sa_event.listens_for(pool, "checkin")
    def _on_checkin(dbapi_conn: Any, record: Any) -> None:
        if dbapi_conn is not None:
            record.info["cronium_idle_since"] = time.monotonic()

    @sa_event.listens_for(pool, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("cronium_idle_since")
        if since is None or time.monotonic() - since <= IDLE_PING_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as error:
            # the pool discards this connection and checks out another (a fresh one)
            raise sa_exc.DisconnectionError("pooled connection is gone") from error


def _tune_sqlite(sync_engine: sa.Engine) -> None:
    @sa_event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # take transaction control away from the driver so that BEGIN IMMEDIATE is ours
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa_event.listens_for(sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # reads take a deferred (snapshot) transaction; everything else is a writer
        read_only = conn.get_execution_options().get("cronium_read", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _record(row: sa.Row[Any]) -> EventRecord:
    definition = dict(row.definition)
    definition["id"] = row.id
    return EventRecord(
        event=event_from_dict(definition),
        next_fire_time=row.next_fire_time,
        runs_total=row.runs_total,
        runs_succeeded=row.runs_succeeded,
        runs_failed=row.runs_failed,
        last_run_at=row.last_run_at,
        created_at=row.created_at,
    )
