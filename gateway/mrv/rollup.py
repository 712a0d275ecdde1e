"""Rollups: raw samples → 1-minute → base period (hour or half-hour) → day → month and year. Pure, no I/O.

docs/regulatory-basis.md §3: every average carries its validity flag, the number of valid samples (or sub-periods), how
many were expected and, when invalid, why. Averages use only valid samples: `Quality.usable` decides, so
`check_function` (calibration, maintenance) and `failure` samples never enter an average.

Levels and what each counts (`n_valid` / `n_expected`):

| level | built from | n_valid | n_expected | n_maintenance |
|---|---|---|---|---|
| 1m | raw samples | usable samples with a value | samples received | check_function samples |
| 30m/1h (base) | valid minutes | valid minutes | minutes in the period (30/60) | invalid minutes with maintenance |
| 1d | base periods | valid base periods | base periods in the local day | invalid base periods with maintenance |
| 1mo, 1y | days | valid base periods | base periods in the local month/year | invalid base periods with maintenance |

A period's `value` is the mean of its valid sub-values (each valid minute, hour, … weighs the same; month and
year means weigh each day by its valid hours, so they equal the mean of the valid hours). It is kept when the
period itself is invalid (too few valid sub-values) and is None when nothing was valid or the mean is no finite
number (the reason says so): read `valid`. Means use math.fsum, so the order samples arrive in cannot change a
result, and no finite input makes a rollup raise.

Minutes and base periods are aligned in UTC; days, months and years follow the site's local calendar (a
ZoneInfo), so a local day can have 23 or 25 hours (Asia/Almaty had 25 on 2024-02-29 when it moved to UTC+5).
A base period belongs to the local day its start falls in.

Rule sets are data (`RuleSet`, `RULE_SETS`): EU IED / EN 14181 for large combustion plants and waste
incineration, US 40 CFR Part 75 (15-minute quadrants), ambient air (2008/50/EC, 75 % / 90 % capture).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Final, Protocol

from aua_contract import Quality

__all__ = [
    "RULE_SETS",
    "Aggregate",
    "BaseRule",
    "Part",
    "Period",
    "RawSample",
    "RuleSet",
    "Running",
    "base_aggregates",
    "base_aggregates_from_samples",
    "base_duration",
    "base_starts",
    "day_aggregates",
    "day_bounds",
    "floor_base",
    "local_date",
    "minute_aggregates",
    "month_aggregates",
    "month_bounds",
    "part_of",
    "year_aggregates",
    "year_bounds",
]


class Period(StrEnum):
    """Averaging periods; the value is the tag stored with each aggregate."""

    MINUTE = "1m"
    HALF_HOUR = "30m"
    HOUR = "1h"
    DAY = "1d"
    MONTH = "1mo"
    YEAR = "1y"


BASE_PERIODS: Final = (Period.HALF_HOUR, Period.HOUR)
_MINUTE: Final = timedelta(minutes=1)
_FIXED: Final = {Period.MINUTE: _MINUTE, Period.HALF_HOUR: timedelta(minutes=30), Period.HOUR: timedelta(hours=1)}
_EPSILON: Final = 1e-9


def base_duration(period: Period) -> timedelta:
    """Length of a minute, half-hour or hour period."""
    try:
        return _FIXED[period]
    except KeyError:
        raise ValueError(f"{period} has no fixed length (days, months and years follow the local calendar)") from None


class RawSample(Protocol):
    """What minute aggregation reads from a stored reading (gateway.stores.StoredReading fits)."""

    @property
    def site(self) -> str: ...
    @property
    def instrument(self) -> str: ...
    @property
    def parameter(self) -> str: ...
    @property
    def ts(self) -> datetime: ...
    @property
    def value(self) -> float | None: ...
    @property
    def unit(self) -> str: ...
    @property
    def quality(self) -> Quality: ...


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One average of one parameter of one instrument over one period. `start` is UTC.

    Identity: (site, instrument, parameter, period, start); writing it again replaces it.
    `substituted`/`method` mark a value that replaces missing data (docs/regulatory-basis.md §4); measured aggregates
    have substituted=False and method "".
    """

    site: str
    instrument: str
    parameter: str
    period: Period
    start: datetime
    value: float | None
    n_valid: int
    n_expected: int
    valid: bool
    reason: str = ""
    n_maintenance: int = 0
    unit: str = ""
    substituted: bool = False
    method: str = ""
    n_flagged: int = 0
    """of the n_valid parts, those whose value carries a usable-but-flagged quality (maintenance_required,
    out_of_specification, spike, …: docs/regulatory-basis.md §3 "used but flagged"), so the flag survives averaging"""

    @property
    def key(self) -> tuple[str, str, str, Period, datetime]:
        return (self.site, self.instrument, self.parameter, self.period, self.start)

    @property
    def series(self) -> tuple[str, str, str]:
        return (self.site, self.instrument, self.parameter)

    @property
    def in_maintenance(self) -> bool:
        """Invalid, and maintenance (check_function) had a part in it: counted as maintenance one level up."""
        return not self.valid and self.n_maintenance > 0


