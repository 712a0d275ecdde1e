"""MRV reports end to end on real stores: generated raw data → engine → report → CSV, JSON, XLSX, PDF, feed.

The data are three local days (Asia/Almaty) of 1-minute readings for stack1 of config/pavlodar-chp.toml with a
3-hour analyzer outage, a 30-minute calibration (hour invalid) and a 20-minute one (hour still valid), and SO2
days above the limit, so every total below can be computed by hand (docs/regulatory-basis.md §2, §3, §4, §7).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import re
import statistics
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from pydantic import ValidationError

from aua_contract import Quality
from gateway.cli import main as gateway_main
from gateway.config import GatewayConfig, GatewayConfigError, load_gateway_config
from gateway.mrv.config import RuleResolver, SourceConfig
from gateway.mrv.report import MrvReport, RevisionAudit
from gateway.mrv.report_feed import ReportFeed
from gateway.mrv.report_files import SCHEMA_PATH, write_report_files
from gateway.mrv.report_pdf import find_unicode_font, transliterate
from gateway.mrv.report_production import ProducedReport, ReportError, produce_report
from gateway.mrv.rollup import Period
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import Store, StoredReading, open_store

ROOT = Path(__file__).resolve().parents[3]
ALMATY = ZoneInfo("Asia/Almaty")
MAY_1 = datetime(2024, 5, 1, tzinfo=ALMATY).astimezone(UTC)
HOUR = timedelta(hours=1)
SITE = "pavlodar-chp"

SOURCE = """
[[source]]
id = "stack1"
site = "pavlodar-chp"
name = "Дымовая труба №1"
time_zone = "Asia/Almaty"
monitoring_plan = "MP-PVL-CHP-01"
fuel = "solid"
agent_config = "{agent}"
flow = {{ instrument = "stack1-flow", parameter = "flow", unit = "Nm3/h" }}
o2 = {{ instrument = "stack1-gas", parameter = "o2", unit = "%vol" }}
h2o = {{ instrument = "stack1-gas", parameter = "h2o", unit = "%vol" }}
temperature = {{ instrument = "stack1-flow", parameter = "temperature", unit = "degC" }}
pressure = {{ instrument = "stack1-flow", parameter = "pressure", unit = "kPa" }}
co2 = {{ instrument = "stack1-gas", parameter = "co2", unit = "%vol" }}
[[source.pollutant]]
instrument = "stack1-gas"
parameter = "so2"
name = "SO2"
unit = "mg/m3"
elv = 600
ci_percent = 20
[[source.pollutant]]
instrument = "stack1-dust"
parameter = "dust"
name = "Dust"
unit = "mg/m3"
wet = true
conditions = "actual"
elv = 50
ci_percent = 30
"""


def write_config(folder: Path, store_url: str, *, extra: str = "", source: str = SOURCE) -> Path:
    path = folder / "gateway.toml"
    path.write_text(
        f'[gateway]\nstate = "state.sqlite"\n[store]\nurl = "{store_url}"\n[rollup.reports]\ndirectory = "reports"\n'
        + extra
        + source.format(agent=ROOT / "config" / "pavlodar-chp.toml"),
        encoding="utf-8",
    )
    return path


def stack_readings(days: int = 3) -> list[StoredReading]:
    """1-minute data; local day 1 SO2 400, then 600 mg/m³; calibrations and an outage on the gas analyzer."""
    rows = []
    for m in range(days * 1440):
        ts = MAY_1 + timedelta(minutes=m)
        day, minute_of_day = divmod(m, 1440)
        quality = Quality.OK
        if day == 0 and (600 <= minute_of_day < 630 or 840 <= minute_of_day < 860):  # 10:00 (30 min), 14:00 (20 min)
            quality = Quality.CHECK_FUNCTION
        if not (day == 1 and 300 <= minute_of_day < 480):  # 05:00-08:00 on day 2: no analyzer data
            for parameter, value, unit in (
                ("so2", 400.0 if day == 0 else 600.0, "mg/m3"),
                ("o2", 9.0, "%vol"),
                ("h2o", 10.0, "%vol"),
                ("co2", 10.0, "%vol"),
            ):
                rows.append(StoredReading(SITE, "chp-stack1", "stack1-gas", parameter, ts, value, unit, quality))
        for parameter, value, unit in (
            ("flow", 500_000.0, "Nm3/h"),
            ("temperature", 140.0, "degC"),
            ("pressure", 100.0, "kPa"),
        ):
            rows.append(StoredReading(SITE, "chp-stack1", "stack1-flow", parameter, ts, value, unit, Quality.OK))
        rows.append(StoredReading(SITE, "chp-stack1", "stack1-dust", "dust", ts, 20.0, "mg/m3", Quality.OK))
    return rows


async def load(folder: Path, store_url: str) -> tuple[GatewayConfig, Store, Path]:
    """The config, an open store holding the three days with their rollups, and the config file."""
    path = write_config(folder, store_url)
    config = load_gateway_config(path)
    store = open_store(config.store.url)
    await store.open()
    rows = stack_readings()
    await store.write(rows)
    engine = RollupEngine.from_config(config, store)
    await engine.note_written(rows)
    await engine.process_dirty()
    engine.close()
    return config, store, path


@pytest.fixture(params=["sqlite", "influx"])
async def loaded(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[GatewayConfig, Store, Path]]:
    """Both stores (the contract): SQLite in tmp_path, a database of its own on the real influxd."""
    url = (
        f"sqlite://{tmp_path / 'aua.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("influx_db_url")
    )
    config, store, path = await load(tmp_path, url)
    yield config, store, path
    await store.close()


@pytest.fixture
async def loaded_sqlite(tmp_path: Path) -> AsyncIterator[tuple[GatewayConfig, Store, Path]]:
    """For the tests of files and errors, where the store does not matter."""
    config, store, path = await load(tmp_path, f"sqlite://{tmp_path / 'aua.sqlite'}")
    yield config, store, path
    await store.close()


# -- the numbers (hand-computed) -----------------------------------------------------------------------------

FLOW = 500_000.0
SO2_VALID = [400.0] * 23 + [600.0] * 45  # day 1 loses the 10:00 calibration hour, day 2 the 3-hour outage
SO2_SUBSTITUTE = statistics.mean(SO2_VALID) + 2 * statistics.stdev(SO2_VALID)  # §4 EU MRR Art. 45
MAY_HOURS = 31 * 24
DUST_MG_NM3 = 20.0 * (413.15 / 273.15) * (101.3 / 100.0) / 0.9  # §2: actual → standard, wet → dry


def test_hand_computed_values() -> None:
    assert round(SO2_SUBSTITUTE, 4) == 723.0036
    assert round(DUST_MG_NM3, 4) == 34.0489


async def test_monthly_report_totals_equal_hand_computed_values(loaded: tuple[GatewayConfig, Store, Path]) -> None:
    config, store, _ = loaded
    produced = await produce_report(config, store, "stack1", year=2024, month=5, now=datetime(2024, 6, 2, tzinfo=UTC))
    report = produced.report
    totals = {t.name: t for t in report.totals}
    # §2: kg/h = mg/Nm³ × Nm³/h × 1e-6; t = Σ kg / 1000; §4: 676 missing hours at mean + 2σ, flow σ = 0
    so2_measured = (23 * 400.0 + 45 * 600.0) * FLOW * 1e-6 / 1000
    assert totals["SO2"].measured_t == pytest.approx(so2_measured) == pytest.approx(18.1)
    assert totals["SO2"].substituted_periods == MAY_HOURS - 68
    assert totals["SO2"].total_t == pytest.approx(so2_measured + 676 * SO2_SUBSTITUTE * FLOW * 1e-6 / 1000)
    # §2: CO2 t/h = 10 % / 100 × 500,000 × 1.964 / 1000 = 98.2, every hour (substitutes equal the constant)
    assert totals["CO2"].total_t == pytest.approx(MAY_HOURS * 98.2)
    assert totals["CO2"].kind == "co2"
    assert totals["Dust"].total_t == pytest.approx(MAY_HOURS * DUST_MG_NM3 * FLOW * 1e-6 / 1000)
    assert all(t.complete for t in report.totals)

    availability = {a.name: a for a in report.availability}
    so2 = availability["SO2"]
    assert (so2.expected_periods, so2.valid_periods, so2.maintenance_periods, so2.missing_periods) == (744, 68, 1, 675)
    assert so2.availability_percent == pytest.approx(100 * 68 / 744, abs=1e-4)
    assert so2.invalid_days == 28  # May 4-31 have no data
    assert availability["Flow"].valid_periods == 72
    assert availability["O2"].substituted_periods == 0  # O2 only corrects for limits: never substituted

    # §3: SO2 validated daily = 600 × 15/12 − 20 % × 600 = 630 > 600 on days 2 and 3; day 1: 380
    [limit_so2, limit_dust] = report.limits
    assert (limit_so2.pollutant, limit_so2.valid_periods, limit_so2.max_validated) == ("SO2", 3, pytest.approx(630.0))
    assert limit_dust.max_validated == pytest.approx(DUST_MG_NM3 * 15 / 12 - 15.0)
    [event] = report.exceedances
    assert (event.pollutant, event.averaging, event.duration_hours, event.periods) == ("SO2", "1d", 48.0, 2)
    assert event.start_local == datetime(2024, 5, 2, tzinfo=ALMATY)

    assert [(m.instrument, m.start_local.hour, m.minutes) for m in report.maintenance] == [
        ("stack1-gas", 10, 30),
        ("stack1-gas", 14, 20),
    ]
    so2_runs = [s for s in report.substituted if s.name == "SO2"]
    assert [(r.start_local, r.periods) for r in so2_runs] == [
        (datetime(2024, 5, 1, 10, tzinfo=ALMATY), 1),
        (datetime(2024, 5, 2, 5, tzinfo=ALMATY), 3),
        (datetime(2024, 5, 4, tzinfo=ALMATY), 672),
    ]
    assert all(r.value == pytest.approx(SO2_SUBSTITUTE) and "EU MRR Art. 45" in r.method for r in so2_runs)
    assert so2_runs[0].reason.startswith("30 of 60 minutes valid")

    check = report.reproducibility
    assert check is not None
    assert check.matches
    assert (check.raw_readings, check.periods_differing) == (len(stack_readings()), 0)
    assert check.recomputed_totals_t == {t.name: t.total_t for t in report.totals}
    assert any("> 5 days" in w for w in report.warnings)
    assert any("mass or energy balance" in w for w in report.warnings)
    assert report.period.complete
    assert len(report.config.sha256) == 64
    assert "stack1-gas" in report.config.canonical["agent"]["instruments"]


async def test_report_files_are_written_and_readable(
    loaded_sqlite: tuple[GatewayConfig, Store, Path], tmp_path: Path
) -> None:
    config, store, _ = loaded_sqlite
    produced = await produce_report(config, store, "stack1", year=2024, month=5, now=datetime(2024, 6, 2, tzinfo=UTC))
    paths = write_report_files(produced, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "stack1-2024-05.json",
            "stack1-2024-05.xlsx",
            "stack1-2024-05.pdf",
            *(f"stack1-2024-05-{n}.csv" for n in ("totals", "availability", "limits", "compliance", "exceedances")),
            "stack1-2024-05-substituted.csv",
            "stack1-2024-05-maintenance.csv",
            "stack1-2024-05-revisions.csv",
            "stack1-2024-05-operating.csv",
            "stack1-2024-05-operating-months.csv",
            "stack1-2024-05-calibration.csv",
            "stack1-2024-05-vcr.csv",
            "stack1-2024-05-hourly.csv",
        ]
    )
    document = MrvReport.model_validate_json((tmp_path / "out" / "stack1-2024-05.json").read_text(encoding="utf-8"))
    assert document == produced.report
    assert document.source_name == "Дымовая труба №1"
    with (tmp_path / "out" / "stack1-2024-05-hourly.csv").open(encoding="utf-8") as handle:
        hourly = list(csv.DictReader(handle))
    assert len(hourly) == MAY_HOURS
    so2_kg = [float(row["SO2 mass [kg]"]) for row in hourly]
    assert sum(so2_kg) / 1000 == pytest.approx(produced.report.totals[0].total_t)
    assert hourly[10]["SO2 valid"] == "False"
    assert "EU MRR Art. 45" in hourly[10]["SO2 method"]
    workbook = load_workbook(tmp_path / "out" / "stack1-2024-05.xlsx", read_only=True)
    assert workbook.sheetnames == [
        "Summary", "Totals", "Availability", "Limits", "Compliance", "Exceedances", "Substituted", "Maintenance",
        "Revisions", "Operating", "Operating-months", "Calibration", "Vcr", "Hourly", "Config",
    ]  # fmt: skip
    compliance = list(workbook["Compliance"].iter_rows(values_only=True))
    assert [row[:2] for row in compliance[1:]] == [
        (n, t) for n in ("SO2", "Dust") for t in ("month-mean", "day-mean", "base-share")
    ]
    totals = list(workbook["Totals"].iter_rows(values_only=True))
    assert totals[0][:2] == ("name", "parameter")
    assert totals[1][0] == "SO2"
    workbook.close()
    pdf = (tmp_path / "out" / "stack1-2024-05.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-")
    # scripts/test installs fonts-dejavu-core: the PDF embeds DejaVu for the Cyrillic name
    assert find_unicode_font() is not None
    assert b"DejaVu" in pdf


async def test_revisions_of_the_period_are_in_the_audit_section(loaded: tuple[GatewayConfig, Store, Path]) -> None:
    """Other content sent for stored raw readings of the source (issue 13): counted and listed, the figures
    unchanged while pending; an approved one is used from then on, the original listed as superseded."""
    config, store, _ = loaded
    now = datetime(2024, 6, 2, tzinfo=UTC)
    before = await produce_report(config, store, "stack1", year=2024, month=5, now=now)
    assert before.report.revisions == RevisionAudit()
    ts = MAY_1 + timedelta(hours=3)
    other = [
        StoredReading(SITE, "chp-stack1", "stack1-gas", "so2", ts, 9999.0, "mg/m3", Quality.OK),
        StoredReading(SITE, "chp-stack1", "stack1-gas", "so2", ts - timedelta(days=1), 1.0, "mg/m3", Quality.OK),
        StoredReading(SITE, "chp-stack1", "stack1-gas", "so2", ts + timedelta(minutes=1), 400.0, "mg/m3", Quality.OK),
    ]
    await store.write(other)  # one revision in May, one reading in April (not of this period), one the same
    produced = await produce_report(config, store, "stack1", year=2024, month=5, now=now)
    audit = produced.report.revisions
    assert (audit.pending, audit.approved, audit.superseded) == (1, 0, 0)
    [entry] = audit.listed
    assert (entry.instrument, entry.parameter, entry.ts_utc, entry.value, entry.state) == (
        "stack1-gas",
        "so2",
        ts,
        9999.0,
        "pending",
    )
    assert produced.report.totals == before.report.totals
    assert any("1 raw readings of this period were sent again" in w for w in produced.report.warnings)
    assert produced.report.reproducibility is not None
    assert produced.report.reproducibility.matches

    approval = await store.approve_revision(entry.id, by="alice", why="lab recheck", at=now)
    engine = RollupEngine.from_config(config, store)
    await engine.note_written([approval.revision.reading])
    await engine.process_dirty()
    engine.close()
    approved = await produce_report(config, store, "stack1", year=2024, month=5, now=now)
    audit = approved.report.revisions
    assert (audit.pending, audit.approved, audit.superseded) == (0, 1, 1)
    assert {(e.value, e.state, e.decided_by) for e in audit.listed} == {
        (9999.0, "approved", "alice"),
        (400.0, "superseded", "alice"),
    }
    assert approved.report.totals[0].measured_t > before.report.totals[0].measured_t  # the approved value is used
    assert approved.report.reproducibility is not None
    assert approved.report.reproducibility.matches


async def test_reproducibility_check_catches_stale_rollups(loaded: tuple[GatewayConfig, Store, Path]) -> None:
    config, store, _ = loaded
    [hour] = await store.query_aggregates(
        period=Period.HOUR, instrument="stack1-gas", parameter="so2", start=MAY_1, end=MAY_1 + timedelta(hours=1)
    )
    tampered = dataclasses.replace(hour, value=4000.0)
    await store.write_aggregates([tampered])
    report = (await produce_report(config, store, "stack1", year=2024, month=5)).report
    assert report.reproducibility is not None
    assert not report.reproducibility.matches
    assert report.reproducibility.periods_differing == 1
    assert report.reproducibility.max_difference_t > 0
    assert any("reproducibility check failed" in w for w in report.warnings)


async def test_annual_report_for_the_commented_example_source(tmp_path: Path) -> None:
    """config/gateway.toml's commented [[source]] for stack1, uncommented, gives an annual report."""
    text = (ROOT / "config" / "gateway.toml").read_text(encoding="utf-8")
    head, block = text[: text.index("# [rollup]\n")], text[text.index("# [rollup]\n") :]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else "" for line in block.splitlines())
    uncommented = uncommented.replace('"pavlodar-chp.toml"', f'"{ROOT / "config" / "pavlodar-chp.toml"}"')
    uncommented = uncommented.replace('directory = "../var/reports"', f'directory = "{tmp_path}"')
    head = head.replace('url = "sqlite://../var/aua.sqlite"', f'url = "sqlite://{tmp_path / "aua.sqlite"}"')
    head = head.replace('state = "../var/gateway-state.sqlite"', f'state = "{tmp_path / "state.sqlite"}"')
    path = tmp_path / "gateway.toml"
    path.write_text(head + uncommented, encoding="utf-8")
    config = load_gateway_config(path)
    assert [s.id for s in config.sources] == ["stack1"]
    async with open_store(config.store.url) as store:
        rows = stack_readings(days=1)
        await store.write(rows)
        engine = RollupEngine.from_config(config, store)
        await engine.recompute(MAY_1, MAY_1 + timedelta(days=1))
        engine.close()
        produced = await produce_report(config, store, "stack1", year=2024, now=datetime(2025, 1, 2, tzinfo=UTC))
    report = produced.report
    assert (report.period.kind, report.period.base_periods) == ("year", 8785)
    assert [t.name for t in report.totals] == ["SO2", "NOx (as NO2)", "CO", "Dust", "CO2"]
    assert report.reproducibility is not None
    assert report.reproducibility.matches
    nox = next(t for t in report.totals if t.parameter == "nox")
    assert not nox.complete  # no NOx data at all and no max_potential: never counted as zero
    assert nox.unsubstituted_periods == 8785
    assert any("NOx (as NO2): 8785 periods have no value" in w for w in report.warnings)
    assert any("invalid days (> 10)" in w for w in report.warnings)
    assert len(produced.hourly_rows) == 8785


