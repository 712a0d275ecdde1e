"""Alert rules, pure: durations, units (regulatory-basis.md §2), limits (§5), windows and validity (§3), data rules."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aua_contract import Batch, Quality, Reading
from gateway.alerts.engine import AlertEngine, AlertStore
from gateway.alerts.rules import (
    AMBIENT_PDK,
    ClockSkewRule,
    Direction,
    GapRule,
    PeriodAverager,
    RollingAverager,
    Sample,
    Scope,
    StuckEvaluator,
    StuckRule,
    Threshold,
    ThresholdEvaluator,
    ThresholdRule,
    Window,
    WindowKind,
    day_bounds,
    failure_observation,
    format_duration,
    gap_observation,
    hour_bounds,
    o2_corrected,
    parse_duration,
    reference_o2_value,
    skew_observation,
)
from gateway.alerts.state import AlertKey, Level, Phase
from gateway.config import AlertsSection, GatewayConfigError, load_gateway_config
from gateway.units import UnitError, conversion_factor

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)  # 11:00 in Pavlodar (UTC+5)
ALMATY = ZoneInfo("Asia/Almaty")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --------------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), (90, 90), (1.5, 1.5), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
     ("250ms", 0.25), (" 2 h ", 7200), ("0", 0)],
)  # fmt: skip
def test_durations_parse(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "2x", "-5", "5m3", "nan", "inf", "1h 30"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0 s"), (45, "45 s"), (200, "3 min 20 s"), (7500, "2 h 5 min"), (97200, "1 d 3 h")]
)
def test_durations_read_well(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


# --------------------------------------------------------------------------------------------------
# Units (docs/regulatory-basis.md §2)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("species", "factor"),
    [("so2", 2.8576), ("no2", 2.0520), ("no", 1.3384), ("co", 1.2494), ("hcl", 1.6263), ("nh3", 0.7597),
     ("hf", 0.8923), ("co2", 1.9630), ("hg", 8.9471), ("nox", 2.0520)],
)  # fmt: skip
def test_ppm_to_mg_per_m3_at_0_degrees_matches_the_domain_factors(species: str, factor: float) -> None:
    """§2: ppm -> mg/m³ at 273.15 K, 101.3 kPa (IED Annex VI Part 2) is M / 22.4195; NOx is reported as NO2."""
    assert conversion_factor("ppm", "mg/m3", species=species, reference_temperature_c=0.0) == pytest.approx(
        factor, abs=6e-5
    )


def test_ppb_of_so2_at_20_degrees_is_7_percent_less_mass_than_at_0() -> None:
    """The EU ambient reference (293 K, 101.3 kPa) gives 2.6626 µg/m³ per ppb of SO2; 0 °C gives 2.8576 (§2)."""
    at_0 = conversion_factor("ppb", "ug/m3", species="so2", reference_temperature_c=0.0)
    at_20 = conversion_factor("ppb", "µg/m³", species="so2", reference_temperature_c=20.0)
    assert at_0 == pytest.approx(2.8576, abs=6e-5)
    assert at_20 == pytest.approx(2.6626, abs=6e-5)
    assert at_0 / at_20 == pytest.approx(293.15 / 273.15)


@pytest.mark.parametrize(
    ("source", "target", "factor"),
    [("ug/m3", "mg/m3", 1e-3), ("µg/m³", "mg/m3", 1e-3), ("ng/m³", "mg/m3", 1e-6), ("mg/m3", "ng/m3", 1e6),
     ("ppb", "ppm", 1e-3), ("PPM", "ppb", 1e3), ("ng/m3", "ng/m3", 1.0)],
)  # fmt: skip
def test_mass_to_mass_and_ratio_to_ratio_need_no_species(source: str, target: str, factor: float) -> None:
    assert conversion_factor(source, target, species=None, reference_temperature_c=0.0) == pytest.approx(factor)


def test_the_mercury_ppb_an_ambient_hg_analyzer_would_never_report_still_converts() -> None:
    """300 ng/m³ of Hg (the daily ПДК, §5) is 0.0335 ppb at 0 °C: 300 / 8.9471 / 1000."""
    factor = conversion_factor("ng/m3", "ppb", species="hg", reference_temperature_c=0.0)
    assert 300 * factor == pytest.approx(300 / 8.9471 / 1000, rel=1e-4)


@pytest.mark.parametrize(
    ("source", "target", "species", "message"),
    [("ppb", "mg/m3", "pm25", "needs the molar mass of 'pm25'"), ("ppb", "mg/m3", None, "needs the molar mass"),
     ("furlongs", "mg/m3", "so2", "unknown unit 'furlongs'"), ("mg/m3", "%vol", "so2", "unknown unit '%vol'")],
)  # fmt: skip
def test_conversions_that_cannot_be_made_say_why(source: str, target: str, species: str | None, message: str) -> None:
    with pytest.raises(UnitError, match=message):
        conversion_factor(source, target, species=species, reference_temperature_c=0.0)


@given(
    value=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    species=st.sampled_from(["so2", "no2", "co", "hg"]),
    source=st.sampled_from(["ppb", "ppm", "ng/m3", "ug/m3", "mg/m3"]),
    target=st.sampled_from(["ppb", "ppm", "ng/m3", "ug/m3", "mg/m3"]),
    temperature=st.floats(min_value=-40, max_value=40),
)
def test_conversions_round_trip(value: float, species: str, source: str, target: str, temperature: float) -> None:
    there = conversion_factor(source, target, species=species, reference_temperature_c=temperature)
    back = conversion_factor(target, source, species=species, reference_temperature_c=temperature)
    assert value * there * back == pytest.approx(value, rel=1e-9, abs=1e-9)


def test_o2_correction_follows_the_worked_example_and_guards_high_o2() -> None:
    """§2: 100 mg/m³ at 9 % O2 is 125 mg/m³ at 6 %; at 19.5 % O2 or more the factor explodes: no value."""
    assert o2_corrected(100.0, 9.0, 6.0) == pytest.approx(125.0)
    assert o2_corrected(100.0, 19.4, 6.0) == pytest.approx(100 * 15 / 1.6)
    assert o2_corrected(100.0, 19.5, 6.0) is None
    assert o2_corrected(100.0, 20.9, 6.0) is None


def stack_rule(name: str = "stack-so2", **kwargs: object) -> ThresholdRule:
    return ThresholdRule(
        name=name,
        window=Window(WindowKind.INSTANT),
        threshold=Threshold(Direction.ABOVE, 120.0, 120.0),
        unit="mg/m3",
        reference_o2=6.0,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("rule", "simultaneous", "expected"),
    [
        (stack_rule(o2_wet=True, h2o_parameter="h2o"), {"o2": 8.0, "h2o": 12.0}, 100 * 15 / (21 - 8 / 0.88)),
        (stack_rule(), {"o2": 8.0, "h2o": 12.0}, 100 * 15 / 13),
        (stack_rule(o2_wet=True, h2o_parameter="h2o"), {"o2": 8.0}, None),
        (stack_rule(o2_wet=True, h2o_parameter="moisture"), {"o2": 9.0, "moisture": 0.0}, 125.0),
        (stack_rule(o2_wet=True, h2o_parameter="h2o"), {"h2o": 12.0}, None),
        (stack_rule(o2_wet=True, h2o_parameter="h2o"), {"o2": 18.0, "h2o": 10.0}, None),
        (stack_rule(o2_parameter="o2_dry"), {"o2_dry": 9.0}, 125.0),
    ],
    ids=[
        "issue 14: wet O2 8 % at 12 % H2O: SO2 100 → 126.0 at 6 % (dried, Directive 2010/75/EU Annex VI Part 7)",
        "a dry O2 is used as measured: 115.4",
        "a wet O2 without the same time's moisture gives no value, not a low one",
        "the moisture parameter is configurable; no moisture: the worked example 125",
        "no O2 at the same time: no value",
        "18 % wet at 10 % H2O is 20 % dry, above the 19.5 % guard: no value",
        "the O2 parameter is configurable",
    ],
)
def test_stack_rules_correct_with_dry_o2(
    rule: ThresholdRule, simultaneous: dict[str, float], expected: float | None
) -> None:
    value = reference_o2_value(rule, 100.0, simultaneous)
    assert value == (None if expected is None else pytest.approx(expected))


def test_issue_14_alert_value_is_126_not_115() -> None:
    wet = stack_rule(o2_wet=True, h2o_parameter="h2o")
    assert round(reference_o2_value(wet, 100.0, {"o2": 8.0, "h2o": 12.0}) or 0.0, 1) == 126.0
    assert wet.threshold.level(126.0) is Level.TRIGGER  # above the 120 limit, which the wet-as-dry 115.4 hid


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"o2_wet": True}, "o2_wet = true needs h2o_parameter"),
        ({"o2_wet": True, "h2o_parameter": "h2o", "reference_o2": None}, "o2_wet only applies with reference_o2"),
    ],
)
def test_a_wet_o2_rule_without_moisture_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThresholdRule(
            name="stack-so2",
            window=Window(WindowKind.INSTANT),
            threshold=Threshold(Direction.ABOVE, 120.0, 120.0),
            unit="mg/m3",
            **{"reference_o2": 6.0, **kwargs},  # type: ignore[arg-type]
        )


# --------------------------------------------------------------------------------------------------
# Limits (docs/regulatory-basis.md §5) as the config's defaults
# --------------------------------------------------------------------------------------------------

PDK_MG_M3 = {  # §5: maximum one-time / daily mean, mg/m³
    "so2": (0.5, 0.05),
    "no2": (0.2, 0.04),
    "co": (5.0, 3.0),
    "pm10": (0.3, 0.06),
    "pm25": (0.16, 0.035),
}


def test_the_ambient_limit_table_is_the_domain_table() -> None:
    """§5 defaults, including gaseous mercury's daily mean of 0.0003 mg/m³ = 300 ng/m³ and no one-time value."""
    table = {limit.parameter: limit for limit in AMBIENT_PDK}
    for parameter, (one_time, daily) in PDK_MG_M3.items():
        assert (table[parameter].unit, table[parameter].one_time, table[parameter].daily) == ("mg/m3", one_time, daily)
    hg = table["hg"]
    assert (hg.unit, hg.one_time, hg.daily) == ("ng/m3", None, 300.0)
    assert hg.daily * conversion_factor("ng/m3", "mg/m3", species=None, reference_temperature_c=0) == 0.0003


