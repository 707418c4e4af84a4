"""What the container executor asks of an engine (:class:`Backend`), in the engines' common
terms, and the engine-independent pieces: the log frame reader, owner labels, the OCI runtime
policy (see :mod:`cronium_executors.container`)."""

from __future__ import annotations

import ipaddress
import os
import re
import select
import socket
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, Protocol

import attrs

from ._oom import OomProbe

__all__ = [
    "WORK_DIR",
    "Backend",
    "ContainerSpec",
    "ContainerState",
    "EngineError",
    "NetworkSpec",
    "RuntimeVersion",
    "is_local",
    "owner_is_dead",
    "process_owner",
    "read_frames",
    "runtime_problem",
]

#: the work dir (a tmpfs) inside a job container
WORK_DIR = "/work"


class EngineError(Exception):
    """The container engine refused or failed a call."""


#: the oldest runc without CVE-2024-21626 ("Leaky Vessels", a container escape through a leaked
#: working-directory fd)
MIN_RUNC = (1, 1, 12)
#: distribution builds of older runc versions that carry the fix (package version: advisory)
PATCHED_BUILDS = {
    # its changelog: "CVE-2024-21626: several container breakouts due to internally leaked fds"
    "1.1.5+ds1-1+deb12u1": "Debian bookworm-security, 2024-02-02",
}


@attrs.frozen(kw_only=True)
class RuntimeVersion:
    """The engine's OCI runtime: name (``runc``), upstream version, distribution build."""

    name: str
    version: str
    build: str = ""

    def __str__(self) -> str:
        return f"{self.name} {self.version}" + (f" (build {self.build})" if self.build else "")


def runtime_problem(runtime: RuntimeVersion) -> str | None:
    """Why this OCI runtime is unsafe to run untrusted jobs on, or None. Only runc is
    checked; crun and others are reported as they are."""
    if runtime.name != "runc":
        return None
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", runtime.version)
    if match is None:
        return f"cannot tell the version of {runtime}"
    if tuple(int(x) for x in match.groups()) >= MIN_RUNC:
        return None
    if runtime.build in PATCHED_BUILDS:
        return None
    minimum = ".".join(map(str, MIN_RUNC))
    return f"{runtime} is older than {minimum} (CVE-2024-21626) and not a known patched build"


@attrs.frozen(kw_only=True)
class NetworkSpec:
    name: str
    subnet: str
    internal: bool
    labels: Mapping[str, str]


@attrs.frozen(kw_only=True)
class ContainerSpec:
    """A container, in terms both engines understand."""

    name: str
    image: str
    command: Sequence[str]
    env: Mapping[str, str]
    labels: Mapping[str, str]
    user: str
    workdir: str = WORK_DIR
    #: network name, or None for no network at all
    network: str | None = None
    hosts: Mapping[str, str] = attrs.field(factory=dict)
    memory: int = 256 * 1024**2
    nano_cpus: int = 1_000_000_000
    pids: int = 256
    nofile: int = 1024
    nproc: int = 4096
    #: mount point -> size in bytes (mounted rw,noexec,nosuid,nodev)
    tmpfs: Mapping[str, int] = attrs.field(factory=dict)
    #: (host path, container path), mounted read-only
    binds: Sequence[tuple[str, str]] = ()
    read_only: bool = True
    seccomp_profile: str | None = None
    #: hardening off: only for the relay, which needs none of it relaxed anyway
    hardened: bool = True


@attrs.frozen(kw_only=True)
class ContainerState:
    running: bool
    exit_code: int | None
    oom_killed: bool
    error: str = ""


