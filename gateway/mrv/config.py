"""MRV configuration: rollup rule sets, report settings and emission sources (`[rollup]`, `[[source]]`).

Part of the gateway config (gateway/config.py adds the two sections); kept in its own module so the MRV
settings, their defaults and their cross-checks live in one place. Errors name the key (docs/regulatory-basis.md §2–§4
for the meaning of each setting).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.alerts.rules import Rule, ThresholdRule
from gateway.mrv import arithmetic as mrv
from gateway.mrv.calibration import Qal2Function, VcrThresholds
from gateway.mrv.compliance import Compliance, ComplianceCheck, compliance_for
from gateway.mrv.operating_state import MIN_REQUIRED, Criterion, OperatingSpec, State, StatusTag
from gateway.mrv.part75 import (
    LINEARITY_GRACE_HOURS,
    LINEARITY_MAX_QUARTERS,
    QA_QUARTER_HOURS,
    RATA_ANNUAL_PERCENT,
    RATA_GRACE_HOURS,
    RATA_MAX_QUARTERS,
    Part75Spec,
    RataAlternative,
    default_alternative,
)
from gateway.mrv.qal3 import Method as Qal3Method
from gateway.mrv.qal3 import Qal3Spec
from gateway.mrv.report import ChannelInput, SourceInput
from gateway.mrv.rollup import RULE_SETS, BaseRule, Period, RuleSet
from gateway.mrv.substitution import Method, SubstitutionSpec

__all__ = [
    "ChannelConfig",
    "CriterionConfig",
    "OperatingConfig",
    "Part75Config",
    "PollutantConfig",
    "Qal2Config",
    "Qal3ComponentConfig",
    "Qal3Config",
    "ReportsSection",
    "RollupSection",
    "RuleResolver",
    "RuleSetConfig",
    "SourceConfig",
    "VcrCheckConfig",
    "check_sources",
    "find_source",
    "resolve_mrv_paths",
    "source_input",
    "wet_o2_alert_problems",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


def _check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Asia/Almaty' or 'UTC')") from None
    return name


class ComplianceConfig(_Strict):
    """IED compliance tests of a rule set's limits (docs/mrv-limits.md): which apply and their percentages.
    Unset keys keep the values of the rule set it is based on (ied-lcp: Directive 2010/75/EU Annex V Part 4;
    ied-wi: Annex VI Part 8; the others have no tests)."""

    tests: list[ComplianceCheck] | None = Field(
        default=None, description="which apply: month-mean, day-mean, base-share ([] for none)"
    )
    month_mean_percent: Annotated[float, Field(gt=0, le=1000)] | None = Field(
        default=None, description="every valid monthly mean ≤ this % of the ELV (ied-lcp 100)"
    )
    day_mean_percent: Annotated[float, Field(gt=0, le=1000)] | None = Field(
        default=None, description="every valid daily mean ≤ this % of the ELV (ied-lcp 110, ied-wi 100)"
    )
    base_percent: Annotated[float, Field(gt=0, le=1000)] | None = Field(
        default=None, description="limit of the base-period test, % of the ELV (ied-lcp 200, ied-wi 100)"
    )
    base_share_percent: Annotated[float, Field(gt=0, le=100)] | None = Field(
        default=None, description="share of valid base periods that must be at or below it (ied-lcp 95, ied-wi 97)"
    )
    citation: str | None = None

    @field_validator("tests")
    @classmethod
    def _once(cls, tests: list[ComplianceCheck] | None) -> list[ComplianceCheck] | None:
        if tests is not None and len(set(tests)) != len(tests):
            raise ValueError(f"a test is named twice: {', '.join(tests)}")
        return tests


class RuleSetConfig(_Strict):
    """A rule set of your own: a built-in one with some numbers changed (docs/regulatory-basis.md §3)."""

    based_on: str = "ied-lcp"
    base: Literal["30m", "1h"] | None = None
    minute_min_fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    base_rule: BaseRule | None = None
    base_min_capture: Annotated[float, Field(gt=0, le=1)] | None = None
    day_max_invalid: Annotated[int, Field(ge=0)] | None = None
    day_min_capture: Annotated[float, Field(gt=0, le=1)] | None = None
    long_min_capture: Annotated[float, Field(gt=0, le=1)] | None = None
    year_max_invalid_days: Annotated[int, Field(ge=0)] | None = None
    exclude_maintenance: bool | None = None
    sample_interval_s: Annotated[float, Field(gt=0, le=3600)] | None = None
    citation: str | None = None
    compliance: ComplianceConfig | None = Field(
        default=None, description="IED compliance tests; default: those of based_on (docs/mrv-limits.md)"
    )

    @field_validator("based_on")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in RULE_SETS:
            raise ValueError(f"unknown rule set {name!r} (built in: {', '.join(RULE_SETS)})")
        return name


class ReportsSection(_Strict):
    """Where reports go, and the scheduled feed that writes (and optionally POSTs) them on its own."""

    directory: Path = Field(default=Path("var/reports"), description="reports are written here")
    schedule: bool = Field(default=False, description="write monthly and annual reports when a period ends")
    delay_hours: Annotated[float, Field(ge=0, le=24 * 31)] = Field(
        default=6.0, description="wait this long after a period ends for late data before reporting it"
    )
    post_url: str | None = Field(default=None, description="POST each report's JSON here (state platform)")
    post_token: SecretStr | None = Field(default=None, description="sent as 'Authorization: Bearer TOKEN'")
    post_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    font: Path | None = Field(default=None, description="a Unicode TTF for the PDF (else DejaVu Sans if installed)")

    @field_validator("post_url")
    @classmethod
    def _http(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"post_url {url!r} must start with http:// or https://")
        return url


class SeriesRules(_Strict):
    """Rules for series no [[source]] names (an ambient station, an instrument with a slow cycle): a whole
    site, one of its instruments, or one parameter of it. The most specific entry wins."""

    site: Identifier
    instrument: Identifier | None = None
    parameter: Identifier | None = None
    rule_set: str
    time_zone: str | None = Field(default=None, description="local calendar; default: [rollup] time_zone")

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        return None if name is None else _check_time_zone(name)

    @model_validator(mode="after")
    def _parameter_needs_instrument(self) -> Self:
        if self.parameter is not None and self.instrument is None:
            raise ValueError("a parameter is named together with its instrument")
        return self


class RollupSection(_Strict):
    """Rollups (1m, base period, 1d, 1mo, 1y) for every stored series; [[source]] sets a stack's own rules."""

    enabled: bool = True
    rule_set: str = Field(default="ied-lcp", description="for series no [[source]] names")
    time_zone: str = Field(default="UTC", description="local calendar of days/months/years for those series")
    interval: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0, description="seconds between two passes over the periods new data made dirty"
    )
    max_open_series: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=100_000,
        description="series whose running rollup totals are kept in memory (a few kB each); the least recently "
        "used are forgotten first and rebuilt from the store (counted: aua_gateway_rollup_evicted_series)",
    )
    rule_sets: dict[Identifier, RuleSetConfig] = Field(default_factory=dict)
    series: list[SeriesRules] = Field(default_factory=list)
    reports: ReportsSection = Field(default_factory=ReportsSection)

    @model_validator(mode="after")
    def _series_rule_sets_exist(self) -> Self:
        known = set(RULE_SETS) | set(self.rule_sets)
        for index, entry in enumerate(self.series):
            if entry.rule_set not in known:
                raise ValueError(
                    f"series[{index}].rule_set: unknown rule set {entry.rule_set!r} (known: {', '.join(sorted(known))})"
                )
        return self

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        return _check_time_zone(name)

    def resolved_rule_sets(self) -> dict[str, RuleSet]:
        """Built-in rule sets plus those defined here."""
        resolved = dict(RULE_SETS)
        for name, custom in self.rule_sets.items():
            changes = custom.model_dump(exclude_none=True, exclude={"based_on", "compliance"})
            if "base" in changes:
                changes["base"] = Period(changes["base"])
            resolved[name] = RULE_SETS[custom.based_on].with_changes(name=name, **changes)
        return resolved

    def resolved_compliance(self) -> dict[str, Compliance]:
        """The IED compliance tests of every rule set: built-in defaults, and those of [rollup.rule_sets] (their
        based_on's, with the keys they set changed)."""
        resolved = {name: compliance_for(name) for name in RULE_SETS}
        for name, custom in self.rule_sets.items():
            spec = compliance_for(custom.based_on)
            if custom.compliance is not None:
                changes = custom.compliance.model_dump(exclude_none=True)
                if "tests" in changes:
                    changes["tests"] = tuple(ComplianceCheck(t) for t in changes["tests"])
                spec = spec.with_changes(**changes)
            resolved[name] = spec
        return resolved


