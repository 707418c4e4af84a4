"""Scheduler reliability (RELIABILITY §9.2): no duplicate fires with several scheduler
processes (S1), downtime catch-up per misfire policy (S3), clock jumps and skew (S5), and the
overlap policies, all through the real Scheduler on SQLite and PostgreSQL with faked time."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import attrs
import pytest
import sqlalchemy as sa

from cronium_core import (
    ConditionalAction,
    Cron,
    Event,
    EventStatus,
    FakeClock,
    JobStatus,
    MisfirePolicy,
    OverlapPolicy,
    Script,
    When,
)
from cronium_core.broker import LocalBroker
from cronium_core.datastore import DataStore
from cronium_core.engine import RunEngine
from cronium_core.jobs import Job
from cronium_core.queue import JobQueue
from cronium_core.scheduler import FireRecord, Scheduler
from cronium_core.schema import jobs as JT
from cronium_core.schema import schedule_fires as FT
from tests.procs import expect_line, spawn, spawned

NOOP = Script(language="bash", code="true")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@attrs.define(kw_only=True)
class Parts:
    """One scheduler's worth of real parts on one database."""

    clock: FakeClock
    store: DataStore
    queue: JobQueue
    scheduler: Scheduler


async def open_parts(stack: AsyncExitStack, url: str, clock: FakeClock, name: str) -> Parts:
    store = DataStore(url=url, clock=clock)
    await store.start(stack, upgrade=True)
    queue = JobQueue(store=store)
    engine = RunEngine(store=store, queue=queue, broker=LocalBroker())
    return Parts(clock=clock, store=store, queue=queue, scheduler=Scheduler(engine=engine, id=name))


@pytest.fixture
async def parts(db_url: str) -> AsyncIterator[Parts]:
    async with AsyncExitStack() as stack:
        yield await open_parts(stack, db_url, FakeClock(T0), "s1")


async def fire_rows(store: DataStore) -> list[sa.Row]:
    async with store.read() as conn:
        return list(await conn.execute(sa.select(FT).order_by(FT.c.owner_id, FT.c.fire_time)))


async def job_rows(store: DataStore) -> list[sa.Row]:
    async with store.read() as conn:
        return list(await conn.execute(sa.select(JT).order_by(JT.c.event_id, JT.c.fire_time)))


# --- S1 -------------------------------------------------------------------------------------

S1_SCHEDULERS = 3
S1_EVENTS = int(os.environ.get("CRONIUM_S1_EVENTS", "30"))
S1_MINUTES = 60


