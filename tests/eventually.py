"""`eventually()`: wait for a condition instead of sleeping a fixed time.

A fixed sleep is either too short on a loaded machine (a flake) or too long everywhere else (a slow suite).
Polling a predicate returns as soon as the condition holds and fails, with what was last seen, only after a
generous `timeout`. The timeout is a ceiling, never an assertion about speed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 (a poll's ceiling: on expiry it says what it last saw)
    interval: float = 0.05,
    what: str = "",
) -> T:
    """Poll `predicate()` every `interval` seconds until it returns something truthy, and return that;
    AssertionError after `timeout` seconds (naming `what`, or the predicate, and its last result)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"still not true after {timeout} s: {name} (last: {result!r})")
        await asyncio.sleep(interval)
