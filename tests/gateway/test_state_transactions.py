"""Every multi-statement change of the ledger, the spool and the rollup marks is whole or not at all.

A temporary SQLite trigger fails one statement of a change after an earlier statement of the same change
has run (the alert store's changes are covered the same way in tests/gateway/test_state_file.py). The state file
must then be exactly as before, no transaction left open, and the same change without the failure must go
through and change what was compared (so the check can see a change at all).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.ingest.ledger import Arrival, Ledger
from gateway.ingest.spool import Spool
from gateway.mrv.rollup_engine import DirtyMarks
from gateway.state_file import StateFile

FAIL = "SELECT RAISE(ABORT, 'injected failure')"
NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000_000_000


def snapshot(state: StateFile) -> dict[str, list[tuple[object, ...]]]:
    db = state._db
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {table: sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in tables}


def ledger(path: Path) -> Ledger:
    state = Ledger(path)
    state.record_many([Arrival("s", "a", seq, 10, NS + seq, NS + seq) for seq in range(3)])
    return state


def marks(path: Path) -> DirtyMarks:
    state = DirtyMarks(path)
    state.add([("s", "i", "p", NS), ("s", "i", "q", NS + HOUR)])
    return state


def spool(path: Path) -> Spool:
    state = Spool(path)
    for seq in range(3):
        state.put("s", "a", seq, "aua/s/a/batch", b"x" * 100)
    return state


def set_aside_all(state: DirtyMarks) -> None:
    state.set_aside([(mark, "boom") for mark in state.take(10)], NS)


def marks_set_aside(path: Path) -> DirtyMarks:
    state = marks(path)
    set_aside_all(state)
    return state


CHANGES: list[tuple[str, Callable[[Path], StateFile], Callable[..., object], str]] = [
    # (what, the state file, the change, the trigger failing a later statement of the change)
    ("ledger: batches after a hole, then the agent's totals", ledger,
     lambda s: s.record_many([Arrival("s", "a", 5, 10, NS + 5, NS + 5), Arrival("s", "a", 6, 10, NS + 6, NS + 6)]),
     f"BEFORE UPDATE ON agent_total BEGIN {FAIL}; END"),
    ("ledger: the second agent of two", ledger,
     lambda s: s.record_many([Arrival("s", "a", 3, 10, NS + 3, NS + 3), Arrival("s", "b", 0, 10, NS, NS)]),
     f"BEFORE INSERT ON seq_run WHEN NEW.agent = 'b' BEGIN {FAIL}; END"),
    ("ledger: a dead letter, then its counters", ledger,
     lambda s: s.dead_letter("aua/s/a/batch", "bad", b"{", NS),
     f"BEFORE UPDATE ON ledger_counter BEGIN {FAIL}; END"),
    ("ledger: a resend request, then its range", ledger,
     lambda s: s.count_resend_request("s", "a", 3, 9), f"BEFORE INSERT ON resend_range BEGIN {FAIL}; END"),
    ("ledger: a refused batch, then the totals", ledger,
     lambda s: s.record_refused("s", "a", 7, NS + 7, NS + 7),
     f"BEFORE INSERT ON agent_total BEGIN {FAIL}; END"),
    ("spool: the second of three removed", spool,
     lambda s: s.remove([row for row, _, _ in s.oldest(3)]),
     f"BEFORE DELETE ON spooled WHEN OLD.id > 1 BEGIN {FAIL}; END"),
    ("rollup marks: the second series of two", marks,
     lambda s: s.add([("s", "j", "p", NS), ("s", "k", "p", NS)]),
     f"BEFORE INSERT ON rollup_dirty WHEN NEW.instrument = 'k' BEGIN {FAIL}; END"),
    ("rollup marks: taking the second mark of two", marks,
     lambda s: s.take(10), f"BEFORE UPDATE ON rollup_dirty WHEN OLD.parameter = 'q' BEGIN {FAIL}; END"),
    ("rollup marks: set aside, then the marks finished", marks,
     set_aside_all, f"BEFORE UPDATE ON rollup_dirty BEGIN {FAIL}; END"),
    ("rollup marks: put back, then the set-aside ones dropped", marks_set_aside,
     lambda s: s.release_set_aside(), f"BEFORE DELETE ON rollup_set_aside BEGIN {FAIL}; END"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "make", "change", "trigger"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_change_failed_between_its_statements_leaves_nothing_half_written(
    tmp_path: Path, what: str, make: Callable[[Path], StateFile], change: Callable[..., object], trigger: str
) -> None:
    state = make(tmp_path / "state.sqlite")
    before = snapshot(state)
    state._db.execute(f"CREATE TEMP TRIGGER injected {trigger}")
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        change(state)
    assert not state._db.in_transaction
    assert snapshot(state) == before, what
    state._db.execute("DROP TRIGGER injected")
    change(state)  # without the failure the change goes through, and changes what was compared
    assert snapshot(state) != before, what
    state.close()