@pytest.mark.anyio
@pytest.mark.slow
async def test_s1_no_duplicate_fires_with_three_scheduler_processes(
    db_url: str, record_property: pytest.RecordProperty
) -> None:
    """S1: 3 scheduler processes on one database, S1_EVENTS events of ``* * * * *`` and 60
    simulated minutes. Scaled down: 30 events by default (CRONIUM_S1_EVENTS; the checklist says
    300), because one fire costs 5-15 ms here and the test must stay near 20 s. Each minute
    the test sends the same fake time (plus 0/1/2 s of skew) to all three at once and waits
    for their answers. Pass: exactly one ``schedule_fires`` row and one job per (event,
    minute); the unique-key losses (``Scheduler.conflicts``) are counted and reported, never
    raised (every process exits 0)."""
    async with AsyncExitStack() as stack:
        main = await open_parts(stack, db_url, FakeClock(T0), "setup")
        events = [
            await main.store.add_event(
                Event(name=f"e{i:03d}", action=NOOP, schedule=Cron(expression="* * * * *"))
            )
            for i in range(S1_EVENTS)
        ]
        procs = [spawn("scheduler_proc", db_url, f"sched-{i}") for i in range(S1_SCHEDULERS)]
        conflicts = [0] * S1_SCHEDULERS
        with spawned(procs):
            for proc in procs:
                await anyio.to_thread.run_sync(expect_line, proc, "ready")
            started = time.monotonic()
            for minute in range(1, S1_MINUTES + 1):
                for i, proc in enumerate(procs):
                    assert proc.stdin is not None
                    at = T0 + minute * MINUTE + timedelta(seconds=i)
                    proc.stdin.write(f"tick {at.isoformat()}\n")
                    proc.stdin.flush()
                for i, proc in enumerate(procs):
                    answer = await anyio.to_thread.run_sync(expect_line, proc, "done")
                    conflicts[i] = int(answer.split()[1])
            elapsed = time.monotonic() - started
            for proc in procs:
                _, err = await anyio.to_thread.run_sync(lambda p=proc: p.communicate("quit\n", 30))
                assert proc.returncode == 0, err

        fires = await fire_rows(main.store)
        jobs = await job_rows(main.store)

    minutes = [T0 + m * MINUTE for m in range(1, S1_MINUTES + 1)]
    expected = {(e.id, t) for e in events for t in minutes}
    fire_keys = Counter((f.owner_id, f.fire_time) for f in fires)
    assert set(fire_keys) == expected
    assert set(fire_keys.values()) == {1}
    assert {f.status for f in fires} == {"enqueued"}
    job_keys = Counter((j.event_id, j.fire_time) for j in jobs)
    assert set(job_keys) == expected
    assert set(job_keys.values()) == {1}
    assert {f.job_id for f in fires} == {j.id for j in jobs}
    by_scheduler = Counter(f.scheduler for f in fires)
    record_property("conflicts", sum(conflicts))
    record_property("fires_by_scheduler", dict(by_scheduler))
    print(f"S1: {len(fires)} fires in {elapsed:.1f}s, by scheduler {dict(by_scheduler)}, "
          f"unique-key conflicts {conflicts}")  # fmt: skip


# --- S3 -------------------------------------------------------------------------------------


async def hourly(parts: Parts, policy: MisfirePolicy, **schedule: Any) -> Event:
    cron = Cron(expression="0 * * * *", misfire_policy=policy, **schedule)
    return await parts.store.add_event(Event(name=f"hourly-{policy}", action=NOOP, schedule=cron))


async def tick_at(parts: Parts, when: datetime) -> None:
    parts.clock.set(when)
    await parts.scheduler.tick()


async def downtime(parts: Parts, event: Event) -> None:
    """The event fires at 01:00, then no scheduler runs for 3 h 10 min (until 04:10)."""
    await tick_at(parts, T0 + HOUR)
    [first] = await parts.scheduler.fires(event.id)
    assert (first.fire_time, first.status, first.backfilled) == (T0 + HOUR, "enqueued", False)
    await tick_at(parts, T0 + HOUR + timedelta(hours=3, minutes=10))


def slot(hours: int) -> datetime:
    return T0 + hours * HOUR


@pytest.mark.anyio
async def test_s3_skip_runs_nothing_missed_and_the_next_on_time(parts: Parts) -> None:
    """S3 skip: the 02:00, 03:00 and 04:00 slots are recorded as missed and nothing runs for
    them; the 05:00 slot runs on time."""
    event = await hourly(parts, MisfirePolicy.SKIP)
    await downtime(parts, event)
    fires = await parts.scheduler.fires(event.id)
    assert [(f.fire_time, f.status) for f in fires[1:]] == [
        (slot(2), "missed"), (slot(3), "missed"), (slot(4), "missed"),
    ]  # fmt: skip
    assert all("misfire grace" in (f.reason or "") and f.job_id is None for f in fires[1:])
    assert [j.fire_time for j in await job_rows(parts.store)] == [slot(1)]
    await tick_at(parts, slot(5))
    last = (await parts.scheduler.fires(event.id))[-1]
    assert (last.fire_time, last.status, last.backfilled) == (slot(5), "enqueued", False)
    job = await parts.queue.get(last.job_id or "")
    assert (job.fire_time, job.backfilled) == (slot(5), False)


