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

import anyio
import attrs
import pytest
import sqlalchemy as sa

from cronium_core import Cron, Event, FakeClock, JobStatus, MisfirePolicy, OverlapPolicy, Script
from cronium_core.broker import LocalBroker
from cronium_core.datastore import DataStore
from cronium_core.engine import RunEngine
from cronium_core.queue import JobQueue
from cronium_core.scheduler import Scheduler
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
        return list((await conn.execute(sa.select(FT).order_by(FT.c.owner_id, FT.c.fire_time))))


async def job_rows(store: DataStore) -> list[sa.Row]:
    async with store.read() as conn:
        return list((await conn.execute(sa.select(JT).order_by(JT.c.event_id, JT.c.fire_time))))


# --- S1 -------------------------------------------------------------------------------------

S1_SCHEDULERS = 3
S1_EVENTS = int(os.environ.get("CRONIUM_S1_EVENTS", "100"))
S1_MINUTES = 60


@pytest.mark.anyio
@pytest.mark.slow
async def test_s1_no_duplicate_fires_with_three_scheduler_processes(
    db_url: str, record_property: pytest.RecordProperty
) -> None:
    """S1: 3 scheduler processes on one database, S1_EVENTS events of ``* * * * *`` (100 by
    default on this 2-core machine; the checklist says 300), 60 simulated minutes. Each minute
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
                out, err = await anyio.to_thread.run_sync(
                    lambda p=proc: p.communicate("quit\n", 30)
                )
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
