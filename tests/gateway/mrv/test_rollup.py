"""Rollups (gateway/mrv/rollup.py): validity rules of docs/regulatory-basis.md §3, table-driven, plus properties.

Each case names the rule it checks; the hypothesis properties pin what must hold for any data: weighted sums
of rollups equal the sums of the valid data below them, and the order samples arrive in changes nothing.
"""

from __future__ import annotations

import math
import random
import sys
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aua_contract import Quality
from gateway.mrv.rollup import (
    RULE_SETS,
    Aggregate,
    BaseRule,
    MinuteParts,
    Part,
    Period,
    RuleSet,
    Running,
    base_aggregates,
    base_aggregates_from_samples,
    base_starts,
    day_aggregates,
    day_bounds,
    floor_base,
    minute_aggregates,
    month_aggregates,
    month_bounds,
    part_of,
    year_aggregates,
    year_bounds,
)

T0 = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
ALMATY = ZoneInfo("Asia/Almaty")
IED = RULE_SETS["ied-lcp"]
PART75 = RULE_SETS["part75"]
AMBIENT = RULE_SETS["ambient"]


@dataclass(frozen=True)
class Sample:
    site: str
    instrument: str
    parameter: str
    ts: datetime
    value: float | None
    unit: str = "mg/m3"
    quality: Quality = Quality.OK


def sample(ts: datetime, value: float | None = 1.0, quality: Quality = Quality.OK, **changes: str) -> Sample:
    fields = {"site": "s", "instrument": "gas", "parameter": "so2", "unit": "mg/m3", **changes}
    return Sample(fields["site"], fields["instrument"], fields["parameter"], ts, value, fields["unit"], quality)


def minute(offset: int, value: float | None = 10.0, *, valid: bool = True, maintenance: int = 0) -> Aggregate:
    return Aggregate(
        "s", "gas", "so2", Period.MINUTE, T0 + timedelta(minutes=offset), value, 1 if valid else 0, 1, valid,
        "" if valid else "x", maintenance, "mg/m3",
    )  # fmt: skip


def hour(
    offset: int, value: float | None = 10.0, *, valid: bool = True, maintenance: int = 0, start: datetime = T0
) -> Aggregate:
    return Aggregate(
        "s", "gas", "so2", Period.HOUR, start + timedelta(hours=offset), value, 60 if valid else 0, 60, valid,
        "" if valid else "x", maintenance, "mg/m3",
    )  # fmt: skip


# -- 1 minute from raw samples (§3: averages use only valid samples) -----------------------------------------


@pytest.mark.parametrize(
    ("qualities", "valid", "value", "n_valid", "reason"),
    [
        (["ok"] * 60, True, 1.0, 60, ""),
        (["ok"] * 30 + ["check_function"] * 30, True, 1.0, 30, ""),
        (["ok"] * 29 + ["check_function"] * 31, False, 1.0, 29, "29 of 60 samples usable (< 50 %)"),
        (["check_function"] * 60, False, None, 0, "no usable sample (60 check_function)"),
        (["failure"] * 2 + ["out_of_range"], False, None, 0, "no usable sample (2 failure, 1 out_of_range)"),
        (["out_of_specification", "maintenance_required", "spike"], True, 1.0, 3, ""),
    ],
    ids=[
        "§3 all ok",
        "§3 check_function excluded, half left is enough",
        "§3 below the minute fraction",
        "§3 calibration minute is invalid",
        "§3 failure and out_of_range excluded",
        "§3 NE107 out_of_spec and maintenance_required are used, flagged",
    ],
)
def test_minute_validity(qualities: list[str], valid: bool, value: float | None, n_valid: int, reason: str) -> None:
    samples = [sample(T0 + timedelta(seconds=i), 1.0, Quality(q)) for i, q in enumerate(qualities)]
    [got] = minute_aggregates(samples, min_fraction=0.5)
    assert (got.valid, got.value, got.n_valid, got.n_expected, got.reason) == (
        valid,
        value,
        n_valid,
        len(qualities),
        reason,
    )
    assert got.n_maintenance == qualities.count("check_function")


