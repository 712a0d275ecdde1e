"""US 40 CFR Part 75 quality assurance of a CEMS channel: the daily calibration error test, linearity checks, RATAs
and the bias adjustment factor, and which hours they leave out of control (docs/regulatory-basis.md §8). Pure, no
I/O; the tests themselves are entered by people (gateway/mrv/part75_log.py).

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

- Due dates (App. B §2.2, §2.3): a linearity check each QA operating quarter (≥ 168 unit operating hours), a RATA
  every 2 QA operating quarters or 4 (annual: RA ≤ 7.5 % or the low-emitter annual bound, App. B Figure 2), each
  capped in calendar quarters, with a grace period of unit operating hours after the quarter it was due in (168,
  720); past it, out of control until a test passes. The low-emitter alternative specifications (App. A §3.3) pass
  a RATA and earn the annual frequency by |d̄|. Which numbers were checked against what source, and which are only
  defaults of `[source.part75]`: the constants below and docs/regulatory-basis.md §8.

Not done here: the 7-day calibration error test of certification, the linearity exemption for spans ≤ 30 ppm, the
flow-to-load test, and the finer grace-period rules (an annual RATA done in its grace period moving the next
deadline); quarters before a report's period are not read (taken as QA operating quarters).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.mrv.substitution import Point

__all__ = [
    "BAF_SPECIES",
    "PPM_BANDS",
    "T_975",
    "CalibrationError",
    "DailyCalibration",
    "Kind",
    "Linearity",
    "LinearityLevel",
    "Part75Section",
    "Part75Spec",
    "Part75Tests",
    "PeriodStatus",
    "Rata",
    "RataResult",
    "calibration_error",
    "channel_statuses",
    "daily_calibration_due",
    "gate_points",
    "kind_of",
    "linearity_error",
    "part75_section",
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


QA_QUARTER_HOURS: Final = 168
"""A QA operating quarter: a calendar quarter with at least 168 unit operating hours (40 CFR 72.2; App. B §2.2.1,
§2.3.1). [guidance: EPA's ECMPS check code tests opHourCount >= 168]"""
LINEARITY_GRACE_HOURS: Final = 168
"""App. B §2.2.4: a linearity check not done in its QA operating quarter may be done within 168 unit operating hours
after the quarter's end. [not read in the text here: configuration]"""
LINEARITY_MAX_QUARTERS: Final = 4
"""App. B §2.2.1: at most four successive calendar quarters without a linearity check, QA operating or not. [our
reading, not read in the text here: configuration]"""
RATA_GRACE_HOURS: Final = 720
"""App. B §2.3.3: a RATA not done by its deadline may be done within 720 unit operating hours after the quarter's end.
[not read in the text here: configuration]"""
RATA_MAX_QUARTERS: Final = 8
"""App. B §2.3.1.1: at most eight successive calendar quarters after the last RATA's quarter, however few QA
operating quarters. [not read in the text here: configuration]"""
RATA_ANNUAL_PERCENT: Final = 7.5
"""App. B §2.3.1.2 (Figure 2): a RATA with RA at most 7.5 % earns the annual frequency (four QA operating quarters);
else semiannual (two). [guidance: EPA's APS analyses use 7.5 / 10 %]"""


@dataclass(frozen=True, slots=True)
class RataAlternative:
    """A low-emitter alternative RATA specification of one channel (App. A §3.3, App. B Figure 2), in the RATA's
    unit: a RATA whose reference-method mean is at most `mean_at_most` (None: any mean) passes when |d̄| is at most
    `semiannual` (semiannual frequency) and earns the annual frequency when |d̄| is at most `annual`."""

    semiannual: float
    annual: float
    mean_at_most: float | None = None
    basis: str = "configuration"
    """where the numbers come from, for the report"""

    def __post_init__(self) -> None:
        if not (0 < self.annual <= self.semiannual and math.isfinite(self.semiannual)):
            raise ValueError(f"0 < annual ({self.annual:g}) ≤ semiannual ({self.semiannual:g}) is needed")
        if self.mean_at_most is not None and not (self.mean_at_most > 0 and math.isfinite(self.mean_at_most)):
            raise ValueError(f"mean_at_most must be a number > 0 (got {self.mean_at_most:g})")


_SPECIES_PPM: Final = frozenset({"so2", "nox", "no", "no2"})


def default_alternative(role: str, unit: str) -> RataAlternative | None:
    """The alternative specification App. A §3.3 gives a channel of this role and unit, when it has one:
    SO2/NOx in ppm with a reference mean ≤ 250 ppm: |d̄| ≤ 15 ppm (semiannual), ≤ 12 ppm (annual); NOx emission rate
    in lb/mmBtu with a mean ≤ 0.200: ≤ 0.020 / ≤ 0.015; O2/CO2 in %: ≤ 1.0 / ≤ 0.7 % (any mean). Flow (low
    velocity ≤ 10 fps: ±2.0 / ±1.5 fps) needs the stack velocity, so it is configuration only. [guidance: the SO2/NOx
    ppm, O2/CO2 and the NOx-rate 0.200 and 0.015 figures as EPA-data APS analyses apply them; the NOx-rate 0.020 not
    confirmed there; none read in the regulation's text here]"""
    text = unit.strip().lower().replace(" ", "")
    species = role.removeprefix("pollutant:")
    if species in _SPECIES_PPM and text == "ppm":
        return RataAlternative(15.0, 12.0, 250.0, "40 CFR 75 App. A §3.3 (SO2/NOx ≤ 250 ppm)")
    if species in _SPECIES_PPM and text in ("lb/mmbtu", "lb/mmbtu(hhv)"):
        return RataAlternative(0.020, 0.015, 0.200, "40 CFR 75 App. A §3.3 (NOx rate ≤ 0.200 lb/mmBtu)")
    if role in ("o2", "co2") and text in ("%", "%vol", "vol%", "%v/v"):
        return RataAlternative(1.0, 0.7, None, "40 CFR 75 App. A §3.3 (diluent, % vol)")
    return None


@dataclass(frozen=True, slots=True)
class RataOutcome:
    """Whether a RATA passed and which frequency it earned (App. A §3.3, App. B Figure 2), and by which criterion."""

    passed: bool
    annual: bool
    criterion: str

    @property
    def frequency(self) -> Literal["annual", "semiannual", "none"]:
        return "annual" if self.annual else ("semiannual" if self.passed else "none")


def rata_outcome(
    rata: Rata, alternative: RataAlternative | None, annual_percent: float = RATA_ANNUAL_PERCENT
) -> RataOutcome:
    """RA ≤ 10 % passes (App. A §3.3), RA ≤ `annual_percent` earns the annual frequency (App. B Figure 2); a
    low emitter (reference mean within the alternative's bound) also passes and earns it by |d̄| alone."""
    ra = rata.relative_accuracy
    d = abs(rata.mean_difference)
    low = alternative is not None and (
        alternative.mean_at_most is None or rata.reference_mean <= alternative.mean_at_most
    )
    if ra <= annual_percent:
        return RataOutcome(True, True, f"RA {ra:.2f} % ≤ {annual_percent:g} %: annual")
    if low and alternative is not None and d <= alternative.annual:
        return RataOutcome(True, True, f"|d̄| {d:g} ≤ {alternative.annual:g} ({alternative.basis}): annual")
    if ra <= RATA_PERCENT:
        return RataOutcome(True, False, f"RA {ra:.2f} % ≤ {RATA_PERCENT:g} %: semiannual")
    if low and alternative is not None and d <= alternative.semiannual:
        return RataOutcome(True, False, f"|d̄| {d:g} ≤ {alternative.semiannual:g} ({alternative.basis}): semiannual")
    return RataOutcome(
        False,
        False,
        f"RA {ra:.2f} % > {RATA_PERCENT:g} %"
        + (f" and |d̄| {d:g} > {alternative.semiannual:g}" if low and alternative is not None else ""),
    )


@dataclass(frozen=True, slots=True)
class Part75Spec:
    """`[source.part75]`: the channels under Part 75 QA with their spans, the daily test's validity and grace."""

    spans: tuple[tuple[str, float], ...]
    """(role, span) of the channels that need a daily calibration error test"""
    validity_hours: int = 26
    grace_operating_hours: int = 8
    bias_adjustment: bool = True
    qa_quarter_hours: int = QA_QUARTER_HOURS
    linearity_grace_hours: int = LINEARITY_GRACE_HOURS
    linearity_max_quarters: int = LINEARITY_MAX_QUARTERS
    rata_grace_hours: int = RATA_GRACE_HOURS
    rata_max_quarters: int = RATA_MAX_QUARTERS
    rata_annual_percent: float = RATA_ANNUAL_PERCENT
    alternatives: tuple[tuple[str, RataAlternative], ...] = ()
    """(role, low-emitter alternative RATA specification) of the channels that have one"""

    def span(self, role: str) -> float | None:
        return dict(self.spans).get(role)

    def alternative(self, role: str) -> RataAlternative | None:
        return dict(self.alternatives).get(role)

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
    due_grace: bool = False
    """in the grace period of a linearity check or RATA past its quarter (App. B §2.2.4, §2.3.3)"""


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
    due: Sequence[DuePeriod] | None = None,
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
    for index, (start, on) in enumerate(zip(starts, operating, strict=True)):
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
        due_grace = due is not None and due[index].grace
        if due is not None and due[index].past_due:
            reasons.append(due[index].past_due)
        if reasons:
            result.append(PeriodStatus(False, "; ".join(reasons), baf=baf, rata_id=rata_id))
        else:
            result.append(PeriodStatus(True, "grace period" if grace else "", grace, baf, rata_id, due_grace))
    return result


def daily_calibration_due(
    spec: Part75Spec,
    role: str,
    daily: Sequence[DailyCalibration],
    now: datetime,
    *,
    operating: Mapping[datetime, bool] | None = None,
) -> tuple[bool, datetime | None, str]:
    """For an alert at `now`: (whether the channel's daily test is failed or overdue, since when, in words).

    `operating`: whether the unit operated in each clock hour (by its UTC start) from the last test's hour to the
    hour of `now`; an hour it does not name counts as operating (the strict reading, as without it). The hours are
    judged by the report's timeline (`statuses`), so the alert says what the report will: a window that runs out
    while the unit is off is not overdue, and after the restart the grace period (App. B §2.1.5) comes first. A
    failed test fires whatever the unit does: the monitor is out of control until a test passes (App. B §2.1.4)."""
    tests = sorted((t for t in daily if t.role == role and t.at <= now), key=lambda t: (t.at, t.id))
    hour = timedelta(hours=1)
    now_hour = now.replace(minute=0, second=0, microsecond=0)
    on_now = operating is None or operating.get(now_hour, True)
    off = "" if on_now else "; the unit is not operating"
    if not tests:
        if not on_now:
            return (
                False,
                None,
                (
                    "no daily calibration error test recorded; the unit is not operating: test before it runs "
                    "(40 CFR 75 App. B §2.1)"
                ),
            )
        return True, None, "no daily calibration error test recorded (40 CFR 75 App. B §2.1)"
    last = tests[-1]
    if not last.passed:
        failing = [level.criterion for level in last.levels() if not level.in_control]
        return (
            True,
            last.at,
            f"test #{last.id} at {_z(last.at)} failed ({', '.join(failing)} not met): data out of control until a "
            f"test passes (40 CFR 75 App. B §2.1.4){off}",
        )
    first = last.at.replace(minute=0, second=0, microsecond=0)
    expiry = first + (spec.validity_hours + 1) * hour
    if now < expiry:
        return False, None, f"test #{last.id} passed at {_z(last.at)}, valid until {_z(expiry)}"
    starts = [first + i * hour for i in range((now_hour - first) // hour + 1)]
    flags = [True if operating is None else operating.get(start, True) for start in starts]
    timeline = statuses(spec, role, starts, hour, flags, daily=tests)
    ran_out = f"test #{last.id} passed at {_z(last.at)}; its {spec.validity_hours} clock hours ran out at {_z(expiry)}"
    current = timeline[-1]
    if not flags[-1]:
        if any(not s.in_control for s in timeline):  # overdue while it operated: no grace after this stop
            return False, None, f"{ran_out} while the unit operated; the unit is not operating: test before it restarts"
        return (
            False,
            None,
            (
                f"{ran_out}; the unit is not operating: after it restarts, test within {spec.grace_operating_hours} "
                "operating hours (40 CFR 75 App. B §2.1.5)"
            ),
        )
    if current.in_control:  # past the window, an operating hour in control is in the grace period
        used = sum(s.grace for s in timeline)
        return (
            False,
            None,
            (
                f"{ran_out} while the unit was not operating: grace period, {used} of {spec.grace_operating_hours} "
                "operating hours used: test now (40 CFR 75 App. B §2.1.5)"
            ),
        )
    since = len(timeline) - 1
    while since > 0 and not (flags[since - 1] and timeline[since - 1].in_control):
        since -= 1
    while not flags[since]:
        since += 1
    grace = " and the grace period after the restart" if any(s.grace for s in timeline) else ""
    return (
        True,
        max(starts[since], expiry),
        f"{ran_out}{grace}: data out of control until a test passes: test now (40 CFR 75 App. B §2.1.5)",
    )


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
    annual: bool = False
    """earned the annual frequency (App. B Figure 2)"""

    @classmethod
    def of(cls, rata: Rata, spec: Part75Spec | None = None) -> RataResult:
        """The RATA's result, with the channel's alternative specification and annual threshold from `spec`."""
        if spec is None:
            return cls(rata.id, rata.role, rata.at, rata.passed, rata.bias_adjustment_factor, False)
        outcome = rata_outcome(rata, spec.alternative(rata.role), spec.rata_annual_percent)
        return cls(rata.id, rata.role, rata.at, outcome.passed, rata.bias_adjustment_factor, outcome.annual)


@dataclass(frozen=True, slots=True)
class Part75Tests:
    """The tests of one source a report uses: those in its period and those before it still in effect."""

    daily: tuple[DailyCalibration, ...] = ()
    linearity: tuple[Linearity, ...] = ()
    ratas: tuple[Rata, ...] = ()


# -- due dates of linearity checks and RATAs (40 CFR 75 App. B §2.2, §2.3) -----------------------------------


class DueKind(StrEnum):
    LINEARITY = "linearity"
    RATA = "rata"


@dataclass(frozen=True, slots=True)
class PassedTest:
    """A passed linearity check or RATA, as the due dates need it."""

    id: int
    at: datetime
    annual: bool = False
    """a RATA that earned the annual frequency"""


@dataclass(frozen=True, slots=True)
class DuePeriod:
    """One base period as the due dates leave it: in a grace period, or past due (out of control) and why."""

    grace: bool = False
    past_due: str = ""


@dataclass(frozen=True, slots=True)
class DueDate:
    """One requirement: the test due after `basis_id`, by when, and how it was met (or not)."""

    kind: DueKind
    role: str
    basis_id: int
    basis_at: datetime
    frequency: Literal["quarterly", "semiannual", "annual"]
    due_quarter: str | None
    """the QA operating (or last allowed) quarter the test was due in; None: met before it came due"""
    due_by: datetime | None
    """the end of that quarter (or, `projected`, of the earliest quarter it can come due in)"""
    projected: bool
    """still open: due by `due_by` at the earliest, if every quarter until then is a QA operating quarter"""
    grace_hours: int
    grace_used: int
    """unit operating hours of the grace period used (to the test, or so far)"""
    met_by: int | None = None
    met_at: datetime | None = None
    past_due_from: datetime | None = None
    """the first operating period out of control (the grace used up), until `met_at`"""


def quarter_of(moment: datetime, zone: tzinfo) -> int:
    """The calendar quarter (in the unit's time zone) of a moment, as year × 4 + quarter − 1."""
    local = moment.astimezone(zone)
    return local.year * 4 + (local.month - 1) // 3


def quarter_start(index: int, zone: tzinfo) -> datetime:
    year, quarter = divmod(index, 4)
    return datetime(year, 3 * quarter + 1, 1, tzinfo=zone).astimezone(UTC)


def quarter_name(index: int) -> str:
    year, quarter = divmod(index, 4)
    return f"{year}-Q{quarter + 1}"


def due_timeline(
    spec: Part75Spec,
    kind: DueKind,
    role: str,
    passed: Sequence[PassedTest],
    *,
    starts: Sequence[datetime],
    step: timedelta,
    operating: Sequence[bool],
    zone: tzinfo = UTC,
) -> tuple[list[DuePeriod], list[DueDate]]:
    """Per period of the grid: whether a linearity check (App. B §2.2) or RATA (App. B §2.3) of the channel is in
    its grace period or past due, from its passed tests; and each due date met or still open.

    A linearity check is due in each QA operating quarter (≥ `qa_quarter_hours` unit operating hours), and at the
    latest in the `linearity_max_quarters`-th calendar quarter after the last one; a RATA is due after two QA
    operating quarters (semiannual), or four (annual, App. B Figure 2), and at the latest in the
    `rata_max_quarters`-th calendar quarter (App. B §2.3.1.1). Non-QA operating quarters do not count. A test not
    done by the end of its quarter has a grace period of unit operating hours (App. B §2.2.4, §2.3.3); a test in the
    grace period meets the quarter it was due in (the next is counted from that quarter), after it the channel is
    out of control until a test passes, like after a failed one. The time before the grid is unknown: taken as
    operating (every quarter a QA operating quarter, every hour a grace hour), the strict reading."""
    linearity = kind is DueKind.LINEARITY
    grace_hours = spec.linearity_grace_hours if linearity else spec.rata_grace_hours
    cap = spec.linearity_max_quarters if linearity else spec.rata_max_quarters
    name = "linearity check" if linearity else "RATA"
    clause = "App. B §2.2.4" if linearity else "App. B §2.3.3"
    periods = [DuePeriod()] * len(starts)
    if not starts or not passed:
        return periods, []
    tests = sorted(passed, key=lambda t: (t.at, t.id))
    step_hours = step / timedelta(hours=1)
    before = [t for t in tests if t.at < starts[0]]
    pending = [t for t in tests if t.at >= starts[0]]
    first = starts[0]
    if before:  # from the last one before the grid: the hours in between taken as operating
        first = starts[0] - math.ceil((starts[0] - before[-1].at) / step) * step
    dates: list[DueDate] = []
    basis: PassedTest | None = None
    anchor = cur_q = qa_count = 0
    required = 1
    hours_in_q = 0.0
    deadline: int | None = None
    grace_used = 0.0
    past_due_from: datetime | None = None

    def start(test: PassedTest, anchor_q: int) -> None:
        nonlocal basis, anchor, required, qa_count, deadline, grace_used, past_due_from
        basis, anchor = test, anchor_q
        required = 1 if linearity else (4 if test.annual else 2)
        qa_count, deadline, grace_used, past_due_from = 0, None, 0.0, None

    def frequency() -> Literal["quarterly", "semiannual", "annual"]:
        return "quarterly" if linearity else ("annual" if basis is not None and basis.annual else "semiannual")

    def close(met: PassedTest | None) -> None:
        assert basis is not None
        due_q: int | None = deadline
        projected = False
        if due_q is None and met is None:  # open: the earliest quarter it can come due in
            needed = required - qa_count
            due_q = min((cur_q + needed - 1) if cur_q > anchor else anchor + needed, anchor + cap)
            projected = True
        dates.append(
            DueDate(
                kind,
                role,
                basis.id,
                basis.at,
                frequency(),
                quarter_name(due_q) if due_q is not None else None,
                quarter_start(due_q + 1, zone) if due_q is not None else None,
                projected,
                grace_hours,
                round(grace_used),
                met.id if met else None,
                met.at if met else None,
                past_due_from,
            )
        )

    if before:
        start(before[-1], quarter_of(before[-1].at, zone))
    cur_q = quarter_of(first, zone)
    next_quarter = quarter_start(cur_q + 1, zone)
    count = round((starts[0] - first) / step) + len(starts)
    for index in range(count):
        moment = first + index * step
        grid = index - (count - len(starts))
        on = True if grid < 0 else operating[grid]
        if moment >= next_quarter:  # a new quarter (periods never span a quarter's start: hours, half-hours)
            if basis is not None and cur_q > anchor:
                qa_count += hours_in_q >= spec.qa_quarter_hours
                if deadline is None and (qa_count >= required or cur_q - anchor >= cap):
                    deadline, grace_used = cur_q, 0.0
            cur_q, hours_in_q = quarter_of(moment, zone), 0.0
            next_quarter = quarter_start(cur_q + 1, zone)
        while pending and pending[0].at < moment + step:
            test = pending.pop(0)
            if basis is not None:
                close(test)
            in_grace = basis is not None and deadline is not None and past_due_from is None
            start(test, deadline if in_grace and deadline is not None else quarter_of(test.at, zone))
        if not on:
            continue
        hours_in_q += step_hours
        if basis is None or deadline is None:
            continue
        if past_due_from is None and grace_used < grace_hours:
            grace_used += step_hours
            if grid >= 0:
                periods[grid] = DuePeriod(grace=True)
            continue
        if past_due_from is None:
            past_due_from = moment
        if grid >= 0:
            periods[grid] = DuePeriod(
                past_due=f"{name} past due: due in {quarter_name(deadline)} after #{basis.id} of {_z(basis.at)}, "
                f"{grace_hours} operating hours of grace used (40 CFR 75 {clause})"
            )
    if basis is not None:
        close(None)
    return periods, dates


def channel_due_dates(
    spec: Part75Spec,
    tests: Part75Tests,
    role: str,
    *,
    starts: Sequence[datetime],
    step: timedelta,
    operating: Sequence[bool],
    zone: tzinfo = UTC,
) -> tuple[list[DuePeriod], list[DueDate]]:
    """Both due-date timelines of one channel merged per period (grace, past due), and their due dates."""
    linearity = [PassedTest(t.id, t.at) for t in tests.linearity if t.role == role and t.passed]
    outcomes = [RataResult.of(r, spec) for r in tests.ratas if r.role == role]
    ratas = [PassedTest(r.id, r.at, r.annual) for r in outcomes if r.passed]
    lin_periods, lin_dates = due_timeline(
        spec, DueKind.LINEARITY, role, linearity, starts=starts, step=step, operating=operating, zone=zone
    )
    rata_periods, rata_dates = due_timeline(
        spec, DueKind.RATA, role, ratas, starts=starts, step=step, operating=operating, zone=zone
    )
    merged = [
        DuePeriod(a.grace or b.grace, "; ".join(x for x in (a.past_due, b.past_due) if x))
        for a, b in zip(lin_periods, rata_periods, strict=True)
    ]
    return merged, lin_dates + rata_dates


@dataclass(frozen=True, slots=True)
class DueFinding:
    """What the alerts say of a channel's linearity checks and RATAs at a moment."""

    past_due: bool
    """out of control: a test past its grace period (alert qa-part75-calibration)"""
    past_due_since: datetime | None
    due_soon: bool
    """a test in its grace period, or due within the warning lead time (alert qa-part75-due)"""
    detail: str


def due_finding(
    spec: Part75Spec,
    tests: Part75Tests,
    role: str,
    now: datetime,
    *,
    start: datetime,
    operating: Mapping[datetime, bool],
    zone: tzinfo,
    warn_before: timedelta,
) -> DueFinding | None:
    """For the alerts at `now`: the channel's open linearity-check and RATA due dates over the hours from `start`
    (an hour `operating` does not name counts as operating; before `start`, every hour: the report's strict
    reading). None: no passed linearity check or RATA recorded, nothing is due."""
    hour = timedelta(hours=1)
    first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    last = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    starts = [first + i * hour for i in range((last - first) // hour + 1)]
    flags = [operating.get(at, True) for at in starts]
    _, dates = channel_due_dates(spec, tests, role, starts=starts, step=hour, operating=flags, zone=zone)
    current = [d for d in dates if d.met_by is None]
    if not current:
        return None
    past = [d for d in current if d.past_due_from is not None]
    texts: list[str] = []
    soon = False
    for date in current:
        what = "linearity check" if date.kind is DueKind.LINEARITY else f"{date.frequency} RATA"
        after = f"after #{date.basis_id} of {_z(date.basis_at)}"
        due_by = _z(date.due_by) if date.due_by is not None else "?"
        if date.past_due_from is not None:
            texts.append(
                f"{what} past due since {_z(date.past_due_from)} (due in {date.due_quarter} {after}; "
                f"{date.grace_hours} operating hours of grace used): out of control until one passes"
            )
        elif not date.projected:
            soon = True
            texts.append(
                f"{what} was due in {date.due_quarter} (by {due_by}) {after}: grace period, {date.grace_used} of "
                f"{date.grace_hours} operating hours used"
            )
        else:
            near = date.due_by is not None and date.due_by - now <= warn_before
            soon = soon or near
            texts.append(
                f"{what} due by {due_by} at the earliest ({date.due_quarter}, if every quarter until then is a QA "
                f"operating quarter) {after}"
            )
    since = min((d.past_due_from for d in past if d.past_due_from is not None), default=None)
    return DueFinding(bool(past), since, soon, "; ".join(texts) + " (40 CFR 75 App. B §2.2, §2.3)")


def channel_statuses(
    spec: Part75Spec,
    tests: Part75Tests,
    channels: Sequence[tuple[str, str | None]],
    *,
    starts: Sequence[datetime],
    step: timedelta,
    operating: Sequence[bool],
    zone: tzinfo = UTC,
) -> dict[str, list[PeriodStatus]]:
    """Per (role, species) of the source's channels under Part 75 QA (a span in `spec`, or a linearity check or
    RATA recorded): the status of every base period, with the due dates of linearity checks and RATAs (calendar
    quarters in `zone`)."""
    results = [RataResult.of(r, spec) for r in tests.ratas]
    spans = dict(spec.spans)
    found: dict[str, list[PeriodStatus]] = {}
    for role, species in channels:
        baf = spec.baf_applies(role, species)
        tested = role in spans or any(t.role == role for t in tests.linearity) or any(r.role == role for r in results)
        if not tested:
            continue
        found[role] = statuses(
            spec,
            role,
            starts,
            step,
            operating,
            daily=tests.daily,
            linearity=tests.linearity,
            ratas=results,
            daily_required=role in spans,
            baf_applies=baf,
            due=channel_due_dates(spec, tests, role, starts=starts, step=step, operating=operating, zone=zone)[0],
        )
    return found


OUT_OF_CONTROL: Final = "out of control (40 CFR 75)"


def gate_points(points: Sequence[Point], period_statuses: Sequence[PeriodStatus] | None) -> list[Point]:
    """The measured grid as Part 75 lets it count: out-of-control values invalid (then substituted, §75.24),
    the others multiplied by the bias adjustment factor in force (App. A §7.6.5). Raw readings are untouched."""
    if period_statuses is None:
        return list(points)
    gated = []
    for point, status in zip(points, period_statuses, strict=True):
        if not status.in_control and point.valid:
            gated.append(Point(point.start, None, False, f"{OUT_OF_CONTROL}: {status.reason}"))
        elif status.baf != 1.0 and point.value is not None:
            gated.append(Point(point.start, point.value * status.baf, point.valid, point.reason))
        else:
            gated.append(point)
    return gated


# -- the report's Part 75 section ----------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DailyCalibrationRow(_Model):
    """One daily calibration error test (40 CFR 75 App. A §3.1, App. B §2.1)."""

    id: int
    channel: str
    at_utc: datetime = Field(description="when the test was completed")
    span: float
    unit: str
    zero_reference: float
    zero_response: float
    zero_error: float = Field(description="% of span (O2/CO2: |R − A| in % vol)")
    high_reference: float
    high_response: float
    high_error: float
    result: Literal["pass", "fail"] = Field(description="fail: out of control (App. B §2.1.4)")
    within_spec: bool = Field(description="both levels within the App. A §3.1 performance specification")
    criterion: str
    by: str
    why: str


class LinearityRow(_Model):
    """One linearity check (40 CFR 75 App. A §3.2)."""

    id: int
    channel: str
    at_utc: datetime
    unit: str
    levels: list[str] = Field(description="reference → mean response: error % per level")
    max_error_percent: float
    result: Literal["pass", "fail"]
    by: str
    why: str


class RataRow(_Model):
    """One relative accuracy test audit (40 CFR 75 App. A §7) and its bias adjustment factor."""

    id: int
    channel: str
    at_utc: datetime
    runs: int
    reference_mean: float
    cem_mean: float
    mean_difference: float = Field(description="d̄ = mean of RM − CEM (App. A Eq. A-7)")
    confidence_coefficient: float = Field(description="cc (App. A Eq. A-9)")
    relative_accuracy_percent: float = Field(description="RA (App. A Eq. A-10); ≤ 10 % passes")
    bias_failed: bool = Field(description="d̄ > |cc| (App. A §7.6.4)")
    baf: float = Field(description="bias adjustment factor (App. A Eq. A-12); 1 when the bias test passes")
    result: Literal["pass", "fail"]
    frequency: Literal["annual", "semiannual", "none"] = Field(
        default="semiannual", description="the frequency it earned (App. B Figure 2)"
    )
    criterion: str = Field(default="", description="RA, or the low-emitter alternative (App. A §3.3), that decided")
    by: str
    why: str


class Part75Channel(_Model):
    """One channel under Part 75 QA in the report's period."""

    channel: str
    span: float | None = Field(description="configured span; None: no daily calibration required (BAF only)")
    operating_periods: int
    out_of_control_periods: int = Field(description="operating periods not quality-assured: substituted")
    grace_periods: int = Field(description="operating periods in a grace period (App. B §2.1.5)")
    baf_periods: int = Field(description="operating periods multiplied by a bias adjustment factor other than 1")
    baf_values: list[float] = Field(description="the factors applied, in time order")
    due_grace_periods: int = Field(
        default=0,
        description="operating periods in the grace period of a linearity check or RATA (App. B §2.2.4, §2.3.3)",
    )
    past_due_periods: int = Field(
        default=0, description="operating periods out of control because a linearity check or RATA was past due"
    )


class DueRow(_Model):
    """One due date of a linearity check (40 CFR 75 App. B §2.2) or RATA (App. B §2.3) and how it was met."""

    channel: str
    test: Literal["linearity", "rata"]
    frequency: Literal["quarterly", "semiannual", "annual"]
    after_test: int = Field(description="the passed test the due date counts from")
    after_test_at_utc: datetime
    due_quarter: str | None = Field(description="the quarter it was due in; None: met before it came due")
    due_by_utc: datetime | None = Field(description="the end of that quarter")
    projected: bool = Field(
        description="still open: due by then at the earliest, if every quarter until then is a QA operating quarter"
    )
    grace_operating_hours: int
    grace_used_hours: int = Field(description="unit operating hours of the grace period used")
    met_by: int | None
    met_at_utc: datetime | None
    past_due_from_utc: datetime | None = Field(description="out of control from then until met (substituted)")
    status: Literal["met", "met in grace", "past due, then met", "past due", "in grace", "open"]


class OutOfControlRun(_Model):
    """Consecutive operating periods of one channel out of control for one reason."""

    channel: str
    start_utc: datetime
    end_utc: datetime = Field(description="exclusive")
    periods: int
    reason: str


class Part75Section(_Model):
    """40 CFR Part 75 QA: tests, out-of-control periods and bias adjustment (docs/regulatory-basis.md §8)."""

    rules: str = Field(description="what the gateway applies, in words, with the clauses")
    validity_hours: int
    grace_operating_hours: int
    bias_adjustment: bool
    channels: list[Part75Channel]
    daily: list[DailyCalibrationRow] = Field(description="daily calibration error tests in the period")
    linearity: list[LinearityRow]
    ratas: list[RataRow]
    out_of_control: list[OutOfControlRun]
    due: list[DueRow] = Field(
        default_factory=list, description="due dates of linearity checks and RATAs in force in the period"
    )


def _result(passed: bool) -> Literal["pass", "fail"]:
    return "pass" if passed else "fail"


def _daily_row(test: DailyCalibration, name: str) -> DailyCalibrationRow:
    zero, high = test.levels()
    failing = [level for level in (zero, high) if not level.in_control]
    return DailyCalibrationRow(
        id=test.id,
        channel=name,
        at_utc=test.at,
        span=test.span,
        unit=test.unit,
        zero_reference=test.zero_reference,
        zero_response=test.zero_response,
        zero_error=zero.error,
        high_reference=test.high_reference,
        high_response=test.high_response,
        high_error=high.error,
        result=_result(test.passed),
        within_spec=zero.within_spec and high.within_spec,
        criterion=(failing or [high])[0].criterion,
        by=test.by,
        why=test.why,
    )


def _linearity_row(test: Linearity, name: str) -> LinearityRow:
    errors = test.errors()
    return LinearityRow(
        id=test.id,
        channel=name,
        at_utc=test.at,
        unit=test.unit,
        levels=[
            f"{level.reference:g} → {level.mean_response:g}: {error:.2f} %{'' if ok else ' FAIL'}"
            for level, (error, ok) in zip(test.levels, errors, strict=True)
        ],
        max_error_percent=max(error for error, _ in errors),
        result=_result(test.passed),
        by=test.by,
        why=test.why,
    )


def _rata_row(test: Rata, name: str, spec: Part75Spec) -> RataRow:
    outcome = rata_outcome(test, spec.alternative(test.role), spec.rata_annual_percent)
    return RataRow(
        id=test.id,
        channel=name,
        at_utc=test.at,
        runs=len(test.runs),
        reference_mean=test.reference_mean,
        cem_mean=test.cem_mean,
        mean_difference=test.mean_difference,
        confidence_coefficient=test.confidence_coefficient,
        relative_accuracy_percent=test.relative_accuracy,
        bias_failed=test.bias_failed,
        baf=test.bias_adjustment_factor,
        result=_result(outcome.passed),
        frequency=outcome.frequency,
        criterion=outcome.criterion,
        by=test.by,
        why=test.why,
    )


RULES_TEXT: Final = (
    "Daily calibration error CE = |R - A| / span × 100 (40 CFR 75 App. A §3.1); out of control beyond twice the "
    "specification (App. B §2.1.4): SO2/NOx above 5 % of span unless |R - A| ≤ 5 ppm (span ≤ 50 ppm) or ≤ 10 ppm "
    "(span ≤ 200 ppm), O2/CO2 above 1.0 % vol, flow above 6 %; out-of-control hours and hours without a valid "
    "test are substituted (§75.24). A "
    "passed test covers {validity} clock hours after its hour; after a window that ran out while the unit was off, "
    "{grace} operating hours of grace (App. B §2.1.5). Failed linearity checks (App. A §3.2) and RATAs (App. A "
    "§3.3) are out of control until passed; the last RATA's bias adjustment factor (App. A §7.6.5) multiplies "
    "SO2, NOx and flow from the hour after it{baf}. A linearity check is due in each QA operating quarter (≥ "
    "{quarter_hours} unit operating hours; at the latest in the {lin_cap}th calendar quarter) with {lin_grace} "
    "operating hours of grace after it (App. B §2.2); a RATA after 2 QA operating quarters, or 4 when its RA was "
    "≤ {annual:g} % or the low-emitter alternative's annual bound was met (App. A §3.3, App. B Figure 2), at the "
    "latest in the {rata_cap}th calendar quarter, with {rata_grace} operating hours of grace (App. B §2.3). Past the "
    "grace the channel is out of control until a test passes. Before the report's period every quarter counts as "
    "a QA operating quarter and every hour as an operating hour (the strict reading). Alternatives: {alternatives}."
)


def part75_section(
    spec: Part75Spec,
    tests: Part75Tests,
    names: Mapping[str, str],
    *,
    period_statuses: Mapping[str, Sequence[PeriodStatus]],
    starts: Sequence[datetime],
    step: timedelta,
    operating: Sequence[bool],
    zone: tzinfo = UTC,
) -> Part75Section:
    """The report's Part 75 section over the grid `starts`: the tests completed in it, per channel the
    out-of-control, grace and bias-adjusted periods, and the due dates of linearity checks and RATAs."""
    end = starts[-1] + step if starts else None

    def within(moment: datetime) -> bool:
        return bool(starts) and end is not None and starts[0] <= moment < end

    spans = dict(spec.spans)
    channels: list[Part75Channel] = []
    runs: list[OutOfControlRun] = []
    due_rows: list[DueRow] = []
    for role, items in period_statuses.items():
        name = names.get(role, role)
        due_periods, dates = channel_due_dates(
            spec, tests, role, starts=starts, step=step, operating=operating, zone=zone
        )
        due_rows += [_due_row(d, name) for d in dates if starts and (d.met_at is None or d.met_at >= starts[0])]
        on = [s for s, running in zip(items, operating, strict=True) if running]
        bafs: list[float] = []
        for item in items:
            if item.baf != 1.0 and (not bafs or bafs[-1] != item.baf):
                bafs.append(item.baf)
        channels.append(
            Part75Channel(
                channel=name,
                span=spans.get(role),
                operating_periods=len(on),
                out_of_control_periods=sum(not s.in_control for s in on),
                grace_periods=sum(s.grace for s in on),
                baf_periods=sum(s.baf != 1.0 for s in on),
                baf_values=bafs,
                due_grace_periods=sum(d.grace for d, running in zip(due_periods, operating, strict=True) if running),
                past_due_periods=sum(
                    bool(d.past_due) for d, running in zip(due_periods, operating, strict=True) if running
                ),
            )
        )
        run_start: int | None = None
        for index in range(len(items) + 1):
            current = items[index] if index < len(items) else None
            out = current is not None and operating[index] and not current.in_control
            if run_start is not None and (
                not out or (current is not None and current.reason != items[run_start].reason)
            ):
                runs.append(
                    OutOfControlRun(
                        channel=name,
                        start_utc=starts[run_start],
                        end_utc=starts[index - 1] + step,
                        periods=sum(operating[run_start:index]),
                        reason=items[run_start].reason,
                    )
                )
                run_start = None
            if out and run_start is None:
                run_start = index
    roles = set(period_statuses)
    return Part75Section(
        rules=RULES_TEXT.format(
            validity=spec.validity_hours,
            grace=spec.grace_operating_hours,
            baf="" if spec.bias_adjustment else " (switched off in [source.part75])",
            quarter_hours=spec.qa_quarter_hours,
            lin_cap=spec.linearity_max_quarters,
            lin_grace=spec.linearity_grace_hours,
            annual=spec.rata_annual_percent,
            rata_cap=spec.rata_max_quarters,
            rata_grace=spec.rata_grace_hours,
            alternatives="; ".join(
                f"{names.get(role, role)} |d̄| ≤ {a.semiannual:g} / {a.annual:g}"
                + (f" when the reference mean ≤ {a.mean_at_most:g}" if a.mean_at_most is not None else "")
                + f" ({a.basis})"
                for role, a in spec.alternatives
                if role in period_statuses
            )
            or "none",
        ),
        validity_hours=spec.validity_hours,
        grace_operating_hours=spec.grace_operating_hours,
        bias_adjustment=spec.bias_adjustment,
        channels=channels,
        daily=[
            _daily_row(t, names.get(t.role, t.role))
            for t in sorted(tests.daily, key=lambda t: (t.at, t.id))
            if t.role in roles and within(t.at)
        ],
        linearity=[
            _linearity_row(t, names.get(t.role, t.role))
            for t in sorted(tests.linearity, key=lambda t: (t.at, t.id))
            if t.role in roles and within(t.at)
        ],
        ratas=[
            _rata_row(t, names.get(t.role, t.role), spec)
            for t in sorted(tests.ratas, key=lambda t: (t.at, t.id))
            if t.role in roles and within(t.at)
        ],
        out_of_control=runs,
        due=due_rows,
    )


def _due_row(date: DueDate, name: str) -> DueRow:
    status: Literal["met", "met in grace", "past due, then met", "past due", "in grace", "open"]
    if date.met_by is not None:
        status = "past due, then met" if date.past_due_from else ("met in grace" if date.due_quarter else "met")
    else:
        status = "past due" if date.past_due_from else ("open" if date.projected else "in grace")
    return DueRow(
        channel=name,
        test=date.kind.value,
        frequency=date.frequency,
        after_test=date.basis_id,
        after_test_at_utc=date.basis_at,
        due_quarter=date.due_quarter,
        due_by_utc=date.due_by,
        projected=date.projected,
        grace_operating_hours=date.grace_hours,
        grace_used_hours=date.grace_used,
        met_by=date.met_by,
        met_at_utc=date.met_at,
        past_due_from_utc=date.past_due_from,
        status=status,
    )
