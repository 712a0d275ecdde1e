"""Gateway ingest on a real mosquitto: bad input becomes dead letters, duplicates are dropped, the stream goes on."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import httpx
from gateway_run import eventually, running_gateway
from servers import MQTT_INFLIGHT, InfluxServer, MosquittoServer

from aua_contract import Batch, Quality, Reading, encode_batch, readings_topic
from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def batch(site: str, agent: str, seq: int) -> Batch:
    return Batch(
        site=site,
        agent=agent,
        seq=seq,
        sent_at=T0,
        readings=[Reading(instrument="hg1", parameter="hg", value=4.9 + seq, unit="ng/m³", ts=T0.replace(second=seq))],
    )


async def test_bad_input_is_dead_lettered_and_the_stream_goes_on(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"  # a site of this test's own on the shared broker
    config = GatewayConfig(
        gateway=GatewaySection(id=f"gw-{site}", state=tmp_path / "state.sqlite"),
        mqtt=MqttSection(host=mosquitto.host, port=mosquitto.port, sites=site),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
    )
    topic = readings_topic(site, "a1")
    messages = [
        (topic, encode_batch(batch(site, "a1", 0))),
        (topic, b"not json at all"),
        (topic, b'{"v": 99, "site": "x"}'),
        (readings_topic(site, "a2"), encode_batch(batch(site, "a1", 1))),  # a1's batch on a2's topic: spoofing
        (topic, encode_batch(batch(site, "a1", 0))),  # redelivery
        (f"aua/v1/{site}/a1/status", b"{}"),
        (topic, encode_batch(batch(site, "a1", 1))),
    ]
    async with running_gateway(config) as ingest:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"pub-{site}") as client:
            for message_topic, payload in messages:
                await client.publish(message_topic, payload, qos=1)
        await eventually(lambda: ingest.stats.messages >= len(messages))
        await asyncio.wait_for(ingest.flushed(), timeout=10)
        stored = await ingest.store.query(site=site)
        letters = ingest.ledger.dead_letters()
        [account] = [a for a in ingest.ledger.accounts() if a.site == site]

    assert [(r.agent, r.value) for r in stored] == [("a1", 4.9), ("a1", 5.9)]
    assert (ingest.stats.batches, ingest.stats.duplicates, ingest.stats.dead_letters) == (2, 1, 4)
    reasons = [letter.reason for letter in reversed(letters)]
    assert "payload is not JSON" in reasons[0]
    assert "unsupported schema version v=99" in reasons[1]
    assert "payload says site" in reasons[2]
    assert "agent 'a2'" in reasons[2]
    assert "status: missing schema version" in reasons[3]
    assert letters[-1].payload == b"not json at all"
    assert (account.batches, account.readings, account.missing, account.duplicates) == (2, 2, 0, 1)


async def test_registry_refuses_unknown_agents_and_parameters_and_flags_implausible_values(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    config = GatewayConfig.model_validate(
        {
            "gateway": {"id": f"gw-{site}", "state": str(tmp_path / "state.sqlite")},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "sites": site},
            "store": {"url": f"sqlite://{tmp_path}/aua.sqlite"},
            "registry": {
                "agents": [f"{site}/a1"],
                "known_parameters_only": True,
                "parameter": [{"parameter": "hg", "min": 0, "max": 100_000, "max_rate_per_s": 50}],
            },
        }
    )
    now = datetime.now(UTC).replace(second=0, microsecond=0)  # within the registry's time window

    def hg(second: int, value: float, parameter: str = "hg") -> Reading:
        return Reading(instrument="hg1", parameter=parameter, value=value, unit="ng/m³", ts=now.replace(second=second))

    good = Batch(site=site, agent="a1", seq=0, sent_at=now, readings=[hg(0, 5.0), hg(1, 400.0), hg(2, -1.0)])
    mixed = Batch(site=site, agent="a1", seq=1, sent_at=now, readings=[hg(3, 6.0, "hg_total"), hg(4, 380.0)])
    stranger = Batch(site=site, agent="a9", seq=0, sent_at=now, readings=[hg(5, 5.0)])
    async with running_gateway(config) as ingest:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"pub-{site}") as client:
            for message in (good, mixed, stranger):
                await client.publish(readings_topic(site, message.agent), encode_batch(message), qos=1)
        await eventually(lambda: ingest.stats.messages >= 3)
        await asyncio.wait_for(ingest.flushed(), timeout=10)
        stored = {(r.parameter, r.ts.second): (r.value, r.quality) for r in await ingest.store.query(site=site)}
        reasons = sorted(letter.reason for letter in ingest.ledger.dead_letters())
    assert stored == {
        ("hg", 0): (5.0, Quality.OK),
        ("hg", 1): (400.0, Quality.SPIKE),  # 395 ng/m³ in one second, over the 50/s rule
        ("hg", 2): (-1.0, Quality.OUT_OF_RANGE),
        ("hg", 4): (380.0, Quality.OK),  # 20 ng/m³ in 3 s after the last plausible value
    }
    assert reasons == [f"agent {site}/a9 is not in the registry", "hg1/hg_total is not in the registry"]


async def test_a_stalled_store_holds_the_consumer_at_the_queue_limit_and_loses_nothing(
    mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db_url: str, tmp_path: Path
) -> None:
    """With influxd stopped (SIGSTOP: a write that hangs, not one that fails) the consumer takes batches only
    until write_queue_readings wait for the writer; the broker keeps the rest, and all arrive once it resumes."""
    site = f"s{uuid.uuid4().hex[:8]}"
    config = GatewayConfig(
        gateway=GatewaySection(
            id=f"gw-{site}", state=tmp_path / "state.sqlite", write_queue_readings=1000, write_max_readings=300
        ),
        mqtt=MqttSection(host=mosquitto.host, port=mosquitto.port, sites=site),
        store=StoreSection(url=influx_db_url),
    )
    now = datetime.now(UTC).replace(microsecond=0)
    batches = [
        Batch(
            site=site,
            agent="a1",
            seq=seq,
            sent_at=now,
            readings=[
                Reading(instrument=f"i{n}", parameter="so2", value=n, unit="mg/m³", ts=now - seq * SECOND)
                for n in range(250)
            ],
        )
        for seq in range(20)
    ]
    assert influxdb.process is not None
    async with running_gateway(config) as ingest:
        os.kill(influxdb.process.pid, signal.SIGSTOP)
        try:
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"pub-{site}") as client:
                for message in batches:
                    await client.publish(readings_topic(site, "a1"), encode_batch(message), qos=1)
            seen = -1
            while ingest.stats.messages != seen:  # until the consumer has stopped taking messages
                seen = ingest.stats.messages
                await asyncio.sleep(1.0)
            held, taken = ingest.queued_readings, ingest.stats.messages
        finally:
            os.kill(influxdb.process.pid, signal.SIGCONT)
        assert taken < len(batches)
        assert 1000 <= held < 1000 + 250  # the writer's group (500) + waiting batches, one batch over at most
        await eventually(lambda: ingest.stats.readings == 20 * 250)
        assert (await ingest.store.count_by_instrument()) == {(site, f"i{n}"): 20 for n in range(250)}
    assert (ingest.queued_readings, ingest.stats.store_retries, ingest.spool.depth) == (0, 0, 0)


class SmallWindowBroker(MosquittoServer):
    """mosquitto sending a client at most 5 unacknowledged QoS 1 messages."""

    def config_text(self) -> str:
        return super().config_text().replace(f"max_inflight_messages {MQTT_INFLIGHT}", "max_inflight_messages 5")


async def test_the_broker_window_bounds_what_the_gateway_holds_while_the_store_hangs(
    influxdb: InfluxServer, influx_db_url: str, tmp_path: Path
) -> None:
    """Acknowledged only once durable: with the store hanging, the gateway holds exactly the broker's in-flight
    window (not everything published, as when paho acknowledged on arrival), and the rest follows once the
    store is back."""
    broker = SmallWindowBroker(tmp_path / "mosquitto")
    broker.start()
    site = f"s{uuid.uuid4().hex[:8]}"
    config = GatewayConfig(
        gateway=GatewaySection(id=f"gw-{site}", state=tmp_path / "state.sqlite", write_max_readings=1),
        mqtt=MqttSection(host=broker.host, port=broker.port, sites=site),
        store=StoreSection(url=f"{influx_db_url}?timeout=60"),
    )
    assert influxdb.process is not None
    try:
        async with running_gateway(config) as ingest:
            os.kill(influxdb.process.pid, signal.SIGSTOP)
            try:
                async with aiomqtt.Client(broker.host, broker.port, identifier=f"pub-{site}") as client:
                    for seq in range(30):
                        await client.publish(readings_topic(site, "a1"), encode_batch(batch(site, "a1", seq)), qos=1)
                await eventually(lambda: ingest.stats.messages >= 5)
                await asyncio.sleep(1.0)  # time for more to arrive, if anything let them
                held, taken = ingest.acks.waiting if ingest.acks else -1, ingest.stats.messages
            finally:
                os.kill(influxdb.process.pid, signal.SIGCONT)
            await eventually(lambda: ingest.stats.batches == 30, within_s=60)
            stored = len(await ingest.store.query(site=site))
            left = ingest.acks.waiting if ingest.acks else -1
    finally:
        broker.terminate()
    assert (held, taken) == (5, 5)
    assert (stored, left) == (30, 0)


def spool_file_bytes(path: Path) -> int:
    """The spool's database file and its WAL, as on disk."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


