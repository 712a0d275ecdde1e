"""40 CFR Part 75 QA rules (gateway.mrv.part75), table-driven against hand-computed values, each row citing its
clause."""

from __future__ import annotations

import csv
import sqlite3
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from openpyxl import load_workbook

from aua_contract import Quality
from gateway.alerts.engine import AlertEngine
from gateway.alerts.state import AlertKey, Phase
from gateway.cli import main as gateway_main
from gateway.config import GatewayConfigError, load_gateway_config
from gateway.mrv.config import Part75Config
from gateway.mrv.part75 import (
    DailyCalibration,
    Kind,
    Linearity,
    LinearityLevel,
    Part75Spec,
    Part75Tests,
    PeriodStatus,
    Rata,
    RataResult,
    calibration_error,
    daily_calibration_due,
    linearity_error,
    statuses,
)
from gateway.mrv.part75_log import Part75Log, Part75LogError
from gateway.mrv.qa_alerts import QaAlerts
from gateway.mrv.report_files import write_report_files
from gateway.mrv.report_production import produce_report
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import StoredReading, open_store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("kind", "reference", "response", "span", "unit", "error", "within_spec", "in_control", "clause"),
    [
        (Kind.GAS, 250, 260, 500, "ppm", 2.0, True, True, "App. A §3.1: 2.0 % ≤ 2.5 %"),
        (Kind.GAS, 250, 270, 500, "ppm", 4.0, False, True, "App. B §2.1.4: 4.0 % ≤ 2 × 2.5 %"),
        (Kind.GAS, 250, 280, 500, "ppm", 6.0, False, False, "App. B §2.1.4: 6.0 % > 5.0 %"),
        (Kind.GAS, 250, 225, 500, "ppm", 5.0, False, True, "App. B §2.1.4: exactly 5.0 % is in control"),
        (Kind.GAS, 20, 24, 40, "ppm", 10.0, True, True, "span ≤ 50 ppm: |R − A| 4 ≤ 5 ppm"),
        (Kind.GAS, 20, 26, 40, "ppm", 15.0, False, False, "span ≤ 50 ppm: |R − A| 6 > 5 ppm"),
        (Kind.GAS, 75, 84, 150, "ppm", 6.0, False, True, "50 < span ≤ 200 ppm: |R − A| 9 ≤ 10 ppm"),
        (Kind.GAS, 75, 86, 150, "ppm", 22 / 3, False, False, "50 < span ≤ 200 ppm: |R − A| 11 > 10 ppm"),
        (Kind.GAS, 75, 84, 150, "mg/m3", 6.0, False, False, "the ppm alternative needs ppm"),
        (Kind.DILUENT, 10.0, 10.4, 25, "%", 0.4, True, True, "App. A §3.1: O2 |R − A| 0.4 ≤ 0.5 % vol"),
        (Kind.DILUENT, 10.0, 10.6, 25, "%", 0.6, False, True, "App. B §2.1.4: 0.6 ≤ 1.0 % vol"),
        (Kind.DILUENT, 10.0, 11.2, 25, "%", 1.2, False, False, "App. B §2.1.4: 1.2 > 1.0 % vol"),
        (Kind.FLOW, 500, 550, 1000, "kscfh", 5.0, False, True, "App. B §2.1.4: flow 5 % ≤ 6 %"),
        (Kind.FLOW, 500, 570, 1000, "kscfh", 7.0, False, False, "App. B §2.1.4: flow 7 % > 6 %"),
        (Kind.FLOW, 500, 515, 1000, "kscfh", 1.5, True, True, "App. A §3.1: flow 1.5 % ≤ 3 %"),
    ],
)
def test_calibration_error(  # noqa: PLR0917 - one argument per table column
    kind: Kind,
    reference: float,
    response: float,
    span: float,
    unit: str,
    error: float,
    within_spec: bool,
    in_control: bool,
    clause: str,
) -> None:
    """40 CFR 75 App. A §3.1 Eq. A-5 and App. B §2.1.4."""
    result = calibration_error(kind, reference, response, span, unit)
    assert result.error == pytest.approx(error), clause
    assert result.difference == pytest.approx(abs(response - reference))
    assert (result.within_spec, result.in_control) == (within_spec, in_control), clause


