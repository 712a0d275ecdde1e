"""Operating state in the MRV report: a year with a seasonal shutdown, computed by hand.

A heating plant runs January-May, is shut down June-August with its analyzers off (the DCS still reports fuel
flow 0), starts up on 1 September (6 hours of start-up, 0 of 3 criteria met), runs to 31 December and shuts
down over its last 6 hours; in October the gas analyzer is out for 10 operating hours. Expected (EU MRR
2018/2066 Art. 43/45, Commission Implementing Decision 2012/249/EU Art. 9, Directive 2010/75/EU Annex V Part 4):
the summer is neither substituted nor counted as invalid days, October's gap is filled with mean + 2σ of the
valid operating hours, start-up/shut-down mass counts in the total and not against the limits.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aua_contract import Quality
from gateway.config import load_gateway_config
from gateway.mrv.config import SourceConfig, source_input
from gateway.mrv.operating_log import OperatingLog
from gateway.mrv.operating_state import ManualEntry, State
from gateway.mrv.report import SIGNAL_ROLE, ConfigRecord, MrvReport, build_report_with_rows
from gateway.mrv.report_production import produce_report
from gateway.mrv.rollup import RULE_SETS, Aggregate, Period
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import StoredReading, open_store

YEAR = 2026
START = datetime(YEAR, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
HOURS = 365 * 24
SUMMER = (datetime(YEAR, 6, 1, tzinfo=UTC), datetime(YEAR, 9, 1, tzinfo=UTC))
START_UP = (SUMMER[1], SUMMER[1] + 6 * HOUR)
SHUT_DOWN = (datetime(YEAR, 12, 31, 18, tzinfo=UTC), datetime(YEAR + 1, 1, 1, tzinfo=UTC))
OUTAGE = (datetime(YEAR, 10, 14, 8, tzinfo=UTC), datetime(YEAR, 10, 14, 18, tzinfo=UTC))

SOURCE = {
    "id": "boiler2",
    "site": "chp",
    "time_zone": "UTC",
    "fuel": "solid",
    "flow": {"instrument": "flow", "parameter": "flow", "unit": "Nm3/h"},
    "o2": {"instrument": "gas", "parameter": "o2", "unit": "%vol"},
    "pollutant": [
        {"instrument": "gas", "parameter": "so2", "name": "SO2", "unit": "mg/Nm3", "elv": 400, "elv_period": "1h"},
        {"instrument": "gas", "parameter": "nox", "name": "NOx", "unit": "mg/Nm3", "elv": 400, "elv_period": "1d"},
    ],
    "operating": {
        "running": [{"instrument": "dcs", "parameter": "fuel", "at_least": 0.5}],
        "startup_end": [
            {"name": "load ≥ MSUL", "instrument": "dcs", "parameter": "load", "at_least": 40},
            {"name": "steam flow", "instrument": "dcs", "parameter": "steam", "at_least": 100},
            {"name": "flue-gas temperature", "instrument": "dcs", "parameter": "fgt", "at_least": 120},
        ],
    },
}


def _within(ts: datetime, span: tuple[datetime, datetime]) -> bool:
    return span[0] <= ts < span[1]


def plant_hour(ts: datetime) -> dict[str, float] | None:
    """The hour's means by series name; None in the summer shutdown (analyzers off, DCS says fuel 0)."""
    if _within(ts, SUMMER):
        return None
    hour_index = int((ts - START) / HOUR)
    if _within(ts, START_UP):  # 0 of 3 criteria met
        return {"fuel": 5, "load": 20, "steam": 50, "fgt": 90, "flow": 50_000, "so2": 500, "nox": 1500, "o2": 6}
    if _within(ts, SHUT_DOWN):  # load and steam below: 2 of the 3 negated criteria met
        return {"fuel": 5, "load": 30, "steam": 80, "fgt": 130, "flow": 60_000, "so2": 300, "nox": 300, "o2": 6}
    so2 = 190.0 if hour_index % 2 else 210.0
    return {"fuel": 8, "load": 70, "steam": 200, "fgt": 140, "flow": 100_000, "so2": so2, "nox": 300, "o2": 6}


SERIES = {
    "fuel": ("dcs", ""),
    "load": ("dcs", ""),
    "steam": ("dcs", ""),
    "fgt": ("dcs", ""),
    "flow": ("flow", "Nm3/h"),
    "so2": ("gas", "mg/Nm3"),
    "nox": ("gas", "mg/Nm3"),
    "o2": ("gas", "%vol"),
}
ROLES = {"flow": "flow", "o2": "o2", "so2": "pollutant:so2", "nox": "pollutant:nox"}


