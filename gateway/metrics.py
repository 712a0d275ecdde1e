"""The gateway's Prometheus metrics and health, read from the live ingest at scrape time.

Counters come from IngestStats and the ledger when Prometheus asks, so the hot path only increments
plain integers; write latency is the one histogram observed on the path itself. Per-agent label sets
are bounded (`[gateway] metrics_max_agents`, or only the registry's agents when it lists them): anyone
who can publish can invent names, and a scrape must not grow with every name ever seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.alerts.engine import AlertEngine
    from gateway.http_api import HttpApi
    from gateway.ingest.ledger import AgentAccount
    from gateway.ingest.service import Ingest
    from gateway.mrv.rollup_engine import EngineCounters

OTHER = "_other"
"""site and agent label of the one series that sums the agents beyond the label limit."""

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
        yield from _spool(self.ingest)
        if self.ingest.rollups is not None:
            yield from _rollup_bounds(self.ingest.rollups.counters)
        if self.ingest.awaiting is not None:  # mrv without ingest (gateway/mrv/stored_batches.py)
            awaiting = self.ingest.awaiting
            yield GaugeMetricFamily(
                "aua_gateway_batches_awaiting_receipt", "batches seen, not yet shown stored", value=len(awaiting)
            )
            yield CounterMetricFamily(
                "aua_gateway_batches_receipt_given_up",
                "batches rolled up without their receipt (more than the bound were waiting)",
                value=awaiting.counts.given_up,
            )
        yield CounterMetricFamily(
            "aua_gateway_batches_observed",
            "batches seen and left to the ingest instances to store",
            value=self.ingest.stats.observed,
        )
        yield GaugeMetricFamily(
            "aua_gateway_broker_connected", "1 while subscribed", value=float(self.ingest.connected.is_set())
        )
        screen = self.ingest.screen
        yield CounterMetricFamily(
            "aua_gateway_screen_cache_evictions",
            "series whose stuck/spike history was dropped ([registry] screen_cache_series)",
            value=screen.evictions,
        )
        yield GaugeMetricFamily("aua_gateway_screen_cache_series", "series with stuck/spike history", value=len(screen))
        acks = self.ingest.acks
        yield GaugeMetricFamily(
            "aua_gateway_unacknowledged_messages",
            "messages received and not yet durable, so not acknowledged to the broker",
            value=0 if acks is None else acks.waiting,
        )
        labelled, folded = _bounded_accounts(self.ingest)
        missing = GaugeMetricFamily(
            "aua_gateway_missing_batches",
            f"sequence numbers not (yet) received, per agent (agents beyond the label limit: {OTHER})",
            labels=["site", "agent"],
        )
        for account in labelled:
            missing.add_metric([account.site, account.agent], account.missing)
        if folded:
            missing.add_metric([OTHER, OTHER], sum(account.missing for account in folded))
        yield missing
        yield GaugeMetricFamily(
            "aua_gateway_metrics_agents_folded",
            f"agents without labels of their own in /metrics, summed under agent={OTHER!r} "
            "([gateway] metrics_max_agents, or not in [registry] agents)",
            value=len(folded),
        )
        for api in self.ingest.metrics.http_apis:
            refused = CounterMetricFamily(
                "aua_gateway_http_refused", "HTTP requests answered with an error or dropped", labels=["reason"]
            )
            for reason, count in sorted(api.refused.items()):
                refused.add_metric([reason], count)
            yield refused
        yield from _ledger_bounds(self.ingest)
        if self.ingest.alerts is not None:
            yield from _alert_bounds(self.ingest.alerts)


def _spool(ingest: Ingest) -> Iterator[Metric]:
    """The spool's fill against [gateway] spool_max_bytes / spool_max_batches, and how often and how long it was
    full (the gateway then takes no messages: they wait unacknowledged on the broker)."""
    spool = ingest.spool
    yield GaugeMetricFamily("aua_gateway_spool_depth", "batches waiting for the store", value=spool.depth)
    yield GaugeMetricFamily("aua_gateway_spool_bytes", "payload bytes waiting for the store", value=spool.size)
    yield GaugeMetricFamily(
        "aua_gateway_spool_full", "1 while the spool is full and no message is taken", value=float(spool.full)
    )
    yield CounterMetricFamily(
        "aua_gateway_spool_full_events",
        "times the spool became full ([gateway] spool_max_bytes, spool_max_batches)",
        value=spool.full_count,
    )
    yield CounterMetricFamily(
        "aua_gateway_spool_full_seconds",
        "seconds the spool was full (messages left on the broker)",
        value=spool.full_seconds,
    )


def _rollup_bounds(counters: EngineCounters) -> Iterator[Metric]:
    """The rollup engine's running periods in memory, and how often they were rebuilt from the store or
    dropped to keep their bound (gateway/mrv/rollup_engine.py): a bound too small for the series shows as seeds
    and evictions that keep rising."""
    yield GaugeMetricFamily(
        "aua_gateway_rollup_open_periods", "running rollup periods held in memory", value=counters.open_periods
    )
    yield CounterMetricFamily(
        "aua_gateway_rollup_seeded",
        "running rollup periods built from the store (start, a new period, late data into an older one)",
        value=counters.seeded,
    )
    yield CounterMetricFamily(
        "aua_gateway_rollup_evicted", "running rollup periods dropped to keep their bound", value=counters.evicted
    )
    yield GaugeMetricFamily(
        "aua_gateway_rollup_open_series", "series with running rollup totals in memory", value=counters.open_series
    )
    yield CounterMetricFamily(
        "aua_gateway_rollup_evicted_series",
        "series whose running rollup totals were forgotten to keep [rollup] max_open_series",
        value=counters.evicted_series,
    )
    yield CounterMetricFamily(
        "aua_gateway_rollup_expired_minutes",
        "minutes of late data before the raw-data retention horizon whose rollups are stored: not rolled up",
        value=counters.expired_minutes,
    )


def _bounded_accounts(ingest: Ingest) -> tuple[list[AgentAccount], list[AgentAccount]]:
    """The accounts that get labels of their own, and the rest. Registered agents when the registry lists
    them (a bound the operator chose), else the first metrics_max_agents in the ledger's order."""
    accounts = ingest.ledger.accounts()
    registered = ingest.config.registry.agents
    if registered:
        names = frozenset(registered)
        labelled = [a for a in accounts if f"{a.site}/{a.agent}" in names]
        return labelled, [a for a in accounts if f"{a.site}/{a.agent}" not in names]
    limit = ingest.config.gateway.metrics_max_agents
    return accounts[:limit], accounts[limit:]


