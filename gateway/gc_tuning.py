"""Garbage-collector settings for a long-running gateway process.

A decoded reading is three objects the cyclic collector tracks (the model, its __dict__, its fields-set),
and up to `write_queue_readings` of them wait for the writer. CPython's default (a young-generation pass
every 700 net allocations) then rescans the waiting batches again and again: in bench/ingest_throughput.py
that cost more CPU than decoding them (5 µs per reading instead of 2, and 11 % of the run in collections
even at a 100,000 threshold). Readings are acyclic and freed by reference counting, so a threshold above
what the queue can hold means no pass at all in steady state; one still runs if cycles pile up.

That threshold counts net allocations, so at a plant's rate it is hardly ever reached, and what only the
collector frees then stays: paho-mqtt's topic matcher leaves a reference cycle per message it receives (the
recursive closure in MQTTMatcher.iter_match, about 1 KiB), which at one batch a second would wait ~100,000
messages (a day) for the first pass. The soak found it as the gateway's RSS rising ~0.3 MiB a minute (Python
blocks allocated +3,500 a minute, C malloc flat). So a timer collects the young generations every minute and
everything every hour: a pass over what arrived since the last one, not one every 700 allocations.
"""

from __future__ import annotations

import gc
import threading

GENERATION0 = 500_000
"""Net tracked allocations between young-generation passes (CPython's default: 700): above the ~300,000
objects a full default write queue holds."""

COLLECT_EVERY_S = 60.0
"""Seconds between the timer's young-generation passes."""

FULL_EVERY = 60
"""Every this many timer passes is a full collection (hourly at COLLECT_EVERY_S)."""

TIMER_THREAD = "aua-gc"


def tune_for_ingest() -> None:
    """Freeze what startup allocated (modules, config) out of every later pass, collect far less often, and
    start the timer that still collects (`collect_on_timer`)."""
    gc.collect()
    gc.freeze()
    _, generation1, generation2 = gc.get_threshold()
    gc.set_threshold(GENERATION0, generation1, generation2)
    start_timer()


def collect_on_timer(tick: int) -> int:
    """The timer's pass number `tick`: the young generations, or every FULL_EVERY-th time all of them; returns
    how many unreachable objects it found."""
    return gc.collect(2 if tick % FULL_EVERY == 0 else 1)


def start_timer(every_s: float = COLLECT_EVERY_S) -> threading.Thread:
    """A daemon thread running `collect_on_timer` every `every_s` (once per process)."""
    for thread in threading.enumerate():
        if thread.name == TIMER_THREAD:
            return thread
    timer = threading.Thread(target=_collect_forever, args=(every_s,), name=TIMER_THREAD, daemon=True)
    timer.start()
    return timer


def _collect_forever(every_s: float) -> None:
    tick = 0
    wake = threading.Event()
    while not wake.wait(every_s):
        tick += 1
        collect_on_timer(tick)
