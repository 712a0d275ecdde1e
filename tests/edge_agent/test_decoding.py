"""Registers -> values (docs/regulatory-basis.md §6): every type in every byte/word order, from hand-computed vectors.

The expected registers below are written out by hand from the IEEE-754 / two's-complement bytes, not computed by
the code under test: ABCD is big-endian (Modbus's own order), CDAB swaps the words, BADC swaps the bytes inside
each word, DCBA does both. 64-bit values follow the same rule over four words.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import Instrument, InstrumentSection
from edge_agent.decoding import (
    ByteOrder,
    DataType,
    DecodeError,
    Scaling,
    bits_of,
    decode_registers,
    encode_value,
    scale_value,
)
from edge_agent.instrument_reader import readings_from_answers
from edge_agent.planner import plan, spans_of
from edge_agent.profiles import load_profile

ROUND_TRIP = settings(max_examples=60, deadline=None)

ABCD, CDAB, BADC, DCBA = ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA
REGISTER_TYPES = [data_type for data_type in DataType if data_type is not DataType.BOOL]

VECTORS = [
    # float32 100.0 = 0x42C80000 (the example in style.md: CDAB [0x0000, 0x42C8] -> 100.0)
    (DataType.FLOAT32, ABCD, [0x42C8, 0x0000], 100.0),
    (DataType.FLOAT32, CDAB, [0x0000, 0x42C8], 100.0),
    (DataType.FLOAT32, BADC, [0xC842, 0x0000], 100.0),
    (DataType.FLOAT32, DCBA, [0x0000, 0xC842], 100.0),
    # float32 -123.456 = 0xC2F6E979 (four distinct bytes; the nearest float32 is -123.45600128173828)
    (DataType.FLOAT32, ABCD, [0xC2F6, 0xE979], -123.45600128173828),
    (DataType.FLOAT32, CDAB, [0xE979, 0xC2F6], -123.45600128173828),
    (DataType.FLOAT32, BADC, [0xF6C2, 0x79E9], -123.45600128173828),
    (DataType.FLOAT32, DCBA, [0x79E9, 0xF6C2], -123.45600128173828),
    # float32 edge values: -0.0, smallest subnormal 2**-149, largest finite
    (DataType.FLOAT32, ABCD, [0x8000, 0x0000], -0.0),
    (DataType.FLOAT32, ABCD, [0x0000, 0x0001], 2.0**-149),
    (DataType.FLOAT32, CDAB, [0xFFFF, 0x7F7F], (2 - 2.0**-23) * 2.0**127),
    # int32 -2 = 0xFFFFFFFE
    (DataType.INT32, ABCD, [0xFFFF, 0xFFFE], -2),
    (DataType.INT32, CDAB, [0xFFFE, 0xFFFF], -2),
    (DataType.INT32, BADC, [0xFFFF, 0xFEFF], -2),
    (DataType.INT32, DCBA, [0xFEFF, 0xFFFF], -2),
    (DataType.INT32, ABCD, [0x8000, 0x0000], -(2**31)),
    (DataType.INT32, ABCD, [0x7FFF, 0xFFFF], 2**31 - 1),
    # uint32 0x12345678
    (DataType.UINT32, ABCD, [0x1234, 0x5678], 0x12345678),
    (DataType.UINT32, CDAB, [0x5678, 0x1234], 0x12345678),
    (DataType.UINT32, BADC, [0x3412, 0x7856], 0x12345678),
    (DataType.UINT32, DCBA, [0x7856, 0x3412], 0x12345678),
    (DataType.UINT32, ABCD, [0xFFFF, 0xFFFE], 0xFFFFFFFE),
    # uint64 0x0001020304050607 (< 2**53, so exact as a float)
    (DataType.UINT64, ABCD, [0x0001, 0x0203, 0x0405, 0x0607], 0x0001020304050607),
    (DataType.UINT64, CDAB, [0x0607, 0x0405, 0x0203, 0x0001], 0x0001020304050607),
    (DataType.UINT64, BADC, [0x0100, 0x0302, 0x0504, 0x0706], 0x0001020304050607),
    (DataType.UINT64, DCBA, [0x0706, 0x0504, 0x0302, 0x0100], 0x0001020304050607),
    # int64 -0x0001020304050607 = 0xFFFEFDFCFBFAF9F9
    (DataType.INT64, ABCD, [0xFFFE, 0xFDFC, 0xFBFA, 0xF9F9], -0x0001020304050607),
    (DataType.INT64, CDAB, [0xF9F9, 0xFBFA, 0xFDFC, 0xFFFE], -0x0001020304050607),
    (DataType.INT64, BADC, [0xFEFF, 0xFCFD, 0xFAFB, 0xF9F9], -0x0001020304050607),
    (DataType.INT64, DCBA, [0xF9F9, 0xFAFB, 0xFCFD, 0xFEFF], -0x0001020304050607),
    (DataType.INT64, ABCD, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2),
    # float64 pi = 0x400921FB54442D18
    (DataType.FLOAT64, ABCD, [0x4009, 0x21FB, 0x5444, 0x2D18], math.pi),
    (DataType.FLOAT64, CDAB, [0x2D18, 0x5444, 0x21FB, 0x4009], math.pi),
    (DataType.FLOAT64, BADC, [0x0940, 0xFB21, 0x4454, 0x182D], math.pi),
    (DataType.FLOAT64, DCBA, [0x182D, 0x4454, 0xFB21, 0x0940], math.pi),
    # 16-bit: only the byte order inside the word matters (CDAB reads as ABCD, DCBA as BADC)
    (DataType.INT16, ABCD, [0xFFFE], -2),
    (DataType.INT16, BADC, [0xFEFF], -2),
    (DataType.INT16, CDAB, [0xFFFE], -2),
    (DataType.INT16, DCBA, [0xFEFF], -2),
    (DataType.INT16, ABCD, [0x8000], -32768),
    (DataType.INT16, ABCD, [0x7FFF], 32767),
    (DataType.UINT16, ABCD, [0x1234], 0x1234),
    (DataType.UINT16, BADC, [0x3412], 0x1234),
    (DataType.UINT16, CDAB, [0x1234], 0x1234),
    (DataType.UINT16, DCBA, [0x3412], 0x1234),
    (DataType.UINT16, ABCD, [0xFFFF], 65535),
]


@pytest.mark.parametrize(
    ("data_type", "order", "registers", "value"),
    VECTORS,
    ids=[f"{t}-{o}-{'_'.join(f'{w:04X}' for w in r)}" for t, o, r, _ in VECTORS],
)
def test_known_vectors(data_type: DataType, order: ByteOrder, registers: list[int], value: float) -> None:
    decoded = decode_registers(registers, data_type, order)
    assert decoded == value
    assert math.copysign(1, decoded) == math.copysign(1, value)  # -0.0 stays negative
    assert encode_value(value, data_type, order) == registers


def test_every_type_and_order_has_a_vector() -> None:
    covered = {(data_type, order) for data_type, order, _, _ in VECTORS}
    assert covered == {(data_type, order) for data_type in REGISTER_TYPES for order in ByteOrder}


def test_default_order_is_abcd() -> None:
    assert decode_registers([0x42C8, 0x0000], DataType.FLOAT32) == 100.0
    assert encode_value(100.0, DataType.FLOAT32) == [0x42C8, 0x0000]


def test_words_per_type() -> None:
    assert {data_type: data_type.words for data_type in DataType} == {
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


def test_64_bit_integers_beyond_2_53_lose_precision() -> None:
    """Values are floats (a Reading carries a float): a 64-bit counter above 2**53 comes back rounded."""
    registers = [0x0102, 0x0304, 0x0506, 0x0708]
    assert decode_registers(registers, DataType.UINT64) == float(0x0102030405060708)
    assert decode_registers([0xFFFF] * 4, DataType.UINT64) == 2.0**64


# --- round trips --------------------------------------------------------------------------------------------------

_INTEGER_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**53), 2**53),  # beyond ±2**53 a float cannot hold every integer
    DataType.UINT64: (0, 2**53),
}


def _values(data_type: DataType) -> st.SearchStrategy[float]:
    if data_type is DataType.FLOAT32:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if data_type is DataType.FLOAT64:
        return st.floats(allow_nan=False, allow_infinity=False)
    low, high = _INTEGER_RANGES[data_type]
    return st.integers(min_value=low, max_value=high).map(float)


@pytest.mark.parametrize("order", list(ByteOrder))
@pytest.mark.parametrize("data_type", REGISTER_TYPES)
@ROUND_TRIP
@given(data=st.data())
def test_value_round_trip(data: st.DataObject, data_type: DataType, order: ByteOrder) -> None:
    value = data.draw(_values(data_type))
    registers = encode_value(value, data_type, order)
    assert len(registers) == data_type.words
    assert all(0 <= word <= 0xFFFF for word in registers)
    decoded = decode_registers(registers, data_type, order)
    assert decoded == value
    assert math.copysign(1, decoded) == math.copysign(1, value)


def _swap_bytes(word: int) -> int:
    return (word >> 8) | (word & 0xFF) << 8


@pytest.mark.parametrize("data_type", [DataType.INT32, DataType.UINT32, DataType.FLOAT32, DataType.FLOAT64])
@ROUND_TRIP
@given(data=st.data())
def test_orders_relate_as_documented(data: st.DataObject, data_type: DataType) -> None:
    """CDAB = ABCD words reversed; BADC = ABCD with each word's bytes swapped; DCBA = both."""
    value = data.draw(_values(data_type))
    abcd = encode_value(value, data_type, ABCD)
    assert encode_value(value, data_type, CDAB) == abcd[::-1]
    assert encode_value(value, data_type, BADC) == [_swap_bytes(word) for word in abcd]
    assert encode_value(value, data_type, DCBA) == [_swap_bytes(word) for word in abcd[::-1]]


