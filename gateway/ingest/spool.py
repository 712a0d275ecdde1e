"""The gateway's disk spool: where validated batches wait while the store is down.

A batch counts as received once it is durable, in the store or here; the ledger records it only then.
Batches are kept as the validated MQTT payload, so draining decodes exactly what arrived.

The spool is bounded in payload bytes and batches ([gateway] spool_max_bytes, spool_max_batches). A full
spool refuses a batch rather than dropping one: the ingest then stops taking messages, so they stay
unacknowledged on the broker (its inflight window bounds what the gateway holds) until the drain makes room.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from gateway.state_file import StateFile, transaction

log = logging.getLogger(__name__)

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
    def __init__(self, path: Path, *, max_bytes: int | None = None, max_batches: int | None = None) -> None:
        super().__init__(path, _SCHEMA, synchronous="FULL")
        if max_bytes is not None:
            # The WAL is checkpointed and cut back at a quarter of the bound (at most SQLite's default 1000
            # pages), so the files on disk stay near the bound too; freed pages are reused, never returned.
            (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
            wal_bytes = min(1000 * page_size, max(16 * page_size, max_bytes // 4))
            self._db.execute(f"PRAGMA wal_autocheckpoint = {wal_bytes // page_size}")
            self._db.execute(f"PRAGMA journal_size_limit = {wal_bytes}")
        # Once per start (bounded by the spool's own bounds); afterwards both are kept in memory.
        depth, nbytes = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM spooled").fetchone()
        self._depth, self._bytes = int(depth), int(nbytes)
        self.max_bytes = max_bytes
        self.max_batches = max_batches
        self._state = threading.Lock()
        self._full_since: float | None = None
        self.full_count = 0
        """Times the spool became full (a batch had to wait for room)."""
        self._full_seconds = 0.0
        self.refused = 0
        """Puts refused for want of room (the batch waited, unacknowledged on the broker, and came again)."""

    @property
    def depth(self) -> int:
        """Batches waiting (kept in memory: the ingest path asks on every message)."""
        return self._depth

    @property
    def size(self) -> int:
        """Payload bytes waiting."""
        return self._bytes

    @property
    def full(self) -> bool:
        """Whether the last batch offered was refused and nothing has been taken since."""
        return self._full_since is not None

    @property
    def full_seconds(self) -> float:
        """Seconds spent full since start, the current stretch included."""
        with self._state:
            since = self._full_since
            return self._full_seconds + (0.0 if since is None else time.monotonic() - since)

    def has_room(self, size: int) -> bool:
        """Whether a payload of `size` bytes fits. An empty spool takes any batch, so one larger than the
        bound still passes (the registry's max_payload_bytes bounds it)."""
        if self._depth == 0:
            return True
        if self.max_batches is not None and self._depth >= self.max_batches:
            return False
        return self.max_bytes is None or self._bytes + size <= self.max_bytes

    def put(self, site: str, agent: str, seq: int, topic: str, payload: bytes) -> bool:
        """Spool a batch; False (and nothing written) when it does not fit: the caller holds it and waits."""
        with self._lock:
            if not self.has_room(len(payload)):
                self._became_full()
                return False
            self._db.execute(
                "INSERT INTO spooled (site, agent, seq, topic, payload) VALUES (?, ?, ?, ?, ?)",
                (site, agent, seq, topic, payload),
            )
            self._depth += 1
            self._bytes += len(payload)
            self._has_room_again()
            return True

    def oldest(self, limit: int) -> list[tuple[int, str, bytes]]:
        """(id, topic, payload) of the oldest spooled batches."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM spooled ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(int(row_id), topic, bytes(payload)) for row_id, topic, payload in rows]

    def remove(self, ids: list[int]) -> None:
        with self._lock:
            with transaction(self._db):  # the counters below change only once the rows are gone for good
                sizes = [
                    int(size)
                    for row_id in ids
                    for (size,) in self._db.execute(
                        "DELETE FROM spooled WHERE id = ? RETURNING length(payload)", (row_id,)
                    ).fetchall()
                ]
            self._depth -= len(sizes)
            self._bytes -= sum(sizes)
            if self._depth == 0:
                self._has_room_again()

    def _became_full(self) -> None:
        self.refused += 1
        with self._state:
            if self._full_since is not None:
                return
            self._full_since = time.monotonic()
            self.full_count += 1
        log.warning(
            "spool full (%d batches, %d bytes; [gateway] spool_max_bytes %s, spool_max_batches %s): taking no more "
            "messages until the store is back and the spool drains; the broker holds them unacknowledged",
            self._depth,
            self._bytes,
            self.max_bytes,
            self.max_batches,
        )

    def _has_room_again(self) -> None:
        with self._state:
            since = self._full_since
            if since is None:
                return
            self._full_since = None
            waited = time.monotonic() - since
            self._full_seconds += waited
        log.info(
            "spool has room again after %.0f s full (%d batches waiting): taking messages again", waited, self._depth
        )
