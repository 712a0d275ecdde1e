"""The agent's outbox in steady state (issue 12): full at its bound, appending, acknowledging and pruning for many
turnovers of its contents. A cycle must cost the same after ten turnovers as after one, and the file, its WAL
and its free pages must stay the same size: counted (SQLite VM instructions, pages), not timed.

The soak saw the agent's CPU rise 1.8 -> 2.2 % of a core in an hour with the outbox at its bound; these tests
pin that the outbox is not where such a rise could come from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.outbox import Outbox

PAYLOAD = 2_000
"""bytes per batch: larger than a page, so every batch has overflow pages to free and reuse"""
BOUND = 200
"""batches the outbox holds (its max_batches)"""
CYCLE_NS = 1_000_000_000


def cycle(outbox: Outbox, number: int) -> None:
    """One poll cycle as the agent runs it: a sealed batch, its acknowledgement, a prune every 10th cycle."""
    now = number * CYCLE_NS
    outbox.begin_cycle(now)
    outbox.stage(now, [(30, b"[" + b"r" * PAYLOAD + b"]")])
    (seq,) = outbox.append_many([lambda s: bytes([s % 251]) * PAYLOAD], now, ends_cycle=True)
    outbox.mark_acked(seq, now)
    if number % 10 == 0:
        outbox.prune(now)


def measured(outbox: Outbox, first: int, count: int) -> int:
    """SQLite VM instructions (in hundreds) for `count` cycles from `first`."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    outbox._db.set_progress_handler(tick, 100)
    try:
        for number in range(first, first + count):
            cycle(outbox, number)
    finally:
        outbox._db.set_progress_handler(None, 100)
    return steps


def file_pages(outbox: Outbox, path: Path) -> tuple[int, int, int]:
    """Pages of the file, free pages in it, and its WAL's size in bytes."""
    pages = int(outbox._db.execute("PRAGMA page_count").fetchone()[0])
    free = int(outbox._db.execute("PRAGMA freelist_count").fetchone()[0])
    wal = Path(f"{path}-wal")
    return pages, free, wal.stat().st_size if wal.exists() else 0


@pytest.mark.parametrize(
    ("retention_cycles", "held"),
    [(100, range(100, 111)), (10_000, range(BOUND, BOUND + 1))],
    ids=["pruned by age (as in the soak)", "evicted at the count bound"],
)
def test_a_full_outbox_costs_the_same_and_stays_its_size_through_ten_turnovers(
    tmp_path: Path, retention_cycles: int, held: range
) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, max_batches=BOUND, max_bytes=1 << 40, retention_s=retention_cycles)
    for number in range(1, BOUND + 1):  # fill to the bound
        cycle(outbox, number)
    after_one = measured(outbox, BOUND + 1, 100)
    size_after_one = file_pages(outbox, path)
    for number in range(BOUND + 101, 10 * BOUND):
        cycle(outbox, number)
    after_ten = measured(outbox, 10 * BOUND, 100)
    size_after_ten = file_pages(outbox, path)
    stats = outbox.stats()
    outbox.close()

    assert stats.dropped == 0  # everything was acknowledged: only acknowledged batches were taken
    assert stats.stored in held
    assert stats.next_seq - stats.oldest_seq == stats.stored  # contiguous: the oldest went first
    assert after_ten <= 1.1 * after_one, (after_one, after_ten)
    pages_one, free_one, wal_one = size_after_one
    pages_ten, free_ten, wal_ten = size_after_ten
    assert pages_ten <= pages_one * 1.05, (size_after_one, size_after_ten)  # freed pages are reused
    assert free_ten <= max(free_one * 2, 64), (size_after_one, size_after_ten)
    assert wal_ten <= max(wal_one * 1.5, 1 << 20), (size_after_one, size_after_ten)
