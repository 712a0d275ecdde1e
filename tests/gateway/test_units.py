"""One unit module (gateway/units.py) at one reference condition, used by MRV and alerts alike."""

from __future__ import annotations

import pytest

from gateway.mrv import arithmetic as mrv
from gateway.mrv.arithmetic import Basis
from gateway.units import (
    MASS_CONCENTRATION_MG_PER_M3,
    MIXING_RATIO_PPM,
    STANDARD_MOLAR_VOLUME_L,
    STANDARD_PRESSURE_KPA,
    STANDARD_TEMPERATURE_K,
    UnitError,
    conversion_factor,
    mg_m3_per_ppm,
    molar_volume_l,
    normalize_unit,
)


def test_the_reference_condition_is_the_directives() -> None:
    """Directive 2010/75/EU Annex VI Part 2: 273.15 K and 101.3 kPa, as written there."""
    assert (STANDARD_TEMPERATURE_K, STANDARD_PRESSURE_KPA) == (273.15, 101.3)
    assert mrv.STANDARD_TEMPERATURE_K == STANDARD_TEMPERATURE_K
    assert mrv.STANDARD_PRESSURE_KPA == STANDARD_PRESSURE_KPA


@pytest.mark.parametrize(
    ("temperature_c", "pressure_kpa", "litres"),
    [
        (0.0, 101.325, 22.414),  # the textbook molar volume at 1 atm
        (0.0, 101.3, 22.4195),  # the Directive's standard condition
        (20.0, 101.3, 24.0610),  # the EU ambient reference (Directive 2008/50/EC: 293 K, 101.3 kPa)
        (25.0, 101.325, 24.465),
    ],
)
def test_molar_volume_is_the_ideal_gas_law(temperature_c: float, pressure_kpa: float, litres: float) -> None:
    assert molar_volume_l(temperature_c, pressure_kpa) == pytest.approx(litres, abs=6e-4)


def test_the_standard_molar_volume_is_at_the_standard_condition() -> None:
    assert molar_volume_l() == STANDARD_MOLAR_VOLUME_L == molar_volume_l(0.0, 101.3)


@pytest.mark.parametrize(
    ("spelling", "unit"),
    [
        ("µg/m³", "ug/m3"),  # U+00B5 micro sign
        ("μg/m3", "ug/m3"),  # U+03BC Greek small mu: accepted by alerts only until units were one module
        ("UG/M3", "ug/m3"),
        ("mg/Nm³", "mg/m3"),
        ("mg/Nm3", "mg/m3"),
        (" ppb ", "ppb"),
        ("PPM", "ppm"),
        ("% vol", "%vol"),
        ("Nm3/h", "m3/h"),
    ],
)
def test_spellings_of_one_unit_are_one_unit(spelling: str, unit: str) -> None:
    assert normalize_unit(spelling) == unit


@pytest.mark.parametrize("spelling", ["µg/m³", "μg/m³", "μg/m3", "ug/m3", "µg/Nm3"])
def test_mrv_and_alerts_accept_the_same_micrograms(spelling: str) -> None:
    """Both callers take any spelling, through the same table."""
    assert spelling in mrv.CONCENTRATION_UNITS
    assert mrv.to_dry_standard(1000.0, Basis(spelling)) == pytest.approx(1.0)
    assert conversion_factor(spelling, "mg/m3", species=None, reference_temperature_c=0.0) == pytest.approx(1e-3)


@pytest.mark.parametrize("species", ["so2", "no2", "nox", "no", "co", "hcl", "nh3", "hf", "co2", "hg"])
def test_mrv_and_alerts_convert_ppm_with_the_same_factor(species: str) -> None:
    """One molar volume for both: the MRV mass and the alert comparison of a ppm reading cannot disagree."""
    from_alerts = conversion_factor("ppm", "mg/m3", species=species, reference_temperature_c=0.0)
    assert mrv.ppm_to_mg_m3(1.0, species) == from_alerts == mg_m3_per_ppm(species)
    assert mrv.to_dry_standard(1.0, Basis("ppm", species=species)) == pytest.approx(from_alerts)


@pytest.mark.parametrize(
    ("source", "target", "species", "temperature_c", "factor"),
    [
        ("ppm", "mg/m3", "so2", 0.0, 64.066 / 22.4195),
        ("ppb", "ug/m3", "so2", 0.0, 64.066 / 22.4195),
        ("ppb", "ug/m3", "so2", 20.0, 64.066 / 24.0610),
        ("mg/m3", "ppm", "co", 0.0, 22.4195 / 28.010),
        ("ng/m3", "ppb", "hg", 0.0, 22.4195 / 200.59 / 1000),
        ("ppt", "ppb", None, 0.0, 1e-3),
        ("g/m3", "mg/Nm3", None, 0.0, 1e3),
        ("mg/Nm3", "mg/m3", None, 0.0, 1.0),
    ],
)
def test_conversion_factors(source: str, target: str, species: str | None, temperature_c: float, factor: float) -> None:
    assert conversion_factor(source, target, species=species, reference_temperature_c=temperature_c) == pytest.approx(
        factor, rel=2e-5
    )


@pytest.mark.parametrize(
    ("source", "target", "species", "message"),
    [
        ("ppb", "mg/m3", "pm10", "needs the molar mass of 'pm10'"),
        ("furlongs", "mg/m3", None, "unknown unit 'furlongs'"),
        ("mg/m3", "%", "so2", "unknown unit '%'"),
    ],
)
def test_what_cannot_be_converted_says_why(source: str, target: str, species: str | None, message: str) -> None:
    with pytest.raises(UnitError, match=message):
        conversion_factor(source, target, species=species, reference_temperature_c=0.0)


def test_unit_tables_list_their_canonical_names() -> None:
    """What an error message lists as known (mrv_config, alerts) are the canonical spellings, once each."""
    assert list(MASS_CONCENTRATION_MG_PER_M3) == ["mg/m3", "g/m3", "ug/m3", "ng/m3"]
    assert list(MIXING_RATIO_PPM) == ["ppm", "ppb", "ppt"]
    assert "Nm3/h" in mrv.FLOW_UNITS
    assert mrv.FLOW_UNITS["Nm³/s"] == 3600.0
