"""One contract for every store: the same tests run on SQLite (tmp file) and on a real influxd 1.6.

Backend-specific behaviour (errors, URLs, schema version) is tested at the end of the file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ports import free_port
from servers import InfluxServer, unique_database_name

from aua_contract import Batch, Quality, Reading
from gateway.mrv.rollup import Aggregate, Period
from gateway.stores import (
    BatchReceipt,
    InfluxStore,
    SqliteStore,
    Store,
    StoredReading,
    StoreError,
    line_protocol,
    open_store,
)
from gateway.stores import influx as influx_module
from gateway.stores import sqlite as sqlite_module
from gateway.stores.base import HealthPoint, RevisionCount, RevisionError, RevisionState, revision_id, sort_key
from gateway.stores.influx import is_retryable_status, redact_url
from gateway.time_ns import to_ns

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def reading(**changes: object) -> StoredReading:
    fields: dict[str, object] = {
        "site": "pavlodar",
        "agent": "chp-1",
        "instrument": "gas-1",
        "parameter": "SO2",
        "ts": T0,
        "value": 412.5,
        "unit": "mg/m³",
        "quality": Quality.OK,
        "status": 0,
    }
    fields.update(changes)
    return StoredReading(**fields)  # type: ignore[arg-type]


def batch(seq: int, readings: list[StoredReading], *, sent: datetime = T0) -> Batch:
    """A batch of pavlodar/chp-1 carrying these readings (their site and agent must be that)."""
    contract = [
        Reading(
            instrument=r.instrument,
            parameter=r.parameter,
            value=r.value,
            unit=r.unit,
            ts=r.ts,
            quality=r.quality,
            status=r.status,
        )
        for r in readings
    ]
    return Batch(site="pavlodar", agent="chp-1", seq=seq, sent_at=sent, readings=contract)


@pytest.fixture(params=["sqlite", "influx"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The influx case asks for the server lazily, so `-k sqlite` runs start no influxd."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path_factory.mktemp('sqlite') / 'aua.sqlite'}"
    url: str = request.getfixturevalue("influx_db_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    await opened.open()
    yield opened
    await opened.close()


# -- the contract ----------------------------------------------------------------------------------------


async def test_empty_store(store: Store) -> None:
    assert await store.query() == []
    assert await store.count_by_instrument() == {}
    await store.write([])  # a no-op, not an error
    assert await store.query() == []


async def test_round_trip_of_every_field(store: Store) -> None:
    written = [
        reading(),
        reading(parameter="NOx", value=None, status=None, quality=Quality.FAILURE),
        reading(parameter="CO", value=-0.25, status=None, quality=Quality.CHECK_FUNCTION),
        reading(parameter="O2", value=None, status=2**62, quality=Quality.MAINTENANCE_REQUIRED, unit=""),
        reading(parameter="dust", value=0.0, status=-1, quality=Quality.SUBSTITUTED, unit="mg/m³"),
    ]
    await store.write(written)
    assert sorted(await store.query(), key=lambda r: r.parameter) == sorted(written, key=lambda r: r.parameter)


async def test_written_batches_are_stored_as_their_readings(store: Store) -> None:
    """write_batches (the ingest path) stores what `write` stores for the same readings, site and agent from
    each batch, a non-UTC time as the same instant; an empty batch and no batch are no-ops."""
    almaty = timezone(timedelta(hours=5))
    first = Batch(
        site="pavlodar",
        agent="chp-1",
        seq=0,
        sent_at=T0,
        readings=[
            Reading(instrument="gas-1", parameter="SO2", value=412.5, unit="mg/m³", ts=T0, status=0),
            Reading(instrument="gas-1", parameter="NOx", unit="mg/m³", ts=T0, quality=Quality.FAILURE),
            Reading(instrument="gas-1", parameter="SO2", value=0.25, unit="mg/m³", ts=(T0 + MINUTE).astimezone(almaty)),
        ],
    )
    second = Batch(
        site="ekibastuz",
        agent="amb-2",
        seq=5,
        sent_at=T0,
        readings=[Reading(instrument="hg1", parameter="hg", value=4.9, unit="ng/m³", ts=T0, status=2**62)],
    )
    empty = Batch(site="pavlodar", agent="chp-1", seq=1, sent_at=T0, readings=[])
    await store.write_batches([])
    await store.write_batches([first, empty, second])
    expected = [StoredReading.from_reading(b.site, b.agent, r) for b in (first, second) for r in b.readings]
    assert await store.query() == sorted(expected, key=sort_key)
    assert (await store.query(site="pavlodar"))[-1].ts == T0 + MINUTE


@pytest.mark.parametrize("quality", list(Quality))
async def test_every_quality_round_trips(store: Store, quality: Quality) -> None:
    await store.write([reading(quality=quality)])
    assert [r.quality for r in await store.query()] == [quality]


async def test_floats_round_trip_exactly(store: Store) -> None:
    values = [0.1, 1e-300, 1.7976931348623157e308, 123456789.12345679, -412.5, 5e-324, 3.0]
    await store.write([reading(ts=T0 + timedelta(seconds=i), value=v) for i, v in enumerate(values)])
    stored = [r.value for r in await store.query()]
    assert stored == values
    assert all(isinstance(v, float) for v in stored)


@pytest.mark.parametrize("unit", ["µg/m³", "ng/m³", "mg/Nm³", "°C", "м³/ч", "ppm (v/v)", 'say "x" \\ y', "a,b c=d"])
async def test_unicode_and_odd_units_round_trip(store: Store, unit: str) -> None:
    await store.write([reading(unit=unit)])
    assert [r.unit for r in await store.query()] == [unit]


@pytest.mark.parametrize(
    "names",
    [
        {"site": "site one", "agent": "a,b", "instrument": "x=y", "parameter": "p q,r=s"},
        {"site": "back\\slash", "agent": "a\\,b", "instrument": "Ünï-cødé", "parameter": 'quo"te'},
    ],
    ids=["spaces-commas-equals", "backslashes-quotes-unicode"],
)
async def test_identifiers_needing_escapes_round_trip(store: Store, names: dict[str, str]) -> None:
    """Contract identifiers are tame, but the store must not corrupt whatever it is given."""
    written = reading(**names)
    await store.write([written])
    assert await store.query() == [written]
    assert await store.query(site=names["site"], instrument=names["instrument"]) == [written]


# -- write-once: the same reading again is a no-op, other content a revision beside the original -------------


async def test_the_same_reading_again_is_a_no_op(store: Store) -> None:
    original = reading(value=1.0, unit="mg/m³", quality=Quality.OK, status=0)
    await store.write([original])
    await store.write([original])
    await store.write([original, original])
    await store.write_batches([batch(0, [original])])
    assert await store.query() == [original]
    assert await store.count_by_instrument() == {("pavlodar", "gas-1"): 1}
    assert await store.query_revisions() == []
    assert await store.revision_counts() == {}
    assert store.revisions_recorded == 0


@pytest.mark.parametrize(
    "change",
    [
        {"value": 2.0},
        {"quality": Quality.SPIKE},
        {"status": 7},
        {"unit": "g/m³"},
        {"value": None, "status": None, "quality": Quality.FAILURE},
    ],
    ids=["value", "quality", "status", "unit", "value-none"],
)
async def test_other_content_is_a_revision_and_the_original_stays(store: Store, change: dict[str, object]) -> None:
    original = reading(value=1.0, status=5)
    other = reading(**{"value": 1.0, "status": 5, **change})
    await store.write([original])
    await store.write([other])
    await store.write([other])  # the same revision again: kept once
    assert await store.query() == [original]
    assert await store.count_by_instrument() == {("pavlodar", "gas-1"): 1}
    [revision] = await store.query_revisions()
    assert revision.reading == other
    assert revision.state is RevisionState.PENDING
    assert (revision.batch_seq, revision.batch_sent_at, revision.decided_by) == (None, None, "")
    assert await store.revision_counts() == {("pavlodar", "chp-1"): RevisionCount(pending=1)}
    assert store.revisions_recorded == 1


async def test_a_revision_from_a_batch_records_the_batch_and_when_it_came(store: Store) -> None:
    """A reused sequence number or a replay: the batch's seq and sent_at, and the time it was stored."""
    original = reading(value=1.0)
    await store.write_batches([batch(0, [original])])
    before = datetime.now(UTC) - timedelta(seconds=1)
    await store.write_batches(
        [batch(7, [reading(value=2.0), reading(parameter="NOx", ts=T0 + MINUTE)], sent=T0 + HOUR)]
    )
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert await store.query(parameter="SO2") == [original]
    [revision] = await store.query_revisions()
    assert revision.reading == reading(value=2.0)
    assert (revision.batch_seq, revision.batch_sent_at) == (7, T0 + HOUR)
    assert revision.received_at is not None
    assert before <= revision.received_at <= after