def test_default_rules_apply_the_pdk_to_the_ambient_sites_only() -> None:
    """§5 one-time ПДК as a 20-min rolling mean, daily ПДК as the daily mean; none at a stack site."""
    section = AlertsSection.model_validate({"ambient_sites": ["pavlodar-ambient"]})
    rules = {rule.name: rule for rule in section.effective_rules()}
    for parameter, (one_time, daily) in PDK_MG_M3.items():
        one_time_rule, daily_rule = rules[f"{parameter}-one-time"], rules[f"{parameter}-daily"]
        assert isinstance(one_time_rule, ThresholdRule)
        assert isinstance(daily_rule, ThresholdRule)
        assert (one_time_rule.window, one_time_rule.threshold.limit) == (Window(WindowKind.ROLLING, 20), one_time)
        assert (daily_rule.window, daily_rule.threshold.limit) == (Window(WindowKind.DAILY), daily)
        assert one_time_rule.scope.matches("pavlodar-ambient", "a", "i", parameter)
        assert not one_time_rule.scope.matches("pavlodar-chp", "a", "i", parameter)
    hg_daily = rules["hg-daily"]
    assert isinstance(hg_daily, ThresholdRule)
    assert (hg_daily.window.kind, hg_daily.threshold.limit, hg_daily.unit) == (WindowKind.DAILY, 300.0, "ng/m3")
    assert "hg-one-time" not in rules
    screening = rules["hg-screening"]
    assert isinstance(screening, ThresholdRule)
    assert screening.window.kind is WindowKind.INSTANT
    assert "not a ПДК exceedance" in screening.note


