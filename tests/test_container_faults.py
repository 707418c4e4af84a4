"""Container executor faults on docker and podman (RELIABILITY E1, E2, E3, Q7).

- E1: a job past its timeout is stopped (SIGTERM through tini, SIGKILL after the grace) and
  ends ``timed_out``; its container and network are removed; so is a cancelled one.
- E2: ``kill -9`` of a real ``cronium worker`` process while five job containers run: the
  containers outlive it (orphans, labelled with its owner); a new worker's reaper removes them
  and every network of the dead owner; the jobs are re-run after their lease expires.
- E3: an output flood is capped (with a marker) without the worker's memory growing; a huge
  line is cut; control bytes and invalid UTF-8 are stored as valid text; lines that look like
  runtime framing do not set the job's output or condition.
- Q7: out of memory and a segfault are job failures (retried by policy), not worker loss, and
  the worker keeps serving other jobs.

Everything the tests look at is scoped to labels naming this test's jobs or worker processes:
other tests (or people) may be using the same engines at the same time.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import pytest

from cronium_core import Cronium, Event, Job, JobStatus, RetryPolicy, Script, Stream
from cronium_executors._lines import MAX_LINE_BYTES, TRUNCATION_MARKER
from cronium_executors.container import EXECUTION, KIND, OWNER, owner_is_dead, process_owner
from tests.containers import (
    container_cronium,
    engine_cli,
    engine_params,
    executor_config,
    leftovers,
    require,
)
from tests.workers import WorkerProcess

pytestmark = pytest.mark.anyio

T = TypeVar("T")
MiB = 1024**2
#: E1: the event's timeout and kill grace, and what a stop may take on top (engine calls)
TIMEOUT = 3.0
GRACE = 2.0
SLACK = 4.0
#: E3: the executor's output cap in these tests
LOG_CAP = 1 * MiB


# -- helpers ---------------------------------------------------------------------------------


async def cli(engine: str, *args: str, check: bool = True) -> str:
    """The engine's command line, off the event loop (an in-process worker shares it)."""
    return await anyio.to_thread.run_sync(lambda: engine_cli(engine, *args, check=check))


def _lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip()]


async def containers_of(engine: str, *labels: str, running: bool = False) -> list[str]:
    """Ids of the containers carrying every ``label=value`` given."""
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    args = ["ps", *([] if running else ["-a"]), *filters, "--format", "{{.ID}}"]
    return _lines(await cli(engine, *args))


async def networks_of(engine: str, *labels: str) -> list[str]:
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    return _lines(await cli(engine, "network", "ls", *filters, "--format", "{{.Name}}"))


async def all_networks(engine: str) -> set[str]:
    return set(_lines(await cli(engine, "network", "ls", "--format", "{{.Name}}")))


async def attached_networks(engine: str, cid: str) -> set[str]:
    out = await cli(engine, "inspect", "--format", "{{json .NetworkSettings.Networks}}", cid)
    return set(json.loads(out or "{}") or {})


async def eventually(
    check: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float, what: str
) -> T:
    """Poll ``check`` until ``ok`` holds of its value; fail with the last value after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout:g} s")
        await anyio.sleep(0.2)


async def running_container(engine: str, job_id: str, timeout: float = 60) -> str:
    """The id of the job's container once it runs."""
    found = await eventually(
        lambda: containers_of(engine, f"{EXECUTION}={job_id}", running=True),
        lambda ids: len(ids) == 1,
        timeout,
        f"a running container of job {job_id}",
    )
    return found[0]


async def nothing_left_of_job(engine: str, job_id: str, networks: set[str]) -> None:
    """No container or network labelled with the job remains, nor any network its container
    was on (pooled job networks carry no job label); polled for up to 10 s."""

    async def remaining() -> list[str]:
        gone = await all_networks(engine)
        return [
            *await containers_of(engine, f"{EXECUTION}={job_id}"),
            *await networks_of(engine, f"{EXECUTION}={job_id}"),
            *sorted(networks & gone),
        ]

    await eventually(remaining, lambda left: left == [], 10, f"resources of job {job_id}")


async def wait_finished(cr: Cronium, job_id: str, timeout: float) -> Job:
    with anyio.fail_after(timeout):
        while not (job := await cr.jobs.get(job_id)).status.finished:
            await anyio.sleep(0.1)
    return job


