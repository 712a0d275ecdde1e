"""The gateway's own state file at steady state and under hostile input (issues 12 and 13).

Per-operation cost is counted deterministically as SQLite VM steps (`set_progress_handler`), never timed;
file sizes are read after a WAL checkpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aua_contract import AgentState, AgentStatus, Batch, Reading, encode_batch, readings_topic
from gateway.alerts.engine import AlertEngine, AlertStore, NoticeWrite
from gateway.alerts.state import AlertKey, Dispatch, Notice, NoticeKind, Severity
from gateway.config import GatewayConfig, GatewaySection, LedgerSection, MqttSection, StoreSection
from gateway.ingest.accounting import accounting_lines
from gateway.ingest.ledger import AgentAccount, Arrival, Ledger, Recorded
from gateway.ingest.service import Ingest
from gateway.ingest.spool import Spool
from gateway.mrv.report_feed import _FeedState
from gateway.stores import BatchReceipt, SqliteStore, open_store

DAY_NS = 86_400 * 10**9
SECOND = timedelta(seconds=1)


def vm_steps(ledger: Ledger, operation: Callable[[], object]) -> int:
    """SQLite virtual-machine steps one operation takes: the work it does, independent of the machine's speed."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    ledger._db.set_progress_handler(tick, 10)
    try:
        operation()
    finally:
        ledger._db.set_progress_handler(None, 10)
    return steps * 10


def file_bytes(ledger: Ledger, path: Path) -> int:
    """The state file's size once the WAL is checkpointed into it (what stays on disk)."""
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


# -- an old ledger: one batch_seen row per batch, the schema before sequence ranges -------------------------------

OLD_SCHEMA = """
CREATE TABLE batch_seen (site TEXT NOT NULL, agent TEXT NOT NULL, seq INTEGER NOT NULL, readings INTEGER NOT NULL,
    received_ns INTEGER NOT NULL, late INTEGER NOT NULL DEFAULT 0, repaired INTEGER NOT NULL DEFAULT 0,
    sent_ns INTEGER, PRIMARY KEY (site, agent, seq)) WITHOUT ROWID;
CREATE TABLE seq_reuse (site TEXT NOT NULL, agent TEXT NOT NULL, count INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    PRIMARY KEY (site, agent)) WITHOUT ROWID;
CREATE TABLE duplicate (site TEXT NOT NULL, agent TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (site, agent)) WITHOUT ROWID;
CREATE TABLE dead_letter (id INTEGER PRIMARY KEY, received_ns INTEGER NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE resend_request (site TEXT NOT NULL, agent TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (site, agent)) WITHOUT ROWID;
"""

OLD_ACCOUNTS = """SELECT b.site, b.agent, count(*), sum(b.readings), min(b.seq), max(b.seq), coalesce(d.count, 0),
       sum(b.late), sum(b.repaired), coalesce(u.count, 0), u.last_seq
    FROM batch_seen b
    LEFT JOIN duplicate d ON d.site = b.site AND d.agent = b.agent
    LEFT JOIN seq_reuse u ON u.site = b.site AND u.agent = b.agent
    GROUP BY b.site, b.agent ORDER BY b.site, b.agent"""
"""The accounting query of the ledger before sequence ranges: what `cems-gateway accounting` printed."""

OLD_HOLES = """SELECT seq + 1, next - 1 FROM (
    SELECT seq, lead(seq) OVER (ORDER BY seq) AS next FROM batch_seen WHERE site = ? AND agent = ?)
    WHERE next > seq + 1"""


