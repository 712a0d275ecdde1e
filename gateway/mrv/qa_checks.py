"""The calibration-check log: zero and span check results per component, captured from the analyzer's check mode
or entered by an operator, and `cems-gateway qa-check add|list|capture` (EN 14181:2014 §7 QAL3;
docs/regulatory-basis.md §8).

- Captured: an analyzer in its zero/span check flags its readings `check_function` (NAMUR NE107, from its status
  bits, edge_agent/quality.py). A run of such readings of a component is one check window; the reading at its
  end (the analyzer settled on the check gas) is the check's response (EN 17255-2: the data acquisition system
  records component, reference, response, error and time). Zero or span: from the status word's bits when
  `zero_bit`/`span_bit` are configured, else the check gas nearest to the response. A window counts once a normal
  reading has followed it (it has ended); capturing again finds the same checks and records nothing new.
- Entered: `qa-check add` with who and why, e.g. a manual check, or the check after an adjustment (`--adjusted`,
  which restarts the control charts, gateway/mrv/qal3.py).

Kept in the gateway's state file (SQLite, [gateway] state) like the operating log (gateway/mrv/operating_log.py):
rows are never changed; the oldest of a component beyond MAX_CHECKS_PER_COMPONENT are pruned (counted), which at
five checks a day is more than ten years of checks.

`QaWatch` runs in the gateway: every interval it captures the recent windows from the store, evaluates each
component's chart and tells the alert engine (rule qal3-out-of-control) whether it is out of control.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, Metric

from aua_contract import Quality
from gateway.alerts.engine import AlertEngine
from gateway.alerts.state import Level, Observation
from gateway.cli_time import cli_time
from gateway.config import GatewayConfig
from gateway.mrv.config import Qal3ComponentConfig, Qal3Config, SourceConfig, find_source
from gateway.mrv.qal3 import ChartPoint, CheckKind, CheckResult, evaluate, out_of_control_periods
from gateway.state_file import StateFile
from gateway.stores import SqliteStore, open_store
from gateway.stores.base import Store, StoredReading
from gateway.stores.sqlite import SeriesReading
from gateway.time_ns import from_ns, to_ns

__all__ = [
    "MAX_CHECKS_PER_COMPONENT",
    "QA_WATCH_LOOKBACK",
    "CapturedCheck",
    "QaCheckError",
    "QaCheckLog",
    "QaWatch",
    "RecordedCheck",
    "add_qa_check_commands",
    "capture",
    "checks_from_readings",
    "run_qa_check_command",
]

log = logging.getLogger(__name__)

MAX_CHECKS_PER_COMPONENT: Final = 20_000
MAX_WINDOW: Final = timedelta(hours=2)
"""A check window longer than this is split there (a stuck check mode is not one check)."""
WINDOW_GAP: Final = timedelta(minutes=15)
"""Readings further apart than this are not one window."""
QA_WATCH_LOOKBACK: Final = MAX_WINDOW + timedelta(minutes=5)
"""How far back each pass of the gateway's watch looks: a whole window and the pass interval."""
CATCH_UP: Final = timedelta(days=7)
"""The watch's first pass looks back to the last captured check, at most this far (older: `qa-check capture`)."""
MAX_BY: Final = 100
MAX_WHY: Final = 2000
ORIGINS: Final = ("auto", "manual")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS qa_check (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    instrument TEXT NOT NULL,
    parameter TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('zero', 'span')),
    at_ns INTEGER NOT NULL,
    reference REAL NOT NULL,
    reading REAL NOT NULL,
    adjusted INTEGER NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('auto', 'manual')),
    window_start_ns INTEGER,
    by TEXT NOT NULL,
    why TEXT NOT NULL,
    recorded_ns INTEGER NOT NULL,
    UNIQUE (source, instrument, parameter, kind, at_ns)
);
CREATE INDEX IF NOT EXISTS qa_check_component ON qa_check (source, instrument, parameter, at_ns);
CREATE TRIGGER IF NOT EXISTS qa_check_no_update BEFORE UPDATE ON qa_check
BEGIN SELECT RAISE(ABORT, 'qa_check rows are never changed: record a new check'); END;
"""


class QaCheckError(ValueError):
    """A check that cannot be recorded; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class CapturedCheck:
    """A check found in the readings: the window of check_function readings and its last reading."""

    instrument: str
    parameter: str
    kind: CheckKind
    window_start: datetime
    at: datetime
    reference: float
    reading: float


