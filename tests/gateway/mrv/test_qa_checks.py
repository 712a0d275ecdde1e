"""The calibration-check log (EN 14181:2014 §7 QAL3; EN 17255-2's record of a check): checks captured from the
analyzer's check mode in real stored readings, entered from the CLI, charted, alerted, and in the MRV report."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from gateway_run import eventually, running_gateway
from openpyxl import load_workbook
from servers import MosquittoServer

from aua_contract import Batch, Quality, Reading, encode_batch, readings_topic
from gateway.alerts.engine import AlertEngine, AlertStore
from gateway.alerts.rules import QAL3_RULE, Qal3Rule
from gateway.alerts.state import AlertKey, Phase
from gateway.cli import main as gateway_main
from gateway.config import GatewayConfig, GatewayConfigError, load_gateway_config
from gateway.mrv.config import Qal3ComponentConfig
from gateway.mrv.operating_log import OperatingLog
from gateway.mrv.qa_checks import QaCheckError, QaCheckLog, QaWatch, RecordedCheck, capture, checks_from_readings
from gateway.mrv.qal3 import CheckKind, CheckResult
from gateway.mrv.report_charts import qal3_charts
from gateway.mrv.report_files import write_report_files
from gateway.mrv.report_production import produce_report
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import StoredReading, open_store

DAY = datetime(2026, 3, 2, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
OK, CHECK = Quality.OK, Quality.CHECK_FUNCTION

CONFIG = """[gateway]
state = "state.sqlite"
[store]
url = "sqlite://aua.sqlite"
[[source]]
id = "boiler2"
site = "chp"
fuel = "solid"
flow = { instrument = "flow", parameter = "flow", unit = "Nm3/h" }
o2 = { instrument = "gas", parameter = "o2", unit = "%vol" }
[[source.pollutant]]
instrument = "gas"
parameter = "so2"
name = "SO2"
unit = "mg/Nm3"
elv = 400
[source.qal3]
method = "cusum"
flag_out_of_control = "invalid"
[[source.qal3.component]]
instrument = "gas"
parameter = "so2"
s_ams_zero = 1.0
s_ams_span = 2.0
zero_reference = 0.0
span_reference = 180.0
"""

ZERO_SPAN = Qal3ComponentConfig(
    instrument="gas", parameter="so2", s_ams_zero=1.0, s_ams_span=2.0, zero_reference=0.0, span_reference=180.0
)
WITH_BITS = ZERO_SPAN.model_copy(update={"zero_bit": 16, "span_bit": 17})


def _series(items: Sequence[tuple[int, float | None, Quality, int | None]]) -> list[StoredReading]:
    """(minute, value, quality, status word) → so2 readings of the gas analyzer."""
    return [
        StoredReading("chp", "a", "gas", "so2", DAY + m * MINUTE, value, "mg/Nm3", quality, status)
        for m, value, quality, status in items
    ]


@pytest.mark.parametrize(
    ("component", "items", "expected"),
    [
        # one window: the response is its last reading; zero gas nearest → zero
        (ZERO_SPAN, [(0, 200, OK, 0), (1, 5, CHECK, 0), (2, 1.2, CHECK, 0), (3, 201, OK, 0)], [("zero", 2, 1, 1.2)]),
        # span gas nearest; a last reading without a value does not count
        (ZERO_SPAN, [(0, 90, CHECK, 0), (1, 181.5, CHECK, 0), (2, None, CHECK, 0), (3, 1, OK, 0)],
         [("span", 1, 0, 181.5)]),
        # still in check mode at the end: not yet a check
        (ZERO_SPAN, [(0, 200, OK, 0), (1, 0.4, CHECK, 0)], []),
        # two windows
        (ZERO_SPAN, [(0, 0.5, CHECK, 0), (1, 200, OK, 0), (5, 179, CHECK, 0), (6, 200, OK, 0)],
         [("zero", 0, 0, 0.5), ("span", 5, 5, 179.0)]),
        # the status bits split one run of check mode into its zero and span parts (EN 17255-2 mode bits)
        (WITH_BITS, [(0, 3, CHECK, 1 << 16), (1, 0.7, CHECK, 1 << 16), (2, 100, CHECK, 1 << 17),
                     (3, 178.2, CHECK, 1 << 17), (4, 200, OK, 0)],
         [("zero", 1, 0, 0.7), ("span", 3, 2, 178.2)]),
        # by bits, a check mode without either bit is some other function check: not a zero/span check
        (WITH_BITS, [(0, 50, CHECK, 1 << 3), (1, 200, OK, 0)], []),
        # a gap longer than 15 minutes splits windows
        (ZERO_SPAN, [(0, 0.1, CHECK, 0), (30, 0.2, CHECK, 0), (31, 200, OK, 0)],
         [("zero", 0, 0, 0.1), ("zero", 30, 30, 0.2)]),
    ],
)  # fmt: skip
def test_checks_from_readings(
    component: Qal3ComponentConfig,
    items: list[tuple[int, float | None, Quality, int | None]],
    expected: list[tuple[str, int, int, float]],
) -> None:
    """`expected`: (kind, minute of the response, minute the window began, response)."""
    found = checks_from_readings(list(reversed(_series(items))), component)
    assert [(c.kind.value, c.at, c.window_start, c.reading) for c in found] == [
        (kind, DAY + at * MINUTE, DAY + began * MINUTE, value) for kind, at, began, value in expected
    ]
    for check in found:
        assert check.reference == (0.0 if check.kind is CheckKind.ZERO else 180.0)


def _record(log: QaCheckLog, check: CheckResult, *, by: str = "ivanov", why: str = "weekly check") -> RecordedCheck:
    return log.record("boiler2", check, instrument="gas", parameter="so2", by=by, why=why, now=DAY)


def test_log_refuses_duplicates_and_changes_and_prunes_beyond_the_cap(tmp_path: Path) -> None:
    log = QaCheckLog(tmp_path / "state.sqlite", max_per_component=3)
    for day in range(4):
        _record(log, CheckResult(DAY + timedelta(days=day), CheckKind.ZERO, 0.0, 0.1 * day))
    assert log.pruned == 1
    kept = log.checks("boiler2")
    assert [c.at for c in kept] == [DAY + timedelta(days=d) for d in (1, 2, 3)]
    with pytest.raises(QaCheckError, match=r"zero check at .* already \(#4\)"):
        _record(log, CheckResult(DAY + timedelta(days=3), CheckKind.ZERO, 0.0, 9.0))
    with pytest.raises(QaCheckError, match="by: who records it"):
        _record(log, CheckResult(DAY, CheckKind.SPAN, 0.0, 9.0), by=" ")
    with pytest.raises(sqlite3.DatabaseError, match="never changed"):
        log._db.execute("UPDATE qa_check SET reading = 0")
    log.close()
    assert len(QaCheckLog(tmp_path / "state.sqlite").checks("boiler2", instrument="gas")) == 3


async def test_capture_from_the_store_across_days_once(tmp_path: Path) -> None:
    """A zero check that runs over midnight (23:55-00:04) is one check, found once however often one captures."""
    store = open_store(f"sqlite://{tmp_path / 'aua.sqlite'}")
    await store.open()
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    source = load_gateway_config(path).sources[0]
    log = QaCheckLog(tmp_path / "state.sqlite")
    try:
        items = [(m, 200.0, OK, 0) for m in range(1430, 1435)]
        items += [(m, 0.3 + (m - 1435) * 0.01, CHECK, 0) for m in range(1435, 1445)]
        items += [(m, 200.0, OK, 0) for m in range(1445, 1450)]
        items += [(2000, 180.9, CHECK, 0), (2001, 200.0, OK, 0)]
        await store.write(_series(items))
        found, recorded = await capture(store, log, source, start=DAY, end=DAY + timedelta(days=2), now=DAY)
        assert [(c.kind, c.at, c.reading) for c in found] == [
            (CheckKind.ZERO, DAY + 1444 * MINUTE, pytest.approx(0.39)),
            (CheckKind.SPAN, DAY + 2000 * MINUTE, 180.9),
        ]
        assert found[0].window_start == DAY + 1435 * MINUTE
        assert [r.origin for r in recorded] == ["auto", "auto"]
        again = await capture(store, log, source, start=DAY, end=DAY + timedelta(days=2), now=DAY)
        assert (len(again[0]), again[1]) == (2, [])
        assert len(log.checks("boiler2")) == 2
    finally:
        log.close()
        await store.close()


async def test_watch_raises_the_qal3_alert_and_the_adjustment_clears_it(tmp_path: Path) -> None:
    """Zero checks at +2 (s_AMS 1) twice: S+ = 1.499, 2.998 > 2.85 (EN 14181:2004 Annex C) → the alert fires;
    a check recorded after the adjustment resolves it."""
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    config = load_gateway_config(path)
    store = open_store(config.store.url)
    await store.open()
    engine = AlertEngine([Qal3Rule(name=QAL3_RULE)], AlertStore(tmp_path / "alerts.sqlite"))
    watch = QaWatch(config, store, engine, lookback=timedelta(hours=3))
    key = AlertKey(QAL3_RULE, "chp", "", "gas", "so2")
    try:
        for hours in (0, 2):
            start = DAY + timedelta(hours=hours)
            window = [(0, 2.5, CHECK, 0), (1, 2.0, CHECK, 0), (2, 200.0, OK, 0)]
            await store.write(
                [
                    StoredReading("chp", "a", "gas", "so2", start + m * MINUTE, v, "mg/Nm3", q, s)
                    for m, v, q, s in window
                ]
            )
            recorded = await watch.pass_once(start + 10 * MINUTE)
            assert recorded == 1
        state = engine.state_of(key)
        assert state is not None
        assert state.phase is Phase.FIRING
        assert "zero drift_pos" in state.detail
        assert state.since == DAY + timedelta(hours=2, minutes=1)
        watch.log.record(
            "boiler2",
            CheckResult(DAY + timedelta(hours=3), CheckKind.ZERO, 0.0, 0.1, adjusted=True),
            instrument="gas",
            parameter="so2",
            by="ivanov",
            why="zero adjusted",
            now=DAY,
        )
        assert await watch.pass_once(DAY + timedelta(hours=3, minutes=5)) == 0
        state = engine.state_of(key)
        assert state is not None
        assert state.phase is not Phase.FIRING
    finally:
        watch.close()
        engine.close()
        await store.close()


def test_alert_engine_from_config_adds_the_qal3_rule(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG + "[alerts]\n", encoding="utf-8")
    engine = AlertEngine.from_config(load_gateway_config(path), notifiers=[])
    assert isinstance(engine.rules[QAL3_RULE], Qal3Rule)
    engine.close()
    path.write_text(CONFIG.replace("[source.qal3]\n", "[source.qal3]\nalert = false\n") + "[alerts]\n")
    engine = AlertEngine.from_config(load_gateway_config(path), notifiers=[])
    assert QAL3_RULE not in engine.rules
    engine.close()


def test_cli_add_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    common = ["qa-check", "add", str(path), "boiler2", "--component", "gas/so2", "--by", "ivanov"]
    for at, reading in (("2026-03-02T06:00", "2"), ("2026-03-03T06:00", "2")):
        args = [*common, "--kind", "zero", "--reading", reading, "--at", at, "--why", "weekly zero"]
        assert gateway_main(args) == 0
    out = capsys.readouterr().out
    assert "recorded #2 gas/so2 zero 2026-03-03T06:00:00Z reading 2 reference 0 (d +2)" in out
    assert "gas/so2: OUT OF CONTROL since 2026-03-02T06:00:00Z" not in out  # the second check signals, not the first
    assert "OUT OF CONTROL since 2026-03-03T06:00:00Z: drift_pos" in out
    args = [*common, "--kind", "span", "--reading", "180.4", "--at", "2026-03-03T09:00", "--adjusted", "--why", "adj"]
    assert gateway_main(args) == 0
    assert "(after adjustment)" in capsys.readouterr().out
    assert gateway_main(["qa-check", "list", str(path), "boiler2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "gas/so2: in-control (3 checks)"
    assert [line.rsplit(" -> ", 1)[1] for line in lines[1:]] == ["in-control", "out-of-control", "in-control"]
    assert "reference 180" in lines[3]

    assert gateway_main([*common, "--kind", "zero", "--reading", "1", "--component", "gas/nox", "--why", "x"]) == 1
    assert "not a [[source.qal3.component]] (known: gas/so2)" in capsys.readouterr().err
    assert gateway_main([*common, "--kind", "zero", "--reading", "nan", "--why", "x"]) == 1
    assert "finite" in capsys.readouterr().err
    assert gateway_main(["qa-check", "list", str(path), "boiler9"]) == 1
    assert "no [[source]] with id 'boiler9'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('method = "cusum"', 'method = "spc"', "source.0.qal3.method"),
        ("s_ams_zero = 1.0", "s_ams_zero = 0", "s_ams_zero"),
        ('flag_out_of_control = "invalid"', 'flag_out_of_control = "drop"', "flag_out_of_control"),
        ("span_reference = 180.0", "span_reference = 0.0", "zero_reference and span_reference must differ"),
        ("span_reference = 180.0", "span_reference = 180.0\nzero_bit = 3", "set both zero_bit and span_bit"),
        ('parameter = "so2"\ns_ams', 'parameter = "co"\ns_ams', "qal3.component gas/co: not a channel"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in CONFIG
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.replace(old, new), encoding="utf-8")
    with pytest.raises(GatewayConfigError, match=message):
        load_gateway_config(path)


def _plant_day() -> list[StoredReading]:
    rows = []
    for minute in range(24 * 60):
        ts = DAY + minute * MINUTE
        rows += [
            StoredReading("chp", "a", "flow", "flow", ts, 100_000.0, "Nm3/h", OK),
            StoredReading("chp", "a", "gas", "so2", ts, 200.0, "mg/Nm3", OK),
            StoredReading("chp", "a", "gas", "o2", ts, 6.0, "%vol", OK),
        ]
    return rows


@pytest.mark.parametrize("flag", ["invalid", "flag"])
async def test_report_qa_section_and_out_of_control_data(tmp_path: Path, flag: str) -> None:
    """Zero checks at 06:00 and 07:00 both +2 (s_AMS 1): signal at 07:00; the adjusted check at 10:00 ends it.
    So2's hours 07, 08 and 09 are out of control: with 'invalid' they are substituted (mean + 2σ of the other
    hours, all 200, so the total stays 24 × 20 kg), with 'flag' kept valid and listed."""
    path = tmp_path / "gateway.toml"
    text = CONFIG.replace('"invalid"', f'"{flag}"\nmax_check_interval_days = 7')
    path.write_text(text, encoding="utf-8")
    config = load_gateway_config(path)
    log = QaCheckLog(config.gateway.state)
    for hour, reading, adjusted in ((6, 2.0, False), (7, 2.0, False), (10, 0.1, True)):
        _record(log, CheckResult(DAY + timedelta(hours=hour), CheckKind.ZERO, 0.0, reading, adjusted), why="daily")
    log.close()
    operating = OperatingLog(config.gateway.state)  # the rest of March: the plant is off
    for start, end in (
        (datetime(2026, 3, 1, tzinfo=UTC), DAY),
        (DAY + timedelta(days=1), datetime(2026, 4, 1, tzinfo=UTC)),
    ):
        operating.record("boiler2", "off", start=start, end=end, by="ivanov", why="laid up", now=DAY)
    operating.close()
    store = open_store(config.store.url)
    await store.open()
    try:
        rows = _plant_day()
        await store.write(rows)
        engine = RollupEngine.from_config(config, store)
        await engine.note_written(rows)
        await engine.process_dirty()
        engine.close()
        produced = await produce_report(config, store, "boiler2", year=2026, month=3, now=DAY + timedelta(days=40))
    finally:
        await store.close()
    report = produced.report
    qa = report.qa
    assert qa is not None
    assert [(c.kind, c.status, c.adjusted) for c in qa.checks] == [
        ("zero", "in-control", False),
        ("zero", "out-of-control", False),
        ("zero", "in-control", True),
    ]
    [component] = qa.components
    assert (component.component, component.checks, component.out_of_control_periods) == ("gas/so2", 3, 1)
    assert component.affected_periods == 3
    assert component.zero_status == "in-control"
    assert component.span_status == "no checks"
    assert component.statistics["zero.drift_pos"] == 0.0  # restarted at the adjustment: 0.1 < k
    # EN 14181:2014 §7, a check at least once per maintenance interval: from 1 March (no check before) to 06:00
    # on the 2nd, then from 10:00 on the 2nd to the end of March; no span check at all
    assert component.longest_zero_interval_days == pytest.approx(29 + 14 / 24)
    assert component.longest_span_interval_days == 31
    assert qa.max_check_interval_days == 7
    assert any(
        "longer than the maintenance interval (7 days) without a zero or span check" in w for w in report.warnings
    )
    series = qa.chart_series()["gas/so2"]["zero"]  # what a PDF chart draws
    assert series["at"] == [DAY + timedelta(hours=h) for h in (6, 7, 10)]
    assert series["drift_pos"] == pytest.approx([1.499, 2.998, 0.0])  # 2 − 0.501, + 2 − 0.501; restarted
    assert series["drift_pos_limit"] == pytest.approx([2.85] * 3)
    [period] = qa.out_of_control
    assert (period.start_utc, period.end_utc, period.treatment) == (
        DAY + timedelta(hours=7),
        DAY + timedelta(hours=10),
        flag,
    )
    so2 = report.totals[0]
    assert so2.total_t == pytest.approx(24 * 200 * 100_000 / 1e9, rel=1e-12)
    assert so2.substituted_periods == (3 if flag == "invalid" else 0)
    [availability] = [a for a in report.availability if a.name == "SO2"]
    assert availability.valid_periods == (21 if flag == "invalid" else 24)
    assert report.reproducibility is not None
    assert report.reproducibility.matches
    assert any("QAL3: gas/so2 out of control in 1 period(s)" in w for w in report.warnings)
    so2_valid = produced.hourly_header.index("SO2 valid")
    from_six = produced.hourly_rows[24 + 6 : 24 + 11]  # 2 March 06:00-11:00
    assert [row[so2_valid] for row in from_six] == (
        [True, False, False, False, True] if flag == "invalid" else [True] * 5
    )

    [chart] = qal3_charts(report)  # the PDF's control chart: the CUSUM drift sum against ±h, the signal beyond it
    assert chart.title == "QAL3 cusum chart, gas/so2 zero"
    assert chart.values == pytest.approx((1.499, 2.998, 0.0))
    assert sorted(limit.value for limit in chart.limits if limit.role == "limit") == pytest.approx([-2.85, 2.85])
    assert chart.outside() == [1]

    paths = write_report_files(produced, tmp_path / "out")
    names = {p.name for p in paths}
    base = produced.basename
    assert {f"{base}-qa-checks.csv", f"{base}-qal3.csv", f"{base}-out-of-control.csv"} <= names
    checks_csv = (tmp_path / "out" / f"{base}-qa-checks.csv").read_text(encoding="utf-8").splitlines()
    assert checks_csv[0].startswith("id,component,kind,at_utc")
    assert len(checks_csv) == 4
    workbook = load_workbook(tmp_path / "out" / f"{base}.xlsx", read_only=True)
    assert {"Qa-checks", "Qal3", "Out-of-control"} <= set(workbook.sheetnames)
    workbook.close()
    assert (tmp_path / "out" / f"{base}.pdf").stat().st_size > 0


def test_the_shipped_source_example_with_qal3_loads_when_uncommented(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[3] / "config" / "gateway.toml").read_text(encoding="utf-8")
    block = text[text.index("# [[source]]") : text.index("# # Real-time feed")]
    path = tmp_path / "gw.toml"
    path.write_text("\n".join(line.removeprefix("# ") for line in block.splitlines()) + "\n", encoding="utf-8")
    qal3 = load_gateway_config(path).sources[0].qal3
    assert qal3 is not None
    assert (qal3.method.value, qal3.flag_out_of_control, qal3.component[0].span_bit) == ("cusum", "invalid", 17)


async def test_a_restarted_watch_catches_up_from_its_last_captured_check(tmp_path: Path) -> None:
    """Checks made while the gateway was down are found by the first pass after the restart (back to the last
    captured check), later passes look back `lookback` only."""
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    config = load_gateway_config(path)
    store = open_store(config.store.url)
    await store.open()

    async def window(at: datetime, value: float) -> None:
        items = [(0, value, CHECK, 0), (1, 200.0, OK, 0)]
        await store.write(
            [StoredReading("chp", "a", "gas", "so2", at + m * MINUTE, v, "mg/Nm3", q, s) for m, v, q, s in items]
        )

    try:
        watch = QaWatch(config, store, None, lookback=timedelta(hours=1))
        await window(DAY, 0.5)
        assert await watch.pass_once(DAY + 10 * MINUTE) == 1
        watch.close()
        await window(DAY + timedelta(hours=5), 0.6)  # while the gateway is down
        await window(DAY + timedelta(hours=9), 0.7)
        restarted = QaWatch(config, store, None, lookback=timedelta(hours=1))
        assert await restarted.pass_once(DAY + timedelta(hours=9, minutes=10)) == 2
        await window(DAY + timedelta(hours=11), 0.8)
        await window(DAY + timedelta(hours=13), 0.9)
        # later passes look back an hour (in the gateway they come every minute): 11:00 is beyond it here
        assert await restarted.pass_once(DAY + timedelta(hours=13, minutes=10)) == 1
        assert [c.reading for c in restarted.log.checks("boiler2")] == [0.5, 0.6, 0.7, 0.9]
        metrics = {m.name: m.samples[0].value for m in restarted.collect()}
        assert metrics == {
            "aua_gateway_qa_checks_captured": 3,
            "aua_gateway_qa_checks_pruned": 0,
            "aua_gateway_qa_watch_failures": 0,
        }
        restarted.close()
    finally:
        await store.close()


def test_cli_capture_from_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    config = load_gateway_config(path)

    async def write() -> None:
        store = open_store(config.store.url)
        await store.open()
        items = [(0, 200.0, OK, 0), (1, 181.0, CHECK, 0), (2, 180.6, CHECK, 0), (3, 200.0, OK, 0)]
        await store.write(_series(items))
        await store.close()

    asyncio.run(write())
    args = ["qa-check", "capture", str(path), "boiler2", "--from", "2026-03-02T00:00", "--to", "2026-03-03T00:00"]
    assert gateway_main(args) == 0
    out = capsys.readouterr().out
    assert "found 1 checks, recorded 1 new" in out
    assert "#1 gas/so2 span 2026-03-02T00:02:00Z reading 180.6 reference 180 (d +0.6) auto by gateway" in out
    assert gateway_main(args) == 0
    assert "found 1 checks, recorded 0 new" in capsys.readouterr().out
    assert gateway_main([*args[:4], "--from", "2026-03-03", "--to", "2026-03-02"]) == 1
    assert "is not after --from" in capsys.readouterr().err


async def test_checks_from_an_agents_batches_through_broker_and_gateway(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """End to end: an agent publishes its analyzer's zero checks (check_function, the zero-mode status bit) over
    MQTT, the gateway stores them, the watch captures them, and two +2 zero checks (s_AMS 1) fire the alert."""
    site = f"s{uuid.uuid4().hex[:8]}"
    gas = {"instrument": "gas", "unit": "mg/Nm3"}
    component = {"instrument": "gas", "parameter": "so2", "s_ams_zero": 1.0, "s_ams_span": 2.0}
    config = GatewayConfig.model_validate(
        {
            "gateway": {"id": f"gw-{site}", "state": str(tmp_path / "state.sqlite")},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "sites": site},
            "store": {"url": f"sqlite://{tmp_path / 'aua.sqlite'}"},
            "source": [
                {
                    "id": "boiler2",
                    "site": site,
                    "flow": {"instrument": "flow", "parameter": "flow", "unit": "Nm3/h"},
                    "pollutant": [gas | {"parameter": "so2"}],
                    "qal3": {"component": [component | {"span_reference": 180.0, "zero_bit": 16, "span_bit": 17}]},
                }
            ],
        }
    )
    now = datetime.now(UTC).replace(microsecond=0)
    readings = []
    for start in (now - timedelta(minutes=40), now - timedelta(minutes=20)):
        window = [(0, 2.6, CHECK, 1 << 16), (1, 2.0, CHECK, 1 << 16), (2, 200.0, OK, 0)]
        readings += [
            Reading(
                instrument="gas", parameter="so2", value=v, unit="mg/Nm3", ts=start + m * MINUTE, quality=q, status=s
            )
            for m, v, q, s in window
        ]
    payload = encode_batch(Batch(site=site, agent="a1", seq=0, sent_at=now, readings=readings))
    engine = AlertEngine([Qal3Rule(name=QAL3_RULE)], AlertStore(tmp_path / "alerts.sqlite"))
    async with running_gateway(config) as ingest:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"pub-{site}") as client:
            await client.publish(readings_topic(site, "a1"), payload, qos=1)
        await eventually(lambda: ingest.stats.batches == 1)
        await asyncio.wait_for(ingest.flushed(), timeout=10)
        watch = QaWatch(config, ingest.store, engine, lookback=timedelta(hours=1))
        assert await watch.pass_once(now) == 2
        checks = watch.log.checks("boiler2")
        watch.close()
    assert [(c.kind, c.reading, c.origin) for c in checks] == [(CheckKind.ZERO, 2.0, "auto")] * 2
    state = engine.state_of(AlertKey(QAL3_RULE, site, "", "gas", "so2"))
    engine.close()
    assert state is not None
    assert state.phase is Phase.FIRING
