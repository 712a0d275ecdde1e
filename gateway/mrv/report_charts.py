"""Charts of an MRV report's PDF, drawn with fpdf2's own vector primitives (no image, no plotting library).

What people read at a glance (Directive 2010/75/EU Annex V Part 3-4: limits judge validated hourly and daily
values; EU MRR 2018/2066 Art. 45 and EN 14181:2014 §8 for availability and QAL3 control):
- hourly validated values of each limited pollutant against its ELV (normal operation: the periods judged);
- daily mass totals of each pollutant and of CO2;
- availability per parameter;
- each component's QAL3 control charts (zero and span), points against centre line and control limits.

Layers: `Chart` is plain data built by pure functions from a produced report; `draw_chart` and `add_chart_pages`
put charts on an FPDF page. Tests count what was drawn, not pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Literal

from fpdf import FPDF

from gateway.mrv import arithmetic as mrv
from gateway.mrv.report import MrvReport, QaCheckRow, SourceInput, _standardised, _standardising_roles
from gateway.mrv.substitution import Point

__all__ = [
    "Chart",
    "DrawnChart",
    "Limit",
    "add_chart_pages",
    "availability_chart",
    "control_chart",
    "daily_total_charts",
    "draw_chart",
    "hourly_validated_charts",
    "nice_scale",
    "qal3_charts",
    "report_charts",
]

Kind = Literal["line", "points", "bars"]

_COLOURS = {
    "series": (31, 87, 150),
    "bar": (90, 140, 200),
    "limit": (200, 40, 40),
    "warning": (230, 150, 30),
    "centre": (90, 90, 90),
    "grid": (215, 215, 215),
    "axis": (60, 60, 60),
    "outside": (200, 40, 40),
}


@dataclass(frozen=True, slots=True)
class Limit:
    """A horizontal line across a chart: an ELV, a control or warning limit, a centre line."""

    label: str
    value: float
    role: Literal["limit", "warning", "centre"] = "limit"


@dataclass(frozen=True, slots=True)
class Chart:
    """One chart as data: values along the x axis (None: no value there), a label per value, lines across."""

    title: str
    unit: str
    kind: Kind
    values: tuple[float | None, ...]
    labels: tuple[str, ...]
    limits: tuple[Limit, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if len(self.values) != len(self.labels):
            raise ValueError(f"chart {self.title!r}: {len(self.values)} values but {len(self.labels)} labels")

    def outside(self) -> list[int]:
        """Indexes of values beyond a limit line (role `limit`): above the highest or below a lower one that
        sits under every value's expected level (control charts have both)."""
        lines = [limit.value for limit in self.limits if limit.role == "limit"]
        if not lines:
            return []
        centre = next((limit.value for limit in self.limits if limit.role == "centre"), None)
        upper = [v for v in lines if centre is None or v >= centre]
        lower = [v for v in lines if centre is not None and v < centre]
        found = []
        for index, value in enumerate(self.values):
            if value is None:
                continue
            if (upper and value > min(upper)) or (lower and value < max(lower)):
                found.append(index)
        return found