class BaseRule(StrEnum):
    CAPTURE = "capture"
    """valid when enough of the period's minutes are valid (IED/EN 14181, ambient)"""
    QUADRANTS = "quadrants"
    """valid with a valid minute in each 15-minute quadrant; two points ≥ 15 min apart in a maintenance hour"""


@dataclass(frozen=True, slots=True)
class RuleSet:
    """How averages become valid or invalid (docs/regulatory-basis.md §3). Configuration data, not code."""

    name: str
    citation: str
    base: Period = Period.HOUR
    minute_min_fraction: float = 0.5
    """a minute is valid when at least this share of the samples received in it is usable (project choice)"""
    base_rule: BaseRule = BaseRule.CAPTURE
    base_min_capture: float = 2 / 3
    """CAPTURE rule: share of the base period's minutes that must be valid"""
    day_max_invalid: int | None = 3
    """a day is invalid when more base periods than this are invalid or missing"""
    day_min_capture: float | None = None
    long_min_capture: float | None = None
    """months and years: share of base periods that must be valid"""
    year_max_invalid_days: int | None = 10
    """more invalid days than this in a year: the year is flagged (the operator must act)"""
    exclude_maintenance: bool = False
    """capture is counted without the periods lost to calibration/maintenance (ambient, 2008/50/EC Annex I)"""
    sample_interval_s: float = 60.0
    """the measuring cycle of the series: a base period expects one sample per cycle (§3: "enough of its
    samples"), e.g. 12 an hour from a Tekran-class mercury analyzer's 5-minute cycle; 60 s or less: one a minute"""

    def __post_init__(self) -> None:
        if self.base not in BASE_PERIODS:
            raise ValueError(f"rule set {self.name!r}: base must be 30m or 1h, not {self.base}")
        if self.base_rule is BaseRule.QUADRANTS and self.base is not Period.HOUR:
            raise ValueError(f"rule set {self.name!r}: the quadrant rule (Part 75) needs hourly base periods")
        cycle = timedelta(seconds=self.sample_interval_s)
        if not timedelta(0) < cycle <= base_duration(self.base) or base_duration(self.base) % max(cycle, _MINUTE):
            raise ValueError(
                f"rule set {self.name!r}: sample_interval_s {self.sample_interval_s:g} must divide the "
                f"{self.base} base period"
            )
        for name in ("minute_min_fraction", "base_min_capture", "day_min_capture", "long_min_capture"):
            fraction = getattr(self, name)
            if fraction is not None and not 0 < fraction <= 1:
                raise ValueError(f"rule set {self.name!r}: {name} must be in (0, 1], got {fraction}")

    def with_changes(self, **changes: object) -> RuleSet:
        return replace(self, **changes)  # type: ignore[arg-type]


RULE_SETS: Final[Mapping[str, RuleSet]] = {
    "ied-lcp": RuleSet(
        name="ied-lcp",
        citation="EU IED 2010/75/EU Annex V, EN 14181 (regulatory-basis.md §3): hour valid with ≥ 2/3 valid minutes; "
        "day invalid with > 3 invalid hours; > 10 invalid days a year need action",
    ),
    "ied-wi": RuleSet(
        name="ied-wi",
        citation="EU IED 2010/75/EU Annex VI, EN 14181 (regulatory-basis.md §3): half-hour valid with ≥ 2/3 valid "
        "minutes; "
        "day invalid with > 5 discarded half-hours; > 10 invalid days a year need action",
        base=Period.HALF_HOUR,
        day_max_invalid=5,
    ),
    "mrr": RuleSet(
        name="mrr",
        citation="EU MRR 2018/2066 Art. 44 (docs/regulatory-basis.md §3): hour valid with ≥ 80 % valid minutes",
        base_min_capture=0.8,
        day_max_invalid=None,
        year_max_invalid_days=None,
    ),
    "part75": RuleSet(
        name="part75",
        citation="US 40 CFR Part 75 §75.10(d) (regulatory-basis.md §3): a valid minute in each 15-minute quadrant; "
        "in a maintenance hour two valid points ≥ 15 minutes apart",
        base_rule=BaseRule.QUADRANTS,
        day_max_invalid=None,
        year_max_invalid_days=None,
    ),
    "ambient": RuleSet(
        name="ambient",
        citation="EU 2008/50/EC Annex I (docs/regulatory-basis.md §3): 1-hour and 24-hour values need ≥ 75 % capture, "
        "annual means ≥ 90 %, calibration and maintenance excluded",
        base_min_capture=0.75,
        day_max_invalid=None,
        day_min_capture=0.75,
        long_min_capture=0.9,
        year_max_invalid_days=None,
        exclude_maintenance=True,
    ),
}


# -- calendar ------------------------------------------------------------------------------------------------


