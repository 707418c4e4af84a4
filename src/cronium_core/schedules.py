"""When an event fires: schedule values and the pure fire-time arithmetic behind the scheduler.

Fire times are computed with `cronsim` (the cron library behind Healthchecks.io), which follows
Debian cron's documented DST rule:

* a job at a *fixed* local time (both the minute and the hour field are not ``*``-based) that
  falls into a spring-forward gap runs at the first real minute after the gap (02:30 in
  America/New_York on the spring-forward day runs at 03:00), and on a fall-back day it runs once,
  in the first fold;
* a *wildcard* job (minute or hour field starts with ``*``) runs by the wall clock as it is:
  nothing in the gap (it does not exist), both folds on a fall-back day.

Everything here works on timezone-aware datetimes; results are in UTC.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import attrs
from cronsim import CronSim, CronSimError

from .errors import InvalidSchedule

__all__ = [
    "Cron",
    "FireDecision",
    "Interval",
    "Manual",
    "MisfirePolicy",
    "Once",
    "Schedule",
    "fire_times",
    "next_fire_time",
    "plan_fires",
]

#: Never enumerate more than this many fire times in one scheduler step.
MAX_FIRES_PER_STEP = 1000


class MisfirePolicy(enum.StrEnum):
    """What to do with fire times missed while no scheduler ran (older than the grace time)."""

    SKIP = "skip"  #: record them as missed; run nothing for them
    LATEST = "latest"  #: run the latest one once (marked backfilled), record the rest as missed
    ALL = "all"  #: run each (up to ``catch_up_limit``, newest kept), oldest first


def _aware(value: datetime, field: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidSchedule(field, "must be timezone-aware (for example 2026-01-01T09:00+01:00)")
    return value.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule("timezone", f"unknown IANA time zone {name!r}") from None


@attrs.frozen(kw_only=True)
class _Misfire:
    misfire_policy: MisfirePolicy = attrs.field(default=MisfirePolicy.LATEST, converter=MisfirePolicy)
    #: seconds a fire time may be late and still count as on time
    misfire_grace: float = attrs.field(default=60.0)
    #: at most this many missed fire times are run under MisfirePolicy.ALL
    catch_up_limit: int = attrs.field(default=10)

    @misfire_grace.validator
    def _check_grace(self, _: attrs.Attribute[float], value: float) -> None:
        if value < 0:
            raise InvalidSchedule("misfire_grace", "must be >= 0 seconds")

    @catch_up_limit.validator
    def _check_limit(self, _: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise InvalidSchedule("catch_up_limit", "must be >= 1")


@attrs.frozen(kw_only=True)
class Manual:
    """Runs only when asked (by hand, a webhook, a workflow)."""

    kind = "manual"


@attrs.frozen(kw_only=True)
class Interval(_Misfire):
    """Every ``seconds`` seconds, counted from ``start`` (the event's creation when unset)."""

    kind = "interval"
    seconds: float
    start: datetime | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if not self.seconds >= 1:
            raise InvalidSchedule("seconds", f"an interval must be at least 1 s, got {self.seconds}")
        if self.start is not None:
            object.__setattr__(self, "start", _aware(self.start, "start"))


@attrs.frozen(kw_only=True)
class Cron(_Misfire):
    """A 5-field cron expression (6 with seconds first) read in an IANA time zone."""

    kind = "cron"
    expression: str
    timezone: str = "UTC"

    def __attrs_post_init__(self) -> None:
        zone = _zone(self.timezone)
        expr = " ".join(self.expression.split())
        object.__setattr__(self, "expression", expr)
        if len(expr.split()) not in (5, 6):
            raise InvalidSchedule(
                "expression",
                f"{self.expression!r} has {len(expr.split())} fields; cron needs 5 "
                "(minute hour day-of-month month day-of-week)",
            )
        try:
            it = CronSim(expr, datetime(2000, 1, 1, tzinfo=zone))
            next(it)
        except CronSimError as exc:
            raise InvalidSchedule("expression", f"{self.expression!r}: {exc}") from None
        except StopIteration:
            raise InvalidSchedule("expression", f"{self.expression!r} never fires") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@attrs.frozen(kw_only=True)
class Once(_Misfire):
    """Exactly one fire, at ``at``."""

    kind = "once"
    at: datetime

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "at", _aware(self.at, "at"))


Schedule = Manual | Interval | Cron | Once


def fire_times(
    schedule: Schedule, after: datetime, *, anchor: datetime | None = None
) -> Iterator[datetime]:
    """Yield the schedule's fire times strictly after ``after``, in order, as UTC datetimes.

    ``anchor`` is where an interval without an explicit start counts from.
    """
    after = after.astimezone(UTC)
    if isinstance(schedule, Manual):
        return
    if isinstance(schedule, Once):
        if schedule.at > after:
            yield schedule.at
        return
    if isinstance(schedule, Interval):
        start = schedule.start or anchor or after
        step = timedelta(seconds=schedule.seconds)
        if after < start:
            current = start
        else:
            periods = int((after - start) / step) + 1
            current = start + periods * step
            while current <= after:  # guard float rounding
                current += step
        while True:
            yield current
            current += step
    if isinstance(schedule, Cron):
        local = after.astimezone(schedule.zone)
        for value in CronSim(schedule.expression, local):
            result = value.astimezone(UTC)
            # cronsim may return a fixed-time job's first-fold time twice around a fall-back;
            # the contract here is strictly increasing times.
            if result > after:
                after = result
                yield result


def next_fire_time(
    schedule: Schedule, after: datetime, *, anchor: datetime | None = None
) -> datetime | None:
    return next(fire_times(schedule, after, anchor=anchor), None)


@attrs.frozen
class FireDecision:
    """What the scheduler does with one fire time."""

    fire_time: datetime
    run: bool
    backfilled: bool = False
    reason: str | None = None  #: why it is not run, or why it runs late


def plan_fires(
    schedule: Interval | Cron | Once, due: list[datetime], now: datetime
) -> list[FireDecision]:
    """Decide, per the misfire policy, which of the ``due`` fire times (oldest first, all
    ``<= now``) become jobs. On-time fires (late by at most the grace) always run; the others
    follow the policy. Every input time gets exactly one decision, so none is silently lost."""
    grace = timedelta(seconds=schedule.misfire_grace)
    late = [t for t in due if now - t > grace]
    on_time = [t for t in due if now - t <= grace]
    decisions: list[FireDecision] = []
    policy = schedule.misfire_policy
    if policy is MisfirePolicy.SKIP:
        run_late: set[datetime] = set()
    elif policy is MisfirePolicy.LATEST:
        run_late = {late[-1]} if late and not on_time else set()
    else:
        run_late = set(late[-schedule.catch_up_limit :])
    for t in late:
        if t in run_late:
            decisions.append(FireDecision(t, run=True, backfilled=True, reason="late: caught up"))
        else:
            decisions.append(
                FireDecision(t, run=False, reason=f"missed: past the misfire grace ({policy})")
            )
    decisions.extend(FireDecision(t, run=True) for t in on_time)
    return decisions


def _known_zones() -> frozenset[str]:  # used by tests and the CLI's completion
    return frozenset(available_timezones())
