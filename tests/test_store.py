"""The data store: schema versions and migrations, events and workflows CRUD, marshalling."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import anyio
import attrs
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from cronium_core import (
    Conflict,
    Cron,
    Event,
    EventNotFound,
    EventStatus,
    HttpRequest,
    Interval,
    Node,
    Once,
    RetryPolicy,
    SchemaVersionError,
    Script,
    ValidationError,
    Workflow,
    datastore,
    schema,
)
from cronium_core.datastore import DataStore, WriteBusy, normalize_url
from cronium_core.marshal import event_from_dict, event_to_dict

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[DataStore]:
    async with AsyncExitStack() as stack:
        store = DataStore(url=db_url)
        await store.start(stack, upgrade=True)
        yield store


async def test_schema_version_is_checked(sqlite_url: str) -> None:
    store = DataStore(url=sqlite_url)
    async with AsyncExitStack() as stack:
        with pytest.raises(SchemaVersionError, match="cronium db upgrade"):
            await store.start(stack)  # an empty database: refused, not silently created
        assert await schema.upgrade(store.engine) == list(range(1, schema.SCHEMA_VERSION + 1))
        assert await schema.upgrade(store.engine) == []  # idempotent
        await schema.check_schema(store.engine)
        async with store.begin() as conn:
            await conn.execute(sa.update(schema.meta).values(value=str(schema.SCHEMA_VERSION + 1)))
        with pytest.raises(SchemaVersionError, match="newer than this Cronium"):
            await schema.check_schema(store.engine)
        await store.engine.dispose()


@pytest.mark.postgres
async def test_concurrent_upgrades_on_postgres(pg_server: object) -> None:
    from tests.pg import PostgresServer

    assert isinstance(pg_server, PostgresServer)
    name = f"upgrade_{datetime.now(UTC):%H%M%S%f}"
    pg_server.create_database(name)
    try:
        stores = [DataStore(url=pg_server.url_for(name)) for _ in range(4)]
        results: list[list[int]] = []

        async def up(s: DataStore) -> None:
            results.append(await schema.upgrade(s.engine))

        async with anyio.create_task_group() as tg:
            for s in stores:
                tg.start_soon(up, s)
        assert sorted(map(len, results)) == [0, 0, 0, schema.SCHEMA_VERSION]  # one did it all
        for s in stores:
            await s.engine.dispose()
    finally:
        pg_server.drop_database(name)


async def test_event_crud_and_conflicts(store: DataStore) -> None:
    ev = await store.add_event(
        Event(
            name="e",
            action=Script(language="bash", code="echo hi"),
            schedule=Cron(expression="0 3 * * *", timezone="Europe/Berlin"),
        )
    )
    assert ev.id
    rec = await store.get_event_record(ev.id)
    assert rec.event == ev and rec.runs_total == 0
    assert rec.next_fire_time is not None and rec.next_fire_time.tzinfo is not None
    with pytest.raises(Conflict, match="already exists"):
        await store.add_event(Event(name="e", action=Script(language="bash", code="true")))
    paused = await store.update_event(attrs.evolve(ev, status=EventStatus.PAUSED))
    assert (await store.get_event_record(paused.id)).next_fire_time is None
    assert (await store.find_event("e")).id == ev.id
    await store.remove_event(ev.id)
    with pytest.raises(EventNotFound):
        await store.get_event(ev.id)


async def test_workflow_refers_to_stored_events(store: DataStore) -> None:
    ev = await store.add_event(Event(name="a", action=Script(language="bash", code="true")))
    wf = await store.add_workflow(Workflow(name="w", nodes=[Node(id="n", event_id=ev.id)]))
    assert await store.get_workflow(wf.id) == wf
    assert await store.get_workflow("w") == wf
    with pytest.raises(EventNotFound):
        await store.add_workflow(Workflow(name="x", nodes=[Node(id="n", event_id="missing")]))


def test_urls_are_normalized() -> None:
    assert normalize_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert normalize_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValidationError, match="language"):
        Script(language="ruby", code="")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="url"):
        HttpRequest(url="ftp://x")
    with pytest.raises(ValidationError, match=r"env\.CRONIUM_X"):
        Event(name="x", action=Script(language="bash", code=""), env={"CRONIUM_X": "1"})
    with pytest.raises(ValidationError, match=r"env\.1BAD"):
        Event(name="x", action=Script(language="bash", code=""), env={"1BAD": "1"})
    with pytest.raises(ValidationError, match=r"schedule\.kind"):
        event_from_dict(
            {
                "name": "x",
                "action": {"kind": "script", "language": "bash", "code": ""},
                "schedule": {"kind": "weekly"},
            }
        )
    with pytest.raises(ValidationError, match="action"):
        event_from_dict({"name": "x", "action": {"kind": "script", "language": "bash", "cod": ""}})


names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=40)
schedules = st.one_of(
    st.builds(Interval, seconds=st.integers(1, 10**6).map(float)),
    st.sampled_from(["* * * * *", "*/5 1-3 * * 1-5", "0 0 1 1 *", "30 2 * * *"]).flatmap(
        lambda e: st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]).map(
            lambda z: Cron(expression=e, timezone=z)
        )
    ),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: Once(at=d)),
)


@given(
    name=names.filter(str.strip),
    code=st.text(max_size=200).filter(lambda c: "\x00" not in c),
    language=st.sampled_from(["bash", "python", "node"]),
    schedule=schedules,
    attempts=st.integers(1, 100),
    env=st.dictionaries(
        st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True).filter(
            lambda n: not n.startswith("CRONIUM_")
        ),
        st.text(max_size=20).filter(lambda v: "\x00" not in v),
        max_size=3,
    ),
)
def test_event_marshalling_round_trips(
    name: str, code: str, language: str, schedule: object, attempts: int, env: dict[str, str]
) -> None:
    ev = Event(
        name=name,
        action=Script(language=language, code=code),  # type: ignore[arg-type]
        schedule=schedule,
        retry=RetryPolicy(max_attempts=attempts),
        env=env,  # type: ignore[arg-type]
    )
    assert event_from_dict(event_to_dict(ev)) == ev


async def test_the_commit_mark_changes_with_every_commit_of_any_connection(
    sqlite_url: str,
) -> None:
    """SQLite file: ``commit_mark`` (the WAL index's header) stays the same while nothing is
    committed and changes with each commit, of another connection, another process or this
    store's own writers, also once the WAL has started over; it is ``None`` (the caller asks
    ``data_version``) when the index is not one this code knows."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack, upgrade=True)
        assert store.commit_mark() is None  # no reader yet
        store.read_in_place(lambda conn: conn.execute("SELECT 1").fetchall())
        path = store.sqlite_path
        assert path is not None
        mark = store.commit_mark()
        assert mark is not None and len(mark) == datastore.WAL_INDEX_HEADER

        def read() -> int:
            return store.read_in_place(
                lambda conn: conn.execute("SELECT count(*) FROM events").fetchall()[0][0]
            )

        assert read() == 0 and store.commit_mark() == mark  # reads change nothing
        other = sqlite3.connect(path, isolation_level=None)
        stack.callback(other.close)
        other.execute("CREATE TABLE t (n INTEGER)")
        seen = {mark}
        for n in range(50):
            other.execute("INSERT INTO t VALUES (?)", (n,))
            now = store.commit_mark()
            assert now not in seen  # a new mark for every commit, never an earlier one
            seen.add(now)
            assert store.commit_mark() == now
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES (-1)")
        before = store.commit_mark()
        assert store.commit_mark() == before  # not committed yet
        other.execute("COMMIT")
        assert store.commit_mark() != before

        # started over: the frame count goes back, the salts change
        assert other.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()[0][0] == 0
        for n in range(3):
            other.execute("INSERT INTO t VALUES (?)", (n,))
            now = store.commit_mark()
            assert now not in seen
            seen.add(now)

        # another process
        code = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('INSERT INTO t VALUES (7)'); c.commit()"
        )
        await anyio.run_process([sys.executable, "-c", code, path])
        assert store.commit_mark() not in seen
        seen.add(store.commit_mark())

        # this store's own in-place writer
        await store.transact_in_place(
            lambda conn: conn.execute("INSERT INTO t VALUES (8)").fetchall()
        )
        assert store.commit_mark() not in seen

        # a reader opened again re-reads the index it belongs to
        store._close_reader()
        assert store.commit_mark() is None
        read()
        assert store.commit_mark() is not None

    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(datastore, "WAL_INDEX_VERSION", b"\0\0\0\0")
            read_version = store.read_in_place(
                lambda conn: conn.execute("PRAGMA data_version").fetchall()
            )
        assert read_version and store._reader is not None
        assert store.commit_mark() is None and store._wal_index is None


