"""The job queue on SQLite and PostgreSQL: claims, leases, fencing, retries, limits, logs."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta

import anyio
import pytest
import sqlalchemy as sa

from cronium_core import (
    Event,
    FakeClock,
    JobStatus,
    RetryPolicy,
    Script,
    Stream,
    SystemClock,
    Trigger,
    datastore,
)
from cronium_core.datastore import DataStore
from cronium_core.errors import JobNotFound, ValidationError
from cronium_core.events import OverlapPolicy
from cronium_core.queue import EnqueueItem, FinishItem, JobQueue
from cronium_core.schema import jobs as JT
from tests.busy_sqlite import write_while_locked

pytestmark = pytest.mark.anyio

NOOP = Script(language="bash", code="true")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(db_url: str, clock: FakeClock) -> AsyncIterator[DataStore]:
    async with AsyncExitStack() as stack:
        store = DataStore(url=db_url, clock=clock)
        await store.start(stack, upgrade=True)
        yield store


@pytest.fixture
def queue(store: DataStore) -> JobQueue:
    return JobQueue(store=store, lease_seconds=30)


async def add(store: DataStore, name: str = "ev", **kw: object) -> Event:
    return await store.add_event(Event(name=name, action=NOOP, **kw))  # type: ignore[arg-type]


async def test_enqueue_claim_finish(store: DataStore, queue: JobQueue) -> None:
    ev = await add(store)
    job = await queue.enqueue(ev, input={"x": 1})
    assert job.status is JobStatus.QUEUED and job.attempt == 0
    [claimed] = await queue.claim("w1", 5)
    assert claimed.id == job.id and claimed.status is JobStatus.RUNNING
    assert claimed.attempt == 1 and claimed.lease_owner == "w1" and claimed.lease_id
    assert await queue.claim("w2", 5) == []
    result = await queue.finish(
        claimed.id, claimed.lease_id, status=JobStatus.SUCCEEDED, exit_code=0, output={"y": 2}
    )
    assert result is not None and not result.retrying
    done = await queue.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.output == {"y": 2}
    assert done.input == {"x": 1} and done.finished_at is not None
    # a second completion of the same attempt is a no-op
    again = await queue.finish(claimed.id, claimed.lease_id, status=JobStatus.FAILED)
    assert again is None
    assert (await queue.get(job.id)).status is JobStatus.SUCCEEDED


async def test_priority_then_run_after(store: DataStore, queue: JobQueue, clock: FakeClock) -> None:
    ev = await add(store)
    low = await queue.enqueue(ev, priority=0)
    high = await queue.enqueue(ev, priority=10)
    later = await queue.enqueue(ev, priority=99, run_after=clock.now() + timedelta(seconds=60))
    claimed = await queue.claim("w", 10)
    assert [j.id for j in claimed] == [high.id, low.id]
    clock.advance(61)
    assert [j.id for j in await queue.claim("w", 10)] == [later.id]


async def test_retry_with_exponential_backoff(
    store: DataStore, queue: JobQueue, clock: FakeClock
) -> None:
    ev = await add(store, retry=RetryPolicy(max_attempts=3, backoff_base=2, backoff_max=100))
    job = await queue.enqueue(ev)
    delays = []
    for attempt in (1, 2):
        [c] = await queue.claim("w")
        assert c.attempt == attempt
        res = await queue.finish(c.id, c.lease_id or "", status=JobStatus.FAILED, exit_code=1)
        assert res is not None and res.retrying and res.job.status is JobStatus.QUEUED
        delays.append((res.job.run_after - clock.now()).total_seconds())
        assert await queue.claim("w") == []  # not before the backoff
        clock.advance(delays[-1])
    assert delays == [2.0, 4.0]
    [c] = await queue.claim("w")
    res = await queue.finish(c.id, c.lease_id or "", status=JobStatus.FAILED, error="boom")
    assert res is not None and not res.retrying
    final = await queue.get(job.id)
    assert final.status is JobStatus.FAILED and final.attempt == 3 and final.error == "boom"


async def test_concurrency_limit_per_event(store: DataStore, queue: JobQueue) -> None:
    limited = await add(store, "limited", max_concurrency=2)
    serial = await add(store, "serial", overlap=OverlapPolicy.QUEUE_ALL)
    free = await add(store, "free")
    for _ in range(4):
        await queue.enqueue(limited)
        await queue.enqueue(serial)
        await queue.enqueue(free)
    claimed = await queue.claim("w", 100)
    by_event: dict[str, int] = {}
    for job in claimed:
        by_event[job.event_id] = by_event.get(job.event_id, 0) + 1
    assert by_event == {limited.id: 2, serial.id: 1, free.id: 4}
    assert await queue.claim("w", 100) == []
    one = next(j for j in claimed if j.event_id == serial.id)
    await queue.finish(one.id, one.lease_id or "", status=JobStatus.SUCCEEDED)
    [nxt] = await queue.claim("w", 100)
    assert nxt.event_id == serial.id


async def test_cancel_queued_and_running(store: DataStore, queue: JobQueue) -> None:
    ev = await add(store)
    queued = await queue.enqueue(ev)
    running = await queue.enqueue(ev)
    cancelled = await queue.request_cancel(queued.id)
    assert cancelled.status is JobStatus.CANCELLED
    [c] = await queue.claim("w")
    assert c.id == running.id
    flagged = await queue.request_cancel(running.id)
    assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested
    beat = await queue.heartbeat(c.id, c.lease_id or "")
    assert beat.alive and beat.cancel_requested
    with pytest.raises(JobNotFound):
        await queue.request_cancel("nope")


async def test_reaper_on_fabricated_state(
    store: DataStore, queue: JobQueue, clock: FakeClock
) -> None:
    """Q3: a fresh lease stays, a stale one is requeued with backoff, an exhausted one fails."""
    ev = await add(store, retry=RetryPolicy(max_attempts=2, backoff_base=5))
    ids = [(await queue.enqueue(ev)).id for _ in range(3)]  # fresh, stale, exhausted
    now = clock.now()

    async with store.begin() as conn:
        for job_id, heartbeat_age, attempt in zip(ids, (3, 120, 120), (1, 1, 2), strict=True):
            await conn.execute(
                sa.update(JT)
                .where(JT.c.id == job_id)
                .values(
                    status="running",
                    attempt=attempt,
                    lease_owner="ghost",
                    lease_id=job_id,
                    heartbeat_at=now - timedelta(seconds=heartbeat_age),
                    lease_expires=now - timedelta(seconds=heartbeat_age) + timedelta(seconds=30),
                )
            )
    result = await queue.reap()
    assert [j.id for j in result.requeued] == [ids[1]]
    assert [j.id for j in result.failed] == [ids[2]]
    assert (await queue.get(ids[0])).status is JobStatus.RUNNING
    requeued = await queue.get(ids[1])
    assert requeued.status is JobStatus.QUEUED and "lost" in (requeued.error or "")
    assert requeued.run_after == now + timedelta(seconds=5)
    failed = await queue.get(ids[2])
    assert failed.status is JobStatus.FAILED and failed.finished_at == now


async def test_zombie_completion_is_fenced(
    store: DataStore, queue: JobQueue, clock: FakeClock
) -> None:
    """Q4 at the queue level: A's lease expires, B re-claims and finishes; A's writes do nothing."""
    ev = await add(store, retry=RetryPolicy(max_attempts=3, backoff_base=0))
    job = await queue.enqueue(ev)
    [a] = await queue.claim("A")
    clock.advance(31)
    await queue.reap()
    [b] = await queue.claim("B")
    assert b.attempt == 2 and b.lease_id != a.lease_id
    assert await queue.set_output(b.id, b.lease_id or "", {"from": "B"})
    assert await queue.finish(b.id, b.lease_id or "", status=JobStatus.SUCCEEDED, exit_code=0)
    assert not await queue.set_output(a.id, a.lease_id or "", {"from": "A"})
    assert not await queue.set_condition(a.id, a.lease_id or "", True)
    assert await queue.finish(a.id, a.lease_id or "", status=JobStatus.FAILED) is None
    assert not (await queue.heartbeat(a.id, a.lease_id or "")).alive
    final = await queue.get(job.id)
    assert final.status is JobStatus.SUCCEEDED and final.output == {"from": "B"}
    assert final.condition is None


async def test_transactional_enqueue(store: DataStore, queue: JobQueue) -> None:
    """Q6 (a, b): a job enqueued in a rolled-back transaction never exists."""
    ev = await add(store)

    class Rollback(Exception):
        pass

    ghost_ids: list[str] = []

    async def enqueue_then_fail() -> None:
        async with store.begin() as conn:
            ghost_ids.append((await queue.enqueue(ev, conn=conn)).id)
            raise Rollback

    with pytest.raises(Rollback):
        await enqueue_then_fail()
    [ghost_id] = ghost_ids
    with pytest.raises(JobNotFound):
        await queue.get(ghost_id)
    assert await queue.claim("w") == []
    async with store.begin() as conn:
        real = await queue.enqueue(ev, conn=conn)
    assert (await queue.get(real.id)).status is JobStatus.QUEUED


async def test_idempotency_key_concurrent(store: DataStore, queue: JobQueue) -> None:
    """Q6 (c): the same key sent concurrently gives one job; everyone gets its id."""
    ev = await add(store)
    ids: list[str] = []

    async def send() -> None:
        ids.append((await queue.enqueue(ev, idempotency_key="run-42")).id)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(send)
    assert len(set(ids)) == 1
    assert await queue.count() == 1
    assert (await queue.enqueue(ev, idempotency_key="run-42")).id == ids[0]
    with pytest.raises(ValidationError):
        await queue.enqueue(ev, idempotency_key="")


async def test_release_gives_attempt_back(store: DataStore, queue: JobQueue) -> None:
    ev = await add(store)
    job = await queue.enqueue(ev)
    [c] = await queue.claim("w")
    assert await queue.release(c.id, c.lease_id or "")
    again = await queue.get(job.id)
    assert again.status is JobStatus.QUEUED and again.attempt == 0 and again.lease_id is None
    assert await queue.finish(c.id, c.lease_id or "", status=JobStatus.SUCCEEDED) is None


async def test_logs_in_order_and_capped(store: DataStore, clock: FakeClock) -> None:
    queue = JobQueue(store=store, max_log_bytes=1000)
    ev = await add(store)
    job = await queue.enqueue(ev)
    now = clock.now()
    first = await queue.append_logs(
        job.id, 1, [(Stream.STDOUT, now, f"line {i}") for i in range(5)]
    )
    assert [ln.seq for ln in first] == [1, 2, 3, 4, 5]
    await queue.append_logs(job.id, 1, [(Stream.STDERR, now, "x" * 400) for _ in range(5)])
    lines = await queue.read_logs(job.id)
    assert [ln.seq for ln in lines] == list(range(1, len(lines) + 1))
    assert lines[-1].stream is Stream.SYSTEM and "truncated" in lines[-1].text
    assert sum(len(ln.text) for ln in lines[:-1]) <= 1000
    assert (await queue.get(job.id)).log_truncated
    assert await queue.append_logs(job.id, 1, [(Stream.STDOUT, now, "more")]) == []
    assert [ln.text for ln in await queue.read_logs(job.id, after=3, limit=2)] == [
        "line 3",
        "line 4",
    ]


# -- batches --------------------------------------------------------------------------------


async def test_enqueue_many_returns_what_is_stored(
    store: DataStore, queue: JobQueue, clock: FakeClock
) -> None:
    plain = await add(store, "plain", priority=3)
    limited = await add(store, "limited", max_concurrency=2, retry=RetryPolicy(max_attempts=4))
    later = clock.now() + timedelta(seconds=5)
    jobs = await queue.enqueue_many(
        [
            (plain, {}),
            EnqueueItem(event=limited, input={"n": 1, "t": (1, 2)}, priority=7),
            (plain, {"input": {"a": [1, {"b": None}]}, "trigger": Trigger.SCHEDULE}),
            (limited, {"run_after": later, "fire_time": later, "backfilled": True}),
            (plain, {"workflow_run_id": "run-1", "node_id": "n1"}),
        ]
    )
    assert [j.event_id for j in jobs] == [plain.id, limited.id, plain.id, limited.id, plain.id]
    assert len({j.id for j in jobs}) == 5
    # what enqueue_many returns without reading back is what the database holds
    for job in jobs:
        assert await queue.get(job.id) == job
    assert jobs[0].priority == 3 and jobs[1].priority == 7 and jobs[1].max_attempts == 4
    assert jobs[1].input == {"n": 1, "t": [1, 2]}
    assert jobs[2].trigger is Trigger.SCHEDULE and jobs[3].backfilled
    assert jobs[3].run_after == later == jobs[3].fire_time
    assert await queue.enqueue_many([]) == []
    # the limited event's limit came along: two of its jobs, one not yet due
    claimed = await queue.claim("w", 10)
    assert {j.id for j in claimed} == {jobs[0].id, jobs[1].id, jobs[2].id, jobs[4].id}


async def test_enqueue_many_honours_idempotency_keys(store: DataStore, queue: JobQueue) -> None:
    ev = await add(store)
    first = await queue.enqueue(ev, idempotency_key="a")
    jobs = await queue.enqueue_many(
        [
            (ev, {"idempotency_key": "a"}),  # taken before
            (ev, {"idempotency_key": "b"}),  # new
            (ev, {}),
            (ev, {"idempotency_key": "b"}),  # taken by an item of this call
            (ev, {"idempotency_key": "c", "input": {"x": 1}}),
        ]
    )
    assert jobs[0] == first
    assert jobs[3] == jobs[1] != jobs[4]
    assert jobs[1].idempotency_key == "b" and jobs[2].idempotency_key is None
    assert await queue.count() == 4
    again = await queue.enqueue_many([(ev, {"idempotency_key": k}) for k in "cba"])
    assert [j.id for j in again] == [jobs[4].id, jobs[1].id, first.id]
    assert again[0].input == {"x": 1}
    assert await queue.count() == 4
    # a large batch (its jobs are made while the database stores them) works alike
    keys = [f"k{i % 25}" for i in range(50)] + ["a"]
    big = await queue.enqueue_many([(ev, {"idempotency_key": k, "input": {"k": k}}) for k in keys])
    assert [j.idempotency_key for j in big] == keys
    assert big[25:50] == big[:25] and big[50] == first
    assert all(j.input == {"k": j.idempotency_key} for j in big[:50])
    assert await queue.count() == 4 + 25


async def test_enqueue_many_is_one_transaction(store: DataStore, queue: JobQueue) -> None:
    ev = await add(store)
    with pytest.raises(ValidationError):
        await queue.enqueue_many([(ev, {}), (ev, {"idempotency_key": "x" * 201})])
    with pytest.raises(ValidationError):
        await queue.enqueue_many([(ev, {}), (Event(name="unsaved", action=NOOP), {})])
    with pytest.raises(TypeError):
        await queue.enqueue_many([(ev, {"colour": "red"})])

    # an error while storing is raised as it is (not in an exception group), and stores nothing
    with pytest.raises(TypeError, match="JSON serializable"):
        await queue.enqueue_many([(ev, {"input": {"n": 1}})] * 40 + [(ev, {"input": object()})])

    class Rollback(Exception):
        pass

    async def enqueue_then_fail(n: int) -> None:
        async with store.begin() as conn:
            await queue.enqueue_many([(ev, {})] * n, conn=conn)
            raise Rollback

    for n in (3, 40):
        with pytest.raises(Rollback):
            await enqueue_then_fail(n)
    assert await queue.count() == 0
    async with store.begin() as conn:
        await queue.enqueue_many([(ev, {})] * 3, conn=conn)
        await queue.enqueue_many([(ev, {})] * 40, conn=conn)
    assert await queue.count(JobStatus.QUEUED) == 43


async def test_finish_many_decides_like_finish(
    store: DataStore, queue: JobQueue, clock: FakeClock
) -> None:
    once = await add(store, "once")
    retried = await add(
        store, "retried", retry=RetryPolicy(max_attempts=2, backoff_base=1.5, backoff_max=60)
    )
    await queue.enqueue_many([(once, {})] * 2 + [(retried, {})] * 5 + [(once, {})])
    claimed = await queue.claim("w", 10)
    ok, ok2, r_fail, r_timeout, r_cancel, r_flagged, r_stale, spent = claimed
    assert {j.event_id for j in (r_fail, r_timeout, r_cancel, r_flagged, r_stale)} == {retried.id}
    await queue.request_cancel(r_flagged.id)  # a cancel request means no retry
    assert await queue.release(r_stale.id, r_stale.lease_id or "")
    [r_stale_now] = await queue.claim("w2")
    assert await queue.set_output(ok2.id, ok2.lease_id or "", {"early": True})
    clock.advance(2)
    now = clock.now()
    results = await queue.finish_many(
        [
            (ok.id, ok.lease_id, JobStatus.SUCCEEDED, 0, None, {"out": 1}, True),
            FinishItem(ok2.id, ok2.lease_id or "", JobStatus.SUCCEEDED, condition=False),
            (r_fail.id, r_fail.lease_id, JobStatus.FAILED, 3, "boom"),
            (r_timeout.id, r_timeout.lease_id, JobStatus.TIMED_OUT, None, "slow"),
            (r_cancel.id, r_cancel.lease_id, JobStatus.CANCELLED),
            (r_flagged.id, r_flagged.lease_id, JobStatus.FAILED, 1),
            (r_stale.id, r_stale.lease_id, JobStatus.SUCCEEDED),  # fenced: re-claimed
            (spent.id, spent.lease_id, JobStatus.FAILED, 1),
            ("no-such-job", "lease", JobStatus.SUCCEEDED),
            (ok.id, ok.lease_id, JobStatus.FAILED),  # the same attempt again: fenced
        ]
    )
    assert [None if r is None else r.retrying for r in results] == [
        False, False, True, True, False, False, None, False, None, None,
    ]  # fmt: skip
    assert [r.job.status for r in results if r is not None] == [
        JobStatus.SUCCEEDED,
        JobStatus.SUCCEEDED,
        JobStatus.QUEUED,
        JobStatus.QUEUED,
        JobStatus.CANCELLED,
        JobStatus.FAILED,
        JobStatus.FAILED,
    ]
    for r in results:
        if r is not None:
            assert await queue.get(r.job.id) == r.job
    done = await queue.get(ok.id)
    assert (done.output, done.condition, done.exit_code) == ({"out": 1}, True, 0)
    assert done.finished_at == now and done.lease_id is None and done.lease_owner == "w"
    # no output given: the one the job set while running stays
    kept = await queue.get(ok2.id)
    assert kept.output == {"early": True} and kept.condition is False
    back = await queue.get(r_fail.id)
    assert back.run_after == now + timedelta(seconds=1.5) and back.error == "boom"
    assert back.exit_code == 3 and back.lease_owner is None and back.finished_at is None
    assert (await queue.get(r_stale_now.id)).status is JobStatus.RUNNING
    assert await queue.finish_many([]) == []
    with pytest.raises(ValueError, match="final status"):
        await queue.finish_many([(ok.id, ok.lease_id, JobStatus.RUNNING)])


async def test_finish_many_in_the_callers_transaction(store: DataStore, queue: JobQueue) -> None:
    ev = await add(store)
    await queue.enqueue_many([(ev, {})] * 3)
    claimed = await queue.claim("w", 3)
    ends = [(j.id, j.lease_id, JobStatus.SUCCEEDED) for j in claimed]

    class Rollback(Exception):
        pass

    async def finish_then_fail() -> None:
        async with store.begin() as conn:
            assert all(await queue.finish_many(ends, conn=conn))
            raise Rollback

    with pytest.raises(Rollback):
        await finish_then_fail()
    assert await queue.count(JobStatus.RUNNING) == 3
    async with store.begin() as conn:
        assert all(await queue.finish_many(ends, conn=conn))
    assert await queue.count(JobStatus.SUCCEEDED) == 3


@pytest.mark.parametrize("base", [0.3, 0.1, 1e-7, 2.5e-6, 7.0000005])
async def test_backoff_to_the_microsecond(
    store: DataStore, queue: JobQueue, clock: FakeClock, base: float
) -> None:
    """Where the retry time is computed (SQL on PostgreSQL, Python on SQLite and in the reaper)
    it comes out as now + timedelta(seconds=backoff), to the microsecond."""
    ev = await add(store, retry=RetryPolicy(max_attempts=3, backoff_base=base, backoff_max=600))
    one, two = await queue.enqueue_many([(ev, {})] * 2)
    for attempt in (1, 2):
        a, b = await queue.claim("w", 2)
        clock.advance(microseconds=7)
        res = await queue.finish(a.id, a.lease_id or "", status=JobStatus.FAILED)
        [many] = await queue.finish_many([(b.id, b.lease_id, JobStatus.TIMED_OUT)])
        want = clock.now() + timedelta(seconds=min(600, base * 2 ** (attempt - 1)))
        assert res is not None and res.job.run_after == want
        assert many is not None and many.job.run_after == want
        clock.advance(seconds=1000)
    assert {one.id, two.id} == {j.id for j in await queue.claim("w", 2)}


async def test_claim_order_and_executors(
    store: DataStore, queue: JobQueue, clock: FakeClock
) -> None:
    local = await add(store, "local")
    remote = await store.add_event(Event(name="remote", action=NOOP, executor="http"))
    now = clock.now()
    # one tick's catch-up runs (same priority and times): fire_time orders them, NULL last
    tick = [await queue.enqueue(local)]
    tick += [await queue.enqueue(local, fire_time=now - timedelta(minutes=m)) for m in (1, 3, 2)]
    # a batch is claimed in its order, whatever its random ids
    clock.advance(1)
    batch = await queue.enqueue_many([(local, {"input": {"i": i}}) for i in range(6)])
    [remote_job] = await queue.enqueue_many([(remote, {})])
    assert await queue.claim("w", 5, executors=[]) == []
    [r] = await queue.claim("w", 5, executors=["http"])
    assert r.id == remote_job.id
    claimed = await queue.claim("w", 20, executors=["local", "other"])
    want = [tick[2], tick[3], tick[1], tick[0], *batch]
    assert [j.id for j in claimed] == [j.id for j in want]


async def test_finish_of_an_unknown_job_raises(queue: JobQueue) -> None:
    with pytest.raises(JobNotFound):
        await queue.finish("nope", "lease", status=JobStatus.SUCCEEDED)
    with pytest.raises(JobNotFound):
        await queue.finish("nope", "lease", status=JobStatus.FAILED)


@pytest.mark.postgres
async def test_connections_dropped_while_pooled_are_replaced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pre-ping on every checkout, but a connection idle in the pool is pinged before use:
    when the server dropped it meanwhile (a restart, a proxy), the call gets a fresh one."""
    import asyncpg

    monkeypatch.setattr(datastore, "IDLE_PING_SECONDS", 0.0)
    async with AsyncExitStack() as stack:
        store = DataStore(url=pg_url)
        await store.start(stack)
        queue = JobQueue(store=store)
        ev = await add(store)
        await queue.enqueue_many([(ev, {})] * 3)
        killer = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
        try:
            killed = await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await killer.close()
        assert killed >= 1
        claimed = await queue.claim("w", 5)
        assert len(claimed) == 3
        assert all(
            await queue.finish_many([(j.id, j.lease_id, JobStatus.SUCCEEDED) for j in claimed])
        )


