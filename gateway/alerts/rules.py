"""Alert rules and their evaluation: samples in, observations (`Level` + evidence) out. Pure: no clock, no I/O.

Two families:
- threshold rules compare an average of usable samples (Quality.usable, docs/regulatory-basis.md §3) with a limit:
  the instant value, a rolling N-minute mean, or the mean of a clock hour or a calendar day in the
  site's time zone; with hysteresis (a separate clear threshold), a minimum duration, and a data capture
  requirement (default 75 %, docs/regulatory-basis.md §3: ambient 1-hour and 24-hour values need ≥ 75 %);
- data rules watch the data itself: agent offline (status / last will), instrument failure flag,
  no data for N seconds, N identical values in a row, reading time far from receive time.

The engine (gateway/alerts/engine.py) feeds samples already converted to the rule's unit (`conversion_factor`)
and keeps one evaluator per alert. Periods are evaluated when they are complete, i.e. when the first
sample of a later period arrives: a daily mean is judged when the day is over, never from part of a day.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Final

from aua_contract import Quality
from gateway.alerts.state import ZERO, AlertKey, Level, Observation, Severity, Timing
from gateway.mrv.arithmetic import StandardisationError, correct_to_reference_o2, dry_o2

# --------------------------------------------------------------------------------------------------
# Durations: "90", "90s", "15m", "2h", "1d", "1h30m"
# --------------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str | float) -> timedelta:
    """Seconds as a number, or a string of number+unit parts (ms, s, m, h, d, w): "90", "15m", "1h30m"."""
    if isinstance(text, bool):
        raise TypeError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        compact = text.strip().lower().replace(" ", "")
        try:
            seconds = float(compact)
        except ValueError:
            parts = _DURATION_PART.findall(compact)
            if not parts or "".join(number + unit for number, unit in parts) != compact:
                raise ValueError(f"{text!r} is not a duration (examples: 90, 90s, 15m, 2h, 1d, 1h30m)") from None
            seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r} is not a duration (it must be finite and not negative)")
    return timedelta(seconds=seconds)


def format_duration(span: timedelta) -> str:
    """People's form: "45 s", "3 min 20 s", "2 h 5 min", "1 d 3 h"."""
    seconds = max(0, round(span.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    shown = [f"{amount} {unit}" for amount, unit in parts if amount]
    return " ".join(shown[:2]) or "0 s"


def o2_corrected(
    value: float, o2_measured: float, o2_reference: float, *, o2_wet: bool = False, h2o_percent: float | None = None
) -> float | None:
    """mrv.correct_to_reference_o2 with dry O2 (Directive 2010/75/EU Annex VI Part 7): a wet (in-situ) O2 is
    dried with the simultaneous moisture first (mrv.dry_o2). None where that is refused (O2 at the guard or
    above, moisture missing or ≥ 100 %): an alert then has no value to compare rather than a wrong one."""
    try:
        return correct_to_reference_o2(value, dry_o2(o2_measured, wet=o2_wet, h2o_percent=h2o_percent), o2_reference)
    except StandardisationError:
        return None


def reference_o2_value(rule: ThresholdRule, value: float, simultaneous: Mapping[str, float]) -> float | None:
    """A stack rule's sample corrected to its reference O2 with the readings of the same instrument at the same
    time (`simultaneous`: parameter → usable value): the O2, and for a wet O2 the moisture that dries it.
    None when one of them is missing or the correction is refused."""
    if rule.reference_o2 is None:
        return value
    o2 = simultaneous.get(rule.o2_parameter)
    h2o = simultaneous.get(rule.h2o_parameter) if rule.h2o_parameter else None
    if o2 is None or (rule.o2_wet and h2o is None):
        return None
    return o2_corrected(value, o2, rule.reference_o2, o2_wet=rule.o2_wet, h2o_percent=h2o)


# --------------------------------------------------------------------------------------------------
# Ambient limits (docs/regulatory-basis.md §5)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AmbientLimit:
    """Kazakh ПДК for one pollutant: maximum one-time and daily mean, in `unit`."""

    parameter: str
    label: str
    unit: str
    one_time: float | None
    daily: float | None


AMBIENT_PDK: Final = (
    AmbientLimit("so2", "SO2", "mg/m3", 0.5, 0.05),
    AmbientLimit("no2", "NO2", "mg/m3", 0.2, 0.04),
    AmbientLimit("co", "CO", "mg/m3", 5.0, 3.0),
    AmbientLimit("pm10", "PM10", "mg/m3", 0.3, 0.06),
    AmbientLimit("pm25", "PM2.5", "mg/m3", 0.16, 0.035),
    AmbientLimit("hg", "gaseous mercury", "ng/m3", None, 300.0),  # 0.0003 mg/m³
)
"""docs/regulatory-basis.md §5 defaults (former GN list, Order ҚР ДСМ-70 of 2022; verify against the current order)."""

ONE_TIME_MINUTES: Final = 20
"""A maximum one-time ПДК (ПДК м.р.) applies to a 20–30-minute sample, so the default one-time rule compares
a 20-minute rolling mean, not a single 1-second reading."""


# --------------------------------------------------------------------------------------------------
# Windows and thresholds
# --------------------------------------------------------------------------------------------------


class WindowKind(StrEnum):
    INSTANT = "instant"
    ROLLING = "rolling"
    HOURLY = "hourly"
    DAILY = "daily"


@dataclass(frozen=True)
class Window:
    kind: WindowKind
    minutes: int = 0
    """rolling windows only: their length"""

    def __post_init__(self) -> None:
        if self.kind is WindowKind.ROLLING and self.minutes < 1:
            raise ValueError("a rolling window needs minutes >= 1")
        if self.kind is not WindowKind.ROLLING and self.minutes:
            raise ValueError(f"minutes only applies to rolling windows, not {self.kind.value}")

    @property
    def label(self) -> str:
        return {
            WindowKind.INSTANT: "instant value",
            WindowKind.ROLLING: f"{self.minutes}-min rolling mean",
            WindowKind.HOURLY: "hourly mean",
            WindowKind.DAILY: "daily mean",
        }[self.kind]

    @property
    def periodic(self) -> bool:
        return self.kind in {WindowKind.HOURLY, WindowKind.DAILY}


class Direction(StrEnum):
    ABOVE = "above"
    BELOW = "below"


@dataclass(frozen=True)
class Threshold:
    """Fires beyond `limit`; resolves once back past `clear` (hysteresis); HOLD in between.

    above: TRIGGER if value > limit, CLEAR if value <= clear (clear <= limit).
    below: TRIGGER if value < limit, CLEAR if value >= clear (clear >= limit).
    A limit is exceeded only strictly beyond it: a value equal to the ПДК is not an exceedance.
    """

    direction: Direction
    limit: float
    clear: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.limit) and math.isfinite(self.clear)):
            raise ValueError("limit and clear must be finite")
        if self.direction is Direction.ABOVE and self.clear > self.limit:
            raise ValueError(f"clear {self.clear} must not be above the limit {self.limit} for an 'above' rule")
        if self.direction is Direction.BELOW and self.clear < self.limit:
            raise ValueError(f"clear {self.clear} must not be below the limit {self.limit} for a 'below' rule")

    def level(self, value: float) -> Level:
        if self.direction is Direction.ABOVE:
            if value > self.limit:
                return Level.TRIGGER
            return Level.CLEAR if value <= self.clear else Level.HOLD
        if value < self.limit:
            return Level.TRIGGER
        return Level.CLEAR if value >= self.clear else Level.HOLD


