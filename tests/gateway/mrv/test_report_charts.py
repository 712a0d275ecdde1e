"""Charts of the MRV report's PDF (gateway/mrv/report_charts.py): the data they show, hand-computed, and what they draw,
counted in the PDF's content streams (no image comparison)."""

from __future__ import annotations

import re
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fpdf import FPDF

from aua_contract import Quality
from gateway.config import load_gateway_config
from gateway.mrv.report_charts import (
    Chart,
    Limit,
    add_chart_pages,
    availability_chart,
    control_chart,
    daily_total_charts,
    draw_chart,
    hourly_validated_charts,
    nice_scale,
    report_charts,
)
from gateway.mrv.report_files import write_report_files
from gateway.mrv.report_production import ProducedReport, produce_report
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import StoredReading, open_store

ALMATY = ZoneInfo("Asia/Almaty")
MAY_1 = datetime(2024, 5, 1, tzinfo=ALMATY).astimezone(UTC)
SITE = "chart-site"

CONFIG = """
[gateway]
state = "state.sqlite"
[store]
url = "sqlite://{folder}/aua.sqlite"
[[source]]
id = "stack1"
site = "chart-site"
time_zone = "Asia/Almaty"
fuel = "solid"
flow = {{ instrument = "gas", parameter = "flow", unit = "Nm3/h" }}
o2 = {{ instrument = "gas", parameter = "o2", unit = "%vol" }}
[[source.pollutant]]
instrument = "gas"
parameter = "so2"
name = "SO2"
unit = "mg/m3"
elv = 600
ci_percent = 20
"""

SO2 = 600.0
O2 = 9.0
VALIDATED_SO2 = SO2 * (21 - 6) / (21 - O2) - 0.20 * 600
"""Directive 2010/75/EU Annex V Part 3: to 6 % O2 (solid fuel), then minus the 95 % confidence interval
(20 % of the ELV for SO2): 750 - 120 = 630 mg/Nm³, above the ELV of 600."""


def _readings(hours: int) -> list[StoredReading]:
    rows = []
    for minute in range(hours * 60):
        ts = MAY_1 + timedelta(minutes=minute)
        for parameter, value, unit in (("so2", SO2, "mg/m3"), ("o2", O2, "%vol"), ("flow", 400_000.0, "Nm3/h")):
            rows.append(StoredReading(SITE, "agent", "gas", parameter, ts, value, unit, Quality.OK))
    return rows


async def _report(folder: Path, hours: int, *, month: int | None = 5) -> ProducedReport:
    path = folder / "gateway.toml"
    path.write_text(CONFIG.format(folder=folder), encoding="utf-8")
    config = load_gateway_config(path)
    async with open_store(config.store.url) as store:
        rows = _readings(hours)
        await store.write(rows)
        engine = RollupEngine.from_config(config, store)
        await engine.recompute(MAY_1, MAY_1 + timedelta(hours=hours))
        engine.close()
        return await produce_report(
            config, store, "stack1", year=2024, month=month, now=datetime(2025, 1, 2, tzinfo=UTC), check_raw=False
        )


def _content(pdf_bytes: bytes) -> str:
    """Every content stream of a PDF, inflated (fpdf2 compresses with zlib), as one text."""
    parts = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf_bytes, re.DOTALL):
        try:
            parts.append(zlib.decompress(match.group(1)).decode("latin-1"))
        except zlib.error:
            parts.append(match.group(1).decode("latin-1"))
    return "\n".join(parts)


FILLED_CIRCLE = re.compile(r" c f\n")
"""fpdf2 draws a filled circle as four Bézier curves (`c`) closed by a fill (`f`): one per point."""
FILLED_RECT = re.compile(r" re f\n")


# -- pure ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0, 630.0, (0.0, 800.0, 200.0)),  # 5 ticks of 126 → steps of 200
        (0.0, 1.0, (0.0, 1.0, 0.2)),
        (-3.1, 2.5, (-4.0, 4.0, 2.0)),
        (5.0, 5.0, (4.4, 5.6, 0.2)),  # a flat series gets ± 10 % of room
        (0.0, 100.0, (0.0, 100.0, 20.0)),
    ],
)
def test_axes_go_in_round_steps_around_the_data(low: float, high: float, expected: tuple[float, float, float]) -> None:
    start, end, step = nice_scale(low, high)
    assert step in {m * 10**e for m in (1, 2, 2.5, 5) for e in range(-3, 7)}
    assert start <= low
    assert end >= high
    assert (start, end, step) == pytest.approx(expected)


def test_axis_bounds_must_be_numbers() -> None:
    with pytest.raises(ValueError, match="finite"):
        nice_scale(0.0, float("nan"))


@pytest.mark.parametrize(
    ("values", "outside"),
    [
        ((0.1, 2.5, -0.3, None, -3.1), [1, 4]),  # above UCL, below LCL
        ((2.0, -2.0), []),  # on the limits is in control
        ((None, None), []),
    ],
)
def test_a_control_chart_marks_points_beyond_its_control_limits(
    values: tuple[float | None, ...], outside: list[int]
) -> None:
    chart = control_chart("zero drift", "mg/m3", values, [str(i) for i in range(len(values))], upper=2.0, lower=-2.0)
    assert chart.outside() == outside
    assert [limit.role for limit in chart.limits] == ["centre", "limit", "limit"]


