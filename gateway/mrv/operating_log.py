"""The operator's manual operating-state log, and `cems-gateway operating-state log|list`.

An operator records the state of a source over a span ("boiler 2 off from 1 June to 15 September: summer
shutdown"), with who and why; it overrides the state derived from signals for the base periods starting in
the span (gateway.mrv.operating_state). Entries are never changed or deleted (the table refuses it): a later
entry supersedes an earlier one where they overlap, both are kept and listed, and state `derived` hands a span
back to the signals.

Kept in the gateway's state file (SQLite, [gateway] state), not in the measurement store: the store may be
InfluxDB, whose retention policies expire old points and which has no place for text records that must not
change; the state file is SQLite whatever the store, already holds the gateway's other operator records
(acknowledgements, silences), and is written here with synchronous=FULL. Each report lists the entries it
applied, so a report stays checkable without the file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Final

from gateway.cli_time import cli_time
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.mrv.config import find_source
from gateway.mrv.operating_state import ManualEntry, State
from gateway.state_file import StateFile
from gateway.time_ns import from_ns, to_ns

__all__ = [
    "MAX_SPAN",
    "OperatingLog",
    "OperatingLogError",
    "add_operating_state_commands",
    "run_operating_state_command",
]

MAX_SPAN: Final = timedelta(days=366)
"""An entry covers at most a year (a longer shutdown takes one entry per year)."""
MAX_BY: Final = 100
MAX_WHY: Final = 2000
DERIVED: Final = "derived"
STATES: Final = (*(s.value for s in State), DERIVED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS operating_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    by TEXT NOT NULL,
    why TEXT NOT NULL,
    recorded_ns INTEGER NOT NULL,
    CHECK (end_ns > start_ns)
);
CREATE INDEX IF NOT EXISTS operating_log_source ON operating_log (source, start_ns);
CREATE TRIGGER IF NOT EXISTS operating_log_no_update BEFORE UPDATE ON operating_log
BEGIN SELECT RAISE(ABORT, 'operating_log entries are never changed: record a new entry'); END;
CREATE TRIGGER IF NOT EXISTS operating_log_no_delete BEFORE DELETE ON operating_log
BEGIN SELECT RAISE(ABORT, 'operating_log entries are never deleted: record a new entry'); END;
"""


class OperatingLogError(GatewayError, ValueError):
    """An entry that cannot be recorded; the message says which field and why."""


class OperatingLog(StateFile):
    def __init__(self, path: Path | str) -> None:
        super().__init__(path, _SCHEMA, synchronous="FULL")

    def record(
        self, source: str, state: str, *, start: datetime, end: datetime, by: str, why: str, now: datetime
    ) -> ManualEntry:
        """Append an entry; OperatingLogError naming the field when it is not acceptable."""
        if state not in STATES:
            raise OperatingLogError(f"state {state!r}: one of {', '.join(STATES)}")
        if start.tzinfo is None or end.tzinfo is None:
            raise OperatingLogError("from/to need a time zone")
        if end <= start:
            raise OperatingLogError(f"to {end.isoformat()} is not after from {start.isoformat()}")
        if end - start > MAX_SPAN:
            raise OperatingLogError(f"from..to spans {end - start}, more than {MAX_SPAN.days} days: one entry a year")
        by, why = by.strip(), why.strip()
        if not by or len(by) > MAX_BY:
            raise OperatingLogError(f"by: who records it, 1 to {MAX_BY} characters")
        if not why or len(why) > MAX_WHY:
            raise OperatingLogError(f"why: the reason, 1 to {MAX_WHY} characters")
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO operating_log (source, state, start_ns, end_ns, by, why, recorded_ns) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (source, state, to_ns(start), to_ns(end), by, why, to_ns(now)),
            )
            entry_id = cursor.lastrowid
        assert entry_id is not None
        return ManualEntry(entry_id, source, _state(state), start, end, by, why, now)

    def entries(
        self, source: str | None = None, *, start: datetime | None = None, end: datetime | None = None
    ) -> list[ManualEntry]:
        """Entries (of one source) overlapping [start, end), in recording order."""
        query = "SELECT id, source, state, start_ns, end_ns, by, why, recorded_ns FROM operating_log WHERE 1=1"
        args: list[Any] = []
        if source is not None:
            query += " AND source = ?"
            args.append(source)
        if end is not None:
            query += " AND start_ns < ?"
            args.append(to_ns(end))
        if start is not None:
            query += " AND end_ns > ?"
            args.append(to_ns(start))
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [
            ManualEntry(
                row[0], row[1], _state(row[2]), from_ns(row[3]), from_ns(row[4]), row[5], row[6], from_ns(row[7])
            )
            for row in rows
        ]


