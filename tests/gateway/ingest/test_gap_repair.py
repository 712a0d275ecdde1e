"""Gap repair: what an agent owes the gateway, when to ask for it, and the whole loop on a real broker."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from ports import free_port
from servers import MosquittoServer

from aua_contract import decode_batch
from aua_demo.sites import demo_sites, relocate
from aua_simulator.modbus_servers import simulator_for_config
from edge_agent.outbox import Outbox
from edge_agent.poller import Agent
from gateway.config import GatewayConfig, GatewaySection, LedgerSection, MqttSection, StoreSection
from gateway.ingest.gap_repair import Owed, RepairSchedule, RequestPlan, chunks, owed, plan_requests, receipt_floor
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.stores import open_store


@pytest.mark.parametrize(
    ("holes", "first_seen", "last_seen", "next_seq", "oldest_seq", "expected"),
    [
        pytest.param([], 0, 9, None, None, Owed([], []), id="complete, no status yet"),
        pytest.param([(3, 4)], 0, 9, None, None, Owed([(3, 4)], []), id="a hole between seen batches"),
        pytest.param([], 0, 9, 15, 0, Owed([(10, 14)], []), id="status reveals a tail never seen"),
        pytest.param([], 0, 9, 10, 0, Owed([], []), id="status agrees with what was seen"),
        pytest.param([], 5, 9, 10, 2, Owed([(2, 4)], []), id="agent still holds batches before the first seen"),
        pytest.param([(3, 6)], 0, 9, 10, 5, Owed([(5, 6)], [(3, 4)]), id="part of a hole was pruned at the agent"),
        pytest.param([(3, 4)], 0, 9, 10, 7, Owed([], [(3, 4)]), id="the whole hole is gone: lost, not requested"),
        pytest.param([], None, None, 4, 0, Owed([(0, 3)], []), id="an agent seen only by its status"),
        pytest.param([], None, None, 0, 0, Owed([], []), id="a new agent with nothing sent"),
    ],
)
def test_what_an_agent_owes(  # noqa: PLR0917 - one argument per table column
    holes: list[tuple[int, int]],
    first_seen: int | None,
    last_seen: int | None,
    next_seq: int | None,
    oldest_seq: int | None,
    expected: Owed,
) -> None:
    assert owed(holes, first_seen, last_seen, next_seq, oldest_seq) == expected


def test_requests_wait_for_the_grace_period_then_repeat_at_the_retry_interval() -> None:
    schedule = RepairSchedule(grace_s=10, retry_s=30)
    assert schedule.due("s", "a", [(3, 4)], now=100) == []
    assert schedule.due("s", "a", [(3, 4)], now=109) == []
    assert schedule.due("s", "a", [(3, 4)], now=110) == [(3, 4)]
    assert schedule.due("s", "a", [(3, 4)], now=120) == []
    assert schedule.due("s", "a", [(3, 4)], now=140) == [(3, 4)]
    # a filled hole is forgotten; when it reappears, it waits its grace period again
    assert schedule.due("s", "a", [], now=150) == []
    assert schedule.due("s", "a", [(3, 4)], now=151) == []


def test_a_hole_that_shrinks_from_the_end_keeps_its_place_in_the_schedule() -> None:
    schedule = RepairSchedule(grace_s=10, retry_s=30)
    schedule.due("s", "a", [(3, 9)], now=0)
    assert schedule.due("s", "a", [(3, 5)], now=10) == [(3, 5)]


def test_long_ranges_are_split_into_requests_of_bounded_span() -> None:
    assert chunks((0, 9), span=4) == [(0, 3), (4, 7), (8, 9)]
    assert chunks((5, 5), span=4) == [(5, 5)]


BIG = 10**13
TOP = 2**63 - 1


@pytest.mark.parametrize(
    ("ranges", "max_requests", "max_batches", "expected"),
    [
        pytest.param([(0, 9)], 5, 1_000, RequestPlan([(0, 9)], 0), id="small: one request"),
        pytest.param(
            [(0, 10**10 - 1)],
            3,
            10**9,
            RequestPlan([(0, 99_999), (100_000, 199_999), (200_000, 299_999)], 10**10 - 300_000),
            id="next_seq 1e10: three requests, the rest counted",
        ),
        pytest.param(
            [(0, BIG - 1)],
            20,
            250_000,
            RequestPlan([(0, 99_999), (100_000, 199_999), (200_000, 249_999)], BIG - 250_000),
            id="next_seq 1e13: the batch budget ends the plan",
        ),
        pytest.param([(TOP - 5, TOP)], 20, 10**9, RequestPlan([(TOP - 5, TOP)], 0), id="at the top of int64"),
        pytest.param(
            [(0, TOP)],
            2,
            10**9,
            RequestPlan([(0, 99_999), (100_000, 199_999)], TOP + 1 - 200_000),
            id="the whole int64 range",
        ),
        pytest.param(
            [(3, 4), (10, 19), (BIG, 2 * BIG)],
            3,
            8,
            RequestPlan([(3, 4), (10, 15)], 4 + BIG + 1),
            id="budget shared by ranges, oldest first",
        ),
        pytest.param(
            [(i, i) for i in range(0, 200, 2)],
            10,
            10**6,
            RequestPlan([(i, i) for i in range(0, 20, 2)], 90),
            id="many single holes",
        ),
    ],
)
def test_resend_plans_are_bounded_whatever_the_span(
    ranges: list[tuple[int, int]], max_requests: int, max_batches: int, expected: RequestPlan
) -> None:
    plan = plan_requests(ranges, max_requests=max_requests, max_batches=max_batches)
    assert plan == expected
    assert len(plan.requests) <= max_requests
    assert sum(last - first + 1 for first, last in plan.requests) + plan.not_asked == sum(
        last - first + 1 for first, last in ranges
    )


def test_ranges_beyond_the_bounds_stay_due_so_none_starves() -> None:
    """Only the ranges actually asked for wait retry_s: with two requests per check, holes that never fill
    (an agent that cannot answer them) do not keep the holes after them from being asked."""
    schedule = RepairSchedule(grace_s=0, retry_s=30)
    holes = [(0, 0), (2, 2), (4, 4), (6, 6)]

    def plan(now: float) -> RequestPlan:
        return schedule.plan("s", "a", holes, now, max_requests=2, max_batches=1_000)

    assert plan(0) == RequestPlan([(0, 0), (2, 2)], 2)
    assert plan(1) == RequestPlan([(4, 4), (6, 6)], 0)
    assert plan(2) == RequestPlan([], 0)
    assert plan(30) == RequestPlan([(0, 0), (2, 2)], 0)
    assert plan(31) == RequestPlan([(4, 4), (6, 6)], 0)
    huge = schedule.plan("s", "b", [(0, 10**13)], 0, max_requests=3, max_batches=150_000)
    assert huge == RequestPlan([(0, 99_999), (100_000, 149_999)], 10**13 + 1 - 150_000)


@pytest.mark.parametrize("next_seq", [10**10, 10**13, 2**63 - 1])
def test_a_huge_next_seq_costs_a_bounded_number_of_requests(tmp_path: Path, next_seq: int) -> None:
    """An agent (buggy or hostile) announces next_seq 1e13: gap repair asks for the first
    resend_max_batches of it in at most resend_max_requests requests and counts the rest as not asked,
    instead of building 10**8 requests and running out of memory."""
    from datetime import UTC, datetime

    from aua_contract import AgentState, AgentStatus

    config = GatewayConfig(
        gateway=GatewaySection(state=tmp_path / "state.sqlite", gap_grace_s=0, gap_retry_s=1),
        ledger=LedgerSection(resend_max_requests=4, resend_max_batches=250_000),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
    )
    ledger = Ledger(config.gateway.state, config.ledger)
    ingest = Ingest(config, open_store(config.store.url), ledger)
    ledger.record_many([("s", "a", 0, 1, 0), ("s", "a", 1, 1, 0)])
    status = AgentStatus(
        site="s", agent="a", state=AgentState.ONLINE, at=datetime.now(UTC), next_seq=next_seq, oldest_seq=0
    )
    ledger.agent_state(status, 0)
    requests = ingest.resend_requests_due(now=100.0)
    assert [(r.first, r.last) for r in requests] == [(2, 100_001), (100_002, 200_001), (200_002, 250_001)]
    assert ingest.stats.resend_not_asked == next_seq - 250_002
    [account] = ledger.accounts()
    assert account.missing == 0  # the tail is owed, not a hole between seen batches
    ingest.spool.close()
    ledger.close()


def test_gap_repair_looks_at_a_bounded_number_of_holes(tmp_path: Path) -> None:
    """An agent that skips every other number leaves one hole per batch: gap repair reads only the first
    gap_max_ranges of them from the agent's oldest held batch on; accounting still lists them all."""
    ledger = Ledger(tmp_path / "state.sqlite")
    ledger.record_many([("s", "a", seq, 1, 0) for seq in range(0, 20_000, 2)])
    assert len(ledger.holes("s", "a")) == 9_999
    assert ledger.holes("s", "a", limit=3) == [(1, 1), (3, 3), (5, 5)]
    assert ledger.holes("s", "a", from_seq=1001, limit=3) == [(1001, 1001), (1003, 1003), (1005, 1005)]
    assert ledger.holes("s", "a", from_seq=1002, limit=2) == [(1003, 1003), (1005, 1005)]
    assert len(ledger.owed(max_ranges=5)[("s", "a")].requestable) == 5
    assert len(ledger.owed()[("s", "a")].requestable) == 9_999
    ledger.close()


