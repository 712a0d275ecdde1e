"""Simulated instruments on Modbus TCP: a coal-fired boiler stack and an ambient station near Pavlodar.

The simulator is driven by the device profiles the agent uses: it encodes each tag's value into the
profile's registers and sets the profile's status bits, so a new profile needs no simulator code, and
it records what it served so tests can compare the agent's readings with the truth.

Layers, pure first:
- world models: physical quantities as functions of (seed, time): daily load, weather, plumes, episodes;
- incidents: calibration, warning, out-of-spec and failure windows as functions of (seed, instrument, tick);
- register images: one tick's values and status bits encoded into each Modbus table of an instrument;
- I/O: pymodbus servers whose action callback copies the current tick's image into the registers read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from statistics import NormalDist
from types import TracebackType
from typing import Self

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simdevice import SimAction

from aua_contract import Quality
from aua_ops import ConfigError
from edge_agent.config import LoadedConfig, load_config
from edge_agent.decoding import ByteOrder, DataType, decode_registers, encode_value, scale_value
from edge_agent.planner import spans_of
from edge_agent.profiles import Function, Profile, StatusBlock, Tag
from edge_agent.quality import status_word
from edge_agent.rtu import REQUEST_FRAME_SIZE, frame_size

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Deterministic chance: every random number is a hash of (seed, key), so any tick can be recomputed
# on its own, in any order, with the same result.
# --------------------------------------------------------------------------------------------------

_NORMAL = NormalDist()


def _uniform(seed: int, *key: object) -> float:
    """A number in [0, 1) fixed by the seed and the key: the simulator's only source of chance."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _gauss(seed: int, *key: object) -> float:
    """A standard normal number fixed by the seed and the key."""
    return _NORMAL.inv_cdf(min(max(_uniform(seed, *key), 1e-12), 1 - 1e-12))


def _drift(seed: int, name: str, t: float, period: float) -> float:
    """Smooth noise (roughly standard normal) that wanders over `period` seconds: weather, fuel, load wobble.

    Normal values at knots `period` apart, eased between them, so consecutive ticks stay close.
    """
    position = t / period
    knot = math.floor(position)
    ease = (1 - math.cos(math.pi * (position - knot))) / 2
    before, after = _gauss(seed, name, period, knot), _gauss(seed, name, period, knot + 1)
    return before + (after - before) * ease


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


# --------------------------------------------------------------------------------------------------
# Calendar: daily and seasonal patterns follow local time in Pavlodar.
# --------------------------------------------------------------------------------------------------

UTC_OFFSET_HOURS = 5.0
"""Kazakhstan has used one time zone, UTC+5, since 1 March 2024."""


def local_hour(t: float) -> float:
    """Hour of the local day (0 <= h < 24) at epoch time t."""
    return (t / 3600 + UTC_OFFSET_HOURS) % 24


def winterness(t: float) -> float:
    """1 in mid-January (coldest), 0 in mid-July, smooth in between."""
    day_of_year = (t / 86400) % 365.2425
    return (1 + math.cos(2 * math.pi * (day_of_year - 15) / 365.2425)) / 2


def _daily_peak(hour: float, centre: float, width: float) -> float:
    """A bump around `centre` o'clock that wraps across midnight."""
    distance = abs(hour - centre) % 24
    distance = min(distance, 24 - distance)
    return math.exp(-((distance / width) ** 2))


def _afternoon(hour: float) -> float:
    """-1 at 03:00, +1 at 15:00: the diurnal cycle of temperature and mixing."""
    return -math.cos(2 * math.pi * (hour - 3) / 24)


# --------------------------------------------------------------------------------------------------
# Incidents: what goes wrong or gets serviced, and when.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncidentRate:
    """How often an incident of one kind happens: at most once per slot, for a few ticks."""

    probability: float
    """chance that one happens in a given slot of an instrument"""
    ticks: tuple[int, int]
    """shortest and longest duration, in ticks"""

    def __post_init__(self) -> None:
        if not 0 <= self.probability <= 1:
            raise ValueError(f"probability {self.probability} is not within 0 ... 1")
        if not 1 <= self.ticks[0] <= self.ticks[1]:
            raise ValueError(f"ticks {self.ticks} must be (shortest, longest) with 1 <= shortest <= longest")


@dataclass(frozen=True)
class Incidents:
    """The simulated world's mishaps; the defaults are rare as on a real site, `demo()` makes them show soon."""

    slot_ticks: int = 600
    """incident schedule granularity: each kind happens at most once per slot, fully inside it"""
    calibration: IncidentRate = IncidentRate(0.05, (3, 8))
    """zero/span check: the analyzer reads its check gas and flags check_function"""
    warning: IncidentRate = IncidentRate(0.02, (30, 120))
    """a warning bit (maintenance_required); values stay usable"""
    out_of_specification: IncidentRate = IncidentRate(0.01, (5, 30))
    failure: IncidentRate = IncidentRate(0.005, (2, 10))
    """failure flag; the instrument holds the last value it had"""
    hg_episode_probability: float = 0.01
    """chance per clock hour of a mercury release episode at the ambient station"""
    hg_episode_seconds: tuple[float, float] = (300.0, 1800.0)
    hg_episode_peak: tuple[float, float] = (350.0, 900.0)
    """ng/m3 added at the episode's plateau (the daily limit is 300 ng/m3)"""
    demo_hg_episode_at: float | None = None
    """epoch seconds at which one extra, scripted mercury episode starts (demo mode)"""
    demo_hg_episode_seconds: float = 150.0
    demo_hg_episode_peak: float = 480.0

    def __post_init__(self) -> None:
        if self.slot_ticks < 1:
            raise ValueError("slot_ticks must be at least 1")
        if not 0 <= self.hg_episode_probability <= 1:
            raise ValueError(f"hg_episode_probability {self.hg_episode_probability} is not within 0 ... 1")
        if not 0 < self.hg_episode_seconds[0] <= self.hg_episode_seconds[1] <= 3600:
            raise ValueError("hg_episode_seconds must be (shortest, longest) within one hour")
        if self.demo_hg_episode_seconds <= 0:
            raise ValueError("demo_hg_episode_seconds must be positive")

    def rates(self) -> dict[Quality, IncidentRate]:
        """Incident kinds by the NE107 quality their status bits report."""
        return {
            Quality.CHECK_FUNCTION: self.calibration,
            Quality.MAINTENANCE_REQUIRED: self.warning,
            Quality.OUT_OF_SPECIFICATION: self.out_of_specification,
            Quality.FAILURE: self.failure,
        }

    @classmethod
    def demo(cls, start: float) -> Incidents:
        """Frequent incidents and a mercury episode 20 s after `start`, so a demo shows alerts within a minute."""
        return cls(
            slot_ticks=60,
            calibration=IncidentRate(0.3, (3, 8)),
            warning=IncidentRate(0.15, (5, 20)),
            out_of_specification=IncidentRate(0.05, (3, 10)),
            failure=IncidentRate(0.03, (2, 5)),
            demo_hg_episode_at=start + 20.0,
        )

    @classmethod
    def none(cls) -> Incidents:
        """A world where nothing goes wrong: clean values for tests that want them."""
        never = IncidentRate(0.0, (1, 1))
        return cls(
            calibration=never, warning=never, out_of_specification=never, failure=never, hg_episode_probability=0.0
        )


