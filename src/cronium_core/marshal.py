"""Explicit conversion of the attrs values to and from JSON-able dicts (store rows, CLI, API).

Unmarshalling goes through the attrs constructors, so every value read from outside is
validated exactly like one built in Python.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .errors import ValidationError
from .events import (
    Action,
    ConditionalAction,
    Event,
    HttpRequest,
    RetryPolicy,
    Script,
    ToolAction,
)
from .schedules import Cron, Interval, Manual, Once, Schedule

__all__ = [
    "action_from_dict",
    "action_to_dict",
    "event_from_dict",
    "event_to_dict",
    "schedule_from_dict",
    "schedule_to_dict",
]


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: Any, field: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise ValidationError(field, f"{value!r} is not an ISO-8601 date and time") from None


def action_to_dict(action: Action) -> dict[str, Any]:
    if isinstance(action, Script):
        return {"kind": "script", "language": action.language, "code": action.code}
    if isinstance(action, HttpRequest):
        return {
            "kind": "http",
            "method": action.method,
            "url": action.url,
            "headers": dict(action.headers),
            "body": action.body,
            "expected_status": list(action.expected_status),
            "timeout": action.timeout,
        }
    return {
        "kind": "tool",
        "tool": action.tool,
        "action": action.action,
        "config": dict(action.config),
    }


def action_from_dict(data: dict[str, Any]) -> Action:
    kind = data.get("kind", "script")
    fields = {k: v for k, v in data.items() if k != "kind"}
    try:
        if kind == "script":
            return Script(**fields)
        if kind == "http":
            return HttpRequest(**fields)
        if kind == "tool":
            return ToolAction(**fields)
    except TypeError as exc:
        raise ValidationError("action", str(exc)) from None
    raise ValidationError("action.kind", f"{kind!r} is not script, http or tool")


_MISFIRE_KEYS = ("misfire_policy", "misfire_grace", "catch_up_limit")


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    if isinstance(schedule, Manual):
        return {"kind": "manual"}
    out: dict[str, Any] = {k: getattr(schedule, k) for k in _MISFIRE_KEYS}
    out["misfire_policy"] = str(schedule.misfire_policy)
    if isinstance(schedule, Interval):
        out.update(kind="interval", seconds=schedule.seconds, start=_dt(schedule.start))
    elif isinstance(schedule, Cron):
        out.update(kind="cron", expression=schedule.expression, timezone=schedule.timezone)
    else:
        out.update(kind="once", at=_dt(schedule.at))
    return out


def schedule_from_dict(data: dict[str, Any]) -> Schedule:
    kind = data.get("kind", "manual")
    fields = {k: v for k, v in data.items() if k != "kind"}
    try:
        if kind == "manual":
            return Manual()
        if kind == "interval":
            fields["start"] = _parse_dt(fields.get("start"), "schedule.start")
            return Interval(**fields)
        if kind == "cron":
            return Cron(**fields)
        if kind == "once":
            at = _parse_dt(fields.pop("at", None), "schedule.at")
            if at is None:
                raise ValidationError("schedule.at", "is required for a one-off schedule")
            return Once(at=at, **fields)
    except TypeError as exc:
        raise ValidationError("schedule", str(exc)) from None
    raise ValidationError("schedule.kind", f"{kind!r} is not manual, interval, cron or once")


def event_to_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "name": event.name,
        "owner": event.owner,
        "status": str(event.status),
        "action": action_to_dict(event.action),
        "schedule": schedule_to_dict(event.schedule),
        "executor": event.executor,
        "executor_options": dict(event.executor_options),
        "timeout": event.timeout,
        "kill_grace": event.kill_grace,
        "retry": {
            "max_attempts": event.retry.max_attempts,
            "backoff_base": event.retry.backoff_base,
            "backoff_max": event.retry.backoff_max,
        },
        "env": dict(event.env),
        "overlap": str(event.overlap),
        "max_concurrency": event.max_concurrency,
        "max_runs": event.max_runs,
        "priority": event.priority,
        "conditional_actions": [
            {"when": str(a.when), "run_event": a.run_event} for a in event.conditional_actions
        ],
    }


def event_from_dict(data: dict[str, Any]) -> Event:
    fields = dict(data)
    if "action" not in fields:
        raise ValidationError("action", "is required")
    fields["action"] = action_from_dict(dict(fields["action"]))
    fields["schedule"] = schedule_from_dict(dict(fields.get("schedule") or {"kind": "manual"}))
    if "retry" in fields:
        try:
            fields["retry"] = RetryPolicy(**dict(fields["retry"]))
        except TypeError as exc:
            raise ValidationError("retry", str(exc)) from None
    fields["conditional_actions"] = tuple(
        ConditionalAction(**dict(a)) for a in fields.get("conditional_actions") or ()
    )
    try:
        return Event(**fields)
    except TypeError as exc:
        raise ValidationError("event", str(exc)) from None
