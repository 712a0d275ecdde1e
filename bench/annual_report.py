"""Benchmark: the annual MRV report of one stack from a year of 1-minute data, and a late-data recompute.

    .venv/bin/python bench/annual_report.py [--days 365] [--plain] [--keep DIR]

A year (2023, Asia/Almaty, 525,600 minutes) of 1-minute readings for 10 parameters of stack1 (SO2, NOx, CO,
CO2, O2, H2O, dust, flow, temperature, pressure) and the boiler DCS's unit-state register (5,781,600 readings)
goes into a SQLite store, with a daily zero and span check, a two-day analyzer outage, a few failures and a
two-week summer shutdown (shut-down, off, start-up). The source has its operating state (`[source.operating]`:
the DCS's unit state, a running criterion and three start-up criteria, 2012/249/EU Art. 9) and QAL3 control
of SO2, NOx and CO (`[source.qal3]`, EN 14181:2014 §7): the year's checks are captured from the stored
readings into the calibration-check log before the timing (as the gateway's watch or `qa-check capture` does;
one span check reads 10 % low and is followed by an adjusted check), so the report carries its operating and
QA sections, with the charts over a year of checks (issue 14). `--plain` leaves both tables out. Then, timed:

1. baseline: the naive way, every rollup of the year recomputed from raw data (`rollup recompute`);
2. the annual report: CSV, JSON, XLSX, PDF, including its reproducibility check (the year's base periods
   recomputed from the 5.3 million raw readings and compared);
   1 and 2 alternate, `--repeats` times (default 3), and the table gives median (min–max); CPU and peak
   memory are those of the whole process tree (the report's worker processes included);
3. late data: readings for one hour of one day arrive late; the incremental pass recomputes that hour, its
   day, month and year, and the table shows what it read and wrote (proof that it touched only that day).

Not part of the test suite. Takes a few minutes on 2 cores; peak memory stays bounded (one day of raw data
at a time while loading and recomputing, one day of one series at a time in each worker of the reproducibility
check).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _harness import TreeMonitor, TreeUsage, machine_note, markdown_table, spread  # noqa: E402

from aua_contract import Quality  # noqa: E402
from gateway.config import GatewayConfig, load_gateway_config  # noqa: E402
from gateway.mrv.qa_checks import QaCheckLog, capture  # noqa: E402
from gateway.mrv.qal3 import CheckKind, CheckResult  # noqa: E402
from gateway.mrv.report_files import write_report_files  # noqa: E402
from gateway.mrv.report_production import ProducedReport, produce_report  # noqa: E402
from gateway.mrv.rollup import Period  # noqa: E402
from gateway.mrv.rollup_engine import RollupEngine  # noqa: E402
from gateway.stores import SqliteStore, StoredReading  # noqa: E402

ZONE = ZoneInfo("Asia/Almaty")
YEAR = 2023
SITE = "pavlodar-chp"
CONFIG = """
[gateway]
state = "state.sqlite"
[store]
url = "sqlite://aua.sqlite"
[rollup]
time_zone = "Asia/Almaty"
[rollup.reports]
directory = "reports"

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
elv = 1000
ci_percent = 20
[[source.pollutant]]
instrument = "stack1-gas"
parameter = "nox"
name = "NOx"
unit = "mg/m3"
elv = 600
ci_percent = 20
[[source.pollutant]]
instrument = "stack1-gas"
parameter = "co"
name = "CO"
unit = "mg/m3"
elv = 400
ci_percent = 10
[[source.pollutant]]
instrument = "stack1-dust"
parameter = "dust"
name = "Dust"
unit = "mg/m3"
wet = true
conditions = "actual"
elv = 100
ci_percent = 30
"""

OPERATING = """
[source.operating]
status = { instrument = "stack1-dcs", parameter = "unit_state", off = 0, start_up = 1, normal = 2, shut_down = 3 }
required = 2
running = [{ instrument = "stack1-flow", parameter = "flow", at_least = 100000 }]
[[source.operating.startup_end]]
instrument = "stack1-flow"
parameter = "temperature"
at_least = 120
[[source.operating.startup_end]]
instrument = "stack1-gas"
parameter = "o2"
at_most = 10
[[source.operating.startup_end]]
instrument = "stack1-flow"
parameter = "flow"
at_least = 300000
"""

QAL3_COMPONENTS = (("so2", 800.0), ("nox", 400.0), ("co", 300.0))
"""The components under QAL3 control and their span gases; s_AMS is 2 (mg/m3) at zero and span for each."""
ZERO_BIT, SPAN_BIT = 24, 25
"""The status-word bits the analyzer sets during its zero and its span check (config/profiles/stack-gas-analyzer.toml:
discrete inputs 1024 and 1025)."""

QAL3 = """
[source.qal3]
method = "cusum"
flag_out_of_control = "invalid"
max_check_interval_days = 7
""" + "".join(
    f"""[[source.qal3.component]]
