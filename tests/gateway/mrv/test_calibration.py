"""QAL2 function and weekly VCR check (EN 14181:2014; UK guidance thresholds), against hand-computed values."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from aua_contract import Quality
from gateway.alerts.engine import AlertEngine
from gateway.alerts.state import AlertKey, Phase
from gateway.config import load_gateway_config
from gateway.mrv.calibration import Qal2Function, VcrThresholds, VcrWeek, new_qal2_due, weekly_vcr
from gateway.mrv.qa_alerts import QaAlerts
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import StoredReading, open_store

TASHKENT = ZoneInfo("Asia/Tashkent")  # UTC+5 all year, no DST


@pytest.mark.parametrize(
    ("a", "b", "x", "expected"),
    [
        (0.0, 1.0, 100.0, 100.0),
        (2.5, 1.1, 100.0, 112.5),  # 2.5 + 110
        (-3.0, 0.95, 40.0, 35.0),  # -3 + 38
        (1.0, 2.0, 0.0, 1.0),
    ],
)
def test_function_applies_a_plus_b_x(a: float, b: float, x: float, expected: float) -> None:
    assert Qal2Function("Q-1", date(2024, 1, 10), a, b).apply(x) == pytest.approx(expected)


def test_mean_of_calibrated_readings_is_calibrated_mean() -> None:
    function = Qal2Function("Q-1", date(2024, 1, 10), 2.5, 1.1)
    readings = [80.0, 95.0, 130.0, 111.0]
    mean_of_calibrated = sum(function.apply(x) for x in readings) / len(readings)
    assert function.apply(sum(readings) / len(readings)) == pytest.approx(mean_of_calibrated)


@pytest.mark.parametrize(
    ("a", "b", "vcr", "message"),
    [
        (0.0, 0.0, None, "slope b must be > 0"),
        (0.0, -1.0, None, "slope b must be > 0"),
        (float("nan"), 1.0, None, "finite"),
        (0.0, 1.0, 0.0, "vcr must be"),
        (0.0, 1.0, float("inf"), "vcr must be"),
    ],
)
def test_function_refuses_nonsense(a: float, b: float, vcr: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Qal2Function("Q-1", date(2024, 1, 10), a, b, vcr)


def _hours(first: datetime, values: list[float | None]) -> list[tuple[datetime, float | None]]:
    return [(first + timedelta(hours=i), v) for i, v in enumerate(values)]


def test_weeks_are_monday_to_sunday_in_local_time() -> None:
    # 2024-01-07 is a Sunday. 18:00 UTC Sunday is 23:00 Sunday in Tashkent; 19:00 UTC is Monday 00:00 there.
    values = _hours(datetime(2024, 1, 7, 17, tzinfo=UTC), [10.0, 200.0, 200.0, None, 10.0])
    weeks = weekly_vcr(values, 100.0, TASHKENT)
    assert weeks == [VcrWeek(date(2024, 1, 1), 2, 1), VcrWeek(date(2024, 1, 8), 2, 1)]
    # the same hours in UTC all fall in the week of Monday 1 January
    assert weekly_vcr(values, 100.0, UTC) == [VcrWeek(date(2024, 1, 1), 4, 2)]


def test_equal_to_the_vcr_is_inside_and_invalid_values_do_not_count() -> None:
    values = _hours(datetime(2024, 1, 8, tzinfo=UTC), [100.0, 100.0001, None, None, 50.0])
    [week] = weekly_vcr(values, 100.0, UTC)
    assert (week.valid, week.above) == (3, 1)
    assert week.percent_above == pytest.approx(100 / 3)


def _weeks(percents: list[float]) -> list[VcrWeek]:
    """Weeks of 100 valid values with the given count above."""
    return [VcrWeek(date(2024, 1, 1) + timedelta(weeks=i), 100, int(p)) for i, p in enumerate(percents)]


@pytest.mark.parametrize(
    ("percents", "thresholds", "due"),
    [
        ([0, 0, 0], VcrThresholds(), []),
        ([6, 6, 6, 6, 6], VcrThresholds(), []),  # five weeks over 5 %: not more than 5
        ([6, 6, 6, 6, 6, 6], VcrThresholds(), ["weeks"]),  # six
        ([5, 5, 5, 5, 5, 5, 5], VcrThresholds(), []),  # exactly 5 % is not more than 5 %
        ([40, 0], VcrThresholds(), []),  # exactly 40 %
        ([41, 0], VcrThresholds(), ["week of"]),
        ([41, 6, 6, 6, 6, 6], VcrThresholds(), ["weeks", "week of"]),
        ([3, 3, 0], VcrThresholds(week_percent=2.0, weeks_allowed=1), ["weeks"]),
        ([25, 0], VcrThresholds(any_week_percent=20.0), ["week of"]),
    ],
)
def test_new_qal2_due(percents: list[float], thresholds: VcrThresholds, due: list[str]) -> None:
    reasons = new_qal2_due(_weeks(percents), thresholds)
    assert len(reasons) == len(due)
    for reason, part in zip(reasons, due, strict=True):
        assert part in reason


def test_due_reason_names_the_week() -> None:
    [reason] = new_qal2_due(_weeks([0, 50]))
    assert "2024-01-08" in reason


# -- "new QAL2 due" as an alert ------------------------------------------------------------------------------

VCR_CONFIG = """[gateway]
state = "state.sqlite"
[store]
url = "sqlite://aua.sqlite"
[alerts]
timezone = "UTC"
data_rules = false
[[source]]
id = "stack9"
site = "vcr-site"
time_zone = "UTC"
flow = { instrument = "s9-flow", parameter = "flow", unit = "Nm3/h" }
[[source.pollutant]]
instrument = "s9-gas"
parameter = "so2"
name = "SO2"
unit = "mg/m3"
o2_correction = false
qal2 = { id = "Q-SO2", date = 2024-01-10, a = 0.0, b = 1.0, vcr = 150 }
[[source.pollutant]]
instrument = "s9-gas"
parameter = "nox"
name = "NOx"
unit = "mg/m3"
o2_correction = false
qal2 = { id = "Q-NOX", date = 2024-01-10, a = 0.0, b = 1.0, vcr = 150 }
"""


async def test_a_new_qal2_due_raises_an_alert(tmp_path: Path) -> None:
    """1 May 2024 (a Wednesday): SO2 200 mg/m³ all day above its VCR 150, NOx 100 below. The week of Monday 29
    April has 24 of 24 SO2 values above the VCR: more than 40 % in one week, a new QAL2 is due (UK guidance on
    EN 14181:2014): the QA task's finding fires the alert qa-qal2-due for SO2, not for NOx."""
    path = tmp_path / "gateway.toml"
    path.write_text(VCR_CONFIG, encoding="utf-8")
    config = load_gateway_config(path)
    may_1 = datetime(2024, 5, 1, tzinfo=UTC)
    rows = []
    for minute in range(24 * 60):
        ts = may_1 + timedelta(minutes=minute)
        for instrument, parameter, value, unit in (
            ("s9-gas", "so2", 200.0, "mg/m3"),
            ("s9-gas", "nox", 100.0, "mg/m3"),
            ("s9-flow", "flow", 500_000.0, "Nm3/h"),
        ):
            rows.append(StoredReading("vcr-site", "s9", instrument, parameter, ts, value, unit, Quality.OK))
    engine = AlertEngine.from_config(config, notifiers=[])
    now = may_1 + timedelta(days=1, hours=1)
    async with open_store(config.store.url) as store:
        await store.write(rows)
        rollups = RollupEngine.from_config(config, store)
        await rollups.recompute(may_1, may_1 + timedelta(days=1))
        rollups.close()
        qa = QaAlerts(config, store, engine, now=lambda: now)
        assert QaAlerts.needed(config)
        findings = await qa.tick()
    assert [(f.rule, f.source, f.channel, f.firing) for f in findings] == [
        ("qa-qal2-due", "stack9", "SO2", True),
        ("qa-qal2-due", "stack9", "NOx", False),
    ]
    so2 = engine.state_of(AlertKey("qa-qal2-due", "vcr-site", "", "stack9", "SO2"))
    assert so2 is not None
    assert so2.phase is Phase.FIRING
    assert "QAL2 Q-SO2" in so2.detail
    assert "more than 40 % of values above the VCR in the week of 2024-04-29" in so2.detail
    nox = engine.state_of(AlertKey("qa-qal2-due", "vcr-site", "", "stack9", "NOx"))
    assert nox is None or nox.phase is not Phase.FIRING
    engine.close()