# --------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """Which data a rule applies to: glob patterns (fnmatch, case-sensitive) per identity field."""

    sites: tuple[str, ...] = ("*",)
    agents: tuple[str, ...] = ("*",)
    instruments: tuple[str, ...] = ("*",)
    parameters: tuple[str, ...] = ("*",)

    def matches(self, site: str, agent: str = "", instrument: str = "", parameter: str = "") -> bool:
        """Fields passed empty are not checked (an agent-level rule has no instrument)."""
        checks = (
            (site, self.sites),
            (agent, self.agents),
            (instrument, self.instruments),
            (parameter, self.parameters),
        )
        return all(not value or any(fnmatchcase(value, pattern) for pattern in patterns) for value, patterns in checks)


@dataclass(frozen=True, kw_only=True)
class RuleBase:
    name: str
    scope: Scope = field(default_factory=Scope)
    severity: Severity = Severity.WARNING
    for_: timedelta = ZERO
    """the condition must hold this long before the alert fires"""
    clear_for: timedelta = ZERO
    """and be clear this long before it resolves"""
    title: str = ""
    """what, in words, for messages; a default is derived from the rule"""
    note: str = ""
    """source of the limit or a caveat, shown in messages"""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a rule needs a name")
        if self.for_ < ZERO or self.clear_for < ZERO:
            raise ValueError(f"rule {self.name}: for and clear_for must not be negative")

    @property
    def timing(self) -> Timing:
        return Timing(for_=self.for_, clear_for=self.clear_for)


