"""Two gateways on one MQTT shared subscription split an agent's batches and meet in the store.

Each instance's ledger sees only its share; the batch receipts in the shared store tell each one that
the other's sequence numbers are not gaps, so the union is complete and nobody floods the agent with
resend requests.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from eventually import eventually
from ports import free_port
from servers import MosquittoServer

from aua_contract import decode_batch
from aua_demo.sites import demo_sites, relocate
from aua_simulator.modbus_servers import simulator_for_config
from edge_agent.outbox import Outbox
from edge_agent.poller import Agent
from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.stores import open_store


async def test_two_gateways_on_a_shared_subscription(
    mosquitto: MosquittoServer, influx_db_url: str, tmp_path: Path
) -> None:
    [ambient] = [s for s in demo_sites() if s.config.agent.site == "pavlodar-ambient"]
    ports = {port: free_port() for port in {i.config.port for i in ambient.instruments}}
    site = relocate(ambient, broker_host=mosquitto.host, broker_port=mosquitto.port, ports=ports, workdir=tmp_path)
    group = f"g{uuid.uuid4().hex[:8]}"
    # An agent id of this test's own: the shared broker keeps other tests' retained status of the demo agent.
    site.config.agent.id = f"pvl-{group}"
    gateways = []
    for name in ("a", "b"):
        config = GatewayConfig(
            gateway=GatewaySection(
                id=f"gw-{group}-{name}",
                state=tmp_path / f"state-{name}.sqlite",
                roles=["ingest"],  # alerts and mrv need every batch: not on a shared subscription
                gap_check_s=0.3,
                gap_grace_s=3.0,  # the other instance's receipts may take a second or two on a loaded machine
                gap_retry_s=2.0,
            ),
            mqtt=MqttSection(host=mosquitto.host, port=mosquitto.port, shared_group=group),
            store=StoreSection(url=influx_db_url),
        )
        store = open_store(influx_db_url)
        await store.open()
        ledger = Ledger(config.gateway.state)
        gateways.append((Ingest(config, store, ledger), store, ledger))
    async with simulator_for_config(site, seed=21):
        tasks = [asyncio.create_task(ingest.run()) for ingest, _, _ in gateways]
        for ingest, _, _ in gateways:
            await asyncio.wait_for(ingest.connected.wait(), timeout=10)
        agent = Agent(site)
        agent.publisher.status_interval_s = 0.5
        running = asyncio.create_task(agent.run())
        await eventually(lambda: agent.outbox_stats().next_seq >= 6, timeout=60)
        agent.readers.clear()  # stop sealing; the MQTT side stays up to answer resend requests
        await asyncio.sleep(1.5)  # a poll cycle in progress may still seal one batch (nothing to watch for)
        sealed = agent.outbox_stats().next_seq
        await eventually(
            lambda: all(ledger.accounts() and ledger.accounts()[0].batches >= sealed for _, _, ledger in gateways),
            timeout=60,
        )
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    outbox = Outbox(site.config.agent.outbox)
    expected = sum(len(decode_batch(p).readings) for _, p in outbox.get(0, sealed))
    outbox.close()
    stored = sum((await gateways[0][1].count_by_instrument()).values())
    own_share = [ingest.stats.batches for ingest, _, _ in gateways]
    accounts = [ledger.accounts()[0] for _, _, ledger in gateways]
    # This agent's requests only: the shared broker holds other tests' retained statuses, and agents they
    # announce may be asked for their batches too.
    me = (site.config.agent.site, site.config.agent.id)
    requests = sum(ledger.resend_requests().get(me, 0) for _, _, ledger in gateways)
    for _, store, ledger in gateways:
        await store.close()
        ledger.close()
    assert sealed >= 5
    assert all(share > 0 for share in own_share), f"the broker should split the batches: {own_share}"
    assert sum(own_share) >= sealed  # (more only by redeliveries)
    assert stored == expected, "the union in the store is every sealed reading, once"
    for account in accounts:  # each instance's accounting is complete once it has read the other's receipts
        assert (account.batches, account.first_seq, account.last_seq, account.missing) == (sealed, 0, sealed - 1, 0)
    assert requests < sealed // 2, f"{requests} resend requests for {sealed} batches: the receipts were not used"