def test_minute_mean_uses_only_usable_samples_with_a_value() -> None:
    """§3: the calibration gas value (check_function) must not pull the average."""
    samples = [
        sample(T0, 100.0),
        sample(T0 + timedelta(seconds=10), 200.0),
        sample(T0 + timedelta(seconds=20), 9999.0, Quality.CHECK_FUNCTION),
        sample(T0 + timedelta(seconds=30), None, Quality.OK),
    ]
    [got] = minute_aggregates(samples)
    assert got.value == 150.0
    assert (got.n_valid, got.n_expected) == (2, 4)


def test_minutes_in_different_units_are_not_averaged() -> None:
    [got] = minute_aggregates([sample(T0, 1.0), sample(T0 + timedelta(seconds=1), 1.0, unit="ppm")])
    assert not got.valid
    assert got.reason == "samples in different units: mg/m3, ppm"


def test_minutes_split_by_series_and_minute() -> None:
    got = minute_aggregates(
        [
            sample(T0 + timedelta(seconds=59), 1.0),
            sample(T0 + timedelta(seconds=60), 2.0),
            sample(T0, 3.0, parameter="nox"),
        ]
    )
    assert [(a.parameter, a.start, a.value) for a in got] == [
        ("nox", T0, 3.0),
        ("so2", T0, 1.0),
        ("so2", T0 + timedelta(minutes=1), 2.0),
    ]


# -- base periods (§3) ---------------------------------------------------------------------------------------


def _minutes(valid_offsets: set[int], maintenance: frozenset[int] | set[int] = frozenset()) -> list[Aggregate]:
    return [
        minute(m, 10.0 + m, valid=m in valid_offsets, maintenance=1 if m in maintenance else 0)
        for m in range(60)
        if m in valid_offsets or m in maintenance
    ]


@pytest.mark.parametrize(
    ("rules", "valid_minutes", "maintenance", "valid", "reason"),
    [
        (IED, set(range(40)), set(), True, ""),
        (IED, set(range(39)), set(), False, "39 of 60 minutes valid (< 66.67 %)"),
        (IED, set(range(39)), set(range(39, 60)), False, "39 of 60 minutes valid (< 66.67 %); 21 in maintenance"),
        (RULE_SETS["mrr"], set(range(47)), set(), False, "47 of 60 minutes valid (< 80 %)"),
        (RULE_SETS["mrr"], set(range(48)), set(), True, ""),
        (AMBIENT, set(range(45)), set(), True, ""),
        (AMBIENT, set(range(44)), set(), False, "44 of 60 minutes valid (< 75 %)"),
        (AMBIENT, set(range(38)), set(range(38, 60)), True, ""),
        (PART75, {0, 15, 30, 45}, set(), True, ""),
        (PART75, set(range(45)), set(), False, "no valid minute in quadrant(s) 4 of the hour"),
        (PART75, {5, 20}, set(range(30, 60)), True, ""),
        (PART75, {5, 19}, set(range(30, 60)), False, "maintenance hour without two valid minutes ≥ 15 min apart"),
        (IED, set(), set(range(60)), False, "no valid minutes (60 in maintenance)"),
    ],
    ids=[
        "§3 IED 40/60 = 2/3 valid",
        "§3 IED 39/60 invalid",
        "§3 IED calibration counts against the hour",
        "§3 MRR Art. 44 80 %: 47/60 invalid",
        "§3 MRR Art. 44 80 %: 48/60 valid",
        "§3 ambient 75 % capture: 45/60 valid",
        "§3 ambient 44/60 invalid",
        "§3 ambient capture excludes maintenance: 38/38 valid",
        "§3 Part 75 one valid minute per quadrant",
        "§3 Part 75 empty fourth quadrant",
        "§3 Part 75 maintenance hour, two points 15 min apart",
        "§3 Part 75 maintenance hour, points 14 min apart",
        "§3 all minutes in calibration",
    ],
)
def test_base_period_validity(
    rules: RuleSet, valid_minutes: set[int], maintenance: set[int], valid: bool, reason: str
) -> None:
    [got] = base_aggregates(_minutes(valid_minutes, maintenance), rules)
    assert got.valid is valid
    assert got.reason.startswith(reason)
    assert got.n_valid == len(valid_minutes)
    assert got.n_expected == 60
    assert got.n_maintenance == len(maintenance - valid_minutes)
    if valid_minutes:
        assert got.value == pytest.approx(sum(10.0 + m for m in valid_minutes) / len(valid_minutes))


