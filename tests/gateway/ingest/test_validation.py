"""Gateway validation: what is stored, what becomes a dead letter and why. Pure, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aua_contract import AgentState, AgentStatus, Batch, Quality, Reading, encode_batch, encode_status
from gateway.ingest.validation import Rejected, stored_readings, validate_message

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def batch(site: str = "pvl", agent: str = "a1", seq: int = 7) -> Batch:
    return Batch(
        site=site,
        agent=agent,
        seq=seq,
        sent_at=T0,
        readings=[
            Reading(instrument="hg1", parameter="hg", value=4.9, unit="ng/m³", ts=T0, status=0),
            Reading(instrument="hg1", parameter="t", value=None, unit="degC", ts=T0, quality=Quality.FAILURE),
        ],
    )


def test_a_valid_batch_passes_and_maps_every_field() -> None:
    result = validate_message("aua/v1/pvl/a1/readings", encode_batch(batch()))
    assert result == batch()
    assert isinstance(result, Batch)
    rows = stored_readings(result)
    assert [(r.site, r.agent, r.instrument, r.parameter, r.value, r.unit, r.quality, r.status) for r in rows] == [
        ("pvl", "a1", "hg1", "hg", 4.9, "ng/m³", Quality.OK, 0),
        ("pvl", "a1", "hg1", "t", None, "degC", Quality.FAILURE, None),
    ]
    assert all(r.ts == T0 for r in rows)


def test_a_status_message_passes() -> None:
    status = AgentStatus(site="pvl", agent="a1", state=AgentState.OFFLINE)
    assert validate_message("aua/v1/pvl/a1/status", encode_status(status)) == status


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("other/topic", encode_batch(batch()), "is not an aua/v1/SITE/AGENT"),
        ("aua/v1/pvl/a1/commands", encode_batch(batch()), "is not an aua/v1/SITE/AGENT"),
        ("aua/v1/pvl/a1/readings", b"\xff\xfe", "not JSON"),
        ("aua/v1/pvl/a1/readings", b'{"v": 2}', "unsupported schema version v=2"),
        ("aua/v1/pvl/a1/readings", b'{"site": "pvl"}', "missing schema version"),
        ("aua/v1/pvl/a1/readings", encode_batch(batch()).replace(b'"seq":7', b'"seq":-1'), "seq"),
        # spoofing: an agent publishing under another agent's topic, or another site's
        ("aua/v1/pvl/a2/readings", encode_batch(batch()), "payload says site 'pvl' agent 'a1'"),
        ("aua/v1/ekb/a1/readings", encode_batch(batch()), "topic of site 'ekb'"),
        ("aua/v1/pvl/a1/status", encode_batch(batch()), "status:"),
        ("aua/v1/pvl/a1/resend", encode_status(AgentStatus(site="pvl", agent="a1", state=AgentState.ONLINE)), "topic"),
        # Bounds (issue 13): each of these crashed a store write, the ledger or the rollups before the contract
        # refused it; now the whole message is one dead letter naming the field.
        ("aua/v1/pvl/a1/readings", encode_batch(batch()).replace(b'"seq":7', b'"seq":9223372036854775808'), "seq"),
        *(
            (
                "aua/v1/pvl/a1/readings",
                encode_batch(batch()).replace(b'"sent_at":"2026-12-01T06:00:00Z"', b'"sent_at":"%s"' % bad),
                "sent_at",
            )
            for bad in (b"2262-04-11T23:47:17Z", b"1600-01-01T00:00:00Z", b"2300-01-01T00:00:00Z")
        ),
        *(
            (
                "aua/v1/pvl/a1/readings",
                encode_batch(batch()).replace(b'"ts":"2026-12-01T06:00:00Z"', b'"ts":"%s"' % bad, 1),
                "readings.0.ts",
            )
            for bad in (b"2262-04-11T23:47:17Z", b"1600-01-01T00:00:00Z", b"2300-01-01T00:00:00Z")
        ),
        (
            "aua/v1/pvl/a1/readings",
            encode_batch(batch()).replace(b'"value":4.9', b'"value":1.79e308'),
            "readings.0.value",
        ),
        ("aua/v1/pvl/a1/readings", encode_batch(batch()).replace(b'"ng/m\xc2\xb3"', b'"ng\\u0000"'), "readings.0.unit"),
        ("aua/v1/pvl/a1/readings", encode_batch(batch()).replace(b'"degC"', b'"degC\\r\\n"'), "readings.1.unit"),
        *(
            (
                "aua/v1/pvl/a1/status",
                b'{"v":1,"site":"pvl","agent":"a1","state":"online","%s":9223372036854775808}' % field,
                field.decode(),
            )
            for field in (b"next_seq", b"oldest_seq", b"dropped")
        ),
        (
            "aua/v1/pvl/a1/status",
            b'{"v":1,"site":"pvl","agent":"a1","state":"online","at":"2263-01-01T00:00:00Z"}',
            "at",
        ),
        ("aua/v1/pvl/a1/status", b'{"v":1,"site":"pvl","agent":"a1","state":"online","version":"1\\n2"}', "version"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(topic: str, payload: bytes, reason: str) -> None:
    result = validate_message(topic, payload)
    assert isinstance(result, Rejected)
    assert reason in result.reason


def test_oversized_payloads_and_unregistered_agents_are_rejected() -> None:
    payload = encode_batch(batch())
    too_big = validate_message("aua/v1/pvl/a1/readings", payload, max_bytes=len(payload) - 1)
    assert isinstance(too_big, Rejected)
    assert f"payload of {len(payload)} bytes is over the" in too_big.reason
    assert isinstance(validate_message("aua/v1/pvl/a1/readings", payload, max_bytes=len(payload)), Batch)
    stranger = validate_message("aua/v1/pvl/a1/readings", payload, agents=frozenset({"pvl/a2"}))
    assert stranger == Rejected("agent pvl/a1 is not in the registry")
    assert isinstance(validate_message("aua/v1/pvl/a1/readings", payload, agents=frozenset({"pvl/a1"})), Batch)
