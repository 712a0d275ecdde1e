"""The rollup engine on real stores (SQLite file, real influxd): incremental, late data, restarts, recompute.

docs/regulatory-basis.md §3 for the rules; what is pinned here is the I/O: dirty marks survive a restart, late data
recomputes only the hour, day, month and year it falls in, and `recompute` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from aua_contract import Batch, Quality, Reading
from gateway.mrv.config import RollupSection, RuleResolver
from gateway.mrv.rollup import Aggregate, Period, RuleSet
from gateway.mrv.rollup_engine import ALL_MINUTES, DirtyMarks, RollupEngine
from gateway.stores import SqliteStore, Store, StoredReading, StoreError, open_store
from gateway.stores.base import RevisionState
from gateway.time_ns import from_ns

ALMATY = ZoneInfo("Asia/Almaty")
T0 = datetime(2024, 5, 1, tzinfo=ALMATY).astimezone(UTC)  # local midnight = 2024-04-30 19:00 UTC
RULES = RuleResolver.from_config(RollupSection(rule_set="ied-lcp", time_zone="Asia/Almaty"), [])


def reading(
    ts: datetime, value: float = 100.0, *, parameter: str = "so2", quality: Quality = Quality.OK
) -> StoredReading:
    return StoredReading("pvl", "agent-1", "gas", parameter, ts, value, "mg/m3", quality)


def minutes_of(start: datetime, count: int, value: float = 100.0, *, every: int = 20) -> list[StoredReading]:
    """`count` minutes from `start`, a sample every `every` seconds."""
    return [
        reading(start + timedelta(minutes=m, seconds=s), value + m % 7)
        for m in range(count)
        for s in range(0, 60, every)
    ]


@pytest.fixture(params=["sqlite", "influx"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = (
        f"sqlite://{tmp_path / 'aua.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("influx_db_url")
    )
    opened = open_store(url)
    await opened.open()
    yield opened
    await opened.close()


async def all_aggregates(store: Store) -> dict[Period, list[Aggregate]]:
    return {period: await store.query_aggregates(period=period) for period in Period}


@pytest.mark.parametrize(
    "ts",
    [
        T0 + timedelta(minutes=59, seconds=59, microseconds=999_999),
        T0.astimezone(ALMATY) + timedelta(hours=1),  # a batch brings this to UTC; the mark is the UTC hour
        datetime(1969, 12, 31, 23, 30, tzinfo=UTC),  # before the epoch: floor, not truncation toward zero
    ],
)
async def test_batches_mark_the_hours_their_readings_mark(tmp_path: Path, ts: datetime) -> None:
    """note_batches (ingest) computes hours from nanoseconds; it must mark what note_written marks."""
    store = SqliteStore(tmp_path / "aua.sqlite")
    readings = [Reading(instrument="gas", parameter=p, value=1.0, unit="mg/m3", ts=ts) for p in ("so2", "nox")]
    batch = Batch(site="pvl", agent="agent-1", seq=0, sent_at=T0, readings=readings)
    by_batch = RollupEngine.open(store, tmp_path / "a.sqlite", RULES)
    by_reading = RollupEngine.open(store, tmp_path / "b.sqlite", RULES)
    await by_batch.note_batches([batch])
    await by_reading.note_written([StoredReading.from_reading("pvl", "agent-1", r) for r in readings])
    marks = [[mark[:4] for mark in engine.marks.take(10)] for engine in (by_batch, by_reading)]
    assert marks[0] == marks[1]
    hour = ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    assert {from_ns(mark[3]) for mark in marks[0]} == {hour}
    by_batch.close()
    by_reading.close()


async def test_new_data_builds_every_level(store: Store, tmp_path: Path) -> None:
    """§3: raw → 1-minute → hourly → daily → monthly/annual, each with validity and counts."""
    engine = RollupEngine.open(store, tmp_path / "state.sqlite", RULES)
    rows = minutes_of(T0, 180)
    await store.write(rows)
    await engine.note_written(rows)
    assert await engine.pending() == 3
    stats = await engine.process_dirty()
    assert await engine.pending() == 0
    assert stats.raw_read == len(rows)
    found = await all_aggregates(store)
    assert len(found[Period.MINUTE]) == 180
    assert all(m.n_valid == m.n_expected == 3 for m in found[Period.MINUTE])
    assert [(h.start, h.n_valid, h.valid) for h in found[Period.HOUR]] == [
        (T0 + timedelta(hours=h), 60, True) for h in range(3)
    ]
    [day] = found[Period.DAY]
    assert (day.start, day.n_valid, day.n_expected, day.valid) == (T0, 3, 24, False)
    assert day.reason == "21 hours invalid or missing (> 3)"
    [month] = found[Period.MONTH]
    assert (month.n_valid, month.n_expected) == (3, 31 * 24)
    assert month.value == pytest.approx(sum(100.0 + m % 7 for m in range(180)) / 180)
    [year] = found[Period.YEAR]
    assert year.start == datetime(2024, 1, 1, tzinfo=ALMATY).astimezone(UTC)
    assert year.n_expected == 8785  # 2024 in Almaty: leap year plus the hour gained on 2024-03-01
    engine.close()


async def test_late_data_recomputes_only_the_periods_it_touches(store: Store, tmp_path: Path) -> None:
    engine = RollupEngine.open(store, tmp_path / "state.sqlite", RULES)
    rows = [r for day in range(3) for r in minutes_of(T0 + timedelta(days=day), 24 * 60, every=60)]
    late_hour = T0 + timedelta(days=1, hours=5)
    rows = [r for r in rows if not late_hour <= r.ts < late_hour + timedelta(minutes=30)]
    await store.write(rows)
    await engine.note_written(rows)
    await engine.process_dirty()
    [before] = await store.query_aggregates(period=Period.HOUR, start=late_hour, end=late_hour + timedelta(hours=1))
    assert (before.n_valid, before.valid) == (30, False)

    late = [reading(late_hour + timedelta(minutes=m), 500.0) for m in range(30)]
    await store.write(late)
    await engine.note_written(late)
    stats = await engine.process_dirty()

    assert stats.hours == {late_hour}
    assert stats.days == {(T0 + timedelta(days=1)).astimezone(ALMATY).date()}
    assert stats.months == {(2024, 5)}
    assert stats.years == {2024}
    assert stats.raw_read == 30  # the late minutes' readings, nothing else (the hour's other 30 minutes are stored)
    assert stats.raw_first is not None
    assert stats.raw_first >= late_hour
    assert stats.raw_last is not None
    assert stats.raw_last < late_hour + timedelta(hours=1)
    assert dict(stats.written) == {Period.MINUTE: 30, Period.HOUR: 1, Period.DAY: 1, Period.MONTH: 1, Period.YEAR: 1}
    [after] = await store.query_aggregates(period=Period.HOUR, start=late_hour, end=late_hour + timedelta(hours=1))
    assert (after.n_valid, after.valid) == (60, True)
    [day] = await store.query_aggregates(period=Period.DAY, start=T0 + timedelta(days=1), end=T0 + timedelta(days=2))
    assert day.valid
    engine.close()


async def test_marks_survive_a_restart(store: Store, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    first = RollupEngine.open(store, state, RULES)
    rows = minutes_of(T0, 60)
    await store.write(rows)
    await first.note_written(rows)
    first.close()  # the gateway stops before the next pass
    assert await store.query_aggregates(period=Period.HOUR) == []
    second = RollupEngine.open(store, state, RULES)
    assert await second.pending() == 1
    await second.process_dirty()
    assert [h.n_valid for h in await store.query_aggregates(period=Period.HOUR)] == [60]
    assert await second.pending() == 0
    second.close()


def test_a_mark_added_while_processing_is_kept(tmp_path: Path) -> None:
    """A batch for an hour being recomputed bumps its version, so `done` leaves it for the next pass."""
    marks = DirtyMarks(tmp_path / "state.sqlite")
    marks.add([("s", "i", "p", 0), ("s", "i", "p", 3600)])
    taken = marks.take(10)
    marks.add([("s", "i", "p", 0)])
    marks.done(taken)
    assert [m[:4] for m in marks.take(10)] == [("s", "i", "p", 0)]
    marks.close()


def test_minutes_a_pass_took_are_not_taken_again_while_data_keeps_arriving(tmp_path: Path) -> None:
    """At a steady rate every batch touches the current hour while a pass runs. A pass must take only the
    minutes marked since the previous one (the soak found every pass re-reading the whole hour so far, since a
    mark bumped during the pass was kept whole), and minutes a pass took but never finished (a crash) are
    taken again."""
    marks = DirtyMarks(tmp_path / "state.sqlite")
    minute = 60 * 10**9
    marks.add([("s", "i", "p", 0)])
    [taken] = marks.take(10)
    assert taken[5] == 0b1
    marks.add([("s", "i", "p", minute)])  # arrives during the pass
    marks.done([taken])
    [taken] = marks.take(10)
    assert taken[5] == 0b10  # only the new minute, not minute 0 again
    marks.add([("s", "i", "p", 2 * minute)])
    marks.close()  # the pass dies before `done`
    marks = DirtyMarks(tmp_path / "state.sqlite")
    [taken] = marks.take(10)
    assert taken[5] == 0b110  # the unfinished minute and the new one
    marks.done([taken])
    assert marks.take(10) == []
    assert marks.count() == 0
    marks.close()


async def test_recompute_is_idempotent_and_equals_incremental(store: Store, tmp_path: Path) -> None:
    engine = RollupEngine.open(store, tmp_path / "state.sqlite", RULES)
    rows = minutes_of(T0 + timedelta(hours=22), 4 * 60, every=30) + [
        reading(T0 + timedelta(hours=23, minutes=m), 1.0, quality=Quality.CHECK_FUNCTION) for m in range(30)
    ]
    await store.write(rows)
    await engine.note_written(rows)
    await engine.process_dirty()
    incremental = await all_aggregates(store)
    stats = await engine.recompute(T0 + timedelta(hours=22, minutes=17), T0 + timedelta(hours=26))
    assert stats.raw_read == len({r.ts for r in rows})  # the range was widened to whole hours
    once = await all_aggregates(store)
    await engine.recompute(T0, T0 + timedelta(days=2))
    twice = await all_aggregates(store)
    assert once == twice == incremental
    [calibration] = [h for h in once[Period.HOUR] if h.start == T0 + timedelta(hours=23)]
    # the check_function samples replaced the :00 ones: each minute keeps 1 usable of 2 (≥ 50 %), so all valid
    assert (calibration.n_maintenance, calibration.n_valid, calibration.valid) == (0, 60, True)
    engine.close()


# -- order of arrival (property, SQLite in memory) -----------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.floats(0, 1000, allow_nan=False), min_size=20, max_size=120),
    qualities=st.lists(
        st.sampled_from([Quality.OK, Quality.OK, Quality.CHECK_FUNCTION, Quality.FAILURE]), min_size=120
    ),
    batches=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    passes=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_property_arrival_order_and_pass_timing_do_not_change_rollups(
    values: list[float], qualities: list[Quality], batches: int, seed: int, passes: list[bool]
) -> None:
    """The issue: order of arrival does not change results; neither do processing passes in between."""
    rows = [
        reading(T0 + timedelta(hours=23, minutes=i * 2, seconds=i % 3 * 20), v, quality=qualities[i])
        for i, v in enumerate(values)
    ]

    async def scenario(order: list[StoredReading], split: int, between: list[bool]) -> dict[Period, list[Aggregate]]:
        async with SqliteStore(":memory:") as store:
            engine = RollupEngine(store, DirtyMarks(":memory:"), RULES)
            size = max(1, len(order) // split)
            for index in range(0, len(order), size):
                chunk = order[index : index + size]
                await store.write(chunk)
                await engine.note_written(chunk)
                if between[(index // size) % len(between)]:
                    await engine.process_dirty()
            await engine.process_dirty()
            result = await all_aggregates(store)
            engine.close()
            return result

    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    assert asyncio.run(scenario(shuffled, batches, passes)) == asyncio.run(scenario(rows, 1, [True]))


# -- steady state: work per pass, one pass per interval (issue 12) -------------------------------------------


class CountingStore:
    """The real store, counting the raw readings and aggregates its queries return (the engine's reads)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.raw_read = 0
        self.aggregates_read = 0

    async def query(self, **filters: Any) -> list[StoredReading]:
        found = await self.inner.query(**filters)
        self.raw_read += len(found)
        return found

    async def query_aggregates(self, **filters: Any) -> list[Aggregate]:
        found = await self.inner.query_aggregates(**filters)
        self.aggregates_read += len(found)
        return found

    async def write_aggregates(self, aggregates: list[Aggregate]) -> None:
        await self.inner.write_aggregates(aggregates)


def second_batch(start: datetime, seconds: int, parameters: list[str], seq: int) -> Batch:
    """One reading per parameter per second, like an analyzer polled at 1 s."""
    readings = [
        Reading(instrument="gas", parameter=p, value=50.0 + s % 11, unit="mg/m3", ts=start + timedelta(seconds=s))
        for s in range(seconds)
        for p in parameters
    ]
    return Batch(site="pvl", agent="agent-1", seq=seq, sent_at=start, readings=readings)


async def test_raw_read_per_pass_does_not_grow_through_the_hour(tmp_path: Path) -> None:
    """At a constant arrival rate a pass reads the raw readings of the minutes that got new data, not the hour
    so far: the old engine read the whole hour every pass (251,520 readings at 600/s late in the hour)."""
    parameters = [f"p{i}" for i in range(5)]
    async with SqliteStore(tmp_path / "aua.sqlite") as real:
        counting = CountingStore(real)
        engine = RollupEngine(counting, DirtyMarks(tmp_path / "state.sqlite"), RULES)  # type: ignore[arg-type]
        start = T0 + timedelta(seconds=20)  # passes fall mid-minute: each touches two minutes
        per_pass = []
        for index in range(150):  # two and a half hours, one pass per 60 s of data
            batch = second_batch(start + timedelta(seconds=60 * index), 60, parameters, index)
            await real.write_batches([batch])
            await engine.note_batches([batch])
            before = counting.raw_read
            stats = await engine.process_dirty()
            assert stats.raw_read == counting.raw_read - before
            assert engine.counters.last_pass_raw_read == stats.raw_read
            per_pass.append(stats.raw_read)
        arrived = 60 * len(parameters)
        # the minute finished in this pass (all 60 s) plus the 20 s of the next one
        assert set(per_pass[1:]) == {80 * len(parameters)}
        assert max(per_pass) <= 2 * arrived
        [hour] = await real.query_aggregates(period=Period.HOUR, parameter="p0", start=T0, end=T0 + timedelta(hours=1))
        assert (hour.n_valid, hour.valid) == (60, True)
        engine.close()


@pytest.mark.parametrize("rule_set", ["ied-lcp", "ied-wi"])  # hourly and half-hourly base periods
async def test_hours_built_from_stored_minutes_equal_hours_from_raw(tmp_path: Path, rule_set: str) -> None:
    """A pass per minute of data gives the same rollups as one recomputation from raw at the end."""
    rules = RuleResolver.from_config(RollupSection(rule_set=rule_set, time_zone="Asia/Almaty"), [])
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        engine = RollupEngine(store, DirtyMarks(tmp_path / "state.sqlite"), rules)
        for index in range(90):
            rows = minutes_of(T0 + timedelta(minutes=index), 1, 10.0 + index * 0.37, every=7)
            await store.write(rows)
            await engine.note_written(rows)
            await engine.process_dirty()
        incremental = await all_aggregates(store)
        assert len(incremental[Period.HALF_HOUR if rule_set == "ied-wi" else Period.HOUR]) == (
            3 if rule_set == "ied-wi" else 2
        )
        await engine.recompute(T0, T0 + timedelta(hours=2))
        assert await all_aggregates(store) == incremental
        engine.close()


async def test_run_makes_one_pass_per_interval_while_data_keeps_coming(tmp_path: Path) -> None:
    """The old loop ran passes back to back while any mark was pending, i.e. always under live ingest."""
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        engine = RollupEngine(store, DirtyMarks(tmp_path / "state.sqlite"), RULES, interval=3600)
        rows = minutes_of(T0, 1)
        await store.write(rows)
        await engine.note_written(rows)
        task = asyncio.create_task(engine.run())
        try:
            for _ in range(1000):  # the first pass starts at once
                if engine.counters.passes:
                    break
                await asyncio.sleep(0.01)
            for index in range(1, 20):
                rows = minutes_of(T0 + timedelta(minutes=index), 1)
                await store.write(rows)
                await engine.note_written(rows)
                await asyncio.sleep(0.01)
            assert await engine.pending() > 0  # data arrived after the first pass, and waits for the next
            assert engine.counters.passes == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        engine.close()


def test_marks_of_an_older_state_file_mean_whole_hours(tmp_path: Path) -> None:
    """A state file written before minute masks: its hour marks recompute every minute of the hour."""
    path = tmp_path / "state.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE rollup_dirty (site TEXT NOT NULL, instrument TEXT NOT NULL, parameter TEXT NOT NULL, "
            "hour_ns INTEGER NOT NULL, version INTEGER NOT NULL, "
            "PRIMARY KEY (site, instrument, parameter, hour_ns)) WITHOUT ROWID"
        )
        old.execute("INSERT INTO rollup_dirty VALUES ('s', 'i', 'p', 3600000000000, 4)")
    old.close()
    marks = DirtyMarks(path)
    assert marks.take(10) == [("s", "i", "p", 3_600_000_000_000, 4, ALL_MINUTES)]
    marks.add([("s", "i", "p", 3_600_000_000_000 + 61_000_000_000)])
    assert marks.take(10) == [("s", "i", "p", 3_600_000_000_000, 5, ALL_MINUTES)]
    marks.close()


