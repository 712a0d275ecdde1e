"""MQTT over TLS with client certificates, against a real mosquitto with a TLS listener.

The certificates are made here with the openssl command line (a CA, the broker's certificate for
127.0.0.1, client certificates): the agent publishes with its certificate, a subscriber and the gateway
with their own receive the batches; a wrong CA and a missing client certificate are refused and `check`
says so. Agent and gateway take the same [mqtt] keys (aua_mqtt).
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import uuid
from pathlib import Path

import aiomqtt
import pytest
from agent_site import write_site
from gateway_run import eventually, running_gateway
from ports import free_port
from servers import MosquittoServer, find_binary

from aua_contract import decode_batch, decode_status, readings_topic, status_topic
from aua_simulator.modbus_servers import simulator_for_config
from edge_agent.commissioning import broker_problem
from edge_agent.config import LoadedConfig, MqttSection, load_config
from edge_agent.poller import Agent
from gateway.config import GatewayConfig
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.stores import open_store


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([find_binary("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip


def make_certificate(folder: Path, ca: str, name: str, extensions: str) -> None:
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    (folder / f"{name}.ext").write_text(
        f"{extensions}\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\nbasicConstraints=CA:FALSE\n"
    )
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=folder,
    )  # fmt: skip


class TlsMosquitto(MosquittoServer):
    """mosquitto with one TLS listener that requires a client certificate signed by the test CA."""

    def __init__(self, workdir: Path, certs: Path) -> None:
        super().__init__(workdir)
        self.certs = certs

    def config_text(self) -> str:
        # `user root`: started as root, mosquitto would switch to its own user, who cannot read pytest's
        # 0700 temporary folders; it has no effect when the tests do not run as root.
        return f"""\
user root
listener {self.port} {self.host}
cafile {self.certs / "ca.crt"}
certfile {self.certs / "broker.crt"}
keyfile {self.certs / "broker.key"}
require_certificate true
use_identity_as_username true
persistence false
log_dest stderr
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_certificate(folder, "ca", "broker", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth")
    make_certificate(folder, "ca", "agent", "extendedKeyUsage=clientAuth")
    make_certificate(folder, "ca", "gateway", "extendedKeyUsage=clientAuth")
    return folder


@pytest.fixture
def tls_broker(tmp_path: Path, certs: Path) -> MosquittoServer:
    broker = TlsMosquitto(tmp_path / "mosquitto", certs)
    broker.start()
    yield broker  # type: ignore[misc]
    broker.terminate()


def tls_agent(broker: MosquittoServer, certs: Path, folder: Path) -> LoadedConfig:
    """An agent site with one simulated mercury analyzer, publishing over TLS with its client certificate."""
    agent_id = f"tls-{uuid.uuid4().hex[:6]}"
    site_file = write_site(
        folder / "site.toml",
        agent={"site": "tls-site", "id": agent_id, "poll_interval": 0.2, "outbox": str(folder / "o.sqlite")},
        mqtt={
            "host": broker.host,
            "port": broker.port,
            "tls": True,
            "ca_file": str(certs / "ca.crt"),
            "cert_file": str(certs / "agent.crt"),
            "key_file": str(certs / "agent.key"),
        },
        instruments=[{"id": "hg", "profile": "mercury-analyzer", "port": free_port(), "device_id": 1}],
    )
    return load_config(site_file)


async def test_the_agent_publishes_over_tls_with_its_client_certificate(
    tls_broker: MosquittoServer, certs: Path, tmp_path: Path
) -> None:
    loaded = tls_agent(tls_broker, certs, tmp_path)
    agent_id = loaded.config.agent.id
    subscriber = MqttSection(
        host=tls_broker.host,
        port=tls_broker.port,
        ca_file=certs / "ca.crt",
        cert_file=certs / "gateway.crt",
        key_file=certs / "gateway.key",
    )
    seqs: list[int] = []
    async with (
        simulator_for_config(loaded),
        aiomqtt.Client(
            tls_broker.host, tls_broker.port, identifier=f"sub-{agent_id}", tls_context=subscriber.tls_context()
        ) as client,
    ):
        await client.subscribe(readings_topic("tls-site", agent_id), qos=1)
        await client.subscribe(status_topic("tls-site", agent_id), qos=1)
        agent = Agent(loaded)
        running = asyncio.create_task(agent.run())
        statuses = []
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if message.topic.matches(status_topic("tls-site", agent_id)):
                    statuses.append(decode_status(message.payload).state.value)
                    continue
                seqs.append(decode_batch(message.payload).seq)
                if len(seqs) >= 3:
                    break
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert seqs == [0, 1, 2]
    assert "online" in statuses
    assert await broker_problem(loaded.config.mqtt, f"check-{agent_id}") is None


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"ca_file": "other-ca.crt", "cert_file": "agent.crt", "key_file": "agent.key"}, "CERTIFICATE_VERIFY_FAILED"),
        ({"ca_file": "ca.crt"}, "refused the TLS session"),  # no client certificate
        ({"tls": False}, "no MQTT answer"),  # plain MQTT to a TLS port
        ({"ca_file": "missing.crt"}, "TLS files cannot be used"),
    ],
    ids=["wrong-ca", "no-client-certificate", "no-tls", "missing-ca-file"],
)
async def test_the_broker_check_names_tls_problems(
    tls_broker: MosquittoServer, certs: Path, settings: dict[str, object], expected: str
) -> None:
    fields = {key: certs / str(value) if key.endswith("_file") else value for key, value in settings.items()}
    mqtt = MqttSection.model_validate({"host": tls_broker.host, "port": tls_broker.port, **fields})
    problem = await broker_problem(mqtt, f"check-{uuid.uuid4().hex[:6]}", timeout_s=1.5)
    assert problem is not None
    assert expected in problem


