"""The Part 75 daily calibration alert follows the unit's operating state (40 CFR 75 App. B §2.1.5): a window that
runs out while the unit is off is not overdue, and after the restart the grace period of operating hours comes
first, as the report's timeline (gateway.mrv.part75.statuses) has it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.alerts.engine import AlertEngine
from gateway.alerts.state import AlertKey, Phase
from gateway.config import load_gateway_config
from gateway.mrv.operating_log import OperatingLog
from gateway.mrv.part75 import DailyCalibration, Part75Spec, daily_calibration_due, statuses
from gateway.mrv.part75_log import Part75Log
from gateway.mrv.qa_alerts import QaAlerts
from gateway.mrv.rollup import Aggregate, Period
from gateway.stores import open_store

MAY_1 = datetime(2024, 5, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
SPEC = Part75Spec(spans=(("pollutant:so2", 500.0),))
ROLE = "pollutant:so2"


def _daily(hour: float, *, passed: bool = True, test_id: int = 1) -> DailyCalibration:
    high = 255.0 if passed else 290.0  # 1 % or 8 % of a 500 ppm span
    return DailyCalibration(test_id, "unit1", ROLE, MAY_1 + hour * HOUR, 500.0, "ppm", 0.0, 1.0, 250.0, high)


def _operating(off: tuple[int, int] | None, hours: int = 80) -> dict[datetime, bool] | None:
    """Every hour operating but those in [off[0], off[1]); None: no operating state given."""
    if off is None:
        return None
    return {MAY_1 + i * HOUR: not off[0] <= i < off[1] for i in range(hours)}


@pytest.mark.parametrize(
    ("tests", "off", "now_hours", "firing", "since_hours", "words", "clause"),
    [
        ([(0.5, True)], None, 30.0, True, 27, "ran out at 2024-05-02T03:00Z", "§2.1.5: 26 clock hours, operating"),
        ([(0.5, True)], (20, 40), 30.0, False, None, "after it restarts, test within 8", "§2.1.5: ran out while off"),
        ([(0.5, True)], (20, 40), 40.5, False, None, "grace period, 1 of 8", "§2.1.5: first hour after the restart"),
        ([(0.5, True)], (20, 40), 47.9, False, None, "grace period, 8 of 8", "§2.1.5: last hour of the grace"),
        ([(0.5, True)], (20, 40), 48.2, True, 48, "and the grace period", "§2.1.5: grace used up"),
        ([(0.5, True), (43.1, True)], (20, 40), 48.2, False, None, "#2 passed at 2024-05-02T19:06Z", "passed in grace"),
        ([(0.5, True)], (28, 40), 35.0, False, None, "test before it restarts", "ran out operating, now off"),
        ([(0.5, True)], (28, 40), 41.0, True, 27, "ran out at 2024-05-02T03:00Z", "ran out operating: no grace"),
        ([(0.5, True), (5.2, False)], (6, 40), 30.0, True, 5.2, "the unit is not operating", "§2.1.4: failed, off"),
        ([], (0, 40), 30.0, False, None, "not operating: test before it runs", "§2.1: none yet, never operated"),
        ([], (0, 40), 40.0, True, None, "no daily calibration error test", "§2.1: none, operating"),
    ],
)
def test_daily_calibration_due_follows_the_operating_state(  # noqa: PLR0917 - one argument per table column
    tests: list[tuple[float, bool]],
    off: tuple[int, int] | None,
    now_hours: float,
    firing: bool,
    since_hours: float | None,
    words: str,
    clause: str,
) -> None:
    """40 CFR 75 App. B §2.1.4-2.1.5 (`clause`): a test at 00:30 covers 26 clock hours to 03:00 next day."""
    daily = [_daily(hours, passed=ok, test_id=n) for n, (hours, ok) in enumerate(tests, start=1)]
    result = daily_calibration_due(SPEC, ROLE, daily, MAY_1 + now_hours * HOUR, operating=_operating(off))
    assert result[0] is firing, result[2]
    assert result[1] == (None if since_hours is None else MAY_1 + since_hours * HOUR)
    assert words in result[2]


def test_the_grace_period_is_configuration() -> None:
    spec = Part75Spec(spans=SPEC.spans, validity_hours=24, grace_operating_hours=2)
    daily = [_daily(0.5)]
    assert not daily_calibration_due(spec, ROLE, daily, MAY_1 + 41.5 * HOUR, operating=_operating((20, 40)))[0]
    firing, since, _ = daily_calibration_due(spec, ROLE, daily, MAY_1 + 42.5 * HOUR, operating=_operating((20, 40)))
    assert firing
    assert since == MAY_1 + 42 * HOUR


def test_the_alert_says_what_the_report_timeline_says() -> None:
    """Hour by hour over a shutdown and restart, the alert fires exactly in the hours the report's timeline has
    out of control (gateway.mrv.part75.statuses), for one daily test at 00:30."""
    operating = _operating((20, 40), hours=60)
    assert operating is not None
    starts = sorted(operating)
    timeline = statuses(SPEC, ROLE, starts, HOUR, [operating[s] for s in starts], daily=[_daily(0.5)])
    for start, status in zip(starts, timeline, strict=True):
        firing = daily_calibration_due(
            SPEC, ROLE, [_daily(0.5)], start + 30 * timedelta(minutes=1), operating=operating
        )
        assert firing[0] is (not status.in_control), start


CONFIG = """[gateway]
state = "state.sqlite"
[store]
url = "sqlite://aua.sqlite"
[alerts]
timezone = "UTC"
data_rules = false
[[source]]
id = "unit1"
site = "p75-op-site"
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