@dataclass(frozen=True, slots=True)
class RecordedCheck:
    id: int
    source: str
    instrument: str
    parameter: str
    kind: CheckKind
    at: datetime
    reference: float
    reading: float
    adjusted: bool
    origin: str
    window_start: datetime | None
    by: str
    why: str
    recorded_at: datetime

    @property
    def component(self) -> str:
        return f"{self.instrument}/{self.parameter}"

    def result(self) -> CheckResult:
        return CheckResult(self.at, self.kind, self.reference, self.reading, self.adjusted)


def _kind(component: Qal3ComponentConfig, reading: StoredReading | SeriesReading) -> CheckKind | None:
    """Zero or span of one check_function reading: by its status bits when configured, else None (decided by
    the gas nearest to the window's last reading)."""
    if component.zero_bit is None or component.span_bit is None:
        return None
    status = reading.status or 0
    if status >> component.zero_bit & 1:
        return CheckKind.ZERO
    if status >> component.span_bit & 1:
        return CheckKind.SPAN
    return None


def checks_from_readings(
    readings: Sequence[StoredReading | SeriesReading], component: Qal3ComponentConfig, *, closed_only: bool = True
) -> list[CapturedCheck]:
    """The checks in one component's readings (any order): each run of check_function readings (of one kind when
    the status bits say it) is a window; its last reading with a value is the response. `closed_only`: a window
    still running at the end of `readings` is left for later."""
    ordered = sorted(
        (r for r in readings if (r.instrument, r.parameter) == (component.instrument, component.parameter)),
        key=lambda r: r.ts,
    )
    by_bits = component.zero_bit is not None
    found: list[CapturedCheck] = []
    window: list[StoredReading | SeriesReading] = []

    def close() -> None:
        with_value = [r for r in window if r.value is not None and math.isfinite(r.value)]
        if not with_value:
            return
        last = with_value[-1]
        assert last.value is not None
        kind = _kind(component, last) if by_bits else None
        if kind is None:
            if by_bits:
                return  # check mode without a zero or span bit: some other function check
            nearer_zero = abs(last.value - component.zero_reference) <= abs(last.value - component.span_reference)
            kind = CheckKind.ZERO if nearer_zero else CheckKind.SPAN
        reference = component.zero_reference if kind is CheckKind.ZERO else component.span_reference
        found.append(
            CapturedCheck(component.instrument, component.parameter, kind, window[0].ts, last.ts, reference, last.value)
        )

    for reading in ordered:
        in_check = reading.quality is Quality.CHECK_FUNCTION
        if window:
            kind_changed = by_bits and in_check and _kind(component, reading) != _kind(component, window[-1])
            broken = reading.ts - window[-1].ts > WINDOW_GAP or reading.ts - window[0].ts > MAX_WINDOW
            if not in_check or kind_changed or broken:
                close()
                window = []
        if in_check:
            window.append(reading)
    if window and not closed_only:
        close()
    return found