instrument = "stack1-gas"
parameter = "{parameter}"
s_ams_zero = 2.0
s_ams_span = 2.0
span_reference = {span:g}
zero_bit = {ZERO_BIT}
span_bit = {SPAN_BIT}
"""
    for parameter, span in QAL3_COMPONENTS
)

GAS = (("so2", "mg/m3"), ("nox", "mg/m3"), ("co", "mg/m3"), ("co2", "%vol"), ("o2", "%vol"), ("h2o", "%vol"))
FLOW = (("flow", "Nm3/h"), ("temperature", "degC"), ("pressure", "kPa"))


CHECK_ZERO, CHECK_SPAN, CHECK_END = 120, 128, 136
"""Minutes of the local day: zero gas from 02:00, span gas from 02:08, measuring again from 02:16."""
AIR = {"so2": 0.0, "nox": 0.0, "co": 0.0, "co2": 0.04, "o2": 20.9, "h2o": 1.0}
"""What the analyzers read with the boiler off: air."""
SHUT_DOWN_MINUTES, START_UP_MINUTES = 180, 240


@dataclass(frozen=True)
class Story:
    """Where the year's events fall in a window of `days`: the summer shutdown (two weeks in a year, a day in a
    short window) and the day whose span check reads 10 % low."""

    days: int

    @property
    def shutdown(self) -> range:
        first = round(0.55 * self.days)
        return range(first, first + max(1, round(14 * self.days / 365)))

    @property
    def failed_check_day(self) -> int:
        return int(0.3 * self.days)

    def phase(self, day_index: int, minute: int) -> tuple[int, float]:
        """The DCS's unit-state code (0 off, 1 start-up, 2 normal, 3 shut-down) and the share of normal firing."""
        off = self.shutdown
        if day_index not in off:
            return 2, 1.0
        if day_index == off.start and minute < SHUT_DOWN_MINUTES:
            return 3, 1.0 - minute / SHUT_DOWN_MINUTES
        to_start = 1440 - minute
        if day_index == off.stop - 1 and to_start <= START_UP_MINUTES:
            return 1, 1.0 - to_start / START_UP_MINUTES
        return 0, 0.0


def _check_noise(day_index: int, minute: int, parameter: str) -> float:
    """The analyzer's repeatability on a check gas (σ 1 mg/m3), fixed per day, minute and component."""
    return random.Random(f"{day_index}/{minute}/{parameter}").gauss(0.0, 1.0)


def day_of_readings(day_start: datetime, day_index: int, story: Story) -> list[StoredReading]:
    """One local day of 1-minute readings for the 10 parameters and the unit state, with the year's incidents."""
    rows: list[StoredReading] = []
    outage = 150 <= day_index < 152  # a two-day analyzer outage in late May
    spans = dict(QAL3_COMPONENTS)
    for minute in range(1440):
        ts = day_start + timedelta(minutes=minute)
        load = 0.6 + 0.3 * math.sin(2 * math.pi * (minute / 1440 + day_index / 365))
        code, firing = story.phase(day_index, minute)
        rows.append(StoredReading(SITE, "chp-stack1", "stack1-dcs", "unit_state", ts, code, "code", Quality.OK))
        gas_quality, status = Quality.OK, None
        if CHECK_ZERO <= minute < CHECK_END:  # the daily zero and span check at 02:00, also while off
            gas_quality, status = Quality.CHECK_FUNCTION, 1 << (ZERO_BIT if minute < CHECK_SPAN else SPAN_BIT)
        if (day_index * 1440 + minute) % 9973 == 0:
            gas_quality = Quality.FAILURE
        if not outage:
            o2 = 8.0 - 2.0 * load
            fired = (400 + 450 * load, 300 + 200 * load, 40 + 30 * load, 18.7 * (1 - o2 / 21), o2, 8 + 3 * load)
            for (parameter, unit), running in zip(GAS, fired, strict=True):
                value = AIR[parameter] + firing * (running - AIR[parameter])
                if gas_quality is Quality.CHECK_FUNCTION and parameter in spans:
                    gas = 0.0 if minute < CHECK_SPAN else spans[parameter]
                    if minute >= CHECK_SPAN and day_index == story.failed_check_day:
                        gas *= 0.9  # the failed span check: 10 % low
                    value = gas + _check_noise(day_index, minute, parameter)
                rows.append(
                    StoredReading(SITE, "chp-stack1", "stack1-gas", parameter, ts, value, unit, gas_quality, status)
                )
        flow = 15_000 + firing * (385_000 + 200_000 * load)  # the fan's purge flow while off
        for (parameter, unit), value in zip(FLOW, (flow, 30 + firing * (100 + 20 * load), 99.5), strict=True):
            rows.append(StoredReading(SITE, "chp-stack1", "stack1-flow", parameter, ts, value, unit, Quality.OK))
        dust = firing * (15 + 10 * load)
        rows.append(StoredReading(SITE, "chp-stack1", "stack1-dust", "dust", ts, dust, "mg/m3", Quality.OK))
    return rows


