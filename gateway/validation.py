"""Topic + payload -> a batch the gateway may store, or the reason it may not. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from aua_contract import AgentStatus, Batch, ContractError, TopicKind, decode_batch, decode_status, parse_topic
from gateway.stores import StoredReading


@dataclass(frozen=True)
class Rejected:
    """Why a message goes to the dead letters instead of the store."""

    reason: str


def _identity_mismatch(topic_site: str, topic_agent: str, site: str, agent: str) -> Rejected | None:
    if (site, agent) != (topic_site, topic_agent):
        return Rejected(
            f"payload says site {site!r} agent {agent!r} but was published on the topic of "
            f"site {topic_site!r} agent {topic_agent!r}"
        )
    return None


def validate_message(topic: str, payload: bytes) -> Batch | AgentStatus | Rejected:
    parts = parse_topic(topic)
    if parts is None:
        return Rejected(f"topic {topic!r} is not an aua/v1/SITE/AGENT/(readings|status) topic")
    try:
        message: Batch | AgentStatus = (
            decode_batch(payload) if parts.kind is TopicKind.READINGS else decode_status(payload)
        )
    except ContractError as error:
        return Rejected(str(error))
    return _identity_mismatch(parts.site, parts.agent, message.site, message.agent) or message


def stored_readings(batch: Batch) -> list[StoredReading]:
    return [StoredReading.from_reading(batch.site, batch.agent, reading) for reading in batch.readings]
