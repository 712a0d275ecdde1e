"""What the gateway asked the agent to publish again, bounded and merged, and how fast it may go out. Pure.

A resend request names a range of sequence numbers (up to 100,000 in the contract). Answered as it came, 200
small overlapping requests republished 43,723 batches and each request's whole range was loaded into memory
(issue 13). Here a request is cut to what the outbox holds and to `max_per_request`, merged with the ranges
already waiting (a batch asked for twice goes out once), refused when `max_queued` batches are already
waiting, and the waiting ranges are handed out a page at a time as a token bucket allows. What is cut or
refused is not lost: gap repair asks again for whatever still has not arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

SeqRange = tuple[int, int]
"""first..last, both included."""


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    """queued as asked"""
    COALESCED = "coalesced"
    """all or part of it was already queued: those batches go out once"""
    LIMITED = "limited"
    """longer than max_per_request: the first part is queued"""
    REFUSED = "refused"
    """max_queued batches already wait: nothing queued"""
    NOT_HELD = "not_held"
    """nothing of it is in the outbox (pruned, dropped, or not sealed yet)"""
    MALFORMED = "malformed"
    """not a resend request by the contract"""
    FOREIGN = "foreign"
    """for another site or agent"""


@dataclass
class ResendQueue:
    """Disjoint sorted ranges still to republish; at most `max_queued` batches in all."""

    max_per_request: int
    max_queued: int
    ranges: list[SeqRange] = field(default_factory=list)
    queued: int = 0

    def offer(self, first: int, last: int, held: SeqRange | None) -> tuple[Outcome, int]:
        """Queue first..last within `held` (the outbox's oldest..newest seq); returns the outcome and how
        many batches were added."""
        if held is None or last < held[0] or first > held[1] or first > last:
            return Outcome.NOT_HELD, 0
        first, last = max(first, held[0]), min(last, held[1])
        outcome = Outcome.ACCEPTED
        if last - first + 1 > self.max_per_request:
            last = first + self.max_per_request - 1
            outcome = Outcome.LIMITED
        overlap = sum(max(0, min(last, b) - max(first, a) + 1) for a, b in self.ranges)
        added = last - first + 1 - overlap
        if self.queued + added > self.max_queued:
            return Outcome.REFUSED, 0
        if overlap and outcome is Outcome.ACCEPTED:
            outcome = Outcome.COALESCED
        self.ranges = _merge([*self.ranges, (first, last)])
        self.queued += added
        return outcome, added

    def take(self, count: int) -> SeqRange | None:
        """The next up to `count` batches to publish (lowest first), removed from the queue."""
        if not self.ranges or count <= 0:
            return None
        first, last = self.ranges[0]
        end = min(last, first + count - 1)
        if end == last:
            self.ranges.pop(0)
        else:
            self.ranges[0] = (end + 1, last)
        self.queued -= end - first + 1
        return first, end


def _merge(ranges: list[SeqRange]) -> list[SeqRange]:
    merged: list[SeqRange] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one token per republished batch."""

    rate: float
    burst: int
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        return cls(rate, burst, float(burst), now)

    def take(self, wanted: int, now: float) -> int:
        """Grant up to `wanted` tokens now (maybe 0)."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted

    def wait_s(self) -> float:
        """Seconds until at least one token is there."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


@dataclass(frozen=True)
class ResendLimits:
    """[agent] resend_* keys: how much the gateway's resend requests may make the agent republish."""

    max_per_request: int = 10_000
    max_queued: int = 20_000
    rate: float = 50.0
    burst: int = 1_000
