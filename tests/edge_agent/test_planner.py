"""Tags -> the fewest Modbus read requests, within 125 registers / 2000 bits per request (regulatory-basis.md §6)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.decoding import DataType
from edge_agent.planner import MAX_BITS, MAX_REGISTERS, ReadRequest, Span, explain, plan, spans_of
from edge_agent.profiles import Function, Profile

COIL, DISCRETE, HOLDING, INPUT = Function.COIL, Function.DISCRETE, Function.HOLDING, Function.INPUT
PROPERTY = settings(max_examples=150, deadline=None)


def span(name: str, address: int, count: int = 2, function: Function = INPUT) -> Span:
    return Span(name, function, address, count)


def shape(requests: list[ReadRequest]) -> list[tuple[str, int, int, list[str]]]:
    """A request as (function, address, count, span names): what a table can say in one line."""
    return [(str(r.function), r.address, r.count, [s.name for s in r.spans]) for r in requests]


def floats(count: int, start: int = 0, function: Function = INPUT) -> list[Span]:
    """`count` contiguous float32 tags from `start`."""
    return [span(f"t{index}", start + 2 * index, 2, function) for index in range(count)]


def bits(count: int, start: int = 0, function: Function = DISCRETE) -> list[Span]:
    return [span(f"b{index}", start + index, 1, function) for index in range(count)]


def test_limits_are_the_protocols() -> None:
    """One request reads at most 125 registers or 2000 bits (docs/regulatory-basis.md §6)."""
    assert (MAX_REGISTERS, MAX_BITS) == (125, 2000)


CASES: list[Any] = [
    pytest.param([], 10, [], id="nothing-to-read"),
    pytest.param([span("a", 1000)], 10, [("input", 1000, 2, ["a"])], id="one-tag"),
    pytest.param(
        [span("a", 0), span("b", 2), span("c", 4)], 10, [("input", 0, 6, ["a", "b", "c"])], id="adjacent-tags-merge"
    ),
    pytest.param([span("a", 0), span("b", 12)], 10, [("input", 0, 14, ["a", "b"])], id="gap-equal-to-max_gap-merges"),
    pytest.param(
        [span("a", 0), span("b", 13)],
        10,
        [("input", 0, 2, ["a"]), ("input", 13, 2, ["b"])],
        id="gap-over-max_gap-splits",
    ),
    pytest.param([span("a", 0), span("b", 2)], 0, [("input", 0, 4, ["a", "b"])], id="max_gap-0-adjacent-merge"),
    pytest.param(
        [span("a", 0), span("b", 3)],
        0,
        [("input", 0, 2, ["a"]), ("input", 3, 2, ["b"])],
        id="max_gap-0-one-hole-splits",
    ),
    pytest.param(
        [span("a", 0, 4), span("b", 1, 1), span("c", 2, 2)],
        0,
        [("input", 0, 4, ["a", "b", "c"])],
        id="overlapping-aliases-share-a-request",
    ),
    pytest.param(
        [span("a", 0, 121), span("b", 121, 4)], 10, [("input", 0, 125, ["a", "b"])], id="exactly-125-registers"
    ),
    pytest.param(
        [span("a", 0, 122), span("b", 122, 4)],
        10,
        [("input", 0, 122, ["a"]), ("input", 122, 4, ["b"])],
        id="126-registers-split",
    ),
    pytest.param(
        [span("a", 0, 120), span("b", 123, 2)],
        10,
        [("input", 0, 125, ["a", "b"])],
        id="gap-counts-towards-the-limit-125",
    ),
    pytest.param(
        [span("a", 0, 120), span("b", 124, 2)],
        10,
        [("input", 0, 120, ["a"]), ("input", 124, 2, ["b"])],
        id="gap-counts-towards-the-limit-126",
    ),
    pytest.param(
        floats(70),
        10,
        [("input", 0, 124, [f"t{i}" for i in range(62)]), ("input", 124, 16, [f"t{i}" for i in range(62, 70)])],
        id="70-contiguous-float32-two-requests",
    ),
    pytest.param(bits(2000), 10, [("discrete", 0, 2000, [f"b{i}" for i in range(2000)])], id="exactly-2000-bits"),
    pytest.param(
        bits(2001),
        10,
        [("discrete", 0, 2000, [f"b{i}" for i in range(2000)]), ("discrete", 2000, 1, ["b2000"])],
        id="2001-bits-split",
    ),
    pytest.param(
        [span("a", 0, 1, DISCRETE), span("b", 161, 1, DISCRETE)],
        10,
        [("discrete", 0, 162, ["a", "b"])],
        id="bit-gap-is-max_gap-registers-of-16-bits",
    ),
    pytest.param(
        [span("a", 0, 1, COIL), span("b", 162, 1, COIL)],
        10,
        [("coil", 0, 1, ["a"]), ("coil", 162, 1, ["b"])],
        id="bit-gap-over-16-x-max_gap-splits",
    ),
    pytest.param(
        [span("in", 0, 2, INPUT), span("hold", 2, 2, HOLDING), span("di", 0, 1, DISCRETE), span("co", 1, 1, COIL)],
        10,
        [("coil", 1, 1, ["co"]), ("discrete", 0, 1, ["di"]), ("holding", 2, 2, ["hold"]), ("input", 0, 2, ["in"])],
        id="functions-never-merge-and-sort-by-code",
    ),
    pytest.param(
        [span("a", 0, 2, HOLDING), span("b", 0, 2, INPUT)],
        10,
        [("holding", 0, 2, ["a"]), ("input", 0, 2, ["b"])],
        id="same-address-different-function",
    ),
    pytest.param(
        [span("z", 50), span("y", 0), span("x", 25)],
        10,
        [("input", 0, 2, ["y"]), ("input", 25, 2, ["x"]), ("input", 50, 2, ["z"])],
        id="sorted-by-address",
    ),
    pytest.param(
        [span("b", 10, 2), span("a", 10, 2)], 10, [("input", 10, 2, ["a", "b"])], id="same-place-spans-ordered-by-name"
    ),
]


@pytest.mark.parametrize(("spans", "max_gap", "expected"), CASES)
def test_plan(spans: list[Span], max_gap: int, expected: list[tuple[str, int, int, list[str]]]) -> None:
    assert shape(plan(spans, max_gap=max_gap)) == expected


def test_default_max_gap_is_10_registers() -> None:
    assert len(plan([span("a", 0), span("b", 12)])) == 1
    assert len(plan([span("a", 0), span("b", 13)])) == 2


def _answer(request: ReadRequest) -> list[int]:
    """A fake device answer whose register i holds the number i, so a slice shows which registers it took."""
    return list(range(request.address, request.address + request.count))


@pytest.mark.parametrize(("spans", "max_gap", "expected"), CASES)
def test_slice_for_finds_each_span_in_its_request(spans: list[Span], max_gap: int, expected: object) -> None:
    for request in plan(spans, max_gap=max_gap):
        for item in request.spans:
            assert _answer(request)[request.slice_for(item)] == list(range(item.address, item.end))


def test_slice_for_example() -> None:
    (request,) = plan([span("so2", 1000), span("nox", 1004), span("status", 1010, 1)])
    assert (request.address, request.count) == (1000, 11)
    assert [request.slice_for(s) for s in request.spans] == [slice(0, 2), slice(4, 6), slice(10, 11)]


def test_spans_of_profile() -> None:
    """Tags take their type's words; a register status block takes ceil(bits / 16) words, a bit block its bits."""
    profile = Profile.model_validate(
        {
            "profile": {"name": "test"},
            "tag": [
                {"name": "so2", "address": 1000, "unit": "mg/m3"},
                {"name": "flow", "function": "holding", "address": 10, "type": "float64", "unit": "m3/h"},
                {"name": "raw", "address": 2000, "type": "int16", "unit": "1"},
                {"name": "pump", "function": "coil", "address": 5, "type": "bool", "unit": "1"},
            ],
            "status": [
                {"name": "alarms", "function": "discrete", "address": 1000, "count": 27},
                {"name": "words", "function": "input", "address": 5278, "count": 20},
            ],
        }
    )
    assert spans_of(profile) == [
        Span("so2", INPUT, 1000, DataType.FLOAT32.words),
        Span("flow", HOLDING, 10, 4),
        Span("raw", INPUT, 2000, 1),
        Span("pump", COIL, 5, 1),
        Span("alarms", DISCRETE, 1000, 27),
        Span("words", INPUT, 5278, 2),
    ]


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        pytest.param(
            [span("so2", 0), span("nox", 2)],
            "2 spans in one read of 4 registers (limit 125): contiguous",
            id="contiguous",
        ),
        pytest.param(
            [span("so2", 0), span("nox", 5)],
            "2 spans in one read of 7 registers (limit 125): 3 unused registers read along,"
            " largest hole 3 <= max_gap 10",
            id="hole",
        ),
        pytest.param(
            [span("general", 0, 16, DISCRETE), span("maint", 0, 16, DISCRETE)],
            "2 spans in one read of 16 bits (limit 2000): general and maint read the same bits 0..15",
            id="status-blocks-over-the-same-bits",
        ),
        pytest.param(
            [span("general", 0, 8, DISCRETE), span("maint", 4, 8, DISCRETE), span("pump", 20, 1, DISCRETE)],
            "3 spans in one read of 21 bits (limit 2000): 8 unused bits read along, largest hole 8 <= max_gap 160,"
            " general and maint read the same bits 4..7",
            id="shared-and-hole",
        ),
    ],
)
def test_explain_says_what_a_request_reads(spans: list[Span], expected: str) -> None:
    """Two status blocks over the same inputs are not "contiguous": they read the same bits."""
    assert explain(plan(spans), max_gap=10) == [expected]