Conditions = Literal["standard", "actual"]

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class Qal2Config(_Strict):
    """`qal2` of a channel: the QAL2 calibration function ŷ = a + b·x of EN 14181:2014 from the QAL2 report,
    applied to the channel's base-period values before standardisation (docs/regulatory-basis.md §8)."""

    id: Annotated[str, Field(min_length=1, max_length=200)] = Field(description="the QAL2 report's id")
    date: dt.date = Field(description="date of the QAL2 report")
    a: FiniteFloat = Field(description="intercept, in the channel's unit")
    b: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(description="slope")
    vcr: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None,
        description="valid calibration range: upper bound in the standardised unit (pollutants: mg/Nm3 dry at "
        "the reference O2 when O2-corrected); without it no VCR check",
    )

    def function(self) -> Qal2Function:
        return Qal2Function(self.id, self.date, self.a, self.b, self.vcr)


class VcrCheckConfig(_Strict):
    """`[source.vcr_check]`: when the weekly VCR check says a new QAL2 is due. Defaults from UK guidance on
    EN 14181:2014 (not the standard's text): > 5 % of values outside in > 5 weeks, or > 40 % in any one week."""

    week_percent: Annotated[float, Field(ge=0, le=100)] = 5.0
    weeks_allowed: Annotated[int, Field(ge=0, le=60)] = 5
    any_week_percent: Annotated[float, Field(ge=0, le=100)] = 40.0

    def thresholds(self) -> VcrThresholds:
        return VcrThresholds(self.week_percent, self.weeks_allowed, self.any_week_percent)


class RataAlternativeConfig(_Strict):
    """`[source.part75.rata_alternative.CHANNEL]`: a low-emitter alternative RATA specification (40 CFR 75 App. A
    §3.3, App. B Figure 2), in the RATA's unit, e.g. flow at low velocity in fps: semiannual = 2.0, annual = 1.5,
    mean_at_most = 10."""

    semiannual: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        description="|d̄| at most this passes the RATA (semiannual frequency)"
    )
    annual: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        description="|d̄| at most this earns the annual frequency"
    )
    mean_at_most: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None, description="only for a reference-method mean at most this (None: any)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> RataAlternativeConfig:
        if self.annual > self.semiannual:
            raise ValueError(f"annual ({self.annual:g}) must not exceed semiannual ({self.semiannual:g})")
        return self

    def alternative(self) -> RataAlternative:
        return RataAlternative(self.semiannual, self.annual, self.mean_at_most, "[source.part75] rata_alternative")