def hourly_aggregates() -> dict[str, list[Aggregate]]:
    by_role: dict[str, list[Aggregate]] = {}
    for index in range(HOURS):
        ts = START + index * HOUR
        values = plant_hour(ts)
        if values is None:
            values = {"fuel": 0, "load": 0, "steam": 0, "fgt": 20}  # the DCS keeps reporting
        for name, value in values.items():
            instrument, unit = SERIES[name]
            if instrument == "gas" and _within(ts, OUTAGE):
                continue
            role = ROLES.get(name, f"{SIGNAL_ROLE}dcs/{name}")
            aggregate = Aggregate("chp", instrument, name, Period.HOUR, ts, float(value), 60, 60, True, unit=unit)
            by_role.setdefault(role, []).append(aggregate)
    return by_role


# -- the hand computation ------------------------------------------------------------------------------------


def _hours(span: tuple[datetime, datetime]) -> Iterator[datetime]:
    ts = span[0]
    while ts < span[1]:
        yield ts
        ts += HOUR


ALL = (START, START + HOURS * HOUR)
OPERATING_HOURS = [ts for ts in _hours(ALL) if not _within(ts, SUMMER)]
VALID_SO2 = [values["so2"] for ts in OPERATING_HOURS if not _within(ts, OUTAGE) and (values := plant_hour(ts))]
SUBSTITUTE = statistics.fmean(VALID_SO2) + 2 * statistics.stdev(VALID_SO2)  # EU MRR Art. 45 over operating hours


def _kg(ts: datetime) -> float:
    values = plant_hour(ts)
    assert values is not None
    so2 = SUBSTITUTE if _within(ts, OUTAGE) else values["so2"]
    return so2 * values["flow"] / 1e6  # mg/Nm³ × Nm³/h × 1 h → kg


SO2_TOTAL_T = sum(_kg(ts) for ts in OPERATING_HOURS) / 1000
SUBSTITUTED_T = sum(_kg(ts) for ts in _hours(OUTAGE)) / 1000
TRANSIENT_T = sum(_kg(ts) for span in (START_UP, SHUT_DOWN) for ts in _hours(span)) / 1000
SUMMER_HOURS = 92 * 24


def test_the_hand_computation() -> None:
    assert len(OPERATING_HOURS) == HOURS - SUMMER_HOURS == 6552
    assert pytest.approx((6 * 500 * 50_000 + 6 * 300 * 60_000) / 1e9) == TRANSIENT_T


def _report(source: dict[str, object], manual: tuple[ManualEntry, ...] = ()) -> tuple[MrvReport, list[list[object]]]:
    inputs = source_input(SourceConfig.model_validate(source), dict(RULE_SETS))
    report, _, rows = build_report_with_rows(
        inputs,
        year=YEAR,
        month=None,
        aggregates=hourly_aggregates(),
        config=ConfigRecord(sha256="-", canonical={}),
        generated_at=datetime(YEAR + 1, 1, 2, tzinfo=UTC),
        manual=manual,
    )
    return report, rows


@pytest.fixture(scope="module")
def year() -> tuple[MrvReport, list[list[object]]]:
    return _report(SOURCE)


def test_annual_total_matches_the_hand_computation(year: tuple[MrvReport, list[list[object]]]) -> None:
    report, _ = year
    so2 = next(t for t in report.totals if t.name == "SO2")
    assert so2.total_t == pytest.approx(SO2_TOTAL_T, rel=1e-12)
    assert so2.substituted_t == pytest.approx(SUBSTITUTED_T, rel=1e-12)
    assert so2.start_up_shut_down_t == pytest.approx(TRANSIENT_T, rel=1e-12)
    assert (so2.substituted_periods, so2.unsubstituted_periods, so2.complete) == (10, 0, True)
    assert (so2.non_operating_periods, so2.non_operating_measured_t) == (SUMMER_HOURS, 0.0)