async def test_part75_source_uses_its_history(tmp_path: Path) -> None:
    part75 = SOURCE.replace('fuel = "solid"', 'fuel = "solid"\nsubstitution = "part75"\nrule_set = "part75"')
    part75 = part75.replace('unit = "Nm3/h" }}', 'unit = "Nm3/h", max_potential = 900000 }}')
    part75 = part75.replace(
        'parameter = "co2", unit = "%vol" }}', 'parameter = "co2", unit = "%vol", max_potential = 20 }}'
    )
    part75 = part75.replace('unit = "mg/m3"\nelv = 600', 'unit = "mg/m3"\nmax_potential = 2000\nelv = 600')
    part75 = part75.replace('conditions = "actual"', 'conditions = "actual"\nmax_potential = 500')
    for role in ("h2o", "temperature", "pressure"):
        part75 = part75.replace(f'parameter = "{role}", unit', f'max_potential = 200, parameter = "{role}", unit')
    config = load_gateway_config(write_config(tmp_path, f"sqlite://{tmp_path / 'a.sqlite'}", source=part75))
    async with open_store(config.store.url) as store:
        rows = stack_readings()
        await store.write(rows)
        engine = RollupEngine.from_config(config, store)
        await engine.recompute(MAY_1, MAY_1 + timedelta(days=3))
        engine.close()
        report = (await produce_report(config, store, "stack1", year=2024, month=5)).report
    runs = {(s.name, s.start_local.day, s.start_local.hour): s for s in report.substituted}
    # §3 Part 75: the 30-minute calibration hour keeps two valid points ≥ 15 min apart, so it stays valid
    assert next(a for a in report.availability if a.name == "SO2").valid_periods == 69
    assert ("SO2", 1, 10) not in runs
    # §4: PMA 100 %, a 3-hour gap: the average of the hour before and after (600, 600)
    outage = runs[("SO2", 2, 5)]
    assert (outage.periods, outage.value) == (3, 600.0)
    assert "PMA 100.0 %, gap 3 h ≤ 24 h: the average of the hour before and the hour after" in outage.method
    # §4: PMA 69/72 = 95.8 %, a 672-hour gap: the greater of the lookback's 90th percentile and the hour before
    tail = runs[("SO2", 4, 0)]
    assert (tail.periods, tail.value) == (672, 600.0)
    assert "PMA 95.8 %, gap 672 h > 24 h: the greater of the 90th percentile of 69 lookback hours" in tail.method
    so2 = next(t for t in report.totals if t.name == "SO2")
    assert so2.total_t == pytest.approx((24 * 400 + 45 * 600 + 675 * 600) * FLOW * 1e-6 / 1000) == pytest.approx(220.8)


