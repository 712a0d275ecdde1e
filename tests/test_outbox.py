"""The agent's durable outbox: numbering, durability across restarts and kill -9, bounds, resend lookups."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox


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