async def test_jobs_unchanged_only_across_the_stores_own_commits_that_wrote_no_job(
    sqlite_url: str,
) -> None:
    """``jobs_unchanged(since, now)``: True when every commit between the two marks was an
    in-place commit of this store declared ``writes_jobs=False``; any other commit on the way
    (another connection's, or one of its own that may write jobs) makes it False."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack, upgrade=True)
        store.read_in_place(lambda conn: conn.execute("SELECT 1").fetchall())
        path = store.sqlite_path
        assert path is not None
        other = sqlite3.connect(path, isolation_level=None)
        stack.callback(other.close)
        other.execute("CREATE TABLE t (n INTEGER)")

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (1)")

        start = store.commit_mark()
        assert start is not None and store.jobs_unchanged(start, start)
        for _ in range(3):
            await store.transact_in_place(insert, writes_jobs=False)
        quiet = store.commit_mark()
        assert quiet != start and store.jobs_unchanged(start, quiet)
        assert not store.jobs_unchanged(quiet, start)  # not backwards

        other.execute("INSERT INTO t VALUES (2)")  # another connection's commit
        await store.transact_in_place(insert, writes_jobs=False)
        after = store.commit_mark()
        assert not store.jobs_unchanged(start, after) and not store.jobs_unchanged(quiet, after)
        since = store.commit_mark()
        await store.transact_in_place(insert)  # may have written jobs
        await store.transact_in_place(insert, writes_jobs=False)
        assert not store.jobs_unchanged(since, store.commit_mark())

        # another connection commits between this store's COMMIT and its reading the mark
        # after it: the change counter went up by two, the commit is not remembered
        note = DataStore._note_jobless_commit

        def late(self: DataStore, before: bytes) -> None:
            other.execute("INSERT INTO t VALUES (3)")
            note(self, before)

        since = store.commit_mark()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(DataStore, "_note_jobless_commit", late)
            await store.transact_in_place(insert, writes_jobs=False)
        assert not store.jobs_unchanged(since, store.commit_mark())

        # a data_version (the WAL index unknown) is never taken for a mark
        assert not store.jobs_unchanged(1, 2)


async def test_an_in_place_write_now_steps_aside_for_this_processs_writes(
    sqlite_url: str,
) -> None:
    """``transact_in_place_now`` commits at once when nothing else writes; while a write of
    this process holds the writer lock (a transaction in a thread) or a WAL restart is due,
    it refuses without writing, and the awaited ``transact_in_place`` waits its turn."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack, upgrade=True)
        path = store.sqlite_path
        assert path is not None
        other = sqlite3.connect(path, isolation_level=None)
        stack.callback(other.close)
        other.execute("CREATE TABLE t (n INTEGER)")

        def insert(n: int) -> Any:
            sql = "INSERT INTO t VALUES (?) RETURNING n"
            return lambda conn: conn.execute(sql, (n,)).fetchall()

        def rows() -> list[int]:
            return [n for (n,) in other.execute("SELECT n FROM t ORDER BY rowid")]

        assert store.transact_in_place_now(insert(1)) == [(1,)] and rows() == [1]

        entered, release = anyio.Event(), threading.Event()

        def slow(conn: sa.Connection) -> None:
            anyio.from_thread.run_sync(entered.set)
            release.wait(10)
            conn.execute(sa.text("INSERT INTO t VALUES (2)"))

        waited: list[Any] = []

        async def wait_its_turn() -> None:
            waited.append(await store.transact_in_place(insert(3)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(store.transact, slow)
            await entered.wait()  # the thread's transaction holds the writer lock
            with pytest.raises(WriteBusy):
                store.transact_in_place_now(insert(9))
            tg.start_soon(wait_its_turn)
            await anyio.sleep(0.05)
            assert waited == [] and rows() == [1]
            release.set()
        # nothing of the refused write; the awaited one after the thread's
        assert waited == [[(3,)]] and rows() == [1, 2, 3]

        # a write of this process that holds the lock but has not begun in SQLite yet (on
        # its way to its thread): not overtaken
        async with store._write_lock:
            with pytest.raises(WriteBusy):
                store.transact_in_place_now(insert(9))
        assert rows() == [1, 2, 3]

        store._restart_due = True  # as the checkpointer sets it
        with pytest.raises(WriteBusy):
            store.transact_in_place_now(insert(9))
        assert await store.transact_in_place(insert(4)) == [(4,)]  # restarts the WAL first
        assert not store._restart_due and rows() == [1, 2, 3, 4]
        assert store.transact_in_place_now(insert(5)) == [(5,)]
