"""One serial line (or RTU-over-TCP tunnel): one master, one outstanding request, fair between devices.

The decisions are pure and table-tested: whose turn it is (`next_device`: round robin over the devices
that have a request waiting), whether a device gets bus time (`admit`/`record`: a device that stopped
answering is only probed now and then, so its timeouts cannot starve the others), how long to stay
silent between frames (rtu.inter_frame_gap). `RtuBus` is the I/O around them: a single worker owns the
link and serves one request at a time; everyone else waits in a per-device queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from enum import Enum

from edge_agent.driver import Backoff, BadFrame, DeviceSilent, DeviceTimeout, DriverError, LinkDown
from edge_agent.links import FrameSize, Link

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Pure decisions
# --------------------------------------------------------------------------------------------------


def next_device(waiting: Collection[int], last: int | None) -> int:
    """Round robin: the lowest waiting device id above the last one served, else the lowest waiting one."""
    if not waiting:
        raise ValueError("no device is waiting")
    if last is not None:
        after = [device for device in waiting if device > last]
        if after:
            return min(after)
    return min(waiting)


@dataclass(frozen=True)
class SilencePolicy:
    """When a device counts as silent and how often a silent device is tried again."""

    silent_after: int = 3
    """consecutive timeouts after which the device is only probed"""
    probe_first_s: float = 2.0
    probe_max_s: float = 60.0


class Verdict(Enum):
    """What a frame that arrived while waiting for an answer is."""

    OURS = "ours"  # the answer to the request
    OTHER = "other"  # a well-formed frame for something else: a late answer (of another device, or an older request)
    GARBAGE = "garbage"  # not a frame (CRC, noise): the line is out of step


class Outcome(Enum):
    ANSWERED = "answered"  # any valid frame, exceptions included: the device is alive
    TIMEOUT = "timeout"
    GARBLED = "garbled"  # bytes came but no valid frame: alive but noisy; does not change silence


@dataclass(frozen=True)
class DeviceHealth:
    timeouts: int = 0
    """consecutive timeouts"""
    probe_interval: float = 0.0
    next_probe: float = 0.0
    """monotonic time from which a silent device may be tried again"""

    def silent(self, policy: SilencePolicy) -> bool:
        return self.timeouts >= policy.silent_after


def admit(health: DeviceHealth, now: float, policy: SilencePolicy) -> bool:
    """Whether a request to this device may use the bus now."""
    return not health.silent(policy) or now >= health.next_probe


def record(health: DeviceHealth, outcome: Outcome, now: float, policy: SilencePolicy) -> DeviceHealth:
    """The device's health after one request's outcome."""
    if outcome is Outcome.ANSWERED:
        return DeviceHealth()
    if outcome is Outcome.GARBLED:
        return health
    timeouts = health.timeouts + 1
    if timeouts < policy.silent_after:
        return replace(health, timeouts=timeouts)
    interval = (
        policy.probe_first_s if health.probe_interval <= 0 else min(health.probe_interval * 2, policy.probe_max_s)
    )
    return DeviceHealth(timeouts=timeouts, probe_interval=interval, next_probe=now + interval)


# --------------------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------------------


@dataclass
class BusStats:
    exchanges: int = 0
    timeouts: int = 0
    skipped: int = 0
    """requests failed without bus time because their device is silent"""
    foreign_frames: int = 0
    """frames that arrived but belonged to no request being waited for (late answers)"""
    bad_frames: int = 0
    reconnects: int = 0
    busy_s: float = 0.0


@dataclass
class _Job:
    device_id: int
    request: bytes
    size_of: FrameSize
    judge: Callable[[bytes], Verdict]
    timeout: float
    future: asyncio.Future[bytes] = field(repr=False)


class RtuBus:
    """A serial line's arbiter. Create one per line and share it between the line's devices."""

    def __init__(
        self,
        name: str,
        open_link: Callable[[], Awaitable[Link]],
        *,
        gap_s: float = 0.00175,
        policy: SilencePolicy | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._open_link = open_link
        self.gap_s = gap_s
        self.policy = policy or SilencePolicy()
        self.backoff = backoff or Backoff()
        self.stats = BusStats()
        self.health: dict[int, DeviceHealth] = {}
        self._queues: dict[int, deque[_Job]] = {}
        self._last: int | None = None
        self._work = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._link: Link | None = None
        self._retry_at = 0.0
        self._delay: float | None = None
        self._quiet_since = 0.0

    async def exchange(
        self,
        device_id: int,
        request: bytes,
        size_of: FrameSize,
        judge: Callable[[bytes], Verdict],
        answer_within: float,
    ) -> bytes:
        """Send `request` when it is this device's turn and return the first frame `judge` says is ours."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        job = _Job(device_id, request, size_of, judge, answer_within, future)
        self._queues.setdefault(device_id, deque()).append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve_forever(), name=f"bus {self.name}")
        self._work.set()
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for queue in self._queues.values():
            for job in queue:
                if not job.future.done():
                    job.future.set_exception(LinkDown(f"{self.name}: bus closed"))
            queue.clear()
        if self._link is not None:
            self._link.close()
            self._link = None

    async def _serve_forever(self) -> None:
        while True:
            waiting = [device for device, queue in self._queues.items() if queue]
            if not waiting:
                self._work.clear()
                await self._work.wait()
                continue
            device = next_device(waiting, self._last)
            self._last = device
            job = self._queues[device].popleft()
            if job.future.done():  # the caller gave up (cancelled)
                continue
            try:
                result = await self._serve(job)
            except DriverError as error:
                if not job.future.done():
                    job.future.set_exception(error)
            except Exception as error:  # a bug or an unforeseen OS error: fail this request, keep the bus going
                log.exception("%s: unexpected error serving device %d", self.name, job.device_id)
                if not job.future.done():
                    job.future.set_exception(self._drop_link(repr(error)))
            else:
                if not job.future.done():
                    job.future.set_result(result)

    async def _ensure_link(self) -> Link:
        if self._link is not None:
            return self._link
        now = time.monotonic()
        if now < self._retry_at:
            raise LinkDown(f"{self.name}: not open, next attempt in {self._retry_at - now:.1f} s")
        try:
            self._link = await self._open_link()
        except (OSError, TimeoutError, ValueError) as error:
            self._delay = self.backoff.after(self._delay)
            self._retry_at = time.monotonic() + self._delay
            raise LinkDown(f"{self.name}: cannot open ({error}); retrying in {self._delay:.1f} s") from None
        if self._delay is not None:
            log.info("%s: open again", self.name)
            self.stats.reconnects += 1
        self._delay = None
        return self._link

    def _drop_link(self, why: str) -> LinkDown:
        if self._link is not None:
            self._link.close()
            self._link = None
        self._delay = self.backoff.after(self._delay)
        self._retry_at = time.monotonic() + self._delay
        log.warning("%s: link lost (%s); reopening in %.1f s", self.name, why, self._delay)
        return LinkDown(f"{self.name}: link lost ({why})")

    async def _serve(self, job: _Job) -> bytes:
        where = f"{self.name} device {job.device_id}"
        health = self.health.get(job.device_id, DeviceHealth())
        if not admit(health, time.monotonic(), self.policy):
            self.stats.skipped += 1
            raise DeviceSilent(f"{where}: silent for {health.timeouts} requests; next probe later")
        link = await self._ensure_link()
        quiet_for = time.monotonic() - self._quiet_since
        if quiet_for < self.gap_s:
            await asyncio.sleep(self.gap_s - quiet_for)
        started = time.monotonic()
        link.discard_input()
        try:
            await link.write(job.request)
            outcome, frame = await self._await_answer(link, job, started + job.timeout)
        except ConnectionError as error:
            raise self._drop_link(str(error)) from None
        finally:
            self._quiet_since = time.monotonic()
            self.stats.busy_s += self._quiet_since - started
            self.stats.exchanges += 1
        self.health[job.device_id] = record(health, outcome, time.monotonic(), self.policy)
        if outcome is Outcome.TIMEOUT:
            self.stats.timeouts += 1
            if self.health[job.device_id].silent(self.policy) and not health.silent(self.policy):
                # debug: the device's reader logs that it stopped answering (and its return), once each
                log.debug(
                    "%s: no answer %d times in a row; probing it only now and then", where, self.policy.silent_after
                )
            raise DeviceTimeout(f"{where}: no answer within {job.timeout:.3f} s")
        if outcome is Outcome.GARBLED:
            self.stats.bad_frames += 1
            raise BadFrame(f"{where}: no valid answer, got {frame.hex(' ')}")
        if health.silent(self.policy):
            log.debug("%s: answers again", where)
        return frame

    async def _await_answer(self, link: Link, job: _Job, deadline: float) -> tuple[Outcome, bytes]:
        """Frames until one belongs to the job; foreign ones (late answers of others) are skipped."""
        while True:
            try:
                frame = await link.read_frame(job.size_of, deadline)
            except TimeoutError:
                return Outcome.TIMEOUT, b""
            verdict = job.judge(frame)
            if verdict is Verdict.OURS:
                return Outcome.ANSWERED, frame
            if verdict is Verdict.OTHER:
                self.stats.foreign_frames += 1
                continue
            link.discard_input()
            return Outcome.GARBLED, frame
