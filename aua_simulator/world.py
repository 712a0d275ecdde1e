"""Pure: what the instruments would measure without noise, as functions of (seed, time): the calendar of
Pavlodar (UTC+5), the coal-fired boiler stack and the city's ambient air.
"""

from __future__ import annotations

import math
from enum import StrEnum

from aua_simulator.chance import clamp, drift
from aua_simulator.incidents import Incidents, mercury_episode

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
    return clamp(0.25 + 0.35 * winterness(t) + 0.3 * daily + 0.07 * drift(seed, "load", t, 1800), 0.0, 1.0)


def coal_boiler_stack(seed: int, t: float) -> dict[str, float]:
    """Flue gas of a coal-fired boiler: concentrations dry at standard conditions, at the measured O2."""
    load = coal_boiler_load(seed, t)
    o2 = 8.0 - 2.0 * load + 0.15 * drift(seed, "excess-air", t, 300)
    h2o = 8.0 + 3.0 * load + 0.4 * drift(seed, "fuel-moisture", t, 3600)
    nox = 300.0 + 200.0 * load + 12.0 * drift(seed, "nox", t, 600)
    flow = 400_000.0 + 200_000.0 * load + 8_000.0 * drift(seed, "flow", t, 600)
    temperature = 130.0 + 18.0 * load + 1.5 * drift(seed, "gas-temperature", t, 900)
    pressure = 100.0 + 0.6 * drift(seed, "weather-pressure", t, 21_600) - 0.2 * load
    actual_flow = flow / (1 - h2o / 100) * (temperature + 273.15) / 273.15 * (101.3 / pressure)
    return {
        "so2": (400.0 + 450.0 * load) * (1 + 0.06 * drift(seed, "coal-sulfur", t, 7200)),
        "nox": nox,  # as NO2
        "no": nox * NO_SHARE_OF_NOX * 1.339 / 2.053,  # NO mass from NOx-as-NO2 mass (regulatory-basis.md §2 factors)
        "co": max(5.0, 20.0 + 55.0 * (1 - load) ** 2 + 6.0 * drift(seed, "co", t, 120)),
        "o2": o2,
        "co2": 18.7 * (1 - o2 / 21),  # coal's CO2max ≈ 18.7 %vol dry, diluted by excess air
        "h2o": h2o,
        "dust": max(0.5, 5.0 + 22.0 * load + 2.0 * drift(seed, "dust", t, 900)),
        "flow": flow,
        "velocity": actual_flow / 3600 / STACK_AREA_M2,
        "temperature": temperature,
        "pressure": pressure,
    }


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
    heating = clamp((12.0 - seasonal_temperature) / 25.0, 0.0, 1.0)
    stagnation = 1 + (0.25 + 0.35 * heating) * math.cos(2 * math.pi * (hour - 5) / 24)  # night/morning inversions
    rush = _daily_peak(hour, 8.5, 1.5) + 0.8 * _daily_peak(hour, 18.5, 2.0)

    wind_speed = max(
        0.2, 3.2 + 1.2 * _afternoon(hour) + 1.6 * drift(seed, "wind", t, 10_800) + 0.6 * drift(seed, "gust", t, 60)
    )
    wind_dir = (225.0 + 70.0 * drift(seed, "wind-dir", t, 14_400) + 8.0 * drift(seed, "veer", t, 120)) % 360
    from_industry = max(0.0, math.cos(math.radians(wind_dir - INDUSTRIAL_ZONE_BEARING))) ** 3
    plume = from_industry / (1 + 0.35 * wind_speed)

    no = (1.0 + 20.0 * rush) * stagnation * (1 + 0.5 * heating)
    no2 = (5.0 + 12.0 * rush + 4.0 * heating) * stagnation + 3.0 * plume
    pm25 = max(1.0, (6.0 + 18.0 * heating) * stagnation + 5.0 * rush + 8.0 * plume + 2.0 * drift(seed, "pm", t, 3600))
    background_hg = HG_URBAN_BACKGROUND * math.exp(0.3 * drift(seed, "hg", t, 10_800)) * math.sqrt(stagnation)
    hg = clamp(background_hg + 28.0 * plume, *HG_MEASURED_RANGE) + mercury_episode(seed, t, incidents)
    return {
        "so2": max(0.0, (1.5 + 4.0 * heating) * stagnation + 35.0 * plume + drift(seed, "so2", t, 1800)),
        "no": no,
        "no2": no2,
        "nox": no + no2,
        "pm25": pm25,
        "pm10": pm25 * (1.45 + 0.1 * drift(seed, "coarse", t, 7200)) + 2.5 * max(0.0, wind_speed - 4.0) ** 1.5,
        "hg": hg,
        "wind_speed": wind_speed,
        "wind_dir": wind_dir,
        "air_temp": seasonal_temperature
        + (4.0 + 2.0 * (1 - winter)) * _afternoon(hour)
        + 3.0 * drift(seed, "air-temp", t, 21_600),
        "air_pressure": 1000.0 + 8.0 * (2 * winter - 1) + 7.0 * drift(seed, "pressure-system", t, 86_400),
        "rel_humidity": clamp(
            68.0 + 8.0 * heating - 18.0 * _afternoon(hour) + 8.0 * drift(seed, "humidity", t, 21_600), 12.0, 100.0
        ),
    }