def _state(text: str) -> State | None:
    return None if text == DERIVED else State(text)


def superseded_by(entry: ManualEntry, entries: Sequence[ManualEntry]) -> list[int]:
    """Later entries of the same source that overlap this one (they win where they overlap)."""
    return [
        other.id
        for other in entries
        if other.id > entry.id and other.source == entry.source and other.start < entry.end and entry.start < other.end
    ]


# -- CLI -----------------------------------------------------------------------------------------------------


def add_operating_state_commands(commands: Any) -> None:
    """`operating-state log` and `operating-state list` under `cems-gateway`."""
    group = commands.add_parser(
        "operating-state", help="the operator's manual log of a source's operating state: log, list"
    ).add_subparsers(dest="operating_command", required=True)
    log = group.add_parser(
        "log", help="record a source's state over a span (overrides the signals; later entries supersede)"
    )
    log.add_argument("config", type=Path)
    log.add_argument("source", help="[[source]] id")
    log.add_argument("--state", required=True, choices=STATES, help="'derived': the signals decide again")
    log.add_argument("--from", dest="start", required=True, type=cli_time, help="ISO 8601 (no zone: UTC)")
    log.add_argument("--to", dest="end", required=True, type=cli_time, help="exclusive; ISO 8601 (no zone: UTC)")
    log.add_argument("--by", required=True, help="who records it")
    log.add_argument("--why", required=True, help="why, for the record (e.g. the shift log entry)")
    listing = group.add_parser("list", help="the log's entries, each with the later entries that supersede it")
    listing.add_argument("config", type=Path)
    listing.add_argument("source", nargs="?", help="only this [[source]]")
    listing.add_argument("--since", type=cli_time, help="entries ending after this time")
    listing.add_argument("--until", type=cli_time, help="entries starting before this time")


def run_operating_state_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    sources = config.sources
    zones: dict[str, tzinfo] = {s.id: s.zone for s in sources}
    if args.source is not None:
        try:
            find_source(sources, args.source)
        except LookupError as error:
            print(error, file=sys.stderr)
            return 1
    log = OperatingLog(config.gateway.state)
    try:
        if args.operating_command == "log":
            try:
                entry = log.record(
                    args.source,
                    args.state,
                    start=args.start,
                    end=args.end,
                    by=args.by,
                    why=args.why,
                    now=datetime.now(UTC),
                )
            except OperatingLogError as error:
                print(f"operating-state log: {error}", file=sys.stderr)
                return 1
            print(f"recorded {format_entry(entry, zones.get(entry.source, UTC), [])}")
            return 0
        entries = log.entries(args.source, start=args.since, end=args.until)
    finally:
        log.close()
    if not entries:
        print("no entries")
    for entry in entries:
        print(format_entry(entry, zones.get(entry.source, UTC), superseded_by(entry, entries)))
    return 0


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="minutes").replace("+00:00", "Z")


def format_entry(entry: ManualEntry, zone: tzinfo, later: Sequence[int]) -> str:
    state = entry.state.value if entry.state is not None else DERIVED
    local = f"{entry.start.astimezone(zone):%Y-%m-%d %H:%M}..{entry.end.astimezone(zone):%Y-%m-%d %H:%M} local"
    text = (
        f"#{entry.id} {entry.source} {state} {_z(entry.start)}..{_z(entry.end)} ({local}) "
        f"by {entry.by} at {_z(entry.recorded_at)}: {entry.why}"
    )
    if later:
        text += f" [superseded where they overlap by {', '.join(f'#{n}' for n in later)}]"
    return text
