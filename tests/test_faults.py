"""Process faults with real worker processes (`cronium worker`) and real jobs (RELIABILITY Q2,
Q4): kill -9 mid-job, SIGTERM once and twice, a stopped zombie whose late result is fenced.

Leases are short (about a second) so that expiry takes real time in the order of seconds;
everything else is driven by the test."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from cronium_core import Cronium, Event, Job, JobStatus, RetryPolicy, Script
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.fault]


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.close()


@pytest.fixture
async def cr(db_url: str) -> AsyncIterator[Cronium]:
    async with Cronium(db_url, worker=False, scheduler=False) as cr:
        yield cr


def start(workers: list[WorkerProcess], db_url: str, tmp_path: Path, name: str) -> WorkerProcess:
    w = WorkerProcess(
        db_url,
        tmp_path / f"{name}.log",
        *("--lease", "1", "--reap-interval", "0.3", "--poll-interval", "0.2"),
        *("--executors", "local", "--id", name),
    )
    workers.append(w)
    return w


async def until(cr: Cronium, job_id: str, predicate: object, timeout: float = 20) -> Job:
    assert callable(predicate)
    with anyio.fail_after(timeout):
        while not predicate(job := await cr.jobs.get(job_id)):
            await anyio.sleep(0.05)
    return job


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def job_event(cr: Cronium, code: str, attempts: int = 2) -> Event:
    return await cr.events.add(
        Event(
            name=f"job-{os.urandom(3).hex()}",
            action=Script(language="bash", code=code),
            retry=RetryPolicy(max_attempts=attempts, backoff_base=0),
        )
    )


SLOW = 'echo "pid $$ attempt $CRONIUM_JOB_ATTEMPT"; sleep 2; echo done'


async def test_kill_9_worker_mid_job_other_worker_reruns(
    cr: Cronium, workers: list[WorkerProcess], db_url: str, tmp_path: Path
) -> None:
    """Q2 (a): the job of a SIGKILLed worker is re-run as attempt 2 after its lease expires."""
    a = start(workers, db_url, tmp_path, "A")
    await a.wait_ready()
    job = await cr.run((await job_event(cr, SLOW)).id)
    await until(cr, job.id, lambda j: j.status is JobStatus.RUNNING and j.lease_owner == "A")
    with anyio.fail_after(10):
        while not (lines := await cr.jobs.logs(job.id)):
            await anyio.sleep(0.05)
    script_pid = int(lines[0].text.split()[1])
    a.signal(signal.SIGKILL)
    await a.wait_exit()
    b = start(workers, db_url, tmp_path, "B")
    await b.wait_ready()
    done = await until(cr, job.id, lambda j: j.status.finished, timeout=30)
    assert done.status is JobStatus.SUCCEEDED
    assert done.attempt == 2 and done.lease_owner == "B"
    texts = [ln.text for ln in await cr.jobs.logs(job.id)]
    assert texts.count("done") == 1 and any("attempt 2" in t for t in texts)
    # the killed worker's script did not outlive it
    assert not alive(script_pid)


async def test_sigterm_finishes_running_job_and_claims_no_more(
    cr: Cronium, workers: list[WorkerProcess], db_url: str, tmp_path: Path
) -> None:
    """Q2 (b): one SIGTERM: the job in flight finishes, nothing new is claimed, exit 0."""
    w = start(workers, db_url, tmp_path, "W")
    await w.wait_ready()
    ev = await job_event(cr, SLOW)
    first = await cr.run(ev.id)
    await until(cr, first.id, lambda j: j.status is JobStatus.RUNNING)
    w.signal(signal.SIGTERM)
    second = await cr.run(ev.id)
    assert await w.wait_exit() == 0
    assert (await cr.jobs.get(first.id)).status is JobStatus.SUCCEEDED
    assert (await cr.jobs.get(second.id)).status is JobStatus.QUEUED


async def test_sigterm_twice_releases_job(
    cr: Cronium, workers: list[WorkerProcess], db_url: str, tmp_path: Path
) -> None:
    """Q2 (c): a second SIGTERM stops the job and gives it back to the queue, not running."""
    w = start(workers, db_url, tmp_path, "W")
    await w.wait_ready()
    job = await cr.run((await job_event(cr, "echo pid $$; sleep 60")).id)
    await until(cr, job.id, lambda j: j.status is JobStatus.RUNNING)
    with anyio.fail_after(10):
        while not (lines := await cr.jobs.logs(job.id)):
            await anyio.sleep(0.05)
    script_pid = int(lines[0].text.split()[1])
    w.signal(signal.SIGTERM)
    await anyio.sleep(0.3)
    w.signal(signal.SIGTERM)
    assert await w.wait_exit() == 0
    released = await cr.jobs.get(job.id)
    assert released.status is JobStatus.QUEUED and released.attempt == 0
    assert not alive(script_pid)


async def test_stopped_zombie_result_is_fenced(
    cr: Cronium, workers: list[WorkerProcess], db_url: str, tmp_path: Path
) -> None:
    """Q4: A is SIGSTOPped past its lease, B re-claims and completes; A's late result is
    refused (0 rows) and logged as fenced; the stored result is B's."""
    a = start(workers, db_url, tmp_path, "A")
    await a.wait_ready()
    job = await cr.run((await job_event(cr, 'sleep 1.5; exit "$CRONIUM_JOB_ATTEMPT"')).id)
    await until(cr, job.id, lambda j: j.status is JobStatus.RUNNING and j.lease_owner == "A")
    a.signal(signal.SIGSTOP)
    try:
        b = start(
            workers,
            db_url,
            tmp_path,
            "B",
        )
        await b.wait_ready()
        # attempt 2 exits 2: a failure, and attempts are spent (2)
        done = await until(cr, job.id, lambda j: j.status.finished, timeout=30)
    finally:
        a.signal(signal.SIGCONT)
    assert done.attempt == 2 and done.exit_code == 2 and done.status is JobStatus.FAILED
    with anyio.fail_after(15):
        while "fenced" not in a.output and "lease lost" not in a.output:
            await anyio.sleep(0.1)
    await anyio.sleep(0.5)
    after = await cr.jobs.get(job.id)
    assert (after.status, after.exit_code, after.attempt) == (JobStatus.FAILED, 2, 2)