def test_without_ambient_sites_the_pdk_rules_match_nothing() -> None:
    rules = {rule.name: rule for rule in AlertsSection().effective_rules()}
    assert not rules["so2-daily"].scope.matches("pavlodar-ambient", "a", "i", "so2")
    assert rules["data-gap"].scope.matches("anything", "a", "i")


def test_overrides_change_only_the_keys_they_set_and_keep_the_hysteresis() -> None:
    section = AlertsSection.model_validate(
        {
            "ambient_sites": ["x"],
            "rules": {
                "so2-one-time": {"above": 0.3},
                "so2-daily": {"severity": "warning"},
                "stuck-value": {"enabled": False},
                "hg-screening": {"below": 1.0},
            },
        }
    )
    rules = {rule.name: rule for rule in section.effective_rules()}
    so2 = rules["so2-one-time"]
    assert isinstance(so2, ThresholdRule)
    assert (so2.threshold.limit, so2.threshold.clear, so2.window.minutes) == (0.3, pytest.approx(0.27), 20)
    assert rules["so2-daily"].severity.value == "warning"
    assert "stuck-value" not in rules
    flipped = rules["hg-screening"]
    assert isinstance(flipped, ThresholdRule)
    assert (flipped.threshold.direction, flipped.threshold.limit, flipped.threshold.clear) == (Direction.BELOW, 1, 1)


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ({"x": {"window": "instant", "above": 1, "clear": 2, "unit": "mg/m3"}}, "alerts.rules.x: clear 2"),
        ({"x": {"window": "rolling", "above": 1, "unit": "mg/m3"}}, "rolling window needs minutes"),
        ({"x": {"window": "daily", "above": 1, "below": 0, "unit": "mg/m3"}}, "exactly one of above or below"),
        ({"x": {"window": "daily", "above": 1}}, "needs window and unit"),
        ({"x": {"kind": "gap"}}, "a gap rule needs after"),
        ({"x": {"kind": "gap", "after": "2m", "above": 3}}, "above: only for threshold rules"),
        ({"x": {"kind": "stuck", "count": 5, "after": "1m"}}, "after: only for gap rules"),
        ({"x": {"kind": "gap", "after": "soon"}}, "alerts.rules.x.after"),
        ({"x y": {"kind": "offline"}}, "rule names"),
        ({"data-gap": {"after": "-1"}}, "alerts.rules.data-gap.after"),
        (
            {"x": {"window": "instant", "above": 100, "unit": "mg/m3", "reference_o2": 6.0, "o2_wet": "true"}},
            "alerts.rules.x: rule check: o2_wet = true needs h2o_parameter",
        ),
        ({"x": {"kind": "gap", "after": "2m", "o2_wet": "true"}}, "o2_wet: only for threshold rules"),
    ],
)
def test_bad_rules_are_refused_naming_the_file_and_key(
    tmp_path: Path, rules: dict[str, dict[str, object]], expected: str
) -> None:
    lines = ["[alerts]"]
    for name, table in rules.items():
        lines.append(f'[alerts.rules."{name}"]')
        lines += [f"{key} = {value!r}".replace("'", '"') for key, value in table.items()]
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GatewayConfigError) as error:
        load_gateway_config(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        AlertsSection.model_validate({"timezone": "Mars/Olympus"})


def test_the_shipped_gateway_config_loads() -> None:
    config = load_gateway_config(Path(__file__).resolve().parents[3] / "config" / "gateway.toml")
    assert config.alerts is None  # commented out: alerts are opt-in


# --------------------------------------------------------------------------------------------------
# Thresholds and scopes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "limit", "clear", "value", "level"),
    [
        (Direction.ABOVE, 300, 270, 300.01, Level.TRIGGER),
        (Direction.ABOVE, 300, 270, 300.0, Level.HOLD),  # equal to the ПДК is not above it
        (Direction.ABOVE, 300, 270, 280, Level.HOLD),
        (Direction.ABOVE, 300, 270, 270, Level.CLEAR),
        (Direction.ABOVE, 300, 300, 300, Level.CLEAR),
        (Direction.BELOW, 19.0, 19.5, 18.9, Level.TRIGGER),
        (Direction.BELOW, 19.0, 19.5, 19.2, Level.HOLD),
        (Direction.BELOW, 19.0, 19.5, 19.5, Level.CLEAR),
    ],
)
def test_threshold_levels_with_hysteresis(
    direction: Direction, limit: float, clear: float, value: float, level: Level
) -> None:
    assert Threshold(direction, limit, clear).level(value) is level


