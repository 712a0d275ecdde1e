"""Pure: what each instrument measures at a tick (the world through its noise, checks and incidents) and the
register images that carry it, so a new device profile needs no simulator code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from aua_contract import Quality
from aua_simulator.chance import drift, gauss
from aua_simulator.incidents import Incidents, Window, active_windows
from aua_simulator.plant_story import (
    FAILED_SPAN_FACTOR,
    SPAN_GAS,
    CheckStep,
    PlantStory,
    check_failed,
    check_step,
    out_of_service,
    world_state,
)
from aua_simulator.world import Scenario
from edge_agent.decoding import ByteOrder, DataType, decode_registers, encode_value, scale_value
from edge_agent.planner import spans_of
from edge_agent.profiles import Function, Profile, StatusBlock, Tag
from edge_agent.quality import status_word

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quantity:
    """How an instrument measures one world variable: its unit, its noise, what a zero/span check shows."""

    unit: str
    noise: float
    """standard deviation of the measurement noise, in the unit"""
    relative_noise: float = 0.0
    """plus this fraction of the value"""
    floor: float | None = 0.0
    """lowest value reported; None lets noise go negative, as ambient analyzers near zero do"""
    check_value: float | None = None
    """what it reads during a zero/span check (check_function); None: the check does not affect it"""


QUANTITIES: dict[Scenario, dict[str, Quantity]] = {
    Scenario.COAL_BOILER_STACK: {
        "so2": Quantity("mg/m3", 1.0, 0.01, check_value=0.0),
        "no": Quantity("mg/m3", 1.0, 0.01, check_value=0.0),
        "nox": Quantity("mg/m3", 1.0, 0.01, check_value=0.0),
        "co": Quantity("mg/m3", 1.5, 0.02, check_value=0.0),
        "co2": Quantity("%vol", 0.05, check_value=0.04),  # checked with instrument air
        "o2": Quantity("%vol", 0.05, check_value=20.9),
        "h2o": Quantity("%vol", 0.1, check_value=0.0),
        "dust": Quantity("mg/m3", 0.3, 0.02, check_value=0.0),
        "flow": Quantity("Nm3/h", 0.0, 0.005),
        "velocity": Quantity("m/s", 0.0, 0.005),
        "temperature": Quantity("degC", 0.2, floor=None),
        "pressure": Quantity("kPa", 0.02),
        "unit_state": Quantity("code", 0.0),  # the DCS's unit state register: exact
        "load": Quantity("%", 0.2),
        "fuel_flow": Quantity("t/h", 0.1),
    },
    Scenario.PAVLODAR_AMBIENT: {
        "so2": Quantity("ppb", 0.4, floor=None, check_value=0.0),
        "no": Quantity("ppb", 0.4, floor=None, check_value=0.0),
        "no2": Quantity("ppb", 0.4, floor=None, check_value=0.0),
        "nox": Quantity("ppb", 0.5, floor=None, check_value=0.0),
        "pm25": Quantity("ug/m3", 1.0, 0.03, floor=None, check_value=0.0),
        "pm10": Quantity("ug/m3", 1.5, 0.03, floor=None, check_value=0.0),
        "hg": Quantity("ng/m3", 0.1, 0.03, check_value=0.0),
        "wind_speed": Quantity("m/s", 0.1),
        "wind_dir": Quantity("deg", 2.0, floor=None),
        "air_temp": Quantity("degC", 0.05, floor=None),
        "air_pressure": Quantity("hPa", 0.05),
        "rel_humidity": Quantity("%", 0.3),
    },
}


def scenario_for(profile: Profile) -> Scenario:
    """The world whose quantities match most of a profile's tags by name and unit (stack on a tie)."""

    def matches(scenario: Scenario) -> int:
        known = QUANTITIES[scenario]
        return sum(1 for tag in profile.tag if tag.name in known and known[tag.name].unit == tag.unit)

    return max(Scenario, key=matches)


