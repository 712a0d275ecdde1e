"""MQTT topic names: `aua/v1/{site}/{agent}/{kind}`.

The version in the topic lets a broker ACL or a bridge route by contract version without parsing payloads.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

from aua_contract.models import IDENTIFIER_PATTERN

TOPIC_ROOT = "aua/v1"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


class TopicKind(StrEnum):
    READINGS = "readings"
    STATUS = "status"
    RESEND = "resend"


class TopicParts(NamedTuple):
    site: str
    agent: str
    kind: TopicKind


def _topic(site: str, agent: str, kind: TopicKind) -> str:
    for what, name in (("site", site), ("agent", agent)):
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"{what} id {name!r} is not a valid identifier ({IDENTIFIER_PATTERN})")
    return f"{TOPIC_ROOT}/{site}/{agent}/{kind.value}"


def readings_topic(site: str, agent: str) -> str:
    return _topic(site, agent, TopicKind.READINGS)


def status_topic(site: str, agent: str) -> str:
    return _topic(site, agent, TopicKind.STATUS)


def resend_topic(site: str, agent: str) -> str:
    """Where the gateway asks an agent for batches again; the agent subscribes to its own."""
    return _topic(site, agent, TopicKind.RESEND)


def subscription(kind: TopicKind, site: str = "+") -> str:
    """The filter a gateway subscribes with (all agents of a site, or of every site)."""
    if site != "+" and not _IDENTIFIER.fullmatch(site):
        raise ValueError(f"site id {site!r} is neither '+' nor a valid identifier ({IDENTIFIER_PATTERN})")
    return f"{TOPIC_ROOT}/{site}/+/{kind.value}"


def parse_topic(topic: str) -> TopicParts | None:
    """Split a topic into its parts; None when it is not one of ours."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT:
        return None
    site, agent, kind = parts[2], parts[3], parts[4]
    if not (_IDENTIFIER.fullmatch(site) and _IDENTIFIER.fullmatch(agent)):
        return None
    try:
        return TopicParts(site, agent, TopicKind(kind))
    except ValueError:
        return None