@pytest.mark.parametrize(
    ("direction", "limit", "clear"),
    [(Direction.ABOVE, 300, 310), (Direction.BELOW, 19, 18), (Direction.ABOVE, 1, math.nan)],
)
def test_hysteresis_on_the_wrong_side_is_refused(direction: Direction, limit: float, clear: float) -> None:
    with pytest.raises(ValueError, match=r"clear|finite"):
        Threshold(direction, limit, clear)


@pytest.mark.parametrize(
    ("scope", "where", "matches"),
    [
        (Scope(), ("s", "a", "i", "p"), True),
        (Scope(sites=("pavlodar-*",)), ("pavlodar-ambient", "a", "i", "p"), True),
        (Scope(sites=("pavlodar-*",)), ("astana-ambient", "a", "i", "p"), False),
        (Scope(sites=()), ("s", "a", "i", "p"), False),
        (Scope(parameters=("pm10", "pm25")), ("s", "a", "i", "pm25"), True),
        (Scope(parameters=("pm10",)), ("s", "a", "", ""), True),  # agent-level: no parameter to check
        (Scope(instruments=("PVL*",)), ("s", "a", "pvl1-hg", "hg"), False),  # case-sensitive
    ],
)
def test_scopes_match_glob_patterns(scope: Scope, where: tuple[str, str, str, str], matches: bool) -> None:
    assert scope.matches(*where) is matches


