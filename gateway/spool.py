"""The gateway's disk spool: where validated batches wait while the store is down.

A batch counts as received once it is durable, in the store or here; the ledger records it only then.
Batches are kept as the validated MQTT payload, so draining decodes exactly what arrived.
"""

from __future__ import annotations

from pathlib import Path

from gateway.state_file import StateFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spooled (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


class Spool(StateFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA, synchronous="FULL")
        (self._depth,) = self._db.execute("SELECT count(*) FROM spooled").fetchone()

    @property
    def depth(self) -> int:
        """Batches waiting (kept in memory: the ingest path asks on every message)."""
        return int(self._depth)

    def put(self, site: str, agent: str, seq: int, topic: str, payload: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO spooled (site, agent, seq, topic, payload) VALUES (?, ?, ?, ?, ?)",
                (site, agent, seq, topic, payload),
            )
            self._depth += 1

    def oldest(self, limit: int) -> list[tuple[int, str, bytes]]:
        """(id, topic, payload) of the oldest spooled batches."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM spooled ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(int(row_id), topic, bytes(payload)) for row_id, topic, payload in rows]

    def remove(self, ids: list[int]) -> None:
        with self._lock:
            removed = self._db.executemany("DELETE FROM spooled WHERE id = ?", [(i,) for i in ids]).rowcount
            self._depth -= removed
