"""A third-party executor: greets the event by name. Registered through the ``cronium``
entry-point group, exactly as a real plugin would be."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cronium_core.executors import ExecutionRequest, Executor, LogSink, Outcome
from cronium_core.hookspecs import hookimpl
from cronium_core.jobs import Stream
from cronium_core.plugins import ExecutorRegistry


class HelloExecutor(Executor):
    name = "hello"

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.greeting = str(config.get("greeting", "hello"))

    async def execute(self, request: ExecutionRequest, emit: LogSink) -> Outcome:
        await emit(Stream.STDOUT, f"{self.greeting}, {request.event_name}")
        return Outcome(exit_code=0, output={"greeted": request.event_name})


@hookimpl
def cronium_register_executors(register: ExecutorRegistry) -> None:
    register.add("hello", HelloExecutor)
