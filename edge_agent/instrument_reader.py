"""Reads one instrument: executes the plan through a driver and turns the answers into readings.

The decoding from raw words to values and quality is pure (`readings_from_answers`); the driver does the I/O.
An illegal-address refusal of a merged request is narrowed down by halving the request (planner.halves) until
the refused tag or hole is found; the tag is isolated (quality failure, no value, reported once in the log)
and the next plan reads around it, so every other tag keeps flowing.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aua_contract import MAX_ABS_VALUE, Quality, Reading
from aua_ops import spoken_duration
from edge_agent.config import Instrument
from edge_agent.decoding import Scaling, struct_layout
from edge_agent.driver import Answer, DeviceException, DeviceTimeout, DriverError, InstrumentDriver, LinkDown
from edge_agent.planner import (
    Forbidden,
    ReadRequest,
    Span,
    forbidden_span,
    halves,
    hole_between,
    plan,
    spans_of,
)
from edge_agent.profiles import Profile
from edge_agent.quality import quality_from_bits, status_word
from edge_agent.sealing import Sample

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""What stamps readings: the wall clock in production, simulated time in a replay."""


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class ReadStats:
    polls: int = 0
    requests: int = 0
    failed_requests: int = 0
    """every request that gave no answer, each refused request of narrowing a block down included"""
    errors: dict[str, int] = field(default_factory=dict)
    """failed requests by kind: timeout, skipped, link_down, exception, bad_frame"""
    latency_sum_s: float = 0.0
    last_latency_s: float = 0.0
    last_error: str | None = None
    isolated: list[str] = field(default_factory=list)
    """tags the device refuses (illegal address): read no more, reported as failure"""
    unreachable_since: float | None = None
    """monotonic time of the first poll that got no answer at all (None: the device answers)"""
    unreachable_polls: int = 0
    """polls without any answer since then"""
    losses: int = 0
    """times the device stopped answering (each logged once at WARNING)"""
    late_polls: int = 0
    """polls not finished by their cycle's deadline: sealed with a later cycle, stamped when they came"""
    busy_skips: int = 0
    """ticks this instrument was not polled at because its earlier poll was still running"""


def unreachable(outcomes: list[DriverError | None]) -> bool | None:
    """Whether one poll's request outcomes (None: answered) say the device is out of reach: True if nothing
    answered and something timed out or found no connection; False if anything answered (a Modbus exception is
    an answer: the device is there); None if the poll tells neither (no request, only garbled frames). Pure."""
    if any(outcome is None or isinstance(outcome, DeviceException) for outcome in outcomes):
        return False
    if any(isinstance(outcome, LinkDown | DeviceTimeout) for outcome in outcomes):
        return True
    return None


def words_by_span(answers: Mapping[ReadRequest, Answer | None]) -> dict[str, Answer]:
    """Each span's own registers/bits out of the answers that came (failed requests give none)."""
    words: dict[str, Answer] = {}
    for request, answer in answers.items():
        if answer is None:
            continue
        for span in request.spans:
            words[span.name] = answer[request.slice_for(span)]
    return words


@dataclass(frozen=True, slots=True)
class TagCodec:
    """What decoding one tag needs, worked out once per profile instead of once per reading."""

    name: str
    is_bit: bool
    little_words: bool
    """pack the request's words little-endian before unpacking (byte orders CDAB, BADC)"""
    layout: str
    """struct format of the value (decoding.struct_layout)"""
    scaling: Scaling | None
    """exact raw × scale + offset (decoding.Scaling); None when the tag is not scaled"""
    unit: str
    status: str | None


def compile_profile(profile: Profile) -> tuple[TagCodec, ...]:
    codecs = []
    for tag in profile.tag:
        little, layout = (False, "") if tag.function.is_bit else struct_layout(tag.type, profile.byte_order_of(tag))
        scaling = Scaling.of(tag.scale, tag.offset)
        codecs.append(
            TagCodec(
                tag.name,
                tag.function.is_bit,
                little,
                layout,
                None if scaling.is_identity else scaling,
                tag.unit,
                tag.status,
            )
        )
    return tuple(codecs)


def _decode_answer(
    request: ReadRequest, answer: Answer, codecs: Mapping[str, TagCodec], values: dict[str, float | None]
) -> None:
    """The values of the tags one answer holds; a value that is not a number (NaN, infinity) is None."""
    if request.function.is_bit:
        for span in request.spans:
            codec = codecs.get(span.name)
            if codec is not None:
                values[span.name] = 1.0 if answer[span.address - request.address] else 0.0
        return
    words: list[int] = answer  # type: ignore[assignment]
    big = little = b""
    for span in request.spans:
        codec = codecs.get(span.name)
        if codec is None:
            continue  # a status block
        try:
            if codec.little_words:
                little = little or struct.pack(f"<{len(words)}H", *words)
                (raw,) = struct.unpack_from(codec.layout, little, 2 * (span.address - request.address))
            else:
                big = big or struct.pack(f">{len(words)}H", *words)
                (raw,) = struct.unpack_from(codec.layout, big, 2 * (span.address - request.address))
        except struct.error:
            values[span.name] = None
            continue
        if codec.scaling is None:
            value = float(raw)
        else:
            try:
                value = codec.scaling.apply(raw)
            except (OverflowError, ValueError):  # NaN, infinity, or scaled past the float range
                values[span.name] = None
                continue
        # NaN, infinity and magnitudes past the contract's bound (a float32 register left at 3.4e38) are no reading.
        values[span.name] = value if -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE else None


