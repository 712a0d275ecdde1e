"""The instrument driver interface: what the reader needs from a transport, and the errors it may raise.

A driver executes one planned read (`ReadRequest`) against one instrument and returns its raw registers or
bits. Modbus TCP, Modbus RTU on a serial line and RTU tunnelled over TCP implement it (modbus_drivers.py);
they share one contract test suite. A serial ASCII protocol (many mercury and ambient analyzers) fits behind
the same bus arbiter (bus.RtuBus.exchange takes any request bytes and a framing rule) with a reader of its
own: the poller only needs an object with `instrument`, `stats`, `poll()` and `close()` (see `Reader`).

Errors, all `DriverError`:
- `DeviceTimeout`: no (valid) answer in time; `DeviceSilent` is its subclass for requests not even sent
  because the device has been silent and is only probed now and then (it must not hog its bus).
- `LinkDown`: the connection or serial port is not open (and is being reopened with backoff).
- `DeviceException`: the device refused the request with a Modbus exception code; `illegal_address` tells
  the one that is permanent for a given address (code 2), the rest are transient.
- `BadFrame`: bytes that are no valid answer (CRC, size, line noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from edge_agent.errors import AgentError

if TYPE_CHECKING:
    from edge_agent.config import Instrument
    from edge_agent.planner import ReadRequest
    from edge_agent.sealing import Sample

Answer = list[int] | list[bool]

ILLEGAL_ADDRESS = 2


class DriverError(AgentError):
    """A read that did not give values; the message says what and where."""

    kind = "error"


class DeviceTimeout(DriverError):
    kind = "timeout"


class DeviceSilent(DeviceTimeout):
    kind = "skipped"


class LinkDown(DriverError):
    kind = "link_down"


class BadFrame(DriverError):
    kind = "bad_frame"


class DeviceException(DriverError):
    kind = "exception"

    def __init__(self, code: int, where: str) -> None:
        super().__init__(f"{where}: Modbus exception {code}{' (illegal data address)' if code == 2 else ''}")
        self.code = code

    @property
    def illegal_address(self) -> bool:
        return self.code == ILLEGAL_ADDRESS


class InstrumentDriver(Protocol):
    """One instrument reached over one transport."""

    @property
    def endpoint(self) -> str:
        """Where the instrument is, for humans: tcp://host:port#1, rtu:///dev/ttyUSB0#3, rtu+tcp://host:port#2."""
        ...

    async def read(self, request: ReadRequest) -> Answer:
        """The registers (or bits) of one planned request, or a DriverError."""
        ...

    async def close(self) -> None: ...


class Reader(Protocol):
    """What the poller drives once per cycle: a Modbus reader, or one day a serial ASCII protocol's reader."""

    @property
    def instrument(self) -> Instrument: ...

    async def poll(self) -> list[Sample]:
        """One reading per tag (value None and quality failure where the read failed), stamped when read."""
        ...

    async def close(self) -> None: ...


def session_hung(timeouts_in_a_row: int, answers_meanwhile: int, limit: int) -> bool:
    """Whether a TCP session should be dropped and made again: `limit` timeouts in a row and not one answer,
    however late, arriving on it meanwhile (a half-open session: the device rebooted, a firewall or NAT forgot
    the connection). A device whose answers keep coming, only too late, is slow but there: its session stays,
    since a new connection only adds work for it (and a handshake for a device or simulator already behind).
    Pure."""
    return timeouts_in_a_row >= limit and answers_meanwhile == 0


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: `first` after the first failure, doubling up to `ceiling`. Pure."""

    first: float = 0.5
    ceiling: float = 30.0

    def after(self, previous: float | None) -> float:
        """The delay after a failure, given the delay before it (None after a success)."""
        if previous is None or previous <= 0:
            return self.first
        return min(previous * 2, self.ceiling)