def test_an_elv_chart_marks_values_above_the_limit() -> None:
    chart = Chart("SO2", "mg/Nm³", "points", (590.0, 630.0, None), ("1", "1", "2"), (Limit("ELV 600", 600.0),))
    assert chart.outside() == [1]


def test_values_and_labels_must_pair_up() -> None:
    with pytest.raises(ValueError, match="3 values but 2 labels"):
        Chart("x", "t", "bars", (1.0, 2.0, 3.0), ("a", "b"))


def test_drawing_a_control_chart_draws_every_point_and_limit() -> None:
    pdf = FPDF(orientation="L")
    pdf.set_compression(False)
    pdf.add_page()
    chart = control_chart(
        "QAL3 span drift",
        "mg/m3",
        [0.1, 2.5, -0.3, None, -3.1],
        list("abcde"),
        upper=2.0,
        lower=-2.0,
        warning=(1.5, -1.5),
    )
    drawn = draw_chart(pdf, chart, (10, 10, 250, 90))
    assert (drawn.points, drawn.outside, drawn.lines) == (4, 2, 5)
    content = _content(bytes(pdf.output()))
    assert len(FILLED_CIRCLE.findall(content)) == 4
    assert content.count("0.7843 0.1569 0.1569 rg") == 2  # the two out-of-control points in the limit colour


def test_bars_are_rectangles_one_per_value() -> None:
    pdf = FPDF(orientation="L")
    pdf.set_compression(False)
    charts = [
        Chart("daily", "t", "bars", (1.0, 0.0, 2.5), ("01", "02", "03")),
        *[Chart("d2", "t", "bars", (4.0,), ("x",))],
    ]
    drawn = add_chart_pages(pdf, charts)
    assert [d.bars for d in drawn] == [3, 1]
    assert pdf.page_no() == 1  # two charts to a page
    assert len(FILLED_RECT.findall(_content(bytes(pdf.output())))) == 4


# -- from a report ------------------------------------------------------------------------------------------------


async def test_report_charts_show_hand_computed_validated_values_and_daily_totals(tmp_path: Path) -> None:
    produced = await _report(tmp_path, hours=30)
    assert produced.inputs is not None
    [so2] = hourly_validated_charts(produced.inputs, produced.report, produced.hourly_header, produced.hourly_rows)
    measured = [v for v in so2.values if v is not None]
    assert len(measured) == 30
    assert measured == pytest.approx([VALIDATED_SO2] * 30)
    assert so2.outside() == list(range(30))  # 630 > ELV 600 every hour
    assert so2.limits == (Limit("ELV 600", 600.0),)
    assert len(so2.values) == 31 * 24  # one per hour of May
    by_name = {
        c.title: c for c in daily_total_charts(produced.report, produced.hourly_header, produced.hourly_rows, ALMATY)
    }
    daily = by_name["SO2: daily totals"]
    assert len(daily.values) == 31
    [total] = [t for t in produced.report.totals if t.name == "SO2"]
    assert sum(v for v in daily.values if v is not None) == pytest.approx(total.total_t)
    availability = availability_chart(produced.report)
    assert availability is not None
    assert availability.labels == tuple(a.name for a in produced.report.availability)


async def test_the_pdf_report_contains_the_charts(tmp_path: Path) -> None:
    produced = await _report(tmp_path, hours=30)
    [pdf] = [p for p in write_report_files(produced, tmp_path / "out") if p.suffix == ".pdf"]
    content = _content(pdf.read_bytes())
    assert len(FILLED_CIRCLE.findall(content)) == 30  # the 30 validated SO2 hours, one point each
    bars = 31 * len(produced.report.totals) + len(produced.report.availability)
    assert len(FILLED_RECT.findall(content)) >= bars  # daily totals and availability (tables fill headers too)


async def test_an_annual_report_charts_its_days_along_months(tmp_path: Path) -> None:
    produced = await _report(tmp_path, hours=30, month=None)
    charts = {
        c.title: c
        for c in report_charts(produced.report, produced.hourly_header, produced.hourly_rows, produced.inputs)
    }
    daily = charts["SO2: daily totals"]
    assert len(daily.values) == 366  # 2024, local days
    assert sorted(set(daily.labels)) == [f"{m:02d}" for m in range(1, 13)]
    assert daily.note.endswith("x: month")
    hourly = charts["SO2: hourly validated values against the ELV"]
    assert sum(v is not None for v in hourly.values) == 30


def test_a_dense_series_is_drawn_as_min_max_strokes_not_thousands_of_points() -> None:
    """A year of hours: one stroke per group of 3 values (≤ 800 marks), none as a point; every value counted."""
    values = [600.0 + (i % 7) * 10 if i % 50 else None for i in range(2000)]
    chart = Chart(
        "SO2",
        "mg/Nm³",
        "points",
        tuple(values),
        tuple(f"{i // 200:02d}" for i in range(2000)),
        (Limit("ELV 600", 600.0),),
    )
    pdf = FPDF(orientation="L")
    pdf.set_compression(False)
    pdf.add_page()
    drawn = draw_chart(pdf, chart, (10, 10, 250, 90))
    assert drawn.points == sum(v is not None for v in values)
    assert drawn.outside == sum(1 for v in values if v is not None and v > 600)
    content = _content(bytes(pdf.output()))
    assert not FILLED_CIRCLE.findall(content)
    strokes = re.findall(r"m [-\d.]+ [-\d.]+ l S", content)
    assert 667 <= len(strokes) <= 667 + 20  # 667 groups, plus the grid, axes and limit lines
