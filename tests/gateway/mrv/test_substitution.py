"""Missing-data substitution (gateway/mrv/substitution.py): docs/regulatory-basis.md §4, table-driven, plus
properties."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mrv.substitution import (
    NOT_OPERATING,
    Method,
    Point,
    SubstitutionSpec,
    availability_percent,
    fill,
    fill_mrr,
    fill_operating,
    fill_part75,
    gaps,
    percentile,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
MRR = SubstitutionSpec(Method.MRR)


def grid(values: list[float | None], *, start: datetime = T0) -> list[Point]:
    return [
        Point(start + timedelta(hours=i), v, v is not None, "" if v is not None else "no data")
        for i, v in enumerate(values)
    ]


# -- EU MRR Art. 45 -----------------------------------------------------------------------------------------


def test_mrr_mean_plus_two_sigma() -> None:
    """§4 (EU MRR Art. 45): a missing hour gets the period's mean + 2σ, documented per gap."""
    values: list[float | None] = [100.0, 120.0, None, 80.0, None, 100.0]
    filled = fill_mrr(grid(values), MRR)
    measured = [v for v in values if v is not None]
    expected = statistics.mean(measured) + 2 * statistics.stdev(measured)
    assert [f.value for f in filled] == [100.0, 120.0, pytest.approx(expected), 80.0, pytest.approx(expected), 100.0]
    assert [f.substituted for f in filled] == [False, False, True, False, True, False]
    assert all("EU MRR Art. 45: mean + 2σ" in f.method for f in filled if f.substituted)
    assert "over 4 valid hours" in filled[2].method
    assert filled[2].reason == "no data"


def test_mrr_mirror_rule_for_a_low_conservative_parameter() -> None:
    filled = fill_mrr(grid([10.0, 12.0, None]), SubstitutionSpec(Method.MRR, conservative="low", min_potential=0.0))
    assert filled[2].value == pytest.approx(max(0.0, 11.0 - 2 * statistics.stdev([10.0, 12.0])))
    assert "mean − 2σ" in filled[2].method


@pytest.mark.parametrize(
    ("spec", "value", "text"),
    [
        (MRR, None, "no maximum potential value configured"),
        (SubstitutionSpec(Method.MRR, max_potential=2000.0), 2000.0, "maximum potential value 2000"),
    ],
    ids=["§4 never zero: nothing to substitute stays None", "§4 no valid hour: maximum potential value"],
)
def test_mrr_without_any_valid_hour_is_never_zero(spec: SubstitutionSpec, value: float | None, text: str) -> None:
    filled = fill_mrr(grid([None, None]), spec)
    assert [f.value for f in filled] == [value, value]
    assert all(text in f.method for f in filled)
    assert all(not f.measured for f in filled)


def test_mrr_one_valid_hour_uses_sigma_zero_and_says_so() -> None:
    filled = fill_mrr(grid([50.0, None]), MRR)
    assert filled[1].value == 50.0
    assert "σ of one value taken as 0" in filled[1].method


# -- US Part 75 §75.33 --------------------------------------------------------------------------------------


def _history(valid_hours: int, invalid_hours: int, value: float = 100.0) -> list[Point]:
    """A year-long history ending at T0 with the given counts (invalid ones spread, not in one gap)."""
    total = valid_hours + invalid_hours
    start = T0 - timedelta(hours=total)
    step = total / invalid_hours if invalid_hours else total + 1
    bad = {int(i * step) for i in range(invalid_hours)}
    return [
        Point(start + timedelta(hours=i), None if i in bad else value + (i % 50), i not in bad) for i in range(total)
    ]


P75 = SubstitutionSpec(Method.PART75, max_potential=3000.0, lookback_hours=720)