def nice_scale(low: float, high: float, ticks: int = 5) -> tuple[float, float, float]:
    """An axis from below `low` to above `high` in round steps (1, 2, 2.5, 5 × 10^n): (start, end, step)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"axis bounds must be finite, got {low}, {high}")
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(1, ticks)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


# -- charts from a report ---------------------------------------------------------------------------------------


def _column(header: Sequence[str], name: str) -> int | None:
    return next((index for index, title in enumerate(header) if title == name), None)


def _value_column(header: Sequence[str], channel_name: str) -> int | None:
    return next((i for i, title in enumerate(header) if title.startswith(f"{channel_name} [")), None)


def _points(header: Sequence[str], rows: Sequence[Sequence[object]], channel_name: str) -> list[Point] | None:
    """A channel's measured hourly values from the report's hourly table (substitutes are not measured values)."""
    value_at, valid_at = _value_column(header, channel_name), _column(header, f"{channel_name} valid")
    if value_at is None or valid_at is None:
        return None
    points = []
    for row in rows:
        start = datetime.fromisoformat(str(row[0]))
        valid = row[valid_at] is True
        value = row[value_at]
        number = float(value) if valid and isinstance(value, int | float) else None
        points.append(Point(start, number, number is not None))
    return points


def _x_label(start: datetime | date, report: MrvReport, zone: tzinfo) -> str:
    """Day of the month in a monthly report, the month in an annual one (local calendar)."""
    local = start.astimezone(zone) if isinstance(start, datetime) else start
    return f"{local:%d}" if report.period.month is not None else f"{local:%m}"


def _x_axis(report: MrvReport) -> str:
    return "x: day of the month" if report.period.month is not None else "x: month"


def hourly_validated_charts(
    inputs: SourceInput, report: MrvReport, header: Sequence[str], rows: Sequence[Sequence[object]]
) -> list[Chart]:
    """Per limited pollutant: the validated value (dry, standard conditions, reference O2, confidence interval
    subtracted: the report's own standardisation) of each normal-operation period, against the ELV."""
    state_at = _column(header, "operating state")
    charts = []
    for channel in inputs.channels:
        if channel.elv is None:
            continue
        needs = _standardising_roles(inputs, channel)
        series: dict[str, list[Point]] = {}
        for role in needs:
            needed = inputs.channel(role) if role != channel.role else channel
            points = _points(header, rows, needed.name) if needed is not None else None
            if points is None:
                break
            series[role] = points
        else:
            values: list[float | None] = []
            for index, row in enumerate(rows):
                judged = state_at is None or row[state_at] == "normal"
                period = {role: points[index] for role, points in series.items()}
                if not judged or not all(p.valid for p in period.values()):
                    values.append(None)
                    continue
                try:
                    concentration = _standardised(inputs, channel, period)
                    values.append(mrv.validated_value(concentration, channel.elv, channel.ci_percent))
                except mrv.StandardisationError:
                    values.append(None)
            labels = tuple(_x_label(datetime.fromisoformat(str(row[0])), report, inputs.zone) for row in rows)
            judged_count = sum(v is not None for v in values)
            charts.append(
                Chart(
                    title=f"{channel.name}: hourly validated values against the ELV",
                    unit="mg/Nm³",
                    kind="points",
                    values=tuple(values),
                    labels=labels,
                    limits=(Limit(f"ELV {channel.elv:g}", channel.elv),),
                    note=f"{judged_count} validated {report.period.base_period} values in normal operation "
                    f"(start-up/shut-down excluded: Directive 2010/75/EU Annex V Part 4); {_x_axis(report)}",
                )
            )
    return charts


def daily_total_charts(
    report: MrvReport, header: Sequence[str], rows: Sequence[Sequence[object]], zone: tzinfo
) -> list[Chart]:
    """Per pollutant with a mass column: tonnes per local day, substitutes included (as in the totals)."""
    charts = []
    for total in report.totals:
        at = _column(header, f"{total.name} mass [kg]")
        if at is None:
            continue
        days: dict[date, float] = {}
        for row in rows:
            day = datetime.fromisoformat(str(row[0])).astimezone(zone).date()
            kg = row[at]
            days[day] = days.get(day, 0.0) + (float(kg) if isinstance(kg, int | float) else 0.0)
        ordered = sorted(days)
        charts.append(
            Chart(
                title=f"{total.name}: daily totals",
                unit="t",
                kind="bars",
                values=tuple(days[d] / 1000 for d in ordered),
                labels=tuple(_x_label(d, report, zone) for d in ordered),
                note=f"period {total.total_t:,.3f} t, of which {total.substituted_t:,.3f} t substituted and "
                f"{total.start_up_shut_down_t:,.3f} t in start-up/shut-down; {_x_axis(report)}",
            )
        )
    return charts


def availability_chart(report: MrvReport) -> Chart | None:
    """Valid share of the operating periods per parameter (EU MRR Art. 45; Directive 2010/75/EU Annex V Part 3)."""
    if not report.availability:
        return None
    return Chart(
        title="Availability per parameter",
        unit="%",
        kind="bars",
        values=tuple(a.availability_percent for a in report.availability),
        labels=tuple(a.name for a in report.availability),
        limits=(Limit("90 %", 90.0, "warning"),),
        note="valid operating periods / operating periods; non-operating periods are not expected",
    )


def control_chart(
    title: str,
    unit: str,
    values: Sequence[float | None],
    labels: Sequence[str],
    *,
    centre: float = 0.0,
    upper: float | None = None,
    lower: float | None = None,
    warning: tuple[float, float] | None = None,
    note: str = "",
) -> Chart:
    """A control chart (EN 14181:2014 §8 QAL3 drift and precision, Shewhart, CUSUM or EWMA statistics): points in
    time order, the centre line, control limits and optional warning limits. Points beyond a control limit are
    drawn as out of control (`Chart.outside`)."""
    limits = [Limit(f"centre {centre:g}", centre, "centre")]
    if upper is not None:
        limits.append(Limit(f"UCL {upper:g}", upper))
    if lower is not None:
        limits.append(Limit(f"LCL {lower:g}", lower))
    if warning is not None:
        limits += [Limit(f"warning {w:g}", w, "warning") for w in warning]
    return Chart(title, unit, "points", tuple(values), tuple(labels), tuple(limits), note)


def qal3_charts(report: MrvReport) -> list[Chart]:
    """Each component's QAL3 control charts, zero and span (EN 14181:2014 §7), from the report's check log: the
    statistic its method judges against its limits (CUSUM: the drift sum, S+ up and S− drawn down, against ±h;
    Shewhart: the deviation against its action and warning limits; EWMA: z against its limit, which widens to
    the value drawn). The precision statistic of CUSUM stays in the QA table."""
    qa = report.qa
    if qa is None:
        return []
    methods = {c.component: c.method for c in qa.components}
    charts = []
    groups: dict[tuple[str, str], list[QaCheckRow]] = {}
    for row in qa.checks:
        groups.setdefault((row.component, row.kind), []).append(row)
    for (component, kind), rows in groups.items():
        method = methods.get(component, "")
        labels = [f"{row.at_local:%m-%d %H:%M}" for row in rows]
        title = f"QAL3 {method} chart, {component} {kind}"
        unit = "deviation from the check gas"
        if method == "cusum":
            values: list[float | None] = [
                row.statistics.get("drift_pos", 0.0)
                if row.statistics.get("drift_pos", 0.0) >= row.statistics.get("drift_neg", 0.0)
                else -row.statistics.get("drift_neg", 0.0)
                for row in rows
            ]
            h = rows[-1].limits.get("drift_pos")
            chart = control_chart(
                title, unit, values, labels, upper=h, lower=-h if h is not None else None,
                note="CUSUM drift: S+ drawn up, S− down; out of control beyond ±h",
            )  # fmt: skip
        elif method == "ewma":
            values = [row.statistics.get("ewma") for row in rows]
            limit = rows[-1].limits.get("ewma")
            chart = control_chart(
                title, unit, values, labels, upper=limit, lower=-limit if limit is not None else None,
                note="EWMA z; the limits widen with each check to the value drawn",
            )  # fmt: skip
        else:
            values = [row.deviation for row in rows]
            action, warning = rows[-1].limits.get("deviation"), rows[-1].limits.get("warning")
            chart = control_chart(
                title, unit, values, labels, upper=action, lower=-action if action is not None else None,
                warning=(warning, -warning) if warning is not None else None,
            )  # fmt: skip
        charts.append(chart)
    return charts


def report_charts(
    report: MrvReport, header: Sequence[str], rows: Sequence[Sequence[object]], inputs: SourceInput | None
) -> list[Chart]:
    """Every chart of a report's PDF, in reading order."""
    charts: list[Chart] = []
    if inputs is not None and rows:
        charts += hourly_validated_charts(inputs, report, header, rows)
    if rows:
        zone = inputs.zone if inputs is not None else datetime.fromisoformat(str(rows[0][1])).tzinfo
        if zone is not None:
            charts += daily_total_charts(report, header, rows, zone)
    availability = availability_chart(report)
    if availability is not None:
        charts.append(availability)
    charts += qal3_charts(report)
    return charts


# -- drawing ----------------------------------------------------------------------------------------------------


@dataclass
class DrawnChart:
    """What one `draw_chart` put on the page: for tests and for the reader's legend."""

    title: str
    points: int = 0
    bars: int = 0
    lines: int = 0
    outside: int = 0
    labels: list[str] = field(default_factory=list)


def _set(pdf: FPDF, colour: str, *, fill: bool = False) -> None:
    r, g, b = _COLOURS[colour]
    if fill:
        pdf.set_fill_color(r, g, b)
    else:
        pdf.set_draw_color(r, g, b)


def draw_chart(
    pdf: FPDF,
    chart: Chart,
    box: tuple[float, float, float, float],
    *,
    text: Callable[[str], str] = str,
    family: str = "helvetica",
) -> DrawnChart:
    """Draw `chart` in the box (x, y, w, h) in mm: title, y axis with round ticks, grid, marks, limit lines."""
    x, y, w, h = box
    drawn = DrawnChart(chart.title)
    pdf.set_font(family, "B", 9)
    pdf.set_text_color(0, 0, 0)
    pdf.text(x, y + 4, text(f"{chart.title} [{chart.unit}]"))
    if chart.note:
        pdf.set_font(family, size=6.5)
        pdf.text(x, y + 8, text(chart.note))
    left, top, right, bottom = x + 16, y + 11, x + w - 26, y + h - 7
    numbers = [v for v in chart.values if v is not None] + [limit.value for limit in chart.limits]
    low = min([0.0, *numbers]) if chart.kind == "bars" else min(numbers, default=0.0)
    high = max(numbers, default=1.0)
    start, end, step = nice_scale(low, high)
    span = end - start

    def y_of(value: float) -> float:
        return bottom - (value - start) / span * (bottom - top)

    pdf.set_line_width(0.1)
    pdf.set_font(family, size=6)
    tick = start
    while tick <= end + step / 2:
        _set(pdf, "grid")
        pdf.line(left, y_of(tick), right, y_of(tick))
        pdf.text(x, y_of(tick) + 1, f"{tick:,.4g}")
        tick += step
    _set(pdf, "axis")
    pdf.line(left, top, left, bottom)
    pdf.line(left, bottom, right, bottom)
    count = len(chart.values)
    slot = (right - left) / max(count, 1)
    outside = set(chart.outside())
    dense = chart.kind != "bars" and count > MAX_MARKS
    previous: tuple[float, float] | None = None
    labelled_at = -math.inf
    pdf.set_font(family, size=6)
    for index, (value, label) in enumerate(zip(chart.values, chart.labels, strict=True)):
        cx = left + slot * (index + 0.5)
        if label and (index == 0 or label != chart.labels[index - 1]):
            width = pdf.get_string_width(text(label))
            if cx - width / 2 >= labelled_at + 1.5:
                pdf.set_text_color(60, 60, 60)
                pdf.text(cx - width / 2, bottom + 3.5, text(label))
                labelled_at = cx + width / 2
                drawn.labels.append(label)
        if dense or value is None:
            previous = None
            continue
        if chart.kind == "bars":
            _set(pdf, "bar", fill=True)
            top_of_bar, base = y_of(max(value, start)), y_of(max(0.0, start))
            pdf.rect(cx - slot * 0.38, min(top_of_bar, base), slot * 0.76, abs(base - top_of_bar), style="F")
            drawn.bars += 1
            continue
        py = y_of(value)
        if chart.kind == "line" and previous is not None:
            _set(pdf, "series")
            pdf.line(previous[0], previous[1], cx, py)
        previous = (cx, py)
        colour = "outside" if index in outside else "series"
        _set(pdf, colour)
        _set(pdf, colour, fill=True)
        pdf.circle(cx, py, min(0.6, max(0.25, slot * 0.35)), style="F")
        drawn.points += 1
        drawn.outside += index in outside
    if dense:
        drawn.points, drawn.outside = _draw_ranges(pdf, chart, outside, (left, slot), y_of)
    for limit in chart.limits:
        if not start <= limit.value <= end:
            continue
        _set(pdf, limit.role)
        pdf.set_line_width(0.35 if limit.role == "limit" else 0.2)
        if limit.role != "limit":
            pdf.set_dash_pattern(dash=1.2, gap=0.8)
        pdf.line(left, y_of(limit.value), right, y_of(limit.value))
        pdf.set_dash_pattern()
        r, g, b = _COLOURS[limit.role]
        pdf.set_text_color(r, g, b)
        pdf.set_font(family, size=6)
        pdf.text(right + 1, y_of(limit.value) + 1, text(limit.label))
        drawn.lines += 1
    pdf.set_line_width(0.2)
    pdf.set_text_color(0, 0, 0)
    _set(pdf, "axis")
    return drawn


def _draw_ranges(
    pdf: FPDF, chart: Chart, outside: set[int], x_axis: tuple[float, float], y_of: Callable[[float], float]
) -> tuple[int, int]:
    """A dense series (an annual report's hours) as one vertical min-max stroke per group of values, in the
    limit colour where the group holds a value beyond a limit: a year of points would take many seconds to
    draw and print as a blur. Returns (values drawn, values beyond a limit)."""
    left, slot = x_axis
    group = math.ceil(len(chart.values) / MAX_MARKS)
    pdf.set_line_width(max(0.15, slot * group * 0.8))
    points = beyond = 0
    for first in range(0, len(chart.values), group):
        values = [v for v in chart.values[first : first + group] if v is not None]
        if not values:
            continue
        over = sum(1 for index in range(first, first + group) if index in outside)
        _set(pdf, "outside" if over else "series")
        cx = left + slot * (first + group / 2)
        low, high = y_of(min(values)), y_of(max(values))
        pdf.line(cx, low + 0.15, cx, high - 0.15)
        points += len(values)
        beyond += over
    pdf.set_line_width(0.1)
    return points, beyond


MAX_MARKS = 800
"""More values than this on one chart are drawn as min-max strokes per group (`_draw_ranges`), not as points."""

CHARTS_PER_PAGE = 2


def add_chart_pages(
    pdf: FPDF, charts: Sequence[Chart], *, text: Callable[[str], str] = str, family: str = "helvetica"
) -> list[DrawnChart]:
    """The charts on pages of their own, two to a page, in the page's margins."""
    drawn: list[DrawnChart] = []
    width = pdf.w - pdf.l_margin - pdf.r_margin
    height = (pdf.h - pdf.t_margin - pdf.b_margin - 6) / CHARTS_PER_PAGE
    for index, chart in enumerate(charts):
        if index % CHARTS_PER_PAGE == 0:
            pdf.add_page()
        y = pdf.t_margin + (index % CHARTS_PER_PAGE) * height
        drawn.append(draw_chart(pdf, chart, (pdf.l_margin, y, width, height - 4), text=text, family=family))
    return drawn
