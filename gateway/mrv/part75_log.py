"""The record of 40 CFR Part 75 QA tests, and `cems-gateway cal-test add|linearity|rata|list`.

An operator (or the technician who ran it) enters each daily calibration error test, linearity check and RATA with
who and why; the report then knows which hours were quality-assured (gateway.mrv.part75). Entry by CLI only: the
analyzers' calibration status bits mark a window in the readings, but not the reference gas values, so the test's
reference values and responses are entered as the analyzer or the gas certificate shows them.

Kept in the gateway's state file (SQLite, [gateway] state) beside the operating log (gateway/mrv/operating_log.py),
for the same reasons: text records that must not change, whatever the measurement store. Entries are never changed
or deleted (the tables refuse it): a wrong entry is corrected by a later test. Every number is bounded and finite,
every text bounded; the report lists the tests it used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Final

from gateway.cli_time import cli_time
from gateway.config import GatewayConfig
from gateway.mrv.config import SourceConfig, find_source, part75_role
from gateway.mrv.part75 import (
    RATA_MAX_RUNS,
    RATA_MIN_RUNS,
    DailyCalibration,
    Linearity,
    LinearityLevel,
    Part75Tests,
    Rata,
)
from gateway.state_file import StateFile
from gateway.time_ns import from_ns, to_ns

__all__ = [
    "LOOKBACK",
    "Part75Log",
    "Part75LogError",
    "add_cal_test_commands",
    "run_cal_test_command",
]

MAX_BY: Final = 100
MAX_WHY: Final = 2000
MAX_VALUE: Final = 1e12
"""Largest magnitude of an entered value (flows in scfh reach 1e8; anything past this is a typo)."""
MAX_LEVELS: Final = 3
LOOKBACK: Final = timedelta(days=800)
"""Tests before a report's period that may still be in effect: the last RATA of up to two years back (its BAF),
the last daily test and linearity check."""
MAX_FUTURE: Final = timedelta(hours=1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS part75_test (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    role TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('daily', 'linearity', 'rata')),
    at_ns INTEGER NOT NULL,
    body TEXT NOT NULL,
    by TEXT NOT NULL,
    why TEXT NOT NULL,
    recorded_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS part75_test_source ON part75_test (source, at_ns);
CREATE TRIGGER IF NOT EXISTS part75_test_no_update BEFORE UPDATE ON part75_test
BEGIN SELECT RAISE(ABORT, 'part75_test entries are never changed: record a new test'); END;
CREATE TRIGGER IF NOT EXISTS part75_test_no_delete BEFORE DELETE ON part75_test
BEGIN SELECT RAISE(ABORT, 'part75_test entries are never deleted: record a new test'); END;
"""


class Part75LogError(ValueError):
    """A test that cannot be recorded; the message says which field and why."""


def _number(name: str, value: float, *, positive: bool = False) -> float:
    if not math.isfinite(value) or abs(value) > MAX_VALUE:
        raise Part75LogError(f"{name}: a finite number of magnitude at most {MAX_VALUE:g} (got {value!r})")
    if positive and value <= 0:
        raise Part75LogError(f"{name}: must be > 0 (got {value:g})")
    return value


def _text(by: str, why: str) -> tuple[str, str]:
    by, why = by.strip(), why.strip()
    if not by or len(by) > MAX_BY:
        raise Part75LogError(f"by: who records it, 1 to {MAX_BY} characters")
    if not why or len(why) > MAX_WHY:
        raise Part75LogError(f"why: the reason or reference (e.g. the test sheet), 1 to {MAX_WHY} characters")
    return by, why


