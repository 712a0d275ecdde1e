"""The agent's schedule: poll every instrument each interval, seal one batch per cycle into the outbox.

Around it: the publisher drains the outbox, a timer prunes it (retention) and reports overflow, a check
warns when the wall clock jumps, and an optional Prometheus endpoint shows per-device counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from edge_agent.bus import SilencePolicy
from edge_agent.config import LoadedConfig
from edge_agent.instrument_reader import ModbusReader
from edge_agent.modbus_drivers import build_drivers
from edge_agent.outbox import Outbox, OutboxStats
from edge_agent.publisher import Publisher
from edge_agent.sealing import ReadingLike, Sample, batch_payload

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0
"""How long a clean stop may spend publishing what is still pending before it gives up (systemd waits 90 s)."""


PRUNE_PAUSE_S = 0.005
"""Pause between two pruning transactions: the lock is free for an append in between."""


def next_tick(now: float, interval: float) -> float:
    """The next wall-clock multiple of the interval, so polls stay on a fixed grid and never drift."""
    return (now // interval + 1) * interval


def clock_jump(before: tuple[float, float], after: tuple[float, float], tolerance: float) -> float | None:
    """How far the wall clock jumped between two (wall, monotonic) readings, if more than `tolerance`. Pure.

    The monotonic clock only ever runs forward at the real rate; a wall clock that moved differently was set
    (NTP step, an operator, a gateway without RTC battery getting its time late).
    """
    jump = (after[0] - before[0]) - (after[1] - before[1])
    return jump if abs(jump) > tolerance else None


class Agent:
    """Ties readers, outbox and publisher together for one site config."""

    def __init__(self, loaded: LoadedConfig, *, policy: SilencePolicy | None = None) -> None:
        self.config = loaded.config
        agent = self.config.agent
        self.drivers = build_drivers(loaded.instruments, policy=policy)
        self.readers = [ModbusReader(i, self.drivers.by_instrument[i.id]) for i in loaded.instruments]
        self.outbox = Outbox(
            agent.outbox,
            max_batches=agent.outbox_max_batches,
            max_bytes=agent.outbox_max_bytes,
            retention_s=agent.outbox_retention_s,
        )
        self.publisher = Publisher(
            self.config.mqtt,
            agent.site,
            agent.id,
            self.outbox,
            status_interval_s=agent.status_interval_s,
            resend=agent.resend_limits,
        )
        self.cycles = 0
        self.overruns = 0
        self.clock_jumps = 0
        self.last_cycle_s = 0.0
        self.pruned = 0
        self._dropped_seen = self.outbox.stats().dropped
        self._final_stats: OutboxStats | None = None

    def outbox_stats(self) -> OutboxStats:
        """Outbox counters, also after `run` has ended and closed the outbox."""
        return self._final_stats or self.outbox.stats()

    def seal(self, readings: Sequence[ReadingLike]) -> list[int]:
        """Store readings as numbered batches (at most batch_max_readings each), all in one outbox transaction;
        returns their sequence numbers."""
        size = self.config.agent.batch_max_readings
        site, agent = self.config.agent.site, self.config.agent.id
        sent_at = datetime.now(UTC)
        makers = []
        for start in range(0, len(readings), size):
            chunk = readings[start : start + size]

            def payload(seq: int, chunk: Sequence[ReadingLike] = chunk) -> bytes:
                return batch_payload(site, agent, seq, sent_at, chunk)

            makers.append(payload)
        return self.outbox.append_many(makers, time.time_ns())

    async def poll_once(self) -> list[Sample]:
        results = await asyncio.gather(*(reader.poll() for reader in self.readers), return_exceptions=True)
        readings: list[Sample] = []
        for reader, result in zip(self.readers, results, strict=True):
            if isinstance(result, BaseException):
                log.error("%s: poll failed: %r", reader.instrument.id, result)
                continue
            readings.extend(result)
        return readings

    def _check_clock(self, before: tuple[float, float] | None, now: tuple[float, float]) -> None:
        if before is None:
            return
        jump = clock_jump(before, now, self.config.agent.clock_jump_s)
        if jump is not None:
            self.clock_jumps += 1
            log.warning(
                "the system clock jumped %+.1f s between two polls; readings are stamped with the new time"
                " (check NTP/chrony; a backward jump repeats timestamps the store already has)",
                jump,
            )

    async def poll_forever(self) -> None:
        interval = self.config.agent.poll_interval
        before: tuple[float, float] | None = None
        while True:
            await asyncio.sleep(max(0.0, next_tick(time.time(), interval) - time.time()))
            now = (time.time(), time.monotonic())
            self._check_clock(before, now)
            before = now
            readings = await self.poll_once()
            if readings:
                await asyncio.to_thread(self.seal, readings)
                self.publisher.wake.set()
            self.cycles += 1
            self.last_cycle_s = time.monotonic() - now[1]
            if self.last_cycle_s > interval:
                self.overruns += 1
                if self.overruns == 1 or self.overruns % 100 == 0:
                    log.warning(
                        "a poll cycle took %.2f s, longer than poll_interval %.2f s (%d times so far): the next"
                        " tick is skipped; lower timeouts, fewer requests (max_gap) or a longer interval help",
                        self.last_cycle_s,
                        interval,
                        self.overruns,
                    )

    def prune_once(self) -> None:
        """Forget acknowledged batches past retention; report unsent batches a full outbox had to drop.

        In small transactions with a pause between them, so a poll's append never waits behind a large delete."""
        self.pruned += self.outbox.prune(time.time_ns(), pause_s=PRUNE_PAUSE_S)
        dropped = self.outbox.stats().dropped
        if dropped > self._dropped_seen:
            log.error(
                "outbox full (outbox_max_batches %d) or at outbox_max_bytes %d: %d unsent batches dropped since"
                " the last check, %d in all; the gateway sees them as lost (status topic 'dropped')",
                self.outbox.max_batches,
                self.outbox.max_bytes,
                dropped - self._dropped_seen,
                dropped,
            )
            self._dropped_seen = dropped

    async def prune_forever(self) -> None:
        while True:
            await asyncio.to_thread(self.prune_once)
            await asyncio.sleep(self.config.agent.outbox_prune_interval_s)

    async def run(self) -> None:
        """Poll and publish until cancelled; on cancel close the clients and the outbox."""
        metrics = None
        if self.config.agent.metrics_port is not None:
            from edge_agent.metrics import MetricsServer  # noqa: PLC0415 - prometheus only when asked for

            metrics = MetricsServer(self, self.config.agent.metrics_host, self.config.agent.metrics_port)
            await metrics.start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.poll_forever())
                group.create_task(self.publisher.run())
                group.create_task(self.prune_forever())
        finally:
            await self.drivers.close()
            # Not wait_for: it waits for the cancelled flush to unwind, and an MQTT client that is still
            # connecting may not; a stop must stay bounded.
            goodbye = asyncio.create_task(self.publisher.goodbye())
            done, _ = await asyncio.wait({goodbye}, timeout=SHUTDOWN_FLUSH_S)
            if not done:
                goodbye.cancel()
                log.info("shutdown flush cut off: the rest waits in the outbox, the last will says offline")
            self._final_stats = self.outbox.stats()
            if metrics is not None:
                await metrics.close()
            self.outbox.close()
