"""IED compliance tests on validated values: monthly mean, daily mean, share of base periods. Pure, no I/O.

Directive 2010/75/EU states when continuous measurements comply with an emission limit value (ELV):
- large combustion plants, Annex V Part 4 point 1, over the operating hours of a calendar year: (a) no validated
  monthly average above the ELV, (b) no validated daily average above 110 % of it, (d) 95 % of all validated hourly
  averages not above 200 % of it (point (c), 150 % daily for small coal boilers < 50 MW, is a rule set of your own);
- waste incineration, Annex VI Part 8 point 1.1: (a) no daily average above the daily ELV, (b) no half-hourly
  average above column A of Part 3 point 1.2, or 97 % of the half-hourly averages over the year not above
  column B. Column B equals the daily ELV for every pollutant of that table, so the default is "97 % of the
  half-hours ≤ 100 % of the ELV"; a permit that uses column A sets base_percent and base_share_percent.

Which tests apply and their percentages are rule-set configuration (`[rollup.rule_sets.NAME.compliance]`), with
the defaults below per built-in rule set; the report names the values it used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from enum import StrEnum
from typing import Final

from gateway.mrv.rollup import Aggregate, RuleSet, day_aggregates, month_aggregates

__all__ = [
    "COMPLIANCE_DEFAULTS",
    "NO_TESTS",
    "Compliance",
    "ComplianceCheck",
    "Outcome",
    "compliance_for",
    "evaluate",
    "share_passes",
]


class ComplianceCheck(StrEnum):
    MONTH_MEAN = "month-mean"
    """every valid monthly mean ≤ month_mean_percent of the ELV"""
    DAY_MEAN = "day-mean"
    """every valid daily mean ≤ day_mean_percent of the ELV"""
    BASE_SHARE = "base-share"
    """at least base_share_percent of the valid base-period (hourly or half-hourly) values ≤ base_percent of the ELV"""


@dataclass(frozen=True, slots=True)
class Compliance:
    """Which tests apply to a rule set's limits, with their percentages."""

    tests: tuple[ComplianceCheck, ...] = ()
    month_mean_percent: float = 100.0
    day_mean_percent: float = 100.0
    base_percent: float = 100.0
    base_share_percent: float = 100.0
    citation: str = ""

    def __post_init__(self) -> None:
        for name in ("month_mean_percent", "day_mean_percent", "base_percent"):
            value = getattr(self, name)
            if not 0 < value <= 1000:
                raise ValueError(f"compliance.{name} must be in (0, 1000] % of the ELV, got {value:g}")
        if not 0 < self.base_share_percent <= 100:
            raise ValueError(f"compliance.base_share_percent must be in (0, 100], got {self.base_share_percent:g}")
        if len(set(self.tests)) != len(self.tests):
            raise ValueError(f"compliance.tests names a test twice: {', '.join(self.tests)}")

    def with_changes(self, **changes: object) -> Compliance:
        return replace(self, **changes)  # type: ignore[arg-type]


NO_TESTS: Final = Compliance()

COMPLIANCE_DEFAULTS: Final[Mapping[str, Compliance]] = {
    "ied-lcp": Compliance(
        tests=(ComplianceCheck.MONTH_MEAN, ComplianceCheck.DAY_MEAN, ComplianceCheck.BASE_SHARE),
        month_mean_percent=100.0,
        day_mean_percent=110.0,
        base_percent=200.0,
        base_share_percent=95.0,
        citation="Directive 2010/75/EU Annex V Part 4 point 1(a), (b), (d)",
    ),
    "ied-wi": Compliance(
        tests=(ComplianceCheck.DAY_MEAN, ComplianceCheck.BASE_SHARE),
        day_mean_percent=100.0,
        base_percent=100.0,
        base_share_percent=97.0,
        citation="Directive 2010/75/EU Annex VI Part 8 point 1.1(a), (b) (column B of Part 3 point 1.2)",
    ),
}
"""Built-in rule sets with IED compliance tests; every other rule set (mrr, part75, ambient) has none."""


def compliance_for(rule_set: str) -> Compliance:
    return COMPLIANCE_DEFAULTS.get(rule_set, NO_TESTS)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One test of one pollutant's limit over the report period."""

    test: ComplianceCheck
    averaging: str
    percent_of_elv: float
    limit: float
    required_share_percent: float
    periods: int
    periods_above: int
    max_value: float | None
    passed: bool | None
    """None: no valid period to judge"""
    above: tuple[datetime, ...]
    """starts (UTC) of the periods above the limit, in time order"""

    @property
    def share_within_percent(self) -> float | None:
        if not self.periods:
            return None
        return 100 * (self.periods - self.periods_above) / self.periods


def share_passes(within: int, periods: int, share_percent: float) -> bool:
    """within / periods ≥ share: exact for whole-number percentages (19 of 20 is 95 %, which passes)."""
    return within * 100 >= share_percent * periods - 1e-9


def _judge(
    test: ComplianceCheck,
    averaging: str,
    values: Sequence[tuple[datetime, float]],
    *,
    elv: float,
    percent: float,
    share: float,
) -> Outcome:
    limit = elv * percent / 100
    above = tuple(start for start, value in values if value > limit)
    within = len(values) - len(above)
    return Outcome(
        test=test,
        averaging=averaging,
        percent_of_elv=percent,
        limit=limit,
        required_share_percent=share,
        periods=len(values),
        periods_above=len(above),
        max_value=max((value for _, value in values), default=None),
        passed=share_passes(within, len(values), share) if values else None,
        above=above,
    )


def evaluate(
    compliance: Compliance,
    validated: Sequence[Aggregate],
    *,
    elv: float,
    rules: RuleSet,
    zone: tzinfo,
    days: Sequence[Aggregate] | None = None,
) -> list[Outcome]:
    """The configured tests over validated base-period values (O2-corrected, confidence interval subtracted,
    invalid ones carrying valid=False). Days and months follow the rule set's validity and the local calendar
    (the same chain as the stored rollups); only valid averages are judged. `days`, when given, are the daily
    means to judge instead (a report's days over normal-operation periods only, Directive 2010/75/EU Annex V
    Part 4: start-up and shut-down periods are not judged)."""
    if not compliance.tests or not validated:
        return []
    if days is None:
        days = day_aggregates(validated, rules, zone)
    outcomes = []
    for test in compliance.tests:
        if test is ComplianceCheck.MONTH_MEAN:
            months = month_aggregates(days, rules, zone)
            values = _valid(months)
            outcomes.append(_judge(test, "1mo", values, elv=elv, percent=compliance.month_mean_percent, share=100.0))
        elif test is ComplianceCheck.DAY_MEAN:
            outcomes.append(_judge(test, "1d", _valid(days), elv=elv, percent=compliance.day_mean_percent, share=100.0))
        else:
            outcomes.append(
                _judge(
                    test,
                    rules.base.value,
                    _valid(validated),
                    elv=elv,
                    percent=compliance.base_percent,
                    share=compliance.base_share_percent,
                )
            )
    return outcomes


def _valid(aggregates: Sequence[Aggregate]) -> list[tuple[datetime, float]]:
    return [(a.start, a.value) for a in aggregates if a.valid and a.value is not None and math.isfinite(a.value)]
