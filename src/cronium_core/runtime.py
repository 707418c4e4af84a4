"""The runtime service: the logic behind the runtime API (ARCHITECTURE §9), free of any web
framework. ``cronium_runtime`` puts HTTP around it; tests and other front ends call it directly.

Every call starts with :meth:`RuntimeService.authorize`, which turns a bearer token and the
execution id of the route into the running :class:`~cronium_core.jobs.Job` it may touch:

- the token must verify (:class:`~cronium_core.tokens.ExecutionTokens`), else ``InvalidToken``;
- the execution must be the token's own (``sub``), else ``ExecutionForbidden``;
- the job must still be running the very attempt the token was minted for: its ``lease_id``
  equals the token's ``jti``. An attempt that ended, or that the reaper handed to another
  attempt, has no (or another) lease, so its token is refused at once: ``InvalidToken``.

Writes are fenced on that same ``lease_id`` by the queue, so a token that passes
:meth:`~RuntimeService.authorize` a moment before its job ends still writes nothing. A call
that sends a body (:meth:`~RuntimeService.authorize_with_body`) is checked again once the body
has arrived if that took a while, with at most :data:`MAX_OPEN_BODIES` of one execution arriving
at once: a body held back until its job has ended (a variable or a tool action is not fenced on
the lease) writes nothing, and a script cannot pile up half-sent bodies (the HTTP layer gives
a body :data:`BODY_SECONDS` to arrive).

The attempt check runs on every call and is never cached. An attempt of this process's own
worker is answered from memory (:class:`~cronium_core.attempts.LiveAttempts`) while the worker
surely holds its lease (nobody can have re-claimed it yet); past that, and for any other attempt,
the job's row is read: on a SQLite file, by :class:`~cronium_core.attempts.AttemptReader` — one
indexed ``SELECT`` of three columns on a connection of its own, a few microseconds, run in place
(no thread hop), and never waiting for a lock; otherwise (PostgreSQL, or when SQLite is busy)
with :meth:`JobQueue.get <cronium_core.queue.JobQueue.get>`. The rest of the row (the input,
the event, ...) does not change while an attempt runs, so it is read once per attempt and kept
next to the check.

Each execution gets a token bucket (:class:`RateLimiter`), in process; over it, ``RateLimited``.

Variables belong to the user who owns the job's event (:mod:`cronium_core.variables`): a
script sees its owner's variables and no one else's. :func:`check_variable_key` holds the key
rules of the wire contract. A service built without a variables store or a tool registry
raises :class:`FeatureUnavailable` for them (HTTP 501).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import sqlalchemy as sa
from anyio.abc import TaskStatus
from sqlalchemy.dialects import sqlite as sqlite_dialect

from . import schema
from .attempts import AttemptReader, LiveAttempts
from .datastore import DataStore, NotInPlace
from .errors import (
    CroniumError,
    ExecutionForbidden,
    InvalidToken,
    RateLimited,
    ValidationError,
)
from .events import Action, HttpRequest, Script, ToolAction
from .executors import TOKEN_VARIABLE
from .jobs import Job
from .masking import SecretMasker
from .queue import JobQueue
from .tokens import ExecutionTokens
from .tools import ToolContext

if TYPE_CHECKING:
    from .variables import VariableStore

__all__ = [
    "FeatureUnavailable",
    "RateLimiter",
    "RuntimeService",
    "check_json_value",
    "check_variable_key",
]

log = logging.getLogger("cronium.runtime")

#: variable keys a script may not use: they would shadow what the runtime sets
RESERVED_VARIABLE_PREFIXES = ("CRONIUM_", "SYSTEM_", "NODE_", "PATH", "HOME")
MAX_VARIABLE_KEY = 128
_VARIABLE_KEY = re.compile(r"[A-Za-z0-9_.-]+")
#: nesting deeper than this is refused before it reaches the store's JSON encoder
MAX_JSON_DEPTH = 100


@attrs.define(kw_only=True, eq=False)
class RateLimiter:
    """A token bucket per key: ``burst`` requests at once, refilled at ``rate`` per second.

    In process and in memory: each runtime API process limits what it serves. Idle keys are
    dropped once more than ``max_keys`` are held (a full bucket carries no information).
    """

    rate: float = 50.0
    burst: float = 100.0
    max_keys: int = 10_000
    monotonic: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValidationError("rate_limit", "rate must be positive and burst at least 1")

    def acquire(self, key: str) -> float:
        """Take one request from ``key``'s bucket: 0.0 when let in, else the seconds to wait."""
        now = self.monotonic()
        tokens, updated = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - updated) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if len(self._buckets) > self.max_keys:
            self._prune(now)
        return wait

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate
        for key, (_, updated) in list(self._buckets.items()):
            if now - updated >= full_after:
                del self._buckets[key]
        if len(self._buckets) > self.max_keys:  # all busy: forget the least recently seen
            by_age = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for key in by_age[: len(by_age) - self.max_keys // 2]:
                del self._buckets[key]


class FeatureUnavailable(CroniumError):
    """A runtime API feature this service was built without (no variables store, no tool
    registry); the HTTP layer answers 501."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


@functools.lru_cache(maxsize=4096)  # every call of a script checks its key: the same few
def check_variable_key(key: str) -> str:
    """A variable key as the wire contract allows it, or ``ValidationError``: 1-128 of
    ``[A-Za-z0-9_.-]``, not starting with a reserved prefix (in any case)."""
    if not 0 < len(key) <= MAX_VARIABLE_KEY:
        raise ValidationError("key", f"must be 1-{MAX_VARIABLE_KEY} characters")
    if not _VARIABLE_KEY.fullmatch(key):
        raise ValidationError("key", "may only hold letters, digits, '_', '.' and '-'")
    if key.upper().startswith(RESERVED_VARIABLE_PREFIXES):
        raise ValidationError("key", f"may not start with {', '.join(RESERVED_VARIABLE_PREFIXES)}")
    return key


def check_json_value(value: Any, field: str) -> Any:
    """``value`` if every store can keep it as JSON, else ``ValidationError``: strings
    (keys too) must be valid Unicode without NUL (PostgreSQL's jsonb refuses ``\\u0000``),
    numbers finite, nesting at most :data:`MAX_JSON_DEPTH` deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, field)
        elif isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValidationError(field, "numbers must be finite")
        elif isinstance(item, list | tuple | dict):
            if depth > MAX_JSON_DEPTH:
                raise ValidationError(field, f"is nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise ValidationError(field, "object keys must be strings")
                    _check_text(key, field)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        else:
            raise ValidationError(field, f"{type(item).__name__} is not a JSON value")
    return value


def _check_text(text: str, field: str) -> None:
    if "\x00" in text:
        raise ValidationError(field, "strings may not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(field, "strings must be valid Unicode (no lone surrogates)") from None


def action_type(action: Action) -> str:
    """What the context calls the event's type: the script language, ``http`` or ``tool``."""
    if isinstance(action, Script):
        return action.language
    if isinstance(action, HttpRequest):
        return "http"
    if isinstance(action, ToolAction):
        return "tool"
    raise TypeError(f"unknown action {action!r}")  # pragma: no cover - Action is closed


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


#: seconds an event's owner is remembered by the runtime API
OWNER_CACHE_SECONDS = 5.0
#: seconds a call's body may take to arrive after its headers (1 MiB at 100 KiB/s)
BODY_SECONDS = 10.0
#: bodies of one execution arriving at once (each held in memory until it is whole)
MAX_OPEN_BODIES = 16
#: a body that took longer than this to arrive has its token and attempt checked again (one
#: that came with its headers is as fresh as the check made on them)
RECHECK_AFTER = 0.001

T = TypeVar("T")
_OWNER_QUERY = str(
    sa.select(schema.events.c.owner)
    .where(schema.events.c.id == sa.bindparam("id"))
    .compile(dialect=sqlite_dialect.dialect())
)


@attrs.define(eq=False)
class RuntimeService:
    """What a running script may read and write about its own execution."""

    queue: JobQueue
    store: DataStore
    tokens: ExecutionTokens
    #: ``None`` turns rate limiting off
    limiter: RateLimiter | None = attrs.field(factory=RateLimiter, kw_only=True)
    #: the users' variables; ``None``: the variables routes answer 501
    variables: VariableStore | None = attrs.field(default=None, kw_only=True)
    #: a ``cronium_core.tools.ToolRegistry``; ``None``: tool actions answer 501
    tools: Any | None = attrs.field(default=None, kw_only=True)
    #: attempts run in this process (answered from memory); see :class:`LiveAttempts`
    live: LiveAttempts = attrs.field(factory=LiveAttempts, kw_only=True)
    #: see :meth:`authorize_with_body`
    max_open_bodies: int = attrs.field(default=MAX_OPEN_BODIES, kw_only=True)
    _attempts: AttemptReader = attrs.field(init=False, repr=False)
    _owners: dict[str, tuple[str, float]] = attrs.field(factory=dict, init=False, repr=False)
    #: execution id -> bodies of its calls being received now
    _open_bodies: dict[str, int] = attrs.field(factory=dict, init=False, repr=False)

    @_attempts.default
    def _reader(self) -> AttemptReader:
        return AttemptReader(self.queue)

    async def authorize(
        self, token: str | None, execution_id: str | None = None, *, counted: bool = False
    ) -> Job:
        """The running job the token may act on. ``execution_id`` is the one named by the
        route; ``None`` for routes without one (tool actions): the token's own execution.
        ``counted``: this call was let in by the rate limit already (a second check)."""
        try:
            return await self._authorize(token, execution_id, counted)
        except (InvalidToken, ExecutionForbidden) as exc:
            # RELIABILITY A1: each refusal is logged as an auth failure, never with the token
            reason = exc.reason if isinstance(exc, InvalidToken) else "other execution"
            shown = execution_id[:80] if execution_id is not None else None
            log.warning("runtime API auth failure: %s (execution %r)", reason, shown)
            raise

    async def authorize_with_body(
        self, token: str | None, execution_id: str | None, read: Callable[[], Awaitable[T]]
    ) -> tuple[Job, T]:
        """:meth:`authorize` for a call that sends a body, and the body ``read`` gives (which
        bounds the time it takes: the HTTP layer's concern). A bad token is refused before any
        of the body is read, and at most ``max_open_bodies`` bodies of one execution are
        arriving at once (else ``RateLimited``). A body that took longer than
        :data:`RECHECK_AFTER` has the token and the attempt checked again, so that one that
        arrived after its job ended (or its token expired) is refused like a new call."""
        job = await self.authorize(token, execution_id)
        opened = self._open_bodies.get(job.id, 0)
        if opened >= self.max_open_bodies:
            raise RateLimited(1.0)
        self._open_bodies[job.id] = opened + 1
        started = time.monotonic()
        try:
            body = await read()
        finally:
            left = self._open_bodies.pop(job.id) - 1
            if left:
                self._open_bodies[job.id] = left
        if time.monotonic() - started > RECHECK_AFTER:
            job = await self.authorize(token, execution_id, counted=True)
        return job, body

    async def _authorize(
        self, token: str | None, execution_id: str | None, counted: bool = False
    ) -> Job:
        if not token:
            raise InvalidToken("no token")
        claims = self.tokens.verify(token)
        if self.limiter is not None and not counted:
            wait = self.limiter.acquire(claims.execution_id)
            if wait > 0:
                raise RateLimited(wait)
        if execution_id is not None and claims.execution_id != execution_id:
            raise ExecutionForbidden()
        live = self.live.get(claims.execution_id, claims.lease_id)
        if live is not None and live.surely_held:
            return live.job
        # not run here, or its lease may have run out and the job been re-claimed elsewhere
        return await self._attempts.running(claims.execution_id, claims.lease_id)

    # -- the execution's own data ---------------------------------------------------

    async def get_input(self, job: Job) -> Any:
        return job.input if job.input is not None else {}

    async def set_output(self, job: Job, data: Any, *, token: str | None = None) -> None:
        """Set the attempt's output. It is shown like a log: the owner's secrets (as they
        are now: one set a moment ago too) and the attempt's own ``token`` are masked (K4)."""
        check_json_value(data, "data")
        secrets = []
        if self.variables is not None:
            secrets = await self.variables.secret_values(await self._owner(job))
        # the token as it is (its other forms are for secrets a script may encode), and only
        # when it is there: a masker's pattern costs ~0.3 ms to build
        exact = [token] if token and token in json.dumps(data) else []
        if secrets or exact:
            data = SecretMasker(secrets, exact=exact).mask_value(data)
        live = self.live.get(job.id, _lease(job))
        if live is not None:
            live.output = data
            return
        if not await self.queue.set_output(job.id, _lease(job), data):
            raise InvalidToken("attempt over (ended or re-claimed)")

    async def get_condition(self, job: Job) -> bool:
        live = self.live.get(job.id, _lease(job))
        if live is not None and live.condition is not None:
            return bool(live.condition)
        return bool(job.condition)

    async def set_condition(self, job: Job, condition: bool) -> None:
        if not isinstance(condition, bool):
            raise ValidationError("condition", "must be true or false")
        live = self.live.get(job.id, _lease(job))
        if live is not None:
            live.condition = condition
            return
        if not await self.queue.set_condition(job.id, _lease(job), condition):
            raise InvalidToken("attempt over (ended or re-claimed)")

    # -- the owner's variables ---------------------------------------------------------

    async def get_variable(self, job: Job, key: str) -> dict[str, Any]:
        """``{"key", "value"}`` of the job owner's variable (secrets decrypted: the script
        asked for it); ``VariableNotFound`` when the owner has none by that key."""
        check_variable_key(key)
        variables = self._variables()
        variable = await variables.get(await self._owner(job), key)
        return {"key": key, "value": variable.value}

    async def set_variable(
        self, job: Job, key: str, value: Any, *, secret: bool | None = None
    ) -> None:
        """Create or replace the job owner's variable. ``secret=None`` keeps the variable's
        current flag (a new variable is not secret). The store checks the key, the value and
        the flag (once: a value's check walks all of it)."""
        variables = self._variables()
        await variables.set(await self._owner(job), key, value, secret=secret)

    def _variables(self) -> VariableStore:
        if self.variables is None:
            raise FeatureUnavailable("variables arrive with the variables store")
        return self.variables

    async def _owner(self, job: Job) -> str:
        live = self.live.get(job.id, _lease(job))
        if live is not None:
            return live.owner
        # an event's owner hardly ever changes; a few seconds of caching saves a read per call
        now = time.monotonic()
        cached = self._owners.get(job.event_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        owner = self._read_owner(job.event_id)
        if owner is None:
            owner = (await self.store.get_event(job.event_id)).owner
        if len(self._owners) > 10_000:
            self._owners.clear()
        self._owners[job.event_id] = (owner, now + OWNER_CACHE_SECONDS)
        return owner

    def _read_owner(self, event_id: str) -> str | None:
        """The event's owner read in place (a SQLite file; ``None`` otherwise, or when the
        row cannot be read here and now, or there is none: ``get_event`` then says why). Not
        through ``get_event``: that read went to a thread, and while it was on its way every
        request arriving for the event's jobs (all of them, at once, when the cached owner
        expired) started one of its own, tens of ms each under load."""
        if self.store.sqlite_path is None:
            return None
        try:
            rows = self.store.read_in_place(
                lambda conn: conn.execute(_OWNER_QUERY, (event_id,)).fetchall()
            )
        except NotInPlace:
            return None
        return str(rows[0][0]) if rows else None

    # -- tool actions ------------------------------------------------------------------

    async def tool_action(self, job: Job, tool: str, action: str, config: dict[str, Any]) -> Any:
        """Run ``action`` of ``tool`` for the job's script; the registry's result."""
        if self.tools is None:
            raise FeatureUnavailable("tool actions arrive with the tool plugins")
        event = await self.store.get_event(job.event_id)
        context = ToolContext(job_id=job.id, event_id=event.id, owner=event.owner)
        return await self.tools.execute(tool, action, config, context)

    async def context(self, job: Job) -> dict[str, Any]:
        """What ``cronium.event()`` returns: the event, this execution, its workflow run."""
        record = await self.store.get_event_record(job.event_id)
        event = record.event
        workflow = None
        if job.workflow_run_id is not None:
            workflow = {"run_id": job.workflow_run_id, "node_id": job.node_id}
        return {
            "event": {
                "id": event.id,
                "name": event.name,
                "type": action_type(event.action),
                "executor": job.executor,
                "runs": {
                    "total": record.runs_total,
                    "succeeded": record.runs_succeeded,
                    "failed": record.runs_failed,
                },
            },
            "execution": {
                "id": job.id,
                "attempt": job.attempt,
                "trigger": str(job.trigger),
                "started_at": _iso(job.started_at),
            },
            "workflow": workflow,
            # the SSH executor fills this in when it runs a job on a server
            "server": None,
            "user": {"id": event.owner},
        }


def _lease(job: Job) -> str:
    if job.lease_id is None:
        raise InvalidToken("attempt over (ended or re-claimed)")
    return job.lease_id


class RuntimeServer(Protocol):
    """Serves the runtime API of ``service`` until cancelled; reports its base URL through
    ``task_status`` once it listens."""

    async def __call__(
        self,
        service: RuntimeService,
        *,
        host: str,
        port: int,
        task_status: TaskStatus[str] = ...,
    ) -> None: ...


def parse_keys(spec: str) -> tuple[dict[str, str], str]:
    """``"kid1:secret1,kid0:secret0"`` (the first is used to sign) -> (keys, current kid)."""
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kid, sep, secret = item.partition(":")
        if not sep or not kid or not secret:
            raise ValidationError("runtime_keys", "expected kid:secret[,kid:secret...]")
        if kid in keys:
            raise ValidationError("runtime_keys", f"key id {kid!r} is given twice")
        keys[kid] = secret
    if not keys:
        raise ValidationError("runtime_keys", "no key given")
    return keys, next(iter(keys))


def runtime_env(url: str, tokens: ExecutionTokens) -> Callable[[Job], dict[str, str]]:
    """For ``Worker.runtime_env``: the API's URL and a token for the job's current attempt."""

    def env(job: Job) -> dict[str, str]:
        return {"CRONIUM_RUNTIME_API": url, TOKEN_VARIABLE: tokens.mint(job)}

    return env
