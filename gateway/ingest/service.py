"""Subscribe, validate, store, account. Never crashes on input and never blocks the stream on one message.

A QoS 1 message is acknowledged (PUBACK) only once what it carries is durable: its batch stored or
spooled, or its dead letter or status recorded. paho acknowledges on arrival by default and aiomqtt's
incoming queue is unbounded, so the gateway turns on paho's manual acknowledgement: the broker's
per-client inflight window (mosquitto `max_inflight_messages`) then bounds what the gateway holds, and
what a crashed gateway held is redelivered to the restarted one. The ledger still records (agent, seq)
only after the store write and drops duplicates from redelivery or replay by that key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiomqtt

from aua_contract import (
    AgentStatus,
    Batch,
    Reading,
    ResendRequest,
    TopicKind,
    decode_batch,
    encode_batch,
    encode_resend,
    resend_topic,
    subscription,
)
from gateway.alerts.engine import AlertEngine
from gateway.config import GatewayConfig
from gateway.http_api import HttpApi
from gateway.ingest.agent_presence import PresenceLog
from gateway.ingest.gap_repair import RepairSchedule, receipt_floor
from gateway.ingest.ledger import Arrival, Ledger, Recorded
from gateway.ingest.quality_checks import BatchScreen
from gateway.ingest.spool import Spool
from gateway.ingest.validation import Rejected, validate_message
from gateway.metrics import GatewayMetrics, Health
from gateway.mrv.rollup_engine import RollupEngine
from gateway.mrv.stored_batches import AwaitingReceipts, mark_stored_forever
from gateway.roles import plan
from gateway.stores import BatchReceipt, Store, StoreError
from gateway.supervisor import Supervisor
from gateway.time_ns import from_ns, to_ns

log = logging.getLogger(__name__)


RECENT_KEYS = 100_000
RECEIPT_FLOORS = 100_000
"""Agents whose last receipt prune is remembered (past that the memory is cleared and rebuilt)."""
REUSE_REPORTS = 10_000
"""Agents whose reused sequence numbers are logged (once each); past that they are only counted."""


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted numbers -> (first, last) of each consecutive run."""
    runs: list[tuple[int, int]] = []
    for seq in seqs:
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


class _Ack:
    """One received message's place in its connection's acknowledgement order."""

    __slots__ = ("done", "mid", "qos", "window")

    def __init__(self, window: AckWindow | None, mid: int, qos: int) -> None:
        self.window = window
        self.mid = mid
        self.qos = qos
        self.done = False

    def settle(self) -> None:
        """What the message carries is durable (or recorded as refused): it may be acknowledged."""
        if not self.done:
            self.done = True
            if self.window is not None:
                self.window.flush()


NO_ACK = _Ack(None, 0, 0)
"""For messages handed to `handle` directly (tests, tools): nothing to acknowledge."""