def old_ledger(path: Path, rows: list[tuple[str, str, int, int, int, int, int, int | None]]) -> None:
    """A state file as the ledger before sequence ranges wrote it, bulk-inserted."""
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.executemany("INSERT INTO batch_seen VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("INSERT INTO duplicate VALUES ('s', 'a', 7)")
    db.execute("INSERT INTO seq_reuse VALUES ('s', 'a', 2, 40)")
    db.execute("INSERT INTO resend_request VALUES ('s', 'a', 3)")
    db.executemany(
        "INSERT INTO dead_letter (received_ns, topic, reason, payload) VALUES (?, ?, ?, ?)",
        [(0, "aua/v1/s/a/readings", "bad json", b"x" * 1000)] * 3,
    )
    db.commit()
    db.close()


def history(agent: str, batches: int, *, holes: tuple[int, ...] = (), received_ns: int = 0) -> list[Any]:
    """Rows of an old batch_seen: one per batch, sealed one second apart, a few late and repaired."""
    return [
        ("s", agent, seq, 30, received_ns, int(seq % 97 == 0), int(seq % 194 == 0), 1_000_000 + seq * 10**9)
        for seq in range(batches)
        if seq not in holes
    ]


def test_an_old_ledger_is_folded_into_ranges_and_accounts_the_same(tmp_path: Path) -> None:
    """Upgrade in place: every batch_seen row folded into sequence ranges and totals, per-batch detail kept only
    for the window; accounts, holes and the printed accounting are what the old ledger gave."""
    path = tmp_path / "state.sqlite"
    now = time.time_ns()
    rows = history("a", 5_000, holes=(10, 11, 12, 2_500, 4_998), received_ns=now) + history("b", 300)
    old_ledger(path, rows)
    old = sqlite3.connect(path)
    expected = [AgentAccount(*row) for row in old.execute(OLD_ACCOUNTS)]
    expected_holes = {agent: old.execute(OLD_HOLES, ("s", agent)).fetchall() for agent in ("a", "b")}
    old.close()

    ledger = Ledger(path, LedgerSection(detail_batches=1_000))
    assert ledger.accounts() == expected
    assert {agent: ledger.holes("s", agent) for agent in ("a", "b")} == expected_holes
    assert expected_holes["a"] == [(10, 12), (2_500, 2_500), (4_998, 4_998)]
    owed = ledger.owed()
    lines = accounting_lines(ledger.accounts(), owed, ledger.resend_requests(), ledger.counters())
    assert lines == accounting_lines(expected, owed, {("s", "a"): 3})
    assert lines[1].split() == ["s", "a", "4995", "149850", "0..4999", "7", "52", "26", "2", "3", "5", "0"]
    detail = ledger._db.execute("SELECT site, agent, count(*) FROM batch_seen GROUP BY 1, 2").fetchall()
    assert detail == [("s", "a", 999)]  # the last 1,000 numbers of a (one is a hole); b's rows were received in 1970
    counters = ledger.counters()
    assert (counters["dead_letter_rows"], counters["dead_letter_bytes"]) == (3, 3_000)
    assert counters["batch_detail_pruned"] == len(rows) - 999
    # a redelivery of a batch folded away is still a duplicate, a batch sealed later under its number is reused
    assert ledger.record_many([Arrival("s", "a", 5, 30, now, 1_000_000 + 5 * 10**9)]) == [Recorded.DUPLICATE]
    assert ledger.record_many([Arrival("s", "a", 5, 30, now, now)]) == [Recorded.REUSED]
    ledger.close()
    again = Ledger(path, LedgerSection(detail_batches=1_000))  # opening it again changes nothing
    assert [a.batches for a in again.accounts()] == [4_995, 300]
    again.close()


# -- cost per operation at 1k and 100k batches ---------------------------------------------------------------------


def operation_costs(path: Path, batches: int) -> dict[str, int]:
    """VM steps of each steady-state operation on a ledger holding `batches` batches of one agent (and a few of
    others), with the same five recent holes whatever its size."""
    now = time.time_ns()
    top = batches + 10
    holes = (top - 9, top - 7, top - 6, top - 3, top - 2)
    rows = history("a", top, holes=holes, received_ns=now) + history("b", 50, received_ns=now)
    old_ledger(path, rows)
    ledger = Ledger(path)
    ledger.count_resend_request("s", "a", top - 3, top - 2)
    sealed = 1_000_000 + top * 10**9
    costs = {
        "record a new batch": vm_steps(ledger, lambda: ledger.record_many([Arrival("s", "a", top, 30, now, sealed)])),
        "record a repaired batch": vm_steps(ledger, lambda: ledger.record_many([("s", "a", top - 3, 30, now)])),
        "record a duplicate": vm_steps(ledger, lambda: ledger.record_many([Arrival("s", "a", top, 30, now, sealed)])),
        "record an old duplicate": vm_steps(
            ledger, lambda: ledger.record_many([Arrival("s", "a", 3, 30, now, 1_000_000 + 3 * 10**9)])
        ),
        "record a group of 100": vm_steps(
            ledger, lambda: ledger.record_many([("s", "a", seq, 30, now) for seq in range(top + 1, top + 101)])
        ),
        "holes for gap repair": vm_steps(ledger, lambda: ledger.holes("s", "a", from_seq=0, limit=1_000)),
        "owed for gap repair": vm_steps(ledger, lambda: ledger.owed(max_ranges=1_000)),
        "accounts": vm_steps(ledger, ledger.accounts),
        "accounting": vm_steps(
            ledger,
            lambda: accounting_lines(ledger.accounts(), ledger.owed(), ledger.resend_requests(), ledger.counters()),
        ),
        "dead letter": vm_steps(ledger, lambda: ledger.dead_letter("t", "bad", b"x" * 100, now)),
        "resend request": vm_steps(ledger, lambda: ledger.count_resend_request("s", "a", top - 6, top - 6)),
    }
    [account] = [a for a in ledger.accounts() if a.agent == "a"]
    assert (account.batches, account.missing) == (top + 97, 4)
    ledger.close()
    return costs


def test_the_cost_of_each_operation_does_not_grow_with_the_ledger(tmp_path: Path) -> None:
    """1,000 vs 100,000 batches of history (a ledger of the old one-row-per-batch kind, bulk-inserted then
    upgraded): recording, gap repair's holes and owed, accounting, dead letters cost the same VM steps within
    a small factor. Before sequence ranges, accounting and holes read every row ever recorded."""
    small = operation_costs(tmp_path / "small.sqlite", 1_000)
    large = operation_costs(tmp_path / "large.sqlite", 100_000)
    grown = {name: (small[name], large[name]) for name in small if large[name] > 1.2 * small[name] + 50}
    assert grown == {}, f"VM steps at 1k vs 100k batches: {grown}"


# -- sizes steady once at the bounds ----------------------------------------------------------------------------


def test_the_ledger_file_is_steady_once_its_detail_window_is_full(tmp_path: Path) -> None:
    """A year of batches compressed: with a window of 2,000 batches of detail, the file stops growing once the
    window is full; the ranges and totals stay one row per agent."""
    path = tmp_path / "state.sqlite"
    ledger = Ledger(path, LedgerSection(detail_batches=2_000))
    sizes = []
    for group in range(60):
        first = group * 200
        ledger.record_many(
            [Arrival("s", agent, seq, 30, 0, seq) for seq in range(first, first + 200) for agent in "ab"]
        )
        if group >= 20 and group % 10 == 0:
            sizes.append(file_bytes(ledger, path))
    assert max(sizes) == min(sizes), sizes
    assert ledger._db.execute("SELECT count(*) FROM seq_run").fetchone() == (2,)
    assert ledger._db.execute("SELECT count(*) FROM batch_seen").fetchone()[0] <= 2 * 2_000 + 50
    assert [a.batches for a in ledger.accounts()] == [12_000, 12_000]
    assert ledger.counters()["batch_detail_pruned"] >= 2 * (12_000 - 2_050)
    ledger.close()


def test_detail_older_than_its_age_is_dropped(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state.sqlite", LedgerSection(detail_batches=1_000_000, detail_days=1))
    ledger.record_many([Arrival("s", "a", seq, 1, 0, seq) for seq in range(100)])
    for seq in range(100, 110):  # pruned in small steps: at most 2 per batch recorded, plus 8
        ledger.record_many([Arrival("s", "a", seq, 1, 2 * DAY_NS, seq)])
    assert ledger._db.execute("SELECT min(seq), count(*) FROM batch_seen").fetchone() == (100, 10)
    assert ledger.counters()["batch_detail_pruned"] == 100
    [account] = ledger.accounts()
    assert (account.batches, account.first_seq, account.last_seq) == (110, 0, 109)
    ledger.close()


def test_dead_letters_are_capped_hashed_and_pruned_to_a_steady_file(tmp_path: Path) -> None:
    """Five 10 MB messages used to add 56 MB to the state file. Each payload is cut to dead_letter_payload_bytes
    (its size and SHA-256 kept), the table pruned by rows and bytes, the counts kept."""
    path = tmp_path / "state.sqlite"
    bounds = LedgerSection(dead_letter_payload_bytes=16_384, dead_letter_max_rows=40, dead_letter_max_bytes=300_000)
    ledger = Ledger(path, bounds)
    huge = b"{" + b"x" * (10 * 1024 * 1024)
    ledger.dead_letter("aua/v1/s/a/readings", "too large", huge, 1)
    [letter] = ledger.dead_letters()
    assert (len(letter.payload), letter.size, letter.truncated) == (16_384, len(huge), True)
    assert letter.sha256 == hashlib.sha256(huge).hexdigest()
    sizes = []
    for n in range(300):
        ledger.dead_letter("aua/v1/s/a/readings", "bad", huge[: 1_000 + 97 * n], 2 + n)
        if n >= 100 and n % 50 == 0:
            sizes.append(file_bytes(ledger, path))
    counters = ledger.counters()
    rows, nbytes = ledger._db.execute("SELECT count(*), sum(length(payload)) FROM dead_letter").fetchone()
    assert (counters["dead_letter_rows"], counters["dead_letter_bytes"]) == (rows, nbytes)
    assert rows <= 40
    assert nbytes <= 300_000
    assert counters["dead_letters_pruned"] == 301 - rows
    assert counters["dead_letters_truncated"] == 1 + sum(1 for n in range(300) if 1_000 + 97 * n > 16_384)
    assert max(sizes) <= min(sizes) * 1.05, sizes
    assert sizes[-1] < 2_000_000
    ledger.close()


def test_dead_letters_older_than_their_age_are_pruned(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state.sqlite", LedgerSection(dead_letter_days=1))
    for n in range(5):
        ledger.dead_letter("t", "bad", b"x", n)
    ledger.record_many([("s", "a", 0, 1, 2 * DAY_NS)])  # pruning rides on ordinary writes too
    assert ledger.dead_letters() == []
    assert ledger.counters()["dead_letters_pruned"] == 5
    ledger.close()


# -- refused batches --------------------------------------------------------------------------------------------


async def test_a_batch_the_store_refuses_is_recorded_refused_and_not_asked_again(tmp_path: Path) -> None:
    """A store that refuses for good (here a closed one: not retryable) makes the batch a dead letter, and the
    ledger records its number as refused: not missing, not in what gap repair asks for."""
    config = GatewayConfig(
        gateway=GatewaySection(state=tmp_path / "state.sqlite", gap_grace_s=0, gap_retry_s=1),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
    )
    store = open_store(config.store.url)
    ledger = Ledger(config.gateway.state, config.ledger)
    ingest = Ingest(config, store, ledger)
    ledger.record_many([("s", "a", 0, 1, 0), ("s", "a", 2, 1, 0)])
    now = datetime.now(UTC).replace(microsecond=0)
    reading = Reading(instrument="hg1", parameter="hg", value=1.0, unit="ng/m³", ts=now)
    batch = Batch(site="s", agent="a", seq=1, sent_at=now, readings=[reading])
    writer = asyncio.create_task(ingest.write_forever())
    try:
        await ingest.handle(readings_topic("s", "a"), encode_batch(batch))
        async with asyncio.timeout(10):
            await ingest.flushed()
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    [account] = ledger.accounts()
    assert (account.batches, account.refused, account.missing) == (2, 1, 0)
    assert ledger.owed()[("s", "a")].requestable == []
    assert ingest.resend_requests_due(now=100.0) == []
    assert ingest.stats.refused_batches == 1
    [letter] = ledger.dead_letters()
    assert letter.reason.startswith("store rejected")
    lines = accounting_lines(ledger.accounts(), ledger.owed(), ledger.resend_requests(), ledger.counters())
    assert lines[-1] == "s/a 1 batches refused by the store for good (dead letters, not asked for again)"
    exposition = ingest.metrics.exposition().decode()
    for line in ("aua_gateway_refused_batches_total 1.0", "aua_gateway_dead_letter_rows 1.0"):
        assert line in exposition.splitlines()
    assert "aua_gateway_dead_letters_pruned_total 0.0" in exposition.splitlines()
    ingest.spool.close()
    ledger.close()


# -- the ledger against a model of what it must account -----------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("record"),
            st.sampled_from("ab"),
            st.integers(0, 40),
            st.integers(0, 5),
            st.sampled_from(["sealed", "unsealed", "reused"]),
            st.booleans(),
        ),
        st.tuples(st.just("request"), st.sampled_from("ab"), st.integers(0, 40), st.integers(0, 5)),
        st.tuples(st.just("refuse"), st.sampled_from("ab"), st.integers(0, 40)),
    ),
    max_size=120,
)


