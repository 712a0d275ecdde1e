"""The gateway's Prometheus metrics and health, read from the live ingest at scrape time.

Counters come from IngestStats and the ledger when Prometheus asks, so the hot path only increments
plain integers; write latency is the one histogram observed on the path itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.ingest import Ingest

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _IngestCollector(Collector):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def collect(self) -> Iterator[Metric]:
        stats = self.ingest.stats
        for name, value, text in (
            ("aua_gateway_messages", stats.messages, "MQTT messages received"),
            ("aua_gateway_batches", stats.batches, "batches made durable (store or spool)"),
            ("aua_gateway_readings", stats.readings, "readings made durable"),
            ("aua_gateway_duplicates", stats.duplicates, "batches dropped as already received"),
            ("aua_gateway_reused_sequence", stats.reused, "batches under a sequence number used before (stored)"),
            ("aua_gateway_dead_letters", stats.dead_letters, "messages or readings kept as dead letters"),
            ("aua_gateway_store_retries", stats.store_retries, "store writes retried"),
            ("aua_gateway_resend_requests", stats.resend_requests, "resend requests sent to agents"),
        ):
            yield CounterMetricFamily(name, text, value=value)
        depth = self.ingest.spool.depth
        yield GaugeMetricFamily("aua_gateway_spool_depth", "batches waiting for the store", value=depth)
        yield GaugeMetricFamily(
            "aua_gateway_broker_connected", "1 while subscribed", value=float(self.ingest.connected.is_set())
        )
        missing = GaugeMetricFamily(
            "aua_gateway_missing_batches", "sequence numbers not (yet) received, per agent", labels=["site", "agent"]
        )
        for account in self.ingest.ledger.accounts():
            missing.add_metric([account.site, account.agent], account.missing)
        yield missing
        yield from _ledger_bounds(self.ingest)


def _ledger_bounds(ingest: Ingest) -> Iterator[Metric]:
    """What the [ledger] bounds hold and drop (gateway/ledger.py), and what gap repair left for later."""
    stats = ingest.stats
    yield GaugeMetricFamily(
        "aua_gateway_resend_not_asked", "owed batches the last gap check left for later", value=stats.resend_not_asked
    )
    yield CounterMetricFamily(
        "aua_gateway_refused_batches", "batches the store refused for good", value=stats.refused_batches
    )
    counters = ingest.ledger.counters()
    yield GaugeMetricFamily("aua_gateway_dead_letter_rows", "dead letters kept", value=counters["dead_letter_rows"])
    yield GaugeMetricFamily(
        "aua_gateway_dead_letter_bytes", "dead-letter payload bytes kept", value=counters["dead_letter_bytes"]
    )
    for name, text in (
        ("dead_letters_pruned", "dead letters pruned by rows, bytes or age"),
        ("dead_letters_truncated", "dead letters kept with their payload cut"),
        ("batch_detail_pruned", "per-batch ledger detail dropped beyond its window (ranges kept)"),
        ("resend_ranges_pruned", "filled resend ranges dropped"),
    ):
        yield CounterMetricFamily(f"aua_gateway_{name}", text, value=counters[name])


class GatewayMetrics:
    """One registry per gateway (not the global one), so several gateways in a process stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.write_seconds = Histogram(
            "aua_gateway_store_write_seconds", "store write latency", registry=self.registry, buckets=WRITE_BUCKETS
        )

    def attach(self, ingest: Ingest) -> None:
        self.registry.register(_IngestCollector(ingest))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class Health:
    broker_connected: bool
    spool_depth: int

    @property
    def status(self) -> str:
        """ok, or degraded while the broker is away or batches wait for the store (nothing is lost either way)."""
        return "ok" if self.broker_connected and self.spool_depth == 0 else "degraded"