async def calibration_log(
    config: GatewayConfig, store: SqliteStore, story: Story, start: datetime, end: datetime
) -> str:
    """The window's zero and span checks captured from the stored readings into the calibration-check log, and
    the adjusted zero and span checks after the failed one (they end its out-of-control period)."""
    source = config.sources[0]
    assert source.qal3 is not None
    checks_log = QaCheckLog(config.gateway.state)
    try:
        now = datetime(YEAR + 1, 1, 2, tzinfo=UTC)
        found, recorded = await capture(store, checks_log, source, start=start, end=end, now=now)
        failed_day = (datetime(YEAR, 1, 1, tzinfo=ZONE) + timedelta(days=story.failed_check_day)).astimezone(UTC)
        adjusted_at = failed_day + timedelta(hours=6)
        for component in source.qal3.component:
            for kind, reference in (
                (CheckKind.ZERO, component.zero_reference),
                (CheckKind.SPAN, component.span_reference),
            ):
                checks_log.record(
                    source.id,
                    CheckResult(adjusted_at, kind, reference, reference + 0.1, adjusted=True),
                    instrument=component.instrument,
                    parameter=component.parameter,
                    by="bench",
                    why="analyzer adjusted after the failed span check",
                    now=now,
                )
    finally:
        checks_log.close()
    return f"{len(found)} checks found, {len(recorded)} captured, plus 2 adjusted per component"


@dataclass(frozen=True)
class Timed:
    usage: TreeUsage
    detail: str
    built_s: float = 0.0
    produced: ProducedReport | None = None


