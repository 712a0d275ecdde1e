"""One config-error form for both programs (aua_ops/config_errors.py): `FILE:LINE: KEY: what`, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from aua_ops import ConfigError, ConfigFile, problem_line
from aua_ops.config_errors import at_line, known_keys
from edge_agent.config import AgentConfig, load_config
from gateway.config import GatewayConfig, GatewayConfigError, load_gateway_config


@pytest.mark.parametrize(
    ("source", "line", "key", "message", "text"),
    [
        ("gw.toml", 4, "gateway.http", "port out of range", "gw.toml:4: gateway.http: port out of range"),
        ("gw.toml", None, "store.url", "unreachable", "gw.toml: store.url: unreachable"),
        (Path("/etc/aua/site.toml"), 12, "agent.id", "bad", "/etc/aua/site.toml:12: agent.id: bad"),
    ],
)
def test_the_one_line(source: str | Path, line: int | None, key: str, message: str, text: str) -> None:
    assert problem_line(source, line, key, message) == text
    assert text.startswith(at_line(source, line) + ": ")


def test_a_located_key_is_written_by_the_same_formatter(tmp_path: Path) -> None:
    located = ConfigFile(tmp_path / "gw.toml", '[gateway]\nid = "x"\nhttp = "a:1"\n')
    assert located.problem(("gateway", "http"), "taken") == problem_line(
        tmp_path / "gw.toml", 3, "gateway.http", "taken"
    )


GATEWAY = """\
[gateway]
id = "gw"
htp = "127.0.0.1:9108"

[store]
urll = "sqlite://aua.sqlite"

[alerts.rules.so2-high]
parameter = "so2"
window = "instant"
above = 3
unit = "mg/m3"
abvoe = 4
"""


def test_bad_keys_in_a_gateway_config_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(GATEWAY)
    with pytest.raises(GatewayConfigError) as raised:
        load_gateway_config(path)
    assert str(raised.value).splitlines() == [
        f"{path}:3: gateway.htp: unknown key 'htp' (did you mean 'http'?)",
        f"{path}:6: store.urll: unknown key 'urll' (did you mean 'url'?)",
        f"{path}:13: alerts.rules.so2-high.abvoe: unknown key 'abvoe' (did you mean 'above'?)",
    ]


def test_a_bad_key_in_an_agent_config_is_the_same_form(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[agent]\nsite = "s1"\nid = "a1"\npoll_intervall = 2\n\n[mqtt]\nhost = "localhost"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    first = str(raised.value).splitlines()[0]
    assert first == f"{path}:4: agent.poll_intervall: unknown key 'poll_intervall' (did you mean 'poll_interval'?)"


@pytest.mark.parametrize(
    ("model", "location", "includes"),
    [
        (GatewayConfig, ("gateway",), "roles"),
        (GatewayConfig, ("alerts", "rules", "any-name"), "for"),  # a rule's keys, by their alias
        (GatewayConfig, ("source", 0), "flow"),  # [[source]] is the field `sources`
        (AgentConfig, ("agent",), "poll_interval"),
    ],
)
def test_known_keys_follow_the_file_s_names(model: type, location: tuple[str | int, ...], includes: str) -> None:
    keys = known_keys(model, location)
    assert keys is not None
    assert includes in keys


def test_a_table_of_free_keys_has_no_known_keys() -> None:
    assert known_keys(GatewayConfig, ("alerts", "rules")) is None