@dataclass(frozen=True, kw_only=True)
class ThresholdRule(RuleBase):
    window: Window
    threshold: Threshold
    unit: str
    """the limit's unit; samples are converted to it"""
    species: str | None = None
    """for ppb/ppm <-> mass conversion; None: the parameter name (so2, no2, co, hg, ...)"""
    min_coverage: float = 0.75
    """share of a rolling window or period that usable samples must cover (regulatory-basis.md §3: 75 % for ambient)"""
    hold: timedelta = timedelta(minutes=5)
    """longest time one sample stands for (an integrating analyzer's cycle: 5 min for Tekran-class Hg)"""
    reference_o2: float | None = None
    """stack limits: correct each sample to this O2 % first (docs/regulatory-basis.md §2), with the instrument's O2"""
    o2_parameter: str = "o2"
    o2_wet: bool = False
    """the O2 is measured wet (in-situ zirconia): dried with `h2o_parameter` of the same time before correcting"""
    h2o_parameter: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.min_coverage <= 1:
            raise ValueError(f"rule {self.name}: min_coverage must be within (0, 1]")
        if self.hold <= ZERO:
            raise ValueError(f"rule {self.name}: hold must be positive")
        if self.reference_o2 is not None and not 0 <= self.reference_o2 < 21:
            raise ValueError(f"rule {self.name}: reference_o2 must be within 0 ... 21 %")
        if self.o2_wet and self.reference_o2 is None:
            raise ValueError(f"rule {self.name}: o2_wet only applies with reference_o2")
        if self.o2_wet and not self.h2o_parameter:
            raise ValueError(
                f"rule {self.name}: o2_wet = true needs h2o_parameter, the instrument's moisture reading that dries "
                "the O2 (the reference-O2 correction takes dry O2: Directive 2010/75/EU Annex VI Part 7)"
            )

    @property
    def timing(self) -> Timing:
        return Timing(
            for_=self.for_, clear_for=self.clear_for, higher_is_worse=self.threshold.direction is Direction.ABOVE
        )

    def describe(self) -> str:
        return self.title or (
            f"{self.window.label} {self.threshold.direction.value} {self.threshold.limit:g} {self.unit}"
        )


@dataclass(frozen=True, kw_only=True)
class OfflineRule(RuleBase):
    """The agent said it is offline, or the broker published its last will."""

    def describe(self) -> str:
        return self.title or "agent offline"


@dataclass(frozen=True, kw_only=True)
class FailureRule(RuleBase):
    """An instrument flags failure (NAMUR NE107; a read timeout also gives failure)."""

    def describe(self) -> str:
        return self.title or "instrument failure"


@dataclass(frozen=True, kw_only=True)
class GapRule(RuleBase):
    """No reading received from an instrument for `after`."""

    after: timedelta

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.after <= ZERO:
            raise ValueError(f"rule {self.name}: after must be positive")

    def describe(self) -> str:
        return self.title or "data gap"


@dataclass(frozen=True, kw_only=True)
class StuckRule(RuleBase):
    """`count` usable values in a row within `tolerance` of the first (docs/regulatory-basis.md §3 `stuck`)."""

    count: int
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.count < 2:
            raise ValueError(f"rule {self.name}: count must be at least 2")
        if self.tolerance < 0:
            raise ValueError(f"rule {self.name}: tolerance must not be negative")

    def describe(self) -> str:
        return self.title or "stuck value"


