#!/usr/bin/env python3
"""cronium-relay: the runtime API's doorway into job networks.

A job container sits on an internal network of its own that routes nowhere. The container
executor connects one long-lived *relay* container to every job network (reachable there as
``runtime``) and to a control network from which it can reach the runtime API. The relay
forwards TCP connections to exactly one address, the runtime API, and nothing else: the job
can reach the API through it, but not the host, the database or another job.

The relay holds no credential (no database URL, no signing key): a job that took it over
would gain nothing but the runtime API, which checks every request's execution token anyway.

Standard library only: the images run it with the system ``python3``::

    cronium-relay --listen 0.0.0.0:8080 --target 10.213.255.1:40123
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

#: bytes read per chunk; the runtime API's bodies are at most 1 MiB
CHUNK = 65536
#: a connection with no traffic either way for this long is closed
IDLE_SECONDS = 300.0
#: connections served at once; more wait in the kernel's accept queue
MAX_CONNECTIONS = 512


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await asyncio.wait_for(reader.read(CHUNK), IDLE_SECONDS)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (TimeoutError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class Relay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        async with self._slots:
            try:
                upstream_r, upstream_w = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port), 10
                )
            except (TimeoutError, OSError) as exc:
                print(f"cronium-relay: runtime API unreachable: {exc}", file=sys.stderr, flush=True)
                await _close(client_w)
                return
            try:
                await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))
            finally:
                await _close(upstream_w)
                await _close(client_w)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cronium-relay", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=_address, default=("0.0.0.0", 8080))
    parser.add_argument("--target", type=_address, required=True)
    args = parser.parse_args(argv)
    relay = Relay(*args.target)
    server = await asyncio.start_server(relay.handle, *args.listen, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, port = args.target
    print(f"cronium-relay: {args.listen[0]}:{args.listen[1]} -> {host}:{port}", flush=True)
    async with server:
        await stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