@given(ops=operations, detail_batches=st.sampled_from([1, 3, 1_000]))
def test_ranges_account_exactly_what_a_row_per_batch_did(ops: list[tuple[Any, ...]], detail_batches: int) -> None:
    """Random arrivals (reordered, duplicated, resent, reused numbers, receipts without classification, refusals)
    against a model with one entry per batch, as the old ledger had: same accounts, same holes, same outcomes,
    whatever the detail window (an agent seals its sequence in order, so beyond the window a batch sealed later
    than its run is a reused number)."""
    ledger = Ledger(":memory:", LedgerSection(detail_batches=detail_batches))
    seen: dict[tuple[str, int], int | None] = {}
    totals: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"batches": 0, "readings": 0, "late": 0, "repaired": 0, "dups": 0, "reused": 0, "last": None, "ref": 0}
    )
    requested: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for n, op in enumerate(ops):
        if op[0] == "request":
            _, agent, first, span = op
            ledger.count_resend_request("s", agent, first, first + span)
            requested[agent].append((first, first + span))
            continue
        if op[0] == "refuse":
            _, agent, seq = op
            assert ledger.record_refused("s", agent, seq, 0, 1_000 + seq) == ((agent, seq) not in seen)
            if (agent, seq) not in seen:
                seen[(agent, seq)] = 1_000 + seq
                totals[agent]["ref"] += 1
            continue
        _, agent, seq, readings, kind, classify = op
        if kind == "reused" and (agent, seq) not in seen:
            kind = "sealed"
        sent = {"sealed": 1_000 + seq, "unsealed": None, "reused": 10**9 + n}[kind]
        [outcome] = ledger.record_many([Arrival("s", agent, seq, readings, 0, sent)], classify=classify)
        account = totals[agent]
        if (agent, seq) in seen:
            stored = seen[(agent, seq)]
            if sent is not None and stored is not None and sent != stored:
                assert outcome is Recorded.REUSED
                account["reused"] += 1
                account["last"] = seq
            else:
                assert outcome is Recorded.DUPLICATE
                account["dups"] += 1
            continue
        assert outcome is Recorded.NEW
        highest = max((s for a, s in seen if a == agent), default=-1)
        late = classify and seq < highest
        account["batches"] += 1
        account["readings"] += readings
        account["late"] += late
        account["repaired"] += late and any(first <= seq <= last for first, last in requested[agent])
        seen[(agent, seq)] = sent
    expected = []
    for agent in sorted({a for a, _ in seen}):
        seqs = sorted(s for a, s in seen if a == agent)
        t = totals[agent]
        expected.append(
            AgentAccount(
                "s",
                agent,
                t["batches"],
                t["readings"],
                seqs[0],
                seqs[-1],
                t["dups"],
                t["late"],
                t["repaired"],
                t["reused"],
                t["last"],
                t["ref"],
            )
        )
        holes = [(lo + 1, hi - 1) for lo, hi in pairwise(seqs) if hi > lo + 1]
        assert ledger.holes("s", agent) == holes
        assert ledger.holes("s", agent, limit=2) == holes[:2]
    assert ledger.accounts() == expected
    ledger.close()


