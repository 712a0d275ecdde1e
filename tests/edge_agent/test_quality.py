"""Status bits -> NE107 quality, and which qualities may enter an average (docs/regulatory-basis.md §3, §6)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aua_contract import Quality, Reading
from edge_agent.decoding import bits_of
from edge_agent.profiles import NE107, StatusBlock
from edge_agent.quality import SEVERITY, quality_from_bits, status_word, worst

OK = Quality.OK
MAINTENANCE_REQUIRED = Quality.MAINTENANCE_REQUIRED
OUT_OF_SPECIFICATION = Quality.OUT_OF_SPECIFICATION
CHECK_FUNCTION = Quality.CHECK_FUNCTION
FAILURE = Quality.FAILURE

# A MARSIC300-like block (docs/regulatory-basis.md §6: 1000 malfunction, 1001 maintenance request, 1002 maintenance,
# 1003 outside specification), plus a "system OK" bit 4 that must be set.
GENERIC = StatusBlock(
    name="status",
    address=1000,
    count=8,
    bits={0: FAILURE, 1: MAINTENANCE_REQUIRED, 2: CHECK_FUNCTION, 3: OUT_OF_SPECIFICATION},
    required={4: FAILURE},
)

# Teledyne API 100E discrete inputs (regulatory-basis.md §6): 0-14 warnings, 15 invalid concentration, 16/17 zero/span
# calibration, 19 system OK, 20 sample flow warning. "16/17 -> check_function, 15 or not-19 -> failure,
# a warning -> maintenance_required".
TELEDYNE = StatusBlock(
    name="t100_status",
    address=0,
    count=21,
    bits={
        **dict.fromkeys(range(15), MAINTENANCE_REQUIRED),
        15: FAILURE,
        16: CHECK_FUNCTION,
        17: CHECK_FUNCTION,
        20: MAINTENANCE_REQUIRED,
    },
    required={19: FAILURE},
)


def _bits(block: StatusBlock, *set_bits: int) -> list[bool]:
    return [index in set_bits for index in range(block.count)]


GENERIC_CASES: list[Any] = [
    pytest.param([4], OK, id="no-flag-bits-system-ok->ok"),
    pytest.param([4, 1], MAINTENANCE_REQUIRED, id="maintenance-request->maintenance_required"),
    pytest.param([4, 3], OUT_OF_SPECIFICATION, id="outside-spec->out_of_specification"),
    pytest.param([4, 2], CHECK_FUNCTION, id="maintenance->check_function"),
    pytest.param([4, 0], FAILURE, id="malfunction->failure"),
    pytest.param([4, 1, 3], OUT_OF_SPECIFICATION, id="out_of_specification-wins-over-maintenance_required"),
    pytest.param([4, 1, 2, 3], CHECK_FUNCTION, id="check_function-wins-over-out_of_specification"),
    pytest.param([4, 0, 1, 2, 3], FAILURE, id="failure-wins-over-check_function"),
    pytest.param([4, 0, 2], FAILURE, id="failure-wins-over-check_function-alone"),
    pytest.param([], FAILURE, id="required-bit-clear->its-quality"),
    pytest.param([2], FAILURE, id="required-bit-clear-wins-over-check_function"),
    pytest.param([4, 5, 6, 7], OK, id="unmapped-bits-ignored"),
]


@pytest.mark.parametrize(("set_bits", "expected"), GENERIC_CASES)
def test_quality_from_bits(set_bits: list[int], expected: Quality) -> None:
    """The worst flag wins: failure > check_function > out_of_specification > maintenance_required > ok."""
    assert quality_from_bits(GENERIC, _bits(GENERIC, *set_bits)) == expected


TELEDYNE_CASES: list[Any] = [
    pytest.param([19], OK, id="system-ok"),
    pytest.param([19, 3], MAINTENANCE_REQUIRED, id="lamp-warning"),
    pytest.param([19, 20], MAINTENANCE_REQUIRED, id="sample-flow-warning"),
    pytest.param([19, 16], CHECK_FUNCTION, id="zero-calibration"),
    pytest.param([19, 17, 3], CHECK_FUNCTION, id="span-calibration-with-warning"),
    pytest.param([19, 15], FAILURE, id="invalid-concentration"),
    pytest.param([], FAILURE, id="system-ok-clear"),
    pytest.param([16], FAILURE, id="system-ok-clear-during-calibration"),
]


@pytest.mark.parametrize(("set_bits", "expected"), TELEDYNE_CASES)
def test_teledyne_t_series_mapping(set_bits: list[int], expected: Quality) -> None:
    """regulatory-basis.md §6: 16/17 -> check_function, 15 or not-19 -> failure, a warning -> maintenance_required."""
    assert quality_from_bits(TELEDYNE, _bits(TELEDYNE, *set_bits)) == expected


def test_empty_block_is_ok() -> None:
    block = StatusBlock(name="none", address=0)
    assert quality_from_bits(block, [True] * 16) == OK
    assert quality_from_bits(block, [False] * 16) == OK


@pytest.mark.parametrize(
    ("qualities", "expected"),
    [
        ([], OK),
        ([OK], OK),
        ([MAINTENANCE_REQUIRED, OK], MAINTENANCE_REQUIRED),
        ([MAINTENANCE_REQUIRED, OUT_OF_SPECIFICATION], OUT_OF_SPECIFICATION),
        ([OUT_OF_SPECIFICATION, CHECK_FUNCTION, MAINTENANCE_REQUIRED], CHECK_FUNCTION),
        ([CHECK_FUNCTION, FAILURE, OK], FAILURE),
    ],
)
def test_worst(qualities: list[Quality], expected: Quality) -> None:
    assert worst(qualities) == expected
    assert worst(list(reversed(qualities))) == expected


def test_severity_ranks_exactly_the_ne107_flags() -> None:
    """Instrument status bits map to NE107 (docs/regulatory-basis.md §3); the other flags are the gateway's own."""
    assert set(SEVERITY) == NE107
    assert sorted(SEVERITY, key=SEVERITY.__getitem__) == [
        OK,
        MAINTENANCE_REQUIRED,
        OUT_OF_SPECIFICATION,
        CHECK_FUNCTION,
        FAILURE,
    ]


