"""Pure: the plant story, a replayed month of the stack's boiler (normal running, shut-down, start-up, checks)
as functions of (story, time), and the world as the story has the boiler fired.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from aua_simulator.incidents import Incidents
from aua_simulator.world import UTC_OFFSET_HOURS, Scenario, coal_boiler_load, coal_boiler_stack, pavlodar_ambient


class PlantPhase(StrEnum):
    """The boiler's state as its DCS reports it (the gateway derives the operating state from it)."""

    OFF = "off"
    START_UP = "start-up"
    NORMAL = "normal"
    SHUT_DOWN = "shut-down"


DCS_CODES: Mapping[PlantPhase, int] = {
    PlantPhase.OFF: 0,
    PlantPhase.START_UP: 1,
    PlantPhase.NORMAL: 2,
    PlantPhase.SHUT_DOWN: 3,
}
"""The unit-state register's value per phase (config/demo-gateway.toml `[source.operating] status`)."""

MAX_FUEL_T_H = 60.0
"""coal burned at full load, t/h (the DCS's fuel_flow)"""

SPAN_GAS: Mapping[str, float] = {"so2": 800.0, "no": 250.0, "nox": 400.0, "co": 300.0, "co2": 15.0, "o2": 20.9}
"""What the gas analyzer reads in its span check (the certified span gas), in the tags' units."""

FAILED_SPAN_FACTOR = 0.9
"""The failed check reads 10 % low: past the 5 %-of-span tolerance of a daily calibration error test
(40 CFR 75 App. A §2.1.4) and well beyond an EN 14181 QAL3 drift limit."""


class CheckStep(StrEnum):
    ZERO = "zero"
    SPAN = "span"


@dataclass(frozen=True)
class PlantStory:
    """What happens at the stack's boiler over a window of days; before and after it the boiler runs normally.

    All times are epoch seconds on whole UTC hours, so each hour of the DCS status has one code except where a
    phase changes; the daily zero/span check runs at the same local time every day, also while the boiler is off
    (the analyzers stay powered). `for_window` places the events of a replayed window.
    """

    shutdown_at: float
    """shut-down begins: the load falls to zero over `shutdown_hours`, then the boiler is off"""
    startup_at: float
    """start-up begins (the boiler was off): burners on, load rising over `startup_hours`, then normal"""
    failed_check_at: float | None = None
    """start of the one daily check that fails (its span reads 10 % low); the analyzer is then out of service"""
    shutdown_hours: float = 3.0
    startup_hours: float = 4.0
    check_local_hour: float = 2.0
    """the daily check starts at this local hour (Pavlodar, UTC+5)"""
    check_step_s: float = 600.0
    """seconds on zero gas, then the same on span gas (a poll every 10 minutes sees each once)"""
    repair_hours: float = 3.0
    """after the failed check the analyzer reports failure this long (a leaking sample line found and fixed)"""

    def __post_init__(self) -> None:
        if not self.shutdown_at + self.shutdown_hours * 3600 <= self.startup_at:
            raise ValueError("the start-up must come after the shut-down has ended")
        if min(self.shutdown_hours, self.startup_hours, self.repair_hours) <= 0 or self.check_step_s <= 0:
            raise ValueError("durations must be positive")

    @classmethod
    def for_window(cls, start: float, days: float) -> PlantStory:
        """The story of `days` from `start`: the start-up ends a tenth of the window before its end, after the
        boiler was off for a quarter of the window (at most a week); the check at 30 % of the window fails. Any
        window of a day or more holds each event once, on whole hours from `start`; 30 days give a week off."""
        if days < 1:
            raise ValueError(f"a plant story needs at least one day, got {days:g}")
        end = start + days * 86400

        def hour_from_start(t: float) -> float:
            return start + math.floor((t - start) / 3600) * 3600

        startup_at = hour_from_start(end - 0.1 * days * 86400 - cls.startup_hours * 3600)
        off_s = min(7 * 86400, 0.25 * days * 86400)
        shutdown_at = hour_from_start(startup_at - off_s - cls.shutdown_hours * 3600)
        story = cls(shutdown_at=shutdown_at, startup_at=startup_at)
        failed = story.check_start(start + 0.3 * days * 86400)
        return replace(story, failed_check_at=failed if failed >= start else failed + 86400)

    def check_start(self, t: float) -> float:
        """Start of the daily check of the local day t is in."""
        local_day = math.floor((t / 3600 + UTC_OFFSET_HOURS) / 24)
        return (local_day * 24 + self.check_local_hour - UTC_OFFSET_HOURS) * 3600


