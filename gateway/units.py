"""Units and their conversions, at one reference condition, for MRV (gateway/mrv/arithmetic.py), alerts
(gateway/alerts/rules.py) and dashboards alike. Pure.

The reference is the standard condition of Directive 2010/75/EU (IED) Annex VI Part 2 (and Annex V Part 1):
273.15 K and 101.3 kPa, dry gas, written exactly as the Directive writes it. Every conversion between mass
concentrations and mixing ratios goes through the ideal-gas molar volume at that pressure and the chosen
temperature: at 0 °C, 22.42 L/mol, so 1 ppm of SO2 is 64.066 / 22.4195 = 2.8576 mg/m³. Ambient air converts
at 20 °C and the same 101.3 kPa (Directive 2008/50/EC Annex VI C: 293 K, 101.3 kPa). docs/regulatory-basis.md §2.

Spellings of a unit are one unit: "µg/m³" (micro sign), "μg/m3" (Greek mu), "ug/m3" and "UG/M3" are the
same, and "Nm3" is "m3" (a normal cubic metre is one at the standard condition, the basis every value is on
once standardised).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Final

from gateway.errors import GatewayError

STANDARD_TEMPERATURE_K: Final = 273.15
STANDARD_PRESSURE_KPA: Final = 101.3
"""Directive 2010/75/EU Annex VI Part 2: 273.15 K, 101.3 kPa, after correction for water vapour (dry gas)."""
CELSIUS_TO_KELVIN: Final = 273.15
GAS_CONSTANT_J_PER_MOL_K: Final = 8.314462618
"""R, exact in the SI since 2019 (N_A × k)."""

MOLAR_MASS_G_PER_MOL: Final[Mapping[str, float]] = {
    "so2": 64.066,
    "no2": 46.0055,
    "nox": 46.0055,  # NOx is reported as NO2 (Directive 2010/75/EU Annex V Part 1; docs/regulatory-basis.md §2)
    "no": 30.006,
    "co": 28.010,
    "hcl": 36.461,
    "nh3": 17.031,
    "hf": 20.006,
    "co2": 44.009,
    "h2s": 34.081,
    "o3": 47.997,
    "hg": 200.59,
}
"""g/mol, for converting mixing ratios (ppm, ppb) to mass concentrations."""


class UnitError(GatewayError, ValueError):
    """Two units that cannot be converted (or one this module does not know)."""


@functools.lru_cache(maxsize=256)
def normalize_unit(unit: str) -> str:
    """Spellings of one unit made equal: "µg/m³", "μg/m3" and "ug/m3" give "ug/m3"; "mg/Nm³" gives "mg/m3";
    "% vol" gives "%vol"; "PPB" gives "ppb". Cached: a year's report asks it a million times about a handful of
    units (each hour of each channel's standardisation), which was a tenth of the report's build."""
    text = unit.strip().replace("µ", "u").replace("μ", "u").replace("³", "3").replace(" ", "").lower()
    return text.replace("nm3", "m3")


class UnitTable(Mapping[str, float]):
    """Unit -> factor, looked up by any spelling of the unit (`normalize_unit`); iterates its canonical names."""

    def __init__(self, factors: Mapping[str, float]) -> None:
        self._factors = {normalize_unit(unit): factor for unit, factor in factors.items()}
        self._names = list(factors)

    def __getitem__(self, unit: str) -> float:
        return self._factors[normalize_unit(unit)]

    def __contains__(self, unit: object) -> bool:
        return isinstance(unit, str) and normalize_unit(unit) in self._factors

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


MASS_CONCENTRATION_MG_PER_M3: Final = UnitTable({"mg/m3": 1.0, "g/m3": 1e3, "ug/m3": 1e-3, "ng/m3": 1e-6})
"""Mass concentrations and their factor to mg/m³ (the same at any spelling, Nm3 included)."""
MIXING_RATIO_PPM: Final = UnitTable({"ppm": 1.0, "ppb": 1e-3, "ppt": 1e-6})
"""Mixing ratios (volume ratios of an ideal gas) and their factor to ppm."""
PERCENT_UNITS: Final = UnitTable({"%": 1.0, "%vol": 1.0, "vol%": 1.0})
"""Volume percent (O2, CO2, H2O)."""
FLOW_NM3_PER_H: Final = UnitTable({"Nm3/h": 1.0, "m3/h": 1.0, "Nm3/s": 3600.0})
"""Volume flows and their factor to m³/h (at standard conditions once standardised)."""


def molar_volume_l(temperature_c: float = 0.0, pressure_kpa: float = STANDARD_PRESSURE_KPA) -> float:
    """L/mol of an ideal gas at the temperature and pressure: R·T/p (22.4195 at 0 °C and 101.3 kPa)."""
    return GAS_CONSTANT_J_PER_MOL_K * (temperature_c + CELSIUS_TO_KELVIN) / pressure_kpa


STANDARD_MOLAR_VOLUME_L: Final = molar_volume_l()
"""L/mol at the standard condition (273.15 K, 101.3 kPa)."""


def mg_m3_per_ppm(species: str, temperature_c: float = 0.0) -> float:
    """mg/m³ per ppm of `species` at `temperature_c` and 101.3 kPa: M / Vm. UnitError for an unknown species."""
    molar_mass = MOLAR_MASS_G_PER_MOL.get(species.lower())
    if molar_mass is None:
        raise UnitError(f"no molar mass for {species!r}; known species: {', '.join(sorted(MOLAR_MASS_G_PER_MOL))}")
    return molar_mass / molar_volume_l(temperature_c)


def conversion_factor(from_unit: str, to_unit: str, *, species: str | None, reference_temperature_c: float) -> float:
    """Multiply a value in `from_unit` by this to get `to_unit`.

    Mass concentrations and mixing ratios convert through the species' molar mass and the molar volume at
    `reference_temperature_c` and 101.3 kPa (0 °C: the IED standard condition; 20 °C: the EU ambient reference).
    Mass to mass and ratio to ratio need no species.
    """
    if normalize_unit(from_unit) == normalize_unit(to_unit):
        return 1.0
    known = [*MASS_CONCENTRATION_MG_PER_M3, *MIXING_RATIO_PPM]
    for unit in (from_unit, to_unit):
        if unit not in MASS_CONCENTRATION_MG_PER_M3 and unit not in MIXING_RATIO_PPM:
            raise UnitError(f"unknown unit {unit!r} (known: {', '.join(sorted(known))})")
    mass, ratio = MASS_CONCENTRATION_MG_PER_M3, MIXING_RATIO_PPM
    if from_unit in mass and to_unit in mass:
        return mass[from_unit] / mass[to_unit]
    if from_unit in ratio and to_unit in ratio:
        return ratio[from_unit] / ratio[to_unit]
    if species is None or species.lower() not in MOLAR_MASS_G_PER_MOL:
        raise UnitError(
            f"converting {from_unit} to {to_unit} needs the molar mass of {species!r}; known species: "
            f"{', '.join(sorted(MOLAR_MASS_G_PER_MOL))} (set the rule's species)"
        )
    per_ppm = mg_m3_per_ppm(species, reference_temperature_c)
    if from_unit in ratio:
        return ratio[from_unit] * per_ppm / mass[to_unit]
    return mass[from_unit] / per_ppm / ratio[to_unit]