def test_half_hour_base_for_waste_incineration() -> None:
    """§3 (IED Annex VI): half-hourly averages; 20 of 30 minutes = 2/3 valid."""
    rules = RULE_SETS["ied-wi"]
    minutes = [minute(m) for m in range(20)] + [minute(m) for m in range(30, 49)]
    first, second = base_aggregates(minutes, rules)
    assert (first.period, first.start, first.valid, first.n_expected) == (Period.HALF_HOUR, T0, True, 30)
    assert (second.start, second.valid) == (T0 + timedelta(minutes=30), False)


def test_invalid_period_keeps_its_partial_mean_but_says_invalid() -> None:
    [got] = base_aggregates([minute(m, 5.0) for m in range(10)], IED)
    assert (got.valid, got.value, got.n_valid) == (False, 5.0, 10)


MR = Quality.MAINTENANCE_REQUIRED
OOS = Quality.OUT_OF_SPECIFICATION


@pytest.mark.parametrize(
    ("qualities", "n_valid", "n_flagged"),
    [
        ([Quality.OK], 1, 0),
        ([MR], 1, 1),
        ([Quality.OK, MR, OOS, Quality.OK], 4, 2),
        ([Quality.SPIKE, Quality.CHECK_FUNCTION], 1, 1),  # spike is used but flagged; check_function is excluded
        ([Quality.FAILURE, Quality.CHECK_FUNCTION], 0, 0),
    ],
    ids=["ok", "one flagged", "two of four flagged", "a spike beside a calibration", "nothing usable"],
)
def test_a_minute_counts_its_used_but_flagged_samples(qualities: list[Quality], n_valid: int, n_flagged: int) -> None:
    """§3: maintenance_required and out_of_specification values are used but flagged; the flag survives."""
    raw = [sample(T0 + timedelta(seconds=10 * n), 5.0, quality) for n, quality in enumerate(qualities)]
    [got] = minute_aggregates(raw)
    assert (got.n_valid, got.n_flagged) == (n_valid, n_flagged)


def test_flags_are_carried_from_minutes_to_the_year() -> None:
    """Each level counts its valid parts that carry a flag: minutes in an hour, hours in a day, and the
    days' hours in a month; invalid parts carry nothing (their values are not in the mean)."""
    raw = [sample(T0 + timedelta(minutes=m), 5.0, MR if m < 10 else Quality.OK) for m in range(60)]
    raw += [sample(T0 + timedelta(hours=1, minutes=m), 5.0, MR) for m in range(30)]  # an invalid hour (30/60)
    raw += [sample(T0 + timedelta(hours=h, minutes=m), 5.0) for h in range(2, 24) for m in range(60)]
    hours = base_aggregates(minute_aggregates(raw), IED)
    assert [(h.valid, h.n_flagged) for h in hours[:3]] == [(True, 10), (False, 30), (True, 0)]
    [day] = day_aggregates(hours, IED, UTC)
    assert (day.valid, day.n_valid, day.n_flagged) == (True, 23, 1)
    [month] = month_aggregates([day], IED, UTC)
    assert (month.n_valid, month.n_flagged) == (23, 1)


HG_CYCLE = AMBIENT.with_changes(name="ambient-hg", sample_interval_s=300)


@pytest.mark.parametrize(
    ("samples", "valid", "n_expected", "reason"),
    [
        (12, True, 12, ""),
        (9, True, 12, ""),
        (8, False, 12, "8 of 12 300-second samples valid (< 75 %)"),
    ],
    ids=["§3 12 of 12 five-minute Hg samples", "§3 9 of 12 = 75 % valid", "§3 8 of 12 invalid"],
)
def test_an_hour_expects_one_sample_per_measuring_cycle(
    samples: int, valid: bool, n_expected: int, reason: str
) -> None:
    """§3 "valid if enough of its samples are valid": a Tekran-class Hg analyzer measures every 5 minutes, so
    an hour has 12 samples, not 60 minutes; with the default one-a-minute cycle the same data fails."""
    raw = [sample(T0 + timedelta(minutes=5 * n), 4.9) for n in range(samples)]
    [got] = base_aggregates(minute_aggregates(raw), HG_CYCLE)
    assert (got.valid, got.n_valid, got.n_expected) == (valid, samples, n_expected)
    assert got.reason.startswith(reason)
    [per_minute] = base_aggregates(minute_aggregates(raw), AMBIENT)
    assert (per_minute.valid, per_minute.n_expected) == (False, 60)


