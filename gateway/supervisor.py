"""The gateway's background tasks by name: the first one to fail stops the process, and /health shows each.

A gateway with one dead task is worse than a dead gateway: it may go on taking messages it never stores
while /health says ok. So no task is allowed to die alone: the first one that raises (or returns, which
a forever-loop never should) ends `run` with `TaskFailed`, and `cems-gateway run` exits non-zero for
systemd or compose to restart it. Tasks that work in units (a store write) say so with `working`, and a
unit that takes longer than `stall_s` makes /health report the task as stalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator
from typing import Any

from gateway.errors import GatewayError

log = logging.getLogger(__name__)


class TaskFailed(GatewayError):
    """A supervised task raised or ended; `name` says which and `error` what it raised (None: it returned)."""

    def __init__(self, name: str, error: BaseException | None) -> None:
        self.name = name
        self.error = error
        what = "ended, but it should run until the gateway stops" if error is None else describe(error)
        super().__init__(f"task {name!r} failed: {what}")


def describe(error: BaseException) -> str:
    """One line for an exception: its type and message, the innermost one of an exception group."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class Supervisor:
    def __init__(self, *, stall_s: float = 120.0) -> None:
        self.stall_s = stall_s
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._busy_since: dict[str, float] = {}
        self._failed: asyncio.Future[TaskFailed] | None = None
        self._stopping = False

    def start(self, name: str, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run `coroutine` as the task `name` until stop(); if it raises or returns first, run() raises."""
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(coroutine, name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._ended(name, done))

    def _ended(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._stopping or self._failed is None or self._failed.done():
            return
        error = None if task.cancelled() else task.exception()
        if task.cancelled():
            error = asyncio.CancelledError("cancelled from outside the supervisor")
        self._failed.set_result(TaskFailed(name, error))

    @property
    def stopping(self) -> bool:
        """True once stop() began: tasks are being cancelled on purpose."""
        return self._stopping

    @contextlib.contextmanager
    def working(self, name: str) -> Iterator[None]:
        """Mark one unit of work of task `name` (e.g. a store write); one that outlasts stall_s is a stall."""
        self._busy_since[name] = time.monotonic()
        try:
            yield
        finally:
            self._busy_since.pop(name, None)

    def liveness(self) -> dict[str, str]:
        """Each task: "running", "stalled: ..." or "failed: ..." (what /health shows)."""
        now = time.monotonic()
        states = {}
        for name, task in self._tasks.items():
            if task.done():
                error = None if task.cancelled() else task.exception()
                what = "ended" if error is None else describe(error)
                states[name] = "stopped" if self._stopping else f"failed: {what}"
                continue
            since = self._busy_since.get(name)
            if since is not None and now - since > self.stall_s:
                states[name] = f"stalled: one unit of work has run for {now - since:.0f} s"
            else:
                states[name] = "running"
        return states

    async def run(self) -> None:
        """Wait until a task fails (raises TaskFailed) or the caller's task is cancelled (a clean stop).

        Either way every task is cancelled and awaited, at most `grace_s` each round (stop()).
        """
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        try:
            failure = await asyncio.shield(self._failed)
        finally:
            await self.stop()
        raise failure

    async def stop(self, grace_s: float = 10.0) -> None:
        """Cancel every task and wait for them, at most grace_s: a task that ignores cancellation is named
        and left behind (the process exits anyway, see gateway/cli.py)."""
        self._stopping = True
        tasks = [task for task in self._tasks.values() if not task.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            log.error("task %r did not stop within %.0f s of being cancelled", task.get_name(), grace_s)
