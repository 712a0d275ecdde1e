"""MRV arithmetic: standard conditions, reference O2, validated values, mass rates and totals. Pure, no I/O.

Every formula and constant is docs/regulatory-basis.md §2 (units, standard conditions, mass) or §3 (confidence
intervals); the tests cite the section next to each case.

Two bases, never mixed (§2):
- mass uses the concentration on the same basis as the flow: dry, standard conditions (273.15 K,
  101.3 kPa), at the *measured* O2;
- limit comparison uses the concentration corrected to the source's reference O2, minus the confidence
  interval (the "validated" value, §3).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from gateway.errors import GatewayError
from gateway.units import (
    CELSIUS_TO_KELVIN,
    FLOW_NM3_PER_H,
    MASS_CONCENTRATION_MG_PER_M3,
    MIXING_RATIO_PPM,
    PERCENT_UNITS,
    STANDARD_PRESSURE_KPA,
    STANDARD_TEMPERATURE_K,
    mg_m3_per_ppm,
)

__all__ = [
    "CO2_DENSITY_KG_NM3",
    "CONCENTRATION_UNITS",
    "O2_AIR",
    "O2_GUARD",
    "PERCENT_UNITS",
    "PPM_TO_MG_M3",
    "REFERENCE_O2",
    "STANDARD_PRESSURE_KPA",
    "STANDARD_TEMPERATURE_K",
    "Basis",
    "Exceedance",
    "StandardisationError",
    "co2_rate_t_h",
    "confidence_interval",
    "correct_to_reference_o2",
    "dry_o2",
    "exceedances",
    "flow_to_dry_standard",
    "mass_kg",
    "mass_rate_kg_h",
    "o2_correction_factor",
    "ppm_to_mg_m3",
    "to_dry_standard",
    "to_standard_conditions",
    "total_tonnes",
    "validated_value",
    "wet_to_dry",
]

O2_AIR: Final = 21.0
O2_GUARD: Final = 19.5
"""§2: at or above ~19.5 % measured O2 the correction factor explodes: such values are flagged, not divided."""
CO2_DENSITY_KG_NM3: Final = 1.964
"""§2: E_CO2 [t/h] = C_CO2 [% vol] / 100 × Q [Nm³/h] × 1.964 / 1000."""

REFERENCE_O2: Final[Mapping[str, float]] = {
    "solid": 6.0,
    "liquid": 3.0,
    "gas": 3.0,
    "gas-turbine": 15.0,
    "engine": 15.0,
    "waste": 11.0,
}
"""§2: reference O2 (% vol, dry) by fuel: solid 6, liquid and gaseous fuels (boilers) 3, gas turbines and
engines 15, waste incineration 11."""

PPM_TO_MG_M3: Final[Mapping[str, float]] = {
    species: mg_m3_per_ppm(species) for species in ("so2", "no2", "nox", "no", "co", "hcl", "nh3", "hf", "co2", "hg")
}
"""§2: ppm → mg/m³ at the standard condition, 273.15 K and 101.3 kPa: M / 22.4195 (gateway/units.py), e.g.
SO2 2.8576, NO2 2.0520, CO 1.2494, Hg 8.9471. NOx is reported as NO2."""

CONCENTRATION_UNITS: Final = MASS_CONCENTRATION_MG_PER_M3
"""Mass concentration units and their factor to mg/m³, any spelling (gateway/units.py). "Nm3" units are at
standard conditions by definition."""
VOLUME_RATIO_UNITS: Final = MIXING_RATIO_PPM
FLOW_UNITS: Final = FLOW_NM3_PER_H


class StandardisationError(GatewayError, ValueError):
    """A value cannot be brought to the standard basis (O2 at the guard, moisture ≥ 100 %, p ≤ 0 …)."""


# -- §2 formulas ---------------------------------------------------------------------------------------------


def o2_correction_factor(o2_measured: float, o2_reference: float, *, guard: float = O2_GUARD) -> float:
    """(21 − O2_ref) / (21 − O2_meas), both dry % vol; refuses O2_meas ≥ guard (§2)."""
    if o2_measured >= guard:
        raise StandardisationError(
            f"measured O2 {o2_measured:g} % ≥ {guard:g} %: the O2 correction factor would explode (air ingress?)"
        )
    if not 0 <= o2_reference < O2_AIR:
        raise StandardisationError(f"reference O2 {o2_reference:g} % is not in [0, 21)")
    return (O2_AIR - o2_reference) / (O2_AIR - o2_measured)


def correct_to_reference_o2(
    concentration: float, o2_measured: float, o2_reference: float, *, guard: float = O2_GUARD
) -> float:
    """C_ref = C_meas × (21 − O2_ref) / (21 − O2_meas) (§2). 100 mg/m³ at 9 % → 125 mg/m³ at 6 %."""
    return concentration * o2_correction_factor(o2_measured, o2_reference, guard=guard)


def dry_o2(o2_measured: float, *, wet: bool, h2o_percent: float | None) -> float:
    """The O2 the reference-O2 correction needs: dry, % vol.

    Directive 2010/75/EU Annex VI Part 7 corrects with the measured O2 of gas standardised "after correction
    for the water vapour content" (Annex V Part 1, Annex VI Part 2; EN 14181 works on the same standard
    conditions): an in-situ (wet) O2 is dried with the simultaneous moisture of the same period,
    O2_dry = O2_wet / (1 − H2O). 8 % wet at 12 % H2O is 9.09 % dry; used as dry it would understate a
    corrected concentration by 8 % (solid fuel, 6 % reference).
    """
    if not wet:
        return o2_measured
    if h2o_percent is None:
        raise StandardisationError("O2 is measured wet: the moisture of the same period is needed to dry it")
    return wet_to_dry(o2_measured, h2o_percent)


def wet_to_dry(concentration_wet: float, h2o_percent: float) -> float:
    """C_dry = C_wet / (1 − H2O), H2O as a volume fraction (§2); here given in % vol (12 for 12 %)."""
    if not 0 <= h2o_percent < 100:
        raise StandardisationError(f"moisture {h2o_percent:g} % vol is not in [0, 100)")
    return concentration_wet / (1 - h2o_percent / 100)


def to_standard_conditions(concentration: float, temperature_c: float, pressure_kpa: float) -> float:
    """C_std = C_act × (T_act / 273.15) × (101.3 / p_act), T in K, p in kPa (§2)."""
    kelvin = temperature_c + CELSIUS_TO_KELVIN
    if kelvin <= 0 or pressure_kpa <= 0:
        raise StandardisationError(f"temperature {temperature_c:g} °C / pressure {pressure_kpa:g} kPa is not physical")
    return concentration * (kelvin / STANDARD_TEMPERATURE_K) * (STANDARD_PRESSURE_KPA / pressure_kpa)


def ppm_to_mg_m3(ppm: float, species: str) -> float:
    """ppm × M / 22.4195 at the standard condition, 273.15 K and 101.3 kPa (§2, gateway/units.py); NOx counts
    as NO2."""
    try:
        return ppm * PPM_TO_MG_M3[species.lower()]
    except KeyError:
        known = ", ".join(sorted(PPM_TO_MG_M3))
        raise StandardisationError(f"no ppm → mg/m³ factor for {species!r} (known: {known})") from None


CI_PERCENT_DEFAULTS: Final[Mapping[str, float]] = {
    "co": 10.0,
    "so2": 20.0,
    "nox": 20.0,
    "no2": 20.0,
    "dust": 30.0,
    "toc": 30.0,
    "hcl": 40.0,
    "hf": 40.0,
}
"""95 % confidence intervals as % of the ELV (regulatory-basis.md §3, IED Annex V/VI: combustion plants CO 10, SO2 20,
NOx 20, dust 30; waste incineration adds TOC 30, HCl 40, HF 40), by species or parameter name, lower case."""


def confidence_interval(elv: float, ci_percent: float) -> float:
    """The 95 % confidence interval as an absolute value: a percentage of the ELV (§3)."""
    return elv * ci_percent / 100


def validated_value(measured: float, elv: float, ci_percent: float) -> float:
    """Measured − confidence interval (§3), applied before comparing with the limit; never below zero."""
    return max(0.0, measured - confidence_interval(elv, ci_percent))


def mass_rate_kg_h(concentration_mg_nm3: float, flow_nm3_h: float) -> float:
    """E [kg/h] = C [mg/Nm³, dry, at measured O2] × Q [Nm³/h, dry] × 1e-6 (§2)."""
    return concentration_mg_nm3 * flow_nm3_h * 1e-6


def co2_rate_t_h(co2_percent: float, flow_nm3_h: float) -> float:
    """E_CO2 [t/h] = C [% vol] / 100 × Q [Nm³/h] × 1.964 / 1000 (§2)."""
    return co2_percent / 100 * flow_nm3_h * CO2_DENSITY_KG_NM3 / 1000


def total_tonnes(kilograms: Iterable[float]) -> float:
    """Annual total [t] = Σ hourly kg / 1000 (§2), summed exactly (fsum), so order does not matter."""
    return math.fsum(kilograms) / 1000


# -- bases ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Basis:
    """How a channel is measured: its unit, wet or dry, at standard or actual (duct) conditions."""

    unit: str
    wet: bool = False
    actual_conditions: bool = False
    species: str | None = None
    """for ppm/ppb: the key of PPM_TO_MG_M3"""

    @property
    def kind(self) -> Literal["concentration", "percent", "flow"]:
        if self.unit in PERCENT_UNITS:
            return "percent"
        if self.unit in FLOW_UNITS:
            return "flow"
        if self.unit in CONCENTRATION_UNITS or self.unit in VOLUME_RATIO_UNITS:
            return "concentration"
        raise StandardisationError(f"unit {self.unit!r} is not a known concentration, % vol or flow unit")

    def describe(self) -> str:
        known = self.unit in CONCENTRATION_UNITS or self.unit in VOLUME_RATIO_UNITS or self.unit in PERCENT_UNITS
        if not known and self.unit not in FLOW_UNITS:
            return self.unit  # temperature, pressure: no gas basis
        return (
            f"{self.unit}, {'wet' if self.wet else 'dry'}, "
            f"{'actual (duct) conditions' if self.actual_conditions else 'standard conditions'}"
        )


def to_dry_standard(
    value: float,
    basis: Basis,
    *,
    h2o_percent: float | None = None,
    temperature_c: float | None = None,
    pressure_kpa: float | None = None,
) -> float:
    """A concentration (mg/Nm³) or % vol, dry, at standard conditions and the measured O2 (§2).

    ppm is a volume ratio: the same at any T and p, so it goes straight to mg/Nm³ by the §2 factor; a mass
    concentration at duct conditions is brought to standard T/p first; then wet → dry.
    """
    kind = basis.kind
    if kind == "flow":
        raise StandardisationError("use flow_to_dry_standard for a flow")
    if basis.unit in VOLUME_RATIO_UNITS:
        if basis.species is None:
            raise StandardisationError(f"{basis.unit} needs the species for its mg/m³ factor")
        result = ppm_to_mg_m3(value * VOLUME_RATIO_UNITS[basis.unit], basis.species)
    elif kind == "percent":
        result = value
    else:
        result = value * CONCENTRATION_UNITS[basis.unit]
        if basis.actual_conditions:
            if temperature_c is None or pressure_kpa is None:
                raise StandardisationError("temperature and pressure are needed for a value at duct conditions")
            result = to_standard_conditions(result, temperature_c, pressure_kpa)
    if basis.wet:
        if h2o_percent is None:
            raise StandardisationError("moisture is needed for a wet value")
        result = wet_to_dry(result, h2o_percent)
    return result


def flow_to_dry_standard(
    value: float,
    basis: Basis,
    *,
    h2o_percent: float | None = None,
    temperature_c: float | None = None,
    pressure_kpa: float | None = None,
) -> float:
    """Flue-gas flow in Nm³/h, dry: Q_std = Q_act × (273.15 / T) × (p / 101.3); Q_dry = Q_wet × (1 − H2O)."""
    if basis.unit not in FLOW_UNITS:
        raise StandardisationError(f"flow unit {basis.unit!r} is not one of {', '.join(FLOW_UNITS)}")
    result = value * FLOW_UNITS[basis.unit]
    if basis.actual_conditions:
        if temperature_c is None or pressure_kpa is None:
            raise StandardisationError("temperature and pressure are needed for a flow at duct conditions")
        kelvin = temperature_c + CELSIUS_TO_KELVIN
        if kelvin <= 0 or pressure_kpa <= 0:
            raise StandardisationError(f"temperature {temperature_c:g} °C / pressure {pressure_kpa:g} kPa")
        result = result * (STANDARD_TEMPERATURE_K / kelvin) * (pressure_kpa / STANDARD_PRESSURE_KPA)
    if basis.wet:
        if h2o_percent is None or not 0 <= h2o_percent < 100:
            raise StandardisationError(f"moisture {h2o_percent} % vol is needed (in [0, 100)) for a wet flow")
        result = result * (1 - h2o_percent / 100)
    return result


def mass_kg(concentration_dry_std: float, flow_dry_std: float, *, hours: float, percent: bool = False) -> float:
    """Mass in one averaging period [kg]: mass rate × duration; % vol channels are CO2 (§2)."""
    if percent:
        return co2_rate_t_h(concentration_dry_std, flow_dry_std) * 1000 * hours
    return mass_rate_kg_h(concentration_dry_std, flow_dry_std) * hours


# -- exceedances ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exceedance:
    """Consecutive averaging periods whose validated value is above the limit, merged into one event."""

    start: datetime
    end: datetime
    periods: int
    max_value: float


def exceedances(periods: Sequence[tuple[datetime, datetime, float | None]], limit: float) -> list[Exceedance]:
    """Events from (start, end, validated value or None) in time order: value > limit, adjacent periods merged."""
    events: list[Exceedance] = []
    current: Exceedance | None = None
    for start, end, value in periods:
        if value is not None and value > limit:
            if current is not None and current.end == start:
                current = Exceedance(current.start, end, current.periods + 1, max(current.max_value, value))
            else:
                if current is not None:
                    events.append(current)
                current = Exceedance(start, end, 1, value)
        elif current is not None:
            events.append(current)
            current = None
    if current is not None:
        events.append(current)
    return events
