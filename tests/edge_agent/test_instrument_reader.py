"""Answers to a read plan -> readings with quality (docs/regulatory-basis.md §3 status -> NE107). Pure."""

from __future__ import annotations

from datetime import UTC, datetime

from aua_contract import Quality
from edge_agent.config import Instrument, InstrumentSection
from edge_agent.instrument_reader import readings_from_answers
from edge_agent.planner import plan, spans_of
from edge_agent.profiles import Profile

TS = datetime(2026, 12, 1, tzinfo=UTC)

PROFILE = Profile.model_validate(
    {
        "profile": {"name": "test analyzer", "byte_order": "CDAB"},
        "tag": [
            {"name": "so2", "address": 0, "type": "float32", "unit": "mg/m3", "status": "st"},
            {"name": "temp", "address": 2, "type": "int16", "scale": 0.1, "unit": "degC"},
            {"name": "flow", "function": "holding", "address": 10, "type": "uint32", "unit": "Nm3/h"},
        ],
        "status": [
            {
                "name": "st",
                "function": "discrete",
                "address": 100,
                "count": 4,
                "bits": {"0": "failure", "2": "check_function"},
                "required": {"3": "failure"},
            }
        ],
    }
)
INSTRUMENT = Instrument(config=InstrumentSection(id="gas1", profile="x.toml"), profile=PROFILE)
# The profile is word-swapped (CDAB): 100000 = 0x000186A0 arrives as [0x86A0, 0x0001].
REQUESTS = {r.function.value: r for r in plan(spans_of(PROFILE))}


def read(answers: dict[str, list[int] | list[bool] | None]) -> dict[str, tuple[float | None, Quality, int | None]]:
    result = readings_from_answers(INSTRUMENT, {REQUESTS[k]: v for k, v in answers.items()}, TS)
    assert all(r.ts == TS and r.instrument == "gas1" for r in result)
    return {r.parameter: (r.value, r.quality, r.status) for r in result}


OK_BITS = [False, False, False, True]  # bit 3 is "system OK" and must be set


def test_values_decode_and_take_their_status_block_quality() -> None:
    got = read({"input": [0x0000, 0x42C8, 0xFF9C], "holding": [0x86A0, 0x0001], "discrete": OK_BITS})
    assert got == {
        "so2": (100.0, Quality.OK, 0b1000),
        "temp": (-10.0, Quality.OK, None),
        "flow": (100_000.0, Quality.OK, None),
    }


def test_calibration_bit_gives_check_function_and_failure_wins() -> None:
    assert read({"input": [0, 0x42C8, 0], "holding": [0, 0], "discrete": [False, False, True, True]})["so2"][1] == (
        Quality.CHECK_FUNCTION
    )
    assert read({"input": [0, 0x42C8, 0], "holding": [0, 0], "discrete": [True, False, True, True]})["so2"][1] == (
        Quality.FAILURE
    )
    # "system OK" clear -> failure even with no other bit set
    assert read({"input": [0, 0x42C8, 0], "holding": [0, 0], "discrete": [False] * 4})["so2"][1] == Quality.FAILURE


def test_a_failed_request_fails_only_its_own_tags_with_no_value() -> None:
    got = read({"input": None, "holding": [0x86A0, 0x0001], "discrete": OK_BITS})
    assert got["so2"] == (None, Quality.FAILURE, None)
    assert got["temp"] == (None, Quality.FAILURE, None)
    assert got["flow"] == (100_000.0, Quality.OK, None)


def test_a_value_whose_status_could_not_be_read_is_flagged_not_dropped() -> None:
    got = read({"input": [0, 0x42C8, 0], "holding": [0, 0], "discrete": None})
    assert got["so2"] == (100.0, Quality.OUT_OF_SPECIFICATION, None)
    assert got["temp"] == (0.0, Quality.OK, None)


def test_registers_that_decode_to_nan_fail_that_tag_only() -> None:
    got = read({"input": [0x0000, 0x7FC0, 0x0001], "holding": [0, 0], "discrete": OK_BITS})
    assert got["so2"] == (None, Quality.FAILURE, None)
    assert got["temp"] == (0.1, Quality.OK, None)


def test_registers_beyond_the_contracts_bound_fail_that_tag_only() -> None:
    """A float32 at 3.4e38 (an uninitialised register) is finite but no measurement: the contract refuses any
    |value| > MAX_ABS_VALUE, so publishing it would lose the whole batch at the gateway."""
    for word_lo, word_hi, expected in [
        (0xFFFF, 0x7F7F, None),  # 3.4028235e38, CDAB: low word first
        (0xFFFF, 0xFF7F, None),  # -3.4028235e38
        (0xA5A6, 0x5863, None),  # 1.0012e15: just past the bound
        (0x0000, 0x5800, 562949953421312.0),  # 2^49, inside
    ]:
        got = read({"input": [word_lo, word_hi, 0x0001], "holding": [0, 0], "discrete": OK_BITS})
        assert got["so2"][0] == expected
        assert got["so2"][1] == (Quality.FAILURE if expected is None else Quality.OK)
        assert got["temp"] == (0.1, Quality.OK, None)
