"""Request planner vs one request per tag, in one run: requests per poll cycle and cycle time, 300 tags.

    .venv/bin/python bench/edge_agent_planner.py [--cycles 30]

10 simulated instruments x 30 float32 tags (input registers 0..59) on one Modbus TCP port (pymodbus server in a
child process), read by the agent's own drivers exactly as a poll does (instruments in parallel, each
instrument's requests in turn). Prints both plans' requests per cycle, measured cycle time on loopback, and what
the same plan would cost on a 9600-baud RTU line (bytes on the wire plus the inter-frame gaps, no device delay).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _harness import TreeMonitor, machine_note, markdown_table, spread  # noqa: E402

from edge_agent import rtu  # noqa: E402
from edge_agent.config import load_config  # noqa: E402
from edge_agent.modbus_drivers import build_drivers  # noqa: E402
from edge_agent.planner import ReadRequest, plan, spans_of  # noqa: E402

INSTRUMENTS = 10
TAGS = 30


def write_site(folder: Path, port: int, instruments: int = INSTRUMENTS, tags: int = TAGS) -> Path:
    """A profile of `tags` float32 input registers and a site of `instruments` devices using it."""
    profile = ['[profile]\nname = "bench-30-floats"\nbyte_order = "ABCD"\n']
    profile += [
        f'[[tag]]\nname = "t{i:02d}"\nfunction = "input"\naddress = {2 * i}\ntype = "float32"\nunit = "mg/m3"\n'
        for i in range(tags)
    ]
    (folder / "bench-profile.toml").write_text("\n".join(profile))
    site = [
        f'[agent]\nsite = "bench"\nid = "bench-agent"\npoll_interval = 1.0\noutbox = "{folder / "outbox.sqlite"}"\n',
        '[mqtt]\nhost = "127.0.0.1"\nport = 1883\n',
    ]
    site += [
        f'[[instrument]]\nid = "dev{n:03d}"\nprofile = "bench-profile.toml"\nport = {port}\ndevice_id = {n + 1}\n'
        for n in range(instruments)
    ]
    path = folder / "site.toml"
    path.write_text("\n".join(site))
    return path


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_simulator(config: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "aua_simulator.instruments", str(config)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("simulating"):
            return process
    raise RuntimeError("simulator did not start")


def wire_seconds(requests: list[ReadRequest], baudrate: int = 9600) -> float:
    """Time the requests would take on an RTU line: request and answer bytes plus one gap before each frame."""
    total = 0.0
    for request in requests:
        size = rtu.REQUEST_FRAME_SIZE + rtu.response_size(request.function.code, request.count)
        total += rtu.transmit_time(size, baudrate) + 2 * rtu.inter_frame_gap(baudrate)
    return total


async def measure(config: Path, cycles: int) -> tuple[list[tuple[str, int, str, float]], dict[str, list[float]]]:
    loaded = load_config(config)
    plans = {
        "planner (max_gap 10)": {i.id: plan(spans_of(i.profile), max_gap=i.config.max_gap) for i in loaded.instruments},
        "one request per tag": {
            i.id: [ReadRequest(s.function, s.address, s.count, (s,)) for s in spans_of(i.profile)]
            for i in loaded.instruments
        },
    }
    drivers = build_drivers(loaded.instruments)
    times: dict[str, list[float]] = {name: [] for name in plans}

    async def read_all(requests: list[ReadRequest], instrument: str) -> None:
        driver = drivers.by_instrument[instrument]
        for request in requests:
            await driver.read(request)

    try:
        for by_instrument in plans.values():  # warm up: connect, first reads
            await asyncio.gather(*(read_all(r, i) for i, r in by_instrument.items()))
        for _ in range(cycles):  # alternate so both see the same conditions
            for name, by_instrument in plans.items():
                started = time.perf_counter()
                await asyncio.gather(*(read_all(r, i) for i, r in by_instrument.items()))
                times[name].append(time.perf_counter() - started)
    finally:
        await drivers.close()
    rows = []
    for name, by_instrument in plans.items():
        requests = sum(len(r) for r in by_instrument.values())
        one_instrument = next(iter(by_instrument.values()))
        rows.append(
            (
                name,
                requests,
                spread((t * 1000 for t in times[name]), ".1f"),
                wire_seconds(one_instrument) * len(by_instrument),
            )
        )
    return rows, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=30)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = write_site(Path(folder), free_port())
        simulator = start_simulator(config)
        try:
            with TreeMonitor(os.getpid(), simulator.pid) as monitor:
                rows, times = asyncio.run(measure(config, options.cycles))
        finally:
            simulator.terminate()
            simulator.wait(10)
    tags = INSTRUMENTS * TAGS
    print(f"\n{tags} tags ({INSTRUMENTS} x {TAGS} float32), Modbus TCP on loopback, {options.cycles} cycles\n")
    headers = ["plan", "requests/cycle", "cycle ms, median (min–max)", "9600-baud line, s/cycle"]
    print(markdown_table(headers, [(name, requests, ms, f"{wire:.2f}") for name, requests, ms, wire in rows]))
    assert monitor.usage is not None
    print(machine_note([monitor.usage]))
    planner, baseline = rows
    shorter = statistics.median(times["one request per tag"]) / statistics.median(times["planner (max_gap 10)"])
    print(
        f"\nplanner: {baseline[1] / planner[1]:.0f}x fewer requests, cycle {shorter:.1f}x shorter on"
        f" TCP (medians); on a 9600-baud line {baseline[3]:.1f} s -> {planner[3]:.1f} s per cycle"
        " (one request per tag cannot poll 300 tags every second on one line)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
