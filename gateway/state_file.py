"""The gateway's own SQLite state files (ledger, spool, alert states, rollup marks, report feed), and the one
way to change several rows of one of them at once: `transaction()`.

Each user is a small class over one connection shared by threads behind one lock, in WAL mode so the
several users of the one state file do not block each other's readers. The connection is in autocommit
mode (`isolation_level=None`), where Python's `with connection:` neither begins nor rolls back anything:
a change of more than one statement must go through `transaction()`, or a failure between two statements
leaves the first one written.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal


class NestedTransactionError(RuntimeError):
    """`transaction()` on a connection that is already inside one (see `transaction`)."""


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT around the block; ROLLBACK on any exception (then re-raised), so a block
    is written whole or not at all. Works on any sqlite3.Connection; autocommit ones are what it is for.

    IMMEDIATE takes the write lock at the start, so two writers (threads, or the CLI beside a running
    gateway) wait for each other (busy timeout) instead of one failing at its first write half-way through.

    Nesting is refused (NestedTransactionError), not turned into a savepoint: whoever opens the
    transaction decides what is one change, and a helper that must be part of a larger change takes the
    caller's connection and runs inside the caller's block. A silent savepoint would let an inner block
    "commit" something the outer one then rolls back.
    """
    if db.in_transaction:
        raise NestedTransactionError("a transaction is already open on this connection; transactions do not nest")
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException as error:
        if db.in_transaction:  # the block failed, or COMMIT did (busy, disk full): nothing of it stays
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error as rollback_error:  # e.g. the connection is gone: the first error matters
                error.add_note(f"and the ROLLBACK failed too: {rollback_error}")
        raise


class StateFile:
    def __init__(
        self,
        path: Path | str,
        schema: str,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_s: float = 30.0,
    ) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        """re-entrant, so a nested `transaction()` in one thread is refused with an error, not a deadlock"""
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(schema)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """This file's lock and `transaction()` on its connection: one change, whole or not at all."""
        with self._lock, transaction(self._db) as db:
            yield db

    def close(self) -> None:
        with self._lock:
            self._db.close()
