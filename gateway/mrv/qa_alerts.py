"""Analyzer QA findings as alerts: a new QAL2 due (EN 14181:2014 valid calibration range check) and a Part 75
daily calibration error test failed or overdue (40 CFR 75 App. B §2.1.4-2.1.5).

These conditions are not in any one batch: they come from the hourly data of weeks (the VCR check) or from tests
people enter (gateway/mrv/part75_log.py). So a task of the gateway checks them now and then and hands the results to
the alert engine (`AlertEngine.on_qa`), which fires and resolves them like every other alert (rules `qa-qal2-due`
and `qa-part75-calibration`, built in whenever alerts are on: gateway/alerts/builtin.py).

- Part 75: every `interval` (10 min), from the source's entered tests and the unit's operating state over the hours
  since the last test (the manual log and the signals' rollups, as the report reads them): a window that ran out
  while the unit is off is not overdue, and after a restart the grace period comes first (40 CFR 75 App. B §2.1.5).
  Linearity checks and RATAs past their grace period (App. B §2.2-2.3) fire `qa-part75-calibration` too; one in its
  grace period, or due within `due_warning_days`, fires `qa-part75-due`. Their QA operating quarters are read from
  the start of the previous quarter; earlier quarters count as QA operating quarters, as the report counts them
  before its period.
- VCR: every `vcr_every` (1 h), from the year-to-date report of each source with a QAL2 function and a VCR,
  built as `cems-gateway report` builds it, without the raw-data check: the alert says what the report says.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from gateway.alerts.builtin import PART75_DUE_RULE, PART75_RULE, QAL2_RULE
from gateway.alerts.engine import AlertEngine
from gateway.alerts.rules import QaFinding
from gateway.config import GatewayConfig
from gateway.mrv.config import SourceConfig, part75_role, part75_spec
from gateway.mrv.operating_log import OperatingLog
from gateway.mrv.operating_state import derive_states, signal_values
from gateway.mrv.part75 import (
    Part75Spec,
    Part75Tests,
    daily_calibration_due,
    due_finding,
    quarter_of,
    quarter_start,
)
from gateway.mrv.part75_log import LOOKBACK as PART75_LOOKBACK
from gateway.mrv.part75_log import Part75Log
from gateway.mrv.report_production import ReportError, produce_report
from gateway.mrv.rollup import base_duration, base_starts
from gateway.stores import Store, StoreError

__all__ = ["PART75_RULE", "QAL2_RULE", "QaAlerts"]

log = logging.getLogger(__name__)

DAILY_TESTS_BACK = timedelta(days=30)
"""Part 75 tests read per check: the last daily test of a month back is enough to say whether one is due."""
CARRY_HOURS = 2
"""Trailing hours without an operating-state signal (not rolled up yet) that keep the unit's last known state."""


def _has_vcr(source: SourceConfig) -> bool:
    return any(c.qal2 is not None and c.qal2.vcr is not None for c in source.channels().values())