class QaCheckLog(StateFile):
    def __init__(self, path: Path | str, *, max_per_component: int = MAX_CHECKS_PER_COMPONENT) -> None:
        super().__init__(path, _SCHEMA, synchronous="FULL")
        self.max_per_component = max_per_component
        self.pruned = 0
        """rows pruned by this process because a component had more than max_per_component"""

    def record(
        self,
        source: str,
        check: CheckResult,
        *,
        instrument: str,
        parameter: str,
        by: str,
        why: str,
        now: datetime,
        origin: str = "manual",
        window_start: datetime | None = None,
    ) -> RecordedCheck:
        """Append a check (QaCheckError naming the field when it is not acceptable, or when that component has a
        check of that kind at that time already); the component's oldest beyond the cap go in the same
        transaction."""
        by, why = by.strip(), why.strip()
        if origin not in ORIGINS:
            raise QaCheckError(f"origin {origin!r}: one of {', '.join(ORIGINS)}")
        if not by or len(by) > MAX_BY:
            raise QaCheckError(f"by: who records it, 1 to {MAX_BY} characters")
        if len(why) > MAX_WHY or (origin == "manual" and not why):
            raise QaCheckError(f"why: the reason, 1 to {MAX_WHY} characters")
        with self.transaction() as db:
            existing = db.execute(
                "SELECT id FROM qa_check WHERE source = ? AND instrument = ? AND parameter = ? AND kind = ? "
                "AND at_ns = ?",
                (source, instrument, parameter, check.kind.value, to_ns(check.at)),
            ).fetchone()
            if existing is not None:
                raise QaCheckError(
                    f"{instrument}/{parameter} has a {check.kind.value} check at {check.at.isoformat()} already "
                    f"(#{existing[0]})"
                )
            cursor = db.execute(
                "INSERT INTO qa_check (source, instrument, parameter, kind, at_ns, reference, reading, adjusted, "
                "origin, window_start_ns, by, why, recorded_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    source,
                    instrument,
                    parameter,
                    check.kind.value,
                    to_ns(check.at),
                    check.reference,
                    check.reading,
                    int(check.adjusted),
                    origin,
                    None if window_start is None else to_ns(window_start),
                    by,
                    why,
                    to_ns(now),
                ),
            )
            row_id = cursor.lastrowid
            assert row_id is not None
            pruned = db.execute(
                "DELETE FROM qa_check WHERE id IN (SELECT id FROM qa_check WHERE source = ? AND instrument = ? "
                "AND parameter = ? ORDER BY at_ns DESC, id DESC LIMIT -1 OFFSET ?)",
                (source, instrument, parameter, self.max_per_component),
            ).rowcount
        if pruned:
            self.pruned += pruned
            log.info("qa-check: pruned %d oldest checks of %s/%s/%s", pruned, source, instrument, parameter)
        return RecordedCheck(
            row_id,
            source,
            instrument,
            parameter,
            check.kind,
            check.at,
            check.reference,
            check.reading,
            check.adjusted,
            origin,
            window_start,
            by,
            why,
            now,
        )

    def record_captured(self, source: str, captured: Sequence[CapturedCheck], now: datetime) -> list[RecordedCheck]:
        """Record the captured checks not recorded yet (capturing the same window twice records it once)."""
        recorded = []
        for check in captured:
            try:
                recorded.append(
                    self.record(
                        source,
                        CheckResult(check.at, check.kind, check.reference, check.reading),
                        instrument=check.instrument,
                        parameter=check.parameter,
                        by="gateway",
                        why="captured from the analyzer's check mode",
                        now=now,
                        origin="auto",
                        window_start=check.window_start,
                    )
                )
            except QaCheckError:
                continue  # found before
        return recorded

    def checks(
        self,
        source: str,
        *,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[RecordedCheck]:
        """A source's checks (of one component) with `at` in [start, end), in time order."""
        query = (
            "SELECT id, source, instrument, parameter, kind, at_ns, reference, reading, adjusted, origin, "
            "window_start_ns, by, why, recorded_ns FROM qa_check WHERE source = ?"
        )
        args: list[Any] = [source]
        for column, value in (("instrument", instrument), ("parameter", parameter)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        if start is not None:
            query += " AND at_ns >= ?"
            args.append(to_ns(start))
        if end is not None:
            query += " AND at_ns < ?"
            args.append(to_ns(end))
        with self._lock:
            rows = self._db.execute(query + " ORDER BY at_ns, id", args).fetchall()
        return [
            RecordedCheck(
                row[0],
                row[1],
                row[2],
                row[3],
                CheckKind(row[4]),
                from_ns(row[5]),
                row[6],
                row[7],
                bool(row[8]),
                row[9],
                None if row[10] is None else from_ns(row[10]),
                row[11],
                row[12],
                from_ns(row[13]),
            )
            for row in rows
        ]


async def _component_readings(
    store: Store, site: str, component: Qal3ComponentConfig, start: datetime, end: datetime
) -> list[StoredReading | SeriesReading]:
    """One component's readings of [start, end); from SQLite as plain tuples (a year is millions of readings)."""
    series = {"site": site, "instrument": component.instrument, "parameter": component.parameter}
    if isinstance(store, SqliteStore):
        return list(await store.query_series(**series, start=start, end=end))
    return list(await store.query(**series, start=start, end=end))


async def capture(
    store: Store, checks_log: QaCheckLog, source: SourceConfig, *, start: datetime, end: datetime, now: datetime
) -> tuple[list[CapturedCheck], list[RecordedCheck]]:
    """Find the checks of the source's QAL3 components in the stored readings of [start, end) (a day at a time,
    so memory stays bounded) and record the new ones: (found, newly recorded)."""
    if source.qal3 is None:
        return [], []
    found: list[CapturedCheck] = []
    for component in source.qal3.component:
        carry: list[StoredReading | SeriesReading] = []
        day = start
        while day < end:
            upto = min(day + timedelta(days=1), end)
            readings = carry + await _component_readings(store, source.site, component, day, upto)
            found += checks_from_readings(readings, component, closed_only=True)
            # a window still running at the chunk's end is looked at again with the next chunk
            carry = []
            for reading in reversed(readings):
                if reading.quality is not Quality.CHECK_FUNCTION or readings[-1].ts - reading.ts > MAX_WINDOW:
                    break
                carry.append(reading)
            carry.reverse()
            day = upto
    recorded = await asyncio.to_thread(checks_log.record_captured, source.id, found, now)
    return found, recorded


def component_chart(
    qal3: Qal3Config, component: Qal3ComponentConfig, checks: Sequence[RecordedCheck]
) -> list[ChartPoint]:
    return evaluate([c.result() for c in checks], qal3.spec(component))


def qal3_observation(points: Sequence[ChartPoint]) -> Observation | None:
    """The alert evidence of a component's chart: TRIGGER while its last out-of-control period is open."""
    if not points:
        return None
    last = points[-1]
    periods = out_of_control_periods(points)
    if periods and periods[-1].end is None:
        signal = periods[-1].signals[-1]
        detail = f"{signal.kind.value} {signal.statistic} {signal.value:.4g} > {signal.limit:.4g}: {signal.action}"
        return Observation(Level.TRIGGER, last.at, periods[-1].start, signal.value, detail)
    return Observation(Level.CLEAR, last.at, last.at, None, f"in control ({last.status.value})")


class QaWatch:
    """Captures the checks of every source with [source.qal3] as they end, and tells the alert engine."""

    def __init__(self, config: GatewayConfig, store: Store, alerts: AlertEngine | None, *, lookback: timedelta) -> None:
        self.sources = [s for s in config.sources if s.qal3 is not None]
        self.store = store
        self.alerts = alerts
        self.lookback = lookback
        self.log = QaCheckLog(config.gateway.state)
        self.captured = 0
        """checks captured from readings by this process"""
        self.failed_passes = 0
        self._started = False

    def collect(self) -> Iterator[Metric]:
        """Prometheus collector (registered on the gateway's /metrics registry): what the watch captured and the
        log pruned to keep its bound."""
        yield CounterMetricFamily(
            "aua_gateway_qa_checks_captured", "zero/span checks captured from readings", value=self.captured
        )
        yield CounterMetricFamily(
            "aua_gateway_qa_checks_pruned",
            f"oldest checks pruned beyond {self.log.max_per_component} per component",
            value=self.log.pruned,
        )
        yield CounterMetricFamily(
            "aua_gateway_qa_watch_failures",
            "capture passes that failed (tried again next time)",
            value=self.failed_passes,
        )

    async def pass_once(self, now: datetime) -> int:
        """Capture the windows that ended in the last `lookback` (the first pass: since the last captured check,
        at most CATCH_UP back, so checks made while the gateway was down are found), then report each component's
        chart state."""
        recorded = 0
        first, self._started = not self._started, True
        for source in self.sources:
            qal3 = source.qal3
            assert qal3 is not None
            start = now - self.lookback
            if first:
                captured = [c.at for c in await asyncio.to_thread(self.log.checks, source.id) if c.origin == "auto"]
                start = max(min(start, max(captured, default=now) - self.lookback), now - CATCH_UP)
            _, new = await capture(self.store, self.log, source, start=start, end=now, now=now)
            recorded += len(new)
            for component in qal3.component:
                checks = await asyncio.to_thread(
                    self.log.checks, source.id, instrument=component.instrument, parameter=component.parameter
                )
                obs = qal3_observation(component_chart(qal3, component, checks))
                if obs is not None and self.alerts is not None and qal3.alert:
                    await self.alerts.on_qal3(source.site, component.instrument, component.parameter, obs, now)
        self.captured += recorded
        return recorded

    async def run(self, *, interval: float = 60.0) -> None:  # pragma: no cover - the loop around pass_once
        while True:
            try:
                await self.pass_once(datetime.now(UTC))
            except Exception as error:  # one bad pass must not stop the gateway; the next one tries again
                self.failed_passes += 1
                log.error("qa-check capture failed: %s; trying again in %.0f s", error, interval)
            await asyncio.sleep(interval)

    def close(self) -> None:
        self.log.close()


# -- CLI -----------------------------------------------------------------------------------------------------


def add_qa_check_commands(commands: Any) -> None:
    """`qa-check add|list|capture` under `cems-gateway`."""
    group = commands.add_parser(
        "qa-check", help="zero/span check results of the QAL3 components (EN 14181:2014 §7): add, list, capture"
    ).add_subparsers(dest="qa_command", required=True)
    add = group.add_parser("add", help="record a zero or span check (a manual check, or the one after an adjustment)")
    add.add_argument("config", type=Path)
    add.add_argument("source", help="[[source]] id")
    add.add_argument("--component", required=True, help="INSTRUMENT/PARAMETER of a [[source.qal3.component]]")
    add.add_argument("--kind", required=True, choices=[k.value for k in CheckKind])
    add.add_argument("--reading", required=True, type=float, help="the analyzer's response to the check gas")
    add.add_argument("--reference", type=float, help="the check gas's certified value (default: from the config)")
    add.add_argument("--at", type=cli_time, help="when (ISO 8601, no zone: UTC; default: now)")
    add.add_argument("--adjusted", action="store_true", help="recorded after adjusting the AMS: the charts restart")
    add.add_argument("--by", required=True, help="who records it")
    add.add_argument("--why", required=True, help="why, for the record")
    listing = group.add_parser("list", help="the checks, and each component's chart state")
    listing.add_argument("config", type=Path)
    listing.add_argument("source", help="[[source]] id")
    listing.add_argument("--component", help="only INSTRUMENT/PARAMETER")
    listing.add_argument("--since", type=cli_time, help="checks at or after this time")
    listing.add_argument("--until", type=cli_time, help="checks before this time")
    grab = group.add_parser("capture", help="find the checks in the stored readings of a span and record them")
    grab.add_argument("config", type=Path)
    grab.add_argument("source", help="[[source]] id")
    grab.add_argument("--from", dest="start", required=True, type=cli_time, help="ISO 8601 (no zone: UTC)")
    grab.add_argument("--to", dest="end", required=True, type=cli_time, help="exclusive; ISO 8601 (no zone: UTC)")


def _component(qal3: Qal3Config, text: str) -> Qal3ComponentConfig:
    instrument, _, parameter = text.partition("/")
    found = qal3.find(instrument, parameter)
    if found is None:
        known = ", ".join(f"{c.instrument}/{c.parameter}" for c in qal3.component)
        raise QaCheckError(f"--component {text!r}: not a [[source.qal3.component]] (known: {known})")
    return found


def run_qa_check_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    try:
        source = find_source(config.sources, args.source)
    except LookupError as error:
        print(error, file=sys.stderr)
        return 1
    if source.qal3 is None:
        print(f"qa-check: source {source.id} has no [source.qal3]", file=sys.stderr)
        return 1
    if args.qa_command == "capture":
        return asyncio.run(_capture_command(config, source, args.start, args.end))
    checks_log = QaCheckLog(config.gateway.state)
    try:
        if args.qa_command == "add":
            try:
                component = _component(source.qal3, args.component)
                kind = CheckKind(args.kind)
                reference = args.reference
                if reference is None:
                    reference = component.zero_reference if kind is CheckKind.ZERO else component.span_reference
                at = args.at or datetime.now(UTC)
                result = CheckResult(at, kind, reference, args.reading, args.adjusted)
                entry = checks_log.record(
                    source.id,
                    result,
                    instrument=component.instrument,
                    parameter=component.parameter,
                    by=args.by,
                    why=args.why,
                    now=datetime.now(UTC),
                )
            except (QaCheckError, ValueError) as error:
                print(f"qa-check add: {error}", file=sys.stderr)
                return 1
            print(f"recorded {format_check(entry)}")
            chart = component_chart(source.qal3, component, _component_checks(checks_log, source.id, component))
            print(format_state(component, chart))
            return 0
        try:
            components = [_component(source.qal3, args.component)] if args.component else source.qal3.component
        except QaCheckError as error:
            print(f"qa-check list: {error}", file=sys.stderr)
            return 1
        for component in components:
            every = _component_checks(checks_log, source.id, component)
            chart = component_chart(source.qal3, component, every)
            shown = [
                (check, point)
                for check, point in zip(every, chart, strict=True)
                if (args.since is None or check.at >= args.since) and (args.until is None or check.at < args.until)
            ]
            print(format_state(component, chart))
            for check, point in shown:
                print(f"  {format_check(check)} -> {point.status.value}")
    finally:
        checks_log.close()
    return 0


def _component_checks(checks_log: QaCheckLog, source: str, component: Qal3ComponentConfig) -> list[RecordedCheck]:
    return checks_log.checks(source, instrument=component.instrument, parameter=component.parameter)


async def _capture_command(config: GatewayConfig, source: SourceConfig, start: datetime, end: datetime) -> int:
    if end <= start:
        print(f"qa-check capture: --to {end.isoformat()} is not after --from {start.isoformat()}", file=sys.stderr)
        return 1
    store = open_store(config.store.url)
    await store.open()
    checks_log = QaCheckLog(config.gateway.state)
    try:
        found, recorded = await capture(store, checks_log, source, start=start, end=end, now=datetime.now(UTC))
    finally:
        checks_log.close()
        await store.close()
    print(f"found {len(found)} checks, recorded {len(recorded)} new")
    for entry in recorded:
        print(f"  {format_check(entry)}")
    return 0


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def format_check(check: RecordedCheck) -> str:
    adjusted = " (after adjustment)" if check.adjusted else ""
    return (
        f"#{check.id} {check.component} {check.kind.value} {_z(check.at)} reading {check.reading:g} reference "
        f"{check.reference:g} (d {check.reading - check.reference:+.4g}){adjusted} {check.origin} by {check.by}"
        + (f": {check.why}" if check.why else "")
    )


def format_state(component: Qal3ComponentConfig, chart: Sequence[ChartPoint]) -> str:
    where = f"{component.instrument}/{component.parameter}"
    if not chart:
        return f"{where}: no checks"
    periods = out_of_control_periods(chart)
    if periods and periods[-1].end is None:
        signal = periods[-1].signals[-1]
        return f"{where}: OUT OF CONTROL since {_z(periods[-1].start)}: {signal.statistic} — {signal.action}"
    return f"{where}: {chart[-1].status.value} ({len(chart)} checks)"
