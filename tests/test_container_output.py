"""The end of a Podman job's output (``ContainerExecutor._read_rest``): after the job ended,
what the engine's stored log holds beyond the bytes its follow stream gave is added, once and
in the stored order, whatever the frame boundaries; a log still being written, a read that
breaks off and a log that does not begin with what was followed are each handled and reported.

The engine here is a stand-in that answers log reads from a script of answers: the real
Podman cannot be made to break a read off or to lag on demand. The real engines' output is
tested end to end in ``test_container_faults.py`` (E3) and every container test (which fails
on any warning the executor logs about a job's output, see ``tests/containers.py``)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cronium_core.jobs import Stream
from cronium_executors._container_engine import LogWriter
from cronium_executors.container import _Output
from cronium_executors.podman import PodmanExecutor
from tests.test_container_unit import frame

pytestmark = pytest.mark.anyio

CID = "c0ffee" * 10 + "abcd"


def frames(*parts: tuple[int, bytes]) -> bytes:
    return b"".join(frame(n, d) for n, d in parts)


class Breaks(io.RawIOBase):
    """A log stream whose connection breaks after ``at`` bytes."""

    def __init__(self, data: bytes, at: int) -> None:
        self.data, self.at, self.pos = data, at, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.pos >= self.at:
            raise ConnectionResetError("connection broken")
        chunk = self.data[self.pos : min(self.at, self.pos + (size if size >= 0 else 1 << 20))]
        self.pos += len(chunk)
        return chunk


class StoredLogs:
    """Answers the executor's stored-log reads in turn, from ``answers`` (bytes, or a
    stream); the last answer repeats."""

    def __init__(self, *answers: bytes | io.RawIOBase) -> None:
        self.answers = list(answers)
        self.reads = 0

    def container_logs(self, cid: str, follow: bool) -> Any:
        assert cid == CID and not follow
        answer = self.answers[min(self.reads, len(self.answers) - 1)]
        self.reads += 1
        return io.BytesIO(answer) if isinstance(answer, bytes) else answer


class Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[Stream, str]] = []

    async def __call__(self, stream: Stream, text: str) -> None:
        self.lines.append((stream, text))

    def on(self, stream: Stream) -> list[str]:
        return [text for s, text in self.lines if s is stream]


def executor(logs: StoredLogs) -> PodmanExecutor:
    ex = PodmanExecutor({})
    ex._backend = logs  # type: ignore[assignment]
    return ex


def find_writer(child: subprocess.Popen[bytes]) -> LogWriter:
    """The child as a log writer, once it runs its own command line (after its exec)."""
    deadline = time.monotonic() + 10
    while (writer := LogWriter.find(child.pid, CID)) is None:
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.01)
    return writer


@pytest.fixture
def exited_writer() -> Iterator[LogWriter]:
    """A real process that names the container and has exited (conmon, done writing)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)", CID])
    writer = find_writer(child)
    assert writer.running()
    child.wait()
    yield writer
    writer.close()


async def followed(sink: Sink, *parts: tuple[int, bytes], budget: int = 1 << 20) -> _Output:
    output = _Output(sink, budget, digests=True)
    for number, data in parts:
        await output.feed(number, data)
    return output


STORED = frames(
    (1, b"one\ntw"), (2, b"err"), (1, b"o\nthr"), (2, b"or one\n"), (1, b"ee\n"), (2, b"e2\n")
)


async def test_the_rest_follows_the_followed_bytes_once_whatever_the_frames(
    exited_writer: LogWriter,
) -> None:
    sink = Sink()
    # the follow stream gave "one\nt" and "er", in frames unlike the stored log's
    output = await followed(sink, (1, b"one\n"), (1, b"t"), (2, b"er"))
    logs = StoredLogs(STORED)
    await executor(logs)._read_rest(CID, output, exited_writer)
    await output.finish()
    assert sink.on(Stream.STDOUT) == ["one", "two", "three"]
    assert sink.on(Stream.STDERR) == ["error one", "e2"]
    assert sink.on(Stream.SYSTEM) == []
    # the writer had exited: one read counts the log, the next feeds it
    assert logs.reads == 2


