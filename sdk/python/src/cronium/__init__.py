"""Cronium runtime helpers for Python scripts.

::

    import cronium

    data = cronium.input()
    cronium.output({"rows": len(data.get("rows", []))})
    cronium.set_condition(True)
    ctx = cronium.event()          # event, execution (id, attempt, ...), workflow, user

The helpers read ``CRONIUM_RUNTIME_API``, ``CRONIUM_EXECUTION_TOKEN`` and
``CRONIUM_EXECUTION_ID`` when called, never at import: ``import cronium`` is cheap and safe in a
process that forks jobs later. Errors: :class:`CroniumError`, :class:`CroniumAPIError`
(``status_code``, ``message``), :class:`CroniumTimeoutError`. ``cronium.AsyncClient`` has the
same calls as coroutines.
"""

from __future__ import annotations

from ._client import Client
from ._errors import CroniumAPIError, CroniumError, CroniumTimeoutError

TYPE_CHECKING = False  # not typing's: importing typing would double the cost of this import
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from ._aio import AsyncClient

__all__ = [
    "AsyncClient",
    "Client",
    "CroniumAPIError",
    "CroniumError",
    "CroniumTimeoutError",
    "event",
    "executeToolAction",
    "execute_tool_action",
    "getCondition",
    "getVariable",
    "get_condition",
    "get_variable",
    "input",
    "output",
    "preload",
    "sendDiscordMessage",
    "sendEmail",
    "sendSlackMessage",
    "send_discord_message",
    "send_email",
    "send_slack_message",
    "setCondition",
    "setVariable",
    "set_condition",
    "set_variable",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # asyncio is a heavy import that most scripts never need
    if name == "AsyncClient":
        from ._aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'cronium' has no attribute {name!r}")


def preload() -> None:
    """Import now what the first call would import (for a warm pool that forks jobs)."""
    import http.client  # noqa: F401
    import json  # noqa: F401
    import random  # noqa: F401
    import socket  # noqa: F401
    import urllib.parse  # noqa: F401


def _client() -> Client:
    # built per call from the environment: cheap, and right in a forked child
    return Client()


def input() -> Any:
    """The input of this execution (``{}`` when none)."""
    return _client().input()


def output(data: Any) -> None:
    """Set this execution's output (any JSON value); the last call wins."""
    _client().output(data)


def get_variable(key: str) -> Any:
    """A variable's value, or ``None`` when there is no such variable."""
    return _client().get_variable(key)


def set_variable(key: str, value: Any) -> None:
    _client().set_variable(key, value)


def set_condition(condition: bool) -> None:
    """Set the condition that a workflow's ON_CONDITION edges test."""
    _client().set_condition(condition)


def get_condition() -> bool:
    return _client().get_condition()


def event() -> dict[str, Any]:
    """The context: ``event``, ``execution``, ``workflow``, ``server``, ``user``."""
    return _client().event()


def execute_tool_action(tool: str, action: str, config: Mapping[str, Any] | None = None) -> Any:
    return _client().execute_tool_action(tool, action, config)


def send_email(
    to: str | Sequence[str] | Mapping[str, Any],
    subject: str | None = None,
    body: str | None = None,
    **extra: Any,
) -> Any:
    return _client().send_email(to, subject, body, **extra)


def send_slack_message(
    message: str | Mapping[str, Any], channel: str | None = None, **extra: Any
) -> Any:
    return _client().send_slack_message(message, channel, **extra)


def send_discord_message(message: str | Mapping[str, Any], **extra: Any) -> Any:
    return _client().send_discord_message(message, **extra)


getVariable = get_variable
setVariable = set_variable
setCondition = set_condition
getCondition = get_condition
executeToolAction = execute_tool_action
sendEmail = send_email
sendSlackMessage = send_slack_message
sendDiscordMessage = send_discord_message
