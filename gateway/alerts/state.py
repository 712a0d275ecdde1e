"""The life of one alert, and which notifications go out when. Pure: no clock, no I/O.

An alert is one rule applied to one thing (an agent, an instrument, a series). Its rule turns data into
observations of a `Level`; `step` moves the alert through

    inactive ──TRIGGER──▶ pending ──(held for `for_`)──▶ firing ──CLEAR (held for `clear_for`)──▶ resolved

and says which transitions people must hear about (`Transition`). Hysteresis lives in the levels: a
value between the clear threshold and the limit is HOLD, which keeps a pending or firing alert where it
is and does not start a new one. The engine persists each state, so a restart continues the same alert.

Delivery decisions are pure too: silences (`Silence`, `should_send`), grouping and rate limiting
(`plan_dispatch`). Severity and the notice snapshot (`Notice`) live here because both the rules and
the notifiers use them and neither should import the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase

ZERO = timedelta(0)


class Level(StrEnum):
    """What one observation says about a rule's condition."""

    TRIGGER = "trigger"
    """beyond the limit: starts an alert (pending, then firing) or keeps one going"""
    HOLD = "hold"
    """inside the hysteresis band: keeps a pending or firing alert, never starts one"""
    CLEAR = "clear"
    """back on the good side of the clear threshold: ends a pending alert, resolves a firing one"""


