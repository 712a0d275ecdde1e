"""MRV reports as files (CSV, JSON, XLSX, PDF), the scheduled feed that writes and POSTs them, and their CLI.

I/O around the pure builder in gateway.mrv.report:
- `produce_report` reads a source's base-period rollups from the store, recomputes them from the raw
  readings for the reproducibility check (docs/regulatory-basis.md §7) and builds the report;
- `write_report_files` writes `{source}-{year}[-{month}]` .json, .xlsx, .pdf and -*.csv files;
- `ReportFeed` writes the monthly and annual reports on its own once a period has ended (plus a delay for late
  data), and POSTs each JSON document to `[rollup.reports] post_url`, retrying until it is accepted.

PDF text: fpdf2's built-in fonts are Latin-1 only, so a Unicode TTF is embedded for Cyrillic names: the
`[rollup.reports] font` file, else DejaVu Sans where the system has it (Debian: fonts-dejavu-core). Without
one the PDF is still written, with Cyrillic transliterated to Latin (said on the first page); the JSON, CSV
and XLSX files always carry the original text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gc
import json
import logging
import multiprocessing
import os
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import httpx
from fpdf import FPDF
from fpdf.fonts import FontFace
from openpyxl import Workbook

from gateway.cli_time import cli_time
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.mrv.config import SourceConfig, find_source, source_input
from gateway.mrv.operating_log import OperatingLog
from gateway.mrv.part75 import Part75Tests
from gateway.mrv.part75_log import LOOKBACK as PART75_LOOKBACK
from gateway.mrv.part75_log import Part75Log
from gateway.mrv.qa_checks import QaCheckLog
from gateway.mrv.qal3 import CLAUSE
from gateway.mrv.report import (
    SIGNAL_ROLE,
    TOTALS_TOLERANCE_T,
    ConfigRecord,
    MrvReport,
    QaInput,
    Qal3Component,
    QaLogEntry,
    Reproducibility,
    RevisionEntry,
    SourceInput,
    build_report,
    build_report_with_rows,
    canonical_rules,
    config_hash,
    totals_difference,
)
from gateway.mrv.report_charts import Chart, add_chart_pages, report_charts
from gateway.mrv.retention import raw_kept_from
from gateway.mrv.rollup import Aggregate, base_aggregates_from_samples, month_bounds, year_bounds
from gateway.mrv.rollup_engine import RollupEngine
from gateway.state_file import StateFile
from gateway.stores import Store, StoredReading, StoreError, open_store
from gateway.stores.base import Revision
from gateway.time_ns import from_ns

__all__ = [
    "SCHEMA_PATH",
    "ProducedReport",
    "ReportError",
    "ReportFeed",
    "add_mrv_commands",
    "find_unicode_font",
    "produce_report",
    "run_mrv_command",
    "transliterate",
    "write_report_files",
    "write_schema",
]

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "mrv-report.schema.json"
HISTORY_HOURS = 8760
"""Part 75 looks back over the previous 8,760 hours for PMA and lookback values (docs/regulatory-basis.md §4)."""
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian, Ubuntu (fonts-dejavu-core)
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",  # Fedora, RHEL
    "/usr/share/fonts/TTF/DejaVuSans.ttf",  # Arch
    "/usr/local/share/fonts/DejaVuSans.ttf",
    "/Library/Fonts/DejaVuSans.ttf",
)


class ReportError(GatewayError):
    """A report cannot be produced or delivered; the message says what and where."""


# -- producing -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProducedReport:
    report: MrvReport
    hourly_header: list[str]
    hourly_rows: list[list[object]]
    inputs: SourceInput | None = None
    """what the report was computed with (the PDF's charts standardise with it)"""

    @property
    def basename(self) -> str:
        period = self.report.period
        suffix = f"{period.year}" if period.month is None else f"{period.year}-{period.month:02d}"
        return f"{self.report.source}-{suffix}"


def canonical_config(source: SourceConfig, inputs: SourceInput) -> dict[str, Any]:
    """What produced the numbers: the source table, rule sets, §2 factors, and the agent's instruments/profiles."""
    document: dict[str, Any] = {
        "source": source.model_dump(mode="json", exclude={"agent_config"}),
        **canonical_rules(inputs),
        "agent": None,
    }
    if source.agent_config is not None:
        document["agent"] = _agent_document(source.agent_config, source.instruments())
    return document


def _agent_document(path: Path, instruments: set[str]) -> dict[str, Any]:
    """The agent config's instruments of this source, each with its parsed device profile."""
    try:
        agent = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ReportError(f"agent_config {path}: {error}") from error
    found: dict[str, Any] = {"file": path.name, "agent": agent.get("agent", {}).get("id"), "instruments": {}}
    for table in agent.get("instrument", []):
        if table.get("id") not in instruments:
            continue
        entry = {key: value for key, value in table.items() if key not in ("host", "port")}
        profile_path = path.parent / str(table.get("profile", ""))
        try:
            entry["profile_document"] = tomllib.loads(profile_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ReportError(f"agent_config {path}: profile {profile_path}: {error}") from error
        found["instruments"][table["id"]] = entry
    return found


def _by_role(inputs: SourceInput, aggregates: Sequence[Aggregate]) -> dict[str, list[Aggregate]]:
    """The source's aggregates by channel role, and its operating-state signals by SIGNAL_ROLE + key (a series
    can be both: the flue-gas temperature channel as a start-up criterion)."""
    roles: dict[tuple[str, str], list[str]] = {}
    for channel in inputs.channels:
        roles.setdefault((channel.instrument, channel.parameter), []).append(channel.role)
    if inputs.operating is not None:
        for key in inputs.operating.signal_keys():
            instrument, parameter = key.split("/", 1)
            roles.setdefault((instrument, parameter), []).append(SIGNAL_ROLE + key)
    grouped: dict[str, list[Aggregate]] = {role: [] for names in roles.values() for role in names}
    for aggregate in aggregates:
        for role in roles.get((aggregate.instrument, aggregate.parameter), ()):
            grouped[role].append(aggregate)
    return grouped


@contextlib.contextmanager
def _bulk() -> Iterator[None]:
    """No cyclic GC while millions of short-lived objects are built (it rescans them all, again and again:
    measured 3x slower on a year of raw data); reference counting still frees them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _months(start: datetime, end: datetime, zone: tzinfo) -> list[tuple[datetime, datetime]]:
    spans = []
    chunk = start
    while chunk < end:
        local = chunk.astimezone(zone)
        chunk_end = min(month_bounds(local.year, local.month, zone)[1], end)
        spans.append((chunk, chunk_end))
        chunk = chunk_end
    return spans


async def _recompute_spans(
    store: Store, inputs: SourceInput, spans: Sequence[tuple[datetime, datetime]]
) -> tuple[dict[str, list[Aggregate]], int]:
    """Base-period rollups of the source's channels straight from the raw readings, one span (month) at a time.

    The next span is already being read while this one is computed (the store works in its own thread or
    server), so the store and the computation overlap.
    """
    wanted = {(c.instrument, c.parameter): c for c in inputs.channels}
    result: dict[str, list[Aggregate]] = {c.role: [] for c in inputs.channels}
    count = 0
    if not spans:
        return result, count
    with _bulk():
        pending = asyncio.ensure_future(store.query(site=inputs.site, start=spans[0][0], end=spans[0][1]))
        for index in range(len(spans)):
            readings = await pending
            if index + 1 < len(spans):
                following = spans[index + 1]
                pending = asyncio.ensure_future(store.query(site=inputs.site, start=following[0], end=following[1]))
            by_channel: dict[str, list[StoredReading]] = {role: [] for role in result}
            for reading in readings:
                channel = wanted.get((reading.instrument, reading.parameter))
                if channel is not None:
                    by_channel[channel.role].append(reading)
            del readings
            for channel in inputs.channels:
                samples = by_channel.pop(channel.role)
                count += len(samples)
                result[channel.role] += base_aggregates_from_samples(samples, channel.rules)
                await asyncio.sleep(0)  # let the next span's query proceed
    return result, count


def _recompute_worker(
    store_url: str, inputs: SourceInput, spans: Sequence[tuple[datetime, datetime]]
) -> tuple[dict[str, list[Aggregate]], int]:
    """In a worker process: open the store by its URL and recompute these spans."""

    async def run() -> tuple[dict[str, list[Aggregate]], int]:
        async with open_store(store_url) as store:
            return await _recompute_spans(store, inputs, spans)

    return asyncio.run(run())


async def _recompute_from_raw(
    store: Store, store_url: str | None, inputs: SourceInput, start: datetime, end: datetime, *, workers: int
) -> tuple[dict[str, list[Aggregate]], int]:
    """The period's base-period rollups from raw data; months split over `workers` processes when > 1.

    Processes, not threads: the rollup arithmetic is Python and holds the GIL. Each worker opens the store
    itself (SQLite readers work beside the writer in WAL mode; InfluxDB takes parallel queries).
    """
    spans = _months(start, end, inputs.zone)
    if workers <= 1 or store_url is None or len(spans) < 2:
        return await _recompute_spans(store, inputs, spans)
    workers = min(workers, len(spans))
    shares = [spans[i * len(spans) // workers : (i + 1) * len(spans) // workers] for i in range(workers)]
    loop = asyncio.get_running_loop()
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = await asyncio.gather(
                *(loop.run_in_executor(pool, _recompute_worker, store_url, inputs, share) for share in shares)
            )
    except (BrokenProcessPool, RuntimeError) as error:
        # Spawned workers import the caller's __main__: a script without an `if __name__ == "__main__":` guard
        # cannot start them. The check still runs, in this process.
        log.warning("raw-data check: worker processes failed (%s); recomputing in this process", error)
        return await _recompute_spans(store, inputs, spans)
    merged: dict[str, list[Aggregate]] = {c.role: [] for c in inputs.channels}
    for part, _ in parts:  # in time order: the shares are consecutive
        for role, items in part.items():
            merged[role] += items
    return merged, sum(count for _, count in parts)


def _differing(stored: Mapping[str, Sequence[Aggregate]], fresh: Mapping[str, Sequence[Aggregate]]) -> tuple[int, int]:
    compared = differing = 0
    for role, items in fresh.items():
        old = {a.start: a for a in stored.get(role, ())}
        for aggregate in items:
            compared += 1
            before = old.pop(aggregate.start, None)
            same = before is not None and (before.value, before.valid, before.n_valid, before.n_maintenance) == (
                aggregate.value,
                aggregate.valid,
                aggregate.n_valid,
                aggregate.n_maintenance,
            )
            differing += not same
        differing += len(old)  # stored rollups with no raw data behind them
        compared += len(old)
    return compared, differing


async def produce_report(
    config: GatewayConfig,
    store: Store,
    source_id: str,
    *,
    year: int,
    month: int | None = None,
    now: datetime | None = None,
    check_raw: bool = True,
    workers: int | None = None,
) -> ProducedReport:
    """Build the report of a source for a year or a month from the store's rollups, checked against raw data.

    `workers`: processes for the raw-data check (default: 1 for a month, up to 2 cores for a year). They are
    spawned, so a calling script needs the usual `if __name__ == "__main__":` guard (else: one process).
    """
    try:
        source = find_source(config.sources, source_id)
    except LookupError as error:
        raise ReportError(str(error)) from None
    if month is not None and not 1 <= month <= 12:
        raise ReportError(f"month {month} is not in 1..12")
    inputs = source_input(source, config.rollup.resolved_rule_sets(), config.rollup.resolved_compliance())
    zone = inputs.zone
    start, end = month_bounds(year, month, zone) if month else year_bounds(year, zone)
    stored = await store.query_aggregates(period=inputs.base, site=inputs.site, start=start, end=end)
    aggregates = _by_role(inputs, stored)
    history: dict[str, list[Aggregate]] = {}
    if any(c.substitution and c.substitution.method.value == "part75" for c in inputs.channels):
        before = await store.query_aggregates(
            period=inputs.base, site=inputs.site, start=start - timedelta(hours=HISTORY_HOURS), end=start
        )
        history = _by_role(inputs, before)
    canonical = canonical_config(source, inputs)
    record = ConfigRecord(sha256=config_hash(canonical), canonical=canonical)
    generated_at = (now or datetime.now(UTC)).astimezone(UTC)
    operating_log = OperatingLog(config.gateway.state)
    try:
        manual = operating_log.entries(source.id, start=start - timedelta(hours=HISTORY_HOURS), end=end)
    finally:
        operating_log.close()
    part75_tests = _part75_tests(config, source, start, end)
    qa = qa_input(config, source, end)
    channels = {(c.instrument, c.parameter) for c in inputs.channels}
    revisions = [
        _revision_entry(r)
        for r in await store.query_revisions(site=inputs.site, start=start, end=end)
        if (r.reading.instrument, r.reading.parameter) in channels
    ]
    report, header, rows = build_report_with_rows(
        inputs,
        year=year,
        month=month,
        aggregates=aggregates,
        history=history,
        config=record,
        generated_at=generated_at,
        revisions=revisions,
        manual=manual,
        part75_tests=part75_tests,
        qa=qa,
    )
    if check_raw:
        if workers is None:
            workers = 1 if month is not None else min(2, os.cpu_count() or 1)
        url = None if ":memory:" in config.store.url else config.store.url
        # Raw data past its retention are gone (or going): those periods' stored rollups are the record.
        kept_from = await raw_kept_from(store, generated_at)
        check_start = start if kept_from is None else min(max(start, kept_from), end)
        fresh, raw_count = await _recompute_from_raw(store, url, inputs, check_start, end, workers=workers)
        checked = {role: [a for a in items if a.start >= check_start] for role, items in aggregates.items()}
        compared, differing = _differing(checked, fresh)
        note = ""
        if check_start > start:
            for role, items in aggregates.items():
                fresh[role] = [a for a in items if a.start < check_start] + fresh.get(role, [])
            note = f"raw data expired before {_z(check_start)}; totals from stored rollups for the " + (
                "whole period" if check_start >= end else "periods before it, recomputed from raw data after it"
            )
        for role, items in aggregates.items():  # operating-state signals: as stored (they decide states, not mass)
            if role.startswith(SIGNAL_ROLE):
                fresh[role] = list(items)
        recomputed = build_report(
            inputs,
            year=year,
            month=month,
            aggregates=fresh,
            history=history,
            config=record,
            generated_at=generated_at,
            manual=manual,
            part75_tests=part75_tests,
            qa=qa,
        )
        totals = {t.name: t.total_t for t in recomputed.totals}
        difference = totals_difference(report.totals, totals)
        check = Reproducibility(
            method="base-period rollups recomputed from the stored raw readings with the same rules; totals rebuilt "
            "and compared with the reported ones",
            raw_readings=raw_count,
            periods_compared=compared,
            periods_differing=differing,
            recomputed_totals_t=totals,
            max_difference_t=difference,
            tolerance_t=TOTALS_TOLERANCE_T,
            matches=difference <= TOTALS_TOLERANCE_T and differing == 0,
            raw_expired_before=check_start if check_start > start else None,
            note=note,
        )
        warnings = list(report.warnings)
        if not check.matches:
            warnings.append(
                f"reproducibility check failed: {differing} stored periods differ from the raw data, totals by up to "
                f"{difference:g} t; run `cems-gateway rollup recompute` for the period"
            )
        report = report.model_copy(update={"reproducibility": check, "warnings": warnings})
    return ProducedReport(report, header, rows, inputs)


def _part75_tests(config: GatewayConfig, source: SourceConfig, start: datetime, end: datetime) -> Part75Tests | None:
    """The source's Part 75 QA tests a report of [start, end) uses (None: no [source.part75])."""
    if source.part75 is None:
        return None
    log = Part75Log(config.gateway.state)
    try:
        return log.tests(source.id, start=start - PART75_LOOKBACK, end=end)
    finally:
        log.close()


def qa_input(config: GatewayConfig, source: SourceConfig, end: datetime) -> QaInput | None:
    """[source.qal3] and every check of its components before `end` from the calibration-check log (the charts
    need their history; the log keeps at most MAX_CHECKS_PER_COMPONENT per component)."""
    if source.qal3 is None:
        return None
    checks_log = QaCheckLog(config.gateway.state)
    try:
        recorded = checks_log.checks(source.id, end=end)
    finally:
        checks_log.close()
    qal3 = source.qal3
    return QaInput(
        components=tuple(Qal3Component(c.instrument, c.parameter, qal3.spec(c)) for c in qal3.component),
        checks=tuple(QaLogEntry(r.id, r.instrument, r.parameter, r.result(), r.origin, r.by, r.why) for r in recorded),
        flag_out_of_control=qal3.flag_out_of_control,
        max_check_interval=(
            None if qal3.max_check_interval_days is None else timedelta(days=qal3.max_check_interval_days)
        ),
    )


def _revision_entry(revision: Revision) -> RevisionEntry:
    r = revision.reading
    return RevisionEntry(
        id=revision.id,
        agent=r.agent,
        instrument=r.instrument,
        parameter=r.parameter,
        ts_utc=r.ts,
        value=r.value,
        unit=r.unit,
        quality=r.quality.value,
        status=r.status,
        state=revision.state.value,
        batch_seq=revision.batch_seq,
        batch_sent_at=revision.batch_sent_at,
        received_at=revision.received_at,
        decided_by=revision.decided_by,
        decided_why=revision.decided_why,
        decided_at=revision.decided_at,
        superseded_by=revision.superseded_by,
    )


def _z(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- files ---------------------------------------------------------------------------------------------------


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """docs/mrv-report.schema.json: the JSON schema of the report document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(MrvReport.model_json_schema(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _cell(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, float):
        return round(value, 9)
    return value


def _table(items: Sequence[Any]) -> tuple[list[str], list[list[object]]]:
    """pydantic models → header and rows (field order)."""
    if not items:
        return [], []
    header = list(type(items[0]).model_fields)
    return header, [[_cell(getattr(item, name)) for name in header] for item in items]


def _sections(report: MrvReport) -> dict[str, tuple[list[str], list[list[object]]]]:
    return {
        "totals": _table(report.totals),
        "availability": _table(report.availability),
        "limits": _table(report.limits),
        "compliance": _table(report.compliance),
        "exceedances": _table(report.exceedances),
        "substituted": _table(report.substituted),
        "maintenance": _table(report.maintenance),
        "revisions": _table(report.revisions.listed),
        "operating": _table(report.operating.runs if report.operating else []),
        "operating-months": _table(report.operating.by_month if report.operating else []),
        "calibration": _table(report.calibration.functions if report.calibration else []),
        "vcr": _table(report.calibration.weeks if report.calibration else []),
        **_part75_sections(report),
        **_qa_tables(report),
    }


def _part75_sections(report: MrvReport) -> dict[str, tuple[list[str], list[list[object]]]]:
    """CSV files / XLSX sheets of the 40 CFR Part 75 QA section (only when the source has one)."""
    section = report.part75
    if section is None:
        return {}
    return {
        "part75-channels": _table(section.channels),
        "part75-daily": _table(section.daily),
        "part75-linearity": _table(section.linearity),
        "part75-rata": _table(section.ratas),
        "part75-out-of-control": _table(section.out_of_control),
    }


def _qa_tables(report: MrvReport) -> dict[str, tuple[list[str], list[list[object]]]]:
    """The QA section's tables: the calibration-check log, QAL3 chart state per component, out-of-control
    periods (EN 14181:2014 §7). None without [source.qal3]."""
    qa = report.qa
    if qa is None:
        return {}

    def flat(table: tuple[list[str], list[list[object]]]) -> tuple[list[str], list[list[object]]]:
        header, rows = table  # statistics and limits (dicts) as JSON text in one cell
        return header, [[json.dumps(c, sort_keys=True) if isinstance(c, dict) else c for c in row] for row in rows]

    return {
        "qa-checks": flat(_table(qa.checks)),
        "qal3": flat(_table(qa.components)),
        "out-of-control": _table(qa.out_of_control),
    }


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([[_cell(v) for v in row] for row in rows])


def _summary_rows(report: MrvReport) -> list[tuple[str, object]]:
    period = report.period
    rows: list[tuple[str, object]] = [
        ("site", report.site),
        ("source", report.source),
        ("source name", report.source_name),
        ("period", f"{period.year}" + (f"-{period.month:02d}" if period.month else "")),
        (f"start ({period.time_zone})", period.start_local.isoformat()),
        (f"end ({period.time_zone}, exclusive)", period.end_local.isoformat()),
        ("base period", period.base_period),
        ("period complete", period.complete),
        ("generated at (UTC)", report.generated_at.isoformat()),
        ("monitoring plan", report.monitoring_plan.reference),
        ("reference O2 (% vol dry)", report.monitoring_plan.reference_o2_percent),
        ("O2 for the reference-O2 correction", report.monitoring_plan.o2_basis),
        ("config sha256", report.config.sha256),
        ("report schema version", report.schema_version),
    ]
    check = report.reproducibility
    if check is not None:
        rows += [
            ("reproducible from raw data", check.matches),
            ("raw readings rechecked", check.raw_readings),
            ("periods differing", check.periods_differing),
            ("largest total difference (t)", check.max_difference_t),
        ]
        if check.note:
            rows.append(("raw-data check", check.note))
    audit = report.revisions
    rows += [("raw readings revised: pending review", audit.pending), ("revisions approved", audit.approved)]
    return rows


def _write_xlsx(path: Path, produced: ProducedReport) -> None:
    report = produced.report
    workbook = Workbook(write_only=True)
    summary = workbook.create_sheet("Summary")
    for key, value in _summary_rows(report):
        summary.append([key, _cell(value)])
    summary.append([])
    summary.append(["warnings"])
    for warning in report.warnings:
        summary.append(["", warning])
    for name, (header, rows) in _sections(report).items():
        sheet = workbook.create_sheet(name.capitalize())
        sheet.append(header or ["(none)"])
        for row in rows:
            sheet.append(row)
    # Values, validity and mass per period; the method texts and the state basis are in the hourly CSV and on the
    # Substituted and Operating sheets (they would triple the cells, and openpyxl writes ~40k cells/s without lxml).
    keep = [
        i for i, name in enumerate(produced.hourly_header) if not name.endswith(" method") and name != "state basis"
    ]
    hourly = workbook.create_sheet("Hourly")
    hourly.append([produced.hourly_header[i] for i in keep])
    for row in produced.hourly_rows:
        hourly.append([_cell(row[i]) for i in keep])
    config = workbook.create_sheet("Config")
    config.append(["sha256", report.config.sha256])
    config.append(["canonical JSON", json.dumps(report.config.canonical, sort_keys=True, ensure_ascii=False)[:32_000]])
    workbook.save(path)


# -- PDF -----------------------------------------------------------------------------------------------------

_CYRILLIC = dict(
    zip(
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюяәғқңөұүһі",
        [
            "a", "b", "v", "g", "d", "e", "yo", "zh", "z", "i", "y", "k", "l", "m", "n", "o", "p", "r", "s", "t",
            "u", "f", "kh", "ts", "ch", "sh", "shch", "", "y", "", "e", "yu", "ya", "a", "g", "q", "ng", "o", "u",
            "u", "h", "i",
        ],
        strict=True,
    )
)  # fmt: skip
_SYMBOLS = {
    "≥": ">=",
    "≤": "<=",
    "σ": "sigma",
    "–": "-",
    "—": "-",
    "→": "->",
    "…": "...",
    "‘": "'",
    "’": "'",
    "“": '"',
    "”": '"',
    "№": "No.",
    "₂": "2",
    "Σ": "sum",
}


def transliterate(text: str) -> str:
    """Latin-1 text for fpdf2's core fonts: Russian/Kazakh Cyrillic to Latin letters, symbols spelled out."""
    out = []
    for char in text:
        lower = char.lower()
        if lower in _CYRILLIC:
            latin = _CYRILLIC[lower]
            out.append(latin.capitalize() if char != lower else latin)
        elif char in _SYMBOLS:
            out.append(_SYMBOLS[char])
        elif ord(char) < 256:
            out.append(char)
        else:
            out.append("?")
    return "".join(out)


def find_unicode_font(configured: Path | None = None) -> tuple[Path, Path | None] | None:
    """(regular, bold or None) TTF for the PDF: the configured file, else DejaVu Sans if the system has it."""
    if configured is not None:
        if not configured.is_file():
            raise ReportError(f"[rollup.reports] font {configured}: file not found")
        bold = configured.with_name(configured.stem + "-Bold" + configured.suffix)
        return configured, bold if bold.is_file() else None
    for candidate in map(Path, FONT_CANDIDATES):
        if candidate.is_file():
            bold = candidate.with_name("DejaVuSans-Bold.ttf")
            return candidate, bold if bold.is_file() else None
    return None


class _Pdf(FPDF):
    def __init__(self, title: str, font: tuple[Path, Path | None] | None) -> None:
        super().__init__(orientation="L", unit="mm", format="A4")
        self.title_text = title
        self.unicode = font is not None
        if font is not None:
            self.add_font("body", "", str(font[0]))
            self.add_font("body", "B", str(font[1] or font[0]))
            self.family_name = "body"
        else:
            self.family_name = "helvetica"
        self.set_auto_page_break(auto=True, margin=12)
        self.set_margins(12, 12, 12)

    def text_of(self, value: object) -> str:
        text = "" if value is None else str(_cell(value))
        return text if self.unicode else transliterate(text)

    def footer(self) -> None:
        self.set_y(-10)
        self.set_font(self.family_name, size=7)
        self.cell(0, 5, self.text_of(f"{self.title_text} — page {self.page_no()}/{{nb}}"), align="C")

    def heading(self, text: str) -> None:
        self.ln(2)
        self.set_font(self.family_name, "B", 11)
        self.cell(0, 7, self.text_of(text), new_x="LMARGIN", new_y="NEXT")
        self.set_font(self.family_name, size=8)

    def line_text(self, text: str, size: float = 8) -> None:
        self.set_font(self.family_name, size=size)
        self.multi_cell(0, 4.5, self.text_of(text), new_x="LMARGIN", new_y="NEXT")

    def grid(
        self, header: Sequence[str], rows: Sequence[Sequence[object]], widths: Sequence[float] | None = None
    ) -> None:
        if not rows:
            self.line_text("(none)")
            return
        self.set_font(self.family_name, size=7)
        style = FontFace(emphasis="BOLD", fill_color=(225, 230, 240))
        with self.table(
            col_widths=widths, text_align="LEFT", headings_style=style, line_height=3.8, padding=0.8
        ) as table:
            table.row([self.text_of(h) for h in header])
            for row in rows:
                table.row([self.text_of(v) for v in row])


_PDF_ROWS = 40


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _pdf_operating(pdf: _Pdf, report: MrvReport) -> None:
    """Periods per state and month, the rule that decided them, the manual log entries applied."""
    operating = report.operating
    if operating is None:
        return
    pdf.heading("Operating state (non-operating periods are neither missing nor substituted)")
    pdf.line_text(operating.rule, size=7)
    counts = ", ".join(f"{state} {count}" for state, count in operating.periods.items())
    pdf.line_text(f"base periods: {counts}; taken as operating for want of a signal: {operating.assumed_periods}")
    pdf.grid(
        ["month", "off", "start-up", "normal", "shut-down", "no signal"],
        [[m.month, m.off, m.start_up, m.normal, m.shut_down, m.assumed] for m in operating.by_month],
    )
    if operating.manual_log:
        pdf.grid(
            ["entry", "state", "from (UTC)", "to (UTC)", "by", "why", "recorded (UTC)"],
            [
                [f"#{e.id}", e.state, e.start_utc, e.end_utc, e.by, e.why, e.recorded_at]
                for e in operating.manual_log[:_PDF_ROWS]
            ],
        )


def _pdf_calibration(pdf: _Pdf, report: MrvReport) -> None:
    """QAL2 functions applied and the weekly VCR check (EN 14181:2014)."""
    section = report.calibration
    if section is None:
        return
    pdf.heading("QAL2 calibration functions and valid calibration range (EN 14181:2014)")
    pdf.line_text(section.applied, size=7)
    pdf.grid(
        ["channel", "QAL2 report", "date", "a", "b", "VCR", "unit", "weeks", "weeks over", "max week %", "new QAL2"],
        [
            [
                f.name,
                f.qal2_id,
                f.qal2_date.isoformat(),
                _number(f.a, 4),
                _number(f.b, 4),
                _number(f.vcr, 1),
                f.vcr_unit,
                f.weeks,
                f.weeks_over,
                _number(f.max_week_percent, 1),
                "DUE" if f.new_qal2_due else ("no VCR" if f.vcr is None else "not due"),
            ]
            for f in section.functions
        ],
    )
    pdf.line_text(
        f"{section.vcr_check}. New QAL2 due: more than {section.week_percent:g} % above the VCR in more than "
        f"{section.weeks_allowed} weeks, or more than {section.any_week_percent:g} % in any one week "
        f"({section.thresholds_source}).",
        size=7,
    )
    over = [w for w in section.weeks if w.percent_above > section.week_percent]
    if over:
        pdf.grid(
            ["channel", "week from", "valid periods", "above VCR", "% above"],
            [
                [w.name, w.week_start.isoformat(), w.valid_periods, w.above_vcr, _number(w.percent_above, 1)]
                for w in over[:_PDF_ROWS]
            ],
        )
        _more(pdf, len(over))


def _pdf_part75(pdf: _Pdf, report: MrvReport) -> None:
    """40 CFR Part 75 QA: channels, tests, out-of-control periods, bias adjustment."""
    section = report.part75
    if section is None:
        return
    pdf.heading("40 CFR Part 75 quality assurance: calibration, linearity, RATA, bias adjustment")
    pdf.line_text(section.rules, size=7)
    pdf.grid(
        ["channel", "span", "operating", "out of control", "grace", "BAF periods", "BAF"],
        [
            [
                c.channel,
                _number(c.span, 1),
                c.operating_periods,
                c.out_of_control_periods,
                c.grace_periods,
                c.baf_periods,
                ", ".join(f"{b:.3f}" for b in c.baf_values) or "1.000",
            ]
            for c in section.channels
        ],
    )
    if section.daily:
        pdf.grid(
            ["test", "channel", "completed (UTC)", "span", "zero error", "upscale error", "result", "by", "why"],
            [
                [
                    f"#{t.id}",
                    t.channel,
                    t.at_utc,
                    f"{t.span:g} {t.unit}",
                    _number(t.zero_error, 2),
                    _number(t.high_error, 2),
                    t.result.upper(),
                    t.by,
                    t.why,
                ]
                for t in section.daily[:_PDF_ROWS]
            ],
        )
        _more(pdf, len(section.daily))
    if section.linearity:
        pdf.grid(
            ["test", "channel", "completed (UTC)", "levels", "result", "by", "why"],
            [
                [f"#{t.id}", t.channel, t.at_utc, "; ".join(t.levels), t.result.upper(), t.by, t.why]
                for t in section.linearity[:_PDF_ROWS]
            ],
        )
    if section.ratas:
        pdf.grid(
            ["test", "channel", "completed (UTC)", "runs", "RA %", "mean d", "cc", "BAF", "result", "by", "why"],
            [
                [
                    f"#{t.id}",
                    t.channel,
                    t.at_utc,
                    t.runs,
                    _number(t.relative_accuracy_percent, 2),
                    _number(t.mean_difference, 3),
                    _number(t.confidence_coefficient, 3),
                    f"{t.baf:.3f}",
                    t.result.upper(),
                    t.by,
                    t.why,
                ]
                for t in section.ratas[:_PDF_ROWS]
            ],
        )
    if section.out_of_control:
        pdf.grid(
            ["channel", "from (UTC)", "to (UTC)", "operating periods", "why"],
            [[r.channel, r.start_utc, r.end_utc, r.periods, r.reason] for r in section.out_of_control[:_PDF_ROWS]],
        )
        _more(pdf, len(section.out_of_control))


def _pdf_qa(pdf: _Pdf, report: MrvReport) -> None:
    """Calibration checks, QAL3 chart state per component and out-of-control periods (EN 14181:2014 §7)."""
    qa = report.qa
    if qa is None:
        return
    pdf.heading(f"Calibration checks and QAL3 drift and precision control ({CLAUSE})")
    pdf.line_text(qa.rule, size=7)
    pdf.grid(
        ["component", "method", "s_AMS zero", "s_AMS span", "checks", "zero chart", "span chart", "out of control",
         "periods affected", "longest without zero/span check (d)"],
        [
            [c.component, c.method, _number(c.s_ams_zero, 4), _number(c.s_ams_span, 4), c.checks, c.zero_status,
             c.span_status, c.out_of_control_periods, c.affected_periods,
             f"{c.longest_zero_interval_days:.1f} / {c.longest_span_interval_days:.1f}"]
            for c in qa.components
        ],
    )  # fmt: skip
    if qa.out_of_control:
        pdf.grid(
            ["component", "from (local)", "to (local)", "signals", "data"],
            [
                [
                    o.component,
                    f"{o.start_local:%Y-%m-%d %H:%M}",
                    f"{o.end_local:%Y-%m-%d %H:%M}" if o.end_local else "not adjusted",
                    "; ".join(o.signals),
                    o.treatment,
                ]
                for o in qa.out_of_control[:_PDF_ROWS]
            ],
        )
        _more(pdf, len(qa.out_of_control))
    if qa.checks:
        pdf.grid(
            ["#", "component", "kind", "time (local)", "reference", "reading", "d", "chart", "by"],
            [
                [c.id, c.component, c.kind + (" (adjusted)" if c.adjusted else ""), f"{c.at_local:%Y-%m-%d %H:%M}",
                 _number(c.reference, 4), _number(c.reading, 4), _number(c.deviation, 4), c.status,
                 f"{c.origin}: {c.by}"]
                for c in qa.checks[:_PDF_ROWS]
            ],
        )  # fmt: skip
        _more(pdf, len(qa.checks))
    else:
        pdf.line_text("no calibration checks recorded in the period", size=7)


def _write_pdf(
    path: Path, report: MrvReport, font: tuple[Path, Path | None] | None, charts: Sequence[Chart] = ()
) -> None:
    period = report.period
    label = f"{period.year}" + (f"-{period.month:02d}" if period.month else "")
    title = f"MRV report {report.source} {label}"
    pdf = _Pdf(title, font)
    pdf.alias_nb_pages()
    pdf.add_page()
    pdf.set_font(pdf.family_name, "B", 15)
    pdf.multi_cell(
        0,
        8,
        pdf.text_of(f"MRV report — {report.source_name or report.source} ({report.source}), {label}"),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.set_font(pdf.family_name, size=9)
    for key, value in _summary_rows(report):
        pdf.line_text(f"{key}: {_cell(value)}", size=8)
    if not pdf.unicode:
        pdf.line_text(
            "No Unicode font was found, so non-Latin text is transliterated in this PDF; the JSON, CSV and XLSX "
            "files carry the original (set [rollup.reports] font or install fonts-dejavu-core).",
            size=7,
        )

    pdf.heading("Annual totals" if period.month is None else "Monthly totals")
    pdf.grid(
        ["pollutant", "total t", "measured t", "substituted t", "substituted periods", "unsubstituted", "complete"],
        [
            [
                t.name,
                _number(t.total_t),
                _number(t.measured_t),
                _number(t.substituted_t),
                t.substituted_periods,
                t.unsubstituted_periods,
                "yes" if t.complete else "NO",
            ]
            for t in report.totals
        ],
    )
    pdf.heading("Data availability per parameter")
    pdf.grid(
        [
            "parameter",
            "instrument",
            "unit",
            "expected",
            "valid",
            "maintenance",
            "invalid",
            "missing",
            "substituted",
            "flagged",
            "availability %",
            "invalid days",
        ],
        [
            [
                a.name,
                a.instrument,
                a.unit,
                a.expected_periods,
                a.valid_periods,
                a.maintenance_periods,
                a.invalid_periods,
                a.missing_periods,
                a.substituted_periods,
                a.flagged_periods,
                f"{a.availability_percent:.2f}",
                a.invalid_days,
            ]
            for a in report.availability
        ],
    )
    _pdf_operating(pdf, report)
    _pdf_calibration(pdf, report)
    _pdf_part75(pdf, report)
    _pdf_qa(pdf, report)
    pdf.heading("Emission limits (validated values: O2-corrected, confidence interval subtracted)")
    pdf.grid(
        [
            "pollutant",
            "ELV mg/Nm³",
            "averaging",
            "CI %",
            "CI mg/Nm³",
            "valid periods",
            "not judged",
            "exceedances",
            "max validated",
        ],
        [
            [
                x.pollutant,
                _number(x.elv, 1),
                x.averaging,
                _number(x.ci_percent, 0),
                _number(x.confidence_interval, 1),
                x.valid_periods,
                x.refused_periods,
                x.exceedances,
                _number(x.max_validated, 1),
            ]
            for x in report.limits
        ],
    )
    if report.compliance:
        pdf.heading("IED compliance tests (validated values; Directive 2010/75/EU Annex V Part 4 / Annex VI Part 8)")
        pdf.grid(
            ["pollutant", "test", "limit mg/Nm³", "valid periods", "above", "within %", "max", "result"],
            [
                [
                    c.pollutant,
                    c.description,
                    _number(c.limit, 1),
                    c.periods,
                    c.periods_above,
                    _number(c.share_within_percent, 2),
                    _number(c.max_value, 1),
                    "not judged" if c.passed is None else ("pass" if c.passed else "FAIL"),
                ]
                for c in report.compliance
            ],
            widths=[22, 80, 24, 24, 16, 20, 20, 20],
        )
        pdf.line_text(f"Scope: {report.compliance[0].scope}; rule set {report.compliance[0].rule_set}.", size=7)
    pdf.heading("Exceedances")
    pdf.grid(
        ["pollutant", "averaging", f"start ({period.time_zone})", "end", "duration h", "max validated", "ELV"],
        [
            [
                e.pollutant,
                e.averaging,
                e.start_local.strftime("%Y-%m-%d %H:%M"),
                e.end_local.strftime("%Y-%m-%d %H:%M"),
                _number(e.duration_hours, 1),
                _number(e.max_validated, 1),
                _number(e.elv, 1),
            ]
            for e in report.exceedances[:_PDF_ROWS]
        ],
    )
    _more(pdf, len(report.exceedances))
    pdf.heading("Substituted periods (every period is in the hourly CSV/XLSX)")
    pdf.grid(
        ["parameter", f"start ({period.time_zone})", "periods", "value", "unit", "method"],
        [
            [s.name, s.start_local.strftime("%Y-%m-%d %H:%M"), s.periods, _number(s.value), s.unit, s.method]
            for s in report.substituted[:_PDF_ROWS]
        ],
        widths=[18, 28, 14, 20, 16, 177],
    )
    _more(pdf, len(report.substituted))
    pdf.heading("Calibration and maintenance periods")
    pdf.grid(
        ["instrument", "parameters", f"start ({period.time_zone})", "end", "minutes"],
        [
            [
                m.instrument,
                ", ".join(m.parameters),
                m.start_local.strftime("%Y-%m-%d %H:%M"),
                m.end_local.strftime("%Y-%m-%d %H:%M"),
                m.minutes,
            ]
            for m in report.maintenance[:_PDF_ROWS]
        ],
    )
    _more(pdf, len(report.maintenance))
    pdf.heading("Reproducibility check")
    check = report.reproducibility
    if check is None:
        pdf.line_text("not run")
    else:
        verdict = "PASSED" if check.matches else "FAILED"
        pdf.line_text(
            f"{verdict}: {check.method}. {check.raw_readings} raw readings, {check.periods_compared} periods compared, "
            f"{check.periods_differing} differ; largest total difference {check.max_difference_t:g} t "
            f"(tolerance {check.tolerance_t:g} t)." + (f" {check.note}." if check.note else "")
        )
    pdf.heading("Revisions of raw readings")
    audit = report.revisions
    pdf.line_text(
        f"{audit.pending} pending review (not used), {audit.approved} approved by an operator (used), "
        f"{audit.superseded} superseded (values replaced by an approved revision, kept)."
    )
    if audit.listed:
        pdf.grid(
            ["id", "state", "time (UTC)", "instrument/parameter", "value", "batch", "decided by: why"],
            [
                [
                    r.id,
                    r.state,
                    r.ts_utc.strftime("%Y-%m-%d %H:%M:%S"),
                    f"{r.instrument}/{r.parameter}",
                    f"{'-' if r.value is None else f'{r.value:g}'} {r.unit} {r.quality}",
                    "-" if r.batch_seq is None else str(r.batch_seq),
                    f"{r.decided_by}: {r.decided_why}" if r.decided_by else "",
                ]
                for r in audit.listed[:_PDF_ROWS]
            ],
        )
        _more(pdf, len(audit.listed))
    pdf.heading("Warnings")
    for warning in report.warnings or ["none"]:
        pdf.line_text(f"• {warning}" if pdf.unicode else f"- {warning}")
    pdf.heading("Configuration")
    pdf.line_text(f"sha256 {report.config.sha256} of the canonical JSON in the .json and .xlsx files.")
    for method in report.monitoring_plan.methods:
        pdf.line_text(
            f"{method.name}: {method.instrument}/{method.parameter} [{method.basis}]; rule set {method.rule_set}; "
            f"substitution {method.substitution}",
            size=7,
        )
    add_chart_pages(pdf, charts, text=pdf.text_of, family=pdf.family_name)
    pdf.output(str(path))


def _more(pdf: _Pdf, count: int) -> None:
    if count > _PDF_ROWS:
        pdf.line_text(f"… {count - _PDF_ROWS} more in the CSV and XLSX files", size=7)


def write_report_files(produced: ProducedReport, directory: Path, *, font: Path | None = None) -> list[Path]:
    """JSON, XLSX, PDF and CSV files of a report in `directory`; returns their paths (JSON first)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / produced.basename
    report = produced.report
    written = [base.with_suffix(".json")]
    written[0].write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    for name, (header, rows) in _sections(report).items():
        path = directory / f"{produced.basename}-{name}.csv"
        _write_csv(path, header, rows)
        written.append(path)
    hourly = directory / f"{produced.basename}-hourly.csv"
    _write_csv(hourly, produced.hourly_header, produced.hourly_rows)
    written.append(hourly)
    _write_xlsx(base.with_suffix(".xlsx"), produced)
    written.append(base.with_suffix(".xlsx"))
    charts = report_charts(report, produced.hourly_header, produced.hourly_rows, produced.inputs)
    _write_pdf(base.with_suffix(".pdf"), report, find_unicode_font(font), charts)
    written.append(base.with_suffix(".pdf"))
    return written


# -- scheduled feed ------------------------------------------------------------------------------------------

_FEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS report_feed (
    source     TEXT    NOT NULL,
    period     TEXT    NOT NULL,  -- 2024 or 2024-05
    json_path  TEXT    NOT NULL,
    written_ns INTEGER NOT NULL,
    posted_ns  INTEGER,           -- NULL until the POST was accepted (or when there is nothing to POST to)
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (source, period)
) WITHOUT ROWID;
"""


REPORT_FEED_KEEP_YEARS = 2
"""Rows of `report_feed` kept for periods of this many calendar years back (the feed needs only last year's)."""


@dataclass(frozen=True)
class FeedEvent:
    source: str
    period: str
    action: str
    """written, posted, post_failed"""
    detail: str = ""


class _FeedState(StateFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, _FEED_SCHEMA)

    def get(self, source: str, period: str) -> tuple[str, int | None] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT json_path, posted_ns FROM report_feed WHERE source = ? AND period = ?", (source, period)
            ).fetchone()
        return None if row is None else (str(row[0]), None if row[1] is None else int(row[1]))

    def written(self, source: str, period: str, json_path: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO report_feed (source, period, json_path, written_ns) VALUES (?, ?, ?, ?)",
                (source, period, json_path, time.time_ns()),
            )

    def forget_before(self, period: str) -> int:
        """Drop the rows of periods before `period` (a year, "2024"): the feed only ever looks at the last month
        and the last year, so older rows are history nobody reads (the report files themselves stay)."""
        with self._lock:
            return int(self._db.execute("DELETE FROM report_feed WHERE period < ?", (period,)).rowcount)

    def posted(self, source: str, period: str, *, error: str = "") -> None:
        with self._lock:
            if error:
                self._db.execute(
                    "UPDATE report_feed SET attempts = attempts + 1, last_error = ? WHERE source = ? AND period = ?",
                    (error, source, period),
                )
            else:
                self._db.execute(
                    "UPDATE report_feed SET attempts = attempts + 1, posted_ns = ?, last_error = '' "
                    "WHERE source = ? AND period = ?",
                    (time.time_ns(), source, period),
                )


def _due_periods(now: datetime, zone: Any, delay: timedelta) -> list[tuple[int, int | None]]:
    """The last complete month and year, once their end + delay has passed (local calendar)."""
    local = (now - delay).astimezone(zone)
    due: list[tuple[int, int | None]] = []
    year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
    due.append((year, month))
    due.append((local.year - 1, None))
    return due


class ReportFeed:
    """Writes each source's monthly and annual reports once the period is over, and POSTs their JSON.

    Restart-safe: what was written and posted is kept in the gateway state SQLite (table `report_feed`);
    a failed POST is tried again on the next tick. Only the most recent month and year are produced (no
    backfill of older periods), and a period without any rollups is skipped.
    """

    def __init__(
        self,
        config: GatewayConfig,
        store: Store,
        *,
        engine: RollupEngine | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.engine = engine
        self.now = now
        self.transport = transport
        self.state = _FeedState(config.gateway.state)

    def close(self) -> None:
        self.state.close()

    async def tick(self) -> list[FeedEvent]:
        events: list[FeedEvent] = []
        settings = self.config.rollup.reports
        now = self.now()
        for source in self.config.sources:
            for year, month in _due_periods(now, source.zone, timedelta(hours=settings.delay_hours)):
                label = f"{year}" if month is None else f"{year}-{month:02d}"
                state = await asyncio.to_thread(self.state.get, source.id, label)
                if state is None:
                    path = await self._write(source, year, month, now)
                    if path is None:
                        continue
                    events.append(FeedEvent(source.id, label, "written", str(path)))
                    state = (str(path), None)
                if settings.post_url and state[1] is None:
                    events.append(await self._post(source.id, label, Path(state[0])))
        await asyncio.to_thread(self.state.forget_before, f"{now.year - REPORT_FEED_KEEP_YEARS}")
        return events

    async def run(self, *, interval: float = 300.0) -> None:
        while True:
            try:
                for event in await self.tick():
                    log.info("report feed: %s %s %s %s", event.source, event.period, event.action, event.detail)
            except Exception:
                log.exception("report feed: tick failed; trying again in %.0f s", interval)
            await asyncio.sleep(interval)

    async def _write(self, source: SourceConfig, year: int, month: int | None, now: datetime) -> Path | None:
        zone = source.zone
        start, end = month_bounds(year, month, zone) if month else year_bounds(year, zone)
        if self.engine is not None:  # late data first, so the report sees every reading stored so far
            await self.engine.catch_up()
        probe = await self.store.query_aggregates(
            period=source_input(source, self.config.rollup.resolved_rule_sets()).base,
            site=source.site,
            instrument=source.flow.instrument,
            start=start,
            end=end,
        )
        if not probe:
            return None
        produced = await produce_report(self.config, self.store, source.id, year=year, month=month, now=now)
        settings = self.config.rollup.reports
        paths = await asyncio.to_thread(write_report_files, produced, settings.directory, font=settings.font)
        label = f"{year}" if month is None else f"{year}-{month:02d}"
        await asyncio.to_thread(self.state.written, source.id, label, str(paths[0]))
        return paths[0]

    async def _post(self, source: str, label: str, path: Path) -> FeedEvent:
        settings = self.config.rollup.reports
        assert settings.post_url is not None
        headers = {"Content-Type": "application/json"}
        if settings.post_token is not None:
            headers["Authorization"] = f"Bearer {settings.post_token.get_secret_value()}"
        try:
            body = await asyncio.to_thread(path.read_bytes)
            async with httpx.AsyncClient(timeout=settings.post_timeout, transport=self.transport) as client:
                response = await client.post(settings.post_url, content=body, headers=headers)
            if response.is_success:
                await asyncio.to_thread(self.state.posted, source, label)
                return FeedEvent(source, label, "posted", f"HTTP {response.status_code}")
            error = f"HTTP {response.status_code}: {response.text[:200]}"
        except (OSError, httpx.HTTPError) as failure:
            error = f"{type(failure).__name__}: {failure}"
        await asyncio.to_thread(lambda: self.state.posted(source, label, error=error))
        log.warning("report feed: POST of %s %s to %s failed (%s); will retry", source, label, settings.post_url, error)
        return FeedEvent(source, label, "post_failed", error)


# -- CLI -----------------------------------------------------------------------------------------------------

MRV_COMMANDS = ("rollup", "report", "report-feed")


def add_mrv_commands(commands: Any) -> None:
    """Adds `rollup recompute|status`, `report` and `report-feed` to cems-gateway's subcommands."""
    rollup = commands.add_parser("rollup", help="rollups: recompute a time range, show pending work")
    rollup_commands = rollup.add_subparsers(dest="rollup_command", required=True)
    recompute = rollup_commands.add_parser("recompute", help="recompute every rollup of [--from, --to) from raw data")
    recompute.add_argument("config", type=Path)
    recompute.add_argument(
        "--from", dest="start", required=True, type=cli_time, help="ISO time, e.g. 2024-05-01T00:00+05:00"
    )
    recompute.add_argument(
        "--to", dest="end", required=True, type=cli_time, help="ISO time (exclusive); no offset means UTC"
    )
    recompute.add_argument("--site", help="only this site")
    status = rollup_commands.add_parser("status", help="hours waiting to be recomputed; process them with --process")
    status.add_argument("config", type=Path)
    status.add_argument("--process", action="store_true", help="recompute the pending hours now")
    status.add_argument(
        "--retry", action="store_true", help="put the set-aside series (their rollup failed) back, then process"
    )
    report = commands.add_parser("report", help="MRV report of a source: CSV, JSON, XLSX and PDF")
    report.add_argument("config", type=Path)
    report.add_argument("--source", required=True, help="[[source]] id")
    report.add_argument("--year", type=int, required=True)
    report.add_argument("--month", type=int, help="1-12 for a monthly report")
    report.add_argument("--out", type=Path, help="directory (default: [rollup.reports] directory)")
    report.add_argument("--no-raw-check", action="store_true", help="skip the reproducibility check from raw data")
    feed = commands.add_parser("report-feed", help="write (and POST) monthly and annual reports on schedule")
    feed.add_argument("config", type=Path)
    feed.add_argument("--once", action="store_true", help="one pass, then exit")
    feed.add_argument("--interval", type=float, default=300.0, help="seconds between passes")


async def _rollup_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    store = open_store(config.store.url)
    await store.open()
    engine = RollupEngine.from_config(config, store)
    try:
        if args.rollup_command == "recompute":
            start, end = args.start, args.end
            if end <= start:
                print(f"--to {end.isoformat()} is not after --from {start.isoformat()}")
                return 2
            stats = await engine.recompute(start, end, site=args.site)
            print(f"recomputed [{start.isoformat()}, {end.isoformat()}): {stats.summary()}")
            return 0
        pending = await engine.pending()
        print(f"{pending} (series, hour) pairs waiting for recomputation")
        for site, instrument, parameter, hour_ns, _, error in engine.marks.set_aside_marks():
            print(f"set aside: {site}/{instrument}/{parameter} hour {from_ns(hour_ns).isoformat()}: {error}")
        if args.retry:
            print(f"{await engine.release_set_aside()} set-aside (series, hour) pairs put back")
        if args.process or args.retry:
            while True:  # every pass covers all marks present when it starts: only a full pass needs another
                stats = await engine.process_dirty()
                print(stats.summary())
                if not stats.full:
                    break
        return 0
    finally:
        engine.close()
        await store.close()


async def _report_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    store = open_store(config.store.url)
    await store.open()
    engine = RollupEngine.from_config(config, store)
    try:
        await engine.catch_up()  # pending rollups first, so the report sees every reading stored so far
        produced = await produce_report(
            config, store, args.source, year=args.year, month=args.month, check_raw=not args.no_raw_check
        )
    finally:
        engine.close()
        await store.close()
    directory = args.out or config.rollup.reports.directory
    paths = write_report_files(produced, directory, font=config.rollup.reports.font)
    for total in produced.report.totals:
        flag = "" if total.complete else " (INCOMPLETE)"
        print(f"{total.name:<12} {total.total_t:>16.3f} t{flag}")
    check = produced.report.reproducibility
    if check is not None:
        print(f"reproducible from raw data: {'yes' if check.matches else 'NO'} ({check.raw_readings} readings)")
    for warning in produced.report.warnings:
        print(f"warning: {warning}")
    for path in paths:
        print(f"wrote {path}")
    return 0


async def _feed_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    store = open_store(config.store.url)
    await store.open()
    engine = RollupEngine.from_config(config, store)
    feed = ReportFeed(config, store, engine=engine)
    try:
        if args.once:
            for event in await feed.tick():
                print(f"{event.source} {event.period}: {event.action} {event.detail}")
        else:
            await feed.run(interval=args.interval)
        return 0
    finally:
        feed.close()
        engine.close()
        await store.close()


def run_mrv_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    """Runs a command added by add_mrv_commands; errors are printed for the operator, not raised."""
    try:
        if args.command == "rollup":
            return asyncio.run(_rollup_command(config, args))
        if args.command == "report":
            return asyncio.run(_report_command(config, args))
        return asyncio.run(_feed_command(config, args))
    except ReportError as error:
        print(f"report error: {error}")
        return 1
    except StoreError as error:
        print(f"store error: {error}")
        return 1
    except ValueError as error:
        print(f"error: {error}")
        return 2