class Part75Log(StateFile):
    def __init__(self, path: Path | str) -> None:
        super().__init__(path, _SCHEMA, synchronous="FULL")

    def _insert(
        self, source: str, role: str, kind: str, *, at: datetime, body: dict[str, Any], by: str, why: str, now: datetime
    ) -> int:
        if at.tzinfo is None:
            raise Part75LogError("at: needs a time zone")
        if at > now + MAX_FUTURE:
            raise Part75LogError(f"at: {at.isoformat()} is in the future")
        by, why = _text(by, why)
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO part75_test (source, role, kind, at_ns, body, by, why, recorded_ns) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (source, role, kind, to_ns(at), json.dumps(body), by, why, to_ns(now)),
            )
            test_id = cursor.lastrowid
        assert test_id is not None
        return test_id

    def add_daily(
        self,
        source: str,
        role: str,
        *,
        at: datetime,
        span: float,
        unit: str,
        zero: tuple[float, float],
        high: tuple[float, float],
        by: str,
        why: str,
        now: datetime,
    ) -> DailyCalibration:
        """A daily calibration error test: (reference, response) at the zero and the upscale level."""
        body = {
            "span": _number("span", span, positive=True),
            "unit": unit.strip()[:20],
            "zero": [_number("zero reference", zero[0]), _number("zero response", zero[1])],
            "high": [_number("upscale reference", high[0]), _number("upscale response", high[1])],
        }
        test_id = self._insert(source, role, "daily", at=at, body=body, by=by, why=why, now=now)
        return _daily(_Row(test_id, source, role, at, body, by.strip(), why.strip(), now))

    def add_linearity(
        self,
        source: str,
        role: str,
        *,
        at: datetime,
        unit: str,
        levels: list[tuple[float, float]],
        by: str,
        why: str,
        now: datetime,
    ) -> Linearity:
        """A linearity check: (reference, mean response) per gas level (low, mid, high)."""
        if not 1 <= len(levels) <= MAX_LEVELS:
            raise Part75LogError(f"level: 1 to {MAX_LEVELS} levels (40 CFR 75 App. A §6.2: low, mid, high)")
        body = {
            "unit": unit.strip()[:20],
            "levels": [
                [_number("level reference", a, positive=True), _number("level mean response", r)] for a, r in levels
            ],
        }
        test_id = self._insert(source, role, "linearity", at=at, body=body, by=by, why=why, now=now)
        return _linearity(_Row(test_id, source, role, at, body, by.strip(), why.strip(), now))

    def add_rata(
        self,
        source: str,
        role: str,
        *,
        at: datetime,
        runs: list[tuple[float, float]],
        by: str,
        why: str,
        now: datetime,
    ) -> Rata:
        """A RATA: (reference method, CEM) per run, 9 to 12 runs."""
        body = {"runs": [[_number("run reference", rm), _number("run CEM", cem)] for rm, cem in runs]}
        try:
            _rata(_Row(0, source, role, at, body, by, why, now))
        except ValueError as error:
            raise Part75LogError(f"run: {error}") from None
        test_id = self._insert(source, role, "rata", at=at, body=body, by=by, why=why, now=now)
        return _rata(_Row(test_id, source, role, at, body, by.strip(), why.strip(), now))

    def tests(
        self, source: str | None = None, *, start: datetime | None = None, end: datetime | None = None
    ) -> Part75Tests:
        """The tests (of one source) completed in [start, end), each kind in time order."""
        query = "SELECT id, source, role, kind, at_ns, body, by, why, recorded_ns FROM part75_test WHERE 1=1"
        args: list[Any] = []
        if source is not None:
            query += " AND source = ?"
            args.append(source)
        if start is not None:
            query += " AND at_ns >= ?"
            args.append(to_ns(start))
        if end is not None:
            query += " AND at_ns < ?"
            args.append(to_ns(end))
        with self._lock:
            rows = self._db.execute(query + " ORDER BY at_ns, id", args).fetchall()
        daily: list[DailyCalibration] = []
        linearity: list[Linearity] = []
        ratas: list[Rata] = []
        for test_id, src, role, kind, at_ns, body_text, by, why, recorded_ns in rows:
            row = _Row(test_id, src, role, from_ns(at_ns), json.loads(body_text), by, why, from_ns(recorded_ns))
            if kind == "daily":
                daily.append(_daily(row))
            elif kind == "linearity":
                linearity.append(_linearity(row))
            else:
                ratas.append(_rata(row))
        return Part75Tests(tuple(daily), tuple(linearity), tuple(ratas))


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    source: str
    role: str
    at: datetime
    body: dict[str, Any]
    by: str
    why: str
    recorded: datetime