@pytest.mark.parametrize("order", list(ByteOrder))
@pytest.mark.parametrize(
    "data_type", [DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.FLOAT32, DataType.FLOAT64]
)
@ROUND_TRIP
@given(data=st.data())
def test_register_round_trip(data: st.DataObject, data_type: DataType, order: ByteOrder) -> None:
    """Any words that decode at all encode back to the same words (floats: every non-NaN, non-infinite pattern)."""
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=data_type.words, max_size=data_type.words))
    try:
        value = decode_registers(registers, data_type, order)
    except DecodeError:
        assert data_type in (DataType.FLOAT32, DataType.FLOAT64)
        return
    assert encode_value(value, data_type, order) == registers


@ROUND_TRIP
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-3e38, max_value=3e38))
def test_float32_encoding_rounds_to_nearest(value: float) -> None:
    (nearest,) = struct.unpack(">f", struct.pack(">f", value))
    assert decode_registers(encode_value(value, DataType.FLOAT32), DataType.FLOAT32) == nearest


# --- errors -------------------------------------------------------------------------------------------------------

DECODE_ERRORS = [
    pytest.param([0x42C8], DataType.FLOAT32, ABCD, "needs 2 registers, got 1", id="float32-one-word"),
    pytest.param([0, 0, 0], DataType.FLOAT32, ABCD, "needs 2 registers, got 3", id="float32-three-words"),
    pytest.param([], DataType.INT16, ABCD, "needs 1 registers, got 0", id="int16-no-word"),
    pytest.param([0, 0], DataType.UINT16, ABCD, "needs 1 registers, got 2", id="uint16-two-words"),
    pytest.param([0, 0], DataType.FLOAT64, ABCD, "needs 4 registers, got 2", id="float64-two-words"),
    pytest.param([0, 0, 0, 0], DataType.INT32, ABCD, "needs 2 registers, got 4", id="int32-four-words"),
    pytest.param([0x10000], DataType.UINT16, ABCD, "not a 16-bit word", id="word-over-16-bits"),
    pytest.param([0, -1], DataType.INT32, ABCD, "not a 16-bit word", id="negative-word"),
    pytest.param([0x7FC0, 0x0000], DataType.FLOAT32, ABCD, "nan", id="float32-NaN"),
    pytest.param([0x0000, 0x7FC0], DataType.FLOAT32, CDAB, "nan", id="float32-NaN-CDAB"),
    pytest.param([0xC07F, 0x0000], DataType.FLOAT32, BADC, "nan", id="float32-NaN-BADC"),
    pytest.param([0xFFFF, 0xFFFF], DataType.FLOAT32, ABCD, "nan", id="float32-all-ones-NaN"),
    pytest.param([0x7F80, 0x0000], DataType.FLOAT32, ABCD, "inf", id="float32-infinity"),
    pytest.param([0xFF80, 0x0000], DataType.FLOAT32, ABCD, "-inf", id="float32-minus-infinity"),
    pytest.param([0x7FF8, 0, 0, 0], DataType.FLOAT64, ABCD, "nan", id="float64-NaN"),
    pytest.param([0, 0, 0, 0xF07F], DataType.FLOAT64, DCBA, "inf", id="float64-infinity-DCBA"),
    pytest.param([1], DataType.BOOL, ABCD, "coils or discrete inputs", id="bool-from-registers"),
]


