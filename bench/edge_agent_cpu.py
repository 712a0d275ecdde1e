"""Agent CPU and memory polling 10, 100 and 500 simulated instruments x 30 float32 tags every second.

    .venv/bin/python bench/edge_agent_cpu.py [--window 20] [--sizes 10,100,500]

The agent runs as `edge-agent run CONFIG` (its own process, outbox on disk, publishing QoS 1 to a local
mosquitto); the instruments are Modbus TCP devices, one port each, played by `python -m edge_agent.simulator`
in another process. After a warm-up, the agent's CPU time (utime + stime from /proc) and memory (VmRSS, VmHWM)
are taken over a window; the agent's Prometheus endpoint tells the cycles it completed, how many overran the
interval, failed requests and the outbox backlog, so a run that did not keep up shows as such. No peer figure
is typed in here: a comparison must measure the peers in the same run, on the same simulator.
Bounded: about (15 + window) seconds per size, all processes stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAGS = 30
TICKS = os.sysconf("SC_CLK_TCK")

RSS_LIMIT_MB = 150


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def write_site(folder: Path, ports: list[int], broker_port: int, metrics_port: int) -> Path:
    profile = ['[profile]\nname = "bench-30-floats"\nbyte_order = "ABCD"\n']
    profile += [
        f'[[tag]]\nname = "t{i:02d}"\nfunction = "input"\naddress = {2 * i}\ntype = "float32"\nunit = "mg/m3"\n'
        for i in range(TAGS)
    ]
    (folder / "bench-profile.toml").write_text("\n".join(profile))
    site = [
        f'[agent]\nsite = "bench"\nid = "bench-agent"\npoll_interval = 1.0\noutbox = "{folder / "outbox.sqlite"}"\n'
        f"metrics_port = {metrics_port}\n",
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n',
    ]
    site += [
        f'[[instrument]]\nid = "dev{n:03d}"\nprofile = "bench-profile.toml"\nport = {port}\ndevice_id = 1\n'
        for n, port in enumerate(ports)
    ]
    path = folder / "site.toml"
    path.write_text("\n".join(site))
    return path


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, in ns resolution (schedstat); /proc/PID/stat counts in 10 ms ticks."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
    if total:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def memory_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss / 1024, peak / 1024


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and line[0] != "#":
            name = line.split("{")[0].split(" ")[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def wait_for(predicate: object, timeout: float, what: str) -> None:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            if predicate():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not happen within {timeout} s")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise SystemExit("mosquitto not found (apt-get install mosquitto)")
    return found


class PortTaken(RuntimeError):
    """Another process took one of the free ports before the simulator bound it: try again with others."""


def run_size(size: int, window: float, folder: Path) -> dict[str, float]:
    broker_port, metrics_port, *ports = free_ports(2 + size)
    config = write_site(folder, ports, broker_port, metrics_port)
    (folder / "mosquitto.conf").write_text(
        f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    )
    processes: list[subprocess.Popen[bytes]] = []
    log = (folder / "bench.log").open("ab")
    try:
        processes.append(
            subprocess.Popen([mosquitto_binary(), "-c", str(folder / "mosquitto.conf")], stdout=log, stderr=log)
        )
        # Values change once an hour (--tick 3600): the agent decodes and sends every value every second all the
        # same, and the simulator does not stall every tick recomputing 15,000 values of its world model at once.
        simulator = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.simulator", "--tick", "3600", str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
        )
        processes.append(simulator)
        assert simulator.stdout is not None
        if not any(line.startswith(b"simulating") for line in simulator.stdout):
            raise PortTaken(f"the simulator did not start (a port was taken?); see {folder / 'bench.log'}")
        agent = subprocess.Popen(
            [str(Path(sys.executable).parent / "edge-agent"), "run", str(config)], stdout=log, stderr=log, cwd=folder
        )
        processes.append(agent)
        wait_for(lambda: scrape(metrics_port).get("aua_agent_cycles_total", 0) >= 3, 60, "three poll cycles")
        time.sleep(2)
        before = scrape(metrics_port)
        cpu_before, started = cpu_seconds(agent.pid), time.monotonic()
        device_before = cpu_seconds(simulator.pid)
        time.sleep(window)
        cpu_after, ended = cpu_seconds(agent.pid), time.monotonic()
        device_cpu = cpu_seconds(simulator.pid) - device_before
        after = scrape(metrics_port)
        rss, peak = memory_mb(agent.pid)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        log.close()
    cycles = after["aua_agent_cycles_total"] - before["aua_agent_cycles_total"]
    cpu = cpu_after - cpu_before
    return {
        "cpu_percent": 100 * cpu / (ended - started),
        "tags_per_cpu_s": cycles * size * TAGS / cpu if cpu else float("inf"),
        "tags_per_s": cycles * size * TAGS / (ended - started),
        "rss_mb": rss,
        "peak_mb": peak,
        "overruns": after["aua_agent_cycle_overruns_total"] - before["aua_agent_cycle_overruns_total"],
        "errors": after.get("aua_agent_request_errors_total", 0) - before.get("aua_agent_request_errors_total", 0),
        "pending": after["aua_agent_outbox_pending"],
        "cycles": cycles,
        "simulator_percent": 100 * device_cpu / (ended - started),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per size (default 20)")
    parser.add_argument("--sizes", default="10,100,500")
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    results = {}
    for size in sizes:
        for attempt in range(3):
            with tempfile.TemporaryDirectory() as folder:
                print(f"measuring {size} instruments x {TAGS} tags for {options.window:.0f} s ...", flush=True)
                try:
                    results[size] = run_size(size, options.window, Path(folder))
                    break
                except PortTaken as error:
                    print(f"  {error}; attempt {attempt + 2} of 3", flush=True)
        else:
            raise SystemExit(f"could not start the simulator for {size} instruments")
    print(f"\nAgent: N Modbus TCP devices x {TAGS} float32 tags, every second, outbox on, QoS 1 to local mosquitto")
    header = f"{'N':>4} {'CPU % (1 core)':>15} {'RSS MB':>7} {'peak MB':>8} {'tags/s':>8} {'tags per CPU-s':>15}"
    print(f"{header} {'overruns':>9} {'errors':>7} {'backlog':>8} {'simulator CPU %':>16}")
    for size, r in results.items():
        print(
            f"{size:>4} {r['cpu_percent']:>15.1f} {r['rss_mb']:>7.0f} {r['peak_mb']:>8.0f} {r['tags_per_s']:>8.0f}"
            f" {r['tags_per_cpu_s']:>15,.0f} {r['overruns']:>9.0f} {r['errors']:>7.0f}"
            f" {r['pending']:>8.0f} {r['simulator_percent']:>16.1f}"
        )
    ok = True
    print()
    if 500 in results:
        verdict = "PASS" if results[500]["peak_mb"] <= RSS_LIMIT_MB else "FAIL"
        ok &= verdict == "PASS"
        print(f"{verdict}: peak RSS at 500 instruments {results[500]['peak_mb']:.0f} MB (limit {RSS_LIMIT_MB} MB)")
    kept_up = all(r["overruns"] == 0 and r["errors"] == 0 for r in results.values())
    print(f"{'PASS' if kept_up else 'FAIL'}: every cycle within the interval and no failed request")
    return 0 if ok and kept_up else 1


if __name__ == "__main__":
    raise SystemExit(main())
