"""Schedule values: validation, intervals, one-offs, manual schedules and the misfire plan (S3).

Cron fire times across time zones and DST are in test_schedules_dst.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import islice, takewhile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cronium_core.errors import InvalidSchedule, ValidationError
from cronium_core.schedules import (
    Cron,
    FireDecision,
    Interval,
    Manual,
    MisfirePolicy,
    Once,
    fire_times,
    next_fire_time,
    plan_fires,
)

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)  # a Monday
HOUR = timedelta(hours=1)
# at least 300 examples; a profile loaded by conftest (a nightly run) may ask for more
PROPERTY_SETTINGS = settings(max_examples=max(300, settings().max_examples), deadline=None)

aware_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2090, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]
    ),
)


def _refused(field: str, factory: Any, **kwargs: Any) -> InvalidSchedule:
    with pytest.raises(InvalidSchedule) as info:
        factory(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    return info.value


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("", "0 fields"),
        ("* * * *", "4 fields"),
        ("* * * * * * *", "7 fields"),
        ("0 9 * * 1-5 extra more", "7 fields"),
        ("60 * * * *", "Bad minute"),
        ("* 24 * * *", "Bad hour"),
        ("* * 0 * *", "Bad day-of-month"),
        ("* * 32 * *", "Bad day-of-month"),
        ("* * * 0 *", "Bad month"),
        ("* * * 13 *", "Bad month"),
        ("* * * * 8", "Bad day-of-week"),
        ("-1 * * * *", "Bad minute"),
        ("*/0 * * * *", "Bad minute"),
        ("5-1 * * * *", "Bad minute"),
        ("1,,2 * * * *", "Bad minute"),
        ("a b c d e", "Bad"),
        ("@daily", "1 fields"),
        ("0 0 * * MON-FOO", "Bad day-of-week"),
        ("61 * * * * *", "Bad second"),
        ("0 0 30 2 *", "Bad day-of-month"),  # February never has a 30th
        ("0 0 LW * */7", "never fires"),  # the last weekday of a month is never a Sunday
    ],
)
def test_bad_cron_expressions_name_the_field_and_the_problem(expression: str, problem: str) -> None:
    error = _refused("expression", Cron, expression=expression)
    assert problem in error.problem
    assert repr(expression) in error.problem


def test_cron_expression_must_be_a_string() -> None:
    _refused("expression", Cron, expression=None)


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "", "America", "../etc/passwd", "/etc/localtime", "UTC\0", "utc "]
)
def test_unknown_time_zones_are_refused(zone: str) -> None:
    error = _refused("timezone", Cron, expression="0 9 * * *", timezone=zone)
    assert "unknown IANA time zone" in error.problem


def test_time_zone_must_be_a_string() -> None:
    _refused("timezone", Cron, expression="0 9 * * *", timezone=5)


def _cron_or_error(expression: str, timezone: str) -> Cron | InvalidSchedule:
    try:
        return Cron(expression=expression, timezone=timezone)
    except InvalidSchedule as error:
        return error


cron_alphabet = st.text(alphabet="0123456789*/-,LW#MONTUEJAN?x ", max_size=12)


@settings(max_examples=500, deadline=None)
@given(
    fields=st.lists(cron_alphabet, min_size=1, max_size=7),
    zone=st.sampled_from(["UTC", "Europe/Berlin"]),
)
def test_any_cron_string_is_either_usable_or_refused_as_invalid_schedule(
    fields: list[str], zone: str
) -> None:
    schedule = _cron_or_error(expression=" ".join(fields), timezone=zone)
    if isinstance(schedule, InvalidSchedule):
        assert schedule.field == "expression"
        return
    fire = next_fire_time(schedule, T0)
    assert fire is None or fire > T0


@settings(max_examples=300, deadline=None)
@given(zone=st.text(max_size=30))
def test_any_zone_name_is_either_usable_or_refused_as_invalid_schedule(zone: str) -> None:
    schedule = _cron_or_error(expression="0 9 * * *", timezone=zone)
    if isinstance(schedule, InvalidSchedule):
        assert schedule.field == "timezone"
        return
    assert schedule.zone.key == zone


@pytest.mark.parametrize("seconds", [0, 0.5, 0.9999999, -60, float("nan"), float("-inf")])
def test_intervals_shorter_than_a_second_are_refused(seconds: float) -> None:
    error = _refused("seconds", Interval, seconds=seconds)
    assert "at least 1 s" in error.problem


@pytest.mark.parametrize("seconds", ["60", True, None, float("inf"), 1e300])
def test_interval_length_must_be_a_usable_number(seconds: object) -> None:
    _refused("seconds", Interval, seconds=seconds)


def test_interval_start_and_once_at_must_be_timezone_aware() -> None:
    naive = datetime(2026, 1, 1, 9, 0)
    assert "timezone-aware" in _refused("start", Interval, seconds=60, start=naive).problem
    assert "timezone-aware" in _refused("at", Once, at=naive).problem
    _refused("at", Once, at="2026-01-01T09:00+00:00")


@pytest.mark.parametrize("grace", [-1, -0.001, float("nan"), float("inf"), "60", None])
def test_misfire_grace_must_be_a_finite_non_negative_number(grace: object) -> None:
    _refused("misfire_grace", Interval, seconds=60, misfire_grace=grace)
    _refused("misfire_grace", Cron, expression="* * * * *", misfire_grace=grace)


@pytest.mark.parametrize("limit", [0, -3, 1.5, True, "10"])
def test_catch_up_limit_must_be_a_positive_integer(limit: object) -> None:
    _refused("catch_up_limit", Once, at=T0, catch_up_limit=limit)


def test_misfire_policy_is_read_from_its_name_and_unknown_names_are_refused() -> None:
    assert Cron(expression="* * * * *", misfire_policy="all").misfire_policy is MisfirePolicy.ALL
    assert Interval(seconds=60).misfire_policy is MisfirePolicy.LATEST
    error = _refused("misfire_policy", Interval, seconds=60, misfire_policy="sometimes")
    assert "skip, latest, all" in error.problem


def test_valid_limits_are_accepted() -> None:
    schedule = Interval(seconds=1, misfire_grace=0, catch_up_limit=1)
    assert (schedule.seconds, schedule.misfire_grace, schedule.catch_up_limit) == (1, 0, 1)


def test_cron_normalises_whitespace_and_keeps_valid_expressions() -> None:
    schedule = Cron(expression="  0  9\t* *  MON-FRI ", timezone="Europe/Berlin")
    assert schedule.expression == "0 9 * * MON-FRI"
    assert schedule.fixed_time
    assert not Cron(expression="*/5 9 * * *").fixed_time
    assert not Cron(expression="0 0 9 * * *").fixed_time  # 6 fields follow the wall clock


def test_naive_after_anchor_or_now_are_refused() -> None:
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValidationError) as info:
        fire_times(Cron(expression="* * * * *"), naive)
    assert info.value.field == "after"
    with pytest.raises(ValidationError) as info:
        next_fire_time(Interval(seconds=60), T0, anchor=naive)
    assert info.value.field == "anchor"
    with pytest.raises(ValidationError) as info:
        plan_fires(Interval(seconds=60), [T0], naive)
    assert info.value.field == "now"


# --- cron basics ---------------------------------------------------------------------------


def test_cron_fire_times_in_a_zone_are_returned_in_utc() -> None:
    schedule = Cron(expression="0 9 * * 1-5", timezone="Europe/Berlin")
    fires = list(islice(fire_times(schedule, T0), 6))
    assert [f.isoformat() for f in fires] == [
        "2026-05-05T07:00:00+00:00",
        "2026-05-06T07:00:00+00:00",
        "2026-05-07T07:00:00+00:00",
        "2026-05-08T07:00:00+00:00",
        "2026-05-11T07:00:00+00:00",
        "2026-05-12T07:00:00+00:00",
    ]
    assert all(f.tzinfo is UTC for f in fires)


def test_cron_with_seconds_field() -> None:
    schedule = Cron(expression="*/20 * * * * *")
    assert [f.second for f in islice(fire_times(schedule, T0), 4)] == [20, 40, 0, 20]


def test_cron_is_strictly_after_to_the_microsecond() -> None:
    schedule = Cron(expression="0 9 * * *")
    assert next_fire_time(schedule, T0) == T0 + timedelta(days=1)
    assert next_fire_time(schedule, T0 - timedelta(microseconds=1)) == T0


# --- intervals -----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    start=aware_datetimes,
    seconds=st.one_of(st.integers(1, 10**7), st.floats(1, 10**6, allow_nan=False)),
    offset=st.timedeltas(min_value=-timedelta(days=30), max_value=timedelta(days=3000)),
)
def test_interval_fires_on_the_grid_from_start(
    start: datetime, seconds: float, offset: timedelta
) -> None:
    schedule = Interval(seconds=seconds, start=start)
    step = timedelta(seconds=seconds)
    after = start + offset
    fires = list(islice(fire_times(schedule, after), 5))
    assert fires[0] > after
    assert fires[0] == start or fires[0] - step <= after  # no slot is skipped
    for k, fire in enumerate(fires):
        assert (fire - start) % step == timedelta(0)
        assert fire == fires[0] + k * step
        assert fire.tzinfo is UTC
    assert next_fire_time(schedule, fires[2]) == fires[3]


def test_interval_without_start_counts_from_the_anchor_or_from_after() -> None:
    schedule = Interval(seconds=3600)
    anchor = T0 - timedelta(minutes=25)
    assert next_fire_time(schedule, T0, anchor=anchor) == T0 + timedelta(minutes=35)
    assert next_fire_time(schedule, T0) == T0 + HOUR
    # an explicit start wins over the anchor
    started = Interval(seconds=3600, start=T0 - timedelta(minutes=10))
    assert next_fire_time(started, T0, anchor=anchor) == T0 + timedelta(minutes=50)


def test_interval_start_in_the_future_is_the_first_fire() -> None:
    schedule = Interval(seconds=60, start=T0)
    assert next_fire_time(schedule, T0 - timedelta(days=2)) == T0
    assert next_fire_time(schedule, T0) == T0 + timedelta(minutes=1)


def test_interval_start_is_stored_in_utc() -> None:
    local = datetime(2026, 5, 4, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    schedule = Interval(seconds=60, start=local)
    assert schedule.start == T0
    assert schedule.start is not None
    assert schedule.start.tzinfo is UTC


def test_interval_stops_at_the_end_of_time_instead_of_crashing() -> None:
    schedule = Interval(seconds=86400 * 365, start=T0)
    fires = list(fire_times(schedule, datetime(9990, 1, 1, tzinfo=UTC)))
    assert 8 <= len(fires) <= 10
    assert fires[-1].year == 9999


# --- once and manual -----------------------------------------------------------------------


def test_once_fires_exactly_once() -> None:
    at = datetime(2026, 5, 4, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    schedule = Once(at=at)
    assert schedule.at == T0
    assert list(fire_times(schedule, T0 - timedelta(days=400))) == [T0]
    assert list(fire_times(schedule, T0 - timedelta(microseconds=1))) == [T0]
    assert list(fire_times(schedule, T0)) == []  # strictly after
    assert next_fire_time(schedule, T0) is None


def test_manual_never_fires() -> None:
    assert list(fire_times(Manual(), datetime(1970, 1, 1, tzinfo=UTC))) == []
    assert next_fire_time(Manual(), T0, anchor=T0) is None


# --- misfires: S3 at the pure level ----------------------------------------------------------


def _after_downtime(**misfire: Any) -> tuple[Cron, list[datetime], datetime]:
    """An hourly schedule whose last fire was 09:00; no scheduler ran from 09:05 to 12:15."""
    schedule = Cron(expression="0 * * * *", **misfire)
    down = T0 + timedelta(minutes=5)
    now = down + timedelta(hours=3, minutes=10)
    due = list(takewhile(lambda t: t <= now, fire_times(schedule, down)))
    assert due == [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]
    return schedule, due, now


def _runs(decisions: list[FireDecision]) -> list[FireDecision]:
    return [d for d in decisions if d.run]


def test_s3_skip_runs_nothing_and_records_every_slot_as_missed() -> None:
    schedule, due, now = _after_downtime(misfire_policy="skip")
    decisions = plan_fires(schedule, due, now)
    assert _runs(decisions) == []
    assert [d.fire_time for d in decisions] == due
    for decision in decisions:
        assert decision.reason is not None
        assert decision.reason.startswith("missed")
        assert "misfire grace" in decision.reason
    # and the next run is on time
    assert next_fire_time(schedule, now) == T0 + 4 * HOUR


def test_s3_latest_runs_once_backfilled_with_the_latest_slot() -> None:
    schedule, due, now = _after_downtime(misfire_policy="latest")
    decisions = plan_fires(schedule, due, now)
    assert _runs(decisions) == [
        FireDecision(T0 + 3 * HOUR, run=True, backfilled=True, reason="late: caught up")
    ]
    assert [d.fire_time for d in decisions] == due
    assert all(d.reason and d.reason.startswith("missed") for d in decisions if not d.run)


def test_s3_all_runs_each_slot_in_order_with_its_own_time() -> None:
    schedule, due, now = _after_downtime(misfire_policy="all")
    runs = _runs(plan_fires(schedule, due, now))
    assert [r.fire_time for r in runs] == due
    assert all(r.backfilled for r in runs)


def test_s3_catch_up_limit_bounds_all_keeping_the_newest() -> None:
    schedule, due, now = _after_downtime(misfire_policy="all", catch_up_limit=2)
    decisions = plan_fires(schedule, due, now)
    assert [r.fire_time for r in _runs(decisions)] == due[1:]
    (skipped,) = [d for d in decisions if not d.run]
    assert skipped.fire_time == due[0]
    assert skipped.reason is not None
    assert "catch_up_limit=2" in skipped.reason


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_on_time_fires_always_run_and_are_not_backfilled(policy: MisfirePolicy) -> None:
    schedule = Interval(seconds=3600, start=T0, misfire_policy=policy, misfire_grace=60)
    due = [T0, T0 + HOUR, T0 + 2 * HOUR]
    now = T0 + 2 * HOUR + timedelta(seconds=60)  # the last slot is late by exactly the grace
    decisions = plan_fires(schedule, due, now)
    assert decisions[-1] == FireDecision(T0 + 2 * HOUR, run=True)
    late_runs = [d.fire_time for d in _runs(decisions[:-1])]
    # an on-time fire supersedes the late ones under LATEST
    expected = {"skip": [], "latest": [], "all": due[:-1]}[policy.value]
    assert late_runs == expected


def test_a_late_once_follows_the_policy() -> None:
    late = T0 - timedelta(minutes=5)
    assert plan_fires(Once(at=late, misfire_policy="skip"), [late], T0)[0].run is False
    assert plan_fires(Once(at=late), [late], T0) == [
        FireDecision(late, run=True, backfilled=True, reason="late: caught up")
    ]


def test_unsorted_or_repeated_due_times_are_decided_once_each_in_slot_order() -> None:
    schedule = Interval(seconds=3600, start=T0, misfire_policy="all")
    due = [T0 + 2 * HOUR, T0, T0 + HOUR, T0]
    decisions = plan_fires(schedule, due, T0 + 5 * HOUR)
    assert [d.fire_time for d in decisions] == [T0, T0, T0 + HOUR, T0 + 2 * HOUR]
    assert [d.run for d in decisions] == [True, False, True, True]
    assert decisions[1].reason == "duplicate fire time"
    assert plan_fires(schedule, [], T0) == []


@PROPERTY_SETTINGS
@given(
    policy=st.sampled_from(list(MisfirePolicy)),
    grace=st.integers(0, 7200),
    limit=st.integers(1, 6),
    ages=st.lists(st.integers(0, 86400), max_size=30, unique=True),
)
def test_every_due_time_gets_exactly_one_decision(
    policy: MisfirePolicy, grace: int, limit: int, ages: list[int]
) -> None:
    schedule = Cron(
        expression="* * * * *", misfire_policy=policy, misfire_grace=grace, catch_up_limit=limit
    )
    now = T0
    due = sorted(now - timedelta(seconds=age) for age in ages)
    decisions = plan_fires(schedule, due, now)
    assert [d.fire_time for d in decisions] == due
    on_time = [t for t in due if now - t <= timedelta(seconds=grace)]
    late = [t for t in due if now - t > timedelta(seconds=grace)]
    for decision in decisions:
        if decision.fire_time in on_time:
            assert decision == FireDecision(decision.fire_time, run=True)
        elif decision.run:
            assert decision.backfilled
        else:
            assert decision.reason is not None
            assert decision.reason.startswith("missed")
    late_runs = [d.fire_time for d in decisions if d.run and d.backfilled]
    if policy is MisfirePolicy.SKIP:
        assert late_runs == []
    elif policy is MisfirePolicy.LATEST:
        assert late_runs == (late[-1:] if not on_time else [])
    else:
        assert late_runs == late[-limit:]