async def test_catch_up_ends_while_data_keeps_arriving(tmp_path: Path) -> None:
    """A report first rolls up what is stored; with live ingest `while pending()` never ended."""
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        engine = RollupEngine(store, DirtyMarks(tmp_path / "state.sqlite"), RULES)
        rows = minutes_of(T0, 120)
        await store.write(rows)
        await engine.note_written(rows)
        await engine.catch_up()
        assert await engine.pending() == 0
        assert len(await store.query_aggregates(period=Period.HOUR)) == 2
        engine.close()


# -- poison isolation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokenForOneSeries(RuleResolver):
    """A rule lookup that fails for one series: any exception inside one series' rollup behaves alike."""

    broken: tuple[str, str, str] = ("pvl", "gas", "nox")

    def __call__(self, site: str, instrument: str, parameter: str) -> tuple[RuleSet, ZoneInfo]:
        if (site, instrument, parameter) == self.broken:
            raise ArithmeticError("intermediate overflow in fsum")
        return super().__call__(site, instrument, parameter)


async def test_a_failing_series_is_set_aside_and_the_others_roll_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = BrokenForOneSeries(RULES.default)
    state = tmp_path / "state.sqlite"
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        engine = RollupEngine(store, DirtyMarks(state), broken)
        rows = [r for p in ("so2", "nox") for r in [replace(x, parameter=p) for x in minutes_of(T0, 120)]]
        await store.write(rows)
        await engine.note_written(rows)
        with caplog.at_level(logging.ERROR, logger="gateway.mrv.rollup_engine"):
            stats = await engine.process_dirty()
            again = await engine.process_dirty()  # nothing retried in a loop
        assert stats.set_aside == {("pvl", "gas", "nox")}
        assert engine.counters.set_aside == 1
        assert again.raw_read == 0
        assert again.set_aside == set()
        logged = [r for r in caplog.records if "pvl/gas/nox" in r.getMessage()]
        assert len(logged) == 1
        assert "2 hour(s)" in logged[0].getMessage()
        assert "intermediate overflow" in logged[0].getMessage()
        hours = await store.query_aggregates(period=Period.HOUR)
        assert {(h.parameter, h.n_valid) for h in hours} == {("so2", 60)}
        assert await engine.pending() == 0
        engine.close()

        restarted = RollupEngine(store, DirtyMarks(state), broken)  # marks are durable: no crash loop
        assert await restarted.pending() == 0
        assert {m[:3] for m in restarted.marks.set_aside_marks()} == {("pvl", "gas", "nox")}
        assert (await restarted.process_dirty()).raw_read == 0
        restarted.close()

        fixed = RollupEngine(store, DirtyMarks(state), RULES)  # after a fix, the set-aside marks are retried
        assert await fixed.release_set_aside() == 2
        await fixed.process_dirty()
        hours = await store.query_aggregates(period=Period.HOUR)
        assert {(h.parameter, h.n_valid) for h in hours} == {("so2", 60), ("nox", 60)}
        assert fixed.marks.set_aside_marks() == []
        fixed.close()


