"""Telling an out-of-memory kill from the cgroup itself, for engines that do not report it.

Podman 4.3 on cgroup v1 never sets ``State.OOMKilled`` (conmon's OOM marker goes astray), and
the container's memory cgroup is gone by the time the engine says the container exited. So
while a job runs, the executor listens on the cgroup v1 OOM notification (an eventfd
registered in ``cgroup.event_control`` against ``memory.oom_control``) and, when it fires,
watches the cgroup's ``oom_kill`` counter for a moment (the kernel notifies just before it
kills), while the cgroup still exists. The notification also fires when the cgroup is removed;
the counter (or its absence) tells the two apart. Only possible where the worker sees the
engine's cgroups (same host, root). The job waits at a start gate until the watch is set up
(see ``ContainerExecutor._gated``), so even an immediate OOM kill is seen.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import anyio

__all__ = ["OomProbe", "cgroup_v1_memory_dir"]

CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")


def cgroup_v1_memory_dir(cgroup_path: str) -> Path | None:
    """The host directory of a container's v1 memory cgroup, if this host has it."""
    directory = CGROUP_V1_MEMORY / cgroup_path.lstrip("/")
    return directory if (directory / "memory.oom_control").is_file() else None


def _oom_kills(directory: Path) -> int | None:
    try:
        text = (directory / "memory.oom_control").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


class OomProbe:
    """Watches one v1 memory cgroup; ``killed`` turns true on an OOM kill inside it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: the cgroup's OOM kill counter went up
        self.killed = False
        #: an OOM notification came while the cgroup was there: the kernel was about to pick
        #: a task in it and kill it
        self.condition = False
        self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._control = -1
        try:
            self._control = os.open(directory / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            with open(directory / "cgroup.event_control", "w") as register:
                register.write(f"{self._efd} {self._control}")
        except OSError:
            self.close()
            raise
        self._check()  # an OOM kill that came before the registration

    def _check(self) -> None:
        kills = _oom_kills(self.directory)
        if kills:
            self.killed = True

    async def watch(self) -> None:
        """Run until cancelled, noting OOM kills as they are notified."""
        while self._efd >= 0:
            await anyio.wait_readable(self._efd)
            try:
                os.eventfd_read(self._efd)
            except BlockingIOError:
                continue
            except OSError:
                return
            kills = _oom_kills(self.directory)
            if kills is None:
                continue  # the cgroup is gone: the notification of its removal
            self.condition = True
            # the kernel notifies before it picks and kills a task: give the counter a moment,
            # and do not let the job's end (that very kill) cut the moment short
            with anyio.CancelScope(shield=True):
                for _ in range(150):
                    if kills is None or kills > 0:
                        self.killed = self.killed or bool(kills)
                        break
                    await anyio.sleep(0.002)
                    kills = _oom_kills(self.directory)

    def oom_killed(self, exit_code: int | None) -> bool:
        """Whether the job died for memory: the kill counter says so, or an OOM notification
        came while the cgroup was there and the job then died of SIGKILL (exit code 137) —
        the container's end can remove the cgroup before its counter is read again."""
        return self.killed or (self.condition and exit_code == 137)

    def close(self) -> None:
        """Stop watching; a notification still pending is looked at first."""
        if self._efd >= 0:
            with contextlib.suppress(OSError):
                if os.eventfd_read(self._efd):
                    self._check()
            os.close(self._efd)
            self._efd = -1
        if self._control >= 0:
            os.close(self._control)
            self._control = -1