def _daily(row: _Row) -> DailyCalibration:
    body = row.body
    zero, high = body["zero"], body["high"]
    return DailyCalibration(
        row.id, row.source, row.role, row.at, body["span"], body["unit"], zero[0], zero[1], high[0], high[1],
        row.by, row.why, row.recorded,
    )  # fmt: skip


def _linearity(row: _Row) -> Linearity:
    levels = tuple(LinearityLevel(a, r) for a, r in row.body["levels"])
    return Linearity(row.id, row.source, row.role, row.at, row.body["unit"], levels, row.by, row.why, row.recorded)


def _rata(row: _Row) -> Rata:
    runs = tuple((rm, cem) for rm, cem in row.body["runs"])
    return Rata(row.id, row.source, row.role, row.at, runs, row.by, row.why, row.recorded)


# -- CLI -----------------------------------------------------------------------------------------------------


def _pair(text: str) -> tuple[float, float]:
    """REFERENCE:RESPONSE, two numbers."""
    parts = text.split(":")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: two numbers as REFERENCE:RESPONSE, e.g. 250:253.1")
    return numbers[0], numbers[1]


def add_cal_test_commands(commands: Any) -> None:
    """`cal-test add|linearity|rata|list` under `cems-gateway`."""
    group = commands.add_parser(
        "cal-test", help="40 CFR Part 75 QA tests: daily calibration error, linearity, RATA (add, list)"
    ).add_subparsers(dest="cal_test_command", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", type=Path)
        parser.add_argument("source", help="[[source]] id")
        parser.add_argument("--channel", required=True, help="so2, nox, … (a pollutant's parameter), flow, o2 or co2")
        parser.add_argument("--at", required=True, type=cli_time, help="when the test was completed; ISO 8601")
        parser.add_argument("--by", required=True, help="who ran or records it")
        parser.add_argument("--why", required=True, help="reference for the record (test sheet, work order)")

    daily = group.add_parser("add", help="a daily calibration error test (zero and upscale level)")
    common(daily)
    daily.add_argument("--zero", required=True, type=_pair, help="REFERENCE:RESPONSE of the zero-level gas")
    daily.add_argument("--high", required=True, type=_pair, help="REFERENCE:RESPONSE of the upscale gas")
    daily.add_argument("--span", type=float, help="default: [source.part75] span of the channel")
    daily.add_argument("--unit", help="default: the channel's unit")
    linearity = group.add_parser("linearity", help="a linearity check (low, mid, high level)")
    common(linearity)
    linearity.add_argument(
        "--level", required=True, action="append", type=_pair, help="REFERENCE:MEAN_RESPONSE, once per level"
    )
    linearity.add_argument("--unit", help="default: the channel's unit")
    rata = group.add_parser("rata", help=f"a RATA: {RATA_MIN_RUNS} to {RATA_MAX_RUNS} runs")
    common(rata)
    rata.add_argument("--run", required=True, action="append", type=_pair, help="REFERENCE_METHOD:CEM, once per run")
    listing = group.add_parser("list", help="the tests recorded, with their results")
    listing.add_argument("config", type=Path)
    listing.add_argument("source", nargs="?", help="only this [[source]]")
    listing.add_argument("--since", type=cli_time, help="tests completed at or after this time")
    listing.add_argument("--until", type=cli_time, help="tests completed before this time")


def _channel(source: SourceConfig, name: str) -> tuple[str, str]:
    """(role, unit) of a channel named as `--channel`; LookupError naming the known ones."""
    role = part75_role(name)
    channels = source.channels()
    if role not in channels:
        known = ", ".join(r.removeprefix("pollutant:") for r in channels if r not in ("h2o", "temperature", "pressure"))
        raise LookupError(f"--channel {name!r}: source {source.id} has no such channel (known: {known})")
    return role, channels[role].unit


def _span(source: SourceConfig, args: argparse.Namespace) -> float:
    """--span, else the channel's span in [source.part75]."""
    span: float | None = args.span
    if span is None and source.part75 is not None:
        span = source.part75.span.get(args.channel)
    if span is None:
        raise Part75LogError(f"--span: no [source.part75] span for {args.channel}; give --span")
    return span


def run_cal_test_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    command = args.cal_test_command
    source: SourceConfig | None = None
    try:
        if args.source is not None:
            source = find_source(config.sources, args.source)
        role, unit = ("", "") if command == "list" or source is None else _channel(source, args.channel)
    except LookupError as error:
        print(f"cal-test {command}: {error}", file=sys.stderr)
        return 1
    zones: dict[str, tzinfo] = {s.id: s.zone for s in config.sources}
    log = Part75Log(config.gateway.state)
    try:
        if command != "list":
            assert source is not None
            now = datetime.now(UTC)
            unit = getattr(args, "unit", None) or unit
            try:
                if command == "add":
                    span = _span(source, args)
                    test: DailyCalibration | Linearity | Rata = log.add_daily(
                        source.id, role, at=args.at, span=span, unit=unit, zero=args.zero, high=args.high,
                        by=args.by, why=args.why, now=now,
                    )  # fmt: skip
                elif command == "linearity":
                    test = log.add_linearity(
                        source.id, role, at=args.at, unit=unit, levels=args.level, by=args.by, why=args.why, now=now
                    )
                else:
                    test = log.add_rata(source.id, role, at=args.at, runs=args.run, by=args.by, why=args.why, now=now)
            except Part75LogError as error:
                print(f"cal-test {command}: {error}", file=sys.stderr)
                return 1
            print(f"recorded {format_test(test, zones.get(source.id, UTC))}")
            return 0
        tests = log.tests(args.source, start=args.since, end=args.until)
    finally:
        log.close()
    every: list[DailyCalibration | Linearity | Rata] = [*tests.daily, *tests.linearity, *tests.ratas]
    every.sort(key=lambda t: (t.at, t.id))
    if not every:
        print("no tests")
    for item in every:
        print(format_test(item, zones.get(item.source, UTC)))
    return 0


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="minutes").replace("+00:00", "Z")


