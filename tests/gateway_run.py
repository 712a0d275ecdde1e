"""A gateway's ingest running in the test's event loop: on its own store and ledger, subscribed before the
test body runs, stopped and closed after it (the store stays queryable inside the block)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from eventually import eventually as poll

from gateway.config import GatewayConfig
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.stores import open_store


@asynccontextmanager
async def running_gateway(config: GatewayConfig, **options: Any) -> AsyncIterator[Ingest]:
    store = open_store(config.store.url)
    await store.open()
    ledger = Ledger(config.gateway.state)
    ingest = Ingest(config, store, ledger, **options)
    task = asyncio.create_task(ingest.run())
    try:
        await asyncio.wait_for(ingest.connected.wait(), timeout=10)
        yield ingest
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
        ledger.close()


async def eventually(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Poll until `condition()` holds; fail if it still does not after `within_s` (tests/eventually.py)."""
    await poll(condition, timeout=within_s)
