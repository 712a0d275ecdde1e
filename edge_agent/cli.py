"""`edge-agent`: run an agent, commission it (check), show its read plan, validate a config, print a sample.

Exit status: 0 fine, 1 a problem (named on stderr or in the check's list), 2 wrong usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from pathlib import Path

from aua_ops import ConfigError, secrets_of
from edge_agent import logs
from edge_agent.commissioning import check, static_problems
from edge_agent.config import InstrumentSection, LoadedConfig, Transport, load_config
from edge_agent.planner import explain, plan, spans_of
from edge_agent.poller import Agent
from edge_agent.sample_config import SAMPLE


def describe_endpoint(section: InstrumentSection) -> str:
    if section.transport is Transport.RTU:
        line = f"{section.baudrate} {section.bytesize}{section.parity}{section.stopbits}"
        return f"rtu://{section.serial_port} ({line}) device {section.device_id}"
    return f"{section.transport}://{section.host}:{section.port} device {section.device_id}"


def print_plan(loaded: LoadedConfig) -> int:
    total_requests = total_spans = 0
    for instrument in loaded.instruments:
        section = instrument.config
        spans = spans_of(instrument.profile)
        requests = plan(spans, max_gap=section.max_gap)
        total_requests += len(requests)
        total_spans += len(spans)
        print(
            f"{instrument.id}: {describe_endpoint(section)} ({instrument.profile.profile.name}): {len(spans)} spans"
            f" (tags and status blocks) in {len(requests)} requests, max_gap {section.max_gap}"
        )
        for request, why in zip(requests, explain(requests, section.max_gap), strict=True):
            names = ", ".join(span.name for span in request.spans)
            where = f"FC{request.function.code:02d} {request.function:<8} {request.address:>5} +{request.count:<4}"
            print(f"  {where} reads {names}")
            print(f"      {why}")
    print(
        f"total: {total_requests} requests per poll cycle for {total_spans} spans"
        f" (one request per span would be {total_spans})"
    )
    return 0


async def _run_until_signalled(loaded: LoadedConfig) -> int:
    """Run until SIGTERM (systemd stop) or SIGINT; both end with the offline status and a closed outbox."""
    try:
        agent = Agent(loaded)
    except (OSError, ssl.SSLError) as error:
        print(f"{loaded.path}: cannot start: {error}", file=sys.stderr)
        return 1
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


def _run(path: Path) -> int:
    """Refuse to start on a problem `check` would name (outbox folder, TLS files, metrics port), one line each."""
    loaded = load_config(path)
    problems = static_problems(loaded, serial_ports=False)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if loaded.config.agent.create_dirs:
        loaded.config.agent.outbox.parent.mkdir(parents=True, exist_ok=True)
    logs.add_secrets(secrets_of(loaded.config))
    return asyncio.run(_run_until_signalled(loaded))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (includes pymodbus)")
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "poll the instruments and publish to MQTT until stopped (SIGTERM/SIGINT)"),
        ("check", "commissioning: validate, read every tag once, test the broker; exit 1 on any problem"),
        ("plan", "print the Modbus requests the agent would send, and why (no device needed)"),
        ("validate", "check a config and its profiles; exit 1 naming the bad key and line"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("config", type=Path)
        if name == "check":
            command.add_argument("--no-broker", action="store_true", help="do not test the MQTT broker")
    config_command = commands.add_parser("config", help="print a commented sample config: edge-agent config sample")
    config_command.add_argument("what", choices=["sample"])
    args = parser.parse_args(argv)
    logs.configure(verbose=args.verbose, json_lines=args.log_json)
    try:
        if args.command == "config":
            print(SAMPLE, end="")
            return 0
        if args.command == "run":
            return _run(args.config)
        loaded = load_config(args.config)
        logs.add_secrets(secrets_of(loaded.config))
        if args.command == "plan":
            return print_plan(loaded)
        if args.command == "check":
            return asyncio.run(check(loaded, broker=not args.no_broker))
        count = len(loaded.instruments)
        vectors = sum(len(instrument.profile.vector) for instrument in loaded.instruments)
        print(
            f"{args.config}: ok, {count} instrument{'s' if count != 1 else ''},"
            f" {vectors} test vector{'s' if vectors != 1 else ''} of their profiles decoded as expected"
        )
        return 0
    except ConfigError as error:
        print(error, file=sys.stderr)  # one line per problem: FILE:LINE: KEY: what
        return 1


if __name__ == "__main__":
    sys.exit(main())