def readings_from_answers(
    instrument: Instrument,
    answers: Mapping[ReadRequest, Answer | None],
    ts: datetime,
    stamps: Mapping[ReadRequest, datetime] | None = None,
    codecs: tuple[TagCodec, ...] | None = None,
) -> list[Reading]:
    """samples_from_answers as validated contract models."""
    return [sample.to_reading() for sample in samples_from_answers(instrument, answers, ts, stamps, codecs)]


_OK, _FAILURE = Quality.OK, Quality.FAILURE
"""Looked up once: an enum member's attribute access costs a few hundred ns, thousands of times a cycle."""


def samples_from_answers(
    instrument: Instrument,
    answers: Mapping[ReadRequest, Answer | None],
    ts: datetime,
    stamps: Mapping[ReadRequest, datetime] | None = None,
    codecs: tuple[TagCodec, ...] | None = None,
    *,
    by_name: Mapping[str, TagCodec] | None = None,
) -> list[Sample]:
    """Turn the answers to a plan (None = that request failed) into one reading per tag. Pure.

    A tag's time is the `stamps` entry of the request that read it (when its answer came), else `ts`.
    A tag whose request failed, or whose registers are no number (NaN), has no value and quality failure.
    `codecs` (compile_profile of the instrument's profile) and `by_name` (the same by tag name) save working them
    out on every call.
    """
    profile = instrument.profile
    codecs = codecs if codecs is not None else compile_profile(profile)
    if by_name is None:
        by_name = {codec.name: codec for codec in codecs}
    values: dict[str, float | None] = {}
    times: dict[str, datetime] = {}
    blocks: dict[str, Answer] = {}
    for request, answer in answers.items():
        if answer is None:
            continue
        _decode_answer(request, answer, by_name, values)
        stamp = stamps.get(request, ts) if stamps else ts
        for span in request.spans:
            times[span.name] = stamp
            if span.name not in by_name:
                blocks[span.name] = answer[request.slice_for(span)]
    block_quality: dict[str, tuple[Quality, int] | None] = {}
    for block in profile.status:
        raw = blocks.get(block.name)
        if raw is None:
            block_quality[block.name] = None
            continue
        if block.function.is_bit:
            bits = [bool(bit) for bit in raw][: block.count]
        else:
            bits = [bool(int(word) >> i & 1) for word in raw for i in range(16)][: block.count]
        block_quality[block.name] = (quality_from_bits(block, bits), status_word(bits))
    readings = []
    instrument_id = instrument.id
    for codec in codecs:
        value = values.get(codec.name)
        quality = _OK if value is not None else _FAILURE
        status: int | None = None
        if codec.name in values and value is None:
            log.warning(
                "%s.%s: the registers decode to no measurement (NaN, infinity or beyond ±%g)",
                instrument_id,
                codec.name,
                MAX_ABS_VALUE,
            )
        if codec.status is not None and value is not None:
            from_block = block_quality[codec.status]
            if from_block is None:
                # The value was read but its status was not: usable, but flagged as unconfirmed.
                quality = Quality.OUT_OF_SPECIFICATION
            else:
                quality, status = from_block
        readings.append(
            Sample(instrument_id, codec.name, value, codec.unit, times.get(codec.name, ts), quality, status)
        )
    return readings


