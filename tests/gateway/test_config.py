"""Config errors name the file and the key; the CLIs exit non-zero on them and never print a traceback."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from paho.mqtt import publish
from ports import free_port
from servers import InfluxServer, MosquittoServer, unique_database_name

from aua_contract import Batch, Reading, encode_batch, readings_topic
from aua_ops import ConfigError
from edge_agent.cli import main as agent_main
from edge_agent.config import load_config
from gateway.cli import main as gateway_main
from gateway.config import GatewayConfigError, load_gateway_config
from gateway.stores import open_store

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
        (GOOD.replace("port = 5020", "port = 70000"), PROFILE, 'instrument #1 "gas".port: Input should be less than'),
        (GOOD + "\nbogus = 1\n", PROFILE, "bogus: unknown key 'bogus' (allowed here: id, profile,"),
        (GOOD + "\npot = 1\n", PROFILE, "pot: unknown key 'pot' (did you mean 'port'?)"),
        (GOOD.replace("[agent]", "[agent]\npoll_interval = 0"), PROFILE, "agent.poll_interval"),
        (GOOD + '\n[[instrument]]\nid = "gas"\nprofile = "p.toml"\n', PROFILE, "duplicate instrument ids"),
        (GOOD.replace('"p.toml"', '"missing.toml"'), PROFILE, "missing.toml: file not found"),
        (GOOD, PROFILE.replace("address = 0", "address = -1"), 'instrument #1 "gas".profile: the profile '),
        (GOOD, PROFILE.replace("address = 0", "address = -1"), 'tag #1 "so2".address'),
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
    assert 'instrument #1 "gas".port' in capsys.readouterr().err


def test_gateway_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[mqtt]\nport = "one"\n')
    with pytest.raises(GatewayConfigError, match=r"gw.toml:2: mqtt.port"):
        load_gateway_config(path)
    assert gateway_main(["accounting", str(path)]) == 1
    assert "mqtt.port" in capsys.readouterr().err


def test_gateway_config_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[store]\nurl = "sqlite://data/aua.sqlite"\n')
    config = load_gateway_config(path)
    assert config.store.url == f"sqlite://{tmp_path}/data/aua.sqlite"
    assert config.gateway.state == tmp_path / "var/gateway-state.sqlite"
    path.write_text("[gateway]\n")
    assert load_gateway_config(path).store.url == f"sqlite://{tmp_path}/var/aua.sqlite"  # the default, beside state


@pytest.mark.parametrize("url", ["sqlite:///var/lib/aua/aua.sqlite", "sqlite://:memory:", "influx://h:8086/aua"])
def test_a_store_url_in_a_config_file_means_what_open_store_reads(tmp_path: Path, url: str) -> None:
    """sqlite:///PATH is absolute in a config file too (it once meant a file under the config's folder)."""
    path = tmp_path / "gw.toml"
    path.write_text(f'[store]\nurl = "{url}"\n')
    assert load_gateway_config(path).store.url == url
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
        ('[mqtt]\ncert_file = "gw.crt"\n', "gw.toml:1: mqtt: cert_file and key_file go together"),
        ("[mqtt]\ntls = 2\n", "gw.toml:2: mqtt.tls"),
        ('[mqtt]\nca_fil = "ca.pem"\n', "gw.toml:2: mqtt.ca_fil: unknown key 'ca_fil' (did you mean 'ca_file'?)"),
    ],
)
def test_gateway_tls_settings_are_checked_like_an_agents(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(body)
    with pytest.raises(GatewayConfigError, match=re.escape(expected)):
        load_gateway_config(path)


def test_the_shipped_gateway_example_loads() -> None:
    config = load_gateway_config(Path(__file__).resolve().parents[2] / "config" / "gateway.toml")
    assert config.store.url.startswith("sqlite:///")


def test_the_shipped_state_feed_example_loads_when_uncommented(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "config" / "gateway.toml").read_text()
    block = text[text.index("# [state_feed]") :]
    path = tmp_path / "gw.toml"
    path.write_text("\n".join(line.removeprefix("# ") for line in block.splitlines()) + "\n")
    feed = load_gateway_config(path).state_feed
    assert feed is not None
    assert (feed.period, feed.codes["pavlodar-chp/stack1-gas/so2"]) == ("1h", "0330")


# -- every config and start-up mistake: one line, FILE:LINE: KEY: what, exit 1, through `check` and `run` -----


def line_of_text(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if needle in line)


def gateway_lines(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = gateway_main(list(argv))
    captured = capsys.readouterr()
    return code, [line for line in (captured.out + captured.err).splitlines() if line]


@pytest.fixture
def port_in_use() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


GATEWAY_MISTAKES = [
    # (id, config text, the key's text on its line (None: the file itself), key, what the line says)
    (
        "port-range",
        '[gateway]\nhttp = "127.0.0.1:70000"\n',
        "http =",
        "gateway.http",
        "must be 0 (any free port) ... 65535",
    ),
    ("port-in-use", '[gateway]\nhttp = "127.0.0.1:{port}"\n', "http =", "gateway.http", "the port is in use"),
    ("bad-host", '[gateway]\nhttp = "no-such-host.invalid:9108"\n', "http =", "gateway.http", "unknown host"),
    ("sites", '[mqtt]\nsites = "a/b"\n', "sites =", "mqtt.sites", "String should match pattern"),
    ("store-url", '[store]\nurl = "postgres://db/aua"\n', "url =", "store.url", "unknown store URL"),
    (
        "state-folder-missing",
        '[gateway]\nstate = "nowhere/state.sqlite"\n',
        "state =",
        "gateway.state",
        "does not exist",
    ),
    ("state-in-a-file", '[gateway]\nstate = "afile/state.sqlite"\n', "state =", "gateway.state", "is not a folder"),
    ("state-not-sqlite", '[gateway]\nstate = "afile"\n', "state =", "gateway.state", "is not a SQLite database"),
    ("state-is-a-folder", '[gateway]\nstate = "afolder"\n', "state =", "gateway.state", "afolder is a folder"),
    ("spool", '[gateway]\nspool = "nowhere/spool.sqlite"\n', "spool =", "gateway.spool", "does not exist"),
    ("sqlite-store", '[store]\nurl = "sqlite://nowhere/aua.sqlite"\n', "url =", "store.url", "does not exist"),
    ("ca-file", '[mqtt]\nca_file = "missing-ca.pem"\n', "ca_file =", "mqtt.ca_file", "does not exist"),
    ("password-file", '[mqtt]\npassword_file = "missing"\n', "password_file =", "mqtt.password_file", "cannot read"),
    ("placeholder", '[mqtt]\npassword = "change-me"\n', "password =", "mqtt.password", "placeholder"),
    ("rule-set", '[rollup]\nrule_set = "nope"\n', "rule_set =", "rollup.rule_set", "unknown rule set 'nope'"),
]


@pytest.mark.parametrize("case", [case[1:] for case in GATEWAY_MISTAKES], ids=[c[0] for c in GATEWAY_MISTAKES])
@pytest.mark.parametrize("command", ["check", "run"])
def test_each_gateway_mistake_is_one_line_in_check_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], port_in_use: int, command: str, case: tuple[str, ...]
) -> None:
    text, needle, key, what = case
    (tmp_path / "afile").write_text("a notes file, not a database\n")
    (tmp_path / "afolder").mkdir()
    if "state =" not in text:  # the default state folder (var/) does not exist here: a mistake of its own
        text = '[gateway]\nstate = "state.sqlite"\n' + text.removeprefix("[gateway]\n")
    text = text.replace("{port}", str(port_in_use))
    if "[store]" not in text:
        text += '[store]\nurl = "sqlite://aua.sqlite"\n'
    path = tmp_path / "gw.toml"
    path.write_text(text)
    code, lines = gateway_lines(capsys, command, str(path), *(["--no-servers"] if command == "check" else []))
    assert code == 1
    mine = [line for line in lines if line.startswith(f"{path}:")]
    assert len(mine) == 1, lines
    assert mine[0].startswith(f"{path}:{line_of_text(text, needle)}: {key}: "), mine[0]
    assert what in mine[0]
    assert lines == mine, "nothing else is printed: no traceback, no second line"
    assert not (tmp_path / "nowhere").exists(), "a missing folder is never created silently"