async def test_a_log_still_written_is_fed_once_two_reads_agree(caplog: Any) -> None:
    sink = Sink()
    output = await followed(sink, (1, b"one\n"))
    early = frames((1, b"one\ntw"))
    logs = StoredLogs(early, STORED)
    # no writer to watch (a remote engine): the log is read until it holds still
    await executor(logs)._read_rest(CID, output, None)
    await output.finish()
    assert sink.on(Stream.STDOUT) == ["one", "two", "three"]
    assert sink.on(Stream.STDERR) == ["error one", "e2"]
    assert logs.reads == 4  # early, stored, stored (agrees), stored (fed)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_read_that_breaks_off_is_started_over_from_where_the_output_got(
    exited_writer: LogWriter,
) -> None:
    sink = Sink()
    output = await followed(sink, (1, b"one\n"))
    # the feeding read breaks inside the 4th frame: what came before it was already fed
    logs = StoredLogs(STORED, Breaks(STORED, len(frames(*[(1, b"one\ntw"), (2, b"err")])) + 30))
    logs.answers.append(STORED)
    await executor(logs)._read_rest(CID, output, exited_writer)
    await output.finish()
    assert sink.on(Stream.STDOUT) == ["one", "two", "three"]
    assert sink.on(Stream.STDERR) == ["error one", "e2"]
    assert sink.on(Stream.SYSTEM) == []


async def test_a_stored_log_unlike_the_followed_bytes_is_reported(
    exited_writer: LogWriter, caplog: Any
) -> None:
    sink = Sink()
    output = await followed(sink, (1, b"ONE\n"))
    await executor(StoredLogs(STORED))._read_rest(CID, output, exited_writer)
    await output.finish()
    assert sink.on(Stream.SYSTEM) == [
        "the engine's stored log differs from the output followed live"
    ]
    assert any("does not begin with the output followed" in r.getMessage() for r in caplog.records)
    # what lies beyond is still added, as stored
    assert sink.on(Stream.STDOUT) == ["ONE", "two", "three"]


async def test_a_log_that_cannot_be_read_is_reported(exited_writer: LogWriter) -> None:
    sink = Sink()
    output = await followed(sink, (1, b"one\n"))
    await executor(StoredLogs(Breaks(STORED, 0)))._read_rest(CID, output, exited_writer)
    assert sink.on(Stream.STDOUT) == ["one"]
    [note] = sink.on(Stream.SYSTEM)
    assert note.startswith("the end of the job's output may be missing: its log could not be read")


async def test_feeding_stops_when_the_output_is_full(exited_writer: LogWriter) -> None:
    sink = Sink()
    output = await followed(sink, (1, b"one\n"), budget=8)
    many = frames((1, b"one\n"), *[(1, b"line %d\n" % i) for i in range(1000)])
    logs = StoredLogs(many)
    await executor(logs)._read_rest(CID, output, exited_writer)
    await output.finish()
    assert sink.on(Stream.STDOUT) == ["one", "line 0"]
    assert sink.on(Stream.SYSTEM) == ["output truncated: the job wrote more than 8 bytes"]


def test_a_log_writer_is_known_by_its_command_line() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", CID])
    try:
        writer = find_writer(child)
        assert writer.running()
        assert writer.wait(0.05) is False  # still writing
        # the same pid naming another container is not this one's writer
        assert LogWriter.find(child.pid, "another" + CID[7:]) is None
    finally:
        child.kill()
        child.wait()
    assert writer.wait(5) is True
    writer.close()
    assert LogWriter.find(child.pid, CID) is None  # gone
    assert LogWriter.find(0, CID) is None