@dataclass(frozen=True)
class Window:
    """One incident in progress: its quality, its ticks [start, end), and which of its status bits it sets."""

    quality: Quality
    start: int
    end: int
    pick: float
    """in [0, 1): chooses among the bits that report this quality (zero or span calibration, which warning)"""


def active_windows(seed: int, instrument_id: str, tick_index: int, incidents: Incidents) -> tuple[Window, ...]:
    """The incidents an instrument is in at a tick. Pure: looks only at the slot the tick is in."""
    slot_ticks = incidents.slot_ticks
    slot = tick_index // slot_ticks
    windows = []
    for quality, rate in incidents.rates().items():
        if _uniform(seed, instrument_id, quality.value, slot, "happens") >= rate.probability:
            continue
        longest = min(rate.ticks[1], slot_ticks)
        shortest = min(rate.ticks[0], longest)
        length = shortest + math.floor(
            _uniform(seed, instrument_id, quality.value, slot, "length") * (longest - shortest + 1)
        )
        start = slot * slot_ticks + math.floor(
            _uniform(seed, instrument_id, quality.value, slot, "start") * (slot_ticks - length + 1)
        )
        if start <= tick_index < start + length:
            pick = _uniform(seed, instrument_id, quality.value, slot, "bit")
            windows.append(Window(quality, start, start + length, pick))
    return tuple(windows)


def _trapezoid(t: float, start: float, duration: float, peak: float) -> float:
    """Rises over the first fifth, holds `peak`, falls over the last fifth."""
    elapsed = t - start
    if not 0 <= elapsed < duration:
        return 0.0
    ramp = duration / 5
    return peak * min(1.0, elapsed / ramp, (duration - elapsed) / ramp)


def mercury_episode(seed: int, t: float, incidents: Incidents) -> float:
    """ng/m3 added by a release episode (say, soil works at the former chlor-alkali plant); 0 most of the time."""
    excess = 0.0
    if incidents.demo_hg_episode_at is not None:
        excess += _trapezoid(
            t, incidents.demo_hg_episode_at, incidents.demo_hg_episode_seconds, incidents.demo_hg_episode_peak
        )
    hour = math.floor(t / 3600)
    if _uniform(seed, "hg-episode", hour) < incidents.hg_episode_probability:
        shortest, longest = incidents.hg_episode_seconds
        duration = shortest + (longest - shortest) * _uniform(seed, "hg-episode-length", hour)
        start = hour * 3600 + (3600 - duration) * _uniform(seed, "hg-episode-start", hour)
        low, high = incidents.hg_episode_peak
        excess += _trapezoid(t, start, duration, low + (high - low) * _uniform(seed, "hg-episode-peak", hour))
    return excess


# --------------------------------------------------------------------------------------------------
# World models: what the instruments would measure without noise. Pure functions of (seed, time).
# --------------------------------------------------------------------------------------------------


class Scenario(StrEnum):
    """Which world an instrument measures."""

    COAL_BOILER_STACK = "coal-boiler-stack"
    PAVLODAR_AMBIENT = "pavlodar-ambient"


STACK_AREA_M2 = 12.0
"""Duct cross-section at the flow meter (3.9 m diameter): turns volume flow into gas velocity."""

NO_SHARE_OF_NOX = 0.95
"""Mole fraction of NOx that leaves a coal boiler as NO (the rest is NO2)."""


def coal_boiler_load(seed: int, t: float) -> float:
    """Boiler load 0 ... 1 of a heat-and-power plant: more heat in winter, morning and evening peaks."""
    hour = local_hour(t)
    daily = min(1.0, _daily_peak(hour, 9.0, 4.0) + _daily_peak(hour, 20.0, 4.0))
    return _clamp(0.25 + 0.35 * winterness(t) + 0.3 * daily + 0.07 * _drift(seed, "load", t, 1800), 0.0, 1.0)


