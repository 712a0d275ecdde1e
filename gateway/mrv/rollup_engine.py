"""Keeps the rollups in the store up to date as raw readings arrive, late ones included. I/O around gateway.mrv.rollup.

- `note_written(readings)` / `note_batches(batches)`: after readings are in the store, mark the (series, UTC
  minute) pairs they touched dirty. The marks live in the gateway's state SQLite (table `rollup_dirty`, one row
  per series and UTC hour with a bit per minute), so a restart loses none.
- `process_dirty()`: one pass. The dirty minutes are recomputed from the raw readings of those minutes only.
  Every level above is kept as running totals of its open periods (gateway.mrv.rollup.Running: an exact sum,
  counts, the valid minutes of a base period), updated by the children that changed: the new minute replaces
  its old part in its base period, the base period's old aggregate is replaced by the new one in its day, the
  day's in its month and year. So a pass reads and computes the same whether it comes at minute 1 or 59 of
  the hour, on day 2 or day 360 of the year; the results equal a rebuild from the stored levels bit for bit
  (where the exact sum cannot hold, a value that is no finite number, the period is rebuilt from the store).
  A period's totals are built from the store the first time a process needs them (after a start, for a new
  period, or for late data into a period older than the _KEEP_OPEN newest per series and level); the store
  still holds the old rows then, as every level is written after all are computed. A pass that fails forgets
  the totals (they are built from the store again); `recompute` does too. The engine must be the only writer
  of rollups while it runs, apart from `recompute` from raw, which gives the same rows.
  A mark is removed only after its aggregates are written, and only if no
  newer data marked it again meanwhile (a version counter), so a crash or a concurrent batch never loses a
  recomputation.
- A series whose rollup raises (bad data, a bug, a store refusing its values) is logged once with its hours,
  counted (`counters.set_aside`) and its marks are set aside (table `rollup_set_aside`): the other series go
  on, and a restart does not fall on it again. New data for that series marks it again;
  `release_set_aside()` puts the set-aside marks back (`cems-gateway rollup status --retry`).
- `run()`: one pass per `[rollup] interval` seconds (a pass that reached its mark limit is followed at once by
  another), and raw-data retention (gateway.mrv.retention) between passes when configured.
- `recompute(start, end)`: from scratch, from raw, for every series with raw data in [start, end), widened to
  whole hours; never before the raw-data retention horizon (there the stored rollups are all that is left).
  Writes are upserts, so running it twice gives the same rows (`cems-gateway rollup recompute`).

Late data therefore recomputes only the minutes it falls in, their base periods, days, months and years.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path

from aua_contract import Batch
from gateway.config import GatewayConfig
from gateway.mrv.config import RuleResolver
from gateway.mrv.retention import Retention, raw_kept_from
from gateway.mrv.rollup import (
    Aggregate,
    Period,
    RuleSet,
    Running,
    base_aggregates,
    base_duration,
    day_aggregates,
    day_bounds,
    local_date,
    minute_aggregates,
    month_aggregates,
    month_bounds,
    part_of,
    year_aggregates,
    year_bounds,
)
from gateway.state_file import StateFile
from gateway.stores import Store, StoredReading, StoreError
from gateway.time_ns import from_ns, to_ns

__all__ = ["ALL_MINUTES", "DirtyMarks", "EngineCounters", "RecomputeStats", "RollupEngine"]

log = logging.getLogger(__name__)

_HOUR = timedelta(hours=1)
_MINUTE_STEP = timedelta(minutes=1)
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
        with self.transaction():
            self._db.executemany(
                "INSERT INTO rollup_dirty (site, instrument, parameter, hour_ns, version, minutes) "
                "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (site, instrument, parameter, hour_ns) "
                "DO UPDATE SET version = version + 1, minutes = minutes | excluded.minutes",
                rows,
            )

    def take(self, limit: int) -> list[Mark]:
        """Up to `limit` marks, oldest hours first, with the minutes to redo: those marked since the last pass
        and those a pass took without finishing. The taken minutes move out of `minutes`, so data arriving
        during the pass marks only its own minutes for the next one; they stay in `taking` until `done` (or
        `set_aside`), so a pass cut short by a crash is redone."""
        with self.transaction():
            rows = self._db.execute(
                "SELECT site, instrument, parameter, hour_ns, version, minutes | taking FROM rollup_dirty "
                "ORDER BY hour_ns LIMIT ?",
                (limit,),
            ).fetchall()
            self._db.executemany(
                f"UPDATE rollup_dirty SET taking = taking | minutes, minutes = 0 WHERE {_MARK_KEY}",
                [row[:4] for row in rows],
            )
        return [(str(s), str(i), str(p), int(h), int(v), int(m)) for s, i, p, h, v, m in rows]

    def done(self, marks: Iterable[Mark]) -> None:
        """The taken minutes are rolled up: forget them, and the mark once nothing new arrived meanwhile."""
        with self.transaction():
            self._finish([mark[:4] for mark in marks])

    def _finish(self, keys: list[tuple[str, str, str, int]]) -> None:
        """Inside a transaction: the taken minutes of these marks are dealt with."""
        self._db.executemany(f"UPDATE rollup_dirty SET taking = 0 WHERE {_MARK_KEY}", keys)
        self._db.executemany(f"DELETE FROM rollup_dirty WHERE {_MARK_KEY} AND minutes = 0", keys)

    def set_aside(self, marks: Iterable[tuple[Mark, str]], now_ns: int) -> None:
        """Move marks whose rollup failed out of the way, each with its error (merged with earlier ones)."""
        rows = list(marks)
        with self.transaction():
            self._db.executemany(
                "INSERT INTO rollup_set_aside VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (site, instrument, parameter, hour_ns) DO UPDATE SET "
                "minutes = minutes | excluded.minutes, error = excluded.error, at_ns = excluded.at_ns",
                [(*mark[:4], mark[5], error, now_ns) for mark, error in rows],
            )
            self._finish([mark[:4] for mark, _ in rows])

    def set_aside_marks(self) -> list[SetAside]:
        with self._lock:
            rows = self._db.execute(
                "SELECT site, instrument, parameter, hour_ns, minutes, error FROM rollup_set_aside "
                "ORDER BY site, instrument, parameter, hour_ns"
            ).fetchall()
        return [(str(s), str(i), str(p), int(h), int(m), str(e)) for s, i, p, h, m, e in rows]

    def release_set_aside(self) -> int:
        """Put every set-aside mark back among the dirty ones (after a fix); returns how many."""
        with self.transaction():
            moved = self._db.execute(
                "INSERT INTO rollup_dirty (site, instrument, parameter, hour_ns, version, minutes) "
                "SELECT site, instrument, parameter, hour_ns, 1, minutes FROM rollup_set_aside WHERE true "
                "ON CONFLICT (site, instrument, parameter, hour_ns) "
                "DO UPDATE SET version = version + 1, minutes = minutes | excluded.minutes"
            ).rowcount
            self._db.execute("DELETE FROM rollup_set_aside")
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
    open_periods: int = 0
    """running periods held in memory now (at most _KEEP_OPEN per series and level)"""
    seeded: int = 0
    """running periods built from the store (at start, a new period, late data into an older one)"""
    evicted: int = 0
    """running periods dropped to keep the bound"""
    open_series: int = 0
    """series with running periods in memory now (at most [rollup] max_open_series)"""
    evicted_series: int = 0
    """series whose running totals were forgotten to keep [rollup] max_open_series (rebuilt from the store)"""
    expired_minutes: int = 0
    """minutes of late data before the raw-data retention horizon whose rollups are stored: not rolled up (the
    minute's other raw readings may be gone; its stored rollups are the record)"""


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


DEFAULT_MAX_OPEN_SERIES = 100_000
"""[rollup] max_open_series: series whose running totals a gateway keeps (a few kB each)"""

_KEEP_OPEN = 2
"""running periods kept per series and level: the one being filled and the one before it (data for older ones
builds their totals from the store again)"""


@dataclass
class _Levels:
    """What one pass writes above the minutes."""

    base: dict[Series, list[Aggregate]] = field(default_factory=dict)
    calendar: dict[Series, list[Aggregate]] = field(default_factory=dict)
    rebuild: dict[Series, set[date]] = field(default_factory=dict)
    """series whose days, months and years are rebuilt from the stored levels below (totals not exact)"""


class _OpenPeriods:
    """The running totals of the periods passes are filling, _KEEP_OPEN per series and level (the newest), for at
    most `max_series` series: the least recently used series' totals are forgotten first (they are built from the
    store again when that series has data again). Why a bound: without a registry an agent may invent series
    names, and each would otherwise keep its totals (a few kB) for as long as the gateway runs."""

    def __init__(self, counters: EngineCounters, max_series: int = DEFAULT_MAX_OPEN_SERIES) -> None:
        self.counters = counters
        self.max_series = max_series
        self._periods: dict[tuple[Series, Period], dict[int, Running]] = {}
        self._series: OrderedDict[Series, set[Period]] = OrderedDict()
        """series → its levels held, least recently used first"""

    def get(self, series: Series, period: Period, start_ns: int) -> Running | None:
        if series in self._series:
            self._series.move_to_end(series)
        return self._periods.get((series, period), {}).get(start_ns)

    def put(self, series: Series, period: Period, start_ns: int, running: Running) -> None:
        self._periods.setdefault((series, period), {})[start_ns] = running
        self._series.setdefault(series, set()).add(period)
        self._series.move_to_end(series)

    def trim(self) -> None:
        """After a pass: keep the newest _KEEP_OPEN periods per series and level (a pass may need more), and the
        `max_series` series used most recently."""
        for periods in self._periods.values():
            while len(periods) > _KEEP_OPEN:
                del periods[min(periods)]
                self.counters.evicted += 1
        while len(self._series) > self.max_series:
            series, levels = self._series.popitem(last=False)
            for period in levels:
                self.counters.evicted += len(self._periods.pop((series, period), {}))
            self.counters.evicted_series += 1
        self._count()

    def drop_series(self, series: Series, *, calendar_only: bool = False) -> None:
        levels = self._series.get(series, set())
        for period in list(levels):
            if not calendar_only or period in (Period.DAY, Period.MONTH, Period.YEAR):
                self._periods.pop((series, period), None)
                levels.discard(period)
        if not levels:
            self._series.pop(series, None)
        self._count()

    def clear(self) -> None:
        self._periods.clear()
        self._series.clear()
        self._count()

    def _count(self) -> None:
        self.counters.open_periods = sum(len(periods) for periods in self._periods.values())
        self.counters.open_series = len(self._series)


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
        max_open_series: int = DEFAULT_MAX_OPEN_SERIES,
    ) -> None:
        self.store = store
        self.marks = marks
        self.rules = rules
        self.interval = interval
        self.retention = retention
        self.counters = EngineCounters()
        self._open = _OpenPeriods(self.counters, max_open_series)

    @classmethod
    def open(
        cls,
        store: Store,
        state_path: Path,
        rules: RuleResolver,
        *,
        interval: float = 60.0,
        retention: Retention | None = None,
        max_open_series: int = DEFAULT_MAX_OPEN_SERIES,
    ) -> RollupEngine:
        return cls(
            store,
            DirtyMarks(state_path),
            rules,
            interval=interval,
            retention=retention,
            max_open_series=max_open_series,
        )

    @classmethod
    def from_config(cls, config: GatewayConfig, store: Store) -> RollupEngine:
        """The engine a gateway config describes: marks in [gateway] state, rules from [rollup] and [[source]]."""
        rules = RuleResolver.from_config(config.rollup, config.sources)
        retention = Retention.from_config(config.store, store)
        return cls.open(
            store,
            config.gateway.state,
            rules,
            interval=config.rollup.interval,
            retention=retention,
            max_open_series=config.rollup.max_open_series,
        )

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

    async def mark_minutes(self, keys: set[tuple[str, str, str, int]]) -> None:
        """Mark (site, instrument, parameter, minute ns) pairs stored elsewhere (gateway/mrv/stored_batches.py)."""
        await self._mark(keys)

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
        if marks:
            marks = await self._leave_expired(marks)
        if not marks:
            return stats
        failures = _Failures()
        try:
            minutes = await self._dirty_minutes(marks, stats, failures)
            levels = await self._running_levels(minutes, stats, failures)
            await self._write_isolated(minutes, failures, "1-minute write")
            await self._write_isolated(levels.base, failures, "base-period write")
            await self._write_isolated(levels.calendar, failures, "day/month/year write")
            for series, aggregates in minutes.items():
                if series not in failures:
                    stats.written[Period.MINUTE] += len(aggregates)
            for series, aggregates in [*levels.base.items(), *levels.calendar.items()]:
                if series not in failures:
                    for aggregate in aggregates:
                        stats.written[aggregate.period] += 1
            for series, aggregates in levels.base.items():
                if series not in failures:
                    stats.hours |= {_hour_floor(a.start) for a in aggregates}
            await self._write_calendar(
                {series: days for series, days in levels.rebuild.items() if series not in failures}, stats, failures
            )
        except BaseException:
            self._open.clear()  # some of the pass may not be stored: the running totals start again from the store
            raise
        for series in failures.errors:
            self._open.drop_series(series)
        self._open.trim()
        await asyncio.to_thread(self.marks.done, [m for m in marks if m[:3] not in failures])
        if failures.errors:
            await self._set_aside(marks, failures, stats)
        self.counters.raw_read += stats.raw_read
        self.counters.last_pass_raw_read = stats.raw_read
        return stats

    async def _leave_expired(self, marks: list[Mark]) -> list[Mark]:
        """The marks without the minutes that would replace a stored rollup with less than it was made of.

        Before the raw-data retention horizon an hour's raw readings may be gone. A late reading into a minute
        whose 1-minute rollup is stored would recompute that minute (and its hour) from the late readings alone
        and replace the rollups that are the record once the raw data expired (`recompute` leaves those hours
        alone too): such minutes are left out, their readings stay stored as received, and they are counted and
        logged. A minute with no stored rollup (an agent's outbox replayed after a long outage) had no raw
        readings to lose and is rolled up as usual."""
        horizon = await raw_kept_from(self.store)
        if horizon is None:
            return marks
        horizon_ns = to_ns(horizon)
        old = [mark for mark in marks if mark[3] < horizon_ns]
        if not old:
            return marks
        stored: set[tuple[str, str, str, int]] = set()
        hours: dict[tuple[str, str], set[int]] = defaultdict(set)
        for site, instrument, _, hour_ns, _, _ in old:
            hours[(site, instrument)].add(hour_ns)
        for (site, instrument), wanted in sorted(hours.items()):
            # only the marked hours, in runs of at most a day: old timestamps far apart never read what lies between
            for start, end in _runs(sorted(wanted), _HOUR_NS, _CHUNK_MINUTES * _MINUTE_NS):
                for minute in await self.store.query_aggregates(
                    period=Period.MINUTE, site=site, instrument=instrument, start=from_ns(start), end=from_ns(end)
                ):
                    stored.add((minute.site, minute.instrument, minute.parameter, to_ns(minute.start)))
        kept: list[Mark] = []
        left_out = 0
        first: tuple[str, str, str, int] | None = None
        for mark in marks:
            site, instrument, parameter, hour_ns, version, minutes = mark
            if hour_ns < horizon_ns:
                for m in range(60):
                    if minutes >> m & 1 and (site, instrument, parameter, hour_ns + m * _MINUTE_NS) in stored:
                        minutes &= ~(1 << m)
                        left_out += 1
                        first = first or (site, instrument, parameter, hour_ns + m * _MINUTE_NS)
                if not minutes:
                    continue
            kept.append((site, instrument, parameter, hour_ns, version, minutes))
        if first is not None:
            self.counters.expired_minutes += left_out
            log.warning(
                "rollups: late data in %d minute(s) before the raw-data retention horizon %s whose rollups are"
                " stored (the first: %s %s/%s at %s): stored as received, not rolled up; the stored rollups stay"
                " the record (%d so far, aua_gateway_rollup_expired_minutes)",
                left_out,
                horizon.isoformat(),
                first[0],
                first[1],
                first[2],
                from_ns(first[3]).isoformat(),
                self.counters.expired_minutes,
            )
        still = {mark[:4] for mark in kept}
        dropped = [mark for mark in old if mark[:4] not in still]
        if dropped:
            await asyncio.to_thread(self.marks.done, dropped)
        return kept

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
        self._open.clear()  # the stored rollups changed under the running totals
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

    async def _running_levels(
        self, minutes: dict[Series, list[Aggregate]], stats: RecomputeStats, failures: _Failures
    ) -> _Levels:
        """The base periods, days, months and years the new minutes change, from the running totals of those
        periods (built from the store the first time a period is needed; the store still holds the old rows)."""
        levels = _Levels()
        await self._seed_base(minutes, stats, failures)
        for series, items in sorted(minutes.items()):
            if series in failures or not items:
                continue
            try:
                rules, zone = self.rules(*series)
                base = self._apply_minutes(series, items, rules)
                levels.base[series] = [new for _, new in base]
                days = await self._apply_up(
                    series, period=Period.DAY, changed=base, rules=rules, zone=zone, stats=stats
                )
                if days is None:
                    levels.rebuild[series] = {local_date(new.start, zone) for _, new in base}
                    self._open.drop_series(series, calendar_only=True)
                    continue
                months = await self._apply_up(
                    series, period=Period.MONTH, changed=days, rules=rules, zone=zone, stats=stats
                )
                years = await self._apply_up(
                    series, period=Period.YEAR, changed=days, rules=rules, zone=zone, stats=stats
                )
                if months is None or years is None:
                    levels.rebuild[series] = {local_date(new.start, zone) for _, new in base}
                    self._open.drop_series(series, calendar_only=True)
                    continue
                levels.calendar[series] = [new for _, new in days + months + years]
                stats.days |= {local_date(new.start, zone) for _, new in days}
                stats.months |= {_year_month(new.start, zone) for _, new in months}
                stats.years |= {local_date(new.start, zone).year for _, new in years}
            except Exception as error:  # one series' poison must not stop the others
                self._open.drop_series(series)
                failures.add(series, "running rollup", error)
        return levels

    async def _seed_base(
        self, minutes: dict[Series, list[Aggregate]], stats: RecomputeStats, failures: _Failures
    ) -> None:
        """Running totals for the base periods of the new minutes that have none yet, from the stored minutes
        of those periods (and the stored base rows, which the day above counts): one query per instrument."""
        missing: dict[tuple[str, str], dict[Series, set[int]]] = defaultdict(lambda: defaultdict(set))
        steps: dict[Series, tuple[RuleSet, int]] = {}
        for series, items in minutes.items():
            if series in failures:
                continue
            try:
                rules, _ = self.rules(*series)
            except Exception as error:
                failures.add(series, "base-period rollup", error)
                continue
            step = base_duration_ns(rules.base)
            steps[series] = (rules, step)
            for start in {_floor_ns(to_ns(m.start), step) for m in items}:
                if self._open.get(series, rules.base, start) is None:
                    missing[series[:2]][series].add(start)
        for (site, instrument), wanted in sorted(missing.items()):
            hours = sorted({_hour_ns(start) for starts in wanted.values() for start in starts})
            stored: dict[str, list[Aggregate]] = defaultdict(list)
            rows: dict[tuple[str, Period, int], Aggregate] = {}
            for start, end in _runs(hours, _HOUR_NS, _CHUNK_MINUTES * _MINUTE_NS):
                found = await self.store.query_aggregates(
                    period=Period.MINUTE, site=site, instrument=instrument, start=from_ns(start), end=from_ns(end)
                )
                for base_period in sorted({steps[series][0].base for series in wanted}):
                    for row in await self.store.query_aggregates(
                        period=base_period, site=site, instrument=instrument, start=from_ns(start), end=from_ns(end)
                    ):
                        rows[(row.parameter, base_period, to_ns(row.start))] = row
                stats.aggregates_read += len(found)
                for minute in found:
                    stored[minute.parameter].append(minute)
            stats.aggregates_read += len(rows)
            for series, starts in sorted(wanted.items()):
                rules, step = steps[series]
                periods = {
                    start: Running.of(series, rules.base, from_ns(start), from_ns(start + step)) for start in starts
                }
                for minute in stored[series[2]]:
                    running = periods.get(_floor_ns(to_ns(minute.start), step))
                    if running is not None:
                        running.put(part_of(minute, rules.base, running.start))
                for start, running in periods.items():
                    running.last = rows.get((series[2], rules.base, start))
                    self._open.put(series, rules.base, start, running)
                    self.counters.seeded += 1

    def _apply_minutes(
        self, series: Series, minutes: list[Aggregate], rules: RuleSet
    ) -> list[tuple[Aggregate | None, Aggregate]]:
        """The new minutes into their base periods' totals: (old, new) of each base period they change."""
        touched: dict[int, tuple[Running, Aggregate | None]] = {}
        step = base_duration_ns(rules.base)
        for minute in minutes:
            start = _floor_ns(to_ns(minute.start), step)
            running = self._open.get(series, rules.base, start)
            if running is None:
                raise RuntimeError(f"no running totals for the base period at {from_ns(start).isoformat()}")
            touched.setdefault(start, (running, running.last))
            running.put(part_of(minute, rules.base, running.start))
        settled = self._settle(touched, rules)
        if settled is None:  # a base period with a part always has an aggregate
            raise RuntimeError("a base period's running totals gave no aggregate")
        return settled

    async def _apply_up(
        self,
        series: Series,
        *,
        period: Period,
        changed: list[tuple[Aggregate | None, Aggregate]],
        rules: RuleSet,
        zone: tzinfo,
        stats: RecomputeStats,
    ) -> list[tuple[Aggregate | None, Aggregate]] | None:
        """Changed children (old, new) into their day, month or year totals: (old, new) of each period they
        change; None when a period's totals cannot give the exact result (the caller rebuilds from the store)."""
        touched: dict[int, tuple[Running, Aggregate | None]] = {}
        for old, new in changed:
            start, end = _calendar_bounds(period, new.start, zone)
            key = to_ns(start)
            running = self._open.get(series, period, key)
            if running is None:
                running = await self._seed_calendar(series, period, (start, end), rules, stats)
                self._open.put(series, period, key, running)
            touched.setdefault(key, (running, running.last))
            running.replace(None if old is None else part_of(old, period, start), part_of(new, period, start))
        return self._settle(touched, rules)

    @staticmethod
    def _settle(
        touched: dict[int, tuple[Running, Aggregate | None]], rules: RuleSet
    ) -> list[tuple[Aggregate | None, Aggregate]] | None:
        """(aggregate before the pass, now) of each touched period, oldest first; None when one of them has no
        exact result from its totals (the caller rebuilds from the store)."""
        settled = []
        for _, (running, before) in sorted(touched.items()):
            new = running.aggregate(rules)
            if new is None:
                return None
            settled.append((running, before, new))
        for running, _, new in settled:
            running.last = new
        return [(before, new) for _, before, new in settled]

    async def _seed_calendar(
        self, series: Series, period: Period, bounds: tuple[datetime, datetime], rules: RuleSet, stats: RecomputeStats
    ) -> Running:
        """Running totals of a day (from its stored base periods), month or year (from its stored days)."""
        site, instrument, parameter = series
        start, end = bounds
        child = rules.base if period is Period.DAY else Period.DAY
        running = Running.of(series, period, start, end)
        parts = await self.store.query_aggregates(
            period=child, site=site, instrument=instrument, parameter=parameter, start=start, end=end
        )
        for part in parts:
            running.replace(None, part_of(part, period, start))
        stored = await self.store.query_aggregates(
            period=period, site=site, instrument=instrument, parameter=parameter, start=start, end=start + _MINUTE_STEP
        )
        running.last = stored[0] if stored else None
        stats.aggregates_read += len(parts) + len(stored)
        self.counters.seeded += 1
        return running

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


def _calendar_bounds(period: Period, ts: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """UTC [start, end) of the local day, month or year `ts` falls in."""
    local = local_date(ts, zone)
    if period is Period.DAY:
        return day_bounds(local, zone)
    if period is Period.MONTH:
        return month_bounds(local.year, local.month, zone)
    return year_bounds(local.year, zone)


def _year_month(ts: datetime, zone: tzinfo) -> tuple[int, int]:
    local = local_date(ts, zone)
    return (local.year, local.month)
