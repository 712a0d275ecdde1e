"""QAL3 control charts (EN 14181:2014 §7; CUSUM of EN 14181:2004 Annex C) against hand-computed cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.mrv.qal3 import (
    ChartPoint,
    CheckKind,
    CheckResult,
    Method,
    OutOfControl,
    Qal3Spec,
    Status,
    chart_series,
    evaluate,
    longest_interval,
    out_of_control_periods,
)

T0 = datetime(2024, 3, 4, 6, tzinfo=UTC)
ZERO, SPAN = CheckKind.ZERO, CheckKind.SPAN
IN, WARN, OUT, PREC = Status.IN_CONTROL, Status.WARNING, Status.OUT_OF_CONTROL, Status.PRECISION_LOST


def _checks(deviations: list[float], kind: CheckKind = ZERO, reference: float = 0.0) -> list[CheckResult]:
    return [CheckResult(T0 + timedelta(days=i), kind, reference, reference + d) for i, d in enumerate(deviations)]


# EN 14181:2004 Annex C, s_AMS = 1: k = 0.501, h = 2.85, k_s = 1.85, h_s = 6.90.
@pytest.mark.parametrize(
    ("s_ams", "deviations", "statuses", "last"),
    [
        # a steady +1 drift: S+ = 0.499, 0.998, 1.497, 1.996, 2.495, 2.994 > 2.85 at the sixth check
        (1.0, [1.0] * 6, [IN] * 5 + [OUT], (2.994, 0.0, 0.0)),
        # the same in units twice as large (s_AMS = 2): the same decisions (k = 1.002, h = 5.70)
        (2.0, [2.0] * 6, [IN] * 5 + [OUT], (5.988, 0.0, 0.0)),
        # a steady −2 drift: S− = 1.499, 2.998 > 2.85
        (1.0, [-2.0, -2.0], [IN, OUT], (0.0, 2.998, 0.0)),
        # noise inside k: nothing accumulates; precision (±1 steps: 0.5 − 1.85 < 0) stays 0
        (1.0, [0.5, -0.5, 0.5, -0.5], [IN] * 4, (0.0, 0.0, 0.0)),
        # scatter: precision 2.65, 5.30, 7.95 > 6.90; judged before the drift (S+ would be 4.497 > 2.85 too)
        (1.0, [0.0, 3.0, 0.0, 3.0], [IN, IN, IN, PREC], (4.497, 0.0, 7.95)),
    ],
)
def test_cusum_drift_and_precision(
    s_ams: float,
    deviations: list[float],
    statuses: list[Status],
    last: tuple[float, float, float],
) -> None:
    """`last`: drift_pos, drift_neg and precision after the last check."""
    points = evaluate(_checks(deviations, reference=50.0), Qal3Spec(s_ams, s_ams))
    assert [p.status for p in points] == statuses
    final = points[-1].statistics
    assert (final["drift_pos"], final["drift_neg"], final["precision"]) == pytest.approx(last)
    assert points[-1].limits == pytest.approx(
        {"drift_pos": 2.85 * s_ams, "drift_neg": 2.85 * s_ams, "precision": 6.90 * s_ams**2}
    )


@pytest.mark.parametrize(
    ("deviations", "statistic", "correction"),
    [
        # EN 14181:2004 Annex C: adjustment = k + S/N (N checks since the sum was last zero): 0.501 + 2.994/6
        ([1.0] * 6, "drift_pos", 1.0),
        ([-2.0, -2.0], "drift_neg", -2.0),  # −(0.501 + 2.998/2)
        ([0.0, 0.0, 1.5, 1.5, 1.5], "drift_pos", 1.5),  # the zero checks before do not count in N
    ],
)
def test_cusum_signal_estimates_the_adjustment(deviations: list[float], statistic: str, correction: float) -> None:
    signal = evaluate(_checks(deviations), Qal3Spec(1.0, 1.0))[-1].signal
    assert signal is not None
    assert (signal.statistic, signal.status) == (statistic, OUT)
    assert signal.correction == pytest.approx(correction)
    assert "adjust" in signal.action


def test_precision_signal_says_find_the_cause() -> None:
    signal = evaluate(_checks([0.0, 3.0, 0.0, 3.0]), Qal3Spec(1.0, 1.0))[-1].signal
    assert signal is not None
    assert signal.statistic == "precision"
    assert signal.correction is None
    assert "manufacturer" in signal.action


def test_zero_and_span_are_separate_charts_with_their_own_s_ams() -> None:
    # zero: s 1.0, +1 each time (signal at its 6th check); span: s 2.0, +1 each time (never above h = 5.70:
    # 1 < k = 1.002, nothing accumulates)
    checks = []
    for i in range(6):
        checks.append(CheckResult(T0 + timedelta(days=i), ZERO, 0.0, 1.0))
        checks.append(CheckResult(T0 + timedelta(days=i, hours=1), SPAN, 80.0, 81.0))
    points = evaluate(checks, Qal3Spec(s_ams_zero=1.0, s_ams_span=2.0))
    zero = [p for p in points if p.kind is ZERO]
    span = [p for p in points if p.kind is SPAN]
    assert [p.status for p in zero] == [IN] * 5 + [OUT]
    assert [p.status for p in span] == [IN] * 6
    assert span[-1].statistics["drift_pos"] == 0.0


def test_an_adjusted_check_restarts_both_charts() -> None:
    checks = [
        *_checks([1.0] * 5),
        CheckResult(T0 + timedelta(days=5), SPAN, 80.0, 81.0, adjusted=True),
        CheckResult(T0 + timedelta(days=6), ZERO, 0.0, 1.0),
    ]
    points = evaluate(checks, Qal3Spec(1.0, 1.0))
    assert [p.status for p in points] == [IN] * 7  # without the adjustment the 7th would be S+ = 2.994
    assert points[-1].statistics["drift_pos"] == pytest.approx(0.499)


def test_checks_are_charted_in_time_order() -> None:
    checks = _checks([-2.0, -2.0])
    assert evaluate(reversed(checks), Qal3Spec(1.0, 1.0)) == evaluate(checks, Qal3Spec(1.0, 1.0))


# EN 14181:2014 §7 Shewhart chart: warning ±2·s_AMS, action ±3·s_AMS by default.
@pytest.mark.parametrize(
    ("warning", "action", "deviations", "statuses"),
    [
        (2.0, 3.0, [1.9, 2.1, -3.2, 3.0, -2.5], [IN, WARN, OUT, WARN, WARN]),
        (1.0, 2.0, [1.9, 2.1, -0.5], [WARN, OUT, IN]),
    ],
)
def test_shewhart(warning: float, action: float, deviations: list[float], statuses: list[Status]) -> None:
    spec = Qal3Spec(1.0, 1.0, method=Method.SHEWHART, shewhart_warning=warning, shewhart_action=action)
    points = evaluate(_checks(deviations), spec)
    assert [p.status for p in points] == statuses
    assert all(p.limits == {"deviation": action, "warning": warning} for p in points)
    signals = [p.signal for p in points if p.signal is not None]
    assert all(s.statistic == "deviation" and s.limit == action for s in signals)


# EN 14181:2014 §7 EWMA, λ = 0.2, L = 3, s_AMS = 1, d = 1.5 each time:
# z_t = 1.5·(1 − 0.8^t); limit_t = 3·√(0.2/1.8·(1 − 0.8^(2t))).
@pytest.mark.parametrize(
    ("t", "z", "limit"),
    [(1, 0.3, 0.6), (2, 0.54, 0.768375), (3, 0.732, 0.858985), (4, 0.8856, 0.912265), (5, 1.00848, 0.944789)],
)
def test_ewma_statistic_and_limit(t: int, z: float, limit: float) -> None:
    points = evaluate(_checks([1.5] * 5), Qal3Spec(1.0, 1.0, method=Method.EWMA))
    point = points[t - 1]
    assert point.statistics["ewma"] == pytest.approx(z)
    assert point.limits["ewma"] == pytest.approx(limit, abs=1e-6)
    assert point.status is (OUT if t == 5 else IN)


def test_ewma_resets_at_adjustment() -> None:
    checks = [*_checks([1.5] * 4), CheckResult(T0 + timedelta(days=4), ZERO, 0.0, 1.5, adjusted=True)]
    last = evaluate(checks, Qal3Spec(1.0, 1.0, method=Method.EWMA))[-1]
    assert last.statistics["ewma"] == pytest.approx(0.3)
    assert last.limits["ewma"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"s_ams_zero": 0.0}, "s_ams_zero must be"),
        ({"s_ams_span": float("nan")}, "s_ams_span must be"),
        ({"shewhart_warning": 3.0, "shewhart_action": 3.0}, "must be below"),
        ({"ewma_lambda": 0.0}, "ewma_lambda"),
        ({"ewma_lambda": 1.5}, "ewma_lambda"),
    ],
)
def test_spec_refuses_nonsense(kwargs: dict[str, float], message: str) -> None:
    values: dict[str, float] = {"s_ams_zero": 1.0, "s_ams_span": 1.0} | kwargs
    with pytest.raises(ValueError, match=message):
        Qal3Spec(**values)  # type: ignore[arg-type]


def test_check_refuses_naive_time_and_non_finite_values() -> None:
    with pytest.raises(ValueError, match="time zone"):
        CheckResult(datetime(2024, 1, 1), ZERO, 0.0, 0.1)
    with pytest.raises(ValueError, match="finite"):
        CheckResult(T0, ZERO, 0.0, float("inf"))


def _day(i: int) -> datetime:
    return T0 + timedelta(days=i)


def test_out_of_control_runs_from_the_signal_to_the_next_adjusted_check() -> None:
    checks = [
        CheckResult(_day(0), ZERO, 0.0, 2.0),
        CheckResult(_day(1), ZERO, 0.0, 2.0),  # S+ 2.998: signal
        CheckResult(_day(2), ZERO, 0.0, 2.0),  # still out: same period
        CheckResult(_day(3), ZERO, 0.0, 0.0, adjusted=True),  # ends it
        CheckResult(_day(4), ZERO, 0.0, -2.0),
        CheckResult(_day(5), ZERO, 0.0, -2.0),  # a new one, not adjusted yet
    ]
    periods = out_of_control_periods(evaluate(checks, Qal3Spec(1.0, 1.0)))
    assert [(p.start, p.end, len(p.signals)) for p in periods] == [(_day(1), _day(3), 2), (_day(5), None, 1)]


@pytest.mark.parametrize(
    ("end", "start_q", "end_q", "covered"),
    [
        (_day(3), _day(0), _day(1), False),  # before
        (_day(3), _day(0), _day(1) + timedelta(seconds=1), True),
        (_day(3), _day(2), _day(4), True),
        (_day(3), _day(3), _day(4), False),  # the adjusted check's own time is in control again
        (None, _day(30), _day(31), True),  # open: until adjusted
    ],
)
def test_period_covers(end: datetime | None, start_q: datetime, end_q: datetime, covered: bool) -> None:
    assert OutOfControl(_day(1), end, ()).covers(start_q, end_q) is covered


def test_chart_series_is_plain_columns_per_kind() -> None:
    checks = [*_checks([1.0, 1.0]), CheckResult(_day(2), SPAN, 80.0, 79.0)]
    series = chart_series(evaluate(checks, Qal3Spec(1.0, 1.0)))
    assert set(series) == {"zero", "span"}
    zero = series["zero"]
    assert zero["at"] == [_day(0), _day(1)]
    assert zero["deviation"] == [1.0, 1.0]
    assert zero["drift_pos"] == pytest.approx([0.499, 0.998])
    assert zero["drift_pos_limit"] == pytest.approx([2.85, 2.85])
    assert series["span"]["drift_neg"] == pytest.approx([0.499])
    assert chart_series([]) == {}
    assert all(isinstance(p, ChartPoint) for p in evaluate(checks, Qal3Spec(1.0, 1.0)))


@pytest.mark.parametrize(
    ("days", "kind", "longest"),
    [
        ([], ZERO, 30),  # no check at all: the whole period
        ([-5, 3, 10], ZERO, 20),  # 10 → the period's end (30)
        ([-5, 3, 10, 29], ZERO, 19),
        ([-20, 12, 20, 29], ZERO, 32),  # the interval from the check before the period counts whole
        ([1, 8, 15, 22, 29], SPAN, 30),  # those are zero checks: no span check in the period
        ([1, 8, 15, 22, 29, 31], ZERO, 7),  # a check after the end does not count
    ],
)
def test_longest_interval_without_a_check(days: list[int], kind: CheckKind, longest: int) -> None:
    """EN 14181:2014 §7: a QAL3 check at least once per maintenance interval."""
    checks = [CheckResult(_day(d), ZERO, 0.0, 0.0) for d in days]
    assert longest_interval(checks, kind, _day(0), _day(30)) == timedelta(days=longest)