async def test_a_broker_killed_mid_stream_loses_nothing(mqtt_broker: MosquittoServer, tmp_path: Path) -> None:
    """mosquitto without persistence is killed -9 while the agent publishes; gap repair brings back
    what the broker had acknowledged and then forgot, and the store ends up with every batch exactly once."""
    [ambient] = [s for s in demo_sites() if s.config.agent.site == "pavlodar-ambient"]
    ports = {port: free_port() for port in {i.config.port for i in ambient.instruments}}
    site = relocate(ambient, broker_host=mqtt_broker.host, broker_port=mqtt_broker.port, ports=ports, workdir=tmp_path)
    config = GatewayConfig(
        gateway=GatewaySection(
            id=f"gw-{uuid.uuid4().hex[:8]}",
            state=tmp_path / "state.sqlite",
            gap_check_s=0.3,
            gap_grace_s=1.0,
            gap_retry_s=2.0,
        ),
        mqtt=MqttSection(host=mqtt_broker.host, port=mqtt_broker.port),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
    )
    store = open_store(config.store.url)
    await store.open()
    ledger = Ledger(config.gateway.state)
    async with simulator_for_config(site, seed=3):
        ingest = Ingest(config, store, ledger)
        gateway = asyncio.create_task(ingest.run())
        await asyncio.wait_for(ingest.connected.wait(), timeout=10)
        agent = Agent(site)
        agent.publisher.status_interval_s = 0.5
        running = asyncio.create_task(agent.run())
        await asyncio.sleep(3)
        mqtt_broker.stop()  # SIGKILL, no persistence: queued and in-flight messages are gone
        await asyncio.sleep(2.5)
        mqtt_broker.start()
        await asyncio.sleep(3)
        agent.readers.clear()  # stop sealing batches; the MQTT side stays up to answer resend requests
        await asyncio.sleep(1.5)  # a poll cycle in progress may still seal one batch
        sealed = agent.outbox_stats().next_seq
        for _ in range(600):
            accounts = ledger.accounts()
            if accounts and accounts[0].batches == sealed:
                break
            await asyncio.sleep(0.1)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        gateway.cancel()
        await asyncio.gather(gateway, return_exceptions=True)

    outbox = Outbox(site.config.agent.outbox)
    expected = sum(len(decode_batch(payload).readings) for _, payload in outbox.get(0, sealed))
    outbox.close()
    [account] = ledger.accounts()
    stored = sum((await store.count_by_instrument()).values())
    await store.close()
    ledger.close()
    assert sealed >= 7
    assert (account.batches, account.first_seq, account.last_seq, account.missing) == (sealed, 0, sealed - 1, 0)
    assert stored == expected
    assert agent.publisher.resent > 0 or ingest.stats.resend_requests == 0


