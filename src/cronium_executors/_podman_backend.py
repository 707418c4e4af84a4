"""The podman engine calls of the ``podman`` executor (see :mod:`cronium_executors.podman`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import IO, Any, cast

import podman
import podman.errors
import requests

from ._container_engine import (
    Backend,
    ContainerSpec,
    ContainerState,
    EngineError,
    LogWriter,
    NetworkSpec,
    RuntimeVersion,
)
from ._oom import OomProbe, cgroup_v1_memory_dir

__all__ = ["PodmanBackend"]

DEFAULT_URL = "unix:///run/podman/podman.sock"
_JSON = {"content-type": "application/json"}
CPU_PERIOD = 100_000


class PodmanBackend(Backend):
    engine = "podman"
    # its follow stream may end at the container's exit before the reader caught up
    oom_probe_needed = True
    logs_end_early = True

    def __init__(self, url: str = "") -> None:
        try:
            self.client = podman.PodmanClient(base_url=url or DEFAULT_URL, timeout=120)
        except (podman.errors.PodmanError, OSError) as exc:
            raise EngineError(f"cannot reach Podman: {exc}") from None
        self.api = self.client.api

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        ok: tuple[int, ...] = (200, 201, 204),
        missing_ok: bool = False,
        stream: bool = False,
        timeout: float | None = 120,
    ) -> requests.Response:
        kwargs: dict[str, Any] = {"params": params, "stream": stream}
        if body is not None:
            kwargs["data"] = json.dumps(body)
            kwargs["headers"] = _JSON
        try:
            call = getattr(self.api, method)
            response = cast(requests.Response, call(path, timeout=timeout, **kwargs))
        except (requests.RequestException, OSError) as exc:
            raise EngineError(f"Podman is unreachable: {exc}") from None
        if response.status_code == 404 and missing_ok:
            return response
        if response.status_code not in ok:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise EngineError(f"{method.upper()} {path}: HTTP {response.status_code}: {message}")
        return response

    def ping(self) -> None:
        self._request("get", "/_ping")

    def runtime_version(self) -> RuntimeVersion:
        info = self._request("get", "/info").json()
        runtime = info.get("host", {}).get("ociRuntime", {})
        # "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\n..."
        text = str(runtime.get("version", ""))
        version = re.search(r"version\s+(\S+)", text)
        commit = re.search(r"commit:\s*(\S+)", text)
        return RuntimeVersion(
            name=str(runtime.get("name") or "?"),
            version=version.group(1) if version else "?",
            build=commit.group(1) if commit else "",
        )

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    def image_exists(self, image: str) -> bool:
        response = self._request("get", f"/images/{image}/exists", ok=(204,), missing_ok=True)
        return response.status_code == 204

    def network_create(self, spec: NetworkSpec) -> None:
        body: dict[str, Any] = {
            "name": spec.name,
            "driver": "bridge",
            "internal": spec.internal,
            "labels": dict(spec.labels),
            "dns_enabled": False,
        }
        if spec.subnet:
            body["subnets"] = [{"subnet": spec.subnet}]
        self._request("post", "/networks/create", body=body)

    def network_gateway(self, name: str) -> str | None:
        response = self._request("get", f"/networks/{name}/json", missing_ok=True)
        if response.status_code == 404:
            return None
        for subnet in response.json().get("subnets") or []:
            if subnet.get("gateway"):
                return cast(str, subnet["gateway"])
        return None

    def network_connect(self, network: str, container: str) -> str:
        self._request("post", f"/networks/{network}/connect", body={"container": container})
        data = self.container_inspect(container)
        return cast(str, data["NetworkSettings"]["Networks"][network]["IPAddress"])

    def network_disconnect(self, network: str, container: str) -> None:
        self._request(
            "post",
            f"/networks/{network}/disconnect",
            body={"container": container, "force": True},
            missing_ok=True,
        )

    def network_remove(self, name: str) -> None:
        self._request("delete", f"/networks/{name}", params={"force": "true"}, missing_ok=True)

    def networks(self, label: str) -> list[tuple[str, dict[str, str]]]:
        found = self._request(
            "get", "/networks/json", params={"filters": json.dumps({"label": [label]})}
        ).json()
        return [(n["name"], n.get("labels") or {}) for n in found or []]

    def container_create(self, spec: ContainerSpec) -> str:
        mounts: list[dict[str, Any]] = [
            {
                "destination": path,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["rw", "noexec", "nosuid", "nodev", f"size={size}"],
            }
            for path, size in spec.tmpfs.items()
        ]
        mounts += [
            {
                "destination": target,
                "type": "bind",
                "source": host,
                "options": ["ro", "nosuid", "nodev"],
            }
            for host, target in spec.binds
        ]
        body: dict[str, Any] = {
            "name": spec.name,
            "image": spec.image,
            "command": list(spec.command),
            "env": dict(spec.env),
            "labels": dict(spec.labels),
            "user": spec.user,
            "work_dir": spec.workdir,
            "read_only_filesystem": spec.read_only,
            # without this, podman adds its own tmpfs on /run, /tmp and /var/tmp
            "read_write_tmpfs": False,
            "cap_drop": ["ALL"],
            "no_new_privileges": True,
            "privileged": False,
            "mounts": mounts,
            "resource_limits": {
                "memory": {"limit": spec.memory, "swap": spec.memory},
                "cpu": {
                    "quota": spec.nano_cpus * CPU_PERIOD // 1_000_000_000,
                    "period": CPU_PERIOD,
                },
                "pids": {"limit": spec.pids},
            },
            # given any r_limits, podman drops its configured defaults and fails to set
            # nproc on its own: set both
            "r_limits": [
                {"type": "nofile", "soft": spec.nofile, "hard": spec.nofile},
                {"type": "nproc", "soft": spec.nproc, "hard": spec.nproc},
            ],
            "hostadd": [f"{name}:{ip}" for name, ip in spec.hosts.items()],
            "log_configuration": {"driver": "k8s-file", "size": 64 * 1024**2},
            "ipcns": {"nsmode": "private"},
        }
        if spec.seccomp_profile:
            body["seccomp_profile_path"] = spec.seccomp_profile
        if spec.network is None:
            body["netns"] = {"nsmode": "none"}
        else:
            body["netns"] = {"nsmode": "bridge"}
            body["Networks"] = {spec.network: {}}
        created = self._request("post", "/containers/create", body=body).json()
        return cast(str, created["Id"])

    def container_start(self, cid: str) -> None:
        self._request("post", f"/containers/{cid}/start", ok=(204, 304))

    def container_logs(self, cid: str, follow: bool) -> IO[bytes]:
        response = self._request(
            "get",
            f"/containers/{cid}/logs",
            params={"follow": str(follow).lower(), "stdout": "true", "stderr": "true"},
            stream=True,
            timeout=None,
        )
        return cast(IO[bytes], response.raw)

    def container_wait(self, cid: str) -> None:
        self._request(
            "post",
            f"/containers/{cid}/wait",
            params={"condition": ["stopped", "exited"]},
            timeout=None,
        )

    def container_state(self, cid: str) -> ContainerState:
        state = self.container_inspect(cid)["State"]
        running = bool(state.get("Running"))
        return ContainerState(
            running=running,
            exit_code=None if running else state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error") or "",
        )

    def container_stop(self, cid: str, timeout: float) -> None:
        self._request(
            "post",
            f"/containers/{cid}/stop",
            params={"timeout": max(1, round(timeout))},
            ok=(204, 304),
            missing_ok=True,
            timeout=timeout + 60,
        )

    def container_remove(self, cid: str) -> None:
        self._request(
            "delete",
            f"/containers/{cid}",
            params={"force": "true", "v": "true"},
            ok=(200, 204),
            missing_ok=True,
        )

    def container_inspect(self, cid: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._request("get", f"/containers/{cid}/json").json())

    def oom_probe(self, cid: str) -> OomProbe | None:
        # Podman 4.3 on cgroup v1 does not set State.OOMKilled: watch the cgroup ourselves.
        # (Not from `init`: starting an initialized container that has networks makes its
        # cgroup anew.) An OOM kill in the moment before this registers is still seen if the
        # cgroup is there to read; a job killed and gone by then shows as SIGKILL.
        # podman's cgroupfs manager names it libpod-<id> under /libpod_parent by default;
        # otherwise the container says where it is
        directory = cgroup_v1_memory_dir(f"/libpod_parent/libpod-{cid}")
        if directory is None:
            path = self.container_inspect(cid).get("State", {}).get("CgroupPath") or ""
            directory = cgroup_v1_memory_dir(path) if path else None
        if directory is None:
            return None
        try:
            return OomProbe(directory)
        except OSError:
            return None  # gone already, or not ours to watch

    def log_writer(self, cid: str) -> LogWriter | None:
        # conmon; Podman forgets its pid once the container has exited (ConmonPid 0)
        pid = self.container_inspect(cid).get("State", {}).get("ConmonPid") or 0
        return LogWriter.find(int(pid), cid)

    def containers(self, label: str) -> list[tuple[str, dict[str, str]]]:
        found = self._request(
            "get",
            "/containers/json",
            params={"all": "true", "filters": json.dumps({"label": [label]})},
        ).json()
        return [(c["Id"], c.get("Labels") or {}) for c in found or []]
