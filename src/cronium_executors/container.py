"""The container code path shared by the ``docker`` and ``podman`` executors.

One container per job, hardened by default (every setting below is checked by the X1 audit in
``tests/test_container_security.py``):

- the image's non-root user (``user``, default ``1000:1000``), all capabilities dropped,
  ``no-new-privileges``, the engine's default seccomp profile (or ``seccomp_profile``);
- a read-only root file system; ``/tmp`` and the work dir ``/work`` are size-capped
  ``noexec,nosuid,nodev`` tmpfs mounts; the script is the only host path, mounted read-only
  at ``/cronium/job``;
- memory (no swap), CPU and PID limits, an open-files limit; no devices, no engine socket;
- its own *job network*: internal (no route out of the machine) and with no address of the
  host on it, so the job cannot reach the host's services, the database, or another job's
  network. The only other member is the *relay* (:mod:`cronium_executors._relay`), which
  forwards to the runtime API and nothing else; the job reaches it as ``http://runtime:8080``
  (an ``/etc/hosts`` entry, so no DNS is needed). ``network: "none"`` gives the job no network
  at all (and so no runtime API); ``network: "egress"`` gives it a network with a route out.

Job networks are made ahead of time (a small pool, each with the relay already connected) and
used once; after the job they are removed in the background. Every container and network
carries ``io.cronium.*`` labels naming the worker process that owns it; at start and then
periodically the executor removes what a dead worker on this host left behind (the jobs
themselves are re-run by the queue when their lease expires).

Engine calls are blocking (the docker SDK and podman-py both sit on ``requests``): they run in
worker threads, never on the event loop. The engine-specific part is a :class:`Backend`
(:mod:`._container_engine`, with the engine-neutral specs); settings and per-event options are
checked in :mod:`._container_config`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import itertools
import logging
import os
import random
import re
import secrets
import shutil
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import attrs
from anyio.abc import TaskGroup

from cronium_core.errors import ValidationError
from cronium_core.events import Action, Script
from cronium_core.executors import ExecutionRequest, Executor, LogSink, Outcome
from cronium_core.jobs import Stream

from ._container_config import LANGUAGES, ContainerSettings, JobOptions, parse_size
from ._container_engine import (
    WORK_DIR,
    Backend,
    ContainerSpec,
    ContainerState,
    EngineError,
    LogWriter,
    NetworkSpec,
    RuntimeVersion,
    is_local,
    owner_is_dead,
    process_owner,
    read_frames,
    runtime_problem,
)
from ._lines import LineSplitter
from ._oom import OomProbe
from ._process import signal_name
from ._sdk import PYTHON_WITH_SDK

__all__ = [
    "Backend",
    "ContainerExecutor",
    "ContainerSettings",
    "ContainerSpec",
    "ContainerState",
    "EngineError",
    "JobOptions",
    "NetworkSpec",
    "RuntimeVersion",
    "owner_is_dead",
    "parse_size",
    "process_owner",
    "read_frames",
    "runtime_problem",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

LABEL = "io.cronium"
KIND = f"{LABEL}.kind"
OWNER = f"{LABEL}.owner"
EXECUTION = f"{LABEL}.execution-id"
ATTEMPT = f"{LABEL}.attempt"

#: where the script is mounted (read-only) and the work dir (tmpfs) inside a job container
SCRIPT_DIR = "/cronium/job"
RELAY_PORT = 8080
RUNTIME_URL = f"http://runtime:{RELAY_PORT}"

_GATE = "start-gate"
_SCRIPT_DIR_NAME = re.compile(r"cronium-ctr-(\d+)-(\d+)-\w+")
_BASH_SDK = "/usr/local/lib/cronium/cronium.sh"
_NODE_GLOBAL = "/node_modules/cronium/global.js"
#: the runtime's minimal environment; the request's env comes on top
_BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORK_DIR,
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
}


@attrs.define
class _JobNetwork:
    name: str
    subnet: str
    relay_ip: str | None


class ContainerExecutor(Executor):
    """Runs scripts in per-job containers. Subclasses supply :meth:`make_backend`."""

    engine = "container"
    #: needs a container engine: started only when named (``Cronium(executors=[...])``)
    enabled_by_default = False

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.name = self.engine
        self.settings = ContainerSettings.from_config(config, engine=self.engine)
        self.owner = process_owner()
        self._prefix = f"cronium-{secrets.token_hex(3)}"
        self._backend: Backend | None = None
        # blocking calls that may last as long as a job (logs, wait) get threads of their own
        self._long_calls = anyio.CapacityLimiter(1024)
        self._calls = anyio.CapacityLimiter(32)
        self._tg: TaskGroup | None = None
        self._gateway: str | None = None
        self._relay: str | None = None
        self._relay_target: tuple[str, int] | None = None
        self._relay_lock = anyio.Lock()
        self._pool: list[_JobNetwork] = []
        self._pool_wanted = anyio.Event()
        self._subnets_used: set[str] = set()
        self._cleanups = 0
        self._pool_stopped: anyio.Event | None = None
        self._cleanups_done = anyio.Condition()
        self._seccomp: str | None = None

    # -- engine -----------------------------------------------------------------------------

    def make_backend(self) -> Backend:
        raise NotImplementedError

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError(f"the {self.engine} executor is not started")
        return self._backend

    async def _call(self, fn: Callable[..., T], *args: Any, long: bool = False) -> T:
        """``fn(*args)`` in a worker thread. A ``long`` call (one that lasts as long as the
        job, like waiting for its end) is abandoned on cancellation: stopping the container,
        which the canceller does next, ends it."""
        limiter = self._long_calls if long else self._calls
        return await anyio.to_thread.run_sync(
            lambda: fn(*args), limiter=limiter, abandon_on_cancel=long
        )

    async def start(self, exit_stack: AsyncExitStack) -> None:
        self._backend = await anyio.to_thread.run_sync(self.make_backend)
        exit_stack.callback(self._backend.close)
        await self._call(self.backend.ping)
        runtime = await self._call(self.backend.runtime_version)
        log.info("%s executor: OCI runtime %s", self.engine, runtime)
        problem = runtime_problem(runtime)
        if problem and not self.settings.allow_unpatched_runtime:
            raise EngineError(f"{problem} (setting allow_unpatched_runtime accepts the risk)")
        if problem:
            log.warning(
                "%s executor: %s (allowed by allow_unpatched_runtime)", self.engine, problem
            )
        if self.settings.seccomp_profile:
            # the path, as the engine sees it (docker's API wants the profile itself: the
            # docker backend reads it)
            profile = anyio.Path(self.settings.seccomp_profile)
            if not await profile.is_file():
                raise EngineError(f"seccomp profile {profile} is not a file")
            self._seccomp = str(profile)
        else:
            self._seccomp = await self.default_seccomp_profile(exit_stack)
        await self.reap()
        self._gateway = await self._ensure_control_network()
        self._tg = await exit_stack.enter_async_context(anyio.create_task_group())
        exit_stack.push_async_callback(self._shutdown)
        self._tg.start_soon(self._reap_periodically)

    async def default_seccomp_profile(self, exit_stack: AsyncExitStack) -> str | None:
        """The profile jobs get when ``seccomp_profile`` is not set: None means the engine's
        default (right for Docker, whose default refuses new namespaces)."""
        return None

    def runtime_hosts(self) -> Sequence[str]:
        return [self._gateway] if self._gateway else []

    async def runtime_started(self, url: str) -> None:
        """The runtime API listens at ``url`` (and on :meth:`runtime_hosts`): start the relay
        towards it and fill the network pool."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.port is None or parsed.hostname is None or self._gateway is None:
            return
        host = parsed.hostname
        if is_local(host):
            # served by this worker: on loopback and, same port, on the control bridge
            host = self._gateway
        # else a runtime service elsewhere (``cronium runtime``): the relay goes there
        self._relay_target = (host, parsed.port)
        assert self._tg is not None
        self._pool_stopped = anyio.Event()
        self._tg.start_soon(self._keep_pool)

    async def _shutdown(self) -> None:
        with anyio.CancelScope(shield=True):
            assert self._tg is not None
            self._tg.cancel_scope.cancel()
            with anyio.move_on_after(30):
                if self._pool_stopped is not None:
                    await self._pool_stopped.wait()  # it may be making a network or the relay
                async with self._cleanups_done:
                    while self._cleanups:
                        await self._cleanups_done.wait()
            pool, self._pool = self._pool, []
            for network in pool:
                await self._drop_network(network)
            if self._relay is not None:
                with contextlib.suppress(EngineError):
                    await self._call(self.backend.container_remove, self._relay)
                self._relay = None

    async def _ensure_control_network(self) -> str:
        name = self.settings.control_network
        gateway = await self._call(self.backend.network_gateway, name)
        if gateway is None:
            with contextlib.suppress(EngineError):  # another worker may be making it too
                await self._call(
                    self.backend.network_create,
                    NetworkSpec(name=name, subnet="", internal=False, labels={KIND: "control"}),
                )
            gateway = await self._call(self.backend.network_gateway, name)
        if gateway is None:
            raise EngineError(f"the {self.engine} network {name!r} has no gateway address")
        return gateway

    # -- reaping ----------------------------------------------------------------------------

    async def reap(self) -> tuple[int, int]:
        """Remove the containers and networks of dead workers on this host; returns how many
        of each were removed."""
        containers = 0
        for cid, labels in await self._call(self.backend.containers, KIND):
            if labels.get(KIND) in ("job", "relay") and owner_is_dead(labels.get(OWNER, "")):
                log.warning("removing container %s left by %s", cid[:12], labels.get(OWNER))
                with contextlib.suppress(EngineError):
                    await self._call(self.backend.container_remove, cid)
                    containers += 1
        networks = 0
        for name, labels in await self._call(self.backend.networks, KIND):
            if labels.get(KIND) == "job" and owner_is_dead(labels.get(OWNER, "")):
                log.warning("removing network %s left by %s", name, labels.get(OWNER))
                with contextlib.suppress(EngineError):
                    await self._call(self.backend.network_remove, name)
                    networks += 1
        await anyio.to_thread.run_sync(self._reap_script_dirs)
        return containers, networks

    def _reap_script_dirs(self) -> None:
        host = socket.gethostname()
        try:
            entries = os.scandir(self.settings.script_root)
        except OSError:
            return
        with entries:
            for entry in entries:
                match = _SCRIPT_DIR_NAME.fullmatch(entry.name)
                if match and owner_is_dead(f"{host}:{match[1]}:{match[2]}"):
                    shutil.rmtree(entry.path, ignore_errors=True)

    async def _reap_periodically(self) -> None:
        while True:
            await anyio.sleep(self.settings.reap_interval)
            try:
                await self.reap()
            except EngineError as exc:
                log.warning("%s reaper: %s", self.engine, exc)

    # -- networks ---------------------------------------------------------------------------

    async def _ensure_relay(self) -> str:
        async with self._relay_lock:
            if self._relay is not None:
                return self._relay
            if self._relay_target is None:
                raise EngineError("the runtime API is not served to container jobs")
            host, port = self._relay_target
            spec = ContainerSpec(
                name=f"{self._prefix}-relay",
                image=self.settings.relay_image,
                command=["python3", "/usr/local/bin/cronium-relay", "--target", f"{host}:{port}"],
                env={},
                labels={KIND: "relay", OWNER: self.owner},
                user=self.settings.user,
                network=self.settings.control_network,
                memory=128 * 1024**2,
                nano_cpus=1_000_000_000,
                pids=64,
                tmpfs={"/tmp": 1024**2},
                seccomp_profile=self._seccomp,
            )
            # shielded: a container made in a thread must be known, or shutdown cannot
            # remove it
            with anyio.CancelScope(shield=True):
                cid = await self._call(self.backend.container_create, spec)
                try:
                    await self._call(self.backend.container_start, cid)
                except EngineError:
                    with contextlib.suppress(EngineError):
                        await self._call(self.backend.container_remove, cid)
                    raise
                self._relay = cid
            return cid

    def _pick_subnet(self) -> str:
        pool = ipaddress.ip_network(self.settings.subnet_pool)
        count = 2 ** (28 - pool.prefixlen)
        for _ in range(64):
            index = random.randrange(count)
            subnet = str(ipaddress.ip_network((int(pool.network_address) + 16 * index, 28)))
            if subnet not in self._subnets_used:
                return subnet
        raise EngineError(f"no free /28 left in {self.settings.subnet_pool}")

    async def _make_network(self, *, internal: bool, execution: str = "") -> _JobNetwork:
        labels = {KIND: "job", OWNER: self.owner}
        if execution:
            labels[EXECUTION] = execution
        last: EngineError | None = None
        for _ in range(8):
            subnet = self._pick_subnet()
            name = f"{self._prefix}-net-{secrets.token_hex(4)}"
            self._subnets_used.add(subnet)
            try:
                with anyio.CancelScope(shield=True):  # made in a thread: must not be lost
                    await self._call(
                        self.backend.network_create,
                        NetworkSpec(name=name, subnet=subnet, internal=internal, labels=labels),
                    )
            except EngineError as exc:  # most likely a subnet another process took
                self._subnets_used.discard(subnet)
                last = exc
                continue
            network = _JobNetwork(name=name, subnet=subnet, relay_ip=None)
            try:
                if self._relay_target is not None:
                    relay = await self._ensure_relay()
                    network.relay_ip = await self._call(self.backend.network_connect, name, relay)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._drop_network(network)
                raise
            return network
        raise EngineError(f"cannot make a job network: {last}")

    async def _drop_network(self, network: _JobNetwork) -> None:
        try:
            if network.relay_ip is not None and self._relay is not None:
                with contextlib.suppress(EngineError):
                    await self._call(self.backend.network_disconnect, network.name, self._relay)
            await self._call(self.backend.network_remove, network.name)
        except EngineError as exc:
            log.warning("cannot remove network %s (the reaper will): %s", network.name, exc)
        finally:
            self._subnets_used.discard(network.subnet)

    async def _keep_pool(self) -> None:
        stopped = self._pool_stopped
        try:
            await self._fill_pool()
        finally:
            if stopped is not None:
                stopped.set()

    async def _fill_pool(self) -> None:
        while True:
            while len(self._pool) < self.settings.network_pool:
                try:
                    self._pool.append(await self._make_network(internal=True))
                except EngineError as exc:
                    log.warning("%s: cannot prepare a job network: %s", self.engine, exc)
                    await anyio.sleep(5)
            self._pool_wanted = anyio.Event()
            await self._pool_wanted.wait()

    async def _take_network(
        self, options: JobOptions, request: ExecutionRequest
    ) -> _JobNetwork | None:
        if options.network == "none":
            return None
        if options.network == "isolated" and self._pool:
            network = self._pool.pop()
            self._pool_wanted.set()
            return network
        return await self._make_network(
            internal=options.network != "egress", execution=request.job_id
        )

    def _later(self, cleanup: Callable[[], Any]) -> None:
        """Run ``cleanup`` (a coroutine function) in the background; shutdown waits for it."""
        assert self._tg is not None
        self._cleanups += 1

        async def run() -> None:
            # shielded whole: the count must come down even when shutdown cancels the group
            with anyio.CancelScope(shield=True):
                try:
                    await cleanup()
                finally:
                    async with self._cleanups_done:
                        self._cleanups -= 1
                        self._cleanups_done.notify_all()

        self._tg.start_soon(run)

    # -- jobs -------------------------------------------------------------------------------

    def can_run(self, action: Action) -> bool:
        return isinstance(action, Script)

    def _command(self, script: Script) -> list[str]:
        path = f"{SCRIPT_DIR}/script{LANGUAGES[script.language]}"
        if script.language == "python":
            return ["python3", "-c", PYTHON_WITH_SDK, path]  # the SDK a global, as run locally
        if script.language == "node":
            return ["node", "--require", _NODE_GLOBAL, path]
        return ["bash", "-c", f'. {_BASH_SDK} || exit 1; . "$0"', path]

    def _gated(self, command: list[str]) -> list[str]:
        """With an OOM probe, the job waits at a gate (a FIFO in its script directory) until
        the probe watches its cgroup, so that no OOM kill comes before it."""
        if not self.backend.oom_probe_needed:
            return command
        gate = f'read _ < {SCRIPT_DIR}/{_GATE} && unset PWD && exec "$@"'
        return ["sh", "-c", gate, "cronium-gate", *command]

    async def _open_gate(self, script_dir: str, cid: str) -> None:
        gate = os.path.join(script_dir, _GATE)
        with anyio.fail_after(30):
            for attempt in itertools.count(1):
                try:
                    fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:  # ENXIO: the job has not opened it yet
                        raise EngineError(f"cannot open the start gate: {exc}") from None
                    # now and then: has it ended before reading it (its error is in its log)?
                    if attempt % 100 == 0 and not (await self._state(cid)).running:
                        return
                    await anyio.sleep(0.001)
                    continue
                try:
                    os.write(fd, b"go\n")
                finally:
                    os.close(fd)
                return

    async def _state(self, cid: str) -> ContainerState:
        return await self._call(self.backend.container_state, cid)

    def container_spec(
        self,
        request: ExecutionRequest,
        options: JobOptions,
        script_dir: str,
        network: _JobNetwork | None,
    ) -> ContainerSpec:
        script = request.action
        assert isinstance(script, Script)
        env = {**_BASE_ENV, **request.env}
        hosts: dict[str, str] = {}
        if network is not None and network.relay_ip is not None:
            env["CRONIUM_RUNTIME_API"] = RUNTIME_URL
            hosts["runtime"] = network.relay_ip
        else:
            env.pop("CRONIUM_RUNTIME_API", None)
        return ContainerSpec(
            name=f"{self._prefix}-job-{secrets.token_hex(4)}",
            image=options.image or self.settings.images[script.language],
            command=self._gated(self._command(script)),
            env=env,
            labels={
                KIND: "job",
                OWNER: self.owner,
                EXECUTION: request.job_id,
                ATTEMPT: str(request.attempt),
            },
            user=self.settings.user,
            network=network.name if network is not None else None,
            hosts=hosts,
            memory=options.memory,
            nano_cpus=int(options.cpus * 1e9),
            pids=options.pids,
            nofile=self.settings.nofile,
            nproc=self.settings.nproc,
            tmpfs={"/tmp": options.tmp_size, WORK_DIR: self.settings.work_size},
            binds=[(script_dir, SCRIPT_DIR)],
            seccomp_profile=self._seccomp,
        )

    def _write_script(self, script: Script) -> str:
        # the name carries the owner (pid and start time), for the reaper
        _, pid, start = self.owner.split(":")
        prefix = f"cronium-ctr-{pid}-{start}-"
        directory = tempfile.mkdtemp(prefix=prefix, dir=self.settings.script_root)
        os.chmod(directory, 0o711)  # the container's user may read the script, not list others
        path = Path(directory, f"script{LANGUAGES[script.language]}")
        path.write_text(script.code, encoding="utf-8")
        path.chmod(0o644)
        if self.backend.oom_probe_needed:
            os.mkfifo(os.path.join(directory, _GATE), 0o644)
        return directory

    async def execute(self, request: ExecutionRequest, emit: LogSink) -> Outcome:
        script = request.action
        if not isinstance(script, Script):
            return Outcome(exit_code=None, error=f"the {self.engine} executor runs scripts only")
        try:
            options = JobOptions.parse(request.options, self.settings.limits)
        except ValidationError as exc:
            await emit(Stream.SYSTEM, str(exc))
            return Outcome(exit_code=None, error=str(exc))
        script_dir = await anyio.to_thread.run_sync(self._write_script, script)
        network: _JobNetwork | None = None
        cid: str | None = None
        try:
            try:
                network = await self._take_network(options, request)
                spec = self.container_spec(request, options, script_dir, network)
                cid = await self._call(self.backend.container_create, spec)
            except EngineError as exc:
                error = f"cannot create the container: {exc}"
                await emit(Stream.SYSTEM, error)
                return Outcome(exit_code=None, error=error)
            return await self._run(cid, request, emit, script_dir)
        finally:
            self._later(lambda: self._cleanup(cid, network, script_dir, request.kill_grace))

    async def _run(
        self, cid: str, request: ExecutionRequest, emit: LogSink, script_dir: str
    ) -> Outcome:
        # digests of what was followed: only an engine whose follow ends early needs them
        output = _Output(emit, self.settings.max_log_bytes, digests=self.backend.logs_end_early)
        follow = _Follow(partial(self.backend.container_logs, cid, True))
        oom: OomProbe | None = None
        writer: LogWriter | None = None
        gated = self.backend.oom_probe_needed
        try:
            async with anyio.create_task_group() as tg:
                try:
                    await self._call(self.backend.container_start, cid)
                    oom = await self._call(self.backend.oom_probe, cid)
                    if self.backend.logs_end_early:
                        writer = await self._call(self.backend.log_writer, cid)
                except EngineError as exc:
                    tg.cancel_scope.cancel()
                    error = f"cannot start the container: {exc}"
                    await emit(Stream.SYSTEM, error)
                    return Outcome(exit_code=None, error=error)
                if oom is not None:
                    tg.start_soon(oom.watch)
                # the engine keeps what the job writes: following from the start loses
                # nothing. (Podman answers a follow request only once there is output.)
                async with anyio.create_task_group() as following:
                    following.start_soon(self._pump, follow.open, output)
                    if gated:
                        await anyio.lowlevel.checkpoint()  # the OOM watch is on
                        await self._open_gate(script_dir, cid)
                    if not self.backend.logs_end_early:
                        await self._call(self.backend.container_wait, cid, long=True)
                    else:
                        # podman's follow stream lingers ~0.5 s after the job ends, or
                        # stops before the reader caught up: follow until the job ends, then
                        # read what is left from the stored log
                        await self._call(self.backend.container_wait, cid, long=True)
                        following.cancel_scope.cancel()
                follow.close()
                if self.backend.logs_end_early and not output.full:
                    await self._read_rest(cid, output, writer)
                if follow.error and not any(output.received.values()):
                    await emit(Stream.SYSTEM, f"cannot read the job's output: {follow.error}")
                await output.finish()
                tg.cancel_scope.cancel()
        except BaseException:
            # cancelled (timeout, cancel, worker stop): SIGTERM, then SIGKILL after the grace
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(EngineError):
                    await self._call(self.backend.container_stop, cid, request.kill_grace)
            raise
        finally:
            follow.close()
            if oom is not None:
                oom.close()
            if writer is not None:
                writer.close()
        state = await self._call(self.backend.container_state, cid)
        if oom is not None and oom.oom_killed(state.exit_code) and not state.oom_killed:
            state = attrs.evolve(state, oom_killed=True)
        return _outcome(state)

    async def _read_rest(self, cid: str, output: _Output, writer: LogWriter | None) -> None:
        """After the job ended (Podman): what the engine's stored log holds beyond the bytes
        the follow stream gave, fed to ``output`` in the stored order.

        The stored log is final once its writer has exited: when the writer (conmon) runs on
        this host, that is waited for. A read only counts the log (digests and lengths); the
        log is fed by a read after one that counted it the same — after one, once the writer
        has exited; after two that agree, when it could not be watched — and that read must
        count it the same again. The digest of the bytes the output already had must match
        the stored log's beginning. A read that breaks off starts this over from where the
        output got to."""
        settled = writer is not None and await self._writer_done(writer)
        counted: _StoredRead | None = None
        ready = False
        error: Exception | None = None
        for attempt in range(REST_READS):
            had = {n: output.digest(n) for n in output.received}
            try:
                found = await anyio.to_thread.run_sync(
                    partial(self._stored_read, cid, dict(output.received), output, ready),
                    limiter=self._long_calls,
                )
            except Exception as exc:  # the engine refused, or the stream broke off
                error, counted, ready = exc, None, False
            else:
                if ready:
                    await self._check_read(cid, output, had, found, counted)
                    return
                ready = settled or found == counted
                counted = found
                if ready:
                    continue
            await anyio.sleep(min(0.02 * 2**attempt, 0.5))
        problem = "kept changing" if error is None else f"could not be read: {error}"
        log.warning("%s: the stored log %s after the job ended", cid[:12], problem)
        await output.note(f"the end of the job's output may be missing: its log {problem}")

    async def _check_read(
        self,
        cid: str,
        output: _Output,
        had: Mapping[int, bytes],
        found: _StoredRead,
        counted: _StoredRead | None,
    ) -> None:
        """Whether the read that fed the output agreed with what came before it."""
        differs = sorted(n for n, digest in found.prefix.items() if digest != had.get(n))
        if differs:
            log.warning(
                "%s: the stored log does not begin with the output followed live (streams %s; "
                "stored lengths %s); its end was added as stored",
                cid[:12], differs, found.lengths,
            )  # fmt: skip
            await output.note("the engine's stored log differs from the output followed live")
        elif found.whole and found != counted:
            log.warning("%s: the stored log changed while it was read (%s, then %s)",
                        cid[:12], counted, found)  # fmt: skip
            await output.note("the engine's stored log changed while it was read")

    async def _writer_done(self, writer: LogWriter) -> bool:
        """Wait (a few seconds at most) for the stored log's writer to exit."""
        if await anyio.to_thread.run_sync(writer.wait, WRITER_EXIT_WAIT):
            return True
        log.warning("conmon (pid %d) still runs %g s after its job ended", writer.pid,
                    WRITER_EXIT_WAIT)  # fmt: skip
        return False

    def _stored_read(
        self, cid: str, seen: Mapping[int, int], output: _Output, feed: bool
    ) -> _StoredRead:
        """One whole read of the stored log, in a thread: the digest of each stream's first
        ``seen`` bytes, each stream's length and a digest of the frames beyond; with ``feed``,
        those frames also go to ``output`` (on the loop) until it is full."""
        digests = {1: _digest(), 2: _digest()}
        beyond = _digest()
        lengths = {1: 0, 2: 0}
        whole = True
        logs = self.backend.container_logs(cid, False)
        try:
            for number, data in read_frames(logs):
                stream = number if number in lengths else 1
                start = lengths[stream]
                lengths[stream] += len(data)
                head = min(len(data), max(0, seen.get(stream, 0) - start))
                if head:
                    digests[stream].update(data[:head])
                tail = data[head:]
                if not tail:
                    continue
                beyond.update(b"%d:%d:" % (stream, len(tail)) + tail)
                if feed:
                    if output.full:
                        whole = False  # no more is kept: no need to read on
                        break
                    anyio.from_thread.run(output.feed, number, tail)
        finally:
            logs.close()
        return _StoredRead(
            prefix={n: d.digest() for n, d in digests.items()},
            lengths=lengths,
            beyond=beyond.digest(),
            whole=whole,
        )

    async def _pump(self, source: Callable[[], IO[bytes] | None], output: _Output) -> None:
        """Open a log stream and read it in a thread, handing its frames, in order, to
        ``output`` on the loop. Returns when the stream ends."""
        send, receive = anyio.create_memory_object_stream[tuple[int, bytes]](64)

        def read() -> None:
            try:
                logs = source()
                if logs is not None:
                    for frame in read_frames(logs):
                        anyio.from_thread.run(send.send, frame)
            except Exception:  # the stream ends when the job is cancelled: nothing to add
                pass
            finally:
                with contextlib.suppress(Exception):
                    anyio.from_thread.run_sync(send.close)

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                partial(
                    anyio.to_thread.run_sync, read, limiter=self._long_calls, abandon_on_cancel=True
                )
            )
            async with receive:
                async for number, data in receive:
                    # whole frames or none: a cancelled follow is resumed by byte count
                    with anyio.CancelScope(shield=True):
                        await output.feed(number, data)

    async def _cleanup(
        self, cid: str | None, network: _JobNetwork | None, script_dir: str, grace: float
    ) -> None:
        if cid is not None:
            try:
                await self._call(self.backend.container_remove, cid)
            except EngineError as exc:
                log.warning("cannot remove container %s (the reaper will): %s", cid[:12], exc)
        if network is not None:
            await self._drop_network(network)
        await anyio.to_thread.run_sync(shutil.rmtree, script_dir, True)