def test_offline_agents_are_not_asked_until_they_are_back(tmp_path: Path) -> None:
    """Requests to an offline agent would only pile up in its persistent session; its birth resumes them."""
    from datetime import UTC, datetime

    from aua_contract import AgentState, AgentStatus

    config = GatewayConfig(
        gateway=GatewaySection(state=tmp_path / "state.sqlite", gap_grace_s=0, gap_retry_s=1),
        store=StoreSection(url=f"sqlite://{tmp_path}/aua.sqlite"),
    )
    ledger = Ledger(config.gateway.state)
    ingest = Ingest(config, open_store(config.store.url), ledger)
    now = datetime.now(UTC)

    def status(state: AgentState) -> AgentStatus:
        return AgentStatus(site="s", agent="a", state=state, at=now, next_seq=5, oldest_seq=0, dropped=0)

    ledger.record_many([("s", "a", 0, 1, 0), ("s", "a", 1, 1, 0)])
    ledger.agent_state(status(AgentState.OFFLINE), 0)
    assert ingest.resend_requests_due(now=100.0) == []
    ledger.agent_state(status(AgentState.ONLINE), 0)
    [request] = ingest.resend_requests_due(now=200.0)
    assert (request.site, request.agent, request.first, request.last) == ("s", "a", 2, 4)
    ingest.spool.close()
    ledger.close()