def floor_base(ts: datetime, base: Period) -> datetime:
    """Start of the minute, half-hour or hour `ts` (UTC) falls in."""
    if base is Period.HOUR:
        return ts.replace(minute=0, second=0, microsecond=0)
    if base is Period.HALF_HOUR:
        return ts.replace(minute=ts.minute - ts.minute % 30, second=0, microsecond=0)
    if base is Period.MINUTE:
        return ts.replace(second=0, microsecond=0)
    raise ValueError(f"{base} is not a fixed period")


def base_starts(start: datetime, end: datetime, base: Period) -> list[datetime]:
    """UTC starts of the base periods that begin in [start, end)."""
    step = base_duration(base)
    first = floor_base(start.astimezone(UTC), base)
    if first < start:
        first += step
    count = max(0, math.ceil((end - first) / step))
    return [first + i * step for i in range(count)]


def _count_base(start: datetime, end: datetime, base: Period) -> int:
    step = base_duration(base)
    first = floor_base(start.astimezone(UTC), base)
    if first < start:
        first += step
    return max(0, math.ceil((end - first) / step))


def local_date(ts: datetime, tz: tzinfo) -> date:
    return ts.astimezone(tz).date()


def _local_midnight(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def day_bounds(day: date, tz: tzinfo) -> tuple[datetime, datetime]:
    """UTC [start, end) of a local calendar day."""
    return _local_midnight(day, tz), _local_midnight(day + timedelta(days=1), tz)


def month_bounds(year: int, month: int, tz: tzinfo) -> tuple[datetime, datetime]:
    following = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return _local_midnight(date(year, month, 1), tz), _local_midnight(following, tz)


def year_bounds(year: int, tz: tzinfo) -> tuple[datetime, datetime]:
    return _local_midnight(date(year, 1, 1), tz), _local_midnight(date(year + 1, 1, 1), tz)


# -- shared arithmetic ---------------------------------------------------------------------------------------


def _enough(count: int, of: int, fraction: float) -> bool:
    """count/of ≥ fraction, without 2/3-style rounding surprises."""
    return of > 0 and count >= fraction * of - _EPSILON


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.4g} %"


def _mean(values: Sequence[float]) -> float | None:
    """The mean of `values`, exact to rounding and independent of their order; None when there are none or it is
    no finite number. Never raises."""
    if not values:
        return None
    try:
        mean = math.fsum(values) / len(values)
    except (OverflowError, ValueError):
        mean = math.nan
    return mean if math.isfinite(mean) else _scaled_mean([(value, 1) for value in values], len(values))


def _weighted_mean(pairs: Sequence[tuple[float, int]], total_weight: int) -> float | None:
    """Σ value·weight / total_weight; None when it is no finite number. Never raises."""
    try:
        mean = math.fsum(value * weight for value, weight in pairs) / total_weight
    except (OverflowError, ValueError):
        mean = math.nan
    return mean if math.isfinite(mean) else _scaled_mean(pairs, total_weight)


def _scaled_mean(pairs: Sequence[tuple[float, int]], total_weight: int) -> float | None:
    """The mean again, each value scaled down by a power of two first: finite whenever the mean is.

    The contract bounds values (|value| ≤ 1e15), so sums stay finite; a store may still hold older values near
    ±1.8e308, whose sum overflows (fsum raises OverflowError, or ValueError for inf − inf). An exception here
    would end the gateway on every restart (rollup marks are durable); a mean that is still no finite number
    (a NaN, an infinity in the data) makes the caller's average invalid with a reason instead.
    """
    shift = total_weight.bit_length() + 1  # scaling by 2**-shift is exact and keeps Σ|value|·weight ≤ max/2
    try:
        mean = math.ldexp(
            math.fsum(math.ldexp(value, -shift) * weight for value, weight in pairs) / total_weight, shift
        )
    except (OverflowError, ValueError):
        return None
    return mean if math.isfinite(mean) else None


def _no_finite_mean(count: int, what: str) -> str:
    return f"the mean of {count} {what} is no finite number"


# -- 1 minute from raw samples -------------------------------------------------------------------------------


_USABLE: Final = frozenset(quality for quality in Quality if quality.usable)

_SampleKey = tuple[str, str, str, datetime]
_MinuteStat = tuple[float | None, int, int, int, bool, str, str, int]
"""value, n_valid, n_total, n_check, valid, reason, unit, n_flagged"""


def _by_ts(sample: RawSample) -> datetime:
    return sample.ts


def _group_minutes(samples: Iterable[RawSample]) -> list[tuple[_SampleKey, list[RawSample]]]:
    """(site, instrument, parameter, minute) → its samples, in key order.

    Series first (string keys), then runs of one minute over the time-sorted samples: aware datetimes are never
    hashed (each hash calls utcoffset), which makes this several times faster on a year of data.
    """
    by_series: dict[tuple[str, str, str], list[RawSample]] = defaultdict(list)
    for sample in samples:
        by_series[(sample.site, sample.instrument, sample.parameter)].append(sample)
    groups: list[tuple[_SampleKey, list[RawSample]]] = []
    for series in sorted(by_series):
        items = by_series[series]
        items.sort(key=_by_ts)  # linear on the store's already sorted answer
        current: datetime | None = None
        bucket: list[RawSample] = []
        for sample in items:
            ts = sample.ts
            if ts.second or ts.microsecond:  # replace() is slow; 1-minute data needs none
                ts = ts.replace(second=0, microsecond=0)
            if ts != current:
                current = ts
                bucket = []
                groups.append(((*series, ts), bucket))
            bucket.append(sample)
    return groups