@pytest.mark.parametrize(("span", "reference"), [(0.0, 1.0), (-5.0, 1.0), (100.0, float("nan"))])
def test_calibration_error_refuses_nonsense(span: float, reference: float) -> None:
    with pytest.raises(ValueError, match=r"span|finite"):
        calibration_error(Kind.GAS, reference, 1.0, span, "ppm")


@pytest.mark.parametrize(
    ("kind", "reference", "mean", "unit", "error", "passed", "clause"),
    [
        (Kind.GAS, 100, 104, "ppm", 4.0, True, "App. A §3.2: 4 % ≤ 5 %"),
        (Kind.GAS, 100, 106, "ppm", 6.0, False, "App. A §3.2: 6 % > 5 % and 6 ppm > 5 ppm"),
        (Kind.GAS, 50, 54, "ppm", 8.0, True, "App. A §3.2: |R̄ − A| 4 ≤ 5 ppm"),
        (Kind.GAS, 50, 54, "mg/m3", 8.0, False, "the ppm alternative needs ppm"),
        (Kind.DILUENT, 5.0, 5.4, "%", 8.0, True, "App. A §3.2: |R̄ − A| 0.4 ≤ 0.5 % O2"),
        (Kind.DILUENT, 5.0, 5.6, "%", 12.0, False, "App. A §3.2: 0.6 > 0.5 % O2"),
        (Kind.FLOW, 5.0, 5.4, "kscfh", 8.0, False, "flow has no absolute alternative"),
    ],
)
def test_linearity_error(  # noqa: PLR0917 - one argument per table column
    kind: Kind, reference: float, mean: float, unit: str, error: float, passed: bool, clause: str
) -> None:
    """40 CFR 75 App. A §3.2 Eq. A-4."""
    le, ok = linearity_error(kind, LinearityLevel(reference, mean), unit)
    assert le == pytest.approx(error), clause
    assert ok is passed, clause


def _rata(differences: list[float], reference: float = 100.0, role: str = "pollutant:so2", rata_id: int = 1) -> Rata:
    return Rata(rata_id, "boiler", role, T0, tuple((reference, reference - d) for d in differences))


# Hand computations, App. A Eqs. with n = 9 (t0.975 = 2.306, Table 7-1):
# d = 4,6,5,5,4,6,5,5,5: d̄ = 5, s_d = √(4/8) = 0.70711, cc = 2.306 × 0.70711 / 3 = 0.54353,
#   RA = (5 + 0.54353) / 100 × 100 = 5.54353 %, d̄ > cc so BAF = 1 + 5 / 95 = 1.05263 -> 1.053.
# d = 11,13,12,12,11,13,12,12,12: d̄ = 12, same s_d, RA = 12.54353 % (fails 10 %), BAF = 1 + 12/88 -> 1.136.
# d = 1,-1,2,-2,0,1,-1,0,0: d̄ = 0, no bias, s_d = √(12/8) = 1.22474, cc = 2.306 × 1.22474 / 3 = 0.94142, RA = 0.94142 %.
# d = -4,-6,-5,-5,-4,-6,-5,-5,-5: the CEM reads high (d̄ = -5 < cc): no BAF, RA 5.54353 %.
@pytest.mark.parametrize(
    ("differences", "ra", "passed", "bias_failed", "baf"),
    [
        ([4, 6, 5, 5, 4, 6, 5, 5, 5], 5.54353, True, True, 1.053),
        ([11, 13, 12, 12, 11, 13, 12, 12, 12], 12.54353, False, True, 1.136),
        ([1, -1, 2, -2, 0, 1, -1, 0, 0], 0.94142, True, False, 1.0),
        ([-4, -6, -5, -5, -4, -6, -5, -5, -5], 5.54353, True, False, 1.0),
    ],
)
def test_rata(differences: list[float], ra: float, passed: bool, bias_failed: bool, baf: float) -> None:
    """40 CFR 75 App. A §7.3-7.6 (RA ≤ 10 %: App. A §3.3; BAF: Eq. A-12)."""
    rata = _rata(differences)
    assert rata.relative_accuracy == pytest.approx(ra, abs=1e-5)
    assert rata.passed is passed
    assert rata.bias_failed is bias_failed
    assert rata.bias_adjustment_factor == baf