def coal_boiler_stack(seed: int, t: float) -> dict[str, float]:
    """Flue gas of a coal-fired boiler: concentrations dry at standard conditions, at the measured O2."""
    load = coal_boiler_load(seed, t)
    o2 = 8.0 - 2.0 * load + 0.15 * _drift(seed, "excess-air", t, 300)
    h2o = 8.0 + 3.0 * load + 0.4 * _drift(seed, "fuel-moisture", t, 3600)
    nox = 300.0 + 200.0 * load + 12.0 * _drift(seed, "nox", t, 600)
    flow = 400_000.0 + 200_000.0 * load + 8_000.0 * _drift(seed, "flow", t, 600)
    temperature = 130.0 + 18.0 * load + 1.5 * _drift(seed, "gas-temperature", t, 900)
    pressure = 100.0 + 0.6 * _drift(seed, "weather-pressure", t, 21_600) - 0.2 * load
    actual_flow = flow / (1 - h2o / 100) * (temperature + 273.15) / 273.15 * (101.3 / pressure)
    return {
        "so2": (400.0 + 450.0 * load) * (1 + 0.06 * _drift(seed, "coal-sulfur", t, 7200)),
        "nox": nox,  # as NO2
        "no": nox * NO_SHARE_OF_NOX * 1.339 / 2.053,  # NO mass from NOx-as-NO2 mass (regulatory-basis.md §2 factors)
        "co": max(5.0, 20.0 + 55.0 * (1 - load) ** 2 + 6.0 * _drift(seed, "co", t, 120)),
        "o2": o2,
        "co2": 18.7 * (1 - o2 / 21),  # coal's CO2max ≈ 18.7 %vol dry, diluted by excess air
        "h2o": h2o,
        "dust": max(0.5, 5.0 + 22.0 * load + 2.0 * _drift(seed, "dust", t, 900)),
        "flow": flow,
        "velocity": actual_flow / 3600 / STACK_AREA_M2,
        "temperature": temperature,
        "pressure": pressure,
    }


# --------------------------------------------------------------------------------------------------
# The plant story: a replayed month of the stack's boiler. Pure functions of (story, time).
# --------------------------------------------------------------------------------------------------


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


INDUSTRIAL_ZONE_BEARING = 10.0
"""Degrees from north of Pavlodar's northern industrial zone (CHPs, former chemical plant) seen from the station."""

HG_URBAN_BACKGROUND = 4.9
"""ng/m3, Pavlodar urban background of total gaseous mercury (Guney et al., Atmosphere 2021, 12(2):275)."""

HG_MEASURED_RANGE = (1.0, 37.0)
"""ng/m3, the range measured around Pavlodar in the same study; episodes go beyond it."""


def pavlodar_ambient(seed: int, t: float, incidents: Incidents) -> dict[str, float]:
    """Urban air in Pavlodar: a continental climate, winter heating smog, traffic, an industrial zone upwind."""
    hour = local_hour(t)
    winter = winterness(t)
    seasonal_temperature = 2.5 - 19.5 * (2 * winter - 1)  # -17 °C mid-January, +22 °C mid-July
    heating = _clamp((12.0 - seasonal_temperature) / 25.0, 0.0, 1.0)
    stagnation = 1 + (0.25 + 0.35 * heating) * math.cos(2 * math.pi * (hour - 5) / 24)  # night/morning inversions
    rush = _daily_peak(hour, 8.5, 1.5) + 0.8 * _daily_peak(hour, 18.5, 2.0)

    wind_speed = max(
        0.2, 3.2 + 1.2 * _afternoon(hour) + 1.6 * _drift(seed, "wind", t, 10_800) + 0.6 * _drift(seed, "gust", t, 60)
    )
    wind_dir = (225.0 + 70.0 * _drift(seed, "wind-dir", t, 14_400) + 8.0 * _drift(seed, "veer", t, 120)) % 360
    from_industry = max(0.0, math.cos(math.radians(wind_dir - INDUSTRIAL_ZONE_BEARING))) ** 3
    plume = from_industry / (1 + 0.35 * wind_speed)

    no = (1.0 + 20.0 * rush) * stagnation * (1 + 0.5 * heating)
    no2 = (5.0 + 12.0 * rush + 4.0 * heating) * stagnation + 3.0 * plume
    pm25 = max(1.0, (6.0 + 18.0 * heating) * stagnation + 5.0 * rush + 8.0 * plume + 2.0 * _drift(seed, "pm", t, 3600))
    background_hg = HG_URBAN_BACKGROUND * math.exp(0.3 * _drift(seed, "hg", t, 10_800)) * math.sqrt(stagnation)
    hg = _clamp(background_hg + 28.0 * plume, *HG_MEASURED_RANGE) + mercury_episode(seed, t, incidents)
    return {
        "so2": max(0.0, (1.5 + 4.0 * heating) * stagnation + 35.0 * plume + _drift(seed, "so2", t, 1800)),
        "no": no,
        "no2": no2,
        "nox": no + no2,
        "pm25": pm25,
        "pm10": pm25 * (1.45 + 0.1 * _drift(seed, "coarse", t, 7200)) + 2.5 * max(0.0, wind_speed - 4.0) ** 1.5,
        "hg": hg,
        "wind_speed": wind_speed,
        "wind_dir": wind_dir,
        "air_temp": seasonal_temperature
        + (4.0 + 2.0 * (1 - winter)) * _afternoon(hour)
        + 3.0 * _drift(seed, "air-temp", t, 21_600),
        "air_pressure": 1000.0 + 8.0 * (2 * winter - 1) + 7.0 * _drift(seed, "pressure-system", t, 86_400),
        "rel_humidity": _clamp(
            68.0 + 8.0 * heating - 18.0 * _afternoon(hour) + 8.0 * _drift(seed, "humidity", t, 21_600), 12.0, 100.0
        ),
    }


def world_state(
    scenario: Scenario, seed: int, t: float, incidents: Incidents, story: PlantStory | None = None
) -> dict[str, float]:
    """Every quantity of a scenario's world at time t, before measurement noise; the stack follows `story`."""
    if scenario is Scenario.COAL_BOILER_STACK:
        return with_story(coal_boiler_stack(seed, t), seed, t, story)
    return pavlodar_ambient(seed, t, incidents)


@dataclass(frozen=True)
class Quantity:
    """How an instrument measures one world variable: its unit, its noise, what a zero/span check shows."""

    unit: str
    noise: float
    """standard deviation of the measurement noise, in the unit"""
    relative_noise: float = 0.0
    """plus this fraction of the value"""
    floor: float | None = 0.0
    """lowest value reported; None lets noise go negative, as ambient analyzers near zero do"""
    check_value: float | None = None
    """what it reads during a zero/span check (check_function); None: the check does not affect it"""