def _minute_stat(samples: list[RawSample], min_fraction: float) -> _MinuteStat:
    if len(samples) == 1:  # the common case with 1-minute raw data
        only = samples[0]
        if only.quality in _USABLE and only.value is not None:
            return (only.value, 1, 1, 0, True, "", only.unit, 0 if only.quality is Quality.OK else 1)
        check = 1 if only.quality is Quality.CHECK_FUNCTION else 0
        problem = only.quality.value if only.value is not None or only.quality not in _USABLE else "no value"
        return (None, 0, 1, check, False, f"no usable sample (1 {problem})", only.unit, 0)
    units = {sample.unit for sample in samples}
    unit = min(units)
    usable = [s for s in samples if s.quality in _USABLE and s.value is not None]
    values = [s.value for s in usable if s.value is not None]
    n_flagged = sum(1 for s in usable if s.quality is not Quality.OK)
    n_total = len(samples)
    n_check = sum(1 for s in samples if s.quality is Quality.CHECK_FUNCTION)
    if len(units) > 1:
        problem = f"samples in different units: {', '.join(sorted(units))}"
        return (None, 0, n_total, n_check, False, problem, unit, 0)
    value = _mean(values)
    if values and value is None:
        return (None, len(values), n_total, n_check, False, _no_finite_mean(len(values), "samples"), unit, n_flagged)
    if not values:
        problems = Counter(
            s.quality.value if s.value is not None or s.quality not in _USABLE else "no value" for s in samples
        )
        detail = ", ".join(f"{count} {name}" for name, count in sorted(problems.items()))
        return (None, 0, n_total, n_check, False, f"no usable sample ({detail})", unit, 0)
    if not _enough(len(values), n_total, min_fraction):
        reason = f"{len(values)} of {n_total} samples usable (< {_percent(min_fraction)})"
        return (value, len(values), n_total, n_check, False, reason, unit, n_flagged)
    return (value, len(values), n_total, n_check, True, "", unit, n_flagged)


def minute_aggregates(samples: Iterable[RawSample], *, min_fraction: float = 0.5) -> list[Aggregate]:
    """1-minute averages of raw samples, one per (site, instrument, parameter, minute), in key order.

    Samples that are not `usable` (check_function, failure, out_of_range) or carry no value are excluded;
    a minute is valid when at least `min_fraction` of the samples received in it are usable.
    """
    result = []
    for (site, instrument, parameter, start), group in _group_minutes(samples):
        value, n_valid, n_total, n_check, valid, reason, unit, n_flagged = _minute_stat(group, min_fraction)
        result.append(
            Aggregate(
                site,
                instrument,
                parameter,
                Period.MINUTE,
                start,
                value,
                n_valid,
                n_total,
                valid,
                reason,
                n_check,
                unit,
                n_flagged=n_flagged,
            )
        )
    return result


# -- base period (hour or half-hour) from minutes ------------------------------------------------------------

_Sub = tuple[datetime, float | None, bool, bool, bool]
"""a sub-period as the level above sees it: start, value, valid, in maintenance, flagged"""


def _capture_verdict(
    n_valid: int, n_expected: int, n_maintenance: int, *, fraction: float, rules: RuleSet, unit_name: str
) -> tuple[bool, str]:
    basis = n_expected - n_maintenance if rules.exclude_maintenance else n_expected
    if n_valid == 0:
        return False, f"no valid {unit_name}" + (f" ({n_maintenance} in maintenance)" if n_maintenance else "")
    if _enough(n_valid, basis, fraction):
        return True, ""
    detail = f"{n_valid} of {basis} {unit_name} valid (< {_percent(fraction)})"
    if n_maintenance:
        detail += f"; {n_maintenance} in maintenance" + (" (not counted)" if rules.exclude_maintenance else "")
    return False, detail


def _quadrant_verdict(start: datetime, valid_starts: list[datetime], maintenance: bool) -> tuple[bool, str]:
    quadrants = {int((ts - start) / timedelta(minutes=15)) for ts in valid_starts}
    if quadrants >= {0, 1, 2, 3}:
        return True, ""
    if maintenance and valid_starts and max(valid_starts) - min(valid_starts) >= timedelta(minutes=15):
        return True, ""
    missing = ", ".join(str(q + 1) for q in range(4) if q not in quadrants)
    if maintenance:
        return False, f"maintenance hour without two valid minutes ≥ 15 min apart (quadrants {missing} empty)"
    return False, f"no valid minute in quadrant(s) {missing} of the hour"


