"""SQLite store: the zero-setup default for a single gateway and for tests.

sqlite3 calls block, and a connection belongs to the thread that made it, so every call runs on one
dedicated worker thread: the event loop never waits on disk, and no two calls race on the connection.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from aua_contract import Batch, Quality, Reading
from gateway.mrv.rollup import Aggregate, Period
from gateway.state_file import transaction
from gateway.stores.base import (
    Approval,
    BatchReceipt,
    HealthPoint,
    Revision,
    RevisionCount,
    RevisionError,
    RevisionState,
    StoredReading,
    StoreError,
    health_sort_key,
    not_pending,
    revision_sort_key,
)
from gateway.stores.retention import raw_instruments
from gateway.time_ns import EPOCH, from_ns, to_ns

SCHEMA_VERSION = 4
"""Stored in PRAGMA user_version; bump it with a migration when the table changes.
1: readings. 2: rollups (table `rollup`); a version-1 file gains the table when opened (CREATE IF NOT EXISTS).
3: rollup.n_flagged (added to an older table when opened, 0 for the rows already there).
4: readings are write-once, other content goes to `reading_revision` (added when opened); an older gateway,
which would overwrite readings, refuses the file.
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
-- The rollup engine reads one instrument's dirty minutes (site, instrument, time range): through the primary
-- key that scanned every reading the instrument ever sent, a cost growing with the table (found by the soak).
-- Retention and time ranges over several instruments use it too, one instrument at a time (there is no index
-- on ts_ns alone: `reading_ts` cost ~30 % of the raw data's size and is dropped from older files at open).
CREATE INDEX IF NOT EXISTS reading_series_ts ON reading (site, instrument, ts_ns);
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
-- One instrument's minutes of an hour (the rollup engine builds the hour from them): through rollup_start that
-- read the minutes of every series in the hour, 20 times too many at 20 instruments.
CREATE INDEX IF NOT EXISTS rollup_series ON rollup (site, period, instrument, start_ns);
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
CREATE TABLE IF NOT EXISTS reading_revision (
    id            INTEGER PRIMARY KEY,
    site          TEXT    NOT NULL,
    instrument    TEXT    NOT NULL,
    parameter     TEXT    NOT NULL,
    agent         TEXT    NOT NULL,
    ts_ns         INTEGER NOT NULL,  -- the reading's time
    value         REAL,
    unit          TEXT    NOT NULL,
    quality       TEXT    NOT NULL,
    status        INTEGER,
    state         TEXT    NOT NULL,  -- pending | approved | superseded
    batch_seq     INTEGER,           -- the batch that carried it (NULL: not written from a batch)
    batch_sent_ns INTEGER,
    received_ns   INTEGER,           -- when the gateway stored it
    decided_by    TEXT    NOT NULL DEFAULT '',
    decided_why   TEXT    NOT NULL DEFAULT '',
    decided_ns    INTEGER,
    superseded_by TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS reading_revision_identity ON reading_revision (site, instrument, parameter, agent, ts_ns);
CREATE INDEX IF NOT EXISTS reading_revision_ts ON reading_revision (ts_ns);
CREATE TABLE IF NOT EXISTS batch_receipt (
    site     TEXT    NOT NULL,
    agent    TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    PRIMARY KEY (site, agent, seq)
) WITHOUT ROWID;
"""

_INSERT_NEW = """
INSERT INTO reading (site, instrument, parameter, agent, ts_ns, value, unit, quality, status)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (site, instrument, parameter, agent, ts_ns) DO NOTHING
"""
_IDENTITY = "site = ? AND instrument = ? AND parameter = ? AND agent = ? AND ts_ns = ?"
_STORED_CONTENT = f"SELECT value, unit, quality, status FROM reading WHERE {_IDENTITY}"
_SAME_REVISION = (
    f"SELECT id FROM reading_revision WHERE {_IDENTITY} AND value IS ? AND unit = ? AND quality = ? AND status IS ?"
)
_REVISION_COLUMNS = (
    "id, site, instrument, parameter, agent, ts_ns, value, unit, quality, status, state, batch_seq, batch_sent_ns, "
    "received_ns, decided_by, decided_why, decided_ns, superseded_by"
)
_INSERT_REVISION = """
INSERT INTO reading_revision (site, instrument, parameter, agent, ts_ns, value, unit, quality, status, state,
    batch_seq, batch_sent_ns, received_ns, decided_by, decided_why, decided_ns, superseded_by)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

ReadingRow = tuple[str, str, str, str, int, float | None, str, str, int | None]
"""In reading's primary-key-then-content order: site, instrument, parameter, agent, ts_ns, value, unit, quality,
status."""
Provenance = tuple[int | None, int | None]
"""The batch's seq and sent_at in ns (None, None: written without a batch)."""

_COLUMNS = "site, agent, instrument, parameter, ts_ns, value, unit, quality, status"
_FIRST_AGENT = "SELECT agent FROM reading WHERE site = ? AND instrument = ? AND parameter = ? ORDER BY agent LIMIT 1"
_NEXT_AGENT = (
    "SELECT agent FROM reading WHERE site = ? AND instrument = ? AND parameter = ? AND agent > ? ORDER BY agent LIMIT 1"
)
_SERIES_COLUMNS = "agent, ts_ns, value, unit, quality, status"
_QUALITIES = {quality.value: quality for quality in Quality}
"""Quality by its stored text: a dict lookup, where Quality(text) costs an enum call per row."""

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

RECEIPT_PRUNE_STEP = 10_000
"""Receipts deleted per transaction by prune_receipts."""

_HEALTH_UPSERT = """
INSERT INTO health (component, id, site, agent, ts_ns, fields) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (component, id, site, agent, ts_ns) DO UPDATE SET fields = excluded.fields
"""

T = TypeVar("T")


def _query_order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """ts_ns, instrument, parameter, site, agent of a _COLUMNS row."""
    return (row[4], row[2], row[3], row[0], row[1])


def _series_order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """ts_ns, agent of a _SERIES_COLUMNS row (`query`'s order within one series)."""
    return (row[1], row[0])


def _from_ns(ns: int) -> datetime:
    """gateway.time_ns.from_ns, the same datetime with less arithmetic (a large microsecond count is slow to
    normalise): whole seconds and the microseconds within one, both floored."""
    return EPOCH + timedelta(0, ns // 1_000_000_000, ns // 1000 % 1_000_000)


class SeriesReading(NamedTuple):
    """A stored reading as `query_series` returns it: StoredReading's fields, in its order, in a plain tuple (the
    rollup rules' RawSample)."""

    site: str
    agent: str
    instrument: str
    parameter: str
    ts: datetime
    value: float | None
    unit: str
    quality: Quality
    status: int | None


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


def _row(site: str, agent: str, r: Reading) -> ReadingRow:
    return (site, r.instrument, r.parameter, agent, to_ns(r.ts), r.value, r.unit, r.quality.value, r.status)


def _reading_from_row(row: tuple[Any, ...]) -> StoredReading:
    """site, instrument, parameter, agent, ts_ns, value, unit, quality, status -> StoredReading."""
    site, instrument, parameter, agent, ts_ns, value, unit, quality, status = row
    return StoredReading(
        site=site,
        agent=agent,
        instrument=instrument,
        parameter=parameter,
        ts=from_ns(ts_ns),
        value=value,
        unit=unit,
        quality=Quality(quality),
        status=status,
    )


def _revision_from_row(row: tuple[Any, ...]) -> Revision:
    """A row in _REVISION_COLUMNS order -> Revision."""
    number, *reading, state, seq, sent_ns, received_ns, by, why, decided_ns, superseded_by = row
    return Revision(
        id=str(number),
        reading=_reading_from_row(tuple(reading)),
        state=RevisionState(state),
        received_at=None if received_ns is None else from_ns(received_ns),
        batch_seq=seq,
        batch_sent_at=None if sent_ns is None else from_ns(sent_ns),
        decided_by=by,
        decided_why=why,
        decided_at=None if decided_ns is None else from_ns(decided_ns),
        superseded_by=superseded_by,
    )


class SqliteStore:
    """Readings in one SQLite file (WAL mode), or in memory for ":memory:"."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._connection: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._revisions_recorded = 0

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
        rows: list[ReadingRow] = [
            (r.site, r.instrument, r.parameter, r.agent, to_ns(r.ts), r.value, r.unit, r.quality.value, r.status)
            for r in readings
        ]
        await self._run(self._write_once_sync, [(rows, (None, None))], time.time_ns())

    async def write_batches(self, batches: Sequence[Batch]) -> None:
        groups: list[tuple[list[ReadingRow], Provenance]] = [
            ([_row(b.site, b.agent, r) for r in b.readings], (b.seq, to_ns(b.sent_at))) for b in batches if b.readings
        ]
        if groups:
            await self._run(self._write_once_sync, groups, time.time_ns())

    @property
    def revisions_recorded(self) -> int:
        return self._revisions_recorded

    async def query_revisions(
        self,
        *,
        site: str | None = None,
        agent: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        state: RevisionState | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Revision]:
        equal = {
            "site": site,
            "agent": agent,
            "instrument": instrument,
            "parameter": parameter,
            "state": None if state is None else RevisionState(state).value,
        }
        where, params = _where(equal, "ts_ns", start, end)
        # revision_sort_key's order (the id compared as text, as Revision.id is)
        sql = (
            f"SELECT {_REVISION_COLUMNS} FROM reading_revision {where} "
            "ORDER BY ts_ns, instrument, parameter, site, agent, CAST(id AS TEXT)"
        )
        if limit is not None or offset:
            sql += " LIMIT ? OFFSET ?"
            params += [-1 if limit is None else max(0, limit), max(0, offset)]
        rows = await self._run(self._fetch_sync, sql, params)
        revisions = [_revision_from_row(row) for row in rows]
        revisions.sort(key=revision_sort_key)
        return revisions

    async def revision_counts(
        self, *, site: str | None = None, start: datetime | None = None, end: datetime | None = None
    ) -> dict[tuple[str, str], RevisionCount]:
        where, params = _where({"site": site}, "ts_ns", start, end)
        sql = f"SELECT site, agent, state, count(*) FROM reading_revision {where} GROUP BY site, agent, state"
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for site_, agent, state, count in await self._run(self._fetch_sync, sql, params):
            counts.setdefault((site_, agent), {})[state] = int(count)
        return {key: RevisionCount(**by_state) for key, by_state in counts.items()}

    async def approve_revision(self, revision_id: str, *, by: str, why: str, at: datetime) -> Approval:
        try:
            number = int(revision_id)
        except ValueError:
            raise RevisionError(f"no revision {revision_id!r} in {self!r} (its revision ids are numbers)") from None
        return await self._run(self._approve_sync, number, by, why, to_ns(at))

    async def query(
        self,
        *,
        site: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[StoredReading]:
        if site is not None and instrument is not None and parameter is not None:
            series = await self.query_series(
                site=site, instrument=instrument, parameter=parameter, start=start, end=end
            )
            return [StoredReading(*reading) for reading in series]
        if (start is not None or end is not None) and (site is None or instrument is None):
            rows = await self._run(self._query_by_instrument_sync, site, instrument, parameter, start, end)
        else:
            where, params = _where(
                {"site": site, "instrument": instrument, "parameter": parameter}, "ts_ns", start, end
            )
            sql = f"SELECT {_COLUMNS} FROM reading {where} ORDER BY ts_ns, instrument, parameter, site, agent"
            rows = await self._run(self._fetch_sync, sql, params)
        qualities = _QUALITIES
        return [
            StoredReading(
                site=site_,
                agent=agent,
                instrument=instrument_,
                parameter=parameter_,
                ts=_from_ns(ts_ns),
                value=value,
                unit=unit,
                quality=qualities.get(quality) or Quality(quality),
                status=status,
            )
            for site_, agent, instrument_, parameter_, ts_ns, value, unit, quality, status in rows
        ]

    async def query_series(
        self,
        *,
        site: str,
        instrument: str,
        parameter: str,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[SeriesReading]:
        """`query` of one series, as SeriesReading tuples: for reading millions (the report's raw-data check, the
        QAL3 capture) without building a StoredReading and checking it again for each (the store checked them on
        the way in)."""
        qualities, make, epoch, span = _QUALITIES, tuple.__new__, EPOCH, timedelta  # locals: millions of rows
        return [
            make(
                SeriesReading,
                (
                    site,
                    agent,
                    instrument,
                    parameter,
                    epoch + span(0, ts_ns // 1_000_000_000, ts_ns // 1000 % 1_000_000),  # _from_ns
                    value,
                    unit,
                    qualities.get(quality) or Quality(quality),
                    status,
                ),
            )
            for agent, ts_ns, value, unit, quality, status in await self._run(
                self._query_series_sync, site, instrument, parameter, start, end
            )
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

    async def prune_receipts(self, site: str, agent: str, below: int) -> int:
        return await self._run(self._prune_receipts_sync, site, agent, below)

    def _prune_receipts_sync(self, site: str, agent: str, below: int) -> int:
        """In steps of RECEIPT_PRUNE_STEP rows, each its own transaction, so a first prune of a large backlog
        never holds the write lock for long."""
        connection = self._connection
        assert connection is not None
        dropped = 0
        while True:
            with transaction(connection):
                step = connection.execute(
                    """DELETE FROM batch_receipt WHERE site = ? AND agent = ? AND seq IN (
                           SELECT seq FROM batch_receipt WHERE site = ? AND agent = ? AND seq < ?
                           ORDER BY seq LIMIT ?)""",
                    (site, agent, site, agent, below, RECEIPT_PRUNE_STEP),
                ).rowcount
            dropped += step
            if step < RECEIPT_PRUNE_STEP:
                return dropped

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
            connection.executescript(f"BEGIN; {_SCHEMA} DROP INDEX IF EXISTS reading_ts; COMMIT;")
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

    def _write_once_sync(self, groups: list[tuple[list[ReadingRow], Provenance]], received_ns: int) -> None:
        """One transaction: new identities inserted, conflicting rows compared (only for a group where the
        insert skipped a row, so the usual all-new batch costs no lookup) and recorded as revisions."""
        connection = self._connection
        assert connection is not None
        recorded = 0
        with transaction(connection):
            for rows, provenance in groups:
                before = connection.total_changes
                connection.executemany(_INSERT_NEW, rows)
                if connection.total_changes - before < len(rows):
                    recorded += self._revise_sync(rows, provenance, received_ns)
        self._revisions_recorded += recorded

    def _revise_sync(self, rows: list[ReadingRow], provenance: Provenance, received_ns: int) -> int:
        """Rows some of which were already stored: each whose content differs from the stored one, and from
        every revision already kept for its identity, becomes a pending revision. Returns how many."""
        assert self._connection is not None
        execute = self._connection.execute
        recorded = 0
        for row in rows:
            identity, content = row[:5], row[5:]
            stored = execute(_STORED_CONTENT, identity).fetchone()
            if stored is None or tuple(stored) == content:
                continue
            if execute(_SAME_REVISION, (*identity, *content)).fetchone() is not None:
                continue
            execute(_INSERT_REVISION, (*row, RevisionState.PENDING.value, *provenance, received_ns, "", "", None, ""))
            recorded += 1
        return recorded

    def _approve_sync(self, number: int, by: str, why: str, at_ns: int) -> Approval:
        """In one transaction: the stored value becomes a superseded revision, the revision the stored value."""
        connection = self._connection
        assert connection is not None
        with transaction(connection):
            return self._approve_in_transaction(connection, number, by, why, at_ns)

    def _approve_in_transaction(
        self, connection: sqlite3.Connection, number: int, by: str, why: str, at_ns: int
    ) -> Approval:
        select = f"SELECT {_REVISION_COLUMNS} FROM reading_revision WHERE id = ?"
        found = connection.execute(select, (number,)).fetchone()
        if found is None:
            raise RevisionError(f"no revision {number} in {self!r}")
        revision = _revision_from_row(found)
        if revision.state is not RevisionState.PENDING:
            raise RevisionError(not_pending(revision))
        identity, content = tuple(found[1:6]), tuple(found[6:10])
        stored = connection.execute(_STORED_CONTENT, identity).fetchone()
        replaced = None
        if stored is None:  # the original is gone (raw-data retention): the revision is all there is
            connection.execute(_INSERT_NEW, (*identity, *content))
        else:
            replaced = _reading_from_row((*identity, *stored))
            same = connection.execute(_SAME_REVISION, (*identity, *stored)).fetchone()
            if same is None:
                superseded = (RevisionState.SUPERSEDED.value, None, None, None, by, why, at_ns, str(number))
                connection.execute(_INSERT_REVISION, (*identity, *stored, *superseded))
            else:  # a value approved before: keep who approved it then, say what replaced it
                connection.execute(
                    "UPDATE reading_revision SET state = ?, superseded_by = ?, "
                    "decided_by = CASE WHEN decided_ns IS NULL THEN ? ELSE decided_by END, "
                    "decided_why = CASE WHEN decided_ns IS NULL THEN ? ELSE decided_why END, "
                    "decided_ns = coalesce(decided_ns, ?) WHERE id = ?",
                    (RevisionState.SUPERSEDED.value, str(number), by, why, at_ns, same[0]),
                )
            connection.execute(
                f"UPDATE reading SET value = ?, unit = ?, quality = ?, status = ? WHERE {_IDENTITY}",
                (*content, *identity),
            )
        connection.execute(
            "UPDATE reading_revision SET state = ?, decided_by = ?, decided_why = ?, decided_ns = ? WHERE id = ?",
            (RevisionState.APPROVED.value, by, why, at_ns, number),
        )
        return Approval(_revision_from_row(connection.execute(select, (number,)).fetchone()), replaced)

    def _write_sync(self, rows: list[tuple[Any, ...]], statement: str) -> None:
        """One transaction per call: a batch is stored whole or not at all."""
        assert self._connection is not None
        with transaction(self._connection):
            self._connection.executemany(statement, rows)

    def _call_sync(self, function: Callable[[sqlite3.Connection], T]) -> T:
        assert self._connection is not None
        return function(self._connection)

    def _query_by_instrument_sync(
        self,
        site: str | None,
        instrument: str | None,
        parameter: str | None,
        start: datetime | None,
        end: datetime | None,
    ) -> list[tuple[Any, ...]]:
        """A time range over several instruments, one instrument at a time through reading_series_ts (no index
        on time alone), in `query`'s order."""
        assert self._connection is not None
        rows: list[tuple[Any, ...]] = []
        for site_, instrument_ in raw_instruments(self._connection, site):
            if instrument is None or instrument_ == instrument:
                where, params = _where(
                    {"site": site_, "instrument": instrument_, "parameter": parameter}, "ts_ns", start, end
                )
                rows += self._connection.execute(f"SELECT {_COLUMNS} FROM reading {where}", params).fetchall()
        rows.sort(key=_query_order)
        return rows

    def _query_series_sync(
        self, site: str, instrument: str, parameter: str, start: datetime | None, end: datetime | None
    ) -> list[tuple[Any, ...]]:
        """One series' (agent, ts_ns, value, unit, quality, status) rows in a time range, in `query`'s order: each
        of its agents (a skip scan of the primary key, one search per agent) read as one range of the primary key
        (site, instrument, parameter, agent, ts_ns). Through reading_series_ts the same range walked every
        parameter of the instrument and looked each row up in the table (six times the time at six parameters:
        the QAL3 capture's day scans)."""
        assert self._connection is not None
        execute = self._connection.execute
        series = (site, instrument, parameter)
        rows: list[tuple[Any, ...]] = []
        agents = 0
        found = execute(_FIRST_AGENT, series).fetchone()
        while found is not None:
            agents += 1
            where, params = _where(
                {"site": site, "instrument": instrument, "parameter": parameter, "agent": found[0]},
                "ts_ns",
                start,
                end,
            )
            rows += execute(f"SELECT {_SERIES_COLUMNS} FROM reading {where} ORDER BY ts_ns", params).fetchall()
            found = execute(_NEXT_AGENT, (*series, found[0])).fetchone()
        if agents > 1:
            rows.sort(key=_series_order)
        return rows

    def _fetch_sync(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        assert self._connection is not None
        return self._connection.execute(sql, params).fetchall()