async def test_enqueue_many_keeps_equal_but_different_inputs_apart(
    store: DataStore, queue: JobQueue
) -> None:
    ev = await add(store)
    inputs = [{"n": 1}, {"n": 1.0}, {"n": True}, [1], [True]]
    jobs = await queue.enqueue_many([(ev, {"input": x}) for x in inputs])
    for job, x in zip(jobs, inputs, strict=True):
        stored = (await queue.get(job.id)).input
        assert stored == job.input == x
        assert repr(stored) == repr(x)


@pytest.mark.postgres
async def test_claim_reads_its_index_in_order(pg_url: str) -> None:
    """The claim walks ix_jobs_claim in order and stops after a few rows. Cronium's sessions
    plan without bitmap scans: with statistics that lag behind a burst of jobs, PostgreSQL
    preferred a bitmap scan of every queued job and a sort, on every claim."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=pg_url)
        await store.start(stack)
        queue = JobQueue(store=store)
        ev = await add(store)
        for _ in range(4):
            await queue.enqueue_many([(ev, {})] * 500)
        statements: list[tuple[str, object]] = []

        def grab(conn: object, cursor: object, sql: str, params: object, *args: object) -> None:
            if sql.startswith("WITH cand AS"):
                statements.append((sql, params))

        sa.event.listen(store.engine.sync_engine, "before_cursor_execute", grab)
        assert len(await queue.claim("w", 10)) == 10
        [(statement, params)] = statements
        async with store.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            assert await driver.fetchval("SHOW enable_bitmapscan") == "off"
            plan = "\n".join(r[0] for r in await driver.fetch("EXPLAIN " + statement, *params))
        assert "Index Scan using ix_jobs_claim" in plan and "Bitmap" not in plan, plan


def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """A list that grows by the function of every trip to a worker thread from now on."""
    hops: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(fn: object, *args: object, **kw: object) -> object:
        hops.append(fn)
        return await run_sync(fn, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return hops


@pytest.mark.parametrize("authoritative", [True, False], ids=["fake-clock", "database-clock"])
async def test_a_heartbeat_in_place_writes_what_one_in_a_thread_writes(
    sqlite_url: str, authoritative: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: a heartbeat runs on the event loop (no thread) when the database is free, and
    stores the same columns in the same form as one run the usual way, in a thread."""
    clock = FakeClock() if authoritative else SystemClock()
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url, clock=clock)
        await store.start(stack, upgrade=True)
        queue = JobQueue(store=store, lease_seconds=30)
        ev = await add(store)
        for _ in range(3):
            await queue.enqueue(ev)
        here, there, over = await queue.claim("w", 3)
        await queue.finish(over.id, over.lease_id or "", status=JobStatus.SUCCEEDED)
        await queue.request_cancel(there.id)

        hops = thread_hops(monkeypatch)
        beat = await queue.heartbeat(here.id, here.lease_id or "")
        assert beat.alive and not beat.cancel_requested
        gone = await queue.heartbeat(over.id, over.lease_id or "")
        assert not gone.alive and gone.cancel_requested
        assert hops == []  # both answered in place

        async def refuse(*_: object) -> None:
            raise datastore.WriteBusy("another process writes")

        monkeypatch.setattr(DataStore, "execute_in_place", refuse)
        beat = await queue.heartbeat(there.id, there.lease_id or "")
        assert beat.alive and beat.cancel_requested  # the usual way, in a thread
        assert hops

        assert store.sqlite_path is not None
        raw = sqlite3.connect(store.sqlite_path)
        rows = dict(
            raw.execute(
                "SELECT id, heartbeat_at || '|' || lease_expires FROM jobs WHERE id IN (?, ?)",
                (here.id, there.id),
            ).fetchall()
        )
        raw.close()
        in_place, in_thread = (rows[here.id].split("|"), rows[there.id].split("|"))
        # the same text form (SQLAlchemy's on SQLite), column by column
        assert [len(v) for v in in_place] == [len(v) for v in in_thread]
        a, b = await queue.get(here.id), await queue.get(there.id)
        assert a.heartbeat_at is not None and b.heartbeat_at is not None
        assert a.lease_expires is not None and b.lease_expires is not None
        if authoritative:
            assert a.heartbeat_at == b.heartbeat_at == clock.now()
            assert a.lease_expires == b.lease_expires == clock.now() + timedelta(seconds=30)
        else:
            assert abs(a.lease_expires - b.lease_expires) < timedelta(seconds=5)
            assert a.lease_expires - a.heartbeat_at == pytest.approx(
                timedelta(seconds=30), abs=timedelta(seconds=5)
            )


