"""The simulator's plant story (aua_simulator/plant_story.py): a pure function of time, so a replay is reproducible.

The stack's boiler over a replayed window: normal running, a shut-down, a week off, a start-up, a zero/span check
every day (check bits on, check gas read) and one failed check followed by an analyzer failure.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from aua_contract import Quality
from aua_demo.sites import demo_sites, with_unit_signals
from aua_simulator.incidents import Incidents
from aua_simulator.plant_story import (
    DCS_CODES,
    FAILED_SPAN_FACTOR,
    SPAN_GAS,
    CheckStep,
    PlantPhase,
    PlantStory,
    check_step,
    firing,
    out_of_service,
    plant_phase,
)
from aua_simulator.register_images import SimulatedInstrument, tick_image
from edge_agent.quality import quality_from_bits

START = datetime(2026, 11, 1, tzinfo=UTC).timestamp() - 5 * 3600  # 1 November 00:00 in Pavlodar (UTC+5)
HOUR = 3600.0
DAY = 86400.0
STORY = PlantStory.for_window(START, 30)


def _at(day: int, hour: float) -> float:
    """Epoch seconds `day` days and `hour` hours into the window."""
    return START + day * DAY + hour * HOUR


def test_a_month_gets_a_shutdown_of_a_week_and_a_failed_check_in_its_first_half() -> None:
    assert STORY.startup_at + STORY.startup_hours * HOUR == _at(27, 0)  # three days before the window ends
    assert STORY.startup_at - (STORY.shutdown_at + STORY.shutdown_hours * HOUR) == 7 * DAY
    assert STORY.failed_check_at == _at(9, 2)  # the daily check at 02:00 local, ten days in
    assert datetime.fromtimestamp(STORY.failed_check_at, UTC).hour == 21  # 02:00 in Pavlodar is 21:00 UTC


@pytest.mark.parametrize(
    ("t", "phase", "share"),
    [
        (_at(2, 12), PlantPhase.NORMAL, 1.0),
        (_at(19, 16.99), PlantPhase.NORMAL, 1.0),
        (_at(19, 17), PlantPhase.SHUT_DOWN, 1.0),  # shut-down begins at full firing
        (_at(19, 18.5), PlantPhase.SHUT_DOWN, 0.5),  # halfway through 3 hours
        (_at(19, 20), PlantPhase.OFF, 0.0),
        (_at(23, 0), PlantPhase.OFF, 0.0),
        (_at(26, 20), PlantPhase.START_UP, 0.0),
        (_at(26, 22), PlantPhase.START_UP, 0.5),  # halfway through 4 hours
        (_at(27, 0), PlantPhase.NORMAL, 1.0),
        (_at(40, 0), PlantPhase.NORMAL, 1.0),  # after the window: running again
    ],
)
def test_the_boiler_phase_and_firing_are_functions_of_time(t: float, phase: PlantPhase, share: float) -> None:
    assert plant_phase(STORY, t)[0] is phase
    assert firing(STORY, t) == pytest.approx(share)
    assert plant_phase(STORY, t) == plant_phase(STORY, t)


@pytest.mark.parametrize(
    ("days", "off_hours"),
    [
        (1, 6),  # a day: a quarter of it off, shut-down and start-up around it
        (2, 12),
        (4, 24),
        (30, 7 * 24),  # a week off
    ],
)
def test_any_window_of_a_day_or_more_holds_each_event_once(days: int, off_hours: int) -> None:
    story = PlantStory.for_window(START, days)
    phases = [plant_phase(story, START + h * HOUR)[0] for h in range(days * 24)]
    runs = [phase for index, phase in enumerate(phases) if index == 0 or phases[index - 1] is not phase]
    assert runs == [
        PlantPhase.NORMAL,
        PlantPhase.SHUT_DOWN,
        PlantPhase.OFF,
        PlantPhase.START_UP,
        PlantPhase.NORMAL,
    ]
    assert phases.count(PlantPhase.OFF) == off_hours
    assert phases.count(PlantPhase.SHUT_DOWN) == 3
    assert phases.count(PlantPhase.START_UP) == 4
    assert story.failed_check_at is not None
    assert START <= story.failed_check_at < story.shutdown_at


def test_a_story_needs_a_day_and_an_order() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        PlantStory.for_window(START, 0.5)
    with pytest.raises(ValueError, match="after the shut-down"):
        PlantStory(shutdown_at=START + DAY, startup_at=START + DAY + HOUR)


CHECK = STORY.check_start(_at(3, 12))


@pytest.mark.parametrize(
    ("offset_s", "step"),
    [
        (-1, None),
        (0, CheckStep.ZERO),
        (599, CheckStep.ZERO),
        (600, CheckStep.SPAN),
        (1199, CheckStep.SPAN),
        (1200, None),
    ],
)
def test_the_daily_check_is_ten_minutes_of_zero_gas_then_ten_of_span_gas(
    offset_s: float, step: CheckStep | None
) -> None:
    assert datetime.fromtimestamp(CHECK, UTC).strftime("%H:%M") == "21:00"  # 02:00 in Pavlodar
    assert check_step(STORY, CHECK + offset_s) is step


# -- what the instruments serve -------------------------------------------------------------------------------


def _instruments() -> dict[str, SimulatedInstrument]:
    [stack] = [s for s in demo_sites() if s.config.agent.site == "pavlodar-chp"]
    site = with_unit_signals(stack)
    return {i.id: SimulatedInstrument(i.id, i.profile, i.config.device_id) for i in site.instruments}


INSTRUMENTS = _instruments()


def _served(instrument: str, t: float) -> tuple[dict[str, float], dict[str, Quality]]:
    """Values and the quality per status block the agent decodes at t (1-second ticks, nothing random going wrong)."""
    playing = INSTRUMENTS[instrument]
    image = tick_image(playing, math.floor(t), seed=0, tick=1.0, incidents=Incidents.none(), story=STORY)
    qualities = {}
    for block in playing.profile.status:
        word = image.served.status[block.name]
        qualities[block.name] = quality_from_bits(block, [bool(word >> i & 1) for i in range(block.count)])
    return image.served.values, qualities


@pytest.mark.parametrize(
    ("t", "phase"),
    [
        (_at(2, 12), PlantPhase.NORMAL),
        (_at(19, 18), PlantPhase.SHUT_DOWN),
        (_at(20, 12), PlantPhase.OFF),
        (_at(26, 21), PlantPhase.START_UP),
    ],
)
def test_the_dcs_serves_its_unit_state_code_and_load(t: float, phase: PlantPhase) -> None:
    values, _ = _served("stack1-dcs", t)
    assert values["unit_state"] == DCS_CODES[phase]
    if phase is PlantPhase.OFF:
        assert values["fuel_flow"] < 1  # the gateway's running criterion: not operating
        assert values["load"] < 1
    if phase is PlantPhase.NORMAL:
        assert values["load"] > 30  # start-up-end criteria met
        assert values["fuel_flow"] > 18


def test_off_the_stack_holds_air_and_the_flow_falls_to_the_purge() -> None:
    gas, _ = _served("stack1-gas", _at(20, 12))
    flow, _ = _served("stack1-flow", _at(20, 12))
    assert gas["o2"] == pytest.approx(20.9, abs=0.5)
    assert gas["so2"] < 15
    assert flow["flow"] < 20_000
    assert flow["temperature"] < 50
    running, _ = _served("stack1-flow", _at(2, 12))
    assert running["flow"] > 300_000
    assert running["temperature"] > 110  # the third start-up-end criterion


@pytest.mark.parametrize(
    ("offset_s", "so2", "o2", "bit"),
    [
        (60, 0.0, 20.9, 24),  # zero gas: nothing, and instrument air for O2; discrete input 1024
        (660, SPAN_GAS["so2"], SPAN_GAS["o2"], 25),  # span gas; discrete input 1025
    ],
)
def test_in_the_daily_check_the_analyzer_flags_check_function_and_reads_check_gas(
    offset_s: float, so2: float, o2: float, bit: int
) -> None:
    values, quality = _served("stack1-gas", CHECK + offset_s)
    assert quality["analyzer"] is Quality.CHECK_FUNCTION
    image = tick_image(
        INSTRUMENTS["stack1-gas"],
        math.floor(CHECK + offset_s),
        seed=0,
        tick=1.0,
        incidents=Incidents.none(),
        story=STORY,
    )
    assert image.served.status["analyzer"] == 1 << bit  # zero and span tell themselves apart
    assert values["so2"] == pytest.approx(so2, abs=5)
    assert values["o2"] == pytest.approx(o2, abs=0.3)
    after, quality_after = _served("stack1-gas", CHECK + 1300)
    assert quality_after["analyzer"] is Quality.OK
    assert after["so2"] > 300


def test_the_failed_check_reads_span_ten_percent_low_then_the_analyzer_fails_for_hours() -> None:
    assert STORY.failed_check_at is not None
    values, quality = _served("stack1-gas", STORY.failed_check_at + 660)
    assert quality["analyzer"] is Quality.CHECK_FUNCTION
    assert values["so2"] == pytest.approx(SPAN_GAS["so2"] * FAILED_SPAN_FACTOR, abs=5)
    broken = STORY.failed_check_at + 1200 + HOUR
    assert out_of_service(STORY, broken)
    _, quality = _served("stack1-gas", broken)
    assert quality["analyzer"] is Quality.FAILURE
    _, repaired = _served("stack1-gas", STORY.failed_check_at + 1200 + STORY.repair_hours * HOUR + 1)
    assert repaired["analyzer"] is Quality.OK
    _, flow_meter = _served("stack1-flow", broken)
    assert flow_meter["meter"] is Quality.OK  # only the gas analyzer broke


def test_a_replayed_tick_is_the_same_tick() -> None:
    """Reproducible: any moment recomputes to the same registers, in any order."""
    moments = [_at(day, hour) for day in (3, 19, 26) for hour in (0.5, 6.2, 21.1)]
    first = [
        tick_image(INSTRUMENTS["stack1-gas"], math.floor(t), seed=7, tick=1.0, incidents=Incidents(), story=STORY)
        for t in moments
    ]
    again = [
        tick_image(INSTRUMENTS["stack1-gas"], math.floor(t), seed=7, tick=1.0, incidents=Incidents(), story=STORY)
        for t in reversed(moments)
    ]
    assert [image.words for image in first] == [image.words for image in reversed(again)]


def test_without_a_story_the_boiler_always_runs() -> None:
    playing = INSTRUMENTS["stack1-dcs"]
    image = tick_image(playing, math.floor(_at(20, 12)), seed=0, tick=1.0, incidents=Incidents.none())
    assert image.served.values["unit_state"] == DCS_CODES[PlantPhase.NORMAL]
