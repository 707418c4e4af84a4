"""Tool actions: no-code actions (send a webhook, a Slack message, an email) that scripts call
through the runtime API (``POST /tool-actions/execute``) and events can run directly.

Tools are plugins, registered like executors::

    @hookimpl
    def cronium_register_tools(register):
        register.add("webhook", WebhookTool())

A tool is any object with ``async def execute(action, config, context) -> result``; it
raises :class:`~cronium_core.errors.ValidationError` for a bad action or config (400) and
:class:`ToolFailed` when the outside service refused (502). Results must be JSON-able.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import pluggy

from .errors import CroniumError, NotFound

__all__ = ["Tool", "ToolContext", "ToolFailed", "ToolNotFound", "ToolRegistry", "load_tools"]


class ToolNotFound(NotFound):
    kind = "tool"


class ToolFailed(CroniumError):
    """The tool ran but the service behind it failed (a 5xx, a refused connection)."""


@attrs.frozen(kw_only=True)
class ToolContext:
    """Who asks: the execution calling the tool (never secrets)."""

    job_id: str
    event_id: str
    owner: str


class Tool(Protocol):
    async def execute(
        self, action: str, config: Mapping[str, Any], context: ToolContext
    ) -> Any: ...


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def add(self, name: str, tool: Tool) -> None:
        if name in self._tools:
            raise ValueError(f"tool {name!r} registered twice")
        self._tools[name] = tool

    def names(self) -> list[str]:
        return sorted(self._tools)

    async def execute(
        self, tool: str, action: str, config: Mapping[str, Any], context: ToolContext
    ) -> Any:
        try:
            implementation = self._tools[tool]
        except KeyError:
            raise ToolNotFound(tool) from None
        return await implementation.execute(action, config, context)


def load_tools(pm: pluggy.PluginManager, into: ToolRegistry | None = None) -> ToolRegistry:
    """Fill ``into`` (or a new registry) with the tools that plugins register."""
    registry = into if into is not None else ToolRegistry()
    pm.hook.cronium_register_tools(register=registry)
    return registry