@pytest.mark.parametrize("seconds", [0.0, 420.0, 7200.0])
def test_a_measuring_cycle_must_divide_the_base_period(seconds: float) -> None:
    with pytest.raises(ValueError, match="must divide"):
        AMBIENT.with_changes(sample_interval_s=seconds)


def test_rule_sets_are_data_and_checked() -> None:
    custom = IED.with_changes(name="mine", base_min_capture=0.8)
    assert custom.base_min_capture == 0.8
    assert IED.base_min_capture == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="quadrant rule"):
        RuleSet(name="x", citation="", base=Period.HALF_HOUR, base_rule=BaseRule.QUADRANTS)
    with pytest.raises(ValueError, match="base must be"):
        RuleSet(name="x", citation="", base=Period.DAY)


# -- days, months, years in local time (§3) ------------------------------------------------------------------


def _day(invalid_hours: int, *, rules: RuleSet = IED, missing: int = 0) -> Aggregate:
    start = day_bounds(datetime(2024, 5, 1).date(), ALMATY)[0]
    hours = [hour(h, valid=h >= invalid_hours, start=start) for h in range(24 - missing)]
    [got] = day_aggregates(hours, rules, ALMATY)
    return got


@pytest.mark.parametrize(
    ("invalid", "missing", "rules", "valid"),
    [
        (3, 0, IED, True),
        (4, 0, IED, False),
        (2, 2, IED, False),
        (5, 0, RULE_SETS["ied-wi"].with_changes(base=Period.HOUR), True),
        (6, 0, AMBIENT, True),
        (7, 0, AMBIENT, False),
    ],
    ids=[
        "§3 IED LCP: 3 invalid hours, day valid",
        "§3 IED LCP: > 3 invalid hours, day invalid",
        "§3 missing hours count as invalid",
        "§3 IED WI: up to 5 discarded",
        "§3 ambient 24-h: 18/24 = 75 %",
        "§3 ambient 24-h: 17/24 < 75 %",
    ],
)
def test_day_validity(invalid: int, missing: int, rules: RuleSet, valid: bool) -> None:
    got = _day(invalid, rules=rules, missing=missing)
    assert got.valid is valid
    assert got.n_expected == 24
    assert got.n_valid == 24 - invalid - missing


def test_days_follow_local_time_almaty_utc5() -> None:
    """Reports are in local time: Asia/Almaty is UTC+5 since 2024-03-01, so a local day starts at 19:00 UTC."""
    start, end = day_bounds(datetime(2024, 5, 1).date(), ALMATY)
    assert (start, end) == (datetime(2024, 4, 30, 19, tzinfo=UTC), datetime(2024, 5, 1, 19, tzinfo=UTC))
    hours = [hour(h, start=datetime(2024, 4, 30, 18, tzinfo=UTC)) for h in range(3)]
    days = day_aggregates(hours, IED, ALMATY)
    assert [(d.start, d.n_valid) for d in days] == [
        (datetime(2024, 4, 29, 19, tzinfo=UTC), 1),
        (datetime(2024, 4, 30, 19, tzinfo=UTC), 2),
    ]


def test_the_day_almaty_moved_to_utc5_has_25_hours() -> None:
    start, end = day_bounds(datetime(2024, 2, 29).date(), ALMATY)
    assert end - start == timedelta(hours=25)
    assert len(base_starts(start, end, Period.HOUR)) == 25
    year_start, year_end = year_bounds(2024, ALMATY)
    assert len(base_starts(year_start, year_end, Period.HOUR)) == 8784 + 1


def test_month_and_year_weigh_days_by_valid_hours() -> None:
    """The month mean is the mean of its valid hours, however they are spread over days."""
    first = day_bounds(datetime(2024, 5, 1).date(), ALMATY)[0]
    hours = [hour(h, 10.0, start=first) for h in range(24)] + [hour(24 + h, 40.0, start=first) for h in range(6)]
    days = day_aggregates(hours, IED, ALMATY)
    [month] = month_aggregates(days, IED, ALMATY)
    assert month.value == pytest.approx((24 * 10 + 6 * 40) / 30)
    assert (month.n_valid, month.n_expected) == (30, 31 * 24)
    [year] = year_aggregates(days, IED, ALMATY)
    assert not year.valid
    assert "365 invalid or missing days (> 10: the operator must act)" in year.reason