@dataclass(frozen=True, kw_only=True)
class ClockSkewRule(RuleBase):
    """An agent's newest reading time differs from the gateway's receive time by more than `max_skew`."""

    max_skew: timedelta

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_skew <= ZERO:
            raise ValueError(f"rule {self.name}: max_skew must be positive")

    def describe(self) -> str:
        return self.title or "clock skew"


@dataclass(frozen=True, kw_only=True)
class QaRule(RuleBase):
    """An analyzer QA finding from a check outside the data stream (gateway/mrv/qa_alerts.py: a new QAL2 due, a
    Part 75 daily calibration error test failed or overdue), fed by `AlertEngine.on_qa`. One alert per source
    (in the instrument field) and channel (in the parameter field)."""

    def describe(self) -> str:
        return self.title or self.name


@dataclass(frozen=True, slots=True)
class QaFinding:
    """One QA check's result for one channel of one source: `firing` (the condition holds, since `since`) or not."""

    rule: str
    site: str
    source: str
    channel: str
    firing: bool
    detail: str
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Qal3Rule(RuleBase):
    """A component's QAL3 control chart is out of control (EN 14181:2014 §7): observed from its zero and span
    checks (gateway/mrv/qa_checks.py), not from readings; one alert per component, clear once the AMS is adjusted."""

    def describe(self) -> str:
        return self.title or "QAL3 out of control"


QAL3_RULE: Final = "qal3-out-of-control"
"""The rule a gateway adds when a [[source]] has [source.qal3] with alert = true."""

Rule = ThresholdRule | OfflineRule | FailureRule | GapRule | StuckRule | ClockSkewRule | QaRule | Qal3Rule


def alert_key(rule: Rule, site: str, agent: str, instrument: str = "", parameter: str = "") -> AlertKey:
    """One alert per agent (offline, clock skew), per instrument (failure, gap) or per series (threshold, stuck)."""
    if isinstance(rule, OfflineRule | ClockSkewRule):
        return AlertKey(rule.name, site, agent)
    if isinstance(rule, FailureRule | GapRule):
        return AlertKey(rule.name, site, agent, instrument)
    return AlertKey(rule.name, site, agent, instrument, parameter)


# --------------------------------------------------------------------------------------------------
# Averaging
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading as a rule sees it: already in the rule's unit; quality decides whether it is used."""

    ts: datetime
    value: float | None
    quality: Quality = Quality.OK

    @property
    def usable(self) -> bool:
        return self.value is not None and self.quality.usable


@dataclass(frozen=True, slots=True)
class Average:
    value: float
    start: datetime
    end: datetime
    coverage: float
    samples: int


def _covered(ts: datetime, previous: datetime | None, start: datetime, hold: timedelta) -> timedelta:
    """The time a usable sample stands for: back to the previous sample (of any quality), at most `hold`,
    not before `start`. The first sample ever seen stands for nothing: nothing says how long it averaged."""
    if previous is None:
        return ZERO
    return max(ZERO, ts - max(previous, ts - hold, start))


class InstantAverager:
    def add(self, sample: Sample) -> list[Average]:
        if not sample.usable or sample.value is None:
            return []
        return [Average(sample.value, sample.ts, sample.ts, 1.0, 1)]


@dataclass(slots=True)
class _Entry:
    ts: datetime
    value: float | None
    previous: datetime | None


class RollingAverager:
    """Mean of the usable samples in (t − length, t], re-evaluated at each usable sample t."""

    def __init__(self, length: timedelta, *, hold: timedelta, min_coverage: float) -> None:
        self.length = length
        self.hold = hold
        self.min_coverage = min_coverage
        self._entries: deque[_Entry] = deque()
        self._last: datetime | None = None

    def add(self, sample: Sample) -> list[Average]:
        if self._last is not None and sample.ts <= self._last:
            return []
        self._entries.append(_Entry(sample.ts, sample.value if sample.usable else None, self._last))
        self._last = sample.ts
        start = sample.ts - self.length
        while self._entries and self._entries[0].ts <= start:
            self._entries.popleft()
        if not sample.usable:
            return []
        values = [entry.value for entry in self._entries if entry.value is not None]
        covered = sum(
            (_covered(e.ts, e.previous, start, self.hold) for e in self._entries if e.value is not None), ZERO
        )
        coverage = covered / self.length
        if coverage < self.min_coverage:
            return []
        return [Average(math.fsum(values) / len(values), start, sample.ts, coverage, len(values))]


