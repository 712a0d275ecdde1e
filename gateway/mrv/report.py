"""The MRV report of one source (stack) for a year or a month, built from base-period rollups. Pure, no I/O.

docs/regulatory-basis.md §7 lists what it holds: the monitoring plan reference and method per parameter, hourly data
availability per parameter, annual mass totals per pollutant and CO2 (§2), substituted hours with their
method (§4), limit exceedances with durations (validated values, §3), calibration/maintenance periods, the
configuration with its hash, and a reproducibility check (totals recomputed from the raw readings).

`MrvReport` is the JSON document (its schema: docs/mrv-report.schema.json, `MrvReport.model_json_schema()`).
The I/O side (gateway.mrv.report_production) queries the store and recomputes from raw data for the check;
gateway.mrv.report_files writes the CSV, JSON, XLSX and PDF files.

Decisions where the reference leaves room:
- substitutes enter the mass totals only; limits are judged on measured valid values alone (§3);
- a base period's mass uses the hourly means of concentration and flow (EU MRR Art. 43 style), each brought to
  dry standard conditions first; the O2-corrected value is used for limits only (§2);
- a monthly report is provisional: its substitutes come from that month's data (the MRR reporting period is
  the year, so the annual report's substitutes can differ);
- every period carries its operating state (gateway.mrv.operating_state). Substitution, availability, validity and
  invalid days are over operating periods (EU MRR 2018/2066 Art. 43, 45; 40 CFR 75.30(a)); a non-operating
  period is reported as such, never as missing or substituted, and adds nothing to the totals (MRR Annex VIII
  Eq. 1 sums over operating hours; what analyzers measured in it is shown beside the totals). Start-up and
  shut-down periods count in the totals but not for limit compliance (Directive 2010/75/EU Annex V Part 4),
  and a limit's daily mean is over the day's normal operating periods.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.mrv import arithmetic as mrv
from gateway.mrv import compliance, qal3
from gateway.mrv.calibration import THRESHOLDS_SOURCE, Qal2Function, VcrThresholds, new_qal2_due, weekly_vcr
from gateway.mrv.operating_state import HourState, ManualEntry, OperatingSpec, State, derive_states, signal_values
from gateway.mrv.part75 import (
    Part75Section,
    Part75Spec,
    Part75Tests,
    PeriodStatus,
    channel_statuses,
    gate_points,
    part75_section,
)
from gateway.mrv.rollup import (
    Aggregate,
    Period,
    RuleSet,
    base_duration,
    base_starts,
    day_bounds,
    local_date,
    month_bounds,
    year_bounds,
)
from gateway.mrv.substitution import (
    NOT_OPERATING,
    FilledPeriod,
    Method,
    Point,
    SubstitutionSpec,
    availability_percent,
    fill_operating,
    gaps,
)

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "SIGNAL_ROLE",
    "ChannelInput",
    "MrvReport",
    "QaInput",
    "QaLogEntry",
    "Qal3Component",
    "RevisionAudit",
    "RevisionEntry",
    "build_report",
    "build_report_with_rows",
    "config_hash",
    "revision_audit",
]

REPORT_SCHEMA_VERSION: Final = 1
OUT_OF_SERVICE_HOURS: Final = 5 * 24
"""§4 (EU MRR Art. 45): equipment out of service for more than five consecutive days must be reported."""
REVISIONS_LISTED: Final = 1000
"""Revisions listed in a report; more are counted only (`cems-gateway revisions list` shows them all)."""
SIGNAL_ROLE: Final = "signal:"
"""`aggregates` key prefix of an operating-state signal: "signal:INSTRUMENT/PARAMETER"."""
OPERATING_RUNS_LISTED: Final = 2000
"""Runs of one operating state listed in a report; more are counted only."""
TOTALS_TOLERANCE_T: Final = 1e-6
"""Reproducibility: recomputed and reported totals may differ by at most 1 g (float summation order)."""


# -- the document --------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportPeriod(_Model):
    kind: Literal["year", "month"]
    year: int
    month: int | None = Field(default=None, description="1-12 for a monthly report")
    time_zone: str = Field(description="IANA zone of the local calendar the period follows")
    start_local: datetime
    end_local: datetime = Field(description="exclusive")
    start_utc: datetime
    end_utc: datetime = Field(description="exclusive")
    base_period: str = Field(description="averaging period of the hourly data: 1h or 30m")
    base_periods: int = Field(description="number of base periods in the reporting period")
    complete: bool = Field(description="false while the period has not ended when the report was generated")


class MethodEntry(_Model):
    role: str = Field(description="flow, o2, h2o, temperature, pressure, co2 or pollutant:NAME")
    name: str
    instrument: str
    parameter: str
    unit: str
    basis: str = Field(description="wet/dry and standard/actual conditions as configured")
    rule_set: str
    rule_citation: str
    substitution: str = Field(description="mrr-mean-2sigma, part75, or 'not substituted' (not used for mass)")


class MonitoringPlan(_Model):
    reference: str = Field(description="the approved monitoring plan this report follows")
    reference_o2_percent: float | None
    o2_guard_percent: float
    o2_basis: str = Field(
        default="",
        description="how the measured O2 entered the reference-O2 correction: dry as measured, or wet and dried "
        "period by period with the moisture channel (Directive 2010/75/EU Annex VI Part 7)",
    )
    methods: list[MethodEntry]


class ConfigRecord(_Model):
    sha256: str = Field(description="sha256 of the canonical JSON below (sorted keys, no spaces)")
    canonical: dict[str, Any] = Field(description="source config, rule sets, factors and instrument profiles used")


class Availability(_Model):
    role: str
    name: str
    instrument: str
    parameter: str
    unit: str
    expected_periods: int = Field(
        description="the operating base periods of the period (every one without [source.operating])"
    )
    valid_periods: int
    maintenance_periods: int = Field(description="invalid because of calibration/maintenance (check_function)")
    invalid_periods: int = Field(description="present but invalid for another reason")
    missing_periods: int = Field(description="no data at all")
    substituted_periods: int
    availability_percent: float = Field(description="valid / expected × 100 (§4)")
    capture_excluding_maintenance_percent: float
    invalid_days: int = Field(description="local days invalid under the rule set (missing days included)")
    flagged_periods: int = Field(
        default=0,
        description="valid periods whose mean includes used-but-flagged values (maintenance_required, "
        "out_of_specification, …: docs/regulatory-basis.md §3)",
    )
    non_operating_periods: int = Field(
        default=0,
        description="periods the source did not operate: not expected, neither valid nor invalid nor missing",
    )


class Total(_Model):
    name: str
    parameter: str
    kind: Literal["pollutant", "co2"]
    total_t: float = Field(description="Σ base-period kg / 1000 (§2), substitutes included")
    measured_t: float = Field(description="part from periods with every input measured")
    substituted_t: float
    substituted_periods: int
    unsubstituted_periods: int = Field(description="periods with no value at all: the total is incomplete")
    complete: bool
    non_operating_periods: int = Field(default=0, description="periods the source did not operate: not in the total")
    non_operating_measured_t: float = Field(
        default=0.0,
        description="mass the analyzers measured in non-operating periods, not in the total (a check on the "
        "operating state: well above zero means a period marked off was not)",
    )
    start_up_shut_down_t: float = Field(default=0.0, description="part of total_t from start-up/shut-down periods")


class SubstitutedRun(_Model):
    role: str
    name: str
    instrument: str
    parameter: str
    start_utc: datetime
    end_utc: datetime = Field(description="exclusive")
    start_local: datetime
    periods: int
    value: float | None = Field(description="the substitute; null when none could be produced")
    unit: str
    method: str
    reason: str = Field(description="why the measured value was not used (first period of the run)")


class ExceedanceEvent(_Model):
    pollutant: str
    averaging: str = Field(description="1h, 30m or 1d: the ELV's averaging period")
    start_utc: datetime
    end_utc: datetime
    start_local: datetime
    end_local: datetime
    duration_hours: float
    periods: int
    max_validated: float = Field(description="highest validated value (O2-corrected, CI subtracted), mg/Nm³")
    elv: float
    unit: str


REFUSED_EXAMPLES = 5
"""How many periods refused by standardisation a limit names (with the reason)."""


class PollutantLimit(_Model):
    pollutant: str
    elv: float
    averaging: str
    ci_percent: float
    confidence_interval: float
    valid_periods: int
    exceedances: int
    max_validated: float | None
    refused_periods: int = Field(
        default=0,
        description="base periods whose value could not be brought to the limit's basis (O2 at the guard, "
        "moisture ≥ 100 %, …): flagged and not judged, never divided blindly (docs/regulatory-basis.md §2)",
    )
    refused_examples: list[str] = Field(default_factory=list, description="the first few, with the reason")


COMPLIANCE_LISTED = 10
"""How many periods above its limit a compliance test lists (the count has them all)."""

_TEST_WORDS = {
    compliance.ComplianceCheck.MONTH_MEAN: "monthly mean",
    compliance.ComplianceCheck.DAY_MEAN: "daily mean",
    compliance.ComplianceCheck.BASE_SHARE: "values",
}


class ComplianceResult(_Model):
    """One IED compliance test of one pollutant's limit on validated values (Directive 2010/75/EU Annex V Part 4
    for large combustion plants, Annex VI Part 8 for waste incineration; see docs/mrv-limits.md)."""

    pollutant: str
    test: Literal["month-mean", "day-mean", "base-share"]
    description: str = Field(description="the test in words, e.g. '95 % of 1h values ≤ 200 % of the ELV'")
    averaging: str = Field(description="1mo, 1d, or the base period (1h, 30m)")
    elv: float
    percent_of_elv: float
    limit: float = Field(description="percent_of_elv × ELV, mg/Nm³ (validated values above it fail)")
    required_share_percent: float = Field(description="share of the valid periods that must be at or below limit")
    periods: int = Field(description="valid periods judged")
    periods_above: int
    share_within_percent: float | None
    max_value: float | None
    passed: bool | None = Field(description="null: no valid period to judge")
    above_local: list[str] = Field(
        description=f"local starts of the first {COMPLIANCE_LISTED} periods above the limit (the count has all)"
    )
    rule_set: str
    citation: str
    scope: str = Field(description="the period judged: the report's year, or its month (provisional)")


class MaintenancePeriod(_Model):
    instrument: str
    parameters: list[str]
    start_utc: datetime
    end_utc: datetime
    start_local: datetime
    end_local: datetime
    minutes: int = Field(description="minutes invalid because of calibration/maintenance within the span")


class Reproducibility(_Model):
    method: str
    raw_readings: int
    periods_compared: int
    periods_differing: int = Field(description="stored base-period rollups that differ from the raw recomputation")
    recomputed_totals_t: dict[str, float]
    max_difference_t: float
    tolerance_t: float
    matches: bool
    raw_expired_before: datetime | None = Field(
        default=None,
        description="raw readings before this time (UTC) had expired ([store] raw_retention_days): the base "
        "periods before it enter the recomputed totals as stored, unchecked",
    )
    note: str = Field(default="", description="what the check could and could not recompute, in words")


class RevisionEntry(_Model):
    """Other content received for a stored raw reading of the source (write-once: the original is what the
    figures use unless an operator approved the revision)."""

    id: str
    agent: str
    instrument: str
    parameter: str
    ts_utc: datetime = Field(description="the reading's sample time")
    value: float | None
    unit: str
    quality: str
    status: int | None
    state: Literal["pending", "approved", "superseded"] = Field(
        description="pending: kept beside the original, not used; approved: an operator made it the value used; "
        "superseded: was the value used until an approved revision replaced it"
    )
    batch_seq: int | None = Field(description="the agent's batch that carried it (null: not known)")
    batch_sent_at: datetime | None
    received_at: datetime | None = Field(description="when the gateway received it")
    decided_by: str
    decided_why: str
    decided_at: datetime | None
    superseded_by: str = Field(description="id of the revision that replaced it")


class RevisionAudit(_Model):
    """Revisions of the source's raw readings in the period: counted by state, the first ones listed."""

    pending: int = 0
    approved: int = 0
    superseded: int = 0
    listed: list[RevisionEntry] = Field(
        default_factory=list, description=f"in time order, at most {REVISIONS_LISTED} (the counts have them all)"
    )


