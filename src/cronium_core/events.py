"""Events: what a user wants run (the action), when (the schedule) and how (executor, limits)."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from .errors import ValidationError
from .schedules import Manual, Schedule

__all__ = [
    "Action",
    "ConditionalAction",
    "Event",
    "EventStatus",
    "HttpRequest",
    "OverlapPolicy",
    "RetryPolicy",
    "Script",
    "ToolAction",
]

Language = Literal["bash", "python", "node"]
LANGUAGES: tuple[str, ...] = ("bash", "python", "node")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_RESERVED_ENV_PREFIXES = ("CRONIUM_",)


def _int_tuple(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@attrs.frozen(kw_only=True)
class Script:
    kind = "script"
    language: Language
    code: str

    def __attrs_post_init__(self) -> None:
        if self.language not in LANGUAGES:
            raise ValidationError(
                "language", f"{self.language!r} is not one of {', '.join(LANGUAGES)}"
            )
        if "\x00" in self.code:
            raise ValidationError("code", "contains a NUL byte")


@attrs.frozen(kw_only=True)
class HttpRequest:
    kind = "http"
    url: str
    method: str = "GET"
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: str | None = None
    #: statuses that count as success; empty means any 2xx
    expected_status: tuple[int, ...] = attrs.field(default=(), converter=_int_tuple)
    timeout: float = 30.0

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "method", self.method.upper())
        if self.method not in HTTP_METHODS:
            raise ValidationError("method", f"{self.method!r} is not an HTTP method we send")
        if not self.url.startswith(("http://", "https://")):
            raise ValidationError("url", f"{self.url!r} must start with http:// or https://")
        for status in self.expected_status:
            if not 100 <= status <= 599:
                raise ValidationError("expected_status", f"{status} is not an HTTP status")


@attrs.frozen(kw_only=True)
class ToolAction:
    """A no-code action of a tool plugin (slack, webhook, ...); run by the ``tool`` executor."""

    kind = "tool"
    tool: str
    action: str
    config: Mapping[str, Any] = attrs.field(factory=dict)


Action = Script | HttpRequest | ToolAction


class EventStatus(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    DRAFT = "draft"
    ARCHIVED = "archived"


class OverlapPolicy(enum.StrEnum):
    """What a scheduled fire does while an earlier run of the same event is queued or running."""

    SKIP = "skip"  #: record the fire as skipped
    BUFFER_ONE = "buffer_one"  #: keep at most one waiting run behind the running one
    QUEUE_ALL = "queue_all"  #: queue every fire; they run one after another
    CANCEL_RUNNING = "cancel_running"  #: cancel the running one, then start the new one
    ALLOW = "allow"  #: run side by side


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """``max_attempts`` counts the first try; the n-th retry waits ``base * 2**(n-1)`` s, capped."""

    max_attempts: int = 1
    backoff_base: float = 1.0
    backoff_max: float = 300.0

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 100:
            raise ValidationError("retry.max_attempts", "must be between 1 and 100")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ValidationError("retry.backoff", "must not be negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the attempt after ``attempt`` (1-based) failed."""
        return float(min(self.backoff_max, self.backoff_base * 2 ** max(0, attempt - 1)))


class When(enum.StrEnum):
    ON_SUCCESS = "on_success"
    ON_FAILURE = "on_failure"
    ALWAYS = "always"
    ON_CONDITION = "on_condition"


@attrs.frozen(kw_only=True)
class ConditionalAction:
    """After a run of the event ends: run another event with this run's output as its input."""

    when: When = attrs.field(converter=When)
    run_event: str


def _actions_tuple(values: Iterable[ConditionalAction]) -> tuple[ConditionalAction, ...]:
    return tuple(values)


def _check_env(_: object, __: attrs.Attribute[Mapping[str, str]], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValidationError(f"env.{name}", "is not a valid environment variable name")
        if name.upper().startswith(_RESERVED_ENV_PREFIXES):
            raise ValidationError(f"env.{name}", "CRONIUM_ names are set by Cronium itself")
        if not isinstance(value, str) or "\x00" in value:
            raise ValidationError(f"env.{name}", "must be a string without NUL bytes")


def _check_options(_: object, __: attrs.Attribute[Any], options: Mapping[str, Any]) -> None:
    if not isinstance(options, Mapping):
        raise ValidationError("executor_options", "must be a mapping")
    for name in options:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValidationError("executor_options", f"{name!r} is not a setting name")


def _check_name(_: object, __: attrs.Attribute[str], name: str) -> None:
    if not name.strip() or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise ValidationError("name", "must be 1-200 printable characters")


@attrs.frozen(kw_only=True)
class Event:
    """A thing to run. ``id`` is assigned by the store when empty."""

    name: str = attrs.field(validator=_check_name)
    action: Action
    schedule: Schedule = attrs.field(factory=Manual)
    id: str = ""
    owner: str = "admin"
    status: EventStatus = attrs.field(default=EventStatus.ACTIVE, converter=EventStatus)
    executor: str = "local"
    #: settings for that executor, checked by it when a run starts (docker/podman: ``image``,
    #: ``memory``, ``cpus``, ``pids``, ``network``, ...; see the executor's docs)
    executor_options: Mapping[str, Any] = attrs.field(factory=dict, validator=_check_options)
    #: seconds before the worker stops the run (SIGTERM, then SIGKILL after ``kill_grace``)
    timeout: float = 3600.0
    kill_grace: float = 5.0
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    env: Mapping[str, str] = attrs.field(factory=dict, validator=_check_env)
    overlap: OverlapPolicy = attrs.field(default=OverlapPolicy.ALLOW, converter=OverlapPolicy)
    #: at most this many runs at once (None: no limit; any overlap policy but ALLOW means 1)
    max_concurrency: int | None = None
    #: the event pauses itself after this many runs
    max_runs: int | None = None
    priority: int = 0
    conditional_actions: tuple[ConditionalAction, ...] = attrs.field(
        default=(), converter=_actions_tuple
    )

    def __attrs_post_init__(self) -> None:
        if not 0 < self.timeout <= 7 * 86400:
            raise ValidationError("timeout", "must be between 0 and 7 days")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValidationError("max_concurrency", "must be at least 1")
        if self.max_runs is not None and self.max_runs < 1:
            raise ValidationError("max_runs", "must be at least 1")

    @property
    def concurrency_limit(self) -> int | None:
        if self.overlap is not OverlapPolicy.ALLOW:
            return 1
        return self.max_concurrency