@pytest.mark.parametrize(("registers", "data_type", "order", "message"), DECODE_ERRORS)
def test_decode_errors(registers: list[int], data_type: DataType, order: ByteOrder, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_registers(registers, data_type, order)


ENCODE_ERRORS = [
    pytest.param(1.0, DataType.BOOL, id="bool"),
    pytest.param(40000, DataType.INT16, id="int16-over"),
    pytest.param(-1, DataType.UINT16, id="uint16-negative"),
    pytest.param(2**32, DataType.UINT32, id="uint32-over"),
    pytest.param(1e300, DataType.FLOAT32, id="float32-over"),
    pytest.param(math.nan, DataType.INT32, id="int32-NaN"),
    pytest.param(math.inf, DataType.INT64, id="int64-infinity"),
]


@pytest.mark.parametrize(("value", "data_type"), ENCODE_ERRORS)
def test_encode_errors(value: float, data_type: DataType) -> None:
    """A value that does not fit the type is a DecodeError naming it, not a struct.error or OverflowError."""
    with pytest.raises(DecodeError, match=str(data_type)):
        encode_value(value, data_type)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(DecodeError, ValueError)


# --- scaling and bits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registers", "data_type", "scale", "offset", "expected"),
    [
        pytest.param([1234], DataType.INT16, 0.1, 0.0, 123.4, id="int16-x10^-1"),
        pytest.param([0xFFCE], DataType.INT16, 0.1, 0.0, -5.0, id="negative-int16-x10^-1"),
        pytest.param([1234], DataType.UINT16, 0.01, 0.0, 12.34, id="uint16-x10^-2"),
        pytest.param([1234], DataType.UINT16, 0.001, 0.0, 1.234, id="uint16-x10^-3"),
        pytest.param([0x0001, 0xE240], DataType.UINT32, 1e-4, 0.0, 12.3456, id="uint32-x10^-4"),
        pytest.param([0x0000, 0x0064], DataType.INT32, 10.0, 0.0, 1000.0, id="int32-x10^1"),
        pytest.param([4000], DataType.UINT16, 0.025, -100.0, 0.0, id="raw-counts-with-offset"),
        pytest.param([0x42C8, 0x0000], DataType.FLOAT32, 1.0, 0.0, 100.0, id="float-unscaled"),
    ],
)
def test_scaled_integers(
    registers: list[int], data_type: DataType, scale: float, offset: float, expected: float
) -> None:
    """Scaled integers: value × 10^-n (IEC 61131/Modbus convention), plus an optional offset, exactly."""
    assert scale_value(decode_registers(registers, data_type), scale, offset) == expected


