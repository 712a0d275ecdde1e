"""The durable outbox: every batch gets its sequence number and lands on disk before anything is sent.

SQLite in WAL mode with synchronous=FULL: a batch that `append` returned for survives kill -9 and power
loss. The sequence counter lives in the same transaction as the batch, so numbers survive restarts and
are never reused. Acknowledged batches stay for `retention` so the gateway can ask for them again.
The outbox is bounded: past `max_batches` the oldest batches are dropped and the drop is counted,
never silent.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch (
    seq INTEGER PRIMARY KEY,
    created_ns INTEGER NOT NULL,
    payload BLOB NOT NULL,
    acked_ns INTEGER
);
CREATE INDEX IF NOT EXISTS batch_pending ON batch (seq) WHERE acked_ns IS NULL;
CREATE TABLE IF NOT EXISTS counter (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (name, value) VALUES ('next_seq', 0), ('dropped', 0);
"""


@dataclass(frozen=True)
class OutboxStats:
    next_seq: int
    oldest_seq: int
    pending: int
    stored: int
    dropped: int


class Outbox:
    """Batches numbered per agent, kept on disk until acknowledged and then for the retention window."""

    def __init__(self, path: Path, *, max_batches: int = 1_000_000, retention_s: float = 7 * 86400) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_batches = max_batches
        self.retention_ns = int(retention_s * 1e9)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, make_payload: Callable[[int], bytes], created_ns: int) -> int:
        """Reserve the next sequence number, build the payload with it, and store both in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (seq,) = self._db.execute("SELECT value FROM counter WHERE name = 'next_seq'").fetchone()
                self._db.execute(
                    "INSERT INTO batch (seq, created_ns, payload) VALUES (?, ?, ?)",
                    (seq, created_ns, make_payload(seq)),
                )
                self._db.execute("UPDATE counter SET value = value + 1 WHERE name = 'next_seq'")
                self._enforce_bound()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return int(seq)

    def _enforce_bound(self) -> None:
        (stored,) = self._db.execute("SELECT count(*) FROM batch").fetchone()
        excess = stored - self.max_batches
        if excess <= 0:
            return
        # Acknowledged batches go first; only then unsent ones, and those are counted as dropped.
        acked = self._db.execute(
            "DELETE FROM batch WHERE seq IN (SELECT seq FROM batch WHERE acked_ns IS NOT NULL ORDER BY seq LIMIT ?)",
            (excess,),
        ).rowcount
        unsent = excess - acked
        if unsent > 0:
            dropped = self._db.execute(
                "DELETE FROM batch WHERE seq IN (SELECT seq FROM batch ORDER BY seq LIMIT ?)", (unsent,)
            ).rowcount
            self._db.execute("UPDATE counter SET value = value + ? WHERE name = 'dropped'", (dropped,))

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        """Unacknowledged batches, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM batch WHERE acked_ns IS NULL ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def mark_acked(self, seq: int, acked_ns: int) -> None:
        with self._lock:
            self._db.execute("UPDATE batch SET acked_ns = ? WHERE seq = ? AND acked_ns IS NULL", (acked_ns, seq))

    def get(self, first: int, last: int) -> list[tuple[int, bytes]]:
        """Stored batches with first <= seq <= last, for answering a resend request."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM batch WHERE seq BETWEEN ? AND ? ORDER BY seq", (first, last)
            ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def prune(self, now_ns: int) -> int:
        """Forget acknowledged batches older than the retention window; returns how many."""
        with self._lock:
            return self._db.execute(
                "DELETE FROM batch WHERE acked_ns IS NOT NULL AND acked_ns < ?", (now_ns - self.retention_ns,)
            ).rowcount

    def stats(self) -> OutboxStats:
        with self._lock:
            counters = dict(self._db.execute("SELECT name, value FROM counter").fetchall())
            (pending,) = self._db.execute("SELECT count(*) FROM batch WHERE acked_ns IS NULL").fetchone()
            stored, oldest = self._db.execute("SELECT count(*), min(seq) FROM batch").fetchone()
        return OutboxStats(
            next_seq=int(counters["next_seq"]),
            oldest_seq=int(counters["next_seq"] if oldest is None else oldest),
            pending=int(pending),
            stored=int(stored),
            dropped=int(counters["dropped"]),
        )
