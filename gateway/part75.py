"""US 40 CFR Part 75 quality assurance of a CEMS channel: the daily calibration error test, linearity checks, RATAs
and the bias adjustment factor, and which hours they leave out of control (docs/regulatory-basis.md §8). Pure, no
I/O; the tests themselves are entered by people (gateway/part75_log.py).

- Daily calibration error (40 CFR 75 App. A §3.1, Eq. A-5): CE = |R − A| / span × 100, at the zero and the
  upscale level. The performance specification (App. A §3.1) is 2.5 % of span for SO2/NOx (or |R − A| ≤ 5 ppm when
  the span is below 200 ppm), 0.5 % O2/CO2 as |R − A| itself, 3.0 % of span for flow. A daily test is out of
  control when either level exceeds twice the specification (App. B §2.1.4): 5.0 % of span for SO2/NOx unless
  |R − A| ≤ 5 ppm (span ≤ 50 ppm) or ≤ 10 ppm (50 < span ≤ 200 ppm), the bands EPA's ECMPS check code applies;
  1.0 % O2/CO2; 6.0 % of span for flow.
- Out-of-control period (App. B §2.1.4, §75.24): from the hour of a failed test to the hour of the next passing
  one; those hours are not quality-assured and are substituted like missing ones.
- Validity (App. B §2.1.5): a passed daily test covers the 26 clock hours after the hour it was completed in. When
  that window ran out while the unit was not operating, a grace period of 8 unit operating hours follows the
  restart, in which the data count as quality-assured (to pass a test in). Our reading of App. B §2.1.5; medium
  confidence in the grace period's details, so both numbers are configuration (`[source.part75]`).
- Linearity (App. A §3.2, Eq. A-4): per level LE = |R̄ − A| / A × 100 ≤ 5.0 %, or |R̄ − A| ≤ 5 ppm (SO2/NOx) /
  0.5 % (O2/CO2). A failed linearity check is out of control until a passing one (App. B §2.2.3).
- RATA (App. A §7.3–7.6): d̄, s_d, cc = t₀.₉₇₅·s_d/√n (Table 7-1), RA = (|d̄| + |cc|) / RM̄ × 100 ≤ 10.0 %
  (App. A §3.3); bias test fails when d̄ > |cc| (App. A §7.6.4), then BAF = 1 + |d̄| / CEM̄ (Eq. A-12), applied to
  the SO2, NOx and flow hourly values from the hour after the RATA until the next one (App. A §7.6.5, App. B
  §2.3.3). A failed RATA is out of control until a passing one (App. B §2.3.2).

Not done here: the due dates of quarterly linearity checks and semiannual/annual RATAs (and their grace periods),
the low-emitter alternative RATA specifications, and the 7-day calibration error test of certification.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

__all__ = [
    "BAF_SPECIES",
    "PPM_BANDS",
    "T_975",
    "CalibrationError",
    "DailyCalibration",
    "Kind",
    "Linearity",
    "LinearityLevel",
    "Part75Spec",
    "PeriodStatus",
    "Rata",
    "RataResult",
    "calibration_error",
    "kind_of",
    "linearity_error",
    "statuses",
]


class Kind(StrEnum):
    """What a monitor measures, which decides its calibration limits (App. A §3.1)."""

    GAS = "gas"
    """SO2, NOx and other pollutant concentrations: % of span, ppm alternative"""
    DILUENT = "diluent"
    """O2, CO2: |R − A| in % vol"""
    FLOW = "flow"
    """stack flow: % of span"""


def kind_of(role: str) -> Kind:
    """The kind of a report channel role (flow, o2, co2, pollutant:NAME)."""
    if role == "flow":
        return Kind.FLOW
    if role in ("o2", "co2"):
        return Kind.DILUENT
    return Kind.GAS


SPEC_PERCENT: Final = {Kind.GAS: 2.5, Kind.DILUENT: 0.5, Kind.FLOW: 3.0}
"""App. A §3.1 performance specification: % of span (gas, flow) or % vol |R − A| (diluent)."""
CONTROL_FACTOR: Final = 2.0
"""App. B §2.1.4: out of control beyond twice the performance specification."""
SPEC_PPM: Final = 5.0
"""App. A §3.1 alternative: |R − A| ≤ 5 ppm when the span is below 200 ppm."""
SPEC_PPM_SPAN_BELOW: Final = 200.0
PPM_BANDS: Final = ((50.0, 5.0), (200.0, 10.0))
"""Out-of-control alternative for SO2/NOx: (span at most, |R − A| at most in ppm), as EPA's ECMPS check code
applies App. B §2.1.4."""
LINEARITY_PERCENT: Final = 5.0
LINEARITY_PPM: Final = 5.0
LINEARITY_DILUENT: Final = 0.5
RATA_PERCENT: Final = 10.0
BAF_SPECIES: Final = frozenset({"so2", "nox", "no", "no2"})
"""Pollutants whose hourly values the bias adjustment factor multiplies (App. A §7.6.5), besides flow."""
T_975: Final = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
}
"""t₀.₉₇₅ by degrees of freedom n − 1 (App. A Table 7-1)."""
RATA_MIN_RUNS: Final = 9
RATA_MAX_RUNS: Final = 12
"""App. A §6.5.10: at least nine runs; at most three of up to twelve may be left out."""


def _is_ppm(unit: str) -> bool:
    return unit.strip().lower() == "ppm"


@dataclass(frozen=True, slots=True)
class CalibrationError:
    """One level of a calibration error test: CE (Eq. A-5), whether it meets the performance specification
    (App. A §3.1) and whether it is in control (App. B §2.1.4), and by which criterion."""

    reference: float
    response: float
    span: float
    error: float
    """% of span (gas, flow) or |R − A| in % vol (diluent)"""
    difference: float
    """|R − A| in the test's unit"""
    within_spec: bool
    in_control: bool
    criterion: str


