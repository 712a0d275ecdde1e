"""The InstrumentDriver contract, one suite for every transport: Modbus TCP, RTU over TCP, RTU on a pty.

Real pymodbus servers play the device (aua_simulator.modbus_servers: TCP framing, or RTU framing behind an RtuLine,
reached directly or through a socat pty). Each transport must read registers and bits exactly as served,
report a refused address as illegal address, time out on a device that answers too late, fail fast while its
link is down and come back by itself once the device is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ports import free_port
from serial_line import SocatPty

from aua_simulator.incidents import Incidents
from aua_simulator.modbus_servers import Quirks, Simulator
from aua_simulator.register_images import SimulatedInstrument
from aua_simulator.rtu_line import RtuLine
from edge_agent.config import Instrument, InstrumentSection
from edge_agent.driver import DeviceException, DeviceTimeout, DriverError, InstrumentDriver, LinkDown
from edge_agent.modbus_drivers import Drivers, build_drivers
from edge_agent.planner import ReadRequest, plan, spans_of
from edge_agent.profiles import Function, load_profile

PROFILE = load_profile(Path(__file__).resolve().parents[2] / "config" / "profiles" / "stack-gas-analyzer.toml")
TRANSPORTS = ["tcp", "rtu-over-tcp", "rtu"]


class Rig:
    """A device on one transport, which the test can take away and bring back on the same address."""

    def __init__(self, transport: str, workdir: Path, *, delay: float = 0.0) -> None:
        self.transport = transport
        self.device_port = free_port()
        self.line_port = free_port()
        quirks = {"gas": Quirks(delay_s=delay)} if transport == "tcp" and delay else None
        self.simulator = Simulator(
            {self.device_port: [SimulatedInstrument("gas", PROFILE, 7)]},
            rtu=transport != "tcp",
            quirks=quirks,
            incidents=Incidents.none(),
            clock=lambda: 1.8e9,
        )
        self.line: RtuLine | None = None
        if transport != "tcp":
            self.line = RtuLine(("127.0.0.1", self.device_port), port=self.line_port, delays={7: delay})
        self.socat = SocatPty(workdir / "ttyAUA0", "127.0.0.1", self.line_port) if transport == "rtu" else None
        self.drivers: Drivers | None = None

    async def start(self) -> None:
        await self.simulator.start()
        if self.line is not None:
            await self.line.start()
        if self.socat is not None:
            self.socat.start()

    async def stop(self) -> None:
        if self.socat is not None:
            self.socat.stop()
        if self.line is not None:
            await self.line.stop()
        await self.simulator.stop()

    def driver(self, timeout: float = 0.5) -> InstrumentDriver:
        fields: dict[str, object] = {"transport": self.transport, "device_id": 7, "timeout": timeout}
        if self.transport == "tcp":
            fields["port"] = self.device_port
        elif self.transport == "rtu-over-tcp":
            fields["port"] = self.line_port
        else:
            assert self.socat is not None
            fields |= {"serial_port": str(self.socat.link), "baudrate": 38400}
        section = InstrumentSection.model_validate({"id": "gas", "profile": "x.toml", **fields})
        self.drivers = build_drivers([Instrument(config=section, profile=PROFILE)])
        return self.drivers.by_instrument["gas"]

    async def close(self) -> None:
        if self.drivers is not None:
            await self.drivers.close()
        await self.stop()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def rig(transport: str, tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(transport, tmp_path)
    await rig.start()
    yield rig
    await rig.close()


async def test_reads_registers_and_bits_as_served(rig: Rig) -> None:
    driver = rig.driver()
    image = rig.simulator.image_now("gas")
    tables = rig.simulator.instruments[0].tables
    requests = plan(spans_of(PROFILE))
    assert {r.function for r in requests} == {Function.DISCRETE, Function.INPUT}
    for request in requests:
        answer = await driver.read(request)
        table = tables[request.function]
        if request.function.is_bit:
            words = image.words[request.function]
            bits = [bool(words[i // 16] >> (i % 16) & 1) for i in range(len(words) * 16)]
            start = request.address - table.first_register * 16
            assert answer == bits[start : start + request.count]
        else:
            start = request.address - table.first
            assert answer == image.words[request.function][start : start + request.count]
    assert driver.endpoint.endswith("#7")


async def test_a_refused_address_is_an_illegal_address_exception(rig: Rig) -> None:
    driver = rig.driver()
    with pytest.raises(DeviceException) as caught:
        await driver.read(ReadRequest(Function.INPUT, 2000, 2))
    assert caught.value.illegal_address
    # and the link is fine for the next request
    assert len(await driver.read(ReadRequest(Function.INPUT, 1000, 2))) == 2


async def test_a_device_slower_than_the_timeout_times_out_in_time(transport: str, tmp_path: Path) -> None:
    rig = Rig(transport, tmp_path, delay=0.6)
    await rig.start()
    try:
        driver = rig.driver(timeout=0.2)
        started = time.monotonic()
        with pytest.raises(DeviceTimeout):
            await driver.read(ReadRequest(Function.INPUT, 1000, 2))
        assert 0.19 < time.monotonic() - started < 0.45
    finally:
        await asyncio.sleep(0.5)  # let the late answer land before the device goes away
        await rig.close()


async def test_a_device_that_goes_away_fails_fast_and_comes_back_by_itself(rig: Rig) -> None:
    driver = rig.driver(timeout=0.3)
    request = ReadRequest(Function.INPUT, 1000, 14)
    assert len(await driver.read(request)) == 14
    await rig.stop()
    failures: list[DriverError] = []
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(DriverError) as caught:
            await driver.read(request)
        failures.append(caught.value)
        assert time.monotonic() - started < 0.5, "a down link must not hold the poll for long"
    assert any(isinstance(f, LinkDown) for f in failures), failures
    await rig.start()
    deadline = time.monotonic() + 6
    while True:
        try:
            answer = await driver.read(request)
            break
        except DriverError:
            assert time.monotonic() < deadline, "the driver did not reconnect within 6 s"
            await asyncio.sleep(0.1)
    assert len(answer) == 14
