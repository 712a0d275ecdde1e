"""`cems-gateway`: run the gateway, show per-agent accounting, list dead letters, summarise the store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.config import GatewayConfig, GatewayConfigError, load_gateway_config
from gateway.ingest import Ingest
from gateway.ledger import Ledger
from gateway.stores import open_store


async def _serve(config: GatewayConfig) -> None:
    """Run until SIGINT/SIGTERM, then stop cleanly: what was stored is recorded, the rest comes back by gap repair."""
    store = open_store(config.store.url)
    await store.open()
    ledger = Ledger(config.gateway.state)
    task = asyncio.create_task(Ingest(config, store, ledger).run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger(__name__).info("stopping")
    finally:
        await store.close()
        ledger.close()


def _accounting(config: GatewayConfig) -> int:
    ledger = Ledger(config.gateway.state)
    print(f"{'site':<20} {'agent':<20} {'batches':>8} {'readings':>9} {'seqs':>15} {'missing':>8} {'dups':>6}")
    for account in ledger.accounts():
        print(
            f"{account.site:<20} {account.agent:<20} {account.batches:>8} {account.readings:>9} "
            f"{f'{account.first_seq}..{account.last_seq}':>15} {account.missing:>8} {account.duplicates:>6}"
        )
    ledger.close()
    return 0


def _dead_letters(config: GatewayConfig) -> int:
    ledger = Ledger(config.gateway.state)
    for letter in ledger.dead_letters():
        when = datetime.fromtimestamp(letter.received_ns / 1e9, UTC).isoformat(timespec="seconds")
        print(f"{when} {letter.topic}: {letter.reason} ({len(letter.payload)} bytes)")
    ledger.close()
    return 0


async def _summary(config: GatewayConfig) -> int:
    store = open_store(config.store.url)
    await store.open()
    try:
        counts = await store.count_by_instrument()
    finally:
        await store.close()
    for (site, instrument), count in sorted(counts.items()):
        print(f"{site:<20} {instrument:<20} {count:>9}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cems-gateway", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "subscribe, validate and store until stopped"),
        ("accounting", "per agent: batches received, sequence range, missing, duplicates"),
        ("dead-letters", "the most recent rejected messages and why"),
        ("summary", "readings stored per instrument"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_gateway_config(args.config)
    except GatewayConfigError as error:
        print(f"config error:\n{error}", file=sys.stderr)
        return 1
    if args.command == "run":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(config))
        return 0
    if args.command == "accounting":
        return _accounting(config)
    if args.command == "dead-letters":
        return _dead_letters(config)
    return asyncio.run(_summary(config))


if __name__ == "__main__":
    sys.exit(main())