@pytest.mark.anyio
async def test_s3_latest_runs_the_newest_slot_once_backfilled(parts: Parts) -> None:
    """S3 latest (coalesce): exactly one run, marked backfilled, with the latest slot's time
    (04:00); 02:00 and 03:00 are recorded as missed; 05:00 runs on time."""
    event = await hourly(parts, MisfirePolicy.LATEST)
    await downtime(parts, event)
    fires = await parts.scheduler.fires(event.id)
    assert [(f.fire_time, f.status, f.backfilled) for f in fires[1:]] == [
        (slot(2), "missed", False), (slot(3), "missed", False), (slot(4), "enqueued", True),
    ]  # fmt: skip
    jobs = await job_rows(parts.store)
    assert [(j.fire_time, j.backfilled) for j in jobs] == [(slot(1), False), (slot(4), True)]
    assert jobs[1].id == fires[-1].job_id
    await tick_at(parts, slot(5))
    last = (await parts.scheduler.fires(event.id))[-1]
    assert (last.fire_time, last.status, last.backfilled) == (slot(5), "enqueued", False)


@pytest.mark.anyio
async def test_s3_all_runs_every_slot_with_its_own_time(parts: Parts) -> None:
    """S3 all: three runs (02:00, 03:00, 04:00), each backfilled and given its scheduled
    ``fire_time``, recorded in slot order."""
    event = await hourly(parts, MisfirePolicy.ALL)
    await downtime(parts, event)
    fires = await parts.scheduler.fires(event.id)
    assert [(f.fire_time, f.status, f.backfilled) for f in fires[1:]] == [
        (slot(h), "enqueued", True) for h in (2, 3, 4)
    ]
    for fire in fires:
        job = await parts.queue.get(fire.job_id or "")
        assert job.fire_time == fire.fire_time and job.event_id == event.id
    assert len(await job_rows(parts.store)) == 4


@pytest.mark.anyio
async def test_s3_all_catch_up_runs_execute_in_slot_order(parts: Parts) -> None:
    """S3 all, "3 runs in slot order": the catch-up runs must also be *claimed* oldest slot
    first. All runs enqueued by one tick share priority, run_after and created_at, so the
    claim order falls through to the random job id. With an event that runs one at a time
    (queue_all) and 8 missed slots, claiming them one by one must give the slots in order."""
    cron = Cron(expression="0 * * * *", misfire_policy=MisfirePolicy.ALL, catch_up_limit=10)
    event = await parts.store.add_event(
        Event(name="serial", action=NOOP, schedule=cron, overlap=OverlapPolicy.QUEUE_ALL)
    )
    await tick_at(parts, slot(9) + timedelta(minutes=10))  # 01:00..09:00 all late
    order = []
    while claimed := await parts.queue.claim("w"):
        [job] = claimed
        order.append(job.fire_time)
        await parts.queue.finish(job.id, job.lease_id or "", status=JobStatus.SUCCEEDED)
    assert len(order) == 9 and {j.event_id for j in await job_rows(parts.store)} == {event.id}
    assert order == sorted(order)


