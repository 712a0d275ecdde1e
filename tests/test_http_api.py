"""/health and /metrics on a live gateway: real HTTP over loopback against a real broker."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from gateway_run import running_gateway
from servers import MosquittoServer

from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection


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
    assert health.json() == {"status": "ok", "broker_connected": True, "spool_depth": 0}
    assert metrics.status_code == 200
    assert "aua_gateway_dead_letters_total 1.0" in metrics.text
    assert "aua_gateway_spool_depth 0.0" in metrics.text
    assert "aua_gateway_store_write_seconds_bucket" in metrics.text
    assert (missing.status_code, post.status_code) == (404, 405)
