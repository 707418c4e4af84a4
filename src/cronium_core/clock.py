"""Time as a dependency, so that tests move it instead of waiting for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SkewedClock", "SystemClock"]


class Clock(Protocol):
    #: True when this clock is the time for the database too (a test's fake clock). Otherwise
    #: leases are computed and expired in the database's own time, so that the clocks of
    #: many machines need not agree (RELIABILITY S5).
    authoritative: bool

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    authoritative = False

    def now(self) -> datetime:
        return datetime.now(UTC)


class SkewedClock(SystemClock):
    """The system clock off by ``offset`` seconds: a machine whose clock is wrong."""

    def __init__(self, offset: float) -> None:
        self.offset = timedelta(seconds=offset)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


class FakeClock:
    """A clock that moves only when told to (forwards or backwards); tests use it for the
    database's time too."""

    authoritative = True

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime(2026, 1, 1, tzinfo=UTC)).astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float = 0, **delta: float) -> datetime:
        self._now += timedelta(seconds=seconds, **delta)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when.astimezone(UTC)
