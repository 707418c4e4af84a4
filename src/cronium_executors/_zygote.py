"""The zygote: the process that starts every job of a local executor, and ends them with it.

Run as ``python -s _zygote.py <control fd> <worker pid>`` by :mod:`cronium_executors._launcher`;
it uses the standard library only (plus the Cronium SDK, imported ahead so that forked Python
jobs start with it loaded). ``-s``: its ``HOME`` is a shared temp directory, where a planted
user site-packages must not be imported into every job (a cold job's ``HOME`` is its own
fresh directory).

It starts a job in one of two ways, each as the leader of a new session (so that the job and
everything it starts form one process group), with the job's stdout and stderr, ``/dev/null``
as stdin, its working directory and nothing but its own environment:

- ``exec``: a program (bash, node, a cold Python) through ``posix_spawn``, with every signal
  the zygote ignores back at its default and an empty signal mask (but for glibc's two
  internal signals, which its ``posix_spawn`` leaves ignored and glibc sets when it uses them);
- ``fork``: a Python script run by a forked child of this very interpreter (the warm pool),
  which saves the interpreter's start-up on every Python job. The child is forked ahead of
  the job when it can be (the *spare*, made ready while the zygote waits for the next job).

Protocol, over the control socket (``SOCK_SEQPACKET``, one message per job): a JSON object
``{"mode": "exec" | "fork", "argv": [...], "cwd": ..., "env": {...}}`` carrying three file
descriptors: the job's stdout, stderr, and a reply socket. ``argv`` is the whole command for
``exec`` (its program looked up on the job's ``PATH``), ``[script, *args]`` for ``fork``. On
the reply socket the zygote writes ``pid <pid>\\n`` once the job started, ``exit <wait
status>\\n`` once it is reaped; or, instead of both, ``oserror <errno>\\n`` when the program
could not be started, ``error <text>\\n`` when the zygote failed otherwise. The executor
writes ``done`` on it once it has stopped what the job left running, then closes it. The
zygote sends ``ready`` on the control socket once it is ready.

Jobs die with their worker. The zygote keeps the process group of each job until the executor
says it is done with it, and kills (SIGKILL) every group it keeps when the worker is gone,
which it learns three ways: the control socket reaches its end (the executor stopped, or its
process died), a job's reply socket ends without ``done``, and SIGHUP, which the kernel sends
it when its parent dies (``PR_SET_PDEATHSIG``; acted on even where the zygote would be stuck,
or where another process holds the control socket open). Not SIGKILL there: the zygote would
die before it could end the jobs. A job that leaves its process group (``setsid``) is not
found.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not sys.flags.safe_path:
    # sys.path[0] is this directory, which holds a module named "http": it must not shadow
    # the standard library, here or in the children
    del sys.path[0]

import array
import atexit
import contextlib
import errno
import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import traceback
from types import FrameType, TracebackType
from typing import Any

MAX_MESSAGE = 256 * 1024
_FDS_PER_JOB = 3
#: what runpy imports lazily: imported here once, not in every child
_PRELOAD = ("pkgutil", "weakref")
#: the signal the kernel sends the zygote when the worker dies
_PARENT_DIED = signal.SIGHUP
_PR_SET_PDEATHSIG = 1


class Zygote:
    def __init__(self, control: socket.socket, parent: int) -> None:
        self.control = control
        self.parent = parent
        self.selector = selectors.DefaultSelector()
        #: job pid (= its process group) -> its reply socket, while the job's process runs
        self.running: dict[int, int] = {}
        #: reply socket -> process group, once the job's process is reaped and until the
        #: executor closes that socket (it may still stop what the job left running)
        self.lingering: dict[int, int] = {}
        #: the child forked ahead for the next Python job: pid, socket, whether it is ready
        self.spare: tuple[int, socket.socket, bool] | None = None
        self.stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        # exec jobs start in their directory by way of the zygote's: it comes back here after
        self.home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.wakeup_r, self.wakeup_w = os.pipe()
        # what a fresh interpreter has, restored in each forked child
        self.initial_handlers = {
            sig: signal.getsignal(sig)
            for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, _PARENT_DIED)
        }
        self.ignored_signals: list[int] = []

    def serve(self) -> None:
        os.set_blocking(self.wakeup_w, False)
        os.set_blocking(self.wakeup_r, False)
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore_signal)
        # the executor stops us by closing the control socket; ^C on a terminal is not for us
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(_PARENT_DIED, self.on_parent_died)
        _die_with_parent(_PARENT_DIED)
        if os.getppid() != self.parent:
            return  # the worker died before the kernel could be told to tell us
        # exec jobs get these back at their defaults (the interpreter ignores SIGPIPE)
        self.ignored_signals = [
            sig
            for sig in signal.valid_signals()
            if sig not in (signal.SIGKILL, signal.SIGSTOP)
            and signal.getsignal(sig) is signal.SIG_IGN
        ]
        # what is loaded now is shared by every child: keep the collector of each child off
        # it, or its first collection writes to (and so copies) every page
        gc.freeze()
        self.selector.register(self.control, selectors.EVENT_READ)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ)
        self.control.send(b"ready")
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.control:
                    if not self.accept():
                        self.kill_jobs()
                        return
                elif key.fd == self.wakeup_r:
                    self.reap()
                else:
                    self.release(key.fd)

    def on_parent_died(self, signum: int, frame: FrameType | None) -> None:
        if os.getppid() == self.parent:
            # the thread that started us ended, not the worker (the signal follows the
            # thread); or someone else sent it: either way the worker still runs
            return
        self.kill_jobs()
        os._exit(0)

    def kill_jobs(self) -> None:
        """The executor is gone (normally it ends its jobs first; here its worker died):
        jobs nobody watches any more must not run on."""
        spare = [self.spare[0]] if self.spare is not None else []
        for pgid in [*self.running, *self.lingering.values(), *spare]:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)

    def accept(self) -> bool:
        """Take one job request; False when the executor has gone."""
        try:
            message, fds, flags = _receive_with_fds(self.control)
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
        stdout, stderr, reply = fds
        # held until the job is known, so that dying with the worker cannot miss it
        signal.pthread_sigmask(signal.SIG_BLOCK, (_PARENT_DIED,))
        try:
            try:
                request = json.loads(message)
                if request["mode"] == "exec":
                    pid = self.spawn(request, stdout, stderr)
                else:
                    pid = self.hand_to_spare(message, stdout, stderr) or self.fork(
                        request, stdout, stderr
                    )
            except OSError as exc:  # the executor reports it as the job's failure to start
                _write(reply, f"oserror {exc.errno or errno.EIO}\n")
                os.close(reply)
                return True
            except Exception as exc:  # reported to the executor, which falls back
                _write(reply, f"error {type(exc).__name__}: {exc}".replace("\n", " ") + "\n")
                os.close(reply)
                return True
            finally:
                os.close(stdout)
                os.close(stderr)
            self.running[pid] = reply
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (_PARENT_DIED,))
        _write(reply, f"pid {pid}\n")
        if request["mode"] == "fork" and self.spare is None:
            with contextlib.suppress(OSError):  # the next job forks the usual way
                self.fork_spare()
        return True

    def fork(self, request: dict[str, Any], stdout: int, stderr: int) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.leave_zygote(keep=(stdout, stderr))
                code = self.run_job(request, stdout, stderr)
            finally:
                os._exit(code)
        return pid

    def fork_spare(self) -> None:
        """Fork the child of the next Python job ahead of it, and have it rehearse running a
        script. A forked child copies each page of the zygote the first time it writes to it
        (a page fault: microseconds each, and starting a script takes hundreds); the spare
        takes those before the job, not while the job waits."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.leave_zygote(keep=(theirs.fileno(),))
                _rehearse()
                theirs.send(b"ready")
                message, fds, _ = _receive_with_fds(theirs)
                theirs.close()
                # no descriptors: the zygote has gone, without a job for us
                code = self.run_job(json.loads(message), *fds) if len(fds) == 2 else 0
            finally:
                os._exit(code)
        theirs.close()
        self.spare = (pid, ours, False)

    def hand_to_spare(self, message: bytes, stdout: int, stderr: int) -> int | None:
        """Give the job to the spare child; None when none is ready (its own session made:
        it must be its process group before the executor may stop that group)."""
        if self.spare is None:
            return None
        pid, sock, ready = self.spare
        if not ready:
            try:
                ready = sock.recv(16, socket.MSG_DONTWAIT) == b"ready"
            except BlockingIOError:
                return None
            except OSError:
                ready = False
            if not ready:
                self.drop_spare()
                return None
        self.spare = None
        try:
            socket.send_fds(sock, [message], [stdout, stderr])
        except OSError:
            return None  # it died; it is reaped as any child
        finally:
            sock.close()
        return pid

    def drop_spare(self) -> None:
        if self.spare is not None:
            sock = self.spare[1]
            self.spare = None
            sock.close()  # it exits when its socket ends

    def spawn(self, request: dict[str, Any], stdout: int, stderr: int) -> int:
        os.chdir(request["cwd"])
        try:
            return _spawn(
                request["argv"],
                request["env"],
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, self.stdin, 0),
                    (os.POSIX_SPAWN_DUP2, stdout, 1),
                    (os.POSIX_SPAWN_DUP2, stderr, 2),
                ],
                setsid=True,
                setsigdef=self.ignored_signals,
                setsigmask=(),
            )
        finally:
            os.fchdir(self.home)

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
            reply = self.running.get(pid)
            if reply is None:
                if self.spare is not None and self.spare[0] == pid:
                    self.drop_spare()
                continue
            self.lingering[reply] = pid
            del self.running[pid]
            _write(reply, f"exit {status}\n")
            self.selector.register(reply, selectors.EVENT_READ)

    def release(self, reply: int) -> None:
        """The executor is done with a job: it says so (``done``) and closes the reply socket
        once it stopped what the job left running. Closed without a word, the executor is gone
        (its worker died, and the control socket's end may not have been read yet): what is
        left of the job must not run on."""
        try:
            said = os.read(reply, 64)
        except BlockingIOError:
            return
        except OSError:
            said = b""
        if not said:
            with contextlib.suppress(OSError):
                os.killpg(self.lingering[reply], signal.SIGKILL)
        self.selector.unregister(reply)
        del self.lingering[reply]
        os.close(reply)

    def leave_zygote(self, keep: tuple[int, ...]) -> None:
        """In a forked child: become a fresh job process but for the descriptors ``keep``."""
        signal.set_wakeup_fd(-1)
        for sig, handler in self.initial_handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.setsid()
        os.dup2(self.stdin, 0)
        self.selector.close()
        self.control.close()
        _close_fds_from(3, keep)

    def run_job(self, request: dict[str, Any], out: int, err: int) -> int:
        """In a forked child: run the job's script, give its exit status."""
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
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
        return _run_script(argv[0])


