"""Readings as the agent holds them between the poll and the outbox, and the batch payload they are sealed into.

A `Sample` has the fields of `aua_contract.Reading` but is a plain tuple: the agent makes thousands a second and
every one of them is built from validated parts (identifiers and units from the validated config and profiles,
values checked finite when decoded, UTC times from the clock), so the model's validation would only cost time.
`batch_payload` gives the very bytes `aua_contract.encode_batch` gives for the same batch (a property test holds
it to that), through the same serializer (pydantic-core), without building a model per reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

from pydantic_core import to_json

from aua_contract import SCHEMA_VERSION, Quality, Reading


class Sample(NamedTuple):
    instrument: str
    parameter: str
    value: float | None
    unit: str
    ts: datetime
    quality: Quality
    status: int | None

    def to_reading(self) -> Reading:
        """The validated contract model (slow; for tests and tools, not the poll path)."""
        return Reading(
            instrument=self.instrument,
            parameter=self.parameter,
            value=self.value,
            unit=self.unit,
            ts=self.ts,
            quality=self.quality,
            status=self.status,
        )


class ReadingLike(Protocol):
    @property
    def instrument(self) -> str: ...
    @property
    def parameter(self) -> str: ...
    @property
    def value(self) -> float | None: ...
    @property
    def unit(self) -> str: ...
    @property
    def ts(self) -> datetime: ...
    @property
    def quality(self) -> Quality: ...
    @property
    def status(self) -> int | None: ...


_QUALITY_TEXT = {quality: quality.value for quality in Quality}
"""Each quality's wire text: a dict lookup instead of the enum's `.value` property, per reading."""


def _reading(sample: ReadingLike) -> dict[str, object]:
    """One reading as encode_batch writes it: the model's field order, None fields left out."""
    item: dict[str, object] = {"instrument": sample.instrument, "parameter": sample.parameter}
    if sample.value is not None:
        item["value"] = sample.value
    item["unit"] = sample.unit
    item["ts"] = sample.ts
    item["quality"] = _QUALITY_TEXT[sample.quality]
    if sample.status is not None:
        item["status"] = sample.status
    return item


def batch_payload(site: str, agent: str, seq: int, sent_at: datetime, readings: Sequence[ReadingLike]) -> bytes:
    """The payload of batch `seq`: byte for byte `encode_batch(Batch(...))` of the same readings."""
    return to_json(
        {
            "v": SCHEMA_VERSION,
            "site": site,
            "agent": agent,
            "seq": seq,
            "sent_at": sent_at,
            "readings": [_reading(r) for r in readings],
        }
    )


def readings_fragment(readings: Sequence[ReadingLike]) -> bytes:
    """Readings as the JSON array a batch holds them in: what the agent stages as soon as an instrument is read,
    and later splices into batches without encoding them again (`batch_from_fragments`)."""
    return to_json([_reading(r) for r in readings])


def batch_from_fragments(site: str, agent: str, seq: int, sent_at: datetime, fragments: Sequence[bytes]) -> bytes:
    """The payload of batch `seq` holding the readings of `fragments` in order: byte for byte `batch_payload` of
    the same readings (compact JSON: an array is its items joined by commas)."""
    head = batch_payload(site, agent, seq, sent_at, ())
    items = b",".join(fragment[1:-1] for fragment in fragments if len(fragment) > 2)
    return head[:-2] + items + head[-2:]


def fragments_of(readings: Sequence[ReadingLike], max_readings: int) -> list[tuple[int, bytes]]:
    """One instrument's readings as fragments of at most `max_readings` each, with their counts."""
    return [
        (len(readings[start : start + max_readings]), readings_fragment(readings[start : start + max_readings]))
        for start in range(0, len(readings), max_readings)
    ]


def pack(fragments: Sequence[tuple[int, bytes]], max_readings: int) -> list[list[bytes]]:
    """Fragments (count, bytes) in order, grouped into batches of at most `max_readings` readings each (a fragment
    is never split: fragments_of keeps each within the bound). Pure."""
    batches: list[list[bytes]] = []
    current: list[bytes] = []
    held = 0
    for count, fragment in fragments:
        if current and held + count > max_readings:
            batches.append(current)
            current, held = [], 0
        current.append(fragment)
        held += count
    if current:
        batches.append(current)
    return batches
