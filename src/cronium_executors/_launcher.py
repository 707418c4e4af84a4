"""The job launcher, executor side: keeps a zygote running and asks it to start every job.

The zygote (:mod:`cronium_executors._zygote`) is a Python process started once. It starts each
job as its own child, so that it can kill them all when the worker dies (a worker killed with
SIGKILL cannot stop its jobs itself), and it serves the warm Python pool: it has imported the
SDK, and forks a child per Python job instead of starting an interpreter, which saves tens of
milliseconds a job. The launcher passes each job's pipes to the zygote over a Unix socket
(``SCM_RIGHTS``); the zygote answers with the job's pid (which is also its process group id,
for stopping it) and later with its exit status, since only the zygote, its parent, can reap it.

A dead zygote is restarted in the background (with a growing pause if it keeps dying); until
it is back, :meth:`Launcher.start_job` returns None and the executor spawns the job itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Literal

import anyio
import anyio.lowlevel
import attrs
from anyio import CancelScope
from anyio.abc import ByteReceiveStream, Process, TaskStatus

from ._process import FdReceiveStream, wait_group_gone

__all__ = ["LaunchedJob", "Launcher"]

log = logging.getLogger(__name__)

ZYGOTE = Path(__file__).resolve().with_name("_zygote.py")
#: a request must fit one control message (the zygote's receive buffer is 256 KiB)
MAX_REQUEST = 192 * 1024
READY_TIMEOUT = 10.0
#: how long the zygote may take to answer a start request before it is deemed hung
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
RESTART_DELAY_MIN = 0.1
RESTART_DELAY_MAX = 30.0
#: a zygote that lived this long was healthy: the restart pause starts small again
HEALTHY_AFTER = 10.0


class _Reply:
    """The zygote's line-based answers about one job, read from a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._buffer = b""

    async def read_line(self) -> str | None:
        """The next line, or None when the zygote closed the socket (or died)."""
        while b"\n" not in self._buffer:
            try:
                data = self._sock.recv(4096)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            except ConnectionError:
                data = b""
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def close(self, *, done: bool = False) -> None:
        """``done``: tell the zygote that the job's process group is no longer its to kill
        (closed without it, the zygote kills the group, as when the worker dies)."""
        if done:
            with contextlib.suppress(OSError):
                self._sock.send(b"done", socket.MSG_NOSIGNAL)
        self._sock.close()


class LaunchedJob:
    """A job started by the zygote (see :class:`~._process.JobProcess`)."""

    def __init__(self, pid: int, stdout: int, stderr: int, reply: _Reply) -> None:
        self._pid = pid
        self._stdout = FdReceiveStream(stdout)
        self._stderr = FdReceiveStream(stderr)
        self._reply = reply
        self._returncode: int | None = None
        self._ended = False

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def stdout(self) -> ByteReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> ByteReceiveStream:
        return self._stderr

    async def wait(self) -> int | None:
        while not self._ended:
            line = await self._reply.read_line()
            if line is None:
                # the zygote died: the job lives on, orphaned, and its status is lost;
                # wait for it to end all the same (it is reparented to init, which reaps it)
                await wait_group_gone(self._pid)
                self._ended = True
            elif line.startswith("exit "):
                self._returncode = os.waitstatus_to_exitcode(int(line[5:]))
                self._ended = True
        return self._returncode

    async def aclose(self) -> None:
        await self._stdout.aclose()
        await self._stderr.aclose()
        self._reply.close(done=True)


@attrs.define(eq=False)
class _Zygote:
    process: Process
    control: socket.socket
    started_at: float
    send_lock: anyio.Lock = attrs.Factory(anyio.Lock)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and self.control.fileno() >= 0


