"""The demo's replay (aua_demo/replay.py, aua_demo/cli.py): last month's plant story through the real agent ->
mosquitto -> gateway path at accelerated time, ending in a report with real totals and operating states."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from aua_demo.cli import History, main, replayed_month, run_demo
from aua_demo.replay import ReplayClock, progress_line, replay_steps, step_count

ALMATY = ZoneInfo("Asia/Almaty")


@pytest.mark.parametrize(
    ("start", "end", "cadence", "steps"),
    [
        (0.0, 3600.0, 600.0, [0.0, 600.0, 1200.0, 1800.0, 2400.0, 3000.0]),
        (1.0, 1200.0, 600.0, [600.0]),  # on the agent's grid: multiples of the cadence
        (0.0, 0.0, 60.0, []),
        (600.0, 601.0, 600.0, [600.0]),
    ],
)
def test_replay_steps_are_the_poll_grid_within_the_window(
    start: float, end: float, cadence: float, steps: list[float]
) -> None:
    assert list(replay_steps(start, end, cadence)) == steps
    assert step_count(start, end, cadence) == len(steps)


def test_a_month_at_ten_minutes_is_4320_cycles() -> None:
    """What the default replay costs: 30 days × 144 polls (at 1 minute it would be 43,200)."""
    assert step_count(0.0, 30 * 86400.0, 600.0) == 4320
    with pytest.raises(ValueError, match="positive"):
        list(replay_steps(0.0, 1.0, 0.0))


@pytest.mark.parametrize(
    ("done", "total", "elapsed", "text"),
    [
        (0, 4320, 0.0, "replay 0/4,320 cycles (0%), simulated 2026-11-01 00:00 UTC, 0 s, ETA --"),
        (1080, 4320, 30.0, "replay 1,080/4,320 cycles (25%), simulated 2026-11-01 00:00 UTC, 30 s, ETA 1 min 30 s"),
        (4320, 4320, 125.4, "replay 4,320/4,320 cycles (100%), simulated 2026-11-01 00:00 UTC, 2 min 5 s, ETA 0 s"),
    ],
)
def test_the_progress_line_says_how_far_and_how_long_is_left(done: int, total: int, elapsed: float, text: str) -> None:
    assert progress_line(done, total, elapsed, datetime(2026, 11, 1, tzinfo=UTC)) == text


@pytest.mark.parametrize(
    ("now", "days", "start", "end"),
    [
        (
            datetime(2026, 12, 7, 20, 0, tzinfo=ALMATY),
            None,
            datetime(2026, 11, 1, tzinfo=ALMATY),
            datetime(2026, 12, 1, tzinfo=ALMATY),
        ),
        (
            datetime(2026, 12, 7, tzinfo=ALMATY),
            2,
            datetime(2026, 11, 29, tzinfo=ALMATY),
            datetime(2026, 12, 1, tzinfo=ALMATY),
        ),
        (
            datetime(2027, 1, 1, 0, 5, tzinfo=ALMATY),
            None,
            datetime(2026, 12, 1, tzinfo=ALMATY),
            datetime(2027, 1, 1, tzinfo=ALMATY),
        ),
        (
            datetime(2026, 3, 15, tzinfo=ALMATY),
            40,
            datetime(2026, 2, 1, tzinfo=ALMATY),
            datetime(2026, 3, 1, tzinfo=ALMATY),
        ),
        (
            datetime(2026, 3, 15, tzinfo=ALMATY),
            0,
            datetime(2026, 3, 1, tzinfo=ALMATY),
            datetime(2026, 3, 1, tzinfo=ALMATY),
        ),
    ],
)
def test_the_replayed_history_is_last_month_whole_or_its_last_days(
    now: datetime, days: float | None, start: datetime, end: datetime
) -> None:
    assert replayed_month(now, days) == History(start, end)


def test_the_replay_clock_steps_then_follows_the_wall_clock() -> None:
    clock = ReplayClock(1_700_000_000.0)
    assert clock.stamp() == datetime.fromtimestamp(1_700_000_000, UTC)
    clock.set(1_700_000_600.0)
    assert clock.seconds() == 1_700_000_600.0
    clock.follow_wall()
    assert abs(clock.seconds() - datetime.now(UTC).timestamp()) < 60
    with pytest.raises(RuntimeError, match="wall clock"):
        clock.set(0.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replay-days", "-1"], "--replay-days takes 0 ... 31"),
        (["--cadence", "7"], "--cadence takes 1 ... 3600 seconds that divide an hour"),
        (["--for", "0"], "--for takes a positive number"),
    ],
)
def test_bad_options_are_refused_with_what_is_wrong(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


async def test_two_replayed_days_end_in_a_report_with_real_totals_and_start_up_shut_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end with mosquitto: 2 days at 10-minute polls (288 cycles), then 2 s live."""
    assert await run_demo(2, tmp_path, quiet=True, replay_days=2, cadence_s=600) == 0
    out = capsys.readouterr().out
    history = replayed_month(datetime.now(ALMATY), 2)
    [report_path] = (tmp_path / "reports").glob(f"stack1-{history.start:%Y-%m}.json")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert "replay 288/288 cycles (100%)" in out
    periods = report["operating"]["periods"]
    assert periods["start-up"] == 4  # the DCS unit state, hour by hour: 4 h start-up
    assert periods["shut-down"] == 3
    assert periods["off"] == 12  # a quarter of the window off: not operating, not missing
    totals = {t["name"]: t for t in report["totals"]}
    for name in ("SO2", "NOx (as NO2)", "Dust", "CO2"):
        assert totals[name]["measured_t"] > 0
        assert totals[name]["start_up_shut_down_t"] > 0
        assert totals[name]["non_operating_periods"] == 12
    so2 = next(a for a in report["availability"] if a["name"] == "SO2")
    assert so2["maintenance_periods"] == 1  # the failed check's hour; a good check leaves 4 of 6 samples: valid
    assert report["maintenance"]  # the daily zero/span checks, flagged by the analyzer's status bits
    runs = {
        datetime.fromisoformat(run["start_utc"]): run for run in report["substituted"] if run["role"] == "pollutant:so2"
    }
    failed_check = history.start.astimezone(UTC) + timedelta(hours=2)  # 02:00 local on the window's first day
    # out of service from the failed check's end for 3 hours (02:20 ... 05:20), and QAL3 out of control from the
    # failed span check to the adjusted check after the repair (02:10 ... 05:20): hours 02, 03, 04 and 05
    assert runs[failed_check]["periods"] == 4
    _assert_the_qa_section_holds_the_daily_checks_and_the_failed_one(report["qa"], failed_check)
    assert report["reproducibility"]["matches"] is True
    assert (tmp_path / "reports" / f"stack1-{history.start:%Y-%m}.pdf").stat().st_size > 0
    accounts = [line for line in out.splitlines() if "agent pavlodar-chp/chp-stack1: batches" in line]
    assert accounts
    assert "missing 0, duplicates 0" in accounts[0]


