"""The SDK's errors. None of them ever holds the execution token."""

from __future__ import annotations

__all__ = ["CroniumAPIError", "CroniumError", "CroniumTimeoutError"]


class CroniumError(Exception):
    """Anything that went wrong talking to the Cronium runtime API."""


class CroniumAPIError(CroniumError):
    """The runtime API answered with an error: ``status_code`` and its ``message``."""

    def __init__(self, status_code: int, message: str, error: str | None = None) -> None:
        self.status_code = status_code
        self.message = message
        #: the API's short error code (``unauthorized``, ``bad_request``, ...), if it sent one
        self.error = error
        super().__init__(f"{status_code}: {message}")

    def __repr__(self) -> str:
        return f"CroniumAPIError({self.status_code!r}, {self.message!r})"


class CroniumTimeoutError(CroniumError, TimeoutError):
    """The runtime API did not answer in time (after the retries)."""