Bounds = Callable[[datetime], tuple[datetime, datetime]]


def hour_bounds(tz: tzinfo) -> Bounds:
    """The clock hour (in `tz`, which matters for zones offset by a fraction of an hour) containing a time."""

    def bounds(ts: datetime) -> tuple[datetime, datetime]:
        local = ts.astimezone(tz)
        start = local.replace(minute=0, second=0, microsecond=0)
        return start.astimezone(ts.tzinfo), (start + timedelta(hours=1)).astimezone(ts.tzinfo)

    return bounds


def day_bounds(tz: tzinfo) -> Bounds:
    """The calendar day in `tz` containing a time (a daily ПДК mean is a local calendar day's)."""

    def bounds(ts: datetime) -> tuple[datetime, datetime]:
        local = ts.astimezone(tz)
        start = datetime.combine(local.date(), time(), tzinfo=tz)
        end = datetime.combine(local.date() + timedelta(days=1), time(), tzinfo=tz)
        return start.astimezone(ts.tzinfo), end.astimezone(ts.tzinfo)

    return bounds


class PeriodAverager:
    """Mean of the usable samples of each complete period, returned when the first sample after it arrives."""

    def __init__(self, bounds: Bounds, *, hold: timedelta, min_coverage: float) -> None:
        self.bounds = bounds
        self.hold = hold
        self.min_coverage = min_coverage
        self._period: tuple[datetime, datetime] | None = None
        self._values: list[float] = []
        self._covered = ZERO
        self._last: datetime | None = None

    def add(self, sample: Sample) -> list[Average]:
        if self._last is not None and sample.ts <= self._last:
            return []
        done: list[Average] = []
        if self._period is not None and sample.ts >= self._period[1]:
            finished = self._finish()
            if finished is not None:
                done.append(finished)
            self._period = None
        if self._period is None:
            self._period = self.bounds(sample.ts)
            self._values, self._covered = [], ZERO
        if sample.usable and sample.value is not None:
            self._values.append(sample.value)
            self._covered += _covered(sample.ts, self._last, self._period[0], self.hold)
        self._last = sample.ts
        return done

    def _finish(self) -> Average | None:
        if self._period is None:
            return None
        start, end = self._period
        coverage = self._covered / (end - start)
        if not self._values or coverage < self.min_coverage:
            return None
        return Average(math.fsum(self._values) / len(self._values), start, end, coverage, len(self._values))


Averager = InstantAverager | RollingAverager | PeriodAverager


def averager_for(rule: ThresholdRule, tz: tzinfo) -> Averager:
    window = rule.window
    if window.kind is WindowKind.INSTANT:
        return InstantAverager()
    if window.kind is WindowKind.ROLLING:
        return RollingAverager(timedelta(minutes=window.minutes), hold=rule.hold, min_coverage=rule.min_coverage)
    bounds = hour_bounds(tz) if window.kind is WindowKind.HOURLY else day_bounds(tz)
    return PeriodAverager(bounds, hold=rule.hold, min_coverage=rule.min_coverage)


def _zone_name(tz: tzinfo) -> str:
    return getattr(tz, "key", None) or str(tz)


def describe_average(window: Window, average: Average, tz: tzinfo) -> str:
    """What was compared, e.g. "daily mean of 2026-12-01 (Asia/Almaty), 96 % data"."""
    if window.kind is WindowKind.INSTANT:
        return window.label
    data = f"{average.coverage:.0%} data"
    if window.kind is WindowKind.ROLLING:
        return f"{window.label}, {data}"
    start = average.start.astimezone(tz)
    if window.kind is WindowKind.HOURLY:
        end = average.end.astimezone(tz)
        return f"{window.label} {start:%Y-%m-%d %H:%M}–{end:%H:%M} ({_zone_name(tz)}), {data}"
    return f"{window.label} of {start:%Y-%m-%d} ({_zone_name(tz)}), {data}"


