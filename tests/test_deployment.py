"""The production deployment files: docker-compose.yml validates, the broker's ACL holds against a real mosquitto.

No docker engine runs here, so the compose file is checked with `docker-compose config` (Debian package
docker-compose, installed by scripts/test) and the containers themselves are not started.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from ports import free_port
from servers import find_binary, port_open

from aua_contract import readings_topic, resend_topic, status_topic
from aua_ops import ConfigError
from edge_agent.config import load_config
from gateway.cli import main as gateway_main
from gateway.config import GatewayConfigError, load_gateway_config
from gateway.stores import InfluxStore, open_store

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
CHP = "pavlodar-chp/chp-stack1"
STATION = "pavlodar-ambient/pvl-station-1"
SECRET_ENV = (
    "AUA_INFLUX_ADMIN_PASSWORD",
    "AUA_INFLUX_ADMIN_TOKEN",
    "AUA_INFLUX_GATEWAY_PASSWORD",
    "AUA_INFLUX_READ_PASSWORD",
    "AUA_GRAFANA_ADMIN_PASSWORD",
)


def generated_secrets(root: Path, *, extra_agents: tuple[str, ...] = ()) -> Path:
    """deploy/init-secrets.py run on a copy of deploy/ under `root` (never in the repository); returns root."""
    shutil.copytree(DEPLOY, root / "deploy", ignore=shutil.ignore_patterns("secrets"))
    shutil.copytree(REPO / "config" / "profiles", root / "config" / "profiles")  # deploy/agent.toml's profiles
    gateway = root / "deploy" / "gateway.toml"
    if extra_agents:
        text = gateway.read_text()
        listed = ", ".join(f'"{agent}"' for agent in extra_agents)
        gateway.write_text(text.replace(f'agents = ["{CHP}"]', f'agents = ["{CHP}", {listed}]'))
    subprocess.run(
        [sys.executable, str(DEPLOY / "init-secrets.py"), "--root", str(root)], check=True, capture_output=True
    )
    return root


def mqtt_password(root: Path, user: str) -> str:
    return (root / "deploy" / "secrets" / "mqtt" / user).read_text().splitlines()[0]


def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed: run scripts/test (it installs the Debian package docker-compose), "
            "or apt-get install docker-compose",
            pytrace=False,
        )
    return binary


def compose(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    empty = cwd / ".no-env"  # never the developer's own .env
    empty.write_text("")
    try:
        return subprocess.run(
            [docker_compose(), "-f", str(REPO / "docker-compose.yml"), "--env-file", str(empty), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={key: value for key, value in os.environ.items() if not key.startswith("AUA_")} | env,
        )
    finally:
        empty.unlink()


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    secrets = {key: f"generated-{index}" for index, key in enumerate(SECRET_ENV)}
    result = compose("config", "-q", env=secrets, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    services = compose("config", "--services", env=secrets, cwd=tmp_path).stdout.split()
    assert set(services) == {"mosquitto", "influxdb", "grafana", "gateway", "simulator", "agent"}


def test_compose_refuses_to_start_without_generated_secrets(tmp_path: Path) -> None:
    """No password has a default: without .env (deploy/init-secrets.py writes it) compose stops and says why."""
    result = compose("config", "-q", env={}, cwd=tmp_path)
    assert result.returncode != 0
    assert "run python3 deploy/init-secrets.py" in result.stderr
    text = (REPO / "docker-compose.yml").read_text()
    assert "change-me" not in text
    assert not (DEPLOY / "mosquitto" / "passwd").exists(), "no password file ships: init-secrets.py makes it"
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if line.startswith("AUA_") and line.split("=", 1)[0] in SECRET_ENV:
            assert line.endswith("="), f"env.example ships a value: {line}"


def published_ports(text: str) -> dict[str, list[str]]:
    """service -> its `ports:` entries, read from the compose file's short syntax."""
    ports: dict[str, list[str]] = {}
    service = None
    in_ports = False
    for line in text.splitlines():
        if re.match(r"^  [a-z][a-z0-9_-]*:\s*$", line):
            service, in_ports = line.strip().rstrip(":"), False
        elif re.match(r"^    ports:\s*$", line):
            in_ports = True
        elif in_ports and (entry := re.match(r'^      - "?([^"]+)"?\s*$', line)):
            ports.setdefault(str(service), []).append(entry.group(1))
        elif not line.startswith("      "):
            in_ports = False
    return ports


def test_only_grafana_is_published_beyond_localhost() -> None:
    """docs/deployment.md: the broker's plain port, InfluxDB and /metrics stay internal."""
    ports = published_ports((REPO / "docker-compose.yml").read_text())
    assert ports["grafana"] == ["3000:3000"]
    assert set(ports) == {"grafana", "mosquitto", "influxdb", "gateway"}
    for service, entries in ports.items():
        if service != "grafana":
            assert all(entry.startswith("127.0.0.1:") for entry in entries), (service, entries)


