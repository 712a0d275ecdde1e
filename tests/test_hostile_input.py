"""No message crashes Aua (issue 13): ≥ 10,000 messages, valid batches interleaved with poison, published to a
real mosquitto and taken by a real `cems-gateway run` with each store.

The campaign (tests/hostile_campaign.py) is the known classes that once crashed the gateway (integers ≥ 2**63,
also retained on status and resend topics; times outside what the stores hold; control characters; values whose
sum overflows; spoofed and malformed topics; non-JSON; huge payloads) plus hypothesis-generated JSON and bytes
(derandomized under CI by the project's profile, tests/conftest.py). bench/hostile_input.py runs it for longer.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
from hostile_campaign import GOOD_AGENTS, Campaign, build, check_stored, revision_counts, run, stored_readings
from servers import InfluxServer, MosquittoServer

from gateway.ledger import Ledger

MESSAGES = 10_000


@pytest.fixture(params=["sqlite", "influxdb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/aua.sqlite"
    influxdb: InfluxServer = request.getfixturevalue("influxdb")
    url: str = request.getfixturevalue("influx_db_url")
    assert influxdb.running
    return url


@functools.cache
def _campaign() -> Campaign:
    """Built once for both stores (generating takes seconds); each test runs a copy on a broker of its own."""
    return build("hostile", MESSAGES)


@pytest.mark.timeout(240)
async def test_no_message_crashes_the_gateway(mqtt_broker: MosquittoServer, store_url: str, tmp_path: Path) -> None:
    """The gateway stays up and answers /health throughout; every valid reading is stored exactly once with its
    exact value; every poisoned message is one dead letter (the pure validation is the oracle); a restart with
    the retained poison still on the broker is clean and the gateway goes on ingesting."""
    campaign = copy.deepcopy(_campaign())
    site = campaign.site
    assert len(campaign.messages) >= MESSAGES
    broker = (mqtt_broker.host, mqtt_broker.port)
    outcome = await run(campaign, broker=broker, store_url=store_url, workdir=tmp_path)

    assert outcome.health_failures == []
    assert outcome.health_answers >= 2
    assert outcome.first_exit == 0, outcome.log[-4000:]
    assert outcome.second_exit == 0, outcome.log[-4000:]
    assert "Traceback" not in outcome.log
    assert outcome.dead_letters == outcome.dead_letters_expected
    assert outcome.dead_letters_expected >= MESSAGES // 2
    # After the restart the retained poison came back, and nothing else before the new batches.
    assert outcome.restart_messages >= outcome.retained > 20
    assert outcome.restart_dead_letters == outcome.restart_messages

    check_stored(campaign, await stored_readings(store_url, site))  # the originals, not the rewrites
    counts = await revision_counts(store_url, site)
    assert {agent: counts[(site, agent)].pending for agent in campaign.revisions} == campaign.revisions
    ledger = Ledger(tmp_path / "state.sqlite")
    try:
        accounts = {a.agent: a for a in ledger.accounts() if a.site == site and a.agent in GOOD_AGENTS}
    finally:
        ledger.close()
    assert {agent: (a.batches, a.missing) for agent, a in accounts.items()} == {
        agent: (campaign.next_seq[agent], 0) for agent in GOOD_AGENTS
    }
