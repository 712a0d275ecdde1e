"""The report's raw-data check (docs/regulatory-basis.md §7) reads one series of one local day at a time: its
memory holds a day of one series, never a month, and it reads only the source's channels (issue 14).

The store below is a real SQLite store that counts what each query returned; no timing.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from aua_contract import Quality
from gateway.config import GatewayConfig, load_gateway_config
from gateway.mrv.report_production import produce_report, raw_check_days
from gateway.mrv.rollup import Period
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import SqliteStore, StoredReading
from gateway.stores.sqlite import SeriesReading

ALMATY = ZoneInfo("Asia/Almaty")
KATHMANDU = ZoneInfo("Asia/Kathmandu")  # UTC+5:45: its local midnight is not on a whole UTC hour
SITE = "raw-check-site"
MARCH_1 = datetime(2024, 3, 1, tzinfo=ALMATY).astimezone(UTC)
DATA_DAYS = 3
CHANNELS = {("gas", "so2"), ("gas", "o2"), ("gas", "flow")}

CONFIG = """
[gateway]
state = "state.sqlite"
[store]
url = "sqlite://{folder}/aua.sqlite"
[[source]]
id = "stack1"
site = "raw-check-site"
time_zone = "Asia/Almaty"
fuel = "solid"
flow = {{ instrument = "gas", parameter = "flow", unit = "Nm3/h" }}
o2 = {{ instrument = "gas", parameter = "o2", unit = "%vol" }}
[[source.pollutant]]
instrument = "gas"
parameter = "so2"
name = "SO2"
unit = "mg/m3"
elv = 600
ci_percent = 20
"""


class CountingStore(SqliteStore):
    """A real SQLite store that records each raw query (`query` and its plain-tuple twin `query_series`) and how
    many readings it returned."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[tuple[str | None, str | None, str | None, datetime | None, datetime | None, int]] = []

    async def query(
        self,
        *,
        site: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[StoredReading]:
        found = await super().query(site=site, instrument=instrument, parameter=parameter, start=start, end=end)
        self.reads.append((site, instrument, parameter, start, end, len(found)))
        return found

    async def query_series(
        self,
        *,
        site: str,
        instrument: str,
        parameter: str,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[SeriesReading]:
        found = await super().query_series(site=site, instrument=instrument, parameter=parameter, start=start, end=end)
        self.reads.append((site, instrument, parameter, start, end, len(found)))
        return found


def _readings() -> list[StoredReading]:
    """DATA_DAYS days of 1-minute readings of the three channels, and of two series no channel names."""
    rows = []
    for minute in range(DATA_DAYS * 1440):
        ts = MARCH_1 + timedelta(minutes=minute)
        for parameter, value, unit in (
            ("so2", 300.0 + minute % 7, "mg/m3"),
            ("o2", 9.0, "%vol"),
            ("flow", 400_000.0, "Nm3/h"),
            ("nox", 200.0, "mg/m3"),  # measured, not in the source
        ):
            rows.append(StoredReading(SITE, "agent", "gas", parameter, ts, value, unit, Quality.OK))
        rows.append(StoredReading(SITE, "agent", "dcs", "unit_state", ts, 2.0, "code", Quality.OK))
    return rows


async def _stored(folder: Path) -> GatewayConfig:
    path = folder / "gateway.toml"
    path.write_text(CONFIG.format(folder=folder), encoding="utf-8")
    config = load_gateway_config(path)
    async with SqliteStore(folder / "aua.sqlite") as store:
        await store.write(_readings())
        engine = RollupEngine.from_config(config, store)
        await engine.recompute(MARCH_1, MARCH_1 + timedelta(days=DATA_DAYS))
        engine.close()
    return config


async def test_the_raw_check_reads_one_channel_of_one_local_day_per_query(tmp_path: Path) -> None:
    config = await _stored(tmp_path)
    async with CountingStore(tmp_path / "aua.sqlite") as store:
        produced = await produce_report(
            config, store, "stack1", year=2024, month=3, now=datetime(2024, 4, 2, tzinfo=UTC), workers=1
        )
    check = produced.report.reproducibility
    assert check is not None
    assert check.matches
    assert check.raw_readings == DATA_DAYS * 1440 * len(CHANNELS)
    assert sum(read[-1] for read in store.reads) == check.raw_readings
    assert max(read[-1] for read in store.reads) == 1440  # one series, one day: never a month of the site
    spans = set()
    for site, instrument, parameter, start, end, _ in store.reads:
        assert site == SITE
        assert (instrument, parameter) in CHANNELS
        assert start is not None
        assert end is not None
        local = start.astimezone(ALMATY)
        assert (local.hour, local.minute) == (0, 0)
        assert end - start == timedelta(days=1)
        spans.add((instrument, parameter, start))
    assert len(spans) == len(store.reads) == 31 * len(CHANNELS)  # each channel's day read once


async def test_worker_processes_give_the_same_check_as_one_process(tmp_path: Path) -> None:
    config = await _stored(tmp_path)
    now = datetime(2024, 4, 2, tzinfo=UTC)
    async with CountingStore(tmp_path / "aua.sqlite") as store:
        alone = await produce_report(config, store, "stack1", year=2024, month=3, now=now, workers=1)
        store.reads.clear()
        spread = await produce_report(config, store, "stack1", year=2024, month=3, now=now, workers=2)
    assert store.reads == []  # the workers read the file through their own stores
    assert spread.report.reproducibility == alone.report.reproducibility
    assert spread.report.reproducibility is not None
    assert spread.report.reproducibility.matches
    assert spread.report.totals == alone.report.totals


def _z(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "base", "start", "end", "cuts"),
    [
        # Almaty (UTC+6 in 2023): local midnights at 18:00 UTC, whole hours
        (ALMATY, Period.HOUR, "2023-02-28T18:00", "2023-03-03T18:00", ["2023-03-01T18:00", "2023-03-02T18:00"]),
        # a start mid-day (raw data kept from there): the first span runs to the next midnight
        (ALMATY, Period.HOUR, "2023-03-01T07:00", "2023-03-02T18:00", ["2023-03-01T18:00"]),
        # Almaty went from UTC+6 to UTC+5 at its midnight of 1 March 2024: that local day is 25 hours
        (ALMATY, Period.HOUR, "2024-02-28T18:00", "2024-03-02T19:00", ["2024-02-29T19:00", "2024-03-01T19:00"]),
        # Kathmandu (UTC+5:45): local midnight 18:15 UTC, cut at the start of the hour it falls in ...
        (KATHMANDU, Period.HOUR, "2024-02-29T18:15", "2024-03-02T18:15", ["2024-03-01T18:00", "2024-03-02T18:00"]),
        (KATHMANDU, Period.HALF_HOUR, "2024-02-29T18:15", "2024-03-01T18:15", ["2024-03-01T18:00"]),
        # ... or at midnight itself when the base period is the minute
        (KATHMANDU, Period.MINUTE, "2024-02-29T18:15", "2024-03-01T18:15", []),
        # a start in the last part-hour before a cut: the cut after it is a day later
        (KATHMANDU, Period.HOUR, "2024-03-01T18:05", "2024-03-02T18:15", ["2024-03-02T18:00"]),
    ],
)
def test_raw_check_days_cut_at_local_midnights_on_base_period_starts(
    zone: ZoneInfo, base: Period, start: str, end: str, cuts: list[str]
) -> None:
    spans = raw_check_days(_z(start), _z(end), zone, base)
    bounds = [_z(start), *(_z(cut) for cut in cuts), _z(end)]
    assert spans == list(itertools.pairwise(bounds))
