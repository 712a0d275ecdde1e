"""The simulator's I/O: pymodbus servers, one per port, each playing the instruments behind that port and
recording what it served so tests can compare the agent's readings with the truth.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simdevice import SimAction

from aua_simulator.incidents import Incidents
from aua_simulator.plant_story import PlantStory
from aua_simulator.register_images import ServedTick, SimulatedInstrument, TableSpan, TickImage, tick_image
from edge_agent.config import LoadedConfig
from edge_agent.profiles import Function

log = logging.getLogger(__name__)


_TABLE_OF_FUNCTION_CODE = {
    1: Function.COIL,
    5: Function.COIL,
    15: Function.COIL,
    2: Function.DISCRETE,
    3: Function.HOLDING,
    6: Function.HOLDING,
    16: Function.HOLDING,
    22: Function.HOLDING,
    23: Function.HOLDING,
    4: Function.INPUT,
}
_TABLE_ORDER = (Function.COIL, Function.DISCRETE, Function.HOLDING, Function.INPUT)


def _sim_table(span: TableSpan | None, function: Function) -> list[SimData]:
    """One block per table covering the profile's span; pymodbus needs a block even in unused tables."""
    if function.is_bit:
        if span is None:  # placeholder the action refuses
            return [SimData(0, values=[False] * 16, datatype=SimType.BITS)]
        return [SimData(span.first, values=[False] * (span.end - span.first), datatype=SimType.BITS)]
    if span is None:  # an invalid register: pymodbus answers "illegal address" itself
        return [SimData(0, datatype=SimType.INVALID)]
    return [SimData(span.first, count=span.end - span.first, values=0, datatype=SimType.REGISTERS, readonly=True)]


