"""20-minute averages from 1-minute rollups, computed on demand. Pure, no I/O.

Kazakhstan's АСМ data reach the national environmental data bank every 20 minutes (press reports from Pavlodar
and Atyrau; the same 20-minute basis as the maximum one-time ПДК; the text of Order No. 208 of 22 June 2021 is
not verified here), so the state feed can send 20-minute averages. They are not stored: the rollup engine keeps
1-minute, base-period and calendar rollups, and a 20-minute average is recomputed from the stored 1-minute rollups
whenever the feed looks at it (a correction to a minute changes it, and the feed sends it again as a revision).

Validity follows the capture rule of the series' rule set, as its base periods do (Directive 2010/75/EU Annex V
Part 3 / EN 14181: an average needs enough valid samples; the share is the rule set's `base_min_capture`, 2/3 for
ied-lcp, 80 % for mrr, 75 % for ambient): a period expects one sample per measuring cycle (20 from a 1-minute
series, 4 from a 5-minute mercury analyzer) and is valid when at least that share of them is valid, maintenance
not counted where the rule set excludes it (ambient, 2008/50/EC Annex I). Part 75's quadrant rule is about clock
hours, so a part75 series uses the capture rule with its base_min_capture here. Periods start at :00, :20 and :40
of the series' local clock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from gateway.mrv.rollup import Aggregate, Period, RuleSet

__all__ = ["LABEL", "TWENTY_MINUTES", "TwentyMinuteAverage", "period_start", "twenty_minute_averages"]

TWENTY_MINUTES: Final = timedelta(minutes=20)
LABEL: Final = "20m"
_MINUTE: Final = timedelta(minutes=1)
_EPSILON: Final = 1e-9


@dataclass(frozen=True, slots=True)
class TwentyMinuteAverage:
    """One 20-minute average of one series; the fields a receiver sees are those of a stored rollup."""

    site: str
    instrument: str
    parameter: str
    start: datetime
    value: float | None
    n_valid: int
    n_expected: int
    valid: bool
    reason: str = ""
    n_maintenance: int = 0
    unit: str = ""
    n_flagged: int = 0
    period: str = LABEL

    @property
    def series(self) -> tuple[str, str, str]:
        return (self.site, self.instrument, self.parameter)


def period_start(ts: datetime, zone: tzinfo) -> datetime:
    """Start (UTC) of the 20-minute period of the local clock that `ts` falls in."""
    local = ts.astimezone(zone)
    floored = local.replace(minute=local.minute - local.minute % 20, second=0, microsecond=0)
    return floored.astimezone(UTC)


def _expected(rules: RuleSet) -> int:
    cycle = max(timedelta(seconds=rules.sample_interval_s), _MINUTE)
    return max(1, int(TWENTY_MINUTES / cycle))


def _average(
    series: tuple[str, str, str], start: datetime, minutes: list[Aggregate], rules: RuleSet
) -> TwentyMinuteAverage:
    expected = _expected(rules)
    values = [m.value for m in minutes if m.valid and m.value is not None and math.isfinite(m.value)]
    n_valid = min(len(values), expected)
    n_maintenance = sum(1 for m in minutes if m.in_maintenance)
    n_flagged = sum(1 for m in minutes if m.valid and m.value is not None and m.n_flagged > 0)
    basis = expected - n_maintenance if rules.exclude_maintenance else expected
    fraction = rules.base_min_capture
    value = math.fsum(values) / len(values) if values else None
    if value is not None and not math.isfinite(value):
        value = None
    if not values:
        valid, reason = False, "no valid minutes" + (f" ({n_maintenance} in maintenance)" if n_maintenance else "")
    elif value is None:
        valid, reason = False, f"the mean of {len(values)} valid minutes is no finite number"
    elif basis > 0 and n_valid >= fraction * basis - _EPSILON:
        valid, reason = True, ""
    else:
        valid = False
        reason = f"{n_valid} of {basis} samples valid (< {fraction * 100:.4g} %)"
        if n_maintenance:
            reason += f"; {n_maintenance} in maintenance" + (" (not counted)" if rules.exclude_maintenance else "")
    site, instrument, parameter = series
    return TwentyMinuteAverage(
        site,
        instrument,
        parameter,
        start,
        value,
        n_valid,
        expected,
        valid,
        reason,
        n_maintenance,
        min((m.unit for m in minutes), default=""),
        n_flagged,
    )


def twenty_minute_averages(
    minutes: Iterable[Aggregate], rules: Callable[[str, str, str], tuple[RuleSet, tzinfo]]
) -> list[TwentyMinuteAverage]:
    """The 20-minute averages of the periods the 1-minute rollups touch, by (start, series). Pass every minute of
    a period: a period given only some of its minutes is judged on those (callers drop the periods their query
    cut)."""
    groups: dict[tuple[tuple[str, str, str], datetime], list[Aggregate]] = defaultdict(list)
    chosen: dict[tuple[str, str, str], tuple[RuleSet, tzinfo]] = {}
    for minute in minutes:
        if minute.period is not Period.MINUTE:
            raise ValueError(f"20-minute averages are built from 1-minute rollups, got {minute.period}")
        series = minute.series
        if series not in chosen:
            chosen[series] = rules(*series)
        groups[(series, period_start(minute.start, chosen[series][1]))].append(minute)
    averages = [_average(series, start, group, chosen[series][0]) for (series, start), group in groups.items()]
    return sorted(averages, key=lambda a: (a.start, a.series))
