"""The agent's schedule: poll every instrument each interval, seal one batch per cycle into the outbox."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from aua_contract import Batch, Reading, encode_batch
from edge_agent.config import LoadedConfig
from edge_agent.instrument_reader import ModbusReader
from edge_agent.outbox import Outbox, OutboxStats
from edge_agent.publisher import Publisher

log = logging.getLogger(__name__)


def next_tick(now: float, interval: float) -> float:
    """The next wall-clock multiple of the interval, so polls stay on a fixed grid and never drift."""
    return (now // interval + 1) * interval


class Agent:
    """Ties readers, outbox and publisher together for one site config."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.config = loaded.config
        self.readers = [ModbusReader(instrument) for instrument in loaded.instruments]
        self.outbox = Outbox(self.config.agent.outbox)
        self.publisher = Publisher(self.config.mqtt, self.config.agent.site, self.config.agent.id, self.outbox)
        self.cycles = 0
        self._final_stats: OutboxStats | None = None

    def outbox_stats(self) -> OutboxStats:
        """Outbox counters, also after `run` has ended and closed the outbox."""
        return self._final_stats or self.outbox.stats()

    def seal(self, readings: list[Reading]) -> list[int]:
        """Store readings as numbered batches (at most batch_max_readings each); returns their sequence numbers."""
        size = self.config.agent.batch_max_readings
        sequences = []
        for start in range(0, len(readings), size):
            chunk = readings[start : start + size]
            sent_at = datetime.now(UTC)

            def payload(seq: int, chunk: list[Reading] = chunk, sent_at: datetime = sent_at) -> bytes:
                batch = Batch(
                    site=self.config.agent.site, agent=self.config.agent.id, seq=seq, sent_at=sent_at, readings=chunk
                )
                return encode_batch(batch)

            sequences.append(self.outbox.append(payload, time.time_ns()))
        return sequences

    async def poll_once(self) -> list[Reading]:
        results = await asyncio.gather(*(reader.poll() for reader in self.readers), return_exceptions=True)
        readings: list[Reading] = []
        for reader, result in zip(self.readers, results, strict=True):
            if isinstance(result, BaseException):
                log.error("%s: poll failed: %r", reader.instrument.id, result)
                continue
            readings.extend(result)
        return readings

    async def poll_forever(self) -> None:
        interval = self.config.agent.poll_interval
        while True:
            await asyncio.sleep(max(0.0, next_tick(time.time(), interval) - time.time()))
            readings = await self.poll_once()
            if readings:
                await asyncio.to_thread(self.seal, readings)
                self.publisher.wake.set()
            self.cycles += 1

    async def run(self) -> None:
        """Poll and publish until cancelled; on cancel close the clients and the outbox."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.poll_forever())
                group.create_task(self.publisher.run())
        finally:
            for reader in self.readers:
                reader.close()
            try:
                await asyncio.wait_for(self.publisher.goodbye(), timeout=3)
            except TimeoutError:
                log.info("broker did not answer; the last will reports the agent offline")
            self._final_stats = self.outbox.stats()
            self.outbox.close()
