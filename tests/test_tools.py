"""Tool actions: the registry (a pluggy hook, like executors) and the built-in webhook tool
against a real local HTTP server that records what it received."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cronium_core.errors import ValidationError
from cronium_core.plugins import make_plugin_manager
from cronium_core.tools import ToolContext, ToolFailed, ToolNotFound, load_tools
from cronium_runtime.server import serve

pytestmark = pytest.mark.anyio
CTX = ToolContext(job_id="j1", event_id="e1", owner="alice")


class Recorder:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.url = ""

    async def hook(self, request: Request) -> Response:
        self.received.append(
            {
                "method": request.method,
                "path": request.url.path,
                "headers": dict(request.headers),
                "body": await request.body(),
            }
        )
        if request.url.path == "/broken":
            return Response("down", status_code=503)
        return JSONResponse({"ok": True}, status_code=201 if request.method == "POST" else 200)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = Starlette(routes=[Route("/{path:path}", rec.hook, methods=["GET", "POST", "PUT"])])
    async with anyio.create_task_group() as tg:
        rec.url = await tg.start(partial(serve, app))
        yield rec
        tg.cancel_scope.cancel()


async def test_webhook_tool_is_registered_through_the_plugin_hook(recorder: Recorder) -> None:
    tools = load_tools(make_plugin_manager())
    assert "webhook" in tools.names()
    result = await tools.execute(
        "webhook",
        "send",
        {
            "url": recorder.url + "/hooks/a?x=1",
            "json": {"text": "hi"},
            "headers": {"X-Token": "s3cret"},
        },
        CTX,
    )
    assert result == {"status": 201, "body": '{"ok":true}'}
    [got] = recorder.received
    assert got["method"] == "POST" and got["path"] == "/hooks/a"
    assert got["body"] == b'{"text":"hi"}' and got["headers"]["x-token"] == "s3cret"


async def test_webhook_errors_are_clear(recorder: Recorder) -> None:
    tools = load_tools(make_plugin_manager())
    with pytest.raises(ToolNotFound):
        await tools.execute("fax", "send", {}, CTX)
    for config, field in (
        ({"url": "file:///etc/passwd"}, "config.url"),
        ({"url": recorder.url, "method": "TRACE"}, "config.method"),
        ({"url": recorder.url, "headers": {"a": 1}}, "config.headers"),
        ({"url": recorder.url, "timeout": 0}, "config.timeout"),
    ):
        with pytest.raises(ValidationError) as info:
            await tools.execute("webhook", "send", config, CTX)
        assert info.value.field == field
    with pytest.raises(ValidationError, match="no action"):
        await tools.execute("webhook", "dance", {"url": recorder.url}, CTX)
    with pytest.raises(ToolFailed, match="503"):
        await tools.execute("webhook", "send", {"url": recorder.url + "/broken"}, CTX)
    with pytest.raises(ToolFailed, match="ConnectError"):
        await tools.execute("webhook", "send", {"url": "http://127.0.0.1:9/"}, CTX)