# -- alert history -------------------------------------------------------------------------------------------------


def a_notice(alert_id: int, kind: NoticeKind, at: datetime) -> Notice:
    return Notice(
        alert_id=alert_id, kind=kind, key=AlertKey("hg", "s", "a", "hg1", "hg"), severity=Severity.WARNING,
        title="mercury", episode=1, at=at, since=at, value=1.0, peak=1.0, limit=0.5, unit="ng/m³",
        comparison="above", measure="instant value", detail="",
    )  # fmt: skip


def test_alert_history_is_pruned_by_age_and_count_keeping_what_is_still_needed(tmp_path: Path) -> None:
    """Notices told and delivered long ago go, with their messages and deliveries; a queued notice, a delivery
    still being retried and its message stay, whatever their age; beyond max_notices the oldest told go."""
    store = AlertStore(tmp_path / "state.sqlite", keep=timedelta(days=1), max_notices=100)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    [alert_id] = store.ensure_ids([AlertKey("hg", "s", "a", "hg1", "hg")], t0).values()

    def notices(count: int, at: datetime, *, send: bool = True) -> None:
        writes = [NoticeWrite(alert_id, a_notice(alert_id, NoticeKind.FIRING, at), "g", at, send)] * count
        store.commit([], writes, at)

    notices(300, t0)
    told = [q.notice_id for q in store.queued()][:250]
    dispatches = [Dispatch(tuple(told[:200]), ("g",)), Dispatch(tuple(told[200:]), ("g",))]
    delivered, retried = store.create_messages(dispatches, ["hook"], t0)
    store.delivered(delivered, "hook", t0)
    store.failed(retried, "hook", "down", next_at=t0 + timedelta(days=9), abandon_at=None)
    notices(40, t0, send=False)  # suppressed (silenced): history only

    later = t0 + timedelta(days=2)
    while store.prune(later, step=50):
        pass
    rows = dict(store._db.execute("SELECT status, count(*) FROM alert_notice GROUP BY status").fetchall())
    assert rows == {"queued": 50, "sending": 50}  # the 50 of the message still being tried stay, and the queued
    assert [d.message_id for d in store.deliveries()] == [retried]
    assert store.message(retried).notices  # its message can still be sent
    assert store.pruned == 200 + 40 + 2  # told notices, suppressed ones, the delivered message and its delivery
    notices(150, later)  # recent, but more than max_notices: the oldest told ones beyond the newest 100 go
    store.delivered(retried, "hook", later)
    while store.prune(later, step=50):
        pass
    assert store._db.execute("SELECT count(*) FROM alert_notice WHERE status != 'queued'").fetchone() == (0,)
    assert len(store.queued()) == 200  # queued notices are never pruned (the engine still has to tell them)
    store.close()


