"""Analyzer QA findings as alerts: a new QAL2 due (EN 14181:2014 valid calibration range check) and a Part 75
daily calibration error test failed or overdue (40 CFR 75 App. B §2.1.4-2.1.5).

These conditions are not in any one batch: they come from the hourly data of weeks (the VCR check) or from tests
people enter (gateway/mrv/part75_log.py). So a task of the gateway checks them now and then and hands the results to
the alert engine (`AlertEngine.on_qa`), which fires and resolves them like every other alert (rules `qa-qal2-due`
and `qa-part75-calibration`, built in whenever alerts are on: gateway/alerts/builtin.py).

- Part 75: every `interval` (10 min), from the source's entered tests.
- VCR: every `vcr_every` (1 h), from the year-to-date report of each source with a QAL2 function and a VCR,
  built as `cems-gateway report` builds it, without the raw-data check: the alert says what the report says.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from gateway.alerts.builtin import PART75_RULE, QAL2_RULE
from gateway.alerts.engine import AlertEngine
from gateway.alerts.rules import QaFinding
from gateway.config import GatewayConfig
from gateway.mrv.config import SourceConfig, part75_role
from gateway.mrv.part75 import daily_calibration_due
from gateway.mrv.part75_log import Part75Log
from gateway.mrv.report_production import ReportError, produce_report
from gateway.stores import Store, StoreError

__all__ = ["PART75_RULE", "QAL2_RULE", "QaAlerts"]

log = logging.getLogger(__name__)

DAILY_TESTS_BACK = timedelta(days=30)
"""Part 75 tests read per check: the last daily test of a month back is enough to say whether one is due."""


def _has_vcr(source: SourceConfig) -> bool:
    return any(c.qal2 is not None and c.qal2.vcr is not None for c in source.channels().values())


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

    def part75_findings(self, now: datetime) -> list[QaFinding]:
        findings = []
        sources = [s for s in self.config.sources if s.part75 is not None]
        if not sources:
            return []
        tests = Part75Log(self.config.gateway.state)
        try:
            for source in sources:
                assert source.part75 is not None
                spec = source.part75.spec()
                daily = tests.tests(source.id, start=now - DAILY_TESTS_BACK, end=now + timedelta(seconds=1)).daily
                for name in sorted(source.part75.span):
                    firing, since, detail = daily_calibration_due(spec, part75_role(name), daily, now)
                    findings.append(QaFinding(PART75_RULE, source.site, source.id, name, firing, detail, since))
        finally:
            tests.close()
        return findings

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
        findings = await asyncio.to_thread(self.part75_findings, now)
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
