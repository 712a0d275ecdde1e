"""Reads one instrument: executes the plan over a Modbus client and turns the answers into readings.

The decoding from raw words to values and quality is pure (`readings_from_answers`); only `ModbusReader`
touches the network.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from aua_contract import Quality, Reading
from edge_agent.config import Instrument
from edge_agent.decoding import DecodeError, decode_registers, scale_value
from edge_agent.planner import ReadRequest, plan, spans_of
from edge_agent.profiles import Function
from edge_agent.quality import quality_from_bits, status_word

log = logging.getLogger(__name__)

Answer = list[int] | list[bool]


@dataclass
class ReadStats:
    polls: int = 0
    failed_requests: int = 0
    last_latency_s: float = 0.0
    last_error: str | None = None


def readings_from_answers(
    instrument: Instrument, answers: dict[ReadRequest, Answer | None], ts: datetime
) -> list[Reading]:
    """Turn the answers to a plan (None = that request failed) into one reading per tag. Pure."""
    words: dict[str, Answer] = {}
    for request, answer in answers.items():
        if answer is None:
            continue
        for span in request.spans:
            words[span.name] = answer[request.slice_for(span)]
    profile = instrument.profile
    block_quality: dict[str, tuple[Quality, int] | None] = {}
    for block in profile.status:
        raw = words.get(block.name)
        if raw is None:
            block_quality[block.name] = None
            continue
        if block.function.is_bit:
            bits = [bool(bit) for bit in raw][: block.count]
        else:
            bits = [bool(int(word) >> i & 1) for word in raw for i in range(16)][: block.count]
        block_quality[block.name] = (quality_from_bits(block, bits), status_word(bits))
    readings = []
    for tag in profile.tag:
        value: float | None = None
        quality = Quality.OK
        status: int | None = None
        raw = words.get(tag.name)
        if raw is None:
            quality = Quality.FAILURE
        else:
            try:
                if tag.function.is_bit:
                    value = float(bool(raw[0]))
                else:
                    value = scale_value(
                        decode_registers([int(w) for w in raw], tag.type, profile.byte_order_of(tag)),
                        tag.scale,
                        tag.offset,
                    )
            except DecodeError as error:
                log.warning("%s.%s: %s", instrument.id, tag.name, error)
                quality = Quality.FAILURE
        if tag.status is not None and value is not None:
            from_block = block_quality[tag.status]
            if from_block is None:
                # The value was read but its status was not: usable, but flagged as unconfirmed.
                quality = Quality.OUT_OF_SPECIFICATION
            else:
                quality, status = from_block
        readings.append(
            Reading(
                instrument=instrument.id,
                parameter=tag.name,
                value=value,
                unit=tag.unit,
                ts=ts,
                quality=quality,
                status=status,
            )
        )
    return readings


@dataclass
class ModbusReader:
    """One Modbus TCP instrument: a client, its read plan, and its counters."""

    instrument: Instrument
    stats: ReadStats = field(default_factory=ReadStats)

    def __post_init__(self) -> None:
        section = self.instrument.config
        self.requests = plan(spans_of(self.instrument.profile), max_gap=section.max_gap)
        self.client = AsyncModbusTcpClient(section.host, port=section.port, timeout=section.timeout, retries=0)

    async def _read(self, request: ReadRequest) -> Answer:
        device_id = self.instrument.config.device_id
        call = {
            Function.COIL: self.client.read_coils,
            Function.DISCRETE: self.client.read_discrete_inputs,
            Function.HOLDING: self.client.read_holding_registers,
            Function.INPUT: self.client.read_input_registers,
        }[request.function]
        response = await call(request.address, count=request.count, device_id=device_id)
        if response.isError():
            raise ModbusException(f"exception response {response}")
        if request.function.is_bit:
            return list(response.bits[: request.count])
        return list(response.registers)

    def _failed(self, request: ReadRequest, why: str) -> None:
        self.stats.failed_requests += 1
        self.stats.last_error = f"{request.function} {request.address}+{request.count}: {why}"
        log.warning("%s: %s", self.instrument.id, self.stats.last_error)

    async def poll(self) -> list[Reading]:
        """Read every request of the plan once; a failed request fails only its own tags."""
        started = time.monotonic()
        self.stats.polls += 1
        answers: dict[ReadRequest, Answer | None] = {}
        if not self.client.connected:
            await self.client.connect()
        for request in self.requests:
            answers[request] = None
            try:
                if not self.client.connected:
                    self._failed(request, "not connected")
                    continue
                answers[request] = await self._read(request)
            except (ModbusException, OSError, TimeoutError) as error:
                self._failed(request, str(error))
        self.stats.last_latency_s = time.monotonic() - started
        return readings_from_answers(self.instrument, answers, datetime.now(UTC))

    def close(self) -> None:
        self.client.close()