@pytest.mark.anyio
async def test_s3_slots_beyond_grace_or_catch_up_limit_are_missed(parts: Parts) -> None:
    """S3 grace and bounds: with a 30 min grace the 04:00 slot (10 min late) is on time and
    runs normally, while 02:00 and 03:00 are older than the grace and recorded as missed (the
    on-time run supersedes them under latest). Under all with catch_up_limit=2 the oldest
    late slot is recorded as missed."""
    latest = await hourly(parts, MisfirePolicy.LATEST, misfire_grace=1800)
    bounded = await parts.store.add_event(
        Event(name="bounded", action=NOOP, schedule=Cron(
            expression="0 * * * *", misfire_policy=MisfirePolicy.ALL, catch_up_limit=2))
    )  # fmt: skip
    await tick_at(parts, slot(1))
    await tick_at(parts, slot(4) + timedelta(minutes=10))
    fires = await parts.scheduler.fires(latest.id)
    assert [(f.fire_time, f.status, f.backfilled) for f in fires[1:]] == [
        (slot(2), "missed", False), (slot(3), "missed", False), (slot(4), "enqueued", False),
    ]  # fmt: skip
    assert "1800 s" in (fires[1].reason or "")
    fires = await parts.scheduler.fires(bounded.id)
    assert [(f.fire_time, f.status, f.backfilled) for f in fires[1:]] == [
        (slot(2), "missed", False), (slot(3), "enqueued", True), (slot(4), "enqueued", True),
    ]  # fmt: skip
    assert "catch_up_limit=2" in (fires[1].reason or "")


# --- S5 -------------------------------------------------------------------------------------


def minutely(name: str, policy: MisfirePolicy = MisfirePolicy.LATEST, **kw: Any) -> Event:
    cron = Cron(expression="* * * * *", misfire_policy=policy)
    return Event(name=name, action=NOOP, schedule=cron, **kw)


def assert_one_job_per_fire(fires: list[sa.Row], jobs: list[sa.Row]) -> None:
    keys = Counter((j.event_id, j.fire_time) for j in jobs)
    assert [k for k, n in keys.items() if n > 1] == []
    enqueued = {(f.owner_id, f.fire_time): f.job_id for f in fires if f.status == "enqueued"}
    assert set(keys) == set(enqueued)
    assert {j.id for j in jobs} == set(enqueued.values())


@pytest.mark.anyio
async def test_s5_backward_jump_fires_nothing_again(parts: Parts) -> None:
    """S5 backward: after fires at 00:01..00:05 the clock goes back 1 h. Ticking every minute
    through the repeated hour fires nothing; the next fire is the real next slot, 00:06."""
    event = await parts.store.add_event(minutely("every-minute"))
    for minute in range(1, 6):
        await tick_at(parts, T0 + minute * MINUTE)
    back = T0 + 5 * MINUTE - HOUR
    for minute in range(60):
        await tick_at(parts, back + minute * MINUTE + timedelta(seconds=30))
        assert len(await parts.scheduler.fires(event.id)) == 5
    await tick_at(parts, T0 + 6 * MINUTE)
    fires = await parts.scheduler.fires(event.id)
    assert [f.fire_time for f in fires] == [T0 + m * MINUTE for m in range(1, 7)]
    assert {f.status for f in fires} == {"enqueued"}
    assert_one_job_per_fire(await fire_rows(parts.store), await job_rows(parts.store))
    assert parts.scheduler.conflicts == 0


