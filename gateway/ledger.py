"""The gateway's own durable state: which batches each agent has delivered, and the dead letters.

A batch is recorded here only after its readings are in the store, so a crash in between means the
batch is processed again on redelivery (store writes are idempotent) rather than lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aua_contract import AgentStatus
from gateway.state_file import StateFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_seen (
    site TEXT NOT NULL,
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    PRIMARY KEY (site, agent, seq)
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
"""


@dataclass(frozen=True)
class AgentAccount:
    site: str
    agent: str
    batches: int
    readings: int
    first_seq: int
    last_seq: int
    duplicates: int

    @property
    def missing(self) -> int:
        """Sequence numbers between the first and last seen that never arrived."""
        return self.last_seq - self.first_seq + 1 - self.batches


@dataclass(frozen=True)
class DeadLetter:
    received_ns: int
    topic: str
    reason: str
    payload: bytes


class Ledger(StateFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    def record_many(self, batches: list[tuple[str, str, int, int, int]]) -> list[bool]:
        """Record stored batches (site, agent, seq, readings, received_ns) in one transaction; which were new."""
        new = []
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for site, agent, seq, readings, received_ns in batches:
                    inserted = self._db.execute(
                        "INSERT OR IGNORE INTO batch_seen VALUES (?, ?, ?, ?, ?)",
                        (site, agent, seq, readings, received_ns),
                    ).rowcount
                    if not inserted:
                        self._count_duplicate(site, agent)
                    new.append(bool(inserted))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

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

    def count_resend_request(self, site: str, agent: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO resend_request VALUES (?, ?, 1) ON CONFLICT (site, agent) DO UPDATE SET count = count + 1",
                (site, agent),
            )

    def resend_requests(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute("SELECT site, agent, count FROM resend_request").fetchall()
        return {(site, agent): int(count) for site, agent, count in rows}

    def accounts(self) -> list[AgentAccount]:
        with self._lock:
            rows = self._db.execute(
                """SELECT b.site, b.agent, count(*), sum(b.readings), min(b.seq), max(b.seq), coalesce(d.count, 0)
                   FROM batch_seen b LEFT JOIN duplicate d ON d.site = b.site AND d.agent = b.agent
                   GROUP BY b.site, b.agent ORDER BY b.site, b.agent"""
            ).fetchall()
        return [AgentAccount(s, a, int(n), int(r), int(lo), int(hi), int(d)) for s, a, n, r, lo, hi, d in rows]