def plant_phase(story: PlantStory, t: float) -> tuple[PlantPhase, float]:
    """The boiler's phase at t and how far through it (0 ... 1 in start-up and shut-down, else 0)."""
    shutdown_end = story.shutdown_at + story.shutdown_hours * 3600
    startup_end = story.startup_at + story.startup_hours * 3600
    if t < story.shutdown_at or t >= startup_end:
        return PlantPhase.NORMAL, 0.0
    if t < shutdown_end:
        return PlantPhase.SHUT_DOWN, (t - story.shutdown_at) / (shutdown_end - story.shutdown_at)
    if t < story.startup_at:
        return PlantPhase.OFF, 0.0
    return PlantPhase.START_UP, (t - story.startup_at) / (startup_end - story.startup_at)


def firing(story: PlantStory | None, t: float) -> float:
    """Share of normal firing: 1 running, 0 off, a ramp in start-up and shut-down."""
    if story is None:
        return 1.0
    phase, progress = plant_phase(story, t)
    if phase is PlantPhase.NORMAL:
        return 1.0
    if phase is PlantPhase.OFF:
        return 0.0
    return 1.0 - progress if phase is PlantPhase.SHUT_DOWN else progress


def check_step(story: PlantStory, t: float) -> CheckStep | None:
    """Whether the analyzers are on zero gas, on span gas, or measuring the flue gas at t."""
    elapsed = t - story.check_start(t)
    if 0 <= elapsed < story.check_step_s:
        return CheckStep.ZERO
    if story.check_step_s <= elapsed < 2 * story.check_step_s:
        return CheckStep.SPAN
    return None


def check_failed(story: PlantStory, t: float) -> bool:
    """True during the check that fails."""
    return story.failed_check_at is not None and 0 <= t - story.failed_check_at < 2 * story.check_step_s


def out_of_service(story: PlantStory, t: float) -> bool:
    """The gas analyzer after the failed check, until repaired: it reports failure."""
    if story.failed_check_at is None:
        return False
    begins = story.failed_check_at + 2 * story.check_step_s
    return begins <= t < begins + story.repair_hours * 3600


AMBIENT_AIR: Mapping[str, float] = {"o2": 20.9, "co2": 0.04, "h2o": 1.0, "temperature": 15.0}
"""What the stack holds with the burners off: air (other concentrations and the flow fall to zero)."""

PURGE_FLOW = 15_000.0
"""Nm3/h the induced-draft fan keeps moving through a cold boiler (a purge): flow is never quite zero."""


def unit_signals(seed: int, t: float, story: PlantStory | None) -> dict[str, float]:
    """The DCS's view of the boiler: unit state code, load (% of maximum continuous rating), coal feed."""
    phase = plant_phase(story, t)[0] if story is not None else PlantPhase.NORMAL
    share = firing(story, t)
    load = coal_boiler_load(seed, t) * share
    return {"unit_state": float(DCS_CODES[phase]), "load": 100.0 * load, "fuel_flow": MAX_FUEL_T_H * load}


def with_story(world: dict[str, float], seed: int, t: float, story: PlantStory | None) -> dict[str, float]:
    """The flue gas of a coal_boiler_stack world as the story has the boiler fired: blended toward air as firing
    falls, CO high while burners light or go out, plus the DCS's signals."""
    share = firing(story, t)
    result = dict(world)
    if share < 1.0:
        for name, value in world.items():
            air = AMBIENT_AIR.get(name, PURGE_FLOW if name == "flow" else 0.0)
            if name in {"pressure"}:
                continue
            result[name] = air + (value - air) * share
        result["velocity"] = world["velocity"] * max(share, PURGE_FLOW / world["flow"])
        if share > 0.0:
            result["co"] = world["co"] + 250.0 * math.sin(math.pi * share)  # unstable flame at low load
    result.update(unit_signals(seed, t, story))
    return result


def world_state(
    scenario: Scenario, seed: int, t: float, incidents: Incidents, story: PlantStory | None = None
) -> dict[str, float]:
    """Every quantity of a scenario's world at time t, before measurement noise; the stack follows `story`."""
    if scenario is Scenario.COAL_BOILER_STACK:
        return with_story(coal_boiler_stack(seed, t), seed, t, story)
    return pavlodar_ambient(seed, t, incidents)