def _alert_bounds(alerts: AlertEngine) -> Iterator[Metric]:
    """The alert engine's per-name state and caches ([alerts] max_series, gateway/alerts/engine.py)."""
    yield GaugeMetricFamily(
        "aua_gateway_alert_series", "agents, instruments and series with alert state", value=len(alerts.tracked)
    )
    yield CounterMetricFamily(
        "aua_gateway_alert_series_refused",
        "observations of new agents, instruments or series not evaluated: [alerts] max_series reached",
        value=alerts.tracked.refused,
    )
    yield CounterMetricFamily(
        "aua_gateway_alert_rule_cache_evictions",
        "names whose applicable rules were dropped from the bounded cache (recomputed when seen again)",
        value=alerts.rule_cache_evictions,
    )
    yield CounterMetricFamily(
        "aua_gateway_alert_transitions_lost",
        "alert transitions dropped while the state file kept refusing writes",
        value=alerts.unwritten_lost,
    )


def _ledger_bounds(ingest: Ingest) -> Iterator[Metric]:
    """What the [ledger] bounds hold and drop (gateway/ingest/ledger.py), and what gap repair left for later."""
    stats = ingest.stats
    yield GaugeMetricFamily(
        "aua_gateway_resend_not_asked", "owed batches the last gap check left for later", value=stats.resend_not_asked
    )
    yield CounterMetricFamily(
        "aua_gateway_refused_batches", "batches the store refused for good", value=stats.refused_batches
    )
    yield CounterMetricFamily(
        "aua_gateway_agents_refused",
        "messages of new agent ids refused beyond [ledger] max_agents (dead letters)",
        value=stats.agents_refused,
    )
    yield GaugeMetricFamily(
        "aua_gateway_repair_agents", "agents whose missing batches gap repair is timing", value=len(ingest.schedule)
    )
    yield CounterMetricFamily(
        "aua_gateway_repair_agents_forgotten",
        "agents whose gap-repair timing was dropped beyond [ledger] repair_max_agents (their holes wait again)",
        value=ingest.schedule.forgotten,
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
        ("receipts_pruned", "batch receipts pruned from the store ([ledger] receipt_batches, agents' oldest_seq)"),
    ):
        yield CounterMetricFamily(f"aua_gateway_{name}", text, value=counters[name])


class GatewayMetrics:
    """One registry per gateway (not the global one), so several gateways in a process stay apart."""

    def __init__(self) -> None:
        self.http_apis: list[HttpApi] = []
        self.registry = CollectorRegistry()
        self.write_seconds = Histogram(
            "aua_gateway_store_write_seconds", "store write latency", registry=self.registry, buckets=WRITE_BUCKETS
        )

    def attach(self, ingest: Ingest) -> None:
        self.registry.register(_IngestCollector(ingest))

    def attach_http(self, api: HttpApi) -> None:
        """Count what this HTTP server refused (oversized, slow, too many connections)."""
        self.http_apis = [api]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class Health:
    broker_connected: bool
    spool_depth: int
    tasks: dict[str, str] = field(default_factory=dict)
    spool_bytes: int = 0
    spool_full: bool = False
    """The spool is at its bound: no message is taken until it drains (the broker holds them)."""
    spool_full_count: int = 0
    spool_full_seconds: float = 0.0

    @property
    def status(self) -> str:
        """failing when a task is dead or stalled (the process is about to stop, or should be restarted);
        else ok, or degraded while the broker is away or batches wait for the store (nothing is lost)."""
        if any(state != "running" for state in self.tasks.values()):
            return "failing"
        return "ok" if self.broker_connected and self.spool_depth == 0 else "degraded"
