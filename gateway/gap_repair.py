"""Which sequence numbers an agent still owes, and when to ask for them again. Pure.

aiomqtt acknowledges before the gateway stores, and a broker without persistence forgets what it held
when it dies, so some batches never arrive. The agent keeps every batch in its outbox for a retention
window; the gateway sees the holes in (agent, seq) and asks for them by a resend request. A hole is
requested only after a grace period (it may just be in flight, or on another gateway instance of a
shared subscription) and then again at most every `retry_s` until it is filled.
"""

from __future__ import annotations

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


@dataclass
class RepairSchedule:
    """Remembers when each hole was first noticed and last requested (in memory: a restart re-waits the grace)."""

    grace_s: float = 10.0
    retry_s: float = 30.0
    _noticed: dict[tuple[str, str, int], float] = field(default_factory=dict)
    _requested: dict[tuple[str, str, int], float] = field(default_factory=dict)

    def due(self, site: str, agent: str, ranges: list[SeqRange], now: float) -> list[SeqRange]:
        """The ranges to request now. A range is known by its first number, which stays put as it fills."""
        result = self._waited(site, agent, ranges, now)
        for first, _ in result:
            self._requested[(site, agent, first)] = now
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
        requests: list[SeqRange] = []
        not_asked = 0
        for first, last in self._waited(site, agent, ranges, now):
            budget = max_batches - sum(end - start + 1 for start, end in requests)
            if len(requests) >= max_requests or budget < 1:
                not_asked += last - first + 1
                continue
            part = plan_requests(
                [(first, last)], max_requests=max_requests - len(requests), max_batches=budget, span=span
            )
            self._requested[(site, agent, first)] = now
            requests += part.requests
            not_asked += part.not_asked
        return RequestPlan(requests, not_asked)

    def _waited(self, site: str, agent: str, ranges: list[SeqRange], now: float) -> list[SeqRange]:
        """The ranges past their grace period and their retry interval (forgetting the ranges now filled)."""
        keys = {(site, agent, first) for first, _ in ranges}
        for key in [k for k in self._noticed if k[:2] == (site, agent) and k not in keys]:
            self._noticed.pop(key, None)
            self._requested.pop(key, None)
        result = []
        for first, last in ranges:
            key = (site, agent, first)
            noticed = self._noticed.setdefault(key, now)
            if now - noticed < self.grace_s:
                continue
            if now - self._requested.get(key, -float("inf")) < self.retry_s:
                continue
            result.append((first, last))
        return result
