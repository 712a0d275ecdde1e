"""QAL3: drift and precision control of an analyzer from its zero and span checks (EN 14181:2014 §7;
docs/regulatory-basis.md §8). Pure, no I/O.

Each component (an instrument's parameter) has two control charts, one of its zero checks and one of its span
checks, over d = reading − reference of each check (a reading of the check gas against its certified value).
The standard deviation s_AMS of the analyzer at zero and at span comes from its QAL1 (EN 15267-3, with the
uncertainty evaluation of EN ISO 14956) and is configuration. Three charts, the config chooses one:

- **CUSUM** (EN 14181:2004 Annex C, still accepted beside the 2014 edition's charts). Precision first, from
  successive differences so a steady drift does not count against it:
  s_t = max(0, s_{t−1} + (d_t − d_{t−1})²/2 − k_s), k_s = 1.85·s²_AMS, out of control when s_t > h_s = 6.90·s²_AMS
  ("decrease of precision": find the cause, tell the manufacturer; the drift test is then not done).
  Then drift, two one-sided sums: S⁺_t = max(0, S⁺_{t−1} + d_t − k), S⁻_t = max(0, S⁻_{t−1} − d_t − k),
  k = 0.501·s_AMS, out of control when a sum > h = 2.85·s_AMS; the adjustment needed is ±(k + S/N), N the
  checks since that sum was last zero.
- **Shewhart** (EN 14181:2014 §7): each d against warning limits ±w·s_AMS and action limits ±a·s_AMS
  (defaults 2 and 3); beyond an action limit is out of control.
- **EWMA** (EN 14181:2014 §7): z_t = λ·d_t + (1 − λ)·z_{t−1}, z_0 = 0, out of control beyond
  ±L·s_AMS·√(λ/(2 − λ)·(1 − (1 − λ)^{2t})) (defaults λ = 0.2, L = 3).

On a signal the AMS is to be adjusted. A check recorded after an adjustment (`adjusted`) restarts both charts
of the component: the sums and averages start again from zero with that check. The data between a signal and
the adjustment are "out of control": no rule in the standard says what becomes of them, so the config decides
(`[source.qal3] flag_out_of_control`: invalid, or valid but flagged).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

__all__ = [
    "CLAUSE",
    "CUSUM_CLAUSE",
    "ChartPoint",
    "CheckKind",
    "CheckResult",
    "Method",
    "OutOfControl",
    "Qal3Spec",
    "Signal",
    "Status",
    "chart_series",
    "evaluate",
    "longest_interval",
    "out_of_control_periods",
]

CLAUSE: Final = "EN 14181:2014 §7"
CUSUM_CLAUSE: Final = "EN 14181:2004 Annex C"

K_DRIFT: Final = 0.501
"""k = 0.501·s_AMS (EN 14181:2004 Annex C)"""
H_DRIFT: Final = 2.85
"""h = 2.85·s_AMS"""
K_PRECISION: Final = 1.85
"""k_s = 1.85·s²_AMS"""
H_PRECISION: Final = 6.90
"""h_s = 6.90·s²_AMS"""


class CheckKind(StrEnum):
    ZERO = "zero"
    SPAN = "span"


class Method(StrEnum):
    CUSUM = "cusum"
    SHEWHART = "shewhart"
    EWMA = "ewma"


class Status(StrEnum):
    IN_CONTROL = "in-control"
    WARNING = "warning"
    """Shewhart: beyond a warning limit, inside the action limits"""
    OUT_OF_CONTROL = "out-of-control"
    """drift (or a Shewhart/EWMA limit): adjust the AMS"""
    PRECISION_LOST = "precision-lost"
    """CUSUM: decrease of precision: find the cause, tell the manufacturer"""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One zero or span check: the analyzer's `reading` of a check gas whose certified value is `reference`.
    `adjusted`: recorded after the analyzer was adjusted (both charts of the component restart with it)."""

    at: datetime
    kind: CheckKind
    reference: float
    reading: float
    adjusted: bool = False

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError(f"check at {self.at.isoformat()}: the time needs a time zone")
        if not (math.isfinite(self.reference) and math.isfinite(self.reading)):
            raise ValueError(f"check at {self.at.isoformat()}: reference and reading must be finite numbers")

    @property
    def deviation(self) -> float:
        return self.reading - self.reference