def _hand_totals(parameter: str) -> dict[str, float]:
    """A pollutant's annual totals by hand, t: mass = concentration × flow per operating hour (EU MRR 2018/2066
    Art. 43), each of the October outage's hours filled with mean + 2σ of the valid operating hours (Art. 45),
    start-up and shut-down in the total (2012/249/EU Art. 9 only keeps them from the limits), the summer's off
    hours none at all."""
    valid = [v[parameter] for ts in OPERATING_HOURS if not _within(ts, OUTAGE) and (v := plant_hour(ts))]
    substitute = statistics.fmean(valid) + 2 * statistics.stdev(valid)

    def tonnes(hours: Iterator[datetime] | list[datetime]) -> float:
        kg = 0.0
        for ts in hours:
            values = plant_hour(ts)
            assert values is not None
            concentration = substitute if _within(ts, OUTAGE) else values[parameter]
            kg += concentration * values["flow"] / 1e6  # mg/Nm³ × Nm³/h × 1 h → kg
        return kg / 1000

    total, substituted = tonnes(OPERATING_HOURS), tonnes(_hours(OUTAGE))
    transient = sum(tonnes(_hours(span)) for span in (START_UP, SHUT_DOWN))
    return {"total_t": total, "measured_t": total - substituted, "substituted_t": substituted,
            "start_up_shut_down_t": transient}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "parameter"),
    [
        ("SO2", "so2"),  # hourly ELV; 190/210 mg/Nm³ in alternate hours: the substitute's σ from normal hours
        ("NOx", "nox"),  # daily ELV; 300 mg/Nm³ flat but 1500 in start-up: σ from the start-up hours alone
    ],
)
def test_every_pollutants_annual_totals_match_the_hand_computation(
    year: tuple[MrvReport, list[list[object]]], name: str, parameter: str
) -> None:
    """The year with the summer shutdown, each pollutant against its hand computation (to 1e-12): the ELV's
    averaging period (hourly or daily limit) changes what is judged, not the mass."""
    report, _ = year
    total = next(t for t in report.totals if t.name == name)
    for field, expected in _hand_totals(parameter).items():
        assert getattr(total, field) == pytest.approx(expected, rel=1e-12), field
    assert (total.substituted_periods, total.non_operating_periods, total.non_operating_measured_t) == (
        10,
        SUMMER_HOURS,
        0.0,
    )


def test_the_shutdown_is_neither_substituted_nor_invalid(year: tuple[MrvReport, list[list[object]]]) -> None:
    report, rows = year
    (run,) = [r for r in report.substituted if r.name == "SO2"]
    assert (run.start_utc, run.end_utc) == OUTAGE
    so2 = next(a for a in report.availability if a.name == "SO2")
    assert (so2.expected_periods, so2.valid_periods, so2.missing_periods) == (6552, 6542, 10)
    assert so2.non_operating_periods == SUMMER_HOURS
    assert so2.availability_percent == pytest.approx(100 * 6542 / 6552, abs=1e-4)
    assert so2.invalid_days == 1  # 14 October: 10 hours missing (> 3, Directive 2010/75/EU Annex V)
    assert not any("invalid days" in w or "consecutive" in w or "taken as operating" in w for w in report.warnings)
    july = next(row for row in rows if row[0] == datetime(YEAR, 7, 1, tzinfo=UTC).isoformat())
    assert july[2] == "off"
    assert "not operating" in july  # the SO2 column's reason, not a substitution method
    assert july[-1] is None  # no mass


def test_start_up_and_shut_down_are_not_judged(year: tuple[MrvReport, list[list[object]]]) -> None:
    report, _ = year
    limits = {x.pollutant: x for x in report.limits}
    assert limits["SO2"].exceedances == 0  # the 500 mg/Nm³ start-up hours are not judged
    assert limits["SO2"].valid_periods == 6552 - 12 - 10
    assert limits["NOx"].exceedances == 0  # 1 September's mean is over its 18 normal hours
    assert limits["NOx"].valid_periods == 365 - 92 - 1  # every day with normal hours but 14 October


def test_the_operating_section(year: tuple[MrvReport, list[list[object]]]) -> None:
    report, _ = year
    operating = report.operating
    assert operating is not None
    assert operating.periods == {"off": SUMMER_HOURS, "start-up": 6, "normal": 6552 - 12, "shut-down": 6}
    assert [(r.state, r.start_utc, r.periods) for r in operating.runs] == [
        (State.NORMAL, START, 151 * 24),
        (State.OFF, SUMMER[0], SUMMER_HOURS),
        (State.START_UP, START_UP[0], 6),
        (State.NORMAL, START_UP[1], int((SHUT_DOWN[0] - START_UP[1]) / HOUR)),
        (State.SHUT_DOWN, SHUT_DOWN[0], 6),
    ]
    assert "2012/249/EU Art. 9" in operating.rule
    june = next(m for m in operating.by_month if m.month == f"{YEAR}-06")
    assert (june.off, june.normal) == (30 * 24, 0)


def test_without_operating_state_the_shutdown_becomes_invented_emissions() -> None:
    """What the report did before: the summer substituted with mean + 2σ and counted as 92 invalid days."""
    source = {key: value for key, value in SOURCE.items() if key != "operating"}
    report, _ = _report(source)
    so2 = next(t for t in report.totals if t.name == "SO2")
    assert so2.substituted_periods == SUMMER_HOURS + 10
    assert so2.total_t > SO2_TOTAL_T
    assert next(a for a in report.availability if a.name == "SO2").invalid_days == 93
    assert any("invalid days" in w for w in report.warnings)