# --------------------------------------------------------------------------------------------------
# Evaluators: one per alert, fed in time order
# --------------------------------------------------------------------------------------------------


class ThresholdEvaluator:
    def __init__(self, rule: ThresholdRule, tz: tzinfo) -> None:
        self.rule = rule
        self.tz = tz
        self.averager = averager_for(rule, tz)

    def add(self, sample: Sample) -> list[Observation]:
        observations = []
        for average in self.averager.add(sample):
            # A period mean speaks for the whole period; a rolling or instant value from its sample on.
            since = average.start if self.rule.window.periodic else average.end
            observations.append(
                Observation(
                    level=self.rule.threshold.level(average.value),
                    at=average.end,
                    since=since,
                    value=average.value,
                    detail=describe_average(self.rule.window, average, self.tz),
                )
            )
        return observations


class StuckEvaluator:
    def __init__(self, rule: StuckRule) -> None:
        self.rule = rule
        self._reference: float | None = None
        self._run = 0
        self._run_since: datetime | None = None
        self._last: datetime | None = None

    def add(self, sample: Sample) -> list[Observation]:
        """TRIGGER from the `count`-th equal value on, CLEAR when the value changes; nothing from the first
        sample (after a restart it says nothing yet about a flat line that may still be there)."""
        if (self._last is not None and sample.ts <= self._last) or not sample.usable or sample.value is None:
            return []
        self._last = sample.ts
        if self._reference is None or self._run_since is None:
            self._reference, self._run, self._run_since = sample.value, 1, sample.ts
            return []
        if abs(sample.value - self._reference) > self.rule.tolerance:
            self._reference, self._run, self._run_since = sample.value, 1, sample.ts
            return [Observation(Level.CLEAR, sample.ts, sample.ts, sample.value, "value changing again")]
        self._run += 1
        if self._run < self.rule.count:
            return []
        detail = f"{self._run} identical values in a row"
        return [Observation(Level.TRIGGER, sample.ts, self._run_since, sample.value, detail)]


def failure_observation(at: datetime, failing: list[str]) -> Observation:
    """An instrument's readings at one time: TRIGGER when any matching parameter is flagged failure."""
    if failing:
        detail = f"failure flag on {', '.join(sorted(failing))}"
        return Observation(Level.TRIGGER, at, at, float(len(failing)), detail)
    return Observation(Level.CLEAR, at, at, 0.0, "no failure flag")


def gap_observation(rule: GapRule, last_received: datetime, now: datetime) -> Observation:
    silent = now - last_received
    if silent > rule.after:
        detail = f"no data for {format_duration(silent)}"
        return Observation(Level.TRIGGER, now, last_received, silent.total_seconds(), detail)
    return Observation(Level.CLEAR, now, last_received, silent.total_seconds(), "data arriving")


def offline_observation(offline: bool, since: datetime, now: datetime) -> Observation:
    if offline:
        return Observation(Level.TRIGGER, now, since, None, "agent reported offline (status or last will)")
    return Observation(Level.CLEAR, now, since, None, "agent online")


def skew_observation(rule: ClockSkewRule, newest_reading: datetime, received_at: datetime) -> Observation:
    """Positive value: readings stamped ahead of the gateway clock; negative: behind it.

    Behind is ambiguous (a slow agent clock, or a backlog being delivered): the rule's `for` separates a
    lasting offset from a backlog that drains, and the message says both are possible.
    """
    offset = newest_reading - received_at
    seconds = offset.total_seconds()
    if abs(offset) <= rule.max_skew:
        return Observation(Level.CLEAR, received_at, received_at, seconds, "clocks agree")
    if seconds > 0:
        detail = f"readings stamped {format_duration(offset)} ahead of the gateway clock"
    else:
        detail = (
            f"newest reading {format_duration(-offset)} older than its arrival "
            "(agent clock behind, or a delivery backlog)"
        )
    return Observation(Level.TRIGGER, received_at, received_at, seconds, detail)
