"""A write of this process made while another process holds SQLite's write lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def write_while_locked(
    path: str, write: Callable[[], Awaitable[T]], *, hold: float = 0.3
) -> tuple[T, int]:
    """Run ``write`` while another connection holds the write lock for ``hold`` seconds:
    checks that it has not gone through meanwhile, then lets it. Returns what it returned and
    how many 10 ms ticks the event loop made meanwhile (it must not have been held up)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's write transaction
        results: list[T] = []
        ticks = 0

        async def run() -> None:
            results.append(await write())

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.move_on_after(hold):
                while True:
                    await anyio.sleep(0.01)
                    ticks += 1
            assert results == []  # still waiting for the lock...
            other.execute("COMMIT")  # ...which is free now
            with anyio.fail_after(10):
                while not results:
                    await anyio.sleep(0.01)
    finally:
        other.close()
    return results[0], ticks