@pytest.mark.anyio
async def test_s5_backward_jump_with_an_edit_is_held_by_the_unique_key(parts: Parts) -> None:
    """S5 backward, harder: while the clock is 1 h behind, the event is paused and resumed,
    which recomputes its next fire time from the wrong clock (one hour back). Re-living that
    hour reaches 00:01..00:05 again: those slots are already recorded, so the unique key
    turns them into counted conflicts, never a second job."""
    event = await parts.store.add_event(minutely("every-minute"))
    for minute in range(1, 6):
        await tick_at(parts, T0 + minute * MINUTE)
    parts.clock.set(T0 + 5 * MINUTE - HOUR)
    await parts.store.update_event(attrs.evolve(event, status=EventStatus.PAUSED))
    await parts.store.update_event(event)
    for minute in range(61):
        await tick_at(parts, T0 + 5 * MINUTE - HOUR + (minute + 1) * MINUTE)
    assert parts.scheduler.conflicts == 5
    fires = await parts.scheduler.fires(event.id)
    assert [f.fire_time for f in fires] == [T0 + m * MINUTE for m in range(-54, 7)]
    rows = await fire_rows(parts.store)
    assert_one_job_per_fire(rows, await job_rows(parts.store))
    # the first recording of 00:01..00:05 stands (made before the clock went back)
    first = {r.fire_time: r.recorded_at for r in rows}
    assert all(first[T0 + m * MINUTE] == T0 + m * MINUTE for m in range(1, 6))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("policy", "missed", "backfilled"),
    [(MisfirePolicy.SKIP, 58, 0), (MisfirePolicy.LATEST, 58, 0), (MisfirePolicy.ALL, 48, 10)],
)
async def test_s5_forward_jump_follows_the_misfire_policy(
    parts: Parts, policy: MisfirePolicy, missed: int, backfilled: int
) -> None:
    """S5 forward: after fires at 00:01..00:05 the clock jumps 1 h ahead (to 01:05). The 60
    skipped-over slots are decided by the misfire policy: 01:05 and 01:04 (late by exactly
    the 60 s grace) are on time and run; the 58 late ones are missed (skip; latest, because
    an on-time fire supersedes them) or, under all, the newest catch_up_limit=10 run
    backfilled and the rest are missed."""
    event = await parts.store.add_event(minutely("every-minute", policy))
    for minute in range(1, 6):
        await tick_at(parts, T0 + minute * MINUTE)
    await tick_at(parts, T0 + 65 * MINUTE)
    fires = (await parts.scheduler.fires(event.id))[5:]
    assert [f.fire_time for f in fires] == [T0 + m * MINUTE for m in range(6, 66)]
    statuses = Counter((f.status, f.backfilled) for f in fires)
    want = {("missed", False): missed, ("enqueued", True): backfilled, ("enqueued", False): 2}
    assert statuses == {k: n for k, n in want.items() if n}
    assert [(f.status, f.backfilled) for f in fires[-2:]] == [("enqueued", False)] * 2
    if backfilled:
        assert [(f.status, f.backfilled) for f in fires[-12:-2]] == [("enqueued", True)] * 10
    assert_one_job_per_fire(await fire_rows(parts.store), await job_rows(parts.store))


S5_EVENTS = 20
S5_MINUTES = 30


@pytest.mark.anyio
async def test_s5_two_schedulers_with_skew_make_no_duplicates(db_url: str) -> None:
    """S5 skew: two Scheduler instances in one process, each with its own store and clock,
    B's clock 5 s ahead of A's, ticking alternately every 7 s of A's time (so either may be
    first past a minute) for 30 simulated minutes over 20 ``* * * * *`` events. Pass: one
    fire row and one job per (event, minute), none missed, and both schedulers took part."""
    async with AsyncExitStack() as stack:
        a = await open_parts(stack, db_url, FakeClock(T0), "A")
        b = await open_parts(stack, db_url, FakeClock(T0 + timedelta(seconds=5)), "B")
        events = [await a.store.add_event(minutely(f"e{i:02d}")) for i in range(S5_EVENTS)]
        step = timedelta(seconds=7)
        t = T0
        while t <= T0 + S5_MINUTES * MINUTE:
            await tick_at(a, t)
            await tick_at(b, t + timedelta(seconds=5))
            t += step
        fires = await fire_rows(a.store)
        jobs = await job_rows(a.store)
    expected = {(e.id, T0 + m * MINUTE) for e in events for m in range(1, S5_MINUTES + 1)}
    assert {(f.owner_id, f.fire_time) for f in fires} == expected
    assert len(fires) == len(expected)
    assert {f.status for f in fires} == {"enqueued"}
    assert_one_job_per_fire(fires, jobs)
    assert {f.scheduler for f in fires} == {"A", "B"}
    assert a.scheduler.conflicts == b.scheduler.conflicts == 0


# --- overlap policies -----------------------------------------------------------------------


async def overlap_event(parts: Parts, policy: OverlapPolicy) -> Event:
    return await parts.store.add_event(minutely(f"overlap-{policy}", overlap=policy))