QUANTITIES: dict[Scenario, dict[str, Quantity]] = {
    Scenario.COAL_BOILER_STACK: {
        "so2": Quantity("mg/m3", 1.0, 0.01, check_value=0.0),
        "no": Quantity("mg/m3", 1.0, 0.01, check_value=0.0),
        "nox": Quantity("mg/m3", 1.0, 0.01, check_value=0.0),
        "co": Quantity("mg/m3", 1.5, 0.02, check_value=0.0),
        "co2": Quantity("%vol", 0.05, check_value=0.04),  # checked with instrument air
        "o2": Quantity("%vol", 0.05, check_value=20.9),
        "h2o": Quantity("%vol", 0.1, check_value=0.0),
        "dust": Quantity("mg/m3", 0.3, 0.02, check_value=0.0),
        "flow": Quantity("Nm3/h", 0.0, 0.005),
        "velocity": Quantity("m/s", 0.0, 0.005),
        "temperature": Quantity("degC", 0.2, floor=None),
        "pressure": Quantity("kPa", 0.02),
        "unit_state": Quantity("code", 0.0),  # the DCS's unit state register: exact
        "load": Quantity("%", 0.2),
        "fuel_flow": Quantity("t/h", 0.1),
    },
    Scenario.PAVLODAR_AMBIENT: {
        "so2": Quantity("ppb", 0.4, floor=None, check_value=0.0),
        "no": Quantity("ppb", 0.4, floor=None, check_value=0.0),
        "no2": Quantity("ppb", 0.4, floor=None, check_value=0.0),
        "nox": Quantity("ppb", 0.5, floor=None, check_value=0.0),
        "pm25": Quantity("ug/m3", 1.0, 0.03, floor=None, check_value=0.0),
        "pm10": Quantity("ug/m3", 1.5, 0.03, floor=None, check_value=0.0),
        "hg": Quantity("ng/m3", 0.1, 0.03, check_value=0.0),
        "wind_speed": Quantity("m/s", 0.1),
        "wind_dir": Quantity("deg", 2.0, floor=None),
        "air_temp": Quantity("degC", 0.05, floor=None),
        "air_pressure": Quantity("hPa", 0.05),
        "rel_humidity": Quantity("%", 0.3),
    },
}


def scenario_for(profile: Profile) -> Scenario:
    """The world whose quantities match most of a profile's tags by name and unit (stack on a tie)."""

    def matches(scenario: Scenario) -> int:
        known = QUANTITIES[scenario]
        return sum(1 for tag in profile.tag if tag.name in known and known[tag.name].unit == tag.unit)

    return max(Scenario, key=matches)


# --------------------------------------------------------------------------------------------------
# Instruments and their register images. Pure.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSpan:
    """The addresses a profile uses in one Modbus table: the simulator answers there and nowhere else.

    Registers tables are exact. Bit tables are refused below `first` and from `end` on, but a read that
    starts inside and runs past `end` within the same 16-bit word is answered with zeros: pymodbus's
    action callback sees words, not the bit count.
    """

    function: Function
    first: int
    end: int

    @property
    def first_register(self) -> int:
        """Index of the first runtime word (bit tables pack 16 bits per word, LSB first)."""
        return self.first // 16 if self.function.is_bit else self.first

    @property
    def registers(self) -> int:
        if self.function.is_bit:
            return (self.end - 1) // 16 - self.first // 16 + 1
        return self.end - self.first


def table_spans(profile: Profile) -> dict[Function, TableSpan]:
    """Lowest to highest address each table uses; holes in between read as zero, as the planner's merged reads need."""
    tables: dict[Function, TableSpan] = {}
    for span in spans_of(profile):
        known = tables.get(span.function)
        first = span.address if known is None else min(known.first, span.address)
        end = span.end if known is None else max(known.end, span.end)
        tables[span.function] = TableSpan(span.function, first, end)
    return tables


class SimulatedInstrument:
    """One instrument to play: the profile says what to serve, the scenario which world it measures."""

    def __init__(self, id: str, profile: Profile, device_id: int = 1, scenario: Scenario | None = None) -> None:
        if not 0 <= device_id <= 255:
            raise ValueError(f"{id}: device id {device_id} is not within 0 ... 255")
        unscalable = [tag.name for tag in profile.tag if tag.scale == 0]
        if unscalable:
            raise ValueError(f"{id}: tags {unscalable} have scale 0, so no register value gives their reading")
        self.id = id
        self.profile = profile
        self.device_id = device_id
        self.scenario = scenario if scenario is not None else scenario_for(profile)
        self.tables = table_spans(profile)
        known = QUANTITIES[self.scenario]
        self.quantities: dict[str, Quantity | None] = {
            tag.name: known[tag.name] if tag.name in known and known[tag.name].unit == tag.unit else None
            for tag in profile.tag
        }
        self.signals = frozenset(
            quality for block in profile.status for quality in (*block.bits.values(), *block.required.values())
        )
        """The qualities this instrument's status bits can report: it only shows incidents it can flag."""
        unknown = [name for name, quantity in self.quantities.items() if quantity is None]
        if unknown:
            log.info("%s: no %s model for tags %s; serving a generic wandering value", id, self.scenario, unknown)

    def __repr__(self) -> str:
        return f"SimulatedInstrument({self.id!r}, {self.profile.profile.name!r}, device_id={self.device_id})"


@dataclass(frozen=True, slots=True)
class ServedTick:
    """What one instrument served during one tick, as the agent decodes it."""

    instrument: str
    time: float
    """start of the tick, epoch seconds"""
    tags: tuple[str, ...]
    numbers: tuple[float, ...]
    """per tag, after the encode -> decode round trip (float32 rounding, integer scaling)"""
    blocks: tuple[str, ...]
    words: tuple[int, ...]
    """per status block, its bits as one integer (bit i = status bit i), as edge_agent.quality.status_word gives"""

    @property
    def values(self) -> dict[str, float]:
        return dict(zip(self.tags, self.numbers, strict=True))

    @property
    def status(self) -> dict[str, int]:
        return dict(zip(self.blocks, self.words, strict=True))


