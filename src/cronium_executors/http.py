"""The ``http`` executor: sends the HTTP request of an event and reports the response.

One :class:`httpx.AsyncClient` (connection pool) serves every job of the executor. A run:

- logs ``HTTP <status> <reason> (<ms> ms)`` on the system stream, then the first 64 KiB of the
  response body, line by line, on stdout;
- succeeds when the status is one of ``expected_status`` (any 2xx when that is empty); any
  other status ends it with exit code 1 and the error ``unexpected status <status>``;
- sets ``Outcome.output`` to the body: parsed when the response says it is JSON, else text
  (at most ``max_response_bytes`` of it);
- ends with exit code None and an error when no response came (refused, unreachable, timed
  out, TLS failure).

Request headers are never logged nor put in errors (they carry tokens), and neither is the URL
(its query string may).

Settings (the config mapping): ``verify`` (bool, or a CA bundle path; default true),
``follow_redirects`` (bool, default false), ``trust_env`` (bool, default true: proxy and CA
variables of the worker's environment apply), ``max_response_bytes`` (int, default 1 MiB).
"""

from __future__ import annotations

import codecs
import contextlib
import http
import json
import time
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import attrs
import httpx

from cronium_core.errors import ValidationError
from cronium_core.events import Action, HttpRequest
from cronium_core.executors import ExecutionRequest, Executor, LogSink, Outcome
from cronium_core.hookspecs import hookimpl
from cronium_core.jobs import Stream
from cronium_core.plugins import ExecutorRegistry

__all__ = ["HttpExecutor", "HttpSettings", "cronium_register_executors"]

#: how much of the body goes to the log
LOGGED_BODY_BYTES = 64 * 1024
USER_AGENT = "Cronium"


@attrs.frozen(kw_only=True)
class HttpSettings:
    verify: bool | str = True
    follow_redirects: bool = False
    trust_env: bool = True
    max_response_bytes: int = 1024 * 1024

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HttpSettings:
        kinds: dict[str, tuple[type, ...]] = {
            "verify": (bool, str),
            "follow_redirects": (bool,),
            "trust_env": (bool,),
            "max_response_bytes": (int,),
        }
        for key, value in config.items():
            if key not in kinds:
                raise ValidationError(f"executors.http.{key}", "is not a setting of it")
            if not isinstance(value, kinds[key]):
                names = " or ".join(kind.__name__ for kind in kinds[key])
                raise ValidationError(f"executors.http.{key}", f"must be a {names}")
        return cls(**config)


def _is_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _text(response: httpx.Response, body: bytes) -> str:
    encoding = response.charset_encoding or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "utf-8"
    return body.decode(encoding, errors="replace")


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        for form in {secret, repr(secret.encode())[2:-1], repr(secret)[1:-1]}:
            if len(form) >= 4:
                text = text.replace(form, "[redacted]")
    return text


def _reason(response: httpx.Response) -> str:
    if response.reason_phrase:
        return response.reason_phrase
    try:
        return http.HTTPStatus(response.status_code).phrase
    except ValueError:
        return ""


class HttpExecutor(Executor):
    """Runs :class:`~cronium_core.events.HttpRequest` actions."""

    name = "http"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.settings = HttpSettings.from_config(config or {})
        self._client: httpx.AsyncClient | None = None

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=self.settings.verify,
            follow_redirects=self.settings.follow_redirects,
            trust_env=self.settings.trust_env,
            headers={"User-Agent": USER_AGENT},
        )

    async def start(self, exit_stack: AsyncExitStack) -> None:
        self._client = await exit_stack.enter_async_context(self._new_client())

    def can_run(self, action: Action) -> bool:
        return isinstance(action, HttpRequest)

    async def execute(self, request: ExecutionRequest, emit: LogSink) -> Outcome:
        action = request.action
        if not isinstance(action, HttpRequest):
            return Outcome(
                exit_code=None, error=f"the http executor cannot run {action.kind} actions"
            )
        if self._client is not None:
            return await self._send(self._client, action, emit)
        async with self._new_client() as client:  # not started: a client for this run only
            return await self._send(client, action, emit)

    async def _send(self, client: httpx.AsyncClient, action: HttpRequest, emit: LogSink) -> Outcome:
        limit = self.settings.max_response_bytes
        started = time.perf_counter()
        try:
            async with client.stream(
                action.method,
                action.url,
                headers=dict(action.headers),
                content=action.body.encode() if action.body is not None else None,
                timeout=action.timeout,
            ) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk[: limit - size])
                    size += len(chunk)
                    if size >= limit:
                        break
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeEncodeError) as exc:
            # a message may quote a header value it refused (h11 does): keep those out
            detail = _redact(str(exc), action.headers.values())
            error = f"{action.method} request failed: {type(exc).__name__}: {detail}"
            await emit(Stream.SYSTEM, error)
            return Outcome(exit_code=None, error=error)
        elapsed_ms = round((time.perf_counter() - started) * 1000)
        body = b"".join(chunks)
        status = response.status_code

        await emit(Stream.SYSTEM, f"HTTP {status} {_reason(response)} ({elapsed_ms} ms)".strip())
        text = _text(response, body)
        logged = _text(response, body[:LOGGED_BODY_BYTES])
        lines = logged.split("\n")
        if lines[-1] == "":
            lines.pop()
        for line in lines:
            await emit(Stream.STDOUT, line.removesuffix("\r"))
        if size > LOGGED_BODY_BYTES:
            note = f"response body: {size} bytes or more, the first {LOGGED_BODY_BYTES} logged"
            await emit(Stream.SYSTEM, note)

        output: Any = text
        if _is_json(response) and size < limit:
            with contextlib.suppress(ValueError):
                output = json.loads(body)
        expected = action.expected_status
        if status in expected or (not expected and 200 <= status < 300):
            return Outcome(exit_code=0, output=output)
        return Outcome(exit_code=1, error=f"unexpected status {status}", output=output)


@hookimpl
def cronium_register_executors(register: ExecutorRegistry) -> None:
    register.add("http", HttpExecutor)