class OperatingRun(_Model):
    state: State
    start_utc: datetime
    end_utc: datetime = Field(description="exclusive")
    start_local: datetime
    end_local: datetime
    periods: int
    decided_by: str = Field(description="manual, status, signals, assumed (no signal: taken as operating), always")
    basis: str = Field(description="what decided the run's first period")


class OperatingMonth(_Model):
    month: str = Field(description="local YYYY-MM")
    off: int
    start_up: int
    normal: int
    shut_down: int
    assumed: int = Field(description="of the operating ones, periods without any signal (taken as operating)")


class ManualLogEntry(_Model):
    id: int
    state: str = Field(description="off, start-up, normal, shut-down, or derived (the signals decide again)")
    start_utc: datetime
    end_utc: datetime
    by: str
    why: str
    recorded_at: datetime


class OperatingSection(_Model):
    """The source's operating state over the period: every period's state is in the hourly table."""

    configured: bool = Field(description="false: no [source.operating]; every period counts as operating")
    rule: str = Field(description="how the state is decided: signals, criteria and the rule applied")
    periods: dict[str, int] = Field(description="base periods per state")
    operating_periods: int
    assumed_periods: int = Field(description="operating periods without any signal value, taken as operating")
    runs: list[OperatingRun] = Field(description=f"consecutive periods in one state, the first {OPERATING_RUNS_LISTED}")
    runs_total: int
    by_month: list[OperatingMonth]
    manual_log: list[ManualLogEntry] = Field(description="the operator's entries that touch the period")


class Qal2Applied(_Model):
    """A channel's QAL2 calibration function (EN 14181:2014) and its weekly valid-calibration-range check."""

    role: str
    name: str
    qal2_id: str = Field(description="the QAL2 report's id; the calibrated values carry it")
    qal2_date: date
    a: float
    b: float
    vcr: float | None = Field(description="valid calibration range, upper bound; None: not configured, no check")
    vcr_unit: str = Field(description="the standardised unit the VCR and the weekly check are in")
    weeks: int = Field(description="weeks with at least one valid operating value")
    weeks_over: int = Field(description="weeks with more than week_percent % of values above the VCR")
    max_week_percent: float | None
    new_qal2_due: bool
    reasons: list[str]


class VcrWeekRow(_Model):
    """One Monday–Sunday week (source's local time) of one channel's VCR check."""

    name: str
    qal2_id: str
    week_start: date
    valid_periods: int = Field(description="valid operating base periods (standardised, before the CI)")
    above_vcr: int
    percent_above: float


class CalibrationSection(_Model):
    """QAL2 functions applied and the weekly VCR check (EN 14181:2014; docs/regulatory-basis.md §8)."""

    applied: str = Field(description="where in the computation the functions are applied, and why there")
    vcr_check: str = Field(description="what the weekly check counts")
    week_percent: float
    weeks_allowed: int
    any_week_percent: float
    thresholds_source: str
    functions: list[Qal2Applied]
    weeks: list[VcrWeekRow]


class QaCheckRow(_Model):
    """One zero or span check of the calibration-check log (EN 14181:2014 §7; EN 17255-2's record of a check)."""

    id: int
    component: str = Field(description="INSTRUMENT/PARAMETER")
    kind: str = Field(description="zero or span")
    at_utc: datetime
    at_local: datetime
    reference: float = Field(description="certified value of the check gas")
    reading: float = Field(description="the analyzer's response")
    deviation: float = Field(description="reading − reference")
    adjusted: bool = Field(description="recorded after an adjustment: the control charts restart")
    status: str = Field(description="the chart's state after this check: in-control, warning, out-of-control, ...")
    origin: str = Field(description="auto (captured from the analyzer's check mode) or manual")
    by: str
    why: str
    statistics: dict[str, float] = Field(
        default_factory=dict, description="the chart's statistics after this check (CUSUM drift_pos, drift_neg, …)"
    )
    limits: dict[str, float] = Field(default_factory=dict, description="the limit each statistic is held against")


class Qal3ComponentState(_Model):
    """A component's QAL3 control charts at the end of the period."""

    component: str
    method: str
    s_ams_zero: float
    s_ams_span: float
    checks: int = Field(description="checks in the period")
    zero_status: str = Field(description="state of the zero chart after its last check up to the period's end")
    span_status: str
    statistics: dict[str, float] = Field(description="the charts' statistics then, 'zero.drift_pos', ...")
    limits: dict[str, float]
    out_of_control_periods: int
    affected_periods: int = Field(description="operating base periods of the channel in an out-of-control period")
    longest_zero_interval_days: float = Field(description="longest stretch without a zero check, reaching the period")
    longest_span_interval_days: float


class OutOfControlRow(_Model):
    """From a QAL3 signal to the next adjusted check (EN 14181:2014 §7): the data's fate is the config's."""

    component: str
    start_utc: datetime
    end_utc: datetime | None = Field(description="the adjusted check; None: not adjusted by the period's end")
    start_local: datetime
    end_local: datetime | None
    signals: list[str]
    treatment: str = Field(description="invalid (substituted when operating) or flag (kept valid)")


class QaSection(_Model):
    """Calibration checks and QAL3 drift and precision control (EN 14181:2014 §7; docs/regulatory-basis.md §8)."""

    rule: str = Field(description="the charts, their limits and what happens to out-of-control data")
    flag_out_of_control: str
    max_check_interval_days: float | None = Field(description="the maintenance interval checked against; None: not set")
    checks: list[QaCheckRow]
    components: list[Qal3ComponentState]
    out_of_control: list[OutOfControlRow]

    def chart_series(self) -> dict[str, dict[str, dict[str, list[object]]]]:
        """The period's control charts for drawing, per component and check kind, as plain columns (the layout
        of gateway.mrv.qal3.chart_series): at, deviation, status, adjusted, each statistic and "<statistic>_limit"."""
        charts: dict[str, dict[str, dict[str, list[object]]]] = {}
        for row in self.checks:
            chart = charts.setdefault(row.component, {}).setdefault(
                row.kind, {"at": [], "deviation": [], "status": [], "adjusted": []}
            )
            chart["at"].append(row.at_utc)
            chart["deviation"].append(row.deviation)
            chart["status"].append(row.status)
            chart["adjusted"].append(row.adjusted)
            for name, value in row.statistics.items():
                if name != "deviation":
                    chart.setdefault(name, []).append(value)
            for name, value in row.limits.items():
                chart.setdefault(f"{name}_limit", []).append(value)
        return charts


