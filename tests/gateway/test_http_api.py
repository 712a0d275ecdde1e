"""/health and /metrics on a live gateway: real HTTP over loopback against a real broker; hostile requests
over raw sockets against the responder itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from gateway_run import eventually, running_gateway
from servers import InfluxServer, MosquittoServer

from aua_contract import Batch, Reading, encode_batch, readings_topic
from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection
from gateway.http_api import MAX_HEADERS, HttpApi
from gateway.ingest.ledger import Ledger
from gateway.metrics import Health


async def test_health_and_metrics(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    config = GatewayConfig(
        gateway=GatewaySection(id=f"gw-{uuid.uuid4().hex[:8]}", state=tmp_path / "state.sqlite", http="127.0.0.1:0"),
        mqtt=MqttSection(host=mosquitto.host, port=mosquitto.port, sites=f"s{uuid.uuid4().hex[:8]}"),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
    )
    async with running_gateway(config) as ingest, httpx.AsyncClient() as client:
        await ingest.handle("not/ours", b"x")  # one dead letter, counted
        base = f"http://127.0.0.1:{ingest.http_port}"
        health = await client.get(f"{base}/health")
        metrics = await client.get(f"{base}/metrics")
        missing = await client.get(f"{base}/nothing")
        post = await client.post(f"{base}/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "broker_connected": True,
        "spool_depth": 0,
        "spool_bytes": 0,
        "spool_full": False,
        "spool_full_count": 0,
        "spool_full_seconds": 0.0,
        "tasks": {"consume": "running", "write": "running", "drain-spool": "running"},
    }
    assert metrics.status_code == 200
    assert "aua_gateway_dead_letters_total 1.0" in metrics.text
    assert "aua_gateway_spool_depth 0.0" in metrics.text
    assert "aua_gateway_store_write_seconds_bucket" in metrics.text
    assert "aua_gateway_unacknowledged_messages 0.0" in metrics.text
    assert (missing.status_code, post.status_code) == (404, 405)


async def test_metrics_label_set_is_bounded_and_what_is_folded_is_counted(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """20,000 agent names: /metrics keeps labels for metrics_max_agents of them and sums the rest."""
    site = f"s{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state.sqlite"
    ledger = Ledger(state)
    # Every agent the ledger knows once stored batches 0 and 2: one batch missing each.
    ledger.record_many([(site, f"a{n:05d}", seq, 1, 1) for n in range(20_000) for seq in (0, 2)])
    ledger.close()
    config = GatewayConfig(
        gateway=GatewaySection(id=f"gw-{site}", state=state, http="127.0.0.1:0", metrics_max_agents=50),
        mqtt=MqttSection(host=mosquitto.host, port=mosquitto.port, sites=site),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
    )
    async with running_gateway(config) as ingest, httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{ingest.http_port}/metrics")).text
    labelled = re.findall(r'^aua_gateway_missing_batches\{agent="([^"]+)",site="[^"]+"\} (\S+)$', metrics, re.M)
    assert len(labelled) == 51
    assert labelled[-1] == ("_other", str(float(20_000 - 50)))
    assert "aua_gateway_metrics_agents_folded 19950.0" in metrics
    assert len(metrics) < 20_000


async def test_registered_agents_keep_their_labels(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    config = GatewayConfig.model_validate(
        {
            "gateway": {"id": f"gw-{site}", "state": str(tmp_path / "state.sqlite"), "http": "127.0.0.1:0"},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "sites": site},
            "store": {"url": f"sqlite://{tmp_path}/aua.sqlite"},
            "registry": {"agents": [f"{site}/a1"]},
        }
    )
    async with running_gateway(config) as ingest, httpx.AsyncClient() as client:
        ingest.ledger.record_many([(site, "stranger", 0, 1, 1), (site, "stranger", 5, 1, 1)])
        for seq in (0, 3):
            reading = Reading(instrument="i", parameter="so2", value=1.0, unit="mg/m³", ts=datetime.now(UTC))
            batch = Batch(site=site, agent="a1", seq=seq, sent_at=reading.ts, readings=[reading])
            await ingest.handle(readings_topic(site, "a1"), encode_batch(batch))
        await asyncio.wait_for(ingest.flushed(), timeout=10)
        metrics = (await client.get(f"http://127.0.0.1:{ingest.http_port}/metrics")).text
    assert f'aua_gateway_missing_batches{{agent="a1",site="{site}"}} 2.0' in metrics
    assert 'aua_gateway_missing_batches{agent="_other",site="_other"} 4.0' in metrics
    assert "aua_gateway_metrics_agents_folded 1.0" in metrics


# ---- hostile requests on raw sockets ------------------------------------------------------------------------


@asynccontextmanager
async def responder(**options: float) -> AsyncIterator[HttpApi]:
    api = HttpApi(lambda: Health(broker_connected=True, spool_depth=0), lambda: b"aua 1\n", **options)  # type: ignore[arg-type]
    port = await api.start("127.0.0.1", 0)
    api.port = port  # type: ignore[attr-defined]
    try:
        yield api
    finally:
        await api.stop()


async def exchange(port: int, request: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send `request` raw, then read until the server closes; returns what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(read_timeout):
            return await reader.read()
    finally:
        await closed(writer)


async def closed(writer: asyncio.StreamWriter) -> None:
    """Close and wait, so no transport outlives the test's event loop."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"GET /" + b"a" * 70 * 1024 + b" HTTP/1.1\r\n\r\n", 414, "request line too long"),
        (b"GET /health HTTP/1.1\r\nX-Big: " + b"b" * 40 * 1024 + b"\r\n\r\n", 431, "header too large"),
        (b"GET /health HTTP/1.1\r\n" + b"X-A: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n", 431, "headers too large"),
        (b"\x00\x01\x02\r\n\r\n", 400, "malformed request line"),
        (b"GET /health\r\n\r\n", 400, "malformed request line"),
        (b"GET /health HTTP/1.1\r\nHost: x", 400, "incomplete request"),
    ],
)
async def test_oversized_and_malformed_requests_get_an_answer_and_no_traceback(
    request_bytes: bytes, status: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with responder() as api:
        port = api.port  # type: ignore[attr-defined]
        half_closed = request_bytes.endswith(b"Host: x")
        if half_closed:  # the client stops sending mid-header (shuts its side)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_bytes)
            writer.write_eof()
            answer = await reader.read()
            await closed(writer)
        else:
            answer = await exchange(port, request_bytes)
        healthy = await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == status
    assert api.refused == {reason: 1}
    assert status_of(healthy) == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_silent_client_is_dropped_after_the_timeout() -> None:
    async with responder(timeout_s=0.5) as api:
        began = time.monotonic()
        answer = await exchange(api.port, b"GET /hea", read_timeout=5)  # type: ignore[attr-defined]
        waited = time.monotonic() - began
    assert status_of(answer) == 408
    assert api.refused == {"timeout": 1}
    assert waited < 5


async def test_connections_beyond_the_cap_are_refused_until_one_closes() -> None:
    async with responder(max_connections=3, timeout_s=30) as api:
        port = api.port  # type: ignore[attr-defined]
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.2)  # let the server take them
        assert api.open_connections == 3
        refused = await exchange(port, b"GET /health HTTP/1.1\r\n\r\n")
        for _, writer in idle:
            await closed(writer)
        for _ in range(100):
            if api.open_connections == 0:
                break
            await asyncio.sleep(0.05)
        served = await exchange(port, b"GET /health HTTP/1.1\r\n\r\n")
    assert status_of(refused) == 503
    assert api.refused["too many connections"] == 1  # (the idle ones, closed unsent, count as incomplete)
    assert status_of(served) == 200


