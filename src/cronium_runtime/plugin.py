"""Registers the runtime API server with Cronium (entry point ``cronium:runtime``), so that
a worker started through ``Cronium(...)`` serves the API its scripts call."""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from cronium_core.hookspecs import hookimpl
from cronium_core.runtime import RuntimeServer, RuntimeService

from .app import create_app
from .server import serve


async def serve_runtime(
    service: RuntimeService,
    *,
    host: str,
    port: int,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await serve(create_app(service), host=host, port=port, task_status=task_status)


@hookimpl
def cronium_runtime_server() -> RuntimeServer:
    return serve_runtime