def format_test(test: DailyCalibration | Linearity | Rata, zone: tzinfo) -> str:
    """One line: what, when (UTC and local), the result with its numbers, who and why."""
    channel = test.role.removeprefix("pollutant:")
    when = f"{_z(test.at)} ({test.at.astimezone(zone):%Y-%m-%d %H:%M} local)"
    if isinstance(test, DailyCalibration):
        zero, high = test.levels()
        unit = "% vol" if channel in ("o2", "co2") else "% of span"
        what = (
            f"daily calibration {channel} span {test.span:g} {test.unit}: zero {zero.error:.2f} {unit}, "
            f"upscale {high.error:.2f} {unit} -> {'PASS' if test.passed else 'FAIL (out of control)'}"
        )
    elif isinstance(test, Linearity):
        errors = ", ".join(f"{e:.2f} %" for e, _ in test.errors())
        what = f"linearity {channel}: {errors} -> {'PASS' if test.passed else 'FAIL (out of control)'}"
    else:
        what = (
            f"RATA {channel}: {len(test.runs)} runs, RA {test.relative_accuracy:.2f} %, d̄ {test.mean_difference:.4g}, "
            f"cc {test.confidence_coefficient:.4g}, BAF {test.bias_adjustment_factor:.3f} -> "
            f"{'PASS' if test.passed else 'FAIL (out of control)'}"
        )
    recorded = f" at {_z(test.recorded_at)}" if test.recorded_at is not None else ""
    return f"#{test.id} {test.source} {when} {what}; by {test.by}{recorded}: {test.why}"
