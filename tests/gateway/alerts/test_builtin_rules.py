"""The built-in QA rules (gateway/alerts/builtin.py): the engine's rules and `cems-gateway alerts rules` come from the
same table, with what triggers each rule and which configuration enables it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.alerts.builtin import BUILTIN_RULES, builtin_rules
from gateway.alerts.engine import AlertEngine
from gateway.cli import main as gateway_main
from gateway.config import GatewayConfigError, load_gateway_config

BASE = """[gateway]
state = "state.sqlite"
[store]
url = "sqlite://aua.sqlite"
[alerts]
timezone = "UTC"
data_rules = false
"""

PART75_SOURCE = """[[source]]
id = "unit1"
site = "p75-site"
time_zone = "UTC"
rule_set = "part75"
flow = { instrument = "u1-flow", parameter = "flow", unit = "Nm3/h" }
[[source.pollutant]]
instrument = "u1-gas"
parameter = "so2"
name = "SO2"
unit = "mg/m3"
[source.part75]
span = { so2 = 500 }
"""

QAL3_SOURCE = """[[source]]
id = "boiler2"
site = "chp"
fuel = "solid"
flow = { instrument = "flow", parameter = "flow", unit = "Nm3/h" }
o2 = { instrument = "gas", parameter = "o2", unit = "%vol" }
[[source.pollutant]]
instrument = "gas"
parameter = "so2"
name = "SO2"
unit = "mg/Nm3"
elv = 400
qal2 = { id = "Q-1", date = 2024-03-01, a = 0.0, b = 1.0, vcr = 300 }
[source.qal3]
method = "cusum"
[[source.qal3.component]]
instrument = "gas"
parameter = "so2"
s_ams_zero = 1.0
s_ams_span = 2.0
zero_reference = 0.0
span_reference = 180.0
"""


def _listing(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    """`alerts rules` output: the lines of each built-in rule (its line, then `fires:` and `enabled by:`)."""
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    assert gateway_main(["alerts", "rules", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    found: dict[str, list[str]] = {}
    for index, line in enumerate(lines):
        name = line.split(" ", 1)[0]
        if any(b.rule.name == name for b in BUILTIN_RULES):
            found[name] = lines[index : index + 3]
    return found


@pytest.mark.parametrize(
    ("sources", "scopes"),
    [
        (
            PART75_SOURCE + QAL3_SOURCE,
            {
                "qa-qal2-due": "source=boiler2",
                "qa-part75-calibration": "source=unit1",
                "qa-part75-due": "source=unit1",
                "qal3-out-of-control": "source=boiler2",
            },
        ),
        (
            PART75_SOURCE,
            {
                "qa-qal2-due": "in force, nothing to check in this config",
                "qa-part75-calibration": "source=unit1",
                "qa-part75-due": "source=unit1",
                "qal3-out-of-control": "not in force",
            },
        ),
        (
            QAL3_SOURCE.replace("[source.qal3]\n", "[source.qal3]\nalert = false\n"),
            {
                "qa-qal2-due": "source=boiler2",
                "qa-part75-calibration": "in force, nothing to check in this config",
                "qa-part75-due": "in force, nothing to check in this config",
                "qal3-out-of-control": "not in force",
            },
        ),
    ],
)
def test_alerts_rules_lists_every_builtin_rule_with_its_trigger_and_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sources: str, scopes: dict[str, str]
) -> None:
    listing = _listing(tmp_path, BASE + sources, capsys)
    assert set(listing) == {b.rule.name for b in BUILTIN_RULES} == set(scopes)
    for builtin in BUILTIN_RULES:
        head, fires, enabled = listing[builtin.rule.name]
        assert "built-in" in head
        assert builtin.rule.severity.value in head
        assert builtin.rule.describe() in head
        assert head.endswith(scopes[builtin.rule.name])
        assert fires == f"    fires: {builtin.trigger}"
        assert enabled == f"    enabled by: {builtin.enabled_by}"
    config = load_gateway_config(tmp_path / "gateway.toml")
    engine = AlertEngine.from_config(config, notifiers=[])
    try:  # what the listing says is in force is what the engine has
        in_force = {name for name, scope in scopes.items() if scope != "not in force"}
        assert {r.name for r in builtin_rules(config)} == in_force
        assert in_force <= set(engine.rules)
        assert not ({b.rule.name for b in BUILTIN_RULES} - in_force) & set(engine.rules)
    finally:
        engine.close()


def test_builtin_rules_are_not_in_force_with_alerts_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listing = _listing(tmp_path, BASE.replace("data_rules = false\n", "data_rules = false\nenabled = false\n")
                       + PART75_SOURCE, capsys)  # fmt: skip
    assert all(lines[0].endswith("not in force") for lines in listing.values())
    engine = AlertEngine.from_config(load_gateway_config(tmp_path / "gateway.toml"), notifiers=[])
    assert not engine.rules
    engine.close()


def test_builtin_rules_state_the_trigger_and_the_config_with_a_clause() -> None:
    for builtin in BUILTIN_RULES:
        assert builtin.trigger
        assert "[source." in builtin.enabled_by
        assert any(word in builtin.trigger for word in ("40 CFR", "EN 14181"))


@pytest.mark.parametrize("name", [b.rule.name for b in BUILTIN_RULES])
def test_a_configured_rule_cannot_take_a_builtin_rules_name(tmp_path: Path, name: str) -> None:
    path = tmp_path / "gateway.toml"
    rule = f'[alerts.rules.{name}]\nparameter = "so2"\nabove = 100\nwindow = "hourly"\nunit = "mg/m3"\n'
    path.write_text(BASE + rule, encoding="utf-8")
    with pytest.raises(GatewayConfigError) as raised:
        load_gateway_config(path)
    message = str(raised.value)
    assert "alerts.rules" in message
    assert name in message
    assert "built-in" in message
