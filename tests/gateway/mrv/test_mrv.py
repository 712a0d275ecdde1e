"""MRV arithmetic (gateway/mrv/arithmetic.py), table-driven: every case cites docs/regulatory-basis.md §2 or §3."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mrv import arithmetic as mrv
from gateway.mrv.arithmetic import Basis, StandardisationError


@pytest.mark.parametrize(
    ("measured", "o2", "o2_ref", "expected"),
    [
        (100.0, 9.0, 6.0, 125.0),
        (100.0, 6.0, 6.0, 100.0),
        (100.0, 3.0, 6.0, 100 * 15 / 18),
        (200.0, 15.0, 15.0, 200.0),
        (50.0, 11.0, 3.0, 50 * 18 / 10),
        (100.0, 19.4, 6.0, 100 * 15 / 1.6),
    ],
    ids=[
        "§2 worked example: 100 mg/m³ at 9 % O2 → 125 at 6 %",
        "§2 at the reference already",
        "§2 below the reference lowers the value",
        "§2 gas turbine at 15 %",
        "§2 liquid/gas boiler reference 3 %",
        "§2 just under the guard still corrects",
    ],
)
def test_o2_correction(measured: float, o2: float, o2_ref: float, expected: float) -> None:
    assert mrv.correct_to_reference_o2(measured, o2, o2_ref) == pytest.approx(expected)


@pytest.mark.parametrize("o2", [19.5, 20.9, 21.0, 25.0], ids=lambda o2: f"§2 guard: O2 {o2} % is flagged")
def test_o2_correction_guard(o2: float) -> None:
    """§2: O2_meas ≥ ~19.5 % makes the factor explode; flag it, never divide blindly."""
    with pytest.raises(StandardisationError, match="explode"):
        mrv.correct_to_reference_o2(100.0, o2, 6.0)


def test_o2_guard_is_configurable() -> None:
    assert mrv.o2_correction_factor(19.6, 6.0, guard=20.0) == pytest.approx(15 / 1.4)
    with pytest.raises(StandardisationError):
        mrv.o2_correction_factor(18.0, 6.0, guard=18.0)


@pytest.mark.parametrize(
    ("fuel", "reference"),
    [("solid", 6.0), ("liquid", 3.0), ("gas", 3.0), ("gas-turbine", 15.0), ("engine", 15.0), ("waste", 11.0)],
    ids=lambda value: f"§2 reference O2 {value}",
)
def test_reference_o2_by_fuel(fuel: str, reference: float) -> None:
    assert mrv.REFERENCE_O2[fuel] == reference


@pytest.mark.parametrize(
    ("wet", "h2o", "dry"),
    [(88.0, 12.0, 100.0), (100.0, 0.0, 100.0), (50.0, 50.0, 100.0)],
    ids=["§2 wet→dry, H2O 12 % (0.12)", "§2 no moisture", "§2 half moisture doubles"],
)
def test_wet_to_dry(wet: float, h2o: float, dry: float) -> None:
    assert mrv.wet_to_dry(wet, h2o) == pytest.approx(dry)


@pytest.mark.parametrize("h2o", [100.0, 120.0, -1.0], ids=lambda h: f"§2 moisture {h} % refused")
def test_wet_to_dry_refuses_impossible_moisture(h2o: float) -> None:
    with pytest.raises(StandardisationError):
        mrv.wet_to_dry(10.0, h2o)


@pytest.mark.parametrize(
    ("actual", "t_c", "p", "standard"),
    [
        (100.0, 0.0, 101.3, 100.0),
        (100.0, 273.15, 101.3, 200.0),
        (100.0, 0.0, 50.65, 200.0),
        (100.0, 140.0, 98.0, 100 * (413.15 / 273.15) * (101.3 / 98.0)),
    ],
    ids=[
        "§2 at 273.15 K and 101.3 kPa nothing changes",
        "§2 at 546.3 K the standard value doubles",
        "§2 at half pressure the standard value doubles",
        "§2 flue gas at 140 °C, 98 kPa",
    ],
)
def test_to_standard_conditions(actual: float, t_c: float, p: float, standard: float) -> None:
    assert mrv.to_standard_conditions(actual, t_c, p) == pytest.approx(standard)


@pytest.mark.parametrize(
    ("species", "factor"),
    [
        ("so2", 2.8576),
        ("no2", 2.0520),
        ("no", 1.3384),
        ("nox", 2.0520),
        ("co", 1.2494),
        ("hcl", 1.6263),
        ("nh3", 0.7597),
        ("hf", 0.8923),
        ("co2", 1.9630),
        ("hg", 8.9471),
    ],
    ids=lambda value: f"§2 ppm→mg/m³ {value}",
)
def test_ppm_factors(species: str, factor: float) -> None:
    """§2 at the IED standard condition, 273.15 K and 101.3 kPa (gateway/units.py)."""
    assert mrv.ppm_to_mg_m3(100.0, species) == pytest.approx(100 * factor, abs=5e-3)
    assert mrv.ppm_to_mg_m3(1.0, species.upper()) == mrv.ppm_to_mg_m3(1.0, species)


def test_ppm_factors_follow_molar_mass_over_molar_volume() -> None:
    """§2: M / Vm, Vm = 22.414 L/mol at 101.325 kPa taken to the Directive's 101.3 kPa — so2 64.066, co 28.010,
    no2 46.006 g/mol."""
    for species, molar_mass in (("so2", 64.066), ("co", 28.010), ("no2", 46.006)):
        assert mrv.PPM_TO_MG_M3[species] == pytest.approx(molar_mass / (22.414 * 101.325 / 101.3), abs=5e-4)


def test_nox_is_reported_as_no2() -> None:
    """§2: NOx as NO2: NO ppm × 2.0520, not × 1.3384 (101.3 kPa)."""
    basis = Basis("ppm", species="nox")
    assert mrv.to_dry_standard(100.0, basis) == pytest.approx(205.20, abs=5e-3)


def test_unknown_species_is_refused_with_the_known_ones() -> None:
    with pytest.raises(StandardisationError, match="known: co, co2"):
        mrv.ppm_to_mg_m3(1.0, "xyz")


@pytest.mark.parametrize(
    ("measured", "elv", "ci", "validated"),
    [
        (250.0, 200.0, 20.0, 210.0),
        (100.0, 100.0, 10.0, 90.0),
        (30.0, 20.0, 30.0, 24.0),
        (10.0, 200.0, 20.0, 0.0),
    ],
    ids=[
        "§3 SO2: CI 20 % of ELV 200 = 40",
        "§3 CO: CI 10 %",
        "§3 dust: CI 30 %",
        "§3 never below zero (project choice)",
    ],
)
def test_validated_value(measured: float, elv: float, ci: float, validated: float) -> None:
    assert mrv.validated_value(measured, elv, ci) == pytest.approx(validated)


@pytest.mark.parametrize(
    ("c", "q", "kg_h"),
    [(500.0, 500_000.0, 250.0), (1.0, 1_000_000.0, 1.0), (0.0, 500_000.0, 0.0)],
    ids=["§2 mass: 500 mg/Nm³ × 500,000 Nm³/h = 250 kg/h", "§2 1 mg × 1e6 Nm³ = 1 kg", "§2 zero measured is zero"],
)
def test_mass_rate(c: float, q: float, kg_h: float) -> None:
    assert mrv.mass_rate_kg_h(c, q) == pytest.approx(kg_h)


def test_co2_rate_from_percent() -> None:
    """§2: E_CO2 [t/h] = 10 % / 100 × 500,000 Nm³/h × 1.964 / 1000 = 98.2 t/h."""
    assert mrv.co2_rate_t_h(10.0, 500_000.0) == pytest.approx(98.2)
    assert mrv.mass_kg(10.0, 500_000.0, hours=0.5, percent=True) == pytest.approx(49_100.0)


def test_annual_total_is_hourly_kg_over_1000() -> None:
    """§2: annual total [t] = Σ hourly kg / 1000."""
    assert mrv.total_tonnes([250.0] * 8760) == pytest.approx(2190.0)
    assert mrv.total_tonnes([]) == 0.0


@given(st.lists(st.floats(0, 1e6, allow_nan=False), max_size=200), st.randoms())
def test_totals_do_not_depend_on_order(values: list[float], rng: object) -> None:
    shuffled = values[:]
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert mrv.total_tonnes(shuffled) == mrv.total_tonnes(values)


@pytest.mark.parametrize(
    ("value", "basis", "kwargs", "expected"),
    [
        (100.0, Basis("mg/m3"), {}, 100.0),
        (88.0, Basis("mg/m3", wet=True), {"h2o_percent": 12.0}, 100.0),
        (100.0, Basis("mg/m3", actual_conditions=True), {"temperature_c": 273.15, "pressure_kpa": 101.3}, 200.0),
        (
            100.0,
            Basis("ppm", species="so2", actual_conditions=True),
            {"temperature_c": 500, "pressure_kpa": 50},
            285.76,
        ),
        (50.0, Basis("ug/m3"), {}, 0.05),
        (9.0, Basis("%vol", wet=True), {"h2o_percent": 10.0}, 10.0),
    ],
    ids=[
        "§2 dry standard stays",
        "§2 wet → dry",
        "§2 actual → standard T/p",
        "§2 ppm is a volume ratio: no T/p correction",
        "µg/m³ → mg/m³",
        "§2 CO2 % vol wet → dry",
    ],
)
def test_to_dry_standard(value: float, basis: Basis, kwargs: dict[str, float], expected: float) -> None:
    assert mrv.to_dry_standard(value, basis, **kwargs) == pytest.approx(expected)


def test_to_dry_standard_needs_its_inputs() -> None:
    with pytest.raises(StandardisationError, match="moisture"):
        mrv.to_dry_standard(1.0, Basis("mg/m3", wet=True))
    with pytest.raises(StandardisationError, match="temperature and pressure"):
        mrv.to_dry_standard(1.0, Basis("mg/m3", actual_conditions=True))


def test_flow_to_dry_standard() -> None:
    """§2: flow on the same basis as the concentration: dry, 273.15 K, 101.3 kPa."""
    assert mrv.flow_to_dry_standard(1000.0, Basis("Nm3/h")) == 1000.0
    assert mrv.flow_to_dry_standard(1000.0, Basis("Nm3/h", wet=True), h2o_percent=10.0) == pytest.approx(900.0)
    assert mrv.flow_to_dry_standard(
        1000.0, Basis("m3/h", actual_conditions=True), temperature_c=273.15, pressure_kpa=101.3
    ) == pytest.approx(500.0)


def test_exceedances_merge_adjacent_periods() -> None:
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    hours = [(t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1)) for h in range(6)]
    values = [100.0, 250.0, 300.0, None, 260.0, 50.0]
    events = mrv.exceedances([(s, e, v) for (s, e), v in zip(hours, values, strict=True)], 200.0)
    assert [(e.start, e.end, e.periods, e.max_value) for e in events] == [
        (hours[1][0], hours[2][1], 2, 300.0),
        (hours[4][0], hours[4][1], 1, 260.0),
    ]


# -- wet O2 (Directive 2010/75/EU Annex VI Part 7 corrects with dry O2; Annex V Part 1 and Annex VI Part 2 give the
# standard conditions "after correction for the water vapour content"; dry = wet / (1 − H2O)) ------------------


@pytest.mark.parametrize(
    ("o2", "wet", "h2o", "o2_dry", "so2_at_6"),
    [
        (8.0, True, 12.0, 8 / 0.88, 100 * 15 / (21 - 8 / 0.88)),
        (8.0, False, None, 8.0, 100 * 15 / 13),
        (8.0, False, 12.0, 8.0, 100 * 15 / 13),
        (9.0, True, 0.0, 9.0, 125.0),
        (5.5, True, 15.0, 5.5 / 0.85, 100 * 15 / (21 - 5.5 / 0.85)),
    ],
    ids=[
        "issue 14: 8 % wet at 12 % H2O is 9.09 % dry; SO2 100 → 126.0 at 6 %, not 115.4",
        "a dry O2 is used as measured",
        "a dry O2 ignores the moisture",
        "no moisture: wet = dry, the worked example 100 at 9 % → 125 at 6 %",
        "gas-fired wet flue gas, 15 % H2O",
    ],
)
def test_wet_o2_is_dried_before_the_reference_o2_correction(
    o2: float, wet: bool, h2o: float | None, o2_dry: float, so2_at_6: float
) -> None:
    """SO2 100 mg/Nm³ dry, corrected to 6 % O2 with the dried O2."""
    dried = mrv.dry_o2(o2, wet=wet, h2o_percent=h2o)
    assert dried == pytest.approx(o2_dry)
    assert mrv.correct_to_reference_o2(100.0, dried, 6.0) == pytest.approx(so2_at_6)


def test_issue_14_numbers_rounded() -> None:
    """The issue's figures, to one decimal: 126.0 mg/Nm³ with the O2 dried, 115.4 with the wet O2 taken as dry."""
    assert round(mrv.correct_to_reference_o2(100.0, mrv.dry_o2(8.0, wet=True, h2o_percent=12.0), 6.0), 1) == 126.0
    assert round(mrv.correct_to_reference_o2(100.0, 8.0, 6.0), 1) == 115.4


@pytest.mark.parametrize(("h2o", "match"), [(None, "moisture of the same period"), (100.0, "not in"), (-1.0, "not in")])
def test_a_wet_o2_without_a_usable_moisture_is_refused(h2o: float | None, match: str) -> None:
    with pytest.raises(StandardisationError, match=match):
        mrv.dry_o2(8.0, wet=True, h2o_percent=h2o)