# --- properties ---------------------------------------------------------------------------------------------------


def _limit(function: Function) -> int:
    return MAX_BITS if function.is_bit else MAX_REGISTERS


@st.composite
def any_spans(draw: st.DrawFn) -> list[Span]:
    """Spans with unique names, anywhere, possibly overlapping (aliases), of realistic sizes."""
    result = []
    for index in range(draw(st.integers(0, 40))):
        function = draw(st.sampled_from(Function))
        if function.is_bit:
            count = draw(st.integers(1, 16) | st.integers(1, MAX_BITS))
        else:
            count = draw(st.sampled_from([1, 2, 4]) | st.integers(1, MAX_REGISTERS))
        address = draw(st.integers(0, 20) | st.integers(0, 3000 if function.is_bit else 600))  # 0-20: collisions
        result.append(Span(f"s{index}", function, address, count))
    return result


@st.composite
def disjoint_spans(draw: st.DrawFn) -> list[Span]:
    """Spans that do not overlap within a function (a real register map), shuffled."""
    result = []
    for function in draw(st.sets(st.sampled_from(Function))):
        address = draw(st.integers(0, 100))
        for index in range(draw(st.integers(0, 25))):
            if function.is_bit:
                count = draw(st.integers(1, 16) | st.integers(1, MAX_BITS))
                address += draw(st.integers(0, 400))
            else:
                count = draw(st.sampled_from([1, 2, 4]) | st.integers(1, MAX_REGISTERS))
                address += draw(st.integers(0, 25))
            result.append(Span(f"{function}{index}", function, address, count))
            address += count
    return draw(st.permutations(result))


