"""Cron fire times across time zones and DST, checked against an independent reference.

The reference below walks UTC minute by minute, reads each minute's local wall time and applies
the documented rule (the module docstring of ``cronium_core.schedules``) with its own tiny cron
field matcher; it shares no code with cronsim or with the scheduler.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise, takewhile
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from cronium_core.errors import InvalidSchedule
from cronium_core.schedules import Cron, Interval, fire_times, next_fire_time

MINUTE = timedelta(minutes=1)
_SECOND = timedelta(seconds=1)

ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Santiago",  # transitions at local midnight
    "Europe/London",
    "Asia/Kolkata",  # +05:30, no DST
    "UTC",
    "Pacific/Chatham",  # +12:45 / +13:45
]

# at least 300 examples; a profile loaded by conftest (a nightly run) may ask for more
PROPERTY_SETTINGS = settings(
    max_examples=max(300, settings().max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- the reference -------------------------------------------------------------------------


def _parse_field(text: str, low: int, high: int) -> frozenset[int]:
    """Values of one field in the syntax the strategy below generates: ``*``, ``*/n``, ``a``,
    ``a-b``, ``a-b/n`` and comma lists of the non-star forms."""
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first_text, last_text = base.split("-")
            first, last = int(first_text), int(last_text)
        else:
            first = last = int(base)
        values.update(range(first, last + 1, step))
    return frozenset(values)


@attrs.frozen
class RefCron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    #: Vixie/Debian: day-of-month AND day-of-week when either field starts with "*", else OR
    day_and: bool
    #: Debian: neither the minute nor the hour field starts with "*"
    fixed_time: bool

    @classmethod
    def parse(cls, expression: str) -> RefCron:
        minute, hour, day, month, weekday = expression.split()
        return cls(
            minutes=_parse_field(minute, 0, 59),
            hours=_parse_field(hour, 0, 23),
            days=_parse_field(day, 1, 31),
            months=_parse_field(month, 1, 12),
            weekdays=frozenset(d % 7 for d in _parse_field(weekday, 0, 7)),
            day_and=day.startswith("*") or weekday.startswith("*"),
            fixed_time=not minute.startswith("*") and not hour.startswith("*"),
        )

    def matches(self, wall: datetime) -> bool:
        if (
            wall.minute not in self.minutes
            or wall.hour not in self.hours
            or wall.month not in self.months
        ):
            return False
        day_ok = wall.day in self.days
        weekday_ok = wall.isoweekday() % 7 in self.weekdays
        return (day_ok and weekday_ok) if self.day_and else (day_ok or weekday_ok)


def reference_fires(
    expression: str, zone: ZoneInfo, after: datetime, until: datetime, limit: int
) -> list[datetime]:
    """Fire times in ``(after, until]``, at most ``limit``, by walking UTC minutes."""
    cron = RefCron.parse(expression)
    found: list[datetime] = []
    moment = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    previous_wall = (moment - MINUTE).astimezone(zone).replace(tzinfo=None)
    while moment <= until and len(found) < limit:
        local = moment.astimezone(zone)
        wall = local.replace(tzinfo=None)
        if cron.fixed_time:
            # first fold only; a wall minute the clock jumped over fires at the first real minute
            fires = cron.matches(wall) and local.fold == 0
            skipped = previous_wall + MINUTE
            while not fires and skipped < wall:
                fires = cron.matches(skipped)
                skipped += MINUTE
        else:
            fires = cron.matches(wall)
        if fires:
            found.append(moment)
        previous_wall = wall
        moment += MINUTE
    return found


def _exists(local: datetime) -> bool:
    """True unless the wall time was skipped by a spring-forward (it would not round-trip)."""
    round_trip = local.astimezone(UTC).astimezone(local.tzinfo)
    return round_trip.replace(tzinfo=None) == local.replace(tzinfo=None)


def _in_first_fold(local: datetime) -> bool:
    """True when this wall time comes round again later (a fall-back repeats it)."""
    return _exists(local.replace(fold=1)) and (
        local.replace(fold=1).astimezone(UTC) != local.astimezone(UTC)
    )


@functools.cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """UTC instants in 2024-2030 at which the zone's UTC offset changes (found by bisection)."""
    zone = ZoneInfo(zone_name)

    def offset(t: datetime) -> timedelta | None:
        return t.astimezone(zone).utcoffset()

    found = []
    day = datetime(2024, 1, 1, tzinfo=UTC)
    while day.year < 2031:
        following = day + timedelta(days=1)
        if offset(day) != offset(following):
            low, high = day, following  # offset(low) != offset(high)
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                middle = middle.replace(microsecond=0)
                if offset(middle) == offset(low):
                    low = middle
                else:
                    high = middle
            found.append(high)
        day = following
    return tuple(found)


