"""The independent subscriber: counts the distinct tag values each system delivered to the broker.

Every system names its devices dev000, dev001, ... and its tags t00 ... t29; every value is
`tag * 100000 + tick` (bench/peers/simulator.py), so a delivered value says which device, tag and second it was
read in. A value seen again (a resend after reconnect, a replayed buffer) counts once, and as a duplicate; a
value whose tag part does not match its tag name counts as wrong. It also answers thingsboard-gateway's
`getSessionLimits` RPC, as a ThingsBoard server does: without an answer that gateway never sends telemetry.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.peers.simulator import TAG_STRIDE

TOPICS = ("aua/v1/+/+/readings", "v1/gateway/telemetry", "nr/#", "v1/devices/me/rpc/request/+")
SESSION_LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 1000,
    "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
    "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
}


def values_of(topic: str, document: Any) -> Iterator[tuple[int, int, float]]:
    """(device index, tag index, value) of every value in one system's message."""
    if topic.startswith("aua/"):
        for reading in document["readings"]:
            if reading.get("value") is not None:
                yield int(reading["instrument"][3:]), int(reading["parameter"][1:]), reading["value"]
    elif topic == "v1/gateway/telemetry":
        for name, entries in document.items():
            for entry in entries if isinstance(entries, list) else [entries]:
                for key, value in entry.get("values", entry).items():
                    if key.startswith("t") and key[1:].isdigit():
                        yield int(name[3:]), int(key[1:]), value
    elif topic.startswith("nr/"):
        device = int(topic.rsplit("/", 1)[1][3:])
        for tag, value in enumerate(document["v"]):
            yield device, tag, value


class Tally:
    """Distinct (device, tag, tick) values: one bit per tag in a mask per device and tick."""

    def __init__(self, devices: int) -> None:
        self.devices = devices
        self.masks: dict[int, list[int]] = {}
        self.received = 0
        """distinct values received so far, of any second"""
        self.duplicates = 0
        self.wrong = 0

    def add(self, device: int, tag: int, value: float) -> None:
        whole = int(value)
        if whole != value or whole // TAG_STRIDE != tag or not 0 <= device < self.devices:
            self.wrong += 1
            return
        masks = self.masks.setdefault(whole % TAG_STRIDE, [0] * self.devices)
        bit = 1 << tag
        if masks[device] & bit:
            self.duplicates += 1
        else:
            masks[device] |= bit
            self.received += 1

    def delivered(self, first_tick: int, last_tick: int) -> int:
        """Distinct values read in ticks first_tick ... last_tick that arrived so far."""
        return sum(
            sum(mask.bit_count() for mask in masks)
            for tick, masks in self.masks.items()
            if first_tick <= tick <= last_tick
        )

    def latest_tick(self) -> int:
        return max(self.masks, default=0)


class Counter(Tally):
    """The tally fed by a persistent-session QoS 1 subscriber on its own paho thread."""

    def __init__(self, host: str, port: int, devices: int, client_id: str) -> None:
        super().__init__(devices)
        self.lock = threading.Lock()
        self.messages = 0
        self.undecodable = 0
        self.undecodable_sample = ""
        self.rpc_answers = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        client.subscribe([(topic, 1) for topic in TOPICS])

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        try:
            document = json.loads(message.payload)
            if topic.startswith("v1/devices/me/rpc/request/"):
                if document.get("method") == "getSessionLimits":
                    reply = topic.replace("/request/", "/response/")
                    client.publish(reply, json.dumps(SESSION_LIMITS), qos=1)
                    self.rpc_answers += 1
                return
            values = list(values_of(topic, document))
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:
            self.undecodable += 1
            self.undecodable_sample = f"{topic}: {error!r}: {message.payload[:300]!r}"
            return
        with self.lock:
            self.messages += 1
            for device, tag, value in values:
                self.add(device, tag, value)

    def delivered(self, first_tick: int, last_tick: int) -> int:
        with self.lock:
            return super().delivered(first_tick, last_tick)

    def latest_tick(self) -> int:
        with self.lock:
            return super().latest_tick()
