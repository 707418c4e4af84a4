"""Shared pieces of the container-executor tests (docker and podman).

Engines and images are real: dockerd and ``podman system service`` started by
``scripts/services``, images built by ``scripts/images --tag test`` from a debootstrap root fs.
Outside CI a missing engine or image skips its tests; in CI (``CI=true``, set by ``.ci/run``)
it fails them, because a container test that skips in CI is a container test that does not
exist.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest

from cronium_core import Cronium
from cronium_executors.container import KIND, OWNER, process_owner

ENGINES = ("docker", "podman")
TAG = os.environ.get("CRONIUM_TEST_IMAGE_TAG", "test")
PODMAN_URL = os.environ.get("CRONIUM_PODMAN_URL", "unix:///run/podman/podman.sock")
LANGUAGES = ("python", "node", "bash")


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _cli(engine: str) -> list[str]:
    if engine == "podman":
        return ["podman", "--url", PODMAN_URL]
    return ["docker"]


def engine_cli(engine: str, *args: str, check: bool = True, timeout: float = 60) -> str:
    """Run the engine's own command line (for inspecting what the executor made)."""
    result = subprocess.run(
        [*_cli(engine), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{engine} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _problem(engine: str) -> str | None:
    try:
        engine_cli(engine, "info", timeout=20)
    except (OSError, AssertionError, subprocess.TimeoutExpired) as exc:
        return f"{engine} is not running ({exc}); start it with scripts/services"
    for image in (f"cronium-{name}:{TAG}" for name in ("base", *LANGUAGES)):
        if engine_cli(engine, "image", "inspect", image, check=False, timeout=20) == "":
            return f"{engine} has no image {image}; build it with scripts/images --tag {TAG}"
    return None


_checked: dict[str, str | None] = {}


def require(engine: str) -> None:
    """Skip (outside CI) or fail (in CI) unless ``engine`` runs and has the test images."""
    if engine not in _checked:
        _checked[engine] = _problem(engine)
    problem = _checked[engine]
    if problem is not None:
        if in_ci():
            pytest.fail(problem)
        pytest.skip(problem)


def executor_config(engine: str, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "images": {language: f"cronium-{language}:{TAG}" for language in LANGUAGES},
        "relay_image": f"cronium-base:{TAG}",
        "reap_interval": 2.0,
        "network_pool": 1,
    }
    if engine == "podman":
        config["url"] = PODMAN_URL
    config.update(extra)
    return config


@asynccontextmanager
async def container_cronium(
    url: str, engine: str, *, config: Mapping[str, Any] | None = None, **kwargs: Any
) -> AsyncIterator[Cronium]:
    """A Cronium with the ``engine`` executor (and ``local``), checking on the way out that
    nothing of ours is left behind."""
    require(engine)
    kwargs.setdefault("scheduler", False)
    kwargs.setdefault("poll_interval", 0.2)
    output_trouble = _OutputTrouble()
    executor_log = logging.getLogger("cronium_executors.container")
    executor_log.addHandler(output_trouble)
    try:
        async with Cronium(
            url,
            executors=[engine, "local"],
            executor_config={engine: dict(config or executor_config(engine))},
            **kwargs,
        ) as cr:
            yield cr
    finally:
        executor_log.removeHandler(output_trouble)
    assert leftovers(engine) == [], "containers or networks left behind"
    # a job's output must be complete and in order whatever the load: any doubt the executor
    # had about it (Podman's stored log against its follow stream) fails the test
    assert output_trouble.records == [], output_trouble.records


class _OutputTrouble(logging.Handler):
    """Records the executor's warnings about a job's output."""

    MARKS = ("stored log", "rest of", "still runs")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(mark in message for mark in self.MARKS):
            self.records.append(message)


def leftovers(engine: str, owner: str | None = None) -> list[str]:
    """Our containers and networks (owned by ``owner``, this process by default)."""
    owner = owner or process_owner()
    found = []
    for kind in ("ps", "network ls"):
        out = engine_cli(
            engine,
            *kind.split(),
            *(["-a"] if kind == "ps" else []),
            "--filter",
            f"label={OWNER}={owner}",
            "--format",
            "{{.Names}}" if kind == "ps" else "{{.Name}}",
        )
        found += [line for line in out.splitlines() if line.strip()]
    return found


def labelled(engine: str, what: str = "ps") -> list[str]:
    """Every container (``ps``) or network (``network ls``) of Cronium's on the engine."""
    args = [*what.split(), "--filter", f"label={KIND}", "--format", "{{.ID}}"]
    if what == "ps":
        args.insert(1, "-a")
    return [line for line in engine_cli(engine, *args).splitlines() if line.strip()]


engine_params = [pytest.param(engine, marks=pytest.mark.containers) for engine in ENGINES]
