"""What /metrics shows of the gateway's bounded in-memory state, read from a real ingest at scrape time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aua_contract import Quality
from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection
from gateway.ingest import Ingest
from gateway.ledger import Ledger
from gateway.mrv_config import RollupSection, RuleResolver
from gateway.rollup_engine import RollupEngine
from gateway.stores import SqliteStore, StoredReading

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