def _base_from_subs(
    series: tuple[str, str, str], start: datetime, subs: Sequence[_Sub], unit: str, rules: RuleSet
) -> Aggregate:
    valid_values = [value for _, value, valid, _, _ in subs if valid and value is not None]
    return _base_result(
        series,
        start,
        rules,
        unit=unit,
        n_valid=len(valid_values),
        n_maintenance=sum(1 for _, _, valid, maintenance, _ in subs if maintenance and not valid),
        n_flagged=sum(1 for _, value, valid, _, flagged in subs if valid and value is not None and flagged),
        value=_mean(valid_values),
        valid_starts=[s for s, _, valid, _, _ in subs if valid],
    )


def _base_result(
    series: tuple[str, str, str],
    start: datetime,
    rules: RuleSet,
    *,
    unit: str,
    n_valid: int,
    n_maintenance: int,
    n_flagged: int,
    value: float | None,
    valid_starts: list[datetime],
) -> Aggregate:
    """A base period from its counts and mean: the one place its validity is decided (full or running)."""
    cycle = timedelta(seconds=rules.sample_interval_s)
    expected = int(base_duration(rules.base) / max(cycle, _MINUTE))
    if rules.base_rule is BaseRule.QUADRANTS:
        ok, reason = _quadrant_verdict(start, valid_starts, n_maintenance > 0)
    else:
        ok, reason = _capture_verdict(
            n_valid,
            expected,
            n_maintenance,
            fraction=rules.base_min_capture,
            rules=rules,
            unit_name="minutes" if cycle <= _MINUTE else f"{cycle.total_seconds():g}-second samples",
        )
    if n_valid and value is None:
        ok, reason = False, _no_finite_mean(n_valid, "valid sub-periods")
    site, instrument, parameter = series
    return Aggregate(
        site,
        instrument,
        parameter,
        rules.base,
        start,
        value,
        n_valid,
        expected,
        ok,
        reason,
        n_maintenance,
        unit,
        n_flagged=n_flagged,
    )


def base_aggregates(minutes: Iterable[Aggregate], rules: RuleSet) -> list[Aggregate]:
    """Base-period (hour or half-hour, as the rule set says) aggregates of 1-minute aggregates, in key order."""
    groups: dict[tuple[tuple[str, str, str], datetime], list[Aggregate]] = defaultdict(list)
    for minute in minutes:
        if minute.period is not Period.MINUTE:
            raise ValueError(f"base aggregates are built from 1-minute aggregates, got {minute.period}")
        groups[(minute.series, floor_base(minute.start, rules.base))].append(minute)
    result = []
    for (series, start), group in sorted(groups.items()):
        subs = [(m.start, m.value, m.valid, m.in_maintenance, m.n_flagged > 0) for m in group]
        result.append(_base_from_subs(series, start, subs, _unit_of(group), rules))
    return result


def base_aggregates_from_samples(samples: Iterable[RawSample], rules: RuleSet) -> list[Aggregate]:
    """The same base aggregates as base_aggregates(minute_aggregates(samples)), without building the minutes.

    For recomputing a year from raw data (the report's reproducibility check) in bounded time.
    """
    result = []
    subs: list[_Sub] = []
    units: list[str] = []
    step = base_duration(rules.base)
    series: tuple[str, str, str] | None = None
    period_start = period_end = datetime.min.replace(tzinfo=UTC)
    for (site, instrument, parameter, start), group in _group_minutes(samples):  # in series, then time order
        value, _, _, n_check, valid, _, unit, n_flagged = _minute_stat(group, rules.minute_min_fraction)
        here = (site, instrument, parameter)
        if here != series or not period_start <= start < period_end:  # floor_base only once per base period
            if series is not None:
                result.append(_base_from_subs(series, period_start, subs, min(units), rules))
            series, period_start, subs, units = here, floor_base(start, rules.base), [], []
            period_end = period_start + step
        subs.append((start, value, valid, not valid and n_check > 0, n_flagged > 0))
        units.append(unit)
    if series is not None:
        result.append(_base_from_subs(series, period_start, subs, min(units), rules))
    return result


def _unit_of(aggregates: Sequence[Aggregate]) -> str:
    return min((a.unit for a in aggregates), default="")


# -- day, month, year ----------------------------------------------------------------------------------------


def _calendar_aggregate(
    series: tuple[str, str, str],
    period: Period,
    bounds: tuple[datetime, datetime],
    parts: Sequence[Aggregate],
    rules: RuleSet,
) -> Aggregate:
    """Day from base periods (each weighs 1), or month/year from days (each weighs its valid base periods)."""
    if period is Period.DAY:
        weighted = [(a.value, 1) for a in parts if a.valid and a.value is not None]
        n_maintenance = sum(1 for a in parts if a.in_maintenance)
        n_flagged = sum(1 for a in parts if a.valid and a.value is not None and a.n_flagged > 0)
    else:
        weighted = [(a.value, a.n_valid) for a in parts if a.value is not None and a.n_valid > 0]
        n_maintenance = sum(a.n_maintenance for a in parts)
        n_flagged = sum(a.n_flagged for a in parts if a.value is not None and a.n_valid > 0)
    n_valid = sum(weight for _, weight in weighted)
    return _calendar_result(
        series,
        period,
        bounds,
        rules,
        unit=_unit_of(parts),
        n_valid=n_valid,
        n_maintenance=n_maintenance,
        n_flagged=n_flagged,
        valid_parts=sum(1 for part in parts if part.valid),
        value=_weighted_mean(weighted, n_valid) if n_valid else None,
    )