@dataclass(frozen=True)
class TableSpan:
    """The addresses a profile uses in one Modbus table: the simulator answers there and nowhere else.

    Registers tables are exact. Bit tables are refused below `first` and from `end` on, but a read that
    starts inside and runs past `end` within the same 16-bit word is answered with zeros: pymodbus's
    action callback sees words, not the bit count.
    """

    function: Function
    first: int
    end: int

    @property
    def first_register(self) -> int:
        """Index of the first runtime word (bit tables pack 16 bits per word, LSB first)."""
        return self.first // 16 if self.function.is_bit else self.first

    @property
    def registers(self) -> int:
        if self.function.is_bit:
            return (self.end - 1) // 16 - self.first // 16 + 1
        return self.end - self.first


def table_spans(profile: Profile) -> dict[Function, TableSpan]:
    """Lowest to highest address each table uses; holes in between read as zero, as the planner's merged reads need."""
    tables: dict[Function, TableSpan] = {}
    for span in spans_of(profile):
        known = tables.get(span.function)
        first = span.address if known is None else min(known.first, span.address)
        end = span.end if known is None else max(known.end, span.end)
        tables[span.function] = TableSpan(span.function, first, end)
    return tables


class SimulatedInstrument:
    """One instrument to play: the profile says what to serve, the scenario which world it measures."""

    def __init__(self, id: str, profile: Profile, device_id: int = 1, scenario: Scenario | None = None) -> None:
        if not 0 <= device_id <= 255:
            raise ValueError(f"{id}: device id {device_id} is not within 0 ... 255")
        unscalable = [tag.name for tag in profile.tag if tag.scale == 0]
        if unscalable:
            raise ValueError(f"{id}: tags {unscalable} have scale 0, so no register value gives their reading")
        self.id = id
        self.profile = profile
        self.device_id = device_id
        self.scenario = scenario if scenario is not None else scenario_for(profile)
        self.tables = table_spans(profile)
        known = QUANTITIES[self.scenario]
        self.quantities: dict[str, Quantity | None] = {
            tag.name: known[tag.name] if tag.name in known and known[tag.name].unit == tag.unit else None
            for tag in profile.tag
        }
        self.signals = frozenset(
            quality for block in profile.status for quality in (*block.bits.values(), *block.required.values())
        )
        """The qualities this instrument's status bits can report: it only shows incidents it can flag."""
        unknown = [name for name, quantity in self.quantities.items() if quantity is None]
        if unknown:
            log.info("%s: no %s model for tags %s; serving a generic wandering value", id, self.scenario, unknown)

    def __repr__(self) -> str:
        return f"SimulatedInstrument({self.id!r}, {self.profile.profile.name!r}, device_id={self.device_id})"


@dataclass(frozen=True, slots=True)
class ServedTick:
    """What one instrument served during one tick, as the agent decodes it."""

    instrument: str
    time: float
    """start of the tick, epoch seconds"""
    tags: tuple[str, ...]
    numbers: tuple[float, ...]
    """per tag, after the encode -> decode round trip (float32 rounding, integer scaling)"""
    blocks: tuple[str, ...]
    words: tuple[int, ...]
    """per status block, its bits as one integer (bit i = status bit i), as edge_agent.quality.status_word gives"""

    @property
    def values(self) -> dict[str, float]:
        return dict(zip(self.tags, self.numbers, strict=True))

    @property
    def status(self) -> dict[str, int]:
        return dict(zip(self.blocks, self.words, strict=True))


@dataclass(frozen=True)
class TickImage:
    """An instrument's registers for one tick and the record of what they mean."""

    words: Mapping[Function, list[int]]
    """per table, the runtime words from the table's first register (bit tables: 16 bits per word)"""
    served: ServedTick
    windows: tuple[Window, ...] = field(default=())


def _generic_value(seed: int, instrument_id: str, tag: str, t: float) -> float:
    """For tags no world models: a value wandering around 50 that any register type can hold."""
    return 50.0 + 15.0 * drift(seed, f"{instrument_id}.{tag}", t, 600)


