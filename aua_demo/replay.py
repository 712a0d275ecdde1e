"""Replaying the simulator's past through the real agent -> broker -> gateway path, faster than real time.

The simulator serves, and the agent stamps its readings at, the time a `ReplayClock` says. The replay sets the
clock to each step's simulated time, runs one ordinary poll cycle of the agent (Modbus reads, outbox, sealing,
the publisher wakes), and goes on as soon as the gateway keeps up: it waits while more than `window` batches
are sealed but not yet stored, so nothing queues past what the broker and the gateway hold (no drop, no loss).
Afterwards the clock follows the wall clock and the same agent polls on, live.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from edge_agent.poller import Agent


class ReplayClock:
    """Simulated epoch seconds while replaying, the wall clock once `follow_wall` is called."""

    def __init__(self, start: float) -> None:
        self._t = start
        self._live = False

    def seconds(self) -> float:
        return time.time() if self._live else self._t

    def stamp(self) -> datetime:
        """The agent's reading stamp (edge_agent.instrument_reader.Clock)."""
        return datetime.fromtimestamp(self.seconds(), UTC)

    def set(self, t: float) -> None:
        if self._live:
            raise RuntimeError("the replay clock follows the wall clock now")
        self._t = t

    def follow_wall(self) -> None:
        self._live = True

    @property
    def live(self) -> bool:
        return self._live


def replay_steps(start: float, end: float, cadence_s: float) -> Iterator[float]:
    """The simulated poll times in [start, end): every multiple of the cadence, as the agent's grid would be."""
    if cadence_s <= 0:
        raise ValueError(f"cadence must be positive, got {cadence_s}")
    first = math.ceil(start / cadence_s)
    index = first
    while index * cadence_s < end:
        yield index * cadence_s
        index += 1


def step_count(start: float, end: float, cadence_s: float) -> int:
    return max(0, math.ceil(end / cadence_s) - math.ceil(start / cadence_s))


def progress_line(done: int, total: int, elapsed_s: float, simulated: datetime) -> str:
    """`replay 12,345/43,200 cycles (28 %), simulated 2026-11-14 03:00 UTC, 41 s, ETA 1 min 45 s`."""
    share = done / total if total else 1.0
    if done and elapsed_s > 0:
        left = elapsed_s / done * (total - done)
        eta = f"ETA {_duration(left)}"
    else:
        eta = "ETA --"
    return (
        f"replay {done:,}/{total:,} cycles ({share:.0%}), simulated {simulated:%Y-%m-%d %H:%M} UTC, "
        f"{_duration(elapsed_s)}, {eta}"
    )


def _duration(seconds: float) -> str:
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


@dataclass
class ReplayResult:
    cycles: int
    readings: int
    seconds: float
    waits: int
    """times the replay paused for the gateway to catch up (backpressure)"""


async def replay(
    agent: Agent,
    clock: ReplayClock,
    *,
    start: float,
    end: float,
    cadence_s: float,
    stored_batches: Callable[[], int],
    window: int = 200,
    out: TextIO | None = None,
    progress_every_s: float = 1.0,
    drain_s: float = 30.0,
) -> ReplayResult:
    """Poll cycles at simulated times start, start + cadence, ... < end, as fast as the path allows.

    `stored_batches` counts the batches the gateway has stored; the replay never runs more than `window`
    batches ahead of it. A progress line with an ETA goes to `out` (default: stdout), rewritten about every
    second on a terminal, else a line every 10 s.
    """
    out = out or sys.stdout
    total = step_count(start, end, cadence_s)
    sealed_before = agent.outbox_stats().next_seq
    stored_before = stored_batches()
    began = time.monotonic()
    shown = began
    terminal = out is not None and out.isatty()
    cycles = readings = waits = 0
    for t in replay_steps(start, end, cadence_s):
        while agent.outbox_stats().next_seq - sealed_before - (stored_batches() - stored_before) > window:
            waits += 1
            await asyncio.sleep(0.01)
        clock.set(t)
        readings += await agent.poll_cycle()
        cycles += 1
        now = time.monotonic()
        if out is not None and now - shown >= (progress_every_s if terminal else 10 * progress_every_s):
            shown = now
            line = progress_line(cycles, total, now - began, clock.stamp())
            out.write(f"\r{line} " if terminal else f"{line}\n")
            out.flush()
    for _ in range(math.ceil(drain_s / 0.05)):  # bounded: what is still on its way arrives during the live part
        if agent.outbox_stats().next_seq - sealed_before <= stored_batches() - stored_before:
            break
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - began
    if out is not None:
        out.write(("\r" if terminal else "") + progress_line(cycles, total, elapsed, clock.stamp()) + "\n")
        out.flush()
    return ReplayResult(cycles, readings, elapsed, waits)


async def history_then_live(
    agent: Agent,
    clock: ReplayClock,
    *,
    start: float,
    end: float,
    cadence_s: float,
    stored_batches: Callable[[], int],
    on_live: Callable[[], None],
    out: TextIO | None = None,
) -> None:
    """An agent schedule (`Agent.run(schedule)`): replay [start, end) at accelerated time, then poll on the wall
    clock."""
    if end > start:
        await replay(agent, clock, start=start, end=end, cadence_s=cadence_s, stored_batches=stored_batches, out=out)
    clock.follow_wall()
    on_live()
    await agent.poll_forever()