@functools.cache
def _absent_devices() -> SimDevice:
    """Device id 0 stands for every unit id not configured: answer like a Modbus TCP gateway whose target is
    silent (exception 0x0B) rather than pymodbus's default for an unknown id (an internal error, exception 4)."""

    async def absent(  # noqa: PLR0917 - pymodbus calls it with six positional arguments
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        return ExcCodes.GATEWAY_NO_RESPONSE

    every_bit = [SimData(0, values=[False] * 65536, datatype=SimType.BITS)]
    every_register = [SimData(0, count=65536, values=0, datatype=SimType.REGISTERS)]
    return SimDevice(
        id=0, simdata=(every_bit, every_bit, every_register, every_register), action=absent, use_bit_addressing=True
    )


@dataclass(frozen=True)
class Quirks:
    """How a real device may misbehave, for tests and benches: it answers late, or refuses some addresses."""

    delay_s: float = 0.0
    """seconds before every answer (a slow device; with delay > the agent's timeout, a timing-out one)"""
    refuse: frozenset[int] = frozenset()
    """register addresses (holding and input) whose reads the device refuses with illegal data address"""


class _Playing:
    """Runtime of one instrument: the image of the current tick and the bounded record of past ones."""

    def __init__(self, instrument: SimulatedInstrument, history_ticks: int) -> None:
        self.instrument = instrument
        self.image: TickImage | None = None
        self.tick_index: int | None = None
        self.history: deque[ServedTick] = deque(maxlen=history_ticks)


class Simulator:
    """Modbus TCP servers playing instruments; values change once per tick, reproducibly for a seed.

    `instruments_by_port` maps a TCP port to the instruments behind it (distinct device ids). `port_map` moves
    ports elsewhere, 0 meaning any free port ({5020: 0} in tests); `ports` tells where each one listens after
    start(). `clock` gives epoch seconds and may be replaced for tests.
    """

    def __init__(
        self,
        instruments_by_port: Mapping[int, Sequence[SimulatedInstrument]],
        *,
        host: str = "127.0.0.1",
        seed: int = 0,
        tick: float = 1.0,
        incidents: Incidents | None = None,
        clock: Callable[[], float] = time.time,
        history_ticks: int = 3600,
        port_map: Mapping[int, int] | None = None,
        quirks: Mapping[str, Quirks] | None = None,
        rtu: bool = False,
        story: PlantStory | None = None,
    ) -> None:
        """`quirks` makes instruments misbehave; `rtu` frames every port's traffic as Modbus RTU (CRC, no MBAP
        header), as a serial device server in transparent mode does (a device that never answers: RtuLine);
        `story` plays a plant story on the stack's instruments (None: the boiler always runs)."""
        if tick <= 0:
            raise ValueError(f"tick must be positive, got {tick}")
        if history_ticks < 1:
            raise ValueError(f"history_ticks must be at least 1, got {history_ticks}")
        self.host = host
        self.seed = seed
        self.tick = tick
        self.incidents = incidents if incidents is not None else Incidents()
        self.clock = clock
        self._listen_on = dict(port_map or {})
        self.quirks = dict(quirks or {})
        self.rtu = rtu
        self.story = story
        self._by_port: dict[int, list[_Playing]] = {}
        self._playing: dict[str, _Playing] = {}
        for port, instruments in instruments_by_port.items():
            if not 0 <= port <= 65535:
                raise ValueError(f"port {port} is not within 0 ... 65535")
            device_ids = [instrument.device_id for instrument in instruments]
            clashes = sorted({d for d in device_ids if device_ids.count(d) > 1})
            if clashes:
                raise ValueError(f"port {port}: more than one instrument with device id {clashes}")
            for instrument in instruments:
                if instrument.id in self._playing:
                    raise ValueError(f"instrument id {instrument.id!r} appears more than once")
                self._playing[instrument.id] = _Playing(instrument, history_ticks)
            self._by_port[port] = [self._playing[instrument.id] for instrument in instruments]
        self._servers: dict[int, ModbusTcpServer] = {}
        self._bound: dict[int, int] = {}

    # ---- lifecycle ----

    async def start(self) -> None:
        """Listen on every port; raises (after closing what it opened) if one cannot be bound."""
        if self._servers:
            raise RuntimeError("simulator already started")
        try:
            for port, playing in self._by_port.items():
                devices = [self._device(p) for p in playing]
                if all(p.instrument.device_id != 0 for p in playing):
                    devices.append(_absent_devices())
                listen_on = self._listen_on.get(port, port)
                if self.rtu:
                    server = ModbusTcpServer(devices, address=(self.host, listen_on), framer=FramerType.RTU)
                else:
                    server = ModbusTcpServer(devices, address=(self.host, listen_on))
                try:
                    await server.serve_forever(background=True)
                except RuntimeError as error:
                    raise OSError(f"simulator cannot listen on {self.host}:{listen_on}: {error}") from None
                self._servers[port] = server
                self._bound[port] = _listening_port(server)
                log.info(
                    "simulating %s on %s:%d",
                    ", ".join(f"{p.instrument.id} (device {p.instrument.device_id})" for p in playing),
                    self.host,
                    self._bound[port],
                )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every server and its client connections. Safe to call twice."""
        servers, self._servers = self._servers, {}
        for server in servers.values():
            await server.shutdown()  # type: ignore[no-untyped-call]
        self._bound = {}
        await asyncio.sleep(0)  # let the closed transports run their callbacks

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def ports(self) -> dict[int, int]:
        """Configured port -> the port actually listened on (differs when moved by port_map). Empty until start()."""
        return dict(self._bound)

    @property
    def instruments(self) -> list[SimulatedInstrument]:
        return [playing.instrument for playing in self._playing.values()]

    def endpoint(self, instrument_id: str) -> tuple[str, int, int]:
        """(host, listening port, device id) of an instrument, once started."""
        instrument = self._playing[instrument_id].instrument
        for port, playing in self._by_port.items():
            if any(p.instrument is instrument for p in playing):
                return self.host, self._bound[port], instrument.device_id
        raise KeyError(instrument_id)  # pragma: no cover - every instrument is behind a port

    # ---- what is served ----

    def tick_index_now(self) -> int:
        return math.floor(self.clock() / self.tick)

    def image_now(self, instrument_id: str) -> TickImage:
        """The instrument's registers for the current tick, recording them the first time the tick is served."""
        playing = self._playing[instrument_id]
        index = self.tick_index_now()
        if playing.image is None or playing.tick_index != index:
            playing.image = tick_image(
                playing.instrument, index, seed=self.seed, tick=self.tick, incidents=self.incidents, story=self.story
            )
            playing.tick_index = index
            playing.history.append(playing.image.served)
        return playing.image

    def served(self, instrument_id: str) -> list[ServedTick]:
        """Ticks the instrument served, oldest first (the last `history_ticks` of them)."""
        return list(self._playing[instrument_id].history)

    def served_values(self, instrument_id: str, tag: str) -> list[float]:
        """A tag's values as the agent decodes them, one per served tick, oldest first."""
        return [tick.values[tag] for tick in self._playing[instrument_id].history]

    def served_status(self, instrument_id: str, block: str) -> list[int]:
        """A status block's words (bit i = status bit i), one per served tick, oldest first."""
        return [tick.status[block] for tick in self._playing[instrument_id].history]

    # ---- pymodbus glue ----

    def _device(self, playing: _Playing) -> SimDevice:
        instrument = playing.instrument
        tables = [_sim_table(instrument.tables.get(function), function) for function in _TABLE_ORDER]
        return SimDevice(
            id=instrument.device_id,
            simdata=(tables[0], tables[1], tables[2], tables[3]),
            action=self._action(instrument.id),
            use_bit_addressing=True,
        )

    def _action(self, instrument_id: str) -> SimAction:
        tables = self._playing[instrument_id].instrument.tables
        quirks = self.quirks.get(instrument_id, Quirks())

        async def answer(  # noqa: PLR0917 - pymodbus calls it with six positional arguments
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            """Refuse writes and reads outside the profile; otherwise put the current tick's words in place."""
            function = _TABLE_OF_FUNCTION_CODE.get(function_code)
            span = tables.get(function) if function is not None else None
            if span is None or set_values is not None or not span.first <= address < span.end:
                return ExcCodes.ILLEGAL_ADDRESS
            if not span.function.is_bit and address + count > span.end:
                return ExcCodes.ILLEGAL_ADDRESS
            if quirks.delay_s:
                await asyncio.sleep(quirks.delay_s)
            refused = quirks.refuse and quirks.refuse.intersection(range(address, address + count))
            if refused and not span.function.is_bit:
                return ExcCodes.ILLEGAL_ADDRESS
            words = self.image_now(instrument_id).words[span.function]
            registers[: len(words)] = words
            return None

        return answer


def _listening_port(server: ModbusTcpServer) -> int:
    """The port the server's listening socket got (differs from the configured one for port 0)."""
    sockets = getattr(server.transport, "sockets", None) or ()
    for sock in sockets:
        return int(sock.getsockname()[1])
    raise RuntimeError("pymodbus server has no listening socket")


def simulator_for_config(
    configs: LoadedConfig | Iterable[LoadedConfig],
    *,
    host: str = "127.0.0.1",
    port_map: Mapping[int, int] | None = None,
    seed: int = 0,
    tick: float = 1.0,
    incidents: Incidents | None = None,
    demo: bool = False,
    clock: Callable[[], float] = time.time,
    history_ticks: int = 3600,
    quirks: Mapping[str, Quirks] | None = None,
    rtu: bool = False,
    story: PlantStory | None = None,
) -> Simulator:
    """A simulator playing every instrument of one or more agent site configs, each at its port and device id.

    `port_map` moves configured ports elsewhere (0 = a free port), e.g. {5020: 0} in tests; the scenario of
    each instrument is picked from its profile's tag names and units. `demo` stands for
    `incidents=Incidents.demo(clock())`: frequent incidents and a mercury episode 20 s from now.
    """
    if demo and incidents is not None:
        raise ValueError("give demo=True or incidents, not both")
    if demo:
        incidents = Incidents.demo(clock())
    loaded = [configs] if isinstance(configs, LoadedConfig) else list(configs)
    by_port: dict[int, list[SimulatedInstrument]] = {}
    for config in loaded:
        for instrument in config.instruments:
            by_port.setdefault(instrument.config.port, []).append(
                SimulatedInstrument(instrument.id, instrument.profile, instrument.config.device_id)
            )
    return Simulator(
        by_port,
        host=host,
        seed=seed,
        tick=tick,
        incidents=incidents,
        clock=clock,
        history_ticks=history_ticks,
        port_map=port_map,
        quirks=quirks,
        rtu=rtu,
        story=story,
    )