# -- running totals equal a full rebuild (issue 12) ----------------------------------------------------------

NEW_YEAR = datetime(2025, 1, 1, tzinfo=ALMATY).astimezone(UTC)
"""local midnight of a new year: the hour, day, month and year all roll over in the data below"""


@pytest.mark.parametrize("rule_set", ["ied-lcp", "ied-wi", "part75", "ambient"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(
        st.tuples(
            st.one_of(st.integers(-150, 150), st.integers(-2 * 1440 - 30, -2 * 1440 + 30)),  # now, and 2 days back
            st.integers(0, 59),
            st.floats(-1e6, 1e6, allow_nan=False),
            st.sampled_from([Quality.OK, Quality.OK, Quality.OK, Quality.CHECK_FUNCTION, Quality.FAILURE]),
            st.sampled_from(["so2", "nox"]),
        ),
        min_size=5,
        max_size=120,
    ),
    chunks=st.integers(1, 12),
    seed=st.integers(0, 2**32),
    revised=st.lists(st.tuples(st.integers(0, 119), st.floats(-1e6, 1e6, allow_nan=False)), max_size=6),
    restart_at=st.integers(0, 12),
)
def test_property_running_totals_equal_a_full_rebuild(
    rule_set: str,
    *,
    data: list[tuple[int, int, float, Quality, str]],
    chunks: int,
    seed: int,
    revised: list[tuple[int, float]],
    restart_at: int,
) -> None:
    """Whatever the order data arrives in (late data into closed hours, days and a closed year included), with a
    pass between random batches, approved revisions and a restart that loses the running totals, the stored
    rollups equal a recomputation from raw, bit for bit."""
    rules = RuleResolver.from_config(RollupSection(rule_set=rule_set, time_zone="Asia/Almaty"), [])
    rows = list(
        {
            (parameter, NEW_YEAR + timedelta(minutes=minute, seconds=second)): reading(
                NEW_YEAR + timedelta(minutes=minute, seconds=second), value, parameter=parameter, quality=quality
            )
            for minute, second, value, quality, parameter in data
        }.values()
    )
    random.Random(seed).shuffle(rows)

    async def scenario() -> tuple[dict[Period, list[Aggregate]], dict[Period, list[Aggregate]]]:
        async with SqliteStore(":memory:") as store, SqliteStore(":memory:") as fresh:
            marks = DirtyMarks(":memory:")
            engine = RollupEngine(store, marks, rules)
            approved: list[str] = []
            size = max(1, len(rows) // chunks)
            for number, index in enumerate(range(0, len(rows), size)):
                chunk = rows[index : index + size]
                await store.write(chunk)
                await engine.note_written(chunk)
                for which, value in revised:
                    if (which % len(rows)) // size == number:  # its chunk is stored: other content for it
                        await store.write([replace(rows[which % len(rows)], value=value)])
                        pending = await store.query_revisions(state=RevisionState.PENDING)
                        for revision in pending:
                            await store.approve_revision(revision.id, by="test", why="property", at=T0)
                            await engine.note_written([revision.reading])
                            approved.append(revision.id)
                if number == restart_at:
                    engine = RollupEngine(store, marks, rules)  # the running totals are gone
                await engine.process_dirty()
            while await engine.pending():
                await engine.process_dirty()
            incremental = await all_aggregates(store)
            raw = await store.query()
            await fresh.write(raw)
            rebuilt = RollupEngine(fresh, DirtyMarks(":memory:"), rules)
            await rebuilt.recompute(NEW_YEAR - timedelta(days=3), NEW_YEAR + timedelta(days=1))
            full = await all_aggregates(fresh)
            engine.close()
            rebuilt.close()
            event(f"{len(approved)} revisions approved")
            return incremental, full

    incremental, full = asyncio.run(scenario())
    assert incremental == full


async def _reads_per_pass(store: SqliteStore, start: datetime, passes: int, rules: RuleResolver) -> list[int]:
    """Rows (raw readings and aggregates) each pass reads, one pass per minute of 1 s data from `start`."""
    counting = CountingStore(store)
    engine = RollupEngine(counting, DirtyMarks(":memory:"), rules)  # type: ignore[arg-type]
    reads = []
    for index in range(passes):
        batch = second_batch(start + timedelta(minutes=index), 60, ["so2", "nox", "co"], index)
        await store.write_batches([batch])
        await engine.note_batches([batch])
        before = counting.raw_read + counting.aggregates_read
        stats = await engine.process_dirty()
        assert stats.aggregates_read + stats.raw_read == counting.raw_read + counting.aggregates_read - before
        reads.append(stats.aggregates_read + stats.raw_read)
    engine.close()
    return reads


async def test_a_pass_reads_as_much_at_minute_59_as_at_minute_1() -> None:
    """The hour is kept as running totals: a pass late in the hour reads the raw data of its minute and nothing
    more (the hour built from stored minutes read up to 59 minutes per series per pass)."""
    async with SqliteStore(":memory:") as store:
        reads = await _reads_per_pass(store, T0 + timedelta(hours=5), 60, RULES)
        # minute 0 builds the totals of the new hour, day, month and year from the store (what is stored of them)
        assert reads[1] == reads[59] == 60 * 3
        [hour] = await store.query_aggregates(period=Period.HOUR, parameter="so2")
        assert (hour.n_valid, hour.valid) == (60, True)


@pytest.mark.parametrize("rule_set", ["ied-lcp", "ambient"])
async def test_a_pass_reads_as_much_on_day_360_as_on_day_2(rule_set: str) -> None:
    """Days, months and years are running totals too: on day 360 a pass reads what it read on day 2 (the year
    level re-read every stored day of the year, up to 366 per series per pass). Building the year's totals
    once (a new process, the first pass) reads its stored days once."""
    rules = RuleResolver.from_config(RollupSection(rule_set=rule_set, time_zone="Asia/Almaty"), [])
    year_start = datetime(2024, 1, 1, tzinfo=ALMATY)
    found = {}
    for day in (2, 360):
        async with SqliteStore(":memory:") as store:
            earlier = [
                Aggregate("pvl", "gas", p, Period.DAY, (year_start + timedelta(days=d)).astimezone(UTC), 50.0 + d,
                          24, 24, True, unit="mg/m3")
                for d in range(day - 1)
                for p in ("so2", "nox", "co")
            ]  # fmt: skip
            await store.write_aggregates(earlier)
            start = (year_start + timedelta(days=day - 1, hours=3)).astimezone(UTC)
            found[day] = await _reads_per_pass(store, start, 3, rules)
            [year] = await store.query_aggregates(period=Period.YEAR, parameter="so2")
            assert year.n_valid == 24 * (day - 1)  # the stored days count (the new day's hour is not valid yet)
    assert found[2][1:] == found[360][1:] == [60 * 3, 60 * 3]
    # the first pass built the month's and the year's totals: it read their stored days once (on day 360,
    # 2024-12-25: 24 days of December and 359 of the year; on day 2: one of each)
    assert found[360][0] - found[2][0] == 3 * ((24 + 359) - (1 + 1))


class FailingWrites(CountingStore):
    """The real store, whose `fail_at`-th aggregate write (counted from 1) meets an outage."""

    def __init__(self, inner: Store, fail_at: int) -> None:
        super().__init__(inner)
        self.fail_at = fail_at
        self.writes = 0

    async def write_aggregates(self, aggregates: list[Aggregate]) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            raise StoreError("store went away", retryable=True)
        await self.inner.write_aggregates(aggregates)


@pytest.mark.parametrize("fail_at", [1, 2, 3])  # before the minutes, between minutes and hours, before the days
async def test_a_pass_cut_short_by_an_outage_leaves_rollups_a_rebuild_would_give(fail_at: int) -> None:
    """Some levels stored, others not: the running totals are forgotten and built again from what the store
    holds, so the next pass still ends where a recomputation from raw does."""
    async with SqliteStore(":memory:") as store, SqliteStore(":memory:") as fresh:
        failing = FailingWrites(store, fail_at=0)
        engine = RollupEngine(failing, DirtyMarks(":memory:"), RULES)  # type: ignore[arg-type]
        for index in range(18):  # 5 minutes a pass; the day ends after 12 passes
            rows = minutes_of(T0 + timedelta(hours=23, minutes=index * 5), 5, 10.0 + index, every=15)
            await store.write(rows)
            await engine.note_written(rows)
            if index == 10:  # the hour is valid already (50 minutes): the day counts its stored value
                failing.fail_at, failing.writes = fail_at, 0
                with pytest.raises(StoreError):
                    await engine.process_dirty()
                assert engine.counters.open_periods == 0
            else:
                await engine.process_dirty()
        incremental = await all_aggregates(store)
        await fresh.write(await store.query())
        rebuilt = RollupEngine(fresh, DirtyMarks(":memory:"), RULES)
        await rebuilt.recompute(T0, T0 + timedelta(days=2))
        assert incremental == await all_aggregates(fresh)
        engine.close()
        rebuilt.close()


async def test_running_totals_in_memory_stay_bounded_through_the_day() -> None:
    """At most the newest two periods per series and level stay in memory, however long the run."""
    async with SqliteStore(":memory:") as store:
        engine = RollupEngine(store, DirtyMarks(":memory:"), RULES)
        for index in range(0, 30 * 60, 10):  # 30 hours, a pass per 10 minutes of data
            batch = second_batch(T0 + timedelta(minutes=index), 60, ["so2", "nox"], index)
            await store.write_batches([batch])
            await engine.note_batches([batch])
            await engine.process_dirty()
            assert engine.counters.open_periods <= 2 * 4 * 2  # series × levels × kept
        assert engine.counters.evicted > 0
        engine.close()


async def test_running_totals_of_the_least_recently_used_series_are_forgotten_beyond_the_bound() -> None:
    """[rollup] max_open_series: an agent that invents series names cannot make the engine keep totals for all of
    them. With room for one series, three series' passes keep one in memory, count the others forgotten, and the
    stored rollups still equal a recomputation from raw (forgotten totals are built from the store again)."""
    async with SqliteStore(":memory:") as store, SqliteStore(":memory:") as fresh:
        engine = RollupEngine(store, DirtyMarks(":memory:"), RULES, max_open_series=1)
        for index in range(0, 3 * 60, 10):  # 3 hours, a pass per 10 minutes of data
            batch = second_batch(T0 + timedelta(minutes=index), 60, ["so2", "nox", "co"], index)
            await store.write_batches([batch])
            await engine.note_batches([batch])
            await engine.process_dirty()
            assert engine.counters.open_series <= 1
        assert engine.counters.evicted_series > 0
        incremental = await all_aggregates(store)
        await fresh.write(await store.query())
        rebuilt = RollupEngine(fresh, DirtyMarks(":memory:"), RULES)
        await rebuilt.recompute(T0 - timedelta(days=1), T0 + timedelta(days=1))
        assert incremental == await all_aggregates(fresh)
        engine.close()
        rebuilt.close()
