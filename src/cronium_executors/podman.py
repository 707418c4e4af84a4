"""The ``podman`` executor: :mod:`cronium_executors.container` on Podman's libpod REST API
(``podman system service``), through podman-py's API client.

Containers are created from a libpod *spec* (the API's native shape) rather than through
podman-py's Docker-style keyword translation, which cannot express tmpfs mount options.

Job networks are internal netavark bridges with an explicit subnet and no gateway: the bridge
has no address on the host, and the job has no default route. Where Docker runs on the same
host, its ``FORWARD`` policy (DROP, with ``br_netfilter``) also drops traffic *inside* such a
bridge; the host then needs one rule letting the job-network pool talk within itself::

    iptables -I DOCKER-USER -s 10.214.0.0/16 -d 10.214.0.0/16 -j ACCEPT

(``scripts/services`` adds it). Addresses in the pool are not routed anywhere, so the rule
opens nothing between networks: only between a job and the relay on the same bridge.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

from cronium_core.hookspecs import hookimpl
from cronium_core.plugins import ExecutorRegistry

from ._seccomp import hardened_podman_profile
from .container import Backend, ContainerExecutor, EngineError

__all__ = ["PodmanExecutor", "cronium_register_executors"]


class PodmanExecutor(ContainerExecutor):
    engine = "podman"

    async def default_seccomp_profile(self, exit_stack: AsyncExitStack) -> str | None:
        """Podman's default profile lets a job make a user namespace (``unshare -r``): jobs
        get that profile hardened (:mod:`cronium_executors._seccomp`). The file is written on
        this host, where the (local) Podman service reads it."""
        directory = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "cronium-seccomp-"))
        exit_stack.callback(shutil.rmtree, directory, True)
        await anyio.Path(directory).chmod(0o755)  # read by the Podman service
        path = await anyio.to_thread.run_sync(hardened_podman_profile, directory)
        if path is None:
            raise EngineError(
                "no Podman default seccomp profile on this host to harden "
                "(/usr/share/containers/seccomp.json); set the seccomp_profile setting"
            )
        return str(path)

    def make_backend(self) -> Backend:
        # imported here: the podman SDK is an optional dependency (``cronium[podman]``)
        from ._podman_backend import PodmanBackend

        return PodmanBackend(self.settings.url)


@hookimpl
def cronium_register_executors(register: ExecutorRegistry) -> None:
    register.add("podman", PodmanExecutor)
