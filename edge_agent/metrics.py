"""Prometheus endpoint of a running agent: per-device polls, errors and latency, bus, outbox and MQTT counters.

A collector reads the counters the agent keeps anyway when scraped, so polling costs nothing extra.
Off by default; `[agent] metrics_port` turns it on (bind `metrics_host`, 127.0.0.1 unless told otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from edge_agent.poller import Agent


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        labels = ["instrument", "endpoint"]
        polls = CounterMetricFamily("aua_agent_polls", "Polls of an instrument", labels=labels)
        requests = CounterMetricFamily("aua_agent_requests", "Modbus requests sent to an instrument", labels=labels)
        errors = CounterMetricFamily("aua_agent_request_errors", "Failed requests by kind", labels=[*labels, "kind"])
        latency = SummaryMetricFamily(
            "aua_agent_poll_latency_seconds", "Time to read an instrument's plan", labels=labels
        )
        last = GaugeMetricFamily("aua_agent_last_poll_seconds", "Duration of the last poll", labels=labels)
        isolated = GaugeMetricFamily(
            "aua_agent_isolated_tags", "Tags the device refuses (illegal address), not read any more", labels=labels
        )
        for reader in agent.readers:
            values = [reader.instrument.id, reader.driver.endpoint]
            stats = reader.stats
            polls.add_metric(values, stats.polls)
            requests.add_metric(values, stats.requests)
            for kind, count in sorted(stats.errors.items()):
                errors.add_metric([*values, kind], count)
            latency.add_metric(values, count_value=stats.polls, sum_value=stats.latency_sum_s)
            last.add_metric(values, stats.last_latency_s)
            isolated.add_metric(values, len(stats.isolated))
        yield from (polls, requests, errors, latency, last, isolated)

        bus_metrics = {
            name: CounterMetricFamily(f"aua_agent_bus_{name}", text, labels=["bus"])
            for name, text in (
                ("exchanges", "Requests put on a serial bus"),
                ("timeouts", "Requests on a bus that got no answer in time"),
                ("skipped", "Requests to a silent device failed without bus time"),
                ("foreign_frames", "Late answers skipped on a bus"),
                ("bad_frames", "Garbled answers on a bus"),
                ("reconnects", "Times a bus link was opened again"),
                ("busy_s", "Seconds a bus was busy with exchanges"),
            )
        }
        for bus in agent.drivers.buses.values():
            for name, family in bus_metrics.items():
                family.add_metric([bus.name], getattr(bus.stats, name))
        yield from bus_metrics.values()

        outbox = agent.outbox_stats()
        for name, text, value in (
            ("pending", "Batches in the outbox not yet acknowledged by the broker", outbox.pending),
            ("stored", "Batches in the outbox (pending and kept for resends)", outbox.stored),
            ("next_seq", "Sequence number of the next batch", outbox.next_seq),
        ):
            gauge = GaugeMetricFamily(f"aua_agent_outbox_{name}", text)
            gauge.add_metric([], value)
            yield gauge
        dropped = CounterMetricFamily("aua_agent_outbox_dropped", "Unsent batches dropped by a full outbox")
        dropped.add_metric([], outbox.dropped)
        yield dropped

        publisher = agent.publisher
        for name, text, counter_value in (
            ("published", "Batches published and acknowledged by the broker", publisher.published),
            ("resent", "Batches published again on the gateway's request", publisher.resent),
            ("cycles", "Poll cycles", agent.cycles),
            ("cycle_overruns", "Poll cycles longer than poll_interval", agent.overruns),
            ("clock_jumps", "Wall clock jumps seen between polls", agent.clock_jumps),
        ):
            counter = CounterMetricFamily(f"aua_agent_{name}", text)
            counter.add_metric([], counter_value)
            yield counter
        connected = GaugeMetricFamily("aua_agent_mqtt_connected", "1 while connected to the broker")
        connected.add_metric([], 1 if publisher.connected else 0)
        yield connected
        cycle = GaugeMetricFamily("aua_agent_last_cycle_seconds", "Duration of the last poll cycle")
        cycle.add_metric([], agent.last_cycle_s)
        yield cycle


def serve_metrics(agent: Agent, host: str, port: int) -> WSGIServer:
    """Start the endpoint in a daemon thread; call shutdown() and server_close() on the result to stop it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
