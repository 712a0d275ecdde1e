"""The agent's own batch encoder and Modbus TCP framing, held to the contract's encoder and pymodbus's framer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.bit_message import ReadDiscreteInputsRequest
from pymodbus.pdu.register_message import ReadInputRegistersRequest

from aua_contract import IDENTIFIER_PATTERN, MAX_ABS_VALUE, Batch, Quality, decode_batch, encode_batch
from edge_agent import mbap
from edge_agent.sealing import Sample, batch_from_fragments, batch_payload, fragments_of, pack

identifiers = st.from_regex(IDENTIFIER_PATTERN, fullmatch=True)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(
    lambda t: t.astimezone(UTC)
)
samples = st.builds(
    Sample,
    instrument=identifiers,
    parameter=identifiers,
    value=st.none()
    | st.floats(min_value=-MAX_ABS_VALUE, max_value=MAX_ABS_VALUE)
    | st.integers(-(2**49), 2**49).map(float),  # the contract's bound: |value| <= 1e15
    unit=st.text(
        st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="\u2028\u2029"), min_size=1, max_size=32
    ),
    ts=times,
    quality=st.sampled_from(Quality),
    status=st.none() | st.integers(0, 2**63 - 1),  # a status block has at most 63 bits (profiles.py)
)


@settings(max_examples=300, deadline=None)
@given(
    site=identifiers,
    agent=identifiers,
    seq=st.integers(0, 2**62),
    sent_at=times,
    readings=st.lists(samples, max_size=20),
)
def test_the_payload_is_byte_for_byte_the_contracts(
    site: str, agent: str, seq: int, sent_at: datetime, readings: list[Sample]
) -> None:
    payload = batch_payload(site, agent, seq, sent_at, readings)
    batch = Batch(site=site, agent=agent, seq=seq, sent_at=sent_at, readings=[r.to_reading() for r in readings])
    assert payload == encode_batch(batch)
    assert decode_batch(payload) == batch


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(0, 2**62),
    sent_at=times,
    instruments=st.lists(st.lists(samples, max_size=8), max_size=6),
    max_readings=st.integers(1, 10),
)
def test_batches_spliced_from_staged_fragments_are_the_contracts_bytes(
    seq: int, sent_at: datetime, instruments: list[list[Sample]], max_readings: int
) -> None:
    """The agent stages each instrument's readings as fragments and seals batches by splicing them: every batch
    holds at most max_readings readings, the readings stay in order, and each payload is encode_batch's."""
    fragments = [fragment for readings in instruments for fragment in fragments_of(readings, max_readings)]
    assert all(1 <= count <= max_readings for count, _ in fragments)
    groups = pack(fragments, max_readings)
    counts = {fragment: count for count, fragment in fragments}  # the same bytes: the same count
    sealed: list[Sample] = []
    everything = [reading for readings in instruments for reading in readings]
    for group in groups:
        size = sum(counts[fragment] for fragment in group)
        assert 1 <= size <= max_readings
        chunk = everything[len(sealed) : len(sealed) + size]
        payload = batch_from_fragments("s", "a", seq, sent_at, group)
        batch = Batch(site="s", agent="a", seq=seq, sent_at=sent_at, readings=[r.to_reading() for r in chunk])
        assert payload == encode_batch(batch)
        sealed += chunk
    assert sealed == everything


@pytest.mark.parametrize(
    ("counts", "max_readings", "expected"),
    [
        ([], 5, []),
        ([5], 5, [[5]]),
        ([2, 3, 1], 5, [[2, 3], [1]]),
        ([4, 4, 4], 5, [[4], [4], [4]]),
        ([1, 1, 1, 1], 2, [[1, 1], [1, 1]]),
    ],
)
def test_fragments_are_packed_in_order_up_to_the_bound(
    counts: list[int], max_readings: int, expected: list[list[int]]
) -> None:
    fragments = [(count, f"[{index}]".encode()) for index, count in enumerate(counts)]
    size_of = {fragment: count for count, fragment in fragments}
    assert [[size_of[f] for f in group] for group in pack(fragments, max_readings)] == expected


def test_a_sample_reads_like_a_reading() -> None:
    ts = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(microseconds=5)
    sample = Sample("gas", "so2", 1.5, "mg/m3", ts, Quality.CHECK_FUNCTION, 4)
    reading = sample.to_reading()
    assert (reading.instrument, reading.parameter, reading.value, reading.quality, reading.status, reading.ts) == (
        "gas",
        "so2",
        1.5,
        Quality.CHECK_FUNCTION,
        4,
        ts,
    )


SOCKET = FramerSocket(DecodePDU(False))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (
            mbap.read_request(1, 7, 4, 1000, 14),
            ReadInputRegistersRequest(address=1000, count=14, dev_id=7, transaction_id=1),
        ),
        (
            mbap.read_request(65535, 255, 2, 0, 2000),
            ReadDiscreteInputsRequest(address=0, count=2000, dev_id=255, transaction_id=65535),
        ),
    ],
)
def test_requests_are_byte_for_byte_those_of_pymodbus(ours: bytes, theirs: object) -> None:
    assert ours == SOCKET.buildFrame(theirs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("head", "size"),
    [
        (b"", None),
        (b"\x00\x01\x00\x00\x00", None),
        (b"\x00\x01\x00\x00\x00\x07", 13),  # unit + function + byte count + 4 data bytes
        (b"\x00\x01\x00\x00\x00\x03", 9),  # an exception answer
        (b"\x00\x01\x00\x01\x00\x07", 0),  # protocol id 1: not Modbus
        (b"\x00\x01\x00\x00\x01\x00", 0),  # longer than any Modbus frame
    ],
)
def test_frame_size_from_the_header(head: bytes, size: int | None) -> None:
    assert mbap.frame_size(head) == size


def test_split_frame_and_refusals() -> None:
    frame = bytes.fromhex("00 2a 00 00 00 07 07 04 04 42 c8 00 00")
    assert mbap.split_frame(frame) == (42, 7, bytes.fromhex("04 04 42 c8 00 00"))
    with pytest.raises(ValueError, match="not a read function"):
        mbap.read_request(1, 1, 6, 0, 1)
    with pytest.raises(ValueError, match="cannot read 126"):
        mbap.read_request(1, 1, 3, 0, 126)


def test_the_readmes_failed_read_example_is_what_the_agent_sends() -> None:
    """README, "Wire contract": a failed read has no `value` key (not null). Held to the real encoder."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Wire contract") :]
    example = json.loads(section[section.index("```json\n") + 8 : section.index("\n```", section.index("```json"))])
    failed = Sample(
        example["instrument"],
        example["parameter"],
        None,
        example["unit"],
        datetime.fromisoformat(example["ts"]),
        Quality.FAILURE,
        None,
    )
    sent = json.loads(batch_payload("s", "a", 0, datetime.now(UTC), [failed]))["readings"][0]
    assert sent == example
    assert "value" not in sent
    # and a reading with a null value from another producer means the same
    with_null = {**example, "value": None}
    batch = {"v": 1, "site": "s", "agent": "a", "seq": 0, "sent_at": example["ts"], "readings": [with_null]}
    assert decode_batch(json.dumps(batch).encode()).readings[0].value is None
