"""The real-time feed to the state system: completed averages, POSTed as JSON, corrections as revisions.

docs/regulatory-basis.md §1: an АСМ transmits data in real time to the national environmental data bank; the interval
and format are the Order's and not verified here, so the averaging period, the interval and the series
codes are configuration ([state_feed]) and the document is versioned (`v`). The store is the source of
truth and the feed keeps only what it has sent (table `state_feed_sent`): a failed POST is sent again on
the next tick, nothing is sent twice unless late data changed it, and then as revision n+1.

Document (one per POST, at most `max_values` values):
    {"v": 1, "gateway": ID, "sent_at": ISO, "period": "1h",
     "values": [{"site", "instrument", "parameter", "code", "start", "end", "value", "unit", "valid",
                 "n_valid", "n_expected", "reason", "revision"}]}
`value` is null for a period without valid data; `valid` says whether it meets its rule set (§3).

`period = "20m"` (Kazakhstan's 20-minute cadence) sends 20-minute averages computed on demand from the stored
1-minute rollups (gateway/mrv/twenty_minute.py: the rule set's capture rule, like the base periods); they are not
stored, and a correction to a minute is sent again as a revision like any other average.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

import httpx

from aua_ops import redact_text, redact_url
from gateway.config import GatewayConfig, StateFeedSection
from gateway.mrv.config import RuleResolver
from gateway.mrv.rollup import Aggregate, Period, base_duration, day_bounds, local_date
from gateway.mrv.twenty_minute import LABEL as TWENTY_MINUTE_LABEL
from gateway.mrv.twenty_minute import TWENTY_MINUTES, TwentyMinuteAverage, twenty_minute_averages
from gateway.state_file import StateFile
from gateway.stores import Store, StoreError
from gateway.time_ns import to_ns

log = logging.getLogger(__name__)

DOCUMENT_VERSION = 1

SentKey = tuple[str, str, str, str, int]
"""site, instrument, parameter, period, start (ns)"""


FeedAverage = Aggregate | TwentyMinuteAverage
"""A stored rollup, or a 20-minute average computed from the stored minutes."""


def fingerprint(aggregate: FeedAverage) -> str:
    """What a receiver sees of an average: when it changes, the average is sent again."""
    a = aggregate
    return f"{a.value!r}|{a.unit}|{a.valid}|{a.n_valid}|{a.n_expected}|{a.reason}"


def period_end(aggregate: FeedAverage, zone: tzinfo) -> datetime:
    if isinstance(aggregate, TwentyMinuteAverage):
        return aggregate.start + TWENTY_MINUTES
    if aggregate.period is Period.DAY:
        return day_bounds(local_date(aggregate.start, zone), zone)[1]
    return aggregate.start + base_duration(aggregate.period)


@dataclass(frozen=True)
class FeedValue:
    aggregate: FeedAverage
    end: datetime
    revision: int


def due_values(
    aggregates: Sequence[FeedAverage],
    sent: Mapping[SentKey, tuple[str, int]],
    *,
    ends: Callable[[FeedAverage], datetime],
    send_before: datetime,
    codes: Mapping[str, str],
    only_coded: bool,
) -> list[FeedValue]:
    """The averages to send now: complete before `send_before`, and new or changed since they were sent."""
    due = []
    for aggregate in sorted(aggregates, key=lambda a: (a.start, a.series)):
        end = ends(aggregate)
        if end > send_before:
            continue
        if only_coded and "/".join(aggregate.series) not in codes:
            continue
        previous = sent.get(_key(aggregate))
        if previous is not None and previous[0] == fingerprint(aggregate):
            continue
        due.append(FeedValue(aggregate, end, 1 if previous is None else previous[1] + 1))
    return due


def feed_document(
    values: Sequence[FeedValue], *, gateway: str, period: str, codes: Mapping[str, str], sent_at: datetime
) -> dict[str, object]:
    return {
        "v": DOCUMENT_VERSION,
        "gateway": gateway,
        "sent_at": _iso(sent_at),
        "period": period,
        "values": [
            {
                "site": v.aggregate.site,
                "instrument": v.aggregate.instrument,
                "parameter": v.aggregate.parameter,
                "code": codes.get("/".join(v.aggregate.series)),
                "start": _iso(v.aggregate.start),
                "end": _iso(v.end),
                "value": v.aggregate.value if v.aggregate.n_valid else None,
                "unit": v.aggregate.unit,
                "valid": v.aggregate.valid,
                "n_valid": v.aggregate.n_valid,
                "n_expected": v.aggregate.n_expected,
                "reason": v.aggregate.reason,
                "revision": v.revision,
            }
            for v in values
        ],
    }


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _key(aggregate: FeedAverage) -> SentKey:
    a = aggregate
    return (a.site, a.instrument, a.parameter, str(a.period), to_ns(a.start))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS state_feed_sent (
    site TEXT NOT NULL,
    instrument TEXT NOT NULL,
    parameter TEXT NOT NULL,
    period TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (site, instrument, parameter, period, start_ns)
) WITHOUT ROWID;
"""


