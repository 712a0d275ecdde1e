"""Modbus drivers: TCP (MBAP), RTU on a serial line, RTU over TCP (both through a shared RtuBus).

`build_drivers` gives every instrument of a site config its driver; instruments on the same serial port (or
the same RTU-over-TCP endpoint) share one bus, so the line has one master and one request in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from edge_agent import mbap, rtu
from edge_agent.bus import RtuBus, SilencePolicy, Verdict
from edge_agent.config import Instrument, InstrumentSection, Transport
from edge_agent.driver import (
    Answer,
    Backoff,
    BadFrame,
    DeviceException,
    DeviceTimeout,
    InstrumentDriver,
    LinkDown,
    session_hung,
)
from edge_agent.links import SerialLink, SerialSettings, TcpLink
from edge_agent.planner import ReadRequest

log = logging.getLogger(__name__)


class _MbapProtocol(asyncio.Protocol):
    """One Modbus TCP connection: answers go to the request with their transaction id; others are dropped."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.buffer = bytearray()
        self.unmatched = 0
        self.frames = 0
        """answers received, late ones included: a session that still carries answers is not hung"""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            size = mbap.frame_size(bytes(buffer[:6]))
            if size is None or len(buffer) < (size or 1):
                return
            if size == 0:  # not Modbus TCP: the stream is out of step, start over with the next answer
                buffer.clear()
                self.unmatched += 1
                return
            frame = bytes(buffer[:size])
            del buffer[:size]
            self.frames += 1
            transaction = int.from_bytes(frame[:2], "big")
            future = self.pending.pop(transaction, None)
            if future is None or future.done():
                self.unmatched += 1  # the late answer of a request that timed out
            else:
                future.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        error = ConnectionResetError(str(exc) if exc else "connection closed by the device")
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ModbusTcpDriver:
    """Modbus TCP, framed by the agent itself (mbap.py): reconnects with backoff, never holds a poll for long.

    pymodbus's client costs about four times the CPU per request; at hundreds of devices a second that decides
    whether the agent fits next to other work on a plant gateway (bench/edge_agent_cpu.py).
    """

    timeouts_before_reconnect = 3
    """consecutive timeouts after which the connection is dropped and made again, if not one answer (however
    late) came on it meanwhile: a hung TCP session. A slow device keeps its connection (driver.session_hung)."""

    def __init__(self, host: str, port: int, device_id: int, timeout: float, *, backoff: Backoff | None = None) -> None:
        self.host, self.port, self.device_id, self.timeout = host, port, device_id, timeout
        self.backoff = backoff or Backoff()
        self._protocol: _MbapProtocol | None = None
        self._transaction = 0
        self._timeouts = 0
        self._frames_before_timeouts = 0
        self._retry_at = 0.0
        self._delay: float | None = None
        self.reconnects = 0
        self.connections = 0
        """TCP sessions made (the first included)"""
        self.hung_sessions = 0
        """sessions dropped because nothing at all came back on them (session_hung)"""

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}#{self.device_id}"

    async def _connection(self) -> _MbapProtocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        now = time.monotonic()
        if now < self._retry_at:
            raise LinkDown(f"{self.endpoint}: not connected, next attempt in {self._retry_at - now:.1f} s")
        loop = asyncio.get_running_loop()
        name = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.timeout):
                _, connected = await loop.create_connection(lambda: _MbapProtocol(name), self.host, self.port)
        except (OSError, TimeoutError) as error:
            self._delay = self.backoff.after(self._delay)
            self._retry_at = time.monotonic() + self._delay
            why = error or "timeout"
            raise LinkDown(f"{self.endpoint}: cannot connect ({why}); retrying in {self._delay:.1f} s") from None
        if self._delay is not None:
            self.reconnects += 1
            log.debug("%s: connected again", self.endpoint)  # the reader logs the device's return, once
        self._delay = None
        self._protocol = connected
        self.connections += 1
        return connected

    async def read(self, request: ReadRequest) -> Answer:
        protocol = self._protocol
        if protocol is None or protocol.closed:  # connected: no coroutine to make and await on every read
            protocol = await self._connection()
        function, count = request.function.code, request.count
        self._transaction = (self._transaction + 1) & 0xFFFF
        transaction = self._transaction
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        protocol.pending[transaction] = future
        timer = asyncio.get_running_loop().call_later(self.timeout, _expire, future)
        try:
            if protocol.transport is None:
                raise ConnectionResetError("closed")
            protocol.transport.write(mbap.read_request(transaction, self.device_id, function, request.address, count))
            frame = await future
        except TimeoutError:
            protocol.pending.pop(transaction, None)
            self._timeouts += 1
            if self._timeouts == 1:
                self._frames_before_timeouts = protocol.frames
            limit = self.timeouts_before_reconnect
            if self._timeouts >= limit:
                if session_hung(self._timeouts, protocol.frames - self._frames_before_timeouts, limit):
                    self.hung_sessions += 1
                    protocol.close()
                self._timeouts = 0
            raise DeviceTimeout(f"{self._where(request)}: no answer within {self.timeout} s") from None
        except (ConnectionError, OSError) as error:
            raise LinkDown(f"{self._where(request)}: {error}") from None
        finally:
            timer.cancel()
        self._timeouts = 0
        _, unit, pdu = mbap.split_frame(frame)
        try:
            result = rtu.parse_read_pdu(pdu, unit, function, count)
        except rtu.FrameError as error:
            raise BadFrame(f"{self._where(request)}: {error}") from None
        if self.device_id not in (unit, 0):
            raise BadFrame(f"{self._where(request)}: answer from unit {unit}")
        if isinstance(result, rtu.ExceptionAnswer):
            raise DeviceException(result.code, self._where(request))
        return result

    def _where(self, request: ReadRequest) -> str:
        """The request in an error message (built only when one is raised, not on every read)."""
        return f"{self.endpoint} FC{request.function.code:02d} {request.address}+{request.count}"

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class RtuDriver:
    """One device on an RTU bus; the bus serialises it with the others on the same line."""

    def __init__(
        self, bus: RtuBus, device_id: int, timeout: float, *, baudrate: int, bits_per_character: int = 11
    ) -> None:
        self.bus, self.device_id, self.timeout = bus, device_id, timeout
        self.baudrate, self.bits_per_character = baudrate, bits_per_character

    @property
    def endpoint(self) -> str:
        return f"{self.bus.name}#{self.device_id}"

    async def read(self, request: ReadRequest) -> Answer:
        function, count = request.function.code, request.count
        frame = rtu.read_request(self.device_id, function, request.address, count)
        on_wire = rtu.transmit_time(
            len(frame) + rtu.response_size(function, count), self.baudrate, self.bits_per_character
        )

        def judge(answer: bytes) -> Verdict:
            if len(answer) < rtu.EXCEPTION_FRAME_SIZE or rtu.crc16(answer[:-2]) != int.from_bytes(
                answer[-2:], "little"
            ):
                return Verdict.GARBAGE
            try:
                rtu.parse_answer(answer, self.device_id, function, count)
            except rtu.FrameError:
                return Verdict.OTHER
            return Verdict.OURS

        where = f"{self.endpoint} FC{function:02d} {request.address}+{count}"
        answer = await self.bus.exchange(self.device_id, frame, rtu.frame_size, judge, self.timeout + on_wire)
        try:
            result = rtu.parse_answer(answer, self.device_id, function, count)
        except rtu.FrameError as error:  # pragma: no cover - judge() let only valid frames through
            raise BadFrame(f"{where}: {error}") from None
        if isinstance(result, rtu.ExceptionAnswer):
            raise DeviceException(result.code, where)
        return result

    async def close(self) -> None:
        """The bus is closed by its owner (Drivers.close), as other devices share it."""


