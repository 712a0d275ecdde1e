"""A report as PDF (fpdf2). fpdf2's built-in fonts are Latin-1 only, so a Unicode TTF is embedded for
Cyrillic names: the `[rollup.reports] font` file, else DejaVu Sans where the system has it (Debian:
fonts-dejavu-core). Without one the PDF is still written, with Cyrillic transliterated to Latin (said on the
first page); the JSON, CSV and XLSX files always carry the original text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import FontFace

from gateway.mrv.qal3 import CLAUSE
from gateway.mrv.report import MrvReport
from gateway.mrv.report_charts import Chart, add_chart_pages
from gateway.mrv.report_production import ReportError
from gateway.mrv.report_tables import summary_rows, table_cell

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian, Ubuntu (fonts-dejavu-core)
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",  # Fedora, RHEL
    "/usr/share/fonts/TTF/DejaVuSans.ttf",  # Arch
    "/usr/local/share/fonts/DejaVuSans.ttf",
    "/Library/Fonts/DejaVuSans.ttf",
)


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
        text = "" if value is None else str(table_cell(value))
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
                    f"{t.result.upper()} ({t.frequency})",
                    t.by,
                    t.why,
                ]
                for t in section.ratas[:_PDF_ROWS]
            ],
        )
    if section.due:
        pdf.grid(
            ["channel", "test", "after", "due in", "due by (UTC)", "grace used (h)", "met by", "past due from (UTC)",
             "status"],
            [
                [d.channel, f"{d.test} ({d.frequency})", f"#{d.after_test}",
                 f"{d.due_quarter or '-'}{' at the earliest' if d.projected else ''}", d.due_by_utc or "-",
                 f"{d.grace_used_hours} of {d.grace_operating_hours}", f"#{d.met_by}" if d.met_by else "-",
                 d.past_due_from_utc or "-", d.status]
                for d in section.due[:_PDF_ROWS]
            ],
        )  # fmt: skip
        _more(pdf, len(section.due))
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


def write_pdf(
    path: Path, report: MrvReport, font: tuple[Path, Path | None] | None, charts: Sequence[Chart] = ()
) -> None:
    """The report's PDF at `path`: summary, totals, sections (the first rows of long ones) and the charts."""
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
    for key, value in summary_rows(report):
        pdf.line_text(f"{key}: {table_cell(value)}", size=8)
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