@pytest.mark.parametrize(
    ("content", "what"),
    [(None, "is a folder, not a config file"), (b'[gateway]\nid = "\xff"\n', "not UTF-8 text")],
    ids=["a-folder", "not-utf8"],
)
def test_an_unreadable_gateway_config_is_one_line(tmp_path: Path, content: bytes | None, what: str) -> None:
    """Through the installed command, so a traceback could not hide in pytest's capture."""
    path = tmp_path / "gw.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    for command in ("check", "run"):
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", command, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.splitlines() == [f"{path}: {what}" + result.stderr.split(what, 1)[1].rstrip("\n")]


def test_create_dirs_creates_the_folders_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\nstate = "new/state.sqlite"\ncreate_dirs = true\n[store]\nurl = "sqlite://new/a.sqlite"\n'
    )
    code, lines = gateway_lines(capsys, "check", str(path), "--no-servers")
    assert (code, lines) == (0, [f"{path}: ok"])
    assert not (tmp_path / "new").exists(), "check changes nothing"
    config = load_gateway_config(path)
    from gateway import preflight

    preflight.create_folders(config)
    assert (tmp_path / "new").is_dir()


def test_unreachable_broker_and_store_are_warnings_in_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway retries the broker and spools while InfluxDB is down, so `check` warns and exits 0."""
    broker, influx = free_port(), free_port()
    path = tmp_path / "gw.toml"
    text = (
        f'[gateway]\nstate = "state.sqlite"\n[mqtt]\nport = {broker}\n'
        f'[store]\nurl = "influx://aua:S3cret-pw@127.0.0.1:{influx}/aua?timeout=2"\n'
    )
    path.write_text(text)
    code, lines = gateway_lines(capsys, "check", str(path))
    assert code == 0
    assert lines[0].startswith(f"{path}:{line_of_text(text, '[mqtt]')}: mqtt: cannot reach 127.0.0.1:{broker}: ")
    assert lines[0].endswith("[warning]")
    assert lines[1].startswith(f"{path}:{line_of_text(text, 'url =')}: store.url: InfluxDB http://127.0.0.1:{influx}")
    assert "spools" in lines[1]
    assert lines[2:] == [f"{path}: ok, 2 warnings"]
    assert "S3cret-pw" not in "\n".join(lines)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def test_the_gateway_starts_with_influxdb_down_spools_and_drains(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """docs/gateway.md promises spooling while the store is down; that holds at start-up too."""
    influxd = InfluxServer(tmp_path / "influxd")  # not started yet
    url = influxd.database_url(unique_database_name("down_at_start"))
    config = tmp_path / "gw.toml"
    agent = f"a-{tmp_path.name[-8:]}"
    config.write_text(
        f'[gateway]\nstate = "state.sqlite"\nid = "gw-{agent}"\n'
        f'[mqtt]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\nsites = "down-at-start"\n'
        f'[store]\nurl = "{url}?timeout=2"\n'
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: "subscribed at" in log.read_text(), process, log)
        assert "does not answer at start" in log.read_text()
        now = datetime.now(UTC).replace(microsecond=0)
        reading = Reading(instrument="hg1", parameter="hg", value=4.9, unit="ng/m3", ts=now)
        payload = encode_batch(Batch(site="down-at-start", agent=agent, seq=0, sent_at=now, readings=[reading]))
        publish.single(
            readings_topic("down-at-start", agent), payload, qos=1, hostname=mosquitto.host, port=mosquitto.port
        )
        wait_for(lambda: "spooling to disk" in log.read_text(), process, log)
        influxd.start()
        wait_for(lambda: "spool drained" in log.read_text(), process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    try:
        assert code == 0, log.read_text()

        async def stored() -> dict[tuple[str, str], int]:
            async with open_store(url) as store:
                return await store.count_by_instrument()

        assert asyncio.run(stored()) == {("down-at-start", "hg1"): 1}
    finally:
        influxd.terminate()


AGENT_MISTAKES = [
    ("ca-file", '[mqtt]\nca_file = "missing-ca.pem"\n', "ca_file =", "mqtt.ca_file", "missing-ca.pem does not exist"),
    ("outbox-folder", 'outbox = "nowhere/outbox.sqlite"\n', "outbox =", "agent.outbox", "does not exist"),
    ("metrics-port", "metrics_port = {port}\n", "metrics_port =", "agent.metrics_port", "the port is in use"),
    ("password-file", '[mqtt]\npassword_file = "nope"\n', "password_file =", "mqtt.password_file", "cannot read"),
]


@pytest.mark.parametrize("case", [case[1:] for case in AGENT_MISTAKES], ids=[c[0] for c in AGENT_MISTAKES])
@pytest.mark.parametrize("command", ["check", "run"])
def test_each_agent_start_up_mistake_is_one_line_in_check_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], port_in_use: int, command: str, case: tuple[str, ...]
) -> None:
    addition, needle, key, what = case
    addition = addition.replace("{port}", str(port_in_use))
    outbox = 'outbox = "outbox.sqlite"\n'
    if addition.startswith("["):  # a table of its own, after the rest
        body = GOOD.replace('id = "a1"\n', f'id = "a1"\n{outbox}') + addition
    else:  # a key of [agent]
        body = GOOD.replace('id = "a1"\n', f'id = "a1"\n{addition if "outbox" in addition else outbox + addition}')
    path = write_site(tmp_path, body)
    argv = ["check", str(path), "--no-broker"] if command == "check" else ["run", str(path)]
    assert agent_main(argv) == 1
    captured = capsys.readouterr()
    expected = f"{path}:{line_of_text(body, needle)}: {key}: "
    if command == "run":  # run prints only the problem, on stderr
        [line] = captured.err.splitlines()
        assert line.startswith(expected), line
        assert what in line
        assert captured.out == ""
    else:  # check lists it among the problems (the unreachable instrument is one too)
        [line] = [row.removeprefix("  - ") for row in captured.out.splitlines() if row.startswith(f"  - {path}:")]
        assert line.startswith(expected), line
        assert what in line
    assert not (tmp_path / "nowhere").exists()
