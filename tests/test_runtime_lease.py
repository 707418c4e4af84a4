"""RELIABILITY A2 with a real worker: a script run by the worker of this process is answered by
the embedded runtime API from memory, which must not outlive the worker's hold on the job.
Here the worker's heartbeats fail (its database writes are lost, as in a partition), its lease
runs out, and another process re-claims the job: from then on the first attempt's token is
refused, although the first attempt's script is still running and still in the worker's
memory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from cronium_core import Cronium, Event, JobStatus, RetryPolicy, Script
from cronium_core.queue import Heartbeat, JobQueue

pytestmark = pytest.mark.anyio

LEASE = 3.0

#: calls GET /input with its own token every 0.1 s and appends what it got to a file
SCRIPT = """
import json, os, time, urllib.error, urllib.request
api, job = os.environ["CRONIUM_RUNTIME_API"], os.environ["CRONIUM_EXECUTION_ID"]
url = api + "/executions/" + job + "/input"
token = os.environ["CRONIUM_EXECUTION_TOKEN"]
end = time.time() + float(os.environ["SECONDS"])
with open(os.environ["CALLS"], "a") as calls:
    while time.time() < end:
        request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                status = answer.status
        except urllib.error.HTTPError as e:
            status = e.code
        calls.write(json.dumps([time.time(), status]) + "\\n")
        calls.flush()
        time.sleep(0.1)
"""


async def test_token_of_a_stalled_workers_attempt_is_refused_once_the_job_is_reclaimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cronium.db'}"
    calls = tmp_path / "calls.jsonl"
    async with Cronium(
        url, scheduler=False, poll_interval=0.1, reap_interval=3600, lease_seconds=LEASE,
        executors=["local"],
    ) as cr:  # fmt: skip
        event = await cr.events.add(
            Event(
                name="long-caller",
                owner="alice",
                action=Script(language="python", code=SCRIPT),
                env={"SECONDS": "8", "CALLS": str(calls)},
                timeout=30,
                retry=RetryPolicy(max_attempts=2, backoff_base=600),
            )
        )
        job = await cr.run(event.id)
        with anyio.fail_after(20):
            while not calls.exists() or not calls.read_text().strip():
                await anyio.sleep(0.05)

        # from now on this worker's heartbeats do not reach the database
        # (JobQueue is slotted: patched on the class; the other process below has no worker)
        async def lost(self: JobQueue, job_id: str, lease_id: str) -> Heartbeat:
            raise OSError("database unreachable")

        monkeypatch.setattr(JobQueue, "heartbeat", lost)
        # another process: a second Cronium on the same file, reaping once the lease is over
        async with Cronium(
            url, worker=False, scheduler=False, runtime=False, upgrade=False
        ) as other:
            with anyio.fail_after(20):
                while True:
                    reaped = await other.engine.reap()
                    if job.id in [j.id for j in reaped.requeued]:
                        break
                    await anyio.sleep(0.1)
            reclaimed_at = time.time()
            # queued again for its next attempt (due in 10 minutes: no worker takes it here)
            again = await other.jobs.get(job.id)
            assert again.status is JobStatus.QUEUED and again.lease_id is None
            await anyio.sleep(1.5)
    answers: list[Any] = [json.loads(line) for line in calls.read_text().splitlines()]
    before = [status for t, status in answers if t < reclaimed_at - 0.3]
    after = [status for t, status in answers if t > reclaimed_at + 0.05]
    assert before and set(before) == {200}, answers
    assert len(after) >= 5 and set(after) == {401}, answers
