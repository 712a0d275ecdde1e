"""A report from the store: rollups read, recomputed from raw readings for the reproducibility check
(docs/regulatory-basis.md §7), and the pure builder (gateway.mrv.report) run over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.mrv.config import SourceConfig, find_source, source_input
from gateway.mrv.operating_log import OperatingLog
from gateway.mrv.part75 import Part75Tests
from gateway.mrv.part75_log import LOOKBACK as PART75_LOOKBACK
from gateway.mrv.part75_log import Part75Log
from gateway.mrv.qa_checks import QaCheckLog
from gateway.mrv.report import (
    SIGNAL_ROLE,
    TOTALS_TOLERANCE_T,
    ConfigRecord,
    MrvReport,
    QaInput,
    Qal3Component,
    QaLogEntry,
    Reproducibility,
    RevisionEntry,
    SourceInput,
    build_report,
    build_report_with_rows,
    canonical_rules,
    config_hash,
    totals_difference,
)
from gateway.mrv.retention import raw_kept_from
from gateway.mrv.rollup import (
    Aggregate,
    Period,
    RawSample,
    base_aggregates_from_samples,
    base_duration,
    day_bounds,
    floor_base,
    month_bounds,
    year_bounds,
)
from gateway.stores import SqliteStore, Store, open_store
from gateway.stores.base import Revision

log = logging.getLogger(__name__)

HISTORY_HOURS = 8760
"""Part 75 looks back over the previous 8,760 hours for PMA and lookback values (docs/regulatory-basis.md §4)."""


class ReportError(GatewayError):
    """A report cannot be produced or delivered; the message says what and where."""


@dataclass(frozen=True)
class ProducedReport:
    report: MrvReport
    hourly_header: list[str]
    hourly_rows: list[list[object]]
    inputs: SourceInput | None = None
    """what the report was computed with (the PDF's charts standardise with it)"""

    @property
    def basename(self) -> str:
        period = self.report.period
        suffix = f"{period.year}" if period.month is None else f"{period.year}-{period.month:02d}"
        return f"{self.report.source}-{suffix}"


def canonical_config(source: SourceConfig, inputs: SourceInput) -> dict[str, Any]:
    """What produced the numbers: the source table, rule sets, §2 factors, and the agent's instruments/profiles."""
    document: dict[str, Any] = {
        "source": source.model_dump(mode="json", exclude={"agent_config"}),
        **canonical_rules(inputs),
        "agent": None,
    }
    if source.agent_config is not None:
        document["agent"] = _agent_document(source.agent_config, source.instruments())
    return document


def _agent_document(path: Path, instruments: set[str]) -> dict[str, Any]:
    """The agent config's instruments of this source, each with its parsed device profile."""
    try:
        agent = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ReportError(f"agent_config {path}: {error}") from error
    found: dict[str, Any] = {"file": path.name, "agent": agent.get("agent", {}).get("id"), "instruments": {}}
    for table in agent.get("instrument", []):
        if table.get("id") not in instruments:
            continue
        entry = {key: value for key, value in table.items() if key not in ("host", "port")}
        profile_path = path.parent / str(table.get("profile", ""))
        try:
            entry["profile_document"] = tomllib.loads(profile_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ReportError(f"agent_config {path}: profile {profile_path}: {error}") from error
        found["instruments"][table["id"]] = entry
    return found


def _by_role(inputs: SourceInput, aggregates: Sequence[Aggregate]) -> dict[str, list[Aggregate]]:
    """The source's aggregates by channel role, and its operating-state signals by SIGNAL_ROLE + key (a series
    can be both: the flue-gas temperature channel as a start-up criterion)."""
    roles: dict[tuple[str, str], list[str]] = {}
    for channel in inputs.channels:
        roles.setdefault((channel.instrument, channel.parameter), []).append(channel.role)
    if inputs.operating is not None:
        for key in inputs.operating.signal_keys():
            instrument, parameter = key.split("/", 1)
            roles.setdefault((instrument, parameter), []).append(SIGNAL_ROLE + key)
    grouped: dict[str, list[Aggregate]] = {role: [] for names in roles.values() for role in names}
    for aggregate in aggregates:
        for role in roles.get((aggregate.instrument, aggregate.parameter), ()):
            grouped[role].append(aggregate)
    return grouped


@contextlib.contextmanager
def _bulk() -> Iterator[None]:
    """No cyclic GC while millions of short-lived objects are built (it rescans them all, again and again:
    measured 3x slower on a year of raw data); reference counting still frees them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


RAW_CHECK_TASKS_PER_WORKER = 4
"""The raw-data check's days are cut into this many runs of consecutive days per worker process, handed out as
workers come free: a worker slowed by the machine's other load takes fewer, and a period whose data sit in a
few weeks (a report of the current year) still spreads over every worker."""


def raw_check_days(start: datetime, end: datetime, zone: tzinfo, base: Period) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at each local midnight, the raw-data check's unit of reading: one day of one series at a
    time. A cut falls on the start of a `base` period (a local midnight floored to it: a zone offset of 5:45
    would otherwise split an hour between two days), so no base period is ever recomputed from half its data."""
    spans = []
    chunk = start
    while chunk < end:
        day = chunk.astimezone(zone).date()
        cut = chunk
        while cut <= chunk:
            day += timedelta(days=1)
            cut = floor_base(day_bounds(day, zone)[0], base)
        chunk_end = min(cut, end)
        spans.append((chunk, chunk_end))
        chunk = chunk_end
    return spans


def _coarsest_base(inputs: SourceInput) -> Period:
    return max((c.rules.base for c in inputs.channels), key=base_duration, default=inputs.base)


async def _recompute_spans(
    store: Store, inputs: SourceInput, spans: Sequence[tuple[datetime, datetime]]
) -> tuple[dict[str, list[Aggregate]], int]:
    """Base-period rollups of the source's channels straight from the raw readings, one series of one span (a
    day) at a time: memory holds a day of one series (and the next one, being read), never a month.

    The next series' query is already running while this one is computed (the store works in its own thread or
    server), so the store and the computation overlap.
    """
    wanted = {(c.instrument, c.parameter): c for c in inputs.channels}  # a series two channels name goes to one
    result: dict[str, list[Aggregate]] = {c.role: [] for c in inputs.channels}
    count = 0
    jobs = [(span, series) for span in spans for series in wanted]
    if not jobs:
        return result, count

    def query(job: tuple[tuple[datetime, datetime], tuple[str, str]]) -> asyncio.Future[Sequence[RawSample]]:
        (start, end), (instrument, parameter) = job
        if isinstance(store, SqliteStore):  # plain tuples: a third of the CPU of building StoredReadings
            return asyncio.ensure_future(
                store.query_series(site=inputs.site, instrument=instrument, parameter=parameter, start=start, end=end)
            )
        return asyncio.ensure_future(
            store.query(site=inputs.site, instrument=instrument, parameter=parameter, start=start, end=end)
        )

    with _bulk():
        pending = query(jobs[0])
        try:
            for index, (_, series) in enumerate(jobs):
                samples = await pending
                if index + 1 < len(jobs):
                    pending = query(jobs[index + 1])
                channel = wanted[series]
                count += len(samples)
                result[channel.role] += base_aggregates_from_samples(samples, channel.rules)
                del samples
                await asyncio.sleep(0)  # let the next query proceed
        except BaseException:
            pending.cancel()
            raise
    return result, count


def _recompute_worker(
    store_url: str, inputs: SourceInput, spans: Sequence[tuple[datetime, datetime]]
) -> tuple[dict[str, list[Aggregate]], int]:
    """In a worker process: open the store by its URL and recompute these spans."""

    async def run() -> tuple[dict[str, list[Aggregate]], int]:
        async with open_store(store_url) as store:
            return await _recompute_spans(store, inputs, spans)

    return asyncio.run(run())


async def _recompute_from_raw(
    store: Store, store_url: str | None, inputs: SourceInput, start: datetime, end: datetime, *, workers: int
) -> tuple[dict[str, list[Aggregate]], int]:
    """The period's base-period rollups from raw data, day by day; the days split over `workers` processes
    when > 1.

    Processes, not threads: the rollup arithmetic is Python and holds the GIL. Each worker opens the store
    itself (SQLite readers work beside the writer in WAL mode; InfluxDB takes parallel queries).
    """
    spans = raw_check_days(start, end, inputs.zone, _coarsest_base(inputs))
    if workers <= 1 or store_url is None or len(spans) < 2:
        return await _recompute_spans(store, inputs, spans)
    workers = min(workers, len(spans))
    tasks = min(len(spans), workers * RAW_CHECK_TASKS_PER_WORKER)
    shares = [spans[i * len(spans) // tasks : (i + 1) * len(spans) // tasks] for i in range(tasks)]
    loop = asyncio.get_running_loop()
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            parts = await asyncio.gather(
                *(loop.run_in_executor(pool, _recompute_worker, store_url, inputs, share) for share in shares)
            )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    except (BrokenProcessPool, RuntimeError) as error:
        # Spawned workers import the caller's __main__: a script without an `if __name__ == "__main__":` guard
        # cannot start them. The check still runs, in this process.
        log.warning("raw-data check: worker processes failed (%s); recomputing in this process", error)
        return await _recompute_spans(store, inputs, spans)
    merged: dict[str, list[Aggregate]] = {c.role: [] for c in inputs.channels}
    for part, _ in parts:  # in time order: the shares are consecutive, and gather keeps their order
        for role, items in part.items():
            merged[role] += items
    return merged, sum(count for _, count in parts)


def _differing(stored: Mapping[str, Sequence[Aggregate]], fresh: Mapping[str, Sequence[Aggregate]]) -> tuple[int, int]:
    compared = differing = 0
    for role, items in fresh.items():
        old = {a.start: a for a in stored.get(role, ())}
        for aggregate in items:
            compared += 1
            before = old.pop(aggregate.start, None)
            same = before is not None and (before.value, before.valid, before.n_valid, before.n_maintenance) == (
                aggregate.value,
                aggregate.valid,
                aggregate.n_valid,
                aggregate.n_maintenance,
            )
            differing += not same
        differing += len(old)  # stored rollups with no raw data behind them
        compared += len(old)
    return compared, differing


async def produce_report(
    config: GatewayConfig,
    store: Store,
    source_id: str,
    *,
    year: int,
    month: int | None = None,
    now: datetime | None = None,
    check_raw: bool = True,
    workers: int | None = None,
) -> ProducedReport:
    """Build the report of a source for a year or a month from the store's rollups, checked against raw data.

    `workers`: processes for the raw-data check (default: 1 for a month, up to 2 cores for a year). They are
    spawned, so a calling script needs the usual `if __name__ == "__main__":` guard (else: one process).
    """
    try:
        source = find_source(config.sources, source_id)
    except LookupError as error:
        raise ReportError(str(error)) from None
    if month is not None and not 1 <= month <= 12:
        raise ReportError(f"month {month} is not in 1..12")
    inputs = source_input(source, config.rollup.resolved_rule_sets(), config.rollup.resolved_compliance())
    zone = inputs.zone
    start, end = month_bounds(year, month, zone) if month else year_bounds(year, zone)
    stored = await store.query_aggregates(period=inputs.base, site=inputs.site, start=start, end=end)
    aggregates = _by_role(inputs, stored)
    history: dict[str, list[Aggregate]] = {}
    if any(c.substitution and c.substitution.method.value == "part75" for c in inputs.channels):
        before = await store.query_aggregates(
            period=inputs.base, site=inputs.site, start=start - timedelta(hours=HISTORY_HOURS), end=start
        )
        history = _by_role(inputs, before)
    canonical = canonical_config(source, inputs)
    record = ConfigRecord(sha256=config_hash(canonical), canonical=canonical)
    generated_at = (now or datetime.now(UTC)).astimezone(UTC)
    operating_log = OperatingLog(config.gateway.state)
    try:
        manual = operating_log.entries(source.id, start=start - timedelta(hours=HISTORY_HOURS), end=end)
    finally:
        operating_log.close()
    part75_tests = _part75_tests(config, source, start, end)
    qa = qa_input(config, source, end)
    channels = {(c.instrument, c.parameter) for c in inputs.channels}
    revisions = [
        _revision_entry(r)
        for r in await store.query_revisions(site=inputs.site, start=start, end=end)
        if (r.reading.instrument, r.reading.parameter) in channels
    ]
    check_start = start
    checking: asyncio.Future[tuple[dict[str, list[Aggregate]], int]] | None = None
    if check_raw:
        if workers is None:
            workers = 1 if month is not None else min(2, os.cpu_count() or 1)
        url = None if ":memory:" in config.store.url else config.store.url
        # Raw data past its retention are gone (or going): those periods' stored rollups are the record.
        kept_from = await raw_kept_from(store, generated_at)
        check_start = start if kept_from is None else min(max(start, kept_from), end)
        # started first: its worker processes recompute while this one builds the report from the stored rollups
        checking = asyncio.ensure_future(_recompute_from_raw(store, url, inputs, check_start, end, workers=workers))
        await asyncio.sleep(0)  # the task spawns its workers and hands them the days before the build holds the loop
    try:
        report, header, rows = build_report_with_rows(
            inputs,
            year=year,
            month=month,
            aggregates=aggregates,
            history=history,
            config=record,
            generated_at=generated_at,
            revisions=revisions,
            manual=manual,
            part75_tests=part75_tests,
            qa=qa,
        )
    except BaseException:
        if checking is not None:
            checking.cancel()
            with contextlib.suppress(BaseException):
                await checking
        raise
    if checking is not None:
        fresh, raw_count = await checking
        checked = {role: [a for a in items if a.start >= check_start] for role, items in aggregates.items()}
        compared, differing = _differing(checked, fresh)
        note = ""
        if check_start > start:
            for role, items in aggregates.items():
                fresh[role] = [a for a in items if a.start < check_start] + fresh.get(role, [])
            note = f"raw data expired before {_z(check_start)}; totals from stored rollups for the " + (
                "whole period" if check_start >= end else "periods before it, recomputed from raw data after it"
            )
        for role, items in aggregates.items():  # operating-state signals: as stored (they decide states, not mass)
            if role.startswith(SIGNAL_ROLE):
                fresh[role] = list(items)
        recomputed = build_report(
            inputs,
            year=year,
            month=month,
            aggregates=fresh,
            history=history,
            config=record,
            generated_at=generated_at,
            manual=manual,
            part75_tests=part75_tests,
            qa=qa,
        )
        totals = {t.name: t.total_t for t in recomputed.totals}
        difference = totals_difference(report.totals, totals)
        check = Reproducibility(
            method="base-period rollups recomputed from the stored raw readings with the same rules; totals rebuilt "
            "and compared with the reported ones",
            raw_readings=raw_count,
            periods_compared=compared,
            periods_differing=differing,
            recomputed_totals_t=totals,
            max_difference_t=difference,
            tolerance_t=TOTALS_TOLERANCE_T,
            matches=difference <= TOTALS_TOLERANCE_T and differing == 0,
            raw_expired_before=check_start if check_start > start else None,
            note=note,
        )
        warnings = list(report.warnings)
        if not check.matches:
            warnings.append(
                f"reproducibility check failed: {differing} stored periods differ from the raw data, totals by up to "
                f"{difference:g} t; run `cems-gateway rollup recompute` for the period"
            )
        report = report.model_copy(update={"reproducibility": check, "warnings": warnings})
    return ProducedReport(report, header, rows, inputs)


def _part75_tests(config: GatewayConfig, source: SourceConfig, start: datetime, end: datetime) -> Part75Tests | None:
    """The source's Part 75 QA tests a report of [start, end) uses (None: no [source.part75])."""
    if source.part75 is None:
        return None
    log = Part75Log(config.gateway.state)
    try:
        return log.tests(source.id, start=start - PART75_LOOKBACK, end=end)
    finally:
        log.close()


def qa_input(config: GatewayConfig, source: SourceConfig, end: datetime) -> QaInput | None:
    """[source.qal3] and every check of its components before `end` from the calibration-check log (the charts
    need their history; the log keeps at most MAX_CHECKS_PER_COMPONENT per component)."""
    if source.qal3 is None:
        return None
    checks_log = QaCheckLog(config.gateway.state)
    try:
        recorded = checks_log.checks(source.id, end=end)
    finally:
        checks_log.close()
    qal3 = source.qal3
    return QaInput(
        components=tuple(Qal3Component(c.instrument, c.parameter, qal3.spec(c)) for c in qal3.component),
        checks=tuple(QaLogEntry(r.id, r.instrument, r.parameter, r.result(), r.origin, r.by, r.why) for r in recorded),
        flag_out_of_control=qal3.flag_out_of_control,
        max_check_interval=(
            None if qal3.max_check_interval_days is None else timedelta(days=qal3.max_check_interval_days)
        ),
    )


def _revision_entry(revision: Revision) -> RevisionEntry:
    r = revision.reading
    return RevisionEntry(
        id=revision.id,
        agent=r.agent,
        instrument=r.instrument,
        parameter=r.parameter,
        ts_utc=r.ts,
        value=r.value,
        unit=r.unit,
        quality=r.quality.value,
        status=r.status,
        state=revision.state.value,
        batch_seq=revision.batch_seq,
        batch_sent_at=revision.batch_sent_at,
        received_at=revision.received_at,
        decided_by=revision.decided_by,
        decided_why=revision.decided_why,
        decided_at=revision.decided_at,
        superseded_by=revision.superseded_by,
    )


def _z(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