async def test_unknown_source_and_bad_month_are_clear_errors(loaded_sqlite: tuple[GatewayConfig, Store, Path]) -> None:
    config, store, _ = loaded_sqlite
    with pytest.raises(ReportError, match="no \\[\\[source\\]\\] with id 'stack9' \\(known: stack1\\)"):
        await produce_report(config, store, "stack9", year=2024)
    with pytest.raises(ReportError, match="month 13"):
        await produce_report(config, store, "stack1", year=2024, month=13)


# -- schema, PDF fonts ---------------------------------------------------------------------------------------


def test_schema_file_matches_the_model() -> None:
    """docs/mrv-report.schema.json documents the JSON; regenerate with
    .venv/bin/python -c "from gateway.mrv.report_files import write_schema; write_schema()"."""
    assert json.loads(SCHEMA_PATH.read_text(encoding="utf-8")) == MrvReport.model_json_schema()


@pytest.mark.parametrize(
    ("text", "latin"),
    [
        ("Дымовая труба №1", "Dymovaya truba No.1"),
        ("Павлодарская ТЭЦ-3", "Pavlodarskaya TETs-3"),
        ("Қазақстан, Өскемен", "Qazaqstan, Oskemen"),
        ("SO2 ≥ 200 mg/m³, σ", "SO2 >= 200 mg/m³, sigma"),
    ],
)
def test_transliteration_for_pdfs_without_a_unicode_font(text: str, latin: str) -> None:
    assert transliterate(text) == latin
    transliterate(text).encode("latin-1")


