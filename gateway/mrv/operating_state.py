"""A source's operating state per base period (OFF / START-UP / NORMAL / SHUT-DOWN). Pure, no I/O.

Why: averages, validity and substitution are over operating hours (EU MRR 2018/2066 Art. 43 and Annex VIII
Eq. 1; US 40 CFR 75.30(a)); a plant that is shut down with its analyzers off produces no data, and that is
not missing data. Start-up and shut-down periods are excluded from emission-limit compliance (Directive
2010/75/EU Annex V Part 4) while their emissions still count in the annual mass totals.

Where the state comes from, in this order:
1. an operator's manual log entry covering the period (the latest recorded entry wins; state `derived`
   hands the period back to the signals);
2. a DCS/PLC status tag whose hourly mean equals one of its configured codes (the whole period in one
   state); a mean between codes is a change within the period, read as start-up after OFF/START-UP and as
   shut-down after NORMAL/SHUT-DOWN;
3. thresholds on operating parameters: `running` criteria (any met: fuel burned in the period, an operating
   period; none met: OFF) and the permit's start-up/shut-down criteria. Commission Implementing Decision
   2012/249/EU Art. 9: at least three criteria, start-up ends / shut-down starts when at least two are met.
   Shut-down criteria default to the start-up criteria negated (stable generation lost).

Project decisions (said in each period's `basis`):
- a period with no signal value at all is taken as operating and NORMAL: judged and substituted, the
  conservative side (an operator marks a known shutdown with the manual log);
- a criterion without a value counts as met for the end of start-up and as not met for the start of
  shut-down: again the side that judges the period against the limits;
- before the first period the unit is taken as OFF (a report starting during a start-up says start-up).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final, Literal

from gateway.mrv.rollup import Aggregate

__all__ = [
    "DECISION",
    "MIN_CRITERIA",
    "MIN_REQUIRED",
    "Criterion",
    "HourState",
    "ManualEntry",
    "OperatingSpec",
    "State",
    "StatusTag",
    "derive_states",
    "signal_key",
]

DECISION: Final = "Commission Implementing Decision 2012/249/EU Art. 9"
MIN_CRITERIA: Final = 3
"""Decision 2012/249/EU Art. 9: at least three criteria are defined"""
MIN_REQUIRED: Final = 2
"""Decision 2012/249/EU Art. 9: start-up ends / shut-down starts when at least two criteria are met"""


class State(StrEnum):
    OFF = "off"
    START_UP = "start-up"
    NORMAL = "normal"
    SHUT_DOWN = "shut-down"

    @property
    def operating(self) -> bool:
        """Fuel burned in (part of) the period: an operating hour (EU MRR Art. 43, 40 CFR 72.2)."""
        return self is not State.OFF

    @property
    def judged(self) -> bool:
        """Counts for limit compliance (start-up/shut-down excluded: Directive 2010/75/EU Annex V Part 4)."""
        return self is State.NORMAL


Source = Literal["manual", "status", "signals", "assumed", "always"]


def signal_key(instrument: str, parameter: str) -> str:
    return f"{instrument}/{parameter}"


@dataclass(frozen=True, slots=True)
class Criterion:
    """A threshold on one operating parameter's period mean: met when at_least ≤ value ≤ at_most."""

    name: str
    instrument: str
    parameter: str
    at_least: float | None = None
    at_most: float | None = None
    negated: bool = False
    """met when the threshold does NOT hold (default shut-down criteria: stable generation lost)"""

    def __post_init__(self) -> None:
        if self.at_least is None and self.at_most is None:
            raise ValueError(f"criterion {self.name!r}: set at_least or at_most")

    @property
    def key(self) -> str:
        return signal_key(self.instrument, self.parameter)

    def met(self, value: float | None) -> bool | None:
        """None when the parameter has no value for the period."""
        if value is None:
            return None
        holds = (self.at_least is None or value >= self.at_least) and (self.at_most is None or value <= self.at_most)
        return holds != self.negated

    def negate(self) -> Criterion:
        return Criterion(f"not {self.name}", self.instrument, self.parameter, self.at_least, self.at_most, True)

    def describe(self) -> str:
        parts = []
        if self.at_least is not None:
            parts.append(f"≥ {self.at_least:g}")
        if self.at_most is not None:
            parts.append(f"≤ {self.at_most:g}")
        text = f"{self.key} {' and '.join(parts)}"
        return f"not ({text})" if self.negated else text