def test_compose_mounts_exist_and_images_are_the_intended_ones(tmp_path: Path) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    root = generated_secrets(tmp_path)
    for source in re.findall(r"- \./([^:]+):", text):
        if source.startswith("deploy/secrets/"):
            assert (root / source).is_file(), f"deploy/init-secrets.py does not make ./{source}, which compose mounts"
        else:
            assert (REPO / source).exists(), f"docker-compose.yml mounts ./{source}, which does not exist"
    assert "image: influxdb:2.7" in text
    assert "image: grafana/grafana-oss:" in text
    assert "image: eclipse-mosquitto:2" in text
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert dockerfile.startswith("#")
    assert "FROM python:3.11-slim" in dockerfile
    assert "uv sync --frozen" in dockerfile


def test_the_image_copies_every_package_the_project_ships() -> None:
    """No Docker engine here to build it; at least the Dockerfile must copy each package pyproject.toml builds
    (aua_mqtt was once missing)."""
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "packages"
    ]
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert [p for p in packages if f"COPY {p} ./{p}" not in dockerfile] == []


def test_influxdb_init_script_maps_the_v1_database() -> None:
    script = DEPLOY / "influxdb" / "init.sh"
    assert script.stat().st_mode & 0o111, "init.sh must be executable"
    text = script.read_text()
    assert "influx v1 dbrp create" in text
    assert text.count("influx v1 auth create") == 2
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def deployed_copy(root: Path, name: str) -> Path:
    """deploy/NAME with the container's /run/secrets mounts pointed at the generated files, as compose does."""
    text = (root / "deploy" / name).read_text()
    secrets = root / "deploy" / "secrets"
    user = "aua-gateway" if name == "gateway.toml" else CHP
    text = text.replace("/run/secrets/mqtt-password", str(secrets / "mqtt" / user))
    text = text.replace("/run/secrets/influx-password", str(secrets / "influx-gateway"))
    path = root / "deploy" / f"resolved-{name}"
    path.write_text(text)
    return path


def test_deployed_configs_load_and_agree_with_the_broker_users(tmp_path: Path) -> None:
    root = generated_secrets(tmp_path)
    gateway = load_gateway_config(deployed_copy(root, "gateway.toml"))
    store = open_store(gateway.store.url)
    assert isinstance(store, InfluxStore)
    assert store.database == "aua"
    password = (root / "deploy" / "secrets" / "influx-gateway").read_text().splitlines()[0]
    assert store._password == password  # from the password file, not the config
    assert gateway.mqtt.username == "aua-gateway"
    # the broker replaces the client id by the username: the config says the same
    assert gateway.mqtt.client_id == gateway.mqtt.username
    assert gateway.mqtt.password_value() == mqtt_password(root, "aua-gateway")
    agent = load_config(deployed_copy(root, "agent.toml")).config
    assert agent.mqtt.username == f"{agent.agent.site}/{agent.agent.id}", "the ACL keys on SITE/AGENT"
    assert agent.mqtt.password_value() == mqtt_password(root, CHP)
    users = {line.split(":")[0] for line in (root / "deploy/secrets/mosquitto-passwd").read_text().splitlines()}
    assert users == {"aua-gateway", CHP}
    assert f"{agent.agent.site}/{agent.agent.id}" in gateway.registry.agents
    env = dict(line.split("=", 1) for line in (root / ".env").read_text().splitlines() if "=" in line)
    assert set(SECRET_ENV) <= set(env)
    assert env["AUA_INFLUX_GATEWAY_PASSWORD"] == password
    assert len(set(env.values())) == len(env), "every secret its own"


def test_init_secrets_never_overwrites_and_adds_new_agents(tmp_path: Path) -> None:
    root = generated_secrets(tmp_path)
    before = mqtt_password(root, CHP), (root / ".env").read_text()
    gateway = root / "deploy" / "gateway.toml"
    gateway.write_text(gateway.read_text().replace(f'agents = ["{CHP}"]', f'agents = ["{CHP}", "{STATION}"]'))
    subprocess.run([sys.executable, str(DEPLOY / "init-secrets.py"), "--root", str(root)], check=True)
    assert (mqtt_password(root, CHP), (root / ".env").read_text()) == before
    assert mqtt_password(root, STATION)
    assert oct((root / "deploy" / "secrets").stat().st_mode & 0o777) == "0o700"


