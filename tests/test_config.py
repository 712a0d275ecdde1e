"""Config errors name the file and the key; the CLIs exit non-zero on them and never print a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aua_ops import ConfigError
from edge_agent.cli import main as agent_main
from edge_agent.config import load_config
from gateway.cli import main as gateway_main
from gateway.config import GatewayConfigError, load_gateway_config

PROFILE = """
[profile]
name = "t"

[[tag]]
name = "so2"
address = 0
unit = "mg/m3"
"""


def write_site(folder: Path, body: str, profile: str = PROFILE) -> Path:
    (folder / "p.toml").write_text(profile)
    path = folder / "site.toml"
    path.write_text(body)
    return path


GOOD = """
[agent]
site = "s1"
id = "a1"

[[instrument]]
id = "gas"
profile = "p.toml"
port = 5020
"""


def test_a_good_config_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    loaded = load_config(write_site(tmp_path, GOOD))
    assert loaded.config.agent.outbox == tmp_path / "var/agent-outbox.sqlite"
    assert [i.id for i in loaded.instruments] == ["gas"]
    assert loaded.instruments[0].profile.tag[0].name == "so2"


@pytest.mark.parametrize(
    ("body", "profile", "expected"),
    [
        (GOOD.replace('id = "a1"', 'id = "a/1"'), PROFILE, "agent.id: String should match pattern"),
        (GOOD.replace("port = 5020", "port = 70000"), PROFILE, "instrument.0.port: Input should be less than"),
        (GOOD + "\nbogus = 1\n", PROFILE, "bogus: Extra inputs are not permitted"),
        (GOOD.replace("[agent]", "[agent]\npoll_interval = 0"), PROFILE, "agent.poll_interval"),
        (GOOD + '\n[[instrument]]\nid = "gas"\nprofile = "p.toml"\n', PROFILE, "duplicate instrument ids"),
        (GOOD.replace('"p.toml"', '"missing.toml"'), PROFILE, "missing.toml: file not found"),
        (GOOD, PROFILE.replace("address = 0", "address = -1"), "instrument.0.profile (gas): "),
        (GOOD, PROFILE.replace("address = 0", "address = -1"), "tag.0.address"),
        (GOOD, PROFILE + 'type = "bool"\n', "cannot be read from input"),
        (GOOD, PROFILE.replace('unit = "mg/m3"', 'unit = "mg/m3"\nstatus = "st"'), "unknown status block 'st'"),
        ("[agent\n", PROFILE, "not valid TOML"),
    ],
)
def test_bad_agent_configs_name_the_key(tmp_path: Path, body: str, profile: str, expected: str) -> None:
    path = write_site(tmp_path, body, profile)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value)
    assert str(tmp_path) in str(caught.value)


def test_agent_cli_validate_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_site(tmp_path, GOOD)
    assert agent_main(["validate", str(path)]) == 0
    assert agent_main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gas: tcp://127.0.0.1:5020 device 1" in out
    assert "FC04 input        0 +2    reads so2" in out
    bad = write_site(tmp_path, GOOD.replace("port = 5020", 'port = "x"'))
    assert agent_main(["validate", str(bad)]) == 1
    assert "instrument.0.port" in capsys.readouterr().err


def test_gateway_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[mqtt]\nport = "one"\n')
    with pytest.raises(GatewayConfigError, match=r"gw.toml:2: mqtt.port"):
        load_gateway_config(path)
    assert gateway_main(["accounting", str(path)]) == 1
    assert "mqtt.port" in capsys.readouterr().err


def test_gateway_config_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[store]\nurl = "sqlite:///data/aua.sqlite"\n')
    config = load_gateway_config(path)
    assert config.store.url == f"sqlite://{tmp_path}/data/aua.sqlite"
    assert config.gateway.state == tmp_path / "var/gateway-state.sqlite"
    path.write_text('[mqtt]\nca_file = "tls/ca.pem"\ncert_file = "/etc/aua/gw.crt"\nkey_file = "gw.key"\n')
    mqtt = load_gateway_config(path).mqtt
    assert (mqtt.ca_file, mqtt.cert_file, mqtt.key_file) == (
        tmp_path / "tls/ca.pem",
        Path("/etc/aua/gw.crt"),
        tmp_path / "gw.key",
    )
    assert mqtt.use_tls


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[mqtt]\ncert_file = "gw.crt"\n', "gw.toml:1: mqtt: Value error, cert_file and key_file go together"),
        ("[mqtt]\ntls = 2\n", "gw.toml:2: mqtt.tls"),
        ('[mqtt]\nca_fil = "ca.pem"\n', "gw.toml:2: mqtt.ca_fil: Extra inputs are not permitted"),
    ],
)
def test_gateway_tls_settings_are_checked_like_an_agents(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(body)
    with pytest.raises(GatewayConfigError, match=re.escape(expected)):
        load_gateway_config(path)


def test_the_shipped_gateway_example_loads() -> None:
    config = load_gateway_config(Path(__file__).parent.parent / "config" / "gateway.toml")
    assert config.store.url.startswith("sqlite:///")


def test_the_shipped_state_feed_example_loads_when_uncommented(tmp_path: Path) -> None:
    text = (Path(__file__).parent.parent / "config" / "gateway.toml").read_text()
    block = text[text.index("# [state_feed]") :]
    path = tmp_path / "gw.toml"
    path.write_text("\n".join(line.removeprefix("# ") for line in block.splitlines()) + "\n")
    feed = load_gateway_config(path).state_feed
    assert feed is not None
    assert (feed.period, feed.codes["pavlodar-chp/stack1-gas/so2"]) == ("1h", "0330")
