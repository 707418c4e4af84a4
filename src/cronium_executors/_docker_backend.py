"""The docker engine calls of the ``docker`` executor (see :mod:`cronium_executors.docker`)."""

from __future__ import annotations

from typing import IO, Any, cast

import docker
import docker.errors
import docker.types

from ._container_engine import (
    Backend,
    ContainerSpec,
    ContainerState,
    EngineError,
    LogWriter,
    NetworkSpec,
    RuntimeVersion,
)
from ._oom import OomProbe

__all__ = ["DockerBackend"]


def _tmpfs_options(size: int) -> str:
    return f"rw,noexec,nosuid,nodev,size={size}"


class DockerBackend(Backend):
    engine = "docker"
    oom_probe_needed = False
    logs_end_early = False

    def __init__(self, url: str = "") -> None:
        try:
            self.client = (
                docker.DockerClient(base_url=url, timeout=120)
                if url
                else docker.from_env(timeout=120)
            )
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot reach Docker: {exc}") from None
        self.api = self.client.api

    def _do(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound as exc:
            raise EngineError(f"not found: {exc.explanation}") from None
        except docker.errors.APIError as exc:
            raise EngineError(str(exc.explanation or exc)) from None
        except docker.errors.DockerException as exc:
            raise EngineError(str(exc)) from None
        except OSError as exc:
            raise EngineError(f"Docker is unreachable: {exc}") from None

    def ping(self) -> None:
        self._do(self.api.ping)

    def runtime_version(self) -> RuntimeVersion:
        info = self._do(self.api.info)
        build = str((info.get("RuncCommit") or {}).get("ID") or "")
        version = "?"
        for component in self._do(self.api.version).get("Components") or []:
            if component.get("Name") == "runc":
                version = str(component.get("Version") or "?")
        name = str(info.get("DefaultRuntime") or "runc")
        return RuntimeVersion(
            name="runc" if name in ("runc", "io.containerd.runc.v2") else name,
            version=version,
            build=build,
        )

    def close(self) -> None:
        self.client.close()

    def image_exists(self, image: str) -> bool:
        try:
            self.api.inspect_image(image)  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            return False
        return True

    def network_create(self, spec: NetworkSpec) -> None:
        ipam = None
        options: dict[str, str] = {}
        if spec.subnet:
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=spec.subnet)])
        if spec.internal:
            options["com.docker.network.bridge.inhibit_ipv4"] = "true"
        self._do(
            self.api.create_network,
            spec.name,
            driver="bridge",
            internal=spec.internal,
            labels=dict(spec.labels),
            ipam=ipam,
            options=options,
            check_duplicate=True,
        )

    def network_gateway(self, name: str) -> str | None:
        try:
            data = self.api.inspect_network(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise EngineError(str(exc.explanation)) from None
        for config in (data.get("IPAM") or {}).get("Config") or []:
            if config.get("Gateway"):
                return cast(str, config["Gateway"])
        return None

    def network_connect(self, network: str, container: str) -> str:
        self._do(self.api.connect_container_to_network, container, network)
        data = self._do(self.api.inspect_container, container)
        return cast(str, data["NetworkSettings"]["Networks"][network]["IPAddress"])

    def network_disconnect(self, network: str, container: str) -> None:
        self._do(self.api.disconnect_container_from_network, container, network, force=True)

    def network_remove(self, name: str) -> None:
        try:
            self.api.remove_network(name)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise EngineError(str(exc.explanation)) from None

    def networks(self, label: str) -> list[tuple[str, dict[str, str]]]:
        found = self._do(self.api.networks, filters={"label": label})
        return [(n["Name"], n.get("Labels") or {}) for n in found]

    def container_create(self, spec: ContainerSpec) -> str:
        security_opt = ["no-new-privileges"]
        if spec.seccomp_profile:
            with open(spec.seccomp_profile, encoding="utf-8") as profile:
                security_opt.append(f"seccomp={profile.read()}")
        host_config = self.api.create_host_config(
            binds={host: {"bind": target, "mode": "ro"} for host, target in spec.binds},
            tmpfs={path: _tmpfs_options(size) for path, size in spec.tmpfs.items()},
            read_only=spec.read_only,
            cap_drop=["ALL"],
            security_opt=security_opt,
            mem_limit=spec.memory,
            memswap_limit=spec.memory,
            nano_cpus=spec.nano_cpus,
            pids_limit=spec.pids,
            ulimits=[
                docker.types.Ulimit(name="nofile", soft=spec.nofile, hard=spec.nofile),
                docker.types.Ulimit(name="nproc", soft=spec.nproc, hard=spec.nproc),
            ],
            network_mode=spec.network or "none",
            extra_hosts=dict(spec.hosts),
            log_config=docker.types.LogConfig(
                type="json-file", config={"max-size": "64m", "max-file": "1"}
            ),
            ipc_mode="private",
            privileged=False,
        )
        created = self._do(
            self.api.create_container,
            spec.image,
            command=list(spec.command),
            name=spec.name,
            environment=dict(spec.env),
            labels=dict(spec.labels),
            user=spec.user,
            working_dir=spec.workdir,
            host_config=host_config,
            network_disabled=spec.network is None,
        )
        return cast(str, created["Id"])

    def container_start(self, cid: str) -> None:
        self._do(self.api.start, cid)

    def container_logs(self, cid: str, follow: bool) -> IO[bytes]:
        url = f"{self.api.base_url}/v{self.api.api_version}/containers/{cid}/logs"
        response = self._do(
            self.api.get,
            url,
            params={"follow": int(follow), "stdout": 1, "stderr": 1},
            stream=True,
            timeout=None,
        )
        if response.status_code != 200:
            raise EngineError(f"logs: HTTP {response.status_code}: {response.text[:200]}")
        return cast(IO[bytes], response.raw)

    def container_wait(self, cid: str) -> None:
        self._do(self.api.wait, cid, timeout=None)

    def container_state(self, cid: str) -> ContainerState:
        state = self._do(self.api.inspect_container, cid)["State"]
        return ContainerState(
            running=bool(state.get("Running")),
            exit_code=None if state.get("Running") else state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error") or "",
        )

    def container_stop(self, cid: str, timeout: float) -> None:
        self._do(self.api.stop, cid, timeout=max(1, round(timeout)))

    def container_remove(self, cid: str) -> None:
        try:
            self.api.remove_container(cid, force=True, v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "already in progress" in str(exc.explanation):
                return
            raise EngineError(str(exc.explanation)) from None

    def container_inspect(self, cid: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._do(self.api.inspect_container, cid))

    def containers(self, label: str) -> list[tuple[str, dict[str, str]]]:
        found = self._do(self.api.containers, all=True, filters={"label": label})
        return [(c["Id"], c.get("Labels") or {}) for c in found]

    def oom_probe(self, cid: str) -> OomProbe | None:
        return None  # Docker reports OOM kills itself (State.OOMKilled)

    def log_writer(self, cid: str) -> LogWriter | None:
        return None  # Docker's follow stream ends with the last byte the job wrote
