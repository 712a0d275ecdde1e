"""The foundation slice end to end, all real: pymodbus simulator -> agents -> mosquitto -> gateway -> store.

Asserts exact accounting (every sealed batch stored once) and that every stored value is one the
simulator served, decoded: a wrong byte order, scale or register offset anywhere shows up here.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from eventually import eventually
from ports import free_port
from servers import MosquittoServer

from aua_contract import Quality, decode_batch
from aua_demo.sites import demo_sites, relocate
from aua_simulator.modbus_servers import simulator_for_config
from edge_agent.config import LoadedConfig
from edge_agent.outbox import Outbox
from edge_agent.poller import Agent
from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.stores import StoredReading, open_store

POLL_SECONDS = 4.5


@pytest.fixture(params=["sqlite", "influxdb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/aua.sqlite"
    return str(request.getfixturevalue("influx_db_url"))


def sites_on(broker: MosquittoServer, workdir: Path) -> list[LoadedConfig]:
    """The demo's sites on this broker, under agent ids of this test's own: the shared broker keeps other
    tests' retained statuses of the demo agents, whose next_seq would make the gateway ask for batches again."""
    sites = []
    run = uuid.uuid4().hex[:8]
    for loaded in demo_sites():
        ports = {port: free_port() for port in {i.config.port for i in loaded.instruments}}
        site = relocate(loaded, broker_host=broker.host, broker_port=broker.port, ports=ports, workdir=workdir)
        site.config.agent.id = f"{site.config.agent.id}-{run}"
        sites.append(site)
    return sites


def sealed_readings(sites: list[LoadedConfig]) -> tuple[dict[str, int], list[StoredReading]]:
    """Everything the agents put in their outboxes, read back from disk."""
    sealed: dict[str, int] = {}
    readings = []
    for site in sites:
        outbox = Outbox(site.config.agent.outbox)
        batches = outbox.get(0, 1 << 62)
        outbox.close()
        sealed[site.config.agent.id] = len(batches)
        for _, payload in batches:
            batch = decode_batch(payload)
            readings += [StoredReading.from_reading(batch.site, batch.agent, r) for r in batch.readings]
    return sealed, readings


async def test_simulator_to_store_exactly(store_url: str, mosquitto: MosquittoServer, tmp_path: Path) -> None:
    sites = sites_on(mosquitto, tmp_path)
    simulator = simulator_for_config(sites, seed=11)
    gateway_config = GatewayConfig(
        gateway=GatewaySection(id=f"e2e-{uuid.uuid4().hex[:8]}", state=tmp_path / "gateway-state.sqlite"),
        mqtt=MqttSection(host=mosquitto.host, port=mosquitto.port),
        store=StoreSection(url=store_url),
    )
    store = open_store(store_url)
    await store.open()
    ledger = Ledger(gateway_config.gateway.state)
    async with simulator:
        ingest = Ingest(gateway_config, store, ledger)
        gateway = asyncio.create_task(ingest.run())
        await asyncio.wait_for(ingest.connected.wait(), timeout=10)
        agents = [Agent(site) for site in sites]
        running = [asyncio.create_task(agent.run()) for agent in agents]
        await asyncio.sleep(POLL_SECONDS)  # the run itself: agents polling for a while, not a wait for an event
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        total = sum(agent.outbox_stats().next_seq for agent in agents)
        await eventually(lambda: sum(a.batches for a in ledger.accounts()) >= total, timeout=30)
        gateway.cancel()
        await asyncio.gather(gateway, return_exceptions=True)

        sealed, expected = sealed_readings(sites)
        stored = await store.query()
        counts = await store.count_by_instrument()
    await store.close()
    accounts = {account.agent: account for account in ledger.accounts()}
    ledger.close()

    # Accounting: every sealed batch arrived exactly once, numbered from 0 without a gap.
    assert set(accounts) == set(sealed)
    for agent_id, batches in sealed.items():
        assert batches >= 3, f"{agent_id} sealed only {batches} batches in {POLL_SECONDS} s"
        account = accounts[agent_id]
        assert (account.batches, account.first_seq, account.last_seq, account.missing) == (batches, 0, batches - 1, 0)
        assert account.duplicates == 0
    assert ingest.stats.dead_letters == 0

    # Transport: the store holds exactly what the agents sealed, field for field.
    key = lambda r: (r.site, r.instrument, r.parameter, r.ts)  # noqa: E731
    assert sorted(stored, key=key) == sorted(expected, key=key)
    per_instrument: dict[tuple[str, str], int] = {}
    for reading in expected:
        per_instrument[reading.site, reading.instrument] = per_instrument.get((reading.site, reading.instrument), 0) + 1
    assert counts == per_instrument
    instruments = {i.id for site in sites for i in site.instruments}
    assert {instrument for _, instrument in counts} == instruments

    # Fidelity: every value and status word is one the simulator served, decoded.
    assert all(r.quality is not Quality.FAILURE for r in stored), "no read should fail against a healthy simulator"
    profiles = {i.id: i.profile for site in sites for i in site.instruments}
    for reading in stored:
        assert reading.value is not None
        assert reading.value in simulator.served_values(reading.instrument, reading.parameter), reading
        block = profiles[reading.instrument].tag_named(reading.parameter).status
        if block is not None:
            assert reading.status in simulator.served_status(reading.instrument, block), reading