def container_event(engine: str, language: str, code: str, **kwargs: Any) -> Event:
    return Event(
        name=kwargs.pop("name", f"{language}-{time.monotonic_ns()}"),
        action=Script(language=language, code=code),  # type: ignore[arg-type]
        executor=engine,
        **kwargs,
    )


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def stored_bytes(lines: list[Any]) -> int:
    return sum(len(line.text.encode()) + 1 for line in lines)


# -- E1: hard timeout, cancel ------------------------------------------------------------------

STOP_SCRIPTS = {
    "bash-sleep": ("bash", "echo started; sleep 100000"),
    "bash-trap": ("bash", "trap '' TERM; echo started; while :; do sleep 1; done"),
    "python-sig-ign": (
        "python",
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('started', flush=True)\n"
        "while True:\n"
        "    time.sleep(1)\n",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", list(STOP_SCRIPTS))
@pytest.mark.parametrize("engine", engine_params)
async def test_timeout_stops_and_removes_the_container(
    sqlite_url: str, engine: str, script: str
) -> None:
    """E1: SIGTERM at the timeout, SIGKILL after the grace, ``timed_out``; the container and
    its network are removed and no resource labelled with the job remains."""
    language, code = STOP_SCRIPTS[script]
    async with container_cronium(sqlite_url, engine) as cr:
        event = await cr.events.add(
            container_event(engine, language, code, timeout=TIMEOUT, kill_grace=GRACE)
        )
        job = await cr.run(event.id)
        cid = await running_container(engine, job.id)
        networks = await attached_networks(engine, cid)
        assert networks, "an isolated job has a network of its own"
        done = await cr.jobs.wait(job.id, timeout=TIMEOUT + GRACE + 30)
        assert done.status is JobStatus.TIMED_OUT, done
        assert done.error == f"timed out after {TIMEOUT:g} s"
        assert done.started_at is not None and done.finished_at is not None
        took = (done.finished_at - done.started_at).total_seconds()
        assert took <= TIMEOUT + GRACE + SLACK, f"{script}: stopped after {took:.1f} s"
        if script == "bash-sleep":
            # it dies of the SIGTERM: no waiting for the grace
            assert took < TIMEOUT + GRACE, f"{script}: SIGTERM did not stop it ({took:.1f} s)"
        else:
            # it ignores SIGTERM: only the SIGKILL after the grace stops it
            assert took >= TIMEOUT + GRACE - 0.5, f"{script}: killed after {took:.1f} s"
        texts = [line.text for line in await cr.jobs.logs(job.id)]
        assert "started" in texts
        assert f"timed out after {TIMEOUT:g} s; stopped" in texts
        await nothing_left_of_job(engine, job.id, networks)


@pytest.mark.parametrize("engine", engine_params)
async def test_cancel_stops_and_removes_the_container(sqlite_url: str, engine: str) -> None:
    """E1: cancelling a running container job stops it and removes its container and network."""
    async with container_cronium(sqlite_url, engine) as cr:
        event = await cr.events.add(
            container_event(engine, "bash", "echo started; sleep 100000", kill_grace=GRACE)
        )
        job = await cr.run(event.id)
        cid = await running_container(engine, job.id)
        networks = await attached_networks(engine, cid)
        started = time.monotonic()
        await cr.jobs.cancel(job.id)
        done = await cr.jobs.wait(job.id, timeout=30)
        assert done.status is JobStatus.CANCELLED, done
        assert time.monotonic() - started < GRACE + SLACK
        await nothing_left_of_job(engine, job.id, networks)


@pytest.mark.parametrize("engine", engine_params)
async def test_stop_right_after_a_job_is_prompt(sqlite_url: str, engine: str) -> None:
    """E1: stopping the worker just after a container job ended waits for that job's cleanup
    (container, network, script dir: a second or so), not for the executor's 30 s shutdown
    cap; nothing is left behind (checked by ``container_cronium``)."""
    async with container_cronium(sqlite_url, engine) as cr:
        job = await cr.run((await cr.events.add(container_event(engine, "bash", "echo hi"))).id)
        assert (await cr.jobs.wait(job.id, timeout=60)).status is JobStatus.SUCCEEDED
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    assert took < 10, f"stopping took {took:.1f} s"


# -- E2: kill -9 of the worker with live containers --------------------------------------------


def container_worker(db_url: str, engine: str, log: Path, name: str) -> WorkerProcess:
    """A real ``cronium worker`` running container jobs."""
    scripts = log.parent / "scripts"
    scripts.mkdir(exist_ok=True)
    config = {engine: executor_config(engine, reap_interval=1.0, script_root=str(scripts))}
    return WorkerProcess(
        db_url,
        log,
        *("--id", name, "--max-jobs", "6", "--lease", "3", "--reap-interval", "1"),
        *("--poll-interval", "0.2", "--executors", f"{engine},local"),
        *("--executor-config", json.dumps(config)),
    )


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.close()


#: attempt 1 outlives the worker that runs it; attempt 2 succeeds at once
ORPHAN = """
echo "attempt $CRONIUM_JOB_ATTEMPT"
if [ "$CRONIUM_JOB_ATTEMPT" = 1 ]; then sleep 300; fi
echo "attempt $CRONIUM_JOB_ATTEMPT ok"
"""


@pytest.mark.fault
@pytest.mark.slow
@pytest.mark.parametrize("engine", engine_params)
async def test_kill_9_worker_orphans_are_reaped_and_jobs_rerun(
    sqlite_url: str, engine: str, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """E2: kill -9 of the worker while 5 job containers run: they are orphans of a dead
    owner; a new worker's reaper removes every container and network of that owner; the jobs
    are re-claimed after their lease expires and succeed; none is left ``running``."""
    require(engine)
    async with Cronium(sqlite_url, worker=False, scheduler=False) as cr:
        a = container_worker(sqlite_url, engine, tmp_path / "a.log", "A")
        a_owner = process_owner(a.proc.pid)
        workers.append(a)
        await a.wait_ready()
        event = await cr.events.add(
            container_event(
                engine,
                "bash",
                ORPHAN,
                kill_grace=1,
                retry=RetryPolicy(max_attempts=2, backoff_base=0),
            )
        )
        jobs = [await cr.run(event.id) for _ in range(5)]
        running = {job.id: await running_container(engine, job.id, timeout=90) for job in jobs}
        for job_id, cid in running.items():
            labels = f"{OWNER}={a_owner}", f"{EXECUTION}={job_id}", f"{KIND}=job"
            assert await containers_of(engine, *labels, running=True) == [cid]

        a.proc.send_signal(signal.SIGKILL)
        assert await a.wait_exit(60) == -signal.SIGKILL
        assert owner_is_dead(a_owner)
        # nothing removed them: they are orphans, still running, labelled with the dead owner
        orphans = await containers_of(engine, f"{OWNER}={a_owner}", f"{KIND}=job", running=True)
        assert sorted(orphans) == sorted(running.values())
        assert await networks_of(engine, f"{OWNER}={a_owner}"), "A's job networks"
        scripts = tmp_path / "scripts"
        _, a_pid, a_start = a_owner.split(":")
        a_dirs = list(scripts.glob(f"cronium-ctr-{a_pid}-{a_start}-*"))
        assert len(a_dirs) == 5, "A's script directories, one per running job"

        b = container_worker(sqlite_url, engine, tmp_path / "b.log", "B")
        b_owner = process_owner(b.proc.pid)
        workers.append(b)
        await b.wait_ready()
        # one reap interval (1 s) and some slack: nothing of the dead owner remains
        await eventually(
            lambda: anyio.to_thread.run_sync(lambda: leftovers(engine, a_owner)),
            lambda left: left == [],
            1 + 5,
            "containers and networks of the killed worker",
        )
        assert not any(d.exists() for d in a_dirs), "the dead worker's script directories"

        with anyio.fail_after(90):
            done = [await wait_finished(cr, job.id, 90) for job in jobs]
        for job in done:
            texts = [line.text for line in await cr.jobs.logs(job.id)]
            assert job.status is JobStatus.SUCCEEDED, (job, texts, b.output)
            assert job.attempt == 2 and job.lease_owner == "B", job
            assert "attempt 2 ok" in texts and "attempt 1 ok" not in texts
        assert await cr.queue.count(JobStatus.RUNNING) == 0

        # a graceful stop leaves nothing of B's behind either
        b.proc.send_signal(signal.SIGTERM)
        assert await b.wait_exit(60) == 0, b.output
        assert await anyio.to_thread.run_sync(lambda: leftovers(engine, b_owner)) == []


# -- E3: output flood and hostile output -------------------------------------------------------

#: 1 GiB of 4 KiB lines
FLOOD = """
line=$(head -c 4095 /dev/zero | tr '\\0' 'a')
yes "$line" | head -c $((1024 * 1024 * 1024))
echo done >&2
"""


@pytest.mark.slow
@pytest.mark.parametrize("engine", engine_params)
async def test_output_flood_is_capped(sqlite_url: str, engine: str) -> None:
    """E3: 1 GiB to stdout: the job ends, the stored log is capped with a marker, and the
    (in-process) worker's RSS does not grow with the output."""
    config = executor_config(engine, max_log_bytes=LOG_CAP)
    async with container_cronium(sqlite_url, engine, config=config) as cr:
        warm = await cr.run((await cr.events.add(container_event(engine, "bash", "echo hi"))).id)
        assert (await cr.jobs.wait(warm.id, timeout=60)).status is JobStatus.SUCCEEDED
        baseline = peak = rss_bytes()
        event = await cr.events.add(container_event(engine, "bash", FLOOD, timeout=120))
        started = time.monotonic()
        job = await cr.run(event.id)
        with anyio.fail_after(120):
            while not (done := await cr.jobs.get(job.id)).status.finished:
                peak = max(peak, rss_bytes())
                await anyio.sleep(0.1)
        took = time.monotonic() - started
        lines = await cr.jobs.logs(job.id, limit=1_000_000)
        assert done.status is JobStatus.SUCCEEDED, (done, [ln.text for ln in lines[-5:]])
        assert took < 60, f"1 GiB of output took {took:.0f} s"
        size = stored_bytes(lines)
        assert size <= LOG_CAP + 64 * 1024, f"stored {size} bytes"
        markers = [ln.text for ln in lines if ln.stream is Stream.SYSTEM]
        assert any(text.startswith("output truncated") for text in markers), markers
        assert all(ln.text == "a" * 4095 for ln in lines if ln.stream is Stream.STDOUT)
        growth = peak - baseline
        assert growth < 200 * MiB, f"RSS grew by {growth / MiB:.0f} MiB"


@pytest.mark.parametrize("engine", engine_params)
async def test_one_huge_line_is_cut(sqlite_url: str, engine: str) -> None:
    """E3: a single 50 MiB line is stored cut to 64 KiB with the line-truncation marker."""
    code = "import sys\nsys.stdout.write('b' * (50 * 1024 * 1024) + '\\n')\nprint('after')\n"
    config = executor_config(engine, max_log_bytes=LOG_CAP)
    async with container_cronium(sqlite_url, engine, config=config) as cr:
        job = await cr.run((await cr.events.add(container_event(engine, "python", code))).id)
        done = await cr.jobs.wait(job.id, timeout=90)
        lines = [ln for ln in await cr.jobs.logs(job.id) if ln.stream is Stream.STDOUT]
        assert done.status is JobStatus.SUCCEEDED, done
        assert [ln.text for ln in lines][1:] == ["after"]
        cut = lines[0].text
        assert cut.endswith(TRUNCATION_MARKER)
        assert cut[: -len(TRUNCATION_MARKER)] == "b" * MAX_LINE_BYTES


HOSTILE = r"""
import sys
out = sys.stdout.buffer
out.write(b"\x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b[2J\x1b[H cleared\n")
out.write(b"bell\x07 backspace\x08 nul\x00 escape\x1b done\n")
out.write(b"bad utf8 \xff\xfe \xc3\x28 \xed\xa0\x80 end\n")
out.write(b"crlf line\r\n")
out.write(b"::set-output name=output::{\"hacked\": true}\n")
out.write(b"::set-condition::true\n")
out.write(b'{"success": true, "data": {"output": {"hacked": true}, "condition": true}}\n')
out.write(b'POST /executions/me/output {"output": {"hacked": true}}\n')
out.write(b"cronium_output '{\"hacked\": true}'\n")
out.write(b"last line\n")
out.flush()
"""


@pytest.mark.parametrize("engine", engine_params)
async def test_hostile_output_is_stored_safely_and_cannot_set_output(
    db_url: str, engine: str
) -> None:
    """E3: control sequences, NUL bytes and invalid UTF-8 are stored as valid text (the
    job succeeds and no line is lost; PostgreSQL refuses NUL in text, hence both databases);
    framing lookalikes do not set the output or condition; the runtime API does."""
    config = executor_config(engine, max_log_bytes=LOG_CAP)
    async with container_cronium(db_url, engine, config=config) as cr:
        fake = await cr.events.add(container_event(engine, "python", HOSTILE))
        real = await cr.events.add(
            container_event(
                engine,
                "python",
                HOSTILE + "import cronium\ncronium.output({'real': 1})\n",
            )
        )
        fake_job, real_job = await cr.run(fake.id), await cr.run(real.id)
        for job in (fake_job, real_job):
            done = await cr.jobs.wait(job.id, timeout=60)
            lines = await cr.jobs.logs(job.id)
            texts = [ln.text for ln in lines]
            assert done.status is JobStatus.SUCCEEDED, (done, texts)
            for text in texts:
                text.encode("utf-8")  # valid: no lone surrogates
            stdout = [ln.text for ln in lines if ln.stream is Stream.STDOUT]
            assert len(stdout) == 10, stdout
            assert stdout[0].startswith("\x1b[31mred") and stdout[0].endswith("cleared")
            assert stdout[1].startswith("bell") and stdout[1].endswith("done")
            assert stdout[2].startswith("bad utf8 ") and stdout[2].endswith(" end")
            assert "\ufffd" in stdout[2]
            assert stdout[3] == "crlf line"
            assert stdout[4] == '::set-output name=output::{"hacked": true}'
            assert stdout[-1] == "last line"
            # the job's result comes from the runtime API only
            assert done.condition is None
            if job is fake_job:
                assert done.output is None
            else:
                assert done.output == {"real": 1}


# -- Q7: poison pills ----------------------------------------------------------------------------

OOM = """
chunks = []
while True:
    chunks.append(b"x" * (8 * 1024 * 1024))
"""
SEGFAULT = "import ctypes\nprint('crashing', flush=True)\nctypes.string_at(0)\n"


async def watch(cr: Cronium, job_id: str, seen: list[tuple[Any, ...]], timeout: float) -> Job:
    """Every distinct (status, attempt, exit code, error) of the job until it ends."""
    with anyio.fail_after(timeout):
        while True:
            job = await cr.jobs.get(job_id)
            state = (job.status, job.attempt, job.exit_code, job.error)
            if not seen or seen[-1] != state:
                seen.append(state)
            if job.status.finished:
                return job
            await anyio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("engine", engine_params)
async def test_oom_and_segfault_are_job_failures(sqlite_url: str, engine: str) -> None:
    """Q7: a job over its memory limit on every attempt fails each attempt with "out of
    memory" (exit 137), is retried with backoff up to max_attempts and then ends failed; a
    segfault fails with SIGSEGV; neither is taken for worker loss, and the worker keeps
    running other jobs."""
    async with container_cronium(sqlite_url, engine) as cr:
        oom = await cr.events.add(
            container_event(
                engine,
                "python",
                OOM,
                executor_options={"memory": "64m"},
                retry=RetryPolicy(max_attempts=3, backoff_base=0.5),
            )
        )
        crash = await cr.events.add(container_event(engine, "python", SEGFAULT))
        fine = await cr.events.add(container_event(engine, "python", "print('fine')"))
        oom_job, crash_job, fine_job = [await cr.run(e.id) for e in (oom, crash, fine)]
        seen: list[tuple[Any, ...]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, cr, oom_job.id, seen, 120)
            crashed = await cr.jobs.wait(crash_job.id, timeout=60)
            assert (await cr.jobs.wait(fine_job.id, timeout=60)).status is JobStatus.SUCCEEDED
        done = await cr.jobs.get(oom_job.id)

        # every attempt ended as a failure of the job, each one "out of memory" (137)
        ends = [s for s in seen if s[0] is not JobStatus.RUNNING and s[3] is not None]
        assert [(s[0], s[1]) for s in ends] == [
            (JobStatus.QUEUED, 1),
            (JobStatus.QUEUED, 2),
            (JobStatus.FAILED, 3),
        ], seen
        assert all(s[2:] == (137, "out of memory") for s in ends), seen
        assert (done.status, done.attempt, done.exit_code, done.error) == (
            JobStatus.FAILED,
            3,
            137,
            "out of memory",
        )
        assert not any("lost" in str(s[3]) for s in seen), seen

        assert crashed.status is JobStatus.FAILED, crashed
        assert crashed.error == "killed by signal SIGSEGV" and crashed.exit_code == 139
        assert "crashing" in [ln.text for ln in await cr.jobs.logs(crash_job.id)]

        # still healthy afterwards
        again = await cr.run(fine.id)
        after = await cr.jobs.wait(again.id, timeout=60)
        assert after.status is JobStatus.SUCCEEDED
        assert "fine" in [ln.text for ln in await cr.jobs.logs(again.id)]
        assert cr.worker is not None and cr.worker.running_jobs == []