class Part75Config(_Strict):
    """`[source.part75]`: 40 CFR Part 75 quality assurance of the source's channels whose rule set is part75
    (docs/regulatory-basis.md §8): daily calibration error tests, linearity checks and RATAs entered with
    `cems-gateway cal-test`, the hours they leave out of control substituted, the bias adjustment factor applied."""

    span: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        description="span per channel (so2, nox, … as the pollutant's parameter; flow, o2, co2), in the channel's "
        "unit: these channels need a passed daily calibration error test (40 CFR 75 App. B §2.1)",
    )
    validity_hours: Annotated[int, Field(ge=1, le=168)] = Field(
        default=26, description="clock hours after its hour a passed daily test covers (40 CFR 75 App. B §2.1.5)"
    )
    grace_operating_hours: Annotated[int, Field(ge=0, le=168)] = Field(
        default=8,
        description="operating hours after a restart to pass a test when the window ran out while the unit was off "
        "(40 CFR 75 App. B §2.1.5)",
    )
    bias_adjustment: bool = Field(
        default=True, description="multiply SO2, NOx and flow by the last RATA's BAF (40 CFR 75 App. A §7.6.5)"
    )
    qa_operating_quarter_hours: Annotated[int, Field(ge=1, le=2208)] = Field(
        default=QA_QUARTER_HOURS,
        description="unit operating hours that make a calendar quarter a QA operating quarter (40 CFR 72.2; "
        "40 CFR 75 App. B §2.2.1, §2.3.1)",
    )
    linearity_grace_operating_hours: Annotated[int, Field(ge=0, le=2208)] = Field(
        default=LINEARITY_GRACE_HOURS,
        description="operating hours after the quarter a linearity check was due in to do it (App. B §2.2.4)",
    )
    linearity_max_quarters: Annotated[int, Field(ge=1, le=8)] = Field(
        default=LINEARITY_MAX_QUARTERS,
        description="calendar quarters after the last linearity check by which the next is due, QA operating or not",
    )
    rata_grace_operating_hours: Annotated[int, Field(ge=0, le=8784)] = Field(
        default=RATA_GRACE_HOURS,
        description="operating hours after the quarter a RATA was due in to do it (App. B §2.3.3)",
    )
    rata_max_quarters: Annotated[int, Field(ge=1, le=16)] = Field(
        default=RATA_MAX_QUARTERS,
        description="calendar quarters after the last RATA by which the next is due, however few QA operating "
        "quarters (App. B §2.3.1.1)",
    )
    rata_annual_percent: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = Field(
        default=RATA_ANNUAL_PERCENT,
        description="a RATA with RA at most this earns the annual frequency (App. B §2.3.1.2, Figure 2)",
    )
    rata_alternative: dict[str, RataAlternativeConfig] = Field(
        default_factory=dict,
        description="low-emitter alternative RATA specification per channel (App. A §3.3), in the RATA's unit; "
        "defaults for SO2/NOx in ppm, NOx in lb/mmBtu and O2/CO2 in %",
    )
    due_warning_days: Annotated[int, Field(ge=0, le=366)] = Field(
        default=14, description="warn (alert qa-part75-due) this many days before a linearity check or RATA is due"
    )

    @field_validator("span")
    @classmethod
    def _some(cls, span: dict[str, float]) -> dict[str, float]:
        if not span:
            raise ValueError("name at least one channel and its span, e.g. span = { so2 = 500 }")
        return span

    def spec(self, units: Mapping[str, str] | None = None) -> Part75Spec:
        """The pure rules' spec; `units` (role → unit) picks the default alternative RATA specifications."""
        alternatives = {
            role: found for role, unit in (units or {}).items() if (found := default_alternative(role, unit))
        }
        alternatives.update({part75_role(name): table.alternative() for name, table in self.rata_alternative.items()})
        return Part75Spec(
            spans=tuple((part75_role(name), value) for name, value in sorted(self.span.items())),
            validity_hours=self.validity_hours,
            grace_operating_hours=self.grace_operating_hours,
            bias_adjustment=self.bias_adjustment,
            qa_quarter_hours=self.qa_operating_quarter_hours,
            linearity_grace_hours=self.linearity_grace_operating_hours,
            linearity_max_quarters=self.linearity_max_quarters,
            rata_grace_hours=self.rata_grace_operating_hours,
            rata_max_quarters=self.rata_max_quarters,
            rata_annual_percent=self.rata_annual_percent,
            alternatives=tuple(sorted(alternatives.items())),
        )


def part75_role(channel: str) -> str:
    """The report role of a channel as `[source.part75]` and `cal-test` name it: flow, o2, co2, else a pollutant's
    parameter."""
    return channel if channel in ("flow", "o2", "co2") else f"pollutant:{channel}"


