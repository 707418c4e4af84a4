"""The async client: the sync client's calls, each run in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from ._client import Client

__all__ = ["AsyncClient"]


class AsyncClient:
    """The same calls as :class:`cronium.Client`, as coroutines; takes the same arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._client = Client(*args, **kwargs)

    def __repr__(self) -> str:
        return "Async" + repr(self._client)

    @property
    def execution_id(self) -> str:
        return self._client.execution_id

    async def input(self) -> Any:
        return await asyncio.to_thread(self._client.input)

    async def output(self, data: Any) -> None:
        await asyncio.to_thread(self._client.output, data)

    async def get_variable(self, key: str) -> Any:
        return await asyncio.to_thread(self._client.get_variable, key)

    async def set_variable(self, key: str, value: Any) -> None:
        await asyncio.to_thread(self._client.set_variable, key, value)

    async def set_condition(self, condition: bool) -> None:
        await asyncio.to_thread(self._client.set_condition, condition)

    async def get_condition(self) -> bool:
        return await asyncio.to_thread(self._client.get_condition)

    async def event(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._client.event)

    async def execute_tool_action(
        self, tool: str, action: str, config: Mapping[str, Any] | None = None
    ) -> Any:
        return await asyncio.to_thread(self._client.execute_tool_action, tool, action, config)

    async def send_email(
        self,
        to: str | Sequence[str] | Mapping[str, Any],
        subject: str | None = None,
        body: str | None = None,
        **extra: Any,
    ) -> Any:
        return await asyncio.to_thread(self._client.send_email, to, subject, body, **extra)

    async def send_slack_message(
        self, message: str | Mapping[str, Any], channel: str | None = None, **extra: Any
    ) -> Any:
        return await asyncio.to_thread(self._client.send_slack_message, message, channel, **extra)

    async def send_discord_message(self, message: str | Mapping[str, Any], **extra: Any) -> Any:
        return await asyncio.to_thread(self._client.send_discord_message, message, **extra)

    getVariable = get_variable
    setVariable = set_variable
    setCondition = set_condition
    getCondition = get_condition
    executeToolAction = execute_tool_action
    sendEmail = send_email
    sendSlackMessage = send_slack_message
    sendDiscordMessage = send_discord_message
