"""Turning a byte stream into log lines: split on newlines, cap the length, decode leniently."""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.abc import ByteReceiveStream

from cronium_core.executors import LogSink
from cronium_core.jobs import Stream

#: a longer line is cut to this many bytes (at a character boundary) and marked
MAX_LINE_BYTES = 64 * 1024
TRUNCATION_MARKER = " …[line truncated]"


def _decode(data: bytes) -> str:
    if data.endswith(b"\r"):
        data = data[:-1]
    return data.decode("utf-8", errors="replace")


def _cut(data: bytes, limit: int) -> bytes:
    """The first ``limit`` bytes, without splitting a UTF-8 sequence at the end."""
    end = limit
    # step back over continuation bytes (0b10xxxxxx) so the last character stays whole
    while end > limit - 4 and end > 0 and data[end] & 0xC0 == 0x80:
        end -= 1
    return data[:end]


class LineSplitter:
    """Feed it chunks, get back complete lines (without the newline); ``finish`` at the end.

    A line longer than ``limit`` bytes comes out once, cut, with :data:`TRUNCATION_MARKER`
    appended; the rest of it is dropped up to its newline. Invalid UTF-8 becomes U+FFFD.
    """

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._limit = limit
        self._pending = bytearray()
        self._skipping = False  # inside the dropped tail of a cut line

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline == -1:
                self._hold(data[start:], lines)
                return lines
            if self._skipping:
                self._skipping = False
            else:
                self._pending += data[start:newline]
                if len(self._pending) > self._limit:
                    lines.append(self._truncated())
                else:
                    lines.append(_decode(bytes(self._pending)))
            self._pending.clear()
            start = newline + 1

    def finish(self) -> list[str]:
        """The last line when the stream did not end with a newline."""
        lines: list[str] = []
        if self._pending and not self._skipping:
            lines.append(_decode(bytes(self._pending)))
        self._pending.clear()
        self._skipping = False
        return lines

    def _hold(self, tail: bytes, lines: list[str]) -> None:
        if self._skipping:
            return
        self._pending += tail
        if len(self._pending) > self._limit:
            lines.append(self._truncated())
            self._pending.clear()
            self._skipping = True

    def _truncated(self) -> str:
        head = _cut(bytes(self._pending), self._limit)
        return head.decode("utf-8", errors="replace") + TRUNCATION_MARKER


async def pump_lines(
    source: ByteReceiveStream,
    stream: Stream,
    emit: LogSink,
    on_chunk: Callable[[], None] | None = None,
) -> None:
    """Read ``source`` to its end and emit every line on ``stream``, in order."""
    splitter = LineSplitter()
    while True:
        try:
            chunk = await source.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            break
        if on_chunk is not None:
            on_chunk()
        for line in splitter.feed(chunk):
            await emit(stream, line)
    for line in splitter.finish():
        await emit(stream, line)