async def fire_at_minute(parts: Parts, event: Event, minute: int) -> FireRecord:
    await tick_at(parts, T0 + minute * MINUTE)
    fire = (await parts.scheduler.fires(event.id))[-1]
    assert fire.fire_time == T0 + minute * MINUTE
    return fire


async def claim_one(parts: Parts, event: Event) -> Job:
    [job] = await parts.queue.claim("worker")
    assert job.event_id == event.id and job.status is JobStatus.RUNNING
    return job


@pytest.mark.anyio
async def test_overlap_skip_records_the_skipped_fire(parts: Parts) -> None:
    """skip: while the 00:01 run is running (claimed, never finished), the 00:02 fire is
    recorded as skipped, naming the running job, and starts nothing; once it ends, 00:03 runs.
    A run that is only queued also makes later fires skip."""
    event = await overlap_event(parts, OverlapPolicy.SKIP)
    await fire_at_minute(parts, event, 1)
    running = await claim_one(parts, event)
    fire = await fire_at_minute(parts, event, 2)
    assert (fire.status, fire.job_id) == ("skipped", None)
    assert fire.reason == f"overlap: run {running.id} is still running"
    assert len(await job_rows(parts.store)) == 1
    await parts.queue.finish(running.id, running.lease_id or "", status=JobStatus.SUCCEEDED)
    fire = await fire_at_minute(parts, event, 3)
    assert fire.status == "enqueued" and fire.job_id
    fire = await fire_at_minute(parts, event, 4)
    assert fire.status == "skipped" and "is still queued" in (fire.reason or "")


@pytest.mark.anyio
async def test_overlap_buffer_one_keeps_one_waiting_run(parts: Parts) -> None:
    """buffer_one: behind the running 00:01 run, 00:02 is queued (one waiting run) and 00:03
    is skipped because 00:02 is already waiting; the waiting run starts only after the
    running one ends."""
    event = await overlap_event(parts, OverlapPolicy.BUFFER_ONE)
    await fire_at_minute(parts, event, 1)
    running = await claim_one(parts, event)
    second = await fire_at_minute(parts, event, 2)
    assert second.status == "enqueued" and second.job_id
    third = await fire_at_minute(parts, event, 3)
    assert (third.status, third.job_id) == ("skipped", None)
    assert third.reason == f"overlap: run {second.job_id} is already waiting"
    assert await parts.queue.claim("worker") == []  # one at a time
    await parts.queue.finish(running.id, running.lease_id or "", status=JobStatus.SUCCEEDED)
    assert (await claim_one(parts, event)).id == second.job_id


@pytest.mark.anyio
async def test_overlap_queue_all_queues_every_fire_and_runs_them_in_turn(parts: Parts) -> None:
    """queue_all: 00:02 and 00:03 are both queued behind the running 00:01 run; nothing
    runs beside it, and they then run one after another, oldest fire first."""
    event = await overlap_event(parts, OverlapPolicy.QUEUE_ALL)
    await fire_at_minute(parts, event, 1)
    running = await claim_one(parts, event)
    fires = [await fire_at_minute(parts, event, m) for m in (2, 3)]
    assert [(f.status, f.reason) for f in fires] == [("enqueued", None)] * 2
    assert await parts.queue.claim("worker", 5) == []
    order = []
    while True:
        await parts.queue.finish(running.id, running.lease_id or "", status=JobStatus.SUCCEEDED)
        claimed = await parts.queue.claim("worker", 5)
        if not claimed:
            break
        [running] = claimed
        order.append(running.id)
    assert order == [f.job_id for f in fires]


