"""A report as files: `{source}-{year}[-{month}]` .json, .xlsx, .pdf and -*.csv, and the report's JSON schema."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from openpyxl import Workbook

from gateway.mrv.report import MrvReport
from gateway.mrv.report_charts import report_charts
from gateway.mrv.report_pdf import find_unicode_font, write_pdf
from gateway.mrv.report_production import ProducedReport
from gateway.mrv.report_tables import report_sections, summary_rows, table_cell

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "mrv-report.schema.json"


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """docs/mrv-report.schema.json: the JSON schema of the report document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(MrvReport.model_json_schema(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([[table_cell(v) for v in row] for row in rows])


def _write_xlsx(path: Path, produced: ProducedReport) -> None:
    report = produced.report
    workbook = Workbook(write_only=True)
    summary = workbook.create_sheet("Summary")
    for key, value in summary_rows(report):
        summary.append([key, table_cell(value)])
    summary.append([])
    summary.append(["warnings"])
    for warning in report.warnings:
        summary.append(["", warning])
    for name, (header, rows) in report_sections(report).items():
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
        hourly.append([table_cell(row[i]) for i in keep])
    config = workbook.create_sheet("Config")
    config.append(["sha256", report.config.sha256])
    config.append(["canonical JSON", json.dumps(report.config.canonical, sort_keys=True, ensure_ascii=False)[:32_000]])
    workbook.save(path)


def write_report_files(produced: ProducedReport, directory: Path, *, font: Path | None = None) -> list[Path]:
    """JSON, XLSX, PDF and CSV files of a report in `directory`; returns their paths (JSON first)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / produced.basename
    report = produced.report
    written = [base.with_suffix(".json")]
    written[0].write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    for name, (header, rows) in report_sections(report).items():
        path = directory / f"{produced.basename}-{name}.csv"
        _write_csv(path, header, rows)
        written.append(path)
    hourly = directory / f"{produced.basename}-hourly.csv"
    _write_csv(hourly, produced.hourly_header, produced.hourly_rows)
    written.append(hourly)
    _write_xlsx(base.with_suffix(".xlsx"), produced)
    written.append(base.with_suffix(".xlsx"))
    charts = report_charts(report, produced.hourly_header, produced.hourly_rows, produced.inputs)
    write_pdf(base.with_suffix(".pdf"), report, find_unicode_font(font), charts)
    written.append(base.with_suffix(".pdf"))
    return written