def test_report_feed_state_keeps_only_the_periods_the_feed_still_looks_at(tmp_path: Path) -> None:
    """The feed consults only the last month and the last year: rows of periods two calendar years back go."""
    state = _FeedState(tmp_path / "state.sqlite")
    for year in range(2015, 2027):
        state.written("stack-1", f"{year}", f"/r/{year}.json")
        for month in range(1, 13):
            state.written("stack-1", f"{year}-{month:02d}", f"/r/{year}-{month:02d}.json")
    assert state.forget_before("2024") == 9 * 13
    assert state.get("stack-1", "2023-12") is None
    assert state.get("stack-1", "2024") == ("/r/2024.json", None)
    assert state.get("stack-1", "2024-01") is not None
    assert state._db.execute("SELECT count(*) FROM report_feed").fetchone() == (3 * 13,)
    state.close()


def test_the_alert_history_file_is_steady_once_at_its_bounds(tmp_path: Path) -> None:
    """Day after day of notices told and delivered, pruned as the engine's tick does: the file stops growing."""
    path = tmp_path / "state.sqlite"
    store = AlertStore(path, keep=timedelta(days=3), max_notices=100_000)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    [alert_id] = store.ensure_ids([AlertKey("hg", "s", "a", "hg1", "hg")], t0).values()
    sizes = []
    for day in range(30):
        now = t0 + timedelta(days=day)
        writes = [NoticeWrite(alert_id, a_notice(alert_id, NoticeKind.FIRING, now), "g", now, True)] * 200
        store.commit([], writes, now)
        [message] = store.create_messages([Dispatch(tuple(q.notice_id for q in store.queued()), ("g",))], ["h"], now)
        store.delivered(message, "h", now)
        for _ in range(4):  # one prune per tick: a few ticks a day are plenty
            store.prune(now, step=500)
        if day >= 10:
            store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes.append(path.stat().st_size)
    assert max(sizes) == min(sizes), sizes
    assert store._db.execute("SELECT count(*) FROM alert_notice").fetchone()[0] <= 4 * 200
    store.close()