STATUS = '[source.operating]\nstatus = { instrument = "u1-dcs", parameter = "unit_state" }\n'


async def test_no_overdue_alert_while_the_unit_is_off_by_the_manual_log(tmp_path: Path) -> None:
    """The unit is logged off from 20:00 to 16:00 next day (`operating-state log`): its test of 02:30 runs out at
    05:00 next day while off (no alert), then 8 operating hours of grace, then the alert fires from 00:00."""
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    config = load_gateway_config(path)
    clock = [MAY_1 + 3 * HOUR]
    engine = AlertEngine.from_config(config, notifiers=[])
    key = AlertKey("qa-part75-calibration", "p75-op-site", "", "unit1", "so2")
    tests = Part75Log(config.gateway.state)
    tests.add_daily("unit1", ROLE, at=MAY_1 + 2.5 * HOUR, span=500, unit="mg/m3", zero=(0, 1), high=(250, 252),
                    by="kim", why="D-1", now=MAY_1 + 3 * HOUR)  # fmt: skip
    tests.close()
    log = OperatingLog(config.gateway.state)
    log.record("unit1", "off", start=MAY_1 + 20 * HOUR, end=MAY_1 + 40 * HOUR, by="ivanov", why="trip", now=MAY_1)
    log.close()
    async with open_store(config.store.url) as store:
        qa = QaAlerts(config, store, engine, now=lambda: clock[0])
        phases = {}
        for hours in (3.5, 30.0, 41.0, 47.5, 48.5):
            clock[0] = MAY_1 + hours * HOUR
            await qa.tick()
            state = engine.state_of(key)
            phases[hours] = state.phase if state is not None else None
        state = engine.state_of(key)
        assert state is not None
        assert state.since == MAY_1 + 48 * HOUR
        assert "and the grace period" in state.detail
    engine.close()
    assert [hours for hours, phase in phases.items() if phase is Phase.FIRING] == [48.5]


async def test_the_status_tag_decides_off_and_the_newest_hours_keep_the_last_state(tmp_path: Path) -> None:
    """[source.operating] status tag rollups (0 = off) until 22:00 next day; at 23:30 the hour of 22:00 is not rolled
    up yet: it keeps the last known state (off), so no alert; three hours later without a signal the hours are taken
    as operating (as the report takes them) and, the window having run out while off, the grace period runs."""
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG + STATUS, encoding="utf-8")
    config = load_gateway_config(path)
    engine = AlertEngine.from_config(config, notifiers=[])
    tests = Part75Log(config.gateway.state)
    tests.add_daily("unit1", ROLE, at=MAY_1 + 0.5 * HOUR, span=500, unit="mg/m3", zero=(0, 1), high=(250, 252),
                    by="kim", why="D-1", now=MAY_1 + HOUR)  # fmt: skip
    tests.close()
    rollups = [
        Aggregate(
            "p75-op-site", "u1-dcs", "unit_state", Period.HOUR, MAY_1 + i * HOUR, 2.0 if i < 20 else 0.0, 60, 60, True
        )
        for i in range(46)
    ]
    async with open_store(config.store.url) as store:
        await store.write_aggregates(rollups)
        qa = QaAlerts(config, store, engine, now=lambda: MAY_1 + 46.5 * HOUR)
        hours = await qa.operating_hours(config.sources[0], MAY_1, MAY_1 + 47.5 * HOUR)
        assert [h for h, on in hours.items() if not on] == [MAY_1 + i * HOUR for i in range(20, 48)]
        [finding] = await qa.tick()
        assert not finding.firing
        assert "not operating" in finding.detail
        later = await qa.operating_hours(config.sources[0], MAY_1, MAY_1 + 49.5 * HOUR)
        assert [h for h, on in later.items() if on] == [MAY_1 + i * HOUR for i in (*range(20), 46, 47, 48, 49)]
        qa.now = lambda: MAY_1 + 49.5 * HOUR
        [finding] = await qa.tick()
        assert not finding.firing
        assert "grace period, 4 of 8" in finding.detail
    engine.close()
