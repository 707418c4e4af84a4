"""A bare queue worker for the claim-exclusivity test (RELIABILITY Q1).

Run as ``python -m tests.procs.queue_worker DB_URL WORKER_ID --limit K --go FILE``. It writes
``ready`` on stdout once connected, waits until FILE exists (so that every worker starts
claiming at once), then loops ``claim(limit=K)`` / ``finish`` until the queue is empty. Every
claimed attempt is appended to :data:`audit` in the same transaction as its finish, with
whether the finish was accepted (``won``) or fenced.

Time is a fixed :class:`FakeClock` shared with the test (``--now``): leases never expire, so a
second claim of an attempt can only come from a broken claim, never from the reaper.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path

import anyio
import sqlalchemy as sa

from cronium_core import FakeClock, JobStatus
from cronium_core.datastore import DataStore
from cronium_core.queue import JobQueue

audit_metadata = sa.MetaData()
#: one row per claimed attempt; no unique key on purpose: the checker looks for duplicates
audit = sa.Table(
    "q1_audit",
    audit_metadata,
    sa.Column("job_id", sa.String(36), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.String(64), nullable=False),
    sa.Column("lease_id", sa.String(80), nullable=False),
    sa.Column("won", sa.Boolean, nullable=False),
    sa.Column("t_start", sa.Float, nullable=False),
    sa.Column("t_end", sa.Float, nullable=False),
)


async def work(url: str, worker_id: str, limit: int, go: Path, now: datetime) -> int:
    handled = 0
    async with AsyncExitStack() as stack:
        store = DataStore(url=url, clock=FakeClock(now))
        await store.start(stack)
        queue = JobQueue(store=store, lease_seconds=30)
        print("ready", flush=True)
        while not await anyio.Path(go).exists():
            await anyio.sleep(0.005)
        while True:
            jobs = await queue.claim(worker_id, limit)
            if not jobs:
                if await queue.count(JobStatus.QUEUED) == 0:
                    break
                await anyio.sleep(0.005)  # the rest is locked by other claimers right now
                continue
            for job in jobs:
                t_start = time.time()
                async with store.begin() as conn:
                    result = await queue.finish(
                        job.id, job.lease_id or "", status=JobStatus.SUCCEEDED, exit_code=0,
                        conn=conn,
                    )  # fmt: skip
                    await conn.execute(
                        sa.insert(audit).values(
                            job_id=job.id, attempt=job.attempt, worker_id=worker_id,
                            lease_id=job.lease_id or "", won=result is not None,
                            t_start=t_start, t_end=time.time(),
                        )
                    )  # fmt: skip
                handled += 1
    return handled


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("worker_id")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--go", type=Path, required=True)
    parser.add_argument("--now", type=datetime.fromisoformat, required=True)
    args = parser.parse_args()
    handled = anyio.run(work, args.url, args.worker_id, args.limit, args.go, args.now)
    print(f"handled {handled}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