class Qal3ComponentConfig(_Strict):
    """`[[source.qal3.component]]`: one analyzer component under QAL3 control (EN 14181:2014 §7): its s_AMS at zero
    and span from the QAL1 (EN 15267-3 / EN ISO 14956), its check gases, and how its checks are recognised."""

    instrument: Identifier
    parameter: Identifier
    s_ams_zero: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        description="standard deviation of the AMS at zero (QAL1), in the channel's unit"
    )
    s_ams_span: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        description="standard deviation of the AMS at span (QAL1), in the channel's unit"
    )
    zero_reference: FiniteFloat = Field(default=0.0, description="certified value of the zero gas")
    span_reference: FiniteFloat = Field(description="certified value of the span (reference) gas")
    zero_bit: Annotated[int, Field(ge=0, le=62)] | None = Field(
        default=None, description="bit of the readings' status word set during the zero check (else: nearest gas)"
    )
    span_bit: Annotated[int, Field(ge=0, le=62)] | None = Field(
        default=None, description="bit of the readings' status word set during the span check (else: nearest gas)"
    )

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        where = f"{self.instrument}/{self.parameter}"
        if self.zero_reference == self.span_reference:
            raise ValueError(f"{where}: zero_reference and span_reference must differ")
        if (self.zero_bit is None) != (self.span_bit is None):
            raise ValueError(f"{where}: set both zero_bit and span_bit, or neither")
        if self.zero_bit is not None and self.zero_bit == self.span_bit:
            raise ValueError(f"{where}: zero_bit and span_bit must differ")
        return self


class Qal3Config(_Strict):
    """`[source.qal3]`: QAL3 drift and precision control of the source's analyzers (EN 14181:2014 §7;
    docs/regulatory-basis.md §8)."""

    method: Qal3Method = Field(default=Qal3Method.CUSUM, description="cusum, shewhart or ewma")
    flag_out_of_control: Literal["invalid", "flag"] = Field(
        default="invalid",
        description="the component's data from a signal to the adjustment: 'invalid' (substituted when operating) "
        "or 'flag' (kept valid, listed in the QA section)",
    )
    alert: bool = Field(default=True, description="raise the qal3-out-of-control alert on a signal")
    max_check_interval_days: Annotated[float, Field(gt=0, le=366)] | None = Field(
        default=None,
        description="the maintenance interval (QAL1): the report warns when a component went longer without a zero "
        "or a span check (EN 14181:2014 §7: at least once per maintenance interval)",
    )
    shewhart_warning: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        default=2.0, description="Shewhart warning limits, ± this many s_AMS"
    )
    shewhart_action: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        default=3.0, description="Shewhart action limits, ± this many s_AMS (out of control beyond)"
    )
    ewma_lambda: Annotated[float, Field(gt=0, le=1)] = Field(default=0.2, description="EWMA weight of a new check")
    ewma_limit: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        default=3.0, description="EWMA control limits, L in ± L·s_AMS·√(λ/(2−λ)·(1−(1−λ)^2t))"
    )
    component: list[Qal3ComponentConfig] = Field(min_length=1, description="the components under control")

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if self.shewhart_warning >= self.shewhart_action:
            raise ValueError(
                f"shewhart_warning ({self.shewhart_warning:g}) must be below shewhart_action ({self.shewhart_action:g})"
            )
        seen: set[tuple[str, str]] = set()
        for component in self.component:
            key = (component.instrument, component.parameter)
            if key in seen:
                raise ValueError(f"component {component.instrument}/{component.parameter} is listed twice")
            seen.add(key)
        return self

    def spec(self, component: Qal3ComponentConfig) -> Qal3Spec:
        return Qal3Spec(
            s_ams_zero=component.s_ams_zero,
            s_ams_span=component.s_ams_span,
            method=self.method,
            shewhart_warning=self.shewhart_warning,
            shewhart_action=self.shewhart_action,
            ewma_lambda=self.ewma_lambda,
            ewma_limit=self.ewma_limit,
        )

    def find(self, instrument: str, parameter: str) -> Qal3ComponentConfig | None:
        for component in self.component:
            if (component.instrument, component.parameter) == (instrument, parameter):
                return component
        return None


class ChannelConfig(_Strict):
    """Where a measured quantity comes from and on which basis it is measured (docs/regulatory-basis.md §2)."""

    instrument: Identifier
    parameter: Identifier
    unit: str = Field(description="as the readings carry it: mg/m3, ppm, %vol, Nm3/h, degC, kPa, …")
    wet: bool = Field(default=False, description="measured in wet gas (needs [source.h2o])")
    conditions: Conditions = Field(default="standard", description="'actual': at duct T and p (needs both)")
    rule_set: str | None = Field(default=None, description="overrides the source's rule set for this channel")
    substitution: Method | None = Field(default=None, description="overrides the source's method")
    conservative: Literal["high", "low"] | None = Field(
        default=None, description="which side is conservative when substituting (default: high; O2/H2O: low)"
    )
    max_potential: float | None = Field(default=None, description="maximum potential value (Part 75; fallback)")
    min_potential: float = 0.0
    lookback_hours: Annotated[int, Field(ge=1, le=8760)] | None = Field(
        default=None, description="Part 75 lookback: 720 (SO2, CO2) or 2160 (NOx, flow) quality-assured hours"
    )
    qal2: Qal2Config | None = Field(default=None, description="QAL2 calibration function (EN 14181:2014)")

    def basis(self, species: str | None = None) -> mrv.Basis:
        return mrv.Basis(self.unit, wet=self.wet, actual_conditions=self.conditions == "actual", species=species)

    @property
    def species_key(self) -> str:
        """What the tables of §2–§4 (ppm factors, CI defaults, lookbacks) know it by: the species, else the
        parameter, lower case."""
        return self.parameter.lower()


