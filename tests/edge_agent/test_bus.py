"""One serial bus: fair turns, silent devices probed instead of waited for, late answers never mistaken.

Pure decisions in tables; then a real pty (socat) in front of a simulated line on which one device answers
too late, one never answers and one is slow but in time: the healthy devices get every value, every cycle.
A pty does not emulate baud rate, so the slowness is the devices' own (RtuLine delays), as it is on site.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ports import free_port
from serial_line import SocatPty

from aua_contract import Quality
from aua_simulator.incidents import Incidents
from aua_simulator.modbus_servers import Simulator
from aua_simulator.register_images import SimulatedInstrument
from aua_simulator.rtu_line import RtuLine
from edge_agent.bus import DeviceHealth, Outcome, SilencePolicy, admit, next_device, record
from edge_agent.config import Instrument, InstrumentSection
from edge_agent.instrument_reader import ModbusReader
from edge_agent.modbus_drivers import build_drivers
from edge_agent.profiles import load_profile

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"


@pytest.mark.parametrize(
    ("waiting", "last", "expected"),
    [
        ([3], None, 3),
        ([1, 2, 3], None, 1),
        ([1, 2, 3], 1, 2),
        ([1, 2, 3], 3, 1),  # wraps around
        ([3, 1, 2], 2, 3),  # arrival order does not matter
        ([1, 5], 2, 5),  # the last served need not be waiting
        ([1, 5], 7, 1),
        ([4], 4, 4),  # alone: its turn again
    ],
)
def test_turns_go_round_robin(waiting: list[int], last: int | None, expected: int) -> None:
    assert next_device(waiting, last) == expected


def test_no_turn_without_a_waiting_device() -> None:
    with pytest.raises(ValueError, match="no device"):
        next_device([], None)


def test_every_waiting_device_gets_a_turn_before_anyone_gets_two() -> None:
    waiting, last, served = [1, 2, 3, 4], None, []
    for _ in range(8):
        last = next_device(waiting, last)
        served.append(last)
    assert served == [1, 2, 3, 4, 1, 2, 3, 4]


POLICY = SilencePolicy(silent_after=3, probe_first_s=2.0, probe_max_s=8.0)
T, A, G = Outcome.TIMEOUT, Outcome.ANSWERED, Outcome.GARBLED


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([], DeviceHealth()),
        ([T], DeviceHealth(timeouts=1)),
        ([T, T], DeviceHealth(timeouts=2)),
        ([T, T, T], DeviceHealth(timeouts=3, probe_interval=2.0, next_probe=102.0)),
        ([T, T, T, T], DeviceHealth(timeouts=4, probe_interval=4.0, next_probe=104.0)),
        ([T, T, T, T, T, T], DeviceHealth(timeouts=6, probe_interval=8.0, next_probe=108.0)),  # capped
        ([T, T, T, A], DeviceHealth()),  # one answer and it is healthy again
        ([T, T, G], DeviceHealth(timeouts=2)),  # garbage: alive, but no news about silence
        ([T, A, T], DeviceHealth(timeouts=1)),  # only consecutive timeouts count
    ],
)
def test_health_after_outcomes(outcomes: list[Outcome], expected: DeviceHealth) -> None:
    health = DeviceHealth()
    for outcome in outcomes:
        health = record(health, outcome, now=100.0, policy=POLICY)
    assert health == expected


@pytest.mark.parametrize(
    ("health", "now", "admitted"),
    [
        (DeviceHealth(), 0.0, True),
        (DeviceHealth(timeouts=2), 0.0, True),  # not yet silent
        (DeviceHealth(timeouts=3, probe_interval=2.0, next_probe=102.0), 101.9, False),
        (DeviceHealth(timeouts=3, probe_interval=2.0, next_probe=102.0), 102.0, True),  # the probe
    ],
)
def test_a_silent_device_gets_bus_time_only_to_be_probed(health: DeviceHealth, now: float, admitted: bool) -> None:
    assert admit(health, now, POLICY) is admitted


# --------------------------------------------------------------------------------------------------
# A real pty
# --------------------------------------------------------------------------------------------------

HEALTHY, LATE, DEAD, SLOW = 1, 2, 3, 4
TIMEOUT = 0.15


@dataclass
class Line:
    simulator: Simulator
    line: RtuLine
    link: Path


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[Line]:
    profile = load_profile(PROFILES / "stack-gas-analyzer.toml")
    port = free_port()
    instruments = [SimulatedInstrument(f"gas{d}", profile, d) for d in (HEALTHY, LATE, DEAD, SLOW)]
    # A fixed clock: values never change, so every value read can be compared with the one true answer.
    simulator = Simulator({port: instruments}, rtu=True, incidents=Incidents.none(), clock=lambda: 1.8e9, seed=5)
    async with simulator:
        rtu_line = RtuLine(("127.0.0.1", port), delays={LATE: 0.4, SLOW: 0.03}, silent=[DEAD])
        async with rtu_line:
            socat = SocatPty(tmp_path / "ttyAUA0", "127.0.0.1", rtu_line.port)
            socat.start()
            try:
                yield Line(simulator, rtu_line, socat.link)
            finally:
                socat.stop()


async def test_a_late_and_a_dead_device_do_not_starve_or_corrupt_the_others(line: Line) -> None:
    profile = load_profile(PROFILES / "stack-gas-analyzer.toml")
    instruments = [
        Instrument(
            config=InstrumentSection(
                id=f"gas{device}",
                profile=Path("x.toml"),
                transport="rtu",
                serial_port=str(line.link),
                baudrate=19200,
                device_id=device,
                timeout=TIMEOUT,
            ),
            profile=profile,
        )
        for device in (HEALTHY, LATE, DEAD, SLOW)
    ]
    drivers = build_drivers(instruments, policy=SilencePolicy(silent_after=2, probe_first_s=0.6, probe_max_s=1.2))
    [bus] = drivers.buses.values()
    readers = {i.config.device_id: ModbusReader(i, drivers.by_instrument[i.id]) for i in instruments}
    truth = {device: line.simulator.image_now(f"gas{device}").served.values for device in (HEALTHY, LATE, DEAD, SLOW)}
    cycles: list[float] = []
    try:
        for _ in range(14):
            started = time.monotonic()
            results = await asyncio.gather(*(reader.poll() for reader in readers.values()))
            cycles.append(time.monotonic() - started)
            by_device = dict(zip(readers, results, strict=True))
            for device in (HEALTHY, SLOW):
                assert {r.parameter: r.value for r in by_device[device]} == truth[device], "a value got mixed up"
                assert {r.quality for r in by_device[device]} == {Quality.OK}
            for device in (LATE, DEAD):
                # no stale value, ever: a timeout gives no value and a failure
                assert {(r.value, r.quality) for r in by_device[device]} == {(None, Quality.FAILURE)}
            await asyncio.sleep(0.05)
    finally:
        await drivers.close()

    # Fair turns: with all four polling at once, the line saw them take turns, one request each.
    assert line.line.sequence[:4] == [HEALTHY, LATE, DEAD, SLOW]
    # The late device's answers arrived while the master waited for others, and were skipped, not taken.
    assert bus.stats.foreign_frames > 0
    assert bus.stats.bad_frames == 0
    # Silent devices were probed, not waited for on every request.
    assert bus.stats.skipped > 0
    assert readers[HEALTHY].stats.errors == {}
    late_requests = line.line.requests[LATE]
    assert late_requests < 14 * 2 / 2, f"the late device got {late_requests} requests on the line in 14 cycles"
    # Without probing, each cycle would wait 2 x 2 timeouts (0.6 s); with it most cycles cost the healthy reads.
    assert statistics.median(cycles[4:]) < 2 * TIMEOUT, cycles
    assert max(cycles) < 1.5, cycles