@pytest.mark.parametrize(
    ("raw", "scale", "offset", "expected"),
    [
        pytest.param(1013, 0.1, 0.0, 101.3, id="1013x0.1"),  # float arithmetic: 101.30000000000001
        pytest.param(10123, 0.1, 0.0, 1012.3, id="10123x0.1"),  # float arithmetic: 1012.3000000000001
        pytest.param(3, 0.1, 0.0, 0.3, id="3x0.1"),  # float arithmetic: 0.30000000000000004
        pytest.param(-2731, 0.1, 0.0, -273.1, id="negative"),
        pytest.param(2000, 0.01, -273.15, -253.15, id="offset-with-more-places"),
        pytest.param(7, 1e-9, 0.0, 7e-9, id="x10^-9"),
        pytest.param(5, 1e20, 0.0, 5e20, id="x10^20"),
        pytest.param(1013.0, 0.1, 0.0, 101.3, id="integral-float"),
        pytest.param(0.5, 0.1, 0.0, 0.05, id="binary-fraction"),
    ],
)
def test_scaling_gives_the_decimal_the_instrument_means(
    raw: float, scale: float, offset: float, expected: float
) -> None:
    assert scale_value(raw, scale, offset) == expected
    assert Scaling.of(scale, offset).apply(raw) == expected


