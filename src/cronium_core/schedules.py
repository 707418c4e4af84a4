"""When an event fires: schedule values and the pure fire-time arithmetic behind the scheduler.

Everything here works on timezone-aware datetimes; results are in UTC.

Cron expressions are parsed and matched against wall-clock calendars by `cronsim` (the cron
library behind Healthchecks.io); the time-zone and DST handling is done here, on top of
cronsim's *naive* (zone-less) iteration, and follows Debian cron's documented rule:

* A **fixed-time** job — a 5-field expression whose minute and hour fields both do not start
  with ``*`` (``30 2 * * *``, ``0 9-17 * * 1-5``, ``0,30 1 * * *``) — runs at most once per wall
  time. A time that falls into a spring-forward gap runs at the first real minute after the gap
  (``30 2 * * *`` in America/New_York on 2026-03-08 runs at 03:00-04:00); several times in one
  gap become that one run, also when the job is due at that minute anyway. On a fall-back day a
  time in the repeated period runs once, in the first fold (01:30-04:00, not 01:30-05:00).
* A **wall-clock** job — the minute or the hour field starts with ``*`` (``*/30 * * * *``,
  ``15 * * * *``, ``* 9 * * *``), and every 6-field (seconds-first) expression — runs whenever
  the local clock shows a matching time: nothing in a spring-forward gap (those times do not
  exist), and in both folds of a fall-back.
* Day of month and day of week: if either field starts with ``*`` both must match, otherwise
  either one (Vixie/Debian cron).

No fire time is ever a non-existent local time, and fire times are strictly increasing.
Intervals are counted in UTC, so they are exact multiples of their length across DST changes.

Workarounds for cronsim 2.x (each checked by tests/test_schedules_dst.py):

* cronsim's own DST mode moves wall-clock jobs by adding whole hours of UTC to a local time
  truncated to the hour, which misses or shifts fires in zones whose DST shift is not a whole
  hour (Australia/Lord_Howe, 30 minutes), and it returns a non-existent local midnight when a
  spring-forward happens at midnight (America/Santiago). We use cronsim only on naive wall
  times and map those to UTC ourselves, one UTC-offset period at a time.
* cronsim reads a stepped range whose two ends are the same value (``5-5/10``) like ``5/10``
  (5, 15, 25, ...); cron means just 5. Such terms are rewritten to the plain range ``5-5``.

cronsim extensions that cron itself does not have are kept: ``a/n`` (from ``a`` to the end of
the field, every ``n``), ``L``, ``LW``, ``5L``, ``1#2``, and a seconds field in front.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from numbers import Real
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import attrs
from cronsim import CronSim, CronSimError

from .errors import InvalidSchedule, ValidationError

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

_SECOND = timedelta(seconds=1)
_MINUTE = timedelta(minutes=1)
#: How far apart the UTC offset of a zone is sampled when looking for its next change. Since
#: 2000 no zone has changed its offset twice within less than a week (tzdata 2024-2025).
_OFFSET_PROBE = timedelta(hours=6)


class MisfirePolicy(enum.StrEnum):
    """What to do with fire times missed while no scheduler ran (older than the grace time)."""

    SKIP = "skip"  #: record them as missed; run nothing for them
    LATEST = "latest"  #: run the latest one once (marked backfilled), record the rest as missed
    ALL = "all"  #: run each (up to ``catch_up_limit``, newest kept), oldest first


def _aware(value: object, field: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidSchedule(field, f"must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidSchedule(field, "must be timezone-aware (for example 2026-01-01T09:00+01:00)")
    return value.astimezone(UTC)


def _aware_argument(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(name, "must be a timezone-aware datetime")
    return value.astimezone(UTC)


def _zone(name: object) -> ZoneInfo:
    if not isinstance(name, str):
        raise InvalidSchedule("timezone", f"must be an IANA time zone name, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a directory of the zone database ("America"), an unreadable file
        raise InvalidSchedule("timezone", f"unknown IANA time zone {name!r}") from None


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _to_policy(value: object) -> MisfirePolicy:
    if isinstance(value, str):
        try:
            return MisfirePolicy(value)
        except ValueError:
            pass
    known = ", ".join(p.value for p in MisfirePolicy)
    raise InvalidSchedule("misfire_policy", f"{value!r} is not one of {known}")


@attrs.frozen(kw_only=True)
class _Misfire:
    misfire_policy: MisfirePolicy = attrs.field(default=MisfirePolicy.LATEST, converter=_to_policy)
    #: seconds a fire time may be late and still count as on time
    misfire_grace: float = attrs.field(default=60.0)
    #: at most this many missed fire times are run under MisfirePolicy.ALL
    catch_up_limit: int = attrs.field(default=10)

    @misfire_grace.validator
    def _check_grace(self, _: attrs.Attribute[float], value: float) -> None:
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise InvalidSchedule(
                "misfire_grace", f"must be a number of seconds >= 0, got {value!r}"
            )

    @catch_up_limit.validator
    def _check_limit(self, _: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidSchedule("catch_up_limit", f"must be an integer >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class Manual:
    """Runs only when asked (by hand, a webhook, a workflow)."""

    kind = "manual"


@attrs.frozen(kw_only=True)
class Interval(_Misfire):
    """Every ``seconds`` seconds, counted in UTC from ``start`` (when unset, the anchor the
    caller passes: the event's creation)."""

    kind = "interval"
    seconds: float
    start: datetime | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        seconds: object = self.seconds
        if not _is_number(seconds):
            raise InvalidSchedule("seconds", f"must be a number of seconds, got {seconds!r}")
        if not self.seconds >= 1:  # also refuses NaN
            raise InvalidSchedule(
                "seconds", f"an interval must be at least 1 s, got {self.seconds}"
            )
        try:
            timedelta(seconds=self.seconds)
        except (OverflowError, TypeError, ValueError):
            raise InvalidSchedule("seconds", f"{self.seconds!r} s is not a usable length") from None
        if self.start is not None:
            object.__setattr__(self, "start", _aware(self.start, "start"))


@attrs.frozen(kw_only=True)
class Cron(_Misfire):
    """A 5-field cron expression (6 with seconds first) read in an IANA time zone.

    See the module docstring for the DST rule."""

    kind = "cron"
    expression: str
    timezone: str = "UTC"

    def __attrs_post_init__(self) -> None:
        _zone(self.timezone)
        if not isinstance(self.expression, str):
            raise InvalidSchedule("expression", f"must be a string, got {self.expression!r}")
        expr = " ".join(self.expression.split())
        object.__setattr__(self, "expression", expr)
        if len(expr.split()) not in (5, 6):
            raise InvalidSchedule(
                "expression",
                f"{self.expression!r} has {len(expr.split())} fields; cron needs 5 "
                "(minute hour day-of-month month day-of-week), or 6 with seconds first",
            )
        plan = _plan(expr)
        try:
            next(CronSim(plan.cronsim_expression, datetime(2000, 1, 1)))
        except CronSimError as exc:
            raise InvalidSchedule("expression", f"{self.expression!r}: {exc}") from None
        except StopIteration:
            raise InvalidSchedule("expression", f"{self.expression!r} never fires") from None
        except Exception:  # cronsim promises CronSimError only; a user's string must not crash us
            raise InvalidSchedule("expression", f"{self.expression!r} cannot be parsed") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def fixed_time(self) -> bool:
        """True when the Debian rule for fixed-time jobs applies (see the module docstring)."""
        return _plan(self.expression).fixed_time


@attrs.frozen(kw_only=True)
class Once(_Misfire):
    """Exactly one fire, at ``at``."""

    kind = "once"
    at: datetime

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "at", _aware(self.at, "at"))


