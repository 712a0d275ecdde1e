"""Modbus RTU framing for the read functions (FC01-FC04). Pure: bytes in, bytes or values out.

An RTU frame is `address, function, data..., CRC-16 (low byte first)`. The agent writes its own framing
for serial lines (and RTU tunnelled over TCP) rather than use a client library's, because the bus arbiter
must control every byte on the line: when a request goes out, how long to wait, and which bytes that
arrive belong to which device (a late answer from a slow device must not be taken for another's).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edge_agent.errors import AgentError

READ_FUNCTIONS = frozenset({1, 2, 3, 4})
"""coils, discrete inputs, holding registers, input registers"""

EXCEPTION_FRAME_SIZE = 5
"""address, function | 0x80, exception code, CRC (2)"""

REQUEST_FRAME_SIZE = 8
"""address, function, start (2), count (2), CRC (2): every read request has this size"""


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """The Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF) of `data`."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """The frame: body followed by its CRC, low byte first (the one little-endian field of Modbus)."""
    return body + crc16(body).to_bytes(2, "little")


def read_request(device_id: int, function: int, address: int, count: int) -> bytes:
    """The request frame that reads `count` registers or bits from `address`."""
    if function not in READ_FUNCTIONS:
        raise ValueError(f"function code {function} is not a read function (1-4)")
    if not 1 <= device_id <= 247:
        raise ValueError(f"device id {device_id} is not a unicast RTU address (1-247)")
    limit = 2000 if function <= 2 else 125
    if not 1 <= count <= limit or not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError(f"cannot read {count} from address {address} with function {function}")
    return with_crc(bytes([device_id, function]) + address.to_bytes(2, "big") + count.to_bytes(2, "big"))


def data_size(function: int, count: int) -> int:
    """Bytes of data in the answer to reading `count` items: 2 per register, 1 per 8 bits."""
    return (count + 7) // 8 if function <= 2 else 2 * count


def response_size(function: int, count: int) -> int:
    """Bytes of the normal answer frame: address, function, byte count, data, CRC."""
    return 3 + data_size(function, count) + 2


def frame_size(head: bytes) -> int | None:
    """How long the frame that starts with `head` is, once enough of it is there to tell; None: need more bytes.

    Works for any answer to a read function and for exception answers; a function code this module does not
    know gives 0 (the caller cannot frame it and should treat the line as out of step).
    """
    if len(head) < 2:
        return None
    function = head[1]
    if function & 0x80:
        return EXCEPTION_FRAME_SIZE
    if function not in READ_FUNCTIONS:
        return 0
    if len(head) < 3:
        return None
    return 3 + head[2] + 2


class FrameError(AgentError, ValueError):
    """Bytes that are not a valid answer to the request (bad CRC, wrong size, another device's frame)."""


@dataclass(frozen=True)
class ExceptionAnswer:
    """The device understood the request and refused it with a Modbus exception code (2 = illegal address)."""

    device_id: int
    function: int
    code: int


def parse_answer(frame: bytes, device_id: int, function: int, count: int) -> list[int] | list[bool] | ExceptionAnswer:
    """Check one answer frame against its request and return its registers, bits or exception."""
    if len(frame) < EXCEPTION_FRAME_SIZE:
        raise FrameError(f"frame of {len(frame)} bytes is too short")
    if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
        raise FrameError(f"CRC mismatch in {frame.hex(' ')}")
    if frame[0] != device_id:
        raise FrameError(f"answer from device {frame[0]}, expected {device_id}")
    return parse_read_pdu(frame[1:-2], device_id, function, count)


def parse_read_pdu(pdu: bytes, device_id: int, function: int, count: int) -> list[int] | list[bool] | ExceptionAnswer:
    """The protocol data unit of an answer to a read (function code, byte count, data; or an exception), the part
    RTU and Modbus TCP share: its registers, bits or exception."""
    if not pdu:
        raise FrameError("empty answer")
    if pdu[0] == function | 0x80:
        if len(pdu) != 2:
            raise FrameError(f"exception answer of {len(pdu)} bytes")
        return ExceptionAnswer(device_id, function, pdu[1])
    if pdu[0] != function:
        raise FrameError(f"answer has function {pdu[0]}, expected {function}")
    size = data_size(function, count)
    if len(pdu) < 2 or pdu[1] != size or len(pdu) != 2 + size:
        carried = pdu[1] if len(pdu) > 1 else 0
        raise FrameError(f"answer carries {carried} data bytes in a {len(pdu) + 3}-byte frame, expected {size}")
    data = pdu[2:]
    if function <= 2:
        return [bool(data[i // 8] >> (i % 8) & 1) for i in range(count)]
    return list(struct.unpack(f">{count}H", data))


def answer_frame(device_id: int, function: int, values: list[int] | list[bool]) -> bytes:
    """The frame a device sends for `values` (the inverse of parse_answer; for simulators and tests)."""
    if function <= 2:
        data = bytearray((len(values) + 7) // 8)
        for index, bit in enumerate(values):
            if bit:
                data[index // 8] |= 1 << (index % 8)
        payload = bytes(data)
    else:
        payload = b"".join(int(value).to_bytes(2, "big") for value in values)
    return with_crc(bytes([device_id, function, len(payload)]) + payload)


def exception_frame(device_id: int, function: int, code: int) -> bytes:
    return with_crc(bytes([device_id, function | 0x80, code]))


def character_time(baudrate: int, bits_per_character: int = 11) -> float:
    """Seconds one character takes on the line: start bit, 8 data bits, parity or a second stop bit, stop bit."""
    return bits_per_character / baudrate


def inter_frame_gap(baudrate: int, bits_per_character: int = 11) -> float:
    """Silence that must separate two frames: 3.5 characters, fixed at 1.75 ms above 19,200 baud (Modbus over
    Serial Line V1.02)."""
    if baudrate > 19_200:
        return 0.00175
    return 3.5 * character_time(baudrate, bits_per_character)


def transmit_time(size: int, baudrate: int, bits_per_character: int = 11) -> float:
    """Seconds `size` bytes take on the wire; added to a timeout so it counts only the device's own delay."""
    return size * character_time(baudrate, bits_per_character)
