"""Pure: what goes wrong or gets serviced, and when: calibration, warning, out-of-spec and failure windows and
mercury episodes as functions of (seed, instrument, tick), so tests and the demo can place them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aua_contract import Quality
from aua_simulator.chance import uniform


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
        if uniform(seed, instrument_id, quality.value, slot, "happens") >= rate.probability:
            continue
        longest = min(rate.ticks[1], slot_ticks)
        shortest = min(rate.ticks[0], longest)
        length = shortest + math.floor(
            uniform(seed, instrument_id, quality.value, slot, "length") * (longest - shortest + 1)
        )
        start = slot * slot_ticks + math.floor(
            uniform(seed, instrument_id, quality.value, slot, "start") * (slot_ticks - length + 1)
        )
        if start <= tick_index < start + length:
            pick = uniform(seed, instrument_id, quality.value, slot, "bit")
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
    if uniform(seed, "hg-episode", hour) < incidents.hg_episode_probability:
        shortest, longest = incidents.hg_episode_seconds
        duration = shortest + (longest - shortest) * uniform(seed, "hg-episode-length", hour)
        start = hour * 3600 + (3600 - duration) * uniform(seed, "hg-episode-start", hour)
        low, high = incidents.hg_episode_peak
        excess += _trapezoid(t, start, duration, low + (high - low) * uniform(seed, "hg-episode-peak", hour))
    return excess