@pytest.mark.parametrize("runs", [8, 13])
def test_rata_needs_nine_to_twelve_runs(runs: int) -> None:
    with pytest.raises(ValueError, match="9 to 12 runs"):
        _rata([5.0] * runs)


def _daily(
    hour: float, *, passed: bool = True, test_id: int = 1, role: str = "pollutant:so2", base: datetime = T0
) -> DailyCalibration:
    high = 255.0 if passed else 290.0  # 1 % or 8 % of a 500 ppm span
    return DailyCalibration(test_id, "boiler", role, base + hour * HOUR, 500.0, "ppm", 0.0, 1.0, 250.0, high)


SPEC = Part75Spec(spans=(("pollutant:so2", 500.0),))


def _grid(hours: int) -> list[datetime]:
    return [T0 + i * HOUR for i in range(hours)]


def _out(result: list[PeriodStatus]) -> list[int]:
    return [i for i, status in enumerate(result) if not status.in_control]


def test_passed_test_covers_26_clock_hours_after_its_hour() -> None:
    """App. B §2.1.5: a test completed at 00:30 covers hours 01:00-02:00 ... 02:00 next day (26 clock hours);
    with the unit operating when that ran out, data are invalid from 03:00 next day (hour 27) on."""
    result = statuses(SPEC, "pollutant:so2", _grid(40), HOUR, [True] * 40, daily=[_daily(0.5)])
    assert _out(result) == list(range(27, 40))
    assert "overdue" in result[27].reason
    assert not any(s.grace for s in result)


def test_failed_test_is_out_of_control_until_the_next_pass() -> None:
    """App. B §2.1.4: from the failed test's hour to the passing test's hour."""
    tests = [_daily(0.2), _daily(10.25, passed=False, test_id=2), _daily(14.67, test_id=3)]
    result = statuses(SPEC, "pollutant:so2", _grid(24), HOUR, [True] * 24, daily=tests)
    assert _out(result) == [10, 11, 12, 13]
    assert "#2 failed" in result[10].reason


def test_grace_after_a_window_that_ran_out_while_off() -> None:
    """App. B §2.1.5: the window ran out while the unit was off; 8 operating hours of grace after the restart,
    then out of control until a test passes."""
    operating = [i < 20 or i >= 40 for i in range(60)]
    result = statuses(SPEC, "pollutant:so2", _grid(60), HOUR, operating, daily=[_daily(0.5)])
    assert [i for i, s in enumerate(result) if s.grace] == list(range(40, 48))
    assert _out(result) == list(range(48, 60))
    assert all(s.in_control for s in result[20:40])  # not operating: nothing to assure


def test_a_test_passed_within_the_grace_ends_it() -> None:
    operating = [i < 20 or i >= 40 for i in range(60)]
    tests = [_daily(0.5), _daily(43.1, test_id=2)]
    result = statuses(SPEC, "pollutant:so2", _grid(60), HOUR, operating, daily=tests)
    assert [i for i, s in enumerate(result) if s.grace] == [40, 41, 42]
    assert _out(result) == []


def test_grace_and_validity_hours_are_configuration() -> None:
    spec = Part75Spec(spans=SPEC.spans, validity_hours=24, grace_operating_hours=2)
    operating = [i < 20 or i >= 40 for i in range(50)]
    result = statuses(spec, "pollutant:so2", _grid(50), HOUR, operating, daily=[_daily(0.5)])
    assert [i for i, s in enumerate(result) if s.grace] == [40, 41]
    assert _out(result) == list(range(42, 50))


def test_no_test_at_all_leaves_operating_hours_out_of_control() -> None:
    operating = [i % 2 == 0 for i in range(6)]
    result = statuses(SPEC, "pollutant:so2", _grid(6), HOUR, operating)
    assert _out(result) == [0, 2, 4]
    assert "no daily calibration error test" in result[0].reason


