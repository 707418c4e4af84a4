"""The built-in ``webhook`` tool: an HTTP request to a URL the script names.

Actions: ``send`` (alias ``post``). Config: ``url`` (http/https), ``method`` (default POST),
``headers`` (strings), and either ``json`` (any JSON value) or ``body`` (text); ``timeout``
(seconds, default 10, at most 60). Result: ``{"status": int, "body": text}`` (the first
64 KiB). A 5xx answer or an unreachable URL is a :class:`~cronium_core.tools.ToolFailed`.

This is a sanctioned way out of a job: a container job with no egress can still call a
webhook through the runtime API, and every call is logged with the job that made it (never
its headers, which may carry credentials).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx

from cronium_core.errors import ValidationError
from cronium_core.hookspecs import hookimpl
from cronium_core.tools import ToolContext, ToolFailed, ToolRegistry

log = logging.getLogger("cronium.tools.webhook")

MAX_BODY = 64 * 1024
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class WebhookTool:
    async def execute(
        self, action: str, config: Mapping[str, Any], context: ToolContext
    ) -> dict[str, Any]:
        if action not in ("send", "post"):
            raise ValidationError("action", f"the webhook tool has no action {action!r} (send)")
        url = config.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValidationError("config.url", "must be an http:// or https:// URL")
        method = str(config.get("method", "POST")).upper()
        if method not in METHODS:
            raise ValidationError("config.method", f"{method!r} is not one of {METHODS}")
        headers = config.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValidationError("config.headers", "must map header names to strings")
        timeout = config.get("timeout", 10)
        if not isinstance(timeout, int | float) or not 0 < timeout <= 60:
            raise ValidationError("config.timeout", "must be a number of seconds in (0, 60]")
        kwargs: dict[str, Any] = {"headers": dict(headers)}
        if "json" in config:
            kwargs["json"] = config["json"]
        elif "body" in config:
            if not isinstance(config["body"], str):
                raise ValidationError("config.body", "must be text (use json for objects)")
            kwargs["content"] = config["body"]
        log.info("webhook %s %s for job %s", method, url.split("?")[0], context.job_id)
        try:
            async with httpx.AsyncClient(
                timeout=timeout, follow_redirects=False, trust_env=False
            ) as client:
                response = await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ToolFailed(
                f"webhook to {url.split('?')[0]} failed: {type(exc).__name__}"
            ) from None
        if response.status_code >= 500:
            raise ToolFailed(f"webhook answered {response.status_code}")
        return {"status": response.status_code, "body": response.text[:MAX_BODY]}


@hookimpl
def cronium_register_tools(register: ToolRegistry) -> None:
    register.add("webhook", WebhookTool())