def test_ambient_annual_mean_needs_90_percent() -> None:
    """§3: an annual mean needs ≥ 90 % data capture (maintenance excluded)."""
    start, end = year_bounds(2023, UTC)
    starts = base_starts(start, end, Period.HOUR)
    keep = math.ceil(0.9 * len(starts))
    hours = [hour(0, start=s) for s in starts[:keep]]
    days = day_aggregates(hours, AMBIENT, UTC)
    [year] = year_aggregates(days, AMBIENT, UTC)
    assert year.valid, year.reason
    [short] = year_aggregates(day_aggregates(hours[:-1], AMBIENT, UTC), AMBIENT, UTC)
    assert not short.valid
    assert "< 90 %" in short.reason


def test_floor_base() -> None:
    ts = datetime(2024, 5, 1, 13, 47, 12, 5, tzinfo=UTC)
    assert floor_base(ts, Period.HOUR) == datetime(2024, 5, 1, 13, tzinfo=UTC)
    assert floor_base(ts, Period.HALF_HOUR) == datetime(2024, 5, 1, 13, 30, tzinfo=UTC)
    assert floor_base(ts, Period.MINUTE) == datetime(2024, 5, 1, 13, 47, tzinfo=UTC)


# -- properties ----------------------------------------------------------------------------------------------

_QUALITIES = st.sampled_from([Quality.OK] * 6 + [Quality.CHECK_FUNCTION, Quality.FAILURE, Quality.SPIKE])
_SAMPLES = st.lists(
    st.tuples(
        st.integers(0, 3 * 3600 - 1),  # seconds into a 3-hour window
        st.sampled_from(["so2", "o2"]),
        st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
        _QUALITIES,
    ),
    max_size=400,
    unique_by=lambda item: (item[0], item[1]),
)


def _to_samples(items: list[tuple[int, str, float | None, Quality]]) -> list[Sample]:
    return [sample(T0 + timedelta(seconds=s), v, q, parameter=p) for s, p, v, q in items]


@settings(max_examples=60, deadline=None)
@given(items=_SAMPLES, seed=st.integers(0, 2**32))
def test_property_arrival_order_does_not_change_any_rollup(
    items: list[tuple[int, str, float | None, Quality]], seed: int
) -> None:
    """§3 + the issue: order of arrival does not change results (fsum makes means exact)."""
    samples = _to_samples(items)
    shuffled = samples[:]
    random.Random(seed).shuffle(shuffled)
    assert minute_aggregates(shuffled) == minute_aggregates(samples)
    assert base_aggregates(minute_aggregates(shuffled), IED) == base_aggregates(minute_aggregates(samples), IED)
    assert base_aggregates_from_samples(shuffled, PART75) == base_aggregates(minute_aggregates(samples), PART75)


@settings(max_examples=60, deadline=None)
@given(items=_SAMPLES)
def test_property_rollup_sums_equal_the_sums_of_the_valid_data_below(
    items: list[tuple[int, str, float | None, Quality]],
) -> None:
    """value × n_valid of every rollup = the sum of the valid values it was built from, at every level."""
    samples = _to_samples(items)
    minutes = minute_aggregates(samples)
    usable = math.fsum(s.value for s in samples if s.quality.usable and s.value is not None)
    assert math.fsum(m.value * m.n_valid for m in minutes if m.value is not None) == pytest.approx(usable, abs=1e-6)
    assert sum(m.n_valid for m in minutes) == sum(1 for s in samples if s.quality.usable and s.value is not None)
    hours = base_aggregates(minutes, IED)
    for h in hours:
        children = [m for m in minutes if m.series == h.series and floor_base(m.start, Period.HOUR) == h.start]
        valid_values = [m.value for m in children if m.valid and m.value is not None]
        assert h.n_valid == len(valid_values) <= h.n_expected
        assert (h.value or 0.0) * h.n_valid == pytest.approx(math.fsum(valid_values), rel=1e-9, abs=1e-6)
        if h.valid:
            assert h.n_valid * 3 >= 2 * h.n_expected
    days = day_aggregates(hours, IED, ALMATY)
    for series in {h.series for h in hours}:
        own_hours = [h for h in hours if h.series == series and h.valid and h.value is not None]
        own_days = [d for d in days if d.series == series]
        assert sum(d.n_valid for d in own_days) == len(own_hours)
        assert math.fsum((d.value or 0.0) * d.n_valid for d in own_days) == pytest.approx(
            math.fsum(h.value or 0.0 for h in own_hours), rel=1e-9, abs=1e-6
        )