def test_reference_knows_the_transitions() -> None:
    """The start-instant strategy relies on this; New York changed at 07:00 and 06:00 UTC."""
    ny = transitions("America/New_York")
    assert datetime(2026, 3, 8, 7, tzinfo=UTC) in ny
    assert datetime(2026, 11, 1, 6, tzinfo=UTC) in ny
    assert len(ny) == 14
    assert transitions("UTC") == ()
    assert transitions("Asia/Kolkata") == ()


def test_reference_applies_the_rule_by_hand() -> None:
    """A few hand-checked cases, so that the reference itself is trusted."""
    ny = ZoneInfo("America/New_York")
    day_before = datetime(2026, 3, 7, 12, tzinfo=UTC)
    spring = reference_fires("30 2 * * *", ny, day_before, day_before + timedelta(days=2), 10)
    assert [t.astimezone(ny).isoformat() for t in spring] == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]
    fall_start = datetime(2026, 11, 1, 4, tzinfo=UTC)  # 00:00 EDT
    fall = reference_fires("30 1 * * *", ny, fall_start, fall_start + timedelta(hours=4), 10)
    assert [t.astimezone(ny).isoformat() for t in fall] == ["2026-11-01T01:30:00-04:00"]
    wild = reference_fires("30 * * * *", ny, fall_start, fall_start + timedelta(hours=4), 10)
    assert [t.astimezone(ny).isoformat() for t in wild] == [
        "2026-11-01T00:30:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:30:00-05:00",
        "2026-11-01T02:30:00-05:00",
    ]
    assert RefCron.parse("0 0 1 * 1").matches(datetime(2026, 6, 1))  # a Monday: OR
    assert RefCron.parse("0 0 2 * 1").matches(datetime(2026, 6, 1))
    assert not RefCron.parse("0 0 */2 * 1").matches(datetime(2026, 6, 2))  # AND
    assert RefCron.parse("0 0 * * 7").matches(datetime(2026, 6, 7))  # 7 is Sunday


# --- strategies ----------------------------------------------------------------------------


@st.composite
def cron_fields(
    draw: st.DrawFn, low: int, high: int, star_bias: bool = False, favoured: tuple[int, ...] = ()
) -> str:
    """One field: ``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n`` or a list of the last three.

    ``favoured`` values are drawn more often (the hours around DST changes)."""

    def value() -> int:
        if draw(st.booleans()) and favoured:
            return draw(st.sampled_from(favoured))
        return draw(st.integers(low, high))

    def term() -> str:
        kind = draw(st.sampled_from(["value", "range", "stepped range"]))
        if kind == "value":
            return str(value())
        first, last = sorted((value(), value()))
        if kind == "range":
            return f"{first}-{last}"
        return f"{first}-{last}/{draw(st.integers(1, high - low + 1))}"

    kinds = ["*", "*/n", "term", "list"] + ["*"] * (3 if star_bias else 0)
    kind = draw(st.sampled_from(kinds))
    if kind == "*":
        return "*"
    if kind == "*/n":
        return f"*/{draw(st.integers(1, high - low + 1))}"
    if kind == "term":
        return term()
    return ",".join(term() for _ in range(draw(st.integers(2, 4))))


#: the hours in which the zones above change their clocks (Santiago at midnight, on either side)
DST_HOURS = (0, 1, 2, 3, 23)


@st.composite
def cron_expressions(draw: st.DrawFn) -> str:
    return " ".join(
        [
            draw(cron_fields(0, 59)),
            draw(cron_fields(0, 23, favoured=DST_HOURS)),
            draw(cron_fields(1, 31, star_bias=True)),
            draw(cron_fields(1, 12, star_bias=True)),
            draw(cron_fields(0, 7, star_bias=True)),
        ]
    )


