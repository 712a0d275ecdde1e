"""Registers -> engineering values. Pure functions, no I/O.

Multi-register values are named by the order their bytes arrive in, with ABCD meaning big-endian
(Modbus's own order): CDAB swaps the words, BADC swaps the bytes inside each word, DCBA does both.
For 64-bit types the same rule applies to all four words (ABCD -> words in order, CDAB -> words reversed).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache

from edge_agent.errors import AgentError


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"

    @property
    def words(self) -> int:
        """How many 16-bit registers one value occupies (bits count as one)."""
        return _WORDS[self]


class ByteOrder(StrEnum):
    ABCD = "ABCD"
    DCBA = "DCBA"
    BADC = "BADC"
    CDAB = "CDAB"


_WORDS = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
    DataType.BOOL: 1,
}
_STRUCT = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
    DataType.FLOAT32: ">f",
    DataType.FLOAT64: ">d",
}


class DecodeError(AgentError, ValueError):
    """Registers that cannot be a value of the declared type (wrong count, NaN, out of 16 bits)."""


def _arrange(words: list[int], order: ByteOrder) -> bytes:
    """Put the words as received into big-endian (ABCD) byte order."""
    if order in (ByteOrder.CDAB, ByteOrder.DCBA):
        words = list(reversed(words))
    raw = b"".join(word.to_bytes(2, "big") for word in words)
    if order in (ByteOrder.BADC, ByteOrder.DCBA):
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def decode_registers(registers: list[int], data_type: DataType, order: ByteOrder = ByteOrder.ABCD) -> float:
    """Decode the raw words of one value (no scaling). Raises DecodeError with what was wrong."""
    if data_type is DataType.BOOL:
        raise DecodeError("bool values come from coils or discrete inputs, not registers")
    if len(registers) != data_type.words:
        raise DecodeError(f"{data_type} needs {data_type.words} registers, got {len(registers)}")
    for word in registers:
        if not 0 <= word <= 0xFFFF:
            raise DecodeError(f"register value {word} is not a 16-bit word")
    if data_type in (DataType.INT16, DataType.UINT16):
        order = ByteOrder.BADC if order in (ByteOrder.BADC, ByteOrder.DCBA) else ByteOrder.ABCD
    (value,) = struct.unpack(_STRUCT[data_type], _arrange(registers, order))
    result = float(value)
    if not math.isfinite(result):
        raise DecodeError(f"{data_type} registers {[hex(w) for w in registers]} decode to {result}")
    return result


def struct_layout(data_type: DataType, order: ByteOrder) -> tuple[bool, str]:
    """How to unpack a value straight out of a request's words packed in one buffer: whether to pack the words
    little-endian, and the struct format to unpack with. Equal to decode_registers for every type and order:
    ABCD = words big-endian, unpack big-endian; DCBA = the whole value byte-reversed, unpack little-endian;
    CDAB = words in reverse order, which is what little-endian words read little-endian give; BADC = the bytes
    of each word swapped: little-endian words read big-endian."""
    if data_type is DataType.BOOL:
        raise DecodeError("bool values are bits, not registers")
    code = _STRUCT[data_type][1]
    little_words = order in (ByteOrder.CDAB, ByteOrder.BADC)
    little_value = order in (ByteOrder.DCBA, ByteOrder.CDAB)
    return little_words, ("<" if little_value else ">") + code


def encode_value(value: float, data_type: DataType, order: ByteOrder = ByteOrder.ABCD) -> list[int]:
    """The inverse of decode_registers, for simulators and test vectors."""
    if data_type is DataType.BOOL:
        raise DecodeError("bool values are bits, not registers")
    fmt = _STRUCT[data_type]
    try:
        packed = struct.pack(fmt, value if data_type in (DataType.FLOAT32, DataType.FLOAT64) else round(value))
    except (struct.error, OverflowError, ValueError) as error:
        raise DecodeError(f"{value!r} cannot be encoded as {data_type} ({error})") from None
    if data_type in (DataType.INT16, DataType.UINT16):
        order = ByteOrder.BADC if order in (ByteOrder.BADC, ByteOrder.DCBA) else ByteOrder.ABCD
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    # _arrange is its own inverse for every order.
    raw = _arrange(words, order)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def _as_fraction(number: float) -> tuple[int, int]:
    """The decimal a profile's number was written as (the shortest repr that reads back as the same float, so
    0.1 is 1/10, not the binary fraction nearest it), as numerator and a power-of-ten denominator."""
    sign, digits, exponent = Decimal(repr(float(number))).as_tuple()
    if not isinstance(exponent, int):  # 'n' or 'F': NaN or infinity
        raise ValueError(f"{number!r} is not a finite number")  # noqa: TRY004 (a value, not a type, is wrong)
    mantissa = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    if exponent >= 0:
        return mantissa * 10**exponent, 1
    return mantissa, 10**-exponent


@dataclass(frozen=True, slots=True)
class Scaling:
    """raw × scale + offset computed exactly in integers over a common power of ten, rounded once to the nearest
    float: raw 1013 × 0.1 is 101.3 (the decimal the instrument means), not 101.30000000000001 as in float
    arithmetic. Python's int / int is correctly rounded, so one division gives the nearest float."""

    multiplier: int
    """scale × divisor"""
    addend: int
    """offset × divisor"""
    divisor: int

    @staticmethod
    @lru_cache(maxsize=1024)
    def of(scale: float = 1.0, offset: float = 0.0) -> Scaling:
        scale_num, scale_den = _as_fraction(scale)
        offset_num, offset_den = _as_fraction(offset)
        divisor = max(scale_den, offset_den)  # both are powers of ten: the larger is a multiple of the smaller
        return Scaling(scale_num * (divisor // scale_den), offset_num * (divisor // offset_den), divisor)

    @property
    def is_identity(self) -> bool:
        return self.multiplier == self.divisor and self.addend == 0

    def apply(self, raw: int | float) -> float:
        """The engineering value of a raw integer or float (a float is taken as the exact binary value it is).
        Raises OverflowError past the float range and ValueError for NaN (OverflowError for infinity)."""
        if isinstance(raw, int):
            return (raw * self.multiplier + self.addend) / self.divisor
        numerator, denominator = raw.as_integer_ratio()
        return (numerator * self.multiplier + denominator * self.addend) / (denominator * self.divisor)


def scale_value(raw: float, scale: float = 1.0, offset: float = 0.0) -> float:
    """Engineering value = raw × scale + offset (scaled integers such as value × 10^-n), exactly (Scaling)."""
    return Scaling.of(scale, offset).apply(raw)


def bits_of(word: int, width: int = 16) -> list[bool]:
    """Bit i of a status word, least significant first."""
    return [bool(word >> i & 1) for i in range(width)]