@pytest.mark.parametrize(
    ("valid", "invalid", "gap", "expected", "text"),
    [
        (8760, 0, 3, "avg", "PMA 100.0 %, gap 3 h ≤ 24 h: the average of the hour before and the hour after"),
        (8760, 0, 30, "max(p90, avg)", "> 24 h: the greater of the 90th percentile"),
        (8000, 760, 5, "avg", "≤ 8 h: the average"),
        (8000, 760, 12, "max(p95, avg)", "> 8 h: the greater of the 95th percentile"),
        (7500, 1260, 2, "max", "PMA 80–90 %: maximum of 720 lookback hours"),
        (6000, 2760, 2, "mpv", "PMA < 80 %: maximum potential value 3000"),
    ],
    ids=[
        "§4 PMA ≥ 95 %, gap ≤ 24 h: average before/after",
        "§4 PMA ≥ 95 %, gap > 24 h: greater of p90 and the average",
        "§4 PMA 90–95 %, gap ≤ 8 h: average",
        "§4 PMA 90–95 %, gap > 8 h: greater of p95 and the average",
        "§4 PMA 80–90 %: maximum in the lookback",
        "§4 PMA < 80 %: maximum potential value",
    ],
)
def test_part75_tiers(valid: int, invalid: int, gap: int, expected: str, text: str) -> None:
    history = _history(valid, invalid)
    before, after = 40.0, 60.0
    points = grid([before, *([None] * gap), after])
    filled = fill_part75(points, P75, history=history)
    lookback = [p.value for p in reversed([*history, points[0]]) if p.valid and p.value is not None][:720]
    average = (before + after) / 2
    value = {
        "avg": average,
        "max(p90, avg)": max(percentile(lookback, 90), average),
        "max(p95, avg)": max(percentile(lookback, 95), average),
        "max": max(lookback),
        "mpv": 3000.0,
    }[expected]
    assert [f.value for f in filled[1:-1]] == [pytest.approx(value)] * gap
    assert text in filled[1].method
    assert filled[0].measured
    assert filled[-1].measured


def test_part75_mirror_rules_for_moisture_and_o2() -> None:
    """§4: moisture and O2 use the mirror rules (lesser of, minimum values)."""
    history = _history(7500, 1260)
    spec = SubstitutionSpec(Method.PART75, conservative="low", min_potential=2.0)
    filled = fill_part75(grid([40.0, None, 60.0]), spec, history=history)
    lookback = [p.value for p in reversed([*history, Point(T0, 40.0, True)]) if p.valid and p.value is not None][:720]
    assert filled[1].value == min(lookback)
    assert "minimum of 720 lookback hours" in filled[1].method
    lesser = fill_part75(grid([40.0, *([None] * 30), 60.0]), spec, history=_history(8760, 0))
    assert lesser[1].value == pytest.approx(
        min(percentile([*[p.value or 0 for p in _history(8760, 0)][-719:], 40.0], 10), 50.0)
    )
    assert "lesser of the 10th percentile" in lesser[1].method
    poor = fill_part75(grid([40.0, None]), spec, history=_history(6000, 2760))
    assert poor[1].value == 2.0


def test_part75_gap_at_the_end_uses_the_hour_before() -> None:
    filled = fill_part75(grid([40.0, None, None]), P75, history=_history(8760, 0))
    assert [f.value for f in filled] == [40.0, 40.0, 40.0]
    assert "the hour before (no hour after yet)" in filled[1].method


def test_part75_without_history_uses_the_maximum_potential_value() -> None:
    filled = fill_part75(grid([None, 10.0]), P75)
    assert filled[0].value == 3000.0
    assert "no monitor history" in filled[0].method


def test_part75_gap_continuing_from_the_history_counts_its_full_length() -> None:
    history = [*_history(8760, 0), Point(T0 - timedelta(hours=0), None, False)][:-1]
    history[-20:] = [Point(p.start, None, False) for p in history[-20:]]
    filled = fill_part75(grid([None] * 10 + [70.0]), P75, history=history)
    assert "gap 30 h" in filled[0].method
    assert "> 24 h" in filled[0].method


# -- availability, helpers, properties ----------------------------------------------------------------------


def test_availability_percent() -> None:
    """§4: the report shows data availability % per parameter."""
    assert availability_percent(grid([1.0, None, 2.0, 3.0])) == 75.0
    assert availability_percent([]) == 0.0


def test_gaps_and_percentile() -> None:
    assert gaps(grid([None, 1.0, None, None, 2.0, None])) == [(0, 0), (2, 3), (5, 5)]
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 90) == 5.0
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([7.0], 10) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 90)


_VALUES = st.lists(st.one_of(st.none(), st.floats(0, 1e4, allow_nan=False)), min_size=1, max_size=150)


