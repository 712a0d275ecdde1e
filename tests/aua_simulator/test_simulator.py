"""The instrument simulator: what a Modbus client reads is what the simulator says it served.

The clock is injected, so every test pins the tick it reads; ports are picked free by the OS.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU

from aua_contract import Quality
from aua_simulator.incidents import IncidentRate, Incidents, Window, active_windows, mercury_episode
from aua_simulator.instruments import main
from aua_simulator.modbus_servers import Simulator, simulator_for_config
from aua_simulator.plant_story import world_state
from aua_simulator.register_images import SimulatedInstrument, encode_tag, scenario_for, status_bits, tick_image
from aua_simulator.world import HG_MEASURED_RANGE, Scenario
from edge_agent.config import LoadedConfig, load_config
from edge_agent.decoding import DataType, bits_of, decode_registers, scale_value
from edge_agent.planner import ReadRequest, plan, spans_of
from edge_agent.profiles import Function, Profile, load_profile
from edge_agent.quality import quality_from_bits, status_word

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
PROFILE_PATHS = sorted((CONFIG_DIR / "profiles").glob("*.toml"))
START = 1_767_240_000.0
"""2026-01-01 04:00 UTC, 09:00 in Pavlodar: a winter morning peak."""
INSTRUMENTS = ["stack1-gas", "stack1-flow", "stack1-dust", "pvl1-gas", "pvl1-pm", "pvl1-hg", "pvl1-met"]
NO_INCIDENTS = Incidents.none()
ONLY_CALIBRATIONS = Incidents(
    slot_ticks=20,
    calibration=IncidentRate(1.0, (5, 5)),
    warning=IncidentRate(0.0, (1, 1)),
    out_of_specification=IncidentRate(0.0, (1, 1)),
    failure=IncidentRate(0.0, (1, 1)),
    hg_episode_probability=0.0,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def configs() -> list[LoadedConfig]:
    return [load_config(CONFIG_DIR / "pavlodar-chp.toml"), load_config(CONFIG_DIR / "pavlodar-ambient.toml")]


@asynccontextmanager
async def simulating(configs: list[LoadedConfig], incidents: Incidents, clock: Clock) -> AsyncIterator[Simulator]:
    simulator = simulator_for_config(configs, port_map={5020: 0, 5021: 0}, seed=7, incidents=incidents, clock=clock)
    async with simulator:
        yield simulator


@asynccontextmanager
async def client_of(simulator: Simulator, instrument_id: str) -> AsyncIterator[tuple[AsyncModbusTcpClient, int]]:
    host, port, device_id = simulator.endpoint(instrument_id)
    client = AsyncModbusTcpClient(host, port=port, timeout=2)
    assert await client.connect()
    try:
        yield client, device_id
    finally:
        client.close()


async def read(client: AsyncModbusTcpClient, function: Function, address: int, count: int, device_id: int) -> ModbusPDU:
    if function is Function.COIL:
        return await client.read_coils(address, count=count, device_id=device_id)
    if function is Function.DISCRETE:
        return await client.read_discrete_inputs(address, count=count, device_id=device_id)
    if function is Function.HOLDING:
        return await client.read_holding_registers(address, count=count, device_id=device_id)
    return await client.read_input_registers(address, count=count, device_id=device_id)


async def read_as_agent(
    client: AsyncModbusTcpClient, profile: Profile, device_id: int, max_gap: int
) -> tuple[dict[str, float], dict[str, list[bool]]]:
    """Read an instrument the way the agent plans it, and decode its tags and status blocks."""
    answers: dict[str, list[int]] = {}
    for request in plan(spans_of(profile), max_gap):
        response = await read(client, request.function, request.address, request.count, device_id)
        assert not response.isError(), f"{request}: {response}"
        received = [int(bit) for bit in response.bits] if request.function.is_bit else list(response.registers)
        answers.update(_slices(request, received))
    values = {}
    for tag in profile.tag:
        if tag.type is DataType.BOOL:
            values[tag.name] = 1.0 if answers[tag.name][0] else 0.0
            continue
        raw = decode_registers(answers[tag.name], tag.type, profile.byte_order_of(tag))
        values[tag.name] = scale_value(raw, tag.scale, tag.offset)
    statuses = {}
    for block in profile.status:
        answer = answers[block.name]
        if block.function.is_bit:
            statuses[block.name] = [bool(bit) for bit in answer[: block.count]]
        else:
            statuses[block.name] = [bit for word in answer for bit in bits_of(word)][: block.count]
    return values, statuses


def _slices(request: ReadRequest, received: list[int]) -> Iterator[tuple[str, list[int]]]:
    for span in request.spans:
        yield span.name, received[request.slice_for(span)]


def exception_code(response: ModbusPDU) -> int:
    """0 for a normal answer."""
    return response.exception_code


# ---- what a client reads is what was served ----


@pytest.mark.parametrize("instrument_id", INSTRUMENTS)
async def test_client_reads_what_the_simulator_served(configs: list[LoadedConfig], instrument_id: str) -> None:
    clock = Clock(START)
    async with simulating(configs, NO_INCIDENTS, clock) as simulator:
        instrument = next(i for config in configs for i in config.instruments if i.id == instrument_id)
        async with client_of(simulator, instrument_id) as (client, device_id):
            values, statuses = await read_as_agent(client, instrument.profile, device_id, instrument.config.max_gap)
        served = simulator.served(instrument_id)
        assert len(served) == 1, "one tick, recorded once however many requests read it"
        assert served[0].time == START
        assert values == served[0].values
        assert {name: status_word(bits) for name, bits in statuses.items()} == served[0].status
        for block in instrument.profile.status:
            assert quality_from_bits(block, statuses[block.name]) is Quality.OK


async def test_values_change_once_per_tick(configs: list[LoadedConfig]) -> None:
    clock = Clock(START)
    profile = load_profile(CONFIG_DIR / "profiles" / "stack-gas-analyzer.toml")
    async with (
        simulating(configs, NO_INCIDENTS, clock) as simulator,
        client_of(simulator, "stack1-gas") as (client, device_id),
    ):
        first, _ = await read_as_agent(client, profile, device_id, 10)
        clock.now += 0.5
        same, _ = await read_as_agent(client, profile, device_id, 10)
        clock.now += 0.5
        next_tick, _ = await read_as_agent(client, profile, device_id, 10)
        assert same == first
        assert next_tick != first
        assert simulator.served_values("stack1-gas", "so2") == [first["so2"], next_tick["so2"]]
        assert [tick.time for tick in simulator.served("stack1-gas")] == [START, START + 1]


async def test_plausible_readings_on_the_wire(configs: list[LoadedConfig]) -> None:
    clock = Clock(START)
    async with simulating(configs, NO_INCIDENTS, clock) as simulator:
        for instrument in [i for config in configs for i in config.instruments]:
            async with client_of(simulator, instrument.id) as (client, device_id):
                await read_as_agent(client, instrument.profile, device_id, instrument.config.max_gap)
        now = {instrument: simulator.served(instrument)[-1].values for instrument in INSTRUMENTS}
    assert 350 < now["stack1-gas"]["so2"] < 1000
    assert 5 < now["stack1-gas"]["o2"] < 9
    assert 380_000 < now["stack1-flow"]["flow"] < 650_000
    assert 1 < now["stack1-dust"]["dust"] < 40
    assert HG_MEASURED_RANGE[0] <= now["pvl1-hg"]["hg"] <= HG_MEASURED_RANGE[1]
    assert -30 < now["pvl1-met"]["air_temp"] < 5, "a January morning in Pavlodar"


# ---- the map's edges ----


@pytest.mark.parametrize("instrument_id", INSTRUMENTS)
async def test_reads_outside_the_profile_answer_illegal_address(
    configs: list[LoadedConfig], instrument_id: str
) -> None:
    clock = Clock(START)
    async with simulating(configs, NO_INCIDENTS, clock) as simulator:
        instrument = next(i for i in simulator.instruments if i.id == instrument_id)
        async with client_of(simulator, instrument_id) as (client, device_id):
            for function in Function:
                span = instrument.tables.get(function)
                outside = [0, 100] if span is None else [span.end] + ([span.first - 1] if span.first > 0 else [])
                for address in outside:
                    response = await read(client, function, address, 1, device_id)
                    assert exception_code(response) == ExcCodes.ILLEGAL_ADDRESS, (function, address, response)
                if span is not None and not function.is_bit:
                    response = await read(client, function, span.first, span.end - span.first + 1, device_id)
                    assert exception_code(response) == ExcCodes.ILLEGAL_ADDRESS, "a read running past the end"


async def test_writes_are_refused(configs: list[LoadedConfig]) -> None:
    async with (
        simulating(configs, NO_INCIDENTS, Clock(START)) as simulator,
        client_of(simulator, "stack1-flow") as (client, device_id),
    ):
        register = await client.write_register(100, 1, device_id=device_id)
        coil = await client.write_coil(0, True, device_id=device_id)
    assert exception_code(register) == ExcCodes.ILLEGAL_ADDRESS
    assert exception_code(coil) == ExcCodes.ILLEGAL_ADDRESS


async def test_unknown_device_id_answers_like_a_gateway_with_a_silent_target(configs: list[LoadedConfig]) -> None:
    async with (
        simulating(configs, NO_INCIDENTS, Clock(START)) as simulator,
        client_of(simulator, "stack1-gas") as (client, _),
    ):
        response = await client.read_input_registers(1000, count=2, device_id=99)
    assert exception_code(response) == ExcCodes.GATEWAY_NO_RESPONSE


async def test_stop_frees_the_ports(configs: list[LoadedConfig]) -> None:
    simulator = simulator_for_config(configs, port_map={5020: 0, 5021: 0}, clock=Clock(START))
    await simulator.start()
    ports = list(simulator.ports.values())
    assert len(set(ports)) == 2
    await simulator.stop()
    await simulator.stop()
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


# ---- status bits ----


def _tick_in(instrument_id: str, quality: Quality, incidents: Incidents, seed: int = 7) -> int:
    """The first tick from START on where the instrument is in an incident of that quality."""
    first = int(START)
    for index in range(first, first + 10 * incidents.slot_ticks):
        if any(window.quality is quality for window in active_windows(seed, instrument_id, index, incidents)):
            return index
    raise AssertionError(f"no {quality} incident for {instrument_id}")


@pytest.mark.parametrize(("instrument_id", "zeroed"), [("stack1-gas", "so2"), ("pvl1-gas", "so2"), ("pvl1-hg", "hg")])
async def test_calibration_shows_in_status_bits_and_values(
    configs: list[LoadedConfig], instrument_id: str, zeroed: str
) -> None:
    clock = Clock(_tick_in(instrument_id, Quality.CHECK_FUNCTION, ONLY_CALIBRATIONS))
    async with simulating(configs, ONLY_CALIBRATIONS, clock) as simulator:
        instrument = next(i for config in configs for i in config.instruments if i.id == instrument_id)
        async with client_of(simulator, instrument_id) as (client, device_id):
            values, statuses = await read_as_agent(client, instrument.profile, device_id, 10)
        block = instrument.profile.status[0]
        assert quality_from_bits(block, statuses[block.name]) is Quality.CHECK_FUNCTION
        assert simulator.served_status(instrument_id, block.name) == [status_word(statuses[block.name])]
        assert abs(values[zeroed]) < 3, "the analyzer reads its zero gas during the check"


async def test_teledyne_system_ok_bit_is_set_when_healthy(configs: list[LoadedConfig]) -> None:
    async with (
        simulating(configs, NO_INCIDENTS, Clock(START)) as simulator,
        client_of(simulator, "pvl1-gas") as (client, device_id),
    ):
        response = await client.read_discrete_inputs(0, count=21, device_id=device_id)
    assert [index for index, bit in enumerate(response.bits[:21]) if bit] == [19]


@pytest.mark.parametrize("path", PROFILE_PATHS, ids=lambda path: path.stem)
def test_each_incident_sets_bits_that_decode_to_its_quality(path: Path) -> None:
    for block in load_profile(path).status:
        assert quality_from_bits(block, status_bits(block, [])) is Quality.OK
        for quality in {*block.bits.values(), *block.required.values()}:
            for pick in (0.0, 0.5, 0.999):
                bits = status_bits(block, [Window(quality, 0, 1, pick)])
                assert quality_from_bits(block, bits) is quality, (block.name, quality, pick)


def test_a_failure_holds_the_last_value() -> None:
    profile = load_profile(CONFIG_DIR / "profiles" / "stack-dust.toml")
    instrument = SimulatedInstrument("dust", profile, 1)
    failures = Incidents(slot_ticks=20, failure=IncidentRate(1.0, (6, 6)), calibration=IncidentRate(0.0, (1, 1)))
    first = _tick_in("dust", Quality.FAILURE, failures, seed=3)
    images = [tick_image(instrument, first + i, seed=3, tick=1.0, incidents=failures) for i in range(6)]
    assert len({image.served.values["dust"] for image in images}) == 1
    assert all(image.served.status["monitor"] & 1 for image in images)


# ---- mercury episode ----


def test_demo_mercury_episode_exceeds_the_daily_limit_within_a_minute() -> None:
    incidents = Incidents.demo(START)
    hg = [world_state(Scenario.PAVLODAR_AMBIENT, 0, START + second, incidents)["hg"] for second in range(180)]
    first_above = next(second for second, value in enumerate(hg) if value > 300)
    assert first_above < 60
    assert sum(value > 300 for value in hg) > 60, "long enough for an alert to be seen"
    assert hg[-1] < 300, "and it ends"


def test_demo_flag_schedules_the_episode_from_the_clock(configs: list[LoadedConfig]) -> None:
    simulator = simulator_for_config(configs, demo=True, clock=Clock(START))
    assert simulator.incidents == Incidents.demo(START)
    with pytest.raises(ValueError, match="not both"):
        simulator_for_config(configs, demo=True, incidents=NO_INCIDENTS)


def test_no_episode_without_the_demo_setting() -> None:
    assert all(mercury_episode(0, START + second, NO_INCIDENTS) == 0 for second in range(0, 86_400, 60))


async def test_demo_mercury_episode_on_the_wire(configs: list[LoadedConfig]) -> None:
    incidents = Incidents.demo(START)
    calm = next(
        index
        for index in range(int(START) + 60, int(START) + 120)
        if not active_windows(7, "pvl1-hg", index, incidents)
    )
    async with (
        simulating(configs, incidents, Clock(calm)) as simulator,
        client_of(simulator, "pvl1-hg") as (client, device_id),
    ):
        response = await client.read_input_registers(0, count=2, device_id=device_id)
    hg = decode_registers(
        list(response.registers),
        DataType.FLOAT32,
        load_profile(CONFIG_DIR / "profiles" / "mercury-analyzer.toml").profile.byte_order,
    )
    assert hg > 300
    assert simulator.served_values("pvl1-hg", "hg") == [hg]


# ---- the pure core ----


def test_generators_are_deterministic_for_a_seed() -> None:
    incidents = Incidents()
    for scenario in Scenario:
        assert world_state(scenario, 5, START + 123, incidents) == world_state(scenario, 5, START + 123, incidents)
        assert world_state(scenario, 5, START + 123, incidents) != world_state(scenario, 6, START + 123, incidents)
    profile = load_profile(CONFIG_DIR / "profiles" / "ambient-gas-analyzer.toml")
    instrument = SimulatedInstrument("pvl1-gas", profile, 1)
    again = SimulatedInstrument("pvl1-gas", profile, 1)
    for index in range(int(START), int(START) + 50):
        one = tick_image(instrument, index, seed=1, tick=1.0, incidents=incidents)
        two = tick_image(again, index, seed=1, tick=1.0, incidents=incidents)
        assert (one.served, one.words, one.windows) == (two.served, two.words, two.windows)


def test_stack_stays_in_a_coal_boilers_ranges() -> None:
    hours = [world_state(Scenario.COAL_BOILER_STACK, 0, START + 3600 * h, NO_INCIDENTS) for h in range(24 * 365)]
    ranges = {
        "so2": (350, 1000),
        "nox": (280, 560),
        "co": (5, 100),
        "dust": (0.5, 35),
        "o2": (5, 9),
        "h2o": (7, 13),
        "co2": (10.5, 14.5),
        "temperature": (125, 155),
        "pressure": (97.5, 102.5),
        "flow": (380_000, 650_000),
        "velocity": (10, 30),
    }
    for name, (low, high) in ranges.items():
        values = [hour[name] for hour in hours]
        assert low <= min(values), (name, min(values))
        assert max(values) <= high, (name, max(values))


def test_ambient_mercury_sits_at_the_pavlodar_background() -> None:
    hg = sorted(
        world_state(Scenario.PAVLODAR_AMBIENT, 0, START + 600 * i, NO_INCIDENTS)["hg"] for i in range(6 * 24 * 60)
    )
    assert 3.5 < hg[len(hg) // 2] < 7.0
    assert HG_MEASURED_RANGE[0] <= hg[0]
    assert hg[-1] <= HG_MEASURED_RANGE[1]


def test_daily_load_pattern_shows_in_the_flow() -> None:
    """Over a January month, the 09:00 local peak carries clearly more flue gas than 04:00 at night."""

    def mean_flow(at: float) -> float:
        days = [world_state(Scenario.COAL_BOILER_STACK, 0, at + 86_400 * d, NO_INCIDENTS) for d in range(30)]
        return sum(day["flow"] for day in days) / len(days)

    assert mean_flow(START) > mean_flow(START - 5 * 3600) + 30_000


@pytest.mark.parametrize("path", PROFILE_PATHS, ids=lambda path: path.stem)
def test_every_shipped_tag_is_modelled(path: Path) -> None:
    instrument = SimulatedInstrument(path.stem, load_profile(path))
    assert [name for name, quantity in instrument.quantities.items() if quantity is None] == []


def test_scenario_is_picked_by_tag_names_and_units() -> None:
    picked = {path.stem: scenario_for(load_profile(path)) for path in PROFILE_PATHS}
    assert picked["stack-gas-analyzer"] is Scenario.COAL_BOILER_STACK
    assert picked["stack-flow"] is Scenario.COAL_BOILER_STACK
    assert picked["ambient-gas-analyzer"] is Scenario.PAVLODAR_AMBIENT
    assert picked["met-station"] is Scenario.PAVLODAR_AMBIENT


def test_integers_saturate_instead_of_failing() -> None:
    profile = load_profile(CONFIG_DIR / "profiles" / "stack-dust.toml")
    dust = profile.tag_named("dust")
    assert encode_tag(dust, profile.byte_order_of(dust), -3.0) == [0]
    assert encode_tag(dust, profile.byte_order_of(dust), 1000.0) == [0xFFFF]


def test_history_is_bounded() -> None:
    profile = load_profile(CONFIG_DIR / "profiles" / "met-station.toml")
    clock = Clock(START)
    simulator = Simulator({0: [SimulatedInstrument("met", profile, 1)]}, clock=clock, history_ticks=5)
    for second in range(12):
        clock.now = START + second
        simulator.image_now("met")
    assert [tick.time for tick in simulator.served("met")] == [START + s for s in range(7, 12)]


def test_conflicting_device_ids_are_refused() -> None:
    profile = load_profile(CONFIG_DIR / "profiles" / "met-station.toml")
    with pytest.raises(ValueError, match="device id"):
        Simulator({0: [SimulatedInstrument("a", profile, 1), SimulatedInstrument("b", profile, 1)]})


def test_command_line_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.toml")]) == 2
    assert "file not found" in capsys.readouterr().err