def calibration_error(kind: Kind, reference: float, response: float, span: float, unit: str) -> CalibrationError:
    """CE of one level (40 CFR 75 App. A §3.1 Eq. A-5); ValueError for a span ≤ 0 or numbers that are not finite."""
    if not all(math.isfinite(x) for x in (reference, response, span)):
        raise ValueError("reference, response and span must be finite numbers")
    if span <= 0:
        raise ValueError(f"span must be > 0 (got {span:g})")
    difference = abs(response - reference)
    spec = SPEC_PERCENT[kind]
    limit = CONTROL_FACTOR * spec
    if kind is Kind.DILUENT:
        error = difference
        return CalibrationError(
            reference, response, span, error, difference, error <= spec, error <= limit, f"|R − A| ≤ {limit:g} % vol"
        )
    error = difference / span * 100.0
    within_spec = error <= spec
    in_control = error <= limit
    criterion = f"CE ≤ {limit:g} % of span"
    if kind is Kind.GAS and _is_ppm(unit):
        if span < SPEC_PPM_SPAN_BELOW and difference <= SPEC_PPM:
            within_spec = True
        if not in_control:
            for span_at_most, ppm in PPM_BANDS:
                if span <= span_at_most:
                    if difference <= ppm:
                        in_control = True
                        criterion = f"|R − A| ≤ {ppm:g} ppm (span ≤ {span_at_most:g} ppm)"
                    break
    return CalibrationError(reference, response, span, error, difference, within_spec, in_control, criterion)


@dataclass(frozen=True, slots=True)
class DailyCalibration:
    """A daily calibration error test of one channel, completed at `at`, with its zero and upscale level."""

    id: int
    source: str
    role: str
    at: datetime
    span: float
    unit: str
    zero_reference: float
    zero_response: float
    high_reference: float
    high_response: float
    by: str = ""
    why: str = ""
    recorded_at: datetime | None = None

    def levels(self) -> tuple[CalibrationError, CalibrationError]:
        kind = kind_of(self.role)
        return (
            calibration_error(kind, self.zero_reference, self.zero_response, self.span, self.unit),
            calibration_error(kind, self.high_reference, self.high_response, self.span, self.unit),
        )

    @property
    def passed(self) -> bool:
        return all(level.in_control for level in self.levels())


@dataclass(frozen=True, slots=True)
class LinearityLevel:
    """One gas level of a linearity check: the reference value and the mean of the monitor's responses."""

    reference: float
    mean_response: float

    @property
    def difference(self) -> float:
        return abs(self.mean_response - self.reference)


def linearity_error(kind: Kind, level: LinearityLevel, unit: str) -> tuple[float, bool]:
    """(LE %, passed) of one level (App. A §3.2, Eq. A-4): ≤ 5.0 %, or |R̄ − A| ≤ 5 ppm (SO2/NOx in ppm) or
    ≤ 0.5 % (O2/CO2)."""
    if not (math.isfinite(level.reference) and math.isfinite(level.mean_response)) or level.reference <= 0:
        raise ValueError("a linearity level needs a reference value > 0 and a finite mean response")
    error = level.difference / level.reference * 100.0
    passed = error <= LINEARITY_PERCENT
    if kind is Kind.GAS and _is_ppm(unit) and level.difference <= LINEARITY_PPM:
        passed = True
    if kind is Kind.DILUENT and level.difference <= LINEARITY_DILUENT:
        passed = True
    return error, passed