def _measured(
    instrument: SimulatedInstrument, tag: Tag, world: Mapping[str, float], *, seed: int, tick_index: int, t: float
) -> float:
    quantity = instrument.quantities[tag.name]
    if quantity is None:
        return _generic_value(seed, instrument.id, tag.name, t)
    true_value = world[tag.name]
    sigma = quantity.noise + quantity.relative_noise * abs(true_value)
    value = true_value + sigma * gauss(seed, instrument.id, tag.name, tick_index)
    return value if quantity.floor is None else max(quantity.floor, value)


def _calibrated(instrument: SimulatedInstrument) -> bool:
    """An instrument with a zero/span check: some tag reads check gas, and a status bit says so."""
    return Quality.CHECK_FUNCTION in instrument.signals and any(
        quantity is not None and quantity.check_value is not None for quantity in instrument.quantities.values()
    )


def _gas_analyzer(instrument: SimulatedInstrument) -> bool:
    return instrument.scenario is Scenario.COAL_BOILER_STACK and any(tag in SPAN_GAS for tag in instrument.quantities)


def story_windows(
    instrument: SimulatedInstrument, tick_index: int, tick: float, story: PlantStory
) -> tuple[Window, ...]:
    """The plant story's incidents at a tick: the daily zero and span checks and the gas analyzer's failure after
    the failed check. Of the profile's check_function bits (sorted) the check sets the second for zero and the
    third for span: with config/profiles/stack-gas-analyzer.toml, discrete inputs 1024 (zero) and 1025 (span),
    so a QAL3 capture can tell them apart; the reading before the bit drops is the check's result."""
    if instrument.scenario is not Scenario.COAL_BOILER_STACK:
        return ()
    t = tick_index * tick
    windows = []
    step = check_step(story, t) if _calibrated(instrument) else None
    if step is not None:
        begins = story.check_start(t) + (story.check_step_s if step is CheckStep.SPAN else 0.0)
        first, end = math.floor(begins / tick), math.ceil((begins + story.check_step_s) / tick)
        windows.append(Window(Quality.CHECK_FUNCTION, first, end, 0.3 if step is CheckStep.ZERO else 0.55))
    if _gas_analyzer(instrument) and out_of_service(story, t) and story.failed_check_at is not None:
        begins = story.failed_check_at + 2 * story.check_step_s
        first, end = math.floor(begins / tick), math.ceil((begins + story.repair_hours * 3600) / tick)
        windows.append(Window(Quality.FAILURE, first, end, 0.0))
    return tuple(windows)


def measured_values(
    instrument: SimulatedInstrument,
    tick_index: int,
    *,
    seed: int,
    tick: float,
    incidents: Incidents,
    windows: tuple[Window, ...],
    story: PlantStory | None = None,
) -> dict[str, float]:
    """Engineering values the instrument shows at a tick: the world plus noise, changed by the incidents it can flag.

    A failure holds the value of the failure's first tick; a zero/span check shows the check gas (the story's span
    step: the span gas, 10 % low in its failed check).
    """
    t = tick_index * tick
    shown = {window.quality: window for window in windows if window.quality in instrument.signals}
    failure = shown.get(Quality.FAILURE)
    if failure is not None and failure.start != tick_index:
        return measured_values(
            instrument, failure.start, seed=seed, tick=tick, incidents=incidents, windows=windows, story=story
        )
    world = world_state(instrument.scenario, seed, t, incidents, story)
    values = {
        tag.name: _measured(instrument, tag, world, seed=seed, tick_index=tick_index, t=t)
        for tag in instrument.profile.tag
    }
    if Quality.CHECK_FUNCTION in shown:
        step = check_step(story, t) if story is not None else None
        factor = FAILED_SPAN_FACTOR if story is not None and check_failed(story, t) else 1.0
        for tag in instrument.profile.tag:
            quantity = instrument.quantities[tag.name]
            if quantity is None or quantity.check_value is None:
                continue
            gas = quantity.check_value
            if step is CheckStep.SPAN and tag.name in SPAN_GAS:
                gas = SPAN_GAS[tag.name] * factor
            values[tag.name] = gas + quantity.noise * gauss(seed, instrument.id, tag.name, tick_index, "check")
    return values