def _calendar_result(
    series: tuple[str, str, str],
    period: Period,
    bounds: tuple[datetime, datetime],
    rules: RuleSet,
    *,
    unit: str,
    n_valid: int,
    n_maintenance: int,
    n_flagged: int,
    valid_parts: int,
    value: float | None,
) -> Aggregate:
    """A day, month or year from its counts and mean: the one place its validity is decided (full or running)."""
    start, _ = bounds
    expected = _count_base(start, bounds[1], rules.base)
    ok, reason = _calendar_verdict(
        period,
        n_valid=n_valid,
        expected=expected,
        n_maintenance=n_maintenance,
        valid_parts=valid_parts,
        bounds=bounds,
        rules=rules,
    )
    if n_valid and value is None:
        ok, reason = False, _no_finite_mean(n_valid, "valid base periods")
    site, instrument, parameter = series
    return Aggregate(
        site,
        instrument,
        parameter,
        period,
        start,
        value,
        n_valid,
        expected,
        ok,
        reason,
        n_maintenance,
        unit,
        n_flagged=n_flagged,
    )


def _calendar_verdict(
    period: Period,
    *,
    n_valid: int,
    expected: int,
    n_maintenance: int,
    valid_parts: int,
    bounds: tuple[datetime, datetime],
    rules: RuleSet,
) -> tuple[bool, str]:
    """`valid_parts`: the valid sub-periods (days, for a year's invalid-day rule)."""
    label = "half-hours" if rules.base is Period.HALF_HOUR else "hours"
    if n_valid == 0:
        return False, f"no valid {label}"
    if period is Period.DAY:
        invalid = expected - n_valid
        if rules.day_max_invalid is not None and invalid > rules.day_max_invalid:
            return False, f"{invalid} {label} invalid or missing (> {rules.day_max_invalid})"
        if rules.day_min_capture is not None:
            return _capture_verdict(
                n_valid, expected, n_maintenance, fraction=rules.day_min_capture, rules=rules, unit_name=label
            )
        return True, ""
    problems = []
    if rules.long_min_capture is not None:
        ok, reason = _capture_verdict(
            n_valid, expected, n_maintenance, fraction=rules.long_min_capture, rules=rules, unit_name=label
        )
        if not ok:
            problems.append(reason)
    if period is Period.YEAR and rules.year_max_invalid_days is not None:
        start, end = bounds
        days = round((end - start) / timedelta(days=1))
        invalid_days = days - valid_parts
        if invalid_days > rules.year_max_invalid_days:
            problems.append(
                f"{invalid_days} invalid or missing days (> {rules.year_max_invalid_days}: the operator must act)"
            )
    return (not problems), "; ".join(problems)


def _group_by_series(aggregates: Iterable[Aggregate], period: Period) -> dict[tuple[str, str, str], list[Aggregate]]:
    groups: dict[tuple[str, str, str], list[Aggregate]] = defaultdict(list)
    for aggregate in aggregates:
        if aggregate.period is not period:
            raise ValueError(f"expected {period} aggregates, got {aggregate.period}")
        groups[aggregate.series].append(aggregate)
    return groups


def day_aggregates(base: Iterable[Aggregate], rules: RuleSet, tz: tzinfo) -> list[Aggregate]:
    """Local-day aggregates of base-period aggregates (all base periods of a day should be given)."""
    result = []
    for series, items in sorted(_group_by_series(base, rules.base).items()):
        days: dict[date, list[Aggregate]] = defaultdict(list)
        for item in items:
            days[local_date(item.start, tz)].append(item)
        for day, parts in sorted(days.items()):
            result.append(_calendar_aggregate(series, Period.DAY, day_bounds(day, tz), parts, rules))
    return result


def month_aggregates(days: Iterable[Aggregate], rules: RuleSet, tz: tzinfo) -> list[Aggregate]:
    """Local-month aggregates of day aggregates (all days of a month should be given)."""
    result = []
    for series, items in sorted(_group_by_series(days, Period.DAY).items()):
        months: dict[tuple[int, int], list[Aggregate]] = defaultdict(list)
        for item in items:
            local = local_date(item.start, tz)
            months[(local.year, local.month)].append(item)
        for (year, month), parts in sorted(months.items()):
            result.append(_calendar_aggregate(series, Period.MONTH, month_bounds(year, month, tz), parts, rules))
    return result


