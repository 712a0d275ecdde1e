"""An illegal address on a merged block isolates the bad tag (or hole); the rest keeps flowing.

Pure decisions (halves, holes, plans around forbidden ranges, the plan's explanations) in tables; then a real
pymodbus device that refuses one tag of the agent's profile and one unused register inside a merged block.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from ports import free_port

from aua_contract import Quality
from aua_simulator.incidents import Incidents
from aua_simulator.modbus_servers import Quirks, Simulator
from aua_simulator.register_images import SimulatedInstrument
from edge_agent.config import Instrument, InstrumentSection
from edge_agent.instrument_reader import ModbusReader
from edge_agent.modbus_drivers import build_drivers
from edge_agent.planner import Forbidden, ReadRequest, Span, explain, halves, hole_between, plan, request_for
from edge_agent.profiles import Function, Profile, load_profile

INPUT, HOLDING = Function.INPUT, Function.HOLDING
PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"


def span(name: str, address: int, count: int = 2, function: Function = INPUT) -> Span:
    return Span(name, function, address, count)


def shape(requests: list[ReadRequest]) -> list[tuple[int, int, list[str]]]:
    return [(r.address, r.count, [s.name for s in r.spans]) for r in requests]


A, B, C, D = span("a", 0), span("b", 2), span("c", 6), span("d", 8)


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        ((A,), None),
        ((A, B), ([(0, 2, ["a"])], [(2, 2, ["b"])])),
        ((A, B, C), ([(0, 2, ["a"])], [(2, 6, ["b", "c"])])),
        ((D, C, B, A), ([(0, 4, ["a", "b"])], [(6, 4, ["c", "d"])])),  # by address, whatever the order
    ],
)
def test_a_refused_request_is_halved_by_its_spans(
    spans: tuple[Span, ...], expected: tuple[list[tuple[int, int, list[str]]], ...] | None
) -> None:
    split = halves(request_for(spans))
    if expected is None:
        assert split is None
    else:
        assert split is not None
        assert (shape([split[0]]), shape([split[1]])) == expected


def test_the_hole_between_two_accepted_halves_is_what_was_refused() -> None:
    assert hole_between(request_for((A,)), request_for((C,))) == Forbidden(INPUT, 2, 6)
    assert hole_between(request_for((A,)), request_for((B,))) is None  # adjacent: no hole


@pytest.mark.parametrize(
    ("forbidden", "expected"),
    [
        ((), [(0, 10, ["a", "b", "c", "d"])]),
        ((Forbidden(INPUT, 4, 6),), [(0, 4, ["a", "b"]), (6, 4, ["c", "d"])]),
        ((Forbidden(HOLDING, 4, 6),), [(0, 10, ["a", "b", "c", "d"])]),  # another table: no effect
        ((Forbidden(INPUT, 2, 4),), [(0, 2, ["a"]), (6, 4, ["c", "d"])]),  # b itself refused, and not planned
    ],
)
def test_plans_never_read_across_a_forbidden_range(
    forbidden: tuple[Forbidden, ...], expected: list[tuple[int, int, list[str]]]
) -> None:
    spans = [A, C, D] if any(f.address == 2 for f in forbidden) else [A, B, C, D]
    assert shape(plan(spans, max_gap=10, forbidden=forbidden)) == expected


def test_explain_says_why_requests_are_merged_or_apart() -> None:
    spans = [span("a", 0), span("b", 4), span("c", 30), span("d", 40, 120)]
    requests = plan(spans, max_gap=10)
    lines = explain(requests, max_gap=10)
    assert shape(requests) == [(0, 6, ["a", "b"]), (30, 2, ["c"]), (40, 120, ["d"])]
    assert lines == [
        "2 spans in one read of 6 registers (limit 125): 2 unused registers read along, largest hole 2 <= max_gap 10",
        "1 span, 2 registers; apart from the previous request: 24 unused registers between them > max_gap 10",
        "1 span, 120 registers; apart from the previous request: together 130 registers > 125 per request",
    ]
    refused = explain(plan([A, C], max_gap=10, forbidden=(Forbidden(INPUT, 3, 4),)), 10, (Forbidden(INPUT, 3, 4),))
    assert refused[1].endswith("apart from the previous request: the device refused 3..3")


# --------------------------------------------------------------------------------------------------
# A real device
# --------------------------------------------------------------------------------------------------


def with_ghost(profile: Profile) -> Profile:
    """The profile plus a tag the device does not have (right after its last input register)."""
    document = profile.model_dump(mode="json")
    document["tag"].append({"name": "ghost", "function": "input", "address": 1014, "type": "float32", "unit": "mg/m3"})
    return Profile.model_validate(document)


async def test_a_refused_tag_and_a_refused_hole_are_isolated_and_the_rest_flows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gas = load_profile(PROFILES / "stack-gas-analyzer.toml")
    flow = load_profile(PROFILES / "stack-flow.toml")
    port = free_port()
    simulator = Simulator(
        {port: [SimulatedInstrument("gas", gas, 1), SimulatedInstrument("flow", flow, 2)]},
        quirks={"flow": Quirks(refuse=frozenset({109}))},  # an unused register between pressure and meter
        incidents=Incidents.none(),
        clock=lambda: 1.8e9,
    )
    instruments = [
        Instrument(
            config=InstrumentSection(id="gas", profile=Path("x"), port=port, device_id=1), profile=with_ghost(gas)
        ),
        Instrument(config=InstrumentSection(id="flow", profile=Path("x"), port=port, device_id=2), profile=flow),
    ]
    caplog.set_level(logging.WARNING, logger="edge_agent")
    async with simulator:
        drivers = build_drivers(instruments)
        gas_reader, flow_reader = (ModbusReader(i, drivers.by_instrument[i.id]) for i in instruments)
        try:
            polls = [(await gas_reader.poll(), await flow_reader.poll()) for _ in range(3)]
        finally:
            await drivers.close()
    truth = {name: simulator.image_now(name).served.values for name in ("gas", "flow")}
    for gas_readings, flow_readings in polls:
        by_name = {r.parameter: r for r in gas_readings}
        assert (by_name["ghost"].value, by_name["ghost"].quality) == (None, Quality.FAILURE)
        assert {r.parameter: r.value for r in gas_readings if r.parameter != "ghost"} == truth["gas"]
        assert {r.quality for r in gas_readings if r.parameter != "ghost"} == {Quality.OK}
        # the refused hole cost nothing: every flow value, every poll, the first included
        assert {r.parameter: r.value for r in flow_readings} == truth["flow"]
    assert gas_reader.stats.isolated == ["ghost"]
    assert flow_reader.stats.isolated == []
    # after learning, the plans read around what is refused, and nothing is refused any more
    assert [(r.function, r.address, r.count) for r in gas_reader.requests] == [
        (Function.DISCRETE, 1000, 27),
        (Function.INPUT, 1000, 14),
    ]
    assert [(r.address, r.count) for r in flow_reader.requests] == [(100, 8), (110, 1)]
    assert gas_reader.stats.polls == 3
    # failed requests only in the first poll: every refused request of narrowing the merged block down to
    # ghost alone counts (issue 16); from then on ghost is not read at all
    assert gas_reader.stats.failed_requests == gas_reader.stats.errors["exception"] > 1
    # reported once, not once per poll
    messages = [r.getMessage() for r in caplog.records]
    assert sum("refuses ghost" in m for m in messages) == 1
    assert sum("refuses the unused registers FC03 108..109" in m for m in messages) == 1
