"""The agent's durable outbox: numbering, durability across restarts and kill -9, bounds, resend lookups."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.outbox import (
    EVICT_STEP_ROWS,
    FILE_OVERHEAD,
    PRUNE_STEP_ROWS,
    WAL_LIMIT_BYTES,
    Outbox,
    OutboxStats,
)


def payload_of(seq: int) -> bytes:
    return f"batch-{seq}".encode()


def test_sequence_numbers_start_at_zero_and_increase(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    assert [outbox.append(payload_of, 1) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert outbox.pending() == [(seq, payload_of(seq)) for seq in range(5)]
    outbox.close()


def test_numbers_survive_a_restart_and_are_never_reused(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    for _ in range(3):
        outbox.append(payload_of, 1)
    outbox.mark_acked(0, 2)
    outbox.close()
    reopened = Outbox(tmp_path / "o.sqlite")
    assert reopened.append(payload_of, 3) == 3
    assert [seq for seq, _ in reopened.pending()] == [1, 2, 3]
    reopened.close()


def test_acknowledged_batches_stay_for_resend_until_retention(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", retention_s=10)
    for _ in range(3):
        outbox.append(payload_of, 0)
    for seq in range(3):
        outbox.mark_acked(seq, 1_000_000_000)
    assert outbox.pending() == []
    assert outbox.get(0, 2) == [(seq, payload_of(seq)) for seq in range(3)]
    assert outbox.prune(now_ns=5_000_000_000) == 0
    assert outbox.prune(now_ns=12_000_000_000) == 3
    assert outbox.get(0, 2) == []
    outbox.close()


def test_overflow_drops_acknowledged_first_then_counts_unsent_drops(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", max_batches=3)
    for _ in range(3):
        outbox.append(payload_of, 0)
    outbox.mark_acked(0, 1)
    outbox.append(payload_of, 0)  # seq 3 pushes out acknowledged seq 0: nothing unsent is lost
    assert outbox.stats().dropped == 0
    assert [seq for seq, _ in outbox.pending()] == [1, 2, 3]
    outbox.append(payload_of, 0)  # seq 4 must push out unsent seq 1: counted, never silent
    stats = outbox.stats()
    assert stats.dropped == 1
    assert [seq for seq, _ in outbox.pending()] == [2, 3, 4]
    assert stats.next_seq == 5
    outbox.close()


def test_a_failed_payload_reserves_no_number(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")

    def broken(seq: int) -> bytes:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        outbox.append(broken, 0)
    assert outbox.append(payload_of, 0) == 0
    outbox.close()


def test_what_append_returned_survives_kill_minus_9(tmp_path: Path) -> None:
    """A child appends batches and reports each number; we SIGKILL it mid-stream, then reopen."""
    path = tmp_path / "o.sqlite"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from edge_agent.outbox import Outbox
        outbox = Outbox(Path({str(path)!r}))
        while True:
            seq = outbox.append(lambda s: b"x" * 2000, 0)
            print(seq, flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    reported = []
    for line in child.stdout:
        reported.append(int(line))
        if len(reported) >= 200:
            child.kill()
            break
    child.wait()
    child.stdout.close()
    assert child.returncode == -9
    outbox = Outbox(path)
    stored = [seq for seq, _ in outbox.pending(limit=1_000_000)]
    assert stored[: len(reported)] == reported, "every number reported by append must be on disk"
    assert stored == list(range(len(stored)))
    outbox.close()
    assert os.path.exists(path)


def test_a_cycle_cut_short_by_kill_minus_9_is_found_with_what_it_had_staged(tmp_path: Path) -> None:
    """A child begins a cycle and stages two instruments' readings (not synced: no fsync), then is killed -9
    before sealing. The next open finds the cycle and its readings; sealing them counts the cycle once."""
    path = tmp_path / "o.sqlite"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from edge_agent.outbox import Outbox
        outbox = Outbox(Path({str(path)!r}))
        outbox.append_many([lambda s: b"sealed"], 0, ends_cycle=True)
        outbox.begin_cycle(1_800_000_000_000_000_000)
        outbox.stage(1_800_000_000_000_000_000, [(2, b"[1,2]"), (1, b"[3]")])
        print("staged", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "staged\n"
    child.kill()
    child.wait()
    child.stdout.close()
    outbox = Outbox(path)
    cut = outbox.cut_cycle()
    assert cut is not None
    assert (cut.cycle_ns, cut.fragments, cut.readings) == (1_800_000_000_000_000_000, [(2, b"[1,2]"), (1, b"[3]")], 3)
    assert outbox.append_many([lambda s: b"recovered"], 0, recovered=cut.readings) == [1]
    assert outbox.cut_cycle() is None
    stats = outbox.stats()
    assert (stats.next_seq, stats.cut_cycles, stats.recovered_readings) == (2, 1, 3)
    outbox.close()
    reopened = Outbox(path)  # counted once, durably
    assert reopened.cut_cycle() is None
    assert (reopened.stats().cut_cycles, reopened.stats().recovered_readings) == (1, 3)
    reopened.close()


def test_a_sealed_cycle_leaves_nothing_to_recover(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    assert outbox.cut_cycle() is None
    outbox.begin_cycle(5)
    outbox.stage(5, [(1, b"[1]")])
    outbox.stage(5, [])
    outbox.append_many([lambda s: b"[1]"], 0, ends_cycle=True)
    assert outbox.cut_cycle() is None
    outbox.begin_cycle(6)  # a cycle in which nothing was read is still a cycle cut short
    outbox.close()
    reopened = Outbox(tmp_path / "o.sqlite")
    cut = reopened.cut_cycle()
    assert cut is not None
    assert (cut.cycle_ns, cut.fragments) == (6, [])
    reopened.close()


# --- steady state (issue 12): constant cost whatever the outbox holds, bounded bytes, a flat file ---------------

SMALL = 100
"""payload bytes of the bulk-filled batches: the cost under test is per operation, not per byte"""


def bulk_fill(path: Path, batches: int, *, acked: int) -> None:
    """An outbox holding `batches` batches (the first `acked` of them acknowledged) in three statements,
    then opened as an older file would be: the counters come from one count at open."""
    Outbox(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    numbers = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?) "
    db.execute("BEGIN")
    db.execute(
        numbers + "INSERT INTO batch (seq, created_ns, payload) SELECT i, i, zeroblob(?) FROM n", (batches, SMALL)
    )
    db.execute(numbers + "INSERT INTO acked (seq, size, acked_ns) SELECT i, ?, i FROM n", (acked, SMALL))
    db.execute(numbers + "INSERT INTO unsent (seq, size) SELECT i, ? FROM n WHERE i >= ?", (batches, SMALL, acked))
    db.execute("UPDATE counter SET value = ? WHERE name = 'next_seq'", (batches,))
    db.execute("DELETE FROM counter WHERE name = 'schema'")
    db.execute("COMMIT")
    db.close()


def bytes_read() -> int:
    """Bytes this process has read through system calls (page cache hits included)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def work(outbox: Outbox, operation: Callable[[], object]) -> tuple[int, int]:
    """What one operation costs, counted rather than timed: SQLite virtual-machine instructions, and bytes of
    the file read with SQLite's page cache off (a count(*) is one instruction but reads every page)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    connections = (outbox._db, outbox._quick)  # synced writes and reads; writes without fsync
    for db in connections:
        db.execute("PRAGMA cache_size = 0")
        db.set_progress_handler(count, 1)
    before = bytes_read()
    try:
        operation()
    finally:
        read = bytes_read() - before
        for db in connections:
            db.set_progress_handler(None, 1)
    return steps, read


def operation_costs(path: Path, size: int) -> dict[str, tuple[int, int]]:
    """Steps of each operation on an outbox full at `size` batches (half acknowledged, an old acknowledgement
    ready to prune)."""
    bulk_fill(path, size, acked=size // 2)
    outbox = Outbox(path, max_batches=size, max_bytes=1 << 40, retention_s=1)
    assert outbox.stats() == OutboxStats(
        next_seq=size, oldest_seq=0, pending=size - size // 2, stored=size, dropped=0, bytes=size * SMALL
    )
    payload = b"p" * SMALL
    costs = {
        "append at the bound (evicts an acknowledged batch)": work(outbox, lambda: outbox.append(lambda s: payload, 0)),
        "acknowledge": work(outbox, lambda: outbox.mark_acked(size // 2, 2_000_000_000)),
        "pending page": work(outbox, lambda: outbox.pending(100)),
        "resend page": work(outbox, lambda: outbox.get(size // 3, size, limit=50)),
        "stats": work(outbox, outbox.stats),
        "begin a poll cycle": work(outbox, lambda: outbox.begin_cycle(1)),
        "stage an instrument's readings": work(outbox, lambda: outbox.stage(1, [(7, b"[" + payload + b"]")])),
        "seal the cycle (its batch, its mark, its staged readings)": work(
            outbox, lambda: outbox.append_many([lambda s: payload], 0, ends_cycle=True)
        ),
        "prune one step": work(outbox, lambda: outbox.prune(1_000_000_000 + size // 4, max_rows=10)),
        "prune, nothing due": work(outbox, lambda: outbox.prune(0)),
    }
    assert outbox.stats().stored == size - 10
    outbox.close()
    return costs


def test_every_operation_costs_the_same_at_1k_and_100k_batches(tmp_path: Path) -> None:
    small = operation_costs(tmp_path / "small.sqlite", 1_000)
    large = operation_costs(tmp_path / "large.sqlite", 100_000)
    for name, (steps, read) in small.items():
        assert large[name][0] <= 1.2 * steps + 20, f"{name}: {steps} steps at 1k batches, {large[name][0]} at 100k"
        assert large[name][1] <= 1.5 * read, f"{name}: {read} bytes read at 1k batches, {large[name][1]} at 100k"


def test_appending_to_an_outbox_full_of_unsent_batches_costs_the_same(tmp_path: Path) -> None:
    costs = {}
    for size in (1_000, 100_000):
        path = tmp_path / f"{size}.sqlite"
        bulk_fill(path, size, acked=0)
        outbox = Outbox(path, max_batches=size)
        costs[size] = work(outbox, lambda outbox=outbox: outbox.append(lambda s: b"q", 0))
        assert outbox.stats().dropped == 1
        assert outbox.stats().oldest_seq == 1
        outbox.close()
    assert costs[100_000][0] <= 1.2 * costs[1_000][0] + 20, costs
    assert costs[100_000][1] <= 1.5 * costs[1_000][1], costs


def test_a_schema_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """The layout before counters: acknowledgements in the batch row. Numbers, payloads and acks carry over."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        """
        CREATE TABLE batch (seq INTEGER PRIMARY KEY, created_ns INTEGER NOT NULL, payload BLOB NOT NULL,
                            acked_ns INTEGER);
        CREATE INDEX batch_pending ON batch (seq) WHERE acked_ns IS NULL;
        CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counter (name, value) VALUES ('next_seq', 7), ('dropped', 2);
        INSERT INTO batch VALUES (2, 0, x'6161', 5), (3, 0, x'626262', 6), (5, 0, x'63', NULL), (6, 0, x'6464', NULL);
        """
    )
    db.close()
    outbox = Outbox(path, retention_s=0)
    assert outbox.stats() == OutboxStats(next_seq=7, oldest_seq=2, pending=2, stored=4, dropped=2, bytes=8)
    assert outbox.pending() == [(5, b"c"), (6, b"dd")]
    assert outbox.append(payload_of, 0) == 7
    assert outbox.prune(now_ns=10) == 2  # the two acknowledged at 5 and 6 ns
    assert outbox.stats() == OutboxStats(next_seq=8, oldest_seq=5, pending=3, stored=3, dropped=2, bytes=3 + 7)
    outbox.close()
    reopened = Outbox(path)
    assert reopened.stats().stored == 3
    reopened.close()


def test_the_byte_bound_drops_acknowledged_batches_first_then_counts_unsent_drops(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=10_000)
    kilobyte = b"k" * 1000
    for _ in range(10):
        outbox.append(lambda s: kilobyte, 0)
    for seq in (0, 1, 2):
        outbox.mark_acked(seq, 1)
    outbox.append(lambda s: b"k" * 2500, 0)  # 12,500 bytes: three acknowledged batches go, nothing unsent
    stats = outbox.stats()
    assert (stats.bytes, stats.stored, stats.dropped, stats.oldest_seq) == (9500, 8, 0, 3)
    outbox.append(lambda s: b"k" * 2500, 0)  # 12,000 bytes, nothing acknowledged left: two unsent go
    stats = outbox.stats()
    assert (stats.bytes, stats.stored, stats.pending, stats.dropped, stats.oldest_seq) == (10_000, 7, 7, 2, 5)
    assert [seq for seq, _ in outbox.pending()] == [5, 6, 7, 8, 9, 10, 11]
    outbox.close()


def test_a_lowered_bound_is_reached_in_small_steps(tmp_path: Path) -> None:
    """A restart with a smaller bound does not delete thousands of batches in one transaction (a stalled poll):
    each append removes a bounded number, the timer's prune the rest."""
    path = tmp_path / "o.sqlite"
    bulk_fill(path, 1000, acked=1000)
    outbox = Outbox(path, max_batches=100)
    outbox.append(payload_of, 0)
    assert outbox.stats().stored == 1001 - EVICT_STEP_ROWS
    assert outbox.prune(0, max_rows=PRUNE_STEP_ROWS) == PRUNE_STEP_ROWS
    assert outbox.prune(0) == 1001 - 2 * EVICT_STEP_ROWS - 100
    assert outbox.stats().stored == 100
    assert outbox.stats().dropped == 0
    outbox.close()


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_the_file_stops_growing_once_full(tmp_path: Path) -> None:
    """Fill past the byte bound, then keep appending, acknowledging and pruning: freed pages are reused and
    the WAL cut back, so the file and its WAL stay where they were when the bound was first reached."""
    path = tmp_path / "o.sqlite"
    bound = 4 << 20
    outbox = Outbox(path, max_bytes=bound)
    payload = b"r" * 20_000

    def cycle(count: int) -> None:
        for _ in range(count):
            seq = outbox.append(lambda s: payload, 0)
            outbox.mark_acked(seq, 1)
        outbox.prune(0)

    cycle(2 * bound // len(payload))
    assert outbox.stats().bytes <= bound
    full = file_bytes(path)
    sizes = []
    for _ in range(5):
        cycle(bound // len(payload))
        sizes.append(file_bytes(path))
    assert max(sizes) <= full * 1.1 + (64 << 10), (full, sizes)
    assert (path.parent / (path.name + "-wal")).stat().st_size <= WAL_LIMIT_BYTES + len(payload) * 2
    assert full <= bound * FILE_OVERHEAD + WAL_LIMIT_BYTES
    outbox.close()


def test_resend_lookups_of_huge_numbers_are_empty_not_an_error(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.append(payload_of, 0)
    assert outbox.get(2**64, 2**65) == []
    assert outbox.get(0, 2**64) == [(0, payload_of(0))]
    outbox.mark_acked(2**70, 0)
    outbox.close()
