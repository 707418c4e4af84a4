"""The OOM probe (``cronium_executors._oom``) on real cgroup v1 memory cgroups, as the podman
executor uses it on hosts whose engine does not report OOM kills: what a job in the cgroup
goes through, and what the executor does at its end (the watch cancelled at once, the cgroup
removed by the engine right after)."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from cronium_executors._oom import CGROUP_V1_MEMORY, OomProbe
from tests.containers import in_ci

pytestmark = pytest.mark.anyio


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A fresh v1 memory cgroup limited to 32 MiB, removed afterwards."""
    if not (CGROUP_V1_MEMORY / "cgroup.event_control").is_file() or os.geteuid() != 0:
        problem = "no cgroup v1 memory hierarchy that this user can write to"
        if in_ci():
            pytest.fail(problem)
        pytest.skip(problem)
    directory = CGROUP_V1_MEMORY / f"cronium-test-{uuid.uuid4().hex[:12]}"
    directory.mkdir()
    try:
        (directory / "memory.limit_in_bytes").write_text(str(32 * 2**20))
        (directory / "memory.swappiness").write_text("0")
        yield directory
    finally:
        if directory.exists():
            directory.rmdir()


def in_cgroup(directory: Path, then: str) -> list[str]:
    """A Python process that moves itself into the cgroup, then runs ``then``."""
    join = f"open({str(directory / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid()))"
    return [sys.executable, "-c", f"{join}\n{then}"]


def exit_code(returncode: int) -> int:
    """A process's exit as a container engine reports it (128 + the signal)."""
    return 128 - returncode if returncode < 0 else returncode


async def test_an_oom_kill_is_told_although_the_jobs_end_cancels_the_watch(
    cgroup: Path,
) -> None:
    """The kernel notifies just before it kills, and the kill ends the job: the executor may
    cancel the watch between the notification and the kill (here: at once), and the engine
    removes the cgroup right after the exit. The probe still reads the kill counter."""
    probe = OomProbe(cgroup)
    try:
        async with await anyio.open_process(in_cgroup(cgroup, "x = b'1' * (256 << 20)")) as hog:
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe.watch)
                with anyio.fail_after(30):
                    while not probe.condition:  # the notification is in
                        await anyio.sleep(0.0005)
                tg.cancel_scope.cancel()
            await hog.wait()
        os.rmdir(cgroup)  # as the engine does
    finally:
        probe.close()
    assert hog.returncode is not None
    code = exit_code(hog.returncode)
    assert code == 128 + signal.SIGKILL
    assert probe.killed and probe.oom_killed(code)


async def test_a_sigkill_without_oom_is_not_taken_for_one(cgroup: Path) -> None:
    """A job killed by SIGKILL for another reason, its cgroup then removed (which notifies
    too): not an OOM kill."""
    probe = OomProbe(cgroup)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe.watch)
            killed = await anyio.run_process(
                in_cgroup(cgroup, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
                check=False,
            )
            os.rmdir(cgroup)  # the removal's notification reaches the watch
            await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
    finally:
        probe.close()
    code = exit_code(killed.returncode)
    assert code == 128 + signal.SIGKILL
    assert not probe.condition and not probe.killed and not probe.oom_killed(code)
