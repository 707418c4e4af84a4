"""Test doubles for people who build on Cronium (plugin authors, the engine's own tests).

:class:`ScriptedExecutor` runs a :class:`~cronium_core.events.Script` whose ``code`` is a JSON
object saying what to do, so engine and workflow behaviour can be checked without processes::

    {"lines": ["hello"], "sleep": 0.1, "exit": 0, "output": {"n": 1}, "condition": true,
     "fail_attempts": 1}

``fail_attempts`` makes the first N attempts exit 1 (retries). Real executors are tested
against real processes and containers in their own test modules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio

from .events import Action, Script
from .executors import UNSET, ExecutionRequest, Executor, LogSink, Outcome
from .hookspecs import hookimpl
from .jobs import Stream

__all__ = ["ScriptedExecutor", "ScriptedPlugin", "scripted"]


def scripted(**instructions: Any) -> Script:
    """A Script for the scripted executor."""
    return Script(language="python", code=json.dumps(instructions))


class ScriptedExecutor(Executor):
    name = "scripted"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.started: list[str] = []  #: job ids, in the order their runs started

    def can_run(self, action: Action) -> bool:
        return isinstance(action, Script)

    async def execute(self, request: ExecutionRequest, emit: LogSink) -> Outcome:
        assert isinstance(request.action, Script)
        self.started.append(request.job_id)
        spec = json.loads(request.action.code)
        for line in spec.get("lines", []):
            await emit(Stream.STDOUT, str(line))
        if spec.get("echo_input"):
            await emit(Stream.STDOUT, json.dumps(request.input))
        if spec.get("sleep"):
            await anyio.sleep(float(spec["sleep"]))
        if request.attempt <= int(spec.get("fail_attempts", 0)):
            return Outcome(exit_code=1, error=f"attempt {request.attempt} told to fail")
        output = spec.get("output", UNSET)
        if spec.get("output_input"):
            output = request.input
        return Outcome(
            exit_code=int(spec.get("exit", 0)), output=output, condition=spec.get("condition")
        )


class ScriptedPlugin:
    """Register with ``Cronium(plugins=[ScriptedPlugin()])``."""

    @hookimpl
    def cronium_register_executors(self, register: Any) -> None:
        register.add("scripted", ScriptedExecutor)
