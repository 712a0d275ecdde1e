"""The gateway's collector settings in steady state (issue 12): what only the cyclic collector frees must not
wait for a threshold a plant's message rate takes a day to reach.

The soak found the gateway's RSS rising ~0.3 MiB a minute: paho-mqtt's topic matcher leaves one reference
cycle per message it receives, and gc_tuning's young-generation threshold (500,000 net allocations) is
reached only after ~100,000 messages. Counted here, not timed: objects alive before and after a timer pass.
"""

from __future__ import annotations

import gc
import types
import weakref
from collections.abc import Iterator

import pytest
from paho.mqtt.matcher import MQTTMatcher

from gateway.gc_tuning import FULL_EVERY, GENERATION0, TIMER_THREAD, collect_on_timer, start_timer

MESSAGES = 2_000


@pytest.fixture
def ingest_thresholds() -> Iterator[None]:
    """The thresholds tune_for_ingest sets (without its freeze, which would outlive the test)."""
    before = gc.get_threshold()
    gc.collect()
    gc.set_threshold(GENERATION0, before[1], before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def matcher_cycles() -> int:
    """paho's per-message closures still in memory."""
    name = "MQTTMatcher.iter_match.<locals>.rec"
    return sum(1 for o in gc.get_objects() if isinstance(o, types.FunctionType) and o.__qualname__ == name)


def receive(matcher: MQTTMatcher, count: int) -> None:
    """What paho does for each message received: look up its topic's callbacks."""
    for seq in range(count):
        assert list(matcher.iter_match(f"aua/v1/site/agent-{seq % 7}/readings")) == ["callback"]


@pytest.mark.usefixtures("ingest_thresholds")
def test_pahos_per_message_cycles_wait_for_the_collector_and_the_timer_pass_frees_them() -> None:
    matcher = MQTTMatcher()
    matcher["aua/v1/+/+/readings"] = "callback"
    receive(matcher, MESSAGES)
    assert matcher_cycles() >= MESSAGES  # at the ingest threshold nothing collected them
    assert collect_on_timer(1) > 0
    assert matcher_cycles() == 0


class Node:
    """A cycle: a node that refers to itself."""

    def __init__(self) -> None:
        self.me = self


@pytest.mark.usefixtures("ingest_thresholds")
def test_every_full_every_th_timer_pass_also_frees_cycles_in_the_old_generation() -> None:
    """A cycle that lived long enough to reach the old generation (e.g. an hour's running state) and then
    became garbage is freed by the hourly full pass, not by the young passes."""
    node = Node()
    alive = weakref.ref(node)
    gc.collect(1)  # survives: moved to the old generation
    del node
    for tick in range(1, FULL_EVERY):
        collect_on_timer(tick)
    assert alive() is not None
    collect_on_timer(FULL_EVERY)
    assert alive() is None


def test_the_timer_thread_is_started_once() -> None:
    first = start_timer(1e7)  # never fires during a test run (a collection would hide what other tests count)
    assert first.daemon
    assert first.name == TIMER_THREAD
    assert start_timer(1e7) is first