def year_aggregates(days: Iterable[Aggregate], rules: RuleSet, tz: tzinfo) -> list[Aggregate]:
    """Local-year aggregates of day aggregates (all days of a year should be given)."""
    result = []
    for series, items in sorted(_group_by_series(days, Period.DAY).items()):
        years: dict[int, list[Aggregate]] = defaultdict(list)
        for item in items:
            years[local_date(item.start, tz).year].append(item)
        for year, parts in sorted(years.items()):
            result.append(_calendar_aggregate(series, Period.YEAR, year_bounds(year, tz), parts, rules))
    return result


# -- running aggregates of open periods ----------------------------------------------------------------------

_FIXED_POINT: Final = 1074
"""every finite double is a whole multiple of 2**-1074, so sums in these units are exact Python ints"""
_EXACT_LIMIT: Final = 1 << (_FIXED_POINT + 1000)
"""past |Σ| = 2**1000 fsum may overflow in an intermediate step where the exact sum does not: rebuild instead"""


def _fixed(x: float) -> int | None:
    """x in units of 2**-1074, exactly; None for an infinity or NaN."""
    if not math.isfinite(x):
        return None
    numerator, denominator = x.as_integer_ratio()  # denominator: a power of two ≤ 2**1074
    return numerator << (_FIXED_POINT - denominator.bit_length() + 1)


@dataclass(frozen=True, slots=True)
class Part:
    """What one child aggregate adds to its parent, counted exactly as the full rollup counts it."""

    index: int
    """minute of the base period (for the quadrant rule); 0 above the base level"""
    value: float | None
    valid: bool
    weight: int
    """valid base periods (or minutes) it brings to the mean; 0: not in the mean"""
    product: int | None
    """value·weight (the float product, as the full rollup forms it) in units of 2**-1074; None: not finite"""
    maintenance: int
    flagged: int
    unit: str


def part_of(child: Aggregate, parent: Period, parent_start: datetime) -> Part:
    """`child`'s part in a `parent` period: a minute in a base period, a base period in a day, a day in a month or
    year (the same rules as base_aggregates, day_aggregates, month_aggregates and year_aggregates)."""
    if parent in BASE_PERIODS or parent is Period.DAY:
        counted = child.valid and child.value is not None
        weight = 1 if counted else 0
        product = child.value * 1 if counted and child.value is not None else 0.0
        maintenance = 1 if child.in_maintenance else 0
        flagged = 1 if counted and child.n_flagged > 0 else 0
    else:
        counted = child.value is not None and child.n_valid > 0
        weight = child.n_valid if counted else 0
        product = child.value * child.n_valid if counted and child.value is not None else 0.0
        maintenance = child.n_maintenance
        flagged = child.n_flagged if counted else 0
    index = (child.start - parent_start) // _MINUTE if parent in BASE_PERIODS else 0
    return Part(index, child.value, child.valid, weight, _fixed(product), maintenance, flagged, child.unit)


class MinuteParts:
    """A base period's minute parts, kept compactly and rebuilt on demand exactly as `part_of` forms them.

    Why: a Part object costs ~320 B (its exact product is a ~1,100-bit integer), so two open hours of 60 minutes
    for each of 15,000 series held ~570 MB; a base-level part is fully determined by its minute, value, unit and
    three flags, which fit in one float per minute and a few bit masks (~0.8 kB per open hour).
    """

    __slots__ = ("_flagged", "_maintenance", "_none", "_present", "_unit", "_units", "_valid", "_values")

    def __init__(self) -> None:
        self._values = array("d")
        self._present = 0
        self._none = 0
        self._valid = 0
        self._maintenance = 0
        self._flagged = 0
        self._unit = ""
        self._units: dict[int, str] | None = None
        """minutes whose unit differs from `_unit` (rare: a unit change within the hour)"""

    def __len__(self) -> int:
        return self._present.bit_count()

    def get(self, index: int) -> Part | None:
        bit = 1 << index
        if not self._present & bit:
            return None
        value = None if self._none & bit else self._values[index]
        valid = bool(self._valid & bit)
        counted = valid and value is not None
        product = value * 1 if counted and value is not None else 0.0
        unit = self._units.get(index, self._unit) if self._units else self._unit
        return Part(
            index,
            value,
            valid,
            1 if counted else 0,
            _fixed(product),
            1 if self._maintenance & bit else 0,
            1 if self._flagged & bit else 0,
            unit,
        )

    def set(self, part: Part) -> None:
        """Keep a base-level part (as `part_of` makes them: weight 1 exactly when valid with a value)."""
        index, bit = part.index, 1 << part.index
        if len(self._values) <= index:
            self._values.extend([0.0] * (index + 1 - len(self._values)))
        self._values[index] = 0.0 if part.value is None else part.value
        if not self._present:
            self._unit = part.unit
        self._present |= bit
        self._none = self._none | bit if part.value is None else self._none & ~bit
        self._valid = self._valid | bit if part.valid else self._valid & ~bit
        self._maintenance = self._maintenance | bit if part.maintenance else self._maintenance & ~bit
        self._flagged = self._flagged | bit if part.flagged else self._flagged & ~bit
        if part.unit != self._unit:
            self._units = self._units or {}
            self._units[index] = part.unit
        elif self._units:
            self._units.pop(index, None)

    def pop(self, index: int) -> None:
        bit = 1 << index
        self._present &= ~bit
        if self._units:
            self._units.pop(index, None)

    def parts(self) -> list[Part]:
        """Every kept part, in minute order."""
        found = []
        present = self._present
        while present:
            low = present & -present
            part = self.get(low.bit_length() - 1)
            assert part is not None
            found.append(part)
            present ^= low
        return found


