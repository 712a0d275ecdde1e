"""Raw-data retention at run time: prunes the SQLite store in small steps between rollup passes, and tells
reports and recomputation where complete raw data begins. The rules and statements: gateway.stores.retention.

Raw readings whose minutes still wait for a rollup pass are never pruned (the cutoff stops at the oldest
dirty hour), so retention cannot take data the rollups have not seen yet.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from gateway.stores import InfluxStore, SqliteStore, Store
from gateway.stores.retention import RetentionSettings, prune_step, raw_pruned_before

__all__ = ["Retention", "raw_kept_from", "retention_settings"]

log = logging.getLogger(__name__)


class _RetentionKeys(Protocol):
    """The `[store]` keys retention reads (gateway.config.StoreSection)."""

    @property
    def raw_retention_days(self) -> float | None: ...
    @property
    def rollup_retention_days(self) -> float | None: ...


def retention_settings(section: _RetentionKeys) -> RetentionSettings:
    """What `[store] raw_retention_days` and `rollup_retention_days` say."""
    return RetentionSettings(section.raw_retention_days, section.rollup_retention_days)


async def raw_kept_from(store: Store, now: datetime | None = None) -> datetime | None:
    """From this time on the store holds every raw reading it was given; None: raw data never expired.

    SQLite: the cutoff pruning went to (recorded in the file). InfluxDB: now minus the raw retention policy's
    duration (InfluxDB drops whole shard groups later than that, so this is the safe side).
    """
    if isinstance(store, SqliteStore):
        return await store.run_on_connection(raw_pruned_before)
    if isinstance(store, InfluxStore) and store.raw_retention is not None:
        settings = RetentionSettings(raw_days=store.raw_retention / timedelta(days=1))
        return settings.raw_cutoff(now or datetime.now(UTC))
    return None


class Retention:
    """Prunes raw readings and old rollups of a SQLite store every `every_s`; InfluxDB prunes itself (its
    retention policies, created by InfluxStore.open).

    A pass deletes what fell due since the last one (raw readings to the minute, `raw_delete_before`): at a
    steady rate its cost is the same every pass, whatever the store holds, and small when passes are frequent
    (every minute by default: at 600 readings/s about 36,000 rows, in steps of `step_rows`)."""

    def __init__(
        self,
        store: Store,
        settings: RetentionSettings,
        *,
        step_rows: int = 5_000,
        pause_s: float = 0.02,
        every_s: float = 60.0,
        max_steps: int = 200,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.settings = settings
        self.step_rows = step_rows
        self.pause_s = pause_s
        self.every_s = every_s
        self.max_steps = max_steps
        self.clock = clock
        self.pruned = 0
        """rows deleted since start (raw readings and rollups)"""
        self._last: datetime | None = None
        self.behind = False
        """the last pass stopped at `max_steps` with more due"""

    @classmethod
    def from_config(cls, section: _RetentionKeys, store: Store) -> Retention | None:
        if section.raw_retention_days is None and section.rollup_retention_days is None:
            return None
        return cls(store, retention_settings(section))

    async def raw_kept_from(self) -> datetime | None:
        return await raw_kept_from(self.store, self.clock())

    async def prune_due(self, *, keep_from: datetime | None = None) -> int:
        """`prune` when `every_s` has passed since the last one (the rollup engine calls this after a pass)."""
        now = self.clock()
        if self._last is not None and (now - self._last).total_seconds() < self.every_s:
            return 0
        self._last = now
        deleted = await self.prune(now, keep_from=keep_from)
        if self.behind:
            self._last = None  # more is due (a backlog, e.g. after the retention was shortened): next pass too
        return deleted

    async def prune(self, now: datetime, *, keep_from: datetime | None = None) -> int:
        """Delete what is past its retention, `step_rows` at a time with a pause between steps (ingest writes
        go in between), at most `max_steps` steps (a pass never holds up the rollup pass after it for long: a
        backlog goes over several passes); raw data from `keep_from` (the oldest hour still to be rolled up)
        on stays."""
        if not isinstance(self.store, SqliteStore):
            return 0
        raw = self.settings.raw_delete_before(now)
        if raw is not None and keep_from is not None:
            raw = min(raw, keep_from.astimezone(UTC).replace(minute=0, second=0, microsecond=0))
        step = functools.partial(
            prune_step, raw_before=raw, rollup_before=self.settings.rollup_cutoff(now), limit=self.step_rows
        )
        total = steps = 0
        while steps < self.max_steps and (deleted := await self.store.run_on_connection(step)):
            total += deleted
            steps += 1
            self.pruned += deleted
            await asyncio.sleep(self.pause_s)
        self.behind = steps == self.max_steps
        if total:
            more = "; more is due, continuing next pass" if self.behind else ""
            log.info("retention: deleted %d rows (raw before %s)%s", total, raw.isoformat() if raw else "-", more)
        return total
