"""Raw-data retention in the stores: what to keep how long, and the SQL/InfluxQL that keeps it so.

Raw readings are kept `[store] raw_retention_days` (unset: forever); rollups (every level, 1-minute to year)
`[store] rollup_retention_days`, by default 10 years: EU MRR 2018/2066 Art. 67(1) requires the records behind
an emissions report to be kept at least 10 years (a shorter national rule can lower it; docs/deployment.md).

- SQLite: `prune_step` deletes at most `limit` rows per transaction, oldest first per instrument through the
  (site, instrument, ts_ns) index the rollup engine reads by (`raw_instruments` hops from one instrument to
  the next in it: there is no index on time alone, which cost ~30 % of the raw data's size), and rollups
  oldest first per period through (period, start_ns),
  so the store's one writer thread is never held for long and an ingest write waits for one small step at
  most; the freed pages are reused, so the file stops growing once the bounds are reached. The first raw
  time kept is recorded in the file (table `retention`) so a report knows where raw data ends.
- InfluxDB 1.x: retention policies RAW_POLICY (readings) and ROLLUP_POLICY (measurement `rollup`), created
  or altered at open when configured; batch receipts and health points stay in the database's default policy
  (receipts are timed by sequence number, near 1970, and a finite policy would drop them).
"""

from __future__ import annotations

import math
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.state_file import transaction
from gateway.time_ns import from_ns, to_ns

__all__ = [
    "DEFAULT_ROLLUP_RETENTION_DAYS",
    "RAW_POLICY",
    "ROLLUP_POLICY",
    "RetentionSettings",
    "parse_duration",
    "policy_statements",
    "prune_step",
    "raw_instruments",
    "raw_pruned_before",
]

DEFAULT_ROLLUP_RETENTION_DAYS = 3653.0
"""10 years (EU MRR 2018/2066 Art. 67(1))."""

RAW_POLICY = "aua_raw"
ROLLUP_POLICY = "aua_rollup"

_HOUR = timedelta(hours=1)


def _floor_minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def _ceil_hour(ts: datetime) -> datetime:
    floor = ts.replace(minute=0, second=0, microsecond=0)
    return floor if floor == ts else floor + _HOUR


@dataclass(frozen=True)
class RetentionSettings:
    """How long raw readings and rollups are kept, in days; None keeps them forever."""

    raw_days: float | None = None
    rollup_days: float | None = DEFAULT_ROLLUP_RETENTION_DAYS

    def __post_init__(self) -> None:
        for name in ("raw_days", "rollup_days"):
            days = getattr(self, name)
            if days is not None and not (math.isfinite(days) and days * 24 >= 1):
                raise ValueError(f"{name} must be at least one hour (1/24 day), got {days!r}")

    def raw_cutoff(self, now: datetime) -> datetime | None:
        """Raw data before this may be incomplete (the horizon reports and recomputation go by): whole hours,
        so no hour counts as half raw; `raw_delete_before(now)` is never later."""
        return None if self.raw_days is None else _ceil_hour(now - timedelta(days=self.raw_days))

    def raw_delete_before(self, now: datetime) -> datetime | None:
        """Raw readings before this are deleted now: exactly `raw_days` ago, to the whole minute (no 1-minute
        rollup's raw data half gone). Not rounded to the hour: then each hour's readings fell due at once and
        a single pass deleted an hour of them (2.16 million at 600 readings/s, found by the soak), so passes
        every minute each delete a minute's worth instead."""
        if self.raw_days is None:
            return None
        return _floor_minute(now - timedelta(days=self.raw_days))

    def rollup_cutoff(self, now: datetime) -> datetime | None:
        """Rollups of periods that start before this may be deleted."""
        return None if self.rollup_days is None else _ceil_hour(now - timedelta(days=self.rollup_days))


# -- SQLite ------------------------------------------------------------------------------------------------

_MARK_SCHEMA = """
CREATE TABLE IF NOT EXISTS retention (
    what      TEXT    NOT NULL PRIMARY KEY,  -- 'raw': readings before before_ns may have been deleted
    before_ns INTEGER NOT NULL
) WITHOUT ROWID
"""

_ROLLUP_PERIODS = ("1m", "30m", "1h", "1d", "1mo", "1y")


