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
from datetime import UTC, datetime

import aiomqtt

from aua_contract import AgentStatus, Batch, ResendRequest, TopicKind, encode_resend, resend_topic, subscription
from gateway.config import GatewayConfig
from gateway.gap_repair import RepairSchedule, chunks, owed
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
    resend_requests: int = 0


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
        self.schedule = RepairSchedule(grace_s=config.gateway.gap_grace_s, retry_s=config.gateway.gap_retry_s)

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
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._consume(client))
                        group.create_task(self._repair_forever(client))
            except* aiomqtt.MqttError as errors:
                log.warning("MQTT: %s; reconnecting in %.1f s", errors.exceptions[0], backoff)
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self.handle(message.topic.value, _as_bytes(message.payload))

    async def _repair_forever(self, client: aiomqtt.Client) -> None:
        """Ask agents again for the batches they owe (see gap_repair); runs while connected."""
        while True:
            await asyncio.sleep(self.config.gateway.gap_check_s)
            for request in await asyncio.to_thread(self.resend_requests_due, time.monotonic()):
                log.info(
                    "asking %s/%s to resend batches %s..%s", request.site, request.agent, request.first, request.last
                )
                await client.publish(resend_topic(request.site, request.agent), encode_resend(request), qos=1)
                await asyncio.to_thread(self.ledger.count_resend_request, request.site, request.agent)
                self.stats.resend_requests += 1

    def resend_requests_due(self, now: float) -> list[ResendRequest]:
        """The resend requests to publish now, from the ledger and the agents' last status."""
        cursors = self.ledger.agent_cursors()
        accounts = {(a.site, a.agent): a for a in self.ledger.accounts()}
        requests = []
        for site, agent in sorted(set(accounts) | set(cursors)):
            account = accounts.get((site, agent))
            next_seq, oldest_seq, _ = cursors.get((site, agent), (None, None, None))
            what = owed(
                self.ledger.holes(site, agent) if account else [],
                account.first_seq if account else None,
                account.last_seq if account else None,
                next_seq,
                oldest_seq,
            )
            for seq_range in self.schedule.due(site, agent, what.requestable, now):
                for first, last in chunks(seq_range):
                    requests.append(
                        ResendRequest(
                            site=site,
                            agent=agent,
                            first=first,
                            last=last,
                            requested_by=self.config.gateway.id,
                            at=datetime.now(UTC),
                        )
                    )
        return requests

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
            await asyncio.to_thread(self.ledger.agent_state, result, now)
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