async def test_a_heartbeat_waits_for_a_busy_database_in_a_thread(sqlite_url: str) -> None:
    """SQLite: while another process holds the write lock, a heartbeat does not hold up the
    event loop: it waits the usual way and goes through once the lock is free."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack, upgrade=True)
        queue = JobQueue(store=store, lease_seconds=30)
        await queue.enqueue(await add(store))
        [job] = await queue.claim("w")
        assert store.sqlite_path is not None
        beat, ticks = await write_while_locked(
            store.sqlite_path, lambda: queue.heartbeat(job.id, job.lease_id or "")
        )
        assert beat.alive and ticks >= 10  # the loop ran on while the heartbeat waited


async def test_outputs_and_conditions_in_place_write_what_one_in_a_thread_writes(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: a running attempt's output and condition are written on the event loop (no
    thread) when the database is free, stored as a write in a thread stores them; an output
    over ``IN_PLACE_MAX_BYTES`` goes to a thread; an attempt over is refused either way."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack, upgrade=True)
        queue = JobQueue(store=store, lease_seconds=30)
        ev = await add(store)
        for _ in range(4):
            await queue.enqueue(ev)
        here, there, big, over = await queue.claim("w", 4)
        await queue.finish(over.id, over.lease_id or "", status=JobStatus.SUCCEEDED)
        output = {"text": "é ☃ 🙂", "n": [1, 2.5, None, True], "nested": {"k": "v"}}

        hops = thread_hops(monkeypatch)
        assert await queue.set_output(here.id, here.lease_id or "", output)
        assert await queue.set_condition(here.id, here.lease_id or "", True)
        assert not await queue.set_output(over.id, over.lease_id or "", output)
        assert not await queue.set_condition(here.id, "another lease", False)
        assert hops == []  # all answered in place

        large = "x" * (datastore.IN_PLACE_MAX_BYTES + 1)
        assert await queue.set_output(big.id, big.lease_id or "", large)
        assert len(hops) == 1  # in a thread
        assert (await queue.get(big.id)).output == large

        async def refuse(*_: object) -> None:
            raise datastore.WriteBusy("another process writes")

        monkeypatch.setattr(DataStore, "execute_in_place", refuse)
        assert await queue.set_output(there.id, there.lease_id or "", output)
        assert await queue.set_condition(there.id, there.lease_id or "", True)
        assert not await queue.set_output(over.id, over.lease_id or "", output)
        assert len(hops) == 4

        assert store.sqlite_path is not None
        raw = sqlite3.connect(store.sqlite_path)
        rows = dict(
            (r[0], r[1:])
            for r in raw.execute(
                "SELECT id, output, typeof(output), condition, typeof(condition) FROM jobs "
                "WHERE id IN (?, ?)",
                (here.id, there.id),
            )
        )
        raw.close()
        assert rows[here.id] == rows[there.id]  # the same text, the same storage classes
        for job in (here, there):
            got = await queue.get(job.id)
            assert got.output == output and got.condition is True