def test_a_manual_entry_overrides_the_signals() -> None:
    """The operator says the October outage hours were a boiler trip (off): nothing is substituted."""
    entry = ManualEntry(1, "boiler2", State.OFF, *OUTAGE, "ivanov", "boiler trip, shift log 14/10", START)
    report, rows = _report(SOURCE, (entry,))
    so2 = next(t for t in report.totals if t.name == "SO2")
    assert (so2.substituted_periods, so2.non_operating_periods) == (0, SUMMER_HOURS + 10)
    assert report.operating is not None
    assert [e.why for e in report.operating.manual_log] == ["boiler trip, shift log 14/10"]
    outage_row = next(row for row in rows if row[0] == OUTAGE[0].isoformat())
    assert outage_row[2] == "off"
    assert "ivanov" in str(outage_row[3])


# -- through the store, the rollups, the state file and the reproducibility check ----------------------------

CONFIG = """[gateway]
state = "state.sqlite"
[store]
url = "sqlite://aua.sqlite"
[[source]]
id = "boiler2"
site = "chp"
time_zone = "UTC"
fuel = "solid"
flow = { instrument = "flow", parameter = "flow", unit = "Nm3/h" }
o2 = { instrument = "gas", parameter = "o2", unit = "%vol" }
[[source.pollutant]]
instrument = "gas"
parameter = "so2"
name = "SO2"
unit = "mg/Nm3"
[source.operating]
running = [{ instrument = "dcs", parameter = "fuel", at_least = 0.5 }]
[[source.operating.startup_end]]
instrument = "dcs"
parameter = "load"
at_least = 40
[[source.operating.startup_end]]
instrument = "dcs"
parameter = "steam"
at_least = 100
[[source.operating.startup_end]]
instrument = "gas"
parameter = "o2"
at_most = 15
"""


async def test_report_from_the_store_with_signals_and_the_manual_log(tmp_path: Path) -> None:
    """Two days of 1-minute data: day 1 off until 06:00 (analyzers off), start-up 06:00-08:00, then normal;
    the operator logs day 2 12:00-14:00 as shut-down and the rest of the month off. Signals come through the
    rollups like any series, and a channel (O2) can be a criterion too."""
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    config = load_gateway_config(path)
    day = datetime(YEAR, 3, 1, tzinfo=UTC)
    rows = []
    for minute in range(2 * 1440):
        ts = day + timedelta(minutes=minute)
        hour = minute // 60
        off, starting = hour < 6, 6 <= hour < 8
        dcs = {"fuel": 0.0 if off else 5.0, "load": 0.0 if off else 20.0 if starting else 70.0}
        dcs |= {"steam": 0.0 if off else 50.0 if starting else 200.0, "fgt": 20.0 if off else 140.0}
        for name, value in dcs.items():
            rows.append(StoredReading("chp", "dcs-agent", "dcs", name, ts, value, "", Quality.OK))
        if not off:
            rows += [
                StoredReading("chp", "a", "flow", "flow", ts, 100_000.0, "Nm3/h", Quality.OK),
                StoredReading("chp", "a", "gas", "so2", ts, 200.0, "mg/Nm3", Quality.OK),
                StoredReading("chp", "a", "gas", "o2", ts, 6.0, "%vol", Quality.OK),
            ]
    log = OperatingLog(config.gateway.state)
    log.record(
        "boiler2",
        "shut-down",
        start=day + timedelta(hours=36),
        end=day + timedelta(hours=38),
        by="ivanov",
        why="planned load reduction",
        now=day,
    )
    log.record(  # without signals the rest of the month would count as operating (and be substituted)
        "boiler2",
        "off",
        start=day + timedelta(days=2),
        end=day + timedelta(days=31),
        by="ivanov",
        why="laid up",
        now=day,
    )
    log.close()
    store = open_store(config.store.url)
    await store.open()
    try:
        await store.write(rows)
        engine = RollupEngine.from_config(config, store)
        await engine.note_written(rows)
        await engine.process_dirty()
        engine.close()
        produced = await produce_report(config, store, "boiler2", year=YEAR, month=3, now=day + timedelta(days=40))
    finally:
        await store.close()
    report = produced.report
    assert report.operating is not None
    assert report.operating.periods == {"off": 6 + 29 * 24, "start-up": 2, "normal": 38, "shut-down": 2}
    so2 = report.totals[0]
    assert so2.total_t == pytest.approx(42 * 200 * 100_000 / 1e9, rel=1e-12)  # 42 operating hours, 20 kg each
    assert (so2.substituted_periods, so2.unsubstituted_periods) == (0, 0)
    assert report.reproducibility is not None
    assert report.reproducibility.matches
    header = produced.hourly_header
    assert header[2:4] == ["operating state", "state basis"]
    states = [row[2] for row in produced.hourly_rows[:48]]
    assert states == ["off"] * 6 + ["start-up"] * 2 + ["normal"] * 28 + ["shut-down"] * 2 + ["normal"] * 10
    assert "ivanov" in str(produced.hourly_rows[36][3])
