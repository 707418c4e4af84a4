"""The container executors' settings and the options an event may choose, checked at the
boundary (see :mod:`cronium_executors.container`)."""

from __future__ import annotations

import ipaddress
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import attrs

from cronium_core.errors import ValidationError

__all__ = [
    "DEFAULT_POOLS",
    "LANGUAGES",
    "ContainerSettings",
    "JobOptions",
    "check_image",
    "parse_size",
]

#: the script languages, and the file suffix of each
LANGUAGES = {"bash": ".sh", "python": ".py", "node": ".js"}
#: each engine its own pool of job subnets (one host may run both)
DEFAULT_POOLS = {"docker": "10.213.0.0/16", "podman": "10.214.0.0/16"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")


def parse_size(value: object, field: str) -> int:
    """``"256m"``, ``"1g"``, ``"64MiB"`` or a number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValidationError(field, "must be a size like '256m'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        number, unit = match.groups()
        size = int(float(number) * 1024 ** "bkmgt".index(unit.lower() or "b"))
    else:
        raise ValidationError(field, "must be a size like '256m'")
    if size <= 0:
        raise ValidationError(field, "must be positive")
    return size


def check_image(image: object, field: str) -> str:
    # an image reference never reaches a shell, but "--privileged" must not look like one
    if not isinstance(image, str) or not _IMAGE.match(image):
        raise ValidationError(field, "must be an image reference like 'cronium-python:latest'")
    return image


@attrs.frozen(kw_only=True)
class JobOptions:
    """What an event may choose (``Event.executor_options``), checked at run time."""

    image: str | None = None
    memory: int = 256 * 1024**2
    cpus: float = 1.0
    pids: int = 256
    #: ``isolated`` (default): a job network whose only other member is the runtime relay;
    #: ``none``: no network at all; ``egress``: a network with a route out (opt-in)
    network: str = "isolated"
    tmp_size: int = 64 * 1024**2

    @classmethod
    def parse(cls, options: Mapping[str, Any], limits: JobOptions) -> JobOptions:
        """Check an event's options against the executor's limits; defaults are capped by
        the limits too."""
        known = {"image", "memory", "cpus", "pids", "network", "tmp_size"}
        for key in options:
            if key not in known:
                raise ValidationError(
                    f"executor_options.{key}",
                    f"is not an option (known: {', '.join(sorted(known))})",
                )
        defaults = cls()
        values: dict[str, Any] = {
            "memory": min(defaults.memory, limits.memory),
            "cpus": min(defaults.cpus, limits.cpus),
            "pids": min(defaults.pids, limits.pids),
            "tmp_size": min(defaults.tmp_size, limits.tmp_size),
        }
        if "image" in options:
            values["image"] = check_image(options["image"], "executor_options.image")
        for key in ("memory", "tmp_size"):
            if key in options:
                size = parse_size(options[key], f"executor_options.{key}")
                if size > getattr(limits, key):
                    raise ValidationError(
                        f"executor_options.{key}", f"may be at most {getattr(limits, key)} bytes"
                    )
                values[key] = size
        if "cpus" in options:
            cpus = options["cpus"]
            if isinstance(cpus, bool) or not isinstance(cpus, int | float):
                raise ValidationError("executor_options.cpus", "must be a number")
            if not 0 < cpus <= limits.cpus:
                raise ValidationError("executor_options.cpus", f"must be in (0, {limits.cpus}]")
            values["cpus"] = float(cpus)
        if "pids" in options:
            pids = options["pids"]
            if isinstance(pids, bool) or not isinstance(pids, int) or not 8 <= pids <= limits.pids:
                raise ValidationError("executor_options.pids", f"must be in [8, {limits.pids}]")
            values["pids"] = pids
        if "network" in options:
            if options["network"] not in ("isolated", "none", "egress"):
                raise ValidationError(
                    "executor_options.network", "must be 'isolated', 'none' or 'egress'"
                )
            values["network"] = options["network"]
        return cls(**values)


def _default_images() -> dict[str, str]:
    return {language: f"cronium-{language}:latest" for language in LANGUAGES}


@attrs.frozen(kw_only=True)
class ContainerSettings:
    """The executor's configuration (``executor_config["docker"]`` and the like)."""

    #: the engine's API address (docker: ``unix:///var/run/docker.sock``; podman:
    #: ``unix:///run/podman/podman.sock``); empty: the engine's usual default
    url: str = ""
    #: the image per script language
    images: Mapping[str, str] = attrs.field(factory=_default_images)
    #: the image the relay runs in (it needs ``python3`` and ``/usr/local/bin/cronium-relay``)
    relay_image: str = "cronium-base:latest"
    user: str = "1000:1000"
    #: the most an event may ask for; also the defaults' ceiling
    limits: JobOptions = attrs.field(
        factory=lambda: JobOptions(memory=2 * 1024**3, cpus=2.0, pids=1024, tmp_size=1024**3)
    )
    work_size: int = 64 * 1024**2
    nofile: int = 1024
    #: processes of the job's uid *on the host* (shared by every job container running as
    #: that uid); the per-job cap is the PID limit
    nproc: int = 4096
    #: a seccomp profile (JSON file) instead of the engine's default one
    seccomp_profile: str | None = None
    #: job networks are /28 subnets of this pool (not used by anything else on the host)
    subnet_pool: str = "10.213.0.0/16"
    #: the network from which the relay reaches the runtime API (created when missing)
    control_network: str = "cronium-control"
    #: job networks kept ready (relay connected)
    network_pool: int = 2
    #: host directory for the scripts (bind-mounted read-only into the jobs)
    script_root: str = attrs.field(factory=tempfile.gettempdir)
    #: bytes of output kept per job; the rest is dropped after a marker line
    max_log_bytes: int = 16 * 1024**2
    #: seconds between sweeps for what dead workers left behind
    reap_interval: float = 30.0
    #: start even on an OCI runtime older than :data:`MIN_RUNC` without a known backport
    allow_unpatched_runtime: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, engine: str) -> ContainerSettings:
        values = dict(config)
        simple: dict[str, type | tuple[type, ...]] = {
            "url": str,
            "relay_image": str,
            "user": str,
            "seccomp_profile": str,
            "subnet_pool": str,
            "control_network": str,
            "network_pool": int,
            "script_root": str,
            "max_log_bytes": int,
            "reap_interval": (int, float),
            "nofile": int,
            "nproc": int,
            "allow_unpatched_runtime": bool,
        }
        out: dict[str, Any] = {}
        for key, value in values.items():
            field = f"executors.{engine}.{key}"
            if key in simple:
                wants_bool = simple[key] is bool
                if not isinstance(value, simple[key]) or (isinstance(value, bool) != wants_bool):
                    raise ValidationError(field, "has the wrong type")
                out[key] = value
            elif key == "images":
                if not isinstance(value, Mapping):
                    raise ValidationError(field, "must map languages to images")
                images = _default_images()
                for language, image in value.items():
                    if language not in images:
                        raise ValidationError(field, f"{language!r} is not a script language")
                    images[language] = check_image(image, f"{field}.{language}")
                out["images"] = images
            elif key == "limits":
                if not isinstance(value, Mapping):
                    raise ValidationError(field, "must be a mapping")
                out["limits"] = _limits(value, field)
            elif key == "work_size":
                out["work_size"] = parse_size(value, field)
            else:
                raise ValidationError(field, "is not a setting of it")
        out.setdefault("subnet_pool", DEFAULT_POOLS.get(engine, cls.subnet_pool))
        settings = cls(**out)
        check_image(settings.relay_image, f"executors.{engine}.relay_image")
        try:
            pool = ipaddress.ip_network(settings.subnet_pool)
        except ValueError as exc:
            raise ValidationError(f"executors.{engine}.subnet_pool", str(exc)) from None
        if pool.version != 4 or pool.prefixlen > 24:
            raise ValidationError(f"executors.{engine}.subnet_pool", "must be IPv4, /24 or larger")
        if not re.fullmatch(r"\d+(:\d+)?", settings.user) or settings.user.split(":")[0] == "0":
            raise ValidationError(f"executors.{engine}.user", "must be a non-root uid[:gid]")
        return settings


def _limits(value: Mapping[str, Any], field: str) -> JobOptions:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in ("memory", "tmp_size"):
            out[key] = parse_size(item, f"{field}.{key}")
        elif key in ("cpus", "pids"):
            if isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
                raise ValidationError(f"{field}.{key}", "must be positive")
            out[key] = float(item) if key == "cpus" else int(item)
        else:
            raise ValidationError(f"{field}.{key}", "is not a limit")
    return JobOptions(**out)