# --------------------------------------------------------------------------------------------------
# Windows and validity (docs/regulatory-basis.md §3)
# --------------------------------------------------------------------------------------------------


def hg_rule(window: Window, *, limit: float = 300.0, clear: float | None = None, **kwargs: object) -> ThresholdRule:
    return ThresholdRule(
        name="hg",
        window=window,
        threshold=Threshold(Direction.ABOVE, limit, limit if clear is None else clear),
        unit="ng/m3",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("quality", "used"),
    [(Quality.OK, True), (Quality.MAINTENANCE_REQUIRED, True), (Quality.OUT_OF_SPECIFICATION, True),
     (Quality.CHECK_FUNCTION, False), (Quality.FAILURE, False), (Quality.OUT_OF_RANGE, False)],
)  # fmt: skip
def test_instant_values_use_usable_samples_only(quality: Quality, used: bool) -> None:
    """§3: check_function (calibration) and failure are excluded; out_of_specification and
    maintenance_required are used but flagged."""
    evaluator = ThresholdEvaluator(hg_rule(Window(WindowKind.INSTANT)), ALMATY)
    observations = evaluator.add(Sample(T0, 480.0, quality))
    assert bool(observations) is used
    if used:
        assert (observations[0].level, observations[0].value, observations[0].since) == (Level.TRIGGER, 480.0, T0)
    assert evaluator.add(Sample(at(1), None, Quality.FAILURE)) == []  # a timeout: no value, no observation


