"""What every store keeps and promises, independent of the database behind it."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from aua_contract import Batch, Quality, Reading
from gateway.errors import GatewayError
from gateway.mrv.rollup import Aggregate, Period


class StoreError(GatewayError):
    """A store operation failed; `retryable` says whether trying the same call again later can succeed.

    Retryable: the server is unreachable, timed out or answered 5xx/429. Not retryable: the server
    rejected the data or the request (4xx), so repeating it would fail the same way.
    """

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


Content = tuple[float | None, str, str, int | None]
"""What a reading says, as compared for write-once: (value, unit, quality as text, status)."""


@dataclass(frozen=True, slots=True)
class StoredReading:
    """One reading as stored: a contract Reading plus the site and agent it came from.

    Identity is (site, agent, instrument, parameter, ts); content is (value, unit, quality, status). A stored
    reading is write-once: the same content again is a no-op, other content becomes a `Revision` beside it.
    """

    site: str
    agent: str
    instrument: str
    parameter: str
    ts: datetime
    value: float | None
    unit: str
    quality: Quality
    status: int | None = None

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None or self.ts.utcoffset() is None:
            raise ValueError(f"ts must carry a time zone (UTC expected), got naive {self.ts.isoformat()}")
        if self.ts.tzinfo is not UTC:
            object.__setattr__(self, "ts", self.ts.astimezone(UTC))
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError(f"value must be finite, got {self.value!r}")
        if self.status is not None and not -(2**63) <= self.status < 2**63:
            raise ValueError(f"status {self.status} does not fit a signed 64-bit integer (SQLite, InfluxDB)")
        if not isinstance(self.quality, Quality):
            object.__setattr__(self, "quality", Quality(self.quality))

    @property
    def identity(self) -> tuple[str, str, str, str, datetime]:
        return (self.site, self.agent, self.instrument, self.parameter, self.ts)

    @property
    def content(self) -> Content:
        return (self.value, self.unit, self.quality.value, self.status)

    @classmethod
    def from_reading(cls, site: str, agent: str, reading: Reading) -> StoredReading:
        return cls(
            site=site,
            agent=agent,
            instrument=reading.instrument,
            parameter=reading.parameter,
            ts=reading.ts,
            value=reading.value,
            unit=reading.unit,
            quality=reading.quality,
            status=reading.status,
        )


class RevisionState(StrEnum):
    """Where a revision stands. Only an operator moves it (`cems-gateway revisions approve`)."""

    PENDING = "pending"
    """Received for a reading already stored, kept beside it; the stored original is what everything uses."""
    APPROVED = "approved"
    """An operator made it the stored value (who, why and when are recorded)."""
    SUPERSEDED = "superseded"
    """Was the stored value until an approved revision replaced it: the original, kept."""


@dataclass(frozen=True, slots=True)
class Revision:
    """Other content for an already stored reading identity, with where it came from.

    `batch_seq`/`batch_sent_at` name the batch that carried it (None when it was not written from a batch, or
    for a superseded original whose batch the store never knew); `received_at` is when the gateway stored it.
    `decided_*` record the operator decision that approved it (or, for a superseded value never approved
    itself, the approval that replaced it); `superseded_by` is the id of the revision that replaced it.
    """

    id: str
    reading: StoredReading
    state: RevisionState
    received_at: datetime | None = None
    batch_seq: int | None = None
    batch_sent_at: datetime | None = None
    decided_by: str = ""
    decided_why: str = ""
    decided_at: datetime | None = None
    superseded_by: str = ""


@dataclass(frozen=True, slots=True)
class Approval:
    """What `approve_revision` did: `revision` is now the stored value; `replaced` was (None: nothing was stored)."""

    revision: Revision
    replaced: StoredReading | None


@dataclass(frozen=True, slots=True)
class RevisionCount:
    """Revisions of one agent's readings, by state."""

    pending: int = 0
    approved: int = 0
    superseded: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.approved + self.superseded


class RevisionError(GatewayError, LookupError):
    """An approval that cannot be done: no such revision, or it is not pending (says which and why)."""


def not_pending(revision: Revision) -> str:
    """Why an approval of a revision that is not pending is refused."""
    decided = f" by {revision.decided_by}" if revision.decided_by else ""
    when = f" at {revision.decided_at.isoformat()}" if revision.decided_at else ""
    return f"revision {revision.id} is {revision.state.value}{decided}{when}: only a pending revision can be approved"