@dataclass(frozen=True, slots=True)
class Linearity:
    """A linearity check of one channel (low, mid, high level), completed at `at`."""

    id: int
    source: str
    role: str
    at: datetime
    unit: str
    levels: tuple[LinearityLevel, ...]
    by: str = ""
    why: str = ""
    recorded_at: datetime | None = None

    def errors(self) -> list[tuple[float, bool]]:
        return [linearity_error(kind_of(self.role), level, self.unit) for level in self.levels]

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.errors())


@dataclass(frozen=True, slots=True)
class Rata:
    """A relative accuracy test audit of one channel, completed at `at`: the runs as (reference method, CEM)."""

    id: int
    source: str
    role: str
    at: datetime
    runs: tuple[tuple[float, float], ...]
    by: str = ""
    why: str = ""
    recorded_at: datetime | None = None

    def __post_init__(self) -> None:
        if not RATA_MIN_RUNS <= len(self.runs) <= RATA_MAX_RUNS:
            raise ValueError(
                f"a RATA has {RATA_MIN_RUNS} to {RATA_MAX_RUNS} runs (40 CFR 75 App. A §6.5.10), got {len(self.runs)}"
            )
        if not all(math.isfinite(rm) and math.isfinite(cem) for rm, cem in self.runs):
            raise ValueError("RATA runs must be finite numbers")
        if self.reference_mean <= 0 or self.cem_mean <= 0:
            raise ValueError("RATA: the reference method and CEM means must be > 0")

    @property
    def reference_mean(self) -> float:
        return statistics.fmean(rm for rm, _ in self.runs)

    @property
    def cem_mean(self) -> float:
        return statistics.fmean(cem for _, cem in self.runs)

    @property
    def mean_difference(self) -> float:
        """d̄ = mean of RM − CEM (App. A Eq. A-7): positive when the CEM reads low."""
        return statistics.fmean(rm - cem for rm, cem in self.runs)

    @property
    def confidence_coefficient(self) -> float:
        """cc = t₀.₉₇₅ · s_d / √n (App. A Eq. A-9, Table 7-1)."""
        n = len(self.runs)
        sd = statistics.stdev(rm - cem for rm, cem in self.runs)
        return T_975[n - 1] * sd / math.sqrt(n)

    @property
    def relative_accuracy(self) -> float:
        """RA = (|d̄| + |cc|) / RM̄ × 100 (App. A Eq. A-10)."""
        return (abs(self.mean_difference) + abs(self.confidence_coefficient)) / self.reference_mean * 100.0

    @property
    def passed(self) -> bool:
        return self.relative_accuracy <= RATA_PERCENT

    @property
    def bias_failed(self) -> bool:
        """App. A §7.6.4: the CEM is biased low when d̄ > |cc|."""
        return self.mean_difference > abs(self.confidence_coefficient)

    @property
    def bias_adjustment_factor(self) -> float:
        """BAF = 1 + |d̄| / CEM̄ (App. A Eq. A-12) when the bias test fails, else 1; to three decimals."""
        if not self.bias_failed:
            return 1.0
        return round(1.0 + abs(self.mean_difference) / self.cem_mean, 3)


@dataclass(frozen=True, slots=True)
class Part75Spec:
    """`[source.part75]`: the channels under Part 75 QA with their spans, the daily test's validity and grace."""

    spans: tuple[tuple[str, float], ...]
    """(role, span) of the channels that need a daily calibration error test"""
    validity_hours: int = 26
    grace_operating_hours: int = 8
    bias_adjustment: bool = True

    def span(self, role: str) -> float | None:
        return dict(self.spans).get(role)

    def baf_applies(self, role: str, species: str | None) -> bool:
        """SO2, NOx and flow take the bias adjustment factor (App. A §7.6.5)."""
        return self.bias_adjustment and (role == "flow" or (species or "").lower() in BAF_SPECIES)


@dataclass(frozen=True, slots=True)
class PeriodStatus:
    """One base period of one channel under Part 75: in control or not (and why), and the BAF that applies."""

    in_control: bool
    reason: str = ""
    """why out of control (or 'grace period' while in one)"""
    grace: bool = False
    baf: float = 1.0
    rata_id: int | None = None
    """the RATA whose BAF applies"""