def test_failed_linearity_and_rata_are_out_of_control_until_passed() -> None:
    """App. B §2.2.3 (linearity), §2.3.2 (RATA)."""
    bad = Linearity(1, "boiler", "pollutant:so2", T0 + 5.5 * HOUR, "ppm", (LinearityLevel(100, 110),))
    good = Linearity(2, "boiler", "pollutant:so2", T0 + 9.5 * HOUR, "ppm", (LinearityLevel(100, 101),))
    failed_rata = RataResult.of(_rata([11, 13, 12, 12, 11, 13, 12, 12, 12]))
    failed_rata = RataResult(failed_rata.id, failed_rata.role, T0 + 15 * HOUR, failed_rata.passed, failed_rata.baf)
    result = statuses(
        SPEC,
        "pollutant:so2",
        _grid(20),
        HOUR,
        [True] * 20,
        linearity=[good, bad],
        ratas=[failed_rata],
        daily_required=False,
    )
    assert _out(result) == [5, 6, 7, 8, *range(15, 20)]
    assert "linearity check #1 failed" in result[5].reason
    assert "RATA #1 failed" in result[15].reason


def test_bias_adjustment_factor_applies_from_the_hour_after_the_rata() -> None:
    """App. A §7.6.5: BAF from the RATA on, until the next RATA; only where it applies (SO2, NOx, flow)."""
    first = RataResult(1, "pollutant:so2", T0 + 3.5 * HOUR, True, 1.053)
    second = RataResult(2, "pollutant:so2", T0 + 7.2 * HOUR, True, 1.0)
    result = statuses(
        SPEC,
        "pollutant:so2",
        _grid(10),
        HOUR,
        [True] * 10,
        ratas=[second, first],
        daily_required=False,
        baf_applies=True,
    )
    assert [s.baf for s in result] == [1.0] * 4 + [1.053] * 4 + [1.0] * 2
    assert [s.rata_id for s in result] == [None] * 4 + [1] * 4 + [2] * 2
    unadjusted = statuses(SPEC, "pollutant:so2", _grid(10), HOUR, [True] * 10, ratas=[first], daily_required=False)
    assert all(s.baf == 1.0 for s in unadjusted)


def test_tests_of_other_channels_do_not_count() -> None:
    result = statuses(SPEC, "pollutant:so2", _grid(3), HOUR, [True] * 3, daily=[_daily(0.1, role="pollutant:nox")])
    assert _out(result) == [0, 1, 2]


def test_baf_applies_to_so2_nox_and_flow_only() -> None:
    assert SPEC.baf_applies("flow", None)
    assert SPEC.baf_applies("pollutant:so2", "so2")
    assert SPEC.baf_applies("pollutant:nox", "nox")
    assert not SPEC.baf_applies("pollutant:co", "co")
    assert not SPEC.baf_applies("co2", "co2")
    assert not Part75Spec(spans=(), bias_adjustment=False).baf_applies("flow", None)


# -- the log, the CLI and the report, end to end on a real SQLite store ---------------------------------------

MAY_1 = datetime(2024, 5, 1, tzinfo=UTC)
P75_SITE = "p75-site"
P75_CONFIG = """[gateway]
state = "state.sqlite"
[store]
url = "sqlite://aua.sqlite"
[rollup.reports]
directory = "reports"
[[source]]
id = "unit1"
site = "p75-site"
time_zone = "UTC"
rule_set = "part75"
flow = { instrument = "u1-flow", parameter = "flow", unit = "Nm3/h" }
[[source.pollutant]]
instrument = "u1-gas"
parameter = "so2"
name = "SO2"
unit = "mg/m3"
[source.part75]
span = { so2 = 500 }
"""