@pytest.mark.anyio
async def test_overlap_cancel_running_flags_the_running_job(parts: Parts) -> None:
    """cancel_running: the 00:02 fire flags the running 00:01 job cancel_requested (its
    worker sees it on the next heartbeat) and queues the new run, which starts once the old
    one has stopped. A run still queued at the next fire is cancelled outright."""
    event = await overlap_event(parts, OverlapPolicy.CANCEL_RUNNING)
    await fire_at_minute(parts, event, 1)
    running = await claim_one(parts, event)
    fire = await fire_at_minute(parts, event, 2)
    assert (fire.status, fire.reason) == ("enqueued", "overlap: cancelled 1 earlier run(s)")
    old = await parts.queue.get(running.id)
    assert old.status is JobStatus.RUNNING and old.cancel_requested
    beat = await parts.queue.heartbeat(running.id, running.lease_id or "")
    assert beat.alive and beat.cancel_requested
    assert await parts.queue.claim("worker") == []  # the new run waits for the old to stop
    await parts.queue.finish(running.id, running.lease_id or "", status=JobStatus.CANCELLED)
    second = await claim_one(parts, event)
    assert second.id == fire.job_id
    await parts.queue.finish(second.id, second.lease_id or "", status=JobStatus.SUCCEEDED)
    # a queued (not yet running) earlier run is cancelled at once
    third = await fire_at_minute(parts, event, 3)
    fourth = await fire_at_minute(parts, event, 4)
    assert fourth.reason == "overlap: cancelled 1 earlier run(s)"
    cancelled = await parts.queue.get(third.job_id or "")
    assert cancelled.status is JobStatus.CANCELLED and cancelled.cancel_requested
    assert (await parts.queue.get(fourth.job_id or "")).status is JobStatus.QUEUED


@pytest.mark.anyio
async def test_overlap_allow_runs_side_by_side(parts: Parts) -> None:
    """allow: every fire is queued and may run beside the still-running earlier ones."""
    event = await overlap_event(parts, OverlapPolicy.ALLOW)
    running = []
    for minute in (1, 2, 3):
        fire = await fire_at_minute(parts, event, minute)
        assert (fire.status, fire.reason) == ("enqueued", None)
        running.append(await claim_one(parts, event))
    assert [j.id for j in running] == [f.job_id for f in await parts.scheduler.fires(event.id)]
    for job in running:
        assert not (await parts.queue.get(job.id)).cancel_requested


@pytest.mark.anyio
async def test_overlap_cancel_running_ends_a_queued_run_like_a_cancel(parts: Parts) -> None:
    """A queued run cancelled by cancel_running must end like any cancelled queued run
    (RunEngine.cancel): counted in the event's run counters and followed by the event's
    on-failure conditional action. Event A's queued run is cancelled by its next fire, event
    B's by RunEngine.cancel; both must leave the same trace."""
    target = await parts.store.add_event(Event(name="alert", action=NOOP))
    on_failure = (ConditionalAction(when=When.ON_FAILURE, run_event=target.id),)
    a, b = [
        await parts.store.add_event(
            minutely(name, overlap=OverlapPolicy.CANCEL_RUNNING, conditional_actions=on_failure)
        )
        for name in ("a", "b")
    ]
    await fire_at_minute(parts, a, 1)
    [b_first] = [j for j in await job_rows(parts.store) if j.event_id == b.id]
    await parts.scheduler.engine.cancel(b_first.id)
    await parts.store.update_event(attrs.evolve(b, status=EventStatus.PAUSED))
    await fire_at_minute(parts, a, 2)
    jobs = await job_rows(parts.store)
    first_runs = {j.event_id: j.status for j in jobs if j.fire_time == T0 + MINUTE}
    assert first_runs == {a.id: "cancelled", b.id: "cancelled"}
    records = {e.name: await parts.store.get_event_record(e.id) for e in (a, b)}
    assert (records["b"].runs_total, records["b"].runs_failed) == (1, 1)  # RunEngine.cancel
    assert (records["a"].runs_total, records["a"].runs_failed) == (1, 1)  # cancel_running
    alerts = [j for j in jobs if j.event_id == target.id]
    assert len(alerts) == 2, "one on-failure action per cancelled run"