#: whole reads of Podman's stored log after a job ended, at most (see ``_read_rest``)
REST_READS = 10
#: seconds to wait for Podman's log writer (conmon) to exit after its job ended
WRITER_EXIT_WAIT = 5.0


def _digest() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


@attrs.frozen
class _StoredRead:
    """What one read of the stored log found."""

    #: per stream: the digest of its first bytes, as many as the output had
    prefix: dict[int, bytes]
    #: per stream: its length in the stored log
    lengths: dict[int, int]
    #: the digest of the frames past those bytes, in the stored order
    beyond: bytes
    #: read to its end (not stopped early because the output was full)
    whole: bool = True


class _Follow:
    """A log stream opened in a worker thread and closed from the loop, whichever comes
    first (a stream that arrives after :meth:`close` is closed at once)."""

    def __init__(self, opener: Callable[[], IO[bytes]]) -> None:
        self._opener = opener
        self._stream: IO[bytes] | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.error: Exception | None = None

    def open(self) -> IO[bytes] | None:
        try:
            stream = self._opener()
        except EngineError as exc:
            self.error = exc
            return None
        with self._lock:
            if not self._closed:
                self._stream = stream
                return stream
        stream.close()
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


class _Output:
    """A job's two output streams turned into log lines, up to a byte budget."""

    _STREAMS = {1: Stream.STDOUT, 2: Stream.STDERR}

    def __init__(self, emit: LogSink, budget: int, *, digests: bool = False) -> None:
        self._emit = emit
        self._budget = budget
        self._limit = budget
        self._splitters = {1: LineSplitter(), 2: LineSplitter()}
        #: bytes received per stream (1 stdout, 2 stderr)
        self.received = {1: 0, 2: 0}
        #: with ``digests``: the digest of each stream's bytes, kept until the output is full
        #: (a full output is not checked against the stored log: nothing more is kept)
        self._digests = {1: _digest(), 2: _digest()} if digests else None
        self.dropped = 0

    @property
    def full(self) -> bool:
        return self._budget <= 0

    def digest(self, number: int) -> bytes:
        if self._digests is None:
            raise RuntimeError("an output made without digests")
        return self._digests[number].digest()

    async def feed(self, number: int, data: bytes) -> None:
        number = number if number in self._splitters else 1
        self.received[number] += len(data)
        if self._digests is not None and not self.full:
            self._digests[number].update(data)
        for line in self._splitters[number].feed(data):
            await self._line(number, line)

    async def note(self, text: str) -> None:
        """A line of the executor's own about the output."""
        await self._emit(Stream.SYSTEM, text)

    async def finish(self) -> None:
        for number, splitter in self._splitters.items():
            for line in splitter.finish():
                await self._line(number, line)
        if self.dropped:
            log.info("dropped %d bytes of output over the cap", self.dropped)

    async def _line(self, number: int, line: str) -> None:
        if self._budget <= 0:
            self.dropped += len(line) + 1
            return
        self._budget -= len(line.encode()) + 1
        await self._emit(self._STREAMS[number], line)
        if self._budget <= 0:
            await self._emit(
                Stream.SYSTEM, f"output truncated: the job wrote more than {self._limit} bytes"
            )


def _outcome(state: ContainerState) -> Outcome:
    if state.oom_killed:
        return Outcome(exit_code=state.exit_code or 137, error="out of memory")
    if state.exit_code is None:
        return Outcome(
            exit_code=None, error=state.error or "the container ended without an exit code"
        )
    if state.exit_code > 128:
        return Outcome(
            exit_code=state.exit_code,
            error=f"killed by signal {signal_name(state.exit_code - 128)}",
        )
    return Outcome(exit_code=state.exit_code)