MQTT_PASSWORD_FILE = 'password_file = "/run/secrets/mqtt-password"'


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        (
            "gateway.toml",
            'password_file = "/run/secrets/mqtt-password"',
            'password = "change-me-gateway"',
            "mqtt.password",
        ),
        ("agent.toml", 'password_file = "/run/secrets/mqtt-password"', 'password = "change-me-chp"', "mqtt.password"),
        (
            "gateway.toml",
            'url = "influx://aua-gateway@influxdb:8086/aua"\npassword_file = "/run/secrets/influx-password"',
            'url = "influx://aua-gateway:change-me-influx-gateway@influxdb:8086/aua"',
            "store.url",
        ),
    ],
)
def test_placeholder_passwords_are_refused(tmp_path: Path, name: str, old: str, new: str, expected: str) -> None:
    text = (DEPLOY / name).read_text()
    assert old in text
    path = tmp_path / name
    text = text.replace(old, new)
    path.write_text(text)
    line = next(
        number for number, line in enumerate(text.splitlines(), 1) if line.startswith(new.split(" ", maxsplit=1)[0])
    )
    error: type[Exception] = GatewayConfigError if name == "gateway.toml" else ConfigError
    with pytest.raises(error) as caught:
        (load_gateway_config if name == "gateway.toml" else load_config)(path)  # type: ignore[operator]
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: {expected}: ")
    assert "placeholder" in message
    assert "change-me" not in message  # the refused password is not shown either


def test_acl_has_the_per_agent_shape() -> None:
    lines = [line.split("#")[0].strip() for line in (DEPLOY / "mosquitto" / "acl").read_text().splitlines()]
    rules = [line for line in lines if line]
    assert "pattern write aua/v1/%u/readings" in rules
    assert "pattern write aua/v1/%u/status" in rules
    assert "pattern read aua/v1/%u/resend" in rules
    gateway = rules[rules.index("user aua-gateway") + 1 :]
    assert "topic read aua/v1/+/+/readings" in gateway
    assert "topic write aua/v1/+/+/resend" in gateway
    # no rule grants an agent (a pattern) anything outside its own site and id
    assert all("%u" in rule and "+" not in rule for rule in rules if rule.startswith("pattern"))
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    assert "allow_anonymous false" in conf
    assert "use_username_as_clientid true" in conf
    assert any(line.startswith("acl_file") for line in conf)
    assert any(line.startswith("password_file") for line in conf)


# -- the ACL, enforced by a real mosquitto -------------------------------------------------------------------


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """mosquitto on a free port with the shipped mosquitto.conf's settings, ACL and a password file generated
    by deploy/init-secrets.py (only listener, files, persistence and logging differ)."""
    root = generated_secrets(tmp_path / "root", extra_agents=(STATION,))
    port = free_port()
    acl = tmp_path / "acl"
    shutil.copy(DEPLOY / "mosquitto" / "acl", acl)
    acl.chmod(0o600)
    passwd = tmp_path / "passwd"
    shutil.copy(root / "deploy/secrets/mosquitto-passwd", passwd)
    passwd.chmod(0o600)
    local = ("listener", "password_file", "acl_file", "persistence", "log_dest")
    shipped = [
        line
        for line in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(local)
    ]
    config = tmp_path / "mosquitto.conf"
    # our listener first: the shipped per-listener settings (use_username_as_clientid) then apply to it
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        + "\n".join(shipped)
        + f"\npassword_file {passwd}\nacl_file {acl}\n"
        # run as root, mosquitto would switch to user `mosquitto`, who cannot read this test's private folder
        + f"persistence false\nlog_dest stderr\nuser {getpass.getuser()}\n"
    )
    with (tmp_path / "mosquitto.log").open("wb") as log:
        process = subprocess.Popen(
            [find_binary("mosquitto"), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
        )
        try:
            deadline = time.monotonic() + 10
            while not port_open("127.0.0.1", port):
                assert process.poll() is None, (tmp_path / "mosquitto.log").read_text()
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.02)
            yield port, root
        finally:
            process.terminate()
            process.wait(timeout=10)


