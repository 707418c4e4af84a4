"""The job queue on SQLite and PostgreSQL: claims, leases, fencing, retries, limits, logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta

import anyio
import pytest
import sqlalchemy as sa

from cronium_core import Event, FakeClock, JobStatus, RetryPolicy, Script, Stream
from cronium_core.datastore import DataStore
from cronium_core.errors import JobNotFound, ValidationError
from cronium_core.events import OverlapPolicy
from cronium_core.queue import JobQueue
from cronium_core.schema import jobs as JT

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
