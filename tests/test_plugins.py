"""Executors come from plugins: the built-ins and a third-party package installed for real."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cronium_core.events import Script
from cronium_core.executors import ExecutionRequest
from cronium_core.jobs import Stream
from cronium_core.plugins import BLOCK_ENV, load_executors, make_plugin_manager
from cronium_executors.http import HttpExecutor
from cronium_executors.local import LocalExecutor

HELLO = Path(__file__).parent / "plugins" / "cronium-hello"


@pytest.fixture(scope="module")
def hello_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cronium-hello installed by pip into a directory of its own (offline: no index, no
    build isolation, the build backend comes from this environment)."""
    import hatchling  # noqa: F401  (the test extra installs it: a missing one is a failure)

    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(HELLO),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture
def hello_installed(hello_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(hello_site))
    yield
    for name in [m for m in sys.modules if m.split(".")[0] == "cronium_hello"]:
        del sys.modules[name]


def test_builtin_executors_are_plugins() -> None:
    registry = load_executors(make_plugin_manager())
    assert {"local", "http"} <= set(registry.names())
    assert isinstance(registry.create("local"), LocalExecutor)
    assert isinstance(registry.create("http", {"follow_redirects": True}), HttpExecutor)


@pytest.mark.usefixtures("hello_installed")
@pytest.mark.anyio
async def test_third_party_executor_is_found_and_runs() -> None:
    registry = load_executors(make_plugin_manager())
    assert {"hello", "local", "http"} <= set(registry.names())
    hello = registry.create("hello", {"greeting": "hi"})
    lines: list[tuple[Stream, str]] = []

    async def emit(stream: Stream, text: str) -> None:
        lines.append((stream, text))

    request = ExecutionRequest(
        job_id="job-1",
        attempt=1,
        event_id="event-1",
        event_name="world",
        action=Script(language="bash", code="true"),
        input=None,
        env={},
        timeout=10,
    )
    outcome = await hello.execute(request, emit)
    assert outcome.succeeded
    assert outcome.output == {"greeted": "world"}
    assert lines == [(Stream.STDOUT, "hi, world")]


@pytest.mark.usefixtures("hello_installed")
def test_plugins_can_be_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "hello" in load_executors(make_plugin_manager()).names()
    monkeypatch.setenv(BLOCK_ENV, "hello")
    names = load_executors(make_plugin_manager()).names()
    assert "hello" not in names
    assert {"local", "http"} <= set(names)