async def test_pdf_without_a_unicode_font_transliterates(
    loaded_sqlite: tuple[GatewayConfig, Store, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, store, _ = loaded_sqlite
    produced = await produce_report(config, store, "stack1", year=2024, month=5, check_raw=False)
    monkeypatch.setattr("gateway.mrv.report_pdf.FONT_CANDIDATES", ())
    assert find_unicode_font() is None
    [pdf] = [p for p in write_report_files(produced, tmp_path) if p.suffix == ".pdf"]
    assert pdf.read_bytes().startswith(b"%PDF-")
    assert b"DejaVu" not in pdf.read_bytes()


def test_a_configured_font_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"font .*missing\.ttf: file not found"):
        find_unicode_font(tmp_path / "missing.ttf")


# -- scheduled feed ------------------------------------------------------------------------------------------


class Receiver:
    """A local HTTP endpoint standing in for the state reporting platform: fails first, then accepts."""

    def __init__(self, failures: int) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.headers.append(dict(self.headers))
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(503)
                else:
                    receiver.bodies.append(body)
                    self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/mrv"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(failures=1)
    yield server
    server.close()


async def test_feed_writes_the_finished_month_and_posts_it_until_accepted(tmp_path: Path, receiver: Receiver) -> None:
    path = write_config(tmp_path, f"sqlite://{tmp_path / 'aua.sqlite'}")
    text = path.read_text(encoding="utf-8").replace(
        '[rollup.reports]\ndirectory = "reports"\n',
        f'[rollup.reports]\ndirectory = "reports"\nschedule = true\ndelay_hours = 6\npost_url = "{receiver.url}"\n'
        'post_token = "s3cret"\n',
    )
    path.write_text(text, encoding="utf-8")
    config = load_gateway_config(path)
    clock = [datetime(2024, 6, 1, 5, tzinfo=ALMATY)]  # 5 h after the month ended: not yet (delay 6 h)
    async with open_store(config.store.url) as store:
        rows = stack_readings()
        await store.write(rows)
        engine = RollupEngine.from_config(config, store)
        await engine.note_written(rows)  # not processed yet: the feed does it before reporting
        feed = ReportFeed(config, store, engine=engine, now=lambda: clock[0])
        assert await feed.tick() == []
        clock[0] = datetime(2024, 6, 1, 7, tzinfo=ALMATY)
        first = await feed.tick()
        assert [(e.period, e.action) for e in first] == [("2024-05", "written"), ("2024-05", "post_failed")]
        assert "HTTP 503" in first[1].detail
        assert (tmp_path / "reports" / "stack1-2024-05.pdf").exists()
        second = await feed.tick()  # the annual 2023 report is skipped: no data in 2023
        assert [(e.period, e.action) for e in second] == [("2024-05", "posted")]
        feed.close()
        restarted = ReportFeed(config, store, engine=engine, now=lambda: clock[0])
        assert await restarted.tick() == []  # written and posted: nothing again after a restart
        restarted.close()
        engine.close()
    [body] = receiver.bodies
    posted = MrvReport.model_validate_json(body)
    assert (posted.source, posted.period.month) == ("stack1", 5)
    assert posted.reproducibility is not None
    assert posted.reproducibility.matches
    assert receiver.headers[-1]["Authorization"] == "Bearer s3cret"
    assert receiver.headers[-1]["Content-Type"] == "application/json"


# -- CLI -----------------------------------------------------------------------------------------------------


def test_cli_recompute_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, f"sqlite://{tmp_path / 'aua.sqlite'}")

    async def load() -> None:
        async with open_store(f"sqlite://{tmp_path / 'aua.sqlite'}") as store:
            await store.write(stack_readings(days=1))

    asyncio.run(load())
    arguments = ["rollup", "recompute", str(path), "--from", "2024-05-01T00:00+05:00", "--to", "2024-05-02T00:00+05:00"]
    assert gateway_main(arguments) == 0
    assert "recomputed [2024-04-30T19:00:00+00:00, 2024-05-01T19:00:00+00:00)" in capsys.readouterr().out
    assert gateway_main(arguments) == 0  # idempotent
    assert gateway_main(["rollup", "status", str(path)]) == 0
    assert "0 (series, hour) pairs waiting" in capsys.readouterr().out
    out = tmp_path / "cli-reports"
    assert (
        gateway_main(["report", str(path), "--source", "stack1", "--year", "2024", "--month", "5", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "reproducible from raw data: yes" in printed
    assert (out / "stack1-2024-05.json").exists()
    assert gateway_main(["report", str(path), "--source", "nope", "--year", "2024"]) == 1
    assert "no [[source]] with id 'nope'" in capsys.readouterr().out
    assert gateway_main(["rollup", "recompute", str(path), "--from", "2024-05-02", "--to", "2024-05-01"]) == 2


# -- source config validation (errors name the key) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('time_zone = "Asia/Almaty"', 'time_zone = "Asia/Nowhere"'),
            "source.0.time_zone: unknown time zone",
        ),
        (('fuel = "solid"', ""), "pollutant SO2 has an elv: set reference_o2 or fuel"),
        (
            ('h2o = {{ instrument = "stack1-gas", parameter = "h2o", unit = "%vol" }}', ""),
            "dust is measured wet: set [source.h2o]",
        ),
        (('name = "SO2"\nunit = "mg/m3"', 'name = "SO2"\nunit = "mg/l"'), "pollutant SO2.unit 'mg/l'"),
        (
            ('name = "SO2"\nunit = "mg/m3"', 'name = "SO2"\nunit = "ppm"\nspecies = "xx"'),
            "pollutant SO2.species: no ppm factor",
        ),
        (('fuel = "solid"', 'fuel = "solid"\nsubstitution = "part75"'), "pollutant:so2.max_potential: Part 75"),
        (
            ('fuel = "solid"', 'fuel = "solid"\nrule_set = "mine"'),
            "source.0 (stack1).rule_set: unknown rule set(s) mine",
        ),
        (("ci_percent = 20", 'ci_percent = 20\nelv_period = "30m"'), "elv_period: 30m is neither the base period"),
        (
            ('parameter = "o2", unit = "%vol"', 'parameter = "co2", unit = "%vol"'),
            "co2 and o2 both name stack1-gas/co2",
        ),
        (('fuel = "solid"', 'fuel = "coal"'), "source.0.fuel: Input should be"),
        (
            ("ci_percent = 20", 'ci_percent = 20\n[source.pollutant.qal2]\nid = "Q"\ndate = 2024-01-01\na = 0\nb = 0'),
            "source.0.pollutant.0.qal2.b: Input should be greater than 0",
        ),
        (
            ("ci_percent = 20", "ci_percent = 20\n[source.pollutant.qal2]\ndate = 2024-01-01\na = 0\nb = 1"),
            "source.0.pollutant.0.qal2.id: Field required",
        ),
        (
            ("ci_percent = 30", "ci_percent = 30\n[source.vcr_check]\nweek_percent = 120"),
            "source.0.vcr_check.week_percent: Input should be less than or equal to 100",
        ),
        (
            (
                'parameter = "so2"\nname = "SO2"\nunit = "mg/m3"\nelv = 600\nci_percent = 20',
                'parameter = "hg"\nunit = "mg/m3"\nelv = 0.05',
            ),
            "pollutant HG has an elv but §3 gives no default confidence interval for 'hg': set ci_percent",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_source_config_errors_name_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    source = SOURCE.replace(*change)
    assert source != SOURCE
    path = write_config(tmp_path, "sqlite://x.sqlite", source=source)
    with pytest.raises(Exception, match=message.replace("[", "\\[").replace("(", "\\(").replace(")", "\\)")):
        load_gateway_config(path)


def test_instrument_in_two_sources_is_refused() -> None:
    document = {
        "source": [
            {"id": "a", "site": "s", "flow": {"instrument": "f", "parameter": "flow", "unit": "Nm3/h"}},
            {"id": "b", "site": "s", "flow": {"instrument": "f", "parameter": "q", "unit": "Nm3/h"}},
        ]
    }
    with pytest.raises(ValidationError, match="instrument f already belongs to source a"):
        GatewayConfig.model_validate(document)


def test_substitution_defaults_follow_the_domain_reference() -> None:
    """§4: Part 75 lookback 720 h for SO2/CO2, 2,160 h for NOx and flow; O2 and moisture mirror (low)."""
    source = SourceConfig.model_validate(
        {
            "id": "a",
            "site": "s",
            "substitution": "part75",
            "flow": {"instrument": "f", "parameter": "flow", "unit": "Nm3/h", "max_potential": 1},
            "h2o": {"instrument": "g", "parameter": "h2o", "unit": "%vol"},
            "pollutant": [
                {"instrument": "g", "parameter": "so2", "unit": "mg/m3", "max_potential": 1},
                {"instrument": "g", "parameter": "nox", "unit": "mg/m3", "max_potential": 1, "wet": True},
            ],
        }
    )
    assert source.substitution_spec("flow").lookback_hours == 2160
    assert source.substitution_spec("pollutant:so2").lookback_hours == 720
    assert source.substitution_spec("pollutant:nox").lookback_hours == 2160
    assert source.substitution_spec("h2o").conservative == "low"
    assert source.substitution_spec("pollutant:so2").conservative == "high"


def test_series_outside_any_source_get_their_rules_from_rollup_series() -> None:
    """An ambient station near Pavlodar is no stack: its series take the ambient rules (§3), and its mercury
    analyzer, measuring every 5 minutes, a rule set expecting 12 samples an hour. Most specific entry wins;
    a [[source]] channel wins over all."""
    config = GatewayConfig.model_validate(
        {
            "rollup": {
                "rule_set": "ied-lcp",
                "rule_sets": {"ambient-hg": {"based_on": "ambient", "sample_interval_s": 300}},
                "series": [
                    {"site": "pavlodar-ambient", "rule_set": "ambient", "time_zone": "Asia/Almaty"},
                    {"site": "pavlodar-ambient", "instrument": "pvl1-hg", "rule_set": "ambient-hg"},
                    {"site": "pavlodar-ambient", "instrument": "pvl1-gas", "parameter": "o3", "rule_set": "mrr"},
                ],
            }
        }
    )
    resolve = RuleResolver.from_config(config.rollup, config.sources)
    chosen = {
        key: (rules.name, str(zone))
        for key, (rules, zone) in {
            "gas": resolve("pavlodar-ambient", "pvl1-gas", "so2"),
            "hg": resolve("pavlodar-ambient", "pvl1-hg", "hg"),
            "o3": resolve("pavlodar-ambient", "pvl1-gas", "o3"),
            "elsewhere": resolve("pavlodar-chp", "stack1-gas", "so2"),
        }.items()
    }
    assert chosen == {
        "gas": ("ambient", "Asia/Almaty"),
        "hg": ("ambient-hg", "UTC"),
        "o3": ("mrr", "UTC"),
        "elsewhere": ("ied-lcp", "UTC"),
    }
    assert resolve("pavlodar-ambient", "pvl1-hg", "hg")[0].sample_interval_s == 300


@pytest.mark.parametrize(
    ("rollup", "message"),
    [
        ({"series": [{"site": "s", "rule_set": "nope"}]}, "series[0].rule_set: unknown rule set 'nope'"),
        ({"series": [{"site": "s", "parameter": "hg", "rule_set": "ambient"}]}, "named together with its instrument"),
        ({"rule_sets": {"x": {"based_on": "ambient", "sample_interval_s": 420}}}, "must divide the 1h base period"),
        ({"rule_sets": {"x": {"sample_interval_s": 0}}}, "rule_sets.x.sample_interval_s"),
    ],
    ids=["unknown-rule-set", "parameter-without-instrument", "cycle-not-dividing-the-hour", "cycle-zero"],
)
def test_rollup_series_errors_name_the_key(tmp_path: Path, rollup: dict[str, object], message: str) -> None:
    path = tmp_path / "gw.toml"
    lines = []
    for entry in rollup.get("series", []):  # type: ignore[attr-defined]
        lines.append("[[rollup.series]]")
        lines += [f'{key} = "{value}"' for key, value in entry.items()]
    for name, fields in rollup.get("rule_sets", {}).items():  # type: ignore[attr-defined]
        lines.append(f"[rollup.rule_sets.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GatewayConfigError, match=re.escape(message)):
        load_gateway_config(path)


def test_confidence_intervals_default_to_the_domain_reference(tmp_path: Path) -> None:
    """§3 (IED Annex V/VI): validated value = measured − CI as % of the ELV; CO 10, SO2 20, NOx 20, dust 30,
    TOC 30, HCl 40, HF 40 unless the source says otherwise (an explicit 0 included)."""
    source = SourceConfig.model_validate(
        {
            "id": "a",
            "site": "s",
            "fuel": "waste",
            "flow": {"instrument": "f", "parameter": "flow", "unit": "Nm3/h"},
            "o2": {"instrument": "g", "parameter": "o2", "unit": "%vol"},
            "pollutant": [
                {"instrument": "g", "parameter": name, "unit": "mg/m3", "elv": 10.0}
                for name in ("co", "so2", "nox", "dust", "toc", "hcl", "hf")
            ]
            + [
                {"instrument": "g", "parameter": "nox_mg", "species": "NOx", "unit": "mg/m3", "elv": 10.0},
                {
                    "instrument": "g",
                    "parameter": "co_x",
                    "species": "co",
                    "unit": "mg/m3",
                    "elv": 10.0,
                    "ci_percent": 0,
                },
            ],
        }
    )
    got = {p.parameter: p.confidence_percent for p in source.pollutant}
    assert got == {"co": 10, "so2": 20, "nox": 20, "dust": 30, "toc": 30, "hcl": 40, "hf": 40, "nox_mg": 20, "co_x": 0}


@pytest.mark.parametrize(
    ("parameter", "species", "hours"), [("NOx", None, 2160), ("nox_mg", "NOx", 2160), ("SO2", None, 720)]
)
def test_part75_lookback_follows_the_species_whatever_its_case(parameter: str, species: str | None, hours: int) -> None:
    """§4: 2,160 quality-assured hours for NOx (and flow), 720 for SO2, whatever the parameter is called."""
    pollutant = {"instrument": "g", "parameter": parameter, "unit": "mg/m3", "max_potential": 1}
    if species:
        pollutant["species"] = species
    flow = {"instrument": "f", "parameter": "flow", "unit": "Nm3/h", "max_potential": 1}
    source = SourceConfig.model_validate(
        {"id": "a", "site": "s", "substitution": "part75", "flow": flow, "pollutant": [pollutant]}
    )
    assert source.substitution_spec(f"pollutant:{parameter}").lookback_hours == hours


def test_part75_substitution_of_one_channel_needs_hourly_periods(tmp_path: Path) -> None:
    """§4: Part 75 counts hours (gap length, the 8,760-hour availability window, lookbacks); on half-hourly
    (waste incineration) data one channel's Part 75 method would halve them all."""
    source = SOURCE.replace('fuel = "solid"', 'fuel = "solid"\nrule_set = "ied-wi"').replace(
        'name = "SO2"\n', 'name = "SO2"\nsubstitution = "part75"\nmax_potential = 2000\n'
    )
    path = write_config(tmp_path, "sqlite://x.sqlite", source=source)
    with pytest.raises(GatewayConfigError, match=r"source.0 \(stack1\): Part 75 substitution needs hourly base"):
        load_gateway_config(path)


async def may_report(
    folder: Path, rows: list[StoredReading], *, source: str = SOURCE, now: datetime = datetime(2024, 6, 2, tzinfo=UTC)
) -> ProducedReport:
    """May 2024's report of stack1 (the commented config's source) from these readings, on SQLite."""
    config = load_gateway_config(write_config(folder, f"sqlite://{folder / 'aua.sqlite'}", source=source))
    async with open_store(config.store.url) as store:
        await store.write(rows)
        engine = RollupEngine.from_config(config, store)
        await engine.recompute(MAY_1, MAY_1 + timedelta(days=1))
        engine.close()
        return await produce_report(config, store, "stack1", year=2024, month=5, now=now)


async def test_a_month_still_running_reports_the_periods_elapsed_not_the_future_as_missing(tmp_path: Path) -> None:
    """Generated one day into May, the report covers that day: the 30 days still to come are neither missing,
    substituted nor invalid days (they once became mean + 2σ for the rest of the month). The same data judged
    after the month has ended are 30 missing days, substituted."""
    rows = stack_readings(days=1)
    (tmp_path / "running").mkdir()
    (tmp_path / "ended").mkdir()
    now = MAY_1 + 24 * HOUR + timedelta(minutes=5)
    running = await may_report(tmp_path / "running", rows, now=now)
    ended = await may_report(tmp_path / "ended", rows)

    so2 = {t.name: t for t in running.report.totals}["SO2"]
    assert so2.measured_t > 0
    assert so2.unsubstituted_periods == 0
    assert running.report.substituted  # the day's calibration hour (10:00) is substituted ...
    assert all(run.end_utc <= MAY_1 + 24 * HOUR for run in running.report.substituted)  # ... and nothing later
    availability = {a.name: a for a in running.report.availability}["SO2"]
    assert (availability.expected_periods, availability.missing_periods) == (24, 0)
    assert any("provisional and cover the 24 base periods" in w for w in running.report.warnings)

    ended_so2 = {t.name: t for t in ended.report.totals}["SO2"]
    assert ended_so2.measured_t == pytest.approx(so2.measured_t)
    assert ended_so2.total_t > so2.total_t
    assert {a.name: a for a in ended.report.availability}["SO2"].missing_periods == 30 * 24


async def test_hours_the_o2_guard_refuses_are_flagged_not_judged(tmp_path: Path) -> None:
    """§2: at O2 near 21 % the correction factor explodes; "flag such values, never divide blindly". Three
    hours at 20 % O2 are listed as not judged (with the reason) and the report warns, instead of quietly
    dropping out of the limit check."""
    rows = [
        dataclasses.replace(r, value=20.0)
        if r.parameter == "o2" and MAY_1 + 12 * HOUR <= r.ts < MAY_1 + 15 * HOUR
        else r
        for r in stack_readings(days=1)
    ]
    produced = await may_report(tmp_path, rows)
    so2 = next(limit for limit in produced.report.limits if limit.pollutant == "SO2")
    assert so2.refused_periods == 3
    assert so2.refused_examples[0].startswith((MAY_1 + 12 * HOUR).isoformat().replace("+00:00", "Z"))
    assert "O2" in so2.refused_examples[0]
    assert any("SO2: 3 periods not judged against the limit" in w for w in produced.report.warnings)
    dust = next(limit for limit in produced.report.limits if limit.pollutant == "Dust")
    assert dust.refused_periods == 3  # dust is O2-corrected for its limit too


async def test_used_but_flagged_values_are_counted_in_the_report(tmp_path: Path) -> None:
    """§3: out_of_specification values are used but flagged; the report says in how many valid hours."""
    flagged_hours = {3, 4}
    rows = [
        dataclasses.replace(r, quality=Quality.OUT_OF_SPECIFICATION)
        if r.parameter == "so2" and (r.ts - MAY_1) // HOUR in flagged_hours and r.ts.minute < 5
        else r
        for r in stack_readings(days=1)
    ]
    produced = await may_report(tmp_path, rows)
    availability = {a.name: a for a in produced.report.availability}
    assert availability["SO2"].flagged_periods == len(flagged_hours)
    assert availability["O2"].flagged_periods == 0


WET_O2 = SOURCE.replace(
    'o2 = {{ instrument = "stack1-gas", parameter = "o2", unit = "%vol" }}',
    'o2 = {{ instrument = "stack1-gas", parameter = "o2", unit = "%vol", wet = true }}',
)


async def test_a_wet_o2_is_dried_hour_by_hour_for_the_limits(tmp_path: Path) -> None:
    """Directive 2010/75/EU Annex VI Part 7 corrects with dry O2: an in-situ O2 of 9 % wet at 10 % H2O is 10 % dry,
    so SO2 400 mg/Nm³ is 400 × 15 / 11 at 6 % O2 (not 400 × 15 / 12), minus the 20 % × 600 confidence interval
    (Annex V Part 3 point 9). Two hours whose moisture is missing are not judged and not counted as valid."""
    rows = [
        r for r in stack_readings(days=1) if not (r.parameter == "h2o" and MAY_1 + 3 * HOUR <= r.ts < MAY_1 + 5 * HOUR)
    ]
    hourly_limit = ("ci_percent = 20\n", 'ci_percent = 20\nelv_period = "1h"\n')
    produced = await may_report(tmp_path, rows, source=WET_O2.replace(*hourly_limit))
    so2 = next(limit for limit in produced.report.limits if limit.pollutant == "SO2")
    assert so2.max_validated == pytest.approx(400 * 15 / (21 - 9 / 0.9) - 0.2 * 600)
    assert so2.valid_periods == 24 - 1 - 2  # the 10:00 calibration hour, and two hours without moisture
    (tmp_path / "dry").mkdir()
    dry = await may_report(tmp_path / "dry", rows, source=SOURCE.replace(*hourly_limit))
    dry_so2 = next(limit for limit in dry.report.limits if limit.pollutant == "SO2")
    assert dry_so2.max_validated == pytest.approx(400 * 15 / 12 - 0.2 * 600)  # the O2 taken as measured
    assert dry_so2.valid_periods == 24 - 1  # a dry O2 needs no moisture for the SO2 limit
    dust = next(limit for limit in produced.report.limits if limit.pollutant == "Dust")
    dust_dry_std = 20.0 * (140 + 273.15) / 273.15 * 101.3 / 100 / 0.9  # T/p to standard, wet to dry
    assert dust.max_validated == pytest.approx(dust_dry_std * 15 / (21 - 9 / 0.9) - 0.3 * 50)
    basis = produced.report.monitoring_plan.o2_basis
    assert "measured wet" in basis
    assert "H2O (stack1-gas/h2o)" in basis
    assert "Annex VI Part 7" in basis
    assert "measured dry" in dry.report.monitoring_plan.o2_basis


def test_a_wet_o2_without_a_water_channel_is_refused(tmp_path: Path) -> None:
    source = WET_O2.replace('h2o = {{ instrument = "stack1-gas", parameter = "h2o", unit = "%vol" }}\n', "")
    source = source.replace("wet = true\nconditions", "conditions")  # the dust: only the O2 is wet
    path = write_config(tmp_path, "sqlite://x.sqlite", source=source)
    with pytest.raises(GatewayConfigError, match=r"o2.wet = true: the reference-O2 correction needs dry O2") as error:
        load_gateway_config(path)
    assert "set [source.h2o]" in str(error.value)


async def test_ied_compliance_tests_are_in_the_report(tmp_path: Path) -> None:
    """Directive 2010/75/EU Annex V Part 4 point 1 (ied-lcp defaults), SO2 ELV 600, CI 20 % (120): local May 1
    has SO2 400 at 9 % O2 → 400 × 15/12 − 120 = 380 every valid hour; 22:00–24:00 at 1,200 → 1,500 − 120 = 1,380,
    above 200 % (1,200). Valid hours: 23 (the 10:00 calibration hour is invalid), 2 above: 21/23 = 91.3 % < 95 %:
    the hourly test fails; the day, (21 × 380 + 2 × 1,380) / 23 = 466.96, is ≤ 110 % (660) and ≤ 100 % (600)."""
    rows = [
        dataclasses.replace(r, value=1200.0) if r.parameter == "so2" and r.ts >= MAY_1 + 22 * HOUR else r
        for r in stack_readings(days=1)
    ]
    produced = await may_report(tmp_path, rows)
    tests = {(c.pollutant, c.test): c for c in produced.report.compliance}
    day_mean = (21 * 380 + 2 * 1380) / 23
    month, day, hours = tests["SO2", "month-mean"], tests["SO2", "day-mean"], tests["SO2", "base-share"]
    assert (month.limit, month.periods, month.max_value, month.passed) == (600, 1, pytest.approx(day_mean), True)
    assert (day.limit, day.periods, day.max_value, day.passed) == (pytest.approx(660), 1, pytest.approx(day_mean), True)
    assert (hours.limit, hours.periods, hours.periods_above, hours.passed) == (1200, 23, 2, False)
    assert hours.share_within_percent == pytest.approx(100 * 21 / 23)
    assert hours.description == "95 % of 1h values ≤ 200 % of the ELV"
    assert hours.above_local == [(MAY_1 + n * HOUR).astimezone(ALMATY).isoformat() for n in (22, 23)]
    assert "Annex V Part 4" in hours.citation
    assert "provisional" in hours.scope
    assert any("SO2: IED compliance test failed: 95 % of 1h values" in w for w in produced.report.warnings)
    assert tests["Dust", "base-share"].passed is True


STACK_ALERT = """[alerts]
[alerts.rules.stack-so2]
site = "pavlodar-chp"
parameter = "so2"
window = "instant"
above = 1200
unit = "mg/m3"
reference_o2 = 6.0
"""


@pytest.mark.parametrize(
    ("source", "rule", "refused"),
    [
        (WET_O2, "", True),
        (WET_O2, 'o2_wet = true\nh2o_parameter = "h2o"\n', False),
        (WET_O2, 'instrument = "stack2-gas"\n', False),
        (SOURCE, "", False),
    ],
    ids=[
        "a rule correcting with a source's wet O2 as if dry is refused",
        "o2_wet with the moisture reading loads",
        "a rule on another instrument loads",
        "a dry O2 needs nothing",
    ],
)
def test_an_alert_rule_taking_a_wet_o2_as_dry_is_refused(tmp_path: Path, source: str, rule: str, refused: bool) -> None:
    path = write_config(tmp_path, "sqlite://x.sqlite", extra=STACK_ALERT + rule, source=source)
    if not refused:
        assert load_gateway_config(path).alerts is not None
        return
    with pytest.raises(GatewayConfigError) as error:
        load_gateway_config(path)
    assert "alerts.rules.stack-so2: corrects with stack1-gas/o2, which [[source]] stack1 measures wet" in str(
        error.value
    )
    assert "set o2_wet = true and h2o_parameter" in str(error.value)


# -- QAL2 calibration (EN 14181:2014) ------------------------------------------------------------------------

QAL2 = '[source.pollutant.qal2]\nid = "QAL2-PVL-2023-07"\ndate = 2023-11-20\na = 10.0\nb = 1.1\nvcr = 700\n'


async def test_qal2_function_is_applied_before_standardisation_and_raw_data_stay_raw(tmp_path: Path) -> None:
    """EN 14181:2014: SO2 y = 10 + 1.1·x on the hourly means (the mean of a linear function is the function of
    the mean): day 1 400 → 450, days 2–3 600 → 670 mg/m³; at 9 % O2 to 6 %: × 15/12 → 562.5 and 837.5 mg/Nm³
    before the CI. VCR 700: the 45 valid hours of days 2–3 are above, the 23 of day 1 not; all three days are in
    the week of Monday 29 April (local): 45/68 = 66.2 % > 40 % → a new QAL2 is due (UK guidance thresholds)."""
    url = f"sqlite://{tmp_path / 'aua.sqlite'}"
    calibrated = load_gateway_config(
        write_config(tmp_path, url, source=SOURCE.replace("ci_percent = 20\n", "ci_percent = 20\n" + QAL2))
    )
    (tmp_path / "plain").mkdir()
    plain = load_gateway_config(write_config(tmp_path / "plain", url))
    now = datetime(2024, 6, 2, tzinfo=UTC)
    async with open_store(calibrated.store.url) as store:
        rows = stack_readings()
        await store.write(rows)
        engine = RollupEngine.from_config(calibrated, store)
        await engine.recompute(MAY_1, MAY_1 + timedelta(days=3))
        engine.close()
        produced = await produce_report(calibrated, store, "stack1", year=2024, month=5, now=now)
        raw = await produce_report(plain, store, "stack1", year=2024, month=5, now=now)
    report = produced.report
    so2 = next(t for t in report.totals if t.name == "SO2")
    assert so2.measured_t == pytest.approx((23 * 450.0 + 45 * 670.0) * FLOW * 1e-6 / 1000)
    assert next(t for t in raw.report.totals if t.name == "SO2").measured_t == pytest.approx(18.1)  # stored: raw
    assert raw.report.calibration is None
    assert report.limits[0].max_validated == pytest.approx(670.0 * 15 / 12 - 120.0)  # CI after calibration
    assert report.reproducibility is not None
    assert report.reproducibility.matches  # recomputed from the raw readings with the same function

    section = report.calibration
    assert section is not None
    [function] = section.functions
    assert (function.name, function.qal2_id, function.qal2_date, function.a, function.b, function.vcr) == (
        "SO2",
        "QAL2-PVL-2023-07",
        date(2023, 11, 20),
        10.0,
        1.1,
        700.0,
    )
    assert function.vcr_unit == "mg/Nm3 dry at 6 % O2"
    assert (function.weeks, function.weeks_over, function.new_qal2_due) == (1, 1, True)
    assert function.max_week_percent == pytest.approx(100 * 45 / 68)
    [week_row] = section.weeks
    assert (week_row.name, week_row.qal2_id, week_row.week_start, week_row.valid_periods, week_row.above_vcr) == (
        "SO2",
        "QAL2-PVL-2023-07",
        date(2024, 4, 29),
        68,
        45,
    )
    assert week_row.percent_above == pytest.approx(100 * 45 / 68)
    assert (section.week_percent, section.weeks_allowed, section.any_week_percent) == (5.0, 5, 40.0)
    assert "UK guidance" in section.thresholds_source
    [due] = [w for w in report.warnings if "new QAL2 due" in w]
    assert due.startswith("SO2: ")
    assert "2024-04-29" in due
    assert "UK guidance" in due

    column = "SO2 [mg/m3 QAL2 QAL2-PVL-2023-07]"  # calibrated values carry the function's id
    index = produced.hourly_header.index(column)
    assert [produced.hourly_rows[h][index] for h in (0, 24 + 12)] == [pytest.approx(450.0), pytest.approx(670.0)]
    assert "SO2 [mg/m3]" in raw.hourly_header

    paths = write_report_files(produced, tmp_path / "out")
    with (tmp_path / "out" / "stack1-2024-05-vcr.csv").open(encoding="utf-8") as handle:
        [week] = list(csv.DictReader(handle))
    assert (week["week_start"], week["valid_periods"], week["above_vcr"]) == ("2024-04-29", "68", "45")
    assert any(p.name == "stack1-2024-05-calibration.csv" for p in paths)


async def test_vcr_thresholds_and_a_function_newer_than_the_period_are_reported(tmp_path: Path) -> None:
    """The 'new QAL2 due' thresholds are config ([source.vcr_check]): SO2 600 from 12:00 (calibrated and
    corrected 837.5 > VCR 700): 12 of 23 valid hours, 52.2 % of the week, due at the default 40 %, not at 70 %;
    a function dated after the period's start is applied but the report says so."""
    qal2 = QAL2.replace("2023-11-20", "2024-05-02")
    source = SOURCE.replace("ci_percent = 20\n", "ci_percent = 20\n" + qal2)
    source += "[source.vcr_check]\nany_week_percent = 70\n"
    rows = [
        dataclasses.replace(r, value=600.0) if r.parameter == "so2" and r.ts >= MAY_1 + 12 * HOUR else r
        for r in stack_readings(days=1)
    ]
    produced = await may_report(tmp_path, rows, source=source)
    section = produced.report.calibration
    assert section is not None
    assert section.any_week_percent == 70.0
    [function] = section.functions
    assert function.max_week_percent == pytest.approx(100 * 12 / 23)
    assert function.new_qal2_due is False
    assert not any("new QAL2 due" in w for w in produced.report.warnings)
    assert any(
        "QAL2 function QAL2-PVL-2023-07 of 2024-05-02 is applied to the whole period" in w
        for w in produced.report.warnings
    )


async def test_a_qal2_on_the_o2_channel_calibrates_the_reference_o2_correction(tmp_path: Path) -> None:
    """O2 y = 1.0 + 1.0·x: 9 → 10 % vol before the SO2 correction to 6 %: 400 × 15/11 − 120 = 425.45 mg/Nm³
    (uncalibrated: 380). Its VCR is in % vol dry: 9.5 → all 23 valid hours of 1 May above → 100 % → due."""
    source = SOURCE.replace(
        'o2 = {{ instrument = "stack1-gas", parameter = "o2", unit = "%vol" }}',
        'o2 = {{ instrument = "stack1-gas", parameter = "o2", unit = "%vol", '
        'qal2 = {{ id = "Q-O2", date = 2024-01-15, a = 1.0, b = 1.0, vcr = 9.5 }} }}',
    )
    assert source != SOURCE
    produced = await may_report(tmp_path, stack_readings(days=1), source=source)
    report = produced.report
    assert report.limits[0].max_validated == pytest.approx(400.0 * 15 / 11 - 120.0)
    assert report.calibration is not None
    [function] = report.calibration.functions
    assert (function.name, function.vcr_unit, function.weeks, function.new_qal2_due) == ("O2", "% vol dry", 1, True)
    [week] = report.calibration.weeks
    assert (week.valid_periods, week.above_vcr) == (23, 23)