class Client:
    def __init__(
        self, port: int, user: str, password: str, *, client_id: str | None = None, clean: bool = True
    ) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"acl-test-{user}", clean_session=clean
        )
        self.client.username_pw_set(user, password)
        self.client.on_message = self._message
        self.result: object = None
        connected = threading.Event()

        def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
            self.result = reason
            connected.set()

        self.client.on_connect = on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(10), f"{user}: no CONNACK"

    def _message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append(message.topic)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    def publish(self, topic: str) -> None:
        self.client.publish(topic, b"{}", qos=1).wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_an_agent_may_publish_only_under_its_own_site_and_id(secured_broker: tuple[int, Path]) -> None:
    port, root = secured_broker
    gateway = Client(port, "aua-gateway", mqtt_password(root, "aua-gateway"))
    chp = Client(port, CHP, mqtt_password(root, CHP))
    station = Client(port, STATION, mqtt_password(root, STATION))
    try:
        gateway.subscribe("aua/v1/+/+/readings")
        gateway.subscribe("aua/v1/+/+/status")
        chp.subscribe("aua/v1/+/+/resend")  # may only ever receive its own
        station.subscribe("aua/v1/#")  # an agent reading everything: the ACL delivers it nothing of others
        time.sleep(0.3)
        own = readings_topic("pavlodar-chp", "chp-stack1")
        chp.publish(own)
        chp.publish(readings_topic("pavlodar-ambient", "pvl-station-1"))  # another agent's id: dropped
        chp.publish(readings_topic("pavlodar-ambient", "chp-stack1"))  # its own id under another site: dropped
        chp.publish(status_topic("pavlodar-ambient", "chp-stack1"))  # the same for status
        chp.publish(status_topic("pavlodar-chp", "chp-stack1"))
        chp.publish(resend_topic("pavlodar-chp", "chp-stack1"))  # only the gateway may ask for a resend
        gateway.publish(resend_topic("pavlodar-chp", "chp-stack1"))
        gateway.publish(resend_topic("pavlodar-ambient", "pvl-station-1"))
        station.publish(readings_topic("pavlodar-ambient", "pvl-station-1"))
        time.sleep(1.0)
        assert sorted(gateway.received) == sorted(
            [own, status_topic("pavlodar-chp", "chp-stack1"), readings_topic("pavlodar-ambient", "pvl-station-1")]
        )
        assert chp.received == [resend_topic("pavlodar-chp", "chp-stack1")]
        assert station.received == [resend_topic("pavlodar-ambient", "pvl-station-1")]
    finally:
        for client in (gateway, chp, station):
            client.close()


def test_an_agent_credential_cannot_take_over_the_gateways_session(secured_broker: tuple[int, Path]) -> None:
    """With use_username_as_clientid the broker ignores the client id a client asks for: an agent connecting
    as "aua-gateway" with a clean session gets its own id, and the gateway's queued QoS 1 messages stay queued
    for the gateway. (Without it, measured: the clean-session connect discards them.)"""
    port, root = secured_broker
    gateway_password = mqtt_password(root, "aua-gateway")
    gateway = Client(port, "aua-gateway", gateway_password, client_id="aua-gateway", clean=False)
    gateway.subscribe("aua/v1/+/+/readings")
    time.sleep(0.3)
    gateway.close()  # offline: its persistent session queues what arrives
    agent = Client(port, CHP, mqtt_password(root, CHP))
    topic = readings_topic("pavlodar-chp", "chp-stack1")
    for _ in range(3):
        agent.publish(topic)
    agent.close()
    intruder = Client(port, CHP, mqtt_password(root, CHP), client_id="aua-gateway", clean=True)
    time.sleep(0.3)
    intruder.close()
    back = Client(port, "aua-gateway", gateway_password, client_id="aua-gateway", clean=False)
    try:
        deadline = time.monotonic() + 5
        while len(back.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert back.received == [topic] * 3
    finally:
        back.close()


def test_a_wrong_password_is_refused(secured_broker: tuple[int, Path]) -> None:
    port, _ = secured_broker
    client = Client(port, CHP, "wrong")
    try:
        assert getattr(client.result, "is_failure", False), client.result
    finally:
        client.close()


def test_gateway_check_logs_in_only_when_asked(
    secured_broker: tuple[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port, root = secured_broker
    password = tmp_path / "mqtt-password"
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nstate = "state.sqlite"\n[mqtt]\nport = {port}\nusername = "aua-gateway"\n'
        f'password_file = "{password}"\n[store]\nurl = "sqlite://aua.sqlite"\n'
    )
    password.write_text("wrong-password\n")
    assert gateway_main(["check", str(config)]) == 0  # reached: no login, so the wrong password goes unnoticed
    assert capsys.readouterr().out.splitlines() == [f"{config}: ok"]
    assert gateway_main(["check", str(config), "--login"]) == 0  # a warning: the gateway would retry
    [warning, ok] = capsys.readouterr().out.splitlines()
    assert warning.startswith(f"{config}:3: mqtt: 127.0.0.1:{port}: ")
    assert warning.endswith("Not authorized (the gateway retries until it connects) [warning]")
    assert "wrong-password" not in warning
    assert ok == f"{config}: ok, 1 warning"
    password.write_text(mqtt_password(root, "aua-gateway") + "\n")
    assert gateway_main(["check", str(config), "--login"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{config}: ok"]
