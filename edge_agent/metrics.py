"""Prometheus endpoint of a running agent: per-device polls, errors and latency, bus, outbox and MQTT counters.

A collector reads the counters the agent keeps anyway when scraped, so polling costs nothing extra. Served by
`MetricsServer` on the agent's own event loop, with per-connection timeouts and a cap on open connections.
Off by default; `[agent] metrics_port` turns it on (bind `metrics_host`, 127.0.0.1 unless told otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from edge_agent.resend import Outcome

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from edge_agent.poller import Agent


class AgentCollector(Collector):
    def __init__(self, agent: Agent, server: MetricsServer | None = None) -> None:
        self.agent = agent
        self.server = server

    def server_counts(self) -> dict[str, int]:
        server = self.server
        if server is None:
            return {}
        return {
            "served": server.served,
            "bad_request": server.bad_requests,
            "timeout": server.timed_out,
            "evicted": server.evicted,
        }

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
        late = CounterMetricFamily(
            "aua_agent_late_polls",
            "Polls not finished by their cycle's deadline; their readings went into a later batch, stamped when read",
            labels=labels,
        )
        busy = CounterMetricFamily(
            "aua_agent_busy_skips",
            "Ticks an instrument was not polled at because its earlier poll was still running",
            labels=labels,
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
            late.add_metric(values, stats.late_polls)
            busy.add_metric(values, stats.busy_skips)
        yield from (polls, requests, errors, latency, last, isolated, late, busy)

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
            ("bytes", "Payload bytes in the outbox (bound: outbox_max_bytes)", outbox.bytes),
        ):
            gauge = GaugeMetricFamily(f"aua_agent_outbox_{name}", text)
            gauge.add_metric([], value)
            yield gauge
        for name, text, count in (
            ("dropped", "Unsent batches dropped by a full outbox", outbox.dropped),
            (
                "cut_cycles",
                "Poll cycles a stop (kill, power cut) cut short before sealing; their unread readings are missing",
                outbox.cut_cycles,
            ),
            ("recovered_readings", "Readings of cut-short cycles sealed at the next start", outbox.recovered_readings),
        ):
            family = CounterMetricFamily(f"aua_agent_outbox_{name}", text)
            family.add_metric([], count)
            yield family

        publisher = agent.publisher
        for name, text, counter_value in (
            ("published", "Batches published and acknowledged by the broker", publisher.published),
            ("resent", "Batches published again on the gateway's request", publisher.resent),
            ("cycles", "Poll cycles", agent.cycles),
            (
                "cycle_overruns",
                "Poll cycles that ended after the next tick was due (sealing or a starved agent); ticks were skipped",
                agent.overruns,
            ),
            (
                "ticks_skipped",
                "Ticks skipped for every instrument: a cycle ended more than half an interval after them",
                agent.ticks_skipped,
            ),
            ("clock_jumps", "Wall clock jumps seen between polls", agent.clock_jumps),
        ):
            counter = CounterMetricFamily(f"aua_agent_{name}", text)
            counter.add_metric([], counter_value)
            yield counter
        requests = CounterMetricFamily(
            "aua_agent_resend_requests",
            "Resend requests by outcome (limited: cut to resend_max_batches; refused: resend_max_queued reached)",
            labels=["outcome"],
        )
        for outcome in Outcome:
            requests.add_metric([outcome.value], publisher.resend_requests[outcome])
        yield requests
        queued = GaugeMetricFamily("aua_agent_resend_queued", "Batches waiting to be republished on request")
        queued.add_metric([], publisher.resend_queue.queued)
        yield queued
        served = CounterMetricFamily(
            "aua_agent_metrics_requests",
            "Requests to this endpoint by how they ended (evicted: closed for a newer connection past the cap)",
            labels=["outcome"],
        )
        for ending, value in self.server_counts().items():
            served.add_metric([ending], value)
        yield served
        connected = GaugeMetricFamily("aua_agent_mqtt_connected", "1 while connected to the broker")
        connected.add_metric([], 1 if publisher.connected else 0)
        yield connected
        cycle = GaugeMetricFamily("aua_agent_last_cycle_seconds", "Duration of the last poll cycle")
        cycle.add_metric([], agent.last_cycle_s)
        yield cycle


METRICS_MAX_CONNECTIONS = 16
"""Connections served at once; a new one past this closes the oldest (a slow client cannot lock scrapes out)."""

METRICS_TIMEOUT_S = 10.0
"""Whole request (read, render, write) per connection; then the connection is closed."""

MAX_LINE_BYTES = 64 * 1024
"""Longest request or header line; longer ones get 414/431, not a traceback."""

MAX_HEADER_LINES = 100


class MetricsServer:
    """A small HTTP/1.1 responder on the agent's event loop: GET /metrics, one request per connection.

    prometheus_client's own server is a thread per connection without timeouts: 500 slow connections held 504
    threads (issue 13). Here a connection costs a coroutine, lives at most METRICS_TIMEOUT_S, and at most
    METRICS_MAX_CONNECTIONS are open; the text is rendered in a worker thread so a scrape never waits on the loop
    and the loop never waits on the outbox.
    """

    def __init__(
        self,
        agent: Agent,
        host: str,
        port: int,
        *,
        timeout_s: float = METRICS_TIMEOUT_S,
        max_connections: int = METRICS_MAX_CONNECTIONS,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent, self))
        self.served = 0
        self.evicted = 0
        self.timed_out = 0
        self.bad_requests = 0
        self._open: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_LINE_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task, writer in list(self._open.items()):
            task.cancel()
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._open) >= self.max_connections:
            oldest, oldest_writer = next(iter(self._open.items()))
            self._open.pop(oldest)
            oldest.cancel()
            oldest_writer.transport.abort()
            self.evicted += 1
        self._open[task] = writer
        finished = False
        try:
            async with asyncio.timeout(self.timeout_s):
                status, content_type, body = await self._respond(reader)
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
                if not status.startswith("200"):
                    await self._linger(reader, writer)
                finished = True
                self.served += 1
        except TimeoutError:
            self.timed_out += 1
        except OSError:
            pass  # the client went away
        finally:
            self._open.pop(task, None)
            if finished:
                writer.close()
            else:
                writer.transport.abort()

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """After an error answer, read (and drop) what the client still sends for a moment: closing with unread
        input resets the connection, and the client would lose the answer."""
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                for _ in range(64):
                    if not await reader.read(64 * 1024):
                        break

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        """Status, content type and body for one request."""
        try:
            line = await reader.readline()
        except ValueError:
            return self._error("414 URI Too Long", "request line longer than 64 KiB")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return self._error("400 Bad Request", "not an HTTP request line")
        for _ in range(MAX_HEADER_LINES):
            try:
                header = await reader.readline()
            except ValueError:
                return self._error("431 Request Header Fields Too Large", "header line longer than 64 KiB")
            if header in (b"\r\n", b"\n", b""):
                break
        else:
            return self._error("431 Request Header Fields Too Large", f"more than {MAX_HEADER_LINES} header lines")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return self._error("405 Method Not Allowed", "only GET")
        if target not in (b"/metrics", b"/"):
            return self._error("404 Not Found", "the metrics are at /metrics")
        body = await asyncio.to_thread(generate_latest, self.registry)
        return "200 OK", CONTENT_TYPE_LATEST, body

    def _error(self, status: str, text: str) -> tuple[str, str, bytes]:
        self.bad_requests += 1
        return status, "text/plain; charset=utf-8", f"{status}: {text}\n".encode()
