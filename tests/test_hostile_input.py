"""No message crashes Aua (issue 13): ≥ 10,000 messages, valid batches interleaved with poison, published to a
real mosquitto and taken by a real `cems-gateway run` with each store.

The campaign (tests/hostile_campaign.py) is the known classes that once crashed the gateway (integers ≥ 2**63,
also retained on status and resend topics; times outside what the stores hold; control characters; values whose
sum overflows; spoofed and malformed topics; non-JSON; huge payloads) plus hypothesis-generated JSON and bytes
(derandomized under CI by the project's profile, tests/conftest.py). bench/hostile_input.py runs it for longer.

A real `edge-agent run`, polling a pymodbus simulator, publishes through the same broker throughout, while a
tenth of the campaign is aimed at its topics: floods of overlapping resend requests, the whole int64 range,
values beyond it, not JSON, one retained (the agent is restarted mid-campaign and gets it again), and statuses
spoofing it. Both processes' RSS is measured after the warm-up and once the campaign is taken: growth must stay
below a fixed slack (larger on InfluxDB) plus 1 KiB per message handled since (hostile_campaign.rss_bound_kb),
which a leak of 6-8 KiB a message in the gateway, or one that loads a resend range whole in the agent, exceeds.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
from hostile_campaign import (
    GOOD_AGENTS,
    REAL_AGENT,
    Campaign,
    build,
    check_agent_stored,
    check_stored,
    revision_counts,
    run,
    stored_readings,
)
from servers import InfluxServer, MosquittoServer

from gateway.ingest.ledger import Ledger

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
    return build("hostile", MESSAGES, agent=REAL_AGENT)


@pytest.mark.timeout(240)
async def test_no_message_crashes_the_gateway(mqtt_broker: MosquittoServer, store_url: str, tmp_path: Path) -> None:
    """The gateway and the real agent stay up (/health answers throughout); every valid reading, the agent's
    included, is stored exactly once with its exact value; every poisoned message is one dead letter (the pure
    validation is the oracle); the agent's resend limits hold; neither process's memory grows with the
    messages; a restart with the retained poison still on the broker is clean and the gateway goes on."""
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
    # After the restart the retained poison came back (and the agent's own status), nothing else before the
    # new batches.
    assert outcome.restart_messages >= outcome.retained + outcome.retained_valid > 20
    assert outcome.restart_dead_letters == outcome.restart_messages - outcome.retained_valid

    # The real agent: up throughout, within its resend limits (checked while it ran), two clean stops.
    assert outcome.agent_failures == []
    assert outcome.agent_exits == [0, 0], outcome.agent_log[-4000:]
    assert "Traceback" not in outcome.agent_log
    requests = outcome.agent_resend_requests
    assert {"limited", "refused", "malformed", "foreign", "not_held"} <= {k for k, v in requests.items() if v}
    assert sum(requests.values()) >= MESSAGES // 20, requests
    assert 0 < outcome.agent_resent <= sum(requests.values()) * 50
    assert outcome.agent_sealed >= 20

    # Memory: growth after the warm-up within the bound, for the gateway and the agent.
    assert outcome.rss_problems() == []

    stored = await stored_readings(store_url, site)
    check_stored(campaign, stored)  # the originals, not the rewrites
    check_agent_stored(outcome.agent_expected, stored)
    counts = await revision_counts(store_url, site)
    assert {agent: counts[(site, agent)].pending for agent in campaign.revisions} == campaign.revisions
    ledger = Ledger(tmp_path / "state.sqlite")
    try:
        accounts = {a.agent: a for a in ledger.accounts() if a.site == site and a.agent in GOOD_AGENTS}
        real = next(a for a in ledger.accounts() if (a.site, a.agent) == (site, REAL_AGENT))
    finally:
        ledger.close()
    assert {agent: (a.batches, a.missing) for agent, a in accounts.items()} == {
        agent: (campaign.next_seq[agent], 0) for agent in GOOD_AGENTS
    }
    # every batch the agent sealed reached the gateway once; its resends were duplicates
    assert (real.batches, real.first_seq, real.last_seq, real.missing) == (
        outcome.agent_sealed,
        0,
        outcome.agent_sealed - 1,
        0,
    )