def test_a_rolling_mean_needs_75_percent_of_its_window_covered() -> None:
    """§3 (ambient, 2008/50/EC): 75 % data capture. 1 s samples: the 10-min mean appears after 7.5 min."""
    averager = RollingAverager(timedelta(minutes=10), hold=timedelta(minutes=5), min_coverage=0.75)
    first = None
    for second in range(700):
        averages = averager.add(Sample(at(second), 100.0 + second % 2))
        if averages and first is None:
            first = second
    assert first == 450  # sample 0 stands for nothing (no predecessor); samples 1..450 cover 450 s = 75 %
    [average] = averager.add(Sample(at(700), 100.0))
    assert average.samples == 600
    assert average.value == pytest.approx(100.5, abs=0.01)
    assert average.coverage == pytest.approx(1.0)


def test_calibration_samples_leave_holes_in_a_rolling_window() -> None:
    """A 4-minute zero/span check inside a 10-minute window leaves 60 % covered: below 75 %, no mean."""
    averager = RollingAverager(timedelta(minutes=10), hold=timedelta(minutes=5), min_coverage=0.75)
    for second in range(600):
        quality = Quality.CHECK_FUNCTION if 300 <= second < 540 else Quality.OK
        averager.add(Sample(at(second), 0.0 if quality is Quality.CHECK_FUNCTION else 50.0, quality))
    first = None
    for second in range(600, 1200):
        averages = averager.add(Sample(at(second), 50.0))
        if averages and first is None:
            first = second
            assert averages[0].value == 50.0  # the check gas never entered the mean
    # Until t = 900 the window holds 60 s + 300 s of good data (60 %); then the hole slides out of it:
    # samples 540..989 stand for 450 s (sample 540 for the second after the last check sample), 75 % at t = 989.
    assert first == 989


def test_integrating_analyzer_samples_stand_for_their_cycle() -> None:
    """Tekran-class Hg: one value per 5 minutes; each stands for the 5 minutes before it (`hold`)."""
    averager = RollingAverager(timedelta(minutes=20), hold=timedelta(minutes=5), min_coverage=0.75)
    results = [averager.add(Sample(at(300 * k), 10.0 * k)) for k in range(6)]
    assert [bool(r) for r in results] == [False, False, False, True, True, True]
    assert results[3][0].coverage == pytest.approx(0.75)
    assert results[5][0].value == pytest.approx((20 + 30 + 40 + 50) / 4)  # (t-20min, t]: k = 2..5


def test_an_hourly_mean_is_judged_when_the_hour_is_over() -> None:
    averager = PeriodAverager(hour_bounds(ALMATY), hold=timedelta(minutes=5), min_coverage=0.75)
    outputs = [averager.add(Sample(T0 + timedelta(minutes=m), float(m))) for m in range(-1, 60)]
    assert all(out == [] for out in outputs[1:])  # nothing from inside the hour
    assert len(outputs[0]) == 0
    [hour] = averager.add(Sample(T0 + timedelta(minutes=60), 0.0))
    assert (hour.start, hour.end, hour.samples) == (T0, T0 + timedelta(hours=1), 60)
    assert hour.value == pytest.approx(29.5)
    # A sample stands for the time before it: 10:59-11:00 belongs to the 11:00 sample, so 59 of 60 minutes.
    assert hour.coverage == pytest.approx(59 / 60)


def test_an_hour_with_too_little_data_is_not_judged() -> None:
    averager = PeriodAverager(hour_bounds(ALMATY), hold=timedelta(minutes=5), min_coverage=0.75)
    for minute in range(40):  # 40 of 60 minutes: 67 % < 75 %
        averager.add(Sample(T0 + timedelta(minutes=minute), 999.0))
    assert averager.add(Sample(T0 + timedelta(minutes=61), 1.0)) == []