@settings(max_examples=40, deadline=None)
@given(items=_SAMPLES)
def test_property_recomputing_is_idempotent_and_chunk_independent(
    items: list[tuple[int, str, float | None, Quality]],
) -> None:
    """Rolling up hour by hour (as late data does) gives what one pass over everything gives."""
    samples = _to_samples(items)
    whole = base_aggregates(minute_aggregates(samples), IED)
    by_hour = [
        aggregate
        for h in range(3)
        for aggregate in base_aggregates(
            minute_aggregates([s for s in samples if floor_base(s.ts, Period.HOUR) == T0 + timedelta(hours=h)]), IED
        )
    ]
    assert sorted(by_hour, key=lambda a: a.key) == whole
    assert base_aggregates(minute_aggregates(samples), IED) == whole


# -- no finite input makes a rollup raise (issue 13: a durable rollup mark re-raised on every restart) ---------

BIG = sys.float_info.max  # 1.7976931348623157e308


@pytest.mark.parametrize(
    ("values", "expected", "reason"),
    [
        pytest.param([1.79e308, 1e300], (1.79e308 + 1e300) / 2, "", id="sum-overflows-mean-finite"),
        pytest.param([BIG, BIG, BIG], BIG, "", id="three-times-the-largest-float"),
        pytest.param([BIG, -BIG, BIG], BIG / 3, "", id="fsum-intermediate-overflow"),
        pytest.param([-BIG, -1e308], -BIG / 2 - 1e308 / 2, "", id="negative-overflow"),
        pytest.param([math.nan, 1.0], None, "the mean of 2 samples is no finite number", id="nan-in-the-data"),
        pytest.param([math.inf, -math.inf], None, "the mean of 2 samples is no finite number", id="inf-minus-inf"),
        pytest.param([math.inf, 1.0], None, "the mean of 2 samples is no finite number", id="inf"),
        pytest.param([2.0, 4.0], 3.0, "", id="ordinary"),
    ],
)
def test_minute_means_never_raise(values: list[float], expected: float | None, reason: str) -> None:
    """Values beyond the contract's bound can still be in a store from before it: averaged or refused, never raised."""
    (got,) = minute_aggregates([sample(T0 + timedelta(seconds=i), v) for i, v in enumerate(values)])
    assert got.reason == reason
    assert got.valid is (expected is not None)
    if expected is None:
        assert got.value is None
        assert got.n_valid == len(values)
    else:
        assert got.value == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(
    ("values", "valid", "reason"),
    [
        pytest.param([BIG] * 60, True, "", id="an-hour-at-the-largest-float"),
        pytest.param([BIG, -BIG] * 30, True, "", id="alternating"),
        pytest.param([math.nan] + [1.0] * 59, False, "the mean of 60 valid sub-periods is no finite number", id="nan"),
    ],
)
def test_base_day_month_and_year_means_never_raise(values: list[float], valid: bool, reason: str) -> None:
    """Every level up: the hour from its minutes, the day from its hours, month and year weighted by valid hours."""
    minutes = [minute(i, v) for i, v in enumerate(values)]
    hours = base_aggregates(minutes, IED)
    assert [(h.valid, h.reason) for h in hours] == [(valid, reason)]
    assert hours == base_aggregates_from_samples([sample(m.start, m.value) for m in minutes], IED)
    day = [hour(h, hours[0].value if valid else 1.0) for h in range(24)]
    (got_day,) = day_aggregates(day, IED, UTC)
    for aggregate in [got_day, *month_aggregates([got_day], IED, UTC), *year_aggregates([got_day], IED, UTC)]:
        assert aggregate.value is not None
        assert math.isfinite(aggregate.value)
        assert "no finite number" not in aggregate.reason


