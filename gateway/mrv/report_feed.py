"""The scheduled feed: writes the monthly and annual reports on its own once a period has ended (plus a delay
for late data), and POSTs each JSON document to `[rollup.reports] post_url`, retrying until it is accepted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from gateway.config import GatewayConfig
from gateway.mrv.config import SourceConfig, source_input
from gateway.mrv.report_files import write_report_files
from gateway.mrv.report_production import produce_report
from gateway.mrv.rollup import month_bounds, year_bounds
from gateway.mrv.rollup_engine import RollupEngine
from gateway.state_file import StateFile
from gateway.stores import Store

log = logging.getLogger(__name__)


_FEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS report_feed (
    source     TEXT    NOT NULL,
    period     TEXT    NOT NULL,  -- 2024 or 2024-05
    json_path  TEXT    NOT NULL,
    written_ns INTEGER NOT NULL,
    posted_ns  INTEGER,           -- NULL until the POST was accepted (or when there is nothing to POST to)
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (source, period)
) WITHOUT ROWID;
"""


REPORT_FEED_KEEP_YEARS = 2
"""Rows of `report_feed` kept for periods of this many calendar years back (the feed needs only last year's)."""


@dataclass(frozen=True)
class FeedEvent:
    source: str
    period: str
    action: str
    """written, posted, post_failed"""
    detail: str = ""


class _FeedState(StateFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, _FEED_SCHEMA)

    def get(self, source: str, period: str) -> tuple[str, int | None] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT json_path, posted_ns FROM report_feed WHERE source = ? AND period = ?", (source, period)
            ).fetchone()
        return None if row is None else (str(row[0]), None if row[1] is None else int(row[1]))

    def written(self, source: str, period: str, json_path: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO report_feed (source, period, json_path, written_ns) VALUES (?, ?, ?, ?)",
                (source, period, json_path, time.time_ns()),
            )

    def forget_before(self, period: str) -> int:
        """Drop the rows of periods before `period` (a year, "2024"): the feed only ever looks at the last month
        and the last year, so older rows are history nobody reads (the report files themselves stay)."""
        with self._lock:
            return int(self._db.execute("DELETE FROM report_feed WHERE period < ?", (period,)).rowcount)

    def posted(self, source: str, period: str, *, error: str = "") -> None:
        with self._lock:
            if error:
                self._db.execute(
                    "UPDATE report_feed SET attempts = attempts + 1, last_error = ? WHERE source = ? AND period = ?",
                    (error, source, period),
                )
            else:
                self._db.execute(
                    "UPDATE report_feed SET attempts = attempts + 1, posted_ns = ?, last_error = '' "
                    "WHERE source = ? AND period = ?",
                    (time.time_ns(), source, period),
                )


def _due_periods(now: datetime, zone: Any, delay: timedelta) -> list[tuple[int, int | None]]:
    """The last complete month and year, once their end + delay has passed (local calendar)."""
    local = (now - delay).astimezone(zone)
    due: list[tuple[int, int | None]] = []
    year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
    due.append((year, month))
    due.append((local.year - 1, None))
    return due


class ReportFeed:
    """Writes each source's monthly and annual reports once the period is over, and POSTs their JSON.

    Restart-safe: what was written and posted is kept in the gateway state SQLite (table `report_feed`);
    a failed POST is tried again on the next tick. Only the most recent month and year are produced (no
    backfill of older periods), and a period without any rollups is skipped.
    """

    def __init__(
        self,
        config: GatewayConfig,
        store: Store,
        *,
        engine: RollupEngine | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.engine = engine
        self.now = now
        self.transport = transport
        self.state = _FeedState(config.gateway.state)

    def close(self) -> None:
        self.state.close()

    async def tick(self) -> list[FeedEvent]:
        events: list[FeedEvent] = []
        settings = self.config.rollup.reports
        now = self.now()
        for source in self.config.sources:
            for year, month in _due_periods(now, source.zone, timedelta(hours=settings.delay_hours)):
                label = f"{year}" if month is None else f"{year}-{month:02d}"
                state = await asyncio.to_thread(self.state.get, source.id, label)
                if state is None:
                    path = await self._write(source, year, month, now)
                    if path is None:
                        continue
                    events.append(FeedEvent(source.id, label, "written", str(path)))
                    state = (str(path), None)
                if settings.post_url and state[1] is None:
                    events.append(await self._post(source.id, label, Path(state[0])))
        await asyncio.to_thread(self.state.forget_before, f"{now.year - REPORT_FEED_KEEP_YEARS}")
        return events

    async def run(self, *, interval: float = 300.0) -> None:
        while True:
            try:
                for event in await self.tick():
                    log.info("report feed: %s %s %s %s", event.source, event.period, event.action, event.detail)
            except Exception:
                log.exception("report feed: tick failed; trying again in %.0f s", interval)
            await asyncio.sleep(interval)

    async def _write(self, source: SourceConfig, year: int, month: int | None, now: datetime) -> Path | None:
        zone = source.zone
        start, end = month_bounds(year, month, zone) if month else year_bounds(year, zone)
        if self.engine is not None:  # late data first, so the report sees every reading stored so far
            await self.engine.catch_up()
        probe = await self.store.query_aggregates(
            period=source_input(source, self.config.rollup.resolved_rule_sets()).base,
            site=source.site,
            instrument=source.flow.instrument,
            start=start,
            end=end,
        )
        if not probe:
            return None
        produced = await produce_report(self.config, self.store, source.id, year=year, month=month, now=now)
        settings = self.config.rollup.reports
        paths = await asyncio.to_thread(write_report_files, produced, settings.directory, font=settings.font)
        label = f"{year}" if month is None else f"{year}-{month:02d}"
        await asyncio.to_thread(self.state.written, source.id, label, str(paths[0]))
        return paths[0]

    async def _post(self, source: str, label: str, path: Path) -> FeedEvent:
        settings = self.config.rollup.reports
        assert settings.post_url is not None
        headers = {"Content-Type": "application/json"}
        if settings.post_token is not None:
            headers["Authorization"] = f"Bearer {settings.post_token.get_secret_value()}"
        try:
            body = await asyncio.to_thread(path.read_bytes)
            async with httpx.AsyncClient(timeout=settings.post_timeout, transport=self.transport) as client:
                response = await client.post(settings.post_url, content=body, headers=headers)
            if response.is_success:
                await asyncio.to_thread(self.state.posted, source, label)
                return FeedEvent(source, label, "posted", f"HTTP {response.status_code}")
            error = f"HTTP {response.status_code}: {response.text[:200]}"
        except (OSError, httpx.HTTPError) as failure:
            error = f"{type(failure).__name__}: {failure}"
        await asyncio.to_thread(lambda: self.state.posted(source, label, error=error))
        log.warning("report feed: POST of %s %s to %s failed (%s); will retry", source, label, settings.post_url, error)
        return FeedEvent(source, label, "post_failed", error)
