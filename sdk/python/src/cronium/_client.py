"""The synchronous client: one HTTP request per call over ``http.client``, retried with backoff.

``http.client`` rather than ``urllib.request`` on purpose: it never goes through an
``HTTP(S)_PROXY`` from the environment and never follows a redirect, so the bearer token goes
to the runtime API and nowhere else. Heavy modules are imported on the first request, not at
``import cronium`` (see :func:`cronium.preload`).
"""

from __future__ import annotations

import os
import time

from ._errors import CroniumAPIError, CroniumError, CroniumTimeoutError

__all__ = ["Client"]

# typing and collections.abc cost more than the rest of ``import cronium`` together
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

DEFAULT_TIMEOUT = 30.0
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF = 0.25
MAX_BACKOFF = 5.0

#: provisional tool ids and action of the message helpers (tool plugins arrive later)
EMAIL_TOOL = "email"
SLACK_TOOL = "slack"
DISCORD_TOOL = "discord"
SEND_ACTION = "send"

_NO_BODY = object()


class _Retry(Exception):
    """One attempt failed in a way that may succeed on the next."""

    def __init__(self, error: CroniumError) -> None:
        self.error = error


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise CroniumError(f"{name} is not set: is this script running as a Cronium job?")
    return value


class Client:
    """A client of the runtime API for one execution.

    Arguments left out are read from ``CRONIUM_RUNTIME_API``, ``CRONIUM_EXECUTION_TOKEN`` and
    ``CRONIUM_EXECUTION_ID``. Each call makes up to ``attempts`` tries: connection errors,
    timeouts and 5xx answers are retried after ``backoff``, doubling, with jitter; a 4xx
    answer is final. ``timeout`` bounds each socket operation of a try.
    """

    __slots__ = (
        "_host",
        "_https",
        "_port",
        "_prefix",
        "_token",
        "attempts",
        "backoff",
        "base_url",
        "execution_id",
        "timeout",
    )

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        execution_id: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        from urllib.parse import urlsplit

        self.base_url = (base_url or _env("CRONIUM_RUNTIME_API")).rstrip("/")
        token = token or _env("CRONIUM_EXECUTION_TOKEN")
        # a header with a control character would make http.client raise with the value in
        # its message; refuse it here without showing it
        if not token.isascii() or not token.isprintable() or " " in token:
            raise CroniumError("CRONIUM_EXECUTION_TOKEN is malformed")
        self._token = token
        self.execution_id = execution_id or _env("CRONIUM_EXECUTION_ID")
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CroniumError(f"CRONIUM_RUNTIME_API is not an http(s) URL: {self.base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r}, execution_id={self.execution_id!r})"

    # -- the runtime API --------------------------------------------------------------

    def input(self) -> Any:
        """The input of this execution (``{}`` when none)."""
        return self._call("GET", self._execution("input"))

    def output(self, data: Any) -> None:
        """Set this execution's output (any JSON value); the last call wins."""
        self._call("POST", self._execution("output"), {"data": data})

    def get_variable(self, key: str) -> Any:
        """A variable's value, or ``None`` when there is no such variable."""
        try:
            data = self._call("GET", self._execution("variables", key))
        except CroniumAPIError as exc:
            if exc.status_code == 404:
                return None
            raise
        return data.get("value") if isinstance(data, dict) else data

    def set_variable(self, key: str, value: Any) -> None:
        self._call("PUT", self._execution("variables", key), {"value": value})

    def set_condition(self, condition: bool) -> None:
        """Set the condition that a workflow's ON_CONDITION edges test."""
        if not isinstance(condition, bool):
            raise TypeError("set_condition() takes True or False")
        self._call("POST", self._execution("condition"), {"condition": condition})

    def get_condition(self) -> bool:
        return bool(self._call("GET", self._execution("condition")))

    def event(self) -> dict[str, Any]:
        """The context: ``event``, ``execution``, ``workflow``, ``server``, ``user``."""
        data: dict[str, Any] = self._call("GET", self._execution("context"))
        return data

    def execute_tool_action(
        self, tool: str, action: str, config: Mapping[str, Any] | None = None
    ) -> Any:
        """Run an action of a tool plugin; returns the tool's result. Not retried once the
        request may have been delivered (a message must not go out twice)."""
        body = {"tool": tool, "action": action, "config": dict(config or {})}
        return self._call("POST", "/tool-actions/execute", body, idempotent=False)

    def send_email(
        self,
        to: str | Sequence[str] | Mapping[str, Any],
        subject: str | None = None,
        body: str | None = None,
        **extra: Any,
    ) -> Any:
        """Send an email; ``to`` may also be the whole config as one mapping."""
        config = _config(to, "to", subject=subject, body=body, **extra)
        return self.execute_tool_action(EMAIL_TOOL, SEND_ACTION, config)

    def send_slack_message(
        self, message: str | Mapping[str, Any], channel: str | None = None, **extra: Any
    ) -> Any:
        config = _config(message, "message", channel=channel, **extra)
        return self.execute_tool_action(SLACK_TOOL, SEND_ACTION, config)

    def send_discord_message(self, message: str | Mapping[str, Any], **extra: Any) -> Any:
        config = _config(message, "message", **extra)
        return self.execute_tool_action(DISCORD_TOOL, SEND_ACTION, config)

    getVariable = get_variable
    setVariable = set_variable
    setCondition = set_condition
    getCondition = get_condition
    executeToolAction = execute_tool_action
    sendEmail = send_email
    sendSlackMessage = send_slack_message
    sendDiscordMessage = send_discord_message

    # -- HTTP -------------------------------------------------------------------------

    def _execution(self, *parts: str) -> str:
        from urllib.parse import quote

        return "/executions/" + "/".join(quote(p, safe="") for p in (self.execution_id, *parts))

    def _call(
        self, method: str, path: str, body: Any = _NO_BODY, *, idempotent: bool = True
    ) -> Any:
        import json

        payload = None
        if body is not _NO_BODY:
            payload = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                time.sleep(self._delay(attempt - 1))
            try:
                return self._try(method, path, payload, idempotent)
            except _Retry as retry:
                if attempt == self.attempts:
                    raise retry.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, retry: int) -> float:
        import random

        delay = min(MAX_BACKOFF, self.backoff * 2.0 ** (retry - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def _try(self, method: str, path: str, payload: bytes | None, idempotent: bool) -> Any:
        import http.client
        import socket

        connection_class = (
            http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        )
        conn = connection_class(self._host, self._port, timeout=self.timeout)
        headers = {
            "Authorization": "Bearer " + self._token,
            "Accept": "application/json",
            "User-Agent": "cronium-python-sdk",
        }
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._prefix + path, body=payload, headers=headers)
            response = conn.getresponse()
            status, raw = response.status, response.read()
        except (TimeoutError, socket.timeout):  # two classes before Python 3.10
            error: CroniumError = CroniumTimeoutError(
                f"the Cronium runtime API at {self.base_url} did not answer within "
                f"{self.timeout:g} s ({self.attempts} tries)"
            )
            if idempotent:
                raise _Retry(error) from None
            raise error from None
        except (OSError, http.client.HTTPException) as exc:
            error = CroniumError(
                f"cannot reach the Cronium runtime API at {self.base_url} "
                f"({self.attempts} tries): {type(exc).__name__}: {self._scrub(str(exc))}"
            )
            # refused: nothing was delivered, so even a tool action may go again
            if idempotent or isinstance(exc, ConnectionRefusedError):
                raise _Retry(error) from None
            raise error from None
        finally:
            conn.close()
        return self._unwrap(status, raw, idempotent)

    def _unwrap(self, status: int, raw: bytes, idempotent: bool) -> Any:
        import json

        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if 200 <= status < 300 and isinstance(body, dict) and body.get("success") is True:
            return body.get("data")
        code: str | None = None
        message = f"HTTP {status}"
        if isinstance(body, dict):
            code = body.get("error") if isinstance(body.get("error"), str) else None
            message = str(body.get("message") or code or message)
        error = CroniumAPIError(status, self._scrub(message), code)
        if status >= 500 and (idempotent or status == 503):
            raise _Retry(error)
        raise error

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "[token]") if self._token else text


def _config(first: Any, name: str, **fields: Any) -> dict[str, Any]:
    """A tool config from either one mapping (``sendEmail({...})``) or named fields."""
    config = dict(first) if hasattr(first, "keys") else {name: first}
    config.update({k: v for k, v in fields.items() if v is not None})
    return config
