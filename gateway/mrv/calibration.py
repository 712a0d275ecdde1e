"""QAL2 calibration functions and the weekly valid-calibration-range (VCR) check (EN 14181:2014;
docs/regulatory-basis.md §8). Pure, no I/O.

- A QAL2 function ŷ = a + b·x turns an analyzer's reading into the calibrated value. It is applied to the
  channel's base-period (hourly) means before O2/H2O/T/p standardisation and before the confidence interval is
  subtracted. For a linear function that is the same as applying it to every raw reading first: the mean of
  a + b·xᵢ over n readings is a + b·(Σxᵢ/n). Raw readings and their rollups stay as measured; the calibrated
  value is derived and carries the function's id.
- The VCR check counts, per week (Monday–Sunday in the source's local time), the share of valid standardised
  hourly means (before the confidence interval is subtracted) above the VCR. A new QAL2 is due when more than
  5 % of a week's values are outside in more than 5 weeks, or more than 40 % in any one week. These thresholds
  are from UK guidance on EN 14181:2014 (Source Testing Association, 2015), not the standard's text, so they are
  configurable (`VcrThresholds`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Final

__all__ = [
    "THRESHOLDS_SOURCE",
    "Qal2Function",
    "VcrThresholds",
    "VcrWeek",
    "new_qal2_due",
    "weekly_vcr",
]

THRESHOLDS_SOURCE: Final = "UK guidance on EN 14181:2014 (Source Testing Association, 2015)"
"""Where the default 'new QAL2 due' thresholds come from: guidance, not the standard's own text."""


@dataclass(frozen=True, slots=True)
class Qal2Function:
    """ŷ = a + b·x from the QAL2 report `id` of `date`; `vcr` is the valid calibration range's upper bound in the
    channel's standardised unit (None: not given, no VCR check)."""

    id: str
    date: date
    a: float
    b: float
    vcr: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise ValueError(f"QAL2 function {self.id!r}: a and b must be finite numbers")
        if self.b <= 0:
            raise ValueError(f"QAL2 function {self.id!r}: slope b must be > 0 (got {self.b})")
        if self.vcr is not None and not (math.isfinite(self.vcr) and self.vcr > 0):
            raise ValueError(f"QAL2 function {self.id!r}: vcr must be a finite number > 0 (got {self.vcr})")

    def apply(self, x: float) -> float:
        return self.a + self.b * x


@dataclass(frozen=True, slots=True)
class VcrThresholds:
    """When a new QAL2 is due: more than `week_percent` % of a week's values above the VCR in more than
    `weeks_allowed` weeks, or more than `any_week_percent` % in any one week (defaults: THRESHOLDS_SOURCE)."""

    week_percent: float = 5.0
    weeks_allowed: int = 5
    any_week_percent: float = 40.0


@dataclass(frozen=True, slots=True)
class VcrWeek:
    """One Monday–Sunday week (local time): valid values, how many above the VCR, and their share."""

    week_start: date
    valid: int
    above: int

    @property
    def percent_above(self) -> float:
        return 100.0 * self.above / self.valid if self.valid else 0.0


def weekly_vcr(values: Iterable[tuple[datetime, float | None]], vcr: float, zone: tzinfo) -> list[VcrWeek]:
    """Per local Monday–Sunday week with at least one valid value, in time order: the count of valid values
    (None: invalid or not counted) and of those strictly above `vcr`."""
    counts: dict[date, list[int]] = {}
    for start, value in values:
        if value is None:
            continue
        local = start.astimezone(zone).date()
        monday = local - timedelta(days=local.weekday())
        entry = counts.setdefault(monday, [0, 0])
        entry[0] += 1
        entry[1] += value > vcr
    return [VcrWeek(monday, valid, above) for monday, (valid, above) in sorted(counts.items())]


def new_qal2_due(weeks: Iterable[VcrWeek], thresholds: VcrThresholds = VcrThresholds()) -> list[str]:
    """The reasons a new QAL2 is due (empty: not due)."""
    weeks = list(weeks)
    reasons: list[str] = []
    over = [w for w in weeks if w.percent_above > thresholds.week_percent]
    if len(over) > thresholds.weeks_allowed:
        reasons.append(
            f"more than {thresholds.week_percent:g} % of values above the VCR in {len(over)} weeks "
            f"(> {thresholds.weeks_allowed})"
        )
    worst = [w for w in weeks if w.percent_above > thresholds.any_week_percent]
    if worst:
        reasons.append(
            f"more than {thresholds.any_week_percent:g} % of values above the VCR in the week of "
            + ", ".join(w.week_start.isoformat() for w in worst)
        )
    return reasons
