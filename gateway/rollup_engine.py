"""Keeps the rollups in the store up to date as raw readings arrive, late ones included. I/O around gateway.rollup.

- `note_written(readings)` / `note_batches(batches)`: after readings are in the store, mark the (series, UTC
  hour) pairs they touched dirty. The marks live in the gateway's state SQLite (table `rollup_dirty`), so a
  restart loses none.
- `process_dirty()`: recompute every dirty hour from the raw readings in the store (its 1-minute and base
  aggregates), then the local days those hours fall in, and the months and years of those days. A mark is
  removed only after its aggregates are written, and only if no newer data marked it again meanwhile
  (a version counter), so a crash or a concurrent batch never loses a recomputation.
- `recompute(start, end)`: the same from scratch for every series with raw data in [start, end), widened to
  whole hours. Writes are upserts, so running it twice gives the same rows (`cems-gateway rollup recompute`).

Late data therefore recomputes only the hours it falls in, their days, months and years: nothing else is
read or written.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path

from aua_contract import Batch
from gateway.config import GatewayConfig
from gateway.mrv_config import RuleResolver
from gateway.rollup import (
    Aggregate,
    Period,
    base_aggregates,
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

__all__ = ["DirtyMarks", "RecomputeStats", "RollupEngine"]

log = logging.getLogger(__name__)

_HOUR = timedelta(hours=1)
_CHUNK = timedelta(hours=24)
"""Longest stretch of raw data read at once (bounded memory for a long replay or a year's recompute)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollup_dirty (
    site       TEXT    NOT NULL,
    instrument TEXT    NOT NULL,
    parameter  TEXT    NOT NULL,
    hour_ns    INTEGER NOT NULL,  -- UTC hour start, ns since the Unix epoch
    version    INTEGER NOT NULL,  -- bumped by every batch that touches the hour again
    PRIMARY KEY (site, instrument, parameter, hour_ns)
) WITHOUT ROWID;
"""

Series = tuple[str, str, str]
Mark = tuple[str, str, str, int, int]
"""site, instrument, parameter, hour_ns, version"""


class DirtyMarks(StateFile):
    """The persisted set of (series, hour) pairs whose rollups are out of date. Thread-safe; blocking calls."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, _SCHEMA)

    def add(self, keys: Iterable[tuple[str, str, str, int]]) -> None:
        rows = list(keys)
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO rollup_dirty VALUES (?, ?, ?, ?, 1) "
                    "ON CONFLICT (site, instrument, parameter, hour_ns) DO UPDATE SET version = version + 1",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def take(self, limit: int) -> list[Mark]:
        """Up to `limit` marks, oldest hours first (they stay until `done`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT site, instrument, parameter, hour_ns, version FROM rollup_dirty ORDER BY hour_ns LIMIT ?",
                (limit,),
            ).fetchall()
        return [(str(s), str(i), str(p), int(h), int(v)) for s, i, p, h, v in rows]

    def done(self, marks: Iterable[Mark]) -> None:
        """Remove marks that were not touched again since `take` (same version)."""
        with self._lock:
            self._db.executemany(
                "DELETE FROM rollup_dirty WHERE site = ? AND instrument = ? AND parameter = ? AND hour_ns = ? "
                "AND version = ?",
                list(marks),
            )

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM rollup_dirty").fetchone()[0])


@dataclass
class RecomputeStats:
    """What one pass read and wrote: the proof that late data touched only the periods it falls in."""

    raw_read: int = 0
    written: dict[Period, int] = field(default_factory=lambda: defaultdict(int))
    raw_first: datetime | None = None
    raw_last: datetime | None = None
    hours: set[datetime] = field(default_factory=set)
    days: set[date] = field(default_factory=set)
    months: set[tuple[int, int]] = field(default_factory=set)
    years: set[int] = field(default_factory=set)

    def saw(self, readings: Sequence[StoredReading]) -> None:
        self.raw_read += len(readings)
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
        return (
            f"read {self.raw_read} raw readings{span}; wrote {written or 'nothing'}; "
            f"{len(self.hours)} hours, {len(self.days)} days, {len(self.months)} months, {len(self.years)} years"
        )


def _hour_floor(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


_HOUR_NS = 3_600_000_000_000


def _hour_ns(ns: int) -> int:
    """The UTC hour a time in ns falls in (as ns): the same hour as _hour_floor, without building datetimes."""
    return ns - ns % _HOUR_NS


def _runs(hours: Sequence[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted hour starts → [start, end) stretches of consecutive hours, each at most _CHUNK long."""
    runs: list[tuple[datetime, datetime]] = []
    for hour in hours:
        if runs and runs[-1][1] == hour and hour + _HOUR - runs[-1][0] <= _CHUNK:
            runs[-1] = (runs[-1][0], hour + _HOUR)
        else:
            runs.append((hour, hour + _HOUR))
    return runs


