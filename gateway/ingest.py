"""Subscribe, validate, store, account. Never crashes on input and never blocks the stream on one message.

aiomqtt acknowledges a QoS 1 message before the application has stored it (shared/notes/environment.md),
so PUBACK timing is not relied on: the ledger records (agent, seq) only after the store write, and
duplicates from redelivery or replay are dropped by that key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt

from aua_contract import AgentStatus, Batch, TopicKind
from aua_contract.topics import subscription
from gateway.config import GatewayConfig
from gateway.ledger import Ledger
from gateway.stores import Store, StoredReading, StoreError
from gateway.validation import Rejected, stored_readings, validate_message

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    messages: int = 0
    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    store_retries: int = 0


def _as_bytes(payload: object) -> bytes:
    """paho hands over bytes; anything else is kept as text so a dead letter still shows it."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


class Ingest:
    def __init__(
        self,
        config: GatewayConfig,
        store: Store,
        ledger: Ledger,
        *,
        on_batch: Callable[[Batch], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.ledger = ledger
        self.on_batch = on_batch
        self.stats = IngestStats()
        self.connected = asyncio.Event()

    def _client(self) -> aiomqtt.Client:
        mqtt = self.config.mqtt
        return aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            identifier=mqtt.client_id or f"aua-gateway-{self.config.gateway.id}",
            clean_session=False,
            keepalive=mqtt.keepalive,
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password else None,
        )

    async def run(self) -> None:
        """Consume until cancelled, reconnecting with backoff when the broker goes away."""
        backoff = 0.5
        while True:
            try:
                async with self._client() as client:
                    for kind in (TopicKind.READINGS, TopicKind.STATUS):
                        await client.subscribe(subscription(kind, self.config.mqtt.sites), qos=1)
                    log.info("subscribed at %s:%s", self.config.mqtt.host, self.config.mqtt.port)
                    self.connected.set()
                    backoff = 0.5
                    async for message in client.messages:
                        await self.handle(message.topic.value, _as_bytes(message.payload))
            except aiomqtt.MqttError as error:
                log.warning("MQTT: %s; reconnecting in %.1f s", error, backoff)
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def handle(self, topic: str, payload: bytes) -> None:
        """Process one message; every outcome is stored, counted or dead-lettered."""
        self.stats.messages += 1
        now = time.time_ns()
        result = validate_message(topic, payload)
        if isinstance(result, Rejected):
            self.stats.dead_letters += 1
            log.warning("dead letter from %s: %s", topic, result.reason)
            await asyncio.to_thread(self.ledger.dead_letter, topic, result.reason, payload, now)
            return
        if isinstance(result, AgentStatus):
            log.info("agent %s/%s is %s", result.site, result.agent, result.state)
            await asyncio.to_thread(self.ledger.agent_state, result.site, result.agent, result.state.value, now)
            return
        batch = result
        if await asyncio.to_thread(self.ledger.seen, batch.site, batch.agent, batch.seq):
            self.stats.duplicates += 1
            await asyncio.to_thread(self.ledger.count_duplicate, batch.site, batch.agent)
            return
        try:
            await self._write(stored_readings(batch))
        except StoreError as error:
            # The store refuses this data for good (e.g. a field type conflict): keep it, say why, go on.
            self.stats.dead_letters += 1
            log.error("store rejected batch %s/%s #%s: %s", batch.site, batch.agent, batch.seq, error)
            await asyncio.to_thread(self.ledger.dead_letter, topic, f"store rejected: {error}", payload, now)
            return
        await asyncio.to_thread(self.ledger.record, batch.site, batch.agent, batch.seq, len(batch.readings), now)
        self.stats.batches += 1
        self.stats.readings += len(batch.readings)
        if self.on_batch is not None:
            self.on_batch(batch)

    async def _write(self, readings: list[StoredReading]) -> None:
        """Write, retrying transient store failures; the message is not lost while the store is down."""
        backoff = 0.5
        while True:
            try:
                await self.store.write(readings)
                return
            except StoreError as error:
                if not error.retryable:
                    raise
                self.stats.store_retries += 1
                log.warning("store write failed (%s); retrying in %.1f s", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