@pytest.mark.parametrize("flag", sorted(set(Quality) - NE107))
@pytest.mark.parametrize("table", ["bits", "required"])
def test_status_block_rejects_gateway_side_flags(flag: Quality, table: str) -> None:
    """out_of_range, stuck, spike, stale and substituted are set by the gateway's checks (regulatory-basis.md §3), never
    by an analyzer's bit: a profile mapping a bit to one is a config error, not a silently mis-ranked flag."""
    with pytest.raises(ValidationError, match=f"status bit 2 maps to '{flag.value}'"):
        StatusBlock(name="s", address=0, **{table: {2: flag}})


@pytest.mark.parametrize("index", [-1, 16])
def test_status_block_rejects_bits_outside_the_block(index: int) -> None:
    with pytest.raises(ValidationError, match=f"status bit {index} is outside"):
        StatusBlock(name="s", address=0, count=16, bits={index: FAILURE})


def test_a_status_block_fits_the_int64_status_word_the_stores_keep() -> None:
    """63 bits, all set, still make a status a Reading carries; a 64-bit block is refused at the profile."""
    block = StatusBlock(name="s", address=0, count=63)
    Reading(instrument="i", parameter="p", value=1.0, unit="u", ts=datetime.now(UTC), status=status_word([True] * 63))
    assert status_word([True] * block.count) == 2**63 - 1
    with pytest.raises(ValidationError, match="less than or equal to 63"):
        StatusBlock(name="s", address=0, count=64)


@st.composite
def blocks_and_bits(draw: st.DrawFn) -> tuple[StatusBlock, list[bool]]:
    count = draw(st.integers(1, 40))
    indexes = st.integers(0, count - 1)
    flags = st.sampled_from(sorted(NE107))
    block = StatusBlock(
        name="s",
        address=0,
        count=count,
        bits=draw(st.dictionaries(indexes, flags, max_size=8)),
        required=draw(st.dictionaries(indexes, flags, max_size=3)),
    )
    return block, draw(st.lists(st.booleans(), min_size=count, max_size=count))


@settings(max_examples=150, deadline=None)
@given(blocks_and_bits(), st.data())
def test_setting_a_flag_bit_never_improves_quality(case: tuple[StatusBlock, list[bool]], data: st.DataObject) -> None:
    """Monotone: a further alarm bit (or a cleared 'system OK' bit) can only make the quality worse or equal.

    (A bit that is in both `bits` and `required` means one thing set and another clear: not monotone by design.)
    """
    block, bits = case
    before = quality_from_bits(block, bits)
    flagged = [i for i in block.bits if not bits[i]] + [i for i in block.required if bits[i]]
    flagged = [i for i in flagged if not (i in block.bits and i in block.required)]
    if not flagged:
        return
    index = data.draw(st.sampled_from(flagged))
    after = quality_from_bits(block, [not bit if i == index else bit for i, bit in enumerate(bits)])
    assert SEVERITY[after] >= SEVERITY[before]


@settings(max_examples=150, deadline=None)
@given(blocks_and_bits())
def test_quality_is_the_worst_raised_flag(case: tuple[StatusBlock, list[bool]]) -> None:
    block, bits = case
    raised = [q for i, q in block.bits.items() if bits[i]] + [q for i, q in block.required.items() if not bits[i]]
    result = quality_from_bits(block, bits)
    assert SEVERITY[result] == max((SEVERITY[q] for q in raised), default=0)
    assert result in [*raised, OK]


# --- status word --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "word"),
    [
        ([], 0),
        ([False] * 16, 0),
        ([True], 1),
        ([False, True], 2),
        ([True, False, True], 5),
        ([False] * 15 + [True], 0x8000),
        ([True] * 16, 0xFFFF),
        ([False] * 19 + [True], 1 << 19),  # a 21-bit discrete block: more than one word's worth
    ],
)
def test_status_word(bits: list[bool], word: int) -> None:
    """bit i of the word = bits[i], least significant first, carried raw next to the value."""
    assert status_word(bits) == word


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_status_word_inverts_bits_of(word: int) -> None:
    assert status_word(bits_of(word, 32)) == word


# --- which qualities may enter an average (docs/regulatory-basis.md §3) --------------------------------------------


@pytest.mark.parametrize(
    ("quality", "usable"),
    [
        pytest.param(OK, True, id="§3-ok-used"),
        pytest.param(MAINTENANCE_REQUIRED, True, id="§3-maintenance_required-used-flagged"),
        pytest.param(OUT_OF_SPECIFICATION, True, id="§3-out_of_specification-used-flagged"),
        pytest.param(CHECK_FUNCTION, False, id="§3-check_function-excluded-not-an-outage"),
        pytest.param(FAILURE, False, id="§3-failure-invalid"),
        pytest.param(Quality.OUT_OF_RANGE, False, id="§3-out_of_range-physically-impossible"),
    ],
)
def test_usable_in_averages(quality: Quality, usable: bool) -> None:
    """regulatory-basis.md §3: averages use only valid samples; check_function (maintenance/calibration) and failure are
    excluded, out_of_specification and maintenance_required are used but flagged."""
    assert quality.usable is usable