def _hour_of(moment: datetime, starts: Sequence[datetime], step: timedelta) -> datetime:
    """The grid start of the period `moment` falls in (grids are aligned to whole periods from their first start)."""
    first = starts[0] if starts else moment
    return first + ((moment - first) // step) * step


def _z(moment: datetime) -> str:
    return moment.isoformat(timespec="minutes").replace("+00:00", "Z")


def statuses(
    spec: Part75Spec,
    role: str,
    starts: Sequence[datetime],
    step: timedelta,
    operating: Sequence[bool],
    *,
    daily: Sequence[DailyCalibration] = (),
    linearity: Sequence[Linearity] = (),
    ratas: Sequence[RataResult] = (),
    daily_required: bool = True,
    baf_applies: bool = False,
) -> list[PeriodStatus]:
    """Per base period of `starts` (step `step`, `operating` alike): whether the channel's data are quality-assured
    under Part 75, from its tests (any order; those before the grid count too). Non-operating periods are in
    control (there is nothing to assure)."""
    hour = timedelta(hours=1)
    daily_sorted = sorted((t for t in daily if t.role == role), key=lambda t: (t.at, t.id))
    linearity_sorted = sorted((t for t in linearity if t.role == role), key=lambda t: (t.at, t.id))
    rata_sorted = sorted((t for t in ratas if t.role == role), key=lambda t: (t.at, t.id))
    result: list[PeriodStatus] = []
    d_i = l_i = r_i = b_i = 0
    last_daily: DailyCalibration | None = None
    last_linearity: Linearity | None = None
    last_rata: RataResult | None = None
    adjusting: RataResult | None = None
    grace_used = 0
    grace_for: int | None = None
    """id of the passed daily test whose expiry the current grace period follows"""
    for start, on in zip(starts, operating, strict=True):
        while d_i < len(daily_sorted) and _hour_of(daily_sorted[d_i].at, starts, step) <= start:
            last_daily = daily_sorted[d_i]
            d_i += 1
        while l_i < len(linearity_sorted) and _hour_of(linearity_sorted[l_i].at, starts, step) <= start:
            last_linearity = linearity_sorted[l_i]
            l_i += 1
        while r_i < len(rata_sorted) and _hour_of(rata_sorted[r_i].at, starts, step) <= start:
            last_rata = rata_sorted[r_i]
            r_i += 1
        while b_i < len(rata_sorted) and _hour_of(rata_sorted[b_i].at, starts, step) < start:
            adjusting = rata_sorted[b_i]
            b_i += 1
        baf, rata_id = 1.0, None
        if baf_applies and adjusting is not None:  # from the hour after the RATA's (App. B §2.3.3)
            baf, rata_id = adjusting.baf, adjusting.id
        if not on:
            result.append(PeriodStatus(True, "not operating", baf=baf, rata_id=rata_id))
            continue
        reasons: list[str] = []
        grace = False
        if daily_required:
            if last_daily is None:
                reasons.append("no daily calibration error test recorded (40 CFR 75 App. B §2.1)")
            elif not last_daily.passed:
                reasons.append(f"daily calibration error test #{last_daily.id} failed at {_z(last_daily.at)}")
            else:
                tested = _hour_of(last_daily.at, starts, step)
                expiry = tested + (spec.validity_hours + 1) * hour
                if start >= expiry:
                    if grace_for != last_daily.id:
                        # the grace applies when the window ran out while the unit was not operating
                        expired_off = _off_at(expiry, starts, operating)
                        grace_for, grace_used = last_daily.id, (0 if expired_off else spec.grace_operating_hours)
                    if grace_used < spec.grace_operating_hours:
                        grace_used += 1
                        grace = True
                    else:
                        reasons.append(
                            f"daily calibration error test overdue: #{last_daily.id} passed at {_z(last_daily.at)}, "
                            f"valid {spec.validity_hours} clock hours"
                            + (f" and {spec.grace_operating_hours} operating hours of grace" if grace_used else "")
                            + " (40 CFR 75 App. B §2.1.5)"
                        )
        if last_linearity is not None and not last_linearity.passed:
            reasons.append(f"linearity check #{last_linearity.id} failed at {_z(last_linearity.at)}")
        if last_rata is not None and not last_rata.passed:
            reasons.append(f"RATA #{last_rata.id} failed at {_z(last_rata.at)}")
        if reasons:
            result.append(PeriodStatus(False, "; ".join(reasons), baf=baf, rata_id=rata_id))
        else:
            result.append(PeriodStatus(True, "grace period" if grace else "", grace, baf, rata_id))
    return result


def _off_at(moment: datetime, starts: Sequence[datetime], operating: Sequence[bool]) -> bool:
    """Whether the unit was not operating in the period starting at `moment` (outside the grid: taken as
    operating, the strict reading)."""
    if not starts or moment < starts[0]:
        return False
    step = starts[1] - starts[0] if len(starts) > 1 else timedelta(hours=1)
    index = (moment - starts[0]) // step
    return index < len(operating) and not operating[index]


@dataclass(frozen=True, slots=True)
class RataResult:
    """What the timeline needs of a RATA (the runs are not needed after the computation)."""

    id: int
    role: str
    at: datetime
    passed: bool
    baf: float

    @classmethod
    def of(cls, rata: Rata) -> RataResult:
        return cls(rata.id, rata.role, rata.at, rata.passed, rata.bias_adjustment_factor)
