"""Nothing lost, with exact accounting: the agent runs as `edge-agent run CONFIG` (a real process), the broker
is killed -9 and restarted while it polls, then the agent itself is killed -9 and restarted.

The gateway (Ingest + Ledger + store, gap repair on) must end with every sequence number the agent ever
sealed, numbered from 0 without a hole, and exactly the readings of the agent's outbox in the store;
duplicates may happen, but only as redeliveries of the same (agent, seq), which the ledger counts.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from agent_site import write_site
from ports import free_port
from servers import MosquittoServer

from aua_contract import decode_batch
from edge_agent.config import load_config
from edge_agent.outbox import Outbox
from edge_agent.simulator import simulator_for_config
from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection
from gateway.ingest import Ingest
from gateway.ledger import Ledger
from gateway.stores import open_store

EDGE_AGENT = Path(sys.executable).parent / "edge-agent"


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([str(EDGE_AGENT), "run", str(config)], stdout=out, stderr=subprocess.STDOUT)


async def sealed_so_far(outbox_path: Path) -> int:
    def read() -> int:
        outbox = Outbox(outbox_path)
        try:
            return outbox.stats().next_seq
        finally:
            outbox.close()

    return await asyncio.to_thread(read)


async def test_broker_outage_and_agent_kill_9_lose_nothing(mqtt_broker: MosquittoServer, tmp_path: Path) -> None:
    device_port = free_port()
    outbox = tmp_path / "outbox.sqlite"
    config = write_site(
        tmp_path / "site.toml",
        agent={
            "site": "crash-site",
            "id": f"agent-{uuid.uuid4().hex[:6]}",
            "poll_interval": 0.25,
            "outbox": str(outbox),
            "status_interval_s": 0.5,
        },
        mqtt={"host": mqtt_broker.host, "port": mqtt_broker.port, "keepalive": 5},
        instruments=[
            {"id": "hg", "profile": "mercury-analyzer", "port": device_port, "device_id": 1, "timeout": 0.5},
            {"id": "met", "profile": "met-station", "port": device_port, "device_id": 2, "timeout": 0.5},
        ],
    )
    gateway_config = GatewayConfig(
        gateway=GatewaySection(
            id=f"gw-{uuid.uuid4().hex[:8]}",
            state=tmp_path / "state.sqlite",
            gap_check_s=0.3,
            gap_grace_s=1.0,
            gap_retry_s=1.5,
        ),
        mqtt=MqttSection(host=mqtt_broker.host, port=mqtt_broker.port),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
    )
    store = open_store(gateway_config.store.url)
    await store.open()
    ledger = Ledger(gateway_config.gateway.state)
    log = tmp_path / "agent.log"
    async with simulator_for_config(load_config(config), seed=4):
        ingest = Ingest(gateway_config, store, ledger)
        gateway = asyncio.create_task(ingest.run())
        await asyncio.wait_for(ingest.connected.wait(), timeout=10)
        agent = start_agent(config, log)
        try:
            await asyncio.sleep(2.5)
            before_outage = await sealed_so_far(outbox)
            mqtt_broker.stop()  # SIGKILL, no persistence: whatever it held is gone
            await asyncio.sleep(1.5)
            mqtt_broker.start()
            await asyncio.sleep(2.5)  # the agent reconnects (backoff 0.5, 1, 2 s) and is publishing when killed
            agent.send_signal(signal.SIGKILL)
            await asyncio.to_thread(agent.wait, 10)
            after_kill = await sealed_so_far(outbox)
            agent = start_agent(config, log)
            await asyncio.sleep(3.0)
            agent.send_signal(signal.SIGTERM)  # systemd's stop: a clean exit
            assert await asyncio.to_thread(agent.wait, 10) == 0, log.read_text()[-3000:]
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
        sealed = await sealed_so_far(outbox)
        for _ in range(200):
            accounts = ledger.accounts()
            if accounts and accounts[0].batches == sealed:
                break
            await asyncio.sleep(0.1)
        gateway.cancel()
        await asyncio.gather(gateway, return_exceptions=True)

    reopened = Outbox(outbox)
    expected = sum(len(decode_batch(payload).readings) for _, payload in reopened.get(0, sealed))
    reopened.close()
    [account] = ledger.accounts()
    stored = sum((await store.count_by_instrument()).values())
    await store.close()
    ledger.close()
    log_text = log.read_text()
    assert 0 < before_outage < after_kill < sealed, (before_outage, after_kill, sealed)
    # every sequence number the agent sealed, across the outage and the kill, reached the gateway once
    assert (account.batches, account.first_seq, account.last_seq, account.missing) == (sealed, 0, sealed - 1, 0)
    # and the store holds exactly the outbox's readings (duplicates were redeliveries of the same seq)
    assert stored == expected
    assert account.duplicates >= 0
    assert "Traceback" not in log_text, log_text[-3000:]
    assert log_text.count("connected to MQTT broker") >= 3, log_text[-3000:]  # start, after the outage, restart
