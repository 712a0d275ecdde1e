"""40 CFR Part 75 QA rules (gateway.part75), table-driven against hand-computed values, each row citing its clause."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.part75 import (
    DailyCalibration,
    Kind,
    Linearity,
    LinearityLevel,
    Part75Spec,
    PeriodStatus,
    Rata,
    RataResult,
    calibration_error,
    linearity_error,
    statuses,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("kind", "reference", "response", "span", "unit", "error", "within_spec", "in_control", "clause"),
    [
        (Kind.GAS, 250, 260, 500, "ppm", 2.0, True, True, "App. A §3.1: 2.0 % ≤ 2.5 %"),
        (Kind.GAS, 250, 270, 500, "ppm", 4.0, False, True, "App. B §2.1.4: 4.0 % ≤ 2 × 2.5 %"),
        (Kind.GAS, 250, 280, 500, "ppm", 6.0, False, False, "App. B §2.1.4: 6.0 % > 5.0 %"),
        (Kind.GAS, 250, 225, 500, "ppm", 5.0, False, True, "App. B §2.1.4: exactly 5.0 % is in control"),
        (Kind.GAS, 20, 24, 40, "ppm", 10.0, True, True, "span ≤ 50 ppm: |R − A| 4 ≤ 5 ppm"),
        (Kind.GAS, 20, 26, 40, "ppm", 15.0, False, False, "span ≤ 50 ppm: |R − A| 6 > 5 ppm"),
        (Kind.GAS, 75, 84, 150, "ppm", 6.0, False, True, "50 < span ≤ 200 ppm: |R − A| 9 ≤ 10 ppm"),
        (Kind.GAS, 75, 86, 150, "ppm", 22 / 3, False, False, "50 < span ≤ 200 ppm: |R − A| 11 > 10 ppm"),
        (Kind.GAS, 75, 84, 150, "mg/m3", 6.0, False, False, "the ppm alternative needs ppm"),
        (Kind.DILUENT, 10.0, 10.4, 25, "%", 0.4, True, True, "App. A §3.1: O2 |R − A| 0.4 ≤ 0.5 % vol"),
        (Kind.DILUENT, 10.0, 10.6, 25, "%", 0.6, False, True, "App. B §2.1.4: 0.6 ≤ 1.0 % vol"),
        (Kind.DILUENT, 10.0, 11.2, 25, "%", 1.2, False, False, "App. B §2.1.4: 1.2 > 1.0 % vol"),
        (Kind.FLOW, 500, 550, 1000, "kscfh", 5.0, False, True, "App. B §2.1.4: flow 5 % ≤ 6 %"),
        (Kind.FLOW, 500, 570, 1000, "kscfh", 7.0, False, False, "App. B §2.1.4: flow 7 % > 6 %"),
        (Kind.FLOW, 500, 515, 1000, "kscfh", 1.5, True, True, "App. A §3.1: flow 1.5 % ≤ 3 %"),
    ],
)
def test_calibration_error(  # noqa: PLR0917 - one argument per table column
    kind: Kind,
    reference: float,
    response: float,
    span: float,
    unit: str,
    error: float,
    within_spec: bool,
    in_control: bool,
    clause: str,
) -> None:
    """40 CFR 75 App. A §3.1 Eq. A-5 and App. B §2.1.4."""
    result = calibration_error(kind, reference, response, span, unit)
    assert result.error == pytest.approx(error), clause
    assert result.difference == pytest.approx(abs(response - reference))
    assert (result.within_spec, result.in_control) == (within_spec, in_control), clause


@pytest.mark.parametrize(("span", "reference"), [(0.0, 1.0), (-5.0, 1.0), (100.0, float("nan"))])
def test_calibration_error_refuses_nonsense(span: float, reference: float) -> None:
    with pytest.raises(ValueError, match=r"span|finite"):
        calibration_error(Kind.GAS, reference, 1.0, span, "ppm")


@pytest.mark.parametrize(
    ("kind", "reference", "mean", "unit", "error", "passed", "clause"),
    [
        (Kind.GAS, 100, 104, "ppm", 4.0, True, "App. A §3.2: 4 % ≤ 5 %"),
        (Kind.GAS, 100, 106, "ppm", 6.0, False, "App. A §3.2: 6 % > 5 % and 6 ppm > 5 ppm"),
        (Kind.GAS, 50, 54, "ppm", 8.0, True, "App. A §3.2: |R̄ − A| 4 ≤ 5 ppm"),
        (Kind.GAS, 50, 54, "mg/m3", 8.0, False, "the ppm alternative needs ppm"),
        (Kind.DILUENT, 5.0, 5.4, "%", 8.0, True, "App. A §3.2: |R̄ − A| 0.4 ≤ 0.5 % O2"),
        (Kind.DILUENT, 5.0, 5.6, "%", 12.0, False, "App. A §3.2: 0.6 > 0.5 % O2"),
        (Kind.FLOW, 5.0, 5.4, "kscfh", 8.0, False, "flow has no absolute alternative"),
    ],
)
def test_linearity_error(  # noqa: PLR0917 - one argument per table column
    kind: Kind, reference: float, mean: float, unit: str, error: float, passed: bool, clause: str
) -> None:
    """40 CFR 75 App. A §3.2 Eq. A-4."""
    le, ok = linearity_error(kind, LinearityLevel(reference, mean), unit)
    assert le == pytest.approx(error), clause
    assert ok is passed, clause


def _rata(differences: list[float], reference: float = 100.0, role: str = "pollutant:so2", rata_id: int = 1) -> Rata:
    return Rata(rata_id, "boiler", role, T0, tuple((reference, reference - d) for d in differences))


# Hand computations, App. A Eqs. with n = 9 (t0.975 = 2.306, Table 7-1):
# d = 4,6,5,5,4,6,5,5,5: d̄ = 5, s_d = √(4/8) = 0.70711, cc = 2.306 × 0.70711 / 3 = 0.54353,
#   RA = (5 + 0.54353) / 100 × 100 = 5.54353 %, d̄ > cc so BAF = 1 + 5 / 95 = 1.05263 -> 1.053.
# d = 11,13,12,12,11,13,12,12,12: d̄ = 12, same s_d, RA = 12.54353 % (fails 10 %), BAF = 1 + 12/88 -> 1.136.
# d = 1,-1,2,-2,0,1,-1,0,0: d̄ = 0, no bias, s_d = √(12/8) = 1.22474, cc = 2.306 × 1.22474 / 3 = 0.94142, RA = 0.94142 %.
# d = -4,-6,-5,-5,-4,-6,-5,-5,-5: the CEM reads high (d̄ = -5 < cc): no BAF, RA 5.54353 %.
@pytest.mark.parametrize(
    ("differences", "ra", "passed", "bias_failed", "baf"),
    [
        ([4, 6, 5, 5, 4, 6, 5, 5, 5], 5.54353, True, True, 1.053),
        ([11, 13, 12, 12, 11, 13, 12, 12, 12], 12.54353, False, True, 1.136),
        ([1, -1, 2, -2, 0, 1, -1, 0, 0], 0.94142, True, False, 1.0),
        ([-4, -6, -5, -5, -4, -6, -5, -5, -5], 5.54353, True, False, 1.0),
    ],
)
def test_rata(differences: list[float], ra: float, passed: bool, bias_failed: bool, baf: float) -> None:
    """40 CFR 75 App. A §7.3-7.6 (RA ≤ 10 %: App. A §3.3; BAF: Eq. A-12)."""
    rata = _rata(differences)
    assert rata.relative_accuracy == pytest.approx(ra, abs=1e-5)
    assert rata.passed is passed
    assert rata.bias_failed is bias_failed
    assert rata.bias_adjustment_factor == baf


@pytest.mark.parametrize("runs", [8, 13])
def test_rata_needs_nine_to_twelve_runs(runs: int) -> None:
    with pytest.raises(ValueError, match="9 to 12 runs"):
        _rata([5.0] * runs)


def _daily(hour: float, *, passed: bool = True, test_id: int = 1, role: str = "pollutant:so2") -> DailyCalibration:
    high = 255.0 if passed else 290.0  # 1 % or 8 % of a 500 ppm span
    return DailyCalibration(test_id, "boiler", role, T0 + hour * HOUR, 500.0, "ppm", 0.0, 1.0, 250.0, high)


SPEC = Part75Spec(spans=(("pollutant:so2", 500.0),))


def _grid(hours: int) -> list[datetime]:
    return [T0 + i * HOUR for i in range(hours)]


def _out(result: list[PeriodStatus]) -> list[int]:
    return [i for i, status in enumerate(result) if not status.in_control]


def test_passed_test_covers_26_clock_hours_after_its_hour() -> None:
    """App. B §2.1.5: a test completed at 00:30 covers hours 01:00-02:00 ... 02:00 next day (26 clock hours);
    with the unit operating when that ran out, data are invalid from 03:00 next day (hour 27) on."""
    result = statuses(SPEC, "pollutant:so2", _grid(40), HOUR, [True] * 40, daily=[_daily(0.5)])
    assert _out(result) == list(range(27, 40))
    assert "overdue" in result[27].reason
    assert not any(s.grace for s in result)


def test_failed_test_is_out_of_control_until_the_next_pass() -> None:
    """App. B §2.1.4: from the failed test's hour to the passing test's hour."""
    tests = [_daily(0.2), _daily(10.25, passed=False, test_id=2), _daily(14.67, test_id=3)]
    result = statuses(SPEC, "pollutant:so2", _grid(24), HOUR, [True] * 24, daily=tests)
    assert _out(result) == [10, 11, 12, 13]
    assert "#2 failed" in result[10].reason


def test_grace_after_a_window_that_ran_out_while_off() -> None:
    """App. B §2.1.5: the window ran out while the unit was off; 8 operating hours of grace after the restart,
    then out of control until a test passes."""
    operating = [i < 20 or i >= 40 for i in range(60)]
    result = statuses(SPEC, "pollutant:so2", _grid(60), HOUR, operating, daily=[_daily(0.5)])
    assert [i for i, s in enumerate(result) if s.grace] == list(range(40, 48))
    assert _out(result) == list(range(48, 60))
    assert all(s.in_control for s in result[20:40])  # not operating: nothing to assure


def test_a_test_passed_within_the_grace_ends_it() -> None:
    operating = [i < 20 or i >= 40 for i in range(60)]
    tests = [_daily(0.5), _daily(43.1, test_id=2)]
    result = statuses(SPEC, "pollutant:so2", _grid(60), HOUR, operating, daily=tests)
    assert [i for i, s in enumerate(result) if s.grace] == [40, 41, 42]
    assert _out(result) == []


def test_grace_and_validity_hours_are_configuration() -> None:
    spec = Part75Spec(spans=SPEC.spans, validity_hours=24, grace_operating_hours=2)
    operating = [i < 20 or i >= 40 for i in range(50)]
    result = statuses(spec, "pollutant:so2", _grid(50), HOUR, operating, daily=[_daily(0.5)])
    assert [i for i, s in enumerate(result) if s.grace] == [40, 41]
    assert _out(result) == list(range(42, 50))


def test_no_test_at_all_leaves_operating_hours_out_of_control() -> None:
    operating = [i % 2 == 0 for i in range(6)]
    result = statuses(SPEC, "pollutant:so2", _grid(6), HOUR, operating)
    assert _out(result) == [0, 2, 4]
    assert "no daily calibration error test" in result[0].reason


def test_failed_linearity_and_rata_are_out_of_control_until_passed() -> None:
    """App. B §2.2.3 (linearity), §2.3.2 (RATA)."""
    bad = Linearity(1, "boiler", "pollutant:so2", T0 + 5.5 * HOUR, "ppm", (LinearityLevel(100, 110),))
    good = Linearity(2, "boiler", "pollutant:so2", T0 + 9.5 * HOUR, "ppm", (LinearityLevel(100, 101),))
    failed_rata = RataResult.of(_rata([11, 13, 12, 12, 11, 13, 12, 12, 12]))
    failed_rata = RataResult(failed_rata.id, failed_rata.role, T0 + 15 * HOUR, failed_rata.passed, failed_rata.baf)
    result = statuses(
        SPEC,
        "pollutant:so2",
        _grid(20),
        HOUR,
        [True] * 20,
        linearity=[good, bad],
        ratas=[failed_rata],
        daily_required=False,
    )
    assert _out(result) == [5, 6, 7, 8, *range(15, 20)]
    assert "linearity check #1 failed" in result[5].reason
    assert "RATA #1 failed" in result[15].reason


def test_bias_adjustment_factor_applies_from_the_hour_after_the_rata() -> None:
    """App. A §7.6.5: BAF from the RATA on, until the next RATA; only where it applies (SO2, NOx, flow)."""
    first = RataResult(1, "pollutant:so2", T0 + 3.5 * HOUR, True, 1.053)
    second = RataResult(2, "pollutant:so2", T0 + 7.2 * HOUR, True, 1.0)
    result = statuses(
        SPEC,
        "pollutant:so2",
        _grid(10),
        HOUR,
        [True] * 10,
        ratas=[second, first],
        daily_required=False,
        baf_applies=True,
    )
    assert [s.baf for s in result] == [1.0] * 4 + [1.053] * 4 + [1.0] * 2
    assert [s.rata_id for s in result] == [None] * 4 + [1] * 4 + [2] * 2
    unadjusted = statuses(SPEC, "pollutant:so2", _grid(10), HOUR, [True] * 10, ratas=[first], daily_required=False)
    assert all(s.baf == 1.0 for s in unadjusted)


def test_tests_of_other_channels_do_not_count() -> None:
    result = statuses(SPEC, "pollutant:so2", _grid(3), HOUR, [True] * 3, daily=[_daily(0.1, role="pollutant:nox")])
    assert _out(result) == [0, 1, 2]


def test_baf_applies_to_so2_nox_and_flow_only() -> None:
    assert SPEC.baf_applies("flow", None)
    assert SPEC.baf_applies("pollutant:so2", "so2")
    assert SPEC.baf_applies("pollutant:nox", "nox")
    assert not SPEC.baf_applies("pollutant:co", "co")
    assert not SPEC.baf_applies("co2", "co2")
    assert not Part75Spec(spans=(), bias_adjustment=False).baf_applies("flow", None)
