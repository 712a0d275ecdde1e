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


def validate_message(
    topic: str, payload: bytes, *, max_bytes: int | None = None, agents: frozenset[str] = frozenset()
) -> Batch | AgentStatus | Rejected:
    """`agents`, when not empty, lists the SITE/AGENT pairs allowed to publish (the registry)."""
    parts = parse_topic(topic)
    if parts is None or parts.kind is TopicKind.RESEND:  # resend requests go from gateways to agents only
        return Rejected(f"topic {topic!r} is not an aua/v1/SITE/AGENT/(readings|status) topic")
    if max_bytes is not None and len(payload) > max_bytes:
        return Rejected(f"payload of {len(payload)} bytes is over the {max_bytes}-byte limit")
    if agents and f"{parts.site}/{parts.agent}" not in agents:
        return Rejected(f"agent {parts.site}/{parts.agent} is not in the registry")
    try:
        message: Batch | AgentStatus = (
            decode_batch(payload) if parts.kind is TopicKind.READINGS else decode_status(payload)
        )
    except ContractError as error:
        return Rejected(str(error))
    return _identity_mismatch(parts.site, parts.agent, message.site, message.agent) or message


def stored_readings(batch: Batch) -> list[StoredReading]:
    return [StoredReading.from_reading(batch.site, batch.agent, reading) for reading in batch.readings]