def test_days_are_local_calendar_days() -> None:
    """Pavlodar is UTC+5: the local day 2026-12-01 runs from 19:00 UTC on 30 Nov to 19:00 UTC on 1 Dec."""
    start, end = day_bounds(ALMATY)(T0)
    assert start == datetime(2026, 11, 30, 19, 0, tzinfo=UTC)
    assert end == datetime(2026, 12, 1, 19, 0, tzinfo=UTC)
    assert day_bounds(ALMATY)(datetime(2026, 12, 1, 19, 0, tzinfo=UTC))[0] == end


def daily_hg(values_per_minute: list[float]) -> list[object]:
    """Feed one value per minute from local midnight on 2026-12-01, then the first minute of the next day."""
    evaluator = ThresholdEvaluator(hg_rule(Window(WindowKind.DAILY)), ALMATY)
    midnight = datetime(2026, 11, 30, 19, 0, tzinfo=UTC)
    observations = []
    for minute, value in enumerate(values_per_minute):
        observations += evaluator.add(Sample(midnight + timedelta(minutes=minute), value))
    observations += evaluator.add(Sample(midnight + timedelta(days=1, minutes=1), 5.0))
    return observations


def test_a_short_mercury_episode_does_not_exceed_the_daily_mean_limit() -> None:
    """§5: 300 ng/m³ is a daily mean. The demo's 150 s episode at 480 ng/m³ on a 5 ng/m³ background moves a
    day's mean by under 1 ng/m³; that is why the demo shows the instant screening rule, named as such."""
    day = [5.0] * 1440
    day[660:663] = [480.0, 480.0, 480.0]
    [observation] = daily_hg(day)
    assert observation.level is Level.CLEAR
    assert observation.value == pytest.approx(5.0 + 3 * 475 / 1440)
    assert observation.detail == "daily mean of 2026-12-01 (Asia/Almaty), 100% data"


def test_a_day_above_300_ng_per_m3_on_average_triggers_for_the_whole_day() -> None:
    [observation] = daily_hg([320.0] * 1440)
    assert observation.level is Level.TRIGGER
    assert observation.since == datetime(2026, 11, 30, 19, 0, tzinfo=UTC)
    assert observation.at == datetime(2026, 12, 1, 19, 0, tzinfo=UTC)


def test_a_day_under_75_percent_captured_is_not_judged() -> None:
    """§3: a 24-hour value needs ≥ 75 % data capture; 17 h of data is 71 %."""
    assert daily_hg([999.0] * (17 * 60)) == []


# --------------------------------------------------------------------------------------------------
# Data rules
# --------------------------------------------------------------------------------------------------


def test_stuck_values_trigger_at_the_nth_repeat_and_clear_when_the_value_moves() -> None:
    """§3 `stuck`: a flat line of N samples. Unusable samples neither count nor break the run."""
    evaluator = StuckEvaluator(StuckRule(name="stuck", count=4, tolerance=0.01))
    values = [(5.0, Quality.OK), (5.005, Quality.OK), (0.0, Quality.CHECK_FUNCTION), (5.0, Quality.OK)]
    levels = [[o.level for o in evaluator.add(Sample(at(i), v, q))] for i, (v, q) in enumerate(values)]
    assert levels == [[], [], [], []]
    [trigger] = evaluator.add(Sample(at(4), 4.995))
    assert (trigger.level, trigger.since, trigger.detail) == (Level.TRIGGER, T0, "4 identical values in a row")
    assert [o.level for o in evaluator.add(Sample(at(5), 6.0))] == [Level.CLEAR]
    assert evaluator.add(Sample(at(5), 5.0)) == []  # not newer than the last: ignored


