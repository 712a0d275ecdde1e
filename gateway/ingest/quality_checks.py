"""Gateway-side quality checks on each reading: range, stuck, spike, timestamp sanity (regulatory-basis.md §3). Pure.

The instrument's own NE107 flag arrives with the reading; these checks may only make it worse, never
better. Stuck and spike need the previous value of the series, so `check` takes and returns a small
state per series instead of keeping it itself.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from aua_contract import Batch, Quality, Reading

if TYPE_CHECKING:
    from gateway.config import RegistrySection

# Worst first wins. Excluded-from-averages flags rank above the usable ones.
SEVERITY: dict[Quality, int] = {
    Quality.OK: 0,
    Quality.MAINTENANCE_REQUIRED: 1,
    Quality.OUT_OF_SPECIFICATION: 2,
    Quality.STALE: 3,
    Quality.SPIKE: 4,
    Quality.STUCK: 5,
    Quality.SUBSTITUTED: 5,
    Quality.CHECK_FUNCTION: 6,
    Quality.OUT_OF_RANGE: 7,
    Quality.FAILURE: 8,
}


def worse(a: Quality, b: Quality) -> Quality:
    return a if SEVERITY[a] >= SEVERITY[b] else b


@dataclass(frozen=True)
class Limits:
    """What is physically possible and plausible for one parameter; None switches a check off."""

    minimum: float | None = None
    maximum: float | None = None
    max_rate_per_s: float | None = None  # spike: a larger change per second than this is flagged
    stuck_samples: int | None = None  # stuck: this many identical consecutive values are flagged


NO_LIMITS = Limits()


@dataclass(frozen=True)
class SeriesState:
    last_value: float
    last_ts: datetime
    repeats: int  # how many consecutive samples had last_value


@dataclass(frozen=True)
class TimeWindow:
    """Timestamps accepted as plausible relative to when the gateway received the batch."""

    max_future: timedelta = timedelta(minutes=5)
    max_age: timedelta = timedelta(days=30)


def check(
    value: float | None,
    ts: datetime,
    quality: Quality,
    limits: Limits,
    state: SeriesState | None,
    *,
    received: datetime,
    window: TimeWindow = TimeWindow(),
) -> tuple[Quality, SeriesState | None]:
    """The reading's quality after the gateway's checks, and the series state to pass with the next one."""
    if ts > received + window.max_future or ts < received - window.max_age:
        quality = worse(quality, Quality.STALE)
    if value is None:
        return quality, state
    if (limits.minimum is not None and value < limits.minimum) or (
        limits.maximum is not None and value > limits.maximum
    ):
        # Physically impossible: flagged and kept out of the stuck/spike history.
        return worse(quality, Quality.OUT_OF_RANGE), state
    repeats = 1
    if state is not None and ts > state.last_ts:
        if value == state.last_value:
            repeats = state.repeats + 1
            if limits.stuck_samples is not None and repeats >= limits.stuck_samples:
                quality = worse(quality, Quality.STUCK)
        elif limits.max_rate_per_s is not None:
            seconds = (ts - state.last_ts).total_seconds()
            if abs(value - state.last_value) / seconds > limits.max_rate_per_s:
                quality = worse(quality, Quality.SPIKE)
    elif state is not None:
        # Out of order (a replay or a resend): judge it, but keep the newer history.
        return quality, state
    return quality, SeriesState(value, ts, repeats)


@dataclass(frozen=True)
class Screened:
    """A batch after the checks: readings to store (flags applied) and readings refused with the reason."""

    keep: list[Reading]
    refused: list[tuple[Reading, str]]


class BatchScreen:
    """Applies the registry's rules to each batch, remembering each series' last value for stuck/spike.

    Series names come from the publishers, so both per-series caches are bounded by
    `[registry] screen_cache_series`, least recently seen first out (counted in `evictions`). A series
    forgotten and seen again is judged without its history once: its next value cannot be a spike or
    the continuation of a stuck run.
    """

    def __init__(self, registry: RegistrySection) -> None:
        self.registry = registry
        self.window = TimeWindow(
            max_future=timedelta(seconds=registry.max_future_s), max_age=timedelta(days=registry.max_age_days)
        )
        self.capacity = registry.screen_cache_series
        self.evictions = 0
        self._states: OrderedDict[tuple[str, str, str], SeriesState] = OrderedDict()
        self._limits: OrderedDict[tuple[str, str, str], Limits | None] = OrderedDict()

    def __len__(self) -> int:
        """Series with a remembered last value."""
        return len(self._states)

    def limits_for(self, site: str, instrument: str, parameter: str) -> Limits | None:
        """The series' limits (None: unknown to a registry that wants to know it); looked up once per series."""
        key = (site, instrument, parameter)
        cache = self._limits
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        rule = self.registry.rule_for(site, instrument, parameter)
        if rule is None:
            limits = None if self.registry.known_parameters_only else NO_LIMITS
        else:
            limits = Limits(rule.min, rule.max, rule.max_rate_per_s, rule.stuck_samples)
        cache[key] = limits
        if len(cache) > self.capacity:
            cache.popitem(last=False)  # a rule lookup again later, nothing lost: not counted
        return limits

    def _remember(self, key: tuple[str, str, str], state: SeriesState) -> None:
        states = self._states
        states[key] = state
        states.move_to_end(key)
        if len(states) > self.capacity:
            states.popitem(last=False)
            self.evictions += 1

    def screen(self, batch: Batch, received: datetime) -> Screened:
        keep: list[Reading] = []
        refused: list[tuple[Reading, str]] = []
        # Times a store cannot hold never get here: the contract refuses them (aua_contract.EARLIEST_TIME).
        earliest, latest = received - self.window.max_age, received + self.window.max_future
        if batch.readings:
            # In the readings' own time zone object: comparing datetimes that share one is ~7x cheaper.
            zone = batch.readings[0].ts.tzinfo
            earliest, latest = earliest.astimezone(zone), latest.astimezone(zone)
        for reading in batch.readings:
            limits = self.limits_for(batch.site, reading.instrument, reading.parameter)
            if limits is None:
                refused.append((reading, f"{reading.instrument}/{reading.parameter} is not in the registry"))
                continue
            if limits == NO_LIMITS and earliest <= reading.ts <= latest:
                keep.append(reading)  # nothing to check and nothing to remember: the common case, kept cheap
                continue
            key = (batch.site, reading.instrument, reading.parameter)
            quality, state = check(
                reading.value,
                reading.ts,
                reading.quality,
                limits,
                self._states.get(key),
                received=received,
                window=self.window,
            )
            if state is not None:
                self._remember(key, state)
            keep.append(reading if quality is reading.quality else reading.model_copy(update={"quality": quality}))
        return Screened(keep, refused)
