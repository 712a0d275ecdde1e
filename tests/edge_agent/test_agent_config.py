"""The agent's config for issue 4: transports and serial lines, outbox/metrics/TLS options, errors with line
numbers, the shipped sample, and backward compatibility with the existing site configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aua_ops import ConfigError
from aua_ops.toml_lines import key_lines, line_of
from edge_agent.cli import main as agent_main
from edge_agent.config import AgentSection, InstrumentSection, MqttSection, Transport, load_config
from edge_agent.sample_config import SAMPLE

CONFIG = Path(__file__).resolve().parents[2] / "config"

PROFILE = """\
[profile]
name = "t"

[[tag]]
name = "so2"
address = 0
unit = "mg/m3"
"""

SITE = """\
[agent]
site = "s1"
id = "a1"

[mqtt]
host = "127.0.0.1"

[[instrument]]
id = "gas"
profile = "p.toml"
port = 5020

[[instrument]]
id = "flow"
profile = "p.toml"
transport = "rtu"
serial_port = "/dev/ttyUSB0"
device_id = 2
"""


def write(folder: Path, body: str, profile: str = PROFILE) -> Path:
    (folder / "p.toml").write_text(profile)
    path = folder / "site.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize("name", ["pavlodar-chp.toml", "pavlodar-ambient.toml"])
def test_existing_site_configs_load_unchanged_with_defaults(name: str) -> None:
    loaded = load_config(CONFIG / name)
    agent = loaded.config.agent
    assert (agent.outbox_max_batches, agent.outbox_retention_s, agent.metrics_port) == (1_000_000, 7 * 86400, None)
    assert not loaded.config.mqtt.use_tls
    assert {i.config.transport for i in loaded.instruments} == {Transport.TCP}
    assert all(i.config.bus_key is None for i in loaded.instruments)


def test_a_mixed_site_loads(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, SITE))
    flow = loaded.instruments[1].config
    assert flow.bus_key == "rtu:///dev/ttyUSB0"
    assert (flow.baudrate, flow.parity, flow.stopbits, flow.bytesize) == (9600, "N", 1, 8)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('serial_port = "/dev/ttyUSB0"\n', "", 'transport "rtu" needs serial_port'),
        ('transport = "rtu"\n', "", 'serial_port is only for transport "rtu"'),
        ("device_id = 2", "device_id = 0", "an RTU device id is 1 ... 247"),
        ("device_id = 2", "device_id = 2\nbaudrate = 9601", "baudrate 9601 is not one of"),
        ("device_id = 2", 'device_id = 2\nparity = "X"', 'instrument #2 "flow".parity'),
        ('transport = "rtu"', 'transport = "modbus"', 'instrument #2 "flow".transport'),
    ],
)
def test_transport_fields_are_checked(tmp_path: Path, old: str, new: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, SITE.replace(old, new)))


def test_instruments_on_one_line_must_agree_on_line_settings_and_differ_in_device_id(tmp_path: Path) -> None:
    third = '\n[[instrument]]\nid = "dust"\nprofile = "p.toml"\ntransport = "rtu"\nserial_port = "/dev/ttyUSB0"\n'
    with pytest.raises(ConfigError, match=r"more than one instrument with device id \[2\] on one bus"):
        load_config(write(tmp_path, SITE + third + "device_id = 2\n"))
    with pytest.raises(ConfigError, match="share the line but not baudrate"):
        load_config(write(tmp_path, SITE + third + "device_id = 3\nbaudrate = 19200\n"))
    # the same device id on another line is fine
    assert load_config(write(tmp_path, SITE + third.replace("ttyUSB0", "ttyUSB1") + "device_id = 2\n"))


def test_tls_options_pair_up_and_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        load_config(write(tmp_path, SITE.replace('host = "127.0.0.1"', 'cert_file = "c.pem"')))
    loaded = load_config(write(tmp_path, SITE.replace('host = "127.0.0.1"', 'ca_file = "tls/ca.pem"')))
    assert loaded.config.mqtt.ca_file == tmp_path / "tls/ca.pem"
    assert loaded.config.mqtt.use_tls
    assert MqttSection(insecure=True).use_tls
    assert not MqttSection().use_tls


def test_errors_name_the_file_the_line_and_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, SITE.replace("device_id = 2", "device_id = 2\nbaudrate = 9601").replace("5020", "70000"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    # Array elements are named and counted from 1, as a person counts them in the file.
    assert lines[0].startswith(f'{path}:11: instrument #1 "gas".port: Input should be less than or equal to 65535')
    assert lines[1].startswith(f'{path}:13: instrument #2 "flow": baudrate 9601')  # the table's line
    profile = PROFILE.replace("address = 0", "address = -3")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, SITE, profile))
    assert str(caught.value).splitlines()[1] == (
        f'{tmp_path / "p.toml"}:6: tag #1 "so2".address: Input should be greater than or equal to 0'
    )


def test_validate_prints_the_line_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SITE.replace('id = "a1"', 'id = "a 1"'))
    assert agent_main(["validate", str(path)]) == 1
    assert f"{path}:3: agent.id: String should match pattern" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("location", "line"),
    [
        (("agent",), 1),
        (("agent", "site"), 2),
        (("instrument", 1, "port"), 9),
        (("instrument", 1, "nothing"), 7),  # unknown key: its table
        (("instrument", 2), 12),
        (("instrument", 2, "bits", "3"), 15),
        (("instrument", 2, "bits", "a", "b"), 17),  # dotted key
        (("instrument", 2, "bits", "c"), 18),
        (("instrument", 2, "bits", "after"), 21),  # a multi-line string's lines are skipped
        (("instrument", 2, "bits", "d"), 14),  # inside the string: not a key, so its table
        (("nowhere",), None),
    ],
)
def test_key_lines(location: tuple[str | int, ...], line: int | None) -> None:
    text = """\
[agent]
  site = "s"   # comment
[[instrument]]
id = "x"
port = 1

[[ instrument ]]
id = "y"
port = 2
'quoted' = 1

[[instrument]]
note = "z"
[instrument.bits]
3 = "failure"

a.b = 1
c = \"\"\"
d = 2
\"\"\"
after = 1
"""
    assert line_of(key_lines(text), location) == line


def test_the_sample_config_is_valid_and_names_every_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_main(["config", "sample"]) == 0
    printed = capsys.readouterr().out
    assert printed == SAMPLE
    shutil.copytree(CONFIG / "profiles", tmp_path / "profiles")
    path = tmp_path / "site.toml"
    path.write_text(SAMPLE)
    loaded = load_config(path)
    assert [i.id for i in loaded.instruments] == ["stack1-gas"]
    for model in (AgentSection, MqttSection, InstrumentSection):
        for name in model.model_fields:
            assert f" {name} = " in SAMPLE, f"the sample does not document {model.__name__}.{name}"
    # every commented instrument example is valid once uncommented
    lines, inside = [], False
    for line in SAMPLE.splitlines():
        inside = line.startswith("# [[instrument]]") or (inside and line.startswith("#"))
        lines.append(line[2:] if inside else line)
    uncommented = "\n".join(lines)
    path.write_text(uncommented)
    loaded = load_config(path)
    assert [i.config.transport for i in loaded.instruments] == [Transport.TCP, Transport.RTU, Transport.RTU_OVER_TCP]