@st.composite
def starts(draw: st.DrawFn, zone_name: str) -> datetime:
    """Instants in 2024-2030; half of them shortly before (or just after) a DST change."""
    near = transitions(zone_name)
    if draw(st.booleans()) and near:
        offset = draw(
            st.one_of(
                st.timedeltas(min_value=-timedelta(days=2), max_value=timedelta(days=1)),
                st.timedeltas(min_value=-timedelta(hours=3), max_value=timedelta(hours=1)),
            )
        )
        return draw(st.sampled_from(near)) + offset
    return draw(
        st.datetimes(
            min_value=datetime(2024, 1, 1),
            max_value=datetime(2030, 12, 31),
            timezones=st.just(UTC),
        )
    )


def _cron(expression: str, zone_name: str) -> Cron:
    try:
        return Cron(expression=expression, timezone=zone_name)
    except InvalidSchedule:
        # only combinations that can never fire are refused, for example "31" in February only
        reference = RefCron.parse(expression)
        assert reference.day_and
        assert min(reference.days) > 29
        assume(False)
        raise


def _window(schedule: Cron, after: datetime, until: datetime, limit: int) -> list[datetime]:
    return list(islice(takewhile(lambda t: t <= until, fire_times(schedule, after)), limit))


def _show(times: list[datetime], zone: ZoneInfo) -> list[str]:
    return [t.astimezone(zone).isoformat() for t in times]


# --- properties ----------------------------------------------------------------------------


def _count_dst_cases(expression: str, zone: ZoneInfo, fires: list[datetime]) -> None:
    """Tell Hypothesis's statistics (--hypothesis-show-statistics) how often the DST cases came
    up, so that a strategy that stops reaching them is noticed."""
    reference = RefCron.parse(expression)
    event("fixed-time" if reference.fixed_time else "wall-clock")
    for fire in fires:
        local = fire.astimezone(zone)
        if not reference.matches(local.replace(tzinfo=None)):
            event("a fixed-time job moved out of a gap")
        if local.fold:
            event("a wall-clock job fired in a second fold")
        if reference.fixed_time and _in_first_fold(local):
            event("a fixed-time job fired in a repeated wall time (once)")


@PROPERTY_SETTINGS
@given(data=st.data(), expression=cron_expressions(), zone_name=st.sampled_from(ZONES))
def test_cron_fire_times_equal_the_minute_by_minute_reference(
    data: st.DataObject, expression: str, zone_name: str
) -> None:
    after = data.draw(starts(zone_name), label="after")
    schedule = _cron(expression, zone_name)
    until = after + timedelta(days=2)
    got = _window(schedule, after, until, 200)
    expected = reference_fires(expression, schedule.zone, after, until, 200)
    assert _show(got, schedule.zone) == _show(expected, schedule.zone)
    _count_dst_cases(expression, schedule.zone, expected)


DST_ZONES = [zone for zone in ZONES if transitions(zone)]


@st.composite
def expressions_at_dst_hours(draw: st.DrawFn) -> str:
    """Any minute field; an hour field made of the hours in which clocks change; any day."""
    hours = draw(st.lists(st.sampled_from(DST_HOURS), min_size=1, max_size=3, unique=True))
    hour = draw(st.sampled_from([",".join(map(str, sorted(hours))), "1-3", "0-23", "*/2"]))
    return f"{draw(cron_fields(0, 59))} {hour} * * *"


@PROPERTY_SETTINGS
@given(
    expression=expressions_at_dst_hours(),
    zone_name=st.sampled_from(DST_ZONES),
    data=st.data(),
)
def test_cron_around_dst_changes_equals_the_reference(
    expression: str, zone_name: str, data: st.DataObject
) -> None:
    change = data.draw(st.sampled_from(transitions(zone_name)), label="change")
    early = data.draw(st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=26)))
    after = change - early
    schedule = _cron(expression, zone_name)
    until = change + timedelta(hours=6)
    got = _window(schedule, after, until, 400)
    expected = reference_fires(expression, schedule.zone, after, until, 400)
    assert _show(got, schedule.zone) == _show(expected, schedule.zone)
    _count_dst_cases(expression, schedule.zone, expected)