class ModbusReader:
    """One Modbus instrument: its driver, its read plan (re-planned around refused addresses) and counters."""

    def __init__(
        self, instrument: Instrument, driver: InstrumentDriver | None = None, *, clock: Clock = wall_clock
    ) -> None:
        """`clock` stamps the readings: the wall clock, or a replay's simulated time (aua_demo.replay)."""
        if driver is None:
            from edge_agent.modbus_drivers import ModbusTcpDriver  # noqa: PLC0415 - only for the TCP-only default

            section = instrument.config
            driver = ModbusTcpDriver(section.host, section.port, section.device_id, section.timeout)
        self.instrument = instrument
        self.driver = driver
        self.clock = clock
        self.stats = ReadStats()
        self.spans = spans_of(instrument.profile)
        self.forbidden: tuple[Forbidden, ...] = ()
        self.refused: set[str] = set()
        self.requests = plan(self.spans, max_gap=instrument.config.max_gap)
        self.codecs = compile_profile(instrument.profile)
        self.codecs_by_name = {codec.name: codec for codec in self.codecs}
        self._outcomes: list[DriverError | None] = []

    def _replan(self) -> None:
        spans = [span for span in self.spans if span.name not in self.refused]
        self.requests = plan(spans, max_gap=self.instrument.config.max_gap, forbidden=self.forbidden)

    def _failed(self, request: ReadRequest, error: DriverError) -> None:
        self.stats.failed_requests += 1
        self.stats.errors[error.kind] = self.stats.errors.get(error.kind, 0) + 1
        self.stats.last_error = str(error)
        log.debug("%s: %s", self.instrument.id, error)

    def _isolate(self, span: Span) -> None:
        self.refused.add(span.name)
        self.forbidden += (forbidden_span(span),)
        self.stats.isolated.append(span.name)
        log.warning(
            "%s: the device refuses %s (FC%02d %d+%d, illegal data address): it is reported as failure from now on"
            " and the other tags are read around it; check the profile against the device's manual",
            self.instrument.id,
            span.name,
            span.function.code,
            span.address,
            span.count,
        )

    async def _execute(
        self, request: ReadRequest, answers: dict[ReadRequest, Answer | None], stamps: dict[ReadRequest, datetime]
    ) -> bool:
        """Read one request into `answers`; on an illegal-address refusal narrow it down. True if it learned."""
        self.stats.requests += 1
        try:
            answers[request] = await self.driver.read(request)
            stamps[request] = self.clock()
            self._outcomes.append(None)
        except DeviceException as error:
            self._outcomes.append(error)
            # Every refused request counts, also the merged ones narrowed down below: the metrics show what the
            # device was asked and refused, not how many tags ended up isolated.
            self._failed(request, error)
            if not error.illegal_address:
                answers[request] = None
                return False
            split = halves(request)
            if split is None:
                answers[request] = None
                self._isolate(request.spans[0])
                return True
            left, right = split
            await self._execute(left, answers, stamps)
            await self._execute(right, answers, stamps)
            if answers.get(left) is not None and answers.get(right) is not None:
                hole = hole_between(left, right)
                if hole is not None:
                    self.forbidden += (hole,)
                    log.warning(
                        "%s: the device refuses the unused registers FC%02d %d..%d between %s and %s; reading around"
                        " them (max_gap 0 avoids reading unused registers at all)",
                        self.instrument.id,
                        hole.function.code,
                        hole.address,
                        hole.end - 1,
                        left.spans[-1].name,
                        right.spans[0].name,
                    )
            return True
        except DriverError as error:
            self._outcomes.append(error)
            answers[request] = None
            self._failed(request, error)
        return False

    def _note_reachability(self, now: float) -> None:
        """Log when the device stops answering (WARNING, with the error) and when it is back (INFO, with how
        long it was away): once per change, never once per poll while it stays away."""
        outcomes, self._outcomes = self._outcomes, []
        down = unreachable(outcomes)
        stats = self.stats
        if down is None:
            return
        if down:
            stats.unreachable_polls += 1
            if stats.unreachable_since is None:
                stats.unreachable_since = now
                stats.losses += 1
                log.warning(
                    "%s at %s: the device does not answer (%s); its tags are failures until it does. Logged once:"
                    " its return is logged too",
                    self.instrument.id,
                    self.driver.endpoint,
                    next(outcome for outcome in reversed(outcomes) if outcome is not None),
                )
            return
        if stats.unreachable_since is not None:
            log.info(
                "%s at %s: the device answers again after %s away (%d polls without an answer)",
                self.instrument.id,
                self.driver.endpoint,
                spoken_duration(now - stats.unreachable_since),
                stats.unreachable_polls,
            )
            stats.unreachable_since = None
            stats.unreachable_polls = 0

    async def read_plan(self) -> tuple[dict[ReadRequest, Answer | None], dict[ReadRequest, datetime]]:
        """Every request of the plan once: the answers (None where failed) and when each came."""
        started = time.monotonic()
        self.stats.polls += 1
        answers: dict[ReadRequest, Answer | None] = {}
        stamps: dict[ReadRequest, datetime] = {}
        self._outcomes = []
        learned = False
        for request in self.requests:
            learned |= await self._execute(request, answers, stamps)
        if learned:
            self._replan()
        self._note_reachability(started)
        latency = time.monotonic() - started
        self.stats.last_latency_s = latency
        self.stats.latency_sum_s += latency
        return answers, stamps

    async def poll(self) -> list[Sample]:
        """Read every request of the plan once; a failed request fails only its own tags (no value, failure)."""
        answers, stamps = await self.read_plan()
        return samples_from_answers(
            self.instrument, answers, self.clock(), stamps, self.codecs, by_name=self.codecs_by_name
        )

    async def close(self) -> None:
        await self.driver.close()
