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


def _reading(sample: ReadingLike) -> dict[str, object]:
    """One reading as encode_batch writes it: the model's field order, None fields left out."""
    item: dict[str, object] = {"instrument": sample.instrument, "parameter": sample.parameter}
    if sample.value is not None:
        item["value"] = sample.value
    item["unit"] = sample.unit
    item["ts"] = sample.ts
    item["quality"] = sample.quality.value
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