class MrvReport(_Model):
    """Annual or monthly MRV report of one emission source (docs/regulatory-basis.md §7)."""

    schema_version: Literal[1] = REPORT_SCHEMA_VERSION
    generator: str = "aua cems-gateway"
    generated_at: datetime
    site: str
    source: str
    source_name: str
    period: ReportPeriod
    monitoring_plan: MonitoringPlan
    config: ConfigRecord
    totals: list[Total]
    availability: list[Availability]
    substituted: list[SubstitutedRun]
    limits: list[PollutantLimit]
    compliance: list[ComplianceResult] = Field(
        default_factory=list, description="IED compliance tests beside the limit check, per rule set (config)"
    )
    exceedances: list[ExceedanceEvent]
    maintenance: list[MaintenancePeriod]
    warnings: list[str]
    reproducibility: Reproducibility | None = None
    revisions: RevisionAudit = Field(
        default_factory=RevisionAudit, description="audit: other content received for stored raw readings"
    )
    operating: OperatingSection | None = Field(
        default=None, description="operating state per period: off, start-up, normal, shut-down"
    )
    calibration: CalibrationSection | None = Field(
        default=None, description="QAL2 calibration functions and the weekly VCR check; None: no channel has one"
    )
    part75: Part75Section | None = Field(
        default=None, description="40 CFR Part 75 QA (daily calibration, linearity, RATA, BAF); None: not configured"
    )
    qa: QaSection | None = Field(
        default=None, description="calibration checks and QAL3 control charts; None: no [source.qal3]"
    )


# -- inputs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelInput:
    """One configured channel as the report builder needs it (from gateway.mrv.config.SourceConfig)."""

    role: str
    name: str
    instrument: str
    parameter: str
    basis: mrv.Basis
    rules: RuleSet
    substitution: SubstitutionSpec | None
    """None: not used for mass, so not substituted (O2, or T/p when nothing is at actual conditions)"""
    elv: float | None = None
    elv_period: str = "1d"
    ci_percent: float = 0.0
    o2_correction: bool = True
    compliance: compliance.Compliance = compliance.NO_TESTS
    """IED compliance tests of the channel's rule set (none by default)"""
    qal2: Qal2Function | None = None
    """QAL2 calibration function applied to the base-period values (EN 14181:2014); None: used as measured"""


@dataclass(frozen=True, slots=True)
class SourceInput:
    id: str
    site: str
    name: str
    zone_name: str
    zone: tzinfo
    monitoring_plan: str
    reference_o2: float | None
    o2_guard: float
    channels: tuple[ChannelInput, ...]
    operating: OperatingSpec | None = None
    """what decides the operating state per period; None: every period is operating"""
    vcr_thresholds: VcrThresholds = field(default_factory=VcrThresholds)
    """when the weekly VCR check says a new QAL2 is due"""
    part75: Part75Spec | None = None
    """40 CFR Part 75 QA of the channels it names ([source.part75]); None: none"""

    def channel(self, role: str) -> ChannelInput | None:
        for channel in self.channels:
            if channel.role == role:
                return channel
        return None

    @property
    def base(self) -> Period:
        return self.channels[0].rules.base


@dataclass(frozen=True, slots=True)
class QaLogEntry:
    """A check of the calibration-check log as the report needs it (gateway.mrv.qa_checks.RecordedCheck)."""

    id: int
    instrument: str
    parameter: str
    result: qal3.CheckResult
    origin: str = "manual"
    by: str = ""
    why: str = ""


@dataclass(frozen=True, slots=True)
class Qal3Component:
    instrument: str
    parameter: str
    spec: qal3.Qal3Spec


@dataclass(frozen=True, slots=True)
class QaInput:
    """[source.qal3] and the source's checks up to the period's end (the charts need their history)."""

    components: tuple[Qal3Component, ...]
    checks: tuple[QaLogEntry, ...]
    flag_out_of_control: Literal["invalid", "flag"] = "invalid"
    max_check_interval: timedelta | None = None
    """the maintenance interval: warn when a component went longer without a zero or span check"""


