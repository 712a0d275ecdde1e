"""The running agent: UTC sample stamps, clock jumps, the Prometheus endpoint, outbox bounds on a timer, logs."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from agent_site import write_site
from ports import free_port
from servers import MosquittoServer

from aua_contract import Quality, decode_batch
from aua_simulator.modbus_servers import simulator_for_config
from aua_simulator.rtu_line import RtuLine
from edge_agent.config import load_config
from edge_agent.logs import JsonFormatter
from edge_agent.outbox import Outbox
from edge_agent.poller import Agent, Stager, clock_jump
from edge_agent.sealing import Sample, fragments_of


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ((1000.0, 50.0), (1001.0, 51.0), None),  # in step
        ((1000.0, 50.0), (1002.5, 51.0), None),  # within the tolerance of 2 s (a slow NTP slew)
        ((1000.0, 50.0), (1004.0, 51.0), 3.0),  # stepped forward
        ((1000.0, 50.0), (3.0, 51.0), -998.0),  # set back (a gateway without RTC getting its time late: reverse)
        ((1000.0, 50.0), (1000.0, 60.0), -10.0),  # the wall clock stood still while time passed
    ],
)
def test_clock_jumps(before: tuple[float, float], after: tuple[float, float], expected: float | None) -> None:
    assert clock_jump(before, after, tolerance=2.0) == expected


def test_json_log_lines() -> None:
    record = logging.LogRecord("edge_agent.bus", logging.WARNING, "f.py", 1, "device %d silent", (3,), None)
    record.created = 1_800_000_000.25
    record.instrument = "gas1"
    document = json.loads(JsonFormatter().format(record))
    assert document == {
        "ts": "2027-01-15T08:00:00.250Z",
        "level": "warning",
        "logger": "edge_agent.bus",
        "msg": "device 3 silent",
        "instrument": "gas1",
    }


def samples(instrument: str, count: int) -> list[Sample]:
    ts = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    return [Sample(instrument, f"t{i}", float(i), "mg/m3", ts, Quality.OK, None) for i in range(count)]


async def test_readings_are_staged_as_soon_as_added_and_wait_in_a_thread_while_the_outbox_is_busy(
    tmp_path: Path,
) -> None:
    """A free outbox takes an instrument's readings before `add` returns (a kill -9 right after keeps them); a busy
    one (a synced append, a prune) makes the stager wait in a thread, taking what arrives meanwhile in one
    transaction, without holding up the event loop."""
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.begin_cycle(7)
    stager = Stager(outbox, 7, max_readings=1000)
    stager.add(1, samples("b", 3))
    cut = outbox.cut_cycle()
    assert cut is not None
    assert cut.fragments == fragments_of(samples("b", 3), 1000)
    assert stager.transactions == 1

    held = outbox._lock  # what a synced append or a prune holds while it runs in its thread
    held.acquire()
    try:
        stager.add(0, samples("a", 2))
        stager.add(2, samples("c", 1))
        await asyncio.sleep(0.05)  # the loop runs on while the outbox is busy
        assert stager.transactions == 1
    finally:
        held.release()
    fragments = await stager.fragments()
    assert fragments == [
        *fragments_of(samples("a", 2), 1000),
        *fragments_of(samples("b", 3), 1000),
        *fragments_of(samples("c", 1), 1000),
    ]  # in reader order, for the seal
    assert stager.transactions == 2  # the two that waited went in one transaction
    cut = outbox.cut_cycle()
    assert cut is not None
    assert cut.readings == 6
    outbox.close()


async def test_metrics_endpoint_shows_devices_buses_and_the_outbox(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    device_port, rtu_port, metrics_port = free_port(), free_port(), free_port()
    config = write_site(
        tmp_path / "site.toml",
        agent={
            "site": "m",
            "id": "a1",
            "poll_interval": 0.2,
            "outbox": str(tmp_path / "o.sqlite"),
            "metrics_port": metrics_port,
        },
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        instruments=[
            {"id": "hg", "profile": "mercury-analyzer", "port": device_port, "device_id": 1},
            {"id": "met", "profile": "met-station", "transport": "rtu-over-tcp", "port": rtu_port, "device_id": 2},
            {"id": "gone", "profile": "stack-dust", "transport": "rtu-over-tcp", "port": rtu_port, "device_id": 3,
             "timeout": 0.1},
        ],
    )  # fmt: skip
    loaded = load_config(config)
    tcp_site = loaded.model_copy(update={"instruments": loaded.instruments[:1]})
    rtu_site = loaded.model_copy(update={"instruments": loaded.instruments[1:2]})
    device_side = free_port()
    async with (
        simulator_for_config(tcp_site),
        simulator_for_config(rtu_site, rtu=True, port_map={rtu_port: device_side}),
        RtuLine(("127.0.0.1", device_side), port=rtu_port, silent=[3]),
    ):
        agent = Agent(loaded)
        started = datetime.now(UTC)
        running = asyncio.create_task(agent.run())
        await asyncio.sleep(1.2)
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    ended = datetime.now(UTC)
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[0] != "#"}
    bus = 'bus="rtu-over-tcp://127.0.0.1:' + str(rtu_port) + '"'
    hg = f'endpoint="tcp://127.0.0.1:{device_port}#1",instrument="hg"'
    assert metrics[f"aua_agent_polls_total{{{hg}}}"] >= 4
    assert metrics[f"aua_agent_poll_latency_seconds_count{{{hg}}}"] >= 4
    gone = f'endpoint="rtu-over-tcp://127.0.0.1:{rtu_port}#3",instrument="gone"'
    assert metrics[f'aua_agent_request_errors_total{{{gone},kind="timeout"}}'] >= 1
    assert metrics[f'aua_agent_request_errors_total{{{gone},kind="skipped"}}'] >= 1  # silent: probed only
    assert metrics[f"aua_agent_bus_exchanges_total{{{bus}}}"] >= 8
    assert metrics[f"aua_agent_bus_timeouts_total{{{bus}}}"] >= 1
    assert metrics["aua_agent_outbox_next_seq"] >= 4
    assert metrics["aua_agent_mqtt_connected"] == 1
    assert metrics["aua_agent_outbox_dropped_total"] == 0
    # readings are stamped in UTC, when they were read
    outbox_batches = agent.outbox_stats().next_seq
    assert outbox_batches >= 4
    box = Outbox(loaded.config.agent.outbox)
    stamps = [r.ts for _, payload in box.get(0, outbox_batches) for r in decode_batch(payload).readings]
    box.close()
    assert all(started <= ts <= ended and ts.utcoffset() == timedelta(0) for ts in stamps)


async def test_a_full_outbox_drops_the_oldest_unsent_counts_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device_port = free_port()
    config = write_site(
        tmp_path / "site.toml",
        agent={
            "site": "o",
            "id": "a1",
            "poll_interval": 0.05,
            "outbox": str(tmp_path / "o.sqlite"),
            "outbox_max_batches": 10,
            "outbox_prune_interval_s": 0.3,
        },
        mqtt={"host": "127.0.0.1", "port": free_port()},  # no broker: everything stays unsent
        instruments=[{"id": "hg", "profile": "mercury-analyzer", "port": device_port, "device_id": 1}],
    )
    loaded = load_config(config)
    caplog.set_level(logging.ERROR, logger="edge_agent")
    async with simulator_for_config(loaded):
        agent = Agent(loaded)
        running = asyncio.create_task(agent.run())
        await asyncio.sleep(1.2)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    stats = agent.outbox_stats()
    assert stats.stored == stats.pending == 10
    assert stats.dropped == stats.next_seq - 10 > 0
    assert stats.oldest_seq == stats.next_seq - 10
    assert any("outbox full (outbox_max_batches 10)" in r.getMessage() for r in caplog.records)


async def test_acknowledged_batches_are_pruned_on_a_timer(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    device_port = free_port()
    config = write_site(
        tmp_path / "site.toml",
        agent={
            "site": "p",
            "id": "a1",
            "poll_interval": 0.1,
            "outbox": str(tmp_path / "o.sqlite"),
            "outbox_retention_s": 0.2,
            "outbox_prune_interval_s": 0.2,
        },
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        instruments=[{"id": "hg", "profile": "mercury-analyzer", "port": device_port, "device_id": 1}],
    )
    loaded = load_config(config)
    async with simulator_for_config(loaded):
        agent = Agent(loaded)
        running = asyncio.create_task(agent.run())
        for _ in range(50):
            if agent.pruned:
                break
            await asyncio.sleep(0.1)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    stats = agent.outbox_stats()
    assert agent.pruned > 0
    assert stats.stored < stats.next_seq
    assert stats.dropped == 0