Schedule = Manual | Interval | Cron | Once


# --- cron arithmetic -------------------------------------------------------------------------

_MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


@attrs.frozen
class _CronPlan:
    cronsim_expression: str
    fixed_time: bool


def _field_value(token: str, names: list[str], first: int) -> int | None:
    token = token.upper()
    if token.isascii() and token.isdigit():
        return int(token)
    if token in names:
        return names.index(token) + first
    return None


def _single_value_steps_fixed(field: str, names: list[str], first: int) -> str:
    """Rewrite ``a-a/n`` terms to ``a-a``: cronsim would read them as ``a/n`` (a to the end)."""
    terms = field.split(",")
    for i, term in enumerate(terms):
        base, slash, step = term.partition("/")
        low, dash, high = base.partition("-")
        if not (slash and dash and step.isascii() and step.isdigit() and int(step) > 0):
            continue  # not a stepped range, or a bad step that cronsim should refuse
        value = _field_value(low, names, first)
        if value is not None and value == _field_value(high, names, first):
            terms[i] = base
    return ",".join(terms)


@functools.lru_cache(maxsize=4096)
def _plan(expression: str) -> _CronPlan:
    fields = expression.split()
    seconds = len(fields) == 6
    names: list[tuple[list[str], int]] = [([], 0), ([], 0), ([], 1), (_MONTH_NAMES, 1)]
    names.append((_DAY_NAMES, 0))
    if seconds:
        names.insert(0, ([], 0))
    fixed = [
        _single_value_steps_fixed(f, n, first) for f, (n, first) in zip(fields, names, strict=True)
    ]
    minute, hour = fields[1:3] if seconds else fields[0:2]
    return _CronPlan(
        cronsim_expression=" ".join(fixed),
        fixed_time=not seconds and not minute.startswith("*") and not hour.startswith("*"),
    )