def test_a_day_of_hours_at_the_largest_float_is_averaged() -> None:
    """The month weighs each day by its valid hours: value × 24 overflows, the scaled mean does not."""
    days = day_aggregates([hour(h, BIG) for h in range(24)], IED, UTC)
    assert days[0].value == BIG
    (month,) = month_aggregates(days, IED, UTC)
    assert month.value == pytest.approx(BIG, rel=1e-15)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=120))
def test_property_no_finite_values_make_any_level_raise(values: list[float]) -> None:
    """Any finite floats, one a second for two minutes and one a minute for two hours: every level computes,
    and every value it gives is finite (or None with a reason)."""
    samples = [sample(T0 + timedelta(seconds=i), v) for i, v in enumerate(values)]
    spread = [sample(T0 + timedelta(minutes=i), v) for i, v in enumerate(values)]
    minutes = minute_aggregates(samples) + minute_aggregates(spread)
    hours = base_aggregates(minute_aggregates(spread), IED) + base_aggregates_from_samples(samples, PART75)
    days = day_aggregates(base_aggregates(minute_aggregates(spread), IED), IED, ALMATY)
    longer = month_aggregates(days, IED, ALMATY) + year_aggregates(days, IED, ALMATY)
    for aggregate in minutes + hours + days + longer:
        assert aggregate.value is None or math.isfinite(aggregate.value)
        assert aggregate.value is not None or not aggregate.valid


# -- running totals (issue 12): equal to the full rollup, whatever replaced what -----------------------------

_EXTREME = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([1e308, -1e308, 1.7e308, math.inf, -math.inf, math.nan, 5e-324, -0.0]),
)


def _minute(
    start: datetime, index: int, value: float | None, *, valid: bool, maintenance: int, flagged: int
) -> Aggregate:
    return Aggregate(
        "pvl", "gas", "so2", Period.MINUTE, start + timedelta(minutes=index), value, 1 if valid else 0, 1, valid,
        "" if valid else "x", maintenance, "mg/m3" if index % 7 else "ppm", n_flagged=flagged,
    )  # fmt: skip


@pytest.mark.parametrize("rule_set", ["ied-lcp", "ied-wi", "part75", "ambient"])
@settings(max_examples=60, deadline=None)
@given(
    updates=st.lists(
        st.tuples(
            st.integers(0, 59), st.one_of(st.none(), _EXTREME), st.booleans(), st.integers(0, 1), st.integers(0, 1)
        ),
        min_size=1,
        max_size=150,
    )
)
def test_running_base_period_equals_base_aggregates(rule_set: str, updates: list[tuple]) -> None:  # type: ignore[type-arg]
    """Minutes recomputed in any order, replacing each other: the running totals give what base_aggregates gives
    for the minutes as they stand, bit for bit (NaN, infinities and overflowing sums included)."""
    rules = RULE_SETS[rule_set]
    start = datetime(2024, 5, 1, 3, tzinfo=UTC)
    step = 60 if rules.base is Period.HOUR else 30
    running = Running.of(("pvl", "gas", "so2"), rules.base, start, start + timedelta(minutes=step))
    current: dict[int, Aggregate] = {}
    for index, value, valid, maintenance, flagged in updates:
        minute = _minute(
            start, index % step, value, valid=valid and value is not None, maintenance=maintenance, flagged=flagged
        )
        running.put(part_of(minute, rules.base, start))
        current[index % step] = minute
        [expected] = base_aggregates(current.values(), rules)
        got = running.aggregate(rules)
        assert got is not None
        assert _same(got, expected)


def _same_part(a: Part | None, b: Part | None) -> bool:
    if a is None or b is None:
        return a is b
    same_value = a.value == b.value or (
        a.value is not None and b.value is not None and math.isnan(a.value) and math.isnan(b.value)
    )
    return same_value and replace(a, value=None) == replace(b, value=None)


