"""Garbage-collector settings for a long-running gateway process.

A decoded reading is three objects the cyclic collector tracks (the model, its __dict__, its fields-set),
and up to `write_queue_readings` of them wait for the writer. CPython's default (a young-generation pass
every 700 net allocations) then rescans the waiting batches again and again: in bench/ingest_throughput.py
that cost more CPU than decoding them (5 µs per reading instead of 2, and 11 % of the run in collections
even at a 100,000 threshold). Readings are acyclic and freed by reference counting, so a threshold above
what the queue can hold means no pass at all in steady state; one still runs if cycles pile up.
"""

from __future__ import annotations

import gc

GENERATION0 = 500_000
"""Net tracked allocations between young-generation passes (CPython's default: 700): above the ~300,000
objects a full default write queue holds."""


def tune_for_ingest() -> None:
    """Freeze what startup allocated (modules, config) out of every later pass, and collect far less often."""
    gc.collect()
    gc.freeze()
    _, generation1, generation2 = gc.get_threshold()
    gc.set_threshold(GENERATION0, generation1, generation2)
