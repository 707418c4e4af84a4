"""Running one job's process group to its end: stream its output, stop what it leaves behind.

Every job runs as the leader of a new session (``setsid``), so its process id is also the id
of a process group that holds everything it starts (unless a descendant leaves with its own
``setsid``). Stopping a job is stopping that group: SIGTERM, ``kill_grace`` seconds, SIGKILL.

A group counts as gone once only zombies are left in it: where no init process reaps orphans
(a container started without ``--init``), zombies would otherwise keep it alive forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream, Process

from cronium_core.executors import LogSink, Outcome
from cronium_core.jobs import Stream

from ._lines import pump_lines

__all__ = [
    "ColdProcess",
    "FdReceiveStream",
    "JobProcess",
    "group_alive",
    "run_to_end",
    "stop_group",
    "wait_group_gone",
]

log = logging.getLogger(__name__)

#: after SIGKILL, how long to wait for the kernel to finish the group off
KILL_WAIT = 5.0
#: after the group is gone, give up reading output when nothing arrived for this long
#: (only a process that left the group can still hold the pipes open)
DRAIN_IDLE = 2.0
_PROC = Path("/proc")


class JobProcess(Protocol):
    """A started job: its pid (= its process group id), its output, its end."""

    @property
    def pid(self) -> int: ...

    @property
    def stdout(self) -> ByteReceiveStream: ...

    @property
    def stderr(self) -> ByteReceiveStream: ...

    async def wait(self) -> int | None:
        """The return code (negative: killed by that signal); None when it cannot be known.
        Must be safe to call again after a cancelled call."""

    async def aclose(self) -> None:
        """Release the output streams; the process is known to be gone."""


class ColdProcess:
    """A job the worker spawned itself (``anyio.open_process``: while the zygote is down) as
    a :class:`JobProcess`."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        assert process.stderr is not None
        self._process = process
        self._stdout = process.stdout
        self._stderr = process.stderr

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def stdout(self) -> ByteReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> ByteReceiveStream:
        return self._stderr

    async def wait(self) -> int | None:
        return await self._process.wait()

    async def aclose(self) -> None:
        await self._stdout.aclose()
        await self._stderr.aclose()


class FdReceiveStream(ByteReceiveStream):
    """The read end of a pipe, read without a thread (the fd is made non-blocking)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        while True:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _members_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is in the group (Linux: read /proc)."""
    for entry in os.scandir(_PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = (_PROC / entry.name / "stat").read_bytes()
        except OSError:
            continue  # it ended while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold anything, so split after its ")"
        fields = stat.rpartition(b")")[2].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def group_alive(pgid: int) -> bool:
    """Whether the process group still has a live (non-zombie) member."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours: the id was reused by someone else's group
    if _PROC.is_dir():
        return _members_alive(pgid)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def wait_group_gone(pgid: int) -> None:
    delay = 0.005
    while group_alive(pgid):
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def stop_group(pgid: int, kill_grace: float) -> bool:
    """SIGTERM the group, SIGKILL it after ``kill_grace`` s. False when nothing was left."""
    if not group_alive(pgid):
        return False
    _signal_group(pgid, signal.SIGTERM)
    with anyio.move_on_after(kill_grace):
        await wait_group_gone(pgid)
    if group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
        with anyio.move_on_after(KILL_WAIT):
            await wait_group_gone(pgid)
    return True


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def outcome_for(returncode: int | None) -> Outcome:
    if returncode is None:
        # only a job whose zygote died mid-run: the zygote alone could reap it
        return Outcome(
            exit_code=None,
            error="exit status unknown: the zygote that started the job died while it ran",
        )
    if returncode < 0:
        return Outcome(
            exit_code=128 - returncode, error=f"killed by signal {signal_name(-returncode)}"
        )
    return Outcome(exit_code=returncode)


async def run_to_end(process: JobProcess, *, kill_grace: float, emit: LogSink) -> Outcome:
    """Stream the output of ``process`` until it ends and say how it ended.

    When the main process exits, whatever it left running in its group is stopped. When the
    caller is cancelled, the whole group is stopped (shielded) before the cancellation goes on.
    """
    last_output = anyio.current_time()
    pumps_done = 0
    all_done = anyio.Event()

    def note_output() -> None:
        nonlocal last_output
        last_output = anyio.current_time()

    async def emit_noted(stream: Stream, text: str) -> None:
        await emit(stream, text)
        note_output()  # a slow sink is progress too, not an idle pipe

    async def pump(source: ByteReceiveStream, stream: Stream) -> None:
        nonlocal pumps_done
        try:
            await pump_lines(source, stream, emit_noted, note_output)
        finally:
            pumps_done += 1
            if pumps_done == 2:
                all_done.set()

    abandoned_output = False
    leftovers = False
    try:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, process.stdout, Stream.STDOUT, name="stdout")
                tg.start_soon(pump, process.stderr, Stream.STDERR, name="stderr")
                returncode = await process.wait()
                leftovers = await stop_group(process.pid, kill_grace)
                note_output()  # the drain's idle clock starts now
                while not all_done.is_set():
                    idle = anyio.current_time() - last_output
                    if idle >= DRAIN_IDLE:
                        abandoned_output = True
                        tg.cancel_scope.cancel()
                        break
                    with anyio.move_on_after(DRAIN_IDLE - idle):
                        await all_done.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stop_group(process.pid, kill_grace)
                with anyio.move_on_after(KILL_WAIT):
                    await process.wait()
            raise
    except BaseExceptionGroup as group:
        # a failing sink surfaces as itself, not wrapped by the task group
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()

    if leftovers:
        await emit(Stream.SYSTEM, "stopped the processes the script left running")
    if abandoned_output:
        await emit(
            Stream.SYSTEM,
            "stopped reading output: a process outside the job's group still holds it open",
        )
    return outcome_for(returncode)
