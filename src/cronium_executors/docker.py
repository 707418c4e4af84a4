"""The ``docker`` executor: :mod:`cronium_executors.container` on the Docker Engine API,
through the ``docker`` SDK.

Job networks are internal bridges with ``com.docker.network.bridge.inhibit_ipv4``: the bridge
gets no address on the host, so a job cannot reach any of the host's addresses (Docker's
internal networks otherwise leave the bridge's gateway address, and with it every service
listening on the host, reachable from the job).
"""

from __future__ import annotations

from cronium_core.hookspecs import hookimpl
from cronium_core.plugins import ExecutorRegistry

from .container import Backend, ContainerExecutor

__all__ = ["DockerExecutor", "cronium_register_executors"]


class DockerExecutor(ContainerExecutor):
    engine = "docker"

    def make_backend(self) -> Backend:
        # imported here: the docker SDK is an optional dependency (``cronium[docker]``)
        from ._docker_backend import DockerBackend

        return DockerBackend(self.settings.url)


@hookimpl
def cronium_register_executors(register: ExecutorRegistry) -> None:
    register.add("docker", DockerExecutor)
