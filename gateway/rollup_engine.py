"""Keeps the rollups in the store up to date as raw readings arrive, late ones included. I/O around gateway.rollup.

- `note_written(readings)` / `note_batches(batches)`: after readings are in the store, mark the (series, UTC
  minute) pairs they touched dirty. The marks live in the gateway's state SQLite (table `rollup_dirty`, one row
  per series and UTC hour with a bit per minute), so a restart loses none.
- `process_dirty()`: one pass. The dirty minutes are recomputed from the raw readings of those minutes only,
  the base periods (hour or half-hour) they fall in from the stored 1-minute aggregates, then the local days of
  those periods and the months and years of those days. So the raw data a pass reads is what arrived since the
  last pass, at any minute of the hour. A mark is removed only after its aggregates are written, and only if no
  newer data marked it again meanwhile (a version counter), so a crash or a concurrent batch never loses a
  recomputation.
- A series whose rollup raises (bad data, a bug, a store refusing its values) is logged once with its hours,
  counted (`counters.set_aside`) and its marks are set aside (table `rollup_set_aside`): the other series go
  on, and a restart does not fall on it again. New data for that series marks it again;
  `release_set_aside()` puts the set-aside marks back (`cems-gateway rollup status --retry`).
- `run()`: one pass per `[rollup] interval` seconds (a pass that reached its mark limit is followed at once by
  another), and raw-data retention (gateway.retention) between passes when configured.
- `recompute(start, end)`: from scratch, from raw, for every series with raw data in [start, end), widened to
  whole hours; never before the raw-data retention horizon (there the stored rollups are all that is left).
  Writes are upserts, so running it twice gives the same rows (`cems-gateway rollup recompute`).

Late data therefore recomputes only the minutes it falls in, their base periods, days, months and years.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path

from aua_contract import Batch
from gateway.config import GatewayConfig
from gateway.mrv_config import RuleResolver
from gateway.retention import Retention
from gateway.rollup import (
    Aggregate,
    Period,
    base_aggregates,
    base_duration,
    day_aggregates,
    day_bounds,
    local_date,
    minute_aggregates,
    month_aggregates,
    year_aggregates,
    year_bounds,
)
from gateway.state_file import StateFile
from gateway.stores import Store, StoredReading, StoreError
from gateway.stores.base import from_ns, to_ns

__all__ = ["ALL_MINUTES", "DirtyMarks", "EngineCounters", "RecomputeStats", "RollupEngine"]

log = logging.getLogger(__name__)

_HOUR = timedelta(hours=1)
_CHUNK = timedelta(hours=24)
"""Longest stretch of raw data read at once (bounded memory for a long replay or a year's recompute)."""

_MINUTE_NS = 60_000_000_000
_HOUR_NS = 3_600_000_000_000
_CHUNK_MINUTES = 24 * 60
ALL_MINUTES = (1 << 60) - 1
"""A mark's minute mask with every minute of its hour set (marks from before minute masks existed)."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS rollup_dirty (
    site       TEXT    NOT NULL,
    instrument TEXT    NOT NULL,
    parameter  TEXT    NOT NULL,
    hour_ns    INTEGER NOT NULL,  -- UTC hour start, ns since the Unix epoch
    version    INTEGER NOT NULL,  -- bumped by every batch that touches the hour again
    minutes    INTEGER NOT NULL DEFAULT {ALL_MINUTES},  -- bit m set: minute m of the hour has new data
    taking     INTEGER NOT NULL DEFAULT 0,  -- minutes a pass took and has not finished (redone after a crash)
    PRIMARY KEY (site, instrument, parameter, hour_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_set_aside (
    site       TEXT    NOT NULL,
    instrument TEXT    NOT NULL,
    parameter  TEXT    NOT NULL,
    hour_ns    INTEGER NOT NULL,
    minutes    INTEGER NOT NULL,
    error      TEXT    NOT NULL,  -- what failed, for `cems-gateway rollup status`
    at_ns      INTEGER NOT NULL,  -- when it was set aside
    PRIMARY KEY (site, instrument, parameter, hour_ns)
) WITHOUT ROWID;
"""

Series = tuple[str, str, str]
Mark = tuple[str, str, str, int, int, int]
"""site, instrument, parameter, hour_ns, version, minutes (bit m: minute m of the hour is dirty)"""
SetAside = tuple[str, str, str, int, int, str]
"""site, instrument, parameter, hour_ns, minutes, error"""


_MARK_KEY = "site = ? AND instrument = ? AND parameter = ? AND hour_ns = ?"


def _bits(mask: int) -> list[int]:
    """The minutes (0..59) whose bit is set."""
    return [minute for minute in range(60) if mask >> minute & 1]


class DirtyMarks(StateFile):
    """The persisted set of (series, minute) pairs whose rollups are out of date, one row per series and hour.

    Thread-safe; blocking calls.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, _SCHEMA)
        with self._lock:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(rollup_dirty)")}
            if "minutes" not in columns:  # a state file from before minute masks: its marks mean whole hours
                self._db.execute(f"ALTER TABLE rollup_dirty ADD COLUMN minutes INTEGER NOT NULL DEFAULT {ALL_MINUTES}")
            if "taking" not in columns:
                self._db.execute("ALTER TABLE rollup_dirty ADD COLUMN taking INTEGER NOT NULL DEFAULT 0")

    def add(self, keys: Iterable[tuple[str, str, str, int]]) -> None:
        """Mark (site, instrument, parameter, ns): the minute each time in ns falls in."""
        masks: dict[tuple[str, str, str, int], int] = defaultdict(int)
        for site, instrument, parameter, ns in keys:
            hour = ns - ns % _HOUR_NS
            masks[(site, instrument, parameter, hour)] |= 1 << ((ns - hour) // _MINUTE_NS)
        if not masks:
            return
        rows = [(*key, mask) for key, mask in sorted(masks.items())]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO rollup_dirty (site, instrument, parameter, hour_ns, version, minutes) "
                    "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (site, instrument, parameter, hour_ns) "
                    "DO UPDATE SET version = version + 1, minutes = minutes | excluded.minutes",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def take(self, limit: int) -> list[Mark]:
        """Up to `limit` marks, oldest hours first, with the minutes to redo: those marked since the last pass
        and those a pass took without finishing. The taken minutes move out of `minutes`, so data arriving
        during the pass marks only its own minutes for the next one; they stay in `taking` until `done` (or
        `set_aside`), so a pass cut short by a crash is redone."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT site, instrument, parameter, hour_ns, version, minutes | taking FROM rollup_dirty "
                    "ORDER BY hour_ns LIMIT ?",
                    (limit,),
                ).fetchall()
                self._db.executemany(
                    f"UPDATE rollup_dirty SET taking = taking | minutes, minutes = 0 WHERE {_MARK_KEY}",
                    [row[:4] for row in rows],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return [(str(s), str(i), str(p), int(h), int(v), int(m)) for s, i, p, h, v, m in rows]

    def done(self, marks: Iterable[Mark]) -> None:
        """The taken minutes are rolled up: forget them, and the mark once nothing new arrived meanwhile."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._finish([mark[:4] for mark in marks])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _finish(self, keys: list[tuple[str, str, str, int]]) -> None:
        """Inside a transaction: the taken minutes of these marks are dealt with."""
        self._db.executemany(f"UPDATE rollup_dirty SET taking = 0 WHERE {_MARK_KEY}", keys)
        self._db.executemany(f"DELETE FROM rollup_dirty WHERE {_MARK_KEY} AND minutes = 0", keys)

    def set_aside(self, marks: Iterable[tuple[Mark, str]], now_ns: int) -> None:
        """Move marks whose rollup failed out of the way, each with its error (merged with earlier ones)."""
        rows = list(marks)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO rollup_set_aside VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (site, instrument, parameter, hour_ns) DO UPDATE SET "
                    "minutes = minutes | excluded.minutes, error = excluded.error, at_ns = excluded.at_ns",
                    [(*mark[:4], mark[5], error, now_ns) for mark, error in rows],
                )
                self._finish([mark[:4] for mark, _ in rows])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def set_aside_marks(self) -> list[SetAside]:
        with self._lock:
            rows = self._db.execute(
                "SELECT site, instrument, parameter, hour_ns, minutes, error FROM rollup_set_aside "
                "ORDER BY site, instrument, parameter, hour_ns"
            ).fetchall()
        return [(str(s), str(i), str(p), int(h), int(m), str(e)) for s, i, p, h, m, e in rows]

    def release_set_aside(self) -> int:
        """Put every set-aside mark back among the dirty ones (after a fix); returns how many."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                moved = self._db.execute(
                    "INSERT INTO rollup_dirty (site, instrument, parameter, hour_ns, version, minutes) "
                    "SELECT site, instrument, parameter, hour_ns, 1, minutes FROM rollup_set_aside WHERE true "
                    "ON CONFLICT (site, instrument, parameter, hour_ns) "
                    "DO UPDATE SET version = version + 1, minutes = minutes | excluded.minutes"
                ).rowcount
                self._db.execute("DELETE FROM rollup_set_aside")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return int(moved)

    def oldest_hour(self) -> int | None:
        """The earliest dirty or set-aside hour (ns): raw data from there on is still needed."""
        with self._lock:
            row = self._db.execute(
                "SELECT min(hour_ns) FROM (SELECT min(hour_ns) AS hour_ns FROM rollup_dirty "
                "UNION ALL SELECT min(hour_ns) FROM rollup_set_aside)"
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM rollup_dirty").fetchone()[0])


@dataclass
class RecomputeStats:
    """What one pass read and wrote: the proof that late data touched only the periods it falls in."""

    raw_read: int = 0
    """raw readings the store returned (every one of them, also those the pass did not need)"""
    aggregates_read: int = 0
    """stored 1-minute and base aggregates read to build the levels above"""
    written: dict[Period, int] = field(default_factory=lambda: defaultdict(int))
    raw_first: datetime | None = None
    raw_last: datetime | None = None
    hours: set[datetime] = field(default_factory=set)
    days: set[date] = field(default_factory=set)
    months: set[tuple[int, int]] = field(default_factory=set)
    years: set[int] = field(default_factory=set)
    set_aside: set[Series] = field(default_factory=set)
    full: bool = False
    """the pass took as many marks as it may: more are waiting"""

    def saw(self, readings: Sequence[StoredReading]) -> None:
        if readings:
            first, last = min(r.ts for r in readings), max(r.ts for r in readings)
            self.raw_first = first if self.raw_first is None else min(self.raw_first, first)
            self.raw_last = last if self.raw_last is None else max(self.raw_last, last)

    def summary(self) -> str:
        written = ", ".join(f"{count} {period.value}" for period, count in sorted(self.written.items()) if count)
        span = (
            f" from {self.raw_first.isoformat()} to {self.raw_last.isoformat()}"
            if self.raw_first and self.raw_last
            else ""
        )
        aside = f"; {len(self.set_aside)} series set aside" if self.set_aside else ""
        return (
            f"read {self.raw_read} raw readings{span} and {self.aggregates_read} aggregates; wrote "
            f"{written or 'nothing'}; {len(self.hours)} hours, {len(self.days)} days, {len(self.months)} months, "
            f"{len(self.years)} years{aside}"
        )


@dataclass
class EngineCounters:
    """Totals since start, for logs and metrics: the work per pass shows whether rollups keep up."""

    passes: int = 0
    raw_read: int = 0
    last_pass_raw_read: int = 0
    set_aside: int = 0
    """series set aside after their rollup failed"""


def _hour_floor(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def _hour_ns(ns: int) -> int:
    """The UTC hour a time in ns falls in (as ns): the same hour as _hour_floor, without building datetimes."""
    return ns - ns % _HOUR_NS


def _runs(starts: Sequence[int], step: int, longest: int) -> list[tuple[int, int]]:
    """Sorted period starts (ns) → [start, end) stretches of consecutive periods, each at most `longest` long."""
    runs: list[tuple[int, int]] = []
    for start in starts:
        if runs and runs[-1][1] == start and start + step - runs[-1][0] <= longest:
            runs[-1] = (runs[-1][0], start + step)
        else:
            runs.append((start, start + step))
    return runs


class _Failures:
    """Series whose rollup failed in this pass, with the first error (one log line per series)."""

    def __init__(self) -> None:
        self.errors: dict[Series, str] = {}

    def __contains__(self, series: object) -> bool:
        return series in self.errors

    def add(self, series: Series, level: str, error: BaseException) -> None:
        if isinstance(error, StoreError) and error.retryable:
            raise error  # an outage, not this series' fault: the marks stay for the next pass
        self.errors.setdefault(series, f"{level}: {type(error).__name__}: {error}")


class RollupEngine:
    """Incremental, restart-safe rollups for every series in a store."""

    def __init__(
        self,
        store: Store,
        marks: DirtyMarks,
        rules: RuleResolver,
        *,
        interval: float = 60.0,
        retention: Retention | None = None,
    ) -> None:
        self.store = store
        self.marks = marks
        self.rules = rules
        self.interval = interval
        self.retention = retention
        self.counters = EngineCounters()

    @classmethod
    def open(
        cls,
        store: Store,
        state_path: Path,
        rules: RuleResolver,
        *,
        interval: float = 60.0,
        retention: Retention | None = None,
    ) -> RollupEngine:
        return cls(store, DirtyMarks(state_path), rules, interval=interval, retention=retention)

    @classmethod
    def from_config(cls, config: GatewayConfig, store: Store) -> RollupEngine:
        """The engine a gateway config describes: marks in [gateway] state, rules from [rollup] and [[source]]."""
        rules = RuleResolver.from_config(config.rollup, config.sources)
        retention = Retention.from_config(config.store, store)
        return cls.open(store, config.gateway.state, rules, interval=config.rollup.interval, retention=retention)

    def close(self) -> None:
        self.marks.close()

    # -- marking ---------------------------------------------------------------------------------------------

    async def note_written(self, readings: Sequence[StoredReading]) -> None:
        """Call after `store.write(readings)` succeeded: marks the minutes they fall in for recomputation."""
        await self._mark({(r.site, r.instrument, r.parameter, _minute_ns(to_ns(r.ts))) for r in readings})

    async def note_batches(self, batches: Sequence[Batch]) -> None:
        """Call after `store.write_batches(batches)` succeeded (the ingest path; the same marks as note_written)."""
        await self._mark(
            {(b.site, r.instrument, r.parameter, _minute_ns(to_ns(r.ts))) for b in batches for r in b.readings}
        )

    async def _mark(self, keys: set[tuple[str, str, str, int]]) -> None:
        if keys:
            await asyncio.to_thread(self.marks.add, keys)

    async def pending(self) -> int:
        """(series, hour) pairs with dirty minutes."""
        return await asyncio.to_thread(self.marks.count)

    async def release_set_aside(self) -> int:
        return await asyncio.to_thread(self.marks.release_set_aside)

    # -- recomputing -----------------------------------------------------------------------------------------

    async def process_dirty(self, *, limit: int = 50_000) -> RecomputeStats:
        """One pass over what the marks name (at most `limit` of them; `stats.full` says more are waiting)."""
        marks = await asyncio.to_thread(self.marks.take, limit)
        stats = RecomputeStats(full=len(marks) >= limit)
        self.counters.passes += 1
        self.counters.last_pass_raw_read = 0
        if not marks:
            return stats
        failures = _Failures()
        minutes = await self._dirty_minutes(marks, stats, failures)
        await self._write_isolated(minutes, failures, "1-minute write")
        base, touched = await self._dirty_base(marks, stats, failures)
        await self._write_isolated(base, failures, "base-period write")
        for series, aggregates in minutes.items():
            if series not in failures:
                stats.written[Period.MINUTE] += len(aggregates)
        for series, aggregates in base.items():
            if series not in failures and aggregates:
                stats.written[aggregates[0].period] += len(aggregates)
                stats.hours |= {_hour_floor(a.start) for a in aggregates}
        await self._write_calendar(
            {series: days for series, days in touched.items() if series not in failures}, stats, failures
        )
        await asyncio.to_thread(self.marks.done, [m for m in marks if m[:3] not in failures])
        if failures.errors:
            await self._set_aside(marks, failures, stats)
        self.counters.raw_read += stats.raw_read
        self.counters.last_pass_raw_read = stats.raw_read
        return stats

    async def catch_up(self) -> None:
        """Passes until everything stored before the call is rolled up (a report wants every reading so far).

        One pass covers every mark present when it starts; only a pass that reached its limit needs another.
        Marks added meanwhile by live ingest are left for `run`, so this ends while data keeps arriving.
        """
        while (await self.process_dirty()).full:
            pass

    async def recompute(self, start: datetime, end: datetime, *, site: str | None = None) -> RecomputeStats:
        """Recompute every rollup of the raw data in [start, end), widened to whole hours. Idempotent.

        Hours before the raw-data retention horizon are left alone: their raw data may be partly gone, and the
        stored rollups are then the record (recomputing them from what is left would make them wrong).
        """
        start = _hour_floor(start.astimezone(UTC))
        end = end.astimezone(UTC)
        if _hour_floor(end) != end:
            end = _hour_floor(end) + _HOUR
        if self.retention is not None:
            horizon = await self.retention.raw_kept_from()
            if horizon is not None and start < horizon:
                log.info("rollups: raw data before %s has expired; recomputing from there", horizon.isoformat())
                start = max(start, horizon)
        stats = RecomputeStats()
        touched: dict[Series, set[date]] = defaultdict(set)
        chunk_start = start
        while chunk_start < end:
            chunk_end = min(end, chunk_start + _CHUNK)
            readings = await self.store.query(site=site, start=chunk_start, end=chunk_end)
            stats.raw_read += len(readings)
            stats.saw(readings)
            await self._write_minutes_and_base(readings, touched, stats)
            chunk_start = chunk_end
        await self._write_calendar(touched, stats, None)
        return stats

    async def run(self) -> None:
        """One pass every `interval` seconds until cancelled (at once again after a full pass); store outages
        are waited out. Raw-data retention, when configured, prunes between passes."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            full = False
            try:
                stats = await self.process_dirty()
                full = stats.full
                if stats.raw_read or stats.written:
                    log.info("rollups: %s", stats.summary())
                if self.retention is not None and not full:
                    await self.retention.prune_due(keep_from=await self._oldest_needed())
            except StoreError as error:
                log.warning("rollups: store unavailable (%s); retrying in %.0f s", error, self.interval)
            except Exception:  # a bug here must not stop ingest (this task runs in its task group)
                log.exception("rollups: pass failed; trying again in %.0f s", self.interval)
                full = False
            if not full:
                await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    # -- internals -------------------------------------------------------------------------------------------

    async def _oldest_needed(self) -> datetime | None:
        oldest = await asyncio.to_thread(self.marks.oldest_hour)
        return None if oldest is None else from_ns(oldest)

    async def _dirty_minutes(
        self, marks: Sequence[Mark], stats: RecomputeStats, failures: _Failures
    ) -> dict[Series, list[Aggregate]]:
        """1-minute aggregates of the dirty minutes, from the raw readings of those minutes only."""
        wanted: dict[tuple[str, str], dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        for site, instrument, parameter, hour_ns, _, mask in marks:
            for minute in _bits(mask):
                wanted[(site, instrument)][hour_ns + minute * _MINUTE_NS].add(parameter)
        result: dict[Series, list[Aggregate]] = {}
        for (site, instrument), by_minute in sorted(wanted.items()):
            samples: dict[Series, list[StoredReading]] = defaultdict(list)
            for start, end in _runs(sorted(by_minute), _MINUTE_NS, _CHUNK_MINUTES * _MINUTE_NS):
                readings = await self.store.query(
                    site=site, instrument=instrument, start=from_ns(start), end=from_ns(end)
                )
                stats.raw_read += len(readings)
                for reading in readings:
                    if reading.parameter in by_minute.get(_minute_ns(to_ns(reading.ts)), ()):
                        samples[(site, instrument, reading.parameter)].append(reading)
            for series, items in sorted(samples.items()):
                stats.saw(items)
                try:
                    rules, _ = self.rules(*series)
                    result[series] = minute_aggregates(items, min_fraction=rules.minute_min_fraction)
                except Exception as error:  # one series' poison must not stop the others
                    failures.add(series, "1-minute rollup", error)
        return result

    async def _dirty_base(
        self, marks: Sequence[Mark], stats: RecomputeStats, failures: _Failures
    ) -> tuple[dict[Series, list[Aggregate]], dict[Series, set[date]]]:
        """Base periods holding a dirty minute, from the stored 1-minute aggregates (written just before)."""
        wanted: dict[tuple[str, str], dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
        for site, instrument, parameter, hour_ns, _, mask in marks:
            wanted[(site, instrument)][hour_ns][parameter] = mask
        result: dict[Series, list[Aggregate]] = {}
        touched: dict[Series, set[date]] = defaultdict(set)
        for (site, instrument), hours in sorted(wanted.items()):
            stored: dict[str, list[Aggregate]] = defaultdict(list)
            for start, end in _runs(sorted(hours), _HOUR_NS, _CHUNK_MINUTES * _MINUTE_NS):
                found = await self.store.query_aggregates(
                    period=Period.MINUTE, site=site, instrument=instrument, start=from_ns(start), end=from_ns(end)
                )
                stats.aggregates_read += len(found)
                for minute in found:
                    stored[minute.parameter].append(minute)
            parameters = {parameter for masks in hours.values() for parameter in masks}
            for parameter in sorted(parameters):
                series = (site, instrument, parameter)
                if series in failures:
                    continue
                try:
                    rules, zone = self.rules(*series)
                    step = int(base_duration_ns(rules.base))
                    starts = {
                        hour_ns + (minute * _MINUTE_NS) // step * step
                        for hour_ns, masks in hours.items()
                        if parameter in masks
                        for minute in _bits(masks[parameter])
                    }
                    minutes = [m for m in stored[parameter] if _floor_ns(to_ns(m.start), step) in starts]
                    base = base_aggregates(minutes, rules)
                    result[series] = base
                    touched[series] |= {local_date(aggregate.start, zone) for aggregate in base}
                except Exception as error:
                    failures.add(series, "base-period rollup", error)
        return result, touched

    async def _write_isolated(self, per_series: dict[Series, list[Aggregate]], failures: _Failures, level: str) -> None:
        """All series in one write; if the store refuses it, series by series, to find the one it refuses."""
        rows = [a for series, items in sorted(per_series.items()) if series not in failures for a in items]
        if not rows:
            return
        try:
            await self.store.write_aggregates(rows)
            return
        except Exception as error:
            if isinstance(error, StoreError) and error.retryable:
                raise
        for series, items in sorted(per_series.items()):
            if series in failures or not items:
                continue
            try:
                await self.store.write_aggregates(items)
            except Exception as error:
                failures.add(series, level, error)

    async def _set_aside(self, marks: Sequence[Mark], failures: _Failures, stats: RecomputeStats) -> None:
        by_series: dict[Series, list[Mark]] = defaultdict(list)
        for mark in marks:
            if mark[:3] in failures:
                by_series[mark[:3]].append(mark)
        for series, items in sorted(by_series.items()):
            hours = sorted(from_ns(mark[3]) for mark in items)
            span = hours[0].isoformat() if len(hours) == 1 else f"{hours[0].isoformat()} … {hours[-1].isoformat()}"
            log.error(
                "rollups: %s set aside (%d hour(s) from %s): %s; other series go on; "
                "`cems-gateway rollup status --retry` tries again",
                "/".join(series),
                len(hours),
                span,
                failures.errors[series],
            )
        await asyncio.to_thread(
            self.marks.set_aside, [(m, failures.errors[m[:3]]) for m in marks if m[:3] in failures], time.time_ns()
        )
        stats.set_aside |= set(by_series)
        self.counters.set_aside += len(by_series)

    async def _write_minutes_and_base(
        self, readings: Sequence[StoredReading], touched: dict[Series, set[date]], stats: RecomputeStats
    ) -> None:
        by_series: dict[Series, list[StoredReading]] = defaultdict(list)
        for reading in readings:
            by_series[(reading.site, reading.instrument, reading.parameter)].append(reading)
        written: list[Aggregate] = []
        for series, samples in by_series.items():
            rules, zone = self.rules(*series)
            minutes = minute_aggregates(samples, min_fraction=rules.minute_min_fraction)
            base = base_aggregates(minutes, rules)
            written += minutes
            written += base
            for aggregate in base:
                touched[series].add(local_date(aggregate.start, zone))
                stats.hours.add(_hour_floor(aggregate.start))
            stats.written[Period.MINUTE] += len(minutes)
            if base:
                stats.written[base[0].period] += len(base)
        await self.store.write_aggregates(written)

    async def _write_calendar(
        self, touched: dict[Series, set[date]], stats: RecomputeStats, failures: _Failures | None
    ) -> None:
        """Days of the touched dates, then the months and years they belong to, from the stored levels below."""
        for series, days in sorted(touched.items()):
            if not days:
                continue
            try:
                await self._write_calendar_of(series, days, stats)
            except Exception as error:
                if failures is None:
                    raise
                failures.add(series, f"day/month/year rollup of {min(days)} … {max(days)}", error)

    async def _write_calendar_of(self, series: Series, days: set[date], stats: RecomputeStats) -> None:
        site, instrument, parameter = series
        rules, zone = self.rules(*series)
        first, _ = day_bounds(min(days), zone)
        _, last = day_bounds(max(days), zone)
        base = await self.store.query_aggregates(
            period=rules.base, site=site, instrument=instrument, parameter=parameter, start=first, end=last
        )
        stats.aggregates_read += len(base)
        new_days = [d for d in day_aggregates(base, rules, zone) if local_date(d.start, zone) in days]
        await self.store.write_aggregates(new_days)
        stats.written[Period.DAY] += len(new_days)
        stats.days |= days
        years = {day.year for day in days}
        months = {(day.year, day.month) for day in days}
        year_start, _ = year_bounds(min(years), zone)
        _, year_end = year_bounds(max(years), zone)
        all_days = await self.store.query_aggregates(
            period=Period.DAY, site=site, instrument=instrument, parameter=parameter, start=year_start, end=year_end
        )
        stats.aggregates_read += len(all_days)
        calendar = [m for m in month_aggregates(all_days, rules, zone) if _year_month(m.start, zone) in months] + [
            y for y in year_aggregates(all_days, rules, zone) if local_date(y.start, zone).year in years
        ]
        await self.store.write_aggregates(calendar)
        stats.written[Period.MONTH] += sum(1 for a in calendar if a.period is Period.MONTH)
        stats.written[Period.YEAR] += sum(1 for a in calendar if a.period is Period.YEAR)
        stats.months |= months
        stats.years |= years


def _minute_ns(ns: int) -> int:
    """The UTC minute a time in ns falls in (floor, also before the epoch)."""
    return ns - ns % _MINUTE_NS


def _floor_ns(ns: int, step: int) -> int:
    return ns - ns % step


def base_duration_ns(period: Period) -> int:
    return base_duration(period) // timedelta(microseconds=1) * 1000


def _year_month(ts: datetime, zone: tzinfo) -> tuple[int, int]:
    local = local_date(ts, zone)
    return (local.year, local.month)
