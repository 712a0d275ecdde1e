"""The MQTT side of the agent: one persistent QoS 1 session that drains the outbox in sequence order.

A batch is marked acknowledged only after the broker's PUBACK; until then it stays pending and is sent
again after a reconnect (the gateway drops the duplicate by (agent, seq)). A retained birth message says
the agent is online; the broker publishes the retained last will when the agent disappears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from datetime import UTC, datetime

import aiomqtt

from aua_contract import (
    AgentState,
    AgentStatus,
    ContractError,
    decode_resend,
    encode_status,
    readings_topic,
    resend_topic,
    status_topic,
)
from edge_agent.config import MqttSection
from edge_agent.outbox import Outbox, OutboxStats
from edge_agent.resend import Outcome, ResendLimits, ResendQueue, TokenBucket

log = logging.getLogger(__name__)

__version__ = "0.1.0"

RESEND_PAGE = 20
"""Batches read from the outbox at a time when answering a resend request (at most ~2.5 MB in memory)."""

DRAIN_PAGE = 200
"""Pending batches read from the outbox at a time."""

ACK_GROUP = 20
"""Most PUBACKed batches marked acknowledged in one outbox transaction."""


def status_payload(site: str, agent: str, state: AgentState, outbox: OutboxStats | None = None) -> bytes:
    """Birth, will and periodic status; with the outbox counters the gateway needs to see what it is owed."""
    return encode_status(
        AgentStatus(
            site=site,
            agent=agent,
            state=state,
            at=datetime.now(UTC),
            version=__version__,
            next_seq=outbox.next_seq if outbox else None,
            oldest_seq=outbox.oldest_seq if outbox else None,
            dropped=outbox.dropped if outbox else None,
        )
    )


class Publisher:
    """Keeps an MQTT session up and publishes pending outbox batches in order."""

    def __init__(
        self,
        mqtt: MqttSection,
        site: str,
        agent: str,
        outbox: Outbox,
        *,
        status_interval_s: float = 10.0,
        resend: ResendLimits | None = None,
    ) -> None:
        self.mqtt = mqtt
        self.site = site
        self.agent = agent
        self.outbox = outbox
        self.wake = asyncio.Event()
        self.connected = False
        self.published = 0
        self.resent = 0
        limits = resend or ResendLimits()
        self.resend_queue = ResendQueue(limits.max_per_request, limits.max_queued)
        self.resend_bucket = TokenBucket.full(limits.rate, limits.burst, time.monotonic())
        self.resend_requests: Counter[Outcome] = Counter()
        self._resend_wake = asyncio.Event()
        self.status_interval_s = status_interval_s
        self._resend_topic = resend_topic(site, agent)
        self._topic = readings_topic(site, agent)
        self._status_topic = status_topic(site, agent)
        if mqtt.insecure:
            log.warning("mqtt.insecure = true: the broker's certificate is not verified; use it for tests only")

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(
            self._status_topic, status_payload(self.site, self.agent, AgentState.OFFLINE), qos=1, retain=True
        )
        return aiomqtt.Client(
            **self.mqtt.client_options(self.mqtt.client_id or f"aua-agent-{self.site}-{self.agent}"),
            clean_session=False,
            will=will,
        )

    async def run(self) -> None:
        """Connect, publish, and on any broker problem reconnect with backoff; runs until cancelled."""
        backoff = 0.5
        while True:
            try:
                async with self._client() as client:
                    self.connected = True
                    backoff = 0.5
                    log.info("connected to MQTT broker %s:%s", self.mqtt.host, self.mqtt.port)
                    await client.subscribe(self._resend_topic, qos=1)
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._report_status_forever(client))
                        group.create_task(self._drain_forever(client))
                        group.create_task(self._serve_resends(client))
                        group.create_task(self._resend_forever(client))
            except* aiomqtt.MqttError as errors:
                error = errors.exceptions[0]
                if self.connected:
                    log.warning("MQTT connection lost: %s", error)
                else:
                    log.warning("MQTT broker %s:%s unreachable: %s", self.mqtt.host, self.mqtt.port, error)
            self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _report_status_forever(self, client: aiomqtt.Client) -> None:
        """Retained status with the outbox counters, at connect and then every status interval."""
        while True:
            stats = await asyncio.to_thread(self.outbox.stats)
            payload = status_payload(self.site, self.agent, AgentState.ONLINE, stats)
            await client.publish(self._status_topic, payload, qos=1, retain=True)
            await asyncio.sleep(self.status_interval_s)

    async def _serve_resends(self, client: aiomqtt.Client) -> None:
        """Take the gateway's resend requests into the bounded queue; `_resend_forever` answers them."""
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            outcome = await self._take_request(message.topic.value, payload)
            self.resend_requests[outcome] += 1

    async def _take_request(self, topic: str, payload: bytes) -> Outcome:
        try:
            request = decode_resend(payload)
        except ContractError as error:
            self._log_rarely(Outcome.MALFORMED, "ignoring a malformed resend request on %s: %s", topic, error)
            return Outcome.MALFORMED
        if (request.site, request.agent) != (self.site, self.agent):
            self._log_rarely(
                Outcome.FOREIGN, "ignoring a resend request for %s/%s on my topic", request.site, request.agent
            )
            return Outcome.FOREIGN
        stats = await asyncio.to_thread(self.outbox.stats)
        held = (stats.oldest_seq, stats.next_seq - 1) if stats.stored else None
        outcome, added = self.resend_queue.offer(request.first, request.last, held)
        if added:
            self._resend_wake.set()
        if outcome in (Outcome.ACCEPTED, Outcome.LIMITED):
            log.info(
                "%s asked for batches %s..%s: %d queued to resend%s",
                request.requested_by,
                request.first,
                request.last,
                added,
                f" (at most {self.resend_queue.max_per_request} per request)" if outcome is Outcome.LIMITED else "",
            )
        elif outcome is Outcome.REFUSED:
            self._log_rarely(
                outcome,
                "refusing a resend request for %s..%s from %s: %d batches already wait (resend_max_queued)",
                request.first,
                request.last,
                request.requested_by,
                self.resend_queue.queued,
            )
        return outcome

    def _log_rarely(self, outcome: Outcome, message: str, *args: object) -> None:
        """A flood of bad requests is one log line per hundred, not one each (the metrics count them all)."""
        if self.resend_requests[outcome] % 100 == 0:
            log.warning(message, *args)

    async def _resend_forever(self, client: aiomqtt.Client) -> None:
        """Republish the queued ranges a page at a time, as fast as the token bucket allows."""
        while True:
            if not self.resend_queue.queued:
                self._resend_wake.clear()
                await self._resend_wake.wait()
                continue
            granted = self.resend_bucket.take(min(RESEND_PAGE, self.resend_queue.queued), time.monotonic())
            if not granted:
                await asyncio.sleep(self.resend_bucket.wait_s())
                continue
            page = self.resend_queue.take(granted)
            if page is None:
                continue
            batches = await asyncio.to_thread(self.outbox.get, page[0], page[1], granted)
            for _, batch in batches:
                await client.publish(self._topic, batch, qos=1)
            self.resent += len(batches)

    async def _drain_forever(self, client: aiomqtt.Client) -> None:
        while True:
            batches = await asyncio.to_thread(self.outbox.pending, DRAIN_PAGE)
            await self._publish(client, batches)
            if not batches:
                self.wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
                # arrives as its timeout fires, and the task then never stops.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.wake.wait()

    async def _publish(self, client: aiomqtt.Client, batches: list[tuple[int, bytes]]) -> None:
        """Publish in order, each awaiting its PUBACK; mark what the broker took as acknowledged, a few at a time
        (one transaction each), also when the connection breaks halfway."""
        taken: list[int] = []
        try:
            for seq, payload in batches:
                await client.publish(self._topic, payload, qos=1)
                taken.append(seq)
                self.published += 1
                if len(taken) >= ACK_GROUP:
                    await asyncio.to_thread(self.outbox.mark_acked_many, taken, time.time_ns())
                    taken = []
        finally:
            if taken:
                await asyncio.to_thread(self.outbox.mark_acked_many, taken, time.time_ns())

    async def goodbye(self) -> None:
        """On a clean shutdown: publish what is still pending, then say offline ourselves (the will is only
        for unclean exits). Whatever a deadline around this cuts off stays in the outbox for the next start."""
        try:
            async with self._client() as client:
                while batches := await asyncio.to_thread(self.outbox.pending, DRAIN_PAGE):
                    await self._publish(client, batches)
                stats = await asyncio.to_thread(self.outbox.stats)
                await client.publish(
                    self._status_topic,
                    status_payload(self.site, self.agent, AgentState.OFFLINE, stats),
                    qos=1,
                    retain=True,
                )
        except aiomqtt.MqttError as error:
            log.info("could not publish offline status: %s", error)