async def test_other_content_within_one_call_keeps_the_first(store: Store) -> None:
    await store.write([reading(value=1.0), reading(value=3.0), reading(value=1.0)])
    assert [r.value for r in await store.query()] == [1.0]
    assert [r.reading.value for r in await store.query_revisions()] == [3.0]
    await store.write_batches([batch(1, [reading(ts=T0 + MINUTE, value=4.0), reading(ts=T0 + MINUTE, value=5.0)])])
    assert [r.value for r in await store.query()] == [1.0, 4.0]
    assert [r.reading.value for r in await store.query_revisions()] == [3.0, 5.0]


async def test_older_readings_not_stored_yet_are_stored(store: Store) -> None:
    """Late data and gap repair: older than the newest stored reading of the series, but new identities."""
    await store.write([reading(ts=T0 + 10 * MINUTE, value=10.0)])
    six_years = T0 - timedelta(days=6 * 365)
    await store.write([reading(ts=T0, value=0.0), reading(ts=six_years, value=-6.0)])
    await store.write([reading(ts=six_years, value=-7.0)])  # and a replay of that old one with another value
    assert [(r.ts, r.value) for r in await store.query()] == [(six_years, -6.0), (T0, 0.0), (T0 + 10 * MINUTE, 10.0)]
    assert [(r.reading.ts, r.reading.value) for r in await store.query_revisions()] == [(six_years, -7.0)]


async def test_the_same_instant_in_another_zone_is_the_same_reading(store: Store) -> None:
    almaty = timezone(timedelta(hours=5))
    await store.write([reading(ts=T0.astimezone(almaty))])
    await store.write([reading(ts=T0)])
    await store.write([reading(ts=T0.astimezone(almaty), value=9.0)])
    assert [(r.ts, r.value) for r in await store.query()] == [(T0, 412.5)]
    assert [(r.reading.ts, r.reading.value) for r in await store.query_revisions()] == [(T0, 9.0)]


async def test_approving_a_revision_makes_it_the_stored_value_and_keeps_the_original(store: Store) -> None:
    original = reading(value=1.0)
    corrected = reading(value=2.0, quality=Quality.SUBSTITUTED)
    await store.write([original])
    await store.write_batches([batch(3, [corrected])])
    [pending] = await store.query_revisions(state=RevisionState.PENDING)
    approval = await store.approve_revision(pending.id, by="alice", why="lab recheck", at=T0 + HOUR)
    assert approval.replaced == original
    assert approval.revision.reading == corrected
    assert await store.query() == [corrected]
    by_state = {r.state: r for r in await store.query_revisions()}
    assert set(by_state) == {RevisionState.APPROVED, RevisionState.SUPERSEDED}
    approved, superseded = by_state[RevisionState.APPROVED], by_state[RevisionState.SUPERSEDED]
    assert approved.id == pending.id
    assert approved.batch_seq == 3
    assert (approved.decided_by, approved.decided_why, approved.decided_at) == ("alice", "lab recheck", T0 + HOUR)
    assert superseded.reading == original
    assert (superseded.superseded_by, superseded.decided_by) == (pending.id, "alice")
    assert await store.revision_counts() == {("pavlodar", "chp-1"): RevisionCount(approved=1, superseded=1)}
    with pytest.raises(RevisionError, match=f"revision {pending.id} is approved by alice"):
        await store.approve_revision(pending.id, by="bob", why="again", at=T0 + HOUR)
    with pytest.raises(RevisionError, match="no revision"):
        await store.approve_revision("999999", by="bob", why="", at=T0 + HOUR)
    await store.write([original, corrected])  # both are known: nothing new
    assert len(await store.query_revisions()) == 2
    assert await store.query() == [corrected]


async def test_approving_a_revision_without_value_or_status(store: Store) -> None:
    """InfluxDB merges fields: the approved point must not keep the value and status it lacks."""
    await store.write([reading(value=1.0, status=5)])
    await store.write([reading(value=None, status=None, quality=Quality.FAILURE)])
    [pending] = await store.query_revisions()
    await store.approve_revision(pending.id, by="alice", why="analyser failed", at=T0 + HOUR)
    assert await store.query() == [reading(value=None, status=None, quality=Quality.FAILURE)]


async def test_a_second_approval_supersedes_the_first_and_keeps_its_record(store: Store) -> None:
    a, b, c = reading(value=1.0), reading(value=2.0), reading(value=3.0)
    await store.write([a])
    await store.write([b])
    await store.write([c])
    ids = {r.reading.value: r.id for r in await store.query_revisions()}
    await store.approve_revision(ids[2.0], by="alice", why="first", at=T0 + HOUR)
    await store.approve_revision(ids[3.0], by="bob", why="second", at=T0 + 2 * HOUR)
    assert await store.query() == [c]
    revisions = {r.reading.value: r for r in await store.query_revisions()}
    assert {value: r.state for value, r in revisions.items()} == {
        1.0: RevisionState.SUPERSEDED,
        2.0: RevisionState.SUPERSEDED,
        3.0: RevisionState.APPROVED,
    }
    assert (revisions[2.0].decided_by, revisions[2.0].superseded_by) == ("alice", ids[3.0])
    assert (revisions[1.0].decided_by, revisions[1.0].superseded_by) == ("alice", ids[2.0])
    assert revisions[3.0].decided_by == "bob"


