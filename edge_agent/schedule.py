"""When a poll cycle begins, when it stops waiting for answers, and which instruments a tick polls. Pure.

Every instrument's poll of a cycle has the cycle's deadline: the next tick, less a reserve for sealing the
batch. A poll not finished by then is not waited for; the cycle is sealed with what arrived, and the late poll's
readings go into the batch of the cycle in which they arrive, stamped when each answer came (as any reading).
The next tick starts on time for every instrument except those still busy with their earlier poll: only those
skip that tick. A cycle that ends after the next tick was due (the seal itself took that long, or the agent was
starved of CPU) is an overrun: the next tick then starts late, or, later than half an interval, is skipped for
everyone (`following_tick`).
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


LATE_START_SHARE = 0.5
"""A tick whose cycle could not start on time still starts (late) while less than this part of the interval has
passed since it; later than that, it is skipped for every instrument."""


def following_tick(tick: float, ended: float, interval: float) -> tuple[float, int]:
    """The tick the cycle after the one that began at `tick` and ended at `ended` belongs to, and how many ticks
    are skipped for every instrument before it.

    Normally the next tick on the grid, nothing skipped. A cycle that ended after the next tick was due (an
    overrun: a slow seal, a starved agent) does not cost that tick while it is less than half an interval late:
    it starts at once, with less time until its own deadline. Only the ticks later than that are skipped, and the
    grid stays where it was (no drift).
    """
    due = tick + interval
    if ended < due:
        return due, 0
    latest = math.floor(ended / interval) * interval  # the last tick already due
    if ended - latest < interval * LATE_START_SHARE:
        return latest, round((latest - due) / interval)
    return latest + interval, round((latest + interval - due) / interval)


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
