"""Message models: one MQTT message carries a batch of readings from one agent.

A reading's identity is (site, agent, instrument, parameter, ts); a batch's is (agent, seq).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

SCHEMA_VERSION: Final = 1
"""The version every message carries in its `v` field; a receiver rejects versions it does not know."""

IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Site, agent, instrument and parameter names: safe in MQTT topics, InfluxDB tags and file names."""

MAX_READINGS_PER_BATCH = 10_000


class Quality(StrEnum):
    """Per-value quality: NAMUR NE107 status plus gateway-side checks (cems-mrv.md §3)."""

    OK = "ok"
    CHECK_FUNCTION = "check_function"
    OUT_OF_SPECIFICATION = "out_of_specification"
    FAILURE = "failure"
    MAINTENANCE_REQUIRED = "maintenance_required"
    OUT_OF_RANGE = "out_of_range"
    STUCK = "stuck"
    SPIKE = "spike"
    STALE = "stale"
    SUBSTITUTED = "substituted"

    @property
    def usable(self) -> bool:
        """Whether a sample with this flag may enter an average (check_function and failure may not)."""
        return self not in _EXCLUDED


_EXCLUDED = frozenset({Quality.CHECK_FUNCTION, Quality.FAILURE, Quality.OUT_OF_RANGE})


def _utc(value: datetime) -> datetime:
    """Aware times only, normalised to the `datetime.UTC` object (later `is UTC` checks are then free)."""
    zone = value.tzinfo
    if zone is UTC:
        return value
    offset = None if zone is None else zone.utcoffset(value)
    if offset is None:
        raise ValueError("timestamp must carry a time zone (UTC expected), got a naive time")
    if not offset:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"timestamp {value.isoformat()} is outside the range of UTC dates") from None


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""NaN and infinity are not measurements; checked inside pydantic-core, not by a Python validator per value."""
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
"""What SQLite and InfluxDB integers hold."""


class Reading(BaseModel):
    """One sampled value of one parameter of one instrument, with its quality.

    Every check here runs inside pydantic-core: a gateway validates ~100,000 readings a second, and one
    Python validator per reading doubled the decoding time (measured). So `ts` is only required to be aware;
    a Batch brings its readings' times to UTC once per batch.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    instrument: Identifier
    parameter: Identifier
    value: FiniteFloat | None = Field(default=None, description="engineering value; None (omitted) if the read failed")
    unit: Annotated[str, Field(max_length=32)]
    ts: AwareDatetime = Field(description="sample time, UTC (any offset is accepted; a Batch converts it)")
    quality: Quality = Quality.OK
    status: Int64 | None = Field(default=None, description="raw status word(s) the quality came from")


class Batch(BaseModel):
    """One MQTT message: readings from one agent, numbered by a per-agent sequence that survives restarts."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = SCHEMA_VERSION
    site: Identifier
    agent: Identifier
    seq: Annotated[int, Field(ge=0)]
    sent_at: UtcDatetime
    readings: Annotated[list[Reading], Field(max_length=MAX_READINGS_PER_BATCH)]

    @field_validator("readings")
    @classmethod
    def _times_in_utc(cls, readings: list[Reading]) -> list[Reading]:
        """Sample times at a non-zero UTC offset become UTC (rare: agents send UTC); one pass per batch."""
        if not any(reading.ts.utcoffset() for reading in readings):
            return readings
        converted = []
        for index, reading in enumerate(readings):
            if not reading.ts.utcoffset():
                converted.append(reading)
                continue
            try:
                converted.append(reading.model_copy(update={"ts": _utc(reading.ts)}))
            except ValueError as error:
                raise ValueError(f"readings.{index}.ts: {error}") from None
        return converted


class AgentState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class AgentStatus(BaseModel):
    """The retained birth/last-will message on an agent's status topic."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = SCHEMA_VERSION
    site: Identifier
    agent: Identifier
    state: AgentState
    at: UtcDatetime | None = None
    version: str | None = None
    next_seq: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="the sequence number the agent's next batch will get"
    )
    oldest_seq: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="the oldest batch still in the agent's outbox; older ones cannot be resent"
    )
    dropped: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="batches the agent's full outbox dropped unsent, since it was created"
    )


MAX_RESEND_SPAN = 100_000


class ResendRequest(BaseModel):
    """The gateway asks an agent to publish batches first..last again from its outbox (gap repair)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = SCHEMA_VERSION
    site: Identifier
    agent: Identifier
    first: Annotated[int, Field(ge=0)]
    last: Annotated[int, Field(ge=0)]
    requested_by: Identifier
    at: UtcDatetime | None = None

    @field_validator("last")
    @classmethod
    def _ordered(cls, last: int, info: ValidationInfo) -> int:
        first = info.data.get("first")
        if first is not None and not first <= last < first + MAX_RESEND_SPAN:
            raise ValueError(f"must be >= first ({first}) and span at most {MAX_RESEND_SPAN} batches")
        return last