async def test_revisions_survive_close_and_reopen(store_url: str) -> None:
    """A restarted gateway knows what is stored: a replay after it is still compared, never overwrites."""
    first = open_store(store_url)
    await first.open()
    await first.write_batches([batch(0, [reading(value=1.0), reading(ts=T0 + MINUTE, value=1.5)])])
    await first.write_batches([batch(0, [reading(value=2.0)], sent=T0 + HOUR)])
    await first.close()
    second = open_store(store_url)
    await second.open()
    try:
        [revision] = await second.query_revisions()
        assert (revision.reading.value, revision.batch_seq, revision.batch_sent_at) == (2.0, 0, T0 + HOUR)
        await second.write_batches([batch(0, [reading(value=2.0), reading(ts=T0 + MINUTE, value=9.0)], sent=T0)])
        assert [r.value for r in await second.query()] == [1.0, 1.5]
        assert sorted(r.reading.value or 0 for r in await second.query_revisions()) == [2.0, 9.0]
        await second.approve_revision(revision.id, by="alice", why="after a restart", at=T0 + HOUR)
        assert [r.value for r in await second.query()] == [2.0, 1.5]
    finally:
        await second.close()


async def test_revision_queries_filter_and_count_per_agent(store: Store) -> None:
    rows = [
        reading(site=site, agent=agent, ts=T0 + timedelta(minutes=minute), value=1.0)
        for site, agent in (("pavlodar", "chp-1"), ("pavlodar", "chp-2"), ("ekibastuz", "amb-1"))
        for minute in range(3)
    ]
    await store.write(rows)
    await store.write([dataclasses.replace(r, value=2.0) for r in rows if r.agent != "chp-2" or r.ts == T0])
    assert await store.revision_counts() == {
        ("pavlodar", "chp-1"): RevisionCount(pending=3),
        ("pavlodar", "chp-2"): RevisionCount(pending=1),
        ("ekibastuz", "amb-1"): RevisionCount(pending=3),
    }
    assert await store.revision_counts(site="pavlodar", start=T0 + MINUTE, end=T0 + 3 * MINUTE) == {
        ("pavlodar", "chp-1"): RevisionCount(pending=2)
    }
    assert [r.reading.agent for r in await store.query_revisions(site="pavlodar")] == [
        "chp-1",
        "chp-2",
        "chp-1",
        "chp-1",
    ]
    found = await store.query_revisions(agent="amb-1", start=T0 + MINUTE, end=T0 + 2 * MINUTE)
    assert [(r.reading.agent, r.reading.ts) for r in found] == [("amb-1", T0 + MINUTE)]
    assert await store.query_revisions(instrument="nope") == []
    assert await store.query_revisions(state=RevisionState.APPROVED) == []


async def test_revision_pages_follow_the_sort_order_and_cover_every_revision(store: Store) -> None:
    """limit/offset: a page is a slice of the whole ordered list, ties at one time included (InfluxQL orders by
    time only), so paging through holds one page at a time and misses or repeats nothing."""
    rows = [
        reading(agent=agent, instrument=instrument, ts=T0 + timedelta(minutes=minute), value=1.0)
        for minute in range(4)
        for instrument in ("gas-2", "gas-1", "gas-3")
        for agent in ("chp-2", "chp-1")
    ]
    await store.write(rows)
    await store.write([dataclasses.replace(r, value=2.0) for r in rows])
    await store.write([dataclasses.replace(r, value=3.0) for r in rows[:5]])  # two revisions of one identity
    whole = await store.query_revisions()
    assert len(whole) == len(rows) + 5
    for limit in (1, 4, 5, 7, 100):
        pages = [await store.query_revisions(limit=limit, offset=offset) for offset in range(0, len(whole), limit)]
        assert [r.id for page in pages for r in page] == [r.id for r in whole], limit
        assert all(len(page) <= limit for page in pages)
    assert await store.query_revisions(limit=0) == []
    assert await store.query_revisions(limit=3, offset=len(whole)) == []
    assert await store.query_revisions(offset=len(whole) - 2) == whole[-2:]
    some = await store.query_revisions(agent="chp-1", start=T0 + MINUTE, limit=4, offset=2)
    assert some == [r for r in whole if r.reading.agent == "chp-1" and r.reading.ts >= T0 + MINUTE][2:6]


@pytest.mark.parametrize("differs_in", ["site", "agent", "instrument", "parameter"])
async def test_identities_differing_in_one_part_stay_apart(store: Store, differs_in: str) -> None:
    a = reading(value=1.0)
    b = reading(value=2.0, **{differs_in: "other"})
    await store.write([a, b])
    assert sorted(r.value or 0 for r in await store.query()) == [1.0, 2.0]


async def test_timestamps_one_microsecond_apart_stay_apart(store: Store) -> None:
    written = [reading(ts=T0 + timedelta(microseconds=i), value=float(i)) for i in range(3)]
    await store.write(written)
    assert await store.query() == written


