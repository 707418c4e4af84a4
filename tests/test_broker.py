"""Notices between the parts: in-process fan-out, and LISTEN/NOTIFY between separate Cronium
instances on PostgreSQL (each has its own connections, as separate processes would)."""

from __future__ import annotations

import time

import anyio
import pytest

from cronium_core import Cronium, Event, JobStatus
from cronium_core.broker import LocalBroker, Notice
from cronium_core.testing import ScriptedPlugin, scripted

pytestmark = pytest.mark.anyio


async def test_local_broker_fans_out_and_drops_for_slow_subscribers() -> None:
    broker = LocalBroker()
    async with broker.subscribe(buffer=2) as slow, broker.subscribe(buffer=10) as fast:
        for i in range(5):
            await broker.publish(Notice("job.queued", {"i": i}))
        got_fast = [fast.receive_nowait().data["i"] for _ in range(5)]
        got_slow = [slow.receive_nowait().data["i"] for _ in range(2)]
        with pytest.raises(anyio.WouldBlock):
            slow.receive_nowait()
    assert got_fast == [0, 1, 2, 3, 4]
    assert got_slow == [0, 1]  # the rest were dropped: notices are hints


@pytest.mark.postgres
async def test_notify_wakes_a_worker_in_another_instance(pg_url: str) -> None:
    """The worker polls only every 30 s; a job enqueued elsewhere starts at once because
    the enqueue's NOTIFY wakes it, and the waiter hears the completion the same way."""
    async with (
        Cronium(
            pg_url,
            plugins=[ScriptedPlugin()],
            executors=["scripted"],
            scheduler=False,
            poll_interval=30,
        ) as worker_side,
        Cronium(pg_url, worker=False, scheduler=False) as client,
    ):
        ev = await client.events.add(Event(name="n", action=scripted(), executor="scripted"))
        await anyio.sleep(0.5)  # let the worker go idle
        t0 = time.monotonic()
        job = await client.run(ev.id)
        done = await client.jobs.wait(job.id, timeout=10)
        assert done.status is JobStatus.SUCCEEDED
        assert time.monotonic() - t0 < 5
        assert worker_side.worker is not None


@pytest.mark.postgres
async def test_without_notify_polling_still_runs_jobs(pg_url: str) -> None:
    """Q5 (d): with LISTEN disabled, jobs start within the poll interval."""
    async with (
        Cronium(
            pg_url,
            plugins=[ScriptedPlugin()],
            executors=["scripted"],
            scheduler=False,
            poll_interval=0.3,
            distributed_broker=False,
        ),
        Cronium(pg_url, worker=False, scheduler=False, distributed_broker=False) as client,
    ):
        ev = await client.events.add(Event(name="p", action=scripted(), executor="scripted"))
        job = await client.run(ev.id)
        done = await client.jobs.wait(job.id, timeout=10)
        assert done.status is JobStatus.SUCCEEDED
