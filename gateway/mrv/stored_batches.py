"""The mrv role without ingest: batches seen on the broker, rolled up once the store shows them stored.

An `mrv` instance that does not store readings itself (gateway/roles.py) must not roll a minute up before the
ingest instance that took the batch has written it, or the rollup would be computed on part of the minute and
the mark gone. So it holds each batch it sees on its own full subscription as the minutes it touches, looks for
the batch's receipt in the store (ingest instances write one per stored batch), and marks the minutes for the
rollup engine only then. Held batches are bounded: past `max_batches` the oldest is marked anyway (its rollup
may then miss readings stored later; counted as `given_up`, `cems-gateway mrv recompute` redoes a period).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aua_contract import Batch
from gateway.stores import Store, StoreError
from gateway.time_ns import to_ns

log = logging.getLogger(__name__)

MinuteKey = tuple[str, str, str, int]
"""site, instrument, parameter, minute (ns): what the rollup engine marks"""

MAX_BATCHES = 100_000
MAX_RANGE = 10_000
"""sequence numbers asked for in one receipt query"""


def minute_keys(batch: Batch) -> frozenset[MinuteKey]:
    """The (series, minute) pairs a batch's readings fall in."""
    minute = 60 * 10**9
    return frozenset((batch.site, r.instrument, r.parameter, to_ns(r.ts) // minute * minute) for r in batch.readings)


@dataclass
class WaitingCounts:
    confirmed: int = 0
    """batches whose receipt was found and whose minutes were marked"""
    given_up: int = 0
    """batches marked without a receipt because more than max_batches were waiting"""


class AwaitingReceipts:
    """Batches seen, not yet known to be stored: per agent, sequence number -> minutes. Bounded. Pure."""

    def __init__(self, max_batches: int = MAX_BATCHES) -> None:
        self.max_batches = max_batches
        self.counts = WaitingCounts()
        self._waiting: OrderedDict[tuple[str, str, int], frozenset[MinuteKey]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, batch: Batch) -> list[frozenset[MinuteKey]]:
        """Hold a batch; returns the minutes of batches given up to stay within the bound (mark them now)."""
        key = (batch.site, batch.agent, batch.seq)
        self._waiting[key] = self._waiting.get(key, frozenset()) | minute_keys(batch)
        self._waiting.move_to_end(key)
        dropped = []
        while len(self._waiting) > self.max_batches:
            dropped.append(self._waiting.popitem(last=False)[1])
            self.counts.given_up += 1
        return dropped

    def ranges(self) -> list[tuple[str, str, int, int]]:
        """(site, agent, first, last) to look up, at most MAX_RANGE numbers each."""
        seqs: dict[tuple[str, str], list[int]] = {}
        for site, agent, seq in self._waiting:
            seqs.setdefault((site, agent), []).append(seq)
        found = []
        for (site, agent), numbers in seqs.items():
            numbers.sort()
            start = previous = numbers[0]
            for seq in numbers[1:]:
                if seq - start >= MAX_RANGE:
                    found.append((site, agent, start, previous))
                    start = seq
                previous = seq
            found.append((site, agent, start, previous))
        return found

    def stored(self, site: str, agent: str, seqs: Iterable[int]) -> set[MinuteKey]:
        """These batches are in the store: forget them and return their minutes."""
        minutes: set[MinuteKey] = set()
        for seq in seqs:
            held = self._waiting.pop((site, agent, seq), None)
            if held is not None:
                minutes |= held
                self.counts.confirmed += 1
        return minutes


async def mark_stored_forever(
    waiting: AwaitingReceipts,
    store: Store,
    mark: Callable[[set[MinuteKey]], Awaitable[None]],
    *,
    every_s: float,
) -> None:
    """Every `every_s`: look for the receipts of the held batches and mark the minutes of those stored."""
    while True:
        await asyncio.sleep(every_s)
        for site, agent, first, last in waiting.ranges():
            try:
                found = await store.received_batches(site, agent, first, last)
            except StoreError as error:  # the store is down: the batches stay held, asked for next time
                log.warning("stored batches: cannot read batch receipts (%s); trying later", error)
                break
            minutes = waiting.stored(site, agent, found)
            if minutes:
                await mark(minutes)
