"""The gateway's own durable state: which batches each agent has delivered, and the dead letters.

A batch is recorded here only after its readings are in the store, so a crash in between means the
batch is processed again on redelivery (store writes are idempotent) rather than lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from aua_contract import AgentStatus
from gateway.gap_repair import Owed, owed
from gateway.state_file import StateFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_seen (
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
    payload BLOB NOT NULL
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

_ADDED_COLUMNS = {
    "batch_seen": ("late INTEGER NOT NULL DEFAULT 0", "repaired INTEGER NOT NULL DEFAULT 0", "sent_ns INTEGER")
}
"""Columns newer than the first ledger schema: added to a state file that lacks them."""


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

    @property
    def missing(self) -> int:
        """Sequence numbers between the first and last seen that never arrived."""
        return self.last_seq - self.first_seq + 1 - self.batches


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


class Ledger(StateFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)
        with self._lock:
            for table, columns in _ADDED_COLUMNS.items():
                present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                for column in columns:
                    if column.split()[0] not in present:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    def record_many(
        self, batches: Sequence[tuple[str, str, int, int, int] | Arrival], *, classify: bool = True
    ) -> list[Recorded]:
        """Record stored batches (Arrival, or its first five fields) in one transaction, saying of each whether
        it was new, a duplicate, or a reused sequence number.

        With `classify`, a batch numbered below one already recorded counts as late, and as repaired when a
        resend request asked for it. Batches learnt from other instances' receipts are recorded without.
        """
        outcomes = []
        highest: dict[tuple[str, str], int] = {}
        with self._lock:
            # IMMEDIATE: a deferred transaction that reads, then writes fails at once with "database is locked"
            # when another user of the state file (rollup marks, alert states) committed in between (found by
            # tests/test_hostile_input.py: it ended the gateway); IMMEDIATE waits for the lock instead.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for row in batches:
                    site, agent, seq, readings, received_ns, sent_ns = Arrival(*row)
                    late = repaired = False
                    if classify:
                        if (site, agent) not in highest:
                            highest[(site, agent)] = self._highest_seq(site, agent)
                        late = seq < highest[(site, agent)]
                        repaired = late and self._was_requested(site, agent, seq)
                    inserted = self._db.execute(
                        "INSERT OR IGNORE INTO batch_seen VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (site, agent, seq, readings, received_ns, late, repaired, sent_ns),
                    ).rowcount
                    if inserted:
                        outcomes.append(Recorded.NEW)
                        if classify:
                            highest[(site, agent)] = max(highest[(site, agent)], seq)
                    elif self._sealed_otherwise(site, agent, seq, sent_ns):
                        outcomes.append(Recorded.REUSED)
                        self._db.execute(
                            """INSERT INTO seq_reuse VALUES (?, ?, 1, ?) ON CONFLICT (site, agent)
                               DO UPDATE SET count = count + 1, last_seq = excluded.last_seq""",
                            (site, agent, seq),
                        )
                    else:
                        outcomes.append(Recorded.DUPLICATE)
                        self._count_duplicate(site, agent)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return outcomes

    def _sealed_otherwise(self, site: str, agent: str, seq: int, sent_ns: int | None) -> bool:
        """Whether the batch recorded under this number was sealed at another time than this one."""
        if sent_ns is None:
            return False
        row = self._db.execute(
            "SELECT sent_ns FROM batch_seen WHERE site = ? AND agent = ? AND seq = ?", (site, agent, seq)
        ).fetchone()
        return row is not None and row[0] is not None and row[0] != sent_ns

    def _highest_seq(self, site: str, agent: str) -> int:
        row = self._db.execute("SELECT max(seq) FROM batch_seen WHERE site = ? AND agent = ?", (site, agent)).fetchone()
        return -1 if row[0] is None else int(row[0])

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

    def dead_letter(self, topic: str, reason: str, payload: bytes, received_ns: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO dead_letter (received_ns, topic, reason, payload) VALUES (?, ?, ?, ?)",
                (received_ns, topic, reason, payload),
            )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT received_ns, topic, reason, payload FROM dead_letter ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [DeadLetter(int(ns), topic, reason, bytes(payload)) for ns, topic, reason, payload in rows]

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

    def holes(self, site: str, agent: str) -> list[tuple[int, int]]:
        """Ranges of sequence numbers missing between the batches seen, oldest first."""
        with self._lock:
            rows = self._db.execute(
                """SELECT seq + 1, next - 1 FROM (
                       SELECT seq, lead(seq) OVER (ORDER BY seq) AS next
                       FROM batch_seen WHERE site = ? AND agent = ?)
                   WHERE next > seq + 1""",
                (site, agent),
            ).fetchall()
        return [(int(first), int(last)) for first, last in rows]

    def count_resend_request(self, site: str, agent: str, first: int, last: int) -> None:
        """A resend request for first..last was published (its range marks what arrives for it as repaired)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT INTO resend_request VALUES (?, ?, 1) "
                    "ON CONFLICT (site, agent) DO UPDATE SET count = count + 1",
                    (site, agent),
                )
                self._db.execute("INSERT OR IGNORE INTO resend_range VALUES (?, ?, ?, ?)", (site, agent, first, last))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def resend_requests(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute("SELECT site, agent, count FROM resend_request").fetchall()
        return {(site, agent): int(count) for site, agent, count in rows}

    def owed(self) -> dict[tuple[str, str], Owed]:
        """Per agent the ranges it still owes (holes, a tail its status announced, batches from before the
        first one seen), split into what it can still resend and what it no longer holds."""
        accounts = {(a.site, a.agent): a for a in self.accounts()}
        cursors = self.agent_cursors()
        result = {}
        for site, agent in sorted(set(accounts) | set(cursors)):
            account = accounts.get((site, agent))
            next_seq, oldest_seq, _ = cursors.get((site, agent), (None, None, None))
            result[(site, agent)] = owed(
                self.holes(site, agent) if account else [],
                account.first_seq if account else None,
                account.last_seq if account else None,
                next_seq,
                oldest_seq,
            )
        return result

    def accounts(self) -> list[AgentAccount]:
        with self._lock:
            rows = self._db.execute(
                """SELECT b.site, b.agent, count(*), sum(b.readings), min(b.seq), max(b.seq), coalesce(d.count, 0),
                          sum(b.late), sum(b.repaired), coalesce(u.count, 0), u.last_seq
                   FROM batch_seen b
                   LEFT JOIN duplicate d ON d.site = b.site AND d.agent = b.agent
                   LEFT JOIN seq_reuse u ON u.site = b.site AND u.agent = b.agent
                   GROUP BY b.site, b.agent ORDER BY b.site, b.agent"""
            ).fetchall()
        return [
            AgentAccount(s, a, int(n), int(r), int(lo), int(hi), int(d), int(late), int(repaired), int(u), last_u)
            for s, a, n, r, lo, hi, d, late, repaired, u, last_u in rows
        ]
