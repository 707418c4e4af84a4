"""The executor contract: what a plugin gets, what it must return.

Executors never touch storage. The worker hands one an immutable :class:`ExecutionRequest` and a
:data:`LogSink`; the executor runs the action, awaits the sink for every line in the order the
lines were produced, and returns an :class:`Outcome`.

Stopping a run is anyio cancellation: on a timeout or a cancel request the worker cancels the
task that awaits :meth:`Executor.execute`. The executor must then stop everything it started
(SIGTERM, then SIGKILL after ``request.kill_grace`` seconds; remove containers) in shielded
cleanup before the cancellation propagates. It must never leave a process, container, network
or temp file behind.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import attrs

from .events import Action
from .jobs import Stream

__all__ = ["UNSET", "ExecutionRequest", "Executor", "LogSink", "Outcome"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


#: an Outcome field the executor did not set (distinct from None, which is a value)
UNSET: Any = _Unset()


#: the job's environment variable that holds its runtime API token (a secret of its logs)
TOKEN_VARIABLE = "CRONIUM_EXECUTION_TOKEN"


@attrs.frozen(kw_only=True)
class ExecutionRequest:
    job_id: str
    attempt: int
    event_id: str
    event_name: str
    action: Action
    input: Any
    #: the full environment the job sees beyond a minimal base (PATH, HOME, LANG): the event's
    #: env vars plus CRONIUM_EXECUTION_ID, CRONIUM_RUNTIME_API, CRONIUM_EXECUTION_TOKEN, ...
    env: Mapping[str, str]
    timeout: float
    kill_grace: float = 5.0
    #: executor-specific settings of the event (image, memory, cpus, ...)
    options: Mapping[str, Any] = attrs.field(factory=dict)


#: awaited by the executor for each line of output, in order: ``await emit(stream, text)``
LogSink = Callable[[Stream, str], Awaitable[None]]


@attrs.frozen(kw_only=True)
class Outcome:
    """How a run ended. ``exit_code`` 0 means success unless ``error`` is set."""

    exit_code: int | None
    error: str | None = None
    #: an output the executor itself produced (an HTTP response body); scripts set theirs
    #: through the runtime API instead
    output: Any = UNSET
    #: a condition the executor itself decided (scripts set theirs through the runtime API)
    condition: bool | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.error is None


class Executor(abc.ABC):
    """Runs actions of one kind somewhere. One instance serves many concurrent jobs."""

    #: the name events use to pick this executor (``Event.executor``)
    name: str

    async def start(self, exit_stack: AsyncExitStack) -> None:  # noqa: B027 - optional hook
        """Acquire long-lived resources (pools, clients); push their cleanup onto the stack."""

    @abc.abstractmethod
    async def execute(self, request: ExecutionRequest, emit: LogSink) -> Outcome:
        """Run ``request.action`` to its end and say how it ended. See the module docstring
        for what cancellation requires."""

    def runtime_hosts(self) -> Sequence[str]:
        """Addresses the runtime API must also listen on for this executor's jobs to reach it
        (a container network's gateway); known once :meth:`start` has run."""
        return ()

    async def runtime_started(self, url: str) -> None:  # noqa: B027 - optional hook
        """The runtime API now listens at ``url`` (and on :meth:`runtime_hosts`, same port)."""

    def can_run(self, action: Action) -> bool:
        """Whether this executor knows how to run that kind of action."""
        return True


ExecutorFactory = Callable[[Mapping[str, Any]], Executor]
