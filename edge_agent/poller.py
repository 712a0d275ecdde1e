"""The agent's schedule: poll every instrument each interval, seal one batch per cycle into the outbox.

What an instrument answered is staged in the outbox as soon as it is read (no fsync: it survives a killed
process), and the cycle's mark and staged readings are replaced by its sealed batches in one transaction. An
agent killed in the middle of a cycle seals what was staged at its next start and counts the cycle as cut
short (issue 16): what it had read is not lost, and what it could not have kept is counted, not silent.

Around it: the publisher drains the outbox, a timer prunes it (retention) and reports overflow, a check
warns when the wall clock jumps, and an optional Prometheus endpoint shows per-device counters.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime

from edge_agent.bus import SilencePolicy
from edge_agent.config import LoadedConfig
from edge_agent.instrument_reader import Clock, ModbusReader, wall_clock
from edge_agent.modbus_drivers import build_drivers
from edge_agent.outbox import CutCycle, Outbox, OutboxStats
from edge_agent.publisher import Publisher
from edge_agent.sealing import ReadingLike, Sample, batch_from_fragments, fragments_of, pack

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0
"""How long a clean stop may spend publishing what is still pending before it gives up (systemd waits 90 s)."""


PRUNE_PAUSE_S = 0.005
"""Pause between two pruning transactions: the lock is free for an append in between."""


def next_tick(now: float, interval: float) -> float:
    """The next wall-clock multiple of the interval, so polls stay on a fixed grid and never drift."""
    return (now // interval + 1) * interval


class Stager:
    """Stages each instrument's readings in the outbox as soon as they are read, and keeps the encoded fragments
    for sealing.

    A stage is a small write without fsync, so it runs right here on the event loop: a thread hop per
    instrument (executor, wake-up pipe, the GIL passed back and forth) cost more than the write itself, about a
    third of the agent's CPU at 100 instruments. Only when another operation holds the outbox (a synced append,
    a prune) does it go to a thread, taking along whatever arrives meanwhile in one transaction."""

    def __init__(self, outbox: Outbox, cycle_ns: int, max_readings: int) -> None:
        self.outbox = outbox
        self.cycle_ns = cycle_ns
        self.max_readings = max_readings
        self.transactions = 0
        self._unstaged: list[tuple[int, bytes]] = []
        self._done: dict[int, list[tuple[int, bytes]]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, index: int, readings: list[Sample]) -> None:
        """The readings of reader `index`, just read."""
        fragments = self._done[index] = fragments_of(readings, self.max_readings)
        if self._task is not None and not self._task.done():
            self._unstaged.extend(fragments)  # the thread's next transaction takes them
        elif not self._stage(fragments, wait=False):
            self._unstaged.extend(fragments)
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._unstaged:
            taken, self._unstaged = self._unstaged, []
            await asyncio.to_thread(self._stage, taken, wait=True)

    def _stage(self, fragments: list[tuple[int, bytes]], *, wait: bool) -> bool:
        """Stage `fragments`; False (nothing done) if `wait` is off and the outbox is busy."""
        try:
            if not self.outbox.stage(self.cycle_ns, fragments, wait=wait):
                return False
            self.transactions += 1
        except sqlite3.Error as error:  # the seal still has them; only a crash before it would lose them
            log.warning("could not stage readings in the outbox (%s); they are sealed at the end of the cycle", error)
        return True

    async def fragments(self) -> list[tuple[int, bytes]]:
        """Everything added, once staged, in reader order (call after the last `add`)."""
        while self._task is not None and not self._task.done():
            await self._task
        return [fragment for index in sorted(self._done) for fragment in self._done[index]]


def clock_jump(before: tuple[float, float], after: tuple[float, float], tolerance: float) -> float | None:
    """How far the wall clock jumped between two (wall, monotonic) readings, if more than `tolerance`. Pure.

    The monotonic clock only ever runs forward at the real rate; a wall clock that moved differently was set
    (NTP step, an operator, a gateway without RTC battery getting its time late).
    """
    jump = (after[0] - before[0]) - (after[1] - before[1])
    return jump if abs(jump) > tolerance else None


class Agent:
    """Ties readers, outbox and publisher together for one site config."""

    def __init__(self, loaded: LoadedConfig, *, policy: SilencePolicy | None = None, clock: Clock = wall_clock) -> None:
        """`clock` stamps the readings (a replay's simulated time in the demo); the schedule, the outbox and the
        batches' sealing times stay on the wall clock."""
        self.config = loaded.config
        agent = self.config.agent
        self.drivers = build_drivers(loaded.instruments, policy=policy)
        self.readers = [ModbusReader(i, self.drivers.by_instrument[i.id], clock=clock) for i in loaded.instruments]
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
        return self.seal_fragments(fragments_of(readings, self.config.agent.batch_max_readings), ends_cycle=False)

    def seal_fragments(
        self, fragments: Sequence[tuple[int, bytes]], *, ends_cycle: bool = True, recovered: int | None = None
    ) -> list[int]:
        """Store encoded readings (count, JSON array) as numbered batches of at most batch_max_readings, in one
        outbox transaction that also ends the cycle they belong to; returns their sequence numbers."""
        site, agent = self.config.agent.site, self.config.agent.id
        sent_at = datetime.now(UTC)
        makers = []
        for group in pack(fragments, self.config.agent.batch_max_readings):

            def payload(seq: int, group: list[bytes] = group) -> bytes:
                return batch_from_fragments(site, agent, seq, sent_at, group)

            makers.append(payload)
        return self.outbox.append_many(makers, time.time_ns(), ends_cycle=ends_cycle, recovered=recovered)

    def recover_cut_cycle(self, *, stopping: bool = False) -> None:
        """At start: seal what the last run had read and staged of a cycle it never finished, count it and say
        so. `stopping`: a clean stop cancelled a cycle; seal what it had read, no alarm (it is no crash)."""
        cut: CutCycle | None = self.outbox.cut_cycle()
        if cut is None:
            return
        if stopping:
            self.seal_fragments(cut.fragments)
            log.info("stopped during a poll cycle: the %d readings it had read are sealed", cut.readings)
            return
        sequences = self.seal_fragments(cut.fragments, recovered=cut.readings)
        began = datetime.fromtimestamp(cut.cycle_ns / 1e9, UTC).isoformat() if cut.cycle_ns else "unknown"
        stats = self.outbox.stats()
        log.warning(
            "the agent stopped in the middle of the poll cycle that began at %s (killed, a power cut, or stopped"
            " while polling): %d readings already read were sealed now%s; readings of instruments not read yet"
            " are missing for that cycle (%d cycles cut short, %d readings recovered since the outbox was made)",
            began,
            cut.readings,
            f" (batches {sequences[0]}..{sequences[-1]})" if sequences else "",
            stats.cut_cycles,
            stats.recovered_readings,
        )

    async def poll_once(self, stager: Stager | None = None) -> list[Sample]:
        """Read every instrument once; with a `stager`, each instrument's readings are staged as soon as read."""

        async def read(index: int, reader: ModbusReader) -> list[Sample]:
            readings = await reader.poll()
            if stager is not None:
                stager.add(index, readings)
            return readings

        results = await asyncio.gather(
            *(read(index, reader) for index, reader in enumerate(self.readers)), return_exceptions=True
        )
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

    async def poll_cycle(self) -> int:
        """One poll cycle: mark it, read every instrument (staging as read), seal its batches, wake the publisher.
        Returns the readings sealed."""
        cycle_ns = time.time_ns()
        if not self.outbox.begin_cycle(cycle_ns, wait=False):  # a small write without fsync, as a stage
            await asyncio.to_thread(self.outbox.begin_cycle, cycle_ns)
        stager = Stager(self.outbox, cycle_ns, self.config.agent.batch_max_readings)
        await self.poll_once(stager)
        fragments = await stager.fragments()
        await asyncio.to_thread(self.seal_fragments, fragments)
        if fragments:
            self.publisher.wake.set()
        self.cycles += 1
        return sum(count for count, _ in fragments)

    async def poll_forever(self) -> None:
        interval = self.config.agent.poll_interval
        before: tuple[float, float] | None = None
        while True:
            await asyncio.sleep(max(0.0, next_tick(time.time(), interval) - time.time()))
            now = (time.time(), time.monotonic())
            self._check_clock(before, now)
            before = now
            await self.poll_cycle()
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

    async def run(self, schedule: Callable[[], Coroutine[object, object, None]] | None = None) -> None:
        """Poll and publish until cancelled; on cancel close the clients and the outbox.

        `schedule` replaces the wall-clock polling loop (`poll_forever`), e.g. a replay that runs `poll_cycle`
        at simulated times first (aua_demo.replay)."""
        metrics = None
        if self.config.agent.metrics_port is not None:
            from edge_agent.metrics import MetricsServer  # noqa: PLC0415 - prometheus only when asked for

            metrics = MetricsServer(self, self.config.agent.metrics_host, self.config.agent.metrics_port)
            await metrics.start()
        try:
            await asyncio.to_thread(self.recover_cut_cycle)
            async with asyncio.TaskGroup() as group:
                group.create_task((schedule or self.poll_forever)())
                group.create_task(self.publisher.run())
                group.create_task(self.prune_forever())
        finally:
            try:
                await asyncio.to_thread(self.recover_cut_cycle, stopping=True)
            except Exception as error:  # the next start seals them instead
                log.warning("could not seal the interrupted cycle's readings at stop: %r", error)
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
