"""StoredReading -> InfluxDB line protocol. Pure: no I/O, so the escaping rules are tested exhaustively.

Schema: measurement `reading`; tags agent, instrument, parameter, site (sorted, as InfluxDB prefers);
fields quality (string), status (integer, omitted when None), unit (string), value (float, omitted
when None); timestamp in integer nanoseconds. Every point has `quality`, so no point is field-less.

Escaping (InfluxDB 1.x line protocol, checked against influxd 1.6.7):
- measurement: comma and space;
- tag keys and values: comma, equals sign and space; a backslash is literal there;
- string field values: double quote and backslash.
Values the protocol cannot carry raise ValueError instead of silently changing the data: newlines and
other ASCII control characters (in tags and fields), empty tag values (InfluxDB drops the tag, merging
distinct series) and a tag value ending in a backslash (it would escape the delimiter that follows).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

from aua_contract import Batch, Reading
from gateway.mrv.rollup import Aggregate
from gateway.stores.base import (
    HEALTH_MEASUREMENT,
    HEALTH_TAG_KEYS,
    RECEIPT_MEASUREMENT,
    BatchReceipt,
    HealthPoint,
    Revision,
    StoredReading,
)
from gateway.time_ns import to_ns

MEASUREMENT = "reading"
TAG_KEYS = ("agent", "instrument", "parameter", "site")
"""Sorted, the order format_line writes them in (InfluxDB indexes sorted tag sets fastest)."""
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


_CONTROL = frozenset(chr(code) for code in (*range(0x20), 0x7F))


def _reject_control_characters(what: str, text: str) -> None:
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} {text!r}: line protocol cannot carry a newline")
    if not _CONTROL.isdisjoint(text):
        # NUL ends an InfluxQL string literal early (the value could be written but never queried again);
        # the others have no business in names or units, so all ASCII control characters are refused.
        raise ValueError(f"{what} {text!r}: control characters are not stored")


def escape_measurement(name: str) -> str:
    _reject_control_characters("measurement", name)
    if not name:
        raise ValueError("measurement name must not be empty")
    return name.translate(_MEASUREMENT_ESCAPES)


_MEASUREMENT_ESCAPED = escape_measurement(MEASUREMENT)


@lru_cache(maxsize=4096)
def escape_tag(text: str, *, what: str = "tag") -> str:
    """Escape a tag key or value (field keys follow the same rules). Cached: the same few names repeat."""
    _reject_control_characters(what, text)
    if not text:
        raise ValueError(f"{what} must not be empty (InfluxDB would drop the tag)")
    if text.endswith("\\"):
        raise ValueError(f"{what} {text!r}: a trailing backslash cannot be written in line protocol")
    return text.translate(_TAG_ESCAPES)


@lru_cache(maxsize=4096)
def format_string_field(text: str, *, what: str = "string field") -> str:
    _reject_control_characters(what, text)
    return '"' + text.translate(_STRING_ESCAPES) + '"'


def format_float_field(value: float) -> str:
    """repr() is the shortest text that parses back to the same double, so no precision is lost."""
    if not math.isfinite(value):
        raise ValueError(f"float field {value!r}: InfluxDB stores only finite floats")
    return repr(float(value))


def format_int_field(value: int) -> str:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"integer field {value}: outside InfluxDB's signed 64-bit range")
    return f"{value}i"


@lru_cache(maxsize=65_536)
def _point_head(site: str, agent: str, instrument: str, parameter: str, quality: str, unit: str) -> str:  # noqa: PLR0917 (the cache key)
    """Measurement, tag set and string fields: the same for nearly every point of a series, so they are
    escaped and checked once per series instead of once per point (a third of the gateway's ingest CPU)."""
    return (
        f"{_MEASUREMENT_ESCAPED},agent={escape_tag(agent, what='tag agent')},"
        f"instrument={escape_tag(instrument, what='tag instrument')},"
        f"parameter={escape_tag(parameter, what='tag parameter')},"
        f"site={escape_tag(site, what='tag site')} "
        f"quality={format_string_field(str(quality), what='quality')},unit={format_string_field(unit, what='unit')}"
    )


def _point(head: str, value: float | None, status: int | None, ns: int) -> str:
    if not INT64_MIN < ns < INT64_MAX:
        raise ValueError(f"timestamp {ns} ns is outside what InfluxDB stores (1677-09-21 to 2262-04-11)")
    if status is not None:
        head += f",status={format_int_field(status)}"
    if value is not None:
        head += f",value={format_float_field(value)}"
    return f"{head} {ns}"


def format_line(reading: StoredReading) -> str:
    """One point, without the trailing newline. Fields: quality, unit, then status and value when present."""
    r = reading
    head = _point_head(r.site, r.agent, r.instrument, r.parameter, r.quality, r.unit)
    return _point(head, r.value, r.status, to_ns(r.ts))


def format_lines(readings: Iterable[StoredReading]) -> str:
    """A request body: one line per reading, each ending in a newline."""
    return "".join(format_line(reading) + "\n" for reading in readings)


def format_reading_line(site: str, agent: str, r: Reading | StoredReading, ns: int) -> str:
    """One point of a reading whose site, agent and time in ns are given (the write-once path's)."""
    return _point(_point_head(site, agent, r.instrument, r.parameter, r.quality, r.unit), r.value, r.status, ns)


def format_newer_lines(
    site: str,
    agent: str,
    readings: Sequence[Reading] | Sequence[StoredReading],
    marks: dict[tuple[str, str], int],
    lines: list[str],
) -> list[tuple[Reading | StoredReading, int]]:
    """The write-once fast path: appends to `lines` the points of the readings newer than their series'
    high-water mark in `marks` ((instrument, parameter) -> ns), moving the marks; returns the others with their
    time in ns (they need a look-up). The loop of format_batch_lines plus one dict look-up per reading."""
    others: list[tuple[Reading | StoredReading, int]] = []
    append, get, head = lines.append, marks.get, _point_head
    last_ts, ns = None, 0
    for r in readings:
        if r.ts != last_ts:  # the readings of one poll share a time; converting it costs more than the rest
            last_ts, ns = r.ts, to_ns(r.ts)
        series = (r.instrument, r.parameter)
        if ns > get(series, NO_MARK):
            marks[series] = ns
            append(_point(head(site, agent, r.instrument, r.parameter, r.quality, r.unit), r.value, r.status, ns))
        else:
            others.append((r, ns))
    return others


NO_MARK = INT64_MIN - 1
"""Lower than any time a point can have: the mark of a series with nothing stored."""


def format_batch_lines(batch: Batch) -> list[str]:
    """The points of every reading of a batch, as format_line writes them, without building StoredReadings:
    the gateway's ingest path."""
    site, agent = batch.site, batch.agent
    lines = []
    last_ts, ns = None, 0
    for r in batch.readings:
        if r.ts != last_ts:  # the readings of one poll share a time; converting it costs more than the rest
            last_ts, ns = r.ts, to_ns(r.ts)
        lines.append(
            _point(_point_head(site, agent, r.instrument, r.parameter, r.quality, r.unit), r.value, r.status, ns)
        )
    return lines


REVISION_MEASUREMENT = "reading_revision"
REVISION_TAG_KEYS = ("agent", "id", "instrument", "parameter", "site")
"""Revisions (base.Revision): measurement `reading_revision`; tags agent, id (base.revision_id), instrument,
parameter, site; fields quality, unit, state (strings), value (float) and status (integer) when present, seq,
sent_at (ns) and received (ns) when known (integers), decided_by, decided_why (strings), decided_at (ns) and
superseded_by (string) once decided; time = the reading's time. A state change rewrites only the fields it sets
(InfluxDB merges them into the point)."""


def format_revision_line(revision: Revision) -> str:
    """One revision point, every field it has, without the trailing newline."""
    r = revision.reading
    fields = [
        f"quality={format_string_field(r.quality.value, what='quality')}",
        f"unit={format_string_field(r.unit, what='unit')}",
        f"state={format_string_field(revision.state.value)}",
    ]
    for name, number in (
        ("seq", revision.batch_seq),
        ("sent_at", None if revision.batch_sent_at is None else to_ns(revision.batch_sent_at)),
        ("received", None if revision.received_at is None else to_ns(revision.received_at)),
    ):
        if number is not None:
            fields.append(f"{name}={format_int_field(number)}")
    fields += _decision_fields(revision)
    return _point(f"{_revision_series(revision)} {','.join(fields)}", r.value, r.status, to_ns(r.ts))


def format_revision_state_line(revision: Revision) -> str:
    """Only the state and decision fields of a revision point (merged into the point InfluxDB has)."""
    fields = [f"state={format_string_field(revision.state.value)}", *_decision_fields(revision)]
    return f"{_revision_series(revision)} {','.join(fields)} {to_ns(revision.reading.ts)}"


def _revision_series(revision: Revision) -> str:
    r = revision.reading
    tags = ",".join(
        f"{key}={escape_tag(value, what=f'tag {key}')}"
        for key, value in zip(REVISION_TAG_KEYS, (r.agent, revision.id, r.instrument, r.parameter, r.site), strict=True)
    )
    return f"{REVISION_MEASUREMENT},{tags}"


def _decision_fields(revision: Revision) -> list[str]:
    fields = []
    if revision.decided_at is not None:
        fields += [
            f"decided_by={format_string_field(revision.decided_by, what='decided_by')}",
            f"decided_why={format_string_field(revision.decided_why, what='decided_why')}",
            f"decided_at={format_int_field(to_ns(revision.decided_at))}",
        ]
    if revision.superseded_by:
        fields.append(f"superseded_by={format_string_field(revision.superseded_by, what='superseded_by')}")
    return fields


AGGREGATE_MEASUREMENT = "rollup"
AGGREGATE_TAG_KEYS = ("instrument", "parameter", "period", "site")
"""Rollups: measurement `rollup`; tags instrument, parameter, period (1m, 30m, 1h, 1d, 1mo, 1y), site; fields
method, n_expected, n_flagged, n_maintenance, n_valid, reason, substituted, unit, valid and value (omitted when
n_valid is 0, so a reader ignores `value` then: InfluxDB merges fields, an older value may remain); time = period
start. Every field but `value` is always written, so a rewrite leaves no stale field behind."""


def format_aggregate_line(aggregate: Aggregate) -> str:
    """One rollup point, without the trailing newline."""
    a = aggregate
    tag_set = (
        f"instrument={escape_tag(a.instrument, what='tag instrument')},"
        f"parameter={escape_tag(a.parameter, what='tag parameter')},"
        f"period={escape_tag(a.period.value, what='tag period')},"
        f"site={escape_tag(a.site, what='tag site')}"
    )
    fields = (
        f"method={format_string_field(a.method, what='method')},"
        f"n_expected={format_int_field(a.n_expected)},"
        f"n_flagged={format_int_field(a.n_flagged)},"
        f"n_maintenance={format_int_field(a.n_maintenance)},"
        f"n_valid={format_int_field(a.n_valid)},"
        f"reason={format_string_field(a.reason, what='reason')},"
        f"substituted={'true' if a.substituted else 'false'},"
        f"unit={format_string_field(a.unit, what='unit')},"
        f"valid={'true' if a.valid else 'false'}"
    )
    if a.value is not None and a.n_valid:
        fields += f",value={format_float_field(a.value)}"
    return f"{AGGREGATE_MEASUREMENT},{tag_set} {fields} {to_ns(a.start)}"


# Health: measurement HEALTH_MEASUREMENT (`aua_health`, defined in base.py beside HealthPoint); tags
# HEALTH_TAG_KEYS (agent, component, id, site, sorted); integer fields, named below.
HEALTH_AGENT_FIELDS = (
    "batches",
    "readings",
    "first_seq",
    "last_seq",
    "missing",
    "duplicates",
    "late",
    "repaired",
    "reused",
    "resend_requests",
    "next_seq",
    "oldest_seq",
    "dropped",
    "backlog",
    "online",
    "status_age_s",
)
"""Per agent, as the gateway's ledger knows it (late: batches stored after a higher-numbered one; repaired: late
ones a resend request asked for; reused: batches under a sequence number used before, see ledger.Recorded);
next_seq, oldest_seq, dropped as the agent last reported them
(absent until it has), backlog = next_seq - 1 - last_seq (batches sealed by the agent not yet stored), online 0/1."""

HEALTH_GATEWAY_FIELDS = (
    "messages",
    "batches",
    "readings",
    "duplicates",
    "reused",
    "dead_letters",
    "store_retries",
    "resend_requests",
    "spool_depth",
    "spool_bytes",
    "spool_full",
    "spool_full_count",
    "spool_full_seconds",
    "queue_depth",
    "broker_connected",
    "uptime_s",
)
"""Per gateway: the counters since it started (they restart from 0 with the process), gauges and 0/1 flags
(spool_full: the spool is at its bound and no message is taken; spool_full_count, spool_full_seconds: how often
and how long since start, as in /health)."""

HEALTH_FIELDS = tuple(dict.fromkeys((*HEALTH_AGENT_FIELDS, *HEALTH_GATEWAY_FIELDS)))


def format_health_line(point: HealthPoint) -> str:
    """One health point, without the trailing newline. Fields are integers, in name order."""
    tag_set = ",".join(f"{key}={escape_tag(getattr(point, key), what=f'tag {key}')}" for key in HEALTH_TAG_KEYS)
    fields = ",".join(
        f"{escape_tag(name, what='field key')}={format_int_field(value)}" for name, value in point.fields.items()
    )
    return f"{escape_measurement(HEALTH_MEASUREMENT)},{tag_set} {fields} {to_ns(point.ts)}"


def format_receipt_line(receipt: BatchReceipt) -> str:
    """A batch receipt: time = seq, so each (site, agent, seq) is one point and a rewrite replaces it."""
    if receipt.seq < 0 or receipt.readings < 0:
        raise ValueError(f"batch receipt {receipt} has a negative number")
    tags = f"agent={escape_tag(receipt.agent, what='tag agent')},site={escape_tag(receipt.site, what='tag site')}"
    return (
        f"{escape_measurement(RECEIPT_MEASUREMENT)},{tags} readings={format_int_field(receipt.readings)} {receipt.seq}"
    )
