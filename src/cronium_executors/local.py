"""The ``local`` executor: runs bash, Python and node scripts as processes on the worker's host.

Each job gets:

- a fresh directory, removed afterwards: its working directory, ``HOME`` and ``TMPDIR``,
  holding the script as ``.cronium-job.<sh|py|js>``;
- an environment built from nothing but ``PATH``, ``HOME``, ``LANG=C.UTF-8``, ``TMPDIR``,
  ``PYTHONUNBUFFERED=1`` (so that output streams live) and the request's ``env``. The worker's
  own environment never reaches a job: it holds secrets such as the database URL;
- the SDKs (:func:`~cronium_executors._sdk.sdk_paths`) on ``PYTHONPATH`` and ``NODE_PATH``,
  ``cronium`` a global of Python and Node.js scripts (``python -c PYTHON_WITH_SDK``, ``node
  --require``), and the bash SDK sourced before a bash script;
- a session of its own, so that the job and everything it starts form one process group,
  stopped as a whole (SIGTERM, ``kill_grace`` seconds, SIGKILL) when the job is cancelled or
  times out, and when its main process ends while something it started still runs.

Every job is started by the *zygote* (:mod:`cronium_executors._zygote`, driven by
:mod:`cronium_executors._launcher`), a small Python process the executor keeps running. It
tracks the process group of every job it started and kills them all when the worker dies, even
by SIGKILL (it notices the end of its control socket, and Linux signals it when its parent
dies: ``PR_SET_PDEATHSIG``). While the zygote is down (it is restarted in the background), the
worker spawns jobs itself, and those do not die with it: ``anyio.open_process`` has no way to
set ``PR_SET_PDEATHSIG`` in the child (it takes no ``preexec_fn``), and that signal would reach
the job's main process only, not its group. On start, the executor removes the job directories
that killed workers left behind (the directory names carry the worker's pid, so ``work_root``
must not be shared with workers in another PID namespace, another container).

Python scripts run on the worker's own interpreter (``sys.executable``, setting ``python``),
so that the Python SDK shipped with this Cronium runs on the Python version it was written
for, and by default they do not even start it: the zygote has imported the standard library
modules it needs and the SDK, and forks one child per job (the *warm pool*), which saves tens
of milliseconds a job. The price: what the zygote imported is shared by every child as it was
at fork time (its modules, the hash seed, ``sys.flags``), so the zygote imports only the
standard library and the SDK, never user code. A job whose environment changes how the
interpreter starts (``PYTHON*``, ``LANG``, ``LC_*`` variables) gets a fresh interpreter, as
does every Python job with ``warm_python`` off.

Settings (the config mapping): ``python``, ``bash``, ``node`` (interpreter commands; ``python``
also runs the zygote), ``warm_python`` (bool, default true), ``path`` (the jobs' ``PATH``,
default the worker's), ``work_root`` (where job directories are made, default the system
temp dir).

The worker must reap orphans: when it runs as PID 1 of a container, start it with an init
(``docker run --init``), or the zombies of the jobs' orphans pile up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs

from cronium_core.errors import ValidationError
from cronium_core.events import Action, Script
from cronium_core.executors import ExecutionRequest, Executor, LogSink, Outcome
from cronium_core.hookspecs import hookimpl
from cronium_core.jobs import Stream
from cronium_core.plugins import ExecutorRegistry

from ._launcher import Launcher
from ._process import ColdProcess, JobProcess, run_to_end
from ._sdk import PYTHON_WITH_SDK, SdkPaths, sdk_paths

__all__ = [
    "LocalExecutor",
    "LocalSettings",
    "cronium_register_executors",
    "reap_stale_workspaces",
]

log = logging.getLogger(__name__)

_SUFFIXES = {"bash": ".sh", "python": ".py", "node": ".js"}
_WORKSPACE_NAME = re.compile(r"cronium-job-(\d+)-\w+")
# $0 is the script, $1 the SDK: source the SDK, then the script, in the same shell
_BASH_WITH_SDK = '. "$1" || exit 1; shift; . "$0"'


def _default_path() -> str:
    return os.environ.get("PATH") or os.defpath


@attrs.frozen(kw_only=True)
class LocalSettings:
    python: str = sys.executable
    bash: str = "bash"
    node: str = "node"
    warm_python: bool = True
    path: str = attrs.field(factory=_default_path)
    work_root: str = attrs.field(factory=tempfile.gettempdir)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalSettings:
        kinds: dict[str, type] = {
            "python": str,
            "bash": str,
            "node": str,
            "warm_python": bool,
            "path": str,
            "work_root": str,
        }
        for key, value in config.items():
            if key not in kinds:
                raise ValidationError(f"executors.local.{key}", "is not a setting of it")
            if not isinstance(value, kinds[key]):
                raise ValidationError(f"executors.local.{key}", f"must be a {kinds[key].__name__}")
        return cls(**config)


@attrs.frozen
class _Workspace:
    """The job's directory: its working directory, ``HOME`` and ``TMPDIR`` at once (one
    directory is the cheapest to make and remove), holding the script as a hidden file."""

    root: Path

    @classmethod
    def create(cls, parent: str) -> _Workspace:
        # the worker's pid in the name tells whose it is, see reap_stale_workspaces
        return cls(Path(tempfile.mkdtemp(prefix=f"cronium-job-{os.getpid()}-", dir=parent)))

    def write_script(self, script: Script) -> Path:
        path = self.root / f".cronium-job{_SUFFIXES[script.language]}"
        path.write_bytes(script.code.encode())
        return path

    def remove_if_bare(self, script: Path | None) -> bool:
        """Remove the directory when the job left nothing but its script in it (the usual
        case: two system calls, not worth a thread); False when more work is left."""
        try:
            if script is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(script)
            os.rmdir(self.root)
        except OSError:
            return False
        return True

    def remove(self) -> None:
        try:
            _remove_tree(self.root)
        except OSError as exc:  # the job's outcome matters more than its litter
            log.warning("cannot remove the job directory %s: %s", self.root, exc)


def _remove_tree(root: Path) -> None:
    """Remove a job directory even where the job took its own permissions away."""

    def make_writable_and_retry(function: Callable[[str], object], path: str, _: object) -> None:
        try:
            os.chmod(os.path.dirname(path), stat.S_IRWXU)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)
            function(path)
        except FileNotFoundError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(root, onexc=make_writable_and_retry)
    else:
        shutil.rmtree(root, onerror=make_writable_and_retry)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_workspaces(parent: str) -> list[Path]:
    """Remove the job directories of workers that died before they could (``kill -9``, a
    power cut). A directory is stale when the worker process named in it no longer runs."""
    removed = []
    uid = os.getuid()
    with os.scandir(parent) as entries:
        for entry in entries:
            match = _WORKSPACE_NAME.fullmatch(entry.name)
            if match is None or _pid_alive(int(match[1])):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != uid:
                    continue
                _remove_tree(Path(entry.path))
            except OSError as exc:
                log.warning("cannot remove the stale job directory %s: %s", entry.path, exc)
            else:
                removed.append(Path(entry.path))
    return removed


def _prepend(env: dict[str, str], name: str, paths: Sequence[Path]) -> None:
    parts = [str(p) for p in paths]
    if env.get(name):
        parts.append(env[name])
    if parts:
        env[name] = os.pathsep.join(parts)


class LocalExecutor(Executor):
    """Runs :class:`~cronium_core.events.Script` actions as local processes."""

    name = "local"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.settings = LocalSettings.from_config(config or {})
        self.sdk: SdkPaths = sdk_paths()
        self._launcher: Launcher | None = None

    @property
    def zygote_pid(self) -> int | None:
        """The pid of the zygote, which starts the jobs, while one runs."""
        return self._launcher.pid if self._launcher is not None else None

    async def start(self, exit_stack: AsyncExitStack) -> None:
        os.makedirs(self.settings.work_root, mode=0o700, exist_ok=True)
        removed = await anyio.to_thread.run_sync(reap_stale_workspaces, self.settings.work_root)
        if removed:
            log.info("removed %d job directories of workers that died", len(removed))
        root = self.settings.work_root
        launcher = Launcher(python=self.settings.python, env=self.job_env(root, root, {}), cwd=root)
        await launcher.start(exit_stack)
        self._launcher = launcher

    def can_run(self, action: Action) -> bool:
        return isinstance(action, Script)

    def job_env(self, home: str, tmp: str, extra: Mapping[str, str]) -> dict[str, str]:
        env = {
            "PATH": self.settings.path,
            "HOME": home,
            "LANG": "C.UTF-8",
            "TMPDIR": tmp,
            "PYTHONUNBUFFERED": "1",
        }
        env.update(extra)
        _prepend(env, "PYTHONPATH", self.sdk.python)
        _prepend(env, "NODE_PATH", self.sdk.node)
        return env

    def _node_global(self) -> Path | None:
        for root in self.sdk.node:
            candidate = root / "cronium" / "global.js"
            if candidate.is_file():
                return candidate
        return None

    def _link_node_sdk(self, workdir: Path) -> None:
        """ES modules ignore NODE_PATH: ``import 'cronium'`` finds the SDK through a
        ``node_modules`` link next to the script instead."""
        for root in self.sdk.node:
            if (root / "cronium").is_dir():
                (workdir / "node_modules").mkdir()
                (workdir / "node_modules" / "cronium").symlink_to(root / "cronium")
                return

    def _command(self, script: Script, path: Path) -> list[str]:
        if script.language == "python":
            if self.sdk.python:  # `cronium` as a global too (the zygote's fork gives it so)
                return [self.settings.python, "-c", PYTHON_WITH_SDK, str(path)]
            return [self.settings.python, str(path)]
        if script.language == "node":
            sdk_global = self._node_global()
            if sdk_global is not None:  # `cronium` as a global, like in Python scripts
                return [self.settings.node, "--require", str(sdk_global), str(path)]
            return [self.settings.node, str(path)]
        if self.sdk.bash is not None:
            return [self.settings.bash, "-c", _BASH_WITH_SDK, str(path), str(self.sdk.bash)]
        return [self.settings.bash, str(path)]

    async def execute(self, request: ExecutionRequest, emit: LogSink) -> Outcome:
        script = request.action
        if not isinstance(script, Script):
            return Outcome(
                exit_code=None, error=f"the local executor cannot run {script.kind} actions"
            )
        try:
            workspace = _Workspace.create(self.settings.work_root)
        except OSError as exc:
            return await _not_started(emit, f"cannot make the job directory: {exc}")
        path: Path | None = None
        try:
            try:
                path = workspace.write_script(script)
                if script.language == "node":
                    self._link_node_sdk(workspace.root)
            except OSError as exc:
                return await _not_started(emit, f"cannot write the script: {exc}")
            env = self.job_env(str(workspace.root), str(workspace.root), request.env)
            command = self._command(script, path)
            try:
                process = await self._spawn(script, path, command, workspace, env)
            except OSError as exc:
                return await _not_started(emit, f"cannot start {command[0]}: {exc.strerror or exc}")
            return await run_to_end(process, kill_grace=request.kill_grace, emit=emit)
        finally:
            if not workspace.remove_if_bare(path):
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(workspace.remove)

    async def _spawn(
        self,
        script: Script,
        path: Path,
        command: list[str],
        workspace: _Workspace,
        env: dict[str, str],
    ) -> JobProcess:
        launcher = self._launcher
        if launcher is not None:
            cwd = str(workspace.root)
            if script.language == "python" and self.settings.warm_python and launcher.can_fork(env):
                job = await launcher.start_job("fork", [str(path)], cwd, env)
            else:
                job = await launcher.start_job("exec", command, cwd, env)
            if job is not None:
                return job
        # the zygote is down: this job will not die with the worker, see the module docstring
        process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workspace.root,
            env=env,
            start_new_session=True,
        )
        return ColdProcess(process)


async def _not_started(emit: LogSink, error: str) -> Outcome:
    await emit(Stream.SYSTEM, error)
    return Outcome(exit_code=None, error=error)


@hookimpl
def cronium_register_executors(register: ExecutorRegistry) -> None:
    register.add("local", LocalExecutor)
