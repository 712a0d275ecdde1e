"""The gateway killed with kill -9 (or failing) mid-stream and started again: every batch stored exactly once.

The gateway acknowledges a message only once its batch is durable, so what a dead gateway held comes back
from the broker (its persistent session), like what the broker received meanwhile; gap repair asks the
agents for anything else.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import httpx
import pytest
from ports import free_port
from servers import InfluxServer, MosquittoServer

from aua_contract import Batch, Reading, decode_batch, encode_batch, readings_topic
from aua_demo.sites import demo_sites, relocate
from aua_simulator.modbus_servers import simulator_for_config
from edge_agent.outbox import Outbox
from edge_agent.poller import Agent
from gateway.ingest.ledger import Ledger
from gateway.stores import open_store

SECOND = timedelta(seconds=1)


def start_gateway(config: Path, log: Path, *, file_size_limit: int | None = None) -> subprocess.Popen[bytes]:
    """`file_size_limit`: the gateway's RLIMIT_FSIZE (prlimit): writing past it fails with EFBIG (Python
    ignores SIGXFSZ), which SQLite reports as a disk I/O error: a disk that fills up, for real."""
    limit = [] if file_size_limit is None else ["prlimit", f"--fsize={file_size_limit}", "--"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*limit, sys.executable, "-m", "gateway.cli", "run", str(config)], stdout=out, stderr=subprocess.STDOUT
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
url = "sqlite://aua.sqlite"
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


# ---- flow control and supervision: a real gateway process, a real broker, a real InfluxDB -------------------

READINGS_PER_BATCH = 200


def gateway_config(path: Path, *, broker: MosquittoServer, store_url: str, http_port: int, site: str) -> Path:
    """Subscribed to its own site only: the shared broker holds other tests' retained statuses, which would
    count as messages taken."""
    path.write_text(
        f"""
[gateway]
id = "gw-{uuid.uuid4().hex[:8]}"
state = "state.sqlite"
http = "127.0.0.1:{http_port}"
gap_check_s = 3600

[mqtt]
host = "{broker.host}"
port = {broker.port}
sites = "{site}"

[store]
url = "{store_url}"
"""
    )
    return path


def numbered_batches(site: str, count: int) -> list[Batch]:
    now = datetime.now(UTC).replace(microsecond=0)
    return [
        Batch(
            site=site,
            agent="a1",
            seq=seq,
            sent_at=now,
            readings=[
                Reading(instrument=f"i{n}", parameter="so2", value=seq + n / 1000, unit="mg/m³", ts=now - seq * SECOND)
                for n in range(READINGS_PER_BATCH)
            ],
        )
        for seq in range(count)
    ]


async def publish(broker: MosquittoServer, batches: list[Batch]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"pub-{uuid.uuid4().hex[:8]}") as client:
        for batch in batches:
            await client.publish(readings_topic(batch.site, batch.agent), encode_batch(batch), qos=1)


async def metric(http_port: int, name: str) -> float | None:
    try:
        async with httpx.AsyncClient(timeout=5, verify=False) as client:  # plain HTTP: no CA bundle to load
            text = (await client.get(f"http://127.0.0.1:{http_port}/metrics")).text
    except httpx.HTTPError:
        return None
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return None if found is None else float(found.group(1))


async def ledger_batches(state: Path, site: str, want: int, within_s: float = 60) -> tuple[int, int, int]:
    """(batches, missing, duplicates) of the site's agent once `want` batches are recorded (or the deadline)."""
    ledger = Ledger(state)
    try:
        for _ in range(int(within_s / 0.2)):
            accounts = [a for a in ledger.accounts() if a.site == site]
            if accounts and accounts[0].batches >= want:
                break
            await asyncio.sleep(0.2)
        for account in ledger.accounts():
            if account.site == site:
                return account.batches, account.missing, account.duplicates
        return 0, 0, 0
    finally:
        ledger.close()