class Phase(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class NoticeKind(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"
    REMINDER = "reminder"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True, slots=True, order=True)
class AlertKey:
    """What an alert is about; fields that do not apply to a rule are empty (an agent has no parameter)."""

    rule: str
    site: str
    agent: str = ""
    instrument: str = ""
    parameter: str = ""

    def __str__(self) -> str:
        return "/".join(part for part in (self.rule, self.site, self.agent, self.instrument, self.parameter) if part)

    @property
    def where(self) -> str:
        """site/instrument (or site/agent for agent-level rules), then the parameter, for people."""
        thing = self.instrument or self.agent
        place = f"{self.site}/{thing}" if thing else self.site
        return f"{place} {self.parameter}" if self.parameter else place


@dataclass(frozen=True, slots=True)
class Observation:
    """One piece of evidence about a rule's condition."""

    level: Level
    at: datetime
    """event time of the evidence: sample time, end of an averaging period, or the tick's time"""
    since: datetime
    """when the situation this evidence shows began (the sample time; the start of an averaged period)"""
    value: float | None = None
    """the value compared with the limit, in the rule's unit (None for conditions without a number)"""
    detail: str = ""
    """what was compared, for people: "hourly mean 10:00-11:00, 92 % data", "no data for 3 min" """


@dataclass(frozen=True)
class Timing:
    """A rule's durations: how long a condition must hold before firing, and before resolving."""

    for_: timedelta = ZERO
    clear_for: timedelta = ZERO
    higher_is_worse: bool = True
    """which way the peak value is tracked (False for `below` thresholds)"""

    def __post_init__(self) -> None:
        if self.for_ < ZERO or self.clear_for < ZERO:
            raise ValueError("for and clear_for must not be negative")


@dataclass(frozen=True)
class AlertState:
    """Everything the state machine remembers about one alert; the engine persists it."""

    phase: Phase = Phase.INACTIVE
    episode: int = 0
    """how many times this alert has fired; a notification belongs to one episode"""
    since: datetime | None = None
    """pending/firing: when the condition began"""
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    clearing_since: datetime | None = None
    """firing, with clear_for > 0: since when the condition has been clear"""
    last_at: datetime | None = None
    """event time of the newest observation applied; older ones are ignored (replays, late duplicates)"""
    value: float | None = None
    peak: float | None = None
    """the worst value of the current (or last) episode"""
    detail: str = ""
    reminded_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.phase in {Phase.PENDING, Phase.FIRING}


@dataclass(frozen=True, slots=True)
class Transition:
    """A change people must hear about."""

    kind: NoticeKind
    episode: int
    at: datetime
    """when it happened (event time)"""
    since: datetime
    """when the condition began"""
    value: float | None
    peak: float | None
    detail: str


def _worse(current: float | None, candidate: float | None, higher_is_worse: bool) -> float | None:
    if candidate is None:
        return current
    if current is None:
        return candidate
    return max(current, candidate) if higher_is_worse else min(current, candidate)


def _fire(state: AlertState, obs: Observation, since: datetime, timing: Timing) -> tuple[AlertState, Transition]:
    peak = _worse(None, obs.value, timing.higher_is_worse)
    fired = replace(
        state,
        phase=Phase.FIRING,
        episode=state.episode + 1,
        since=since,
        fired_at=obs.at,
        resolved_at=None,
        clearing_since=None,
        last_at=obs.at,
        value=obs.value,
        peak=peak,
        detail=obs.detail,
        reminded_at=None,
    )
    return fired, Transition(NoticeKind.FIRING, fired.episode, obs.at, since, obs.value, peak, obs.detail)


def step(state: AlertState, obs: Observation, timing: Timing) -> tuple[AlertState, Transition | None]:
    """Apply one observation. Observations older than the last one applied change nothing."""
    if state.last_at is not None and obs.at < state.last_at:
        return state, None
    seen = replace(state, last_at=obs.at)
    if state.phase in {Phase.INACTIVE, Phase.RESOLVED}:
        if obs.level is not Level.TRIGGER:
            return seen, None
        if obs.at - obs.since >= timing.for_:
            return _fire(state, obs, obs.since, timing)
        peak = _worse(None, obs.value, timing.higher_is_worse)
        return replace(seen, phase=Phase.PENDING, since=obs.since, value=obs.value, peak=peak, detail=obs.detail), None
    since = state.since or obs.since  # always set while pending or firing
    if state.phase is Phase.PENDING:
        if obs.level is Level.CLEAR:
            return replace(seen, phase=Phase.INACTIVE, since=None, value=obs.value, peak=None, detail=obs.detail), None
        if obs.at - since >= timing.for_:
            fired, transition = _fire(state, obs, since, timing)
            peak = _worse(state.peak, obs.value, timing.higher_is_worse)
            return replace(fired, peak=peak), replace(transition, peak=peak)
        peak = _worse(state.peak, obs.value, timing.higher_is_worse)
        return replace(seen, value=obs.value, peak=peak, detail=obs.detail), None
    # firing
    if obs.level is not Level.CLEAR:
        peak = _worse(state.peak, obs.value, timing.higher_is_worse)
        return replace(seen, value=obs.value, peak=peak, detail=obs.detail, clearing_since=None), None
    clearing_since = state.clearing_since or obs.at
    if obs.at - clearing_since < timing.clear_for:
        return replace(seen, clearing_since=clearing_since, value=obs.value), None
    resolved = replace(
        seen, phase=Phase.RESOLVED, resolved_at=obs.at, clearing_since=None, value=obs.value, detail=obs.detail
    )
    return resolved, Transition(NoticeKind.RESOLVED, state.episode, obs.at, since, obs.value, state.peak, obs.detail)


def remind(
    state: AlertState, now: datetime, every: timedelta, *, acknowledged: bool
) -> tuple[AlertState, Transition | None]:
    """A reminder for a firing alert nobody acknowledged, every `every` (zero: never)."""
    if every <= ZERO or acknowledged or state.phase is not Phase.FIRING or state.since is None:
        return state, None
    last = state.reminded_at or state.fired_at or state.since
    if now - last < every:
        return state, None
    reminded = replace(state, reminded_at=now)
    return reminded, Transition(
        NoticeKind.REMINDER, state.episode, now, state.since, state.value, state.peak, state.detail
    )


# --------------------------------------------------------------------------------------------------
# Silences
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Silence:
    """No notifications for matching alerts between `starts` and `ends`; the alerts still change state."""

    id: int
    starts: datetime
    ends: datetime
    rule: str = "*"
    site: str = "*"
    instrument: str = "*"
    """matches the instrument, or the agent for agent-level alerts"""
    reason: str = ""
    by: str = ""

    def covers(self, key: AlertKey, at: datetime) -> bool:
        if not self.starts <= at < self.ends:
            return False
        return (
            fnmatchcase(key.rule, self.rule)
            and fnmatchcase(key.site, self.site)
            and fnmatchcase(key.instrument or key.agent, self.instrument)
        )


def silenced(key: AlertKey, at: datetime, silences: Sequence[Silence]) -> bool:
    return any(silence.covers(key, at) for silence in silences)


def should_send(kind: NoticeKind, *, is_silenced: bool, firing_sent: bool) -> bool:
    """Whether a transition becomes a notification.

    A firing is sent unless silenced. A resolution or reminder only follows a firing people were told
    about, and not while silenced: nobody hears "resolved" about something they never heard fire.
    """
    if is_silenced:
        return False
    if kind is NoticeKind.FIRING:
        return True
    return firing_sent


# --------------------------------------------------------------------------------------------------
# What a notification says: a snapshot taken at the transition, so a later delivery tells the same story.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """One transition of one alert, with everything a message needs to say what, where, how much, since when."""

    alert_id: int
    kind: NoticeKind
    key: AlertKey
    severity: Severity
    title: str
    """what, in words: "SO2 above the one-time ПДК" """
    episode: int
    at: datetime
    since: datetime
    value: float | None
    peak: float | None
    limit: float | None
    unit: str
    comparison: str
    """how value and limit relate when firing: "above", "below" (empty for data rules without a limit)"""
    measure: str
    """what the value is: "instant value", "20-min rolling mean", "daily mean", "data gap" """
    detail: str
    note: str = ""
    """the limit's source or caveat, e.g. "ПДК м.р., docs/regulatory-basis.md §5" """
    late: bool = False
    """a firing told only now because a silence just ended"""


# --------------------------------------------------------------------------------------------------
# Grouping and rate limiting
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryPolicy:
    """How notices become messages.

    Notices of one group (by default: one rule at one site) that are queued within `group_wait` of the
    first go out as one message. At most `max_messages` messages per `per`; when more groups are ready
    than the budget allows, the last message of the budget carries all the rest (a digest), so nothing
    is dropped and the budget is never exceeded.
    """

    group_wait: timedelta = ZERO
    max_messages: int = 20
    per: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self.group_wait < ZERO or self.per <= ZERO:
            raise ValueError("group_wait must not be negative and per must be positive")


@dataclass(frozen=True, slots=True)
class Queued:
    notice_id: int
    group: str
    queued_at: datetime


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One message to send now: the notices it carries, oldest first."""

    notice_ids: tuple[int, ...]
    groups: tuple[str, ...]


def budget_left(sent: Sequence[datetime], now: datetime, policy: DeliveryPolicy) -> int:
    """Messages still allowed now, given when earlier ones were sent."""
    recent = sum(1 for at in sent if now - policy.per < at <= now)
    return max(0, policy.max_messages - recent)


def plan_dispatch(
    queued: Sequence[Queued], sent: Sequence[datetime], now: datetime, policy: DeliveryPolicy
) -> list[Dispatch]:
    """Which queued notices go out now, and how they are bundled into messages."""
    groups: dict[str, list[Queued]] = {}
    for item in sorted(queued, key=lambda q: (q.queued_at, q.notice_id)):
        groups.setdefault(item.group, []).append(item)
    ready = [items for items in groups.values() if now - items[0].queued_at >= policy.group_wait]
    budget = budget_left(sent, now, policy)
    if not ready or budget == 0:
        return []
    if len(ready) > budget:
        head, tail = ready[: budget - 1], ready[budget - 1 :]
        digest = [item for items in tail for item in items]
        ready = [*head, sorted(digest, key=lambda q: (q.queued_at, q.notice_id))]
    return [
        Dispatch(
            notice_ids=tuple(item.notice_id for item in items),
            groups=tuple(dict.fromkeys(item.group for item in items)),
        )
        for items in ready
    ]
