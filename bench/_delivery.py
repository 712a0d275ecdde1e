"""An independent MQTT subscriber that counts what actually reached the broker, for the benches.

A bench's throughput is what a subscriber on the broker received, not what a process says it attempted: a
failed read (value omitted) is not counted, and a batch seen twice (same agent, same sequence number) counts
once. It also tells whether values change between cycles (a simulator that serves the same values for an hour
flatters any agent that compresses or skips unchanged data).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass
class Counts:
    """Per agent: readings with a value, readings without one (failed reads), batches, duplicates, changes."""

    delivered: int = 0
    failed: int = 0
    batches: int = 0
    duplicates: int = 0
    changed: int = 0
    unchanged: int = 0
    seen: set[int] = field(default_factory=set)
    last: dict[tuple[str, str], float] = field(default_factory=dict)


class DeliveryCounter:
    """Subscribes to `topic_filter` (QoS 1) on a broker and counts the readings of each agent's batches."""

    def __init__(self, host: str, port: int, topic_filter: str, client_id: str = "bench-delivery-counter") -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, Counts] = {}
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_connect = lambda client, *args: client.subscribe(topic_filter, qos=1)
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"no subscription to {topic_filter} on {host}:{port} within 10 s")

    def _on_message(self, client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        batch = json.loads(message.payload)
        with self._lock:
            counts = self.counts.setdefault(batch["agent"], Counts())
            if batch["seq"] in counts.seen:
                counts.duplicates += 1
                return
            counts.seen.add(batch["seq"])
            counts.batches += 1
            for reading in batch["readings"]:
                value = reading.get("value")
                if value is None:
                    counts.failed += 1
                    continue
                counts.delivered += 1
                key = (reading["instrument"], reading["parameter"])
                previous = counts.last.get(key)
                if previous is not None:
                    if previous == value:
                        counts.unchanged += 1
                    else:
                        counts.changed += 1
                counts.last[key] = value

    def snapshot(self, agent: str) -> Counts:
        """A copy of one agent's counts (without the sets), to subtract one snapshot from another."""
        with self._lock:
            c = self.counts.get(agent, Counts())
            return Counts(c.delivered, c.failed, c.batches, c.duplicates, c.changed, c.unchanged)

    def forget(self, agent: str) -> None:
        """Start an agent's counts afresh: a new run whose outbox numbers its batches from 0 again."""
        with self._lock:
            self.counts.pop(agent, None)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def difference(after: Counts, before: Counts) -> Counts:
    return Counts(
        after.delivered - before.delivered,
        after.failed - before.failed,
        after.batches - before.batches,
        after.duplicates - before.duplicates,
        after.changed - before.changed,
        after.unchanged - before.unchanged,
    )
