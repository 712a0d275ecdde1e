"""Write-once raw readings end to end (issue 13): an agent's reused sequence number and an old replay, through a
real mosquitto and the gateway into SQLite and a real influxd, leave the original stored and a revision beside
it; `cems-gateway revisions` lists and approves (who, why), the rollups are marked, accounting counts them."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from gateway_run import eventually, running_gateway
from servers import MosquittoServer

from aua_contract import Batch, Quality, Reading, encode_batch, readings_topic
from gateway.cli import main as gateway_main
from gateway.config import load_gateway_config
from gateway.mrv.rollup_engine import DirtyMarks
from gateway.stores import StoredReading, open_store
from gateway.stores.base import RevisionState
from gateway.time_ns import to_ns

HOUR_NS = 3_600_000_000_000


async def main(argv: list[str]) -> int:
    """`cems-gateway ARGV` as a command line runs it: its own event loop (on a thread, beside the test's)."""
    return await asyncio.to_thread(gateway_main, argv)


@pytest.fixture(params=["sqlite", "influx"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'aua.sqlite'}"
    url: str = request.getfixturevalue("influx_db_url")
    return url


def write_config(tmp_path: Path, mosquitto: MosquittoServer, site: str, store_url: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
id = "gw-{site}"
state = "{tmp_path / "state.sqlite"}"

[mqtt]
host = "{mosquitto.host}"
port = {mosquitto.port}
sites = "{site}"

[store]
url = "{store_url}"
"""
    )
    return path


async def test_a_reused_sequence_and_an_old_replay_leave_the_original_and_a_revision(
    mosquitto: MosquittoServer, tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    config_path = write_config(tmp_path, mosquitto, site, store_url)
    config = load_gateway_config(config_path)
    now = datetime.now(UTC).replace(microsecond=0)
    t0, t1, t2 = now - timedelta(minutes=3), now - timedelta(minutes=2), now - timedelta(minutes=1)

    def batch(seq: int, sent_at: datetime, *readings: tuple[datetime, float]) -> bytes:
        contract = [Reading(instrument="gas-1", parameter="SO2", value=v, unit="mg/m³", ts=ts) for ts, v in readings]
        return encode_batch(Batch(site=site, agent="a1", seq=seq, sent_at=sent_at, readings=contract))

    async with (
        running_gateway(config) as ingest,
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"agent-{site}") as agent,
    ):
        topic = readings_topic(site, "a1")
        await agent.publish(topic, batch(0, t0, (t0, 10.0), (t1, 11.0)), qos=1)
        await agent.publish(topic, batch(1, t2, (t2, 12.0)), qos=1)
        await eventually(lambda: ingest.stats.readings == 3)
        # the agent was reinstalled: batch 0 again, sealed at another time, with another value for t0
        await agent.publish(topic, batch(0, now, (t0, 99.0)), qos=1)
        # and a replay of t1 under a new number, with another value
        await agent.publish(topic, batch(5, now, (t1, 77.0), (now, 13.0)), qos=1)
        await eventually(lambda: ingest.stats.readings == 6)
        assert ingest.stats.reused == 1
        assert ingest.store.revisions_recorded == 2
        assert [(r.ts, r.value) for r in await ingest.store.query(site=site)] == [
            (t0, 10.0),
            (t1, 11.0),
            (t2, 12.0),
            (now, 13.0),
        ]
        revisions = await ingest.store.query_revisions(site=site)
        assert [(r.reading.ts, r.reading.value, r.batch_seq, r.batch_sent_at) for r in revisions] == [
            (t0, 99.0, 0, now),
            (t1, 77.0, 5, now),
        ]
        assert all(r.state is RevisionState.PENDING and r.received_at is not None for r in revisions)

    capsys.readouterr()
    assert await main(["revisions", "list", str(config_path), "--agent", "a1"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == "2 pending revisions"
    assert f"{site}/a1 gas-1/SO2: 99 mg/m³ ok (stored 10 mg/m³ ok); batch 0 sealed" in listed[1]

    assert await main(["accounting", str(config_path)]) == 0
    assert (
        f"{site}/a1 sent 2 revisions (other content for readings already stored): 2 pending review, 0 approved; "
        "see `cems-gateway revisions list`" in capsys.readouterr().out.splitlines()
    )

    approve = ["revisions", "approve", str(config_path), revisions[0].id, "--by", "alice", "--why", "lab recheck"]
    assert await main(approve) == 0
    assert f"revision {revisions[0].id} approved by alice" in capsys.readouterr().out
    assert await main(approve) == 1
    assert f"revision {revisions[0].id} is approved by alice" in capsys.readouterr().err

    store = open_store(config.store.url)
    await store.open()
    try:
        assert [r.value for r in await store.query(site=site)] == [99.0, 11.0, 12.0, 13.0]
        states = {(r.reading.value, r.state) for r in await store.query_revisions(site=site)}
        assert states == {
            (99.0, RevisionState.APPROVED),
            (10.0, RevisionState.SUPERSEDED),
            (77.0, RevisionState.PENDING),
        }
    finally:
        await store.close()
    marks = DirtyMarks(config.gateway.state)
    try:
        hours = {(s, i, p, h) for s, i, p, h, *_ in marks.take(1000) if s == site}
    finally:
        marks.close()
    t0_ns = to_ns(t0)
    assert (site, "gas-1", "SO2", t0_ns - t0_ns % HOUR_NS) in hours


async def test_approve_refuses_what_it_cannot_record(
    mosquitto: MosquittoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    config_path = write_config(tmp_path, mosquitto, site, f"sqlite://{tmp_path / 'aua.sqlite'}")
    store = open_store(load_gateway_config(config_path).store.url)
    await store.open()
    ts = datetime(2024, 3, 1, 12, tzinfo=UTC)
    original = StoredReading(site, "a1", "gas-1", "SO2", ts, 1.0, "mg/m³", Quality.OK, None)
    await store.write([original])
    await store.write([StoredReading(site, "a1", "gas-1", "SO2", ts, 2.0, "mg/m³", Quality.OK, None)])
    [revision] = await store.query_revisions()
    await store.close()
    capsys.readouterr()
    base = ["revisions", "approve", str(config_path)]
    assert await main([*base, revision.id, "--by", "alice", "--why", " "]) == 2
    assert "--why must not be empty" in capsys.readouterr().err
    assert await main([*base, revision.id, "--by", "alice", "--why", "two\nlines"]) == 2
    assert "control characters" in capsys.readouterr().err
    assert await main([*base, "12345", "--by", "alice", "--why", "typo"]) == 1
    assert "not approved: no revision 12345" in capsys.readouterr().err
    assert await main([*base, "abc", "--by", "alice", "--why", "typo"]) == 1
    assert "no revision 'abc'" in capsys.readouterr().err
    async with open_store(load_gateway_config(config_path).store.url) as reopened:
        assert await reopened.query() == [original]
        assert [r.state for r in await reopened.query_revisions()] == [RevisionState.PENDING]


async def test_revisions_list_prints_a_page_and_says_how_many_more_exist(
    mosquitto: MosquittoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`revisions list` holds one page (--limit, default 100; --offset) and counts the rest from the store."""
    site = f"s{uuid.uuid4().hex[:8]}"
    config_path = write_config(tmp_path, mosquitto, site, f"sqlite://{tmp_path / 'aua.sqlite'}")
    ts = datetime(2024, 3, 1, 12, tzinfo=UTC)
    originals = [
        StoredReading(site, agent, "gas-1", "SO2", ts + timedelta(seconds=n), 1.0, "mg/m³", Quality.OK, None)
        for n in range(130)
        for agent in ("a1", "a2")
    ]
    async with open_store(load_gateway_config(config_path).store.url) as store:
        await store.write(originals)
        await store.write([dataclasses.replace(r, value=2.0) for r in originals])
        whole = await store.query_revisions(agent="a1")
    capsys.readouterr()
    base = ["revisions", "list", str(config_path), "--agent", "a1"]

    assert await main(base) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "130 pending revisions, 1..100 shown; 30 more (--offset 100)"
    assert [line.split()[0] for line in out[1:]] == [r.id for r in whole[:100]]

    assert await main([*base, "--offset", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "130 pending revisions, 101..130 shown"
    assert [line.split()[0] for line in out[1:]] == [r.id for r in whole[100:]]

    assert await main([*base, "--limit", "200"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "130 pending revisions"
    assert await main([*base, "--limit", "5", "--offset", "500"]) == 0
    assert capsys.readouterr().out.splitlines() == ["130 pending revisions, none shown from 501"]
    with pytest.raises(SystemExit):
        await main([*base, "--limit", "-1"])
    assert "--limit: '-1' is not a whole number" in capsys.readouterr().err
