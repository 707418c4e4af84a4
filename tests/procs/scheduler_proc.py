"""A scheduler process driven tick by tick over stdin (RELIABILITY S1).

Run as ``python -m tests.procs.scheduler_proc DB_URL SCHEDULER_ID``. It builds the real parts
(DataStore with a FakeClock, JobQueue, RunEngine, Scheduler), writes ``ready``, then for each
line ``tick ISO_TIME`` sets its clock to that time, runs :meth:`Scheduler.tick` and answers
``done CONFLICTS``; ``quit`` ends it. The test that drives several of these processes sends
the same simulated minute to all of them at once, so their ticks race on the database.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import AsyncExitStack
from datetime import datetime

import anyio

from cronium_core import FakeClock
from cronium_core.broker import LocalBroker
from cronium_core.datastore import DataStore
from cronium_core.engine import RunEngine
from cronium_core.queue import JobQueue
from cronium_core.scheduler import Scheduler


async def serve(url: str, scheduler_id: str) -> None:
    clock = FakeClock()
    async with AsyncExitStack() as stack:
        store = DataStore(url=url, clock=clock)
        await store.start(stack)
        engine = RunEngine(store=store, queue=JobQueue(store=store), broker=LocalBroker())
        scheduler = Scheduler(engine=engine, id=scheduler_id)
        print("ready", flush=True)
        while True:
            line = (await anyio.to_thread.run_sync(sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                break
            if line[0] != "tick":
                raise SystemExit(f"unknown command {line!r}")
            clock.set(datetime.fromisoformat(line[1]))
            await scheduler.tick()
            print(f"done {scheduler.conflicts}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("scheduler_id")
    args = parser.parse_args()
    anyio.run(serve, args.url, args.scheduler_id)


if __name__ == "__main__":
    main()