@attrs.define(kw_only=True, eq=False)
class Launcher:
    """Starts jobs through a zygote. ``env`` is the zygote's environment: a forked Python
    job only matches a cold ``python script.py`` when the variables read at interpreter
    start-up (``PYTHON*``, locale) are the same in the job's environment, see :meth:`can_fork`.
    """

    python: str
    env: Mapping[str, str]
    cwd: str
    _zygote: _Zygote | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs."""
        zygote = self._zygote
        return zygote.process.pid if zygote is not None and zygote.alive else None

    def can_fork(self, env: Mapping[str, str]) -> bool:
        return _startup_env(env) == _startup_env(self.env)

    async def start(self, exit_stack: AsyncExitStack) -> None:
        task_group = await exit_stack.enter_async_context(anyio.create_task_group())
        exit_stack.push_async_callback(self._stop, task_group.cancel_scope)
        await task_group.start(self._supervise, name="cronium job launcher")

    async def _stop(self, scope: CancelScope) -> None:
        with anyio.CancelScope(shield=True):
            self._closing = True
            zygote = self._zygote
            if zygote is not None:
                zygote.control.close()  # the zygote exits when its control socket ends
                with anyio.move_on_after(STOP_TIMEOUT):
                    await zygote.process.wait()
                if zygote.process.returncode is None:
                    zygote.process.kill()
                    await zygote.process.wait()
            scope.cancel()

    async def _supervise(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        delay = RESTART_DELAY_MIN
        while not self._closing:
            zygote = await self._launch()
            task_status.started()
            task_status = anyio.TASK_STATUS_IGNORED
            if zygote is not None:
                self._zygote = zygote
                try:
                    returncode = await zygote.process.wait()
                finally:
                    self._zygote = None
                    zygote.control.close()
                if self._closing:
                    return
                log.warning("the job launcher exited (%s); restarting it", returncode)
                if anyio.current_time() - zygote.started_at > HEALTHY_AFTER:
                    delay = RESTART_DELAY_MIN
            await anyio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX)

    async def _launch(self) -> _Zygote | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await anyio.open_process(
                [self.python, "-s", str(ZYGOTE), str(theirs.fileno()), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                pass_fds=[theirs.fileno()],
            )
        except OSError as exc:
            ours.close()
            log.warning("cannot start the job launcher (%s); jobs start without it", exc)
            return None
        finally:
            theirs.close()
        ours.setblocking(False)
        try:
            with anyio.fail_after(READY_TIMEOUT):
                await _await_ready(ours)
        except BaseException as exc:
            ours.close()
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
            if not isinstance(exc, (OSError, TimeoutError)):
                raise
            log.warning("the job launcher did not start (%s); jobs start without it", exc)
            return None
        return _Zygote(process=process, control=ours, started_at=anyio.current_time())

    async def start_job(
        self,
        mode: Literal["exec", "fork"],
        argv: Sequence[str],
        cwd: str,
        env: Mapping[str, str],
    ) -> LaunchedJob | None:
        """Start a job: ``exec`` runs the command ``argv``, ``fork`` the Python script
        ``argv[0]`` (arguments after it) in a child of the zygote.

        None means: the launcher cannot, spawn it without. Raises :class:`OSError` when the
        program cannot be started (as a spawn would)."""
        zygote = self._zygote
        if zygote is None or not zygote.alive:
            return None
        message = json.dumps({"mode": mode, "argv": list(argv), "cwd": cwd, "env": dict(env)})
        if len(message) > MAX_REQUEST:
            return None
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reply = _Reply(ours)
        pid: int | None = None
        failure: OSError | None = None
        try:
            async with zygote.send_lock:
                await _send_fds(zygote.control, message.encode(), [stdout_w, stderr_w, theirs])
            os.close(stdout_w)
            os.close(stderr_w)
            theirs.close()
            stdout_w = stderr_w = -1
            # shielded: once the request is out, a job may exist, and only its pid lets
            # the caller stop it; the zygote answers within milliseconds
            with anyio.CancelScope(shield=True), anyio.move_on_after(START_TIMEOUT) as waiting:
                answer = await reply.read_line()
                if answer is not None and answer.startswith("pid "):
                    pid = int(answer[4:])
                elif answer is not None and answer.startswith("oserror "):
                    number = int(answer[8:])
                    failure = OSError(number, os.strerror(number))
                elif answer is not None:
                    log.warning("the job launcher could not start a job: %s", answer)
            if waiting.cancelled_caught:
                log.warning("the job launcher hangs; restarting it")
                zygote.process.kill()
        except OSError as exc:
            log.warning("the job launcher is unreachable (%s); starting the job without", exc)
        finally:
            for fd in (stdout_w, stderr_w):
                if fd >= 0:
                    os.close(fd)
            theirs.close()
            if pid is None:
                reply.close()
                os.close(stdout_r)
                os.close(stderr_r)
        if failure is not None:
            raise failure
        if pid is None:
            return None
        return LaunchedJob(pid, stdout_r, stderr_r, reply)


async def _await_ready(control: socket.socket) -> None:
    while True:
        try:
            message = control.recv(64)
        except BlockingIOError:
            await anyio.wait_readable(control)
        else:
            break
    if message != b"ready":
        raise ConnectionError("the zygote ended before it was ready")


async def _send_fds(sock: socket.socket, message: bytes, fds: list[int | socket.socket]) -> None:
    numbers = [fd if isinstance(fd, int) else fd.fileno() for fd in fds]
    while True:
        try:
            socket.send_fds(sock, [message], numbers)
        except BlockingIOError:
            await anyio.wait_writable(sock)
        else:
            return


def _startup_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables a Python interpreter reads when it starts (they shape ``sys``, the
    locale and the standard streams, which a forked child inherits instead)."""
    return {
        name: value
        for name, value in env.items()
        if name.startswith(("PYTHON", "LC_")) or name in ("LANG", "LANGUAGE")
    }
