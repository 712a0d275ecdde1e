"""InfluxDB stopped and restarted under load: the gateway spools to disk, drains, and loses or doubles nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventually import eventually
from ports import free_port
from servers import InfluxServer, MosquittoServer

from aua_contract import decode_batch
from aua_demo.sites import demo_sites, relocate
from aua_simulator.modbus_servers import simulator_for_config
from edge_agent.outbox import Outbox
from edge_agent.poller import Agent
from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.stores import open_store


@pytest.fixture
def own_influxdb(tmp_path: Path) -> Iterator[InfluxServer]:
    """An influxd of this test's own, free to kill and start again on the same port and data."""
    server = InfluxServer(tmp_path / "influxd")
    server.start()
    yield server
    server.terminate()


async def test_influxdb_outage_is_spooled_and_drained(
    own_influxdb: InfluxServer, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    sites = []
    run = uuid.uuid4().hex[:8]
    for loaded in demo_sites():
        ports = {port: free_port() for port in {i.config.port for i in loaded.instruments}}
        site = relocate(loaded, broker_host=mosquitto.host, broker_port=mosquitto.port, ports=ports, workdir=tmp_path)
        site.config.agent.id = f"{site.config.agent.id}-{run}"  # the shared broker keeps other tests' statuses
        sites.append(site)
    url = own_influxdb.database_url(f"outage_{uuid.uuid4().hex[:8]}")
    config = GatewayConfig(
        gateway=GatewaySection(id=f"gw-{uuid.uuid4().hex[:8]}", state=tmp_path / "state.sqlite"),
        mqtt=MqttSection(host=mosquitto.host, port=mosquitto.port),
        store=StoreSection(url=url),
    )
    store = open_store(url)
    await store.open()
    ledger = Ledger(config.gateway.state)
    async with simulator_for_config(sites, seed=5):
        ingest = Ingest(config, store, ledger)
        gateway = asyncio.create_task(ingest.run())
        await asyncio.wait_for(ingest.connected.wait(), timeout=10)
        agents = [Agent(site) for site in sites]
        running = [asyncio.create_task(agent.run()) for agent in agents]
        await eventually(lambda: ingest.stats.batches >= 2, timeout=30)  # stored before the outage
        own_influxdb.kill()
        await eventually(lambda: ingest.spool.depth >= 4, timeout=60)  # arrived while InfluxDB was down
        spooled_during_outage = ingest.spool.depth
        own_influxdb.start()
        restarted_at = ingest.stats.batches
        await eventually(lambda: ingest.stats.batches >= restarted_at + 2, timeout=30)  # and after it is back
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        sealed = sum(agent.outbox_stats().next_seq for agent in agents)
        await eventually(
            lambda: ingest.spool.depth == 0 and sum(a.batches for a in ledger.accounts()) >= sealed, timeout=60
        )
        spool_left = ingest.spool.depth
        gateway.cancel()
        await asyncio.gather(gateway, return_exceptions=True)

    expected = {}
    for site in sites:
        outbox = Outbox(site.config.agent.outbox)
        for _, payload in outbox.get(0, 1 << 62):
            for reading in decode_batch(payload).readings:
                key = (site.config.agent.site, reading.instrument)
                expected[key] = expected.get(key, 0) + 1
        outbox.close()
    counts = await store.count_by_instrument()
    await store.close()
    accounts = ledger.accounts()
    ledger.close()
    assert spooled_during_outage >= 4, "batches that arrived while InfluxDB was down should wait in the spool"
    assert spool_left == 0
    assert sum(a.batches for a in accounts) == sealed
    assert all(a.missing == 0 and a.duplicates == 0 for a in accounts)
    assert counts == expected, "every sealed reading stored exactly once"
    assert ingest.stats.dead_letters == 0
