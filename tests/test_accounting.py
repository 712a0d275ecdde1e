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
from gateway.accounting import accounting_lines, format_ranges
from gateway.cli import main as gateway_main
from gateway.config import load_gateway_config
from gateway.gap_repair import Owed
from gateway.ingest import Ingest
from gateway.ledger import AgentAccount, Ledger
from gateway.stores import open_store


def test_late_and_repaired_batches_are_told_apart(tmp_path: Path) -> None:
    """Late: stored after a higher sequence number. Repaired: late and asked for by a resend request."""
    ledger = Ledger(tmp_path / "state.sqlite")
    ledger.record_many([("s", "a", 0, 10, 0), ("s", "a", 1, 10, 0), ("s", "a", 3, 10, 0)])
    ledger.count_resend_request("s", "a", 2, 2)
    assert ledger.record_many([("s", "a", 2, 10, 0)]) == [True]  # the hole, filled by the resend
    ledger.record_many([("s", "a", 5, 10, 0), ("s", "a", 4, 10, 0)])  # reordered in one group: 4 is late
    assert ledger.record_many([("s", "a", 2, 10, 0)]) == [False]  # a second copy: a duplicate, nothing else
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
    account = AgentAccount(**{**account.__dict__, "late": 2, "repaired": 1})
    lines = accounting_lines(
        [account],
        {("pavlodar", "chp-1"): Owed([(4, 5), (8, 8)], [(0, 0)]), ("pavlodar", "new"): Owed([(0, 2)], [])},
        {("pavlodar", "chp-1"): 3},
    )
    assert lines[0].split() == [
        "site", "agent", "batches", "readings", "seqs", "dups", "late", "repaired", "resends", "missing", "lost"
    ]  # fmt: skip
    assert lines[1].split() == ["pavlodar", "chp-1", "7", "70", "0..9", "1", "2", "1", "3", "3", "1"]
    assert lines[2].split() == ["pavlodar", "new", "0", "0", "-", "0", "0", "0", "0", "3", "0"]
    assert lines[3:] == [
        "pavlodar/chp-1 still missing (gap repair asks again): 4..5, 8",
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
    store = open_store(config.store.url)
    await store.open()
    ledger = Ledger(config.gateway.state)
    ingest = Ingest(config, store, ledger)
    task = asyncio.create_task(ingest.run())
    await asyncio.wait_for(ingest.connected.wait(), timeout=10)
    now = datetime.now(UTC).replace(microsecond=0)

    def batch(seq: int) -> bytes:
        reading = Reading(instrument="hg1", parameter="hg", value=seq, unit="ng/m³", ts=now - timedelta(seconds=seq))
        return encode_batch(Batch(site=site, agent="a1", seq=seq, sent_at=now, readings=[reading]))

    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"agent-{site}") as agent:
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
        for _ in range(200):
            if ingest.stats.batches == 6:
                break
            await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()
    ledger.close()

    capsys.readouterr()
    assert gateway_main(["accounting", str(config_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == [site, "a1", "6", "6", "0..5", "0", "2", "1", "1", "0", "0"]
    assert len(table) == 2  # nothing still missing, nothing lost
