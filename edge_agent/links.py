"""Byte links a bus talks over: a serial port (POSIX termios, no extra package) or a TCP connection.

Both buffer what arrives and hand it out one frame at a time (`read_frame`), so the bus can tell frames
apart and drop what does not belong to the request it is waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

FrameSize = Callable[[bytes], int | None]
"""Given the bytes of a frame so far, its whole size; None while more bytes are needed; 0 if unframeable."""


class Link(Protocol):
    @property
    def name(self) -> str: ...

    async def write(self, data: bytes) -> None: ...

    async def read_frame(self, size_of: FrameSize, deadline: float) -> bytes:
        """One frame; TimeoutError at `deadline` (time.monotonic()), ConnectionError if the link broke."""
        ...

    def discard_input(self) -> int:
        """Drop whatever arrived and was not read (late answers); returns how many bytes."""
        ...

    def close(self) -> None: ...


class _Buffered:
    """The receive side both links share: bytes accumulate, `read_frame` takes one frame off the front."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._broken: BaseException | None = None
        self.last_activity = time.monotonic()

    @property
    def name(self) -> str:
        return self._name

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        self.last_activity = time.monotonic()
        self._arrived.set()

    def _break(self, error: BaseException) -> None:
        if self._broken is None:
            self._broken = error
        self._arrived.set()

    def _check(self) -> None:
        if self._broken is not None:
            raise ConnectionError(f"{self._name}: {self._broken}")

    async def read_frame(self, size_of: FrameSize, deadline: float) -> bytes:
        while True:
            self._check()
            size = size_of(bytes(self._buffer[:3])) if self._buffer else None
            if size == 0:
                frame = bytes(self._buffer)
                self._buffer.clear()
                return frame  # unframeable: the caller rejects it
            if size is not None and len(self._buffer) >= size:
                frame = bytes(self._buffer[:size])
                del self._buffer[:size]
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):  # not wait_for: see publisher._drain_forever
                    await self._arrived.wait()

    def discard_input(self) -> int:
        dropped = len(self._buffer)
        self._buffer.clear()
        return dropped


# --------------------------------------------------------------------------------------------------
# Serial port
# --------------------------------------------------------------------------------------------------

PARITIES = {"N": 0, "E": termios.PARENB, "O": termios.PARENB | termios.PARODD}
BYTESIZES = {7: termios.CS7, 8: termios.CS8}


@dataclass(frozen=True)
class SerialSettings:
    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1

    @property
    def bits_per_character(self) -> int:
        """Start bit + data bits + parity bit + stop bits: what one byte costs on the wire."""
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    def baud_constant(self) -> int:
        constant = getattr(termios, f"B{self.baudrate}", None)
        if constant is None:
            raise ValueError(f"{self.port}: baud rate {self.baudrate} is not one the serial driver knows")
        return int(constant)


class SerialLink(_Buffered):
    """A serial port in raw mode, non-blocking, read through the event loop."""

    def __init__(self, settings: SerialSettings) -> None:
        super().__init__(settings.port)
        self.settings = settings
        self._fd: int | None = None

    @classmethod
    async def open(cls, settings: SerialSettings) -> SerialLink:
        link = cls(settings)
        link._open()
        return link

    def _open(self) -> None:
        settings = self.settings
        fd = os.open(settings.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(fd)
            attributes = termios.tcgetattr(fd)
            speed = settings.baud_constant()
            cflag = attributes[2] & ~(termios.CSIZE | termios.PARENB | termios.PARODD | termios.CSTOPB)
            cflag |= BYTESIZES[settings.bytesize] | PARITIES[settings.parity] | termios.CLOCAL | termios.CREAD
            if settings.stopbits == 2:
                cflag |= termios.CSTOPB
            attributes[2] = cflag
            attributes[4] = attributes[5] = speed
            attributes[6][termios.VMIN] = 0
            attributes[6][termios.VTIME] = 0
            termios.tcsetattr(fd, termios.TCSANOW, attributes)
            termios.tcflush(fd, termios.TCIOFLUSH)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _readable(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as error:
            # EIO: the other side of a pty went away, or a USB adapter was unplugged.
            asyncio.get_running_loop().remove_reader(self._fd)
            self._break(error)
            return
        if data:
            self._feed(data)

    async def write(self, data: bytes) -> None:
        self._check()
        if self._fd is None:
            raise ConnectionError(f"{self.name}: closed")
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            except OSError as error:
                self._break(error)
                raise ConnectionError(f"{self.name}: {error}") from None
            view = view[written:]
        self.last_activity = time.monotonic()

    def discard_input(self) -> int:
        if self._fd is not None:
            with contextlib.suppress(termios.error):
                termios.tcflush(self._fd, termios.TCIFLUSH)
        return super().discard_input()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        self._break(OSError(errno.EBADF, "closed"))


# --------------------------------------------------------------------------------------------------
# TCP (RTU frames tunnelled over TCP, as serial device servers in "TCP server" mode do)
# --------------------------------------------------------------------------------------------------


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, link: TcpLink) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._break(exc or ConnectionResetError("connection closed by the peer"))


class TcpLink(_Buffered):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"{host}:{port}")
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def open(cls, host: str, port: int, connect_within: float) -> TcpLink:
        link = cls(host, port)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_within):
            transport, _ = await loop.create_connection(lambda: _TcpProtocol(link), host, port)
        link._transport = transport
        return link

    async def write(self, data: bytes) -> None:
        self._check()
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError(f"{self.name}: closed")
        self._transport.write(data)
        self.last_activity = time.monotonic()

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