async def main(days: int, workdir: Path, *, plain: bool = False, repeats: int = 3) -> None:
    config_path = workdir / "gateway.toml"
    text = CONFIG.format(agent=ROOT / "config" / "pavlodar-chp.toml") + ("" if plain else OPERATING + QAL3)
    config_path.write_text(text, encoding="utf-8")
    config = load_gateway_config(config_path)
    store = SqliteStore(workdir / "aua.sqlite")
    await store.open()
    first_day = datetime(YEAR, 1, 1, tzinfo=ZONE)
    story = Story(days)
    began = time.perf_counter()
    written = 0
    for index in range(days):
        day_start = (first_day + timedelta(days=index)).astimezone(UTC)
        rows = day_of_readings(day_start, index, story)
        await store.write(rows)
        written += len(rows)
    load_seconds = time.perf_counter() - began
    print(f"loaded {written:,} raw readings ({days} days × 1440 min × 11 parameters, minus outage) "
          f"in {load_seconds:.1f} s")  # fmt: skip

    engine = RollupEngine.from_config(config, store)
    year_start = first_day.astimezone(UTC)
    year_end = (first_day + timedelta(days=days)).astimezone(UTC)
    qa_capture = "none ([source.qal3] left out)"
    if not plain:
        began = time.perf_counter()
        qa_capture = await calibration_log(config, store, story, year_start, year_end)
        qa_capture += f" in {time.perf_counter() - began:.1f} s"
        print(f"calibration-check log: {qa_capture}")

    async def recompute(_round: int) -> Timed:
        with TreeMonitor() as monitor:
            summary = (await engine.recompute(year_start, year_end)).summary()
        assert monitor.usage is not None
        return Timed(monitor.usage, summary)

    async def report(round_index: int) -> Timed:
        with TreeMonitor() as monitor:
            began = time.perf_counter()
            produced = await produce_report(
                config, store, "stack1", year=YEAR, now=datetime(YEAR + 1, 1, 2, tzinfo=UTC)
            )
            built = time.perf_counter() - began
            paths = write_report_files(produced, workdir / f"reports-{round_index}")
        assert monitor.usage is not None
        check = produced.report.reproducibility
        assert check is not None
        detail = f"{len(paths)} files; {check.raw_readings:,} raw readings rechecked, reproducible: {check.matches}"
        last = round_index == repeats - 1  # earlier reports are let go, not held through the next rounds
        return Timed(monitor.usage, detail, built, produced if last else None)

    # baseline, report, baseline, report, ...: a change in the machine's load hits both alike
    recomputes: list[Timed] = []
    reports: list[Timed] = []
    for round_index in range(repeats):
        print(f"  round {round_index + 1}/{repeats}: full recompute, then the annual report ...", flush=True)
        recomputes.append(await recompute(round_index))
        reports.append(await report(round_index))
    produced = reports[-1].produced
    assert produced is not None

    late_day = first_day + timedelta(days=min(165, days - 1))  # mid-June
    late_hour = (late_day + timedelta(hours=10)).astimezone(UTC)
    so2 = ("stack1-gas", "so2")
    late_ts = [late_hour + timedelta(minutes=m, seconds=30) for m in range(60)]  # between the stored ones: new
    late = [StoredReading(SITE, "chp-stack1", *so2, ts, 900.0, "mg/m3", Quality.OK) for ts in late_ts]
    await store.write(late)
    began = time.perf_counter()
    await engine.note_written(late)
    incremental = await engine.process_dirty()
    late_seconds = time.perf_counter() - began
    after = await produce_report(config, store, "stack1", year=YEAR, now=datetime(YEAR + 1, 1, 2, tzinfo=UTC))
    engine.close()
    await store.close()

    day_start, day_end = late_day.astimezone(UTC), (late_day + timedelta(days=1)).astimezone(UTC)
    inside = (
        incremental.raw_first is not None
        and incremental.raw_last is not None
        and day_start <= incremental.raw_first
        and incremental.raw_last < day_end
    )
    written_by_level = ", ".join(f"{n} {p.value}" for p, n in sorted(incremental.written.items()))
    so2_before = next(t.total_t for t in produced.report.totals if t.name == "SO2")
    so2_after = next(t.total_t for t in after.report.totals if t.name == "SO2")
    after_check = after.report.reproducibility
    assert after_check is not None
    operating_state = produced.report.operating
    qa = produced.report.qa
    operating_periods = (
        ", ".join(f"{state} {count}" for state, count in operating_state.periods.items())
        if operating_state is not None and operating_state.configured
        else "not configured"
    )
    qa_detail = (
        f"{len(qa.checks)} checks of {len(qa.components)} components in the year, "
        f"{len(qa.out_of_control)} out-of-control period(s)"
        if qa is not None
        else "not configured"
    )

    def seconds(runs: list[Timed]) -> str:
        return spread((r.usage.wall_s for r in runs), ".1f", " s")

    table = [
        ("raw readings in the store", f"{written:,}", ""),
        ("  operating periods (hours) by state", operating_periods, "[source.operating]: the DCS's unit state"),
        ("  QA section", qa_detail, f"calibration-check log before the timing: {qa_capture}"),
        ("baseline: full recompute of every rollup from raw", seconds(recomputes), recomputes[-1].detail),
        ("annual report, build incl. raw reproducibility check", spread((r.built_s for r in reports), ".1f", " s"),
         reports[-1].detail),
        ("annual report incl. writing CSV, JSON, XLSX, PDF", seconds(reports),
         f"budget 60 s: {'OK' if statistics.median(r.usage.wall_s for r in reports) < 60 else 'OVER'} (median)"),
        ("  CPU time of the report (whole process tree)", spread((r.usage.cpu_s for r in reports), ".1f", " s"),
         "the report's worker processes included"),
        ("  peak memory of the report (whole process tree)", spread(r.usage.peak_rss_mb for r in reports) + " MB",
         "sum of the RSS of this process and its workers, sampled every 0.2 s"),
        ("  peak memory of the full recompute (tree)", spread(r.usage.peak_rss_mb for r in recomputes) + " MB", ""),
        ("late data: recompute after 60 late readings", f"{late_seconds:.2f} s",
         f"{statistics.median(r.usage.wall_s for r in recomputes) / late_seconds:,.0f}x faster than the baseline"),
        ("  raw readings read", f"{incremental.raw_read}",
         f"from {incremental.raw_first} to {incremental.raw_last}: within {late_day.date()} only: {inside}"),
        ("  aggregates written", written_by_level, f"days {sorted(incremental.days)}, months "
         f"{sorted(incremental.months)}, years {sorted(incremental.years)}"),
        ("  SO2 annual total before/after", f"{so2_before:.3f} / {so2_after:.3f} t",
         f"reproducible after the late data: {after_check.matches}"),
    ]  # fmt: skip
    print()
    print(f"median (min–max) of {repeats} interleaved runs of the baseline and the report")
    print()
    print(markdown_table(["measure", "result", "detail"], table))
    print()
    print(machine_note(r.usage for r in recomputes + reports))
    assert inside
    assert incremental.days == {late_day.date()}
    assert dict(incremental.written) == {
        Period.MINUTE: 60,
        Period.HOUR: 1,
        Period.DAY: 1,
        Period.MONTH: 1,
        Period.YEAR: 1,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=365, help="days of data (default: a year)")
    parser.add_argument("--keep", type=Path, help="keep the store and reports in this directory")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of baseline and report (default 3)")
    parser.add_argument(
        "--plain", action="store_true", help="no operating state and no QAL3: the report without those sections"
    )
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="aua-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(main(args.days, folder, plain=args.plain, repeats=args.repeats))
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