async def test_the_alert_engine_prunes_its_history_as_it_ticks(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "state.sqlite", keep=timedelta(days=1))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    [alert_id] = store.ensure_ids([AlertKey("hg", "s", "a", "hg1", "hg")], t0).values()
    store.commit([], [NoticeWrite(alert_id, a_notice(alert_id, NoticeKind.FIRING, t0), "g", t0, False)] * 10, t0)
    engine = AlertEngine([], store)
    await engine.tick(t0 + timedelta(hours=1))
    assert store.pruned == 0  # a day is kept
    await engine.tick(t0 + timedelta(days=2))
    assert store.pruned == 10
    engine.close()


def test_sequence_numbers_at_the_top_of_int64_are_recorded_and_accounted(tmp_path: Path) -> None:
    """The contract admits any int64 sequence number: the ledger's range arithmetic must not overflow SQLite."""
    top = 2**63 - 1
    ledger = Ledger(tmp_path / "state.sqlite")
    assert ledger.record_many([("s", "a", 0, 1, 0), ("s", "a", top - 2, 1, 0), ("s", "a", top, 1, 0)]) == [
        Recorded.NEW
    ] * 3  # fmt: skip
    assert ledger.record_many([("s", "a", top - 1, 1, 0)]) == [Recorded.NEW]
    assert ledger.record_many([("s", "a", top, 1, 0)]) == [Recorded.DUPLICATE]
    assert ledger.holes("s", "a") == [(1, top - 3)]
    assert ledger.holes("s", "a", from_seq=top, limit=5) == []
    [account] = ledger.accounts()
    assert (account.batches, account.first_seq, account.last_seq, account.missing) == (4, 0, top, top - 3)
    assert ledger.record_refused("s", "b", top, 0)
    ledger.close()


# -- the spool: bounded in bytes and batches; full means "wait", never "drop" ----------------------------------