@dataclass
class Drivers:
    """The drivers of a site config's instruments and the buses they share."""

    by_instrument: dict[str, InstrumentDriver] = field(default_factory=dict)
    buses: dict[str, RtuBus] = field(default_factory=dict)

    async def close(self) -> None:
        for driver in self.by_instrument.values():
            await driver.close()
        for bus in self.buses.values():
            await bus.close()
        await asyncio.sleep(0)


def _bus_for(section: InstrumentSection, policy: SilencePolicy | None) -> RtuBus:
    settings = SerialSettings(
        port=section.serial_port or "",
        baudrate=section.baudrate,
        bytesize=section.bytesize,
        parity=section.parity,
        stopbits=section.stopbits,
    )
    gap = rtu.inter_frame_gap(section.baudrate, settings.bits_per_character)
    name = section.bus_key or ""
    if section.transport is Transport.RTU:
        return RtuBus(name, lambda: SerialLink.open(settings), gap_s=gap, policy=policy)
    host, port, timeout = section.host, section.port, section.timeout
    return RtuBus(name, lambda: TcpLink.open(host, port, timeout), gap_s=gap, policy=policy)


def build_drivers(instruments: Iterable[Instrument], *, policy: SilencePolicy | None = None) -> Drivers:
    drivers = Drivers()
    for instrument in instruments:
        section = instrument.config
        key = section.bus_key
        if key is None:
            drivers.by_instrument[instrument.id] = ModbusTcpDriver(
                section.host, section.port, section.device_id, section.timeout
            )
            continue
        bus = drivers.buses.get(key)
        if bus is None:
            bus = drivers.buses[key] = _bus_for(section, policy)
        bits = 1 + section.bytesize + (0 if section.parity == "N" else 1) + section.stopbits
        drivers.by_instrument[instrument.id] = RtuDriver(
            bus, section.device_id, section.timeout, baudrate=section.baudrate, bits_per_character=bits
        )
    return drivers
