"""Due dates of linearity checks and RATAs under 40 CFR 75 App. B §2.2-2.3 (gateway.mrv.part75.due_timeline),
the low-emitter alternative RATA specifications (App. A §3.3, App. B Figure 2), table-driven against hand-worked
calendars, each row citing its clause."""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from aua_contract import Quality
from gateway.alerts.engine import AlertEngine
from gateway.alerts.state import AlertKey, Phase
from gateway.config import GatewayConfigError, load_gateway_config
from gateway.mrv.config import part75_spec
from gateway.mrv.part75 import (
    DueDate,
    DueKind,
    Linearity,
    LinearityLevel,
    Part75Spec,
    Part75Tests,
    PassedTest,
    Rata,
    RataAlternative,
    channel_statuses,
    default_alternative,
    due_finding,
    due_timeline,
    rata_outcome,
)
from gateway.mrv.part75_log import Part75Log
from gateway.mrv.qa_alerts import QaAlerts
from gateway.mrv.report_files import write_report_files
from gateway.mrv.report_production import produce_report
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import StoredReading, open_store

HOUR = timedelta(hours=1)
SPEC = Part75Spec(spans=())
ROLE = "pollutant:so2"
JAN_1 = datetime(2024, 1, 1, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def grid(start: datetime, end: datetime) -> list[datetime]:
    return [start + i * HOUR for i in range(int((end - start) / HOUR))]


def always(_: datetime) -> bool:
    return True


def off_in_q2(moment: datetime) -> bool:
    return not utc(2024, 4, 1) <= moment < utc(2024, 7, 1)


def first_hours_of_quarter(hours: int) -> Callable[[datetime], bool]:
    """Operating only in the first `hours` hours of each calendar quarter (UTC): never a QA operating quarter when
    hours < 168."""

    def on(moment: datetime) -> bool:
        quarter = datetime(moment.year, 3 * ((moment.month - 1) // 3) + 1, 1, tzinfo=UTC)
        return moment - quarter < hours * HOUR

    return on


def run(
    kind: DueKind,
    tests: list[PassedTest],
    end: datetime,
    on: Callable[[datetime], bool] = always,
    *,
    spec: Part75Spec = SPEC,
    start: datetime = JAN_1,
    zone: ZoneInfo | None = None,
) -> tuple[list[datetime], list[datetime], list[DueDate]]:
    """(grace periods, past-due periods, due dates) over the hourly grid [start, end)."""
    starts = grid(start, end)
    periods, dates = due_timeline(
        spec, kind, ROLE, tests, starts=starts, step=HOUR, operating=[on(s) for s in starts], zone=zone or UTC
    )
    grace = [s for s, p in zip(starts, periods, strict=True) if p.grace]
    past = [s for s, p in zip(starts, periods, strict=True) if p.past_due]
    return grace, past, dates


@pytest.mark.parametrize(
    ("tests", "on", "end", "grace", "past_due_from", "clause"),
    [
        (
            [PassedTest(1, utc(2024, 1, 15, 10))],
            always,
            utc(2024, 9, 1),
            (utc(2024, 7, 1), utc(2024, 7, 7, 23), 168),
            utc(2024, 7, 8),
            "§2.2.1: due in the next QA operating quarter (Q2); §2.2.4: 168 operating hours of grace after it",
        ),
        (
            [PassedTest(1, utc(2024, 1, 15, 10)), PassedTest(2, utc(2024, 5, 10, 9))],
            always,
            utc(2024, 9, 1),
            None,
            None,
            "§2.2.1: done in its quarter: the next is due in Q3, whose end is after the grid",
        ),
        (
            [PassedTest(1, utc(2024, 1, 15, 10)), PassedTest(2, utc(2024, 7, 3, 2, 30))],
            always,
            utc(2024, 12, 1),
            (utc(2024, 7, 1), utc(2024, 10, 7, 23), 50 + 168),
            utc(2024, 10, 8),
            "§2.2.4: a check in the grace meets Q2 only; Q3 needs its own, then grace and past due",
        ),
        (
            [PassedTest(1, utc(2024, 1, 15, 10))],
            off_in_q2,
            utc(2024, 12, 1),
            (utc(2024, 10, 1), utc(2024, 10, 7, 23), 168),
            utc(2024, 10, 8),
            "§2.2.1: Q2 without operating hours is no QA operating quarter: due in Q3 instead",
        ),
        (
            [PassedTest(1, utc(2024, 1, 15, 10))],
            first_hours_of_quarter(100),
            utc(2025, 8, 1),
            (utc(2025, 4, 1), utc(2025, 7, 3, 19), 168),
            utc(2025, 7, 3, 20),
            "§2.2.1: no QA operating quarter for four quarters: due in the 4th (2025-Q1) anyway; the grace counts "
            "operating hours only (100 in Q2, 68 in Q3)",
        ),
    ],
)
def test_linearity_due_dates(  # noqa: PLR0917 - one argument per table column
    tests: list[PassedTest],
    on: Callable[[datetime], bool],
    end: datetime,
    grace: tuple[datetime, datetime, int] | None,
    past_due_from: datetime | None,
    clause: str,
) -> None:
    """40 CFR 75 App. B §2.2 (`clause`)."""
    grace_periods, past, dates = run(DueKind.LINEARITY, tests, end, on)
    if grace is None:
        assert grace_periods == []
    else:
        assert (grace_periods[0], grace_periods[-1], len(grace_periods)) == grace
    assert (past[0] if past else None) == past_due_from
    if past_due_from is not None:
        assert past[-1] == end - HOUR or not on(end - HOUR)  # out of control until a check passes
        assert dates[-1].past_due_from == past_due_from
        assert dates[-1].met_by is None


def test_a_linearity_check_in_the_grace_meets_the_quarter_it_was_due_in() -> None:
    """App. B §2.2.4: the due dates say which check met which quarter, and how much grace it used."""
    tests = [PassedTest(1, utc(2024, 1, 15, 10)), PassedTest(2, utc(2024, 7, 3, 2, 30))]
    _, _, dates = run(DueKind.LINEARITY, tests, utc(2024, 12, 1))
    first, second = dates
    assert (first.basis_id, first.due_quarter, first.due_by, first.met_by) == (1, "2024-Q2", utc(2024, 7, 1), 2)
    assert first.grace_used == 50  # 1 July 00:00 to 3 July 01:00, the hour before the check's
    assert first.past_due_from is None
    assert (second.basis_id, second.due_quarter, second.past_due_from) == (2, "2024-Q3", utc(2024, 10, 8))
    assert not second.projected


def test_an_open_due_date_is_the_end_of_the_earliest_quarter_it_can_come_due_in() -> None:
    """App. B §2.3.1: an annual RATA of January is due after four QA operating quarters: 2025-Q1 at the earliest."""
    _, past, dates = run(DueKind.RATA, [PassedTest(7, utc(2024, 1, 20, 12), annual=True)], utc(2024, 12, 1))
    assert past == []
    [date] = dates
    assert (date.frequency, date.due_quarter, date.due_by, date.projected) == (
        "annual",
        "2025-Q1",
        utc(2025, 4, 1),
        True,
    )


@pytest.mark.parametrize(
    ("tests", "on", "spec", "start", "end", "past_due_from", "clause"),
    [
        (
            [PassedTest(1, utc(2024, 1, 20, 12))],
            always,
            SPEC,
            utc(2024, 1, 1),
            utc(2024, 12, 1),
            utc(2024, 10, 31),
            "§2.3.1: semiannual: due after two QA operating quarters (Q2, Q3); §2.3.3: 720 operating hours of grace",
        ),
        (
            [PassedTest(1, utc(2024, 1, 20, 12), annual=True)],
            off_in_q2,
            SPEC,
            utc(2024, 1, 1),
            utc(2025, 8, 15),
            utc(2025, 7, 31),
            "Figure 2: annual: four QA operating quarters; Q2 not operating does not count: Q3, Q4, 2025-Q1, Q2",
        ),
        (
            [PassedTest(1, utc(2023, 1, 10, 12), annual=True)],
            always,
            SPEC,
            utc(2024, 1, 1),
            utc(2024, 12, 1),
            utc(2024, 5, 1),
            "strict reading before the grid: 2023-Q2..Q4 taken as QA operating, 2024-Q1 the fourth",
        ),
        (
            [PassedTest(1, utc(2024, 1, 10, 12))],
            first_hours_of_quarter(50),
            Part75Spec(spans=(), rata_max_quarters=3, rata_grace_hours=0),
            utc(2024, 1, 1),
            utc(2025, 2, 1),
            utc(2025, 1, 1),
            "§2.3.1.1: no QA operating quarter: due in the capped quarter anyway (3 here, config), no grace (config)",
        ),
        (
            [PassedTest(1, utc(2024, 1, 20, 12)), PassedTest(2, utc(2024, 10, 25, 8))],
            always,
            SPEC,
            utc(2024, 1, 1),
            utc(2024, 12, 1),
            None,
            "§2.3.3: a RATA within the 720-hour grace is in time",
        ),
    ],
)
def test_rata_due_dates(  # noqa: PLR0917 - one argument per table column
    tests: list[PassedTest],
    on: Callable[[datetime], bool],
    spec: Part75Spec,
    start: datetime,
    end: datetime,
    past_due_from: datetime | None,
    clause: str,
) -> None:
    """40 CFR 75 App. B §2.3 (`clause`)."""
    _, past, dates = run(DueKind.RATA, tests, end, on, spec=spec, start=start)
    assert (past[0] if past else None) == past_due_from
    assert dates[0].basis_id == 1


def test_quarters_follow_the_units_time_zone() -> None:
    """Calendar quarters in the source's zone: Q2 of a Chicago unit ends at 05:00 UTC (CDT)."""
    grace, past, _ = run(
        DueKind.LINEARITY, [PassedTest(1, utc(2024, 1, 15, 10))], utc(2024, 9, 1), zone=ZoneInfo("America/Chicago")
    )
    assert grace[0] == utc(2024, 7, 1, 5)
    assert past[0] == utc(2024, 7, 8, 5)


def _rata(differences: list[float], reference: float) -> Rata:
    """A RATA of nine runs with the reference method at `reference` and the CEM `difference` below it."""
    return Rata(1, "unit1", ROLE, utc(2024, 1, 20), tuple((reference, reference - d) for d in differences))


@pytest.mark.parametrize(
    ("differences", "reference", "alternative", "passed", "annual", "words", "clause"),
    [
        ([1.0] * 4 + [1.2] * 5, 200.0, None, True, True, "annual", "Figure 2: RA ≤ 7.5 %"),
        ([16.0] * 4 + [17.0] * 5, 200.0, None, True, False, "semiannual", "App. A §3.3: 7.5 % < RA ≤ 10 %"),
        ([20.0] * 4 + [22.0] * 5, 200.0, None, False, False, "RA", "App. A §3.3: RA > 10 %"),
        ([11.0] * 4 + [12.0] * 5, 100.0, "ppm", True, True, "|d̄| 11.5", "App. A §3.3: low emitter, |d̄| ≤ 12 ppm"),
        ([13.0] * 4 + [14.0] * 5, 100.0, "ppm", True, False, "≤ 15", "App. A §3.3: low emitter, |d̄| ≤ 15 ppm"),
        ([16.0] * 4 + [17.0] * 5, 100.0, "ppm", False, False, "> 15", "App. A §3.3: |d̄| 16.6 > 15 ppm"),
        ([27.0] * 4 + [28.0] * 5, 260.0, "ppm", False, False, "RA", "App. A §3.3: reference mean 260 > 250 ppm"),
        ([11.0] * 4 + [12.0] * 5, 100.0, "mg/m3", False, False, "RA", "the ppm alternative needs ppm"),
    ],
)
def test_rata_outcome_and_the_low_emitter_alternative(  # noqa: PLR0917 - one argument per table column
    differences: list[float],
    reference: float,
    alternative: str | None,
    passed: bool,
    annual: bool,
    words: str,
    clause: str,
) -> None:
    rata = _rata(differences, reference)
    outcome = rata_outcome(rata, default_alternative(ROLE, alternative) if alternative else None)
    assert (outcome.passed, outcome.annual) == (passed, annual), outcome.criterion
    assert words in outcome.criterion


@pytest.mark.parametrize(
    ("role", "unit", "expected"),
    [
        ("pollutant:so2", "ppm", (15.0, 12.0, 250.0)),
        ("pollutant:nox", "ppm", (15.0, 12.0, 250.0)),
        ("pollutant:nox", "lb/mmBtu", (0.020, 0.015, 0.200)),
        ("o2", "%", (1.0, 0.7, None)),
        ("co2", "%vol", (1.0, 0.7, None)),
        ("flow", "scfh", None),
        ("pollutant:so2", "mg/m3", None),
        ("pollutant:hg", "ppm", None),
    ],
)
def test_default_alternatives(role: str, unit: str, expected: tuple[float, float, float | None] | None) -> None:
    """App. A §3.3 / App. B Figure 2 defaults by channel and unit; flow's low-velocity one is configuration."""
    found = default_alternative(role, unit)
    assert (None if found is None else (found.semiannual, found.annual, found.mean_at_most)) == expected


def test_alternative_refuses_an_annual_bound_above_the_semiannual() -> None:
    with pytest.raises(ValueError, match="annual"):
        RataAlternative(semiannual=1.0, annual=2.0)


def test_a_past_due_rata_leaves_the_channel_out_of_control_until_a_passing_one() -> None:
    """App. B §2.3.3 with channel_statuses: past due from 31 October (Q3 + 720 operating hours), in control again
    from the hour of the RATA of 20 November; the RATA's low-emitter pass counts (App. A §3.3)."""
    spec = Part75Spec(spans=(), alternatives=((ROLE, RataAlternative(15.0, 12.0, 250.0)),))
    starts = grid(utc(2024, 1, 1), utc(2024, 12, 1))
    late = Rata(2, "unit1", ROLE, utc(2024, 11, 20, 9), tuple((100.0, 100.0 - d) for d in [13.0] * 4 + [14.0] * 5))
    assert not late.passed  # RA above 10 %, but |d̄| 13.6 ≤ 15 ppm
    tests = Part75Tests(ratas=(_rata([16.0] * 4 + [17.0] * 5, 200.0), late))  # RA 8.5 %: semiannual
    statuses = channel_statuses(spec, tests, [(ROLE, "so2")], starts=starts, step=HOUR, operating=[True] * len(starts))[
        ROLE
    ]
    out = [s for s, status in zip(starts, statuses, strict=True) if not status.in_control]
    assert (out[0], out[-1]) == (utc(2024, 10, 31), utc(2024, 11, 20, 8))
    assert "RATA past due: due in 2024-Q3" in statuses[starts.index(out[0])].reason
    assert sum(s.due_grace for s in statuses) == 720


P75_SITE = "p75-due-site"
CONFIG = """[gateway]
state = "state.sqlite"
[store]
url = "sqlite://aua.sqlite"
[[source]]
id = "unit1"
site = "p75-due-site"
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


async def test_the_report_lists_due_dates_and_substitutes_past_due_hours(tmp_path: Path) -> None:
    """July 2024 report; the last linearity check passed 15 January. Before the report every quarter is taken as a
    QA operating quarter (the strict reading), so the check was due in Q2 and its 168 operating hours of grace ran
    from 1 July (App. B §2.2.4): past due from 8 July 00:00 until the check of 8 July 12:20 (12 operating hours,
    substituted); that check is due again in Q4 at the earliest."""
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    config = load_gateway_config(path)
    log = Part75Log(config.gateway.state)
    levels = [(100.0, 101.0), (250.0, 252.0), (400.0, 405.0)]
    log.add_linearity("unit1", ROLE, at=utc(2024, 1, 15, 10), unit="mg/m3", levels=levels, by="kim", why="Q1",
                      now=utc(2024, 1, 15, 11))  # fmt: skip
    log.add_linearity("unit1", ROLE, at=utc(2024, 7, 8, 12, 20), unit="mg/m3", levels=levels, by="kim", why="Q3",
                      now=utc(2024, 7, 8, 13))  # fmt: skip
    log.close()
    readings = [
        StoredReading(P75_SITE, "u1", instrument, parameter, utc(2024, 7, 8) + timedelta(minutes=m), value, unit,
                      Quality.OK)
        for m in range(24 * 60)
        for instrument, parameter, value, unit in (("u1-gas", "so2", 100.0, "mg/m3"),
                                                   ("u1-flow", "flow", 500_000.0, "Nm3/h"))
    ]  # fmt: skip
    async with open_store(config.store.url) as store:
        await store.write(readings)
        engine = RollupEngine.from_config(config, store)
        await engine.recompute(utc(2024, 7, 8), utc(2024, 7, 9))
        engine.close()
        produced = await produce_report(config, store, "unit1", year=2024, month=7, now=utc(2024, 8, 2))
    section = produced.report.part75
    assert section is not None
    [so2] = section.channels
    assert (so2.due_grace_periods, so2.past_due_periods) == (168, 12)
    first, second = section.due
    assert (first.test, first.after_test, first.due_quarter) == ("linearity", 1, "2024-Q2")
    assert first.status == "past due, then met"
    assert (first.past_due_from_utc, first.met_by, first.grace_used_hours) == (utc(2024, 7, 8), 2, 168)
    assert (second.after_test, second.due_quarter, second.status) == (2, "2024-Q4", "open")
    assert (second.due_by_utc, second.projected) == (utc(2025, 1, 1), True)
    assert any("linearity check past due: due in 2024-Q2 after #1" in r.reason for r in section.out_of_control)
    assert any("due in 2024-Q2 (after #1): past due from 2024-07-08T00:00+00:00 until #2" in w
               for w in produced.report.warnings)  # fmt: skip
    assert "A linearity check is due in each QA operating quarter" in section.rules
    paths = write_report_files(produced, tmp_path / "out")
    with (tmp_path / "out" / "unit1-2024-07-part75-due.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["after_test"], r["status"]) for r in rows] == [("1", "past due, then met"), ("2", "open")]
    assert any(p.suffix == ".pdf" for p in paths)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("rata_max_quarters = 0", r"part75\.rata_max_quarters"),
        ("linearity_grace_operating_hours = -1", r"part75\.linearity_grace_operating_hours"),
        ("rata_annual_percent = 12", r"part75\.rata_annual_percent"),
        ("due_warning_days = 400", r"part75\.due_warning_days"),
        ("rata_alternative = { nox = { semiannual = 15, annual = 12 } }", r"part75\.rata_alternative\.nox: no such"),
        ("rata_alternative = { so2 = { semiannual = 12, annual = 15 } }", r"rata_alternative.*annual \(15\) must not"),
        ("rata_alternative = { so2 = { semiannual = 15 } }", r"part75\.rata_alternative\.so2\.annual"),
        ("rata_alternative = { so2 = { semiannual = 15, annual = 12, mean = 2 } }", r"rata_alternative\.so2\.mean"),
    ],
)
def test_due_date_config_errors_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG + table + "\n", encoding="utf-8")
    with pytest.raises(GatewayConfigError, match=message):
        load_gateway_config(path)


def test_due_date_config_reaches_the_spec(tmp_path: Path) -> None:
    """Configured alternatives override the defaults picked by unit (SO2 here is in mg/m3: no default)."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        CONFIG
        + "rata_max_quarters = 6\nrata_alternative = { so2 = { semiannual = 40, annual = 30, mean_at_most = 700 } }\n",
        encoding="utf-8",
    )
    spec = part75_spec(load_gateway_config(path).sources[0])
    assert spec is not None
    assert spec.rata_max_quarters == 6
    assert spec.alternative(ROLE) == RataAlternative(40.0, 30.0, 700.0, "[source.part75] rata_alternative")
    assert spec.alternative("flow") is None


def _hours_off(first: datetime, last: datetime) -> dict[datetime, bool]:
    return {first + i * HOUR: False for i in range(int((last - first) / HOUR))}


@pytest.mark.parametrize(
    ("now", "operating", "past_due", "since", "soon", "words", "clause"),
    [
        (utc(2024, 6, 10), {}, False, None, False, "due by 2024-07-01T00:00Z at the earliest", "21 days ahead"),
        (utc(2024, 6, 25), {}, False, None, True, "due by 2024-07-01T00:00Z at the earliest", "within 14 days"),
        (utc(2024, 7, 3, 2, 30), {}, False, None, True, "grace period, 51 of 168", "§2.2.4: in the grace"),
        (utc(2024, 7, 9), {}, True, utc(2024, 7, 8), False, "past due since 2024-07-08T00:00Z", "§2.2.4: past it"),
        (utc(2024, 7, 9), _hours_off(utc(2024, 7, 1), utc(2024, 7, 10)), False, None, True, "0 of 168",
         "§2.2.4: the grace counts unit operating hours only"),
    ],
)  # fmt: skip
def test_due_finding_for_the_alerts(  # noqa: PLR0917 - one argument per table column
    now: datetime,
    operating: dict[datetime, bool],
    past_due: bool,
    since: datetime | None,
    soon: bool,
    words: str,
    clause: str,
) -> None:
    """A linearity check passed 15 January is due in Q2 (40 CFR 75 App. B §2.2.1); `clause` says the rest."""
    tests = Part75Tests(linearity=(_linearity(1, utc(2024, 1, 15, 10)),))
    found = due_finding(SPEC, tests, ROLE, now, start=utc(2024, 4, 1), operating=operating, zone=UTC,
                        warn_before=timedelta(days=14))  # fmt: skip
    assert found is not None
    assert (found.past_due, found.past_due_since, found.due_soon) == (past_due, since, soon), found.detail
    assert words in found.detail


def test_no_due_finding_without_a_passed_test() -> None:
    failed = _linearity(1, utc(2024, 1, 15, 10), response=150.0)
    assert not failed.passed
    tests = Part75Tests(linearity=(failed,))
    assert due_finding(SPEC, tests, ROLE, utc(2024, 7, 9), start=utc(2024, 4, 1), operating={}, zone=UTC,
                       warn_before=timedelta(days=14)) is None  # fmt: skip


def _linearity(test_id: int, at: datetime, response: float = 101.0) -> Linearity:
    return Linearity(test_id, "unit1", ROLE, at, "mg/m3", (LinearityLevel(100.0, response),))


async def test_past_due_and_due_soon_alerts(tmp_path: Path) -> None:
    """The QA task: a linearity check in its grace period fires qa-part75-due (warning); past the grace it fires
    qa-part75-calibration (critical) while qa-part75-due resolves; a passed check resolves both."""
    path = tmp_path / "gateway.toml"
    path.write_text('[alerts]\ntimezone = "UTC"\ndata_rules = false\n' + CONFIG, encoding="utf-8")
    config = load_gateway_config(path)
    log = Part75Log(config.gateway.state)
    levels = [(100.0, 101.0), (250.0, 252.0), (400.0, 405.0)]
    log.add_linearity("unit1", ROLE, at=utc(2024, 1, 15, 10), unit="mg/m3", levels=levels, by="kim", why="Q1",
                      now=utc(2024, 1, 15, 11))  # fmt: skip
    clock = [utc(2024, 7, 3, 2, 30)]
    engine = AlertEngine.from_config(config, notifiers=[])
    due_key = AlertKey("qa-part75-due", P75_SITE, "", "unit1", "so2")
    calibration_key = AlertKey("qa-part75-calibration", P75_SITE, "", "unit1", "so2")
    async with open_store(config.store.url) as store:
        qa = QaAlerts(config, store, engine, now=lambda: clock[0])
        phases = []
        details = []
        for moment, daily_at in ((utc(2024, 7, 3, 2, 30), utc(2024, 7, 3, 1, 10)),
                                 (utc(2024, 7, 9), utc(2024, 7, 8, 23, 10)),
                                 (utc(2024, 7, 9, 3), utc(2024, 7, 9, 1, 10))):  # fmt: skip
            log.add_daily("unit1", ROLE, at=daily_at, span=500, unit="mg/m3", zero=(0, 1), high=(250, 252), by="kim",
                          why="daily", now=moment)  # fmt: skip
            if moment == utc(2024, 7, 9, 3):
                log.add_linearity("unit1", ROLE, at=utc(2024, 7, 9, 2), unit="mg/m3", levels=levels, by="kim",
                                  why="late", now=moment)  # fmt: skip
            clock[0] = moment
            await qa.tick()
            states = (engine.state_of(due_key), engine.state_of(calibration_key))
            phases.append(tuple(state.phase if state else None for state in states))
            details.append(" | ".join(state.detail if state else "" for state in states))
    log.close()
    engine.close()
    assert phases == [
        (Phase.FIRING, Phase.INACTIVE),
        (Phase.RESOLVED, Phase.FIRING),
        (Phase.RESOLVED, Phase.RESOLVED),
    ]
    assert "grace period, 51 of 168 operating hours used" in details[0]
    assert "linearity check past due since 2024-07-08T00:00Z" in details[1]
