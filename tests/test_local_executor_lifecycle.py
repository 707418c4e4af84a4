"""Jobs of the local executor die with their worker, whatever their language.

A real worker-like process starts an executor and jobs in bash (with a grandchild it sent to
the background), node and Python (forked by the warm pool, and a fresh interpreter), prints
their pids, and is killed with SIGKILL: nothing of it may be left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream

pytestmark = [pytest.mark.anyio, pytest.mark.fault]

#: how long the jobs may outlive their worker
DEATH_WINDOW = 3.0
HAS_NODE = shutil.which("node") is not None

WORKER = """
import subprocess, sys, anyio
from contextlib import AsyncExitStack
from cronium_core.events import Script
from cronium_core.executors import ExecutionRequest
from cronium_executors.local import LocalExecutor

work_root, has_node, hold_control = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
SLEEPY_PYTHON = "import os, time\\nprint(os.getpid(), flush=True)\\ntime.sleep(1000)"
JOBS = [
    # (name, language, code, env); each prints its main process's pid last
    ("bash", "bash", "sleep 1000 &\\necho $!\\necho $$\\nsleep 1000\\n", {}),
    # ends at once, leaving a grandchild that ignores SIGTERM: the executor is still waiting
    # for it to go (kill_grace) when the worker dies
    ("bash-leftover", "bash", "trap '' TERM\\nsleep 1000 &\\necho $!\\necho $$\\n", {}),
    ("python-warm", "python", SLEEPY_PYTHON, {}),
    # its environment shapes the interpreter's start: a fresh interpreter, not a fork
    ("python-fresh", "python", SLEEPY_PYTHON, {"PYTHONDONTWRITEBYTECODE": "1"}),
]
if has_node:
    JOBS.append(("node", "node", "console.log(process.pid); setTimeout(() => {}, 1e6);", {}))

def say(*words):
    print(*words, flush=True)

async def run(local, name, language, code, env):
    async def emit(stream, text):
        say("job", name, stream.value, text)
    request = ExecutionRequest(
        job_id=name, attempt=1, event_id="e", event_name="n", input=None, env=env,
        action=Script(language=language, code=code), timeout=1000, kill_grace=1000,
    )
    await local.execute(request, emit)

async def main():
    async with AsyncExitStack() as stack:
        local = LocalExecutor({"work_root": work_root})
        await local.start(stack)
        say("zygote", local.zygote_pid)
        if hold_control:
            # another process keeps the zygote's control socket open: only the kernel's
            # parent-death signal tells the zygote that its worker is gone
            control = local._launcher._zygote.control
            holder = subprocess.Popen(["sleep", "1000"], pass_fds=[control.fileno()])
            say("holder", holder.pid)
        async with anyio.create_task_group() as tg:
            for job in JOBS:
                tg.start_soon(run, local, *job)

anyio.run(main)
"""


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


async def read_lines(stream: ByteReceiveStream, until: int) -> list[list[str]]:
    """The worker's stdout, split into words, until ``until`` job pids were printed."""
    buffer = b""
    lines: list[list[str]] = []
    while sum(1 for words in lines if words[0] == "job") < until:
        buffer += await stream.receive()
        *complete, buffer = buffer.split(b"\n")
        lines += [line.decode().split() for line in complete if line]
    return lines


@pytest.mark.parametrize("hold_control", [False, True], ids=["socket-ends", "socket-held"])
async def test_every_job_dies_with_its_worker(tmp_path: Path, hold_control: bool) -> None:
    # bash: its grandchild and itself, twice; the two pythons; node
    printed_pids = 2 + 2 + 1 + 1 + (1 if HAS_NODE else 0)
    worker = await anyio.open_process(
        [sys.executable, "-c", WORKER, str(tmp_path), str(int(HAS_NODE)), str(int(hold_control))],
        stdin=subprocess.DEVNULL,
        stderr=None,
    )
    others: dict[str, int] = {}
    printed: dict[str, list[int]] = {}  # job name -> the pids it printed
    try:
        assert worker.stdout is not None
        with anyio.fail_after(15):
            lines = await read_lines(worker.stdout, printed_pids)
        for words in lines:
            if words[0] == "job":
                _, name, stream, text = words
                assert stream == "stdout", words
                printed.setdefault(name, []).append(int(text))
            else:
                others[words[0]] = int(words[1])
        zygote = others["zygote"]
        # once that bash ended, the executor waits for its SIGTERM-proof grandchild to go
        ended = printed["bash-leftover"].pop()
        with anyio.fail_after(5):
            while alive(ended):
                await anyio.sleep(0.01)
        everything = [zygote, *(pid for pids in printed.values() for pid in pids)]
        assert len(everything) == 1 + printed_pids - 1
        assert all(alive(pid) for pid in everything), "all runs before the kill"
        # each job's main process (the last pid it printed; bash printed its grandchild
        # first) was started by the zygote, whatever its language
        running = {job: pids[-1] for job, pids in printed.items() if job != "bash-leftover"}
        assert len(running) == len(printed) - 1
        assert {job: parent_of(pid) for job, pid in running.items()} == dict.fromkeys(
            running, zygote
        )

        worker.kill()
        await worker.wait()
        with anyio.move_on_after(DEATH_WINDOW):
            while any(alive(pid) for pid in everything):
                await anyio.sleep(0.02)
        survivors = [pid for pid in everything if alive(pid)]
        assert survivors == [], f"outlived their worker: {printed}, zygote {zygote}"
    finally:  # when the test failed: leave nothing behind all the same
        leftovers = [*others.values(), *(pid for pids in printed.values() for pid in pids)]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the jobs' main processes lead their groups
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        await worker.aclose()


if sys.platform != "linux":  # /proc is how these tests see processes
    pytestmark = [pytest.mark.anyio, pytest.mark.skip(reason="needs Linux")]
