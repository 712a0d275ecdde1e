"""Accounting (issue 5): per agent received, duplicates, late batches, gaps repaired, ranges still missing.

The ledger's classification runs on its real SQLite file; the printed table is a pure function.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from gateway_run import eventually, running_gateway
from servers import MosquittoServer

from aua_contract import (
    AgentState,
    AgentStatus,
    Batch,
    Reading,
    decode_resend,
    encode_batch,
    encode_status,
    readings_topic,
    resend_topic,
    status_topic,
)
from gateway.cli import main as gateway_main
from gateway.config import GatewayConfig, load_gateway_config
from gateway.ingest.accounting import accounting_lines, format_ranges
from gateway.ingest.gap_repair import Owed
from gateway.ingest.ledger import AgentAccount, Arrival, Ledger, Recorded

SECOND = timedelta(seconds=1)


def test_late_and_repaired_batches_are_told_apart(tmp_path: Path) -> None:
    """Late: stored after a higher sequence number. Repaired: late and asked for by a resend request."""
    ledger = Ledger(tmp_path / "state.sqlite")
    ledger.record_many([("s", "a", 0, 10, 0), ("s", "a", 1, 10, 0), ("s", "a", 3, 10, 0)])
    ledger.count_resend_request("s", "a", 2, 2)
    assert ledger.record_many([("s", "a", 2, 10, 0)]) == [Recorded.NEW]  # the hole, filled by the resend
    ledger.record_many([("s", "a", 5, 10, 0), ("s", "a", 4, 10, 0)])  # reordered in one group: 4 is late
    assert ledger.record_many([("s", "a", 2, 10, 0)]) == [Recorded.DUPLICATE]  # a second copy, nothing else
    ledger.record_many([("s", "b", 7, 1, 0), ("s", "b", 6, 1, 0)], classify=False)  # from receipts
    accounts = {a.agent: a for a in ledger.accounts()}
    a, b = accounts["a"], accounts["b"]
    assert (a.batches, a.readings, a.duplicates, a.late, a.repaired, a.missing) == (6, 60, 1, 2, 1, 0)
    assert (b.batches, b.late, b.repaired) == (2, 0, 0)
    assert ledger.resend_requests() == {("s", "a"): 1}
    ledger.close()


def test_a_ledger_from_before_the_late_columns_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE batch_seen (site TEXT NOT NULL, agent TEXT NOT NULL, seq INTEGER NOT NULL, "
        "readings INTEGER NOT NULL, received_ns INTEGER NOT NULL, PRIMARY KEY (site, agent, seq)) WITHOUT ROWID"
    )
    old.execute("INSERT INTO batch_seen VALUES ('s', 'a', 4, 3, 0)")
    old.commit()
    old.close()
    ledger = Ledger(path)
    ledger.record_many([("s", "a", 2, 3, 0)])
    [account] = ledger.accounts()
    assert (account.batches, account.late, account.repaired, account.first_seq) == (2, 1, 0, 2)
    ledger.close()
    Ledger(path).close()  # opening it again changes nothing


@pytest.mark.parametrize(
    ("ranges", "text"),
    [([], ""), ([(3, 3)], "3"), ([(3, 5), (9, 9)], "3..5, 9"), ([(n, n) for n in range(0, 50, 2)], None)],
)
def test_format_ranges(ranges: list[tuple[int, int]], text: str | None) -> None:
    if text is None:  # more than the limit: the first 20, then how many more
        assert format_ranges(ranges).endswith("36, 38 and 5 more ranges")
    else:
        assert format_ranges(ranges) == text


def test_accounting_lines() -> None:
    account = AgentAccount("pavlodar", "chp-1", batches=7, readings=70, first_seq=0, last_seq=9, duplicates=1)
    account = AgentAccount(**{**account.__dict__, "late": 2, "repaired": 1, "reused": 1, "last_reused_seq": 6})
    lines = accounting_lines(
        [account],
        {("pavlodar", "chp-1"): Owed([(4, 5), (8, 8)], [(0, 0)]), ("pavlodar", "new"): Owed([(0, 2)], [])},
        {("pavlodar", "chp-1"): 3},
    )
    assert lines[0].split() == [
        "site", "agent", "batches", "readings", "seqs", "dups", "late", "repaired", "reused", "resends", "missing",
        "lost",
    ]  # fmt: skip
    assert lines[1].split() == ["pavlodar", "chp-1", "7", "70", "0..9", "1", "2", "1", "1", "3", "3", "1"]
    assert lines[2].split() == ["pavlodar", "new", "0", "0", "-", "0", "0", "0", "0", "0", "3", "0"]
    assert lines[3:] == [
        "pavlodar/chp-1 still missing (gap repair asks again): 4..5, 8",
        "pavlodar/chp-1 sent 1 batches under sequence numbers it had used before (last: 6): its outbox was "
        "replaced or another agent has its id; their readings are stored, but its accounting is unreliable until "
        "it gets a new agent id",
        "pavlodar/chp-1 lost (no longer in the agent's outbox): 0",
        "pavlodar/new still missing (gap repair asks again): 0..2",
    ]


async def test_accounting_after_a_hole_a_resend_and_a_reordering(
    mosquitto: MosquittoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gateway on a real mosquitto, then `cems-gateway accounting` on its state: batch 2 comes only once the
    gateway asks for it (a repaired gap); batch 4 arrives after 5 unasked (late, not repaired)."""
    site = f"s{uuid.uuid4().hex[:8]}"
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(
        f"""
[gateway]
id = "gw-{site}"
state = "{tmp_path / "state.sqlite"}"
gap_check_s = 0.2
gap_grace_s = 0.5
gap_retry_s = 30

[mqtt]
host = "{mosquitto.host}"
port = {mosquitto.port}
sites = "{site}"

[store]
url = "sqlite://{tmp_path / "aua.sqlite"}"
"""
    )
    config = load_gateway_config(config_path)
    now = datetime.now(UTC).replace(microsecond=0)

    def batch(seq: int) -> bytes:
        reading = Reading(instrument="hg1", parameter="hg", value=seq, unit="ng/m³", ts=now - timedelta(seconds=seq))
        return encode_batch(Batch(site=site, agent="a1", seq=seq, sent_at=now, readings=[reading]))

    async with (
        running_gateway(config) as ingest,
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"agent-{site}") as agent,
    ):
        await agent.subscribe(resend_topic(site, "a1"), qos=1)
        online = AgentStatus(site=site, agent="a1", state=AgentState.ONLINE, at=now, next_seq=6, oldest_seq=0)
        await agent.publish(status_topic(site, "a1"), encode_status(online), qos=1)
        for seq in (0, 1, 3, 5, 4):
            await agent.publish(readings_topic(site, "a1"), batch(seq), qos=1)
        async with asyncio.timeout(10):
            async for message in agent.messages:
                request = decode_resend(bytes(message.payload))  # type: ignore[arg-type]
                break
        assert (request.first, request.last) == (2, 2)
        await agent.publish(readings_topic(site, "a1"), batch(2), qos=1)
        await eventually(lambda: ingest.stats.batches == 6)

    capsys.readouterr()
    assert gateway_main(["accounting", str(config_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == [site, "a1", "6", "6", "0..5", "0", "2", "1", "0", "1", "0", "0"]
    assert len(table) == 2  # nothing still missing, nothing lost


def test_a_sequence_number_sealed_again_at_another_time_is_reused_not_a_duplicate(tmp_path: Path) -> None:
    """Same number and sealing time: the same batch again. Same number, other sealing time: another batch (a
    replaced outbox restarted the sequence, or two agents share an id): its readings are new data."""
    ledger = Ledger(tmp_path / "state.sqlite")
    first = [Arrival("s", "a", seq, 5, 0, 1_000 + seq) for seq in range(3)]
    assert ledger.record_many(first) == [Recorded.NEW] * 3
    assert ledger.record_many([first[1]]) == [Recorded.DUPLICATE]
    again = [Arrival("s", "a", seq, 5, 0, 9_000 + seq) for seq in range(2)]
    assert ledger.record_many(again) == [Recorded.REUSED, Recorded.REUSED]
    assert ledger.record_many([("s", "a", 0, 5, 0)]) == [Recorded.DUPLICATE]  # no sealing time: cannot tell
    [account] = ledger.accounts()
    assert (account.batches, account.duplicates, account.reused, account.last_reused_seq) == (3, 2, 2, 1)
    ledger.close()


async def test_an_agent_whose_sequence_restarts_loses_nothing(
    mosquitto: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent reinstalled with an empty outbox seals batches 0, 1 again. They used to be dropped as
    duplicates (readings lost); now they are stored, counted as reused and reported once, while a real
    redelivery is still a duplicate."""
    site = f"s{uuid.uuid4().hex[:8]}"
    config = GatewayConfig.model_validate(
        {
            "gateway": {"id": f"gw-{site}", "state": str(tmp_path / "state.sqlite")},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "sites": site},
            "store": {"url": f"sqlite://{tmp_path / 'aua.sqlite'}"},
        }
    )
    now = datetime.now(UTC).replace(microsecond=0)

    def batch(seq: int, sealed: datetime) -> bytes:
        reading = Reading(instrument="hg1", parameter="hg", value=seq, unit="ng/m³", ts=sealed)
        return encode_batch(Batch(site=site, agent="a1", seq=seq, sent_at=sealed, readings=[reading]))

    before, after = now - timedelta(minutes=10), now
    payloads = [batch(0, before), batch(1, before + SECOND), batch(2, before + 2 * SECOND)]
    payloads += [batch(0, after), batch(1, after + SECOND), batch(1, after + SECOND)]  # reinstalled; a redelivery
    async with running_gateway(config) as ingest:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"pub-{site}") as client:
            for payload in payloads:
                await client.publish(readings_topic(site, "a1"), payload, qos=1)
        await eventually(lambda: ingest.stats.messages == len(payloads))
        await asyncio.wait_for(ingest.flushed(), timeout=10)
        stored = await ingest.store.query(site=site)
        [account] = ingest.ledger.accounts()
    assert len(stored) == 5  # every reading the two installs sealed
    assert (ingest.stats.batches, ingest.stats.reused, ingest.stats.duplicates) == (3, 2, 1)
    assert (account.batches, account.reused, account.duplicates) == (3, 2, 1)
    assert caplog.text.count("its sequence restarted") == 1