def _offset(zone: ZoneInfo, moment: datetime) -> timedelta:
    offset = moment.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset


def _exists(wall: datetime, zone: ZoneInfo) -> datetime | None:
    """The UTC instant of a naive wall time (its first fold), or None inside a DST gap."""
    local = wall.replace(tzinfo=zone, fold=0)
    moment = local.astimezone(UTC)
    if moment.astimezone(zone).replace(tzinfo=None) != wall:
        return None
    return moment


def _next_offset_change(
    zone: ZoneInfo, low: datetime, high: datetime, offset: timedelta
) -> datetime | None:
    """The first whole second in ``(low, high]`` whose UTC offset is not ``offset`` (which is
    the offset at ``low``), or None."""
    probe = low
    while probe < high:
        ahead = min(probe + _OFFSET_PROBE, high)
        if _offset(zone, ahead) != offset:
            # offsets change on whole seconds (TZif stores seconds): bisect on timestamps
            same, other = math.floor(probe.timestamp()), math.ceil(ahead.timestamp())
            while other - same > 1:
                middle = (same + other) // 2
                if _offset(zone, datetime.fromtimestamp(middle, UTC)) == offset:
                    same = middle
                else:
                    other = middle
            return datetime.fromtimestamp(other, UTC)
        probe = ahead
    return None