def test_a_full_spool_refuses_without_writing_and_says_so_once(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, max_bytes=10_000, max_batches=5)
    caplog.set_level("INFO", logger="gateway.ingest.spool")
    assert spool.put("s", "a", 0, "t", b"x" * 20_000)  # an empty spool takes one batch over the bound
    assert not spool.put("s", "a", 1, "t", b"x" * 10)  # ... and nothing after it
    assert (spool.depth, spool.size, spool.full, spool.full_count, spool.refused) == (1, 20_000, True, 1, 1)
    assert not spool.put("s", "a", 1, "t", b"x" * 10)  # still full: counted, not logged again
    [(row_id, _, _)] = spool.oldest(10)
    spool.remove([row_id])
    assert (spool.depth, spool.size, spool.full, spool.refused) == (0, 0, False, 2)
    assert all(spool.put("s", "a", seq, "t", b"y" * 1000) for seq in range(5))
    assert not spool.put("s", "a", 5, "t", b"y")  # max_batches
    assert spool.full_count == 2
    spool.remove([row_id for row_id, _, _ in spool.oldest(1)])
    assert spool.put("s", "a", 5, "t", b"y" * 1000)  # room again: taken, the full stretch ends
    assert not spool.full
    assert spool.full_seconds > 0
    spool.close()
    reopened = Spool(path, max_bytes=10_000, max_batches=5)  # depth and bytes come back from the file
    assert (reopened.depth, reopened.size) == (5, 5000)
    reopened.close()
    messages = [(r.levelname, r.getMessage().split(" (")[0].split(" after")[0]) for r in caplog.records]
    assert messages == [
        ("WARNING", "spool full"),
        ("INFO", "spool has room again"),
        ("WARNING", "spool full"),
        ("INFO", "spool has room again"),
    ]


# -- batch receipts (shared subscriptions): pruned per agent, per-operation cost flat -------------------------