async def stored_readings(store_url: str, site: str) -> dict[str, int]:
    store = open_store(store_url)
    await store.open()
    try:
        return {instrument: n for (s, instrument), n in (await store.count_by_instrument()).items() if s == site}
    finally:
        await store.close()


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill -9", "SIGTERM"])
async def test_batches_held_unacknowledged_by_a_stopped_gateway_come_back_from_the_broker(
    stop: signal.Signals, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db_url: str, tmp_path: Path
) -> None:
    """InfluxDB stopped (SIGSTOP: writes hang), batches arrive, the gateway is killed -9 (or stopped with
    SIGTERM, which must end it although a write hangs) holding them: they were never acknowledged, so the
    broker redelivers them to the restarted gateway (no agent here could answer a resend request), and every
    reading is stored exactly once."""
    site = f"s{uuid.uuid4().hex[:8]}"
    http_port = free_port()
    store_url = f"{influx_db_url}?timeout=120"  # the write to the stopped InfluxDB hangs, it does not fail
    config = gateway_config(
        tmp_path / "gateway.toml", broker=mosquitto, store_url=store_url, http_port=http_port, site=site
    )
    log = tmp_path / "gateway.log"
    batches = numbered_batches(site, 12)
    assert influxdb.process is not None
    gateway = start_gateway(config, log)
    try:
        await subscribed(log, 1)
        os.kill(influxdb.process.pid, signal.SIGSTOP)
        try:
            await publish(mosquitto, batches)
            for _ in range(300):
                if await metric(http_port, "aua_gateway_messages_total") == len(batches):
                    break
                await asyncio.sleep(0.1)
            held = await metric(http_port, "aua_gateway_unacknowledged_messages")
            gateway.send_signal(stop)
            code = await asyncio.to_thread(gateway.wait, 40)
        finally:
            os.kill(influxdb.process.pid, signal.SIGCONT)
        gateway = start_gateway(config, log)
        await subscribed(log, 2)
        account = await ledger_batches(tmp_path / "state.sqlite", site, len(batches))
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=40) == 0, log_text(log)[-3000:]
    finally:
        if gateway.poll() is None:
            gateway.kill()
    assert held == len(batches), "the gateway held every batch unacknowledged while the store hung"
    assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
    assert account == (len(batches), 0, 0)
    assert await stored_readings(influx_db_url, site) == {f"i{n}": len(batches) for n in range(READINGS_PER_BATCH)}
    assert "Traceback" not in log_text(log)


async def test_a_failed_task_stops_the_gateway_with_one_line_and_loses_nothing(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """InfluxDB down and the spool's disk full: the writer fails. The gateway must not stay half-alive (taking
    messages it cannot keep): it exits non-zero with one line naming the task and the error. Restarted with
    room again, the spooled batches drain and the unacknowledged ones come back from the broker."""
    influx = InfluxServer(tmp_path / "influxd")
    influx.start()
    try:
        site = f"s{uuid.uuid4().hex[:8]}"
        http_port = free_port()
        store_url = influx.database_url(f"crash_{uuid.uuid4().hex[:8]}")
        config = gateway_config(
            tmp_path / "gateway.toml", broker=mosquitto, store_url=store_url, http_port=http_port, site=site
        )
        log = tmp_path / "gateway.log"
        batches = numbered_batches(site, 60)
        gateway = start_gateway(config, log, file_size_limit=1_000_000)
        try:
            await subscribed(log, 1)
            influx.kill()
            await publish(mosquitto, batches)
            code = await asyncio.to_thread(gateway.wait, 60)
        finally:
            if gateway.poll() is None:
                gateway.kill()
        first_run = log_text(log)
        stops = re.findall(r"ERROR gateway\.cli: gateway stopping: (.*)", first_run)
        influx.start()
        gateway = start_gateway(config, log)
        try:
            await subscribed(log, 2)
            account = await ledger_batches(tmp_path / "state.sqlite", site, len(batches))
            for _ in range(300):  # the spool drains into the store
                if await metric(http_port, "aua_gateway_spool_depth") == 0:
                    break
                await asyncio.sleep(0.2)
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(timeout=40) == 0, log_text(log)[-3000:]
        finally:
            if gateway.poll() is None:
                gateway.kill()
        stored = await stored_readings(store_url, site)
    finally:
        influx.terminate()
    assert code == 1, first_run[-3000:]
    assert len(stops) == 1, first_run[-3000:]
    assert re.fullmatch(r"task '(write|drain-spool|consume)' failed: \w+Error: .*(disk I/O|full).*", stops[0])
    assert "Traceback" not in first_run
    assert account == (len(batches), 0, 0)
    assert stored == {f"i{n}": len(batches) for n in range(READINGS_PER_BATCH)}