def test_failure_flags_trigger_per_instrument() -> None:
    assert failure_observation(T0, ["so2", "no2"]).level is Level.TRIGGER
    assert failure_observation(T0, ["so2", "no2"]).detail == "failure flag on no2, so2"
    assert failure_observation(T0, []).level is Level.CLEAR


def test_gaps_count_from_the_last_data_received() -> None:
    rule = GapRule(name="gap", after=timedelta(minutes=2))
    assert gap_observation(rule, T0, at(120)).level is Level.CLEAR
    gap = gap_observation(rule, T0, at(200))
    assert (gap.level, gap.since, gap.value, gap.detail) == (Level.TRIGGER, T0, 200.0, "no data for 3 min 20 s")


@pytest.mark.parametrize(
    ("newest", "level", "detail"),
    [
        (at(-30), Level.CLEAR, "clocks agree"),
        (at(300), Level.TRIGGER, "readings stamped 5 min ahead of the gateway clock"),
        (at(-300), Level.TRIGGER, "newest reading 5 min older than its arrival (agent clock behind, or a delivery"),
    ],
)
def test_clock_skew_compares_the_newest_reading_with_the_receive_time(
    newest: datetime, level: Level, detail: str
) -> None:
    observation = skew_observation(ClockSkewRule(name="skew", max_skew=timedelta(minutes=2)), newest, T0)
    assert observation.level is level
    assert observation.detail.startswith(detail)


def test_rules_check_their_own_numbers() -> None:
    with pytest.raises(ValueError, match="count must be at least 2"):
        StuckRule(name="s", count=1)
    with pytest.raises(ValueError, match="after must be positive"):
        GapRule(name="g", after=timedelta(0))
    with pytest.raises(ValueError, match="min_coverage"):
        hg_rule(Window(WindowKind.INSTANT), min_coverage=0.0)
    with pytest.raises(ValueError, match="minutes only applies to rolling"):
        Window(WindowKind.DAILY, 5)


async def test_the_engine_dries_a_wet_o2_with_the_same_instruments_moisture(tmp_path: Path) -> None:
    """Issue 14 through the real engine: SO2 100 mg/m³ with an in-situ O2 of 8 % at 12 % H2O is 126.0 at 6 % O2,
    above a 120 limit; the same rule without o2_wet (O2 taken as dry: 115.4) stays quiet, and a wet rule whose
    moisture reading is missing has no value to judge."""
    rules = [
        stack_rule(name="wet", o2_wet=True, h2o_parameter="h2o", scope=Scope(parameters=("so2",))),
        stack_rule(name="as-dry", scope=Scope(parameters=("so2",))),
        stack_rule(name="no-moisture", o2_wet=True, h2o_parameter="moisture", scope=Scope(parameters=("so2",))),
    ]
    engine = AlertEngine(rules, AlertStore(tmp_path / "alerts.sqlite"))
    try:
        for second in range(3):
            ts = at(second)
            readings = [
                Reading(instrument="stack1-gas", parameter=p, value=v, unit=u, ts=ts)
                for p, v, u in (("so2", 100.0, "mg/m3"), ("o2", 8.0, "%vol"), ("h2o", 12.0, "%vol"))
            ]
            batch = Batch(site="chp", agent="chp-stack1", seq=second + 1, sent_at=ts, readings=readings)
            await engine.on_batch(batch, ts)
            await engine.tick(ts)
        states = {name: engine.state_of(AlertKey(name, "chp", "chp-stack1", "stack1-gas", "so2")) for name in
                  ("wet", "as-dry", "no-moisture")}  # fmt: skip
        wet = states["wet"]
        assert wet is not None
        assert (wet.phase, wet.value) == (Phase.FIRING, pytest.approx(100 * 15 / (21 - 8 / 0.88)))
        assert states["as-dry"] is None or states["as-dry"].phase is not Phase.FIRING
        assert states["no-moisture"] is None or states["no-moisture"].phase is not Phase.FIRING
    finally:
        engine.close()