@PROPERTY_SETTINGS
@given(data=st.data(), expression=cron_expressions(), zone_name=st.sampled_from(ZONES))
def test_cron_fire_times_are_increasing_real_and_match_the_fields(
    data: st.DataObject, expression: str, zone_name: str
) -> None:
    after = data.draw(starts(zone_name), label="after")
    schedule = _cron(expression, zone_name)
    reference = RefCron.parse(expression)
    previous = after
    for fire in islice(fire_times(schedule, after), 50):
        assert fire > previous
        assert fire.tzinfo is UTC
        assert (fire.second, fire.microsecond) == (0, 0)
        assert next_fire_time(schedule, previous) == fire
        local = fire.astimezone(schedule.zone)
        if not reference.matches(local.replace(tzinfo=None)):
            # only a fixed-time job moved out of a spring-forward gap may fire off its fields
            assert reference.fixed_time, local.isoformat()
            just_before = (fire - MINUTE).astimezone(schedule.zone).replace(tzinfo=None)
            assert local.replace(tzinfo=None) - just_before > MINUTE, local.isoformat()
            event("a fixed-time job moved out of a gap")
        if local.fold:
            assert not reference.fixed_time, local.isoformat()
            event("a wall-clock job fired in a second fold")
        previous = fire


# --- S4: the DST scenarios, spelled out ------------------------------------------------------

S4_DAYS = {
    # zone: (spring-forward day, fall-back day) in 2026
    "America/New_York": ("2026-03-08", "2026-11-01"),
    "Europe/Berlin": ("2026-03-29", "2026-10-25"),
}


def _day_fires(expression: str, zone_name: str, day: str) -> list[str]:
    """The fire times of one local calendar day, as local ISO strings with their offsets."""
    zone = ZoneInfo(zone_name)
    midnight = datetime.fromisoformat(day).replace(tzinfo=zone)
    start = midnight.astimezone(UTC)
    end = (midnight + timedelta(days=1)).astimezone(UTC)  # the next wall-clock midnight
    schedule = Cron(expression=expression, timezone=zone_name)
    return _show(_window(schedule, start - _SECOND, end - _SECOND, 1000), zone)


def test_s4_fixed_time_job_on_spring_forward_day_runs_at_the_end_of_the_gap() -> None:
    # 02:30 does not exist on these days; Debian's rule runs the job at the first real minute
    assert _day_fires("30 2 * * *", "America/New_York", "2026-03-08") == [
        "2026-03-08T03:00:00-04:00"
    ]
    assert _day_fires("30 2 * * *", "Europe/Berlin", "2026-03-29") == ["2026-03-29T03:00:00+02:00"]


def test_s4_fixed_time_job_on_fall_back_day_runs_once() -> None:
    # New York repeats 01:00-01:59, so 02:30 is an ordinary time there
    assert _day_fires("30 2 * * *", "America/New_York", "2026-11-01") == [
        "2026-11-01T02:30:00-05:00"
    ]
    # Berlin repeats 02:00-02:59; the job runs in the first fold only
    assert _day_fires("30 2 * * *", "Europe/Berlin", "2026-10-25") == ["2026-10-25T02:30:00+02:00"]
    assert _day_fires("30 1 * * *", "America/New_York", "2026-11-01") == [
        "2026-11-01T01:30:00-04:00"
    ]


