"""When a poll cycle begins, when it stops waiting for answers, and which instruments a tick polls. Pure.

Every instrument's poll of a cycle has the cycle's deadline: the next tick, less a reserve for sealing the
batch. A poll not finished by then is not waited for; the cycle is sealed with what arrived, and the late poll's
readings go into the batch of the cycle in which they arrive, stamped when each answer came (as any reading).
The next tick starts on time for every instrument except those still busy with their earlier poll: only those
skip that tick. A whole tick is skipped for everyone only when a cycle ends after the next tick was due (the
seal itself took that long, or the agent was starved of CPU): an overrun.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SEAL_RESERVE_SHARE = 0.1
"""Part of the poll interval kept at the end of each cycle for sealing its batch (one fsynced transaction)."""

SEAL_RESERVE_MAX_S = 0.25
"""At most this many seconds of reserve: a long interval needs no longer seal."""


def next_tick(now: float, interval: float) -> float:
    """The next wall-clock multiple of the interval, so polls stay on a fixed grid and never drift."""
    return (now // interval + 1) * interval


def cycle_deadline(tick: float, interval: float) -> float:
    """When the cycle that began at `tick` stops waiting for answers: the next tick less the sealing reserve."""
    return tick + interval - min(interval * SEAL_RESERVE_SHARE, SEAL_RESERVE_MAX_S)


def ticks_missed(tick: float, ended: float, interval: float) -> int:
    """How many ticks after `tick` were already past when its cycle ended at `ended`: each of them is skipped
    for every instrument (0 when the cycle ended before the next tick)."""
    if ended < tick + interval:
        return 0
    return math.floor((ended - tick) / interval)


@dataclass(frozen=True)
class TickPlan:
    """What one tick does with each instrument (by its index in the site config)."""

    poll: tuple[int, ...]
    """instruments polled at this tick"""
    busy: tuple[int, ...]
    """instruments skipped at this tick: their earlier poll is still running (late, not lost)"""


def plan_tick(busy: Sequence[bool]) -> TickPlan:
    """Poll every instrument whose earlier poll has finished; skip the ones still busy with theirs (a second
    request in flight to a device that is behind only makes it later, and two polls would race)."""
    return TickPlan(
        poll=tuple(index for index, running in enumerate(busy) if not running),
        busy=tuple(index for index, running in enumerate(busy) if running),
    )