def spec_roles(spec: Part75Spec) -> set[str]:
    """The channels that need a daily calibration error test (a span in [source.part75])."""
    return {role for role, _ in spec.spans}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class QaAlerts:
    def __init__(
        self,
        config: GatewayConfig,
        store: Store,
        engine: AlertEngine,
        *,
        vcr_every: timedelta = timedelta(hours=1),
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.config = config
        self.store = store
        self.engine = engine
        self.vcr_every = vcr_every
        self.now = now
        self._vcr_at: datetime | None = None

    @staticmethod
    def needed(config: GatewayConfig) -> bool:
        """Whether any source has something to check."""
        return any(s.part75 is not None or _has_vcr(s) for s in config.sources)

    async def part75_findings(self, now: datetime) -> list[QaFinding]:
        findings = []
        for source in self.config.sources:
            spec = part75_spec(source)
            if spec is None or source.part75 is None:
                continue
            tests = await asyncio.to_thread(self._tests, source.id, now)
            daily = [t for t in tests.daily if t.at >= now - DAILY_TESTS_BACK]
            names = {part75_role(name): name for name in sorted(source.part75.span)}
            for role in [t.role for t in tests.linearity] + [t.role for t in tests.ratas]:
                names.setdefault(role, role.removeprefix("pollutant:"))
            lasts = [max((t.at for t in daily if t.role == role and t.at <= now), default=now) for role in names]
            # the hours the timelines need: from the oldest channel's last daily test, and the due dates from the
            # start of the previous quarter (before it: taken as operating, the report's strict reading)
            due_start = quarter_start(quarter_of(now, source.zone) - 1, source.zone)
            first = min([*lasts, due_start] if tests.linearity or tests.ratas else [*lasts, now])
            try:
                operating: dict[datetime, bool] | None = await self.operating_hours(source, first, now)
            except (StoreError, OSError, sqlite3.Error) as error:
                log.warning("QA alerts: the operating state of %s could not be read: %s", source.id, error)
                operating = None  # every hour taken as operating: the strict reading
            warn = timedelta(days=source.part75.due_warning_days)
            for role, name in names.items():
                firing, since, detail = False, None, ""
                if role in spec_roles(spec):
                    firing, since, detail = daily_calibration_due(spec, role, daily, now, operating=operating)
                due = due_finding(spec, tests, role, now, start=due_start, operating=operating or {},
                                  zone=source.zone, warn_before=warn)  # fmt: skip
                if due is not None and due.past_due:
                    since = (
                        due.past_due_since if not firing or since is None else min(since, due.past_due_since or since)
                    )
                    firing = True
                if due is not None:
                    detail = "; ".join(x for x in (detail, due.detail) if x)
                    findings.append(QaFinding(PART75_DUE_RULE, source.site, source.id, name, due.due_soon, due.detail))
                findings.append(QaFinding(PART75_RULE, source.site, source.id, name, firing, detail, since))
        return findings

    def _tests(self, source: str, now: datetime) -> Part75Tests:
        log = Part75Log(self.config.gateway.state)
        try:
            return log.tests(source, start=now - PART75_LOOKBACK, end=now + timedelta(seconds=1))
        finally:
            log.close()

    async def operating_hours(self, source: SourceConfig, start: datetime, now: datetime) -> dict[datetime, bool]:
        """Whether the unit operated in each clock hour from the hour of `start` to the hour of `now`, as the report
        decides it (docs/operating-state.md): the manual log, then the signals' base-period rollups. The newest
        hours may not be rolled up yet: up to CARRY_HOURS trailing hours without any signal keep the last known
        state (beyond that, taken as operating, as the report takes them)."""
        hour = timedelta(hours=1)
        first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + hour
        spec = source.operating.spec() if source.operating is not None else None
        base = self.config.rollup.resolved_rule_sets()[source.rule_set].base
        starts = base_starts(first, end, base)
        signals: dict[str, dict[datetime, float]] = {}
        for key in spec.signal_keys() if spec is not None else []:
            instrument, parameter = key.split("/", 1)
            rollups = await self.store.query_aggregates(
                period=base, site=source.site, instrument=instrument, parameter=parameter, start=first, end=end
            )
            signals[key] = signal_values(rollups)
        operating_log = OperatingLog(self.config.gateway.state)
        try:
            manual = await asyncio.to_thread(operating_log.entries, source.id, start=first, end=end)
        finally:
            operating_log.close()
        states = derive_states(spec, starts, signals, manual)
        known = [i for i, s in enumerate(states) if s.source != "assumed"]
        if known and len(states) - 1 - known[-1] <= CARRY_HOURS * (hour // base_duration(base)):
            states[known[-1] + 1 :] = [replace(s, state=states[known[-1]].state) for s in states[known[-1] + 1 :]]
        hours: dict[datetime, bool] = {}
        for state in states:
            at = state.start.replace(minute=0, second=0, microsecond=0)
            hours[at] = hours.get(at, False) or state.operating
        return hours

    async def vcr_findings(self, now: datetime) -> list[QaFinding]:
        findings = []
        for source in self.config.sources:
            if not _has_vcr(source):
                continue
            year = now.astimezone(source.zone).year
            try:
                produced = await produce_report(self.config, self.store, source.id, year=year, now=now, check_raw=False)
            except (ReportError, StoreError) as error:
                log.warning("QA alerts: the VCR check of %s could not run: %s", source.id, error)
                continue
            section = produced.report.calibration
            for function in section.functions if section is not None else []:
                if function.vcr is None:
                    continue
                detail = (
                    "; ".join(function.reasons)
                    if function.new_qal2_due
                    else f"{function.weeks} weeks checked, largest share above the VCR "
                    f"{function.max_week_percent or 0:.1f} %"
                )
                findings.append(
                    QaFinding(
                        QAL2_RULE,
                        source.site,
                        source.id,
                        function.name,
                        function.new_qal2_due,
                        f"QAL2 {function.qal2_id}, year {year}: {detail}",
                    )
                )
        return findings

    async def tick(self) -> list[QaFinding]:
        """One check: Part 75 always, the VCR when `vcr_every` has passed; the findings go to the engine."""
        now = self.now()
        findings = await self.part75_findings(now)
        if self._vcr_at is None or now - self._vcr_at >= self.vcr_every:
            self._vcr_at = now
            findings += await self.vcr_findings(now)
        if findings:
            await self.engine.on_qa(findings, now)
        return findings

    async def run(self, *, interval: float = 600.0) -> None:  # pragma: no cover - the loop around tick()
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("QA alerts: check failed; trying again in %.0f s", interval)
            await asyncio.sleep(interval)