class PollutantConfig(ChannelConfig):
    name: str | None = Field(default=None, description="as the report shows it, e.g. 'SO2'")
    species: str | None = Field(default=None, description="for ppm: so2, no, nox (as NO2), co, hcl, … (§2)")
    elv: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="emission limit value, mg/Nm3 dry at the reference O2"
    )
    elv_period: Literal["30m", "1h", "1d"] = Field(default="1d", description="averaging period of the ELV")
    ci_percent: Annotated[float, Field(ge=0, le=100)] | None = Field(
        default=None,
        description="95 % confidence interval as % of the ELV; default by species (§3, mrv.CI_PERCENT_DEFAULTS)",
    )
    o2_correction: bool = Field(default=True, description="correct to the reference O2 before the limit check")

    @property
    def label(self) -> str:
        return self.name or self.parameter.upper()

    @property
    def species_key(self) -> str:
        return (self.species or self.parameter).lower()

    @property
    def confidence_percent(self) -> float | None:
        """ci_percent, or §3's default for the species; None when neither says (an error with an ELV)."""
        if self.ci_percent is not None:
            return self.ci_percent
        return mrv.CI_PERCENT_DEFAULTS.get(self.species_key)


class StatusTagConfig(_Strict):
    """A DCS/PLC status tag read by an agent, and its value in each operating state."""

    instrument: Identifier
    parameter: Identifier
    off: float = 0
    start_up: float = 1
    normal: float = 2
    shut_down: float = 3

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        codes = [self.off, self.start_up, self.normal, self.shut_down]
        if len(set(codes)) != len(codes):
            raise ValueError(f"off, start_up, normal and shut_down need four different codes, got {codes}")
        return self

    def tag(self) -> StatusTag:
        codes = {State.OFF: self.off, State.START_UP: self.start_up, State.NORMAL: self.normal}
        return StatusTag(self.instrument, self.parameter, codes | {State.SHUT_DOWN: self.shut_down})


class CriterionConfig(_Strict):
    """A threshold on an operating parameter's period mean (load, fuel flow, steam flow, flue-gas temperature,
    O2, …): met when at_least ≤ mean ≤ at_most."""

    name: str = Field(default="", description="as the report shows it, e.g. 'load ≥ MSUL'")
    instrument: Identifier
    parameter: Identifier
    at_least: float | None = None
    at_most: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if self.at_least is None and self.at_most is None:
            raise ValueError(f"{self.instrument}/{self.parameter}: set at_least or at_most")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            where = f"{self.instrument}/{self.parameter}"
            raise ValueError(f"{where}: at_least {self.at_least:g} > at_most {self.at_most:g}")
        return self

    def criterion(self) -> Criterion:
        name = self.name or f"{self.instrument}/{self.parameter}"
        return Criterion(name, self.instrument, self.parameter, self.at_least, self.at_most)


class OperatingConfig(_Strict):
    """`[source.operating]`: how the source's operating state (off, start-up, normal, shut-down) is decided per
    period. Commission Implementing Decision 2012/249/EU Art. 9: at least three start-up (shut-down)
    criteria, start-up ends / shut-down starts when at least two are met."""

    status: StatusTagConfig | None = Field(default=None, description="a DCS/PLC status tag with a code per state")
    running: list[CriterionConfig] = Field(
        default_factory=list, description="any met: fuel is burned, an operating period; none met: off"
    )
    startup_end: list[CriterionConfig] = Field(
        default_factory=list, description="the permit's criteria for the end of start-up (at least three)"
    )
    shutdown_start: list[CriterionConfig] = Field(
        default_factory=list, description="criteria for the start of shut-down (default: startup_end negated)"
    )
    required: Annotated[int, Field(ge=MIN_REQUIRED)] = Field(
        default=MIN_REQUIRED, description="criteria that must be met (2012/249/EU Art. 9: at least two)"
    )

    @model_validator(mode="after")
    def _decidable(self) -> Self:
        self.spec()
        return self

    def spec(self) -> OperatingSpec:
        return OperatingSpec(
            status=self.status.tag() if self.status else None,
            running=tuple(c.criterion() for c in self.running),
            startup_end=tuple(c.criterion() for c in self.startup_end),
            shutdown_start=tuple(c.criterion() for c in self.shutdown_start),
            required=self.required,
        )


_DEFAULT_LOOKBACK = {"nox": 2160, "no": 2160, "no2": 2160}