@pytest.mark.parametrize(
    ("last_seen", "oldest_seq", "keep", "floor"),
    [
        (999, None, 100, 900),  # the last `keep` numbers
        (999, 950, 100, 950),  # none the agent no longer holds
        (999, 10, 100, 900),
        (50, None, 100, 0),  # fewer than `keep` so far: all
        (999, 5000, 100, 5000),  # the agent holds nothing we have: none is needed
        (2**63 - 1, None, 1, 2**63 - 1),
    ],
)
def test_receipts_are_kept_for_the_last_numbers_the_agent_still_holds(
    last_seen: int, oldest_seq: int | None, keep: int, floor: int
) -> None:
    assert receipt_floor(last_seen, oldest_seq, keep) == floor


def test_the_schedule_remembers_at_most_max_agents_and_counts_the_ones_it_forgets() -> None:
    """Invented agent ids cannot grow it: the least recently checked agent goes first, and its holes only wait
    their grace again."""
    schedule = RepairSchedule(grace_s=10, retry_s=30, max_agents=3)
    for n in range(5):
        schedule.due("s", f"a{n}", [(1, 2), (5, 5)], now=0)
    assert (len(schedule), schedule.forgotten) == (3, 2)
    assert schedule.due("s", "a4", [(1, 2), (5, 5)], now=10) == [(1, 2), (5, 5)]  # remembered since 0
    assert schedule.due("s", "a0", [(1, 2)], now=10) == []  # forgotten: noticed again at 10
    assert (len(schedule), schedule.forgotten) == (3, 3)  # a0 back in, the least recent (a2) out
    assert schedule.due("s", "a0", [(1, 2)], now=20) == [(1, 2)]
    assert schedule.due("s", "a0", [], now=21) == []  # everything filled: the agent is dropped, not counted
    assert (len(schedule), schedule.forgotten) == (2, 3)
