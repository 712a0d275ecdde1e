"""`transaction()` (gateway/state_file.py) and every multi-statement change of the alert store: a failure
injected between two statements (a SQLite trigger that raises, on the store's own connection) leaves
nothing half-written."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.alerts.engine import AlertStore, NoticeWrite
from gateway.alerts.state import AlertKey, AlertState, Dispatch, Notice, NoticeKind, Phase, Severity
from gateway.state_file import NestedTransactionError, StateFile, transaction

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = AlertKey("hg", "s", "a", "hg1", "hg")
ALERT_TABLES = (
    "alert",
    "alert_notice",
    "alert_message",
    "alert_delivery",
    "alert_silence",
    "alert_ack",
    "alert_source",
)


# --------------------------------------------------------------------------------------------------
# transaction() itself, on raw connections
# --------------------------------------------------------------------------------------------------


def autocommit(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY)")
    return db


def rows(db: sqlite3.Connection) -> list[int]:
    return [x for (x,) in db.execute("SELECT x FROM t ORDER BY x")]


def test_a_transaction_commits_its_block_whole(tmp_path: Path) -> None:
    db = autocommit(tmp_path / "s.sqlite")
    with transaction(db) as inside:
        inside.execute("INSERT INTO t VALUES (1)")
        inside.execute("INSERT INTO t VALUES (2)")
        assert db.in_transaction
    assert not db.in_transaction
    assert rows(autocommit(tmp_path / "s.sqlite")) == [1, 2]  # visible to another connection: committed


def test_an_exception_rolls_the_whole_block_back_and_is_raised_again(tmp_path: Path) -> None:
    db = autocommit(tmp_path / "s.sqlite")

    def interrupted() -> None:
        with transaction(db):
            db.execute("INSERT INTO t VALUES (1)")
            raise KeyError("between the two statements")

    def second_fails() -> None:
        with transaction(db):
            db.execute("INSERT INTO t VALUES (2)")
            db.execute("INSERT INTO t VALUES (2)")

    with pytest.raises(KeyError, match="between"):
        interrupted()
    with pytest.raises(sqlite3.IntegrityError):
        second_fails()
    assert not db.in_transaction
    assert rows(db) == []


def test_with_connection_in_autocommit_mode_is_not_a_transaction(tmp_path: Path) -> None:
    """Why transaction() exists: the idiom it replaces keeps the first statement of a failed block."""
    db = autocommit(tmp_path / "s.sqlite")

    def second_fails() -> None:
        with db:
            db.execute("INSERT INTO t VALUES (1)")
            db.execute("INSERT INTO t VALUES (1)")

    with pytest.raises(sqlite3.IntegrityError):
        second_fails()
    assert rows(db) == [1]


def test_a_failed_commit_is_rolled_back(tmp_path: Path) -> None:
    """A deferred foreign key is checked at COMMIT: the COMMIT fails, and nothing of the block stays."""
    db = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute(
        "CREATE TABLE child (id INTEGER PRIMARY KEY, "
        "parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )

    def orphan() -> None:
        with transaction(db):
            db.execute("INSERT INTO parent VALUES (1)")
            db.execute("INSERT INTO child VALUES (1, 99)")

    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        orphan()
    assert not db.in_transaction
    assert db.execute("SELECT count(*) FROM parent").fetchone() == (0,)


def test_transactions_do_not_nest(tmp_path: Path) -> None:
    db = autocommit(tmp_path / "s.sqlite")

    def nested() -> None:
        with transaction(db):
            db.execute("INSERT INTO t VALUES (1)")
            with transaction(db):
                db.execute("INSERT INTO t VALUES (2)")

    with pytest.raises(NestedTransactionError):
        nested()
    assert rows(db) == []  # the refusal is an exception of the outer block, which rolls it back


def test_it_works_on_a_connection_in_pythons_default_mode_too(tmp_path: Path) -> None:
    autocommit(tmp_path / "s.sqlite").close()
    db = sqlite3.connect(tmp_path / "s.sqlite")  # isolation_level "" (implicit transactions)

    def interrupted() -> None:
        with transaction(db):
            db.execute("INSERT INTO t VALUES (1)")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        interrupted()
    with transaction(db):
        db.execute("INSERT INTO t VALUES (2)")
    assert rows(autocommit(tmp_path / "s.sqlite")) == [2]


def test_a_state_file_refuses_a_nested_transaction_instead_of_deadlocking(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "s.sqlite", "CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY);")

    def nested() -> None:
        with state.transaction() as db:
            db.execute("INSERT INTO t VALUES (1)")
            with state.transaction():
                pass

    with pytest.raises(NestedTransactionError):
        nested()
    with state.transaction() as db:
        db.execute("INSERT INTO t VALUES (2)")
    assert rows(state._db) == [2]
    state.close()


# --------------------------------------------------------------------------------------------------
# Every multi-statement change of the alert store, failed between its statements
# --------------------------------------------------------------------------------------------------


def a_notice(alert_id: int, at: datetime) -> Notice:
    return Notice(
        alert_id=alert_id, kind=NoticeKind.FIRING, key=KEY, severity=Severity.WARNING, title="mercury", episode=1,
        at=at, since=at, value=480.0, peak=480.0, limit=300.0, unit="ng/m³", comparison="above",
        measure="instant value", detail="",
    )  # fmt: skip


class Seeded:
    """An alert store with something of every kind: a firing alert, queued notices, a message being
    delivered to two channels, and old history (a delivered message, a past acknowledgement, an ended
    silence) for prune to find."""

    def __init__(self, path: Path) -> None:
        self.store = store = AlertStore(path, keep=timedelta(days=1))
        old = T0 - timedelta(days=30)
        [self.alert_id] = store.ensure_ids([KEY], old).values()
        firing = AlertState(phase=Phase.FIRING, episode=2, since=old, fired_at=old, last_at=old, value=480.0)
        store.commit(
            [(self.alert_id, firing, True)],
            [NoticeWrite(self.alert_id, a_notice(self.alert_id, old), "g", old, True)],
            old,
        )
        [self.old_message] = store.create_messages([Dispatch(tuple(self.queued()), ("g",))], ["hook"], old)
        store.delivered(self.old_message, "hook", old)
        store._db.execute("INSERT INTO alert_ack VALUES (?, 1, 'ops', 0, '')", (self.alert_id,))  # a past episode
        store.add_silence(starts=old, ends=old + timedelta(hours=1), rule="hg")
        store.add_sources([("s", "a", "hg1")], old)
        writes = [NoticeWrite(self.alert_id, a_notice(self.alert_id, T0), "g", T0, True)] * 4
        store.commit([], writes, T0)
        [self.message] = store.create_messages([Dispatch(tuple(self.queued()[:2]), ("g",))], ["hook", "mail"], T0)

    def queued(self) -> list[int]:
        return [q.notice_id for q in self.store.queued()]

    def snapshot(self) -> dict[str, list[tuple[object, ...]]]:
        db = self.store._db
        return {table: sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in ALERT_TABLES}


def resolve(seeded: Seeded) -> None:
    resolved = AlertState(phase=Phase.RESOLVED, episode=2, resolved_at=T0, last_at=T0, value=5.0)
    notice = NoticeWrite(seeded.alert_id, a_notice(seeded.alert_id, T0), "g", T0, True)
    seeded.store.commit([(seeded.alert_id, resolved, True)], [notice], T0)


def second_message(seeded: Seeded) -> None:
    seeded.store.create_messages([Dispatch(tuple(seeded.queued()), ("g",))], ["hook", "mail"], T0)


def last_delivery(seeded: Seeded) -> None:
    seeded.store.delivered(seeded.message, "mail", T0)  # the message's last: its notices become sent


def abandoned(seeded: Seeded) -> None:
    seeded.store.failed(seeded.message, "mail", "refused", next_at=T0, abandon_at=T0)  # the last: undelivered


def new_alerts(seeded: Seeded) -> None:
    seeded.store.ensure_ids([AlertKey("first", "s"), AlertKey("second", "s")], T0)


def new_sources(seeded: Seeded) -> None:
    seeded.store.add_sources([("s", "a", "first"), ("s", "a", "second")], T0)


def prune(seeded: Seeded) -> None:
    assert seeded.store.prune(T0) > 0


FAIL = "SELECT RAISE(ABORT, 'injected failure')"

CHANGES: list[tuple[str, Callable[[Seeded], None], str]] = [
    # (what, the change, a trigger failing one of its statements after an earlier one has run)
    ("transition, then its notice", resolve, f"BEFORE INSERT ON alert_notice BEGIN {FAIL}; END"),
    ("message, then its deliveries", second_message, f"BEFORE INSERT ON alert_delivery BEGIN {FAIL}; END"),
    ("deliveries, then the notices' move", second_message, f"BEFORE UPDATE ON alert_notice BEGIN {FAIL}; END"),
    (
        "the second message of two",
        lambda s: s.store.create_messages(
            [Dispatch((s.queued()[0],), ("g",)), Dispatch((s.queued()[1],), ("g",))], ["hook"], T0
        ),
        f"BEFORE INSERT ON alert_delivery WHEN NEW.message_id > 3 BEGIN {FAIL}; END",
    ),
    ("delivered, then the notices sent", last_delivery, f"BEFORE UPDATE ON alert_notice BEGIN {FAIL}; END"),
    ("abandoned, then the notices settled", abandoned, f"BEFORE UPDATE ON alert_notice BEGIN {FAIL}; END"),
    ("the second new alert of two", new_alerts, f"BEFORE INSERT ON alert WHEN NEW.rule = 'second' BEGIN {FAIL}; END"),
    ("the second source of two", new_sources,
     f"BEFORE INSERT ON alert_source WHEN NEW.instrument = 'second' BEGIN {FAIL}; END"),
    ("prune: notices, ..., then silences", prune, f"BEFORE DELETE ON alert_silence BEGIN {FAIL}; END"),
    ("prune: notices, then deliveries", prune, f"BEFORE DELETE ON alert_delivery BEGIN {FAIL}; END"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "change", "trigger"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_change_failed_between_its_statements_leaves_nothing_half_written(
    tmp_path: Path, what: str, change: Callable[[Seeded], None], trigger: str
) -> None:
    seeded = Seeded(tmp_path / "state.sqlite")
    if change in (last_delivery, abandoned):
        seeded.store.delivered(seeded.message, "hook", T0)  # "mail" is then the message's last delivery
    before = seeded.snapshot()
    seeded.store._db.execute(f"CREATE TEMP TRIGGER injected {trigger}")
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        change(seeded)
    assert not seeded.store._db.in_transaction
    assert seeded.snapshot() == before, what
    seeded.store._db.execute("DROP TRIGGER injected")
    change(seeded)  # the same change without the failure goes through, and does change what was compared
    assert seeded.snapshot() != before
    seeded.store.close()


def test_a_notice_is_sent_only_once_every_delivery_of_its_message_has_ended(tmp_path: Path) -> None:
    seeded = Seeded(tmp_path / "state.sqlite")
    store = seeded.store

    def statuses() -> list[str]:
        return [
            s for (s,) in store._db.execute("SELECT status FROM alert_notice WHERE message_id = ?", (seeded.message,))
        ]

    assert statuses() == ["sending", "sending"]
    store.failed(seeded.message, "mail", "down", next_at=T0 + timedelta(seconds=5), abandon_at=None)
    store.delivered(seeded.message, "hook", T0)
    assert statuses() == ["sending", "sending"]  # mail is still being tried
    store.delivered(seeded.message, "mail", T0 + timedelta(seconds=5))
    assert statuses() == ["sent", "sent"]
    [lonely] = store.create_messages([Dispatch(tuple(seeded.queued()), ("g",))], ["hook"], T0)
    store.failed(lonely, "hook", "refused", next_at=T0, abandon_at=T0)
    lonely_statuses = store._db.execute("SELECT status FROM alert_notice WHERE message_id = ?", (lonely,))
    assert [s for (s,) in lonely_statuses] == ["undelivered", "undelivered"]
    store.close()