class SourceConfig(_Strict):
    """One stack (emission source) and how its MRV numbers are computed."""

    id: Identifier
    site: Identifier
    name: str = ""
    time_zone: str = Field(default="UTC", description="reports and days/months/years in this local time")
    monitoring_plan: str = Field(default="", description="reference of the approved monitoring plan")
    fuel: Literal["solid", "liquid", "gas", "gas-turbine", "engine", "waste"] | None = None
    reference_o2: Annotated[float, Field(ge=0, lt=21)] | None = Field(
        default=None, description="% vol dry; default from fuel (§2: solid 6, liquid/gas 3, turbines 15, waste 11)"
    )
    o2_guard: Annotated[float, Field(gt=0, le=21)] = mrv.O2_GUARD
    rule_set: str = "ied-lcp"
    substitution: Method = Method.MRR
    agent_config: Path | None = Field(
        default=None, description="the edge agent's site config: its instruments and profiles enter the config hash"
    )
    flow: ChannelConfig
    o2: ChannelConfig | None = None
    h2o: ChannelConfig | None = None
    temperature: ChannelConfig | None = None
    pressure: ChannelConfig | None = None
    co2: ChannelConfig | None = None
    pollutant: list[PollutantConfig] = Field(default_factory=list)
    operating: OperatingConfig | None = Field(
        default=None, description="operating state signals; without it every period counts as operating"
    )
    vcr_check: VcrCheckConfig = Field(
        default_factory=VcrCheckConfig, description="'new QAL2 due' thresholds of the weekly VCR check"
    )
    part75: Part75Config | None = Field(
        default=None, description="40 CFR Part 75 QA: daily calibration error, linearity, RATA and BAF"
    )
    qal3: Qal3Config | None = Field(
        default=None, description="QAL3 drift and precision control of the analyzers (EN 14181:2014 §7)"
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        return _check_time_zone(name)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def o2_reference(self) -> float | None:
        if self.reference_o2 is not None:
            return self.reference_o2
        return None if self.fuel is None else mrv.REFERENCE_O2[self.fuel]

    def channels(self) -> dict[str, ChannelConfig]:
        """role → channel: flow, o2, h2o, temperature, pressure, co2 and one per pollutant ('pollutant:so2')."""
        found: dict[str, ChannelConfig] = {"flow": self.flow}
        for role in ("o2", "h2o", "temperature", "pressure", "co2"):
            channel = getattr(self, role)
            if channel is not None:
                found[role] = channel
        for pollutant in self.pollutant:
            found[f"pollutant:{pollutant.parameter}"] = pollutant
        return found

    def instruments(self) -> set[str]:
        return {channel.instrument for channel in self.channels().values()}

    def substitution_spec(self, role: str) -> SubstitutionSpec:
        channel = self.channels()[role]
        method = channel.substitution or self.substitution
        default_low = role in ("o2", "h2o") and method is Method.PART75  # §4: moisture and O2 mirror rules
        conservative = channel.conservative or ("low" if default_low else "high")
        lookback = channel.lookback_hours or (
            2160 if role == "flow" else _DEFAULT_LOOKBACK.get(channel.species_key, 720)
        )
        return SubstitutionSpec(
            method=method,
            conservative=conservative,
            max_potential=channel.max_potential,
            min_potential=channel.min_potential,
            lookback_hours=lookback,
        )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        keys: dict[tuple[str, str], str] = {}
        for role, channel in self.channels().items():
            key = (channel.instrument, channel.parameter)
            if key in keys:
                problems.append(f"{role} and {keys[key]} both name {channel.instrument}/{channel.parameter}")
            keys[key] = role
        problems += self._units()
        if self.qal3 is not None:
            problems += [
                f"qal3.component {c.instrument}/{c.parameter}: not a channel of this source (its QAL3 state "
                "decides the validity of that channel's data)"
                for c in self.qal3.component
                if (c.instrument, c.parameter) not in keys
            ]
        limited = [p for p in self.pollutant if p.elv is not None and p.o2_correction]
        if limited and self.o2_reference is None:
            problems.append(f"pollutant {limited[0].label} has an elv: set reference_o2 or fuel")
        for pollutant in self.pollutant:
            if pollutant.elv is not None and pollutant.confidence_percent is None:
                problems.append(
                    f"pollutant {pollutant.label} has an elv but §3 gives no default confidence interval for "
                    f"{pollutant.species_key!r}: set ci_percent"
                )
        if limited and self.o2 is None:
            problems.append(f"pollutant {limited[0].label} is O2-corrected for its limit: set [source.o2]")
        for role, channel in self.channels().items():
            if channel.wet and self.h2o is None and role == "o2":
                problems.append(
                    "o2.wet = true: the reference-O2 correction needs dry O2 (Directive 2010/75/EU Annex VI Part 7): "
                    "set [source.h2o], the water channel that dries it period by period"
                )
            elif channel.wet and self.h2o is None:
                problems.append(f"{role} is measured wet: set [source.h2o]")
            if channel.conditions == "actual" and (self.temperature is None or self.pressure is None):
                problems.append(f"{role} is at actual conditions: set [source.temperature] and [source.pressure]")
        if self.substitution is Method.PART75 or any(c.substitution is Method.PART75 for c in self.channels().values()):
            for role in self._mass_roles():
                spec = self.substitution_spec(role)
                if spec.method is Method.PART75 and spec.conservative == "high" and spec.max_potential is None:
                    problems.append(f"{role}.max_potential: Part 75 substitution needs the maximum potential value")
        if self.part75 is not None:
            problems += [
                f"part75.{key}.{name}: no such channel (flow, o2, co2 or a pollutant's parameter)"
                for key, names in (("span", self.part75.span), ("rata_alternative", self.part75.rata_alternative))
                for name in sorted(names)
                if part75_role(name) not in self.channels()
            ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _mass_roles(self) -> list[str]:
        """Channels whose values enter the mass totals, so they are substituted when missing."""
        roles = ["flow"] + [f"pollutant:{p.parameter}" for p in self.pollutant]
        if self.co2 is not None:
            roles.append("co2")
        channels = self.channels()
        if any(c.wet for c in channels.values()):
            roles.append("h2o")
        if any(c.conditions == "actual" for c in channels.values()):
            roles += ["temperature", "pressure"]
        return roles

    def mass_roles(self) -> list[str]:
        return self._mass_roles()

    def _units(self) -> list[str]:
        problems = []
        for pollutant in self.pollutant:
            where = f"pollutant {pollutant.label}"
            if pollutant.unit in mrv.VOLUME_RATIO_UNITS:
                species = pollutant.species_key
                if species not in mrv.PPM_TO_MG_M3:
                    problems.append(f"{where}.species: no ppm factor for {species!r} ({', '.join(mrv.PPM_TO_MG_M3)})")
            elif pollutant.unit not in mrv.CONCENTRATION_UNITS:
                problems.append(f"{where}.unit {pollutant.unit!r}: use mg/m3, mg/Nm3, ug/m3, ng/m3, ppm or ppb")
            elif "Nm" in pollutant.unit and pollutant.conditions == "actual":
                problems.append(f"{where}: unit {pollutant.unit} is at standard conditions, not 'actual'")
        if self.flow.unit not in mrv.FLOW_UNITS:
            problems.append(f"flow.unit {self.flow.unit!r}: use {', '.join(mrv.FLOW_UNITS)}")
        for role in ("co2", "o2", "h2o"):
            channel = getattr(self, role)
            if channel is not None and channel.unit not in mrv.PERCENT_UNITS:
                problems.append(f"{role}.unit {channel.unit!r}: use %vol")
        return problems


Location = tuple[str | int, ...]


def check_sources(rollup: RollupSection, sources: Sequence[SourceConfig]) -> None:
    """Cross-checks between [rollup] and the [[source]] tables; raises ValueError naming the key."""
    problems = [what for _, what in source_problems(rollup, sources)]
    if problems:
        raise ValueError("; ".join(problems))


def source_problems(rollup: RollupSection, sources: Sequence[SourceConfig]) -> list[tuple[Location, str]]:
    """Cross-checks between [rollup] and the [[source]] tables: (where in the file, the problem naming its
    key), so the loader can give each problem its line."""
    try:
        rule_sets = rollup.resolved_rule_sets()
    except ValueError as error:  # a custom rule set its own checks refuse
        return [(("rollup", "rule_sets"), f"rollup.rule_sets: {error}")]
    problems: list[tuple[Location, str]] = []
    if rollup.rule_set not in rule_sets:
        problems.append(
            (("rollup", "rule_set"), f"rollup.rule_set: unknown rule set {rollup.rule_set!r} ({', '.join(rule_sets)})")
        )
    seen_ids: set[str] = set()
    owner: dict[tuple[str, str], str] = {}
    for index, source in enumerate(sources):
        at: Location = ("source", index)
        where = f"source.{index} ({source.id})"
        if source.id in seen_ids:
            problems.append(((*at, "id"), f"{where}: duplicate source id"))
        seen_ids.add(source.id)
        for instrument in sorted(source.instruments()):
            other = owner.setdefault((source.site, instrument), source.id)
            if other != source.id:
                problems.append((at, f"{where}: instrument {instrument} already belongs to source {other}"))
        names = {source.rule_set} | {c.rule_set for c in source.channels().values() if c.rule_set}
        unknown = sorted(names - set(rule_sets))
        if unknown:
            problems.append(
                (
                    (*at, "rule_set"),
                    f"{where}.rule_set: unknown rule set(s) {', '.join(unknown)} ({', '.join(rule_sets)})",
                )
            )
            continue
        bases = {rule_sets[name].base for name in names}
        if len(bases) > 1:
            problems.append((at, f"{where}: all channels need the same base period, rule sets give {sorted(bases)}"))
        part75 = source.substitution is Method.PART75 or any(
            c.substitution is Method.PART75 for c in source.channels().values()
        )
        if part75 and any(rule_sets[n].base is not Period.HOUR for n in names):
            # its gap lengths, 8,760-hour availability window and lookbacks count hours (§4)
            problems.append((at, f"{where}: Part 75 substitution needs hourly base periods"))
        if source.part75 is not None:
            channels = source.channels()
            for name in sorted(source.part75.span):
                channel = channels.get(part75_role(name))
                chosen = (channel.rule_set if channel else None) or source.rule_set
                custom = rollup.rule_sets.get(chosen)
                if chosen != "part75" and (custom is None or custom.based_on != "part75"):
                    problems.append(
                        (
                            (*at, "part75", "span", name),
                            f"{where}.part75.span.{name}: the channel's rule set is {chosen!r}; Part 75 QA applies to "
                            "channels under the part75 rule set (or one based on it)",
                        )
                    )
        base = rule_sets[source.rule_set].base
        problems += [
            (
                (*at, "pollutant", number, "elv_period"),
                f"{where}.pollutant {p.label}.elv_period: {p.elv_period} is neither the base period ({base.value}) "
                "nor 1d",
            )
            for number, p in enumerate(source.pollutant)
            if p.elv is not None and p.elv_period not in (base.value, Period.DAY.value)
        ]
    return problems


def wet_o2_alert_problems(rules: Sequence[Rule], sources: Sequence[SourceConfig]) -> list[str]:
    """O2-corrected alert rules that would take a [[source]]'s wet O2 as dry (Directive 2010/75/EU Annex VI Part 7
    corrects with dry O2): a rule whose scope covers the O2 instrument of a source with `o2.wet = true`, correcting
    with that O2 parameter, must say `o2_wet = true` (and the moisture to dry it with)."""
    problems = []
    for rule in rules:
        if not isinstance(rule, ThresholdRule) or rule.reference_o2 is None or rule.o2_wet:
            continue
        for source in sources:
            o2 = source.o2
            if o2 is None or not o2.wet or o2.parameter != rule.o2_parameter:
                continue
            if rule.scope.matches(source.site, "", o2.instrument):
                problems.append(
                    f"alerts.rules.{rule.name}: corrects with {o2.instrument}/{o2.parameter}, which [[source]] "
                    f"{source.id} measures wet: set o2_wet = true and h2o_parameter (the moisture reading that dries "
                    "it), or narrow the rule's scope"
                )
    return problems


def find_source(sources: Sequence[SourceConfig], source_id: str) -> SourceConfig:
    """The [[source]] with this id; LookupError naming the known ones otherwise."""
    for source in sources:
        if source.id == source_id:
            return source
    known = ", ".join(s.id for s in sources) or "none configured"
    raise LookupError(f"no [[source]] with id {source_id!r} (known: {known})")


def resolve_mrv_paths(rollup: RollupSection, sources: Sequence[SourceConfig], base: Path) -> None:
    """Relative paths (report directory, font, agent configs) are relative to the config file's folder."""
    reports = rollup.reports
    if not reports.directory.is_absolute():
        reports.directory = base / reports.directory
    if reports.font is not None and not reports.font.is_absolute():
        reports.font = base / reports.font
    for source in sources:
        if source.agent_config is not None and not source.agent_config.is_absolute():
            source.agent_config = base / source.agent_config


@dataclass(frozen=True)
class RuleResolver:
    """Which rule set and local calendar a series (site, instrument, parameter) is rolled up with.

    A channel of a [[source]] uses its own rule set, or the source's; any other parameter of a source's
    instruments uses the source's; everything else the [rollup] defaults.
    """

    default: tuple[RuleSet, ZoneInfo]
    by_instrument: dict[tuple[str, str], tuple[RuleSet, ZoneInfo]] = field(default_factory=dict)
    by_series: dict[tuple[str, str, str], tuple[RuleSet, ZoneInfo]] = field(default_factory=dict)
    by_site: dict[str, tuple[RuleSet, ZoneInfo]] = field(default_factory=dict)

    def __call__(self, site: str, instrument: str, parameter: str) -> tuple[RuleSet, ZoneInfo]:
        found = self.by_series.get((site, instrument, parameter))
        if found is None:
            found = self.by_instrument.get((site, instrument))
        if found is None:
            found = self.by_site.get(site, self.default)
        return found

    @classmethod
    def from_config(cls, rollup: RollupSection, sources: Sequence[SourceConfig]) -> RuleResolver:
        rule_sets = rollup.resolved_rule_sets()
        resolver = cls((rule_sets[rollup.rule_set], ZoneInfo(rollup.time_zone)))
        for entry in rollup.series:  # [[source]] entries below override these
            chosen = (rule_sets[entry.rule_set], ZoneInfo(entry.time_zone or rollup.time_zone))
            if entry.instrument is None:
                resolver.by_site[entry.site] = chosen
            elif entry.parameter is None:
                resolver.by_instrument[(entry.site, entry.instrument)] = chosen
            else:
                resolver.by_series[(entry.site, entry.instrument, entry.parameter)] = chosen
        for source in sources:
            zone = source.zone
            for channel in source.channels().values():
                resolver.by_instrument[(source.site, channel.instrument)] = (rule_sets[source.rule_set], zone)
            for channel in source.channels().values():
                name = channel.rule_set or source.rule_set
                resolver.by_series[(source.site, channel.instrument, channel.parameter)] = (rule_sets[name], zone)
            if source.operating is not None:  # signals roll up to the source's base periods (a channel keeps its own)
                for key in source.operating.spec().signal_keys():
                    instrument, parameter = key.split("/", 1)
                    resolver.by_series.setdefault(
                        (source.site, instrument, parameter), (rule_sets[source.rule_set], zone)
                    )
        return resolver


def _compliance_of(rule_set: str, compliance: Mapping[str, Compliance] | None) -> Compliance:
    if compliance is not None and rule_set in compliance:
        return compliance[rule_set]
    return compliance_for(rule_set)


_ROLE_NAMES = {"flow": "Flow", "o2": "O2", "h2o": "H2O", "temperature": "Temperature", "pressure": "Pressure"}


def source_input(
    source: SourceConfig, rule_sets: dict[str, RuleSet], compliance: Mapping[str, Compliance] | None = None
) -> SourceInput:
    """The plain data the pure report builder needs from a [[source]] table; `compliance` by rule set name
    (RollupSection.resolved_compliance; default: the built-in rule sets' tests)."""
    mass_roles = set(source.mass_roles())
    channels = []
    for role, channel in source.channels().items():
        pollutant = channel if isinstance(channel, PollutantConfig) else None
        species = None
        if pollutant is not None:
            species = pollutant.species_key
        elif role == "co2":
            species = "co2"
        channels.append(
            ChannelInput(
                role=role,
                name=pollutant.label if pollutant else _ROLE_NAMES.get(role, role.upper()),
                instrument=channel.instrument,
                parameter=channel.parameter,
                basis=channel.basis(species),
                rules=rule_sets[channel.rule_set or source.rule_set],
                substitution=source.substitution_spec(role) if role in mass_roles else None,
                elv=pollutant.elv if pollutant else None,
                elv_period=pollutant.elv_period if pollutant else "1d",
                ci_percent=(pollutant.confidence_percent or 0.0) if pollutant else 0.0,
                o2_correction=pollutant.o2_correction if pollutant else False,
                compliance=_compliance_of(channel.rule_set or source.rule_set, compliance),
                qal2=channel.qal2.function() if channel.qal2 is not None else None,
            )
        )
    return SourceInput(
        id=source.id,
        site=source.site,
        name=source.name,
        zone_name=source.time_zone,
        zone=source.zone,
        monitoring_plan=source.monitoring_plan,
        reference_o2=source.o2_reference,
        o2_guard=source.o2_guard,
        channels=tuple(channels),
        operating=source.operating.spec() if source.operating is not None else None,
        vcr_thresholds=source.vcr_check.thresholds(),
        part75=part75_spec(source),
    )


def part75_spec(source: SourceConfig) -> Part75Spec | None:
    """The source's Part 75 spec, its default alternative RATA specifications picked by its channels' units."""
    if source.part75 is None:
        return None
    return source.part75.spec({role: channel.unit for role, channel in source.channels().items()})