def test_insecure_skips_verification_and_says_so() -> None:
    context = MqttSection(insecure=True).tls_context()
    assert context is not None
    assert (context.check_hostname, context.verify_mode.name) == (False, "CERT_NONE")
    assert MqttSection().tls_context() is None


def gateway_config(broker: MosquittoServer, certs: Path, tmp_path: Path, ca: str) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "gateway": {"id": f"gw-{uuid.uuid4().hex[:6]}", "state": str(tmp_path / "state.sqlite")},
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "sites": "tls-site",
                "ca_file": str(certs / ca),
                "cert_file": str(certs / "gateway.crt"),
                "key_file": str(certs / "gateway.key"),
            },
            "store": {"url": f"sqlite://{tmp_path / 'aua.sqlite'}"},
        }
    )


async def test_the_gateway_subscribes_over_tls_with_its_client_certificate(
    tls_broker: MosquittoServer, certs: Path, tmp_path: Path
) -> None:
    """Agent → TLS broker → gateway → store, both sides with client certificates; every sealed batch stored."""
    loaded = tls_agent(tls_broker, certs, tmp_path)
    agent_id = loaded.config.agent.id
    config = gateway_config(tls_broker, certs, tmp_path, "ca.crt")
    async with running_gateway(config) as ingest, simulator_for_config(loaded):
        running = asyncio.create_task(Agent(loaded).run())
        await eventually(lambda: ingest.stats.batches >= 3)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await asyncio.wait_for(ingest.flushed(), timeout=10)
        [account] = ingest.ledger.accounts()
        stored = sum((await ingest.store.count_by_instrument()).values())
    assert (account.agent, account.first_seq, account.missing) == (agent_id, 0, 0)
    assert account.batches >= 3
    assert stored == account.readings > 0


# paho-mqtt 2.2 does not close the TLS socket of a failed handshake (client.py, _ssl_wrap_socket): it is
# closed when collected, with a ResourceWarning. Collected here, so the warning cannot land in a later test.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_gateway_that_does_not_trust_the_broker_never_subscribes(
    tls_broker: MosquittoServer, certs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config(tls_broker, certs, tmp_path, "other-ca.crt")
    store = open_store(config.store.url)
    await store.open()
    ledger = Ledger(config.gateway.state)
    ingest = Ingest(config, store, ledger)
    gateway = asyncio.create_task(ingest.run())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ingest.connected.wait(), timeout=2)
    gateway.cancel()
    await asyncio.gather(gateway, return_exceptions=True)
    await store.close()
    ledger.close()
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    caplog.clear()  # its records hold the errors, whose tracebacks hold the sockets
    gc.collect()