@dataclass(frozen=True, slots=True)
class Qal3Spec:
    """How a component's charts are drawn: the method, s_AMS at zero and at span (QAL1), and the method's limits."""

    s_ams_zero: float
    s_ams_span: float
    method: Method = Method.CUSUM
    shewhart_warning: float = 2.0
    shewhart_action: float = 3.0
    ewma_lambda: float = 0.2
    ewma_limit: float = 3.0

    def __post_init__(self) -> None:
        for name in ("s_ams_zero", "s_ams_span", "shewhart_warning", "shewhart_action", "ewma_limit"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0 (got {value})")
        if self.shewhart_warning >= self.shewhart_action:
            raise ValueError(
                f"shewhart_warning ({self.shewhart_warning:g}) must be below shewhart_action ({self.shewhart_action:g})"
            )
        if not 0 < self.ewma_lambda <= 1:
            raise ValueError(f"ewma_lambda must be in (0, 1] (got {self.ewma_lambda})")

    def s_ams(self, kind: CheckKind) -> float:
        return self.s_ams_zero if kind is CheckKind.ZERO else self.s_ams_span


@dataclass(frozen=True, slots=True)
class Signal:
    """A chart left control at a check: what, by how much, and what the standard asks for."""

    at: datetime
    kind: CheckKind
    status: Status
    statistic: str
    value: float
    limit: float
    correction: float | None
    """CUSUM drift: the adjustment the sums estimate (subtract it from the readings); None otherwise"""
    action: str


@dataclass(frozen=True, slots=True)
class ChartPoint:
    """A chart's state after one check: the plain data a control chart is drawn from."""

    at: datetime
    kind: CheckKind
    reference: float
    reading: float
    deviation: float
    adjusted: bool
    status: Status
    statistics: dict[str, float] = field(default_factory=dict)
    """CUSUM: drift_pos, drift_neg, precision; Shewhart: deviation; EWMA: ewma"""
    limits: dict[str, float] = field(default_factory=dict)
    """the limit each statistic is held against (an upper bound; the lower of Shewhart/EWMA is its negative)"""
    signal: Signal | None = None


@dataclass(slots=True)
class _CusumState:
    previous: float | None = None
    precision: float = 0.0
    pos: float = 0.0
    neg: float = 0.0
    n_pos: int = 0
    n_neg: int = 0


@dataclass(slots=True)
class _EwmaState:
    z: float = 0.0
    t: int = 0


_ACTION_ADJUST: Final = "adjust the AMS, then record a check with --adjusted; data until then are out of control"
_ACTION_PRECISION: Final = (
    "decrease of precision: find the cause (tell the manufacturer if the AMS is at fault); data until the AMS is "
    "repaired and adjusted are out of control"
)


def _cusum(check: CheckResult, s: float, state: _CusumState) -> ChartPoint:
    d = check.deviation
    k, h = K_DRIFT * s, H_DRIFT * s
    k_s, h_s = K_PRECISION * s * s, H_PRECISION * s * s
    if state.previous is not None:
        state.precision = max(0.0, state.precision + (d - state.previous) ** 2 / 2 - k_s)
    state.previous = d
    state.pos = max(0.0, state.pos + d - k)
    state.n_pos = state.n_pos + 1 if state.pos > 0 else 0
    state.neg = max(0.0, state.neg - d - k)
    state.n_neg = state.n_neg + 1 if state.neg > 0 else 0
    statistics = {"drift_pos": state.pos, "drift_neg": state.neg, "precision": state.precision}
    limits = {"drift_pos": h, "drift_neg": h, "precision": h_s}
    signal = None
    status = Status.IN_CONTROL
    if state.precision > h_s:  # judged first; the drift test is then not done
        status = Status.PRECISION_LOST
        signal = Signal(check.at, check.kind, status, "precision", state.precision, h_s, None, _ACTION_PRECISION)
    elif state.pos > h or state.neg > h:
        status = Status.OUT_OF_CONTROL
        if state.pos >= state.neg:
            name, value, correction = "drift_pos", state.pos, k + state.pos / state.n_pos
        else:
            name, value, correction = "drift_neg", state.neg, -(k + state.neg / state.n_neg)
        signal = Signal(check.at, check.kind, status, name, value, h, correction, _ACTION_ADJUST)
    return _point(check, status, statistics, limits, signal)


def _shewhart(check: CheckResult, s: float, spec: Qal3Spec) -> ChartPoint:
    d = check.deviation
    warning, action = spec.shewhart_warning * s, spec.shewhart_action * s
    status = Status.IN_CONTROL
    signal = None
    if abs(d) > action:
        status = Status.OUT_OF_CONTROL
        signal = Signal(check.at, check.kind, status, "deviation", d, action, None, _ACTION_ADJUST)
    elif abs(d) > warning:
        status = Status.WARNING
    return _point(check, status, {"deviation": d}, {"deviation": action, "warning": warning}, signal)


def _ewma(check: CheckResult, s: float, spec: Qal3Spec, state: _EwmaState) -> ChartPoint:
    lam = spec.ewma_lambda
    state.t += 1
    state.z = lam * check.deviation + (1 - lam) * state.z
    limit = spec.ewma_limit * s * math.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * state.t)))
    status = Status.IN_CONTROL
    signal = None
    if abs(state.z) > limit:
        status = Status.OUT_OF_CONTROL
        signal = Signal(check.at, check.kind, status, "ewma", state.z, limit, None, _ACTION_ADJUST)
    return _point(check, status, {"ewma": state.z}, {"ewma": limit}, signal)


