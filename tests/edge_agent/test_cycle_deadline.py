"""A device slower than the poll interval no longer costs the others their ticks (issue 17's N=500 finding).

Real pymodbus servers play the instruments (aua_simulator), one of them answering every request 1.5 s late with a
1 s poll interval. The agent runs as in production (`Agent.run`, outbox on disk, a real mosquitto). What it sealed
is read back from the outbox: every fast instrument has readings for every tick, the slow one's readings all
arrive (with values, in later batches, stamped when they came) and it alone skips the ticks while it is busy.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from datetime import datetime
from pathlib import Path

from agent_site import write_site
from eventually import eventually
from ports import free_port
from prometheus_client import CollectorRegistry, generate_latest
from servers import MosquittoServer

from aua_contract import Quality, decode_batch
from aua_simulator.incidents import Incidents
from aua_simulator.modbus_servers import Quirks, simulator_for_config
from edge_agent.config import load_config
from edge_agent.metrics import AgentCollector
from edge_agent.outbox import Outbox
from edge_agent.poller import Agent

FAST = ("met", "dust", "flow")
SLOW_DELAY_S = 1.5


async def test_a_slow_device_is_not_waited_for_and_the_others_deliver_every_tick(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    outbox_path = tmp_path / "outbox.sqlite"
    config = write_site(
        tmp_path / "site.toml",
        agent={
            "site": "deadline-site",
            "id": f"agent-{uuid.uuid4().hex[:6]}",
            "poll_interval": 1.0,
            "outbox": str(outbox_path),
        },
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        instruments=[
            {"id": "met", "profile": "met-station", "port": free_port(), "device_id": 1},
            {"id": "dust", "profile": "stack-dust", "port": free_port(), "device_id": 1},
            {"id": "flow", "profile": "stack-flow", "port": free_port(), "device_id": 1},
            # answers every request, later than the cycle, well within its own timeout: slow, not dead
            {"id": "slow", "profile": "mercury-analyzer", "port": free_port(), "device_id": 1, "timeout": 4.0},
        ],
    )
    loaded = load_config(config)
    async with simulator_for_config(
        loaded, seed=3, incidents=Incidents.none(), quirks={"slow": Quirks(delay_s=SLOW_DELAY_S)}
    ) as simulator:
        agent = Agent(loaded)
        running = asyncio.create_task(agent.run())
        slow = next(reader for reader in agent.readers if reader.instrument.id == "slow")
        await eventually(lambda: agent.cycles >= 8, timeout=60, what="8 poll cycles")
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        served = {
            instrument: {value for tick in simulator.served(instrument) for value in tick.values.values()}
            for instrument in (*FAST, "slow")
        }

    outbox = Outbox(outbox_path)
    try:
        batches = [decode_batch(payload) for _, payload in outbox.get(0, outbox.stats().next_seq)]
    finally:
        outbox.close()
    ticks: dict[str, set[int]] = {instrument: set() for instrument in (*FAST, "slow")}
    slow_stamps: list[datetime] = []
    for batch in batches:
        for reading in batch.readings:
            ticks[reading.instrument].add(math.floor(reading.ts.timestamp()))
            assert reading.ts <= batch.sent_at  # stamped when read, never ahead of the batch that carries it
            if reading.instrument == "slow":
                # a late answer is a full reading: a value the device served, not a failure put in its place
                assert reading.quality is not Quality.FAILURE
                assert reading.value in served["slow"]
                slow_stamps.append(reading.ts)

    # Every fast instrument was read at every tick from the first cycle to the last: the slow one's lateness
    # skipped no tick for them, and no cycle overran.
    first, last = min(ticks["met"]), max(ticks["met"])
    for instrument in FAST:
        assert ticks[instrument] == set(range(first, last + 1)), (instrument, sorted(ticks[instrument]))
        reader = next(r for r in agent.readers if r.instrument.id == instrument)
        assert (reader.stats.late_polls, reader.stats.busy_skips) == (0, 0)
    assert agent.overruns == 0
    assert agent.ticks_skipped == 0

    # The slow one was late at its polls and skipped the ticks that came while it was busy; every poll it
    # finished reached the outbox (the last may have been cut by the stop).
    slow_tags = len(slow.instrument.profile.tag)
    finished_polls = len(slow_stamps) // slow_tags
    assert len(slow_stamps) % slow_tags == 0
    assert slow.stats.polls - 1 <= finished_polls <= slow.stats.polls
    assert slow.stats.late_polls >= 3
    assert slow.stats.busy_skips >= 3
    assert slow.stats.errors == {}  # no timeout: it was never given up on
    # its readings came in a later batch than the cycle that started their poll: never more than one poll's
    # readings to a tick, and stamped about the delay after a tick
    assert len(ticks["slow"]) == finished_polls

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    text = generate_latest(registry).decode()
    slow_labels = f'endpoint="{slow.driver.endpoint}",instrument="slow"'
    assert f"aua_agent_late_polls_total{{{slow_labels}}} {float(slow.stats.late_polls)}" in text
    assert f"aua_agent_busy_skips_total{{{slow_labels}}} {float(slow.stats.busy_skips)}" in text
    assert "aua_agent_ticks_skipped_total 0.0" in text


async def test_a_late_poll_is_staged_when_it_lands_and_sealed_with_the_next_cycle(tmp_path: Path) -> None:
    """Cycle by cycle: a poll past its cycle's deadline is not waited for; at the next tick its instrument is
    still busy and skips it (counted); when its answer lands it is staged at once in a cycle marked as begun (a
    kill from then on keeps it: the next start seals it), and the next seal carries it."""
    config = write_site(
        tmp_path / "site.toml",
        agent={"site": "deadline-site", "id": "cycle-by-cycle", "outbox": str(tmp_path / "o.sqlite")},
        mqtt={"host": "127.0.0.1", "port": free_port()},
        instruments=[
            {"id": "met", "profile": "met-station", "port": free_port(), "device_id": 1},
            {"id": "slow", "profile": "mercury-analyzer", "port": free_port(), "device_id": 1, "timeout": 6.0},
        ],
    )
    loaded = load_config(config)
    async with simulator_for_config(loaded, seed=4, incidents=Incidents.none(), quirks={"slow": Quirks(delay_s=2.0)}):
        agent = Agent(loaded)
        met, slow = agent.readers
        met_tags, slow_tags = len(met.instrument.profile.tag), len(slow.instrument.profile.tag)
        try:
            first = await agent.poll_cycle(deadline=time.time() + 0.3)
            assert first == met_tags  # sealed without the slow one
            assert (slow.stats.late_polls, slow.stats.busy_skips) == (1, 0)

            second = await agent.poll_cycle(deadline=time.time() + 0.3)
            assert (slow.stats.polls, slow.stats.busy_skips) == (1, 1)  # still busy: not asked again
            assert second == met_tags
            assert met.stats.polls == 2

            def staged() -> int:
                cut = agent.outbox.cut_cycle()
                return 0 if cut is None else cut.readings

            await eventually(lambda: staged() == slow_tags, timeout=30, what="the late answer staged")

            third = await agent.poll_cycle(deadline=time.time() + 0.3)
            assert third == met_tags + slow_tags  # the late readings, sealed with this cycle
            assert slow.stats.polls == 2  # free again: polled at this tick
        finally:
            await agent.stop_polls()
            await agent.drivers.close()
            stats = agent.outbox.stats()
            batches = [decode_batch(payload) for _, payload in agent.outbox.get(0, stats.next_seq)]
            agent.outbox.close()
    late = [reading for batch in batches for reading in batch.readings if reading.instrument == "slow"]
    assert len(late) == slow_tags
    assert all(reading.value is not None for reading in late)
