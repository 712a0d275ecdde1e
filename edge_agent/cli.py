"""`edge-agent`: run an agent, show its read plan, or validate a config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from edge_agent.config import load_config
from edge_agent.planner import plan, spans_of
from edge_agent.poller import Agent
from edge_agent.profiles import ConfigError


def _plan(path: Path) -> int:
    loaded = load_config(path)
    for instrument in loaded.instruments:
        spans = spans_of(instrument.profile)
        requests = plan(spans, max_gap=instrument.config.max_gap)
        section = instrument.config
        print(
            f"{instrument.id}: {section.transport}://{section.host}:{section.port} device {section.device_id} "
            f"({instrument.profile.profile.name}): {len(spans)} spans in {len(requests)} requests"
        )
        for request in requests:
            names = ", ".join(span.name for span in request.spans)
            unused = request.count - sum(span.count for span in request.spans)
            print(
                f"  FC{request.function.code:02d} {request.function:<8} {request.address:>5} +{request.count:<4}"
                f" reads {names}" + (f" (includes {unused} unused)" if unused > 0 else "")
            )
    return 0


def _run(path: Path) -> int:
    agent = Agent(load_config(path))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(agent.run())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "poll the instruments and publish to MQTT until stopped"),
        ("plan", "print the Modbus requests the agent would send, and why (no device needed)"),
        ("validate", "check a config and its profiles; exit 1 naming the bad key"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "plan":
            return _plan(args.config)
        loaded = load_config(args.config)
        print(f"{args.config}: ok, {len(loaded.instruments)} instruments")
        return 0
    except ConfigError as error:
        print(f"config error:\n{error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
