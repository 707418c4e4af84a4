"""The warm Python pool's zygote: a Python process that forks one child per Python job.

Run as ``python -s _zygote.py <control fd>`` by :mod:`cronium_executors._pyfork`; it uses the
standard library only (plus the Cronium SDK, imported ahead so children start with it loaded).
``-s``: its ``HOME`` is a shared temp directory, where a planted user site-packages must not
be imported into every job (a cold job's ``HOME`` is its own fresh directory).

Protocol, over the control socket (``SOCK_SEQPACKET``, one message per job): a JSON object
``{"argv": [...], "cwd": ..., "env": {...}}`` carrying four file descriptors: the child's
stdin, stdout, stderr, and a reply socket. On the reply socket the zygote writes
``pid <pid>\\n`` once the child is forked, ``exit <wait status>\\n`` once it is reaped (or
``error <text>\\n`` when it could not fork), then closes it. The zygote sends ``ready`` on the
control socket once it is ready, and exits when the control socket reaches its end, killing
the process groups of the children still running (their worker is gone).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not sys.flags.safe_path:
    # sys.path[0] is this directory, which holds a module named "http": it must not shadow
    # the standard library, here or in the children
    del sys.path[0]

import atexit
import contextlib
import errno
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import traceback
from types import FrameType, TracebackType
from typing import Any, NoReturn

MAX_MESSAGE = 256 * 1024
_FDS_PER_JOB = 4


class Zygote:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.selector = selectors.DefaultSelector()
        self.replies: dict[int, int] = {}  # child pid -> reply socket fd
        self.wakeup_r, self.wakeup_w = os.pipe()
        # what a fresh interpreter has, restored in each child
        self.initial_handlers = {
            sig: signal.getsignal(sig) for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM)
        }

    def serve(self) -> None:
        os.set_blocking(self.wakeup_w, False)
        os.set_blocking(self.wakeup_r, False)
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore_signal)
        # the executor stops us by closing the control socket; ^C on a terminal is not for us
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.selector.register(self.control, selectors.EVENT_READ)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ)
        self.control.send(b"ready")
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.control:
                    if not self.accept():
                        self.kill_children()
                        return
                else:
                    self.reap()

    def kill_children(self) -> None:
        """The executor is gone (normally it ends its jobs first; here its worker died):
        jobs nobody watches any more must not run on."""
        for pid in self.replies:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

    def accept(self) -> bool:
        """Take one job request; False when the executor has gone."""
        try:
            message, fds, flags, _ = socket.recv_fds(self.control, MAX_MESSAGE, _FDS_PER_JOB)
        except InterruptedError:
            return True
        except ConnectionError:
            return False
        if not message and not fds:
            return False
        if len(fds) != _FDS_PER_JOB or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            return True
        stdin, stdout, stderr, reply = fds
        try:
            request = json.loads(message)
            pid = os.fork()
        except Exception as exc:  # reported to the executor, which falls back
            _write(reply, f"error {type(exc).__name__}: {exc}\n".replace("\n", " ") + "\n")
            for fd in fds:
                os.close(fd)
            return True
        if pid == 0:
            self.become_child(request, stdin, stdout, stderr)
        for fd in (stdin, stdout, stderr):
            os.close(fd)
        self.replies[pid] = reply
        _write(reply, f"pid {pid}\n")
        return True

    def reap(self) -> None:
        try:
            while os.read(self.wakeup_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            reply = self.replies.pop(pid, None)
            if reply is not None:
                _write(reply, f"exit {status}\n")
                os.close(reply)

    def become_child(self, request: dict[str, Any], stdin: int, out: int, err: int) -> NoReturn:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig, handler in self.initial_handlers.items():
                signal.signal(sig, handler)
            os.setsid()
            os.dup2(stdin, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            self.selector.close()
            self.control.close()
            _close_fds_from(3)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            argv: list[str] = request["argv"]
            sys.argv = list(argv)
            # as ``python script.py`` would: the script's directory comes first
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
            tempfile: Any = sys.modules.get("tempfile")
            if tempfile is not None:
                tempfile.tempdir = None  # it caches TMPDIR
            code = _run_script(argv[0])
        finally:
            os._exit(code)


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD needs a handler (not SIG_IGN, which reaps by itself) for the wakeup fd."""


def _write(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        # the executor stopped listening (its job was cancelled): nothing to tell
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
            raise


def _close_fds_from(lowest: int) -> None:
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(lowest, os.sysconf("SC_OPEN_MAX"))
        return
    for fd in open_fds:
        if fd >= lowest:
            # one of them was the directory listing's own, already closed
            with contextlib.suppress(OSError):
                os.close(fd)


def _script_traceback(tb: TracebackType | None, script: str) -> TracebackType | None:
    """Drop the runpy and zygote frames, so the traceback reads as from ``python script``."""
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    return tb


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _run_script(path: str) -> int:
    """Run the script as the interpreter runs ``__main__``, and give its exit status."""
    interrupted = False
    try:
        runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = _system_exit_code(exc)
    except BaseException as exc:  # the uncaught exception of the script
        trimmed = _script_traceback(exc.__traceback__, path)
        sys.excepthook(type(exc), exc.with_traceback(trimmed), trimmed)
        interrupted = isinstance(exc, KeyboardInterrupt)
        code = 1
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()  # join the non-daemon threads, as the interpreter does
        atexit._run_exitfuncs()
    except SystemExit as exc:
        code = _system_exit_code(exc)
    except BaseException:
        traceback.print_exc()
    _flush_stdio()
    if interrupted:
        # like the interpreter: end by SIGINT so the parent sees the interruption
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _system_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    with contextlib.suppress(Exception):
        print(exc.code, file=sys.stderr)
    return 1


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    with contextlib.suppress(ImportError):
        importlib.import_module("cronium")  # loaded once here, shared by every child
    Zygote(control).serve()


if __name__ == "__main__":
    main()
