"""Serving the runtime API inside the caller's task group, and the env a job needs to reach it.

::

    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, create_app(service))
        worker.runtime_env = runtime_env_factory(url, tokens)
        ...
        tg.cancel_scope.cancel()        # stops the server
"""

from __future__ import annotations

import ipaddress
import logging

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.types import ASGIApp

from cronium_core.runtime import runtime_env

__all__ = ["runtime_env_factory", "serve"]

log = logging.getLogger("cronium.runtime")

#: seconds open connections get to finish when the server stops
SHUTDOWN_GRACE = 3


async def serve(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; reports its base URL (``http://host:port``) through
    ``task_status`` once it listens. ``port=0`` picks a free port.

    Uvicorn runs without its signal handlers (the host process owns its signals), without its
    logging configuration (the host's logging applies) and without access logs."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup()
    except SystemExit:
        # uvicorn logs the OSError and exits the process; inside a library, raise instead
        raise OSError(f"the runtime API cannot listen on {host}:{port}") from None
    try:
        bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
        url = f"http://{_url_host(bound_host)}:{bound_port}"
        log.info("runtime API listening on %s", url)
        task_status.started(url)
        await server.main_loop()  # ticks the Date header; returns only if should_exit
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE + 2):
            await server.shutdown()


def _url_host(bound: str) -> str:
    """How clients on this machine reach what was bound: a wildcard means loopback."""
    address = ipaddress.ip_address(bound)
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]" if address.version == 6 else str(address)


#: for ``Worker.runtime_env``: the API's URL and a token for the job's current attempt
runtime_env_factory = runtime_env
