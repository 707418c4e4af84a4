"""Event brokers: how the parts of Cronium tell each other that something happened.

A broker carries small notices (a job was queued, a job finished, log lines were stored, a
cancel was requested). Notices are hints for latency, never the source of truth: every
listener also polls the store, so a lost notice delays, it never loses work. Log bodies are
not carried; subscribers read them from the store by sequence number.

* :class:`LocalBroker`: in one process (embedded mode).
* :class:`PostgresBroker`: ``LISTEN/NOTIFY`` on one channel, so that workers, schedulers and
  web processes on many machines hear each other. Payloads stay far below NOTIFY's 8000 bytes.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["EventBroker", "LocalBroker", "Notice", "PostgresBroker"]

CHANNEL = "cronium"


@attrs.frozen
class Notice:
    topic: str  #: job.queued | job.finished | job.logs | job.cancel | schedule.changed
    data: dict[str, Any] = attrs.field(factory=dict)


class EventBroker(abc.ABC):
    async def start(self, exit_stack: AsyncExitStack) -> None:  # noqa: B027
        """Connect; push disconnection onto the stack."""

    @abc.abstractmethod
    async def publish(self, notice: Notice) -> None:
        """Deliver to every subscriber (in every process, for distributed brokers)."""

    @abc.abstractmethod
    def subscribe(self, buffer: int = 256) -> Any:
        """An async context manager yielding a receive stream of notices. When a slow
        subscriber's buffer is full, further notices to it are dropped (they are hints)."""


@attrs.define(kw_only=True, eq=False)
class LocalBroker(EventBroker):
    _subscribers: set[MemoryObjectSendStream[Notice]] = attrs.field(init=False, factory=set)

    def _deliver(self, notice: Notice) -> None:
        for stream in list(self._subscribers):
            try:
                stream.send_nowait(notice)
            except anyio.WouldBlock:
                pass  # a hint lost; the subscriber polls too
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(stream)

    async def publish(self, notice: Notice) -> None:
        self._deliver(notice)

    @asynccontextmanager
    async def subscribe(
        self, buffer: int = 256
    ) -> AsyncIterator[MemoryObjectReceiveStream[Notice]]:
        send, receive = anyio.create_memory_object_stream[Notice](
            buffer if buffer > 0 else math.inf
        )
        self._subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()


@attrs.define(kw_only=True, eq=False)
class PostgresBroker(LocalBroker):
    """LISTEN/NOTIFY through a dedicated asyncpg connection (not the SQLAlchemy pool)."""

    dsn: str
    _listen_conn: Any = attrs.field(init=False, default=None)
    _send_conn: Any = attrs.field(init=False, default=None)
    _send_lock: anyio.Lock = attrs.field(init=False, factory=anyio.Lock)

    async def start(self, exit_stack: AsyncExitStack) -> None:
        import asyncpg

        dsn = self.dsn.replace("postgresql+asyncpg://", "postgresql://")
        self._listen_conn = await asyncpg.connect(dsn)
        exit_stack.push_async_callback(self._listen_conn.close)
        self._send_conn = await asyncpg.connect(dsn)
        exit_stack.push_async_callback(self._send_conn.close)
        await self._listen_conn.add_listener(CHANNEL, self._on_notify)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            data = json.loads(payload)
            notice = Notice(str(data["t"]), dict(data.get("d", {})))
        except (ValueError, KeyError, TypeError):
            return
        self._deliver(notice)

    async def publish(self, notice: Notice) -> None:
        payload = json.dumps({"t": notice.topic, "d": notice.data}, separators=(",", ":"))
        if len(payload) > 7900:
            raise ValueError("a notice must stay under NOTIFY's payload limit")
        async with self._send_lock:
            await self._send_conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
