"""The gateway's own SQLite state files (ledger, spool, alert states, rollup marks, report feed).

Each user is a small class over one connection shared by threads behind one lock, in WAL mode so the
several users of the one state file do not block each other's readers.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Literal


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
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._db.close()
