"""What /metrics and the health points show of the gateway's bounded state, read from a real ingest."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aua_contract import Quality
from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection
from gateway.health_writer import HealthWriter
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.ingest.spool import Spool
from gateway.mrv.config import RollupSection, RuleResolver
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import SqliteStore, StoredReading
from gateway.stores import line_protocol as lp

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
RULES = RuleResolver.from_config(RollupSection(rule_set="ied-lcp", time_zone="UTC"), [])


def value(exposition: str, name: str) -> float:
    found = re.findall(rf"^{name} ([0-9.e+-]+)$", exposition, flags=re.MULTILINE)
    assert len(found) == 1, f"{name} appears {len(found)} times"
    return float(found[0])


async def test_rollup_running_periods_are_in_metrics(tmp_path: Path) -> None:
    """The rollup engine's running periods (its one per-series memory) and how often they were seeded from the
    store or evicted are visible, as every other bounded cache is."""
    config = GatewayConfig(
        gateway=GatewaySection(id="gw-metrics", state=tmp_path / "state.sqlite"),
        mqtt=MqttSection(host="127.0.0.1", port=1, sites="metrics"),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
    )
    store = SqliteStore(tmp_path / "aua.sqlite")
    await store.open()
    ledger = Ledger(config.gateway.state)
    engine = RollupEngine.open(store, tmp_path / "rollups.sqlite", RULES)
    try:
        rows = [
            StoredReading(
                "metrics", "a1", "gas", parameter, T0 + timedelta(hours=h, minutes=m), 10.0, "mg/m3", Quality.OK
            )
            for parameter in ("so2", "nox")
            for h in range(3)  # three hours: the oldest running hour of each series is dropped
            for m in range(0, 60, 5)
        ]
        await store.write(rows)
        await engine.note_written(rows)
        await engine.process_dirty()
        ingest = Ingest(config, store, ledger, rollups=engine)
        exposition = ingest.metrics.exposition().decode()
    finally:
        engine.close()
        ledger.close()
        await store.close()

    counters = engine.counters
    assert counters.open_periods > 0
    assert counters.seeded > 0
    assert counters.evicted > 0
    assert value(exposition, "aua_gateway_rollup_open_periods") == counters.open_periods
    assert value(exposition, "aua_gateway_rollup_seeded_total") == counters.seeded
    assert value(exposition, "aua_gateway_rollup_evicted_total") == counters.evicted


async def test_health_points_carry_the_spool_state(tmp_path: Path) -> None:
    """A full spool (no message taken, the broker holds them) shows in the aua_health points Grafana reads,
    as it does in /health and /metrics."""
    config = GatewayConfig(
        gateway=GatewaySection(id="gw-health", state=tmp_path / "state.sqlite"),
        mqtt=MqttSection(host="127.0.0.1", port=1, sites="health"),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
    )
    store = SqliteStore(tmp_path / "aua.sqlite")
    await store.open()
    ledger = Ledger(config.gateway.state)
    spool = Spool(tmp_path / "spool.sqlite", max_batches=1)
    try:
        ingest = Ingest(config, store, ledger, spool=spool)
        writer = HealthWriter(ingest, store)
        [empty] = writer.sample(T0)
        assert spool.put("health", "a1", 0, "aua/health/a1/readings", b"x" * 100)
        assert not spool.put("health", "a1", 1, "aua/health/a1/readings", b"y" * 100)  # full: waits for room
        [full] = writer.sample(T0 + timedelta(minutes=1))
        await writer.write_once()
        stored = await store.query_health(component="gateway")
    finally:
        spool.close()
        ledger.close()
        await store.close()

    assert {name: empty.fields[name] for name in ("spool_depth", "spool_bytes", "spool_full", "spool_full_count")} == {
        "spool_depth": 0,
        "spool_bytes": 0,
        "spool_full": 0,
        "spool_full_count": 0,
    }
    assert {name: full.fields[name] for name in ("spool_depth", "spool_bytes", "spool_full", "spool_full_count")} == {
        "spool_depth": 1,
        "spool_bytes": 100,
        "spool_full": 1,
        "spool_full_count": 1,
    }
    assert full.fields["spool_full_seconds"] >= 0
    assert set(full.fields) <= set(lp.HEALTH_GATEWAY_FIELDS)
    assert [(p.fields["spool_full"], p.fields["spool_full_count"]) for p in stored] == [(1, 1)]