def _rehearse() -> None:
    """Run an empty script the way a job's runs, leaving nothing behind."""
    with contextlib.suppress(Exception):
        runpy.run_path(os.devnull, run_name="__main__")
    sys.path_importer_cache.pop(os.devnull, None)


def _receive_with_fds(sock: socket.socket) -> tuple[bytes, list[int], int]:
    """``socket.recv_fds``, but with the descriptors close-on-exec from the start (exec jobs
    must not inherit each other's pipes; ``recv_fds`` drops its ``flags`` before 3.12)."""
    fds = array.array("i")
    message, ancillary, flags, _ = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_SPACE(_FDS_PER_JOB * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return message, list(fds), flags


def _spawn(argv: list[str], env: dict[str, str], **options: Any) -> int:
    """``posix_spawn`` ``argv``, its program looked up on the ``PATH`` of ``env`` (as
    ``subprocess`` does), skipping the directories that do not hold it."""
    program = argv[0]
    if os.sep in program:
        return os.posix_spawn(program, argv, env, **options)
    failure: OSError | None = None
    for directory in os.get_exec_path(env):
        path = os.path.join(directory, program)
        if not os.access(path, os.X_OK):
            continue
        try:
            return os.posix_spawn(path, argv, env, **options)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            failure = failure or exc  # like execvp: the first real error, if none succeeds
    raise failure or FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _die_with_parent(sig: int) -> None:
    """Ask Linux to send ``sig`` when our parent dies."""
    if not sys.platform.startswith("linux"):
        return  # the end of the control socket still tells
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        zero = ctypes.c_ulong(0)
        libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(sig), zero, zero, zero)
    except (ImportError, OSError, AttributeError):
        pass


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD needs a handler (not SIG_IGN, which reaps by itself) for the wakeup fd."""


def _write(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        # the executor stopped listening (its job was cancelled): nothing to tell
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
            raise


def _close_fds_from(lowest: int, keep: tuple[int, ...]) -> None:
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = list(range(lowest, os.sysconf("SC_OPEN_MAX")))
    for fd in open_fds:
        if fd >= lowest and fd not in keep:
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
    # the SDK the zygote imported, as a global too (what ``python -m cronium`` gives)
    sdk = sys.modules.get("cronium")
    try:
        runpy.run_path(path, init_globals={"cronium": sdk} if sdk else None, run_name="__main__")
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
    control.set_inheritable(False)
    parent = int(sys.argv[2])
    with contextlib.suppress(ImportError):
        sdk = importlib.import_module("cronium")  # loaded once here, shared by every child
        # and what its first call would import (http.client & co, ~20 ms per job otherwise)
        preload = getattr(sdk, "preload", None)
        if callable(preload):
            preload()
    for name in _PRELOAD:
        importlib.import_module(name)
    Zygote(control, parent).serve()


if __name__ == "__main__":
    main()
