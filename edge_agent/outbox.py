"""The durable outbox: every batch gets its sequence number and lands on disk before anything is sent.

SQLite in WAL mode with synchronous=FULL: a batch that `append` returned for survives kill -9 and power
loss. The sequence counter lives in the same transaction as the batch, so numbers survive restarts and
are never reused. Acknowledged batches stay for `retention` so the gateway can ask for them again.

Bounded in batches, payload bytes and age. Past a bound the oldest acknowledged batches go first; only
then the oldest unsent ones, and those are counted as dropped, never silent.

Every operation costs the same whatever the outbox holds (issue 12): the batch table holds only the
payloads and is never scanned or rewritten; which batches are unsent or acknowledged (and their sizes)
lives in two small tables keyed by seq, and the totals (stored, pending, bytes, oldest seq) in the counter
table, changed in the same transaction as the rows they count. An acknowledgement moves a row between
the small tables instead of rewriting a payload. Pruning and overflow remove a bounded number of rows per
transaction, so a poll never waits for a large delete. Freed pages are reused (the file stops growing once
full) and the WAL is truncated back to `WAL_LIMIT_BYTES` after each checkpoint.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2
"""1: acknowledgement in the batch row (`acked_ns`), counted with count(*); 2: small tables and counters."""

SQLITE_INT_MAX = (1 << 63) - 1

WAL_LIMIT_BYTES = 8 << 20
"""journal_size_limit: the WAL is cut back to this after a checkpoint (SQLite checkpoints every ~4 MB)."""

EVICT_STEP_ROWS = 64
"""Most batches one append removes to get under a bound; the periodic prune removes the rest."""

PRUNE_STEP_ROWS = 64
"""Most batches one pruning transaction removes; the lock is released between steps so appends go first."""

FILE_OVERHEAD = 1.1
"""File bytes per payload byte at the bound: pages, overflow chains, the small tables and the WAL (measured)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch (
    seq INTEGER PRIMARY KEY,
    created_ns INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counter (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS unsent (
    seq INTEGER PRIMARY KEY,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS acked (
    seq INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    acked_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS acked_by_time ON acked (acked_ns);
CREATE TABLE IF NOT EXISTS staged (
    id INTEGER PRIMARY KEY,
    cycle_ns INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    fragment BLOB NOT NULL
);
INSERT OR IGNORE INTO counter (name, value) VALUES
    ('next_seq', 0), ('dropped', 0), ('cycle_open', 0), ('cut_cycles', 0), ('recovered_readings', 0);
"""

_COUNTERS = (
    "next_seq",
    "dropped",
    "stored",
    "pending",
    "bytes",
    "oldest_seq",
    "cycle_open",
    "cut_cycles",
    "recovered_readings",
)


@dataclass(frozen=True)
class OutboxStats:
    next_seq: int
    oldest_seq: int
    pending: int
    stored: int
    dropped: int
    bytes: int = 0
    """payload bytes held (pending and acknowledged)"""
    cut_cycles: int = 0
    """poll cycles a stop cut short (killed, power cut) before they were sealed, found at the next start"""
    recovered_readings: int = 0
    """readings of those cycles that had been staged and were sealed at the next start"""


@dataclass(frozen=True)
class CutCycle:
    """A poll cycle that began and was never sealed: the agent stopped in the middle of it."""

    cycle_ns: int
    """when it began (wall clock); 0 if unknown (staged readings without the mark)"""
    fragments: list[tuple[int, bytes]]
    """what was staged of it: (readings, JSON array) per instrument read, in the order they were read"""

    @property
    def readings(self) -> int:
        return sum(count for count, _ in self.fragments)


def _clamp(seq: int) -> int:
    """A sequence number as SQLite can hold it: a request for 2^64 must not raise OverflowError."""
    return max(0, min(seq, SQLITE_INT_MAX))


class Outbox:
    """Batches numbered per agent, kept on disk until acknowledged and then for the retention window."""

    def __init__(
        self,
        path: Path,
        *,
        max_batches: int = 1_000_000,
        max_bytes: int = 1 << 30,
        retention_s: float = 7 * 86400,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self.retention_ns = int(retention_s * 1e9)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        # Debian builds SQLite with SECURE_DELETE: every evicted batch would be overwritten with zeros, twice
        # the writes on an SD card for data that is no secret (it went to the broker in clear or over TLS).
        self._db.execute("PRAGMA secure_delete=OFF")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._upgrade()
        # A second connection for the writes that need no fsync (a cycle's mark, staged readings,
        # acknowledgements): synchronous=NORMAL for good instead of switching the main connection's setting
        # before and after each of them, and no automatic checkpoint, so a stage run on the event loop never
        # waits for one (the synced appends and the prune, in worker threads, checkpoint). A commit on it is
        # in the WAL file when it returns (it survives a killed process); the next synced commit's fsync of
        # the WAL makes it durable against a power cut too.
        self._quick = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._quick.execute("PRAGMA synchronous=NORMAL")
        self._quick.execute("PRAGMA wal_autocheckpoint=0")
        self._quick.execute("PRAGMA secure_delete=OFF")

    def _transaction(self, db: sqlite3.Connection | None = None) -> _Transaction:
        return _Transaction(self._db if db is None else db)

    def _upgrade(self) -> None:
        """Bring a file of an older layout (or a new one) to counters: one count at open, never again."""
        found = dict(self._db.execute("SELECT name, value FROM counter").fetchall())
        if found.get("schema", 0) >= SCHEMA_VERSION:
            return
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(batch)")}
        if "acked_ns" in columns:  # schema 1: move the acknowledgements out of the batch rows, once
            self._db.execute(
                "INSERT OR IGNORE INTO unsent (seq, size) SELECT seq, length(payload) FROM batch WHERE acked_ns IS NULL"
            )
            self._db.execute(
                "INSERT OR IGNORE INTO acked (seq, size, acked_ns)"
                " SELECT seq, length(payload), acked_ns FROM batch WHERE acked_ns IS NOT NULL"
            )
            self._db.execute("DROP INDEX IF EXISTS batch_pending")
        pending, pending_bytes = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM unsent").fetchone()
        acked, acked_bytes = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM acked").fetchone()
        counters = {
            "stored": pending + acked,
            "pending": pending,
            "bytes": pending_bytes + acked_bytes,
            "oldest_seq": self._oldest(int(found["next_seq"])),
            "schema": SCHEMA_VERSION,
        }
        self._db.executemany("INSERT OR REPLACE INTO counter (name, value) VALUES (?, ?)", sorted(counters.items()))

    def _oldest(self, next_seq: int) -> int:
        row = self._db.execute("SELECT seq FROM batch ORDER BY seq LIMIT 1").fetchone()
        return next_seq if row is None else int(row[0])

    def _counters(self, db: sqlite3.Connection | None = None) -> dict[str, int]:
        return {name: int(value) for name, value in (db or self._db).execute("SELECT name, value FROM counter")}

    def _save(self, before: dict[str, int], after: dict[str, int], db: sqlite3.Connection | None = None) -> None:
        changed = [(after[name], name) for name in _COUNTERS if after[name] != before[name]]
        (db or self._db).executemany("UPDATE counter SET value = ? WHERE name = ?", changed)

    def close(self) -> None:
        with self._lock:
            self._quick.close()
            self._db.close()

    def append(self, make_payload: Callable[[int], bytes], created_ns: int) -> int:
        """Reserve the next sequence number, build the payload with it, and store both in one transaction."""
        return self.append_many([make_payload], created_ns)[0]

    def append_many(
        self,
        makers: Sequence[Callable[[int], bytes]],
        created_ns: int,
        *,
        ends_cycle: bool = False,
        recovered: int | None = None,
    ) -> list[int]:
        """Several batches (one poll cycle's) numbered in order and stored in one transaction: one fsync, and
        either all of them are on disk or none. `ends_cycle`: they seal the cycle `begin_cycle` marked, so its
        mark and staged readings go in the same transaction; `recovered`: they seal the staged readings of a
        cycle cut short (`cut_cycle`), counted as such."""
        with self._lock, self._transaction():
            before = self._counters()
            after = dict(before)
            if ends_cycle or recovered is not None:
                self._db.execute("DELETE FROM staged")
                after["cycle_open"] = 0
            if recovered is not None:
                after["cut_cycles"] += 1
                after["recovered_readings"] += recovered
            sequences = []
            for make_payload in makers:
                seq = after["next_seq"]
                payload = make_payload(seq)
                self._db.execute(
                    "INSERT INTO batch (seq, created_ns, payload) VALUES (?, ?, ?)", (seq, created_ns, payload)
                )
                self._db.execute("INSERT INTO unsent (seq, size) VALUES (?, ?)", (seq, len(payload)))
                if after["stored"] == 0:
                    after["oldest_seq"] = seq
                after["next_seq"] += 1
                after["stored"] += 1
                after["pending"] += 1
                after["bytes"] += len(payload)
                self._evict(after, EVICT_STEP_ROWS)
                sequences.append(seq)
            self._save(before, after)
            return sequences

    def begin_cycle(self, cycle_ns: int, *, wait: bool = True) -> bool:
        """Mark a poll cycle as begun, until `append_many(ends_cycle=True)` seals it. Not synced (no fsync): it
        survives a killed process, which is what it is for; a power cut may forget it. `wait=False`: give up and
        return False at once if another operation holds the outbox (the caller then runs it in a thread)."""
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            with self._transaction(self._quick):
                self._quick.execute("UPDATE counter SET value = ? WHERE name = 'cycle_open'", (max(1, cycle_ns),))
        finally:
            self._lock.release()
        return True

    def stage(self, cycle_ns: int, fragments: Sequence[tuple[int, bytes]], *, wait: bool = True) -> bool:
        """Keep readings just read (per instrument: count and JSON array) until the cycle is sealed, so a killed
        agent seals them at its next start instead of losing them. Not synced, as `begin_cycle`; at most one
        cycle's readings are ever staged (sealing removes them). A small write without fsync, cheap enough for
        the event loop: `wait=False` returns False at once instead of waiting for another operation (a synced
        append, a prune) to end."""
        if not fragments:
            return True
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            with self._transaction(self._quick):
                self._quick.executemany(
                    "INSERT INTO staged (cycle_ns, readings, fragment) VALUES (?, ?, ?)",
                    [(cycle_ns, count, fragment) for count, fragment in fragments],
                )
        finally:
            self._lock.release()
        return True

    def cut_cycle(self) -> CutCycle | None:
        """The cycle a stop cut short, if the last run left one: begun and never sealed."""
        with self._lock:
            (cycle_ns,) = self._db.execute("SELECT value FROM counter WHERE name = 'cycle_open'").fetchone()
            rows = self._db.execute("SELECT readings, fragment FROM staged ORDER BY id").fetchall()
        if not cycle_ns and not rows:
            return None
        return CutCycle(int(cycle_ns), [(int(count), bytes(fragment)) for count, fragment in rows])

    def _over(self, counters: dict[str, int]) -> bool:
        return counters["stored"] > self.max_batches or counters["bytes"] > self.max_bytes

    def _evict(self, counters: dict[str, int], max_rows: int) -> int:
        """Remove up to max_rows of the oldest batches while over a bound: acknowledged ones first."""
        removed = 0
        while removed < max_rows and self._over(counters):
            row = self._db.execute("SELECT seq, size FROM acked ORDER BY seq LIMIT 1").fetchone()
            if row is not None:
                self._db.execute("DELETE FROM acked WHERE seq = ?", (row[0],))
            else:
                row = self._db.execute("SELECT seq, size FROM unsent ORDER BY seq LIMIT 1").fetchone()
                if row is None:
                    break
                self._db.execute("DELETE FROM unsent WHERE seq = ?", (row[0],))
                counters["pending"] -= 1
                counters["dropped"] += 1
            self._db.execute("DELETE FROM batch WHERE seq = ?", (row[0],))
            counters["stored"] -= 1
            counters["bytes"] -= row[1]
            removed += 1
        if removed:
            counters["oldest_seq"] = self._oldest(counters["next_seq"])
        return removed

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        """Unacknowledged batches, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT unsent.seq, batch.payload FROM unsent JOIN batch ON batch.seq = unsent.seq"
                " ORDER BY unsent.seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def mark_acked(self, seq: int, acked_ns: int) -> None:
        """The broker has the batch: keep it for resends only (moves a small row; the payload stays put)."""
        self.mark_acked_many([seq], acked_ns)

    def mark_acked_many(self, sequences: Sequence[int], acked_ns: int) -> None:
        """Acknowledge several batches in one transaction. Not synced to disk on its own (the connection without
        fsync): a power cut may forget the last acknowledgements, and those batches are sent again, which
        the gateway counts as duplicates; the next append's sync makes them durable too."""
        if not sequences:
            return
        db = self._quick
        with self._lock, self._transaction(db):
            before = self._counters(db)
            moved = 0
            for seq in sequences:
                row = db.execute("SELECT size FROM unsent WHERE seq = ?", (_clamp(seq),)).fetchone()
                if row is None:
                    continue
                db.execute("DELETE FROM unsent WHERE seq = ?", (seq,))
                db.execute("INSERT INTO acked (seq, size, acked_ns) VALUES (?, ?, ?)", (seq, row[0], acked_ns))
                moved += 1
            self._save(before, {**before, "pending": before["pending"] - moved}, db)

    def get(self, first: int, last: int, limit: int | None = None) -> list[tuple[int, bytes]]:
        """Stored batches with first <= seq <= last, oldest first; at most `limit` (a page of a resend)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM batch WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
                (_clamp(first), _clamp(last), -1 if limit is None else limit),
            ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def prune(self, now_ns: int, *, max_rows: int | None = None, pause_s: float = 0.0) -> int:
        """Forget acknowledged batches older than the retention window and anything over a bound (as append
        would), a small transaction at a time; returns how many batches went."""
        removed = 0
        cutoff = now_ns - self.retention_ns
        while max_rows is None or removed < max_rows:
            step = PRUNE_STEP_ROWS if max_rows is None else min(PRUNE_STEP_ROWS, max_rows - removed)
            with self._lock, self._transaction():
                before = self._counters()
                after = dict(before)
                rows = self._db.execute(
                    "SELECT seq, size FROM acked WHERE acked_ns < ? ORDER BY acked_ns LIMIT ?", (cutoff, step)
                ).fetchall()
                for seq, size in rows:
                    self._db.execute("DELETE FROM acked WHERE seq = ?", (seq,))
                    self._db.execute("DELETE FROM batch WHERE seq = ?", (seq,))
                    after["stored"] -= 1
                    after["bytes"] -= size
                done = len(rows) + self._evict(after, step - len(rows))
                if rows:
                    after["oldest_seq"] = self._oldest(after["next_seq"])
                self._save(before, after)
            removed += done
            if done < step:
                break
            if pause_s:
                time.sleep(pause_s)
        return removed

    def stats(self) -> OutboxStats:
        with self._lock:
            counters = self._counters()
        return OutboxStats(
            next_seq=counters["next_seq"],
            oldest_seq=counters["oldest_seq"],
            pending=counters["pending"],
            stored=counters["stored"],
            dropped=counters["dropped"],
            bytes=counters["bytes"],
            cut_cycles=counters["cut_cycles"],
            recovered_readings=counters["recovered_readings"],
        )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error (with isolation_level=None `with conn:` does neither)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if kind is not None:
            self._db.execute("ROLLBACK")
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            # a COMMIT that failed (disk full, I/O error) may leave the transaction open: end it, so the next
            # BEGIN does not fail for a reason that is long gone
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