async def test_health_names_a_stalled_writer_and_recovers(
    mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db_url: str, tmp_path: Path
) -> None:
    """influxd stopped (SIGSTOP): the store write hangs, and after stall_s /health says which task is stuck."""
    site = f"s{uuid.uuid4().hex[:8]}"
    config = GatewayConfig(
        gateway=GatewaySection(id=f"gw-{site}", state=tmp_path / "state.sqlite", http="127.0.0.1:0", stall_s=0.5),
        mqtt=MqttSection(host=mosquitto.host, port=mosquitto.port, sites=site),
        store=StoreSection(url=f"{influx_db_url}?timeout=60"),
    )
    reading = Reading(instrument="i", parameter="so2", value=1.0, unit="mg/m³", ts=datetime.now(UTC))
    batch = Batch(site=site, agent="a1", seq=0, sent_at=reading.ts, readings=[reading])
    assert influxdb.process is not None
    async with running_gateway(config) as ingest, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{ingest.http_port}/health"
        os.kill(influxdb.process.pid, signal.SIGSTOP)
        try:
            await ingest.handle(readings_topic(site, "a1"), encode_batch(batch))
            await eventually(lambda: ingest.supervisor.liveness()["write"] != "running")
            stalled = await client.get(url)
        finally:
            os.kill(influxdb.process.pid, signal.SIGCONT)
        await asyncio.wait_for(ingest.flushed(), timeout=60)
        recovered = await client.get(url)
    assert stalled.status_code == 503
    assert stalled.json()["status"] == "failing"
    assert stalled.json()["tasks"]["write"].startswith("stalled: one unit of work has run for")
    assert stalled.json()["tasks"]["consume"] == "running"
    assert (recovered.status_code, recovered.json()["status"]) == (200, "ok")