@pytest.mark.parametrize(
    "ts",
    [
        datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        datetime(2024, 3, 1, 12, 0, 0, 999999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC),
        datetime(2100, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ],
)
async def test_timestamps_keep_microseconds(store: Store, ts: datetime) -> None:
    await store.write([reading(ts=ts)])
    [stored] = await store.query()
    assert stored.ts == ts
    assert stored.ts.tzinfo is UTC


async def test_query_filters(store: Store) -> None:
    rows = [
        reading(site=site, instrument=instrument, parameter=parameter, ts=T0 + timedelta(minutes=minute))
        for site in ("pavlodar", "ekibastuz")
        for instrument in ("gas-1", "dust-1")
        for parameter in ("SO2", "NOx")
        for minute in range(4)
    ]
    await store.write(rows)

    def expected(predicate: object) -> list[StoredReading]:
        return sorted(
            (r for r in rows if predicate(r)),  # type: ignore[operator]
            key=lambda r: (r.ts, r.instrument, r.parameter, r.site, r.agent),
        )

    assert await store.query() == expected(lambda r: True)
    assert await store.query(site="ekibastuz") == expected(lambda r: r.site == "ekibastuz")
    assert await store.query(instrument="dust-1") == expected(lambda r: r.instrument == "dust-1")
    assert await store.query(parameter="NOx") == expected(lambda r: r.parameter == "NOx")
    assert await store.query(site="pavlodar", instrument="gas-1", parameter="SO2") == expected(
        lambda r: (r.site, r.instrument, r.parameter) == ("pavlodar", "gas-1", "SO2")
    )
    start, end = T0 + timedelta(minutes=1), T0 + timedelta(minutes=3)
    in_range = await store.query(start=start, end=end)
    assert in_range == expected(lambda r: start <= r.ts < end)
    assert {r.ts for r in in_range} == {start, T0 + timedelta(minutes=2)}  # start included, end excluded
    assert await store.query(start=T0 + timedelta(minutes=3)) == expected(lambda r: r.ts >= T0 + timedelta(minutes=3))
    assert await store.query(end=T0 + timedelta(minutes=1)) == expected(lambda r: r.ts < T0 + timedelta(minutes=1))
    assert await store.query(start=end, end=start) == []
    assert await store.query(site="nowhere") == []
    assert await store.query(site="pavlodar'; DROP") == []  # quoting, not injection


async def test_query_order_is_time_then_instrument_then_parameter(store: Store) -> None:
    rows = [
        reading(instrument=instrument, parameter=parameter, ts=T0 + timedelta(seconds=second))
        for second in range(3)
        for instrument in ("b-inst", "a-inst")
        for parameter in ("z", "m", "a")
    ]
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    await store.write(shuffled)
    got = [(r.ts, r.instrument, r.parameter) for r in await store.query()]
    assert got == sorted(got)
    assert len(got) == len(rows)


async def test_count_by_instrument(store: Store) -> None:
    await store.write(
        [
            reading(instrument="gas-1", parameter=p, ts=T0 + timedelta(seconds=s))
            for p in ("SO2", "NOx")
            for s in range(5)
        ]
        + [reading(instrument="dust-1", parameter="dust", value=None, status=None)]
        + [reading(site="ekibastuz", instrument="gas-1", ts=T0 + timedelta(seconds=s)) for s in range(3)]
        + [reading(site="ekibastuz", agent="other-agent", instrument="gas-1")]  # another identity: counted
    )
    assert await store.count_by_instrument() == {
        ("pavlodar", "gas-1"): 10,
        ("pavlodar", "dust-1"): 1,
        ("ekibastuz", "gas-1"): 4,
    }


async def test_ten_thousand_readings_in_one_write(store: Store) -> None:
    rows = [
        reading(
            instrument=f"inst-{i % 10}",
            parameter=f"p{(i // 10) % 10}",
            ts=T0 + timedelta(seconds=i // 100),
            value=float(i),
            status=None if i % 3 else i,
        )
        for i in range(10_000)
    ]
    await store.write(rows)
    await store.write(rows[:5_500])  # overlapping rewrite (crosses InfluxStore's 5,000-line request size)
    assert await store.count_by_instrument() == {("pavlodar", f"inst-{n}"): 1_000 for n in range(10)}
    stored = await store.query()
    assert len(stored) == 10_000
    assert sorted(stored, key=lambda r: r.value or 0) == rows
    assert await store.query_revisions() == []
    await store.write([dataclasses.replace(r, value=(r.value or 0) + 0.5) for r in rows[4_000:5_500]])
    assert sorted(await store.query(), key=lambda r: r.value or 0) == rows
    assert await store.revision_counts() == {("pavlodar", "chp-1"): RevisionCount(pending=1_500)}


async def test_data_survives_close_and_reopen(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    await first.write([reading()])
    await first.close()
    second = open_store(store_url)
    await second.open()
    try:
        assert await second.query() == [reading()]
    finally:
        await second.close()


async def test_open_and_close_are_idempotent(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    await store.open()
    await store.close()
    await store.close()


async def test_use_after_close_is_a_clear_error(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    await store.close()
    with pytest.raises(StoreError, match="not open") as caught:
        await store.write([reading()])
    assert caught.value.retryable is False


# -- StoredReading -----------------------------------------------------------------------------------------


def test_stored_reading_requires_an_aware_time_and_normalises_to_utc() -> None:
    with pytest.raises(ValueError, match="time zone"):
        reading(ts=datetime(2024, 1, 1))
    local = reading(ts=T0.astimezone(timezone(timedelta(hours=6))))
    assert local.ts.tzinfo is UTC
    assert local == reading()


@pytest.mark.parametrize(("field", "bad"), [("value", float("nan")), ("value", float("inf")), ("status", 2**63)])
def test_stored_reading_rejects_what_no_store_can_hold(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=field):
        reading(**{field: bad})


def test_stored_reading_from_a_contract_reading() -> None:
    contract = Reading(instrument="gas-1", parameter="SO2", value=412.5, unit="mg/m³", ts=T0, status=0)
    assert StoredReading.from_reading("pavlodar", "chp-1", contract) == reading()
    assert reading().identity == ("pavlodar", "chp-1", "gas-1", "SO2", T0)


# -- open_store --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/lib/aua/aua.sqlite", "/var/lib/aua/aua.sqlite"),
        ("sqlite://relative/aua.sqlite", "relative/aua.sqlite"),
        ("sqlite://:memory:", ":memory:"),
        ("var/aua.sqlite", "var/aua.sqlite"),
        ("/abs/aua.sqlite", "/abs/aua.sqlite"),
    ],
)
def test_open_store_sqlite(url: str, path: str) -> None:
    store = open_store(url)
    assert isinstance(store, SqliteStore)
    assert store.path == path
    assert store.kind == "sqlite"


@pytest.mark.parametrize(
    ("url", "base", "database", "options"),
    [
        ("influx://db.example:8086/aua", "http://db.example:8086", "aua", {}),
        ("influx://db.example/aua", "http://db.example:8086", "aua", {}),
        ("http://127.0.0.1:9999/aua", "http://127.0.0.1:9999", "aua", {}),
        ("https://cloud.example/aua", "https://cloud.example", "aua", {}),
        ("https://proxy.example/influx/aua/", "https://proxy.example/influx", "aua", {}),
        ("influx://[::1]:8086/aua", "http://[::1]:8086", "aua", {}),
        (
            "influx://writer:p%40ss%3Aword@db.example:8086/aua?rp=one_year&timeout=2.5",
            "http://db.example:8086",
            "aua",
            {"_username": "writer", "_password": "p@ss:word", "retention_policy": "one_year", "timeout": 2.5},
        ),
        (
            "https://eu-central-1.cloud.example/aua?token=abc%3D%3D",
            "https://eu-central-1.cloud.example",
            "aua",
            {"_token": "abc=="},
        ),
    ],
)
def test_open_store_influx(url: str, base: str, database: str, options: dict[str, object]) -> None:
    store = open_store(url)
    assert isinstance(store, InfluxStore)
    assert (store.url, store.database, store.kind) == (base, database, "influx")
    for name, value in options.items():
        assert getattr(store, name) == value


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://u:secret@h/db", "unknown store URL 'postgres://h/db'"),
        ("influx://h:8086", "names no database"),
        ("influx://h:8086/", "names no database"),
        ("influx:///db", "no host"),
        ("influx://h/db?token=secret&bogus=1", r"unknown option\(s\) bogus"),
        ("influx://h:notaport/db", "store URL 'influx://h:notaport/db'"),
        ("sqlite://", "no path"),
        ("", "empty store URL"),
    ],
)
def test_open_store_rejects_unknown_urls_naming_them(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        open_store(url)
    assert "secret" not in str(caught.value)


def test_redact_url_drops_credentials() -> None:
    assert redact_url("http://u:pw@h:1/x") == "http://h:1/x"
    assert redact_url("http://h:1/x") == "http://h:1/x"


def test_retryable_statuses() -> None:
    """5xx and "try later" 4xx (408, 429) are worth retrying; other 4xx mean the request itself is wrong."""
    retryable = {400: False, 401: False, 403: False, 404: False, 408: True, 413: False, 429: True, 500: True, 503: True}
    assert {status: is_retryable_status(status) for status in retryable} == retryable


# -- SQLite specifics --------------------------------------------------------------------------------------


async def test_sqlite_uses_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    path = f"{tmp_path}/nested/dir/aua.sqlite"  # parent directories are created
    async with SqliteStore(path) as store:
        await store.write([reading()])
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION
        assert connection.execute("SELECT count(*) FROM reading").fetchone()[0] == 1
    connection.close()


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = f"{tmp_path}/aua.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {sqlite_module.SCHEMA_VERSION + 1}")
    connection.close()
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="newer") as caught:
        await store.open()
    assert caught.value.retryable is False


