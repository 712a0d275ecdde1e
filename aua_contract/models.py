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

MAX_INT64: Final = 2**63 - 1
"""The largest integer SQLite and InfluxDB hold: every count and sequence number on the wire stays at or below it."""

EARLIEST_TIME: Final = datetime(1678, 1, 1, tzinfo=UTC)
LATEST_TIME: Final = datetime(2262, 1, 1, tzinfo=UTC)
"""Every time on the wire lies in [EARLIEST_TIME, LATEST_TIME]: inside what a signed 64-bit count of nanoseconds
since 1970 holds (1677-09-21T00:12:44Z .. 2262-04-11T23:47:16Z), the time type of InfluxDB and of the SQLite
store, with whole years of margin. A time outside it is a broken clock, refused where it is decoded."""

MAX_ABS_VALUE: Final = 1e15
"""The largest magnitude a reading's value may have. No instrument reading comes near it (a flow of 10^7 m³/h, an
energy counter of 10^12 Wh), and the sum of a year of one-second readings at this bound (3.2e22) is still far
from float overflow, so averages and totals over them stay finite."""

TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
"""Free text (units, versions): no control characters (NUL, CR, LF, tab, DEL, C1) and no Unicode line
separators, which break line protocol, log lines and CSV exports."""


class Quality(StrEnum):
    """Per-value quality: NAMUR NE107 status plus gateway-side checks (docs/regulatory-basis.md §3)."""

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


_TIME_RANGE: Final = f"{EARLIEST_TIME:%Y-%m-%d} .. {LATEST_TIME:%Y-%m-%d} UTC"


def _utc_in_range(value: datetime) -> datetime:
    value = _utc(value)
    if not EARLIEST_TIME <= value <= LATEST_TIME:
        raise ValueError(f"timestamp {value.isoformat()} is outside {_TIME_RANGE} (what the stores hold)")
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_utc_in_range)]
"""A batch's or message's own time (one per message, so checked in Python): any offset, brought to UTC, inside
the stores' range."""
SampleTime = Annotated[AwareDatetime, Field(ge=EARLIEST_TIME, le=LATEST_TIME)]
"""A reading's time: aware and inside the stores' range, both checked inside pydantic-core (per reading)."""
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
Value = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]
"""NaN and infinity are not measurements, nor is anything beyond MAX_ABS_VALUE; checked inside pydantic-core,
not by a Python validator per value."""
Int64 = Annotated[int, Field(ge=-(2**63), le=MAX_INT64)]
"""What SQLite and InfluxDB integers hold."""
Count = Annotated[int, Field(ge=0, le=MAX_INT64)]
"""Sequence numbers and counts: never negative, never beyond what the stores' integers hold."""
Unit = Annotated[str, Field(max_length=32, pattern=TEXT_PATTERN)]
Version = Annotated[str, Field(max_length=64, pattern=TEXT_PATTERN)]


class Reading(BaseModel):
    """One sampled value of one parameter of one instrument, with its quality.

    Every check here runs inside pydantic-core: a gateway validates ~100,000 readings a second, and one
    Python validator per reading doubled the decoding time (measured). So `ts` is only required to be aware;
    a Batch brings its readings' times to UTC once per batch.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    instrument: Identifier
    parameter: Identifier
    value: Value | None = Field(default=None, description="engineering value; None (omitted) if the read failed")
    unit: Unit
    ts: SampleTime = Field(description="sample time, UTC (any offset is accepted; a Batch converts it)")
    quality: Quality = Quality.OK
    status: Int64 | None = Field(default=None, description="raw status word(s) the quality came from")


class Batch(BaseModel):
    """One MQTT message: readings from one agent, numbered by a per-agent sequence that survives restarts."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = SCHEMA_VERSION
    site: Identifier
    agent: Identifier
    seq: Count
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
    version: Version | None = None
    next_seq: Count | None = Field(default=None, description="the sequence number the agent's next batch will get")
    oldest_seq: Count | None = Field(
        default=None, description="the oldest batch still in the agent's outbox; older ones cannot be resent"
    )
    dropped: Count | None = Field(
        default=None, description="batches the agent's full outbox dropped unsent, since it was created"
    )


MAX_RESEND_SPAN = 100_000


class ResendRequest(BaseModel):
    """The gateway asks an agent to publish batches first..last again from its outbox (gap repair)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = SCHEMA_VERSION
    site: Identifier
    agent: Identifier
    first: Count
    last: Count
    requested_by: Identifier
    at: UtcDatetime | None = None

    @field_validator("last")
    @classmethod
    def _ordered(cls, last: int, info: ValidationInfo) -> int:
        first = info.data.get("first")
        if first is not None and not first <= last < first + MAX_RESEND_SPAN:
            raise ValueError(f"must be >= first ({first}) and span at most {MAX_RESEND_SPAN} batches")
        return last
