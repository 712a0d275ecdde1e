"""State changes are logged once, not once per poll or per status message (issue 16).

The agent: a device that stops answering is a WARNING naming the device, its address and the error; its return
an INFO with how long it was away; nothing in between, however many polls fail. Driven against a real pymodbus
server that is stopped and started again. The gateway: an agent's status arrives every 10 s; only a change of
state is logged (a loss at WARNING, the return at INFO), through the real broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import aiomqtt
import pytest
from gateway_run import eventually, running_gateway
from ports import free_port
from servers import MosquittoServer

from aua_contract import AgentState, AgentStatus, encode_status, status_topic
from aua_ops import spoken_duration
from aua_simulator.incidents import Incidents
from aua_simulator.modbus_servers import Simulator
from aua_simulator.register_images import SimulatedInstrument
from edge_agent.config import Instrument, InstrumentSection
from edge_agent.driver import BadFrame, DeviceException, DeviceSilent, DeviceTimeout, DriverError, LinkDown
from edge_agent.instrument_reader import ModbusReader, unreachable
from edge_agent.modbus_drivers import build_drivers
from edge_agent.profiles import load_profile
from gateway.config import GatewayConfig
from gateway.ingest.agent_presence import Change, PresenceLog, change

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"

ANSWERED = None
TIMEOUT = DeviceTimeout("t")
DOWN = LinkDown("l")
REFUSED = DeviceException(4, "x")
GARBLED = BadFrame("b")


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([], None),
        ([ANSWERED], False),
        ([TIMEOUT, ANSWERED], False),
        ([REFUSED], False),  # a Modbus exception is an answer: the device is there
        ([TIMEOUT], True),
        ([DOWN, DOWN], True),
        ([DeviceSilent("s")], True),
        ([GARBLED], None),  # bytes came: neither here nor gone
        ([GARBLED, TIMEOUT], True),
    ],
)
def test_a_poll_is_unreachable_only_when_nothing_answered(
    outcomes: list[DriverError | None], expected: bool | None
) -> None:
    assert unreachable(outcomes) is expected


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        (None, AgentState.ONLINE, Change.FIRST_ONLINE),
        (None, AgentState.OFFLINE, Change.FIRST_OFFLINE),
        (AgentState.ONLINE, AgentState.ONLINE, None),
        (AgentState.OFFLINE, AgentState.OFFLINE, None),
        (AgentState.ONLINE, AgentState.OFFLINE, Change.WENT_OFFLINE),
        (AgentState.OFFLINE, AgentState.ONLINE, Change.BACK_ONLINE),
    ],
)
def test_presence_changes(previous: AgentState | None, current: AgentState, expected: Change | None) -> None:
    assert change(previous, current) is expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(-3, "0 s"), (0.4, "0 s"), (42, "42 s"), (59.6, "1 min 0 s"), (185, "3 min 5 s"), (8040, "2 h 14 min")],
)
def test_spoken_durations(seconds: float, expected: str) -> None:
    assert spoken_duration(seconds) == expected


def test_the_presence_memory_is_bounded() -> None:
    presence = PresenceLog(max_agents=2)
    for agent in ("a", "b", "c"):
        presence.note(AgentStatus(site="s", agent=agent, state=AgentState.ONLINE), now=0.0)
    assert presence.forgotten == 1
    # "a" was forgotten: its next status counts as first seen again; "c" is remembered
    assert presence.note(AgentStatus(site="s", agent="a", state=AgentState.ONLINE), now=1.0) is Change.FIRST_ONLINE
    assert presence.note(AgentStatus(site="s", agent="c", state=AgentState.ONLINE), now=1.0) is None


async def test_a_device_that_goes_away_is_logged_once_and_its_return_once(caplog: pytest.LogCaptureFixture) -> None:
    profile = load_profile(PROFILES / "met-station.toml")
    port = free_port()
    simulator = Simulator({port: [SimulatedInstrument("met", profile, 1)]}, incidents=Incidents.none())
    instrument = Instrument(
        config=InstrumentSection(id="met", profile=Path("x"), port=port, device_id=1), profile=profile
    )
    drivers = build_drivers([instrument])
    reader = ModbusReader(instrument, drivers.by_instrument["met"])
    endpoint = reader.driver.endpoint
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    polls_down = 0
    try:
        await simulator.start()
        for _ in range(3):
            assert all(r.value is not None for r in await reader.poll())
        await simulator.stop()
        stopped = time.monotonic()
        for _ in range(8):  # spans several reconnect attempts (backoff 0.5, 1 s ...)
            assert all(r.value is None for r in await reader.poll())
            polls_down += 1
            await asyncio.sleep(0.2)
        await simulator.start()
        for _ in range(100):
            readings = await reader.poll()
            if all(r.value is not None for r in readings):
                break
            polls_down += 1
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the device never answered again")
        away = time.monotonic() - stopped
        for _ in range(3):
            assert all(r.value is not None for r in await reader.poll())
    finally:
        await drivers.close()
        await simulator.stop()
    records = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("edge_agent.")]
    mine = [r for r in records if r.name == "edge_agent.instrument_reader"]
    assert [r.levelno for r in mine] == [logging.WARNING, logging.INFO], [r.getMessage() for r in records]
    lost, back = (r.getMessage() for r in mine)
    assert lost.startswith(f"met at {endpoint}: the device does not answer (")
    assert f"tcp://127.0.0.1:{port}#1" in endpoint
    assert "Connection refused" in lost or "Connect call failed" in lost or "closed" in lost, lost
    assert back.startswith(f"met at {endpoint}: the device answers again after ")
    assert back.endswith(f" away ({polls_down} polls without an answer)"), back
    said = back.split(" after ")[1].split(" away")[0]
    assert said in {spoken_duration(away - s) for s in (0, 0.5, 1)}, (said, away)  # within a poll of the truth
    # nothing else at INFO or above from the agent's readers and drivers while it was away
    assert [r for r in records if r not in mine and not r.name.startswith("aua_simulator.")] == []
    assert (reader.stats.losses, reader.stats.unreachable_since, reader.stats.unreachable_polls) == (1, None, 0)


async def test_the_gateway_logs_an_agents_presence_only_when_it_changes(
    mosquitto: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = f"p{uuid.uuid4().hex[:8]}"
    config = GatewayConfig.model_validate(
        {
            "gateway": {"id": f"gw-{site}", "state": str(tmp_path / "state.sqlite")},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "sites": site},
            "store": {"url": f"sqlite://{tmp_path / 'aua.sqlite'}"},
        }
    )
    online, offline = AgentState.ONLINE, AgentState.OFFLINE
    states = [online, online, online, offline, offline, online, online]
    caplog.set_level(logging.INFO, logger="gateway")
    async with (
        running_gateway(config) as ingest,
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"pub-{site}") as client,
    ):
        for state in states:  # not retained: nothing left behind on the shared broker
            status = AgentStatus(site=site, agent="a1", state=state, next_seq=0)
            await client.publish(status_topic(site, "a1"), encode_status(status), qos=1)
        await eventually(lambda: ingest.stats.messages == len(states))
    said = [(r.levelno, r.getMessage()) for r in caplog.records if f"{site}/a1" in r.getMessage()]
    assert said == [
        (logging.INFO, f"agent {site}/a1 is online"),
        (logging.WARNING, said[1][1]),
        (logging.INFO, said[2][1]),
    ], said
    assert said[1][1].startswith(f"agent {site}/a1 went offline after 0 s online")
    assert said[2][1] == f"agent {site}/a1 is online again after 0 s offline"
