"""SQLite store: the zero-setup default for a single gateway and for tests.

sqlite3 calls block, and a connection belongs to the thread that made it, so every call runs on one
dedicated worker thread: the event loop never waits on disk, and no two calls race on the connection.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aua_contract import Batch, Quality
from gateway.rollup import Aggregate, Period
from gateway.stores.base import (
    BatchReceipt,
    HealthPoint,
    StoredReading,
    StoreError,
    from_ns,
    health_sort_key,
    to_ns,
)

SCHEMA_VERSION = 3
"""Stored in PRAGMA user_version; bump it with a migration when the table changes.
1: readings. 2: rollups (table `rollup`); a version-1 file gains the table when opened (CREATE IF NOT EXISTS).
3: rollup.n_flagged (added to an older table when opened, 0 for the rows already there).
The `health` table (aua_health points) is added the same way, without a version bump: older gateways ignore it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reading (
    site       TEXT    NOT NULL,
    instrument TEXT    NOT NULL,
    parameter  TEXT    NOT NULL,
    agent      TEXT    NOT NULL,
    ts_ns      INTEGER NOT NULL,  -- UTC, nanoseconds since the Unix epoch
    value      REAL,
    unit       TEXT    NOT NULL,
    quality    TEXT    NOT NULL,
    status     INTEGER,
    PRIMARY KEY (site, instrument, parameter, agent, ts_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reading_ts ON reading (ts_ns);
CREATE TABLE IF NOT EXISTS rollup (
    site          TEXT    NOT NULL,
    instrument    TEXT    NOT NULL,
    parameter     TEXT    NOT NULL,
    period        TEXT    NOT NULL,  -- 1m, 30m, 1h, 1d, 1mo, 1y
    start_ns      INTEGER NOT NULL,  -- UTC period start, nanoseconds since the Unix epoch
    value         REAL,              -- mean of the valid sub-values; NULL when there were none
    n_valid       INTEGER NOT NULL,
    n_expected    INTEGER NOT NULL,
    n_maintenance INTEGER NOT NULL,
    valid         INTEGER NOT NULL,  -- 0/1
    reason        TEXT    NOT NULL,
    unit          TEXT    NOT NULL,
    substituted   INTEGER NOT NULL,  -- 0/1
    method        TEXT    NOT NULL,
    n_flagged     INTEGER NOT NULL DEFAULT 0,  -- valid parts carrying a used-but-flagged quality
    PRIMARY KEY (site, period, instrument, parameter, start_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollup_start ON rollup (period, start_ns);
CREATE TABLE IF NOT EXISTS health (
    component TEXT    NOT NULL,  -- gateway | agent
    id        TEXT    NOT NULL,  -- the gateway that wrote the point
    site      TEXT    NOT NULL,
    agent     TEXT    NOT NULL,
    ts_ns     INTEGER NOT NULL,
    fields    TEXT    NOT NULL,  -- JSON object of integer fields
    PRIMARY KEY (component, id, site, agent, ts_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS health_ts ON health (ts_ns);
CREATE TABLE IF NOT EXISTS batch_receipt (
    site     TEXT    NOT NULL,
    agent    TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    PRIMARY KEY (site, agent, seq)
) WITHOUT ROWID;
"""

_UPSERT = """
INSERT INTO reading (site, instrument, parameter, agent, ts_ns, value, unit, quality, status)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (site, instrument, parameter, agent, ts_ns) DO UPDATE SET
    value = excluded.value, unit = excluded.unit, quality = excluded.quality, status = excluded.status
"""

_COLUMNS = "site, agent, instrument, parameter, ts_ns, value, unit, quality, status"

_AGGREGATE_COLUMNS = (
    "site, instrument, parameter, period, start_ns, value, n_valid, n_expected, n_maintenance, valid, reason, unit, "
    "substituted, method, n_flagged"
)
_AGGREGATE_UPSERT = f"""
INSERT INTO rollup ({_AGGREGATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (site, period, instrument, parameter, start_ns) DO UPDATE SET
    value = excluded.value, n_valid = excluded.n_valid, n_expected = excluded.n_expected,
    n_maintenance = excluded.n_maintenance, valid = excluded.valid, reason = excluded.reason, unit = excluded.unit,
    substituted = excluded.substituted, method = excluded.method, n_flagged = excluded.n_flagged
"""

_RECEIPT_UPSERT = """
INSERT INTO batch_receipt (site, agent, seq, readings) VALUES (?, ?, ?, ?)
ON CONFLICT (site, agent, seq) DO UPDATE SET readings = excluded.readings
"""

_HEALTH_UPSERT = """
INSERT INTO health (component, id, site, agent, ts_ns, fields) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (component, id, site, agent, ts_ns) DO UPDATE SET fields = excluded.fields
"""

T = TypeVar("T")


def _where(
    equal: dict[str, Any], time_column: str, start: datetime | None, end: datetime | None
) -> tuple[str, list[Any]]:
    """A WHERE clause (or "") and its parameters: each non-None `equal` value, and time in [start, end)."""
    conditions = [f"{column} = ?" for column, wanted in equal.items() if wanted is not None]
    params: list[Any] = [wanted for wanted in equal.values() if wanted is not None]
    for bound, operator in ((start, ">="), (end, "<")):
        if bound is not None:
            conditions.append(f"{time_column} {operator} ?")
            params.append(to_ns(bound))
    return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), params


def _aggregate_row(a: Aggregate) -> tuple[Any, ...]:
    """In _AGGREGATE_COLUMNS order."""
    return (
        a.site,
        a.instrument,
        a.parameter,
        a.period.value,
        to_ns(a.start),
        a.value if a.n_valid else None,
        a.n_valid,
        a.n_expected,
        a.n_maintenance,
        int(a.valid),
        a.reason,
        a.unit,
        int(a.substituted),
        a.method,
        a.n_flagged,
    )


def _aggregate_from_row(row: tuple[Any, ...]) -> Aggregate:
    site, instrument, parameter, period, start_ns, value, n_valid, n_expected = row[:8]
    n_maintenance, valid, reason, unit, substituted, method, n_flagged = row[8:]
    return Aggregate(
        site=site,
        instrument=instrument,
        parameter=parameter,
        period=Period(period),
        start=from_ns(start_ns),
        value=value if n_valid else None,
        n_valid=n_valid,
        n_expected=n_expected,
        valid=bool(valid),
        reason=reason,
        n_maintenance=n_maintenance,
        unit=unit,
        substituted=bool(substituted),
        method=method,
        n_flagged=n_flagged,
    )


class SqliteStore:
    """Readings in one SQLite file (WAL mode), or in memory for ":memory:"."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._connection: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def kind(self) -> str:
        return "sqlite"

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aua-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def write(self, readings: Sequence[StoredReading]) -> None:
        if not readings:
            return
        rows = [
            (r.site, r.instrument, r.parameter, r.agent, to_ns(r.ts), r.value, r.unit, r.quality.value, r.status)
            for r in readings
        ]
        await self._run(self._write_sync, rows)

    async def write_batches(self, batches: Sequence[Batch]) -> None:
        rows = [
            (b.site, r.instrument, r.parameter, b.agent, to_ns(r.ts), r.value, r.unit, r.quality.value, r.status)
            for b in batches
            for r in b.readings
        ]
        if rows:
            await self._run(self._write_sync, rows)

    async def query(
        self,
        *,
        site: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[StoredReading]:
        where, params = _where({"site": site, "instrument": instrument, "parameter": parameter}, "ts_ns", start, end)
        sql = f"SELECT {_COLUMNS} FROM reading {where} ORDER BY ts_ns, instrument, parameter, site, agent"
        rows = await self._run(self._fetch_sync, sql, params)
        return [
            StoredReading(
                site=site_,
                agent=agent,
                instrument=instrument_,
                parameter=parameter_,
                ts=from_ns(ts_ns),
                value=value,
                unit=unit,
                quality=Quality(quality),
                status=status,
            )
            for site_, agent, instrument_, parameter_, ts_ns, value, unit, quality, status in rows
        ]

    async def count_by_instrument(self) -> dict[tuple[str, str], int]:
        rows = await self._run(
            self._fetch_sync, "SELECT site, instrument, count(*) FROM reading GROUP BY site, instrument", []
        )
        return {(site, instrument): count for site, instrument, count in rows}

    async def write_aggregates(self, aggregates: Sequence[Aggregate]) -> None:
        if not aggregates:
            return
        rows = [_aggregate_row(aggregate) for aggregate in aggregates]
        await self._run(self._write_sync, rows, _AGGREGATE_UPSERT)

    async def write_receipts(self, receipts: Sequence[BatchReceipt]) -> None:
        if not receipts:
            return
        rows = [(r.site, r.agent, r.seq, r.readings) for r in receipts]
        await self._run(self._write_sync, rows, _RECEIPT_UPSERT)

    async def received_batches(self, site: str, agent: str, first: int, last: int) -> dict[int, int]:
        rows = await self._run(
            self._fetch_sync,
            "SELECT seq, readings FROM batch_receipt WHERE site = ? AND agent = ? AND seq BETWEEN ? AND ?",
            [site, agent, first, last],
        )
        return {int(seq): int(readings) for seq, readings in rows}

    async def write_health(self, points: Sequence[HealthPoint]) -> None:
        if not points:
            return
        rows = [
            (p.component, p.id, p.site, p.agent, to_ns(p.ts), json.dumps(dict(p.fields), sort_keys=True))
            for p in points
        ]
        await self._run(self._write_sync, rows, _HEALTH_UPSERT)

    async def query_health(
        self, *, component: str | None = None, start: datetime | None = None, end: datetime | None = None
    ) -> list[HealthPoint]:
        where, params = _where({"component": component}, "ts_ns", start, end)
        sql = f"SELECT component, id, site, agent, ts_ns, fields FROM health {where}"
        rows = await self._run(self._fetch_sync, sql, params)
        points = [
            HealthPoint(component=c, id=i, site=s, agent=a, ts=from_ns(ts_ns), fields=json.loads(fields))
            for c, i, s, a, ts_ns, fields in rows
        ]
        points.sort(key=health_sort_key)
        return points

    async def query_aggregates(
        self,
        *,
        period: Period,
        site: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Aggregate]:
        equal = {"period": Period(period).value, "site": site, "instrument": instrument, "parameter": parameter}
        where, params = _where(equal, "start_ns", start, end)
        sql = f"SELECT {_AGGREGATE_COLUMNS} FROM rollup {where} ORDER BY start_ns, instrument, parameter, site"
        return [_aggregate_from_row(row) for row in await self._run(self._fetch_sync, sql, params)]

    async def run_on_connection(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """`function(connection)` on the store's thread: maintenance such as retention pruning
        (gateway.stores.retention), with no second writer on the file."""
        return await self._run(self._call_sync, function)

    # -- everything below runs on the worker thread --------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError(f"{self!r} is not open", retryable=False)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except sqlite3.Error as error:
            # A locked or busy database (another writer) clears up; anything else (full disk, corrupt
            # file, read-only) needs a person, so retrying forever would only hide it.
            retryable = isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
            raise StoreError(f"SQLite {self.path}: {error}", retryable=retryable) from error

    def _open_sync(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit survives power loss, since the gateway tells agents a batch is safe after it.
            connection.execute("PRAGMA synchronous = FULL")
            self._check_schema_version(connection.execute("PRAGMA user_version").fetchone()[0])
            connection.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
            columns = {row[1] for row in connection.execute("PRAGMA table_info(rollup)")}
            if "n_flagged" not in columns:  # a version-2 file
                connection.execute("ALTER TABLE rollup ADD COLUMN n_flagged INTEGER NOT NULL DEFAULT 0")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _check_schema_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"SQLite {self.path}: schema version {version} is newer than this gateway's {SCHEMA_VERSION}",
                retryable=False,
            )

    def _close_sync(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _write_sync(self, rows: list[tuple[Any, ...]], statement: str = _UPSERT) -> None:
        """One transaction per call: a batch is stored whole or not at all."""
        assert self._connection is not None
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            self._connection.executemany(statement, rows)
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    def _call_sync(self, function: Callable[[sqlite3.Connection], T]) -> T:
        assert self._connection is not None
        return function(self._connection)

    def _fetch_sync(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        assert self._connection is not None
        return self._connection.execute(sql, params).fetchall()