def prune_step(
    connection: sqlite3.Connection,
    *,
    raw_before: datetime | None,
    rollup_before: datetime | None,
    limit: int,
) -> int:
    """Delete up to `limit` raw readings before `raw_before` and up to `limit` rollups starting before
    `rollup_before`, oldest first (raw: per instrument), in one transaction; returns how many rows went (0:
    nothing left to do). `raw_before` to the next whole hour is recorded as where complete raw data begins
    (`raw_pruned_before`): reports and recomputation take whole hours from raw data or none of them.

    Raw readings are found per instrument through reading_series_ts, rollups through rollup_start: a step
    costs the same whatever the tables hold (one index search per instrument, plus the rows it deletes)."""
    deleted = 0
    with transaction(connection):
        if raw_before is not None:
            connection.execute(_MARK_SCHEMA)
            cutoff = to_ns(raw_before)
            horizon = to_ns(_ceil_hour(raw_before))
            left = limit
            for site, instrument in raw_instruments(connection):
                if left <= 0:
                    break
                gone = connection.execute(_PRUNE_RAW, (site, instrument, cutoff, left)).rowcount
                deleted += gone
                left -= gone
            connection.execute(
                "INSERT INTO retention VALUES ('raw', ?) ON CONFLICT (what) DO UPDATE SET "
                "before_ns = max(before_ns, excluded.before_ns)",
                (horizon,),
            )
        if rollup_before is not None:
            cutoff = to_ns(rollup_before)
            left = limit
            for period in _ROLLUP_PERIODS:
                if left <= 0:
                    break
                gone = connection.execute(
                    "DELETE FROM rollup WHERE (site, period, instrument, parameter, start_ns) IN (SELECT site, "
                    "period, instrument, parameter, start_ns FROM rollup WHERE period = ? AND start_ns < ? "
                    "ORDER BY start_ns LIMIT ?)",
                    (period, cutoff, left),
                ).rowcount
                deleted += gone
                left -= gone
    return deleted


_PRUNE_RAW = (
    "DELETE FROM reading WHERE (site, instrument, parameter, agent, ts_ns) IN (SELECT site, instrument, parameter, "
    "agent, ts_ns FROM reading WHERE site = ? AND instrument = ? AND ts_ns < ? ORDER BY ts_ns LIMIT ?)"
)
_FIRST_INSTRUMENT = "SELECT site, instrument FROM reading ORDER BY site, instrument LIMIT 1"
_FIRST_OF_SITE = "SELECT site, instrument FROM reading WHERE site = ? ORDER BY site, instrument LIMIT 1"
_NEXT_INSTRUMENT = "SELECT site, instrument FROM reading WHERE site = ? AND instrument > ? ORDER BY instrument LIMIT 1"
"""(a row value (site, instrument) > (?, ?) would walk every reading of the current instrument first)"""
_NEXT_SITE = "SELECT site, instrument FROM reading WHERE site > ? ORDER BY site, instrument LIMIT 1"


def raw_instruments(connection: sqlite3.Connection, site: str | None = None) -> list[tuple[str, str]]:
    """The (site, instrument) pairs with raw readings (of one site, when given), in order: one or two searches
    of reading_series_ts per pair (a skip scan), not a pass over the readings."""
    found: list[tuple[str, str]] = []
    row = connection.execute(*((_FIRST_INSTRUMENT,) if site is None else (_FIRST_OF_SITE, (site,)))).fetchone()
    while row is not None:
        found.append((str(row[0]), str(row[1])))
        row = connection.execute(_NEXT_INSTRUMENT, row).fetchone()
        if row is None and site is None:
            row = connection.execute(_NEXT_SITE, (found[-1][0],)).fetchone()
    return found


def raw_pruned_before(connection: sqlite3.Connection) -> datetime | None:
    """The retention cutoff raw readings were pruned to (raw data before it may be incomplete), or None."""
    exists = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'retention'").fetchone()
    if exists is None:
        return None
    row = connection.execute("SELECT before_ns FROM retention WHERE what = 'raw'").fetchone()
    return None if row is None else from_ns(int(row[0]))


# -- InfluxDB 1.x ------------------------------------------------------------------------------------------

_GO_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> timedelta | None:
    """A duration as SHOW RETENTION POLICIES prints it ("720h0m0s"); "0s" (infinite) → None."""
    match = _GO_DURATION.match(text)
    if match is None or not text:
        raise ValueError(f"not an InfluxDB duration: {text!r}")
    hours, minutes, seconds = match.groups()
    duration = timedelta(hours=int(hours or 0), minutes=int(minutes or 0), seconds=float(seconds or 0))
    return duration or None


def _hours(days: float) -> int:
    return max(1, round(days * 24))


def policy_statements(database: str, existing: dict[str, timedelta | None], settings: RetentionSettings) -> list[str]:
    """CREATE or ALTER RETENTION POLICY statements that make RAW_POLICY/ROLLUP_POLICY what `settings` says.

    `existing`: name → duration (None: infinite) of the database's policies. Neither becomes the default
    policy: receipts and health points keep going to the database's default.
    """
    statements = []
    for name, days in ((RAW_POLICY, settings.raw_days), (ROLLUP_POLICY, settings.rollup_days)):
        duration = "INF" if days is None else f"{_hours(days)}h"
        wanted = None if days is None else timedelta(hours=_hours(days))
        target = f'"{name}" ON "{_escape(database)}"'
        if name not in existing:
            statements.append(f"CREATE RETENTION POLICY {target} DURATION {duration} REPLICATION 1")
        elif existing[name] != wanted:
            statements.append(f"ALTER RETENTION POLICY {target} DURATION {duration}")
    return statements


def _escape(identifier: str) -> str:
    return identifier.replace("\\", "\\\\").replace('"', '\\"')