@dataclass(frozen=True, slots=True)
class StatusTag:
    """A DCS/PLC status tag: its value per state."""

    instrument: str
    parameter: str
    codes: Mapping[State, float]

    @property
    def key(self) -> str:
        return signal_key(self.instrument, self.parameter)

    def state_of(self, value: float) -> State | None:
        for state, code in self.codes.items():
            if abs(value - code) <= 1e-9:
                return state
        return None


@dataclass(frozen=True, slots=True)
class OperatingSpec:
    """What decides a source's operating state (from the `[source.operating]` config table)."""

    status: StatusTag | None = None
    running: tuple[Criterion, ...] = ()
    startup_end: tuple[Criterion, ...] = ()
    shutdown_start: tuple[Criterion, ...] = ()
    """empty: the start-up criteria negated"""
    required: int = MIN_REQUIRED

    def __post_init__(self) -> None:
        if self.status is None and not self.running:
            raise ValueError("set status or running: the operating state needs a status tag or running criteria")
        for name, criteria in (("startup_end", self.startup_end), ("shutdown_start", self.shutdown_start)):
            if criteria and len(criteria) < MIN_CRITERIA:
                raise ValueError(f"{name}: {len(criteria)} criteria, {DECISION} asks for at least {MIN_CRITERIA}")
            if criteria and not MIN_REQUIRED <= self.required <= len(criteria):
                raise ValueError(
                    f"required: {self.required} is not between {MIN_REQUIRED} and the {len(criteria)} {name} "
                    f"criteria ({DECISION})"
                )
        if self.shutdown_start and not self.startup_end:
            raise ValueError("shutdown_start: set startup_end criteria too")

    @property
    def shutdown_criteria(self) -> tuple[Criterion, ...]:
        return self.shutdown_start or tuple(c.negate() for c in self.startup_end)

    def signal_keys(self) -> list[str]:
        """Every instrument/parameter series the spec reads, once each."""
        keys = [self.status.key] if self.status else []
        for criterion in (*self.running, *self.startup_end, *self.shutdown_start):
            if criterion.key not in keys:
                keys.append(criterion.key)
        return keys


@dataclass(frozen=True, slots=True)
class ManualEntry:
    """An operator's manual log entry: the state of the periods that start in [start, end)."""

    id: int
    source: str
    state: State | None
    """None: `derived`, the signals decide again (undoes an earlier entry without deleting it)"""
    start: datetime
    end: datetime
    by: str
    why: str
    recorded_at: datetime

    def describe(self) -> str:
        return f"manual log #{self.id} by {self.by} at {self.recorded_at:%Y-%m-%d %H:%M}Z: {self.why}"


@dataclass(frozen=True, slots=True)
class HourState:
    """The state of one base period and what decided it."""

    start: datetime
    state: State
    source: Source
    basis: str = ""
    manual_id: int | None = None

    @property
    def operating(self) -> bool:
        return self.state.operating


@dataclass(slots=True)
class _Counts:
    met: int = 0
    unknown: int = 0
    names: list[str] = field(default_factory=list)


def _count(criteria: Sequence[Criterion], values: Mapping[str, float]) -> _Counts:
    counts = _Counts()
    for criterion in criteria:
        met = criterion.met(values.get(criterion.key))
        if met is None:
            counts.unknown += 1
        elif met:
            counts.met += 1
            counts.names.append(criterion.name)
    return counts


