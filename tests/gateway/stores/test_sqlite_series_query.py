"""The SQLite store's query of one series (site, instrument, parameter) over a time range: what the QAL3 capture
and the report's raw-data check read, a day at a time (issue 14).

It reads the primary key (site, instrument, parameter, agent, ts_ns) as one range per agent. Through the
(site, instrument, ts_ns) index the same day walked every parameter of the instrument and looked each row up in
the table: the cost grew with the instrument's other parameters. Costs are SQLite VM steps, not time.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.stores import SqliteStore, StoredReading
from gateway.time_ns import from_ns

START = datetime(2024, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def _rows(parameters: int, days: int, agents: tuple[str, ...] = ("agent-1",)) -> list[tuple[Any, ...]]:
    """1-minute rows (reading table order) of `parameters` parameters of instrument "gas" for `days` days."""
    return [
        ("site-q", "gas", f"p{p}", agent, int((START + minute * timedelta(minutes=1)).timestamp()) * 10**9,
         float(minute), "mg/m3", "ok", None)
        for p in range(parameters)
        for agent in agents
        for minute in range(days * 1440)
    ]  # fmt: skip


def _insert(connection: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    connection.execute("BEGIN")
    connection.executemany("INSERT INTO reading VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    connection.execute("COMMIT")


async def _day_cost(store: SqliteStore, day: int) -> tuple[int, int]:
    """(readings, VM steps in hundreds) of one day of series site-q/gas/p0."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    await store.run_on_connection(lambda c: c.set_progress_handler(count, 100))
    try:
        found = await store.query(
            site="site-q", instrument="gas", parameter="p0", start=START + day * DAY, end=START + (day + 1) * DAY
        )
    finally:
        await store.run_on_connection(lambda c: c.set_progress_handler(None, 100))
    return len(found), steps[0]


async def test_a_day_of_one_series_costs_the_same_beside_one_or_six_parameters_and_10_or_60_days(
    tmp_path: Path,
) -> None:
    costs = {}
    for parameters, days in ((1, 10), (6, 10), (1, 60)):
        async with SqliteStore(tmp_path / f"{parameters}-{days}.sqlite") as store:
            await store.run_on_connection(lambda c, p=parameters, d=days: _insert(c, _rows(p, d)))
            found, cost = await _day_cost(store, 5)
            assert found == 1440
            costs[parameters, days] = cost
    assert costs[6, 10] <= costs[1, 10] * 1.2, costs  # through the instrument's index: twice
    assert costs[1, 60] <= costs[1, 10] * 1.2, costs


async def test_a_series_range_reads_what_the_instrument_range_reads_in_the_same_order(tmp_path: Path) -> None:
    """Two agents of one series (an agent replaced mid-range), other parameters and instruments beside it:
    the series' answer is the instrument-wide answer filtered to it, in the same (time, ..., agent) order,
    with the range's start included and its end excluded; `query_series` gives the same as plain tuples."""
    rows = _rows(2, 2, agents=("agent-a", "agent-b"))
    rows += [("site-q", "flow", "p0", "agent-a", *row[4:]) for row in _rows(1, 2)]
    rows += [("site-other", *row[1:]) for row in _rows(1, 2)]
    start, end = START + timedelta(hours=20), START + timedelta(hours=30)
    async with SqliteStore(tmp_path / "mixed.sqlite") as store:
        await store.run_on_connection(lambda c: _insert(c, rows))
        series = await store.query(site="site-q", instrument="gas", parameter="p0", start=start, end=end)
        wide = await store.query(site="site-q", start=start, end=end)
        everything = await store.query(site="site-q", instrument="gas", parameter="p0")
        tuples = await store.query_series(site="site-q", instrument="gas", parameter="p0", start=start, end=end)
    assert series == [r for r in wide if (r.instrument, r.parameter) == ("gas", "p0")]
    assert len(series) == 2 * 600
    assert series[0].ts == start
    assert series[-1].ts == end - timedelta(minutes=1)
    assert [r.agent for r in series[:2]] == ["agent-a", "agent-b"]
    assert len(everything) == 2 * 2 * 1440
    assert [(r.ts, r.agent) for r in everything] == sorted((r.ts, r.agent) for r in everything)
    assert [StoredReading(*reading) for reading in tuples] == series  # the plain tuples say the same
    assert [reading.ts for reading in tuples] == [reading.ts for reading in series]


async def test_times_read_back_as_time_ns_reads_them(tmp_path: Path) -> None:
    """Nanoseconds the store keeps (an InfluxDB export, a sub-microsecond clock) come back floored to the
    microsecond, before and after the epoch, by either query, as gateway.time_ns.from_ns gives them."""
    stamps = [0, 1, 999, 1_000, 1_500_000_999, -1, -1_500, -86_400 * 10**9 - 1, 1_709_251_200_123_456_789]
    rows = [("site-q", "gas", "p0", "agent-1", ns, 1.0, "mg/m3", "ok", None) for ns in stamps]
    async with SqliteStore(tmp_path / "ns.sqlite") as store:
        await store.run_on_connection(lambda c: _insert(c, rows))
        series = await store.query_series(site="site-q", instrument="gas", parameter="p0")
        readings = await store.query(site="site-q", instrument="gas")
    assert [r.ts for r in series] == [r.ts for r in readings] == [from_ns(ns) for ns in sorted(stamps)]