async def store_vm_steps(store: SqliteStore, operation: Callable[[], Awaitable[object]]) -> int:
    """VM steps the store's connection takes for one operation (the handler is set on the store's thread)."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    await store.run_on_connection(lambda connection: connection.set_progress_handler(tick, 10))
    try:
        await operation()
    finally:
        await store.run_on_connection(lambda connection: connection.set_progress_handler(None, 10))
    return steps * 10


async def receipt_costs(path: Path, held: int) -> dict[str, int]:
    """VM steps of writing a receipt, looking up a range and pruning the 100 oldest, with `held` receipts of
    the agent (and as many of another) in the store (bulk-inserted)."""
    store = SqliteStore(path)
    await store.open()
    try:

        def fill(connection: sqlite3.Connection) -> None:
            connection.execute("BEGIN")
            connection.executemany(
                "INSERT INTO batch_receipt VALUES (?, ?, ?, 30)",
                ((site, agent, seq) for site, agent in (("s", "a"), ("s", "b")) for seq in range(held)),
            )
            connection.execute("COMMIT")

        await store.run_on_connection(fill)
        return {
            "write": await store_vm_steps(store, lambda: store.write_receipts([BatchReceipt("s", "a", held, 30)])),
            "lookup": await store_vm_steps(store, lambda: store.received_batches("s", "a", held - 20, held + 20)),
            "prune": await store_vm_steps(store, lambda: store.prune_receipts("s", "a", 100)),
        }
    finally:
        await store.close()


async def test_the_cost_of_receipt_operations_does_not_grow_with_the_receipts_held(tmp_path: Path) -> None:
    small = await receipt_costs(tmp_path / "small.sqlite", 1_000)
    large = await receipt_costs(tmp_path / "large.sqlite", 100_000)
    grown = {name: (small[name], large[name]) for name in small if large[name] > 1.2 * small[name] + 50}
    assert grown == {}, f"VM steps at 1k vs 100k receipts: {grown}"


async def test_receipts_stay_at_their_bound_and_what_is_pruned_is_counted(tmp_path: Path) -> None:
    """A gateway of a shared subscription writes a receipt per batch; its gap check prunes them to the last
    [ledger] receipt_batches numbers per agent (and none below the agent's oldest_seq), so the table stops
    growing; what it drops is counted in the ledger, accounting and /metrics."""
    config = GatewayConfig(
        gateway=GatewaySection(state=tmp_path / "state.sqlite", roles=["ingest"]),  # (alerts, mrv: not shared)
        mqtt=MqttSection(shared_group="g"),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
        ledger=LedgerSection(receipt_batches=1_000),
    )
    store = open_store(config.store.url)
    await store.open()
    ledger = Ledger(config.gateway.state, config.ledger)
    ingest = Ingest(config, store, ledger)

    async def rows() -> int:
        return int(
            await store.run_on_connection(lambda c: c.execute("SELECT count(*) FROM batch_receipt").fetchone()[0])
        )

    held = []
    written = 0
    for group in range(40):
        seqs = range(group * 300, (group + 1) * 300)
        for agent in "ab":
            ledger.record_many([Arrival("s", agent, seq, 30, 0, seq) for seq in seqs])
            await store.write_receipts([BatchReceipt("s", agent, seq, 30) for seq in seqs])
            written += len(seqs)
        await ingest.prune_receipts()
        held.append(await rows())
    assert max(held[5:]) <= 2 * (1_000 + 100 + 300)  # per agent: the bound, a tenth of it, one group
    assert min(held[5:]) >= 2 * 1_000
    assert ledger.counters()["receipts_pruned"] == written - held[-1]
    assert await store.received_batches("s", "a", 11_000, 12_000) == dict.fromkeys(range(11_000, 12_000), 30)

    status = AgentStatus(site="s", agent="a", state=AgentState.ONLINE, next_seq=12_000, oldest_seq=11_900)
    ledger.agent_state(status, 0)  # the agent holds nothing below 11,900: no gateway will ask for those
    await ingest.prune_receipts()
    assert await store.received_batches("s", "a", 0, 11_899) == {}
    assert len(await store.received_batches("s", "b", 0, 12_000)) >= 1_000
    assert ledger.counters()["receipts_pruned"] == written - await rows()
    assert any("batch receipts:" in line for line in accounting_lines([], {}, {}, ledger.counters()))
    assert f"aua_gateway_receipts_pruned_total {float(written - await rows())}" in ingest.metrics.exposition().decode()
    ingest.spool.close()
    ledger.close()
    await store.close()


async def test_new_agent_ids_beyond_max_agents_are_dead_letters_and_counted(tmp_path: Path) -> None:
    """Without [registry] agents, ids a publisher invents stop at [ledger] max_agents: the agents already
    followed go on (after a restart too), new ones' batches and statuses become dead letters, counted."""
    config = GatewayConfig(
        gateway=GatewaySection(state=tmp_path / "state.sqlite"),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
        ledger=LedgerSection(max_agents=2),
    )
    now = datetime.now(UTC).replace(microsecond=0)

    def batch(agent: str, seq: int) -> bytes:
        reading = Reading(instrument="hg1", parameter="hg", value=1.0 + seq, unit="ng/m³", ts=now + seq * SECOND)
        return encode_batch(Batch(site="s", agent=agent, seq=seq, sent_at=now, readings=[reading]))

    def status(agent: str) -> bytes:
        return AgentStatus(site="s", agent=agent, state=AgentState.ONLINE, next_seq=1).model_dump_json().encode()

    async def run(messages: list[tuple[str, bytes]]) -> Ingest:
        store = open_store(config.store.url)
        await store.open()
        ledger = Ledger(config.gateway.state, config.ledger)
        ingest = Ingest(config, store, ledger)
        writer = asyncio.create_task(ingest.write_forever())
        try:
            for topic, payload in messages:
                await ingest.handle(topic, payload)
            async with asyncio.timeout(10):
                await ingest.flushed()
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            ingest.spool.close()
            await store.close()
        return ingest

    first = await run(
        [
            (readings_topic("s", "a1"), batch("a1", 0)),
            ("aua/v1/s/a2/status", status("a2")),
            (readings_topic("s", "a3"), batch("a3", 0)),
            ("aua/v1/s/a4/status", status("a4")),
            (readings_topic("s", "a1"), batch("a1", 1)),
        ]
    )
    assert (first.stats.batches, first.stats.agents_refused, first.stats.dead_letters) == (2, 2, 2)
    assert "aua_gateway_agents_refused_total 2.0" in first.metrics.exposition().decode()
    letters = first.ledger.dead_letters()
    assert [letter.topic for letter in reversed(letters)] == [readings_topic("s", "a3"), "aua/v1/s/a4/status"]
    assert "s/a3 is new and the gateway already follows [ledger] max_agents (2)" in letters[-1].reason
    first.ledger.close()

    again = await run([(readings_topic("s", "a2"), batch("a2", 0)), (readings_topic("s", "a5"), batch("a5", 0))])
    assert (again.stats.batches, again.stats.agents_refused) == (1, 1)  # a2 was followed before the restart
    assert sorted(a.agent for a in again.ledger.accounts()) == ["a1", "a2"]
    again.ledger.close()