def _point(
    check: CheckResult,
    status: Status,
    statistics: dict[str, float],
    limits: dict[str, float],
    signal: Signal | None,
) -> ChartPoint:
    return ChartPoint(
        check.at,
        check.kind,
        check.reference,
        check.reading,
        check.deviation,
        check.adjusted,
        status,
        statistics,
        limits,
        signal,
    )


def evaluate(checks: Iterable[CheckResult], spec: Qal3Spec) -> list[ChartPoint]:
    """The charts' state after each check of one component, in time order (zero and span interleaved).

    A check with `adjusted` restarts both charts before it is charted (EN 14181: after the adjustment the
    sums start again from zero)."""
    cusum = {kind: _CusumState() for kind in CheckKind}
    ewma = {kind: _EwmaState() for kind in CheckKind}
    points: list[ChartPoint] = []
    for check in sorted(checks, key=lambda c: c.at):
        if check.adjusted:
            cusum = {kind: _CusumState() for kind in CheckKind}
            ewma = {kind: _EwmaState() for kind in CheckKind}
        s = spec.s_ams(check.kind)
        if spec.method is Method.CUSUM:
            points.append(_cusum(check, s, cusum[check.kind]))
        elif spec.method is Method.SHEWHART:
            points.append(_shewhart(check, s, spec))
        else:
            points.append(_ewma(check, s, spec, ewma[check.kind]))
    return points


@dataclass(frozen=True, slots=True)
class OutOfControl:
    """From the first signal to the next adjusted check (end None: not adjusted yet)."""

    start: datetime
    end: datetime | None
    signals: tuple[Signal, ...]

    def covers(self, start: datetime, end: datetime) -> bool:
        """Whether [start, end) overlaps the period."""
        return self.start < end and (self.end is None or start < self.end)


def out_of_control_periods(points: Sequence[ChartPoint]) -> list[OutOfControl]:
    """The component's out-of-control periods: each starts at a signal and ends at the next adjusted check
    (a signal while already out of control belongs to the same period)."""
    periods: list[OutOfControl] = []
    start: datetime | None = None
    signals: list[Signal] = []
    for point in points:
        if start is not None and point.adjusted:
            periods.append(OutOfControl(start, point.at, tuple(signals)))
            start, signals = None, []
        if point.signal is not None:
            if start is None:
                start = point.at
            signals.append(point.signal)
    if start is not None:
        periods.append(OutOfControl(start, None, tuple(signals)))
    return periods


def longest_interval(checks: Iterable[CheckResult], kind: CheckKind, start: datetime, end: datetime) -> timedelta:
    """The longest stretch up to `end` without a `kind` check, counting the intervals that reach into
    [start, end): from the last check before `start` (else from `start`) through the checks in the period to `end`.
    EN 14181:2014 §7 asks for a check at least once per maintenance interval (the QAL1's)."""
    times = sorted(c.at for c in checks if c.kind is kind and c.at < end)
    marks = [max((t for t in times if t < start), default=start)]
    marks += [t for t in times if t >= start]
    marks.append(end)
    return max(b - a for a, b in itertools.pairwise(marks))


def chart_series(points: Sequence[ChartPoint]) -> dict[str, dict[str, list[object]]]:
    """A component's control charts as plain columns, one chart per check kind, for drawing:
    {"zero": {"at": [...], "deviation": [...], "status": [...], "<statistic>": [...], "<statistic>_limit": [...]},
    "span": {...}}. Times are datetimes, numbers floats; a chart without checks is left out."""
    charts: dict[str, dict[str, list[object]]] = {}
    for point in points:
        chart = charts.setdefault(point.kind.value, {"at": [], "deviation": [], "status": [], "adjusted": []})
        chart["at"].append(point.at)
        chart["deviation"].append(point.deviation)
        chart["status"].append(point.status.value)
        chart["adjusted"].append(point.adjusted)
        for name, value in point.statistics.items():
            if name != "deviation":
                chart.setdefault(name, []).append(value)
        for name, value in point.limits.items():
            chart.setdefault(f"{name}_limit", []).append(value)
    return charts
