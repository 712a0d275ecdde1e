"""Raw-data retention on real stores (SQLite file, real influxd 1.6), and MRV reports after raw data expired.

Issue 12: raw readings kept N days, rollups for the reporting period the law requires; pruning in small steps
whose cost does not grow with the table; the file's size steady once at its bounds; reports and
recomputation keep working from the stored rollups and say so.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from aua_contract import Quality
from gateway.config import load_gateway_config
from gateway.mrv.config import RollupSection, RuleResolver
from gateway.mrv.report_production import produce_report
from gateway.mrv.retention import Retention, raw_kept_from
from gateway.mrv.rollup import Aggregate, Period
from gateway.mrv.rollup_engine import DirtyMarks, RollupEngine
from gateway.stores import BatchReceipt, InfluxStore, SqliteStore, StoredReading, open_store
from gateway.stores import retention as retention_module
from gateway.stores.retention import (
    RAW_POLICY,
    ROLLUP_POLICY,
    RetentionSettings,
    parse_duration,
    policy_statements,
    prune_step,
)

ALMATY = ZoneInfo("Asia/Almaty")
SITE = "pavlodar-chp"
ROOT = Path(__file__).resolve().parents[3]


def reading(ts: datetime, parameter: str = "so2", value: float = 100.0) -> StoredReading:
    return StoredReading(SITE, "agent-1", "gas", parameter, ts, value, "mg/m3", Quality.OK)


def rows_at(start: datetime, count: int, step: timedelta) -> list[tuple[Any, ...]]:
    """Raw rows for a bulk insert (reading table order), one series."""
    return [
        (SITE, "gas", "so2", "agent-1", int((start + i * step).timestamp()) * 10**9, 1.0, "mg/m3", "ok", None)
        for i in range(count)
    ]


def bulk_insert(connection: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    connection.execute("BEGIN")
    connection.executemany("INSERT OR REPLACE INTO reading VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    connection.execute("COMMIT")


# -- pure ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("720h0m0s", timedelta(days=30)), ("0s", None), ("1h30m0s", timedelta(minutes=90)), ("87672h0m0s", None)],
)
def test_influx_durations(text: str, expected: timedelta | None) -> None:
    if text == "87672h0m0s":
        expected = timedelta(days=3653)
    assert parse_duration(text) == expected


def test_policy_statements_create_then_alter_only_what_differs() -> None:
    settings = RetentionSettings(raw_days=30, rollup_days=3653)
    assert policy_statements("aua", {"autogen": None}, settings) == [
        'CREATE RETENTION POLICY "aua_raw" ON "aua" DURATION 720h REPLICATION 1',
        'CREATE RETENTION POLICY "aua_rollup" ON "aua" DURATION 87672h REPLICATION 1',
    ]
    existing = {RAW_POLICY: timedelta(days=7), ROLLUP_POLICY: timedelta(days=3653)}
    assert policy_statements("aua", existing, settings) == ['ALTER RETENTION POLICY "aua_raw" ON "aua" DURATION 720h']


def test_cutoffs_are_whole_hours() -> None:
    now = datetime(2025, 3, 10, 12, 34, 56, tzinfo=UTC)
    settings = RetentionSettings(raw_days=30, rollup_days=None)
    assert settings.raw_cutoff(now) == datetime(2025, 2, 8, 13, tzinfo=UTC)
    assert settings.raw_delete_before(now) == datetime(2025, 2, 8, 12, 34, tzinfo=UTC)  # never before raw_cutoff
    assert settings.rollup_cutoff(now) is None
    assert RetentionSettings(raw_days=None).raw_delete_before(now) is None
    with pytest.raises(ValueError, match="at least one hour"):
        RetentionSettings(raw_days=0.001)


# -- SQLite --------------------------------------------------------------------------------------------------


async def test_a_prune_step_costs_the_same_at_1k_and_100k_old_rows(tmp_path: Path) -> None:
    """Deterministic cost (SQLite VM steps) of one step: it walks the time index, it does not scan."""
    costs = []
    for size in (1_000, 100_000):
        async with SqliteStore(tmp_path / f"{size}.sqlite") as store:
            start = datetime(2024, 1, 1, tzinfo=UTC)
            await store.run_on_connection(
                lambda c, s=start, n=size: bulk_insert(c, rows_at(s, n, timedelta(seconds=1)))
            )

            def one_step(connection: sqlite3.Connection) -> tuple[int, int]:
                steps = [0]

                def count() -> int:
                    steps[0] += 1
                    return 0

                connection.set_progress_handler(count, 100)
                try:
                    deleted = prune_step(
                        connection, raw_before=datetime(2025, 1, 1, tzinfo=UTC), rollup_before=None, limit=500
                    )
                finally:
                    connection.set_progress_handler(None, 100)
                return deleted, steps[0]

            deleted, cost = await store.run_on_connection(one_step)
            assert deleted == 500
            costs.append(cost)
    assert costs[1] <= costs[0] * 1.5, costs


def _vm_steps(connection: sqlite3.Connection, counter: list[int]) -> None:
    """Count SQLite VM steps (in hundreds) on the connection from now on into counter[0]."""

    def count() -> int:
        counter[0] += 1
        return 0

    connection.set_progress_handler(count, 100)


async def test_a_pass_at_the_bound_costs_the_same_with_1k_and_100k_readings_kept(tmp_path: Path) -> None:
    """Steady state: a pass deletes the minute that fell due (5 instruments x 60 s) whatever the store keeps
    beyond it; its VM steps (the whole pass, every step and the search for nothing left) do not grow."""
    now = datetime(2025, 3, 10, 12, 0, 30, tzinfo=UTC)
    due_from = datetime(2025, 3, 10, 10, 59, tzinfo=UTC)  # the minute that falls due at `now` with 1 h kept
    costs = []
    for kept in (1_000, 100_000):
        async with SqliteStore(tmp_path / f"{kept}.sqlite") as store:
            rows = [
                (row[0], f"gas-{i}", *row[2:])
                for i in range(5)
                for row in rows_at(due_from, 60 + kept // 5, timedelta(seconds=1))
            ]
            await store.run_on_connection(lambda c, r=rows: bulk_insert(c, r))
            steps = [0]
            await store.run_on_connection(lambda c, n=steps: _vm_steps(c, n))
            retention = Retention(store, RetentionSettings(raw_days=1 / 24, rollup_days=None), pause_s=0)
            deleted = await retention.prune(now)
            await store.run_on_connection(lambda c: c.set_progress_handler(None, 100))
            assert deleted == 5 * 60
            assert len(await store.query()) == kept
            costs.append(steps[0])
    assert costs[1] <= costs[0] * 1.2, costs


async def test_passes_every_minute_delete_a_minute_each_across_the_hour(tmp_path: Path) -> None:
    """Before, raw readings fell due an hour at a time (the cutoff was rounded up to the hour): the first pass
    after each hour deleted a whole hour, readings only a minute old among them. Now each pass takes the
    minute that passed, the store keeps at least the retention, and reports still see whole raw hours."""
    start = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        rows = [(*row[:2], p, *row[3:]) for p in ("so2", "nox") for row in rows_at(start, 1080, timedelta(seconds=10))]
        await store.run_on_connection(lambda c: bulk_insert(c, rows))
        settings = RetentionSettings(raw_days=1 / 24, rollup_days=None)
        retention = Retention(store, settings, pause_s=0)
        now = start + timedelta(hours=1, minutes=30, seconds=20)
        first = await retention.prune(now)
        assert first == 2 * 30 * 6  # 09:00-09:30
        for _ in range(45):  # 10:30:20 to 11:15:20, across 11:00
            now += timedelta(minutes=1)
            assert await retention.prune(now) == 2 * 6  # one minute of two series at one reading per 10 s
            deleted_before = (now - timedelta(hours=1)).replace(second=0)
            assert min(r.ts for r in await store.query(end=now)) == deleted_before
            whole_hour = deleted_before.replace(minute=0) + timedelta(hours=int(deleted_before.minute > 0))
            assert await raw_kept_from(store, now) == whole_hour  # hours before it count as expired


async def test_a_backlog_goes_over_several_passes_each_at_most_max_steps(tmp_path: Path) -> None:
    """A shortened retention makes months due at once: each pass stops after `max_steps` steps (the rollup
    pass after it is not held up for hours) and the next due pass, not waiting `every_s`, goes on."""
    now = datetime(2025, 3, 10, 12, tzinfo=UTC)
    clock = [now]
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        await store.run_on_connection(
            lambda c: bulk_insert(c, rows_at(now - timedelta(days=2), 2 * 1440, timedelta(minutes=1)))
        )
        retention = Retention(
            store,
            RetentionSettings(raw_days=1, rollup_days=None),
            step_rows=100,
            max_steps=3,
            pause_s=0,
            every_s=3600,
            clock=lambda: clock[0],
        )
        passes = []
        while deleted := await retention.prune_due():
            passes.append(deleted)
            clock[0] += timedelta(seconds=1)
        assert passes == [300, 300, 300, 300, 240]  # the 1,440 readings of the day before yesterday
        assert retention.behind is False
        assert await retention.prune_due() == 0
        clock[0] += timedelta(minutes=5)
        assert await retention.prune_due() == 0  # no backlog: it waits every_s again
        clock[0] += timedelta(hours=1)
        assert await retention.prune_due() == 65  # readings of 12:00 to 13:04 the day before: due at 13:05:05


def _plan(connection: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> str:
    return " | ".join(row[-1] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params))


async def test_raw_pruning_and_time_ranges_use_the_series_index_not_one_on_time_alone(tmp_path: Path) -> None:
    """Pinned plans: the prune's hops from instrument to instrument and its per-instrument delete search
    reading_series_ts; the store has no index on ts_ns alone (it cost ~30 % of the raw data's size)."""
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        plans, indexes = await store.run_on_connection(
            lambda c: (
                [
                    _plan(c, retention_module._FIRST_INSTRUMENT, ()),
                    _plan(c, retention_module._FIRST_OF_SITE, ("s",)),
                    _plan(c, retention_module._NEXT_INSTRUMENT, ("s", "i")),
                    _plan(c, retention_module._NEXT_SITE, ("s",)),
                    _plan(c, retention_module._PRUNE_RAW, ("s", "i", 60, 10)),
                ],
                {row[0] for row in c.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'reading'")},
            )
        )
    assert plans[0] == "SCAN reading USING COVERING INDEX reading_series_ts", plans
    assert plans[1] == "SEARCH reading USING COVERING INDEX reading_series_ts (site=?)", plans
    assert plans[2] == "SEARCH reading USING COVERING INDEX reading_series_ts (site=? AND instrument>?)", plans
    assert plans[3] == "SEARCH reading USING COVERING INDEX reading_series_ts (site>?)", plans
    assert "SEARCH reading USING COVERING INDEX reading_series_ts (site=? AND instrument=? AND ts_ns<?)" in plans[4]
    assert "SCAN" not in plans[4], plans
    assert "reading_ts" not in indexes


async def test_an_older_file_loses_its_time_index_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "aua.sqlite"
    async with SqliteStore(path) as store:
        await store.run_on_connection(lambda c: c.execute("CREATE INDEX reading_ts ON reading (ts_ns)"))
        await store.run_on_connection(
            lambda c: bulk_insert(c, rows_at(datetime(2024, 1, 1, tzinfo=UTC), 10, timedelta(seconds=1)))
        )
    async with SqliteStore(path) as store:
        names = await store.run_on_connection(
            lambda c: {row[0] for row in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        )
        assert "reading_ts" not in names
        assert "reading_series_ts" in names
        assert (
            len(await store.query(start=datetime(2024, 1, 1, tzinfo=UTC), end=datetime(2024, 1, 2, tzinfo=UTC))) == 10
        )


async def test_a_prune_step_over_many_instruments_costs_the_same_at_1k_and_100k_old_rows(tmp_path: Path) -> None:
    """Five instruments: a step searches each one's oldest readings, then deletes; VM steps do not grow."""
    costs = []
    for size in (1_000, 100_000):
        async with SqliteStore(tmp_path / f"{size}.sqlite") as store:
            start = datetime(2024, 1, 1, tzinfo=UTC)
            rows = [
                (row[0], f"gas-{i}", *row[2:])
                for i in range(5)
                for row in rows_at(start, size // 5, timedelta(seconds=1))
            ]
            await store.run_on_connection(lambda c, r=rows: bulk_insert(c, r))

            def one_step(connection: sqlite3.Connection, start: datetime = start) -> tuple[int, int]:
                steps = [0]

                def count() -> int:
                    steps[0] += 1
                    return 0

                connection.set_progress_handler(count, 100)
                try:
                    deleted = prune_step(
                        connection, raw_before=start + timedelta(seconds=100), rollup_before=None, limit=300
                    )
                finally:
                    connection.set_progress_handler(None, 100)
                return deleted, steps[0]

            deleted, cost = await store.run_on_connection(one_step)
            assert deleted == 300  # 100 old readings of each of the first three instruments
            left = await store.query(end=start + timedelta(seconds=100))
            assert sorted({r.instrument for r in left}) == ["gas-3", "gas-4"]
            assert len(left) == 200
            costs.append(cost)
    assert costs[1] <= costs[0] * 1.5, costs


async def test_a_time_range_over_every_instrument_reads_them_one_at_a_time_in_order(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        start = datetime(2024, 1, 1, tzinfo=UTC)
        readings = [
            StoredReading(
                site, "agent-1", instrument, "so2", start + timedelta(seconds=s), float(s), "mg/m3", Quality.OK
            )
            for site in ("b-site", "a-site")
            for instrument in ("stack-2", "stack-1")
            for s in range(0, 10, 3)
        ]
        await store.write(readings)
        everything = await store.query()
        assert len(everything) == len(readings)
        assert await store.query(start=start, end=start + timedelta(seconds=10)) == everything
        window = await store.query(site="a-site", start=start + timedelta(seconds=1), end=start + timedelta(seconds=7))
        assert [(r.instrument, r.ts.second) for r in window] == [
            ("stack-1", 3),
            ("stack-2", 3),
            ("stack-1", 6),
            ("stack-2", 6),
        ]
        by_instrument = await store.query(instrument="stack-2", start=start, end=start + timedelta(seconds=4))
        assert [(r.site, r.ts.second) for r in by_instrument] == [
            ("a-site", 0),
            ("b-site", 0),
            ("a-site", 3),
            ("b-site", 3),
        ]


async def test_pruning_keeps_the_file_at_its_bounds(tmp_path: Path) -> None:
    """Day after day of 1-minute data with 3 days of raw kept: once full, the file stops growing."""
    path = tmp_path / "aua.sqlite"
    day0 = datetime(2025, 1, 1, tzinfo=UTC)
    pages = []
    async with SqliteStore(path) as store:
        retention = Retention(store, RetentionSettings(raw_days=3, rollup_days=None), step_rows=1_000, pause_s=0)
        for day in range(12):
            start = day0 + timedelta(days=day)
            rows = [
                (
                    SITE,
                    "gas",
                    p,
                    "agent-1",
                    int((start + timedelta(minutes=m)).timestamp()) * 10**9,
                    1.5,
                    "mg/m3",
                    "ok",
                    0,
                )
                for m in range(1440)
                for p in ("so2", "nox", "co", "o2", "h2o")
            ]
            await store.run_on_connection(lambda c, r=rows: bulk_insert(c, r))
            await retention.prune(start + timedelta(days=1))
            pages.append(await store.run_on_connection(lambda c: c.execute("PRAGMA page_count").fetchone()[0]))
        kept = await store.query()
    assert min(r.ts for r in kept) == day0 + timedelta(days=9)  # 3 days before the last "now"
    assert len(kept) == 3 * 1440 * 5
    assert max(pages[5:]) <= pages[4] * 1.05, pages  # bounds reached by day 4: freed pages are reused


async def test_raw_still_waiting_for_rollups_is_not_pruned(tmp_path: Path) -> None:
    rules_config = load_gateway_config(_config(tmp_path, "sqlite://" + str(tmp_path / "aua.sqlite")))
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        engine = RollupEngine.from_config(rules_config, store)
        old = [reading(datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=m)) for m in range(120)]
        await store.write(old)
        await engine.note_written(old)
        retention = Retention(store, RetentionSettings(raw_days=30), pause_s=0)
        now = datetime(2025, 1, 1, tzinfo=UTC)
        await retention.prune(now, keep_from=await engine._oldest_needed())
        assert len(await store.query()) == 120  # the marks still need them
        await engine.process_dirty()
        await retention.prune(now, keep_from=await engine._oldest_needed())
        assert await store.query() == []
        assert len(await store.query_aggregates(period=Period.HOUR)) == 2  # rollups stay
        engine.close()


async def test_recompute_leaves_rollups_before_the_raw_horizon_alone(tmp_path: Path) -> None:
    config = load_gateway_config(_config(tmp_path, "sqlite://" + str(tmp_path / "aua.sqlite"), raw_days=1))
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        engine = RollupEngine.from_config(config, store)
        assert engine.retention is not None
        start = datetime(2024, 1, 1, tzinfo=UTC)
        rows = [reading(start + timedelta(minutes=m), value=float(m % 13)) for m in range(3 * 1440)]
        await store.write(rows)
        await engine.note_written(rows)
        await engine.catch_up()
        before = await store.query_aggregates(period=Period.HOUR)
        await engine.retention.prune(start + timedelta(days=2, hours=12))  # raw before day 1, 12:00 is gone
        stats = await engine.recompute(start, start + timedelta(days=3))
        assert stats.raw_first == start + timedelta(days=1, hours=12)
        assert await store.query_aggregates(period=Period.HOUR) == before
        engine.close()


# -- InfluxDB 1.x --------------------------------------------------------------------------------------------


async def test_influx_creates_policies_and_every_opener_uses_them(influx_db_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    recent = [reading(now - timedelta(hours=2) + timedelta(minutes=m)) for m in range(5)]
    rollup = Aggregate(
        SITE, "gas", "so2", Period.HOUR, now.replace(minute=0, second=0) - timedelta(days=400), 1.0, 60, 60, True
    )
    gateway = open_store(influx_db_url, retention=RetentionSettings(raw_days=30))
    await gateway.open()
    try:
        assert isinstance(gateway, InfluxStore)
        assert (gateway.raw_policy, gateway.rollup_policy) == (RAW_POLICY, ROLLUP_POLICY)
        await gateway.write(recent)
        await gateway.write_aggregates([rollup])  # 400 days old: kept by the rollup policy, not the raw one
        await gateway.write_receipts([BatchReceipt(SITE, "agent-1", 7, 5)])  # timed near 1970: default policy
        assert await gateway.received_batches(SITE, "agent-1", 0, 10) == {7: 5}
        assert await raw_kept_from(gateway, now) == RetentionSettings(raw_days=30).raw_cutoff(now)
    finally:
        await gateway.close()

    base, database = influx_db_url.rsplit("/", 1)
    async with httpx.AsyncClient(base_url=base) as client:
        answer = (await client.get("/query", params={"db": database, "q": "SHOW RETENTION POLICIES"})).json()
        policies = {row[0]: row[1] for row in answer["results"][0]["series"][0]["values"]}
        assert policies[RAW_POLICY] == "720h0m0s"
        assert policies[ROLLUP_POLICY] == "87672h0m0s"
        for policy, measurement, count in ((RAW_POLICY, "reading", 5), (ROLLUP_POLICY, "rollup", 1)):
            query = f'SELECT count("n_valid") FROM "{policy}"."{measurement}"'
            if measurement == "reading":
                query = f'SELECT count("quality") FROM "{policy}"."{measurement}"'
            answer = (await client.get("/query", params={"db": database, "q": query})).json()
            assert answer["results"][0]["series"][0]["values"][0][1] == count

    report_side = open_store(influx_db_url)  # no retention settings: finds the policies
    async with report_side:
        assert [r.ts for r in await report_side.query()] == [r.ts for r in recent]
        assert await report_side.query_aggregates(period=Period.HOUR) == [rollup]

    shorter = open_store(influx_db_url, retention=RetentionSettings(raw_days=7))
    async with shorter:
        async with httpx.AsyncClient(base_url=base) as client:
            answer = (await client.get("/query", params={"db": database, "q": "SHOW RETENTION POLICIES"})).json()
        assert {row[0]: row[1] for row in answer["results"][0]["series"][0]["values"]}[RAW_POLICY] == "168h0m0s"


# -- a year of reports after raw data expired ----------------------------------------------------------------

SOURCE = """
[rollup.rule_sets.hourly]
based_on = "ied-lcp"
sample_interval_s = 3600

[[source]]
id = "stack1"
site = "pavlodar-chp"
name = "Stack 1"
time_zone = "Asia/Almaty"
rule_set = "hourly"
monitoring_plan = "MP-1"
fuel = "solid"
agent_config = "{agent}"
flow = {{ instrument = "stack1-flow", parameter = "flow", unit = "Nm3/h" }}
o2 = {{ instrument = "stack1-gas", parameter = "o2", unit = "%vol" }}
co2 = {{ instrument = "stack1-gas", parameter = "co2", unit = "%vol" }}
[[source.pollutant]]
instrument = "stack1-gas"
parameter = "so2"
name = "SO2"
unit = "mg/m3"
elv = 600
ci_percent = 20
"""


def _config(folder: Path, store_url: str, *, raw_days: float | None = None) -> Path:
    path = folder / "gateway.toml"
    retention = f"raw_retention_days = {raw_days}\n" if raw_days is not None else ""
    path.write_text(
        f'[gateway]\nstate = "state.sqlite"\n[store]\nurl = "{store_url}"\n{retention}'
        + SOURCE.format(agent=ROOT / "config" / "pavlodar-chp.toml"),
        encoding="utf-8",
    )
    return path


def _year_of_hourly_readings(year: int) -> list[StoredReading]:
    """One sample an hour (the rule set's measuring cycle) for every channel of the source, a whole local year."""
    start = datetime(year, 1, 1, tzinfo=ALMATY).astimezone(UTC)
    end = datetime(year + 1, 1, 1, tzinfo=ALMATY).astimezone(UTC)
    rows = []
    for hour in range(int((end - start) / timedelta(hours=1))):
        ts = start + timedelta(hours=hour)
        for instrument, parameter, value, unit in (
            ("stack1-flow", "flow", 480_000.0 + hour % 17 * 1_000, "Nm3/h"),
            ("stack1-gas", "o2", 9.0, "%vol"),
            ("stack1-gas", "co2", 10.0 + hour % 5 * 0.1, "%vol"),
            ("stack1-gas", "so2", 380.0 + hour % 23 * 3, "mg/m3"),
        ):
            rows.append(StoredReading(SITE, "chp-stack1", instrument, parameter, ts, value, unit, Quality.OK))
    return rows


async def test_a_year_report_after_raw_data_expired_has_the_same_totals_and_says_so(tmp_path: Path) -> None:
    config = load_gateway_config(_config(tmp_path, "sqlite://" + str(tmp_path / "aua.sqlite"), raw_days=30))
    year_start = datetime(2024, 1, 1, tzinfo=ALMATY).astimezone(UTC)
    year_end = datetime(2025, 1, 1, tzinfo=ALMATY).astimezone(UTC)
    now = year_end + timedelta(days=2)
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        rows = _year_of_hourly_readings(2024)
        await store.write(rows)
        engine = RollupEngine.from_config(config, store)
        await engine.recompute(year_start, year_end)
        before = (await produce_report(config, store, "stack1", year=2024, now=now, workers=1)).report
        assert before.reproducibility is not None
        assert before.reproducibility.matches
        assert before.reproducibility.raw_readings == len(rows)
        assert before.reproducibility.note == ""

        assert engine.retention is not None
        await engine.retention.prune(now)
        cutoff = RetentionSettings(raw_days=30).raw_cutoff(now)
        assert cutoff is not None
        left = await store.query(start=year_start, end=year_end)
        assert 0 < len(left) < len(rows) / 10  # raw data expired for most of the year
        assert min(r.ts for r in left) == cutoff

        after = (await produce_report(config, store, "stack1", year=2024, now=now, workers=1)).report
        check = after.reproducibility
        assert check is not None
        assert [(t.name, t.total_t) for t in after.totals] == [(t.name, t.total_t) for t in before.totals]
        assert check.recomputed_totals_t == before.reproducibility.recomputed_totals_t
        assert check.matches
        assert check.periods_differing == 0
        assert check.raw_readings == len(left)
        assert check.raw_expired_before == cutoff
        stamp = cutoff.isoformat().replace("+00:00", "Z")
        assert check.note == (
            f"raw data expired before {stamp}; totals from stored rollups for the periods before it, "
            "recomputed from raw data after it"
        )
        assert not any("reproducibility check failed" in w for w in after.warnings)

        await Retention(store, RetentionSettings(raw_days=30), pause_s=0).prune(now + timedelta(days=60))
        gone = (await produce_report(config, store, "stack1", year=2024, now=now, workers=1)).report
        assert gone.reproducibility is not None
        assert gone.reproducibility.raw_readings == 0
        assert gone.reproducibility.matches
        assert gone.reproducibility.note.endswith("totals from stored rollups for the whole period")
        assert [t.total_t for t in gone.totals] == [t.total_t for t in before.totals]
        engine.close()


async def test_late_data_before_the_raw_horizon_leaves_the_stored_rollups_alone(tmp_path: Path) -> None:
    """A reading that arrives after its hour's raw readings expired would have its minute and hour recomputed
    from itself alone, replacing a complete hour's rollups (the record once raw data is gone) with one reading's:
    it is stored, not rolled up, and counted."""
    hour = datetime(2025, 3, 10, 8, tzinfo=UTC)
    rules = RuleResolver.from_config(RollupSection(rule_set="ied-lcp", time_zone="UTC"), [])
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        retention = Retention(store, RetentionSettings(raw_days=1 / 24, rollup_days=None), pause_s=0)
        engine = RollupEngine(store, DirtyMarks(tmp_path / "state.sqlite"), rules, retention=retention)
        try:
            first = [reading(hour + timedelta(seconds=20 * i)) for i in range(180)]
            await store.write(first)
            await engine.note_written(first)
            await engine.process_dirty()
            before = {p: await store.query_aggregates(period=p) for p in (Period.MINUTE, Period.HOUR)}
            assert [(a.value, a.n_valid, a.valid) for a in before[Period.HOUR]] == [(100.0, 60, True)]
            assert await retention.prune(hour + timedelta(hours=3)) == 180
            late = [reading(hour + timedelta(minutes=30, seconds=5), value=900.0)]
            await store.write(late)
            await engine.note_written(late)
            stats = await engine.process_dirty()
            assert {p: await store.query_aggregates(period=p) for p in (Period.MINUTE, Period.HOUR)} == before
            assert stats.raw_read == 0
            assert engine.counters.expired_minutes == 1
            assert await engine.pending() == 0
            assert [r.value for r in await store.query()] == [900.0]  # kept as received, raw until it expires
            # An outbox replayed after a long outage: minutes before the horizon with nothing stored are new data
            # (no raw readings of theirs expired) and are rolled up, beside one more late reading of minute 30.
            replay = [reading(hour - timedelta(hours=1) + timedelta(seconds=20 * i), value=50.0) for i in range(180)]
            replay += [reading(hour + timedelta(minutes=30, seconds=35), value=900.0)]
            await store.write(replay)
            await engine.note_written(replay)
            await engine.process_dirty()
            hours = await store.query_aggregates(period=Period.HOUR)
            assert [(a.start, a.value, a.n_valid) for a in hours] == [
                (hour - timedelta(hours=1), 50.0, 60),
                (hour, 100.0, 60),
            ]
            assert engine.counters.expired_minutes == 2
            assert await engine.pending() == 0
        finally:
            engine.close()


class _CountingSqlite(SqliteStore):
    aggregates_read = 0

    async def query_aggregates(self, **filters: Any) -> list[Aggregate]:
        found = await super().query_aggregates(**filters)
        self.aggregates_read += len(found)
        return found


async def test_late_data_far_apart_reads_only_its_own_hours_rollups(tmp_path: Path) -> None:
    """Old timestamps far apart (an agent may send any) make the check read the marked hours' minute rollups,
    never the weeks between them."""
    hour = datetime(2025, 3, 10, 8, tzinfo=UTC)
    early = hour - timedelta(days=20)
    rules = RuleResolver.from_config(RollupSection(rule_set="ied-lcp", time_zone="UTC"), [])
    async with _CountingSqlite(tmp_path / "aua.sqlite") as store:
        between = [
            Aggregate(SITE, "gas", "so2", Period.MINUTE, early + timedelta(minutes=m), 1.0, 3, 3, True, unit="mg/m3")
            for m in range(20 * 1440)
        ]
        await store.write_aggregates(between)
        retention = Retention(store, RetentionSettings(raw_days=1 / 24, rollup_days=None), pause_s=0)
        await retention.prune(hour + timedelta(hours=3))  # nothing raw to delete; the horizon is recorded
        engine = RollupEngine(store, DirtyMarks(tmp_path / "state.sqlite"), rules, retention=retention)
        try:
            late = [reading(early + timedelta(minutes=30, seconds=5)), reading(hour - timedelta(minutes=5))]
            await store.write(late)
            await engine.note_written(late)
            store.aggregates_read = 0
            await engine.process_dirty()
            assert store.aggregates_read == 2 * 60  # the two marked hours' minutes, not 20 days of them
            assert engine.counters.expired_minutes == 2
        finally:
            engine.close()