def status_bits(block: StatusBlock, windows: Iterable[Window]) -> list[bool]:
    """A status block's bits during the given incidents: `required` bits set when healthy, one bit per incident."""
    bits = [False] * block.count
    for index in block.required:
        bits[index] = True
    for window in windows:
        candidates = sorted(index for index, quality in block.bits.items() if quality == window.quality)
        if candidates:
            bits[candidates[math.floor(window.pick * len(candidates))]] = True
        for index, quality in block.required.items():
            if quality == window.quality:
                bits[index] = False
    return bits


_INTEGER_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


def encode_tag(tag: Tag, order: ByteOrder, value: float) -> list[int]:
    """A tag's registers for an engineering value; integers saturate at their type's limits as transmitters do."""
    raw = (value - tag.offset) / tag.scale
    limits = _INTEGER_RANGES.get(tag.type)
    if limits is not None:
        return encode_value(min(max(round(raw), limits[0]), limits[1]), tag.type, order)
    return encode_value(raw, tag.type, order)


def _set_bit(words: list[int], index: int, on: bool) -> None:
    if on:
        words[index // 16] |= 1 << index % 16
    else:
        words[index // 16] &= ~(1 << index % 16)


def register_image(
    instrument: SimulatedInstrument, tick_time: float, values: Mapping[str, float], bits: Mapping[str, list[bool]]
) -> TickImage:
    """Encode one tick's values and status bits into the instrument's tables, and record what the agent will decode."""
    profile = instrument.profile
    words = {function: [0] * span.registers for function, span in instrument.tables.items()}
    numbers = []
    for tag in profile.tag:
        table, span = words[tag.function], instrument.tables[tag.function]
        if tag.function.is_bit:
            on = values[tag.name] >= 0.5
            _set_bit(table, tag.address - span.first_register * 16, on)
            numbers.append(1.0 if on else 0.0)
            continue
        order = profile.byte_order_of(tag)
        registers = encode_tag(tag, order, values[tag.name])
        at = tag.address - span.first
        table[at : at + len(registers)] = registers
        numbers.append(scale_value(decode_registers(registers, tag.type, order), tag.scale, tag.offset))
    for block in profile.status:
        table, span = words[block.function], instrument.tables[block.function]
        block_bits = bits[block.name]
        if block.function.is_bit:
            for index, bit in enumerate(block_bits):
                _set_bit(table, block.address - span.first_register * 16 + index, bit)
        else:
            for word in range(block.registers):
                chunk = block_bits[word * 16 : word * 16 + 16]
                table[block.address - span.first + word] = sum(1 << index for index, bit in enumerate(chunk) if bit)
    served = ServedTick(
        instrument=instrument.id,
        time=tick_time,
        tags=tuple(tag.name for tag in profile.tag),
        numbers=tuple(numbers),
        blocks=tuple(block.name for block in profile.status),
        words=tuple(status_word(bits[block.name]) for block in profile.status),
    )
    return TickImage(words=words, served=served)


def tick_image(
    instrument: SimulatedInstrument,
    tick_index: int,
    *,
    seed: int,
    tick: float,
    incidents: Incidents,
    story: PlantStory | None = None,
) -> TickImage:
    """Everything an instrument serves during one tick. Pure: same arguments, same registers."""
    windows = active_windows(seed, instrument.id, tick_index, incidents)
    if story is not None:
        windows += story_windows(instrument, tick_index, tick, story)
    values = measured_values(
        instrument, tick_index, seed=seed, tick=tick, incidents=incidents, windows=windows, story=story
    )
    bits = {block.name: status_bits(block, windows) for block in instrument.profile.status}
    return replace(register_image(instrument, tick_index * tick, values, bits), windows=windows)