def config_hash(canonical: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON: sorted keys, no whitespace, UTF-8."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_rules(source: SourceInput) -> dict[str, Any]:
    """The rule sets and §2 factors that shaped the numbers: part of the config hash."""
    return {
        "rule_sets": {c.role: {k: str(v) for k, v in asdict(c.rules).items()} for c in source.channels},
        "substitution": {c.role: asdict(c.substitution) if c.substitution else None for c in source.channels},
        "compliance": {
            c.role: {k: str(v) for k, v in asdict(c.compliance).items()} for c in source.channels if c.elv is not None
        },
        **(
            {"qal2": {c.role: asdict(c.qal2) | {"date": c.qal2.date.isoformat()} for c in source.channels if c.qal2}}
            if any(c.qal2 is not None for c in source.channels)
            else {}
        ),
        "factors": {
            "ppm_to_mg_m3": dict(mrv.PPM_TO_MG_M3),
            "standard": [mrv.STANDARD_TEMPERATURE_K, mrv.STANDARD_PRESSURE_KPA],
            "co2_density": mrv.CO2_DENSITY_KG_NM3,
        },
    }


# -- building ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Grid:
    starts: list[datetime]
    step: timedelta
    hours: float


def _grid(
    source: SourceInput, year: int, month: int | None, generated_at: datetime | None = None
) -> tuple[datetime, datetime, _Grid]:
    """The period's base periods; for a period not yet over at `generated_at`, only those already ended.

    Why: a period still to come has no data because it has not happened, not because the analyzer failed;
    counting it as missing would substitute mean + 2σ for the rest of the month (hundreds of invented tonnes)
    and count future days as invalid. The provisional report covers what has elapsed, and says so.
    """
    start, end = month_bounds(year, month, source.zone) if month else year_bounds(year, source.zone)
    step = base_duration(source.base)
    starts = base_starts(start, end, source.base)
    if generated_at is not None and generated_at < end:
        starts = [s for s in starts if s + step <= generated_at]
    return start, end, _Grid(starts, step, step / timedelta(hours=1))


def _points(
    channel: ChannelInput, aggregates: Sequence[Aggregate], starts: Sequence[datetime], warnings: list[str]
) -> tuple[list[Point], dict[datetime, Aggregate]]:
    by_start = {a.start: a for a in aggregates}
    points = []
    wrong_units: set[str] = set()
    for start in starts:
        found = by_start.get(start)
        if found is None:
            points.append(Point(start, None, False, "no data"))
        elif found.unit and found.unit != channel.basis.unit:
            wrong_units.add(found.unit)
            points.append(Point(start, None, False, f"unit {found.unit!r}, configured {channel.basis.unit!r}"))
        else:
            value = found.value
            if value is not None and channel.qal2 is not None:
                value = channel.qal2.apply(value)  # EN 14181:2014 QAL2: before standardisation and the CI
            points.append(Point(start, value, found.valid and value is not None, found.reason))
    if wrong_units:
        warnings.append(
            f"{channel.name}: readings in {', '.join(sorted(wrong_units))} but the source says "
            f"{channel.basis.unit!r}; those periods count as invalid"
        )
    return points, by_start


def _local(ts: datetime, zone: tzinfo) -> datetime:
    return ts.astimezone(zone)


def _mass_series(
    source: SourceInput, channel: ChannelInput, filled: Mapping[str, list[FilledPeriod]], grid: _Grid
) -> list[tuple[float | None, bool, str]]:
    """(kg, any input substituted, method text) per base period."""
    flow_channel = source.channel("flow")
    assert flow_channel is not None
    bases = (channel.basis, flow_channel.basis)
    needs = [channel.role, "flow"]
    wet = any(b.wet for b in bases)
    actual = any(b.actual_conditions for b in bases)
    needs += ["h2o"] * wet + ["temperature", "pressure"] * actual
    percent = channel.basis.kind == "percent"
    result: list[tuple[float | None, bool, str]] = []
    for inputs in zip(*(filled[role] for role in needs), strict=True):
        if any(p.value is None for p in inputs):
            missing = ", ".join(role for role, p in zip(needs, inputs, strict=True) if p.value is None)
            result.append((None, False, f"no value for {missing}"))
            continue
        value, flow = inputs[0].value, inputs[1].value
        assert value is not None
        assert flow is not None
        extra = {"h2o_percent": inputs[2].value} if wet else {}
        if actual:
            extra |= {"temperature_c": inputs[-2].value, "pressure_kpa": inputs[-1].value}
        try:
            concentration = mrv.to_dry_standard(value, channel.basis, **extra)
            flow_std = mrv.flow_to_dry_standard(flow, flow_channel.basis, **extra)
        except mrv.StandardisationError as error:
            result.append((None, False, str(error)))
            continue
        kg = mrv.mass_kg(concentration, flow_std, hours=grid.hours, percent=percent)
        if any(p.substituted for p in inputs):
            methods = "; ".join(f"{role}: {p.method}" for role, p in zip(needs, inputs, strict=True) if p.substituted)
            result.append((kg, True, methods))
        else:
            result.append((kg, False, ""))
    return result


def _o2_corrected(source: SourceInput, channel: ChannelInput) -> bool:
    """A limited pollutant as configured (the config ensures an O2 channel and a reference O2); another channel
    only when both exist (its VCR check)."""
    if channel.elv is not None:
        return channel.o2_correction
    return channel.o2_correction and source.reference_o2 is not None and source.channel("o2") is not None


def _standardising_roles(source: SourceInput, channel: ChannelInput) -> list[str]:
    """The channel, then what standardising it needs in the same period: O2 (the reference-O2 correction),
    H2O (wet value or wet O2), temperature and pressure (actual conditions)."""
    needs = [channel.role]
    corrected = _o2_corrected(source, channel)
    o2_channel = source.channel("o2") if corrected else None
    if corrected:
        needs.append("o2")
    if channel.basis.wet or (o2_channel is not None and o2_channel.basis.wet):
        needs.append("h2o")  # the same hour's moisture dries the value and an in-situ (wet) O2 alike
    if channel.basis.actual_conditions:
        needs += ["temperature", "pressure"]
    return needs


def _standardised(source: SourceInput, channel: ChannelInput, inputs: Mapping[str, Point]) -> float:
    """One period's value at dry standard conditions (and the reference O2 when corrected), before the
    confidence interval is subtracted (§2, §3). Raises mrv.StandardisationError."""
    measured = inputs[channel.role].value
    assert measured is not None
    extra = {
        "h2o_percent": inputs["h2o"].value if "h2o" in inputs else None,
        "temperature_c": inputs["temperature"].value if "temperature" in inputs else None,
        "pressure_kpa": inputs["pressure"].value if "pressure" in inputs else None,
    }
    if channel.role == "flow":
        return mrv.flow_to_dry_standard(measured, channel.basis, **extra)
    concentration = mrv.to_dry_standard(measured, channel.basis, **extra)
    if "o2" in inputs:
        o2_channel = source.channel("o2")
        o2 = inputs["o2"].value
        assert o2 is not None
        assert o2_channel is not None
        assert source.reference_o2 is not None
        o2 = mrv.dry_o2(o2, wet=o2_channel.basis.wet, h2o_percent=extra["h2o_percent"])
        concentration = mrv.correct_to_reference_o2(concentration, o2, source.reference_o2, guard=source.o2_guard)
    return concentration


def _standard_unit(source: SourceInput, channel: ChannelInput) -> str:
    try:
        kind = channel.basis.kind
    except mrv.StandardisationError:
        return channel.basis.unit  # temperature, pressure: no gas basis, checked as calibrated
    if kind == "flow":
        return "Nm3/h dry"
    if kind == "percent":
        return "% vol dry"
    o2 = f" at {source.reference_o2:g} % O2" if _o2_corrected(source, channel) else ""
    return f"mg/Nm3 dry{o2}"


_QAL2_APPLIED: Final = (
    "each channel's QAL2 function y = a + b·x is applied to its base-period means before O2/H2O/T/p "
    "standardisation and before the confidence interval is subtracted (EN 14181:2014); for a linear function "
    "the mean of the calibrated readings equals the calibrated mean, so this is the same as calibrating each raw "
    "reading. Raw readings and stored rollups stay as measured; totals, limits, substitutes and the hourly table "
    "use the calibrated values"
)
_VCR_CHECK: Final = (
    "per Monday–Sunday week in the source's local time: the share of valid operating base-period values, "
    "standardised and before the confidence interval is subtracted, above the valid calibration range "
    "(EN 14181:2014); the weeks of the report period stand for the period between two AST"
)


def _calibration(
    source: SourceInput,
    points: Mapping[str, list[Point]],
    *,
    grid: _Grid,
    operating: Sequence[bool],
    start: datetime,
    warnings: list[str],
) -> CalibrationSection | None:
    """The QAL2 functions applied and the weekly VCR check; warnings when a new QAL2 is due."""
    thresholds = source.vcr_thresholds
    functions: list[Qal2Applied] = []
    rows: list[VcrWeekRow] = []
    for channel in source.channels:
        qal2 = channel.qal2
        if qal2 is None:
            continue
        if _local(start, source.zone).date() < qal2.date:
            warnings.append(
                f"{channel.name}: QAL2 function {qal2.id} of {qal2.date.isoformat()} is applied to the whole "
                "period, also before its date; configure the function then in force for earlier periods"
            )
        weeks = []
        if qal2.vcr is not None:
            needs = _standardising_roles(source, channel)
            values: list[tuple[datetime, float | None]] = []
            for index, period_start in enumerate(grid.starts):
                inputs = {role: points[role][index] for role in needs}
                value: float | None = None
                if operating[index] and all(p.valid for p in inputs.values()):
                    try:
                        channel.basis.kind  # noqa: B018 - raises for a unit without a gas basis
                    except mrv.StandardisationError:
                        value = inputs[channel.role].value
                    else:
                        try:
                            value = _standardised(source, channel, inputs)
                        except mrv.StandardisationError:
                            value = None
                values.append((period_start, value))
            weeks = weekly_vcr(values, qal2.vcr, source.zone)
        reasons = [] if qal2.vcr is None else new_qal2_due(weeks, thresholds)
        rows += [
            VcrWeekRow(
                name=channel.name,
                qal2_id=qal2.id,
                week_start=w.week_start,
                valid_periods=w.valid,
                above_vcr=w.above,
                percent_above=w.percent_above,
            )
            for w in weeks
        ]
        functions.append(
            Qal2Applied(
                role=channel.role,
                name=channel.name,
                qal2_id=qal2.id,
                qal2_date=qal2.date,
                a=qal2.a,
                b=qal2.b,
                vcr=qal2.vcr,
                vcr_unit=_standard_unit(source, channel),
                weeks=len(weeks),
                weeks_over=sum(w.percent_above > thresholds.week_percent for w in weeks),
                max_week_percent=max((w.percent_above for w in weeks), default=None),
                new_qal2_due=bool(reasons),
                reasons=reasons,
            )
        )
        if reasons:
            warnings.append(
                f"{channel.name}: new QAL2 due (EN 14181:2014 valid calibration range; thresholds from "
                f"{THRESHOLDS_SOURCE}): {'; '.join(reasons)}"
            )
    if not functions:
        return None
    return CalibrationSection(
        applied=_QAL2_APPLIED,
        vcr_check=_VCR_CHECK,
        week_percent=thresholds.week_percent,
        weeks_allowed=thresholds.weeks_allowed,
        any_week_percent=thresholds.any_week_percent,
        thresholds_source=THRESHOLDS_SOURCE,
        functions=functions,
        weeks=rows,
    )


def _limit_series(
    source: SourceInput,
    channel: ChannelInput,
    points: Mapping[str, list[Point]],
    grid: _Grid,
) -> tuple[list[Aggregate], list[Aggregate]]:
    """Validated values (§3) per base period, from measured valid data only; invalid with a reason otherwise.
    Also the periods whose value could not be standardised (§2: flagged, not judged)."""
    assert channel.elv is not None
    needs = _standardising_roles(source, channel)
    series: list[Aggregate] = []
    refused: list[int] = []
    for index, start in enumerate(grid.starts):
        inputs = {role: points[role][index] for role in needs}
        bad = [role for role, p in inputs.items() if not p.valid]
        value: float | None = None
        reason = ""
        if bad:
            reason = f"invalid {', '.join(bad)}"
        else:
            try:
                concentration = _standardised(source, channel, inputs)
                value = mrv.validated_value(concentration, channel.elv, channel.ci_percent)
            except mrv.StandardisationError as error:
                reason = str(error)
                refused.append(len(series))
        series.append(
            Aggregate(
                source.site,
                channel.instrument,
                channel.parameter,
                source.base,
                start,
                value,
                1 if value is not None else 0,
                1,
                value is not None,
                reason,
                unit="mg/Nm3",
            )
        )
    return series, [series[index] for index in refused]


def _runs(
    channel: ChannelInput, filled: Sequence[FilledPeriod], grid: _Grid, zone: tzinfo, operating: Sequence[bool]
) -> list[SubstitutedRun]:
    """Runs of operating periods without a measured value (a non-operating period is not missing)."""
    runs: list[SubstitutedRun] = []
    current: list[FilledPeriod] = []

    def flush() -> None:
        if current:
            first = current[0]
            runs.append(
                SubstitutedRun(
                    role=channel.role,
                    name=channel.name,
                    instrument=channel.instrument,
                    parameter=channel.parameter,
                    start_utc=first.start,
                    end_utc=current[-1].start + grid.step,
                    start_local=_local(first.start, zone),
                    periods=len(current),
                    value=first.value,
                    unit=channel.basis.unit,
                    method=first.method,
                    reason=first.reason,
                )
            )
            current.clear()

    for period, on in zip(filled, operating, strict=True):
        if period.measured or not on:
            flush()
            continue
        if current and (current[-1].value != period.value or current[-1].method != period.method):
            flush()
        current.append(period)
    flush()
    return runs


def _maintenance(
    source: SourceInput, by_channel: Mapping[str, dict[datetime, Aggregate]], grid: _Grid
) -> list[MaintenancePeriod]:
    per_instrument: dict[str, dict[datetime, tuple[int, set[str]]]] = defaultdict(dict)
    for channel in source.channels:
        for start, aggregate in by_channel[channel.role].items():
            if aggregate.n_maintenance > 0:
                minutes, names = per_instrument[channel.instrument].get(start, (0, set()))
                per_instrument[channel.instrument][start] = (
                    max(minutes, aggregate.n_maintenance),
                    names | {channel.name},
                )
    periods: list[MaintenancePeriod] = []
    for instrument, hours in sorted(per_instrument.items()):
        span: list[tuple[datetime, int, set[str]]] = []
        for start in sorted(hours):
            if span and span[-1][0] + grid.step != start:
                periods.append(_maintenance_period(instrument, span, grid, source.zone))
                span = []
            span.append((start, *hours[start]))
        if span:
            periods.append(_maintenance_period(instrument, span, grid, source.zone))
    return periods


def _maintenance_period(
    instrument: str, span: Sequence[tuple[datetime, int, set[str]]], grid: _Grid, zone: tzinfo
) -> MaintenancePeriod:
    start, end = span[0][0], span[-1][0] + grid.step
    return MaintenancePeriod(
        instrument=instrument,
        parameters=sorted(set().union(*(names for _, _, names in span))),
        start_utc=start,
        end_utc=end,
        start_local=_local(start, zone),
        end_local=_local(end, zone),
        minutes=sum(minutes for _, minutes, _ in span),
    )


_EPSILON = 1e-9


def operating_days(
    points: Sequence[Point],
    included: Sequence[bool],
    by_start: Mapping[datetime, Aggregate],
    rules: RuleSet,
    zone: tzinfo,
) -> list[tuple[date, bool, float | None, str]]:
    """(local day, valid, mean of its valid included periods, why invalid) for each day with an included period.

    The day rule of the rule set counted over the included periods only: a period the source did not operate in
    (or, for a limit, a start-up/shut-down period) is neither valid nor invalid, and a day without any included
    period is no day at all (Germany 13. BImSchV §19: the daily mean is over the day's operating time; the
    "> 3 invalid hours" and "> 10 invalid days" rules of Directive 2010/75/EU Annex V Part 4 are read here as
    aimed at the AMS's malfunction or maintenance, not at the plant's shutdowns). With every period included
    this is the rule set's own day rule.
    """
    days: dict[date, list[Point]] = defaultdict(list)
    for point, on in zip(points, included, strict=True):
        if on:
            days[local_date(point.start, zone)].append(point)
    label = "half-hours" if rules.base is Period.HALF_HOUR else "hours"
    result = []
    for day, parts in sorted(days.items()):
        values = [p.value for p in parts if p.valid and p.value is not None]
        expected = len(parts)
        maintenance = sum(1 for p in parts if (a := by_start.get(p.start)) is not None and a.in_maintenance)
        mean = math.fsum(values) / len(values) if values else None
        reason = ""
        if not values:
            reason = f"no valid {label}"
        elif rules.day_max_invalid is not None and expected - len(values) > rules.day_max_invalid:
            reason = f"{expected - len(values)} {label} invalid or missing (> {rules.day_max_invalid})"
        elif rules.day_min_capture is not None:
            basis = expected - maintenance if rules.exclude_maintenance else expected
            if not (basis > 0 and len(values) >= rules.day_min_capture * basis - _EPSILON):
                reason = f"{len(values)} of {basis} {label} valid (< {rules.day_min_capture * 100:.4g} %)"
        result.append((day, not reason, mean if not reason else None, reason))
    return result


def _judged_points(points: Mapping[str, list[Point]], states: Sequence[HourState]) -> dict[str, list[Point]]:
    """The grid for limit compliance: start-up, shut-down and off periods are not judged (Directive 2010/75/EU
    Annex V Part 4)."""
    judged: dict[str, list[Point]] = {}
    for role, items in points.items():
        judged[role] = [
            point if hour.state.judged else Point(point.start, None, False, f"{hour.state.value}: not judged")
            for point, hour in zip(items, states, strict=True)
        ]
    return judged


def _prepare(
    source: SourceInput,
    grid: _Grid,
    *,
    start: datetime,
    aggregates: Mapping[str, Sequence[Aggregate]],
    history: Mapping[str, Sequence[Aggregate]] | None,
    warnings: list[str],
    operating: Sequence[bool],
    manual: Sequence[ManualEntry] = (),
    gates: Mapping[str, Sequence[PeriodStatus]] | None = None,
    part75_tests: Part75Tests | None = None,
    out_of_control: Mapping[tuple[str, str], Sequence[qal3.OutOfControl]] | None = None,
) -> tuple[dict[str, list[Point]], dict[str, dict[datetime, Aggregate]], dict[str, list[FilledPeriod]]]:
    """Per role: the measured grid, the aggregates by start, and the grid filled by substitution over the
    operating periods (§4). `gates`: Part 75 statuses per role (out of control: invalid; BAF applied)."""
    points: dict[str, list[Point]] = {}
    by_start: dict[str, dict[datetime, Aggregate]] = {}
    filled: dict[str, list[FilledPeriod]] = {}
    out_of_control = out_of_control or {}
    for channel in source.channels:
        points[channel.role], by_start[channel.role] = _points(
            channel, aggregates.get(channel.role, ()), grid.starts, warnings
        )
        if gates and channel.role in gates:
            points[channel.role] = gate_points(points[channel.role], gates[channel.role])
        spans = out_of_control.get((channel.instrument, channel.parameter))
        if spans:  # EN 14181:2014 §7: from a QAL3 signal to the adjustment, [source.qal3] flag_out_of_control
            points[channel.role] = _out_of_control_points(points[channel.role], spans, grid.step)
        if channel.substitution is None:  # not used for mass: measured values only
            filled[channel.role] = [
                FilledPeriod(p.start, p.value, True) if p.valid else FilledPeriod(p.start, None, False, "", p.reason)
                for p in points[channel.role]
            ]
            continue
        past = (history or {}).get(channel.role, ())
        history_points: list[Point] = []
        history_operating: list[bool] | None = None
        if past and channel.substitution.method is Method.PART75:
            first = min(a.start for a in past)
            history_starts = base_starts(first, start, source.base)
            history_points, _ = _points(channel, past, history_starts, [])
            history_operating = [h.operating for h in _states(source, history_starts, history or {}, manual)]
            if gates and channel.role in gates:  # Part 75 lookback and availability: quality-assured hours only
                grid_before = _Grid(history_starts, base_duration(source.base), 0.0)
                before = _part75_statuses(source, part75_tests, grid_before, history_operating)
                history_points = gate_points(history_points, before.get(channel.role))
        filled[channel.role] = fill_operating(
            points[channel.role],
            channel.substitution,
            operating,
            history=history_points,
            history_operating=history_operating,
        )
    return points, by_start, filled


def _states(
    source: SourceInput,
    starts: Sequence[datetime],
    aggregates: Mapping[str, Sequence[Aggregate]],
    manual: Sequence[ManualEntry],
) -> list[HourState]:
    """Each period's operating state from the signals' period means and the manual log."""
    signals: dict[str, dict[datetime, float]] = {}
    if source.operating is not None:
        for key in source.operating.signal_keys():
            signals[key] = signal_values(aggregates.get(SIGNAL_ROLE + key, ()))
    return derive_states(source.operating, starts, signals, manual)


def _part75_statuses(
    source: SourceInput, tests: Part75Tests | None, grid: _Grid, operating: Sequence[bool]
) -> dict[str, list[PeriodStatus]]:
    """Per channel under 40 CFR Part 75 QA: each base period in control or not, and the BAF in force."""
    if source.part75 is None:
        return {}
    return channel_statuses(
        source.part75,
        tests or Part75Tests(),
        [(c.role, c.basis.species or c.parameter) for c in source.channels],
        starts=grid.starts,
        step=grid.step,
        operating=operating,
        zone=source.zone,
    )


def _part75_section(
    source: SourceInput,
    tests: Part75Tests | None,
    gates: Mapping[str, Sequence[PeriodStatus]],
    grid: _Grid,
    *,
    operating: Sequence[bool],
    warnings: list[str],
) -> Part75Section | None:
    """The report's Part 75 QA section, and a warning per channel with out-of-control operating periods."""
    if source.part75 is None:
        return None
    section = part75_section(
        source.part75,
        tests or Part75Tests(),
        {c.role: c.name for c in source.channels},
        period_statuses=gates,
        starts=grid.starts,
        step=grid.step,
        operating=operating,
        zone=source.zone,
    )
    warnings.extend(
        f"{c.channel}: {c.out_of_control_periods} operating periods out of control under 40 CFR Part 75 (failed or "
        "missing daily calibration, failed or past-due linearity or RATA): not quality-assured, substituted (§75.24)"
        for c in section.channels
        if c.out_of_control_periods
    )
    warnings.extend(
        f"{t.channel}: daily calibration error test #{t.id} failed at {t.at_utc.isoformat(timespec='minutes')} "
        "(40 CFR 75 App. B §2.1.4)"
        for t in section.daily
        if t.result == "fail"
    )
    warnings.extend(
        f"{d.channel}: {'linearity check' if d.test == 'linearity' else 'RATA'} due in {d.due_quarter} "
        f"(after #{d.after_test}): past due from {d.past_due_from_utc.isoformat(timespec='minutes')}"
        + (f" until #{d.met_by}" if d.met_by is not None else ", still")
        + f": out of control (40 CFR 75 App. B §{'2.2.4' if d.test == 'linearity' else '2.3.3'})"
        for d in section.due
        if d.past_due_from_utc is not None
    )
    return section


def _mass_roles(source: SourceInput) -> list[ChannelInput]:
    """Pollutants, then CO2: the channels with mass totals."""
    pollutants = [c for c in source.channels if c.role.startswith("pollutant:")]
    co2 = source.channel("co2")
    return pollutants + ([co2] if co2 is not None else [])


def build_report(
    source: SourceInput,
    *,
    year: int,
    month: int | None,
    aggregates: Mapping[str, Sequence[Aggregate]],
    history: Mapping[str, Sequence[Aggregate]] | None = None,
    config: ConfigRecord,
    generated_at: datetime,
    reproducibility: Reproducibility | None = None,
    revisions: Sequence[RevisionEntry] = (),
    manual: Sequence[ManualEntry] = (),
    part75_tests: Part75Tests | None = None,
    qa: QaInput | None = None,
) -> MrvReport:
    """The report of `source` for a year (month None) or a month, from its base-period aggregates by role.

    `history`: base aggregates before the period, by role (Part 75 PMA and lookback; up to 8,760 hours).
    `revisions`: those of the source's raw readings in the period, for the audit section.
    `manual`: the operator's operating-state log entries of the source, in recording order.
    `part75_tests`: the source's Part 75 QA tests (used when the source has `part75`).
    `aggregates` also holds the operating-state signals' base aggregates under SIGNAL_ROLE + "instrument/parameter".
    """
    report, _, _ = build_report_with_rows(
        source,
        year=year,
        month=month,
        aggregates=aggregates,
        history=history,
        config=config,
        generated_at=generated_at,
        reproducibility=reproducibility,
        revisions=revisions,
        manual=manual,
        part75_tests=part75_tests,
        qa=qa,
        rows=False,
    )
    return report


def build_report_with_rows(
    source: SourceInput,
    *,
    year: int,
    month: int | None,
    aggregates: Mapping[str, Sequence[Aggregate]],
    history: Mapping[str, Sequence[Aggregate]] | None = None,
    config: ConfigRecord,
    generated_at: datetime,
    reproducibility: Reproducibility | None = None,
    revisions: Sequence[RevisionEntry] = (),
    manual: Sequence[ManualEntry] = (),
    part75_tests: Part75Tests | None = None,
    qa: QaInput | None = None,
    rows: bool = True,
) -> tuple[MrvReport, list[str], list[list[object]]]:
    """The report, and the base-period table a verifier checks (every channel's value, validity, substitution
    method, and the mass per pollutant), from one computation."""
    start, end, grid = _grid(source, year, month, generated_at)
    warnings: list[str] = []
    manual = [entry for entry in manual if entry.source == source.id]
    states = _states(source, grid.starts, aggregates, manual)
    operating = [h.operating for h in states]
    gates = _part75_statuses(source, part75_tests, grid, operating)
    charts = _qa_charts(qa, end) if qa is not None else {}
    invalidated = {key: c.periods for key, c in charts.items()} if qa and qa.flag_out_of_control == "invalid" else {}
    points, by_start, filled = _prepare(
        source,
        grid,
        start=start,
        aggregates=aggregates,
        history=history,
        warnings=warnings,
        operating=operating,
        manual=manual,
        gates=gates,
        part75_tests=part75_tests,
        out_of_control=invalidated,
    )
    mass = {c.role: _mass_series(source, c, filled, grid) for c in _mass_roles(source)}
    totals = [_total(c, mass[c.role], warnings, states) for c in _mass_roles(source)]

    availability = [
        _availability(
            source,
            c,
            points=points[c.role],
            by_start=by_start[c.role],
            filled=filled[c.role],
            operating=operating,
        )
        for c in source.channels
    ]
    for entry, channel in zip(availability, source.channels, strict=True):
        limit = channel.rules.year_max_invalid_days
        if month is None and limit is not None and entry.invalid_days > limit:
            warnings.append(
                f"{channel.name}: {entry.invalid_days} invalid days (> {limit}): the operator must act "
                f"({channel.rules.citation})"
            )
        running = [p for p, on in zip(points[channel.role], operating, strict=True) if on]
        longest = max((last - first + 1 for first, last in gaps(running)), default=0)
        if longest * grid.hours > OUT_OF_SERVICE_HOURS:
            warnings.append(
                f"{channel.name}: no valid data for {longest * grid.hours:g} consecutive operating hours (> 5 days): "
                "report the outage (EU MRR Art. 45)"
            )
    flow = source.channel("flow")
    mrr_flow = flow is not None and flow.substitution is not None and flow.substitution.method is Method.MRR
    if mrr_flow and any(p.substituted for p in filled["flow"]):
        warnings.append(
            "flow: missing hours were filled with mean + 2σ; EU MRR Art. 45 asks for a mass or energy balance "
            "for flue-gas flow (docs/regulatory-basis.md §4): replace these substitutes if you have one"
        )

    judged = [h.state.judged for h in states]
    limits, events, tests = _limits(
        source, _judged_points(points, states), grid, judged, scope="year" if month is None else "month"
    )
    warnings.extend(
        f"{t.pollutant}: IED compliance test failed: {t.description} ({t.periods_above} of {t.periods} above "
        f"{t.limit:g} mg/Nm³; {t.citation})"
        for t in tests
        if t.passed is False
    )
    warnings.extend(
        f"{refusal.pollutant}: {refusal.refused_periods} periods not judged against the limit because their value "
        f"cannot be standardised (docs/regulatory-basis.md §2), e.g. {refusal.refused_examples[0]}"
        for refusal in limits
        if refusal.refused_periods
    )
    substituted = [
        run
        for c in source.channels
        if c.substitution is not None
        for run in _runs(c, filled[c.role], grid, source.zone, operating)
    ]
    complete = generated_at >= end
    if not complete:
        warnings.append(
            f"the period has not ended yet: figures are provisional and cover the {len(grid.starts)} base periods "
            f"ended by {generated_at:%Y-%m-%d %H:%M}Z"
        )
    if month is not None:
        warnings.append("monthly report: substitutes use this month's data only (provisional; the year decides)")
    operating_section = _operating_section(source, states, manual, grid)
    part75_qa = _part75_section(source, part75_tests, gates, grid, operating=operating, warnings=warnings)
    calibration = _calibration(source, points, grid=grid, operating=operating, start=start, warnings=warnings)
    qa_section = (
        _qa_section(
            source, qa, charts, grid, start=start, end=end, now=generated_at, operating=operating, warnings=warnings
        )
        if qa is not None
        else None
    )
    if operating_section.assumed_periods and source.operating is not None:
        warnings.append(
            f"{operating_section.assumed_periods} periods have no operating-state signal and are taken as operating "
            "(substituted where data are missing); record known shutdowns with `cems-gateway operating-state log`"
        )
    audit = revision_audit(revisions)
    if audit.pending:
        warnings.append(
            f"{audit.pending} raw readings of this period were sent again with other content and await review "
            "(`cems-gateway revisions list`): the figures use the values first stored"
        )
    report = MrvReport(
        generated_at=generated_at,
        site=source.site,
        source=source.id,
        source_name=source.name,
        period=ReportPeriod(
            kind="month" if month else "year",
            year=year,
            month=month,
            time_zone=source.zone_name,
            start_local=_local(start, source.zone),
            end_local=_local(end, source.zone),
            start_utc=start,
            end_utc=end,
            base_period=source.base.value,
            base_periods=len(grid.starts),
            complete=complete,
        ),
        monitoring_plan=MonitoringPlan(
            reference=source.monitoring_plan,
            reference_o2_percent=source.reference_o2,
            o2_guard_percent=source.o2_guard,
            o2_basis=o2_basis(source),
            methods=[_method(c) for c in source.channels],
        ),
        config=config,
        totals=totals,
        availability=availability,
        substituted=substituted,
        limits=limits,
        compliance=tests,
        exceedances=events,
        maintenance=_maintenance(source, by_start, grid),
        warnings=warnings,
        reproducibility=reproducibility,
        revisions=audit,
        operating=operating_section,
        calibration=calibration,
        part75=part75_qa,
        qa=qa_section,
    )
    if not rows:
        return report, [], []
    header, table = _hourly_table(source, grid, points, filled, mass, states=states)
    return report, header, table


def revision_audit(revisions: Sequence[RevisionEntry]) -> RevisionAudit:
    """Counts by state, and the first REVISIONS_LISTED in time order."""
    ordered = sorted(revisions, key=lambda r: (r.ts_utc, r.instrument, r.parameter, r.agent, r.id))
    return RevisionAudit(
        pending=sum(r.state == "pending" for r in revisions),
        approved=sum(r.state == "approved" for r in revisions),
        superseded=sum(r.state == "superseded" for r in revisions),
        listed=ordered[:REVISIONS_LISTED],
    )


def o2_basis(source: SourceInput) -> str:
    """What the report says about the O2 used for the reference-O2 correction, in words."""
    o2 = source.channel("o2")
    if o2 is None or source.reference_o2 is None:
        return "no reference-O2 correction"
    formula = "C_ref = C × (21 − O2_ref) / (21 − O2_dry) (Directive 2010/75/EU Annex VI Part 7)"
    if not o2.basis.wet:
        return f"{o2.name} ({o2.instrument}/{o2.parameter}) measured dry, used as measured: {formula}"
    h2o = source.channel("h2o")
    moisture = f"{h2o.name} ({h2o.instrument}/{h2o.parameter})" if h2o is not None else "the moisture channel"
    return (
        f"{o2.name} ({o2.instrument}/{o2.parameter}) measured wet (in situ): dried each {source.base.value} period "
        f"with the same period's {moisture}, O2_dry = O2_wet / (1 − H2O/100), then {formula}; a period without "
        "a valid moisture value is not judged"
    )


def _method(channel: ChannelInput) -> MethodEntry:
    return MethodEntry(
        role=channel.role,
        name=channel.name,
        instrument=channel.instrument,
        parameter=channel.parameter,
        unit=channel.basis.unit,
        basis=channel.basis.describe(),
        rule_set=channel.rules.name,
        rule_citation=channel.rules.citation,
        substitution=channel.substitution.method.value if channel.substitution else "not substituted",
    )


def _total(
    channel: ChannelInput,
    every: Sequence[tuple[float | None, bool, str]],
    warnings: list[str],
    states: Sequence[HourState],
) -> Total:
    series = [item for item, hour in zip(every, states, strict=True) if hour.operating]
    idle = [value for (value, _, _), hour in zip(every, states, strict=True) if not hour.operating and value]
    transient = [
        value
        for (value, _, _), hour in zip(every, states, strict=True)
        if value is not None and hour.state in (State.START_UP, State.SHUT_DOWN)
    ]
    kg = [value for value, _, _ in series if value is not None]
    measured = [value for value, substituted, _ in series if value is not None and not substituted]
    substituted = [value for value, was, _ in series if value is not None and was]
    unsubstituted = sum(1 for value, _, _ in series if value is None)
    if unsubstituted:
        warnings.append(
            f"{channel.name}: {unsubstituted} periods have no value and no substitute: the total is incomplete "
            "(missing hours are never counted as zero)"
        )
    return Total(
        name=channel.name,
        parameter=channel.parameter,
        kind="co2" if channel.role == "co2" else "pollutant",
        total_t=mrv.total_tonnes(kg),
        measured_t=mrv.total_tonnes(measured),
        substituted_t=mrv.total_tonnes(substituted),
        substituted_periods=len(substituted),
        unsubstituted_periods=unsubstituted,
        complete=unsubstituted == 0,
        non_operating_periods=len(every) - len(series),
        non_operating_measured_t=mrv.total_tonnes(idle),
        start_up_shut_down_t=mrv.total_tonnes(transient),
    )


def _availability(
    source: SourceInput,
    channel: ChannelInput,
    *,
    points: Sequence[Point],
    by_start: Mapping[datetime, Aggregate],
    filled: Sequence[FilledPeriod],
    operating: Sequence[bool],
) -> Availability:
    """Over the operating periods only: a non-operating period is not expected (§4, EU MRR Art. 43)."""
    every = points
    points = [p for p, on in zip(every, operating, strict=True) if on]
    filled = [f for f, on in zip(filled, operating, strict=True) if on]
    present = [by_start[p.start] for p in points if p.start in by_start]
    valid = sum(1 for p in points if p.valid)
    maintenance = sum(1 for a in present if a.in_maintenance)
    missing = len(points) - len(present)
    expected = len(points)
    basis = expected - maintenance
    return Availability(
        role=channel.role,
        name=channel.name,
        instrument=channel.instrument,
        parameter=channel.parameter,
        unit=channel.basis.unit,
        expected_periods=expected,
        valid_periods=valid,
        maintenance_periods=maintenance,
        invalid_periods=expected - valid - maintenance - missing,
        missing_periods=missing,
        substituted_periods=sum(1 for p in filled if p.substituted),
        availability_percent=round(availability_percent(points), 4),
        capture_excluding_maintenance_percent=round(100 * valid / basis, 4) if basis else 0.0,
        invalid_days=sum(
            1 for day in operating_days(every, operating, by_start, channel.rules, source.zone) if not day[1]
        ),
        flagged_periods=sum(1 for a in present if a.valid and a.n_flagged > 0),
        non_operating_periods=len(every) - expected,
    )


def _limits(
    source: SourceInput,
    points: Mapping[str, list[Point]],
    grid: _Grid,
    judged_periods: Sequence[bool],
    *,
    scope: Literal["year", "month"],
) -> tuple[list[PollutantLimit], list[ExceedanceEvent], list[ComplianceResult]]:
    """`judged_periods`: the normal-operation periods; a daily mean is over the day's judged periods."""
    limits: list[PollutantLimit] = []
    events: list[ExceedanceEvent] = []
    tests: list[ComplianceResult] = []
    for channel in source.channels:
        if channel.elv is None:
            continue
        hourly, refused = _limit_series(source, channel, points, grid)
        days = _judged_days(source, channel, hourly, judged_periods)
        tests += _compliance(source, channel, hourly, [a for _, _, a in days], scope)
        if channel.elv_period == Period.DAY.value:
            periods = days
        else:
            periods = [(a.start, a.start + grid.step, a) for a in hourly]
        judged = [(s, e, a.value if a.valid else None) for s, e, a in periods]
        found = mrv.exceedances(judged, channel.elv)
        values = [v for _, _, v in judged if v is not None]
        limits.append(
            PollutantLimit(
                pollutant=channel.name,
                elv=channel.elv,
                averaging=channel.elv_period,
                ci_percent=channel.ci_percent,
                confidence_interval=mrv.confidence_interval(channel.elv, channel.ci_percent),
                valid_periods=len(values),
                exceedances=len(found),
                max_validated=max(values) if values else None,
                refused_periods=len(refused),
                refused_examples=[
                    f"{a.start.isoformat().replace('+00:00', 'Z')}: {a.reason}" for a in refused[:REFUSED_EXAMPLES]
                ],
            )
        )
        events += [
            ExceedanceEvent(
                pollutant=channel.name,
                averaging=channel.elv_period,
                start_utc=event.start,
                end_utc=event.end,
                start_local=_local(event.start, source.zone),
                end_local=_local(event.end, source.zone),
                duration_hours=(event.end - event.start) / timedelta(hours=1),
                periods=event.periods,
                max_validated=event.max_value,
                elv=channel.elv,
                unit="mg/Nm3",
            )
            for event in found
        ]
    return limits, events, tests


def _compliance(
    source: SourceInput,
    channel: ChannelInput,
    validated: Sequence[Aggregate],
    days: Sequence[Aggregate],
    scope: Literal["year", "month"],
) -> list[ComplianceResult]:
    """`days`: the daily means over each day's normal-operation periods (_judged_days), so a day with start-up
    or shut-down hours is judged on its normal hours, as the daily limit check is."""
    assert channel.elv is not None
    spec = channel.compliance
    results = []
    outcomes = compliance.evaluate(spec, validated, elv=channel.elv, rules=channel.rules, zone=source.zone, days=days)
    for outcome in outcomes:
        what = _TEST_WORDS[outcome.test]
        if outcome.test is compliance.ComplianceCheck.BASE_SHARE:
            what = f"{outcome.required_share_percent:g} % of {outcome.averaging} {what}"
        results.append(
            ComplianceResult(
                pollutant=channel.name,
                test=outcome.test.value,
                description=f"{what} ≤ {outcome.percent_of_elv:g} % of the ELV",
                averaging=outcome.averaging,
                elv=channel.elv,
                percent_of_elv=outcome.percent_of_elv,
                limit=outcome.limit,
                required_share_percent=outcome.required_share_percent,
                periods=outcome.periods,
                periods_above=outcome.periods_above,
                share_within_percent=outcome.share_within_percent,
                max_value=outcome.max_value,
                passed=outcome.passed,
                above_local=[_local(ts, source.zone).isoformat() for ts in outcome.above[:COMPLIANCE_LISTED]],
                rule_set=channel.rules.name,
                citation=spec.citation,
                scope="the report's year"
                if scope == "year"
                else "the report's month (provisional: the Directive judges the calendar year)",
            )
        )
    return results


def _judged_days(
    source: SourceInput, channel: ChannelInput, hourly: Sequence[Aggregate], judged_periods: Sequence[bool]
) -> list[tuple[datetime, datetime, Aggregate]]:
    """Daily means of the validated values over each day's judged periods, valid under the day rule counted
    over those periods (operating_days)."""
    grid_points = [Point(a.start, a.value, a.valid and a.value is not None, a.reason) for a in hourly]
    judged_count: dict[date, int] = defaultdict(int)
    valid_count: dict[date, int] = defaultdict(int)
    for point, judged in zip(grid_points, judged_periods, strict=True):
        if judged:
            day = local_date(point.start, source.zone)
            judged_count[day] += 1
            valid_count[day] += point.valid
    periods = []
    for day, ok, mean, reason in operating_days(grid_points, judged_periods, {}, channel.rules, source.zone):
        start, end = day_bounds(day, source.zone)
        aggregate = Aggregate(
            source.site,
            channel.instrument,
            channel.parameter,
            Period.DAY,
            start,
            mean,
            valid_count[day],  # a month's mean weighs each day by its valid judged periods
            judged_count[day],
            ok,
            reason,
            unit="mg/Nm3",
        )
        periods.append((start, end, aggregate))
    return periods


def totals_difference(reported: Sequence[Total], recomputed: Mapping[str, float]) -> float:
    """Largest |reported − recomputed| over the totals, in t (inf when one side lacks a total)."""
    if {t.name for t in reported} != set(recomputed):
        return math.inf
    return max((abs(t.total_t - recomputed[t.name]) for t in reported), default=0.0)


def _operating_section(
    source: SourceInput, states: Sequence[HourState], manual: Sequence[ManualEntry], grid: _Grid
) -> OperatingSection:
    runs: list[OperatingRun] = []
    first = 0
    for index in range(1, len(states) + 1):
        if index < len(states) and states[index].state is states[first].state:
            continue
        head = states[first]
        end = states[index - 1].start + grid.step
        if len(runs) < OPERATING_RUNS_LISTED:
            runs.append(
                OperatingRun(
                    state=head.state,
                    start_utc=head.start,
                    end_utc=end,
                    start_local=_local(head.start, source.zone),
                    end_local=_local(end, source.zone),
                    periods=index - first,
                    decided_by=head.source,
                    basis=head.basis,
                )
            )
        first = index
    runs_total = sum(1 for i, h in enumerate(states) if i == 0 or h.state is not states[i - 1].state)
    months: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for hour in states:
        month = months[f"{_local(hour.start, source.zone):%Y-%m}"]
        month[hour.state.value] += 1
        month["assumed"] += hour.source == "assumed"
    spec = source.operating
    return OperatingSection(
        configured=spec is not None,
        rule=_operating_rule(spec, manual),
        periods={state.value: sum(1 for h in states if h.state is state) for state in State},
        operating_periods=sum(1 for h in states if h.operating),
        assumed_periods=sum(1 for h in states if h.source == "assumed"),
        runs=runs,
        runs_total=runs_total,
        by_month=[
            OperatingMonth(
                month=name,
                off=counts[State.OFF.value],
                start_up=counts[State.START_UP.value],
                normal=counts[State.NORMAL.value],
                shut_down=counts[State.SHUT_DOWN.value],
                assumed=counts["assumed"],
            )
            for name, counts in sorted(months.items())
        ],
        manual_log=[
            ManualLogEntry(
                id=e.id,
                state=e.state.value if e.state is not None else "derived",
                start_utc=e.start,
                end_utc=e.end,
                by=e.by,
                why=e.why,
                recorded_at=e.recorded_at,
            )
            for e in manual
        ],
    )


def _operating_rule(spec: OperatingSpec | None, manual: Sequence[ManualEntry]) -> str:
    log = "; the operator's manual log overrides (the latest entry wins)"
    if spec is None:
        return "no operating-state signals configured: every period counts as operating" + (log if manual else "")
    parts = []
    if spec.status is not None:
        codes = ", ".join(f"{state.value} = {code:g}" for state, code in spec.status.codes.items())
        parts.append(f"status tag {spec.status.key} ({codes})")
    if spec.running:
        parts.append("operating when any of " + "; ".join(c.describe() for c in spec.running))
    if spec.startup_end:
        parts.append(f"start-up ends when ≥ {spec.required} of: " + "; ".join(c.describe() for c in spec.startup_end))
        parts.append(
            f"shut-down starts when ≥ {spec.required} of: " + "; ".join(c.describe() for c in spec.shutdown_criteria)
        )
        parts.append("Commission Implementing Decision 2012/249/EU Art. 9")
    parts.append("a period without any signal value is taken as operating")
    return "; ".join(parts) + log


def _hourly_table(
    source: SourceInput,
    grid: _Grid,
    points: Mapping[str, list[Point]],
    filled: Mapping[str, list[FilledPeriod]],
    mass: Mapping[str, list[tuple[float | None, bool, str]]],
    *,
    states: Sequence[HourState],
) -> tuple[list[str], list[list[object]]]:
    header = ["start_utc", "start_local", "operating state", "state basis"]
    columns: list[list[object]] = [[h.state.value for h in states], [h.basis for h in states]]
    for channel in source.channels:
        role_points, role_filled = points[channel.role], filled[channel.role]
        calibrated = f" QAL2 {channel.qal2.id}" if channel.qal2 is not None else ""
        header += [
            f"{channel.name} [{channel.basis.unit}{calibrated}]",
            f"{channel.name} valid",
            f"{channel.name} method",
        ]
        columns += [
            [f.value for f in role_filled],
            [p.valid for p in role_points],
            [
                f.method if f.substituted else ("" if p.valid else p.reason if h.operating else NOT_OPERATING)
                for f, p, h in zip(role_filled, role_points, states, strict=True)
            ],
        ]
    for channel in _mass_roles(source):
        header.append(f"{channel.name} mass [kg]")
        columns.append(
            [kg if hour.operating else None for (kg, _, _), hour in zip(mass[channel.role], states, strict=True)]
        )
    table = [
        [start.isoformat(), _local(start, source.zone).isoformat(), *(column[index] for column in columns)]
        for index, start in enumerate(grid.starts)
    ]
    return header, table


# -- QA section: calibration checks and QAL3 (EN 14181:2014 §7) ---------------------------------------------

QAL3_REASON: Final = "QAL3 out of control (EN 14181:2014 §7): between a signal and the adjustment"


@dataclass(frozen=True, slots=True)
class _Chart:
    component: Qal3Component
    entries: list[QaLogEntry]
    points: list[qal3.ChartPoint]
    periods: list[qal3.OutOfControl]


def _qa_charts(qa: QaInput, end: datetime) -> dict[tuple[str, str], _Chart]:
    """Each component's charts over its checks before `end`, and its out-of-control periods."""
    charts = {}
    for component in qa.components:
        key = (component.instrument, component.parameter)
        entries = sorted(
            (e for e in qa.checks if (e.instrument, e.parameter) == key and e.result.at < end),
            key=lambda e: e.result.at,
        )
        points = qal3.evaluate([e.result for e in entries], component.spec)  # same stable time order
        charts[key] = _Chart(component, entries, points, qal3.out_of_control_periods(points))
    return charts


def _out_of_control_points(points: Sequence[Point], spans: Sequence[qal3.OutOfControl], step: timedelta) -> list[Point]:
    return [
        Point(p.start, p.value, False, QAL3_REASON)
        if p.valid and any(o.covers(p.start, p.start + step) for o in spans)
        else p
        for p in points
    ]


def _qal3_rule(qa: QaInput) -> str:
    methods = sorted({c.spec.method for c in qa.components})
    texts = []
    for method in methods:
        spec = next(c.spec for c in qa.components if c.spec.method is method)
        if method is qal3.Method.CUSUM:
            texts.append(
                f"CUSUM ({qal3.CUSUM_CLAUSE}): precision judged first, k_s = {qal3.K_PRECISION}·s²_AMS, "
                f"h_s = {qal3.H_PRECISION}·s²_AMS; drift k = {qal3.K_DRIFT}·s_AMS, h = {qal3.H_DRIFT}·s_AMS"
            )
        elif method is qal3.Method.SHEWHART:
            texts.append(
                f"Shewhart ({qal3.CLAUSE}): warning ±{spec.shewhart_warning:g}·s_AMS, "
                f"action ±{spec.shewhart_action:g}·s_AMS"
            )
        else:
            texts.append(f"EWMA ({qal3.CLAUSE}): λ = {spec.ewma_lambda:g}, limits ±{spec.ewma_limit:g}·σ_EWMA")
    treatment = (
        "invalid (substituted where the source operated)"
        if qa.flag_out_of_control == "invalid"
        else "kept valid and flagged here"
    )
    return (
        "; ".join(texts)
        + "; zero and span charted separately over d = reading − reference, s_AMS from the QAL1; a check after an "
        f"adjustment restarts the charts; data from a signal to the adjustment: {treatment} "
        "(the standard leaves this to the operator and authority)"
    )


def _signal_text(signal: qal3.Signal, zone: tzinfo) -> str:
    when = _local(signal.at, zone)
    return f"{when:%Y-%m-%d %H:%M} {signal.kind.value} {signal.statistic} {signal.value:.4g} > {signal.limit:.4g}"


def _qa_section(
    source: SourceInput,
    qa: QaInput,
    charts: Mapping[tuple[str, str], _Chart],
    grid: _Grid,
    *,
    start: datetime,
    end: datetime,
    now: datetime,
    operating: Sequence[bool],
    warnings: list[str],
) -> QaSection:
    zone = source.zone
    rows: list[QaCheckRow] = []
    components: list[Qal3ComponentState] = []
    periods: list[OutOfControlRow] = []
    for (instrument, parameter), chart in charts.items():
        name = f"{instrument}/{parameter}"
        in_period = [(e, p) for e, p in zip(chart.entries, chart.points, strict=True) if e.result.at >= start]
        rows += [
            QaCheckRow(
                id=e.id,
                component=name,
                kind=e.result.kind.value,
                at_utc=e.result.at,
                at_local=_local(e.result.at, zone),
                reference=e.result.reference,
                reading=e.result.reading,
                deviation=e.result.deviation,
                adjusted=e.result.adjusted,
                status=p.status.value,
                origin=e.origin,
                by=e.by,
                why=e.why,
                statistics=p.statistics,
                limits=p.limits,
            )
            for e, p in in_period
        ]
        overlapping = [o for o in chart.periods if o.covers(start, end)]
        affected = sum(
            1
            for t, on in zip(grid.starts, operating, strict=True)
            if on and any(o.covers(t, t + grid.step) for o in overlapping)
        )
        last = {kind: next((p for p in reversed(chart.points) if p.kind is kind), None) for kind in qal3.CheckKind}
        statistics = {f"{k.value}.{n}": v for k, p in last.items() if p for n, v in p.statistics.items()}
        limits = {f"{k.value}.{n}": v for k, p in last.items() if p for n, v in p.limits.items()}
        spec = chart.component.spec
        until = min(end, now)
        results = [e.result for e in chart.entries]
        intervals = {kind: qal3.longest_interval(results, kind, start, until) for kind in qal3.CheckKind}
        day = timedelta(days=1)
        too_long = [k.value for k, v in intervals.items() if qa.max_check_interval and v > qa.max_check_interval]
        if too_long and qa.max_check_interval is not None:
            warnings.append(
                f"QAL3: {name} went longer than the maintenance interval ({qa.max_check_interval / day:g} days) "
                f"without a {' or '.join(too_long)} check ({qal3.CLAUSE}: at least once per maintenance interval)"
            )
        components.append(
            Qal3ComponentState(
                component=name,
                method=spec.method.value,
                s_ams_zero=spec.s_ams_zero,
                s_ams_span=spec.s_ams_span,
                checks=len(in_period),
                zero_status=(z.status.value if (z := last[qal3.CheckKind.ZERO]) else "no checks"),
                span_status=(s.status.value if (s := last[qal3.CheckKind.SPAN]) else "no checks"),
                statistics=statistics,
                limits=limits,
                out_of_control_periods=len(overlapping),
                affected_periods=affected,
                longest_zero_interval_days=round(intervals[qal3.CheckKind.ZERO] / day, 6),
                longest_span_interval_days=round(intervals[qal3.CheckKind.SPAN] / day, 6),
            )
        )
        periods.extend(
            OutOfControlRow(
                component=name,
                start_utc=o.start,
                end_utc=o.end,
                start_local=_local(o.start, zone),
                end_local=None if o.end is None else _local(o.end, zone),
                signals=[_signal_text(g, zone) for g in o.signals],
                treatment=qa.flag_out_of_control,
            )
            for o in overlapping
        )
        if overlapping:
            open_ = " (not adjusted by the period's end)" if overlapping[-1].end is None else ""
            warnings.append(
                f"QAL3: {name} out of control in {len(overlapping)} period(s){open_}; {affected} operating base "
                f"periods {'invalid' if qa.flag_out_of_control == 'invalid' else 'flagged'} ({qal3.CLAUSE})"
            )
    return QaSection(
        rule=_qal3_rule(qa),
        flag_out_of_control=qa.flag_out_of_control,
        max_check_interval_days=None if qa.max_check_interval is None else qa.max_check_interval / timedelta(days=1),
        checks=sorted(rows, key=lambda r: (r.at_utc, r.id)),
        components=components,
        out_of_control=periods,
    )