def _manual_for(entries: Sequence[ManualEntry], start: datetime) -> ManualEntry | None:
    """The latest recorded entry covering `start` (entries in recording order)."""
    found = None
    for entry in entries:
        if entry.start <= start < entry.end:
            found = entry
    return found


def _transition(previous: State) -> State:
    return State.START_UP if previous in (State.OFF, State.START_UP) else State.SHUT_DOWN


def _from_criteria(spec: OperatingSpec, previous: State, values: Mapping[str, float]) -> tuple[State, str]:
    if not spec.startup_end:
        return State.NORMAL, "running; no start-up/shut-down criteria configured"
    required = spec.required
    if previous in (State.OFF, State.START_UP):
        up = _count(spec.startup_end, values)
        ended = up.met + up.unknown >= required
        unknown = f", {up.unknown} without a value (counted as met)" if up.unknown else ""
        text = f"{up.met} of {len(spec.startup_end)} start-up criteria met{unknown} (≥ {required}: {DECISION})"
        return (State.NORMAL if ended else State.START_UP), text
    down = _count(spec.shutdown_criteria, values)
    text = f"{down.met} of {len(spec.shutdown_criteria)} shut-down criteria met (≥ {required}: {DECISION})"
    if down.unknown:
        text += f", {down.unknown} without a value (counted as not met)"
    if down.met >= required:
        return State.SHUT_DOWN, text
    if previous is State.SHUT_DOWN:
        up = _count(spec.startup_end, values)
        if up.met < required:
            return State.SHUT_DOWN, text + f"; {up.met} start-up criteria met, stable generation not regained"
    return State.NORMAL, text


def _always(start: datetime) -> HourState:
    return HourState(start, State.NORMAL, "always", "no operating state configured: every period operating")


def signal_values(aggregates: Iterable[Aggregate]) -> dict[datetime, float]:
    """A signal's period means as `derive_states` reads them: periods with a valid value only (the report and the
    QA alerts must judge a unit's state alike)."""
    return {a.start: a.value for a in aggregates if a.value is not None and a.n_valid}


def derive_states(
    spec: OperatingSpec | None,
    starts: Sequence[datetime],
    signals: Mapping[str, Mapping[datetime, float]],
    manual: Sequence[ManualEntry] = (),
    *,
    initial: State = State.OFF,
) -> list[HourState]:
    """The state of each period in `starts` (in time order) from the period means of the signals
    (key `instrument/parameter` → start → mean) and the manual log (in recording order)."""
    if spec is None and not manual:
        return [_always(start) for start in starts]
    result: list[HourState] = []
    previous = initial
    for start in starts:
        hour = _one(spec, start, previous, signals, manual)
        result.append(hour)
        previous = hour.state
    return result


def _one(
    spec: OperatingSpec | None,
    start: datetime,
    previous: State,
    signals: Mapping[str, Mapping[datetime, float]],
    manual: Sequence[ManualEntry],
) -> HourState:
    entry = _manual_for(manual, start)
    if entry is not None and entry.state is not None:
        return HourState(start, entry.state, "manual", entry.describe(), entry.id)
    if spec is None:
        return _always(start)
    values = {key: series[start] for key in spec.signal_keys() if (series := signals.get(key)) and start in series}
    if spec.status is not None and spec.status.key in values:
        code = values[spec.status.key]
        state = spec.status.state_of(code)
        if state is not None:
            return HourState(start, state, "status", f"status tag {spec.status.key} = {code:g}")
        state = _transition(previous)
        return HourState(start, state, "status", f"status tag {spec.status.key} mean {code:g}: a change in the period")
    if spec.running:
        running = _count(spec.running, values)
        if running.met:
            state, text = _from_criteria(spec, previous, values)
            return HourState(start, state, "signals", f"running ({', '.join(running.names)}); {text}")
        if running.unknown == 0:
            return HourState(start, State.OFF, "signals", "no running criterion met: not operating")
    return HourState(start, State.NORMAL, "assumed", "no operating signal for the period: taken as operating")