def _fixed_time_fires(expression: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    # Naive wall times in order map monotonically onto instants (first fold; a gap time onto the
    # end of the gap), so one naive iteration serves. Starting from the wall time of ``after``
    # may produce instants <= after only when ``after`` is in a second fold; they are skipped.
    for wall in CronSim(expression, after.astimezone(zone).replace(tzinfo=None)):
        moment = _exists(wall, zone)
        shifted = wall
        while moment is None:  # in a spring-forward gap: the first real minute after it
            shifted = shifted.replace(second=0) + _MINUTE
            moment = _exists(shifted, zone)
        if moment > after:
            after = moment
            yield moment


def _wall_clock_fires(expression: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    # Within one period of constant UTC offset, local time is UTC shifted by that offset, so the
    # instants are the naive matches minus the offset. Walk the periods one after another.
    cursor, inclusive = after, False
    while True:
        offset = _offset(zone, cursor)
        wall = (cursor + offset).replace(tzinfo=None)
        # cronsim yields matches strictly after its start (to the second); inclusive starts are
        # whole seconds (offset changes), so starting one second earlier includes them
        for match in CronSim(expression, wall - _SECOND if inclusive else wall):
            candidate = (match - offset).replace(tzinfo=UTC)
            change = _next_offset_change(zone, cursor, candidate, offset)
            if change is not None:
                cursor, inclusive = change, True
                break
            yield candidate
            cursor, inclusive = candidate, False
        else:
            return


def _cron_fire_times(schedule: Cron, after: datetime) -> Iterator[datetime]:
    plan = _plan(schedule.expression)
    fires = _fixed_time_fires if plan.fixed_time else _wall_clock_fires
    try:
        yield from fires(plan.cronsim_expression, schedule.zone, after)
    except OverflowError:  # walked past datetime.max
        return


def _interval_fire_times(step: timedelta, start: datetime, after: datetime) -> Iterator[datetime]:
    # exact integer arithmetic on microseconds: never a float rounding off a slot
    current = start if after < start else start + ((after - start) // step + 1) * step
    try:
        while True:
            yield current
            current += step
    except OverflowError:
        return


def fire_times(
    schedule: Schedule, after: datetime, *, anchor: datetime | None = None
) -> Iterator[datetime]:
    """Yield the schedule's fire times strictly after ``after``, in order, as UTC datetimes.

    ``anchor`` is where an interval without an explicit start counts from (without one, from
    ``after``). ``after`` and ``anchor`` must be timezone-aware (else ValidationError).
    """
    after = _aware_argument(after, "after")
    if anchor is not None:
        anchor = _aware_argument(anchor, "anchor")
    if isinstance(schedule, Manual):
        return iter(())
    if isinstance(schedule, Once):
        return iter((schedule.at,) if schedule.at > after else ())
    if isinstance(schedule, Interval):
        start = schedule.start or anchor or after
        return _interval_fire_times(timedelta(seconds=schedule.seconds), start, after)
    return _cron_fire_times(schedule, after)


def next_fire_time(
    schedule: Schedule, after: datetime, *, anchor: datetime | None = None
) -> datetime | None:
    """The first fire time strictly after ``after`` (UTC), or None if there is none."""
    return next(fire_times(schedule, after, anchor=anchor), None)


# --- misfires --------------------------------------------------------------------------------


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
    """Decide, per the misfire policy, which of the ``due`` fire times (all ``<= now``) become
    jobs, and return one decision per input time, oldest first, so none is silently lost.

    On-time fires (late by at most ``misfire_grace``) always run. Late ones follow the policy:
    SKIP runs none; LATEST runs the newest late one (``backfilled``) unless an on-time fire
    supersedes it; ALL runs the newest ``catch_up_limit`` late ones (``backfilled``). A time
    listed twice is decided once; its repeats are not run.
    """
    now = _aware_argument(now, "now")
    grace = timedelta(seconds=schedule.misfire_grace)
    ordered = sorted(_aware_argument(t, "due") for t in due)
    distinct = sorted(set(ordered))
    late = [t for t in distinct if now - t > grace]
    has_on_time = len(late) < len(distinct)
    policy = schedule.misfire_policy
    run_late: set[datetime] = set()
    not_run_reason = f"missed: later than the misfire grace of {schedule.misfire_grace:g} s"
    if policy is MisfirePolicy.LATEST:
        if late and not has_on_time:
            run_late = {late[-1]}
        not_run_reason += " (policy latest: only the newest fire time runs)"
    elif policy is MisfirePolicy.ALL:
        run_late = set(late[-schedule.catch_up_limit :])
        not_run_reason += f" (policy all: beyond catch_up_limit={schedule.catch_up_limit})"
    else:
        not_run_reason += " (policy skip)"
    late_set = set(late)
    decided: set[datetime] = set()
    decisions: list[FireDecision] = []
    for t in ordered:
        if t in decided:
            decisions.append(FireDecision(t, run=False, reason="duplicate fire time"))
        elif t not in late_set:
            decisions.append(FireDecision(t, run=True))
        elif t in run_late:
            decisions.append(FireDecision(t, run=True, backfilled=True, reason="late: caught up"))
        else:
            decisions.append(FireDecision(t, run=False, reason=not_run_reason))
        decided.add(t)
    return decisions


def _known_zones() -> frozenset[str]:  # used by tests and the CLI's completion
    return frozenset(available_timezones())
