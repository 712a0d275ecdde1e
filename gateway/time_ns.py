"""Times as integer nanoseconds since the Unix epoch (what InfluxDB, the SQLite stores and the gateway's state
files keep) and back: the gateway's one conversion, exact, with no float on the way. Pure.

`datetime` holds microseconds, so a time read back has the stored nanoseconds' sub-microsecond digits dropped
(floor); a time converted to ns and back is unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_ns(ts: datetime) -> int:
    """Aware datetime -> integer nanoseconds since the Unix epoch, exact (no float rounding)."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"naive datetime {ts.isoformat()} has no time zone")
    return (ts - EPOCH) // _MICROSECOND * 1000


def from_ns(ns: int) -> datetime:
    """Integer nanoseconds -> aware UTC datetime; datetime holds microseconds, so finer digits are dropped."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def to_ns_or_none(ts: datetime | None) -> int | None:
    """`to_ns` for an optional time (a nullable column)."""
    return None if ts is None else to_ns(ts)


def from_ns_or_none(ns: int | None) -> datetime | None:
    """`from_ns` for an optional time (a nullable column)."""
    return None if ns is None else from_ns(ns)