def revision_id(identity: tuple[str, str, str, str, int], content: Content) -> str:
    """A revision's id where the store has no counter (InfluxDB): the same content for the same identity is the
    same revision, so a retried write records it once. 16 hex digits of sha256."""
    value, unit, quality, status = content
    text = repr((identity, (None if value is None else float(value), unit, str(quality), status)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def revision_sort_key(revision: Revision) -> tuple[datetime, str, str, str, str, str]:
    """The order query_revisions returns: the reading's time, instrument, parameter, site, agent, then id."""
    r = revision.reading
    return (r.ts, r.instrument, r.parameter, r.site, r.agent, revision.id)


HEALTH_MEASUREMENT = "aua_health"
HEALTH_TAG_KEYS = ("agent", "component", "id", "site")
"""Health points: measurement `aua_health`; tags agent, component (gateway | agent), id (the gateway that wrote
the point), site; integer fields (counters, gauges, 0/1 flags); time = when the gateway took the sample."""

HEALTH_COMPONENTS = ("gateway", "agent")
HEALTH_NOT_APPLICABLE = "-"
"""The `site` and `agent` tag of a gateway's own point (a tag value cannot be empty)."""


RECEIPT_MEASUREMENT = "aua_batch"
"""Batch receipts: tags site, agent; field readings; time = the batch's sequence number (as ns)."""


@dataclass(frozen=True)
class BatchReceipt:
    """A batch some gateway made durable. Gateways sharing a subscription meet here: a sequence number
    missing from one instance's ledger is only a gap if no instance has written its receipt."""

    site: str
    agent: str
    seq: int
    readings: int


@dataclass(frozen=True)
class HealthPoint:
    """One sample of a component's accounting: integer fields only, so a field never changes type.

    `id` is the gateway that wrote it: with several gateways each reports the agents it has seen.
    """

    component: str
    id: str
    site: str
    agent: str
    ts: datetime
    fields: Mapping[str, int]

    def __post_init__(self) -> None:
        if self.component not in HEALTH_COMPONENTS:
            raise ValueError(f"component must be one of {HEALTH_COMPONENTS}, got {self.component!r}")
        if self.ts.tzinfo is None or self.ts.utcoffset() is None:
            raise ValueError(f"ts must carry a time zone (UTC expected), got naive {self.ts.isoformat()}")
        if self.ts.tzinfo is not UTC:
            object.__setattr__(self, "ts", self.ts.astimezone(UTC))
        if not self.fields:
            raise ValueError("a health point needs at least one field")
        for name, value in self.fields.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"health field {name!r} must be an integer, got {value!r}")
            if not -(2**63) <= value < 2**63:
                raise ValueError(f"health field {name!r} = {value} does not fit a signed 64-bit integer")
        object.__setattr__(self, "fields", dict(sorted(self.fields.items())))

    @property
    def identity(self) -> tuple[str, str, str, str, datetime]:
        return (self.component, self.id, self.site, self.agent, self.ts)


def health_sort_key(point: HealthPoint) -> tuple[datetime, str, str, str, str]:
    """The order query_health returns: time, then component, id, site, agent."""
    return (point.ts, point.component, point.id, point.site, point.agent)


def sort_key(reading: StoredReading) -> tuple[datetime, str, str, str, str]:
    """The order every query returns: time first, then instrument and parameter (site, agent break ties)."""
    return (reading.ts, reading.instrument, reading.parameter, reading.site, reading.agent)


def aggregate_sort_key(aggregate: Aggregate) -> tuple[datetime, str, str, str, str]:
    """The order query_aggregates returns: start first, then instrument, parameter, site and period."""
    return (aggregate.start, aggregate.instrument, aggregate.parameter, aggregate.site, aggregate.period.value)


FIRST_STORABLE = datetime(1677, 9, 21, 0, 12, 43, 145225, tzinfo=UTC)
LAST_STORABLE = datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)
"""The first and last microsecond whose time in ns fits a signed 64-bit integer: what InfluxDB and the SQLite
schema (ts_ns INTEGER) hold. A contract reading may carry any year from 1 to 9999; the gateway refuses the
readings outside these (a broken clock), not their whole batch."""


