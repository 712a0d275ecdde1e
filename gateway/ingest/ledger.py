"""The gateway's own durable state: which batches each agent has delivered, and the dead letters.

A batch is recorded here only after its readings are in the store, so a crash in between means the
batch is processed again on redelivery (store writes are idempotent) rather than lost.

What gap repair and accounting need is kept as sequence ranges per agent (`seq_run`: each contiguous run of
recorded sequence numbers with its counts) and running totals per agent (`agent_total`), so recording a batch,
finding holes and accounting cost the same on day 365 as in minute one. Per-batch detail (`batch_seen`: the
sealing time that tells a redelivery from a reused sequence number) is kept only for a window, and dead
letters are bounded by rows, bytes and age ([ledger] in the gateway config).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

from aua_contract import AgentStatus
from gateway.config import LedgerSection
from gateway.ingest.gap_repair import Owed, SeqRange, owed
from gateway.state_file import StateFile, transaction

log = logging.getLogger(__name__)

_BATCH_SEEN = """
CREATE TABLE IF NOT EXISTS {name} (
    site TEXT NOT NULL,
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    late INTEGER NOT NULL DEFAULT 0,
    repaired INTEGER NOT NULL DEFAULT 0,
    sent_ns INTEGER,
    PRIMARY KEY (site, agent, seq)
) WITHOUT ROWID;
"""
_BATCH_SEEN_COLUMNS = "site, agent, seq, readings, received_ns, late, repaired, sent_ns"

_SCHEMA = (
    _BATCH_SEEN.format(name="batch_seen")
    + """CREATE TABLE IF NOT EXISTS seq_run (
    site TEXT NOT NULL,
    agent TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    late INTEGER NOT NULL,
    repaired INTEGER NOT NULL,
    refused INTEGER NOT NULL,
    max_sent_ns INTEGER,
    PRIMARY KEY (site, agent, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agent_total (
    site TEXT NOT NULL,
    agent TEXT NOT NULL,
    batches INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    late INTEGER NOT NULL,
    repaired INTEGER NOT NULL,
    refused INTEGER NOT NULL,
    PRIMARY KEY (site, agent)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_counter (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seq_reuse (
    site TEXT NOT NULL,
    agent TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (site, agent)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS duplicate (
    site TEXT NOT NULL,
    agent TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (site, agent)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    received_ns INTEGER NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER,
    sha256 TEXT
);
CREATE TABLE IF NOT EXISTS agent_status (
    site TEXT NOT NULL,
    agent TEXT NOT NULL,
    state TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    next_seq INTEGER,
    oldest_seq INTEGER,
    dropped INTEGER,
    PRIMARY KEY (site, agent)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS resend_request (
    site TEXT NOT NULL,
    agent TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (site, agent)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS resend_range (
    site TEXT NOT NULL,
    agent TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY (site, agent, first, last)
) WITHOUT ROWID;
"""
)

_ADDED_COLUMNS = {
    "batch_seen": ("late INTEGER NOT NULL DEFAULT 0", "repaired INTEGER NOT NULL DEFAULT 0", "sent_ns INTEGER"),
    "dead_letter": ("size INTEGER", "sha256 TEXT"),
}
"""Columns newer than the first ledger schema: added to a state file that lacks them."""

_VERSION = 1
"""`ledger_version` in ledger_counter: 1, sequence ranges; absent, one batch_seen row per batch forever. (Not
PRAGMA user_version: the state file is shared by several users, each with its own tables.)"""

_MAX_SEQ = 2**63 - 1
_MAX_TOPIC_CHARS = 1024
_MAX_REASON_CHARS = 4096
_PRUNE_STEP = 64
"""Rows pruned at most per step: pruning rides on the writes and never stalls one."""

COUNTERS = (
    "dead_letter_rows",
    "dead_letter_bytes",
    "dead_letters_pruned",
    "dead_letters_truncated",
    "batch_detail_pruned",
    "resend_ranges_pruned",
    "receipts_pruned",
)
"""The ledger's counters (`Ledger.counters()`): what it holds and what its bounds dropped."""


@dataclass(frozen=True)
class AgentAccount:
    site: str
    agent: str
    batches: int
    readings: int
    first_seq: int
    last_seq: int
    duplicates: int
    late: int = 0
    """Batches stored after a batch with a higher sequence number (redelivered, reordered or resent)."""
    repaired: int = 0
    """Late batches a resend request had asked for: gaps that gap repair filled."""
    reused: int = 0
    """Batches under a sequence number the agent had used for another batch (see Recorded.REUSED)."""
    last_reused_seq: int | None = None
    refused: int = 0
    """Batches the store refused for good: dead letters, not missing, never asked for again."""

    @property
    def missing(self) -> int:
        """Sequence numbers between the first and last seen that never arrived."""
        return self.last_seq - self.first_seq + 1 - self.batches - self.refused


class Arrival(NamedTuple):
    """A batch made durable: what the ledger records of it. `sent_ns` is the agent's sealing time (absent for
    batches known only from another instance's receipt)."""

    site: str
    agent: str
    seq: int
    readings: int
    received_ns: int
    sent_ns: int | None = None


class Recorded(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    """The same batch again (a redelivery or a resend): same sequence number, same sealing time."""
    REUSED = "reused"
    """Another batch under a sequence number already recorded: same number, other sealing time. The agent's
    outbox was replaced (a reinstall, a new disk) and its sequence restarted, or two agents share an id.
    Its readings are new data and are kept; the ledger keeps the first batch's entry."""


@dataclass(frozen=True)
class DeadLetter:
    received_ns: int
    topic: str
    reason: str
    payload: bytes
    """At most [ledger] dead_letter_payload_bytes of it: `size` and `sha256` describe the whole."""
    size: int = 0
    sha256: str = ""

    @property
    def truncated(self) -> bool:
        return len(self.payload) < self.size


class _Run(NamedTuple):
    first: int
    last: int
    max_sent_ns: int | None


@dataclass
class _Tail:
    """An agent's highest run, extended in memory by the in-order batches of one `record_many` call."""

    first: int
    last: int
    max_sent_ns: int | None
    batches: int = 0
    readings: int = 0
    detail: list[tuple[str, str, int, int, int, int | None]] = field(default_factory=list)

    def extend(self, arrival: Arrival) -> None:
        site, agent, seq, readings, received_ns, sent_ns = arrival
        self.last = seq
        self.max_sent_ns = _latest(self.max_sent_ns, sent_ns)
        self.batches += 1
        self.readings += readings
        self.detail.append((site, agent, seq, readings, received_ns, sent_ns))


def _latest(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


class Ledger(StateFile):
    def __init__(self, path: Path | str, bounds: LedgerSection | None = None) -> None:
        super().__init__(path, _SCHEMA)
        self.bounds = bounds or LedgerSection()
        with self._lock:
            for table, columns in _ADDED_COLUMNS.items():
                present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                for column in columns:
                    if column.split()[0] not in present:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            row = self._db.execute("SELECT value FROM ledger_counter WHERE name = 'ledger_version'").fetchone()
            if row is None or row[0] < _VERSION:
                self._upgrade()
            for name in COUNTERS:  # counters newer than the ledger file
                self._db.execute("INSERT OR IGNORE INTO ledger_counter VALUES (?, 0)", (name,))

    def _upgrade(self) -> None:
        """Fold a ledger of one row per batch into sequence ranges and totals, in place and in one transaction;
        then keep only the detail window of batch_seen, and count the dead letters it already holds."""
        with transaction(self._db):
            (rows,) = self._db.execute("SELECT count(*) FROM batch_seen").fetchone()
            if rows:
                log.info("ledger: folding %d batch rows into sequence ranges (once; may take a while)", rows)
            self._db.execute(
                """INSERT INTO seq_run
                   SELECT site, agent, min(seq), max(seq), sum(readings), sum(late), sum(repaired), 0, max(sent_ns)
                   FROM (SELECT *, seq - row_number() OVER (PARTITION BY site, agent ORDER BY seq) AS island
                         FROM batch_seen)
                   GROUP BY site, agent, island"""
            )
            self._db.execute(
                """INSERT INTO agent_total
                   SELECT site, agent, sum(last - first + 1), sum(readings), sum(late), sum(repaired), 0
                   FROM seq_run GROUP BY site, agent"""
            )
            pruned = rows - self._keep_detail_window()
            letters, nbytes = self._db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM dead_letter"
            ).fetchone()
            for name in COUNTERS:
                self._db.execute("INSERT OR IGNORE INTO ledger_counter VALUES (?, 0)", (name,))
            self._add("dead_letter_rows", letters)
            self._add("dead_letter_bytes", nbytes)
            self._add("batch_detail_pruned", pruned)
            self._db.execute("INSERT OR REPLACE INTO ledger_counter VALUES ('ledger_version', ?)", (_VERSION,))

    def _keep_detail_window(self) -> int:
        """Copy the detail window out of batch_seen and drop the rest with the table (far faster than deleting
        millions of rows one by one). Returns the rows kept."""
        self._db.execute(_BATCH_SEEN.format(name="batch_seen_window"))
        since = time.time_ns() - self._detail_age_ns()
        kept = 0
        for site, agent in self._db.execute("SELECT site, agent FROM agent_total").fetchall():
            kept += self._db.execute(
                f"INSERT INTO batch_seen_window SELECT {_BATCH_SEEN_COLUMNS} FROM batch_seen "
                "WHERE site = ? AND agent = ? AND seq > ? AND received_ns >= ?",
                (site, agent, self._highest_seq(site, agent) - self.bounds.detail_batches, since),
            ).rowcount
        self._db.execute("DROP TABLE batch_seen")
        self._db.execute("ALTER TABLE batch_seen_window RENAME TO batch_seen")
        return kept

    def _detail_age_ns(self) -> int:
        return int(self.bounds.detail_days * 86_400e9)

    def _add(self, name: str, amount: int) -> None:
        if amount:
            self._db.execute("UPDATE ledger_counter SET value = value + ? WHERE name = ?", (amount, name))

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM ledger_counter WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def count(self, name: str, amount: int) -> None:
        """Add to one of COUNTERS what was dropped elsewhere (e.g. batch receipts pruned in the store)."""
        if name not in COUNTERS:
            raise ValueError(f"no ledger counter {name!r}")
        with self._lock:
            self._add(name, amount)

    def counters(self) -> dict[str, int]:
        """What the ledger's bounds hold and dropped (see COUNTERS): for /metrics and accounting."""
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM ledger_counter").fetchall()
        values = {name: int(value) for name, value in rows}
        return {name: values.get(name, 0) for name in COUNTERS}

    # ---------------------------------------------------------------------------------------------- batches

    def record_many(
        self, batches: Sequence[tuple[str, str, int, int, int] | Arrival], *, classify: bool = True
    ) -> list[Recorded]:
        """Record stored batches (Arrival, or its first five fields) in one transaction, saying of each whether
        it was new, a duplicate, or a reused sequence number.

        With `classify`, a batch numbered below one already recorded counts as late, and as repaired when a
        resend request asked for it. Batches learnt from other instances' receipts are recorded without.
        """
        outcomes = []
        with self.transaction():
            # IMMEDIATE: a deferred transaction that reads, then writes fails at once with "database is locked"
            # when another user of the state file (rollup marks, alert states) committed in between (found by
            # tests/test_hostile_input.py: it ended the gateway); IMMEDIATE waits for the lock instead.
            touched: dict[tuple[str, str], int] = {}
            tails: dict[tuple[str, str], _Tail | None] = {}
            for row in batches:
                arrival = Arrival(*row)
                key = (arrival.site, arrival.agent)
                touched[key] = max(touched.get(key, arrival.received_ns), arrival.received_ns)
                if key not in tails:
                    tails[key] = self._load_tail(*key)
                tail = tails[key]
                if tail is not None and arrival.seq == tail.last + 1:
                    tail.extend(arrival)  # the common case: the next number, after everything recorded
                    outcomes.append(Recorded.NEW)
                    continue
                self._flush_tail(key, tails.pop(key))
                outcomes.append(self._record(arrival, classify=classify, refused=False))
            for key, tail in tails.items():
                self._flush_tail(key, tail)
            for (site, agent), now_ns in touched.items():
                self._prune_detail(site, agent, now_ns, 2 * len(batches) + 8)
            if touched:
                self._prune_dead_letters(max(touched.values()))
        return outcomes

    def _load_tail(self, site: str, agent: str) -> _Tail | None:
        row = self._db.execute(
            "SELECT first, last, max_sent_ns FROM seq_run WHERE site = ? AND agent = ? ORDER BY first DESC LIMIT 1",
            (site, agent),
        ).fetchone()
        return None if row is None else _Tail(*row)

    def _flush_tail(self, key: tuple[str, str], tail: _Tail | None) -> None:
        """Write what in-order batches added to an agent's highest run: one update per agent and call."""
        if tail is None or not tail.batches:
            return
        site, agent = key
        self._db.execute(
            "UPDATE seq_run SET last = ?, readings = readings + ?, max_sent_ns = ? "
            "WHERE site = ? AND agent = ? AND first = ?",
            (tail.last, tail.readings, tail.max_sent_ns, site, agent, tail.first),
        )
        self._db.execute(
            """INSERT INTO agent_total VALUES (?, ?, ?, ?, 0, 0, 0) ON CONFLICT (site, agent) DO UPDATE SET
               batches = batches + excluded.batches, readings = readings + excluded.readings""",
            (site, agent, tail.batches, tail.readings),
        )
        self._db.executemany("INSERT OR IGNORE INTO batch_seen VALUES (?, ?, ?, ?, ?, 0, 0, ?)", tail.detail)

    def record_refused(self, site: str, agent: str, seq: int, received_ns: int, sent_ns: int | None = None) -> bool:
        """A batch the store refuses for good (kept as a dead letter): accounted as refused, not missing, so gap
        repair does not ask for it forever. False if the sequence number was already recorded."""
        with self.transaction():
            arrival = Arrival(site, agent, seq, 0, received_ns, sent_ns)
            outcome = self._record(arrival, classify=False, refused=True)
        return outcome is Recorded.NEW

    def _run_at_or_before(self, site: str, agent: str, seq: int) -> _Run | None:
        row = self._db.execute(
            "SELECT first, last, max_sent_ns FROM seq_run WHERE site = ? AND agent = ? AND first <= ? "
            "ORDER BY first DESC LIMIT 1",
            (site, agent, seq),
        ).fetchone()
        return None if row is None else _Run(*row)

    def _record(self, arrival: Arrival, *, classify: bool, refused: bool) -> Recorded:
        site, agent, seq, readings, received_ns, sent_ns = arrival
        before = self._run_at_or_before(site, agent, seq)
        if before is not None and before.last >= seq:
            # a refusal of a batch already recorded (spooled, then refused on draining) changes nothing
            return Recorded.DUPLICATE if refused else self._again(arrival, before)
        highest = self._highest_seq(site, agent)
        late = classify and seq < highest
        repaired = late and self._was_requested(site, agent, seq)
        after = None
        if seq < _MAX_SEQ:
            after = self._db.execute(
                "SELECT last, readings, late, repaired, refused, max_sent_ns FROM seq_run "
                "WHERE site = ? AND agent = ? AND first = ?",
                (site, agent, seq + 1),
            ).fetchone()
        counts = [readings, int(late), int(repaired), int(refused)]
        last = seq
        latest = _latest(sent_ns)
        if after is not None:
            last = after[0]
            counts = [mine + theirs for mine, theirs in zip(counts, after[1:5], strict=True)]
            latest = _latest(latest, after[5])
            self._db.execute("DELETE FROM seq_run WHERE site = ? AND agent = ? AND first = ?", (site, agent, seq + 1))
        if before is not None and before.last == seq - 1:
            self._db.execute(
                "UPDATE seq_run SET last = ?, readings = readings + ?, late = late + ?, repaired = repaired + ?, "
                "refused = refused + ?, max_sent_ns = ? WHERE site = ? AND agent = ? AND first = ?",
                (last, *counts, _latest(latest, before.max_sent_ns), site, agent, before.first),
            )
        else:
            self._db.execute(
                "INSERT INTO seq_run VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (site, agent, seq, last, *counts, latest)
            )
        self._db.execute(
            """INSERT INTO agent_total VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site, agent) DO UPDATE SET
               batches = batches + excluded.batches, readings = readings + excluded.readings,
               late = late + excluded.late, repaired = repaired + excluded.repaired,
               refused = refused + excluded.refused""",
            (site, agent, 0 if refused else 1, readings, int(late), int(repaired), int(refused)),
        )
        if seq > max(highest, seq) - self.bounds.detail_batches:
            self._db.execute(
                "INSERT OR IGNORE INTO batch_seen VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (site, agent, seq, readings, received_ns, late, repaired, sent_ns),
            )
        return Recorded.NEW

    def _again(self, arrival: Arrival, run: _Run) -> Recorded:
        """A sequence number already recorded: the same batch again, or another batch under a reused number."""
        site, agent, seq, _, _, sent_ns = arrival
        if self._sealed_otherwise(site, agent, seq, sent_ns, run):
            self._db.execute(
                """INSERT INTO seq_reuse VALUES (?, ?, 1, ?) ON CONFLICT (site, agent)
                   DO UPDATE SET count = count + 1, last_seq = excluded.last_seq""",
                (site, agent, seq),
            )
            return Recorded.REUSED
        self._count_duplicate(site, agent)
        return Recorded.DUPLICATE

    def _sealed_otherwise(self, site: str, agent: str, seq: int, sent_ns: int | None, run: _Run) -> bool:
        """Whether the batch recorded under this number was sealed at another time than this one. Within the
        detail window the ledger knows its sealing time; beyond it, a batch sealed after every batch of the
        run it falls in cannot be one of them (an agent seals its sequence in order)."""
        if sent_ns is None:
            return False
        row = self._db.execute(
            "SELECT sent_ns FROM batch_seen WHERE site = ? AND agent = ? AND seq = ?", (site, agent, seq)
        ).fetchone()
        if row is not None:
            return row[0] is not None and row[0] != sent_ns
        return run.max_sent_ns is not None and sent_ns > run.max_sent_ns

    def _prune_detail(self, site: str, agent: str, now_ns: int, step: int) -> None:
        """Drop, a few at a time, per-batch detail outside the window (the oldest sequence numbers)."""
        floor = self._highest_seq(site, agent) - self.bounds.detail_batches
        pruned = self._db.execute(
            """DELETE FROM batch_seen WHERE site = ? AND agent = ? AND seq IN (
                   SELECT seq FROM batch_seen WHERE site = ? AND agent = ? ORDER BY seq LIMIT ?)
               AND (seq <= ? OR received_ns < ?)""",
            (site, agent, site, agent, step, floor, now_ns - self._detail_age_ns()),
        ).rowcount
        self._add("batch_detail_pruned", pruned)

    def _highest_seq(self, site: str, agent: str) -> int:
        row = self._db.execute(
            "SELECT last FROM seq_run WHERE site = ? AND agent = ? ORDER BY first DESC LIMIT 1", (site, agent)
        ).fetchone()
        return -1 if row is None else int(row[0])

    def _was_requested(self, site: str, agent: str, seq: int) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM resend_range WHERE site = ? AND agent = ? AND first <= ? AND last >= ? LIMIT 1",
            (site, agent, seq, seq),
        ).fetchone()
        return row is not None

    def count_duplicate(self, site: str, agent: str) -> None:
        with self._lock:
            self._count_duplicate(site, agent)

    def _count_duplicate(self, site: str, agent: str) -> None:
        self._db.execute(
            "INSERT INTO duplicate VALUES (?, ?, 1) ON CONFLICT (site, agent) DO UPDATE SET count = count + 1",
            (site, agent),
        )

    # ------------------------------------------------------------------------------------------ dead letters

    def dead_letter(self, topic: str, reason: str, payload: bytes, received_ns: int) -> None:
        """Keep a dead letter: at most dead_letter_payload_bytes of its payload, with its whole size and SHA-256;
        the oldest letters go once the table is over its rows, bytes or age."""
        kept = payload[: self.bounds.dead_letter_payload_bytes]
        digest = hashlib.sha256(payload).hexdigest()
        with self.transaction():
            self._db.execute(
                "INSERT INTO dead_letter (received_ns, topic, reason, payload, size, sha256) VALUES (?, ?, ?, ?, ?, ?)",
                (received_ns, topic[:_MAX_TOPIC_CHARS], reason[:_MAX_REASON_CHARS], kept, len(payload), digest),
            )
            self._add("dead_letter_rows", 1)
            self._add("dead_letter_bytes", len(kept))
            self._add("dead_letters_truncated", int(len(kept) < len(payload)))
            self._prune_dead_letters(received_ns)

    def _prune_dead_letters(self, now_ns: int) -> None:
        """Drop the oldest dead letters while over a bound, at most _PRUNE_STEP at a time."""
        bounds = self.bounds
        rows, nbytes = self._counter("dead_letter_rows"), self._counter("dead_letter_bytes")
        cutoff = now_ns - int(bounds.dead_letter_days * 86_400e9)
        if rows <= bounds.dead_letter_max_rows and nbytes <= bounds.dead_letter_max_bytes:
            oldest = self._db.execute("SELECT received_ns FROM dead_letter ORDER BY id LIMIT 1").fetchone()
            if oldest is None or oldest[0] >= cutoff:
                return
        candidates = self._db.execute(
            "SELECT id, received_ns, length(payload) FROM dead_letter ORDER BY id LIMIT ?", (_PRUNE_STEP,)
        ).fetchall()
        upto, gone, freed = None, 0, 0
        for row_id, received_ns, length in candidates:
            over = rows - gone > bounds.dead_letter_max_rows or nbytes - freed > bounds.dead_letter_max_bytes
            if not over and received_ns >= cutoff:
                break
            upto, gone, freed = row_id, gone + 1, freed + length
        if upto is None:
            return
        self._db.execute("DELETE FROM dead_letter WHERE id <= ?", (upto,))
        self._add("dead_letter_rows", -gone)
        self._add("dead_letter_bytes", -freed)
        self._add("dead_letters_pruned", gone)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT received_ns, topic, reason, payload, coalesce(size, length(payload)), coalesce(sha256, '') "
                "FROM dead_letter ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            DeadLetter(int(ns), topic, reason, bytes(payload), int(size), digest)
            for ns, topic, reason, payload, size, digest in rows
        ]

    # -------------------------------------------------------------------------------------- agent status

    def agent_state(self, status: AgentStatus, at_ns: int) -> None:
        """Remember an agent's last status; outbox counters only move forward (a late retained copy is older)."""
        with self._lock:
            self._db.execute(
                """INSERT INTO agent_status VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site, agent) DO UPDATE SET
                   state = excluded.state, at_ns = excluded.at_ns,
                   next_seq = max(coalesce(next_seq, 0), coalesce(excluded.next_seq, 0)),
                   oldest_seq = coalesce(excluded.oldest_seq, oldest_seq),
                   dropped = coalesce(excluded.dropped, dropped)""",
                (
                    status.site,
                    status.agent,
                    status.state.value,
                    at_ns,
                    status.next_seq,
                    status.oldest_seq,
                    status.dropped,
                ),
            )

    def agent_cursors(self) -> dict[tuple[str, str], tuple[int | None, int | None, int | None]]:
        """(site, agent) -> (next_seq, oldest_seq, dropped) as the agents last reported them."""
        with self._lock:
            rows = self._db.execute("SELECT site, agent, next_seq, oldest_seq, dropped FROM agent_status").fetchall()
        return {(site, agent): (nxt, oldest, dropped) for site, agent, nxt, oldest, dropped in rows}

    def offline_agents(self) -> set[tuple[str, str]]:
        """Agents whose last status (theirs, or the broker's last will) says offline."""
        with self._lock:
            rows = self._db.execute("SELECT site, agent FROM agent_status WHERE state = 'offline'").fetchall()
        return {(site, agent) for site, agent in rows}

    # ------------------------------------------------------------------------------------------ gap repair

    def holes(self, site: str, agent: str, *, from_seq: int | None = None, limit: int | None = None) -> list[SeqRange]:
        """Ranges of sequence numbers missing between the batches seen, oldest first. With `from_seq` and
        `limit`: at most `limit` of them, from the one that holds or follows `from_seq` (an indexed walk of that
        many runs, whatever the ledger holds)."""
        with self._lock:
            if limit is None:
                rows = self._db.execute(
                    """SELECT last + 1, next - 1 FROM (
                           SELECT last, lead(first) OVER (ORDER BY first) AS next
                           FROM seq_run WHERE site = ? AND agent = ?)
                       WHERE next IS NOT NULL""",
                    (site, agent),
                ).fetchall()
                return [(int(first), int(last)) for first, last in rows]
            start = None if from_seq is None else self._run_at_or_before(site, agent, from_seq)
            runs = self._db.execute(
                "SELECT first, last FROM seq_run WHERE site = ? AND agent = ? AND first >= ? ORDER BY first LIMIT ?",
                (site, agent, -(2**63) if start is None else start.first, limit + 1),
            ).fetchall()
        return [(left[1] + 1, right[0] - 1) for left, right in pairwise(runs)]

    def count_resend_request(self, site: str, agent: str, first: int, last: int) -> None:
        """A resend request for first..last was published (its range marks what arrives for it as repaired).
        Ranges whose every batch has since been recorded are dropped, a few at a time."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO resend_request VALUES (?, ?, 1) ON CONFLICT (site, agent) DO UPDATE SET count = count + 1",
                (site, agent),
            )
            self._db.execute("INSERT OR IGNORE INTO resend_range VALUES (?, ?, ?, ?)", (site, agent, first, last))
            oldest = self._db.execute(
                "SELECT first, last FROM resend_range WHERE site = ? AND agent = ? ORDER BY first LIMIT 8",
                (site, agent),
            ).fetchall()
            for lo, hi in oldest:
                run = self._run_at_or_before(site, agent, lo)
                if run is not None and run.last >= hi:
                    self._db.execute(
                        "DELETE FROM resend_range WHERE site = ? AND agent = ? AND first = ? AND last = ?",
                        (site, agent, lo, hi),
                    )
                    self._add("resend_ranges_pruned", 1)

    def resend_requests(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute("SELECT site, agent, count FROM resend_request").fetchall()
        return {(site, agent): int(count) for site, agent, count in rows}

    def owed(self, *, max_ranges: int | None = None) -> dict[tuple[str, str], Owed]:
        """Per agent the ranges it still owes (holes, a tail its status announced, batches from before the
        first one seen), split into what it can still resend and what it no longer holds.

        With `max_ranges` (gap repair), only the holes from the agent's oldest held batch on, at most that many:
        the ranges it can no longer resend are then not all listed."""
        accounts = {(a.site, a.agent): a for a in self.accounts()}
        cursors = self.agent_cursors()
        result = {}
        for site, agent in sorted(set(accounts) | set(cursors)):
            account = accounts.get((site, agent))
            next_seq, oldest_seq, _ = cursors.get((site, agent), (None, None, None))
            holes = []
            if account is not None:
                holes = self.holes(site, agent, from_seq=oldest_seq, limit=max_ranges)
            result[(site, agent)] = owed(
                holes,
                account.first_seq if account else None,
                account.last_seq if account else None,
                next_seq,
                oldest_seq,
            )
        return result

    def accounts(self) -> list[AgentAccount]:
        """Per agent what was recorded: from the running totals and the first and last run (indexed lookups)."""
        with self._lock:
            rows = self._db.execute(
                """SELECT t.site, t.agent, t.batches, t.readings,
                          (SELECT first FROM seq_run r WHERE r.site = t.site AND r.agent = t.agent
                           ORDER BY first LIMIT 1),
                          (SELECT last FROM seq_run r WHERE r.site = t.site AND r.agent = t.agent
                           ORDER BY first DESC LIMIT 1),
                          coalesce(d.count, 0), t.late, t.repaired, coalesce(u.count, 0), u.last_seq, t.refused
                   FROM agent_total t
                   LEFT JOIN duplicate d ON d.site = t.site AND d.agent = t.agent
                   LEFT JOIN seq_reuse u ON u.site = t.site AND u.agent = t.agent
                   ORDER BY t.site, t.agent"""
            ).fetchall()
        return [
            AgentAccount(
                s, a, int(n), int(r), int(lo), int(hi), int(d), int(late), int(repaired), int(u), last_u, int(refused)
            )
            for s, a, n, r, lo, hi, d, late, repaired, u, last_u, refused in rows
        ]
