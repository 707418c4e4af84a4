"""Serving the runtime API inside the caller's task group, and the env a job needs to reach it.

::

    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, create_app(service))
        worker.runtime_env = runtime_env_factory(url, tokens)
        ...
        tg.cancel_scope.cancel()        # stops the server
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import socket
import sys

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.types import ASGIApp

from cronium_core.runtime import runtime_env

__all__ = ["freeze_heap", "runtime_env_factory", "serve"]

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
    ``task_status`` once it listens. ``port=0`` picks a free port. ``host`` may list several
    addresses separated by commas (loopback plus a container network's gateway, say): all
    listen on the same port, and the URL names the first.

    Uvicorn runs without its signal handlers (the host process owns its signals), without its
    logging configuration (the host's logging applies), without access logs, and without
    the proxy-headers middleware and the ``server`` header."""
    hosts = [h.strip() for h in host.split(",") if h.strip()]
    sockets = _bind(hosts, port)
    config = uvicorn.Config(
        app,
        host=hosts[0],
        port=sockets[0].getsockname()[1],
        log_level="warning",
        lifespan="off",
        # scripts call it directly: no proxy in front whose X-Forwarded-* to trust, and no
        # server name to announce
        proxy_headers=False,
        server_header=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=sockets)
    except BaseException:
        for sock in sockets:
            sock.close()  # the asyncio servers own them once started; until then, we do
        raise
    try:
        bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
        url = f"http://{_url_host(bound_host)}:{bound_port}"
        log.info("runtime API listening on %s", url)
        task_status.started(url)
        await server.main_loop()  # ticks the Date header; returns only if should_exit
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE + 2):
            await server.shutdown()


def freeze_heap() -> None:
    """Exempt every object alive now from the garbage collector's full collections
    (:func:`gc.freeze`): for a long-running process, once started.

    A full collection walks every tracked object; after startup those are ~100k (modules,
    SQLAlchemy, Starlette, the app), which takes 25-40 ms with the event loop stopped, every
    few thousand requests under load: the p99 latency of the whole server. What was alive at
    startup stays alive anyway, so collecting only what came after loses nothing (the few
    startup objects that die later are never reclaimed)."""
    gc.collect()
    gc.freeze()


def _bind(hosts: list[str], port: int) -> list[socket.socket]:
    """Listening sockets on every host, on one port (the first bind picks it when 0)."""
    sockets: list[socket.socket] = []
    try:
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET and sys.platform == "linux":
                # a container network's bridge may get its address only when the first
                # container joins it (podman): listen there already
                sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_FREEBIND", 15), 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(2048)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise OSError(f"the runtime API cannot listen on {host}:{port}: {exc.strerror}") from None
    return sockets


def _url_host(bound: str) -> str:
    """How clients on this machine reach what was bound: a wildcard means loopback."""
    address = ipaddress.ip_address(bound)
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]" if address.version == 6 else str(address)


#: for ``Worker.runtime_env``: the API's URL and a token for the job's current attempt
runtime_env_factory = runtime_env
