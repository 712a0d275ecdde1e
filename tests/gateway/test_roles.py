"""Gateway roles (gateway/roles.py): ingest scales out on a shared subscription, alerts and mrv run once on
every reading; the config refuses what would compute on partial data."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from eventually import eventually
from servers import MosquittoServer

from aua_contract import Batch, Reading, encode_batch, readings_topic
from gateway.alerts.engine import AlertStore
from gateway.cli import main as gateway_main
from gateway.cli import role_parts
from gateway.config import (
    AlertsSection,
    GatewayConfig,
    GatewayConfigError,
    GatewaySection,
    MqttSection,
    RollupSection,
    StoreSection,
    load_gateway_config,
)
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.mrv.rollup import Period
from gateway.mrv.stored_batches import MAX_RANGE, AwaitingReceipts, minute_keys
from gateway.roles import Role, plan, role_problems
from gateway.stores import open_store

# -- which role set runs what, and which is refused (pure) ----------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "shared", "tasks", "receipts"),
    [
        (["ingest", "alerts", "mrv"], False, ("consume", "write", "drain-spool", "alerts", "rollups"), False),
        (["ingest"], True, ("consume", "write", "drain-spool"), True),
        (["ingest"], False, ("consume", "write", "drain-spool"), True),  # mrv elsewhere needs the receipts
        (["ingest", "mrv"], False, ("consume", "write", "drain-spool", "rollups"), False),
        (["alerts"], False, ("consume", "alerts"), False),
        (["mrv"], False, ("consume", "rollups", "stored-batches"), False),
        (["alerts", "mrv"], False, ("consume", "alerts", "rollups", "stored-batches"), False),
    ],
)
def test_each_role_set_runs_its_tasks(roles: list[str], shared: bool, tasks: tuple[str, ...], receipts: bool) -> None:
    planned = plan(roles, shared_group="g" if shared else None)
    assert planned.tasks == tasks
    assert planned.writes_receipts is receipts
    assert planned.rolls_up_from_receipts is (Role.MRV in roles and Role.INGEST not in roles)


@pytest.mark.parametrize(
    ("roles", "shared", "says"),
    [
        (["ingest", "alerts", "mrv"], True, "alerts and mrv cannot run on a shared subscription"),
        (["ingest", "alerts"], True, "alerts cannot run on a shared subscription"),
        (["ingest", "mrv"], True, "mrv cannot run on a shared subscription"),
        (["alerts"], True, "has no ingest role"),
        ([], False, "names no role"),
        (["ingest", "ingest"], False, "names a role twice"),
        (["ingest", "reports"], False, "unknown role(s) 'reports'"),
    ],
)
def test_role_sets_that_would_compute_on_partial_data_are_refused(roles: list[str], shared: bool, says: str) -> None:
    problems = role_problems(roles, shared_group="g" if shared else None)
    assert any(says in problem for problem in problems), problems
    with pytest.raises(ValueError, match="roles"):
        plan(roles, shared_group="g" if shared else None)


@pytest.mark.parametrize(
    ("roles", "shared"), [(["ingest"], True), (["ingest", "alerts", "mrv"], False), (["mrv"], False)]
)
def test_role_sets_that_see_what_they_need_are_accepted(roles: list[str], shared: bool) -> None:
    assert role_problems(roles, shared_group="g" if shared else None) == []


def test_the_default_is_every_role_in_one_process() -> None:
    assert GatewayConfig().gateway.roles == ["ingest", "alerts", "mrv"]


@pytest.mark.parametrize(
    ("text", "needle", "says"),
    [
        (
            '[gateway]\nid = "gw"\nroles = ["ingest", "alerts"]\n\n[mqtt]\nshared_group = "aua"\n',
            "roles =",
            "alerts cannot run on a shared subscription ([mqtt] shared_group)",
        ),
        ('[gateway]\nroles = ["ingest", "reports"]\n', "roles =", "Input should be 'ingest', 'alerts' or 'mrv'"),
        ("[gateway]\nroles = []\n", "roles =", "names no role"),
    ],
)
def test_a_refused_role_set_is_one_line_naming_the_key(tmp_path: Path, text: str, needle: str, says: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    line = next(number for number, content in enumerate(text.splitlines(), 1) if needle in content)
    with pytest.raises(GatewayConfigError) as raised:
        load_gateway_config(path)
    [problem] = str(raised.value).splitlines()
    assert problem.startswith(f"{path}:{line}: gateway.roles"), problem
    assert says in problem


def test_check_names_what_this_instance_leaves_to_another(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An ingest-only instance with [alerts] and a state feed is valid (another instance runs them); `check`
    says so in a warning line each, naming the key, and still passes."""
    text = (
        '[gateway]\nstate = "state.sqlite"\nroles = ["ingest"]\n\n[store]\nurl = "sqlite://aua.sqlite"\n\n'
        '[alerts]\ndata_rules = false\n\n[state_feed]\nurl = "http://127.0.0.1:9/feed"\n'
    )
    path = tmp_path / "gw.toml"
    path.write_text(text)
    code = gateway_main(["check", str(path), "--no-servers"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    line_of = {
        needle: number
        for number, content in enumerate(text.splitlines(), 1)
        for needle in ("[alerts]", "[state_feed]")
        if content == needle
    }
    assert code == 0
    assert lines == [
        f"{path}:{line_of['[alerts]']}: alerts: not evaluated here: [gateway] roles has no alerts; another instance "
        'must run them (docs/gateway.md, "Roles") [warning]',
        f"{path}:{line_of['[state_feed]']}: state_feed: not sent from here: [gateway] roles has no mrv; another "
        'instance must run them (docs/gateway.md, "Roles") [warning]',
        f"{path}: ok, 2 warnings",
    ]


def test_a_config_built_in_code_is_refused_too() -> None:
    with pytest.raises(ValueError, match=r"gateway\.roles: alerts and mrv cannot run on a shared subscription"):
        GatewayConfig(mqtt=MqttSection(shared_group="aua"))


# -- the mrv instance's batches waiting for their receipt (pure) --------------------------------------------


def _batch(seq: int, agent: str = "a1", second: int = 0) -> Batch:
    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC) + timedelta(seconds=second)
    reading = Reading(instrument="gas", parameter="so2", value=1.0, unit="mg/m3", ts=at)
    return Batch(site="s", agent=agent, seq=seq, sent_at=at, readings=[reading])


def test_a_batch_s_minutes_are_marked_once_its_receipt_is_found() -> None:
    waiting = AwaitingReceipts()
    for seq in (3, 4, 5):
        assert waiting.add(_batch(seq, second=seq * 30)) == []
    assert waiting.ranges() == [("s", "a1", 3, 5)]
    marked = waiting.stored("s", "a1", [3, 5, 99])  # 4 not stored yet; 99 never seen
    assert marked == minute_keys(_batch(3, second=90)) | minute_keys(_batch(5, second=150))
    assert waiting.ranges() == [("s", "a1", 4, 4)]
    assert (len(waiting), waiting.counts.confirmed, waiting.counts.given_up) == (1, 2, 0)


@pytest.mark.parametrize(
    ("seqs", "ranges"),
    [
        ([0, 1, 2], [(0, 2)]),
        ([0, MAX_RANGE - 1], [(0, MAX_RANGE - 1)]),
        ([0, MAX_RANGE], [(0, 0), (MAX_RANGE, MAX_RANGE)]),
        ([5, 0, 2 * MAX_RANGE + 7], [(0, 5), (2 * MAX_RANGE + 7, 2 * MAX_RANGE + 7)]),
    ],
)
def test_receipt_lookups_are_bounded_ranges(seqs: list[int], ranges: list[tuple[int, int]]) -> None:
    waiting = AwaitingReceipts()
    for seq in seqs:
        waiting.add(_batch(seq))
    assert waiting.ranges() == [("s", "a1", first, last) for first, last in ranges]


def test_past_the_bound_the_oldest_batch_is_given_up_and_counted() -> None:
    waiting = AwaitingReceipts(max_batches=2)
    assert waiting.add(_batch(0, second=0)) == []
    assert waiting.add(_batch(1, second=60)) == []
    assert waiting.add(_batch(2, second=120)) == [minute_keys(_batch(0, second=0))]
    assert (len(waiting), waiting.counts.given_up) == (2, 1)
    assert waiting.stored("s", "a1", [0]) == set()  # given up already: not marked twice


# -- two ingest instances on a shared group, one alerts + mrv instance (real mosquitto and InfluxDB) -----------

BATCHES = 40
PER_BATCH = 6


def _batches(site: str, agent: str, start: datetime) -> list[Batch]:
    """One SO2 reading a second, 5 mg/m3 (above the test's alert limit), over whole minutes."""
    return [
        Batch(
            site=site,
            agent=agent,
            seq=seq,
            sent_at=start + timedelta(seconds=(seq + 1) * PER_BATCH),
            readings=[
                Reading(
                    instrument="gas",
                    parameter="so2",
                    value=5.0,
                    unit="mg/m3",
                    ts=start + timedelta(seconds=seq * PER_BATCH + i),
                )
                for i in range(PER_BATCH)
            ],
        )
        for seq in range(BATCHES)
    ]


async def test_two_ingest_instances_and_one_alerts_mrv_instance(
    mosquitto: MosquittoServer, influx_db_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    site, agent, group = f"roles-{tag}", "a1", f"g{tag}"  # ids of this test's own on the shared broker
    alerts = AlertsSection.model_validate(
        {
            "data_rules": False,
            "rules": {"so2-high": {"parameter": "so2", "window": "instant", "above": 1.0, "unit": "mg/m3"}},
        }
    )

    def config(name: str, roles: list[str], shared: bool) -> GatewayConfig:
        return GatewayConfig(
            gateway=GatewaySection(
                id=f"gw-{tag}-{name}", state=tmp_path / f"state-{name}.sqlite", roles=roles, gap_check_s=0.3
            ),
            mqtt=MqttSection(
                host=mosquitto.host, port=mosquitto.port, sites=site, shared_group=group if shared else None
            ),
            store=StoreSection(url=influx_db_url),
            alerts=alerts,
            rollup=RollupSection(interval=0.5),
        )

    configs = [config("a", ["ingest"], True), config("b", ["ingest"], True), config("c", ["alerts", "mrv"], False)]
    gateways: list[Ingest] = []
    closers = []
    for each in configs:
        store = open_store(each.store.url)
        await store.open()
        ledger = Ledger(each.gateway.state)
        engine, rollups, feed, state_feed = role_parts(each, store)
        assert feed is None
        assert state_feed is None
        gateways.append(Ingest(each, store, ledger, alerts=engine, rollups=rollups))
        closers.append((store, ledger, engine, rollups))
    tasks = [asyncio.create_task(gateway.run()) for gateway in gateways]
    try:
        for gateway in gateways:
            await eventually(gateway.connected.is_set, timeout=20, what="subscribed")
        start = (datetime.now(UTC) - timedelta(minutes=20)).replace(second=0, microsecond=0)
        sent = _batches(site, agent, start)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"agent-{tag}") as client:
            for batch in sent:
                await client.publish(readings_topic(site, agent), encode_batch(batch), qos=1)
        store = closers[0][0]

        async def stored() -> int:
            return (await store.count_by_instrument()).get((site, "gas"), 0)

        async def minute_rollups() -> int:
            aggregates = await store.query_aggregates(period=Period.MINUTE, site=site)
            return sum(aggregate.n_valid for aggregate in aggregates)

        counts = {"stored": 0, "rolled up": 0}

        async def refresh() -> None:
            counts["stored"], counts["rolled up"] = await stored(), await minute_rollups()

        for _ in range(600):  # at most ~60 s on a loaded machine; returns as soon as both are complete
            await refresh()
            if counts == {"stored": BATCHES * PER_BATCH, "rolled up": BATCHES * PER_BATCH}:
                break
            await asyncio.sleep(0.1)
        liveness = [set(gateway.supervisor.liveness()) for gateway in gateways]
        watcher = gateways[2]
        alert_rows = AlertStore(configs[2].gateway.state).load()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for store, ledger, engine, rollups in closers:
            for part in (engine, rollups):
                if part is not None:
                    part.close()
            await store.close()
            ledger.close()

    # Every reading stored exactly once, by the ingest instances (each took a share), none by the watcher.
    assert counts["stored"] == BATCHES * PER_BATCH
    shares = [gateway.stats.batches for gateway in gateways[:2]]
    assert all(share > 0 for share in shares), f"the broker should split the batches: {shares}"
    assert sum(shares) >= BATCHES
    assert watcher.stats.batches == 0
    assert watcher.stats.observed >= BATCHES
    # Rollups from the store by the mrv instance alone, on every reading (1-minute rollups count all of them).
    assert counts["rolled up"] == BATCHES * PER_BATCH
    assert liveness[0] == liveness[1] == {"consume", "write", "drain-spool"}
    assert liveness[2] == {"consume", "alerts", "rollups", "stored-batches"}
    assert watcher.awaiting is not None
    assert watcher.awaiting.counts.given_up == 0
    # Alerts evaluated by the alerts instance only: its state holds the SO2 alert; the ingest instances have none.
    assert [(row.key.rule, row.key.site, row.key.parameter) for row in alert_rows] == [("so2-high", site, "so2")]
    for ingest_config in configs[:2]:
        assert AlertStore(ingest_config.gateway.state).load() == []
