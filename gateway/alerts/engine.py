"""The alert engine: batches and statuses in, notifications out, every state change on disk first.

Wiring (gateway/ingest/service.py and gateway/cli.py):

    engine = AlertEngine.from_config(config)              # opens its tables in the gateway state DB
    await engine.on_status(status, received_at)           # each agent status (birth, will, periodic)
    await engine.on_batch(batch, received_at)             # each new batch, after it is stored
    await engine.run()                                    # a task: tick every second, deliver
    engine.close()

`on_batch`/`on_status` only evaluate and write state (no network I/O), so they never hold up ingest;
`run` (or `tick(now)` in tests) evaluates what depends on time (data gaps, offline for N s, reminders,
silences that ended), bundles queued notices into messages (grouping, rate limit) and delivers them.

Durability, an outbox: a transition and its notice are written in one transaction (`transaction()`,
gateway/state_file.py) before anyone is told, so neither is ever on disk without the other. A message,
its deliveries (one per notifier: the outbox) and its notices' move to `sending` are one transaction
too; a delivery is marked done after its notifier returns, and a notice becomes `sent` only when every
delivery of its message has ended (`undelivered` when none succeeded). Pending deliveries survive a
crash and go out after the restart. Delivery is at least once: a crash between a notifier's success and
its mark repeats that one delivery, of the same message (MQTT documents carry its `message` id, every
message its alert id, episode and state, for a receiver that must deduplicate). If writing a transition
fails (disk full, busy), the engine keeps it and writes it with the next change, so it is not lost either.

Tables (own, prefixed `alert`, in the gateway state DB next to the ledger's): alert (state per alert),
alert_notice (transitions, queued/suppressed/sent), alert_message, alert_delivery, alert_silence,
alert_ack, alert_source (instruments seen, so a gap is noticed after a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo

from aua_contract import AgentState, AgentStatus, Batch, Quality, Reading
from aua_ops import redact_text
from gateway.alerts.builtin import builtin_rules
from gateway.alerts.messages import Message, MessageFormat, Notifier, NotifyError, notice_document, notice_from_document
from gateway.alerts.notify import notifiers_from_config
from gateway.alerts.rules import (
    QAL3_RULE,
    ClockSkewRule,
    FailureRule,
    GapRule,
    OfflineRule,
    QaFinding,
    Qal3Rule,
    QaRule,
    Rule,
    Sample,
    StuckEvaluator,
    StuckRule,
    ThresholdEvaluator,
    ThresholdRule,
    alert_key,
    failure_observation,
    format_duration,
    gap_observation,
    offline_observation,
    reference_o2_value,
    skew_observation,
)
from gateway.alerts.state import (
    ZERO,
    AlertKey,
    AlertState,
    DeliveryPolicy,
    Dispatch,
    Level,
    Notice,
    NoticeKind,
    Observation,
    Phase,
    Queued,
    Silence,
    Transition,
    plan_dispatch,
    remind,
    should_send,
    silenced,
    step,
)
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.state_file import StateFile
from gateway.time_ns import from_ns, from_ns_or_none, to_ns, to_ns_or_none
from gateway.units import UnitError, conversion_factor

log = logging.getLogger(__name__)

GROUP_FIELDS = ("rule", "site", "agent", "instrument", "parameter")
RETRY_FIRST = timedelta(seconds=5)
RETRY_MAX = timedelta(minutes=10)
FLUSH_EVERY = timedelta(seconds=10)
"""How often the last value and peak of pending/firing alerts are written (phase changes are written at once)."""
HISTORY_KEEP = timedelta(days=90)
"""Alert history (notices told, messages, deliveries, past acknowledgements, ended silences) kept this long."""
HISTORY_MAX_NOTICES = 100_000
"""...and at most this many notices, whatever their age."""
PRUNE_EVERY = timedelta(minutes=1)
"""How often the history is pruned (a step each time; finding what to prune reads the notices once)."""
MAX_SERIES = 50_000
"""Agents, instruments and series with alert state, by default ([alerts] max_series): about 1.2 kB each
(tracemalloc, data rules on), so some 60 MB at the bound; a plant of 500 instruments × 30 tags uses 15,500."""
UNWRITTEN_MAX = 10_000
"""Transitions kept in memory while the state DB refuses writes (beyond: the oldest go, counted)."""
GIVE_UP_AFTER = timedelta(hours=24)
"""A delivery still failing a day after its message was made is abandoned (and logged as an error)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL, site TEXT NOT NULL, agent TEXT NOT NULL, instrument TEXT NOT NULL, parameter TEXT NOT NULL,
    phase TEXT NOT NULL,
    episode INTEGER NOT NULL,
    since_ns INTEGER, fired_ns INTEGER, resolved_ns INTEGER, clearing_ns INTEGER, last_ns INTEGER, reminded_ns INTEGER,
    value REAL, peak REAL,
    detail TEXT NOT NULL,
    firing_sent INTEGER NOT NULL,  -- the current episode's firing became a notification (not silenced)
    updated_ns INTEGER NOT NULL,
    UNIQUE (rule, site, agent, instrument, parameter)
);
CREATE TABLE IF NOT EXISTS alert_notice (
    id INTEGER PRIMARY KEY,
    alert_id INTEGER NOT NULL REFERENCES alert (id),
    kind TEXT NOT NULL,
    episode INTEGER NOT NULL,
    group_key TEXT NOT NULL,
    queued_ns INTEGER NOT NULL,
    document TEXT NOT NULL,  -- the Notice as JSON, as it will be told
    status TEXT NOT NULL,    -- queued | suppressed (silenced) | sending (in a message, deliveries pending)
                             -- | sent (every delivery ended, one at least delivered) | undelivered (none was)
    message_id INTEGER
);
CREATE INDEX IF NOT EXISTS alert_notice_status ON alert_notice (status);
CREATE INDEX IF NOT EXISTS alert_notice_message ON alert_notice (message_id);
CREATE TABLE IF NOT EXISTS alert_message (
    id INTEGER PRIMARY KEY,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_delivery (
    message_id INTEGER NOT NULL REFERENCES alert_message (id),
    notifier TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ns INTEGER NOT NULL,
    delivered_ns INTEGER,
    abandoned_ns INTEGER,
    error TEXT,
    PRIMARY KEY (message_id, notifier)
);
CREATE TABLE IF NOT EXISTS alert_silence (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL, site TEXT NOT NULL, instrument TEXT NOT NULL,
    starts_ns INTEGER NOT NULL, ends_ns INTEGER NOT NULL,
    reason TEXT NOT NULL, by_whom TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_ack (
    alert_id INTEGER NOT NULL REFERENCES alert (id),
    episode INTEGER NOT NULL,
    by_whom TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (alert_id, episode)
);
CREATE TABLE IF NOT EXISTS alert_source (
    site TEXT NOT NULL, agent TEXT NOT NULL, instrument TEXT NOT NULL,
    first_ns INTEGER NOT NULL,
    PRIMARY KEY (site, agent, instrument)
) WITHOUT ROWID;
"""


class AlertError(GatewayError, ValueError):
    """An alert command that cannot be done (unknown id, nothing to acknowledge); the message says why."""


@dataclass(frozen=True)
class AlertRow:
    """One alert as `cems-gateway alerts list` shows it."""

    id: int
    key: AlertKey
    state: AlertState
    firing_sent: bool
    acked_by: str | None
    acked_at: datetime | None


@dataclass(frozen=True)
class DeliveryRow:
    message_id: int
    notifier: str
    attempts: int
    created: datetime
    next_at: datetime
    delivered_at: datetime | None
    abandoned_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class NoticeWrite:
    alert_id: int
    notice: Notice
    group: str
    queued_at: datetime
    send: bool


class AlertStore(StateFile):
    """The engine's durable state, in its own tables of the gateway state DB (one connection, a lock).

    The CLI uses it too, from another process, while the gateway runs: it only adds silences and
    acknowledgements (tables the engine reads, never rewrites), so the two never overwrite each other.
    """

    def __init__(self, path: Path, *, keep: timedelta = HISTORY_KEEP, max_notices: int = HISTORY_MAX_NOTICES) -> None:
        super().__init__(path, _SCHEMA)
        self.keep = keep
        self.max_notices = max_notices
        self.pruned = 0
        """History rows (notices, messages, deliveries, acknowledgements, ended silences) pruned by this store."""

    def prune(self, now: datetime, *, step: int = 500) -> int:
        """Drop, at most `step` rows of each kind at a time, the history nothing needs any more: notices told
        (or suppressed) before `keep` or beyond the newest `max_notices`, their messages and deliveries once
        delivered or abandoned, acknowledgements of past episodes, silences ended before `keep`. Queued notices,
        deliveries still being tried, and the current episode's acknowledgement stay."""
        cutoff = to_ns(now - self.keep)
        pending = (
            "SELECT 1 FROM alert_delivery d "
            "WHERE d.message_id = {} AND d.delivered_ns IS NULL AND d.abandoned_ns IS NULL"
        )
        with self.transaction() as db:
            (top,) = db.execute("SELECT coalesce(max(id), 0) FROM alert_notice").fetchone()
            pruned = db.execute(
                f"""DELETE FROM alert_notice WHERE id IN (
                       SELECT n.id FROM alert_notice n WHERE n.status IN ('sent', 'suppressed', 'undelivered')
                       AND (n.queued_ns < ? OR n.id <= ?) AND NOT EXISTS ({pending.format("n.message_id")})
                       ORDER BY n.id LIMIT ?)""",
                (cutoff, top - self.max_notices, step),
            ).rowcount
            done = f"""SELECT m.id FROM alert_message m WHERE m.created_ns < ? AND NOT EXISTS ({pending.format("m.id")})
                       AND NOT EXISTS (SELECT 1 FROM alert_notice n WHERE n.message_id = m.id) ORDER BY m.id LIMIT ?"""
            pruned += db.execute(f"DELETE FROM alert_delivery WHERE message_id IN ({done})", (cutoff, step)).rowcount
            pruned += db.execute(
                """DELETE FROM alert_message WHERE id IN (
                       SELECT m.id FROM alert_message m WHERE m.created_ns < ?
                       AND NOT EXISTS (SELECT 1 FROM alert_delivery d WHERE d.message_id = m.id)
                       AND NOT EXISTS (SELECT 1 FROM alert_notice n WHERE n.message_id = m.id)
                       ORDER BY m.id LIMIT ?)""",
                (cutoff, step),
            ).rowcount
            pruned += db.execute(
                """DELETE FROM alert_ack WHERE rowid IN (
                       SELECT k.rowid FROM alert_ack k WHERE k.at_ns < ? AND NOT EXISTS (
                           SELECT 1 FROM alert a WHERE a.id = k.alert_id AND a.episode = k.episode) LIMIT ?)""",
                (cutoff, step),
            ).rowcount
            pruned += db.execute(
                "DELETE FROM alert_silence WHERE id IN (SELECT id FROM alert_silence WHERE ends_ns < ? LIMIT ?)",
                (cutoff, step),
            ).rowcount
        self.pruned += pruned
        return pruned

    # ---- alert states ----

    def load(self) -> list[AlertRow]:
        with self._lock:
            rows = self._db.execute(
                """SELECT a.id, a.rule, a.site, a.agent, a.instrument, a.parameter, a.phase, a.episode, a.since_ns,
                          a.fired_ns, a.resolved_ns, a.clearing_ns, a.last_ns, a.reminded_ns, a.value, a.peak,
                          a.detail, a.firing_sent, k.by_whom, k.at_ns
                   FROM alert a LEFT JOIN alert_ack k ON k.alert_id = a.id AND k.episode = a.episode
                   ORDER BY a.id"""
            ).fetchall()
        return [
            AlertRow(
                id=int(row[0]),
                key=AlertKey(row[1], row[2], row[3], row[4], row[5]),
                state=AlertState(
                    phase=Phase(row[6]),
                    episode=int(row[7]),
                    since=from_ns_or_none(row[8]),
                    fired_at=from_ns_or_none(row[9]),
                    resolved_at=from_ns_or_none(row[10]),
                    clearing_since=from_ns_or_none(row[11]),
                    last_at=from_ns_or_none(row[12]),
                    reminded_at=from_ns_or_none(row[13]),
                    value=row[14],
                    peak=row[15],
                    detail=row[16],
                ),
                firing_sent=bool(row[17]),
                acked_by=row[18],
                acked_at=from_ns_or_none(row[19]),
            )
            for row in rows
        ]

    def ensure_ids(self, keys: Iterable[AlertKey], now: datetime) -> dict[AlertKey, int]:
        """Ids for alerts (a row in `inactive` for a new one)."""
        ids: dict[AlertKey, int] = {}
        with self.transaction() as db:
            for key in keys:
                fields = (key.rule, key.site, key.agent, key.instrument, key.parameter)
                db.execute(
                    """INSERT OR IGNORE INTO alert (rule, site, agent, instrument, parameter, phase, episode, detail,
                                                    firing_sent, updated_ns)
                       VALUES (?, ?, ?, ?, ?, 'inactive', 0, '', 0, ?)""",
                    (*fields, to_ns(now)),
                )
                row = db.execute(
                    "SELECT id FROM alert "
                    "WHERE rule = ? AND site = ? AND agent = ? AND instrument = ? AND parameter = ?",
                    fields,
                ).fetchone()
                ids[key] = int(row[0])
        return ids

    def commit(
        self, states: Sequence[tuple[int, AlertState, bool]], notices: Sequence[NoticeWrite], now: datetime
    ) -> None:
        """New alert states and the notices of their transitions, in one transaction: an alert is never on
        disk as firing (and told) without the notice that tells it."""
        with self.transaction() as db:
            db.executemany(
                """UPDATE alert SET phase = ?, episode = ?, since_ns = ?, fired_ns = ?, resolved_ns = ?,
                       clearing_ns = ?, last_ns = ?, reminded_ns = ?, value = ?, peak = ?, detail = ?,
                       firing_sent = ?, updated_ns = ?
                   WHERE id = ?""",
                [
                    (
                        state.phase.value,
                        state.episode,
                        to_ns_or_none(state.since),
                        to_ns_or_none(state.fired_at),
                        to_ns_or_none(state.resolved_at),
                        to_ns_or_none(state.clearing_since),
                        to_ns_or_none(state.last_at),
                        to_ns_or_none(state.reminded_at),
                        state.value,
                        state.peak,
                        state.detail,
                        int(firing_sent),
                        to_ns(now),
                        alert_id,
                    )
                    for alert_id, state, firing_sent in states
                ],
            )
            db.executemany(
                """INSERT INTO alert_notice (alert_id, kind, episode, group_key, queued_ns, document, status)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                [
                    (
                        write.alert_id,
                        write.notice.kind.value,
                        write.notice.episode,
                        write.group,
                        to_ns_or_none(write.queued_at),
                        json.dumps(notice_document(write.notice), ensure_ascii=False),
                        "queued" if write.send else "suppressed",
                    )
                    for write in notices
                ],
            )

    # ---- sources (instruments seen) ----

    def sources(self) -> list[tuple[str, str, str]]:
        with self._lock:
            rows = self._db.execute("SELECT site, agent, instrument FROM alert_source").fetchall()
        return [(str(s), str(a), str(i)) for s, a, i in rows]

    def add_sources(self, sources: Iterable[tuple[str, str, str]], now: datetime) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO alert_source VALUES (?, ?, ?, ?)", [(*s, to_ns(now)) for s in sources]
            )

    # ---- notices, messages, deliveries ----

    def queued(self) -> list[Queued]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, group_key, queued_ns FROM alert_notice WHERE status = 'queued' ORDER BY id"
            ).fetchall()
        return [Queued(int(i), str(g), from_ns(n)) for i, g, n in rows]

    def message_times(self, since: datetime) -> list[datetime]:
        with self._lock:
            rows = self._db.execute(
                "SELECT created_ns FROM alert_message WHERE created_ns > ?", (to_ns_or_none(since),)
            ).fetchall()
        return [from_ns(ns) for (ns,) in rows]

    def create_messages(self, dispatches: Sequence[Dispatch], notifiers: Sequence[str], now: datetime) -> list[int]:
        """The messages, their deliveries (the outbox: one per notifier, each tried until it ends) and their
        notices' move from `queued` to `sending`, in one transaction. Without notifiers a message has no
        delivery and its notices are `undelivered` at once."""
        ids = []
        status = "sending" if notifiers else "undelivered"
        with self.transaction() as db:
            for dispatch in dispatches:
                cursor = db.execute("INSERT INTO alert_message (created_ns) VALUES (?)", (to_ns(now),))
                message_id = int(cursor.lastrowid or 0)
                ids.append(message_id)
                db.executemany(
                    "INSERT INTO alert_delivery (message_id, notifier, next_ns) VALUES (?, ?, ?)",
                    [(message_id, name, to_ns(now)) for name in notifiers],
                )
                db.executemany(
                    "UPDATE alert_notice SET status = ?, message_id = ? WHERE id = ? AND status = 'queued'",
                    [(status, message_id, notice_id) for notice_id in dispatch.notice_ids],
                )
        return ids

    def message(self, message_id: int) -> Message:
        with self._lock:
            rows = self._db.execute(
                "SELECT document FROM alert_notice WHERE message_id = ? ORDER BY queued_ns, id", (message_id,)
            ).fetchall()
        return Message(message_id, tuple(notice_from_document(json.loads(doc)) for (doc,) in rows))

    def deliveries(self, *, undelivered_only: bool = False) -> list[DeliveryRow]:
        """Every delivery (message × notifier), or those not delivered yet (pending retry or abandoned)."""
        query = """SELECT d.message_id, d.notifier, d.attempts, m.created_ns, d.next_ns, d.delivered_ns,
                          d.abandoned_ns, d.error
                   FROM alert_delivery d JOIN alert_message m ON m.id = d.message_id"""
        if undelivered_only:
            query += " WHERE d.delivered_ns IS NULL"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY d.message_id, d.notifier").fetchall()
        return [
            DeliveryRow(int(m), str(n), int(a), from_ns(c), from_ns(x), from_ns_or_none(d), from_ns_or_none(b), e)
            for m, n, a, c, x, d, b, e in rows
        ]

    def delivered(self, message_id: int, notifier: str, now: datetime) -> None:
        """One delivery done; its message's notices are `sent` once the message's last delivery has ended."""
        with self.transaction() as db:
            db.execute(
                "UPDATE alert_delivery SET delivered_ns = ?, attempts = attempts + 1, error = NULL "
                "WHERE message_id = ? AND notifier = ?",
                (to_ns(now), message_id, notifier),
            )
            _settle(db, message_id)

    def failed(
        self, message_id: int, notifier: str, error: str, *, next_at: datetime, abandon_at: datetime | None
    ) -> None:
        """One attempt failed: try again at `next_at`, or give up (`abandon_at`), which may end the message."""
        with self.transaction() as db:
            db.execute(
                "UPDATE alert_delivery SET attempts = attempts + 1, error = ?, next_ns = ?, abandoned_ns = ? "
                "WHERE message_id = ? AND notifier = ?",
                (redact_text(error), to_ns_or_none(next_at), to_ns_or_none(abandon_at), message_id, notifier),
            )
            _settle(db, message_id)

    # ---- silences and acknowledgements (also written by the CLI) ----

    def add_silence(
        self,
        *,
        starts: datetime,
        ends: datetime,
        rule: str = "*",
        site: str = "*",
        instrument: str = "*",
        reason: str = "",
        by: str = "",
    ) -> int:
        if ends <= starts:
            raise AlertError("a silence must end after it starts")
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO alert_silence (rule, site, instrument, starts_ns, ends_ns, reason, by_whom) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rule, site, instrument, to_ns_or_none(starts), to_ns_or_none(ends), reason, by),
            )
        return int(cursor.lastrowid or 0)

    def end_silence(self, silence_id: int, now: datetime) -> None:
        with self._lock:
            changed = self._db.execute(
                "UPDATE alert_silence SET ends_ns = ? WHERE id = ? AND ends_ns > ?",
                (to_ns(now), silence_id, to_ns(now)),
            ).rowcount
        if not changed:
            raise AlertError(f"no active silence {silence_id} (see `cems-gateway alerts list`)")

    def silences(self, now: datetime | None = None) -> list[Silence]:
        """Active at `now` (all, when None)."""
        query = "SELECT id, starts_ns, ends_ns, rule, site, instrument, reason, by_whom FROM alert_silence"
        params: tuple[int | None, ...] = ()
        if now is not None:
            query += " WHERE starts_ns <= ? AND ends_ns > ?"
            params = (to_ns(now), to_ns(now))
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        return [Silence(int(i), from_ns(s), from_ns(e), r, si, ins, re, by) for i, s, e, r, si, ins, re, by in rows]

    def acknowledge(self, alert_id: int, *, by: str, now: datetime, note: str = "") -> AlertRow:
        with self.transaction() as db:  # the phase checked is the phase acknowledged (the engine writes it too)
            row = db.execute("SELECT phase, episode FROM alert WHERE id = ?", (alert_id,)).fetchone()
            if row is None:
                raise AlertError(f"no alert {alert_id} (see `cems-gateway alerts list`)")
            phase, episode = Phase(row[0]), int(row[1])
            if phase is not Phase.FIRING:
                raise AlertError(f"alert {alert_id} is {phase.value}: only a firing alert can be acknowledged")
            db.execute(
                "INSERT OR REPLACE INTO alert_ack VALUES (?, ?, ?, ?, ?)",
                (alert_id, episode, by, to_ns(now), note),
            )
        return next(r for r in self.load() if r.id == alert_id)

    def acks(self) -> set[tuple[int, int]]:
        with self._lock:
            rows = self._db.execute("SELECT alert_id, episode FROM alert_ack").fetchall()
        return {(int(a), int(e)) for a, e in rows}


def _settle(db: sqlite3.Connection, message_id: int) -> None:
    """A message whose deliveries have all ended (delivered or abandoned): its notices become `sent`, or
    `undelivered` when no channel took it. Part of the caller's transaction."""
    db.execute(
        """UPDATE alert_notice SET status = CASE WHEN EXISTS (
               SELECT 1 FROM alert_delivery d WHERE d.message_id = ?1 AND d.delivered_ns IS NOT NULL)
               THEN 'sent' ELSE 'undelivered' END
           WHERE message_id = ?1 AND status = 'sending' AND NOT EXISTS (
               SELECT 1 FROM alert_delivery d
               WHERE d.message_id = ?1 AND d.delivered_ns IS NULL AND d.abandoned_ns IS NULL)""",
        (message_id,),
    )


# --------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------


@dataclass
class _Alert:
    key: AlertKey
    rule: Rule
    state: AlertState = field(default_factory=AlertState)
    id: int | None = None
    firing_sent: bool = False
    unit: str = ""
    dirty: bool = False
    """state changed in memory but not yet written (value/peak updates are flushed on the next tick)"""
    urgent: bool = False
    """its phase changed: written before the call that changed it returns (restart-safe pending/firing)"""


@dataclass(frozen=True)
class _Told:
    alert: _Alert
    transition: Transition
    late: bool = False


SeriesRule = ThresholdRule | StuckRule

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Memo(Generic[K, V]):
    """A bounded cache of something recomputable (the rules that apply to a name, a unit's factor): least
    recently used out first, counted in `evictions`; dropping an entry costs a recomputation, never a result."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.evictions = 0
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, make: Callable[[], V]) -> V:
        items = self._items
        if key in items:
            items.move_to_end(key)
            return items[key]
        value = items[key] = make()
        if len(items) > self.capacity:
            items.popitem(last=False)
            self.evictions += 1
        return value


class _Admission:
    """The agents (site, agent), instruments (+ instrument) and series (+ parameter) the engine keeps state
    for: at most `capacity`, first come first served. Names come from publishers, so the bound is what an
    invented name meets: later ones are refused (each observation counted in `refused`), never evicting
    one already tracked. Evicting would let a flood of invented names push a real series' rolling window or
    pending alert out of memory, and it would then miss an exceedance."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.refused = 0
        self._keys: set[tuple[str, ...]] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: tuple[str, ...]) -> None:
        """A name with state from now on (after `room_for`); state loaded from the state DB is added even
        beyond the capacity (it exists: dropping it would forget a firing alert)."""
        self._keys.add(key)

    def room_for(self, key: tuple[str, ...]) -> bool:
        """Tracked already, or room to be: asked before looking for the rules that apply, so a name refused
        once the bound is reached costs a set lookup, not a match against every rule."""
        if key in self._keys:
            return True
        if len(self._keys) >= self.capacity:
            if not self.refused:
                log.warning(
                    "alerts: %d agents, instruments and series tracked ([alerts] max_series): %s and any other "
                    "new name is not evaluated (counted in aua_gateway_alert_series_refused)",
                    self.capacity,
                    "/".join(key),
                )
            self.refused += 1
            return False
        return True


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AlertEngine:
    def __init__(
        self,
        rules: Sequence[Rule],
        store: AlertStore,
        notifiers: Sequence[Notifier] = (),
        *,
        tz: tzinfo = UTC,
        policy: DeliveryPolicy | None = None,
        group_by: Sequence[str] = ("rule", "site"),
        remind_every: timedelta = ZERO,
        reference_temperature_c: float = 0.0,
        max_series: int = MAX_SERIES,
    ) -> None:
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {duplicates}")
        unknown = [name for name in group_by if name not in GROUP_FIELDS]
        if unknown:
            raise ValueError(f"group_by {unknown}: choose from {GROUP_FIELDS}")
        notifier_names = [notifier.name for notifier in notifiers]
        if len(set(notifier_names)) != len(notifier_names):
            raise ValueError(f"notifier names must be unique: {notifier_names}")
        self.rules = {rule.name: rule for rule in rules}
        self.store = store
        self.notifiers = {notifier.name: notifier for notifier in notifiers}
        self.tz = tz
        self.policy = policy or DeliveryPolicy()
        self.group_by = tuple(group_by)
        self.remind_every = remind_every
        self.reference_temperature_c = reference_temperature_c
        self._lock = asyncio.Lock()
        self._delivering = asyncio.Lock()
        self._wake = asyncio.Event()
        self._started: datetime | None = None
        self._flushed_at: datetime | None = None
        self._pruned_at: datetime | None = None
        self._alerts: dict[AlertKey, _Alert] = {}
        self._evaluators: dict[AlertKey, ThresholdEvaluator | StuckEvaluator] = {}
        # Keyed by names publishers choose: the state behind `tracked`, the memos bounded (see _Admission).
        self.tracked = _Admission(max_series)
        """agents, instruments and series with state here (alerts, evaluators, gap clocks)"""
        self._series_rules: _Memo[tuple[str, str, str, str], list[SeriesRule]] = _Memo(max_series)
        self._instrument_rules: _Memo[tuple[str, str, str], list[FailureRule | GapRule]] = _Memo(max_series)
        self._agent_rules: _Memo[tuple[str, str], list[OfflineRule | ClockSkewRule]] = _Memo(max_series)
        self._factors: _Memo[tuple[str, str, str], float | None] = _Memo(max_series)
        self._received: dict[tuple[str, str, str], datetime | None] = {}
        """instrument with a gap rule -> when data last arrived (None: not since this engine started)"""
        self._agents: dict[tuple[str, str], tuple[bool, datetime]] = {}
        """agent -> (offline, since when)"""
        self._back_at: dict[tuple[str, str], datetime] = {}
        """agent -> when it came back online: its instruments' gap clocks start no earlier"""
        self._silences: list[Silence] = []
        self._acks: set[tuple[int, int]] = set()
        self._unwritten: list[_Told] = []
        """transitions whose write failed, written with the next change (at most UNWRITTEN_MAX)"""
        self.unwritten_lost = 0
        """transitions dropped because writes kept failing beyond UNWRITTEN_MAX (logged as errors)"""
        for row in store.load():
            rule = self.rules.get(row.key.rule)
            if rule is None:
                continue  # a rule no longer configured: its alerts stay in the table as they were
            self._alerts[row.key] = _Alert(row.key, rule, row.state, row.id, row.firing_sent)
            self.tracked.add(_scope_key(row.key))
        for source in store.sources():
            self._received[source] = None
            self.tracked.add(source)
        self._silences = store.silences(_utc_now())

    @classmethod
    def from_config(cls, config: GatewayConfig, *, notifiers: Sequence[Notifier] | None = None) -> AlertEngine:
        """The engine a gateway config describes; `[alerts]` must be present."""
        alerts = config.alerts
        if alerts is None:
            raise ValueError("the config has no [alerts] section")
        tz = ZoneInfo(alerts.timezone)
        message_format = MessageFormat(tz, alerts.dashboard_url)
        if notifiers is None:
            notifiers = notifiers_from_config(
                alerts.notify, config.mqtt, gateway_id=config.gateway.id, message_format=message_format
            )
        rules: list[Rule] = [*alerts.effective_rules(), *builtin_rules(config)] if alerts.enabled else []
        return cls(
            rules,
            AlertStore(config.gateway.state, keep=alerts.history_keep, max_notices=alerts.history_max_notices),
            notifiers,
            tz=tz,
            policy=alerts.delivery_policy(),
            group_by=alerts.group_by,
            remind_every=alerts.remind_every,
            reference_temperature_c=alerts.reference_temperature_c,
            max_series=alerts.max_series,
        )

    def close(self) -> None:
        self.store.close()

    # ---- inputs ----

    async def on_status(self, status: AgentStatus, received_at: datetime) -> None:
        """An agent's status (birth, periodic, clean offline, or the broker's last will).

        Offline counts from `received_at`: a last will's own `at` is when the agent connected, not when it
        went away. Errors of the state DB are logged, never raised: alerts must not stop ingest.
        """
        try:
            async with self._lock:
                self._started = self._started or received_at
                offline = status.state is AgentState.OFFLINE
                agent = (status.site, status.agent)
                if not self.tracked.room_for(agent):
                    return
                self.tracked.add(agent)
                known = self._agents.get(agent)
                since = known[1] if known is not None and known[0] == offline else received_at
                self._agents[agent] = (offline, since)
                if known is not None and known[0] and not offline:
                    self._back_at[agent] = received_at
                told: list[_Told] = []
                for rule in self._rules_for_agent(status.site, status.agent):
                    if isinstance(rule, OfflineRule):
                        alert = self._alert(rule, status.site, status.agent)
                        self._observe(alert, offline_observation(offline, since, received_at), told)
                await self._commit(told, received_at)
        except (sqlite3.Error, OSError) as error:
            log.error("alerts: status of %s/%s not recorded: %s", status.site, status.agent, error)

    async def on_batch(self, batch: Batch, received_at: datetime) -> None:
        """A new batch (after the store has it). Evaluation and state writes only: no network I/O.

        Errors of the state DB are logged, never raised: alerts must not stop ingest.
        """
        try:
            async with self._lock:
                self._started = self._started or received_at
                told: list[_Told] = []
                new_sources = self._evaluate_batch(batch, received_at, told)
                if new_sources:
                    await asyncio.to_thread(self.store.add_sources, new_sources, received_at)
                await self._commit(told, received_at)
        except (sqlite3.Error, OSError) as error:
            log.error("alerts: batch %s/%s #%d not evaluated: %s", batch.site, batch.agent, batch.seq, error)

    async def on_qa(self, findings: Sequence[QaFinding], now: datetime) -> None:
        """Results of analyzer QA checks (gateway/mrv/qa_alerts.py): each fires or clears the alert of its rule for
        its source and channel. Findings of rules not in force (alerts disabled) are ignored; errors of the state
        DB are logged, never raised."""
        try:
            async with self._lock:
                self._started = self._started or now
                told: list[_Told] = []
                for finding in findings:
                    rule = self.rules.get(finding.rule)
                    if not isinstance(rule, QaRule):
                        continue
                    alert = self._alert(rule, finding.site, "", finding.source, finding.channel)
                    level = Level.TRIGGER if finding.firing else Level.CLEAR
                    since = min(finding.since or now, now)
                    self._observe(alert, Observation(level, now, since, None, finding.detail), told)
                await self._commit(told, now)
        except (sqlite3.Error, OSError) as error:
            log.error("alerts: %d QA findings not recorded: %s", len(findings), error)

    async def on_qal3(self, site: str, instrument: str, parameter: str, obs: Observation, now: datetime) -> None:
        """A component's QAL3 chart state (gateway/mrv/qa_checks.py): TRIGGER while out of control, CLEAR once
        adjusted. Ignored without the QAL3 rule; errors of the state DB are logged, never raised."""
        rule = self.rules.get(QAL3_RULE)
        if not isinstance(rule, Qal3Rule):
            return
        try:
            async with self._lock:
                told: list[_Told] = []
                self._observe(self._alert(rule, site, "", instrument, parameter), obs, told)
                await self._commit(told, now)
        except (sqlite3.Error, OSError) as error:
            log.error("alerts: QAL3 state of %s/%s/%s not recorded: %s", site, instrument, parameter, error)

    async def tick(self, now: datetime) -> None:
        """Time-driven work: gaps, offline for N s, reminders, ended silences; then message and deliver."""
        async with self._lock:
            self._started = self._started or now
            self._silences = await asyncio.to_thread(self.store.silences, now)
            self._acks = await asyncio.to_thread(self.store.acks)
            told: list[_Told] = []
            self._evaluate_time(now, told)
            await self._commit(told, now)  # first: what fired just now counts as told below
            told = []
            for alert in self._alerts.values():
                if alert.state.phase is not Phase.FIRING or alert.id is None:
                    continue
                acknowledged = (alert.id, alert.state.episode) in self._acks
                state, transition = remind(alert.state, now, self.remind_every, acknowledged=acknowledged)
                if transition is not None:
                    alert.state = state
                    told.append(_Told(alert, transition))
                elif not alert.firing_sent and not silenced(alert.key, now, self._silences):
                    # fired while silenced and still firing after the silence ended: tell it now
                    state = alert.state
                    late = Transition(
                        NoticeKind.FIRING, state.episode, now, state.since or now, state.value, state.peak, state.detail
                    )
                    told.append(_Told(alert, late, late=True))
            await self._commit(told, now, flush=True)
            await asyncio.to_thread(self._make_messages, now)
        await self.deliver(now)
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            await asyncio.to_thread(self.store.prune, now)

    async def run(
        self, *, interval: float = 1.0, clock: Callable[[], datetime] = _utc_now
    ) -> None:  # pragma: no cover - the loop around tick(), which the tests drive directly
        """Tick every `interval` seconds (sooner when a batch queued a notice) until cancelled."""
        while True:
            try:
                await self.tick(clock())
            except (sqlite3.Error, OSError) as error:
                log.error("alert tick failed: %s; trying again in %.0f s", error, interval)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):  # not wait_for: it can swallow a cancellation on 3.11
                    await self._wake.wait()
            self._wake.clear()

    # ---- evaluation ----

    def _rules_for_series(self, site: str, agent: str, instrument: str, parameter: str) -> list[SeriesRule]:
        key = (site, agent, instrument, parameter)
        return self._series_rules.get(
            key,
            lambda: [
                rule
                for rule in self.rules.values()
                if isinstance(rule, ThresholdRule | StuckRule) and rule.scope.matches(*key)
            ],
        )

    def _rules_for_instrument(self, site: str, agent: str, instrument: str) -> list[FailureRule | GapRule]:
        return self._instrument_rules.get(
            (site, agent, instrument),
            lambda: [
                rule
                for rule in self.rules.values()
                if isinstance(rule, FailureRule | GapRule) and rule.scope.matches(site, agent, instrument)
            ],
        )

    def _rules_for_agent(self, site: str, agent: str) -> list[OfflineRule | ClockSkewRule]:
        return self._agent_rules.get(
            (site, agent),
            lambda: [
                rule
                for rule in self.rules.values()
                if isinstance(rule, OfflineRule | ClockSkewRule) and rule.scope.matches(site, agent)
            ],
        )

    def _alert(self, rule: Rule, site: str, agent: str, instrument: str = "", parameter: str = "") -> _Alert:
        key = alert_key(rule, site, agent, instrument, parameter)
        alert = self._alerts.get(key)
        if alert is None:
            alert = self._alerts[key] = _Alert(key, rule)
        return alert

    def _observe(self, alert: _Alert, obs: Observation, told: list[_Told]) -> None:
        state, transition = step(alert.state, obs, alert.rule.timing)
        if state == alert.state:
            return
        alert.urgent = alert.urgent or state.phase is not alert.state.phase
        alert.dirty = True
        alert.state = state
        if transition is not None:
            told.append(_Told(alert, transition))

    def _factor(self, rule: ThresholdRule, unit: str, parameter: str) -> float | None:

        def factor() -> float | None:
            try:
                return conversion_factor(
                    unit,
                    rule.unit,
                    species=rule.species or parameter,
                    reference_temperature_c=self.reference_temperature_c,
                )
            except UnitError as error:
                log.warning("alert rule %s ignores %s readings in %s: %s", rule.name, parameter, unit, error)
                return None

        return self._factors.get((rule.name, unit, parameter), factor)

    def _evaluate_batch(self, batch: Batch, received_at: datetime, told: list[_Told]) -> list[tuple[str, str, str]]:
        site, agent = batch.site, batch.agent
        readings = sorted(batch.readings, key=lambda reading: reading.ts)
        agent_rules = self._rules_for_agent(site, agent) if self.tracked.room_for((site, agent)) else []
        if readings and agent_rules:
            self.tracked.add((site, agent))
            for agent_rule in agent_rules:
                if isinstance(agent_rule, ClockSkewRule):
                    obs = skew_observation(agent_rule, readings[-1].ts, received_at)
                    self._observe(self._alert(agent_rule, site, agent), obs, told)
        by_instrument: dict[str, list[Reading]] = {}
        for reading in readings:
            by_instrument.setdefault(reading.instrument, []).append(reading)
        new_sources = []
        for instrument, items in by_instrument.items():
            source = (site, agent, instrument)
            room = self.tracked.room_for(source)
            instrument_rules = self._rules_for_instrument(site, agent, instrument) if room else []
            if instrument_rules:
                self.tracked.add(source)
            if any(isinstance(rule, GapRule) for rule in instrument_rules):
                if source not in self._received:
                    new_sources.append(source)
                self._received[source] = received_at
            for instrument_rule in instrument_rules:
                alert = self._alert(instrument_rule, site, agent, instrument)
                if isinstance(instrument_rule, GapRule):
                    self._observe(alert, gap_observation(instrument_rule, received_at, received_at), told)
                    continue
                scope = instrument_rule.scope
                for ts, group in _by_time(items):
                    matching = [r for r in group if scope.matches(site, agent, instrument, r.parameter)]
                    if matching:
                        failing = [r.parameter for r in matching if r.quality is Quality.FAILURE]
                        self._observe(alert, failure_observation(ts, failing), told)
            for reading in items:
                series = (site, agent, instrument, reading.parameter)
                if not self.tracked.room_for(series):
                    continue
                series_rules = self._rules_for_series(*series)
                if series_rules:
                    self.tracked.add(series)
                for series_rule in series_rules:
                    alert = self._alert(series_rule, site, agent, instrument, reading.parameter)
                    sample = self._sample(series_rule, reading, items)
                    if sample is None:
                        continue
                    evaluator = self._evaluator(alert)
                    for obs in evaluator.add(sample):
                        self._observe(alert, obs, told)
                    if isinstance(series_rule, StuckRule):
                        alert.unit = reading.unit
        return new_sources

    def _sample(self, rule: SeriesRule, reading: Reading, instrument_readings: list[Reading]) -> Sample | None:
        if isinstance(rule, StuckRule):
            return Sample(reading.ts, reading.value, reading.quality)
        factor = self._factor(rule, reading.unit, reading.parameter)
        if factor is None:
            return None
        value = reading.value
        if value is not None and rule.reference_o2 is not None:
            simultaneous = {
                r.parameter: r.value
                for r in instrument_readings
                if r.ts == reading.ts and r.value is not None and r.quality.usable
            }
            value = reference_o2_value(rule, value, simultaneous)
        return Sample(reading.ts, None if value is None else value * factor, reading.quality)

    def _evaluator(self, alert: _Alert) -> ThresholdEvaluator | StuckEvaluator:
        evaluator = self._evaluators.get(alert.key)
        if evaluator is None:
            rule = alert.rule
            evaluator = ThresholdEvaluator(rule, self.tz) if isinstance(rule, ThresholdRule) else None
            if evaluator is None:
                if not isinstance(rule, StuckRule):
                    raise TypeError(f"rule {rule.name} has no series evaluator")
                evaluator = StuckEvaluator(rule)
            self._evaluators[alert.key] = evaluator
        return evaluator

    def _evaluate_time(self, now: datetime, told: list[_Told]) -> None:
        for (site, agent), (offline, since) in self._agents.items():
            for agent_rule in self._rules_for_agent(site, agent):
                if isinstance(agent_rule, OfflineRule):
                    obs = offline_observation(offline, since, now)
                    self._observe(self._alert(agent_rule, site, agent), obs, told)
        started = self._started or now
        for (site, agent, instrument), last in self._received.items():
            agent_state = self._agents.get((site, agent))
            if agent_state is not None and agent_state[0]:
                continue  # the agent is offline: its offline alert says it, not one gap alert per instrument
            for gap_rule in self._rules_for_instrument(site, agent, instrument):
                if not isinstance(gap_rule, GapRule):
                    continue
                alert = self._alert(gap_rule, site, agent, instrument)
                # The clock starts at the last data, but no earlier than this gateway's start or the agent's
                # return online: neither the gateway's own downtime nor a reconnection counts as a gap.
                clock = max(last or started, started, self._back_at.get((site, agent), started))
                if last is None and now - clock <= gap_rule.after:
                    continue  # nothing since the start yet: no "clear" either (a restart must not resolve a gap)
                obs = gap_observation(gap_rule, clock, now)
                if obs.level is Level.TRIGGER and clock != last:
                    silent_since = last or started
                    quiet = format_duration(now - silent_since)
                    nothing = "" if last is not None else " since the gateway started"
                    detail = f"no data for {quiet}{nothing}"
                    obs = replace(obs, since=silent_since, value=(now - silent_since).total_seconds(), detail=detail)
                self._observe(alert, obs, told)

    # ---- writing and telling ----

    def _group(self, key: AlertKey) -> str:
        return "|".join(str(getattr(key, name)) for name in self.group_by)

    def _notice(self, alert: _Alert, alert_id: int, transition: Transition, late: bool) -> Notice:
        rule = alert.rule
        limit: float | None = None
        unit, comparison, measure = "", "", ""
        if isinstance(rule, ThresholdRule):
            limit, unit = rule.threshold.limit, rule.unit
            comparison, measure = rule.threshold.direction.value, rule.window.label
        elif isinstance(rule, GapRule):
            limit, unit, measure = rule.after.total_seconds(), "s", "time without data"
        elif isinstance(rule, ClockSkewRule):
            limit, unit, measure = rule.max_skew.total_seconds(), "s", "clock offset"
        elif isinstance(rule, StuckRule):
            unit, measure = alert.unit, "repeated value"
        elif isinstance(rule, FailureRule):
            measure = "parameters flagged failure"
        elif isinstance(rule, QaRule):
            measure = "analyzer QA"
        else:
            measure = "agent status"
        return Notice(
            alert_id=alert_id,
            kind=transition.kind,
            key=alert.key,
            severity=rule.severity,
            title=rule.describe(),
            episode=transition.episode,
            at=transition.at,
            since=transition.since,
            value=transition.value,
            peak=transition.peak,
            limit=limit,
            unit=unit,
            comparison=comparison,
            measure=measure,
            detail=transition.detail,
            note=rule.note,
            late=late,
        )

    async def _commit(self, told: list[_Told], now: datetime, *, flush: bool = False) -> None:
        """Write what changed: every phase change and transition now, value updates when `flush`."""
        if flush and (self._flushed_at is None or now - self._flushed_at >= FLUSH_EVERY):
            self._flushed_at = now
        else:
            flush = False
        told = [*self._unwritten, *told]
        self._unwritten = []
        changed = {a.key: a for a in self._alerts.values() if a.urgent or (flush and a.dirty and a.state.active)}
        changed.update({t.alert.key: t.alert for t in told})
        if not changed:
            return
        alerts = list(changed.values())
        firing_sent = {alert.key: alert.firing_sent for alert in alerts}
        try:
            await self._write(alerts, told, now)
        except Exception:
            # Nothing of it is on disk (one transaction): keep the transitions for the next write, so a
            # failed write (disk full, busy) delays a notice instead of losing it. Not on cancellation: the
            # write's thread may still commit, and the process is stopping (the state DB is the truth then).
            for alert in alerts:
                alert.firing_sent = firing_sent[alert.key]
            self._keep_unwritten(told)
            raise
        for alert in alerts:
            alert.dirty = alert.urgent = False

    def _keep_unwritten(self, told: list[_Told]) -> None:
        if len(told) > UNWRITTEN_MAX:
            lost = len(told) - UNWRITTEN_MAX
            self.unwritten_lost += lost
            log.error("alerts: %d transitions not written and dropped (the state DB keeps failing)", lost)
            told = told[lost:]
        self._unwritten = told

    async def _write(self, alerts: list[_Alert], told: list[_Told], now: datetime) -> None:
        missing = [a.key for a in alerts if a.id is None]
        if missing:
            ids = await asyncio.to_thread(self.store.ensure_ids, missing, now)
            for alert in alerts:
                alert.id = alert.id or ids.get(alert.key)
        writes = []
        for item in told:
            alert, transition = item.alert, item.transition
            if alert.id is None:  # pragma: no cover - ensure_ids gave every alert an id
                continue
            send = should_send(
                transition.kind,
                is_silenced=silenced(alert.key, now, self._silences),
                firing_sent=alert.firing_sent,
            )
            if transition.kind is NoticeKind.FIRING:
                alert.firing_sent = send
            notice = self._notice(alert, alert.id, transition, item.late)
            writes.append(NoticeWrite(alert.id, notice, self._group(alert.key), now, send))
            if not send:
                log.info("alert %s %s: silenced, not sent", alert.key, transition.kind.value)
        states = [(a.id, a.state, a.firing_sent) for a in alerts if a.id is not None]
        await asyncio.to_thread(self.store.commit, states, writes, now)
        if any(write.send for write in writes):
            self._wake.set()

    def _make_messages(self, now: datetime) -> None:
        queued = self.store.queued()
        if not queued:
            return
        sent = self.store.message_times(now - self.policy.per)
        dispatches = plan_dispatch(queued, sent, now, self.policy)
        if not dispatches:
            if not any(now - q.queued_at < self.policy.group_wait for q in queued):
                log.warning(
                    "alert messages held back by the rate limit (%d per %s)", self.policy.max_messages, self.policy.per
                )
            return
        if not self.notifiers:
            log.warning("alerts: %d notices but no notifier is configured ([alerts.notify])", len(queued))
        self.store.create_messages(dispatches, list(self.notifiers), now)

    async def deliver(self, now: datetime) -> None:
        """Send what is due. Each channel gets its messages in order, one at a time: a message waiting for a
        retry holds back the later ones (a "resolved" never overtakes its "firing"). Channels run side by side."""
        async with self._delivering:
            rows = await asyncio.to_thread(self.store.deliveries, undelivered_only=True)
            queues: dict[str, list[DeliveryRow]] = {}
            for row in rows:
                if row.abandoned_at is None:
                    queues.setdefault(row.notifier, []).append(row)
            if queues:
                await asyncio.gather(*(self._drain(queue, now) for queue in queues.values()))

    async def _drain(self, queue: list[DeliveryRow], now: datetime) -> None:
        for row in sorted(queue, key=lambda r: r.message_id):
            if row.next_at > now or not await self._deliver_one(row, now):
                return

    async def _deliver_one(self, row: DeliveryRow, now: datetime) -> bool:
        """True when delivered (or given up on, which lets the next message through)."""
        notifier = self.notifiers.get(row.notifier)
        if notifier is None:
            await asyncio.to_thread(
                self.store.failed,
                row.message_id,
                row.notifier,
                "notifier no longer configured",
                next_at=now,
                abandon_at=now,
            )
            return True
        message = await asyncio.to_thread(self.store.message, row.message_id)
        try:
            await notifier.send(message)
        except NotifyError as error:
            return await self._failed(row, now, str(error), retryable=error.retryable)
        except Exception as error:  # a channel's own bug must not stop the others
            return await self._failed(row, now, f"{type(error).__name__}: {error}", retryable=True)
        await asyncio.to_thread(self.store.delivered, row.message_id, row.notifier, now)
        log.info("alert message %d delivered via %s", row.message_id, row.notifier)
        return True

    async def _failed(self, row: DeliveryRow, now: datetime, error: str, *, retryable: bool) -> bool:
        """Record a failed attempt; True when the delivery is given up (so later messages may go)."""
        backoff = min(RETRY_FIRST * 2**row.attempts, RETRY_MAX)
        give_up = not retryable or now - row.created >= GIVE_UP_AFTER
        if give_up:
            log.error("alert message %d via %s abandoned: %s", row.message_id, row.notifier, error)
        else:
            log.warning(
                "alert message %d via %s failed (%s); retry in %s", row.message_id, row.notifier, error, backoff
            )
        await asyncio.to_thread(
            self.store.failed,
            row.message_id,
            row.notifier,
            error,
            next_at=now + backoff,
            abandon_at=now if give_up else None,
        )
        return give_up

    # ---- for tests and the CLI ----

    @property
    def rule_cache_evictions(self) -> int:
        """Entries dropped from the bounded caches of which rules apply to a name, and unit factors."""
        memos = (self._series_rules, self._instrument_rules, self._agent_rules, self._factors)
        return sum(memo.evictions for memo in memos)

    def state_sizes(self) -> dict[str, int]:
        """How many entries each per-name structure holds (for the bound's tests)."""
        return {
            "tracked": len(self.tracked),
            "alerts": len(self._alerts),
            "evaluators": len(self._evaluators),
            "received": len(self._received),
            "agents": len(self._agents),
            "back_at": len(self._back_at),
            "series_rules": len(self._series_rules),
            "instrument_rules": len(self._instrument_rules),
            "agent_rules": len(self._agent_rules),
            "factors": len(self._factors),
        }

    def state_of(self, key: AlertKey) -> AlertState | None:
        alert = self._alerts.get(key)
        return None if alert is None else alert.state


def _scope_key(key: AlertKey) -> tuple[str, ...]:
    """The agent, instrument or series an alert keeps state for (its key in `AlertEngine.tracked`)."""
    if key.parameter:
        return (key.site, key.agent, key.instrument, key.parameter)
    if key.instrument:
        return (key.site, key.agent, key.instrument)
    return (key.site, key.agent)


def _by_time(readings: list[Reading]) -> list[tuple[datetime, list[Reading]]]:
    groups: dict[datetime, list[Reading]] = {}
    for reading in readings:
        groups.setdefault(reading.ts, []).append(reading)
    return sorted(groups.items())
