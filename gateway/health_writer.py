"""Writes the gateway's and each agent's accounting into the store every `[gateway] health_interval_s`.

Grafana reads only the store, so the health dashboard needs these numbers there too (measurement
`aua_health`, schema in gateway/stores/line_protocol.py). Per agent: what the ledger knows (batches,
readings, sequence range, missing, duplicates, resend requests), what the agent last reported in its status
(next_seq, oldest_seq, dropped), the backlog between the two and online/offline. Per gateway: its counters
since start (they begin again at 0 when the process restarts; a dashboard uses non_negative_difference),
the spool (depth, bytes, whether it is full, how often and how long it was) and queue depth and
whether the broker is connected.

Run it beside the ingest: `asyncio.create_task(HealthWriter(ingest, store, interval).run())`. A failed write is
logged and the next tick tries again: health data is never worth stalling or crashing the gateway for.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.ingest.service import Ingest
from gateway.stores import Store, StoreError
from gateway.stores.base import HEALTH_NOT_APPLICABLE, HealthPoint
from gateway.time_ns import to_ns

log = logging.getLogger(__name__)


def agent_states(state_path: Path) -> dict[tuple[str, str], tuple[str, int]]:
    """(site, agent) -> (state, at_ns) from the ledger's `agent_status` table, read on a read-only connection.

    The Ledger has no accessor for the state itself (only for the outbox cursors), so this reads the table the
    ledger writes; WAL mode lets it read while the ledger writes.
    """
    if not state_path.exists():
        return {}
    connection = sqlite3.connect(f"file:{state_path}?mode=ro", uri=True, timeout=5)
    try:
        rows = connection.execute("SELECT site, agent, state, at_ns FROM agent_status").fetchall()
    except sqlite3.OperationalError:  # no status has arrived yet: the table may not exist in an old file
        return {}
    finally:
        connection.close()
    return {(site, agent): (str(state), int(at_ns)) for site, agent, state, at_ns in rows}


class HealthWriter:
    def __init__(self, ingest: Ingest, store: Store, interval: float | None = None) -> None:
        self.ingest = ingest
        self.store = store
        self.interval = ingest.config.gateway.health_interval_s if interval is None else interval
        self.started = time.monotonic()
        self.written = 0

    def sample(self, now: datetime) -> list[HealthPoint]:
        """One point for the gateway and one per agent the ledger knows. Blocking (SQLite): run it in a thread."""
        ingest = self.ingest
        gateway_id = ingest.config.gateway.id
        stats = ingest.stats
        gateway_fields = {
            "messages": stats.messages,
            "batches": stats.batches,
            "readings": stats.readings,
            "duplicates": stats.duplicates,
            "reused": stats.reused,
            "dead_letters": stats.dead_letters,
            "store_retries": stats.store_retries,
            "resend_requests": stats.resend_requests,
            "spool_depth": ingest.spool.depth,
            "spool_bytes": ingest.spool.size,
            "spool_full": int(ingest.spool.full),
            "spool_full_count": ingest.spool.full_count,
            "spool_full_seconds": int(ingest.spool.full_seconds),
            "queue_depth": ingest._queue.qsize(),  # private, but a gauge only read here
            "broker_connected": int(ingest.connected.is_set()),
            "uptime_s": int(time.monotonic() - self.started),
        }
        points = [
            HealthPoint(
                component="gateway",
                id=gateway_id,
                site=HEALTH_NOT_APPLICABLE,
                agent=HEALTH_NOT_APPLICABLE,
                ts=now,
                fields=gateway_fields,
            )
        ]
        ledger = ingest.ledger
        accounts = {(a.site, a.agent): a for a in ledger.accounts()}
        cursors = ledger.agent_cursors()
        resends = ledger.resend_requests()
        states = agent_states(ingest.config.gateway.state)
        now_ns = to_ns(now)
        for site, agent in sorted(set(accounts) | set(cursors) | set(states)):
            fields: dict[str, int] = {"resend_requests": resends.get((site, agent), 0)}
            account = accounts.get((site, agent))
            if account is not None:
                fields |= {
                    "batches": account.batches,
                    "readings": account.readings,
                    "first_seq": account.first_seq,
                    "last_seq": account.last_seq,
                    "missing": account.missing,
                    "duplicates": account.duplicates,
                    "late": account.late,
                    "repaired": account.repaired,
                    "reused": account.reused,
                }
            next_seq, oldest_seq, dropped = cursors.get((site, agent), (None, None, None))
            for name, value in (("next_seq", next_seq), ("oldest_seq", oldest_seq), ("dropped", dropped)):
                if value is not None:
                    fields[name] = int(value)
            if next_seq is not None:
                last_seq = account.last_seq if account is not None else -1
                fields["backlog"] = max(0, int(next_seq) - 1 - last_seq)
            if (site, agent) in states:
                state, at_ns = states[site, agent]
                fields["online"] = int(state == "online")
                fields["status_age_s"] = max(0, (now_ns - at_ns) // 1_000_000_000)
            points.append(HealthPoint(component="agent", id=gateway_id, site=site, agent=agent, ts=now, fields=fields))
        return points

    async def write_once(self) -> list[HealthPoint]:
        points = await asyncio.to_thread(self.sample, datetime.now(UTC))
        await self.store.write_health(points)
        self.written += len(points)
        return points

    async def run(self) -> None:
        """Every `interval` seconds until cancelled; store errors are logged, never raised."""
        while True:
            try:
                await self.write_once()
            except StoreError as error:
                log.warning("health points not written (next try in %.0f s): %s", self.interval, error)
            except sqlite3.Error as error:
                log.warning("health sample failed (next try in %.0f s): %s", self.interval, error)
            await asyncio.sleep(self.interval)