@dataclass(frozen=True)
class TickImage:
    """An instrument's registers for one tick and the record of what they mean."""

    words: Mapping[Function, list[int]]
    """per table, the runtime words from the table's first register (bit tables: 16 bits per word)"""
    served: ServedTick
    windows: tuple[Window, ...] = field(default=())


def _generic_value(seed: int, instrument_id: str, tag: str, t: float) -> float:
    """For tags no world models: a value wandering around 50 that any register type can hold."""
    return 50.0 + 15.0 * _drift(seed, f"{instrument_id}.{tag}", t, 600)


def _measured(
    instrument: SimulatedInstrument, tag: Tag, world: Mapping[str, float], *, seed: int, tick_index: int, t: float
) -> float:
    quantity = instrument.quantities[tag.name]
    if quantity is None:
        return _generic_value(seed, instrument.id, tag.name, t)
    true_value = world[tag.name]
    sigma = quantity.noise + quantity.relative_noise * abs(true_value)
    value = true_value + sigma * _gauss(seed, instrument.id, tag.name, tick_index)
    return value if quantity.floor is None else max(quantity.floor, value)


def _calibrated(instrument: SimulatedInstrument) -> bool:
    """An instrument with a zero/span check: some tag reads check gas, and a status bit says so."""
    return Quality.CHECK_FUNCTION in instrument.signals and any(
        quantity is not None and quantity.check_value is not None for quantity in instrument.quantities.values()
    )


def _gas_analyzer(instrument: SimulatedInstrument) -> bool:
    return instrument.scenario is Scenario.COAL_BOILER_STACK and any(tag in SPAN_GAS for tag in instrument.quantities)


def story_windows(
    instrument: SimulatedInstrument, tick_index: int, tick: float, story: PlantStory
) -> tuple[Window, ...]:
    """The plant story's incidents at a tick: the daily zero and span checks and the gas analyzer's failure after
    the failed check. Of the profile's check_function bits (sorted) the check sets the second for zero and the
    third for span: with config/profiles/stack-gas-analyzer.toml, discrete inputs 1024 (zero) and 1025 (span),
    so a QAL3 capture can tell them apart; the reading before the bit drops is the check's result."""
    if instrument.scenario is not Scenario.COAL_BOILER_STACK:
        return ()
    t = tick_index * tick
    windows = []
    step = check_step(story, t) if _calibrated(instrument) else None
    if step is not None:
        begins = story.check_start(t) + (story.check_step_s if step is CheckStep.SPAN else 0.0)
        first, end = math.floor(begins / tick), math.ceil((begins + story.check_step_s) / tick)
        windows.append(Window(Quality.CHECK_FUNCTION, first, end, 0.3 if step is CheckStep.ZERO else 0.55))
    if _gas_analyzer(instrument) and out_of_service(story, t) and story.failed_check_at is not None:
        begins = story.failed_check_at + 2 * story.check_step_s
        first, end = math.floor(begins / tick), math.ceil((begins + story.repair_hours * 3600) / tick)
        windows.append(Window(Quality.FAILURE, first, end, 0.0))
    return tuple(windows)


def measured_values(
    instrument: SimulatedInstrument,
    tick_index: int,
    *,
    seed: int,
    tick: float,
    incidents: Incidents,
    windows: tuple[Window, ...],
    story: PlantStory | None = None,
) -> dict[str, float]:
    """Engineering values the instrument shows at a tick: the world plus noise, changed by the incidents it can flag.

    A failure holds the value of the failure's first tick; a zero/span check shows the check gas (the story's span
    step: the span gas, 10 % low in its failed check).
    """
    t = tick_index * tick
    shown = {window.quality: window for window in windows if window.quality in instrument.signals}
    failure = shown.get(Quality.FAILURE)
    if failure is not None and failure.start != tick_index:
        return measured_values(
            instrument, failure.start, seed=seed, tick=tick, incidents=incidents, windows=windows, story=story
        )
    world = world_state(instrument.scenario, seed, t, incidents, story)
    values = {
        tag.name: _measured(instrument, tag, world, seed=seed, tick_index=tick_index, t=t)
        for tag in instrument.profile.tag
    }
    if Quality.CHECK_FUNCTION in shown:
        step = check_step(story, t) if story is not None else None
        factor = FAILED_SPAN_FACTOR if story is not None and check_failed(story, t) else 1.0
        for tag in instrument.profile.tag:
            quantity = instrument.quantities[tag.name]
            if quantity is None or quantity.check_value is None:
                continue
            gas = quantity.check_value
            if step is CheckStep.SPAN and tag.name in SPAN_GAS:
                gas = SPAN_GAS[tag.name] * factor
            values[tag.name] = gas + quantity.noise * _gauss(seed, instrument.id, tag.name, tick_index, "check")
    return values


def status_bits(block: StatusBlock, windows: Iterable[Window]) -> list[bool]:
    """A status block's bits during the given incidents: `required` bits set when healthy, one bit per incident."""
    bits = [False] * block.count
    for index in block.required:
        bits[index] = True
    for window in windows:
        candidates = sorted(index for index, quality in block.bits.items() if quality == window.quality)
        if candidates:
            bits[candidates[math.floor(window.pick * len(candidates))]] = True
        for index, quality in block.required.items():
            if quality == window.quality:
                bits[index] = False
    return bits


_INTEGER_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


def encode_tag(tag: Tag, order: ByteOrder, value: float) -> list[int]:
    """A tag's registers for an engineering value; integers saturate at their type's limits as transmitters do."""
    raw = (value - tag.offset) / tag.scale
    limits = _INTEGER_RANGES.get(tag.type)
    if limits is not None:
        return encode_value(min(max(round(raw), limits[0]), limits[1]), tag.type, order)
    return encode_value(raw, tag.type, order)


