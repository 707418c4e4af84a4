"""The http executor against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cronium_core.errors import ValidationError
from cronium_core.events import HttpRequest, Script
from cronium_core.executors import ExecutionRequest
from cronium_core.jobs import Stream
from cronium_executors.http import LOGGED_BODY_BYTES, HttpExecutor

pytestmark = pytest.mark.anyio

SECRET = "Bearer s3cr3t-t0ken"
BIG = "".join(f"line {i:06d}\n" for i in range(20_000))  # 240 000 bytes


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        if self.path == "/echo":
            echo = {
                "method": self.command,
                "body": body,
                "content_type": self.headers.get("Content-Type"),
                "token": self.headers.get("X-Token"),
            }
            self._answer(200, json.dumps(echo).encode(), "application/json")
        elif self.path.startswith("/status/"):
            status = int(self.path.rsplit("/", 1)[1])
            self._answer(status, f"status {status}\n".encode(), "text/plain")
        elif self.path == "/text":
            self._answer(200, b"line1\r\nline2\nlast", "text/plain; charset=utf-8")
        elif self.path == "/latin1":
            self._answer(200, "caf\xe9\n".encode("latin-1"), "text/plain; charset=iso-8859-1")
        elif self.path == "/bad-json":
            self._answer(200, b"{not json", "application/json")
        elif self.path == "/big":
            self._answer(200, BIG.encode(), "text/plain")
        elif self.path == "/slow":
            time.sleep(1)
            self._answer(200, b"late", "text/plain")
        else:
            self._answer(404, b"no such thing", "text/plain")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that stop reading (timeouts, capped bodies) are part of the tests


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.05,), name="test http server", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
async def executor() -> AsyncIterator[HttpExecutor]:
    async with AsyncExitStack() as stack:
        http = HttpExecutor({})
        await http.start(stack)
        yield http


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[Stream, str]] = []

    async def __call__(self, stream: Stream, text: str) -> None:
        self.lines.append((stream, text))

    def of(self, stream: Stream) -> list[str]:
        return [text for s, text in self.lines if s is stream]


def request(action: HttpRequest) -> ExecutionRequest:
    return ExecutionRequest(
        job_id="job-1",
        attempt=1,
        event_id="event-1",
        event_name="ping",
        action=action,
        input=None,
        env={},
        timeout=30,
    )


async def test_get_text(executor: HttpExecutor, server: str) -> None:
    log = Log()
    outcome = await executor.execute(request(HttpRequest(url=f"{server}/text")), log)
    assert outcome.succeeded
    assert outcome.output == "line1\r\nline2\nlast"
    [status_line] = log.of(Stream.SYSTEM)
    assert re.fullmatch(r"HTTP 200 OK \(\d+ ms\)", status_line)
    assert log.of(Stream.STDOUT) == ["line1", "line2", "last"]
    assert log.lines[0] == (Stream.SYSTEM, status_line), "the status comes first"


async def test_post_with_body_and_headers_gives_json(executor: HttpExecutor, server: str) -> None:
    action = HttpRequest(
        url=f"{server}/echo",
        method="post",
        headers={"Content-Type": "application/json", "X-Token": "abc"},
        body='{"a": 1}',
    )
    outcome = await executor.execute(request(action), Log())
    assert outcome.succeeded
    assert outcome.output == {
        "method": "POST",
        "body": '{"a": 1}',
        "content_type": "application/json",
        "token": "abc",
    }


async def test_request_headers_never_logged(executor: HttpExecutor, server: str) -> None:
    for path in ("/text", "/status/500"):
        log = Log()
        action = HttpRequest(url=f"{server}{path}", headers={"Authorization": SECRET})
        outcome = await executor.execute(request(action), log)
        assert all("s3cr3t" not in text for _, text in log.lines)
        assert "s3cr3t" not in (outcome.error or "")


@pytest.mark.parametrize("value", [f"{SECRET}\r\nX-Evil: 1", f"{SECRET} é"])
async def test_refused_header_values_stay_secret(
    executor: HttpExecutor, server: str, value: str
) -> None:
    log = Log()
    action = HttpRequest(url=f"{server}/text", headers={"Authorization": value})
    outcome = await executor.execute(request(action), log)
    assert outcome.exit_code is None
    assert outcome.error is not None
    assert all("s3cr3t" not in text for _, text in log.lines)
    assert "s3cr3t" not in outcome.error


async def test_unexpected_status(executor: HttpExecutor, server: str) -> None:
    log = Log()
    outcome = await executor.execute(request(HttpRequest(url=f"{server}/status/500")), log)
    assert outcome.exit_code == 1
    assert outcome.error == "unexpected status 500"
    assert outcome.output == "status 500\n"
    assert log.of(Stream.SYSTEM)[0].startswith("HTTP 500 Internal Server Error (")
    assert log.of(Stream.STDOUT) == ["status 500"]


async def test_expected_status(executor: HttpExecutor, server: str) -> None:
    wanted = HttpRequest(url=f"{server}/status/404", expected_status=(404, 410))
    assert (await executor.execute(request(wanted), Log())).succeeded
    only_201 = HttpRequest(url=f"{server}/status/200", expected_status=(201,))
    outcome = await executor.execute(request(only_201), Log())
    assert outcome.exit_code == 1
    assert outcome.error == "unexpected status 200"
    redirect = HttpRequest(url=f"{server}/status/304")
    assert (await executor.execute(request(redirect), Log())).exit_code == 1


async def test_body_decoding(executor: HttpExecutor, server: str) -> None:
    latin1 = await executor.execute(request(HttpRequest(url=f"{server}/latin1")), Log())
    assert latin1.output == "café\n"
    broken = await executor.execute(request(HttpRequest(url=f"{server}/bad-json")), Log())
    assert broken.succeeded
    assert broken.output == "{not json"


async def test_big_body_logged_in_part(executor: HttpExecutor, server: str) -> None:
    log = Log()
    outcome = await executor.execute(request(HttpRequest(url=f"{server}/big")), log)
    assert outcome.output == BIG
    assert "\n".join(log.of(Stream.STDOUT)) == BIG[:LOGGED_BODY_BYTES]
    assert "the first 65536 logged" in log.of(Stream.SYSTEM)[-1]


async def test_output_capped(server: str) -> None:
    async with AsyncExitStack() as stack:
        http = HttpExecutor({"max_response_bytes": 1000})
        await http.start(stack)
        outcome = await http.execute(request(HttpRequest(url=f"{server}/big")), Log())
    assert outcome.output == BIG[:1000]


async def test_connection_refused(executor: HttpExecutor) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = Log()
    outcome = await executor.execute(request(HttpRequest(url=f"http://127.0.0.1:{port}/")), log)
    assert outcome.exit_code is None
    assert outcome.error is not None
    assert "ConnectError" in outcome.error
    assert log.of(Stream.SYSTEM) == [outcome.error]


async def test_timeout(executor: HttpExecutor, server: str) -> None:
    outcome = await executor.execute(request(HttpRequest(url=f"{server}/slow", timeout=0.2)), Log())
    assert outcome.exit_code is None
    assert outcome.error is not None
    assert "ReadTimeout" in outcome.error


async def test_works_without_start(server: str) -> None:
    outcome = await HttpExecutor().execute(request(HttpRequest(url=f"{server}/text")), Log())
    assert outcome.succeeded


def test_can_run_only_http_requests() -> None:
    http = HttpExecutor()
    assert http.can_run(HttpRequest(url="http://127.0.0.1/"))
    assert not http.can_run(Script(language="bash", code="true"))


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match=r"executors\.http\.proxy"):
        HttpExecutor({"proxy": "http://127.0.0.1:3128"})
    with pytest.raises(ValidationError, match="must be a bool or str"):
        HttpExecutor({"verify": 1})
