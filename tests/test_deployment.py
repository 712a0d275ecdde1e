"""The production deployment files: docker-compose.yml validates, the broker's ACL holds against a real mosquitto.

No docker engine runs here, so the compose file is checked with `docker-compose config` (Debian package
docker-compose, installed by scripts/test) and the containers themselves are not started.
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
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
from edge_agent.config import load_config
from gateway.config import load_gateway_config
from gateway.stores import InfluxStore, open_store

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PASSWORDS = {
    "aua-gateway": "change-me-gateway",
    "chp-stack1": "change-me-chp-stack1",
    "pvl-station-1": "change-me-pvl-station-1",
}


def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed: run scripts/test (it installs the Debian package docker-compose), "
            "or apt-get install docker-compose",
            pytrace=False,
        )
    return binary


def test_docker_compose_config_validates() -> None:
    binary = docker_compose()
    result = subprocess.run(
        [binary, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services = subprocess.run(
        [binary, "-f", str(REPO / "docker-compose.yml"), "config", "--services"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert set(services) == {"mosquitto", "influxdb", "grafana", "gateway", "simulator", "agent"}


def test_compose_mounts_exist_and_images_are_the_intended_ones() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    for source in re.findall(r"- \./([^:]+):", text):
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


def test_deployed_configs_load_and_agree_with_the_broker_users() -> None:
    gateway = load_gateway_config(DEPLOY / "gateway.toml")
    store = open_store(gateway.store.url)
    assert isinstance(store, InfluxStore)
    assert store.database == "aua"
    assert gateway.mqtt.username == "aua-gateway"
    agent = load_config(DEPLOY / "agent.toml").config
    assert agent.mqtt.username == agent.agent.id, "the ACL keys on the username: it must be the agent id"
    assert gateway.mqtt.password is not None
    assert agent.mqtt.password is not None
    users = {line.split(":")[0] for line in (DEPLOY / "mosquitto" / "passwd").read_text().splitlines() if line}
    assert {"aua-gateway", agent.agent.id} <= users
    assert f"{agent.agent.site}/{agent.agent.id}" in gateway.registry.agents


def test_acl_has_the_per_agent_shape() -> None:
    lines = [line.split("#")[0].strip() for line in (DEPLOY / "mosquitto" / "acl").read_text().splitlines()]
    rules = [line for line in lines if line]
    assert "pattern write aua/v1/+/%u/readings" in rules
    assert "pattern write aua/v1/+/%u/status" in rules
    assert "pattern read aua/v1/+/%u/resend" in rules
    gateway = rules[rules.index("user aua-gateway") + 1 :]
    assert "topic read aua/v1/+/+/readings" in gateway
    assert "topic write aua/v1/+/+/resend" in gateway
    # no rule grants an agent (a pattern) anything outside its own id
    assert all("%u" in rule for rule in rules if rule.startswith("pattern"))
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf
    assert "acl_file" in conf
    assert "password_file" in conf


# -- the ACL, enforced by a real mosquitto -------------------------------------------------------------------


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[int]:
    """mosquitto on a free port with the deployment's password file and ACL (only the listener differs)."""
    port = free_port()
    passwd = tmp_path / "passwd"
    shutil.copy(DEPLOY / "mosquitto" / "passwd", passwd)
    passwd.chmod(0o600)
    acl = tmp_path / "acl"
    shutil.copy(DEPLOY / "mosquitto" / "acl", acl)
    acl.chmod(0o600)
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
        # run as root, mosquitto would switch to user `mosquitto`, who cannot read this test's private folder
        f"persistence false\nlog_dest stderr\nuser {getpass.getuser()}\n"
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
            yield port
        finally:
            process.terminate()
            process.wait(timeout=10)


class Client:
    def __init__(self, port: int, user: str, password: str) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-test-{user}")
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
        self.client.loop_stop()
        self.client.disconnect()


def test_an_agent_may_publish_only_under_its_own_id(secured_broker: int) -> None:
    port = secured_broker
    gateway = Client(port, "aua-gateway", PASSWORDS["aua-gateway"])
    chp = Client(port, "chp-stack1", PASSWORDS["chp-stack1"])
    station = Client(port, "pvl-station-1", PASSWORDS["pvl-station-1"])
    try:
        gateway.subscribe("aua/v1/+/+/readings")
        gateway.subscribe("aua/v1/+/+/status")
        chp.subscribe("aua/v1/+/+/resend")  # may only ever receive its own
        station.subscribe("aua/v1/#")  # an agent reading everything: the ACL delivers it nothing of others
        time.sleep(0.3)
        own = readings_topic("pavlodar-chp", "chp-stack1")
        forged = readings_topic("pavlodar-ambient", "pvl-station-1")
        chp.publish(own)
        chp.publish(forged)  # under another agent's id: the broker drops it
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


def test_a_wrong_password_is_refused(secured_broker: int) -> None:
    client = Client(secured_broker, "chp-stack1", "wrong")
    try:
        assert getattr(client.result, "is_failure", False), client.result
    finally:
        client.close()