class AckWindow:
    """PUBACKs for one MQTT connection, sent in the order the messages arrived (MQTT 3.1.1 §4.6.0 and
    5.0 §4.6: a receiver sends PUBACKs in the order of the PUBLISHes), each once its message is settled.

    A message held back (its batch waiting for the store) holds back the acknowledgements after it, so
    the broker's inflight window fills and it stops sending: that is the flow control. After a
    reconnect the old window is closed and its messages come again (same session, not acknowledged).
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho = client._client  # aiomqtt 2.5 exposes no acknowledgement; its paho client has ack()
        self._order: deque[_Ack] = deque()
        self.closed = False
        self.sent = 0

    def arrived(self, mid: int, qos: int) -> _Ack:
        if qos == 0:
            return NO_ACK  # nothing to acknowledge
        ack = _Ack(self, mid, qos)
        self._order.append(ack)
        return ack

    def flush(self) -> None:
        order = self._order
        while order and order[0].done:
            ack = order.popleft()
            if not self.closed:
                self._paho.ack(ack.mid, ack.qos)
                self.sent += 1

    @property
    def waiting(self) -> int:
        """Messages received on this connection and not yet acknowledged."""
        return len(self._order)


def manual_ack(client: aiomqtt.Client) -> AckWindow:
    """Switch `client` (before connecting) to acknowledging only what the gateway settles."""
    client._client.manual_ack_set(True)
    return AckWindow(client)


@dataclass(frozen=True)
class _Pending:
    batch: Batch
    topic: str
    received_ns: int
    acks: list[_Ack]


@dataclass
class IngestStats:
    messages: int = 0
    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    reused: int = 0
    dead_letters: int = 0
    store_retries: int = 0
    resend_requests: int = 0
    resend_not_asked: int = 0
    """Owed batches the last gap check left for later ([ledger] resend bounds): a gauge."""
    refused_batches: int = 0
    agents_refused: int = 0
    """Messages of new agent ids refused beyond [ledger] max_agents (dead letters)."""
    observed: int = 0
    """Batches seen and not stored here (an instance without the ingest role, gateway/roles.py)."""


def _arrival(pending: _Pending) -> Arrival:
    batch = pending.batch
    return Arrival(batch.site, batch.agent, batch.seq, len(batch.readings), pending.received_ns, to_ns(batch.sent_at))


def _weight(pending: _Pending) -> int:
    """What a queued batch counts against write_queue_readings (an empty batch still counts one)."""
    return max(1, len(pending.batch.readings))


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
        spool: Spool | None = None,
        alerts: AlertEngine | None = None,
        rollups: RollupEngine | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.ledger = ledger
        self.on_batch = on_batch
        self.alerts = alerts
        self.rollups = rollups
        self.stats = IngestStats()
        self.http_port: int | None = None
        self.connected = asyncio.Event()
        self.roles = plan(config.gateway.roles, shared_group=config.mqtt.shared_group)
        self.awaiting = AwaitingReceipts() if self.roles.rolls_up_from_receipts and rollups is not None else None
        """mrv without ingest: batches seen, rolled up once a receipt shows them stored
        (gateway/mrv/stored_batches.py)"""
        self.metrics = GatewayMetrics()
        self.screen = BatchScreen(config.registry)
        self._agents = frozenset(config.registry.agents)
        self.presence = PresenceLog()
        self._owns_spool = spool is None
        self.spool = spool or Spool(
            config.gateway.spool_path,
            max_bytes=config.gateway.spool_max_bytes,
            max_batches=config.gateway.spool_max_batches,
        )
        self.drain_wake = asyncio.Event()
        self._spool_room = asyncio.Event()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._queued_readings = 0
        self._room = asyncio.Event()
        self._room.set()
        self._recent: OrderedDict[tuple[str, str, int], datetime] = OrderedDict()
        self._in_queue: dict[tuple[str, str, int], _Pending] = {}
        self.acks: AckWindow | None = None
        self.supervisor = supervisor or Supervisor(stall_s=config.gateway.stall_s)
        self._reuse_reported: set[tuple[str, str]] = set()
        self._receipt_floors: dict[tuple[str, str], int] = {}
        # Agents the ledger follows (at most [ledger] max_agents when the registry lists none).
        self._known_agents = {(a.site, a.agent) for a in ledger.accounts()} | set(ledger.agent_cursors())
        self.schedule = RepairSchedule(
            grace_s=config.gateway.gap_grace_s,
            retry_s=config.gateway.gap_retry_s,
            max_agents=config.ledger.repair_max_agents,
        )
        self.metrics.attach(self)

    def health(self) -> Health:
        return Health(
            broker_connected=self.connected.is_set(),
            spool_depth=self.spool.depth,
            tasks=self.supervisor.liveness(),
            spool_bytes=self.spool.size,
            spool_full=self.spool.full,
            spool_full_count=self.spool.full_count,
            spool_full_seconds=self.spool.full_seconds,
        )

    def _client(self) -> aiomqtt.Client:
        mqtt = self.config.mqtt
        return aiomqtt.Client(
            **mqtt.client_options(mqtt.client_id or f"aua-gateway-{self.config.gateway.id}"), clean_session=False
        )

    async def run(self) -> None:
        """Consume and drain the spool (and serve /health, /metrics when configured) until cancelled.

        Runs its tasks, and any the caller started on the same supervisor, until one fails: then every
        task is stopped and `TaskFailed` says which one failed and why.
        """
        api = HttpApi(self.health, self.metrics.exposition)
        self.metrics.attach_http(api)
        supervisor = self.supervisor
        try:
            if self.config.gateway.http is not None:
                host, _, port = self.config.gateway.http.rpartition(":")
                self.http_port = await api.start(host, int(port))
                log.info("serving /health and /metrics on %s:%s", host, self.http_port)
            supervisor.start("consume", self.consume_forever())
            if self.roles.ingest:
                supervisor.start("write", self.write_forever())
                supervisor.start("drain-spool", self.drain_spool_forever())
            if self.alerts is not None:
                supervisor.start("alerts", self.alerts.run())
            if self.rollups is not None:
                supervisor.start("rollups", self.rollups.run())
            if self.awaiting is not None and self.rollups is not None:
                mark = self.rollups.mark_minutes
                every_s = self.config.gateway.gap_check_s
                supervisor.start(
                    "stored-batches", mark_stored_forever(self.awaiting, self.store, mark, every_s=every_s)
                )
            await supervisor.run()
        finally:
            await supervisor.stop()
            await api.stop()
            if self._owns_spool:
                self.spool.close()

    async def consume_forever(self) -> None:
        """Consume until cancelled, reconnecting with backoff when the broker goes away."""
        backoff = 0.5
        while True:
            client = self._client()
            acks = manual_ack(client)
            try:
                async with client:
                    for kind in (TopicKind.READINGS, TopicKind.STATUS):
                        topic = subscription(kind, self.config.mqtt.sites)
                        if kind is TopicKind.READINGS and self.config.mqtt.shared_group is not None:
                            topic = f"$share/{self.config.mqtt.shared_group}/{topic}"  # split among instances
                        await client.subscribe(topic, qos=1)
                    log.info("subscribed at %s:%s", self.config.mqtt.host, self.config.mqtt.port)
                    self.connected.set()
                    self.acks = acks
                    backoff = 0.5
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._consume(client, acks))
                        if self.roles.ingest:  # an instance that stores nothing owes nobody a gap check
                            group.create_task(self._repair_forever(client))
            except* aiomqtt.MqttError as errors:
                if self.supervisor.stopping:  # (not Task.cancelling(): a 3.11 TaskGroup leaves it raised)
                    raise  # a disconnect error while stopping must not turn the stop into a reconnect
                log.warning("MQTT: %s; reconnecting in %.1f s", errors.exceptions[0], backoff)
            finally:
                acks.closed = True  # its messages come again on the next connection (persistent session)
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _consume(self, client: aiomqtt.Client, acks: AckWindow) -> None:
        async for message in client.messages:
            ack = acks.arrived(message.mid, message.qos)
            await self.handle(message.topic.value, _as_bytes(message.payload), ack)
            # Let the loop read the socket and send the acknowledgements the writer settled (which lets the
            # broker send more), and run the writer between messages, not only once the queue is empty.
            await asyncio.sleep(0)

    async def _repair_forever(self, client: aiomqtt.Client) -> None:
        """Ask agents again for the batches they owe (see gap_repair); runs while connected."""
        while True:
            await asyncio.sleep(self.config.gateway.gap_check_s)
            due = await asyncio.to_thread(self.resend_requests_due, time.monotonic())
            try:
                due = await self._not_stored_elsewhere(due)
            except StoreError as error:  # shared subscription, store down: ask after the next check
                log.warning("gap repair: cannot read the other gateways' batch receipts (%s); trying later", error)
                continue
            for request in due:
                log.info(
                    "asking %s/%s to resend batches %s..%s", request.site, request.agent, request.first, request.last
                )
                await client.publish(resend_topic(request.site, request.agent), encode_resend(request), qos=1)
                await asyncio.to_thread(
                    self.ledger.count_resend_request, request.site, request.agent, request.first, request.last
                )
                self.stats.resend_requests += 1
            if self.roles.writes_receipts:  # (shared, or an mrv instance elsewhere reads them)
                try:
                    await self.prune_receipts()
                except StoreError as error:
                    log.warning("batch receipts not pruned (%s); trying after the next check", error)

    async def prune_receipts(self) -> int:
        """Drop the batch receipts no gateway will look for again (see gap_repair.receipt_floor), per agent once
        its floor has moved by a tenth of [ledger] receipt_batches; counted in the ledger. Returns how many."""
        keep = self.config.ledger.receipt_batches
        accounts = await asyncio.to_thread(self.ledger.accounts)
        cursors = await asyncio.to_thread(self.ledger.agent_cursors)
        if len(self._receipt_floors) > RECEIPT_FLOORS:
            self._receipt_floors.clear()
        dropped = 0
        for account in accounts:
            key = (account.site, account.agent)
            floor = receipt_floor(account.last_seq, cursors.get(key, (None, None, None))[1], keep)
            done = self._receipt_floors.get(key)
            if done is not None and floor - done < max(1, keep // 10):
                continue
            pruned = await self.store.prune_receipts(account.site, account.agent, floor)
            self._receipt_floors[key] = floor
            if pruned:
                dropped += pruned
                await asyncio.to_thread(self.ledger.count, "receipts_pruned", pruned)
        return dropped

    async def _not_stored_elsewhere(self, requests: list[ResendRequest]) -> list[ResendRequest]:
        """With a shared subscription, other instances stored part of each agent's sequence: take what their
        receipts in the store show into this ledger, and ask only for what no instance has."""
        if self.config.mqtt.shared_group is None:
            return requests
        remaining = []
        for request in requests:
            found = await self.store.received_batches(request.site, request.agent, request.first, request.last)
            if found:
                received = time.time_ns()
                batches = [(request.site, request.agent, seq, n, received) for seq, n in sorted(found.items())]
                await asyncio.to_thread(self.ledger.record_many, batches, classify=False)
            missing = [seq for seq in range(request.first, request.last + 1) if seq not in found]
            for first, last in _runs(missing):
                remaining.append(request.model_copy(update={"first": first, "last": last}))
        return remaining

    def resend_requests_due(self, now: float) -> list[ResendRequest]:
        """The resend requests to publish now, from the ledger and the agents' last status."""
        # An offline agent cannot answer; requests would only pile up in its session. It is asked again
        # once its birth message says it is back.
        offline = self.ledger.offline_agents()
        bounds = self.config.ledger
        requests = []
        not_asked = 0
        for (site, agent), what in self.ledger.owed(max_ranges=bounds.gap_max_ranges).items():
            if (site, agent) in offline:
                continue
            plan = self.schedule.plan(
                site,
                agent,
                what.requestable,
                now,
                max_requests=bounds.resend_max_requests,
                max_batches=bounds.resend_max_batches,
            )
            not_asked += plan.not_asked
            for first, last in plan.requests:
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
        self.stats.resend_not_asked = not_asked
        return requests

    async def handle(self, topic: str, payload: bytes, ack: _Ack = NO_ACK) -> None:
        """Process one message; every outcome is stored, counted or dead-lettered, and `ack` settled once
        that outcome is durable."""
        self.stats.messages += 1
        now = time.time_ns()
        registry = self.config.registry
        result = validate_message(topic, payload, max_bytes=registry.max_payload_bytes, agents=self._agents)
        if isinstance(result, Rejected):
            self.stats.dead_letters += 1
            log.warning("dead letter from %s: %s", topic, result.reason)
            await asyncio.to_thread(self.ledger.dead_letter, topic, result.reason, payload, now)
            ack.settle()
            return
        if not self._admit(result.site, result.agent):
            reason = (
                f"agent {result.site}/{result.agent} is new and the gateway already follows [ledger] max_agents "
                f"({self.config.ledger.max_agents}) agents: list the fleet in [registry] agents or raise the bound"
            )
            self.stats.dead_letters += 1
            self.stats.agents_refused += 1
            log.warning("dead letter from %s: %s", topic, reason)
            await asyncio.to_thread(self.ledger.dead_letter, topic, reason, payload, now)
            ack.settle()
            return
        if isinstance(result, AgentStatus):
            self.presence.note(result)
            await asyncio.to_thread(self.ledger.agent_state, result, now)
            ack.settle()
            if self.alerts is not None:
                await self.alerts.on_status(result, from_ns(now))
            return
        batch = result
        key = (batch.site, batch.agent, batch.seq)
        if self._recent.get(key) == batch.sent_at:  # the same batch again (another sealing time is not: REUSED)
            self.stats.duplicates += 1
            await asyncio.to_thread(self.ledger.count_duplicate, batch.site, batch.agent)
            waiting = self._in_queue.get(key)
            if waiting is not None:
                waiting.acks.append(ack)  # redelivered while its first copy waits: acknowledged with it
            else:
                ack.settle()
            return
        self._remember(key, batch.sent_at)
        screened = self.screen.screen(batch, datetime.now(UTC))
        if not self.roles.ingest:
            await self._observe(batch.model_copy(update={"readings": screened.keep}), now)
            ack.settle()
            return
        if screened.refused:
            await self._refuse_readings(topic, batch, screened.refused, now)
        await self._enqueue(_Pending(batch.model_copy(update={"readings": screened.keep}), topic, now, [ack]))

    async def _observe(self, batch: Batch, received_ns: int) -> None:
        """Without the ingest role (gateway/roles.py): the batch is another instance's to store; evaluate alerts
        on it now, and hold it for the rollups until its receipt shows it stored."""
        self.stats.observed += 1
        if self.alerts is not None:
            await self.alerts.on_batch(batch, from_ns(received_ns))
        if self.awaiting is not None and self.rollups is not None:
            given_up = self.awaiting.add(batch)
            if given_up:
                log.warning(
                    "stored batches: %d batches waited too long for their receipt; rolled up anyway", len(given_up)
                )
                await self.rollups.mark_minutes(set().union(*given_up))

    def _admit(self, site: str, agent: str) -> bool:
        """Whether the gateway follows this agent: any the registry lists (it refused the others), else the ones
        it follows already and new ones up to [ledger] max_agents (ids a publisher invents cannot grow the
        ledger, gap repair and accounting without bound). A refused agent's batches stay in its outbox: once
        admitted, gap repair asks for what it still holds."""
        if self._agents or (site, agent) in self._known_agents:
            return True
        if len(self._known_agents) >= self.config.ledger.max_agents:
            return False
        self._known_agents.add((site, agent))
        return True

    async def _enqueue(self, pending: _Pending) -> None:
        """Queue a batch for the writer, first waiting while write_queue_readings are already waiting.

        The wait stops this consumer, so the broker holds what comes next (QoS 1 flow control); a batch is
        always taken once the queue is below the limit, so one batch larger than the limit still passes.
        """
        while self._queued_readings >= self.config.gateway.write_queue_readings:
            self._room.clear()
            await self._room.wait()
        self._queued_readings += _weight(pending)
        batch = pending.batch
        self._in_queue[batch.site, batch.agent, batch.seq] = pending
        self._queue.put_nowait(pending)

    @property
    def queued_readings(self) -> int:
        """Readings received and not yet written (a gauge)."""
        return self._queued_readings

    def _remember(self, key: tuple[str, str, int], sent_at: datetime) -> None:
        """Recent batch keys and sealing times, so a redelivery is dropped without a ledger lookup (bounded;
        the ledger decides)."""
        self._recent[key] = sent_at
        if len(self._recent) > RECENT_KEYS:
            self._recent.popitem(last=False)

    async def write_forever(self) -> None:
        """Group queued batches into one store write (up to write_max_readings or write_max_delay_s), then
        record them in the ledger: many small MQTT messages, few large store requests."""
        settings = self.config.gateway
        waiting: list[_Pending] = []
        while True:
            if waiting:  # the spool was full: nothing more is taken until they are durable
                await self._wait_for_spool_room(waiting[0])
                group, waiting = waiting, []
                await self._write_group(group)
                continue
            group = [await self._queue.get()]
            readings = len(group[0].batch.readings)
            deadline = time.monotonic() + settings.write_max_delay_s
            while readings < settings.write_max_readings:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a queue item or a
                        # cancellation that arrives as its timeout fires.
                        async with asyncio.timeout(remaining):
                            item = await self._queue.get()
                    except TimeoutError:
                        break
                group.append(item)
                readings += len(item.batch.readings)
            waiting = await self._write_group(group)

    async def _write_group(self, group: list[_Pending]) -> list[_Pending]:
        """Make a group durable, record it, settle it; returns the batches still waiting for spool room (they
        stay queued and unacknowledged)."""
        with self.supervisor.working("write"):
            durable, waiting = await self._store_or_spool(group)
            outcomes = await asyncio.to_thread(self.ledger.record_many, [_arrival(p) for p in durable])
        for pending, outcome in zip(durable, outcomes, strict=True):
            if outcome is Recorded.DUPLICATE:
                self.stats.duplicates += 1
                continue
            if outcome is Recorded.REUSED:
                self._report_reuse(pending.batch)
            else:
                self.stats.batches += 1
            self.stats.readings += len(pending.batch.readings)
            if self.on_batch is not None:
                self.on_batch(pending.batch)
            if self.alerts is not None:
                await self.alerts.on_batch(pending.batch, from_ns(pending.received_ns))
        held = {id(pending) for pending in waiting}
        for pending in group:
            if id(pending) in held:
                continue
            # Stored, spooled or (refused by the store) a dead letter: the broker may forget it now.
            for ack in pending.acks:
                ack.settle()
            batch = pending.batch
            if self._in_queue.get((batch.site, batch.agent, batch.seq)) is pending:
                del self._in_queue[batch.site, batch.agent, batch.seq]
            self._queued_readings -= _weight(pending)
            self._queue.task_done()
        self._room.set()
        return waiting

    async def _wait_for_spool_room(self, pending: _Pending) -> None:
        """Wait (not a stall: the store is down and the broker holds what follows) until the spool has room for
        this batch, or has drained (the store is back: it is written directly)."""
        size = len(encode_batch(pending.batch))
        while not self.spool.has_room(size):
            self._spool_room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._spool_room.wait()

    def _report_reuse(self, batch: Batch) -> None:
        """Its readings are stored like any others; say loudly (once per agent and run) why the ledger
        cannot account for it."""
        self.stats.reused += 1
        if (batch.site, batch.agent) in self._reuse_reported or len(self._reuse_reported) >= REUSE_REPORTS:
            return  # (beyond REUSE_REPORTS agents only counted: the set must not grow with invented names)
        self._reuse_reported.add((batch.site, batch.agent))
        log.error(
            "agent %s/%s sent batch %d sealed at %s, but a batch %d sealed at another time was stored before: "
            "its outbox was replaced (reinstall, new disk) and its sequence restarted, or another agent uses "
            "its id. Its readings are stored; its accounting and gap repair stay unreliable until it gets a "
            "new agent id (docs/gateway.md).",
            batch.site,
            batch.agent,
            batch.seq,
            batch.sent_at.isoformat(),
            batch.seq,
        )

    async def flushed(self) -> None:
        """Wait until everything received so far is durable and recorded."""
        await self._queue.join()

    async def _refuse_readings(self, topic: str, batch: Batch, refused: list[tuple[Reading, str]], now: int) -> None:
        """Readings the registry does not know become one dead letter; the rest of the batch goes on."""
        self.stats.dead_letters += 1
        reasons = sorted({reason for _, reason in refused})
        kept = batch.model_copy(update={"readings": [reading for reading, _ in refused]})
        log.warning("refused %d readings from %s: %s", len(refused), topic, "; ".join(reasons))
        await asyncio.to_thread(self.ledger.dead_letter, topic, "; ".join(reasons), encode_batch(kept), now)

    async def _store_or_spool(self, group: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """Make batches durable: in the store, or in the spool while the store is down (or still draining).

        Returns the ones made durable, and the ones (from the first that did not fit on) that wait for room in a
        full spool; a batch the store refuses for good (e.g. a field type conflict) becomes a dead letter.
        """
        if self.spool.depth == 0:
            batches = [p.batch for p in group]
            try:
                with self.metrics.write_seconds.time():
                    await self.store.write_batches(batches)
            except StoreError as error:
                if not error.retryable:
                    return await self._write_one_by_one(group)
                log.warning("store unavailable (%s): spooling to disk until it is back", error)
            else:
                await self._written(batches)
                return group, []
        return await self._spool_group(group)

    async def _spool_group(self, group: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """Spool in order until one does not fit: it and the rest wait (unacknowledged) for room."""
        self.drain_wake.set()
        for index, pending in enumerate(group):
            batch = pending.batch
            payload = encode_batch(batch)
            if not await asyncio.to_thread(self.spool.put, batch.site, batch.agent, batch.seq, pending.topic, payload):
                return group[:index], group[index:]
        return group, []

    async def _write_one_by_one(self, group: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """A group the store refused: store the batches it accepts, dead-letter the ones it refuses."""
        durable = []
        for index, pending in enumerate(group):
            try:
                await self.store.write_batches([pending.batch])
            except StoreError as error:
                if error.retryable:
                    spooled, waiting = await self._store_or_spool([pending])
                    durable += spooled
                    if waiting:
                        return durable, waiting + group[index + 1 :]
                else:
                    await self._store_rejected(pending.topic, pending.batch, error, pending.received_ns)
                continue
            await self._written([pending.batch])
            durable.append(pending)
        return durable, []

    async def _written(self, batches: list[Batch]) -> None:
        """The store has these batches now: their periods need new rollups, and with a shared subscription
        the other instances need to see the batches' receipts."""
        if self.rollups is not None:
            await self.rollups.note_batches(batches)
        if self.roles.writes_receipts:
            receipts = [BatchReceipt(b.site, b.agent, b.seq, len(b.readings)) for b in batches]
            await self.store.write_receipts(receipts)

    async def _store_rejected(self, topic: str, batch: Batch, error: StoreError, now: int) -> None:
        """A dead letter, and recorded as refused so gap repair does not ask for the batch again."""
        self.stats.dead_letters += 1
        self.stats.refused_batches += 1
        log.error("store rejected a batch from %s: %s", topic, error)
        await asyncio.to_thread(self.ledger.dead_letter, topic, f"store rejected: {error}", encode_batch(batch), now)
        await asyncio.to_thread(
            self.ledger.record_refused, batch.site, batch.agent, batch.seq, now, to_ns(batch.sent_at)
        )

    async def drain_spool_forever(self) -> None:
        """Move spooled batches into the store, oldest first, backing off while it is still down."""
        backoff = 0.5
        while True:
            if self.spool.depth == 0:
                self.drain_wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        await self.drain_wake.wait()
                continue
            rows = await asyncio.to_thread(self.spool.oldest, 100)
            batches = [decode_batch(payload) for _, _, payload in rows]
            try:
                await self.store.write_batches(batches)
            except StoreError as error:
                if error.retryable:
                    self.stats.store_retries += 1
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                await self._drain_one_by_one(rows)
            else:
                await self._written(batches)
                await asyncio.to_thread(self.spool.remove, [row_id for row_id, _, _ in rows])
                self._spool_room.set()
                backoff = 0.5
                if self.spool.depth == 0:
                    log.info("spool drained: the store has everything again")

    async def _drain_one_by_one(self, rows: list[tuple[int, str, bytes]]) -> None:
        """A group the store refused: find the batches it refuses for good and dead-letter only those."""
        for row_id, topic, payload in rows:
            batch = decode_batch(payload)
            try:
                await self.store.write_batches([batch])
            except StoreError as error:
                if error.retryable:
                    return
                await self._store_rejected(topic, batch, error, time.time_ns())
            else:
                await self._written([batch])
            await asyncio.to_thread(self.spool.remove, [row_id])
            self._spool_room.set()