@given(values=_VALUES, method=st.sampled_from([Method.MRR, Method.PART75]))
def test_property_missing_hours_are_never_zero_and_measured_ones_untouched(
    values: list[float | None], method: Method
) -> None:
    """§4: a report must never silently treat missing hours as zero; each substituted hour has its method."""
    spec = SubstitutionSpec(method, max_potential=5e4)
    points = grid(values)
    filled = fill(points, spec, history=_history(100, 0) if method is Method.PART75 else ())
    assert len(filled) == len(points)
    for point, result in zip(points, filled, strict=True):
        if point.valid:
            assert result.measured
            assert result.value == point.value
        else:
            assert not result.measured
            assert result.method
            assert result.value is not None
            if all(v is None or v > 0 for v in values):
                assert result.value > 0


# -- operating periods only (EU MRR 2018/2066 Art. 43/45, 40 CFR 75.30(a)) ----------------------------------

ON, OFF = True, False


@pytest.mark.parametrize(
    ("values", "operating", "expected"),
    [
        pytest.param(
            [100.0, None, None, 120.0, None],
            [ON, OFF, OFF, ON, ON],
            # the off periods are neither filled nor missing; the operating gap gets mean + 2σ of 100 and 120
            [100.0, None, None, 120.0, 110.0 + 2 * statistics.stdev([100.0, 120.0])],
            id="MRR: off periods are not filled",
        ),
        pytest.param(
            [100.0, 5.0, 5.0, 120.0, None],
            [ON, OFF, OFF, ON, ON],
            [100.0, 5.0, 5.0, 120.0, 110.0 + 2 * statistics.stdev([100.0, 120.0])],
            id="MRR: values measured while off are shown but not used for the mean and σ",
        ),
        pytest.param([None, None], [OFF, OFF], [None, None], id="a period entirely off: nothing to fill"),
    ],
)
def test_fill_operating_mrr(values: list[float | None], operating: list[bool], expected: list[float | None]) -> None:
    filled = fill_operating(grid(values), MRR, operating)
    assert [f.value for f in filled] == [pytest.approx(v) if v is not None else None for v in expected]
    for period, on in zip(filled, operating, strict=True):
        if not on:
            assert not period.substituted
            assert period.measured or period.reason == NOT_OPERATING


def test_fill_operating_part75_uses_the_operating_hours_around_a_gap() -> None:
    """40 CFR 75.33: the hour before and after the gap are quality-assured operating hours; a shutdown between
    them is skipped (not part of the gap's length either)."""
    spec = SubstitutionSpec(Method.PART75, max_potential=1000.0)
    history = grid([50.0] * 100, start=T0 - timedelta(hours=100))
    values: list[float | None] = [40.0, None, None, None, 60.0]
    filled = fill_operating(grid(values), spec, [ON, ON, OFF, OFF, ON], history=history)
    assert filled[1].value == pytest.approx(50.0)  # (40 + 60) / 2
    assert "gap 1 h" in filled[1].method
    assert [f.reason for f in filled[2:4]] == [NOT_OPERATING] * 2


def test_fill_operating_history_off_hours_do_not_lengthen_a_gap() -> None:
    """Hours the unit was off before the period are not missing: the gap is the one operating hour."""
    spec = SubstitutionSpec(Method.PART75, max_potential=1000.0)
    history = grid([50.0] * 50 + [None] * 50, start=T0 - timedelta(hours=100))
    off_history = [ON] * 50 + [OFF] * 50
    with_state = fill_operating(grid([None]), spec, [ON], history=history, history_operating=off_history)
    assert "PMA 100.0 %, gap 1 h ≤ 24 h" in with_state[0].method
    assert "gap 51 h" in fill_operating(grid([None]), spec, [ON], history=history)[0].method


def test_fill_operating_needs_one_flag_per_period() -> None:
    with pytest.raises(ValueError, match="2 operating flags for 3 periods"):
        fill_operating(grid([1.0, 2.0, 3.0]), MRR, [ON, ON])


def test_availability_over_operating_periods() -> None:
    assert availability_percent(grid([1.0, None, None, 2.0]), [ON, OFF, ON, ON]) == pytest.approx(200 / 3)