@dataclass(slots=True)
class Running:
    """One open period's totals over its children, updated by the children that changed.

    `aggregate()` equals what base_aggregates / day_aggregates / month_aggregates / year_aggregates give for
    the same children, bit for bit: the mean's sum is kept exactly (integers in units of 2**-1074) and rounded
    once, as math.fsum rounds it. Where that cannot hold (a child that is no finite number, a sum past 2**1000)
    the base level rebuilds from the parts it keeps; the levels above answer None and the caller rebuilds from
    the stored children. Work per update is constant however far into the period the update comes.
    """

    series: tuple[str, str, str]
    period: Period
    start: datetime
    end: datetime
    units: Counter[str] = field(default_factory=Counter)
    children: int = 0
    total: int = 0
    weight: int = 0
    not_finite: int = 0
    n_maintenance: int = 0
    n_flagged: int = 0
    valid_parts: int = 0
    valid_mask: int = 0
    """base level: bit m set when minute m of the period is valid"""
    parts: MinuteParts | None = None
    """base level: each minute's part, the old one a recomputed minute replaces"""
    last: Aggregate | None = None
    """the aggregate last stored for the period: what the level above counts for it"""

    @classmethod
    def of(cls, series: tuple[str, str, str], period: Period, start: datetime, end: datetime) -> Running:
        return cls(series, period, start, end, parts=MinuteParts() if period in BASE_PERIODS else None)

    def replace(self, old: Part | None, new: Part | None) -> None:
        """A child changed from `old` (None: it did not exist) to `new` (None: it is gone)."""
        if old is not None:
            self._count(old, -1)
        if new is not None:
            self._count(new, 1)
            if self.parts is not None:
                self.parts.set(new)
        elif old is not None and self.parts is not None:
            self.parts.pop(old.index)

    def put(self, new: Part) -> None:
        """Base level: a minute's new part, replacing the one it had (kept in `parts`)."""
        assert self.parts is not None, "only base periods keep their parts"
        self.replace(self.parts.get(new.index), new)

    def _count(self, part: Part, sign: int) -> None:
        self.children += sign
        self.units[part.unit] += sign
        if not self.units[part.unit]:
            del self.units[part.unit]
        if part.product is None:
            self.not_finite += sign
        else:
            self.total += sign * part.product
        self.weight += sign * part.weight
        self.n_maintenance += sign * part.maintenance
        self.n_flagged += sign * part.flagged
        if part.valid:
            self.valid_parts += sign
            if self.parts is not None:
                self.valid_mask ^= 1 << part.index

    def _mean(self) -> tuple[bool, float | None]:
        """(exact, Σ/weight rounded as the full rollup rounds it)."""
        if self.not_finite or abs(self.total) >= _EXACT_LIMIT:
            return False, None
        if not self.weight:
            return True, None
        return True, self.total / (1 << _FIXED_POINT) / self.weight

    def aggregate(self, rules: RuleSet) -> Aggregate | None:
        """The period's aggregate from its children so far; None when it has none, or (above the base level)
        when the totals cannot give the exact result."""
        if not self.children:
            return None
        exact, value = self._mean()
        unit = min(self.units, default="")
        if self.parts is not None:
            if not exact:
                subs = [
                    (self.start + p.index * _MINUTE, p.value, p.valid, p.maintenance > 0, p.flagged > 0)
                    for p in self.parts.parts()
                ]
                return _base_from_subs(self.series, self.start, subs, unit, rules)
            mask = self.valid_mask
            minutes = {mask.bit_length() - 1, (mask & -mask).bit_length() - 1} if mask else set()
            minutes |= {
                q * 15 + ((mask >> q * 15) & -(mask >> q * 15)).bit_length() - 1
                for q in range(4)
                if mask >> q * 15 & 0x7FFF
            }
            return _base_result(
                self.series,
                self.start,
                rules,
                unit=unit,
                n_valid=self.weight,
                n_maintenance=self.n_maintenance,
                n_flagged=self.n_flagged,
                value=value,
                valid_starts=[self.start + m * _MINUTE for m in sorted(minutes)],
            )
        if not exact:
            return None
        return _calendar_result(
            self.series,
            self.period,
            (self.start, self.end),
            rules,
            unit=unit,
            n_valid=self.weight,
            n_maintenance=self.n_maintenance,
            n_flagged=self.n_flagged,
            valid_parts=self.valid_parts,
            value=value,
        )