class Backend(Protocol):
    """The engine-specific calls. All blocking; the executor runs them in threads."""

    engine: str
    #: the engine's follow stream may end before everything written was read
    logs_end_early: bool
    #: the engine does not report OOM kills reliably: jobs wait for :meth:`oom_probe`
    oom_probe_needed: bool

    def ping(self) -> None: ...
    def runtime_version(self) -> RuntimeVersion: ...
    def close(self) -> None: ...
    def image_exists(self, image: str) -> bool: ...
    def network_create(self, spec: NetworkSpec) -> None: ...
    def network_gateway(self, name: str) -> str | None: ...
    def network_connect(self, network: str, container: str) -> str: ...
    def network_disconnect(self, network: str, container: str) -> None: ...
    def network_remove(self, name: str) -> None: ...
    def networks(self, label: str) -> list[tuple[str, dict[str, str]]]: ...
    def container_create(self, spec: ContainerSpec) -> str: ...
    def container_start(self, cid: str) -> None: ...
    def container_logs(self, cid: str, follow: bool) -> IO[bytes]: ...
    def container_wait(self, cid: str) -> None: ...
    def container_state(self, cid: str) -> ContainerState: ...
    def container_stop(self, cid: str, timeout: float) -> None: ...
    def container_remove(self, cid: str) -> None: ...
    def container_inspect(self, cid: str) -> dict[str, Any]: ...
    def containers(self, label: str) -> list[tuple[str, dict[str, str]]]: ...
    def oom_probe(self, cid: str) -> OomProbe | None:
        """Called right after start: a watcher of OOM kills, for engines that do not report
        them reliably (None: the engine's ``oom_killed`` is right)."""
        ...

    def log_writer(self, cid: str) -> LogWriter | None:
        """Called right after start, for engines whose follow stream ends early: the process
        writing the container's stored log, when it runs on this host (None otherwise)."""
        ...


class LogWriter:
    """The process that writes a container's stored log (Podman's ``conmon``), seen from
    this host. Once it has exited, the stored log is final: nothing more can be added to it.
    Its command line names the container, which tells a recycled pid apart; it is watched
    through a pidfd where the kernel has them. :meth:`close` when done with it."""

    def __init__(self, pid: int, cid: str, pidfd: int | None = None) -> None:
        self.pid = pid
        self._mark = cid.encode()
        self._pidfd = pidfd

    @classmethod
    def find(cls, pid: int, cid: str) -> LogWriter | None:
        """The writer if ``pid`` is a live process on this host that names ``cid``."""
        if pid <= 0:
            return None
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except (OSError, AttributeError):
            pidfd = None
        # checked after the pidfd was opened: the pidfd is of the process that was checked
        writer = cls(pid, cid, pidfd)
        if writer.running():
            return writer
        writer.close()
        return None

    def running(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as cmdline:
                return self._mark in cmdline.read()
        except OSError:
            return False

    def wait(self, timeout: float) -> bool:
        """Block until the writer has exited (True), or ``timeout`` seconds (False)."""
        if self._pidfd is not None:
            ready, _, _ = select.select([self._pidfd], [], [], timeout)
            return bool(ready) or not self.running()
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            os.close(pidfd)


def read_frames(raw: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """The engines' multiplexed log stream: 8-byte headers (stream, 0, 0, 0, big-endian
    length) each followed by that many bytes. Yields ``(1 | 2, data)``."""
    while True:
        header = _read_exactly(raw, 8)
        if len(header) < 8:
            return
        stream, length = struct.unpack(">BxxxL", header)
        data = _read_exactly(raw, length)
        if data:
            yield stream, data
        if len(data) < length:
            return


def _read_exactly(raw: IO[bytes], size: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        chunk = raw.read(size)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def process_owner(pid: int | None = None) -> str:
    """``host:pid:start`` naming a process on this host for as long as it lives (the start
    time tells a recycled pid apart)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return "?"


def is_local(host: str) -> bool:
    """Whether a URL's host is this machine's loopback or wildcard address (no DNS)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def owner_is_dead(owner: str) -> bool:
    """Whether the process an owner label names is gone. Owners on other hosts are alive
    as far as this host can tell."""
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or start == "?":
        return False
    return _start_time(int(pid_text)) != start