@runtime_checkable
class Store(Protocol):
    """Where the gateway keeps readings. Raw readings are write-once: writing the same reading again is a no-op
    (a redelivered batch is harmless), and other content for a stored identity is kept as a pending `Revision`
    beside the original, which stays what queries (rollups, reports, dashboards) return until an operator
    approves the revision (design.md: raw data of a regulated emitter are write-once)."""

    @property
    def kind(self) -> str:
        """Short name of the backend ("sqlite", "influx") for logs and health output."""
        ...

    async def open(self) -> None:
        """Connect and create what is missing (file, schema, database); calling it twice is harmless."""
        ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        """`async with store:` opens it and closes it at the end."""
        ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def write(self, readings: Sequence[StoredReading]) -> None:
        """Insert new identities; the same content again is a no-op; other content for a stored identity (or
        for one earlier in the same call) is recorded once as a pending revision, without batch provenance.

        A failed call may have stored part of the batch (InfluxDB); retrying the whole call repairs that and
        records no revision twice.
        """
        ...

    async def write_batches(self, batches: Sequence[Batch]) -> None:
        """`write` of every reading of these batches, with its batch's site and agent: the ingest path, which
        skips building a StoredReading per reading. A revision records the batch's seq and sent_at. A reading
        the store cannot hold fails the whole call."""
        ...

    @property
    def revisions_recorded(self) -> int:
        """Revisions this store object recorded since it was made (a counter for /metrics)."""
        ...

    async def query_revisions(
        self,
        *,
        site: str | None = None,
        agent: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        state: RevisionState | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Revision]:
        """Revisions matching every given filter, the reading's time in [start, end), by `revision_sort_key`:
        with `limit`, at most that many from the `offset`-th on (a page; `revision_counts` says how many there
        are), so a caller never has to hold them all."""
        ...

    async def revision_counts(
        self, *, site: str | None = None, start: datetime | None = None, end: datetime | None = None
    ) -> dict[tuple[str, str], RevisionCount]:
        """(site, agent) -> revisions by state, of readings with time in [start, end)."""
        ...

    async def approve_revision(self, revision_id: str, *, by: str, why: str, at: datetime) -> Approval:
        """Make a pending revision the stored value: the value stored until now is kept as a superseded revision
        (nothing is lost), the revision is marked approved with who, why and when. RevisionError if there is no
        such revision or it is not pending. The caller marks the rollups of the reading's hour for recompute."""
        ...

    async def query(
        self,
        *,
        site: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[StoredReading]:
        """Readings matching every given filter, time in [start, end), ordered by `sort_key`."""
        ...

    async def count_by_instrument(self) -> dict[tuple[str, str], int]:
        """(site, instrument) -> number of stored readings."""
        ...

    async def write_aggregates(self, aggregates: Sequence[Aggregate]) -> None:
        """Insert or replace rollups by (site, instrument, parameter, period, start): recomputing is idempotent.

        `value` is only meaningful when n_valid > 0; a store may keep an older value there otherwise
        (InfluxDB cannot store null), and query_aggregates then returns None.
        """
        ...

    async def query_aggregates(
        self,
        *,
        period: Period,
        site: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Aggregate]:
        """Rollups of one period matching every given filter, `start` in [start, end), by `aggregate_sort_key`."""
        ...

    async def write_receipts(self, receipts: Sequence[BatchReceipt]) -> None:
        """Record batches as durable (idempotent on site, agent, seq)."""
        ...

    async def received_batches(self, site: str, agent: str, first: int, last: int) -> dict[int, int]:
        """seq -> readings of an agent's batches first..last that any gateway has recorded."""
        ...

    async def prune_receipts(self, site: str, agent: str, below: int) -> int:
        """Forget an agent's receipts numbered below `below` (no gateway will look for them again); returns how
        many were forgotten. Costs what it drops, not what the store holds."""
        ...

    async def write_health(self, points: Sequence[HealthPoint]) -> None:
        """Insert or replace health points by (component, id, site, agent, ts): idempotent.

        A rewrite's fields replace the old ones; InfluxDB keeps a field the rewrite lacks (it merges fields).
        """
        ...

    async def query_health(
        self,
        *,
        component: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[HealthPoint]:
        """Health points of the given component, ts in [start, end), by `health_sort_key`."""
        ...
