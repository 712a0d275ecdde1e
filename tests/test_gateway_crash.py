"""The gateway killed with kill -9 mid-stream and started again: every batch stored exactly once.

Messages aiomqtt had acknowledged but the dead gateway had not stored come back by gap repair; the
persistent session holds what the broker received meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from ports import free_port
from servers import MosquittoServer

from aua_contract import decode_batch
from aua_demo.sites import demo_sites, relocate
from edge_agent.outbox import Outbox
from edge_agent.poller import Agent
from edge_agent.simulator import simulator_for_config
from gateway.ledger import Ledger
from gateway.stores import open_store


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", str(config)], stdout=out, stderr=subprocess.STDOUT
        )


def log_text(log: Path) -> str:
    return log.read_text() if log.exists() else ""


async def subscribed(log: Path, times: int) -> None:
    """Wait until the gateway has logged its `times`-th subscription (slow to start on a loaded machine)."""
    for _ in range(600):
        if (await asyncio.to_thread(log_text, log)).count("subscribed at") >= times:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gateway did not subscribe:\n{log_text(log)[-3000:]}")


def stop_polling(agent: Agent) -> None:
    """Stop sealing new batches but keep the agent's MQTT side up, so it can still answer resend requests."""
    agent.readers.clear()


async def test_gateway_killed_mid_stream_loses_and_doubles_nothing(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    [ambient] = [s for s in demo_sites() if s.config.agent.site == "pavlodar-ambient"]
    ports = {port: free_port() for port in {i.config.port for i in ambient.instruments}}
    site = relocate(ambient, broker_host=mosquitto.host, broker_port=mosquitto.port, ports=ports, workdir=tmp_path)
    site.config.agent.id = f"pvl-{uuid.uuid4().hex[:8]}"  # the shared broker keeps other tests' retained status
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
id = "gw-{uuid.uuid4().hex[:8]}"
state = "state.sqlite"
gap_check_s = 0.3
gap_grace_s = 1.0
gap_retry_s = 2.0

[mqtt]
host = "{mosquitto.host}"
port = {mosquitto.port}

[store]
url = "sqlite:///aua.sqlite"
"""
    )
    log = tmp_path / "gateway.log"
    gateway = start_gateway(config, log)
    async with simulator_for_config(site, seed=9):
        await subscribed(log, 1)  # from now on its persistent session outlives it
        agent = Agent(site)
        agent.publisher.status_interval_s = 0.5
        running = asyncio.create_task(agent.run())
        await asyncio.sleep(3)
        os.kill(gateway.pid, signal.SIGKILL)
        gateway.wait()
        await asyncio.sleep(2)
        gateway = start_gateway(config, log)
        await subscribed(log, 2)
        await asyncio.sleep(1)
        stop_polling(agent)
        await asyncio.sleep(1.5)  # a poll cycle in progress may still seal one batch
        sealed = agent.outbox_stats().next_seq
        ledger = Ledger(tmp_path / "state.sqlite")
        for _ in range(600):
            accounts = ledger.accounts()
            if accounts and accounts[0].batches >= sealed:
                break
            await asyncio.sleep(0.1)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=10) == 0, log.read_text()[-3000:]

    [account] = ledger.accounts()
    ledger.close()
    outbox = Outbox(site.config.agent.outbox)
    expected = sum(len(decode_batch(p).readings) for _, p in outbox.get(0, sealed))
    outbox.close()
    store = open_store(f"sqlite://{tmp_path}/aua.sqlite")
    await store.open()
    stored = sum((await store.count_by_instrument()).values())
    await store.close()
    assert sealed >= 6
    assert (account.batches, account.first_seq, account.last_seq, account.missing) == (sealed, 0, sealed - 1, 0)
    assert stored == expected
    assert "Traceback" not in log.read_text()