# -- InfluxDB specifics ------------------------------------------------------------------------------------


async def test_influx_unreachable_is_retryable_and_names_the_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    store = InfluxStore(url, "aua", timeout=2)
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert caught.value.retryable is True
    assert url in str(caught.value)
    assert "ConnectError" in str(caught.value)


async def test_influx_outage_during_writes_is_retryable_and_recovers(tmp_path: Path) -> None:
    """Its own influxd, killed mid-run: writes fail retryably, then succeed on the same URL once it is back."""
    server = InfluxServer(tmp_path / "influxd")
    server.start()
    try:
        async with InfluxStore(server.url, "outage", timeout=2) as store:
            await store.write([reading(value=1.0)])
            server.kill()
            with pytest.raises(StoreError) as caught:
                await store.write([reading(ts=T0 + MINUTE, value=2.0)])
            assert caught.value.retryable is True
            assert server.url in str(caught.value)
            server.start()
            await store.write([reading(ts=T0 + MINUTE, value=2.0)])
            assert [r.value for r in await store.query()] == [1.0, 2.0]
    finally:
        server.terminate()


async def test_influx_v1_auth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Basic auth from the URL (percent-decoded); a user without admin rights cannot CREATE DATABASE, which
    open() tolerates; a wrong password surfaces on the first write as a non-retryable 401."""
    server = InfluxServer(tmp_path / "influxd", auth_enabled=True)
    server.start()
    host = server.url.removeprefix("http://")
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            first = await client.post("/query", data={"q": "CREATE USER admin WITH PASSWORD 'adm' WITH ALL PRIVILEGES"})
            assert first.status_code == 200
            for statement in (
                "CREATE DATABASE plant",
                "CREATE USER writer WITH PASSWORD 'w p@ss:1'",
                "GRANT ALL ON plant TO writer",
            ):
                response = await client.post("/query", data={"q": statement}, auth=("admin", "adm"))
                assert response.status_code == 200
                assert "error" not in response.text
        async with open_store(f"influx://admin:adm@{host}/created_by_admin") as admin:
            await admin.write([reading()])
            assert await admin.query() == [reading()]
        async with open_store(f"influx://writer:w%20p%40ss%3A1@{host}/plant") as writer:
            await writer.write([reading()])
            assert await writer.query() == [reading()]
        assert "requires admin privilege" in caplog.text
        async with open_store(f"influx://writer:wrong@{host}/plant") as wrong:
            with pytest.raises(StoreError, match="HTTP 401: authorization failed") as caught:
                await wrong.write([reading()])
            assert caught.value.retryable is False
            assert "wrong" not in str(caught.value)
    finally:
        server.terminate()


async def test_influx_rejected_data_is_not_retryable_and_quotes_influxdb(influx_db_url: str) -> None:
    store = open_store(influx_db_url)
    assert isinstance(store, InfluxStore)
    async with store:
        # Someone else wrote `value` as a string first, in the same shard (InfluxDB 1.x keeps field types
        # per shard, so the time matters): a float `value` there now conflicts.
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{store.url}/write",
                params={"db": store.database},
                content=f'reading,agent=x,instrument=y,parameter=z,site=s value="text",quality="ok" {to_ns(T0)}',
            )
            assert response.status_code == 204
        with pytest.raises(StoreError) as caught:
            await store.write([reading()])
    error = caught.value
    assert (error.retryable, error.status) == (False, 400)
    assert store.url in str(error)
    assert "HTTP 400" in str(error)
    assert "field type conflict" in str(error)


async def test_influx_unwritable_reading_is_rejected_before_anything_is_sent(influx_db_url: str) -> None:
    async with InfluxStore(*influx_db_url.rsplit("/", 1)) as store:
        with pytest.raises(StoreError, match="trailing backslash") as caught:
            await store.write([reading(parameter="ok"), reading(parameter="bad\\")])
        assert caught.value.retryable is False
        assert await store.query() == []  # the good reading in the same call was not written either


async def test_influx_answers_are_freed_without_the_cyclic_collector(influx_db_url: str) -> None:
    """An httpx response and its stream refer to each other, so without help each answer (its body
    included) waits for a cyclic collection, which the gateway runs rarely (gateway/gc_tuning.py): RSS
    grew ~1 KiB a message on InfluxDB in the hostile campaign. The store breaks that cycle, so reference
    counting frees each answer as soon as it is used."""

    def responses() -> int:
        return sum(isinstance(o, httpx.Response) for o in gc.get_objects())

    async with InfluxStore(*influx_db_url.rsplit("/", 1)) as store:
        await store.write([reading(value=1.0)])
        gc.collect()
        before = responses()
        gc.disable()
        try:
            for second in range(20):
                await store.write([reading(ts=T0 + (second + 1) * MINUTE, value=float(second))])
                await store.write([reading(value=2.0)])  # a replay: looked up, kept as a revision once
                assert len(await store.query()) == second + 2
            left = responses() - before
        finally:
            gc.enable()
    assert left == 0, f"{left} answers of 60+ requests wait for the cyclic collector"


async def test_sqlite_version_3_file_gains_revisions_and_keeps_its_readings(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite"
    async with SqliteStore(path) as store:
        await store.write([reading(value=1.0)])
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE reading_revision")
        connection.execute("PRAGMA user_version = 3")
    connection.close()
    async with SqliteStore(path) as store:
        await store.write([reading(value=2.0)])
        assert [r.value for r in await store.query()] == [1.0]
        assert [r.reading.value for r in await store.query_revisions()] == [2.0]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 4
    connection.close()


async def test_influx_writes_of_newer_readings_ask_the_store_nothing(influx_db_url: str) -> None:
    """The ingest path's cost: once an agent's high-water marks are known, readings newer than them are
    written without a query, however many; only a replay of older ones is looked up (one query per stretch)."""
    queries: list[str] = []

    async def count(request: httpx.Request) -> None:
        if request.url.path == "/query":
            queries.append(request.url.params.get("q", ""))

    async with InfluxStore(*influx_db_url.rsplit("/", 1)) as store:
        assert store._client is not None
        store._client.event_hooks["request"].append(count)
        minute = [reading(parameter=f"p{n}", ts=T0, value=float(n)) for n in range(50)]
        await store.write_batches([batch(0, minute)])
        assert len(queries) == 1  # learning the agent's marks
        for seq in range(1, 21):
            later = [dataclasses.replace(r, ts=T0 + seq * MINUTE) for r in minute]
            await store.write_batches([batch(seq, later)])
        assert len(queries) == 1
        await store.write_batches([batch(21, [dataclasses.replace(r, value=-1.0) for r in minute])])
        assert len(queries) == 3  # the replayed minute: its readings and its revisions, one query each
        assert store.revisions_recorded == 50
        assert len(await store.query()) == 21 * 50


async def test_influx_marks_stay_within_their_bound(influx_db_url: str) -> None:
    async with InfluxStore(*influx_db_url.rsplit("/", 1), series_marks=10) as store:
        for agent in ("a1", "a2", "a3"):
            await store.write([reading(agent=agent, parameter=f"p{n}", value=1.0) for n in range(4)])
        assert store.marks_forgotten == 1
        await store.write([reading(agent="a1", parameter="p0", value=2.0)])  # learned again: still a revision
        assert [r.reading.agent for r in await store.query_revisions()] == ["a1"]
        assert store.marks_forgotten == 2


async def test_influx_gateways_sharing_the_writes_learn_the_marks_on_every_write(influx_db_url: str) -> None:
    """With a shared subscription another instance writes the same agent's newer readings: `series_marks=0`
    asks the store before each write, so a replay this instance has not seen still becomes a revision."""
    async with open_store(influx_db_url) as one, open_store(f"{influx_db_url}?series_marks=0") as other:
        assert isinstance(other, InfluxStore)
        assert other.series_marks == 0
        await other.write([reading(ts=T0, value=1.0)])
        await one.write([reading(ts=T0 + MINUTE, value=2.0)])  # the other instance's batch
        await other.write([reading(ts=T0 + MINUTE, value=3.0)])  # a replay with other content
        assert [r.value for r in await one.query()] == [1.0, 2.0]
        assert [r.reading.value for r in await one.query_revisions()] == [3.0]


async def test_influx_query_of_a_dropped_database_is_a_clear_error(influx_db_url: str) -> None:
    base, database = influx_db_url.rsplit("/", 1)
    async with InfluxStore(base, database) as store:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.post("/query", data={"q": f"DROP DATABASE {database}"})).status_code == 200
        with pytest.raises(StoreError, match="database not found") as caught:
            await store.query()
        assert caught.value.retryable is False
        with pytest.raises(StoreError, match="database not found") as caught:
            await store.write([reading()])  # a write first asks the store for its series' newest times
        assert caught.value.retryable is False


async def test_influx_query_answers_in_many_chunks_are_joined(
    influx_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(influx_module, "QUERY_CHUNK_SIZE", 7)
    rows = [reading(ts=T0 + timedelta(seconds=i), value=float(i)) for i in range(30)]
    async with InfluxStore(*influx_db_url.rsplit("/", 1)) as store:
        await store.write(rows)
        assert await store.query() == rows
        assert await store.query(start=rows[3].ts, end=rows[25].ts) == rows[3:25]


async def test_influx_retention_policy_is_used_for_writes_and_queries(influxdb: InfluxServer) -> None:
    database = unique_database_name("rp")
    async with httpx.AsyncClient(base_url=influxdb.url) as client:
        for statement in (
            f"CREATE DATABASE {database}",
            f"CREATE RETENTION POLICY short ON {database} DURATION 1d REPLICATION 1",
        ):
            assert (await client.post("/query", data={"q": statement})).status_code == 200
    now = datetime.now(UTC).replace(microsecond=0)  # inside the 1-day policy
    async with InfluxStore(influxdb.url, database, retention_policy="short") as store:
        await store.write([reading(ts=now)])
        assert [r.ts for r in await store.query()] == [now]
        assert await store.count_by_instrument() == {("pavlodar", "gas-1"): 1}
    async with InfluxStore(influxdb.url, database) as default_rp:  # autogen does not see it
        assert await default_rp.query() == []


_ASCII_CONTROL = "".join(chr(code) for code in (*range(0x20), 0x7F))
_WRITABLE_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters=_ASCII_CONTROL), max_size=12)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.fixed_dictionaries(
        {
            key: _WRITABLE_TEXT.filter(lambda text: text != "" and not text.endswith("\\"))
            for key in ("site", "agent", "instrument")
        }
    ),
    unit=_WRITABLE_TEXT,
)
def test_influx_escaping_round_trips_arbitrary_text(influxdb: InfluxServer, names: dict[str, str], unit: str) -> None:
    """Whatever format_line accepts, influxd 1.6 must give back unchanged (checks escaping against its parser)."""
    written = reading(**names, unit=unit, ts=datetime.now(UTC))

    async def round_trip() -> list[StoredReading]:
        async with InfluxStore(influxdb.url, "escaping") as store:
            await store.write([written])
            return await store.query(site=written.site, instrument=written.instrument, start=written.ts)

    assert asyncio.run(round_trip()) == [written]


# -- rollups: the same contract for aggregates (gateway/mrv/rollup.py), on both stores -------------------------


def aggregate(**changes: object) -> Aggregate:
    fields: dict[str, object] = {
        "site": "pavlodar",
        "instrument": "gas-1",
        "parameter": "so2",
        "period": Period.HOUR,
        "start": T0,
        "value": 412.5,
        "n_valid": 58,
        "n_expected": 60,
        "valid": True,
        "reason": "",
        "n_maintenance": 0,
        "unit": "mg/m³",
        "substituted": False,
        "method": "",
    }
    fields.update(changes)
    return Aggregate(**fields)  # type: ignore[arg-type]


async def test_aggregates_round_trip_every_field(store: Store) -> None:
    written = [
        aggregate(),
        aggregate(parameter="nox", value=None, n_valid=0, valid=False, reason="no valid minutes (60 in maintenance)"),
        aggregate(parameter="co", value=1e-300, n_valid=1, valid=False, reason='1 of 60 minutes valid "< 66.7 %"'),
        aggregate(parameter="dust", n_maintenance=20, unit="", reason="", value=-0.25),
        aggregate(parameter="o2", n_flagged=17),  # §3 used-but-flagged minutes, carried into the hour
        aggregate(parameter="flow", substituted=True, method="EU MRR Art. 45: mean + 2σ", valid=False, unit="Nm3/h"),
    ]
    await store.write_aggregates(written)
    got = await store.query_aggregates(period=Period.HOUR)
    assert sorted(got, key=lambda a: a.parameter) == sorted(written, key=lambda a: a.parameter)
    assert await store.query() == []  # rollups are not readings
    assert await store.count_by_instrument() == {}


@pytest.mark.parametrize("period", list(Period))
async def test_aggregates_of_every_period_round_trip(store: Store, period: Period) -> None:
    await store.write_aggregates([aggregate(period=period)])
    assert await store.query_aggregates(period=period) == [aggregate(period=period)]
    other = Period.DAY if period is not Period.DAY else Period.HOUR
    assert await store.query_aggregates(period=other) == []


async def test_aggregate_rewrite_is_idempotent_and_last_wins(store: Store) -> None:
    """Recomputing a period writes it again: one row, the newest numbers; value None when nothing was valid."""
    first = aggregate(value=5.0, n_valid=60, valid=True, substituted=True, method="m")
    second = aggregate(value=None, n_valid=0, valid=False, reason="no valid minutes")
    await store.write_aggregates([first])
    await store.write_aggregates([second])
    await store.write_aggregates([second])
    assert await store.query_aggregates(period=Period.HOUR) == [second]
    third = aggregate(value=7.5, n_valid=45)
    await store.write_aggregates([third, third])
    assert await store.query_aggregates(period=Period.HOUR) == [third]


@pytest.mark.parametrize("differs_in", ["site", "instrument", "parameter", "period", "start"])
async def test_aggregate_identities_differing_in_one_part_stay_apart(store: Store, differs_in: str) -> None:
    changed: dict[str, object] = {
        "site": "other",
        "instrument": "other",
        "parameter": "other",
        "period": Period.DAY,
        "start": T0 + timedelta(hours=1),
    }
    a, b = aggregate(value=1.0), aggregate(value=2.0, **{differs_in: changed[differs_in]})
    await store.write_aggregates([a, b])
    found = [*await store.query_aggregates(period=Period.HOUR), *await store.query_aggregates(period=Period.DAY)]
    assert sorted(x.value or 0 for x in found) == [1.0, 2.0]


async def test_aggregate_query_filters_and_order(store: Store) -> None:
    rows = [
        aggregate(site=site, instrument=instrument, parameter=parameter, start=T0 + timedelta(hours=hour))
        for site in ("pavlodar", "ekibastuz")
        for instrument in ("gas-1", "flow-1")
        for parameter in ("so2", "co")
        for hour in range(4)
    ]
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    await store.write_aggregates(shuffled)

    def expected(predicate: Callable[[Aggregate], bool]) -> list[Aggregate]:
        return sorted((r for r in rows if predicate(r)), key=lambda r: (r.start, r.instrument, r.parameter, r.site))

    assert await store.query_aggregates(period=Period.HOUR) == expected(lambda r: True)
    assert await store.query_aggregates(period=Period.HOUR, site="ekibastuz") == expected(
        lambda r: r.site == "ekibastuz"
    )
    assert await store.query_aggregates(
        period=Period.HOUR, site="pavlodar", instrument="flow-1", parameter="co"
    ) == expected(lambda r: (r.site, r.instrument, r.parameter) == ("pavlodar", "flow-1", "co"))
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=3)
    in_range = await store.query_aggregates(period=Period.HOUR, start=start, end=end)
    assert in_range == expected(lambda r: start <= r.start < end)
    assert {r.start for r in in_range} == {start, start + timedelta(hours=1)}
    assert await store.query_aggregates(period=Period.HOUR, site="pavlodar'; DROP") == []


async def test_aggregates_survive_close_and_reopen(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    await first.write_aggregates([aggregate()])
    await first.close()
    second = open_store(store_url)
    await second.open()
    try:
        assert await second.query_aggregates(period=Period.HOUR) == [aggregate()]
    finally:
        await second.close()


async def test_five_thousand_minute_aggregates_in_one_write(store: Store) -> None:
    """Crosses InfluxStore's 5,000-line request size; a rewrite of part of it keeps the count."""
    rows = [
        aggregate(period=Period.MINUTE, parameter=f"p{i % 3}", start=T0 + timedelta(minutes=i // 3), value=float(i))
        for i in range(6_000)
    ]
    await store.write_aggregates(rows)
    await store.write_aggregates(rows[:5_100])
    stored = await store.query_aggregates(period=Period.MINUTE)
    assert len(stored) == 6_000
    assert sorted(stored, key=lambda a: a.value or 0) == rows


async def test_sqlite_version_1_file_gains_the_rollup_table(tmp_path: Path) -> None:
    path = f"{tmp_path}/old.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE reading (site TEXT NOT NULL, instrument TEXT NOT NULL, parameter TEXT NOT NULL, "
            "agent TEXT NOT NULL, ts_ns INTEGER NOT NULL, value REAL, unit TEXT NOT NULL, quality TEXT NOT NULL, "
            "status INTEGER, PRIMARY KEY (site, instrument, parameter, agent, ts_ns)) WITHOUT ROWID"
        )
        connection.execute("PRAGMA user_version = 1")
    connection.close()
    async with SqliteStore(path) as store:
        await store.write_aggregates([aggregate()])
        assert await store.query_aggregates(period=Period.HOUR) == [aggregate()]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION == 4
    connection.close()


async def test_sqlite_version_2_rollups_gain_n_flagged(tmp_path: Path) -> None:
    """A rollup table from before n_flagged keeps its rows (n_flagged 0) and stores the new field."""
    path = f"{tmp_path}/v2.sqlite"
    async with SqliteStore(path) as store:
        pass
    with sqlite3.connect(path) as connection:  # turn it into a version-2 file: the table without the column
        connection.execute("DROP TABLE rollup")
        connection.execute(
            "CREATE TABLE rollup (site TEXT NOT NULL, instrument TEXT NOT NULL, parameter TEXT NOT NULL, "
            "period TEXT NOT NULL, start_ns INTEGER NOT NULL, value REAL, n_valid INTEGER NOT NULL, "
            "n_expected INTEGER NOT NULL, n_maintenance INTEGER NOT NULL, valid INTEGER NOT NULL, "
            "reason TEXT NOT NULL, unit TEXT NOT NULL, substituted INTEGER NOT NULL, method TEXT NOT NULL, "
            "PRIMARY KEY (site, period, instrument, parameter, start_ns)) WITHOUT ROWID"
        )
        connection.execute(
            "INSERT INTO rollup VALUES ('pavlodar', 'gas-1', 'so2', '1h', ?, 412.5, 58, 60, 0, 1, '', 'mg/m³', 0, '')",
            (to_ns(T0),),
        )
        connection.execute("PRAGMA user_version = 2")
    connection.close()
    async with SqliteStore(path) as store:
        assert await store.query_aggregates(period=Period.HOUR) == [aggregate()]
        await store.write_aggregates([aggregate(start=T0 + timedelta(hours=1), n_flagged=3)])
        assert [a.n_flagged for a in await store.query_aggregates(period=Period.HOUR)] == [0, 3]


# -- health points (aua_health) --------------------------------------------------------------------------------


def health(**changes: object) -> HealthPoint:
    fields: dict[str, object] = {
        "component": "agent",
        "id": "gw-1",
        "site": "pavlodar-chp",
        "agent": "chp-stack1",
        "ts": T0,
        "fields": {"batches": 12, "missing": 0, "next_seq": 13, "online": 1, "dropped": -(2**63)},
    }
    fields.update(changes)
    return HealthPoint(**fields)  # type: ignore[arg-type]


async def test_health_round_trips_and_filters(store: Store) -> None:
    assert await store.query_health() == []
    await store.write_health([])  # a no-op, not an error
    gateway = health(
        component="gateway", site="-", agent="-", fields={"messages": 2**62, "spool_depth": 0, "dead_letters": 3}
    )
    later = health(ts=T0 + timedelta(seconds=10), fields={"batches": 20, "online": 0})
    other = health(agent="odd name, =x", site="pavlodar ambient")
    await store.write_health([later, gateway, other, health()])
    assert await store.query_health() == [other, health(), gateway, later]  # time, component, id, site, agent
    assert await store.query_health(component="gateway") == [gateway]
    assert await store.query_health(start=T0 + timedelta(seconds=1)) == [later]
    assert await store.query_health(end=T0 + timedelta(seconds=1), component="agent") == [other, health()]


async def test_health_rewrite_is_idempotent_and_last_wins(store: Store) -> None:
    await store.write_health([health()])
    await store.write_health([health()])
    rewritten = health(fields={"batches": 13, "missing": 1, "next_seq": 14, "online": 0, "dropped": 0})
    await store.write_health([rewritten])
    assert await store.query_health() == [rewritten]


def test_health_point_rejects_what_no_store_can_hold() -> None:
    with pytest.raises(ValueError, match="component"):
        health(component="broker")
    with pytest.raises(ValueError, match="naive"):
        health(ts=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="at least one field"):
        health(fields={})
    with pytest.raises(TypeError, match="integer"):
        health(fields={"online": True})
    with pytest.raises(TypeError, match="integer"):
        health(fields={"rate": 1.5})
    with pytest.raises(ValueError, match="64-bit"):
        health(fields={"big": 2**63})
    shifted = health(ts=datetime(2024, 3, 1, 17, tzinfo=timezone(timedelta(hours=5)))).ts
    assert shifted == T0
    assert shifted.tzinfo is UTC


def test_health_line_protocol() -> None:
    point = health(fields={"online": 1, "batches": 2})
    assert line_protocol.format_health_line(point) == (
        f"aua_health,agent=chp-stack1,component=agent,id=gw-1,site=pavlodar-chp batches=2i,online=1i {to_ns(T0)}"
    )


# -- batch receipts (where gateways sharing a subscription meet) ------------------------------------------


async def test_batch_receipts_answer_which_seqs_any_gateway_stored(store: Store) -> None:
    await store.write_receipts([])  # a no-op
    receipts = [BatchReceipt("pvl", "a1", seq, 12) for seq in (0, 1, 2, 5, 9)]
    await store.write_receipts([*receipts, BatchReceipt("pvl", "a2", 3, 1), BatchReceipt("ekb", "a1", 3, 1)])
    await store.write_receipts(receipts[:2])  # idempotent
    assert await store.received_batches("pvl", "a1", 0, 9) == {0: 12, 1: 12, 2: 12, 5: 12, 9: 12}
    assert await store.received_batches("pvl", "a1", 3, 8) == {5: 12}
    assert await store.received_batches("pvl", "a1", 10, 20) == {}
    assert await store.received_batches("pvl", "a2", 0, 100) == {3: 1}
    assert await store.received_batches("nowhere", "a1", 0, 100) == {}


async def test_pruning_receipts_forgets_one_agents_below_a_number_and_counts_them(store: Store) -> None:
    await store.write_receipts([BatchReceipt("pvl", "a1", seq, 12) for seq in range(0, 30, 2)])
    await store.write_receipts([BatchReceipt("pvl", "a2", 3, 1), BatchReceipt("ekb", "a1", 3, 1)])
    assert await store.prune_receipts("pvl", "a1", 0) == 0
    assert await store.prune_receipts("pvl", "a1", 11) == 6  # 0, 2, ..., 10
    assert await store.prune_receipts("pvl", "a1", 11) == 0  # nothing left below
    assert await store.received_batches("pvl", "a1", 0, 100) == dict.fromkeys(range(12, 30, 2), 12)
    assert await store.received_batches("pvl", "a2", 0, 100) == {3: 1}  # other agents and sites untouched
    assert await store.received_batches("ekb", "a1", 0, 100) == {3: 1}
    assert await store.prune_receipts("nowhere", "a1", 100) == 0
    assert await store.prune_receipts("pvl", "a1", 2**63 - 1) == 9
    assert await store.received_batches("pvl", "a1", 0, 2**62) == {}


def test_a_revision_id_depends_on_identity_and_content_only() -> None:
    identity = ("pavlodar", "chp-1", "gas-1", "SO2", to_ns(T0))
    content = (3.0, "mg/m³", "ok", None)
    assert revision_id(identity, content) == revision_id(identity, (3, "mg/m³", Quality.OK, None))
    assert revision_id(identity, content) != revision_id(identity, (3.0, "mg/m³", "ok", 0))
    assert revision_id(identity, content) != revision_id((*identity[:4], identity[4] + 1000), content)
    assert len(revision_id(identity, content)) == 16


@pytest.mark.parametrize(
    ("times", "stretches"),
    [
        ([], []),
        ([5], [(5, 5)]),
        ([0, 10, 3_600_000_000_000], [(0, 3_600_000_000_000)]),
        ([0, 3_600_000_000_001], [(0, 0), (3_600_000_000_001, 3_600_000_000_001)]),
        (
            [0, 1, 2_000_000_000_000, 4_000_000_000_000, 4_000_000_000_001],
            [(0, 2_000_000_000_000), (4_000_000_000_000, 4_000_000_000_001)],
        ),
    ],
)
def test_readings_to_look_up_are_queried_in_stretches_of_an_hour_at_most(
    times: list[int], stretches: list[tuple[int, int]]
) -> None:
    assert influx_module.suspect_stretches(times) == stretches


@pytest.mark.parametrize(
    ("table", "where", "index"),
    [
        ("reading", "site = 's' AND instrument = 'i' AND ts_ns >= 0 AND ts_ns < 60", "reading_series_ts"),
        ("reading", "site = 's' AND instrument = 'i' AND parameter = 'p' AND ts_ns >= 0 AND ts_ns < 60", None),
        ("reading", "site = 's' AND instrument = 'i' AND ts_ns < 60", "reading_series_ts"),  # retention, per instrument
        (
            "rollup",
            "site = 's' AND period = '1m' AND instrument = 'i' AND start_ns >= 0 AND start_ns < 60",
            "rollup_series",
        ),
    ],
)
async def test_sqlite_reads_a_time_range_through_an_index_whatever_the_table_holds(
    tmp_path: Path, table: str, where: str, index: str | None
) -> None:
    """The rollup engine asks for one instrument's raw minutes and its stored minutes of an hour, retention for
    each instrument's readings before a time: each query must be bounded by its time range in an index (a year
    of raw data is ~10^9 rows), never scan a series' whole history or every series' period."""
    async with SqliteStore(tmp_path / "aua.sqlite") as store:
        plan = await store.run_on_connection(
            lambda db: " ".join(
                row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE {where}")
            )
        )
    assert re.search(r"(ts_ns|start_ns)[<>]\?", plan.replace(" ", "")), plan
    if index is not None:
        assert f"INDEX {index}" in plan, plan