@settings(max_examples=100, deadline=None)
@given(
    updates=st.lists(
        st.tuples(
            st.integers(0, 59), st.one_of(st.none(), _EXTREME), st.booleans(), st.integers(0, 1), st.integers(0, 1)
        ),
        min_size=1,
        max_size=150,
    ),
    removed=st.sets(st.integers(0, 59), max_size=10),
)
def test_minute_parts_give_back_each_part_as_part_of_formed_it(updates: list[tuple], removed: set[int]) -> None:  # type: ignore[type-arg]
    """The compact store of a base period's minutes returns every part exactly (NaN, infinities, None, units
    that change within the hour), replaced and removed in any order."""
    start = datetime(2024, 5, 1, 3, tzinfo=UTC)
    kept = MinuteParts()
    expected: dict[int, Part] = {}
    for index, value, valid, maintenance, flagged in updates:
        minute = _minute(
            start, index, value, valid=valid and value is not None, maintenance=maintenance, flagged=flagged
        )
        part = part_of(minute, Period.HOUR, start)
        kept.set(part)
        expected[index] = part
    for index in removed:
        kept.pop(index)
        expected.pop(index, None)
    assert all(_same_part(kept.get(i), expected.get(i)) for i in range(60))
    assert [p.index for p in kept.parts()] == sorted(expected)
    assert len(kept) == len(expected)


def test_an_open_hour_of_minute_parts_stays_small() -> None:
    """An hour's 60 minute parts held as Part objects took ~19 kB (~320 B a Part, with its exact product):
    15,000 series with two open hours were ~570 MB. Kept compactly: ~0.8 kB, ~3 kB with these minutes'
    changing units."""
    start = datetime(2024, 5, 1, 3, tzinfo=UTC)
    parts = [
        part_of(_minute(start, m, 400.0 + m / 7, valid=True, maintenance=0, flagged=0), Period.HOUR, start)
        for m in range(60)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = MinuteParts()
        for part in parts:
            kept.set(part)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == 60
    assert held < 4_000, held


@pytest.mark.parametrize("period", [Period.DAY, Period.MONTH, Period.YEAR])
@settings(max_examples=60, deadline=None)
@given(
    updates=st.lists(
        st.tuples(
            st.integers(0, 27), st.one_of(st.none(), _EXTREME), st.integers(0, 24), st.integers(0, 3), st.booleans()
        ),
        min_size=1,
        max_size=80,
    )
)
def test_running_calendar_period_equals_the_full_rollup(period: Period, updates: list[tuple]) -> None:  # type: ignore[type-arg]
    """Days from base periods, months and years from days, children replaced in any order: the running totals
    equal day_aggregates / month_aggregates / year_aggregates, or answer None (not exact: rebuild) only when a
    child's value·weight is no finite number or the sum is out of the exact range."""
    rules = RULE_SETS["ied-lcp"].with_changes(long_min_capture=0.5)
    zone = ALMATY
    pure: Callable[[Iterable[Aggregate], RuleSet, tzinfo], list[Aggregate]]
    if period is Period.DAY:
        start, end = day_bounds(datetime(2024, 2, 10).date(), zone)
        step, child, pure = timedelta(hours=1), Period.HOUR, day_aggregates
    else:
        start, end = month_bounds(2024, 2, zone) if period is Period.MONTH else year_bounds(2024, zone)
        step, child, pure = (
            timedelta(days=1),
            Period.DAY,
            (month_aggregates if period is Period.MONTH else year_aggregates),
        )
    running = Running.of(("pvl", "gas", "so2"), period, start, end)
    current: dict[int, Aggregate] = {}
    for number, value, n_valid, maintenance, valid in updates:
        index = number % 24 if period is Period.DAY else number
        ts = start + index * step if period is Period.DAY else (start.astimezone(zone) + index * step).astimezone(UTC)
        new = Aggregate("pvl", "gas", "so2", child, ts, value, n_valid, 24, valid, "", maintenance, "mg/m3",
                        n_flagged=maintenance)  # fmt: skip
        old = current.get(index)
        running.replace(None if old is None else part_of(old, period, start), part_of(new, period, start))
        current[index] = new
        [expected] = pure(current.values(), rules, zone)
        got = running.aggregate(rules)
        if got is None:
            parts = [part_of(a, period, start) for a in current.values()]
            assert any(p.product is None for p in parts) or abs(sum(p.product or 0 for p in parts)) >= 2 ** (
                1074 + 1000
            )
        else:
            assert _same(got, expected)


def _same(a: Aggregate, b: Aggregate) -> bool:
    """Equal, NaN-free values compared bit for bit (−0.0 is +0.0 to fsum)."""
    return replace(a, value=None) == replace(b, value=None) and (
        a.value == b.value
        or (a.value is not None and b.value is not None and math.isnan(a.value) and math.isnan(b.value))
    )