def _assert_the_qa_section_holds_the_daily_checks_and_the_failed_one(
    qa: dict[str, Any], failed_check: datetime
) -> None:
    """config/demo-gateway.toml [source.qal3]: SO2, NOx and CO of stack1-gas, checks told apart by status bits 24
    (zero, discrete input 1024) and 25 (span, 1025); the span check of the failed day reads 10 % low."""
    span_at = failed_check + timedelta(minutes=10)  # zero gas 02:00 ... 02:10, then span gas ... 02:20
    repaired = failed_check + timedelta(minutes=20, hours=3)
    captured = [c for c in qa["checks"] if c["origin"] == "auto"]
    components = {"stack1-gas/so2", "stack1-gas/nox", "stack1-gas/co"}
    for day in range(2):  # each day's zero then span check, of every component
        zero_at = failed_check + timedelta(days=day)
        for kind, at in (("zero", zero_at), ("span", zero_at + timedelta(minutes=10))):
            found = {
                c["component"] for c in captured if c["kind"] == kind and datetime.fromisoformat(c["at_utc"]) == at
            }
            assert found == components, (kind, at)
    assert len(captured) == 2 * 2 * len(components)
    failed = {c["component"]: c for c in captured if datetime.fromisoformat(c["at_utc"]) == span_at}
    so2 = failed["stack1-gas/so2"]
    assert so2["reference"] == 800.0
    assert 0.9 * 800 - 10 < so2["reading"] < 0.9 * 800 + 10  # 10 % low, within 5 σ of the simulator's noise
    assert all(c["status"] == "out-of-control" for c in failed.values())
    good = [c for c in captured if datetime.fromisoformat(c["at_utc"]) != span_at]
    assert all(c["status"] == "in-control" for c in good)
    adjusted = [c for c in qa["checks"] if c["adjusted"]]
    assert {(c["component"], c["kind"]) for c in adjusted} == {(x, k) for x in components for k in ("zero", "span")}
    assert all(c["origin"] == "manual" and datetime.fromisoformat(c["at_utc"]) == repaired for c in adjusted)
    periods = {o["component"]: o for o in qa["out_of_control"]}
    assert set(periods) == components
    for period in periods.values():
        assert datetime.fromisoformat(period["start_utc"]) == span_at
        assert datetime.fromisoformat(period["end_utc"]) == repaired
        assert period["treatment"] == "invalid"
    assert all(c["zero_status"] == c["span_status"] == "in-control" for c in qa["components"])
