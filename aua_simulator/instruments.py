"""`python -m aua_simulator.instruments CONFIG [CONFIG...]`: play the instruments of agent site configs on
Modbus TCP until Ctrl-C (the demo's container, the benches and the docs run it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aua_ops import ConfigError
from aua_simulator.modbus_servers import Simulator, simulator_for_config
from edge_agent.config import load_config


async def _run_until_stopped(simulator: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    async with simulator:
        for instrument in simulator.instruments:
            host, port, device_id = simulator.endpoint(instrument.id)
            name = instrument.profile.profile.name
            print(f"{instrument.id}: {name} ({instrument.scenario}) on {host}:{port} device {device_id}", flush=True)
        print("simulating; Ctrl-C stops", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aua_simulator.instruments",
        description="Play the instruments of agent site configs on Modbus TCP, until Ctrl-C.",
    )
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG", help="agent site config (TOML)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated world (default %(default)s)")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between value changes (default %(default)s)")
    parser.add_argument(
        "--demo", action="store_true", help="frequent calibrations and warnings, a mercury episode after 20 s"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log pymodbus and simulator details")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if options.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        loaded = [load_config(path) for path in options.configs]
        simulator = simulator_for_config(
            loaded,
            host=options.host,
            seed=options.seed,
            tick=options.tick,
            demo=options.demo,
        )
    except (ConfigError, ValueError) as error:
        print(error, file=sys.stderr)
        return 2
    try:
        asyncio.run(_run_until_stopped(simulator))
    except OSError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
