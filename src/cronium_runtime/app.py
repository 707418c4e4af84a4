"""The runtime API over HTTP (ARCHITECTURE §9): a thin Starlette app around
:class:`cronium_core.runtime.RuntimeService`.

Handlers parse, call the service, serialize. Success is ``{"success": true, "data": ...}``;
every error, ours or Starlette's, is ``{"success": false, "error": "<short>", "message": ...}``
with the status of :func:`error_status` (one exception handler maps the core's error tree).
A refused token always gets the same body, whatever the reason: the reason goes to the log,
the token goes nowhere.

:data:`OPENAPI` describes every route but ``/openapi.json`` itself, which serves it
(``docs/runtime-api.md`` is the prose version; tests keep the three in step). ``/metrics``
serves the app's Prometheus metrics (:mod:`cronium_runtime.metrics`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from cronium_core.errors import (
    Conflict,
    CroniumError,
    ExecutionForbidden,
    InvalidToken,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ValidationError,
)
from cronium_core.jobs import Job
from cronium_core.runtime import BODY_SECONDS, FeatureUnavailable, RuntimeService
from cronium_core.tools import ToolFailed

from .metrics import CONTENT_TYPE, MetricsMiddleware, RuntimeMetrics

__all__ = ["MAX_BODY", "OPENAPI", "create_app", "error_status"]

log = logging.getLogger("cronium.runtime")

MAX_BODY = 1024 * 1024
#: what every refused token gets back, whatever the reason
TOKEN_MESSAGE = "missing, invalid, expired or revoked execution token"


def create_app(
    service: RuntimeService,
    *,
    max_body: int = MAX_BODY,
    body_seconds: float = BODY_SECONDS,
    metrics: RuntimeMetrics | None = None,
) -> Starlette:
    """The runtime API app. ``max_body``: the largest request body taken, in bytes;
    ``body_seconds``: how long a body may take to arrive after its headers (else 408);
    ``metrics``: where to count requests (by default a registry of this app's own), also
    found on ``app.state.metrics``."""
    metrics = metrics if metrics is not None else RuntimeMetrics(service=service)
    api = _Handlers(service, max_body, metrics, body_seconds)
    # the router tries the routes in order (a regex match each): the scripts' calls first
    routes: list[BaseRoute] = [
        Route("/executions/{id}/variables/{key}", _Endpoint(api.variable), methods=["GET", "PUT"]),
        Route("/executions/{id}/input", _Endpoint(api.get_input), methods=["GET"]),
        Route("/executions/{id}/output", _Endpoint(api.set_output), methods=["POST"]),
        Route("/executions/{id}/condition", _Endpoint(api.get_condition), methods=["GET"]),
        Route("/executions/{id}/condition", _Endpoint(api.set_condition), methods=["POST"]),
        Route("/executions/{id}/context", _Endpoint(api.context), methods=["GET"]),
        Route("/tool-actions/execute", _Endpoint(api.execute_tool_action), methods=["POST"]),
        Route("/health", _Endpoint(_health), methods=["GET"]),
        Route("/metrics", _Endpoint(api.metrics), methods=["GET"]),
        Route("/openapi.json", _Endpoint(_openapi), methods=["GET"]),
    ]
    app = _RuntimeApp(
        routes=routes,
        middleware=[Middleware(MetricsMiddleware, metrics=metrics, routes=routes)],
        exception_handlers={
            CroniumError: _core_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
    app.state.runtime = service
    app.state.metrics = metrics
    app.metrics = metrics
    for route in routes:  # the scripts' calls, served straight (see _RuntimeApp)
        if isinstance(route, Route) and route.path.startswith("/executions/{id}/"):
            assert isinstance(route.app, _Endpoint) and route.methods
            parts = route.path.split("/")
            for method in route.methods - {"HEAD"}:
                app.direct[(method, len(parts), parts[3])] = (route.path, route.app)
    return app


class _RuntimeApp(Starlette):
    """Starlette, but for the scripts' own calls (``/executions/{id}/…``, with a method that
    the route takes), which skip the router and the middleware stack: the same endpoints,
    exception handlers and request metrics, called straight. That stack (the server-error
    and exception middleware, the router's regex, the metrics middleware's wrapped ``send``)
    cost ~13 µs per call, as much as a cached variable read itself. Anything else (another
    path or method, a trailing slash, a root path) goes through Starlette."""

    #: (method, number of path segments, the segment after the id) -> (template, endpoint)
    direct: dict[tuple[str, int, str], tuple[str, _Endpoint]]
    metrics: RuntimeMetrics

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            parts = scope["path"].split("/")
            if 4 <= len(parts) <= 5 and parts[1] == "executions" and parts[2] and parts[-1]:
                hit = self.direct.get((scope["method"], len(parts), parts[3]))
                if hit is not None:
                    params = {"id": parts[2]}
                    if len(parts) == 5:
                        params["key"] = parts[4]
                    await self._direct(hit, params, scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    async def _direct(
        self,
        hit: tuple[str, _Endpoint],
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """What the stack does for one of these calls: the handler's answer, or its error's
        (``_core_error``, ``_http_error``; anything else a 500, then raised for the server to
        log, as ``ServerErrorMiddleware`` does), counted in the request metrics like
        ``MetricsMiddleware`` counts it."""
        template, endpoint = hit
        scope["app"] = self
        scope["path_params"] = params
        started = time.perf_counter()
        request = Request(scope, receive)
        status: int | None = None
        try:
            try:
                response = await endpoint.handler(request)
            except CroniumError as exc:
                response = await _core_error(request, exc)
            except HTTPException as exc:
                response = await _http_error(request, exc)
            status = response.status_code
            await response(scope, receive, send)
        except anyio.get_cancelled_exc_class():
            if status is not None:
                self._observe(scope, template, status, started)
            raise
        except Exception as exc:
            if status is None:  # nothing sent: the 500 answer
                await (await _server_error(request, exc))(scope, receive, send)
            self._observe(scope, template, status or 500, started)
            raise
        self._observe(scope, template, status, started)

    def _observe(self, scope: Scope, template: str, status: int, started: float) -> None:
        self.metrics.observe(scope["method"], template, status, time.perf_counter() - started)


class _Endpoint:
    """A ``handler(request) -> response`` as a plain ASGI app. Starlette would wrap a function
    endpoint in a second layer of exception handling per request; the app's own
    (``ExceptionMiddleware``, with this app's handlers) catches whatever a handler raises just
    as well, and the whole API answers before it sends anything, so nothing is lost."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


# -- responses -----------------------------------------------------------------------


#: what JSONResponse.render does, with the encoder built once (json.dumps builds one per call
#: when given options)
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        # a lone surrogate (an error message quoting a bad name) as the JSON escape \udXXX
        return _encode(content).encode("utf-8", "backslashreplace")


_DONE = b'{"success":true,"data":null}'


def _ok(data: Any = None) -> Response:
    if data is None:
        return Response(_DONE, media_type="application/json")
    return _JSON({"success": True, "data": data})


def _error(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"success": False, "error": error, "message": message}
    return _JSON(body, status_code=status, headers=headers)


def error_status(exc: CroniumError) -> tuple[int, str]:
    """The HTTP status and short error code of a core error."""
    for kind, status, code in _STATUSES:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal_error"


_STATUSES: list[tuple[type[CroniumError], int, str]] = [
    (InvalidToken, 401, "unauthorized"),
    (ExecutionForbidden, 403, "forbidden"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (ValidationError, 400, "bad_request"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (RateLimited, 429, "rate_limited"),
    (RequestTimeout, 408, "request_timeout"),
    (FeatureUnavailable, 501, "not_implemented"),
    (ToolFailed, 502, "tool_failed"),
]


async def _core_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CroniumError)
    status, code = error_status(exc)
    headers: dict[str, str] = {}
    message = str(exc)
    if isinstance(exc, InvalidToken):
        message = TOKEN_MESSAGE
        headers["WWW-Authenticate"] = 'Bearer realm="cronium-runtime"'
    elif isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif status == 500:
        log.error("runtime API: %s on %s %s", type(exc).__name__, request.method,
                  request.url.path)  # fmt: skip
        message = "internal error"
    return _error(status, code, message, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    return _error(500, "internal_error", "internal error")


# -- request parsing -----------------------------------------------------------------


def _header(request: Request, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), straight from the ASGI scope: no
    Headers object per call."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def _bearer(request: Request) -> str | None:
    header = _header(request, b"authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


async def _json_object(request: Request, max_body: int) -> dict[str, Any]:
    length = _header(request, b"content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise ValidationError("Content-Length", "is not a number")
        if int(length) > max_body:
            raise PayloadTooLarge(max_body)
    body = await _read_body(request, max_body)
    try:
        # as json.loads takes bytes: UTF-8, -16 or -32, found from the first bytes
        value = _decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, RecursionError):
        raise ValidationError("body", "is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValidationError("body", "must be a JSON object")
    return value


async def _read_body(request: Request, max_body: int) -> bytes:
    """The request's body, read from the ASGI messages (what ``Request.stream`` does, without
    an async generator around it; no handler reads a body twice). The declared length may be
    absent (chunked) or wrong: what actually arrives is counted."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise PayloadTooLarge(max_body)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _field(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise ValidationError(name, "is required")
    return body[name]


# -- handlers ------------------------------------------------------------------------


async def _health(request: Request) -> Response:
    return _ok({"status": "ok"})


async def _openapi(request: Request) -> Response:
    return _JSON(OPENAPI)


class _Handlers:
    def __init__(
        self,
        service: RuntimeService,
        max_body: int,
        metrics: RuntimeMetrics,
        body_seconds: float,
    ) -> None:
        self.service = service
        self.max_body = max_body
        self.body_seconds = body_seconds
        self._metrics = metrics

    async def metrics(self, request: Request) -> Response:
        return Response(await self._metrics.render(), media_type=CONTENT_TYPE)

    async def _job(self, request: Request) -> Job:
        return await self.service.authorize(_bearer(request), request.path_params["id"])

    async def _job_and_body(
        self, request: Request, execution_id: str | None
    ) -> tuple[Job, dict[str, Any]]:
        """The job and the JSON body of a call that sends one: the token checked before the
        body is read, and again if the body was slow to come (``authorize_with_body``)."""
        return await self.service.authorize_with_body(
            _bearer(request), execution_id, functools.partial(self._body, request)
        )

    async def _body(self, request: Request) -> dict[str, Any]:
        """The JSON body, which must arrive within ``body_seconds`` of the headers: a body
        held back holds memory (uvicorn has no such limit of its own)."""
        try:
            async with asyncio.timeout(self.body_seconds):
                return await _json_object(request, self.max_body)
        except TimeoutError:
            raise RequestTimeout(self.body_seconds) from None

    async def get_input(self, request: Request) -> Response:
        job = await self._job(request)
        return _ok(await self.service.get_input(job))

    async def set_output(self, request: Request) -> Response:
        job, body = await self._job_and_body(request, request.path_params["id"])
        await self.service.set_output(job, _field(body, "data"), token=_bearer(request))
        return _ok()

    async def get_condition(self, request: Request) -> Response:
        job = await self._job(request)
        return _ok(await self.service.get_condition(job))

    async def set_condition(self, request: Request) -> Response:
        job, body = await self._job_and_body(request, request.path_params["id"])
        await self.service.set_condition(job, _field(body, "condition"))
        return _ok()

    async def context(self, request: Request) -> Response:
        job = await self._job(request)
        return _ok(await self.service.context(job))

    async def variable(self, request: Request) -> Response:
        key = request.path_params["key"]
        if request.method == "GET":
            return _ok(await self.service.get_variable(await self._job(request), key))
        job, body = await self._job_and_body(request, request.path_params["id"])
        secret = body.get("secret")
        if secret is not None and not isinstance(secret, bool):
            raise ValidationError("secret", "must be true or false")
        await self.service.set_variable(job, key, _field(body, "value"), secret=secret)
        return _ok()

    async def execute_tool_action(self, request: Request) -> Response:
        job, body = await self._job_and_body(request, None)
        for name in ("tool", "action"):
            if not isinstance(_field(body, name), str) or not body[name]:
                raise ValidationError(name, "must be a non-empty string")
        config = body.get("config", body.get("params", {}))
        if not isinstance(config, dict):
            raise ValidationError("config", "must be an object")
        return _ok(await self.service.tool_action(job, body["tool"], body["action"], config))


# -- the OpenAPI document ------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{name}"}


def _success(data: dict[str, Any], description: str = "done") -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["success", "data"],
                    "properties": {"success": {"const": True}, "data": data},
                }
            }
        },
    }


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _ref(f"responses/E{s}") for s in sorted(statuses)}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
       "description": "the execution (job) id: `CRONIUM_EXECUTION_ID`, the token's "
                      "subject"}  # fmt: skip
_KEY = {"name": "key", "in": "path", "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 128,
                   "pattern": "^[A-Za-z0-9_.-]+$"},
        "description": "1-128 of `A-Z a-z 0-9 _ . -`; may not start with CRONIUM_, SYSTEM_, "
                       "NODE_, PATH or HOME (in any case)"}  # fmt: skip
#: what every route behind a token may answer besides its own errors
_TOKEN = (401, 429, 500)
#: ... and every route of one execution: another execution's id, or no route at all
_EXECUTION = (*_TOKEN, 403, 404)
#: ... and every route that reads a body
_BODY = (400, 408, 413)
_ERROR_TEXT = {
    400: "bad request: a body that is not a JSON object, a missing field, a wrong type, a bad "
    "variable key, a value that cannot be stored (NaN, NUL, nesting over 100 levels), or a bad "
    "tool action or config",
    401: "missing, invalid, expired or revoked execution token (always the same message); "
    "with `WWW-Authenticate: Bearer`",
    403: "the token belongs to another execution",
    404: "not found: the variable, the tool or the event; or no route at this path (an id "
    "or key holding '/')",
    408: "the request body did not arrive within 10 s of its headers",
    409: "the variable is being written by someone else at the same moment; try again",
    413: "request body over the limit (1 MiB by default)",
    429: "too many requests from this execution (or over 16 of its bodies arriving at once); "
    "`Retry-After` says when to try again",
    500: "internal error (details in the server's log only)",
    501: "this runtime API was set up without variables or without tools",
    502: "the tool ran, but the service behind it failed (a 5xx answer, no connection)",
}
#: the statuses of the error responses that carry a header
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer ...`"}},
    429: {"Retry-After": {"schema": {"type": "integer", "minimum": 1},
                          "description": "seconds"}},
}  # fmt: skip

_VALUE_DOC = "any JSON value"

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Cronium runtime API",
        "version": "1",
        "description": "What a running script may read and write about its own execution. "
        "Authenticate with `Authorization: Bearer $CRONIUM_EXECUTION_TOKEN`. Every JSON "
        'answer is `{"success": true, "data": ...}` or `{"success": false, "error": '
        '"<code>", "message": "<detail>"}`. See docs/runtime-api.md.',
    },
    "security": [{"executionToken": []}],
    "paths": {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "liveness",
                "security": [],
                "responses": {
                    "200": _success(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                        "the server is up",
                    )
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics: requests by route and status, variable cache "
                "hits and misses, jobs by status",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/executions/{id}/input": {
            "parameters": [_ID],
            "get": {
                "operationId": "getInput",
                "summary": "the execution's input ({} when none)",
                "responses": {"200": _success({}), **_errors(*_EXECUTION)},
            },
        },
        "/executions/{id}/output": {
            "parameters": [_ID],
            "post": {
                "operationId": "setOutput",
                "summary": "set the execution's output (the last one wins); the owner's "
                "secrets in it are masked",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"data": {"description": _VALUE_DOC}},
                    }
                ),
                "responses": {"200": _success({"type": "null"}), **_errors(*_EXECUTION, *_BODY)},
            },
        },
        "/executions/{id}/condition": {
            "parameters": [_ID],
            "get": {
                "operationId": "getCondition",
                "summary": "the condition the script set (false when unset)",
                "responses": {"200": _success({"type": "boolean"}), **_errors(*_EXECUTION)},
            },
            "post": {
                "operationId": "setCondition",
                "summary": "set the condition that ON_CONDITION edges test",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["condition"],
                        "properties": {"condition": {"type": "boolean"}},
                    }
                ),
                "responses": {"200": _success({"type": "null"}), **_errors(*_EXECUTION, *_BODY)},
            },
        },
        "/executions/{id}/context": {
            "parameters": [_ID],
            "get": {
                "operationId": "getContext",
                "summary": "the event, this execution, its workflow run, server and user",
                "responses": {
                    "200": _success(_ref("schemas/Context")),
                    **_errors(*_EXECUTION),
                },
            },
        },
        "/executions/{id}/variables/{key}": {
            "parameters": [_ID, _KEY],
            "get": {
                "operationId": "getVariable",
                "summary": "a variable of the event's owner, a secret decrypted (404 when "
                "there is none)",
                "responses": {
                    "200": _success(_ref("schemas/Variable")),
                    **_errors(*_EXECUTION, 400, 501),
                },
            },
            "put": {
                "operationId": "setVariable",
                "summary": "create or replace a variable of the event's owner",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["value"],
                        "properties": {
                            "value": {"description": _VALUE_DOC},
                            "secret": {
                                "type": "boolean",
                                "description": "encrypt it and mask it in logs (a string of "
                                "4+ characters); omitted: keep the variable's current flag",
                            },
                        },
                    }
                ),
                "responses": {
                    "200": _success({"type": "null"}),
                    **_errors(*_EXECUTION, *_BODY, 409, 501),
                },
            },
        },
        "/tool-actions/execute": {
            "post": {
                "operationId": "executeToolAction",
                "summary": "run an action of a tool plugin for this execution",
                "description": "The execution is the token's own. `params` is a synonym of "
                "`config` (`config` wins when both are given).",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["tool", "action"],
                        "properties": {
                            "tool": {"type": "string", "minLength": 1},
                            "action": {"type": "string", "minLength": 1},
                            "config": {"type": "object"},
                            "params": {"type": "object", "description": "synonym of config"},
                        },
                    }
                ),
                "responses": {
                    "200": _success({"description": "the tool's result"}),
                    **_errors(*_TOKEN, *_BODY, 404, 501, 502),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "executionToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["success", "error", "message"],
                "properties": {
                    "success": {"const": False},
                    "error": {
                        "type": "string",
                        "description": "a short code: bad_request, unauthorized, forbidden, "
                        "not_found, method_not_allowed, conflict, payload_too_large, "
                        "rate_limited, internal_error, not_implemented, tool_failed",
                    },
                    "message": {"type": "string"},
                },
            },
            "Variable": {
                "type": "object",
                "required": ["key", "value"],
                "properties": {"key": {"type": "string"}, "value": {}},
            },
            "Context": {
                "type": "object",
                "required": ["event", "execution", "workflow", "server", "user"],
                "properties": {
                    "event": {
                        "type": "object",
                        "required": ["id", "name", "type", "executor", "runs"],
                        "properties": {
                            "id": {"type": "string"},
                            "name": {"type": "string"},
                            "type": {"enum": ["bash", "python", "node", "http", "tool"]},
                            "executor": {"type": "string"},
                            "runs": {
                                "type": "object",
                                "properties": {
                                    "total": {"type": "integer"},
                                    "succeeded": {"type": "integer"},
                                    "failed": {"type": "integer"},
                                },
                            },
                        },
                    },
                    "execution": {
                        "type": "object",
                        "required": ["id", "attempt", "trigger", "started_at"],
                        "properties": {
                            "id": {"type": "string"},
                            "attempt": {"type": "integer", "minimum": 1},
                            "trigger": {"type": "string"},
                            "started_at": {"type": ["string", "null"], "format": "date-time"},
                        },
                    },
                    "workflow": {
                        "type": ["object", "null"],
                        "properties": {
                            "run_id": {"type": "string"},
                            "node_id": {"type": ["string", "null"]},
                        },
                    },
                    "server": {"type": ["object", "null"]},
                    "user": {
                        "type": "object",
                        "required": ["id"],
                        "properties": {"id": {"type": "string"}},
                    },
                },
            },
        },
        "responses": {
            f"E{status}": {
                "description": text,
                "content": {"application/json": {"schema": _ref("schemas/Error")}},
                **({"headers": _ERROR_HEADERS[status]} if status in _ERROR_HEADERS else {}),
            }
            for status, text in _ERROR_TEXT.items()
        },
    },
}
