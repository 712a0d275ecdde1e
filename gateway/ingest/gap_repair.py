"""Which sequence numbers an agent still owes, and when to ask for them again. Pure.

aiomqtt acknowledges before the gateway stores, and a broker without persistence forgets what it held
when it dies, so some batches never arrive. The agent keeps every batch in its outbox for a retention
window; the gateway sees the holes in (agent, seq) and asks for them by a resend request. A hole is
requested only after a grace period (it may just be in flight, or on another gateway instance of a
shared subscription) and then again at most every `retry_s` until it is filled.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from aua_contract.models import MAX_RESEND_SPAN

SeqRange = tuple[int, int]
"""first..last, both included."""


@dataclass(frozen=True)
class Owed:
    """Ranges an agent can still resend, and ranges it no longer has (pruned or dropped: lost for good)."""

    requestable: list[SeqRange]
    unrecoverable: list[SeqRange]


def owed(
    holes: list[SeqRange], first_seen: int | None, last_seen: int | None, next_seq: int | None, oldest_seq: int | None
) -> Owed:
    """Combine the holes between seen batches with what the agent's status says it has sent and still holds.

    `next_seq` (from the agent's status) reveals batches after the last one seen; `oldest_seq` the ones
    before the first seen that the agent still holds, and splits what can be resent from what is gone.
    """
    ranges = list(holes)
    if first_seen is not None and oldest_seq is not None and oldest_seq < first_seen:
        ranges.insert(0, (oldest_seq, first_seen - 1))
    tail_from = 0 if last_seen is None else last_seen + 1
    if next_seq is not None and next_seq - 1 >= tail_from:
        ranges.append((tail_from if last_seen is not None or oldest_seq is None else oldest_seq, next_seq - 1))
    requestable: list[SeqRange] = []
    unrecoverable: list[SeqRange] = []
    floor = oldest_seq if oldest_seq is not None else 0
    for first, last in ranges:
        if first > last:
            continue
        if last < floor:
            unrecoverable.append((first, last))
        elif first < floor:
            unrecoverable.append((first, floor - 1))
            requestable.append((floor, last))
        else:
            requestable.append((first, last))
    return Owed(requestable, unrecoverable)


def receipt_floor(last_seen: int, oldest_seq: int | None, keep: int) -> int:
    """The lowest sequence number whose batch receipt is still worth keeping (shared subscriptions): the last
    `keep` numbers up to the last seen, and none the agent no longer holds (below its `oldest_seq`: no
    gateway asks for those, so none looks for their receipts). A receipt dropped too early costs a resend
    (stored again, idempotently), never a reading."""
    floor = last_seen - keep + 1
    if oldest_seq is not None:
        floor = max(floor, oldest_seq)
    return max(0, floor)


def chunks(seq_range: SeqRange, span: int = MAX_RESEND_SPAN) -> list[SeqRange]:
    """Split a range into pieces a single resend request may carry (all of them: for bounded input only;
    the repair loop uses `plan_requests`)."""
    first, last = seq_range
    return [(start, min(last, start + span - 1)) for start in range(first, last + 1, span)]


@dataclass(frozen=True)
class RequestPlan:
    """The resend requests to publish in one check, and how many owed batches wait for a later one."""

    requests: list[SeqRange]
    not_asked: int


def plan_requests(
    ranges: Iterable[SeqRange], *, max_requests: int, max_batches: int, span: int = MAX_RESEND_SPAN
) -> RequestPlan:
    """Cut the ranges due into at most `max_requests` requests of at most `span` batches each, asking for at most
    `max_batches` in all, oldest first. Work and memory follow the number of requests, never a range's span:
    an agent announcing `next_seq` 10**13 costs one bounded plan, not 10**8 requests."""
    if max_requests < 1 or max_batches < 1 or span < 1:
        raise ValueError(f"max_requests, max_batches and span must be positive, not {max_requests, max_batches, span}")
    requests: list[SeqRange] = []
    budget = max_batches
    not_asked = 0
    for first, last in ranges:
        start = first
        while start <= last and len(requests) < max_requests and budget > 0:
            end = min(last, start + span - 1, start + budget - 1)
            requests.append((start, end))
            budget -= end - start + 1
            start = end + 1
        if start <= last:
            not_asked += last - start + 1
    return RequestPlan(requests, not_asked)


REPAIR_AGENTS = 10_000
"""Agents whose holes' timing RepairSchedule remembers by default (least recently checked forgotten first)."""


@dataclass
class _Hole:
    noticed: float
    requested: float = -float("inf")


@dataclass
class RepairSchedule:
    """Remembers when each hole was first noticed and last requested (in memory: a restart re-waits the grace).

    Per agent at most the ranges it was last checked with (gap repair passes at most `gap_max_ranges`), and at
    most `max_agents` agents, the least recently checked forgotten first (counted in `forgotten`; a forgotten
    agent's holes only wait their grace again): agent ids a publisher invents cannot grow it without bound.
    """

    grace_s: float = 10.0
    retry_s: float = 30.0
    max_agents: int = REPAIR_AGENTS
    forgotten: int = 0
    _agents: OrderedDict[tuple[str, str], dict[int, _Hole]] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        """Agents with holes remembered."""
        return len(self._agents)

    def due(self, site: str, agent: str, ranges: list[SeqRange], now: float) -> list[SeqRange]:
        """The ranges to request now. A range is known by its first number, which stays put as it fills."""
        holes = self._holes(site, agent, ranges, now)
        result = self._waited(holes, ranges, now)
        for first, _ in result:
            holes[first].requested = now
        return result

    def plan(
        self,
        site: str,
        agent: str,
        ranges: list[SeqRange],
        now: float,
        *,
        max_requests: int,
        max_batches: int,
        span: int = MAX_RESEND_SPAN,
    ) -> RequestPlan:
        """`due` and `plan_requests` in one: the requests to publish now, within the bounds. Only the ranges
        actually asked for wait `retry_s`; those the bounds did not reach stay due, so ranges that never fill
        (an agent that cannot answer) do not starve the ones after them."""
        holes = self._holes(site, agent, ranges, now)
        requests: list[SeqRange] = []
        not_asked = 0
        for first, last in self._waited(holes, ranges, now):
            budget = max_batches - sum(end - start + 1 for start, end in requests)
            if len(requests) >= max_requests or budget < 1:
                not_asked += last - first + 1
                continue
            part = plan_requests(
                [(first, last)], max_requests=max_requests - len(requests), max_batches=budget, span=span
            )
            holes[first].requested = now
            requests += part.requests
            not_asked += part.not_asked
        return RequestPlan(requests, not_asked)

    def _holes(self, site: str, agent: str, ranges: list[SeqRange], now: float) -> dict[int, _Hole]:
        """The agent's holes as of this check: the ranges now missing keep their times, the filled ones are
        forgotten; the agent becomes the most recently checked, and the least recent beyond max_agents go."""
        known = self._agents.pop((site, agent), {})
        holes = {first: known.get(first) or _Hole(now) for first, _ in ranges}
        if holes:
            self._agents[(site, agent)] = holes
            while len(self._agents) > self.max_agents:
                self._agents.popitem(last=False)
                self.forgotten += 1
        return holes

    def _waited(self, holes: dict[int, _Hole], ranges: list[SeqRange], now: float) -> list[SeqRange]:
        """The ranges past their grace period and their retry interval."""
        return [
            (first, last)
            for first, last in ranges
            if now - holes[first].noticed >= self.grace_s and now - holes[first].requested >= self.retry_s
        ]
