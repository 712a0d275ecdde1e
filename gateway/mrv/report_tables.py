"""Pure: a report's sections as header and rows, the one shape the CSV, XLSX and PDF files are written from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway.mrv.report import MrvReport


def table_cell(value: object) -> object:
    """One value as a file cell: times in ISO 8601, lists joined, floats to 9 decimals."""
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
    return header, [[table_cell(getattr(item, name)) for name in header] for item in items]


def report_sections(report: MrvReport) -> dict[str, tuple[list[str], list[list[object]]]]:
    """Each section's header and rows, by the name its CSV file and XLSX sheet take."""
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
        "part75-due": _table(section.due),
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


def summary_rows(report: MrvReport) -> list[tuple[str, object]]:
    """The first page's key-value lines: what, when, under which plan and config, and whether it reproduces."""
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
