"""The one error tree of Cronium.

::

    CroniumError
    ├── ValidationError (ValueError)       bad input at a boundary; says which field and why
    │   ├── InvalidSchedule                 a bad cron string, an unknown time zone, a bad interval
    │   ├── InvalidWorkflow                 a cycle, an unknown node, a dangling edge
    │   └── PayloadTooLarge                 a request body over the size limit
    ├── NotFound (LookupError)
    │   ├── EventNotFound
    │   ├── JobNotFound
    │   └── WorkflowNotFound
    ├── Conflict                            the store refused a change (duplicate name, ...)
    ├── SchemaVersionError                  the database schema is not the one this code needs
    ├── LeaseLost                           a worker's lease on a job was taken over (fenced)
    ├── ExecutorNotFound (LookupError)      no plugin registered that executor name
    ├── JobWaitTimeout (TimeoutError)       ``jobs.wait`` gave up before the job ended
    ├── InvalidToken                        a runtime token that is missing, bad, expired or revoked
    ├── ExecutionForbidden (PermissionError) a valid runtime token used on another execution
    └── RateLimited                         one execution sent too many runtime API requests

Messages are built in ``__init__`` so that every raise site says the same thing.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "CroniumError",
    "EventNotFound",
    "ExecutorNotFound",
    "InvalidSchedule",
    "InvalidWorkflow",
    "JobNotFound",
    "JobWaitTimeout",
    "LeaseLost",
    "NotFound",
    "SchemaVersionError",
    "ValidationError",
    "WorkflowNotFound",
]


class CroniumError(Exception):
    """Root of every error raised on purpose by Cronium."""


class ValidationError(CroniumError, ValueError):
    """Input refused at a boundary. ``field`` names what was wrong."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class InvalidSchedule(ValidationError):
    """A schedule that cannot fire: bad cron expression, unknown zone, bad interval."""


class InvalidWorkflow(ValidationError):
    """A workflow that cannot run: a cycle, an edge to an unknown node, ..."""


class NotFound(CroniumError, LookupError):
    kind = "object"

    def __init__(self, ident: object) -> None:
        self.ident = ident
        super().__init__(f"{self.kind} {ident!s} not found")


class EventNotFound(NotFound):
    kind = "event"


class JobNotFound(NotFound):
    kind = "job"


class WorkflowNotFound(NotFound):
    kind = "workflow"


class Conflict(CroniumError):
    """The store refused a change that clashes with what is stored."""


class SchemaVersionError(CroniumError):
    def __init__(self, found: int | None, expected: int) -> None:
        self.found = found
        self.expected = expected
        if found is None:
            detail = "the database has no Cronium schema; run `cronium db upgrade`"
        elif found < expected:
            detail = f"schema version {found} is older than {expected}; run `cronium db upgrade`"
        else:
            detail = f"schema version {found} is newer than this Cronium ({expected}); upgrade it"
        super().__init__(detail)


class LeaseLost(CroniumError):
    """The job's lease now belongs to another attempt; this worker's writes are fenced."""

    def __init__(self, job_id: str, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt
        super().__init__(f"job {job_id} attempt {attempt} no longer holds the lease")


class ExecutorNotFound(CroniumError, LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"no executor named {name!r} (registered: {', '.join(sorted(known))})")


class JobWaitTimeout(CroniumError, TimeoutError):
    def __init__(self, job_id: str, timeout: float) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} did not finish within {timeout:g} s")


class PayloadTooLarge(ValidationError):
    """A request body larger than the boundary accepts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__("body", f"is larger than {limit} bytes")


class InvalidToken(CroniumError):
    """A runtime token that cannot be trusted: missing, malformed, badly signed, expired, or
    revoked (its job ended or was re-claimed). ``reason`` is for the server's log only; what
    goes back to the caller stays generic, and neither ever holds the token itself."""

    def __init__(self, reason: str = "invalid token") -> None:
        self.reason = reason
        super().__init__(f"execution token refused: {reason}")


class ExecutionForbidden(CroniumError, PermissionError):
    """A valid runtime token used on an execution other than its own."""

    def __init__(self) -> None:
        super().__init__("the token does not belong to this execution")


class RateLimited(CroniumError):
    """Too many requests from one execution; ``retry_after`` seconds until the next is let in."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many requests; retry after {retry_after:.2g} s")


class RequestTimeout(CroniumError):
    """A request's body did not arrive within ``seconds`` of its headers."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the request body did not arrive within {seconds:g} s")


__all__ += [
    "ExecutionForbidden",
    "InvalidToken",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
]