def _set_bit(words: list[int], index: int, on: bool) -> None:
    if on:
        words[index // 16] |= 1 << index % 16
    else:
        words[index // 16] &= ~(1 << index % 16)


def register_image(
    instrument: SimulatedInstrument, tick_time: float, values: Mapping[str, float], bits: Mapping[str, list[bool]]
) -> TickImage:
    """Encode one tick's values and status bits into the instrument's tables, and record what the agent will decode."""
    profile = instrument.profile
    words = {function: [0] * span.registers for function, span in instrument.tables.items()}
    numbers = []
    for tag in profile.tag:
        table, span = words[tag.function], instrument.tables[tag.function]
        if tag.function.is_bit:
            on = values[tag.name] >= 0.5
            _set_bit(table, tag.address - span.first_register * 16, on)
            numbers.append(1.0 if on else 0.0)
            continue
        order = profile.byte_order_of(tag)
        registers = encode_tag(tag, order, values[tag.name])
        at = tag.address - span.first
        table[at : at + len(registers)] = registers
        numbers.append(scale_value(decode_registers(registers, tag.type, order), tag.scale, tag.offset))
    for block in profile.status:
        table, span = words[block.function], instrument.tables[block.function]
        block_bits = bits[block.name]
        if block.function.is_bit:
            for index, bit in enumerate(block_bits):
                _set_bit(table, block.address - span.first_register * 16 + index, bit)
        else:
            for word in range(block.registers):
                chunk = block_bits[word * 16 : word * 16 + 16]
                table[block.address - span.first + word] = sum(1 << index for index, bit in enumerate(chunk) if bit)
    served = ServedTick(
        instrument=instrument.id,
        time=tick_time,
        tags=tuple(tag.name for tag in profile.tag),
        numbers=tuple(numbers),
        blocks=tuple(block.name for block in profile.status),
        words=tuple(status_word(bits[block.name]) for block in profile.status),
    )
    return TickImage(words=words, served=served)


def tick_image(
    instrument: SimulatedInstrument,
    tick_index: int,
    *,
    seed: int,
    tick: float,
    incidents: Incidents,
    story: PlantStory | None = None,
) -> TickImage:
    """Everything an instrument serves during one tick. Pure: same arguments, same registers."""
    windows = active_windows(seed, instrument.id, tick_index, incidents)
    if story is not None:
        windows += story_windows(instrument, tick_index, tick, story)
    values = measured_values(
        instrument, tick_index, seed=seed, tick=tick, incidents=incidents, windows=windows, story=story
    )
    bits = {block.name: status_bits(block, windows) for block in instrument.profile.status}
    return replace(register_image(instrument, tick_index * tick, values, bits), windows=windows)


# --------------------------------------------------------------------------------------------------
# I/O: pymodbus servers, one per port, each playing the instruments behind that port.
# --------------------------------------------------------------------------------------------------

_TABLE_OF_FUNCTION_CODE = {
    1: Function.COIL,
    5: Function.COIL,
    15: Function.COIL,
    2: Function.DISCRETE,
    3: Function.HOLDING,
    6: Function.HOLDING,
    16: Function.HOLDING,
    22: Function.HOLDING,
    23: Function.HOLDING,
    4: Function.INPUT,
}
_TABLE_ORDER = (Function.COIL, Function.DISCRETE, Function.HOLDING, Function.INPUT)


def _sim_table(span: TableSpan | None, function: Function) -> list[SimData]:
    """One block per table covering the profile's span; pymodbus needs a block even in unused tables."""
    if function.is_bit:
        if span is None:  # placeholder the action refuses
            return [SimData(0, values=[False] * 16, datatype=SimType.BITS)]
        return [SimData(span.first, values=[False] * (span.end - span.first), datatype=SimType.BITS)]
    if span is None:  # an invalid register: pymodbus answers "illegal address" itself
        return [SimData(0, datatype=SimType.INVALID)]
    return [SimData(span.first, count=span.end - span.first, values=0, datatype=SimType.REGISTERS, readonly=True)]


@functools.cache
def _absent_devices() -> SimDevice:
    """Device id 0 stands for every unit id not configured: answer like a Modbus TCP gateway whose target is
    silent (exception 0x0B) rather than pymodbus's default for an unknown id (an internal error, exception 4)."""

    async def absent(  # noqa: PLR0917 - pymodbus calls it with six positional arguments
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        return ExcCodes.GATEWAY_NO_RESPONSE

    every_bit = [SimData(0, values=[False] * 65536, datatype=SimType.BITS)]
    every_register = [SimData(0, count=65536, values=0, datatype=SimType.REGISTERS)]
    return SimDevice(
        id=0, simdata=(every_bit, every_bit, every_register, every_register), action=absent, use_bit_addressing=True
    )


@dataclass(frozen=True)
class Quirks:
    """How a real device may misbehave, for tests and benches: it answers late, or refuses some addresses."""

    delay_s: float = 0.0
    """seconds before every answer (a slow device; with delay > the agent's timeout, a timing-out one)"""
    refuse: frozenset[int] = frozenset()
    """register addresses (holding and input) whose reads the device refuses with illegal data address"""


class _Playing:
    """Runtime of one instrument: the image of the current tick and the bounded record of past ones."""

    def __init__(self, instrument: SimulatedInstrument, history_ticks: int) -> None:
        self.instrument = instrument
        self.image: TickImage | None = None
        self.tick_index: int | None = None
        self.history: deque[ServedTick] = deque(maxlen=history_ticks)


class Simulator:
    """Modbus TCP servers playing instruments; values change once per tick, reproducibly for a seed.

    `instruments_by_port` maps a TCP port to the instruments behind it (distinct device ids). `port_map` moves
    ports elsewhere, 0 meaning any free port ({5020: 0} in tests); `ports` tells where each one listens after
    start(). `clock` gives epoch seconds and may be replaced for tests.
    """

    def __init__(
        self,
        instruments_by_port: Mapping[int, Sequence[SimulatedInstrument]],
        *,
        host: str = "127.0.0.1",
        seed: int = 0,
        tick: float = 1.0,
        incidents: Incidents | None = None,
        clock: Callable[[], float] = time.time,
        history_ticks: int = 3600,
        port_map: Mapping[int, int] | None = None,
        quirks: Mapping[str, Quirks] | None = None,
        rtu: bool = False,
        story: PlantStory | None = None,
    ) -> None:
        """`quirks` makes instruments misbehave; `rtu` frames every port's traffic as Modbus RTU (CRC, no MBAP
        header), as a serial device server in transparent mode does (a device that never answers: RtuLine);
        `story` plays a plant story on the stack's instruments (None: the boiler always runs)."""
        if tick <= 0:
            raise ValueError(f"tick must be positive, got {tick}")
        if history_ticks < 1:
            raise ValueError(f"history_ticks must be at least 1, got {history_ticks}")
        self.host = host
        self.seed = seed
        self.tick = tick
        self.incidents = incidents if incidents is not None else Incidents()
        self.clock = clock
        self._listen_on = dict(port_map or {})
        self.quirks = dict(quirks or {})
        self.rtu = rtu
        self.story = story
        self._by_port: dict[int, list[_Playing]] = {}
        self._playing: dict[str, _Playing] = {}
        for port, instruments in instruments_by_port.items():
            if not 0 <= port <= 65535:
                raise ValueError(f"port {port} is not within 0 ... 65535")
            device_ids = [instrument.device_id for instrument in instruments]
            clashes = sorted({d for d in device_ids if device_ids.count(d) > 1})
            if clashes:
                raise ValueError(f"port {port}: more than one instrument with device id {clashes}")
            for instrument in instruments:
                if instrument.id in self._playing:
                    raise ValueError(f"instrument id {instrument.id!r} appears more than once")
                self._playing[instrument.id] = _Playing(instrument, history_ticks)
            self._by_port[port] = [self._playing[instrument.id] for instrument in instruments]
        self._servers: dict[int, ModbusTcpServer] = {}
        self._bound: dict[int, int] = {}

    # ---- lifecycle ----

    async def start(self) -> None:
        """Listen on every port; raises (after closing what it opened) if one cannot be bound."""
        if self._servers:
            raise RuntimeError("simulator already started")
        try:
            for port, playing in self._by_port.items():
                devices = [self._device(p) for p in playing]
                if all(p.instrument.device_id != 0 for p in playing):
                    devices.append(_absent_devices())
                listen_on = self._listen_on.get(port, port)
                if self.rtu:
                    server = ModbusTcpServer(devices, address=(self.host, listen_on), framer=FramerType.RTU)
                else:
                    server = ModbusTcpServer(devices, address=(self.host, listen_on))
                try:
                    await server.serve_forever(background=True)
                except RuntimeError as error:
                    raise OSError(f"simulator cannot listen on {self.host}:{listen_on}: {error}") from None
                self._servers[port] = server
                self._bound[port] = _listening_port(server)
                log.info(
                    "simulating %s on %s:%d",
                    ", ".join(f"{p.instrument.id} (device {p.instrument.device_id})" for p in playing),
                    self.host,
                    self._bound[port],
                )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every server and its client connections. Safe to call twice."""
        servers, self._servers = self._servers, {}
        for server in servers.values():
            await server.shutdown()  # type: ignore[no-untyped-call]
        self._bound = {}
        await asyncio.sleep(0)  # let the closed transports run their callbacks

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def ports(self) -> dict[int, int]:
        """Configured port -> the port actually listened on (differs when moved by port_map). Empty until start()."""
        return dict(self._bound)

    @property
    def instruments(self) -> list[SimulatedInstrument]:
        return [playing.instrument for playing in self._playing.values()]

    def endpoint(self, instrument_id: str) -> tuple[str, int, int]:
        """(host, listening port, device id) of an instrument, once started."""
        instrument = self._playing[instrument_id].instrument
        for port, playing in self._by_port.items():
            if any(p.instrument is instrument for p in playing):
                return self.host, self._bound[port], instrument.device_id
        raise KeyError(instrument_id)  # pragma: no cover - every instrument is behind a port

    # ---- what is served ----

    def tick_index_now(self) -> int:
        return math.floor(self.clock() / self.tick)

    def image_now(self, instrument_id: str) -> TickImage:
        """The instrument's registers for the current tick, recording them the first time the tick is served."""
        playing = self._playing[instrument_id]
        index = self.tick_index_now()
        if playing.image is None or playing.tick_index != index:
            playing.image = tick_image(
                playing.instrument, index, seed=self.seed, tick=self.tick, incidents=self.incidents, story=self.story
            )
            playing.tick_index = index
            playing.history.append(playing.image.served)
        return playing.image

    def served(self, instrument_id: str) -> list[ServedTick]:
        """Ticks the instrument served, oldest first (the last `history_ticks` of them)."""
        return list(self._playing[instrument_id].history)

    def served_values(self, instrument_id: str, tag: str) -> list[float]:
        """A tag's values as the agent decodes them, one per served tick, oldest first."""
        return [tick.values[tag] for tick in self._playing[instrument_id].history]

    def served_status(self, instrument_id: str, block: str) -> list[int]:
        """A status block's words (bit i = status bit i), one per served tick, oldest first."""
        return [tick.status[block] for tick in self._playing[instrument_id].history]

    # ---- pymodbus glue ----

    def _device(self, playing: _Playing) -> SimDevice:
        instrument = playing.instrument
        tables = [_sim_table(instrument.tables.get(function), function) for function in _TABLE_ORDER]
        return SimDevice(
            id=instrument.device_id,
            simdata=(tables[0], tables[1], tables[2], tables[3]),
            action=self._action(instrument.id),
            use_bit_addressing=True,
        )

    def _action(self, instrument_id: str) -> SimAction:
        tables = self._playing[instrument_id].instrument.tables
        quirks = self.quirks.get(instrument_id, Quirks())

        async def answer(  # noqa: PLR0917 - pymodbus calls it with six positional arguments
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            """Refuse writes and reads outside the profile; otherwise put the current tick's words in place."""
            function = _TABLE_OF_FUNCTION_CODE.get(function_code)
            span = tables.get(function) if function is not None else None
            if span is None or set_values is not None or not span.first <= address < span.end:
                return ExcCodes.ILLEGAL_ADDRESS
            if not span.function.is_bit and address + count > span.end:
                return ExcCodes.ILLEGAL_ADDRESS
            if quirks.delay_s:
                await asyncio.sleep(quirks.delay_s)
            refused = quirks.refuse and quirks.refuse.intersection(range(address, address + count))
            if refused and not span.function.is_bit:
                return ExcCodes.ILLEGAL_ADDRESS
            words = self.image_now(instrument_id).words[span.function]
            registers[: len(words)] = words
            return None

        return answer


def _listening_port(server: ModbusTcpServer) -> int:
    """The port the server's listening socket got (differs from the configured one for port 0)."""
    sockets = getattr(server.transport, "sockets", None) or ()
    for sock in sockets:
        return int(sock.getsockname()[1])
    raise RuntimeError("pymodbus server has no listening socket")


def simulator_for_config(
    configs: LoadedConfig | Iterable[LoadedConfig],
    *,
    host: str = "127.0.0.1",
    port_map: Mapping[int, int] | None = None,
    seed: int = 0,
    tick: float = 1.0,
    incidents: Incidents | None = None,
    demo: bool = False,
    clock: Callable[[], float] = time.time,
    history_ticks: int = 3600,
    quirks: Mapping[str, Quirks] | None = None,
    rtu: bool = False,
    story: PlantStory | None = None,
) -> Simulator:
    """A simulator playing every instrument of one or more agent site configs, each at its port and device id.

    `port_map` moves configured ports elsewhere (0 = a free port), e.g. {5020: 0} in tests; the scenario of
    each instrument is picked from its profile's tag names and units. `demo` stands for
    `incidents=Incidents.demo(clock())`: frequent incidents and a mercury episode 20 s from now.
    """
    if demo and incidents is not None:
        raise ValueError("give demo=True or incidents, not both")
    if demo:
        incidents = Incidents.demo(clock())
    loaded = [configs] if isinstance(configs, LoadedConfig) else list(configs)
    by_port: dict[int, list[SimulatedInstrument]] = {}
    for config in loaded:
        for instrument in config.instruments:
            by_port.setdefault(instrument.config.port, []).append(
                SimulatedInstrument(instrument.id, instrument.profile, instrument.config.device_id)
            )
    return Simulator(
        by_port,
        host=host,
        seed=seed,
        tick=tick,
        incidents=incidents,
        clock=clock,
        history_ticks=history_ticks,
        port_map=port_map,
        quirks=quirks,
        rtu=rtu,
        story=story,
    )


# --------------------------------------------------------------------------------------------------
# A shared serial line: devices answer in their own time, dead ones never, late answers stay on the line.
# --------------------------------------------------------------------------------------------------


class RtuLine:
    """A serial line as the master sees it, in front of an RTU-framed simulator port.

    Accepts the master's connection on a loopback TCP port (directly for RTU over TCP, or through
    `socat pty,... tcp:HOST:PORT` for a real pty), passes each request to the simulator one at a time, and
    writes each answer back after its device's delay, whether or not the master still waits for it: a late
    answer lands on the line while the master talks to another device, as on a real RS-485 bus. Requests to
    a `silent` device get no answer at all (dead, unplugged, wrong address). pymodbus cannot play this itself:
    its serial server needs pyserial, and a delaying action in its TCP server mislabels concurrent answers.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delays: Mapping[int, float] | None = None,
        silent: Iterable[int] = (),
    ) -> None:
        self.upstream = upstream
        self.host, self._port = host, port
        self.delays = dict(delays or {})
        self.silent = set(silent)
        self.requests: dict[int, int] = {}
        """device id -> requests seen on the line"""
        self.sequence: list[int] = []
        """device ids of the requests, in the order they came (the last 10,000)"""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("line not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, master_in: asyncio.StreamReader, master_out: asyncio.StreamWriter) -> None:
        self._spawn(self._relay(master_in, master_out))

    async def _relay(self, master_in: asyncio.StreamReader, master_out: asyncio.StreamWriter) -> None:
        device_in, device_out = await asyncio.open_connection(*self.upstream)
        try:
            while True:
                try:
                    request = await master_in.readexactly(REQUEST_FRAME_SIZE)
                except asyncio.IncompleteReadError:
                    return
                device = request[0]
                self.requests[device] = self.requests.get(device, 0) + 1
                self.sequence.append(device)
                del self.sequence[:-10_000]
                if device in self.silent:
                    continue
                device_out.write(request)
                head = await device_in.readexactly(3)
                size = frame_size(head) or 3
                answer = head + await device_in.readexactly(max(0, size - 3))
                self._spawn(self._answer_later(master_out, answer, self.delays.get(device, 0.0)))
        finally:
            device_out.close()
            master_out.close()

    @staticmethod
    async def _answer_later(master_out: asyncio.StreamWriter, answer: bytes, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if not master_out.is_closing():
            master_out.write(answer)


# --------------------------------------------------------------------------------------------------
# python -m aua_simulator.instruments CONFIG [CONFIG...]
# --------------------------------------------------------------------------------------------------


async def _run_until_stopped(simulator: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    async with simulator:
        for instrument in simulator.instruments:
            host, port, device_id = simulator.endpoint(instrument.id)
            name = instrument.profile.profile.name
            print(f"{instrument.id}: {name} ({instrument.scenario}) on {host}:{port} device {device_id}", flush=True)
        print("simulating; Ctrl-C stops", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aua_simulator.instruments",
        description="Play the instruments of agent site configs on Modbus TCP, until Ctrl-C.",
    )
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG", help="agent site config (TOML)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated world (default %(default)s)")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between value changes (default %(default)s)")
    parser.add_argument(
        "--demo", action="store_true", help="frequent calibrations and warnings, a mercury episode after 20 s"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log pymodbus and simulator details")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if options.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        loaded = [load_config(path) for path in options.configs]
        simulator = simulator_for_config(
            loaded,
            host=options.host,
            seed=options.seed,
            tick=options.tick,
            demo=options.demo,
        )
    except (ConfigError, ValueError) as error:
        print(error, file=sys.stderr)
        return 2
    try:
        asyncio.run(_run_until_stopped(simulator))
    except OSError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