@pytest.mark.parametrize("zone_name", sorted(S4_DAYS))
def test_s4_fixed_time_job_on_ordinary_days(zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    day = datetime(2026, 6, 15, tzinfo=zone)
    offset = day.strftime("%z")
    assert _day_fires("30 2 * * *", zone_name, "2026-06-15") == [
        f"2026-06-15T02:30:00{offset[:3]}:{offset[3:]}"
    ]


def _half_hours(day: str, wall_offsets: list[tuple[str, str]]) -> list[str]:
    return [f"{day}T{wall}:00{offset}" for wall, offset in wall_offsets]


def test_s4_wildcard_job_skips_the_gap_and_runs_in_both_folds_new_york() -> None:
    spring = _day_fires("*/30 * * * *", "America/New_York", "2026-03-08")
    assert len(spring) == 46  # 23 hours
    assert spring[3:6] == _half_hours(
        "2026-03-08", [("01:30", "-05:00"), ("03:00", "-04:00"), ("03:30", "-04:00")]
    )
    fall = _day_fires("*/30 * * * *", "America/New_York", "2026-11-01")
    assert len(fall) == 50  # 25 hours
    assert fall[1:8] == _half_hours(
        "2026-11-01",
        [
            ("00:30", "-04:00"),
            ("01:00", "-04:00"),
            ("01:30", "-04:00"),
            ("01:00", "-05:00"),
            ("01:30", "-05:00"),
            ("02:00", "-05:00"),
            ("02:30", "-05:00"),
        ],
    )


def test_s4_wildcard_job_skips_the_gap_and_runs_in_both_folds_berlin() -> None:
    spring = _day_fires("*/30 * * * *", "Europe/Berlin", "2026-03-29")
    assert len(spring) == 46
    assert spring[3:6] == _half_hours(
        "2026-03-29", [("01:30", "+01:00"), ("03:00", "+02:00"), ("03:30", "+02:00")]
    )
    fall = _day_fires("*/30 * * * *", "Europe/Berlin", "2026-10-25")
    assert len(fall) == 50
    assert fall[3:9] == _half_hours(
        "2026-10-25",
        [
            ("01:30", "+02:00"),
            ("02:00", "+02:00"),
            ("02:30", "+02:00"),
            ("02:00", "+01:00"),
            ("02:30", "+01:00"),
            ("03:00", "+01:00"),
        ],
    )


@pytest.mark.parametrize("zone_name", sorted(S4_DAYS))
@pytest.mark.parametrize("expression", ["30 2 * * *", "*/30 * * * *"])
def test_s4_no_fire_time_is_a_non_existent_local_time(zone_name: str, expression: str) -> None:
    """Fire times are UTC instants, so an imaginary local time (APScheduler #1059) cannot even
    be expressed; and each one's local wall time, read back in the zone, is that same instant."""
    zone = ZoneInfo(zone_name)
    schedule = Cron(expression=expression, timezone=zone_name)
    for day in S4_DAYS[zone_name]:
        after = datetime.fromisoformat(day).replace(tzinfo=zone).astimezone(UTC)
        for fire in islice(fire_times(schedule, after), 60):
            assert fire.tzinfo is UTC
            wall = fire.astimezone(zone).replace(tzinfo=None)
            assert _exists(wall.replace(tzinfo=zone)), wall
            readings = {wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)}
            assert fire in readings


@pytest.mark.parametrize("zone_name", sorted(S4_DAYS))
@pytest.mark.parametrize("seconds", [1, 59, 600, 3600, 5400, 86400, 90061.5])
def test_intervals_across_dst_are_exact_multiples_in_utc(zone_name: str, seconds: float) -> None:
    zone = ZoneInfo(zone_name)
    step = timedelta(seconds=seconds)
    for change in (t for t in transitions(zone_name) if t.year == 2026):
        start = (change - timedelta(days=3)).astimezone(zone)  # a local start, converted to UTC
        schedule = Interval(seconds=seconds, start=start)
        after = change - 2.5 * step
        fires = list(islice(fire_times(schedule, after), 20))
        # expected slots in UTC arithmetic (adding to the local start would be wall-clock math)
        utc_start = start.astimezone(UTC)
        first = (after - utc_start) // step + 1
        assert fires == [utc_start + (first + i) * step for i in range(20)]
        assert all(later - earlier == step for earlier, later in pairwise(fires))
        # the window does cross the change: local times on both sides of it
        assert {t.astimezone(zone).utcoffset() for t in fires} == {
            (change - _SECOND).astimezone(zone).utcoffset(),
            change.astimezone(zone).utcoffset(),
        }


# --- regressions: where cronsim's own DST mode is wrong (see the schedules.py docstring) -------


def test_half_hour_dst_zone_wall_clock_job_keeps_whole_hours() -> None:
    # Lord Howe falls back from 02:00+11:00 to 01:30+10:30; cronsim 2.8 then fired 22:30 first
    assert _day_fires("*/15 22 * * *", "Australia/Lord_Howe", "2024-04-07") == [
        "2024-04-07T22:00:00+10:30",
        "2024-04-07T22:15:00+10:30",
        "2024-04-07T22:30:00+10:30",
        "2024-04-07T22:45:00+10:30",
    ]
    # both folds of 01:30-01:59, nothing else moved
    assert _day_fires("*/20 1-2 * * *", "Australia/Lord_Howe", "2024-04-07") == [
        "2024-04-07T01:00:00+11:00",
        "2024-04-07T01:20:00+11:00",
        "2024-04-07T01:40:00+11:00",
        "2024-04-07T01:40:00+10:30",
        "2024-04-07T02:00:00+10:30",
        "2024-04-07T02:20:00+10:30",
        "2024-04-07T02:40:00+10:30",
    ]


