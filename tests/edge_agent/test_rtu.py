"""Modbus RTU framing (edge_agent.rtu): known frames, pymodbus's own framer as an independent check, timing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersResponse

from edge_agent import rtu

PYMODBUS = FramerRTU(DecodePDU(False))


def test_crc_of_the_modbus_specifications_example() -> None:
    """Modbus over serial line V1.02 §6.2.2 style example: read 10 holding registers of device 1 at 0."""
    assert rtu.read_request(1, 3, 0, 10) == bytes.fromhex("01 03 00 00 00 0a c5 cd")
    assert rtu.crc16(b"") == 0xFFFF
    # a frame followed by its own CRC has CRC 0
    assert rtu.crc16(rtu.read_request(17, 4, 8, 1)) == 0


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (rtu.read_request(1, 3, 0, 10), ReadHoldingRegistersRequest(address=0, count=10, dev_id=1)),
        (rtu.read_request(247, 1, 65535, 1), ReadCoilsRequest(address=65535, count=1, dev_id=247)),
        (rtu.answer_frame(7, 4, [1, 2, 0xFFFF]), ReadInputRegistersResponse(registers=[1, 2, 0xFFFF], dev_id=7)),
        (
            rtu.answer_frame(7, 2, [True, False, True, *[False] * 5, True]),
            ReadDiscreteInputsResponse(bits=[True, False, True, *[False] * 5, True], dev_id=7),
        ),
    ],
    ids=["read-holding", "read-coil-last-address", "input-answer", "discrete-answer-9-bits"],
)
def test_frames_are_byte_for_byte_those_of_pymodbus(ours: bytes, theirs: Any) -> None:
    assert ours == PYMODBUS.buildFrame(theirs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, 5, 0, 1), "not a read function"),
        ((0, 3, 0, 1), "unicast"),
        ((248, 3, 0, 1), "unicast"),
        ((1, 3, 0, 126), "cannot read 126"),
        ((1, 1, 0, 2001), "cannot read 2001"),
        ((1, 3, 65535, 2), "cannot read 2"),
        ((1, 3, 0, 0), "cannot read 0"),
    ],
)
def test_impossible_requests_are_refused(args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rtu.read_request(*args)


@pytest.mark.parametrize(
    ("head", "size"),
    [
        (b"", None),
        (b"\x01", None),
        (b"\x01\x03", None),  # needs the byte count
        (b"\x01\x03\x04", 9),
        (b"\x01\x83", 5),  # exception answer
        (b"\x01\x02\x01", 6),
        (b"\x01\x10\x00", 0),  # a write answer: not framed here
    ],
)
def test_frame_size_from_the_head(head: bytes, size: int | None) -> None:
    assert rtu.frame_size(head) == size


GOOD = rtu.answer_frame(3, 4, [0x42C8, 0x0000])


@pytest.mark.parametrize(
    ("frame", "device", "function", "count", "expected"),
    [
        (GOOD, 3, 4, 2, [0x42C8, 0x0000]),
        (rtu.answer_frame(3, 1, [True, False, True]), 3, 1, 3, [True, False, True]),
        (rtu.exception_frame(3, 4, 2), 3, 4, 2, rtu.ExceptionAnswer(3, 4, 2)),
        (GOOD[:-1] + bytes([GOOD[-1] ^ 1]), 3, 4, 2, "CRC mismatch"),
        (GOOD, 4, 4, 2, "from device 3, expected 4"),
        (GOOD, 3, 3, 2, "has function 4, expected 3"),
        (GOOD, 3, 4, 3, "carries 4 data bytes"),
        (b"\x03\x04", 3, 4, 2, "too short"),
    ],
    ids=["registers", "bits", "exception", "bad-crc", "other-device", "other-function", "wrong-count", "short"],
)
def test_parse_answer(frame: bytes, device: int, function: int, count: int, expected: object) -> None:
    if isinstance(expected, str):
        with pytest.raises(rtu.FrameError, match=expected):
            rtu.parse_answer(frame, device, function, count)
    else:
        assert rtu.parse_answer(frame, device, function, count) == expected


@settings(max_examples=200, deadline=None)
@given(
    device=st.integers(1, 247),
    registers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
    bits=st.lists(st.booleans(), min_size=1, max_size=2000),
)
def test_answers_round_trip(device: int, registers: list[int], bits: list[bool]) -> None:
    frame = rtu.answer_frame(device, 3, registers)
    assert rtu.frame_size(frame[:3]) == len(frame) == rtu.response_size(3, len(registers))
    assert rtu.parse_answer(frame, device, 3, len(registers)) == registers
    frame = rtu.answer_frame(device, 2, bits)
    assert rtu.frame_size(frame[:3]) == len(frame) == rtu.response_size(2, len(bits))
    assert rtu.parse_answer(frame, device, 2, len(bits)) == bits


@pytest.mark.parametrize(
    ("baudrate", "gap_ms"),
    [(1200, 32.083), (9600, 4.010), (19200, 2.005), (38400, 1.75), (115200, 1.75)],
)
def test_inter_frame_gap_is_three_and_a_half_characters_fixed_above_19200(baudrate: int, gap_ms: float) -> None:
    """docs/regulatory-basis.md §6: 3.5 characters, fixed 1.75 ms above 19,200 baud (11 bits per character)."""
    assert rtu.inter_frame_gap(baudrate) * 1000 == pytest.approx(gap_ms, abs=0.001)


def test_transmit_time_counts_every_bit() -> None:
    assert rtu.transmit_time(8, 9600) == pytest.approx(8 * 11 / 9600)
    assert rtu.transmit_time(8, 9600, bits_per_character=10) == pytest.approx(8 * 10 / 9600)
