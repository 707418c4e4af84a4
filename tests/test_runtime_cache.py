"""What the runtime API remembers between calls, and that none of it outlives revocation
(RELIABILITY A2): verified tokens (``ExecutionTokens``), the job row of a running attempt
(``AttemptReader``), the event's owner. Each test warms every cache first, then ends or
re-claims the attempt *through another store* (another connection pool, as another process
would) and checks that the very next request is refused."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cronium_core import Event, FakeClock, Job, JobStatus, RetryPolicy, datastore
from cronium_core import runtime as runtime_module
from cronium_core.attempts import LEASE_MARGIN, AttemptReader
from cronium_core.broker import LocalBroker
from cronium_core.crypto import Cipher, generate_key
from cronium_core.datastore import DataStore, NotInPlace
from cronium_core.engine import RunEngine
from cronium_core.errors import InvalidToken
from cronium_core.queue import JobQueue
from cronium_core.variables import VariableStore
from tests.test_runtime_api import NOOP, Runtime, ok, runtime, unauthorized

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@asynccontextmanager
async def elsewhere(db_url: str, clock: FakeClock) -> AsyncIterator[RunEngine]:
    """The same database seen by another process: a store and queue of its own."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=db_url, clock=clock)
        await store.start(stack)
        yield RunEngine(store=store, queue=JobQueue(store=store, lease_seconds=30),
                        broker=LocalBroker())  # fmt: skip