async def test_a_full_spool_stops_taking_messages_and_loses_nothing(tmp_path: Path) -> None:
    """InfluxDB down long enough to fill the spool: the gateway spools up to [gateway] spool_max_bytes, then
    takes no more messages (they wait unacknowledged on the broker; the gateway holds write_queue_readings), says so
    in /health and /metrics, and once InfluxDB is back every reading is stored exactly once and the spool file
    has stayed near its bound."""
    influxd = InfluxServer(tmp_path / "influxd")
    influxd.start()
    broker = SmallWindowBroker(tmp_path / "mosquitto")
    broker.start()
    site = f"s{uuid.uuid4().hex[:8]}"
    bound = 128 * 1024
    spool_path = tmp_path / "spool.sqlite"
    config = GatewayConfig(
        gateway=GatewaySection(
            id=f"gw-{site}",
            state=tmp_path / "state.sqlite",
            spool=spool_path,
            spool_max_bytes=bound,
            http="127.0.0.1:0",
            write_max_readings=1,
            write_queue_readings=400,
        ),
        mqtt=MqttSection(host=broker.host, port=broker.port, sites=site),
        store=StoreSection(url=influxd.database_url(f"spool_{site}")),
    )
    now = datetime.now(UTC).replace(microsecond=0)
    published = [
        Batch(
            site=site,
            agent="a1",
            seq=seq,
            sent_at=now,
            readings=[
                Reading(instrument=f"i{n}", parameter="so2", value=seq + n / 100, unit="mg/m³", ts=now - seq * SECOND)
                for n in range(40)
            ],
        )
        for seq in range(150)
    ]
    payload_bytes = sum(len(encode_batch(b)) for b in published)
    assert payload_bytes > 3 * bound  # several spools' worth
    try:
        async with running_gateway(config) as ingest:
            base = f"http://127.0.0.1:{ingest.http_port}"
            influxd.kill()
            async with aiomqtt.Client(broker.host, broker.port, identifier=f"pub-{site}") as client:
                for message in published:
                    await client.publish(readings_topic(site, "a1"), encode_batch(message), qos=1)
            await eventually(lambda: ingest.spool.full, within_s=60)
            seen = -1
            while ingest.stats.messages != seen:  # until the consumer has stopped taking messages
                seen = ingest.stats.messages
                await asyncio.sleep(1.0)
            taken, spooled, queued = ingest.stats.messages, ingest.spool.size, ingest.queued_readings
            held, spooled_batches = ingest.acks.waiting if ingest.acks else -1, ingest.spool.depth
            acknowledged = ingest.acks.sent if ingest.acks else -1
            full_on_disk = spool_file_bytes(spool_path)
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{base}/health")).json()
                metrics = (await http.get(f"{base}/metrics")).text

            influxd.start()
            await eventually(lambda: ingest.stats.batches == len(published), within_s=120)
            await eventually(lambda: ingest.spool.depth == 0 and not ingest.spool.full)
            counts = await ingest.store.count_by_instrument()
            revisions = await ingest.store.query_revisions(site=site)
            [account] = [a for a in ingest.ledger.accounts() if a.site == site]
            drained = ingest.health()
    finally:
        broker.terminate()
        influxd.terminate()

    assert taken < len(published), "a full spool must stop the consumer, not drop or buffer without bound"
    assert bound - 8 * 1024 < spooled <= bound  # filled to its bound (within one batch), never past it
    assert queued <= 400 + 40  # write_queue_readings, one batch over at most: the consumer waits there
    assert acknowledged == spooled_batches  # acknowledged: what is durable in the spool, nothing else
    assert held == taken - spooled_batches
    assert full_on_disk < 2 * bound + 64 * 1024  # the database near the bound, its WAL at most a quarter of it
    assert health["status"] == "degraded"
    assert health["spool_full"] is True
    assert health["spool_bytes"] == spooled
    assert health["spool_full_count"] == 1
    assert "aua_gateway_spool_full 1.0" in metrics
    assert "aua_gateway_spool_full_events_total 1.0" in metrics

    assert counts == {(site, f"i{n}"): len(published) for n in range(40)}, "every reading stored exactly once"
    assert revisions == []
    assert (account.batches, account.missing, account.readings) == (len(published), 0, 40 * len(published))
    assert (drained.spool_full, drained.spool_full_count) == (False, 1)
    assert drained.spool_full_seconds > 0
    assert spool_file_bytes(spool_path) < 2 * bound + 64 * 1024