def test_half_hour_dst_zone_spring_forward() -> None:
    # 02:00-02:29 does not exist on 2026-10-04
    assert _day_fires("*/10 2 * * *", "Australia/Lord_Howe", "2026-10-04") == [
        "2026-10-04T02:30:00+11:00",
        "2026-10-04T02:40:00+11:00",
        "2026-10-04T02:50:00+11:00",
    ]
    assert _day_fires("10 2 * * *", "Australia/Lord_Howe", "2026-10-04") == [
        "2026-10-04T02:30:00+11:00"
    ]
    assert _day_fires("45 1 * * *", "Australia/Lord_Howe", "2026-04-05") == [
        "2026-04-05T01:45:00+11:00"
    ]


def test_spring_forward_at_midnight_has_no_midnight_for_wall_clock_jobs() -> None:
    # Santiago skips 00:00-00:59 on 2026-09-06; cronsim 2.8 returned "00:00-04:00", which does
    # not exist, for wall-clock jobs
    assert _day_fires("* 0 * * *", "America/Santiago", "2026-09-06") == []
    assert _day_fires("*/30 0-1 * * *", "America/Santiago", "2026-09-06") == [
        "2026-09-06T01:00:00-03:00",
        "2026-09-06T01:30:00-03:00",
    ]
    # a fixed-time job moves to the end of the gap, once
    assert _day_fires("0,30 0 * * *", "America/Santiago", "2026-09-06") == [
        "2026-09-06T01:00:00-03:00"
    ]


def test_fall_back_at_midnight_repeats_the_last_hour_of_the_day() -> None:
    # Santiago goes from 23:59:59-03:00 back to 23:00-04:00 on 2026-04-04
    assert _day_fires("30 23 * * *", "America/Santiago", "2026-04-04") == [
        "2026-04-04T23:30:00-03:00"
    ]
    assert _day_fires("30 * * * *", "America/Santiago", "2026-04-04")[-2:] == [
        "2026-04-04T23:30:00-03:00",
        "2026-04-04T23:30:00-04:00",
    ]


@pytest.mark.parametrize(
    ("expression", "minutes"),
    [("5-5/20 * * * *", [5, 5, 5]), ("5-25/20 * * * *", [5, 25, 5]), ("*/25 * * * *", [0, 25, 50])],
)
def test_stepped_range_with_equal_ends_is_that_one_value(
    expression: str, minutes: list[int]
) -> None:
    # cronsim 2.8 reads "5-5/20" as "5/20": 5, 25, 45
    after = datetime(2026, 1, 1, tzinfo=UTC) - _SECOND
    fires = islice(fire_times(Cron(expression=expression), after), 3)
    assert [f.minute for f in fires] == minutes


def test_stepped_single_day_of_week_range_means_that_day() -> None:
    schedule = Cron(expression="0 12 * * MON-1/3")
    fires = list(islice(fire_times(schedule, datetime(2026, 1, 1, tzinfo=UTC)), 3))
    assert [f.date().isoformat() for f in fires] == ["2026-01-05", "2026-01-12", "2026-01-19"]


def test_sparse_wall_clock_job_across_many_dst_changes() -> None:
    # every minute of midnight on 29 February, in a DST zone: four years and eight changes apart
    schedule = Cron(expression="* 0 29 2 *", timezone="America/New_York")
    after = datetime(2024, 3, 1, tzinfo=UTC)
    fires = list(islice(fire_times(schedule, after), 61))
    assert _show([fires[0], fires[59], fires[60]], schedule.zone) == [
        "2028-02-29T00:00:00-05:00",
        "2028-02-29T00:59:00-05:00",
        "2032-02-29T00:00:00-05:00",
    ]


def test_six_field_expressions_follow_the_wall_clock() -> None:
    # seconds-first expressions are not Debian cron; they run in both folds and skip the gap
    assert _day_fires("0 30 1 * * *", "America/New_York", "2026-11-01") == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:30:00-05:00",
    ]
    assert _day_fires("0 30 2 * * *", "America/New_York", "2026-03-08") == []
