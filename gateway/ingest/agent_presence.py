"""Whether each agent is online, as its status messages say, logged when it changes and not on every message.

An agent publishes its status every `status_interval_s` (10 s by default) and its broker publishes the last will
("offline") when it vanishes. Logging every status buried the one line that matters; this logs a loss at
WARNING and a return at INFO with how long the agent was away, once each. The decision is pure (`change`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from aua_contract import AgentState, AgentStatus
from aua_ops import spoken_duration

log = logging.getLogger(__name__)

MAX_AGENTS_TRACKED = 100_000
"""Agents whose last state is remembered; past it the longest silent one is forgotten (and its next status is
logged as if first seen): memory stays bounded whatever agent ids arrive."""


class Change(Enum):
    FIRST_ONLINE = "first online"
    FIRST_OFFLINE = "first offline"
    WENT_OFFLINE = "went offline"
    BACK_ONLINE = "back online"


def change(previous: AgentState | None, current: AgentState) -> Change | None:
    """What a status means given the agent's previous one (None: not seen since the gateway started). Pure."""
    if previous is current:
        return None
    if previous is None:
        return Change.FIRST_ONLINE if current is AgentState.ONLINE else Change.FIRST_OFFLINE
    return Change.BACK_ONLINE if current is AgentState.ONLINE else Change.WENT_OFFLINE


@dataclass
class _Seen:
    state: AgentState
    since: float
    """monotonic time the state began (as far as this gateway saw)"""


class PresenceLog:
    """The last state of each agent; `note` logs what changed."""

    def __init__(self, max_agents: int = MAX_AGENTS_TRACKED) -> None:
        self.max_agents = max_agents
        self._seen: OrderedDict[tuple[str, str], _Seen] = OrderedDict()
        self.forgotten = 0

    def note(self, status: AgentStatus, now: float | None = None) -> Change | None:
        now = time.monotonic() if now is None else now
        key = (status.site, status.agent)
        seen = self._seen.get(key)
        what = change(seen.state if seen is not None else None, status.state)
        if seen is not None:
            self._seen.move_to_end(key)
        if what is None:
            return None
        away = now - seen.since if seen is not None else 0.0
        self._seen[key] = _Seen(status.state, now)
        while len(self._seen) > self.max_agents:
            self._seen.popitem(last=False)
            self.forgotten += 1
        name = f"{status.site}/{status.agent}"
        if what is Change.FIRST_ONLINE:
            log.info("agent %s is online", name)
        elif what is Change.FIRST_OFFLINE:
            log.warning("agent %s is offline (its last status says so; its readings stop until it is back)", name)
        elif what is Change.WENT_OFFLINE:
            log.warning(
                "agent %s went offline after %s online (a clean stop, or its broker connection was lost and the"
                " broker published its last will); its readings stop until it is back",
                name,
                spoken_duration(away),
            )
        else:
            log.info("agent %s is online again after %s offline", name, spoken_duration(away))
        return what