@pytest.fixture
async def rt(db_url: str, clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(db_url, clock) as value:
        cipher = Cipher.from_spec(f"c1:{generate_key()}")
        value.service.variables = VariableStore(value.store, cipher)
        yield value


async def warm(rt: Runtime, job: Job, token: str) -> None:
    """Calls that fill every cache: the token, the attempt's row, the owner, a variable."""
    base = f"/executions/{job.id}"
    ok(await rt.call("PUT", f"{base}/variables/k", token, json={"value": 1}))
    for _ in range(3):
        ok(await rt.call("GET", f"{base}/input", token))
        assert ok(await rt.call("GET", f"{base}/variables/k", token))["value"] == 1
    assert rt.tokens.verify(token).lease_id == job.lease_id  # remembered, and still valid


async def test_finished_job_refused_on_the_very_next_request(
    rt: Runtime, db_url: str, clock: FakeClock
) -> None:
    job, token = await rt.running_job(owner="alice")
    await warm(rt, job, token)
    assert job.lease_id is not None
    async with elsewhere(db_url, clock) as other:
        await other.finish_job(job.id, job.lease_id, status=JobStatus.SUCCEEDED, exit_code=0)
    base = f"/executions/{job.id}"
    unauthorized(await rt.call("GET", f"{base}/input", token))
    unauthorized(await rt.call("GET", f"{base}/variables/k", token))
    unauthorized(await rt.call("PUT", f"{base}/variables/k", token, json={"value": 2}))
    unauthorized(await rt.call("POST", f"{base}/output", token, json={"data": "late"}))
    # the token itself is still good (signature, exp): the refusal is the revocation's
    assert rt.tokens.verify(token).execution_id == job.id
    assert (await rt.queue.get(job.id)).output is None


async def test_reclaimed_attempt_old_token_refused_on_the_very_next_request(
    rt: Runtime, db_url: str, clock: FakeClock
) -> None:
    retry = RetryPolicy(max_attempts=2, backoff_base=1)
    job, token1 = await rt.running_job(owner="alice", retry=retry)
    await warm(rt, job, token1)
    clock.advance(31)  # the worker is gone: its lease expires
    async with elsewhere(db_url, clock) as other:
        assert [j.id for j in (await other.reap()).requeued] == [job.id]
        clock.advance(5)
        [again] = await other.queue.claim("w2", 1)
    assert again.id == job.id and again.attempt == 2
    base = f"/executions/{job.id}"
    unauthorized(await rt.call("GET", f"{base}/input", token1))
    token2 = rt.tokens.mint(again)
    ok(await rt.call("GET", f"{base}/input", token2))
    ok(await rt.call("POST", f"{base}/output", token2, json={"data": "attempt 2"}))
    # attempt 2's row is the one kept now: attempt 1 stays refused, for every route
    unauthorized(await rt.call("GET", f"{base}/input", token1))
    unauthorized(await rt.call("GET", f"{base}/variables/k", token1))
    unauthorized(await rt.call("POST", f"{base}/output", token1, json={"data": "zombie"}))
    assert (await rt.queue.get(job.id)).output == "attempt 2"


async def test_condition_set_by_another_process_is_seen(
    rt: Runtime, db_url: str, clock: FakeClock
) -> None:
    job, token = await rt.running_job()
    path = f"/executions/{job.id}/condition"
    assert ok(await rt.call("GET", path, token)) is False
    assert job.lease_id is not None
    async with elsewhere(db_url, clock) as other:
        assert await other.queue.set_condition(job.id, job.lease_id, True)
    assert ok(await rt.call("GET", path, token)) is True


async def test_a_failing_fast_read_falls_back_to_the_queue(rt: Runtime, db_url: str) -> None:
    job, token = await rt.running_job()
    path = f"/executions/{job.id}/input"
    ok(await rt.call("GET", path, token))
    store = rt.queue.store
    if not db_url.startswith("sqlite"):
        # PostgreSQL has no fast read: every call already goes through JobQueue.get
        assert store._reader is None
        ok(await rt.call("GET", path, token))
        assert store._reader is None
        return
    assert store._reader is not None
    store._reader.close()  # the connection breaks under it
    assert job.lease_id is not None
    # a commit: the row is read again (while nothing is committed the row read last stands)
    assert await rt.queue.set_condition(job.id, job.lease_id, True)
    ok(await rt.call("GET", path, token))  # answered through JobQueue.get
    assert store._reader is None
    ok(await rt.call("GET", path, token))  # and the next call has a connection again
    assert store._reader is not None
    await rt.engine.finish_job(job.id, job.lease_id, status=JobStatus.FAILED, exit_code=1)
    unauthorized(await rt.call("GET", path, token))


async def test_attempt_reader_without_a_file_reads_through_the_queue(clock: FakeClock) -> None:
    # an in-memory SQLite database has no file another connection could open
    async with AsyncExitStack() as stack:
        store = DataStore(url="sqlite+aiosqlite:///:memory:", clock=clock)
        await store.start(stack, upgrade=True)
        reader = AttemptReader(JobQueue(store=store))
        with pytest.raises(InvalidToken):
            await reader.running("no-such-job", "lease")
        assert store._reader is None
        with pytest.raises(NotInPlace):
            store.read_in_place(lambda conn: conn.execute("SELECT 1").fetchall())


async def test_live_attempt_is_trusted_from_memory_only_while_its_lease_surely_holds(
    rt: Runtime, db_url: str, clock: FakeClock
) -> None:
    """An attempt of this process's own worker is answered from memory (``LiveAttempts``) only
    while the worker's lease is certainly held; once that is no longer certain (heartbeats
    failing, the process stalled), a re-claim elsewhere revokes its token on the next call."""
    retry = RetryPolicy(max_attempts=2, backoff_base=1)
    job, token1 = await rt.running_job(owner="alice", retry=retry)
    live = rt.service.live.open(job, "alice", leased_until=time.monotonic() + 30)
    await warm(rt, job, token1)
    base = f"/executions/{job.id}"
    ok(await rt.call("POST", f"{base}/output", token1, json={"data": "in memory"}))
    assert live.output == "in memory"  # answered from memory: the row is not written
    assert (await rt.queue.get(job.id)).output is None

    # the worker's last heartbeat was long ago: its lease may have run out
    live.leased_until = time.monotonic() - 0.001
    ok(await rt.call("GET", f"{base}/input", token1))  # still its lease in the database
    clock.advance(31)
    async with elsewhere(db_url, clock) as other:
        assert [j.id for j in (await other.reap()).requeued] == [job.id]
        clock.advance(5)
        [again] = await other.queue.claim("w2", 1)
    assert again.attempt == 2
    unauthorized(await rt.call("GET", f"{base}/input", token1))
    unauthorized(await rt.call("POST", f"{base}/output", token1, json={"data": "zombie"}))
    unauthorized(await rt.call("POST", f"{base}/condition", token1, json={"condition": True}))
    assert live.output == "in memory" and live.condition is None


async def test_renewed_lease_extends_the_trust_in_memory(rt: Runtime) -> None:
    job, _ = await rt.running_job(owner="alice")
    assert job.lease_id is not None
    live = rt.service.live.open(job, "alice", leased_until=time.monotonic() - 5)
    assert not live.surely_held
    rt.service.live.renew(job.id, "another lease", time.monotonic() + 30)
    assert not live.surely_held  # a heartbeat of another attempt renews nothing
    rt.service.live.renew(job.id, job.lease_id, time.monotonic() + 30)
    assert live.surely_held
    rt.service.live.renew(job.id, job.lease_id, time.monotonic() - 5)
    assert live.surely_held  # never shortened by a late answer
    # within the margin of the lease's end: no longer trusted
    live.leased_until = time.monotonic() + LEASE_MARGIN / 2
    assert not live.surely_held


@pytest.mark.parametrize("wal_index", [True, False], ids=["wal-index", "data-version"])
async def test_the_attempt_row_is_read_again_only_once_something_committed(
    sqlite_url: str, clock: FakeClock, wal_index: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: while nothing is committed, the attempt check answers from the row it read
    (the WAL index's header, or where it cannot be read the reader's ``data_version``, says
    nothing changed); any commit, by another process or by this one's own writers, has the
    next call read the row again, and a revocation is seen. With the WAL index, this process's
    own variable writes (no job changed) do not."""
    if not wal_index:  # an index of another layout than the one this code knows
        monkeypatch.setattr(datastore, "WAL_INDEX_VERSION", b"\0\0\0\0")
    async with runtime(sqlite_url, clock) as rt:
        rt.service.variables = VariableStore(rt.store, Cipher.from_spec(f"c1:{generate_key()}"))
        job, token = await rt.running_job()
        assert job.lease_id is not None
        base = f"/executions/{job.id}"
        ok(await rt.call("GET", f"{base}/input", token))
        reader = rt.store._reader
        assert reader is not None
        statements: list[str] = []
        reader.set_trace_callback(statements.append)

        def row_reads() -> int:
            return sum("FROM jobs" in s for s in statements)

        assert (rt.store._wal_index is not None) is wal_index
        for _ in range(5):
            ok(await rt.call("GET", f"{base}/input", token))
        assert row_reads() == 0
        assert sum("data_version" in s for s in statements) == (0 if wal_index else 5)

        async with elsewhere(sqlite_url, clock) as other:  # another process's commit
            assert await other.queue.set_condition(job.id, job.lease_id, True)
        assert ok(await rt.call("GET", f"{base}/condition", token)) is True
        assert row_reads() == 1
        ok(await rt.call("GET", f"{base}/input", token))
        assert row_reads() == 1

        # this process's in-place writer is another connection: its commits count too, but
        # (known from the WAL index) not its variable writes, which change no job
        for n in range(3):
            ok(await rt.call("PUT", f"{base}/variables/k", token, json={"value": n}))
        ok(await rt.call("GET", f"{base}/input", token))
        assert row_reads() == (1 if wal_index else 4)  # with data_version: after each commit
        assert (await rt.queue.heartbeat(job.id, job.lease_id)).alive  # in place: a job's row
        ok(await rt.call("PUT", f"{base}/variables/k", token, json={"value": 4}))
        ok(await rt.call("GET", f"{base}/input", token))
        assert row_reads() == (2 if wal_index else 6)

        await rt.engine.finish_job(job.id, job.lease_id, status=JobStatus.SUCCEEDED, exit_code=0)
        unauthorized(await rt.call("GET", f"{base}/input", token))


async def test_the_events_owner_is_read_in_place_and_its_change_seen_once_remembered_no_more(
    sqlite_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: the owner of a job's event (whose variables the script reads) is read on the
    store's in-place reader, not through a thread; an owner changed by another process is
    seen once the remembered one expires (here at once)."""
    monkeypatch.setattr(runtime_module, "OWNER_CACHE_SECONDS", 0.0)
    async with runtime(sqlite_url, clock) as rt:
        variables = rt.service.variables = VariableStore(
            rt.store, Cipher.from_spec(f"c1:{generate_key()}")
        )
        await variables.set("alice", "k", "alice's")
        await variables.set("bob", "k", "bob's")
        job, token = await rt.running_job(owner="alice")
        path = f"/executions/{job.id}/variables/k"
        ok(await rt.call("GET", f"/executions/{job.id}/input", token))  # opens the reader
        reader = rt.store._reader
        assert reader is not None
        statements: list[str] = []
        reader.set_trace_callback(statements.append)
        assert ok(await rt.call("GET", path, token))["value"] == "alice's"
        assert any("FROM events" in s for s in statements)

        assert rt.store.sqlite_path is not None
        other = sqlite3.connect(rt.store.sqlite_path)
        with other:
            other.execute("UPDATE events SET owner = 'bob' WHERE id = ?", (job.event_id,))
        other.close()
        assert ok(await rt.call("GET", path, token))["value"] == "bob's"


#: what happens between two attempt checks: this process's own writes in place (variables,
#: which write no job; a heartbeat and a condition, which do), another connection's commits
#: (a job's condition, an unrelated table, the attempt re-claimed or ended), a checkpoint that
#: starts the WAL over (a new header, no commit), and the checks themselves
ATTEMPT_OPS = st.lists(
    st.sampled_from(
        [
            "check",
            "variable",
            "new_variable",
            "heartbeat",
            "condition",
            "their_condition",
            "their_write",
            "restart",
            "reclaimed",
            "ended",
        ]
    ),
    min_size=1,
    max_size=30,
)


@pytest.mark.parametrize("wal_index", [True, False], ids=["wal-index", "data-version"])
def test_the_attempt_check_never_answers_from_a_stale_row(
    sqlite_url: str, wal_index: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Property, SQLite: whatever is committed between two checks, by whom, the attempt check
    answers what the job's row says at that moment (read by another connection): the running
    attempt with its current condition, or ``InvalidToken`` once the attempt was re-claimed or
    ended. The shortcuts (no read while the WAL index says nothing was committed, or only this
    process's own variable writes) must never hide a commit that changed the row."""
    if not wal_index:  # an index of another layout than the one this code knows
        monkeypatch.setattr(datastore, "WAL_INDEX_VERSION", b"\0\0\0\0")
    with start_blocking_portal("asyncio") as portal:
        stack = AsyncExitStack()

        async def open_store() -> tuple[DataStore, JobQueue, VariableStore]:
            store = DataStore(url=sqlite_url)
            await store.start(stack, upgrade=True)
            cipher = Cipher.from_spec(f"c1:{generate_key()}")
            return store, JobQueue(store=store, lease_seconds=30), VariableStore(store, cipher)

        store, queue, variables = portal.call(open_store)
        assert store.sqlite_path is not None
        other = sqlite3.connect(store.sqlite_path, isolation_level=None, check_same_thread=False)
        other.execute("CREATE TABLE IF NOT EXISTS elsewhere (n INTEGER)")

        async def play(ops: list[str]) -> None:
            event = await store.add_event(Event(name=f"prop {uuid.uuid4()}", action=NOOP))
            await queue.enqueue(event)
            [job] = await queue.claim("w", 1)
            lease = job.lease_id
            assert lease is not None
            reader = AttemptReader(queue)  # each example its own (the store's links stay)
            for n, op in enumerate(ops):
                if op == "check":
                    status, now_lease, condition = other.execute(
                        "SELECT status, lease_id, condition FROM jobs WHERE id = ?", (job.id,)
                    ).fetchone()
                    if status == JobStatus.RUNNING.value and now_lease == lease:
                        got = await reader.running(job.id, lease)
                        assert got.condition == (None if condition is None else bool(condition))
                    else:
                        with pytest.raises(InvalidToken):
                            await reader.running(job.id, lease)
                elif op == "variable":
                    await variables.set("alice", "k", n)
                elif op == "new_variable":
                    await variables.set("alice", f"k{uuid.uuid4().hex}", n)
                elif op == "heartbeat":
                    await queue.heartbeat(job.id, lease)
                elif op == "condition":
                    await queue.set_condition(job.id, lease, n % 2 == 0)
                elif op == "their_condition":
                    other.execute("UPDATE jobs SET condition = ? WHERE id = ?", (n % 2, job.id))
                elif op == "their_write":
                    other.execute("INSERT INTO elsewhere VALUES (?)", (n,))
                elif op == "restart":
                    other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                elif op == "reclaimed":
                    other.execute(
                        "UPDATE jobs SET lease_id = ? WHERE id = ?", (f"lease {n}", job.id)
                    )
                else:  # ended
                    other.execute(
                        "UPDATE jobs SET status = ? WHERE id = ?",
                        (JobStatus.SUCCEEDED.value, job.id),
                    )

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(ops=ATTEMPT_OPS)
        def run(ops: list[str]) -> None:
            portal.call(play, ops)

        try:
            run()
            assert (store.commit_mark() is not None) is wal_index  # the shortcut in play
        finally:
            other.close()
            portal.call(stack.aclose)
