"""The agent's schedule: poll every instrument each interval, seal one batch per cycle into the outbox.

Each cycle waits for its instruments until its deadline (schedule.cycle_deadline: the next tick less a reserve
for sealing), then seals what arrived. A poll still running then is not waited for and not lost: its readings go
into the cycle open when they arrive, stamped when each answer came, and that instrument alone skips the ticks
that come while it is busy (counted per instrument). The next tick starts on time for everyone else.

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
from edge_agent.schedule import cycle_deadline, following_tick, next_tick, plan_tick
from edge_agent.sealing import ReadingLike, Sample, batch_from_fragments, fragments_of, pack

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0
"""How long a clean stop may spend publishing what is still pending before it gives up (systemd waits 90 s)."""


PRUNE_PAUSE_S = 0.005
"""Pause between two pruning transactions: the lock is free for an append in between."""


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
        """each reader's fragments in the order added: a late poll of an earlier cycle and this cycle's own"""
        self._task: asyncio.Task[None] | None = None

    def add(self, index: int, readings: list[Sample]) -> None:
        """The readings of reader `index`, just read."""
        fragments = fragments_of(readings, self.max_readings)
        self._done.setdefault(index, []).extend(fragments)
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
        self.ticks_skipped = 0
        """ticks skipped for every instrument because a cycle ended after they were due (overruns)"""
        self.late_cycles = 0
        """cycles sealed while some of their polls were still running"""
        self._polls: list[asyncio.Task[None] | None] = [None] * len(self.readers)
        """each reader's running poll, kept past its cycle's deadline until it ends"""
        self._stager: Stager | None = None
        """the open cycle's stager: where a poll's readings go when it ends (None: no cycle open)"""
        self._held: list[tuple[int, list[Sample]]] = []
        """readings of polls that ended while a cycle was being sealed, for the next one"""
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

    def _check_clock(self, before: tuple[float, float] | None, now: tuple[float, float]) -> bool:
        """Whether the wall clock jumped since `before` (logged and counted)."""
        if before is None:
            return False
        jump = clock_jump(before, now, self.config.agent.clock_jump_s)
        if jump is not None:
            self.clock_jumps += 1
            log.warning(
                "the system clock jumped %+.1f s between two polls; readings are stamped with the new time"
                " (check NTP/chrony; a backward jump repeats timestamps the store already has)",
                jump,
            )
        return jump is not None

    async def _open_cycle(self) -> Stager:
        """Mark a cycle as begun in the outbox and give it the readings that arrived while none was open."""
        cycle_ns = time.time_ns()
        if not self.outbox.begin_cycle(cycle_ns, wait=False):  # a small write without fsync, as a stage
            await asyncio.to_thread(self.outbox.begin_cycle, cycle_ns)
        stager = self._stager = Stager(self.outbox, cycle_ns, self.config.agent.batch_max_readings)
        held, self._held = self._held, []
        for index, readings in held:
            stager.add(index, readings)
        return stager

    async def _poll(self, index: int) -> None:
        """Poll one reader and hand its readings to the cycle open when they arrive (staged at once)."""
        reader = self.readers[index]
        try:
            readings = await reader.poll()
        except Exception as error:  # a reader's bug must not stop the others
            log.error("%s: poll failed: %r", reader.instrument.id, error)
            return
        if self._stager is not None:
            self._stager.add(index, readings)
        else:  # the cycle it belonged to is being sealed: the next one takes them
            self._held.append((index, readings))

    def _busy(self) -> list[bool]:
        return [task is not None and not task.done() for task in self._polls]

    def _note_late(self, late: list[int]) -> None:
        """Count the polls a cycle did not wait for, per instrument; a warning for the first cycle with any and
        then every 100th (at 500 instruments a line per instrument would flood the log)."""
        for index in late:
            self.readers[index].stats.late_polls += 1
        self.late_cycles += 1
        if self.late_cycles == 1 or self.late_cycles % 100 == 0:
            names = ", ".join(self.readers[index].instrument.id for index in late[:5])
            log.warning(
                "%d of %d polls were not finished by the cycle's deadline (%s%s; %d cycles with late polls so far):"
                " their readings go into a later batch, stamped when they came, and those instruments skip the"
                " ticks while still busy. A timeout or plan longer than poll_interval, or a device that cannot"
                " keep up (aua_agent_late_polls_total tells which)",
                len(late),
                len(self.readers),
                names,
                ", ..." if len(late) > 5 else "",
                self.late_cycles,
            )

    async def poll_cycle(self, deadline: float | None = None) -> int:
        """One poll cycle: mark it, start a poll of every instrument not still busy, wait for them until
        `deadline` (wall-clock epoch seconds; None: until all have ended), seal what arrived and wake the
        publisher. Returns the readings sealed."""
        stager = self._stager or await self._open_cycle()
        tick = plan_tick(self._busy())
        for index in tick.busy:
            self.readers[index].stats.busy_skips += 1
        started: list[asyncio.Task[None]] = []
        for index in tick.poll:
            task = self._polls[index] = asyncio.create_task(self._poll(index))
            started.append(task)
        try:
            if deadline is None:
                running = [task for task in self._polls if task is not None and not task.done()]
                if running:
                    await asyncio.wait(running)
            elif started:
                await asyncio.wait(started, timeout=max(0.0, deadline - time.time()))
        except asyncio.CancelledError:
            self._cancel_polls()
            raise
        late = [index for index, poll in zip(tick.poll, started, strict=True) if not poll.done()]
        if late:
            self._note_late(late)
        self._stager = None  # a poll ending from here on goes to the next cycle
        fragments = await stager.fragments()
        await asyncio.to_thread(self.seal_fragments, fragments)
        if fragments:
            self.publisher.wake.set()
        self.cycles += 1
        if self._held or any(self._busy()):
            # Late polls are still running: open the next cycle now, so what they read is staged (kept through
            # a kill) as soon as it arrives, not only at the next tick.
            await self._open_cycle()
        return sum(count for count, _ in fragments)

    def _cancel_polls(self) -> None:
        for task in self._polls:
            if task is not None and not task.done():
                task.cancel()

    async def _stage_held(self) -> None:
        """At a stop: stage what landed while the last cycle was being sealed, so the stop's seal takes it."""
        held, self._held = self._held, []
        fragments = [
            fragment
            for _, readings in held
            for fragment in fragments_of(readings, self.config.agent.batch_max_readings)
        ]
        if fragments:
            await asyncio.to_thread(self.outbox.stage, time.time_ns(), fragments)

    async def stop_polls(self) -> None:
        """Cancel the polls still running (a stop); what they had not read yet is not read."""
        self._cancel_polls()
        polls = [poll for poll in self._polls if poll is not None]
        if polls:
            await asyncio.gather(*polls, return_exceptions=True)

    async def poll_forever(self) -> None:
        interval = self.config.agent.poll_interval
        before: tuple[float, float] | None = None
        tick = next_tick(time.time(), interval)
        while True:
            if tick - time.time() > interval:  # the wall clock was set back: back onto the grid from now
                tick = next_tick(time.time(), interval)
            await asyncio.sleep(max(0.0, tick - time.time()))
            now = (time.time(), time.monotonic())
            jumped = self._check_clock(before, now)
            before = now
            if jumped:  # this cycle starts now, off the grid the old time gave; the next is on the new one
                tick = now[0]
            await self.poll_cycle(deadline=cycle_deadline(tick, interval))
            self.last_cycle_s = time.monotonic() - now[1]
            if jumped:  # no overrun to judge against a grid that moved
                tick = next_tick(time.time(), interval)
                continue
            # When it ended by the monotonic clock: a wall clock set during the cycle is no overrun.
            ended = max(tick, now[0]) + self.last_cycle_s
            tick_before, (tick, skipped) = tick, following_tick(tick, ended, interval)
            if ended >= tick_before + interval:
                self.overruns += 1
                self.ticks_skipped += skipped
                if self.overruns == 1 or self.overruns % 100 == 0:
                    log.warning(
                        "a poll cycle ended %.2f s after its tick, past the next one (poll_interval %.2f s; %d"
                        " times so far): %s. Polls wait only until the cycle's deadline, so this is sealing or a"
                        " starved agent: check the disk and the CPU",
                        ended - tick_before,
                        interval,
                        self.overruns,
                        f"{skipped} tick(s) skipped for every instrument" if skipped else "the next tick starts late",
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
            await self.stop_polls()
            try:
                await self._stage_held()
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
