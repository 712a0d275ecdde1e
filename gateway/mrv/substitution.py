"""Missing-data substitution for annual totals, and data availability. Pure, no I/O.

regulatory-basis.md §4: a report never treats a missing hour as zero. Every base period (hour or half-hour) without a
valid measurement gets a substitute and the method that produced it, or, when no rule can produce one, stays
None and is reported as unsubstituted (the totals are then marked incomplete).

Methods (configured per source, overridable per parameter):
- EU MRR 2018/2066 Art. 45 (`mrr-mean-2sigma`): the mean of the valid hours of the reporting period plus
  two (sample) standard deviations. For a parameter where a low value is the conservative one
  (`conservative="low"`), the mirror: mean − 2σ, not below the minimum potential value.
- US 40 CFR Part 75 §75.33 (`part75`): the tier table of §4 by percent monitor availability (PMA over the
  previous 8,760 hours) and gap length, with percentiles/maximum over a lookback of quality-assured hours;
  mirror rules (lesser of, 10th/5th percentile, minimum) for `conservative="low"` (moisture, O2).

Operating periods only (`fill_operating`): a period in which the unit did not operate is not missing data
(EU MRR 2018/2066 Art. 43: hourly values are averages over the operating hour; 40 CFR 75.30(a): substitute
whenever the unit combusts fuel). It is neither filled nor a source of the mean, σ, PMA or lookback values,
and the hour before/after a gap is the operating hour before/after it. Without an operating state every
period counts as operating.

Project decisions where the reference leaves room (each stated in the method text of a substituted hour):
- percentiles use the nearest-rank method; load ranges (Part 75 NOx/flow lookback) are not distinguished;
- the "hour after" a gap that runs to the end of the data is missing: the hour before alone is used;
- with no quality-assured hour at all, the maximum (minimum) potential value is used when configured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final, Literal

__all__ = [
    "NOT_OPERATING",
    "FilledPeriod",
    "Method",
    "Point",
    "SubstitutionSpec",
    "availability_percent",
    "fill",
    "fill_mrr",
    "fill_operating",
    "fill_part75",
    "gaps",
    "percentile",
]

PMA_WINDOW_HOURS: Final = 8760
NOT_OPERATING: Final = "not operating"
"""the reason of a non-operating period without a valid value: not missing, not substituted"""
Direction = Literal["high", "low"]


class Method(StrEnum):
    MRR = "mrr-mean-2sigma"
    PART75 = "part75"


@dataclass(frozen=True, slots=True)
class Point:
    """One base period of one parameter as measured: the grid must have every period, missing ones invalid."""

    start: datetime
    value: float | None
    valid: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class FilledPeriod:
    """A base period as used for totals: the measurement, or a substitute with its method."""

    start: datetime
    value: float | None
    """measured value, substitute, or None when no substitute could be produced (never a silent zero)"""
    measured: bool
    method: str = ""
    reason: str = ""
    """why the measurement was not used ("" when measured)"""

    @property
    def substituted(self) -> bool:
        return not self.measured and self.value is not None


@dataclass(frozen=True, slots=True)
class SubstitutionSpec:
    method: Method = Method.MRR
    conservative: Direction = "high"
    max_potential: float | None = None
    min_potential: float = 0.0
    lookback_hours: int = 720
    """Part 75: quality-assured hours for percentiles/maximum (720 for SO2 and CO2, 2,160 for NOx and flow)"""


def availability_percent(points: Sequence[Point], operating: Sequence[bool] | None = None) -> float:
    """Valid base periods as a share of the operating base periods of the period (all without `operating`),
    in % (§4)."""
    if operating is not None:
        points = [p for p, on in zip(points, operating, strict=True) if on]
    if not points:
        return 0.0
    return 100 * sum(1 for p in points if p.valid) / len(points)


def gaps(points: Sequence[Point]) -> list[tuple[int, int]]:
    """[first, last] index pairs of maximal runs of invalid periods."""
    runs: list[tuple[int, int]] = []
    first: int | None = None
    for index, point in enumerate(points):
        if not point.valid:
            if first is None:
                first = index
        elif first is not None:
            runs.append((first, index - 1))
            first = None
    if first is not None:
        runs.append((first, len(points) - 1))
    return runs


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of the values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _measured(point: Point) -> FilledPeriod:
    return FilledPeriod(point.start, point.value, True)


def _potential(spec: SubstitutionSpec, why: str) -> tuple[float | None, str]:
    if spec.conservative == "low":
        return spec.min_potential, f"{why}: minimum potential value {spec.min_potential:g}"
    if spec.max_potential is None:
        return None, f"{why}: no maximum potential value configured, so nothing to substitute"
    return spec.max_potential, f"{why}: maximum potential value {spec.max_potential:g}"


def fill_mrr(points: Sequence[Point], spec: SubstitutionSpec) -> list[FilledPeriod]:
    """EU MRR Art. 45: mean + 2σ of the valid periods of the reporting period for each missing one (§4)."""
    values = [p.value for p in points if p.valid and p.value is not None]
    if not values:
        value, method = _potential(spec, "EU MRR Art. 45: no valid hour in the reporting period")
    else:
        mean = statistics.fmean(values)
        sigma = statistics.stdev(values) if len(values) > 1 else 0.0
        if spec.conservative == "low":
            value = max(spec.min_potential, mean - 2 * sigma)
            formula = f"mean − 2σ = {mean:.6g} − 2 × {sigma:.6g} (mirror rule, low is conservative)"
        else:
            value = mean + 2 * sigma
            formula = f"mean + 2σ = {mean:.6g} + 2 × {sigma:.6g}"
        method = f"EU MRR Art. 45: {formula} over {len(values)} valid hours of the reporting period"
        if len(values) == 1:
            method += " (σ of one value taken as 0)"
    return [_measured(p) if p.valid else FilledPeriod(p.start, value, False, method, p.reason) for p in points]


def _before_after(combined: Sequence[Point], first: int, last: int) -> tuple[float | None, float | None]:
    before = combined[first - 1].value if first > 0 else None
    after = combined[last + 1].value if last + 1 < len(combined) else None
    return before, after


def _part75_value(
    spec: SubstitutionSpec,
    *,
    pma: float | None,
    gap_hours: int,
    before: float | None,
    after: float | None,
    lookback: Sequence[float],
) -> tuple[float | None, str]:
    low = spec.conservative == "low"
    pick = min if low else max
    sides = [v for v in (before, after) if v is not None]
    average = statistics.fmean(sides) if sides else None
    side_text = (
        "the average of the hour before and the hour after"
        if len(sides) == 2
        else "the hour before (no hour after yet)"
        if before is not None
        else "the hour after (no hour before)"
    )
    if pma is None:
        return _potential(spec, "Part 75 §75.33: no monitor history")
    head = f"Part 75 §75.33: PMA {pma:.1f} %, gap {gap_hours} h"
    if pma >= 90:
        short_limit, p_high = (24, 90.0) if pma >= 95 else (8, 95.0)
        if average is None:
            return _potential(spec, f"{head}, no quality-assured hour around the gap")
        if gap_hours <= short_limit:
            return average, f"{head} ≤ {short_limit} h: {side_text}"
        if not lookback:
            return average, f"{head} > {short_limit} h: {side_text} (no lookback hours)"
        p = 100 - p_high if low else p_high
        tile = percentile(lookback, p)
        word = "lesser" if low else "greater"
        return pick(tile, average), (
            f"{head} > {short_limit} h: the {word} of the {p:g}th percentile of {len(lookback)} lookback hours "
            f"({tile:.6g}) and {side_text} ({average:.6g})"
        )
    if pma >= 80:
        if not lookback:
            return _potential(spec, f"{head}, PMA 80–90 % and no lookback hours")
        extreme = pick(lookback)
        return extreme, f"{head}, PMA 80–90 %: {'minimum' if low else 'maximum'} of {len(lookback)} lookback hours"
    return _potential(spec, f"{head}, PMA < 80 %")


def fill_part75(
    points: Sequence[Point], spec: SubstitutionSpec, *, history: Sequence[Point] = ()
) -> list[FilledPeriod]:
    """US 40 CFR Part 75 §75.33 tiers (§4) for every gap in `points`.

    `history` is the grid of base periods just before `points` (up to 8,760 of them): it feeds PMA, the
    lookback and the hour before a gap that starts at the beginning of the period.
    """
    combined = [*history, *points]
    offset = len(history)
    prefix = [0]
    for point in combined:
        prefix.append(prefix[-1] + (1 if point.valid else 0))
    result = [_measured(p) for p in points]
    for first, last in gaps(combined):
        if last < offset:
            continue  # a gap entirely in the history is not ours to fill
        window_start = max(0, first - PMA_WINDOW_HOURS)
        window = first - window_start
        pma = 100 * (prefix[first] - prefix[window_start]) / window if window else None
        before, after = _before_after(combined, first, last)
        lookback = [p.value for p in _last_valid(combined, first, spec.lookback_hours) if p.value is not None]
        value, method = _part75_value(
            spec, pma=pma, gap_hours=last - first + 1, before=before, after=after, lookback=lookback
        )
        for index in range(max(first, offset), last + 1):
            point = combined[index]
            result[index - offset] = FilledPeriod(point.start, value, False, method, point.reason)
    return result


def _last_valid(combined: Sequence[Point], before: int, count: int) -> list[Point]:
    found: list[Point] = []
    for index in range(before - 1, -1, -1):
        if combined[index].valid:
            found.append(combined[index])
            if len(found) == count:
                break
    return found


def fill(points: Sequence[Point], spec: SubstitutionSpec, *, history: Sequence[Point] = ()) -> list[FilledPeriod]:
    """Every period of `points`, measured or substituted by `spec.method`."""
    if spec.method is Method.PART75:
        return fill_part75(points, spec, history=history)
    return fill_mrr(points, spec)


def fill_operating(
    points: Sequence[Point],
    spec: SubstitutionSpec,
    operating: Sequence[bool],
    *,
    history: Sequence[Point] = (),
    history_operating: Sequence[bool] | None = None,
) -> list[FilledPeriod]:
    """`fill` over the operating periods only: every other period comes back as measured when it has a valid
    value (shown, never used for substitutes) or with no value and the reason NOT_OPERATING, never substituted."""
    if len(operating) != len(points):
        raise ValueError(f"{len(operating)} operating flags for {len(points)} periods")
    past = history
    if history_operating is not None:
        past = [p for p, on in zip(history, history_operating, strict=True) if on]
    filled = iter(fill([p for p, on in zip(points, operating, strict=True) if on], spec, history=past))
    result: list[FilledPeriod] = []
    for point, on in zip(points, operating, strict=True):
        if on:
            result.append(next(filled))
        elif point.valid:
            result.append(_measured(point))
        else:
            result.append(FilledPeriod(point.start, None, False, "", NOT_OPERATING))
    return result