@given(
    raw=st.integers(min_value=-(2**63), max_value=2**64 - 1),
    places=st.integers(min_value=0, max_value=12),
    offset_places=st.integers(min_value=0, max_value=6),
    offset_units=st.integers(min_value=-(10**9), max_value=10**9),
)
@ROUND_TRIP
def test_scaled_integer_is_the_nearest_float_to_the_exact_decimal(
    raw: int, places: int, offset_places: int, offset_units: int
) -> None:
    """The reference is Decimal arithmetic with enough precision, independent of Scaling's integers."""
    scale = float(f"1e-{places}")
    offset = float(f"{offset_units}e-{offset_places}")
    exact = Decimal(raw).scaleb(-places) + Decimal(offset_units).scaleb(-offset_places)
    assert scale_value(raw, scale, offset) == float(exact)


def test_scaling_identity_and_bounds() -> None:
    assert Scaling.of(1.0, 0.0).is_identity
    assert not Scaling.of(0.1, 0.0).is_identity
    with pytest.raises(OverflowError):
        Scaling.of(1e300, 0.0).apply(2**64 - 1)
    with pytest.raises(ValueError, match="NaN"):
        Scaling.of(0.1, 0.0).apply(math.nan)


def test_the_agent_publishes_the_exact_decimal() -> None:
    """Through the agent's own decoder (instrument_reader's compiled codecs), not only scale_value."""
    profile = load_profile(Path(__file__).resolve().parents[2] / "config/profiles/met-station.toml")
    instrument = Instrument(config=InstrumentSection(id="met", profile=Path("met-station.toml")), profile=profile)
    requests = plan(spans_of(profile))
    words = {"wind_speed": 35, "wind_dir": 225, "air_temp": 0xFF53, "air_pressure": 10123, "rel_humidity": 1013}
    answers = {}
    for request in requests:
        answer = [0] * request.count
        for span in request.spans:
            if span.name in words:
                answer[span.address - request.address] = words[span.name]
        answers[request] = answer
    values = {r.parameter: r.value for r in readings_from_answers(instrument, answers, datetime.now(UTC))}
    assert values == {
        "wind_speed": 3.5,
        "wind_dir": 225.0,
        "air_temp": -17.3,
        "air_pressure": 1012.3,
        "rel_humidity": 101.3,
    }


def test_scale_value_defaults_to_identity() -> None:
    assert scale_value(42.5) == 42.5


@pytest.mark.parametrize(
    ("word", "width", "set_bits"),
    [
        (0, 16, []),
        (1, 16, [0]),
        (0x8000, 16, [15]),
        (0b1010, 4, [1, 3]),
        (0xFFFF, 16, list(range(16))),
        (0x0001_0000, 32, [16]),
        (0x0001_0000, 16, []),
        (0b101, 2, [0]),
    ],
)
def test_bits_of(word: int, width: int, set_bits: list[int]) -> None:
    """Bit i of a status word, least significant first."""
    bits = bits_of(word, width)
    assert len(bits) == width
    assert [index for index, bit in enumerate(bits) if bit] == set_bits


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 0xFFFF))
def test_bits_of_reassembles(word: int) -> None:
    assert sum(1 << index for index, bit in enumerate(bits_of(word)) if bit) == word