@PROPERTY
@given(any_spans(), st.integers(0, 30))
def test_every_span_in_exactly_one_request_within_the_limit(spans: list[Span], max_gap: int) -> None:
    requests = plan(spans, max_gap=max_gap)
    placed = [item for request in requests for item in request.spans]
    assert sorted(placed, key=lambda s: s.name) == sorted(spans, key=lambda s: s.name)
    for request in requests:
        assert 1 <= request.count <= _limit(request.function)
        assert request.spans
        for item in request.spans:
            assert item.function is request.function
            assert request.address <= item.address
            assert item.end <= request.address + request.count
        # tight: a request starts at its first span and ends at its last
        assert request.address == min(item.address for item in request.spans)
        assert request.address + request.count == max(item.end for item in request.spans)
    assert [(r.function.code, r.address) for r in requests] == sorted((r.function.code, r.address) for r in requests)


@PROPERTY
@given(any_spans(), st.integers(0, 30), st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_input_order(spans: list[Span], max_gap: int, random: Any) -> None:
    shuffled = list(spans)
    random.shuffle(shuffled)
    assert plan(shuffled, max_gap=max_gap) == plan(spans, max_gap=max_gap)


@PROPERTY
@given(disjoint_spans(), st.integers(0, 30))
def test_requests_of_one_function_do_not_overlap_and_could_not_merge(spans: list[Span], max_gap: int) -> None:
    """With a real (non-overlapping) map: no register is read twice, and neighbouring requests were split for a
    reason (the hole was over max_gap or the merged request would pass the protocol's limit)."""
    requests = plan(spans, max_gap=max_gap)
    for before, after in itertools.pairwise(requests):
        if before.function is not after.function:
            continue
        before_end = before.address + before.count
        assert before_end <= after.address
        gap = max_gap * 16 if before.function.is_bit else max_gap
        assert after.address - before_end > gap or after.address + after.count - before.address > _limit(
            before.function
        )


@PROPERTY
@given(any_spans(), st.integers(0, 30))
def test_slices_pick_each_spans_registers(spans: list[Span], max_gap: int) -> None:
    for request in plan(spans, max_gap=max_gap):
        answer = _answer(request)
        for item in request.spans:
            assert answer[request.slice_for(item)] == list(range(item.address, item.end))