class _SentLog(StateFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    def since(self, period: str, start: datetime) -> dict[SentKey, tuple[str, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT site, instrument, parameter, period, start_ns, fingerprint, revision FROM state_feed_sent "
                "WHERE period = ? AND start_ns >= ?",
                (period, to_ns(start)),
            ).fetchall()
        return {(s, i, p, per, int(ns)): (f, int(r)) for s, i, p, per, ns, f, r in rows}

    def mark(self, values: Sequence[FeedValue]) -> None:
        rows = [(*_key(v.aggregate), fingerprint(v.aggregate), v.revision) for v in values]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO state_feed_sent VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def forget_before(self, start: datetime) -> None:
        with self._lock:
            self._db.execute("DELETE FROM state_feed_sent WHERE start_ns < ?", (to_ns(start),))


@dataclass(frozen=True)
class FeedTick:
    sent: int
    revisions: int
    error: str | None = None


class StateFeed:
    def __init__(
        self,
        config: GatewayConfig,
        store: Store,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if config.state_feed is None:
            raise ValueError("no [state_feed] section in the config")
        self.settings: StateFeedSection = config.state_feed
        self.gateway_id = config.gateway.id
        self.store = store
        self.now = now
        self.transport = transport
        self.rules = RuleResolver.from_config(config.rollup, config.sources)
        self.sent = _SentLog(config.gateway.state)

    def close(self) -> None:
        self.sent.close()

    async def tick(self) -> FeedTick:
        """Send every due average; stop at the first failed POST (what it carried is due again next time)."""
        settings = self.settings
        now = self.now()
        label = settings.period
        aggregates: Sequence[FeedAverage]
        if label == TWENTY_MINUTE_LABEL:
            window_start = now - timedelta(hours=settings.correction_hours) - TWENTY_MINUTES
            # minutes from one period earlier, so that every period starting in the window has all its minutes
            minutes = await self.store.query_aggregates(
                period=Period.MINUTE, start=window_start - TWENTY_MINUTES, end=now
            )
            # ~0.8 s for 20 series × 24 h on a loaded 2-core machine: off the event loop that ingests
            computed = await asyncio.to_thread(twenty_minute_averages, minutes, self.rules)
            aggregates = [a for a in computed if a.start >= window_start]
        else:
            period = Period(label)
            # Periods that ended within the correction window; a (local, up to 25-hour) day starts a day earlier.
            longest = timedelta(hours=25) if period is Period.DAY else base_duration(period)
            window_start = now - timedelta(hours=settings.correction_hours) - longest
            aggregates = await self.store.query_aggregates(period=period, start=window_start, end=now)
        sent = await asyncio.to_thread(self.sent.since, label, window_start)
        due = due_values(
            aggregates,
            sent,
            ends=lambda a: period_end(a, self.rules(*a.series)[1]),
            send_before=now - timedelta(seconds=settings.delay_s),
            codes=settings.codes,
            only_coded=settings.only_coded,
        )
        done = revisions = 0
        for first in range(0, len(due), settings.max_values):
            chunk = due[first : first + settings.max_values]
            document = feed_document(chunk, gateway=self.gateway_id, period=label, codes=settings.codes, sent_at=now)
            problem = await self._post(document)
            if problem is not None:
                return FeedTick(done, revisions, problem)
            await asyncio.to_thread(self.sent.mark, chunk)
            done += len(chunk)
            revisions += sum(1 for v in chunk if v.revision > 1)
        await asyncio.to_thread(self.sent.forget_before, window_start - timedelta(days=1))
        return FeedTick(done, revisions)

    async def run(self) -> None:
        while True:
            try:
                result = await self.tick()
            except StoreError as error:
                log.warning(
                    "state feed: store unavailable (%s); trying again in %.0f s", error, self.settings.interval_s
                )
            except Exception:  # the feed must never stop the gateway's ingest (they share a task group)
                log.exception("state feed: tick failed; trying again in %.0f s", self.settings.interval_s)
            else:
                if result.error is not None:
                    log.warning("state feed: %s; %d values sent, the rest next time", result.error, result.sent)
                elif result.sent:
                    log.info("state feed: %d values sent (%d revisions)", result.sent, result.revisions)
            await asyncio.sleep(self.settings.interval_s)

    async def _post(self, document: dict[str, object]) -> str | None:
        headers = {"Content-Type": "application/json"}
        if self.settings.token is not None:
            headers["Authorization"] = f"Bearer {self.settings.token.get_secret_value()}"
        try:
            async with httpx.AsyncClient(timeout=self.settings.timeout_s, transport=self.transport) as client:
                response = await client.post(self.settings.url, json=document, headers=headers)
        except httpx.HTTPError as error:
            return f"POST {redact_url(self.settings.url)} failed: {type(error).__name__}: {redact_text(str(error))}"
        if not 200 <= response.status_code < 300:
            return f"POST {redact_url(self.settings.url)} answered HTTP {response.status_code}: {response.text[:200]}"
        return None