class RollupEngine:
    """Incremental, restart-safe rollups for every series in a store."""

    def __init__(self, store: Store, marks: DirtyMarks, rules: RuleResolver, *, interval: float = 60.0) -> None:
        self.store = store
        self.marks = marks
        self.rules = rules
        self.interval = interval

    @classmethod
    def open(cls, store: Store, state_path: Path, rules: RuleResolver, *, interval: float = 60.0) -> RollupEngine:
        return cls(store, DirtyMarks(state_path), rules, interval=interval)

    @classmethod
    def from_config(cls, config: GatewayConfig, store: Store) -> RollupEngine:
        """The engine a gateway config describes: marks in [gateway] state, rules from [rollup] and [[source]]."""
        rules = RuleResolver.from_config(config.rollup, config.sources)
        return cls.open(store, config.gateway.state, rules, interval=config.rollup.interval)

    def close(self) -> None:
        self.marks.close()

    # -- marking ---------------------------------------------------------------------------------------------

    async def note_written(self, readings: Sequence[StoredReading]) -> None:
        """Call after `store.write(readings)` succeeded: marks the hours they fall in for recomputation."""
        await self._mark({(r.site, r.instrument, r.parameter, _hour_ns(to_ns(r.ts))) for r in readings})

    async def note_batches(self, batches: Sequence[Batch]) -> None:
        """Call after `store.write_batches(batches)` succeeded (the ingest path; the same marks as note_written)."""
        await self._mark(
            {(b.site, r.instrument, r.parameter, _hour_ns(to_ns(r.ts))) for b in batches for r in b.readings}
        )

    async def _mark(self, keys: set[tuple[str, str, str, int]]) -> None:
        if keys:
            await asyncio.to_thread(self.marks.add, sorted(keys))

    async def pending(self) -> int:
        return await asyncio.to_thread(self.marks.count)

    # -- recomputing -----------------------------------------------------------------------------------------

    async def process_dirty(self, *, limit: int = 50_000) -> RecomputeStats:
        """Recompute what the marks name (at most `limit` of them; call again while `pending()`)."""
        marks = await asyncio.to_thread(self.marks.take, limit)
        stats = RecomputeStats()
        if not marks:
            return stats
        wanted: dict[tuple[str, str], dict[datetime, set[str]]] = defaultdict(lambda: defaultdict(set))
        for site, instrument, parameter, hour_ns, _ in marks:
            wanted[(site, instrument)][from_ns(hour_ns)].add(parameter)
        touched: dict[Series, set[date]] = defaultdict(set)
        for (site, instrument), hours in sorted(wanted.items()):
            for start, end in _runs(sorted(hours)):
                readings = await self.store.query(site=site, instrument=instrument, start=start, end=end)
                selected = [r for r in readings if r.parameter in hours.get(_hour_floor(r.ts), ())]
                stats.saw(selected)
                await self._write_minutes_and_base(selected, touched, stats)
        await self._write_calendar(touched, stats)
        await asyncio.to_thread(self.marks.done, marks)
        return stats

    async def recompute(self, start: datetime, end: datetime, *, site: str | None = None) -> RecomputeStats:
        """Recompute every rollup of the raw data in [start, end), widened to whole hours. Idempotent."""
        start = _hour_floor(start.astimezone(UTC))
        end = end.astimezone(UTC)
        if _hour_floor(end) != end:
            end = _hour_floor(end) + _HOUR
        stats = RecomputeStats()
        touched: dict[Series, set[date]] = defaultdict(set)
        chunk_start = start
        while chunk_start < end:
            chunk_end = min(end, chunk_start + _CHUNK)
            readings = await self.store.query(site=site, start=chunk_start, end=chunk_end)
            stats.saw(readings)
            await self._write_minutes_and_base(readings, touched, stats)
            chunk_start = chunk_end
        await self._write_calendar(touched, stats)
        return stats

    async def run(self) -> None:
        """Process dirty marks every `interval` seconds until cancelled; store outages are waited out."""
        while True:
            try:
                while True:
                    stats = await self.process_dirty()
                    if stats.raw_read or stats.written:
                        log.info("rollups: %s", stats.summary())
                    if not await self.pending():
                        break
            except StoreError as error:
                log.warning("rollups: store unavailable (%s); retrying in %.0f s", error, self.interval)
            await asyncio.sleep(self.interval)

    # -- internals -------------------------------------------------------------------------------------------

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

    async def _write_calendar(self, touched: dict[Series, set[date]], stats: RecomputeStats) -> None:
        """Days of the touched dates, then the months and years they belong to, from the stored levels below."""
        for series, days in sorted(touched.items()):
            site, instrument, parameter = series
            rules, zone = self.rules(*series)
            first, _ = day_bounds(min(days), zone)
            _, last = day_bounds(max(days), zone)
            base = await self.store.query_aggregates(
                period=rules.base, site=site, instrument=instrument, parameter=parameter, start=first, end=last
            )
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
            calendar = [m for m in month_aggregates(all_days, rules, zone) if _year_month(m.start, zone) in months] + [
                y for y in year_aggregates(all_days, rules, zone) if local_date(y.start, zone).year in years
            ]
            await self.store.write_aggregates(calendar)
            stats.written[Period.MONTH] += sum(1 for a in calendar if a.period is Period.MONTH)
            stats.written[Period.YEAR] += sum(1 for a in calendar if a.period is Period.YEAR)
            stats.months |= months
            stats.years |= years


def _year_month(ts: datetime, zone: tzinfo) -> tuple[int, int]:
    local = local_date(ts, zone)
    return (local.year, local.month)