def _write_config(folder: Path, text: str = P75_CONFIG) -> Path:
    path = folder / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_log_is_append_only_and_refuses_bad_entries_naming_the_field(tmp_path: Path) -> None:
    log = Part75Log(tmp_path / "state.sqlite")
    now = MAY_1 + 48 * HOUR
    test = log.add_daily(
        "unit1", "pollutant:so2", at=MAY_1, span=500, unit="ppm", zero=(0, 1), high=(250, 255), by="kim", why="D-1",
        now=now,
    )  # fmt: skip
    for call, message in (
        (lambda: log.add_daily("unit1", "pollutant:so2", at=MAY_1, span=0, unit="ppm", zero=(0, 1), high=(250, 255),
                               by="kim", why="x", now=now), "span: must be > 0"),
        (lambda: log.add_daily("unit1", "pollutant:so2", at=MAY_1, span=500, unit="ppm", zero=(0, float("inf")),
                               high=(250, 255), by="kim", why="x", now=now), "zero response"),
        (lambda: log.add_daily("unit1", "pollutant:so2", at=now + 2 * HOUR, span=500, unit="ppm", zero=(0, 1),
                               high=(250, 255), by="kim", why="x", now=now), "in the future"),
        (lambda: log.add_daily("unit1", "pollutant:so2", at=MAY_1, span=500, unit="ppm", zero=(0, 1), high=(250, 255),
                               by=" ", why="x", now=now), "by:"),
        (lambda: log.add_linearity("unit1", "pollutant:so2", at=MAY_1, unit="ppm", levels=[(1, 1)] * 4, by="kim",
                                   why="x", now=now), "1 to 3 levels"),
        (lambda: log.add_rata("unit1", "pollutant:so2", at=MAY_1, runs=[(100, 95)] * 8, by="kim", why="x", now=now),
         "9 to 12 runs"),
    ):  # fmt: skip
        with pytest.raises(Part75LogError, match=message):
            call()
    log.close()
    db = sqlite3.connect(tmp_path / "state.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="never changed"):
        db.execute("UPDATE part75_test SET by = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        db.execute("DELETE FROM part75_test")
    db.close()
    log = Part75Log(tmp_path / "state.sqlite")
    assert log.tests("unit1") == Part75Tests(daily=(test,))
    assert log.tests("unit1", start=MAY_1 + HOUR) == Part75Tests()
    log.close()


def _readings() -> list[StoredReading]:
    rows = []
    for minute in range(24 * 60):
        ts = MAY_1 + timedelta(minutes=minute)
        rows.append(StoredReading(P75_SITE, "u1", "u1-gas", "so2", ts, 100.0, "mg/m3", Quality.OK))
        rows.append(StoredReading(P75_SITE, "u1", "u1-flow", "flow", ts, 500_000.0, "Nm3/h", Quality.OK))
    return rows


async def test_report_substitutes_out_of_control_hours_and_applies_the_baf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1 May 2024, SO2 100 mg/m³ and flow 500,000 Nm³/h every minute (50 kg SO2 an hour); the unit is off from
    2 May (operator's log). Daily tests: passed 00:10, failed 06:20 (upscale 280 of 250 on a 500 span: 6 % > 5 %,
    40 CFR 75 App. B §2.1.4), passed 09:05: hours 06-08 are out of control and substituted (§75.24). A RATA at
    12:30 with d̄ = 5, cc = 0.5435 on RM̄ 100 gives BAF 1.053 (App. A Eq. A-12) from 13:00: measured SO2
    = 10 hours × 50 kg + 11 hours × 50 × 1.053 kg."""
    path = _write_config(tmp_path)
    common = ["--channel", "so2", "--by", "kim", "--why", "sheet"]
    at = "2024-05-01T"
    cli = [
        ["cal-test", "add", str(path), "unit1", *common, "--at", at + "00:10", "--zero", "0:0.5", "--high", "250:252"],
        ["cal-test", "add", str(path), "unit1", *common, "--at", at + "06:20", "--zero", "0:0.5", "--high", "250:280"],
        ["cal-test", "add", str(path), "unit1", *common, "--at", at + "09:05", "--zero", "0:0.5", "--high", "250:251"],
        ["cal-test", "linearity", str(path), "unit1", *common, "--at", at + "15:00",
         "--level", "100:101", "--level", "250:252", "--level", "400:405"],
        ["cal-test", "rata", str(path), "unit1", *common, "--at", at + "12:30",
         *[arg for d in (4, 6, 5, 5, 4, 6, 5, 5, 5) for arg in ("--run", f"100:{100 - d}")]],
        ["operating-state", "log", str(path), "unit1", "--state", "off", "--from", "2024-05-02T00:00",
         "--to", "2024-06-01T00:00", "--by", "kim", "--why", "outage"],
    ]  # fmt: skip
    for argv in cli:
        assert gateway_main(argv) == 0, argv
    capsys.readouterr()
    assert gateway_main(["cal-test", "list", str(path), "unit1"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[0] for line in listed] == ["#1", "#2", "#3", "#5", "#4"]  # in time order
    assert "FAIL (out of control)" in listed[1]
    assert "upscale 6.00 % of span" in listed[1]
    assert "BAF 1.053" in listed[3]
    assert "by kim" in listed[0]
    assert gateway_main(["cal-test", "add", str(path), "unit1", *common, "--channel", "nox", "--at", at + "01:00",
                         "--zero", "0:0", "--high", "1:1"]) == 1  # fmt: skip
    assert "has no such channel" in capsys.readouterr().err

    config = load_gateway_config(path)
    async with open_store(config.store.url) as store:
        await store.write(_readings())
        engine = RollupEngine.from_config(config, store)
        await engine.recompute(MAY_1, MAY_1 + 24 * HOUR)
        engine.close()
        produced = await produce_report(
            config, store, "unit1", year=2024, month=5, now=datetime(2024, 6, 2, tzinfo=UTC)
        )
        raw = await store.query(site=P75_SITE, parameter="so2", start=MAY_1 + 13 * HOUR, end=MAY_1 + 14 * HOUR)
    assert {r.value for r in raw} == {100.0}  # raw readings stay as measured
    report = produced.report
    section = report.part75
    assert section is not None
    [so2] = section.channels
    assert (so2.channel, so2.span, so2.operating_periods, so2.out_of_control_periods) == ("SO2", 500.0, 24, 3)
    assert (so2.grace_periods, so2.baf_periods, so2.baf_values) == (0, 11, [1.053])
    assert [(t.id, t.result) for t in section.daily] == [(1, "pass"), (2, "fail"), (3, "pass")]
    assert section.daily[1].high_error == pytest.approx(6.0)
    assert [(t.id, t.result) for t in section.linearity] == [(4, "pass")]
    [rata] = section.ratas
    assert (rata.id, rata.baf, rata.bias_failed, rata.result) == (5, 1.053, True, "pass")
    [run] = section.out_of_control
    assert (run.start_utc, run.end_utc, run.periods) == (MAY_1 + 6 * HOUR, MAY_1 + 9 * HOUR, 3)
    assert "#2 failed" in run.reason

    total = next(t for t in report.totals if t.name == "SO2")
    assert total.measured_t == pytest.approx((10 * 50.0 + 11 * 50.0 * 1.053) / 1000)
    assert total.substituted_periods == 3
    assert total.non_operating_periods == 30 * 24
    assert any("3 operating periods out of control under 40 CFR Part 75" in w for w in report.warnings)
    assert any("daily calibration error test #2 failed" in w for w in report.warnings)
    assert report.reproducibility is not None
    assert report.reproducibility.matches  # the raw recomputation applies the same tests

    column = produced.hourly_header.index("SO2 [mg/m3]")
    assert produced.hourly_rows[13][column] == pytest.approx(105.3)
    assert produced.hourly_rows[12][column] == pytest.approx(100.0)

    paths = write_report_files(produced, tmp_path / "out")
    with (tmp_path / "out" / "unit1-2024-05-part75-daily.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["id"], r["result"], r["by"]) for r in rows] == [
        ("1", "pass", "kim"),
        ("2", "fail", "kim"),
        ("3", "pass", "kim"),
    ]
    assert any(p.name == "unit1-2024-05-part75-out-of-control.csv" for p in paths)
    assert "Part75-daily" in load_workbook(tmp_path / "out" / "unit1-2024-05.xlsx", read_only=True).sheetnames


def test_part75_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match=r"part75\.span\.nox: no such channel"):
        load_gateway_config(_write_config(tmp_path, P75_CONFIG.replace("so2 = 500", "so2 = 500, nox = 300")))
    with pytest.raises(GatewayConfigError, match=r"part75\.span\.so2: the channel's rule set is 'ied-lcp'"):
        load_gateway_config(_write_config(tmp_path, P75_CONFIG.replace('rule_set = "part75"\n', "")))
    with pytest.raises(GatewayConfigError, match=r"span"):
        load_gateway_config(_write_config(tmp_path, P75_CONFIG.replace("so2 = 500", "so2 = -1")))


@pytest.mark.parametrize(
    ("tests", "now_hours", "firing", "since_hours", "words"),
    [
        ([], 1.0, True, None, "no daily calibration error test"),
        ([(0.5, True)], 26.9, False, None, "valid until 2024-05-02T03:00Z"),  # App. B §2.1.5: hours 01 ... 26 after 00
        ([(0.5, True)], 27.0, True, 27.0, "ran out at 2024-05-02T03:00Z"),
        ([(0.5, True), (5.2, False)], 6.0, True, 5.2, "failed"),
        ([(0.5, True), (5.2, False), (7.1, True)], 8.0, False, None, "#3 passed"),
        ([(0.5, True), (9.0, False)], 8.0, False, None, "#1 passed"),  # a test after `now` does not count yet
    ],
)
def test_daily_calibration_due_for_alerts(
    tests: list[tuple[float, bool]], now_hours: float, firing: bool, since_hours: float | None, words: str
) -> None:
    """40 CFR 75 App. B §2.1.4 (failed: out of control) and §2.1.5 (26 clock hours after the test's hour)."""
    daily = [_daily(hours, passed=ok, test_id=n, base=MAY_1) for n, (hours, ok) in enumerate(tests, start=1)]
    result = daily_calibration_due(SPEC, "pollutant:so2", daily, MAY_1 + now_hours * HOUR)
    assert result[0] is firing
    assert result[1] == (None if since_hours is None else MAY_1 + since_hours * HOUR)
    assert words in result[2]


ALERTS = '[alerts]\ntimezone = "UTC"\ndata_rules = false\n'


async def test_a_failed_or_overdue_daily_test_raises_an_alert_and_a_pass_resolves_it(tmp_path: Path) -> None:
    """The gateway's QA task hands Part 75 findings to the alert engine (rule qa-part75-calibration)."""
    config = load_gateway_config(_write_config(tmp_path, ALERTS + P75_CONFIG))
    clock = [MAY_1 + 2 * HOUR]
    engine = AlertEngine.from_config(config, notifiers=[])
    key = AlertKey("qa-part75-calibration", P75_SITE, "", "unit1", "so2")
    async with open_store(config.store.url) as store:
        qa = QaAlerts(config, store, engine, now=lambda: clock[0])
        assert QaAlerts.needed(config)
        [finding] = await qa.tick()
        assert finding.firing
        state = engine.state_of(key)
        assert state is not None
        assert state.phase is Phase.FIRING
        assert "no daily calibration error test" in state.detail

        log = Part75Log(config.gateway.state)
        log.add_daily("unit1", "pollutant:so2", at=MAY_1 + 2.5 * HOUR, span=500, unit="mg/m3", zero=(0, 1),
                      high=(250, 252), by="kim", why="D-1", now=clock[0] + HOUR)  # fmt: skip
        clock[0] = MAY_1 + 3 * HOUR
        await qa.tick()
        state = engine.state_of(key)
        assert state is not None
        assert state.phase is Phase.RESOLVED

        clock[0] = MAY_1 + 29 * HOUR  # 26 clock hours after 02:00 ran out at 05:00 the next day
        await qa.tick()
        state = engine.state_of(key)
        assert state is not None
        assert state.phase is Phase.FIRING
        assert state.since == MAY_1 + 29 * HOUR
        assert "ran out at 2024-05-02T05:00Z" in state.detail

        log.add_daily("unit1", "pollutant:so2", at=MAY_1 + 29.2 * HOUR, span=500, unit="mg/m3", zero=(0, 1),
                      high=(250, 290), by="kim", why="D-2", now=clock[0] + HOUR)  # fmt: skip
        log.close()
        clock[0] = MAY_1 + 30 * HOUR
        await qa.tick()
        state = engine.state_of(key)
        assert state is not None
        assert state.phase is Phase.FIRING
        assert "failed" in state.detail
    engine.close()
    notices = sqlite3.connect(tmp_path / "state.sqlite").execute("SELECT kind FROM alert_notice ORDER BY id").fetchall()
    assert [kind for (kind,) in notices] == ["firing", "resolved", "firing"]


def test_the_documented_example_is_valid() -> None:
    """docs/mrv-limits.md's [source.part75] example loads with its values."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "mrv-limits.md").read_text(encoding="utf-8")
    block = text[text.index("[source.part75]\n") :]
    block = block[: block.index("```")]
    table = tomllib.loads(block)["source"]["part75"]
    spec = Part75Config.model_validate(table).spec()
    assert spec == Part75Spec(spans=(("pollutant:nox", 300.0), ("pollutant:so2", 500.0)))


async def test_part75_substitution_looks_back_at_quality_assured_hours_only(tmp_path: Path) -> None:
    """§75.33 substitution (40 CFR 75) with the hours before the period: SO2 100 mg/m³ from 26 April 20:00 UTC, but
    900 from 30 April 12:00, after a daily test that failed at 12:10 (out of control until the pass at 1 May
    00:10, App. B §2.1.4); 1 May 00:00 is missing. Those 900s are not quality-assured, so the gap runs from 30 April
    12:00 (13 hours, PMA 100 %): its substitute is the average of the hours around it, 100 and 100 = 100. Taking
    the 900 of 23:00 as the hour before would give (900 + 100) / 2 = 500."""
    text = P75_CONFIG.replace('rule_set = "part75"\n', 'rule_set = "part75"\nsubstitution = "part75"\n')
    text = text.replace('unit = "Nm3/h" }', 'unit = "Nm3/h", max_potential = 900000 }')
    text = text.replace('unit = "mg/m3"\n', 'unit = "mg/m3"\nmax_potential = 2000\n')
    path = _write_config(tmp_path, text)
    first = MAY_1 - timedelta(hours=100)
    rows = []
    for minute in range(124 * 60):
        ts = first + timedelta(minutes=minute)
        rows.append(StoredReading(P75_SITE, "u1", "u1-flow", "flow", ts, 500_000.0, "Nm3/h", Quality.OK))
        if not MAY_1 <= ts < MAY_1 + HOUR:
            value = 900.0 if MAY_1 - 12 * HOUR <= ts < MAY_1 else 100.0
            rows.append(StoredReading(P75_SITE, "u1", "u1-gas", "so2", ts, value, "mg/m3", Quality.OK))
    log = Part75Log(tmp_path / "state.sqlite")
    for hours, high in ((-100.5, 251.0), (-76.0, 251.0), (-52.0, 251.0), (-28.0, 251.0), (-11.8, 290.0), (0.2, 251.0)):
        log.add_daily("unit1", "pollutant:so2", at=MAY_1 + hours * HOUR, span=500, unit="mg/m3", zero=(0, 0.5),
                      high=(250, high), by="kim", why="daily", now=MAY_1 + 48 * HOUR)  # fmt: skip
    log.close()
    config = load_gateway_config(path)
    async with open_store(config.store.url) as store:
        await store.write(rows)
        engine = RollupEngine.from_config(config, store)
        await engine.recompute(first, MAY_1 + 24 * HOUR)
        engine.close()
        produced = await produce_report(
            config, store, "unit1", year=2024, month=5, now=datetime(2024, 6, 2, tzinfo=UTC), check_raw=False
        )
    [run] = [r for r in produced.report.substituted if r.name == "SO2" and r.start_utc == MAY_1]
    assert run.periods == 1
    assert run.value == pytest.approx(100.0)
    assert "gap 13 h" in run.method
    assert "average of the hour before and the hour after" in run.method
