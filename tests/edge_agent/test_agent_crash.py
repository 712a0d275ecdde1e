"""Nothing lost, with exact accounting: the agent runs as `edge-agent run CONFIG` (a real process), the broker
is killed -9 and restarted while it polls, then the agent itself is killed -9 and restarted.

The gateway (Ingest + Ledger + store, gap repair on) must end with every sequence number the agent ever
sealed, numbered from 0 without a hole, and exactly the readings of the agent's outbox in the store;
duplicates may happen, but only as redeliveries of the same (agent, seq), which the ledger counts.
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from agent_site import write_site
from ports import free_port
from servers import MosquittoServer

from aua_contract import decode_batch
from aua_simulator.incidents import Incidents
from aua_simulator.modbus_servers import Quirks, simulator_for_config
from edge_agent.config import load_config
from edge_agent.outbox import Outbox
from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
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


async def sealed_at_least(outbox_path: Path, count: int, within_s: float = 30.0) -> None:
    for _ in range(int(within_s / 0.1)):
        if await sealed_so_far(outbox_path) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the agent did not seal {count} batches within {within_s} s")


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
            # a few cycles sealed (not a fixed sleep: a loaded machine may take seconds to start Python)
            await sealed_at_least(outbox, 4)
            before_outage = await sealed_so_far(outbox)
            mqtt_broker.stop()  # SIGKILL, no persistence: whatever it held is gone
            await asyncio.sleep(1.5)
            mqtt_broker.start()
            await asyncio.sleep(2.5)  # the agent reconnects (backoff 0.5, 1, 2 s) and is publishing when killed
            agent.send_signal(signal.SIGKILL)
            await asyncio.to_thread(agent.wait, 10)
            after_kill = await sealed_so_far(outbox)
            agent = start_agent(config, log)
            await sealed_at_least(outbox, after_kill + 4)  # running again (its SIGTERM handler installed)
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


async def test_a_kill_mid_cycle_keeps_what_was_read_and_counts_the_cycle(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """Killed -9 in the middle of a poll cycle, after one instrument answered and while another (slow) had not:
    the next start seals the answered readings (staged in the outbox as soon as they were read) and counts the
    cycle as cut short, in the log and in the outbox's counters (issue 16: they used to vanish unseen)."""
    fast_port, slow_port = free_port(), free_port()
    outbox = tmp_path / "outbox.sqlite"
    config = write_site(
        tmp_path / "site.toml",
        agent={
            "site": "cut-site",
            "id": f"agent-{uuid.uuid4().hex[:6]}",
            "poll_interval": 1.0,
            "outbox": str(outbox),
        },
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        instruments=[
            {"id": "fast", "profile": "met-station", "port": fast_port, "device_id": 1, "timeout": 1.0},
            {"id": "slow", "profile": "mercury-analyzer", "port": slow_port, "device_id": 2, "timeout": 1.5},
        ],
    )
    loaded = load_config(config)
    log = tmp_path / "agent.log"
    kills: list[int] = []
    async with simulator_for_config(
        loaded, seed=5, incidents=Incidents.none(), quirks={"slow": Quirks(delay_s=0.6)}
    ) as simulator:
        for _ in range(3):
            agent = start_agent(config, log)
            try:
                sealed = await sealed_so_far(outbox)
                for _ in range(100):  # this run has sealed two cycles of its own
                    await asyncio.sleep(0.2)
                    if await sealed_so_far(outbox) >= sealed + 2:
                        break
                now = time.time()
                await asyncio.sleep(math.floor(now) + 1.3 - now)  # the fast one has answered, the slow one not
                kills.append(math.floor(time.time()))
                agent.send_signal(signal.SIGKILL)
                assert await asyncio.to_thread(agent.wait, 10) == -signal.SIGKILL
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait(10)
        agent = start_agent(config, log)  # seals what the last kill left
        try:
            sealed = await sealed_so_far(outbox)
            for _ in range(100):  # past the recovery, two cycles of its own
                await asyncio.sleep(0.2)
                if await sealed_so_far(outbox) >= sealed + 3:
                    break
            agent.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(agent.wait, 15) == 0, log.read_text()[-3000:]
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
        served = {tick.time: tick.values for tick in simulator.served("fast")}

    reopened = Outbox(outbox)
    stats = reopened.stats()
    by_tick: dict[tuple[str, int], dict[str, float | None]] = {}
    for _, payload in reopened.get(0, stats.next_seq):
        for reading in decode_batch(payload).readings:
            by_tick.setdefault((reading.instrument, math.floor(reading.ts.timestamp())), {})[reading.parameter] = (
                reading.value
            )
    reopened.close()
    fast_tags = len(loaded.instruments[0].profile.tag)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    for tick in kills:
        # what the fast instrument answered in the cycle the kill cut short is sealed, value for value
        assert by_tick.get(("fast", tick)) == served[float(tick)], (tick, sorted(by_tick))
        assert ("slow", tick) not in by_tick  # it had not answered: nothing to keep, and the cycle is counted
    assert (stats.cut_cycles, stats.recovered_readings) == (len(kills), len(kills) * fast_tags)
    assert text.count("the agent stopped in the middle of the poll cycle") == len(kills)
    assert text.count(f"{fast_tags} readings already read were sealed now") == len(kills)


async def test_a_clean_stop_mid_cycle_seals_what_was_read_and_is_no_crash(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """systemd's SIGTERM while the slow instrument is still being read: what the fast one answered is sealed
    at the stop, and the next start finds no cycle cut short."""
    outbox = tmp_path / "outbox.sqlite"
    config = write_site(
        tmp_path / "site.toml",
        agent={"site": "cut-site", "id": f"agent-{uuid.uuid4().hex[:6]}", "poll_interval": 1.0, "outbox": str(outbox)},
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        instruments=[
            {"id": "fast", "profile": "met-station", "port": free_port(), "device_id": 1, "timeout": 1.0},
            {"id": "slow", "profile": "mercury-analyzer", "port": free_port(), "device_id": 2, "timeout": 1.5},
        ],
    )
    loaded = load_config(config)
    log = tmp_path / "agent.log"
    async with simulator_for_config(
        loaded, seed=6, incidents=Incidents.none(), quirks={"slow": Quirks(delay_s=0.6)}
    ) as simulator:
        agent = start_agent(config, log)
        try:
            for _ in range(100):
                await asyncio.sleep(0.2)
                if await sealed_so_far(outbox) >= 2:
                    break
            now = time.time()
            await asyncio.sleep(math.floor(now) + 1.3 - now)
            stopped = math.floor(time.time())
            agent.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(agent.wait, 15) == 0, log.read_text()[-3000:]
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
        served = {tick.time: tick.values for tick in simulator.served("fast")}
    reopened = Outbox(outbox)
    fast = {}
    for _, payload in reopened.get(0, reopened.stats().next_seq):
        for reading in decode_batch(payload).readings:
            if reading.instrument == "fast" and math.floor(reading.ts.timestamp()) == stopped:
                fast[reading.parameter] = reading.value
    assert reopened.cut_cycle() is None
    assert reopened.stats().cut_cycles == 0
    reopened.close()
    assert fast == served[float(stopped)]
    fast_tags = len(loaded.instruments[0].profile.tag)
    assert f"stopped during a poll cycle: the {fast_tags} readings it had read are sealed" in log.read_text()
