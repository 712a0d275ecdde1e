"""The peers bench's own counting (bench/peers): what the simulator counts as served and what the subscriber
counts as delivered must agree on the same (device, tag, second), or its served vs delivered means nothing."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, where bench/ lives

from bench.peers.counter import Tally, values_of
from bench.peers.simulator import TAG_STRIDE, TAGS, image, tags_covered


@pytest.mark.parametrize(
    ("address", "count", "tags"),
    [
        (0, 60, list(range(30))),  # one block read (Aua's planner, the Node-RED flow)
        (10, 2, [5]),  # one tag per request (thingsboard-gateway)
        (11, 2, []),  # half of two tags: neither was read
        (11, 4, [6]),
        (58, 2, [29]),
        (0, 1, []),
    ],
)
def test_a_tag_counts_as_served_only_when_both_its_registers_were_read(address: int, count: int, tags: list[int]):
    mask = tags_covered(address, count)
    assert [tag for tag in range(TAGS) if mask >> tag & 1] == tags


def test_every_tag_holds_its_index_and_the_second_as_a_big_endian_float32():
    words = image(1234)
    values = [struct.unpack(">f", struct.pack(">HH", *words[2 * i : 2 * i + 2]))[0] for i in range(TAGS)]
    assert values == [float(tag * TAG_STRIDE + 1234) for tag in range(TAGS)]


@pytest.mark.parametrize(
    ("topic", "document", "expected"),
    [
        (
            "aua/v1/bench/peers/readings",
            {"readings": [
                {"instrument": "dev007", "parameter": "t03", "value": 300042.0},
                {"instrument": "dev007", "parameter": "t04"},  # a failed read: no value
            ]},
            [(7, 3, 300042.0)],
        ),
        (
            "v1/gateway/telemetry",
            {"dev002": [{"ts": 1, "values": {"t00": 42.0, "t01": 100042.0}}], "dev003": [{"t29": 2900042.0}]},
            [(2, 0, 42.0), (2, 1, 100042.0), (3, 29, 2900042.0)],
        ),
        ("nr/dev499", {"ts": 1, "v": [42.0, 100042.0]}, [(499, 0, 42.0), (499, 1, 100042.0)]),
        ("elsewhere", {"v": [1.0]}, []),
    ],
)  # fmt: skip
def test_each_systems_message_yields_device_tag_and_value(topic: str, document: object, expected: list[tuple]):
    assert list(values_of(topic, document)) == expected


def test_a_value_seen_again_counts_once_and_a_misplaced_one_counts_as_wrong():
    tally = Tally(devices=2)
    for device, tag, value in [
        (0, 1, 100_007.0),
        (0, 1, 100_007.0),  # a resend
        (0, 1, 100_008.0),  # the next second
        (1, 1, 100_007.0),  # another device
        (1, 2, 100_007.0),  # tag 1's value under tag 2's name: a byte-order or address slip
        (2, 1, 100_007.0),  # no such device
        (1, 3, 300_007.5),  # not a value the simulator serves
    ]:
        tally.add(device, tag, value)
    assert (tally.received, tally.duplicates, tally.wrong) == (3, 1, 3)
    assert tally.delivered(7, 7) == 2
    assert tally.delivered(8, 8) == 1
    assert tally.latest_tick() == 8
