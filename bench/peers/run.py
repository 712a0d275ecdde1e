"""Aua's edge agent, thingsboard-gateway and Node-RED side by side, measured the same way in one run.

    .venv/bin/python -m bench.peers            # 10, 100, 500 devices, 3 interleaved repeats, outages at 100
    .venv/bin/python -m bench.peers --quick    # 10 devices, 1 repeat, short windows and a 10 s outage

One pymodbus process plays N Modbus TCP devices x 30 float32 tags whose values change every second and counts
the distinct tag values it served per second; each run has its own mosquitto (persistence on, saved every
second, as deploy/mosquitto/mosquitto.conf keeps sessions); an independent subscriber counts the distinct values
each system delivered (bench/peers/counter.py). Per system and N: tags delivered per CPU-second of the whole
process tree, its RSS, Modbus requests per device and cycle, values delivered per second, and served vs
delivered over the window. At N=100 (10 in --quick): the broker is killed with kill -9 for 30 s, once alone and
once with the collector itself killed with kill -9 (and restarted) in the middle of the outage; served vs
delivered is counted over the whole window after the systems had time to catch up.

Peers are installed into bench/.peers-cache (git-ignored): thingsboard-gateway 3.8.x from PyPI in its own venv,
Node-RED 4 and node-red-contrib-modbus 5.23.3 from npm. Results: bench/results/peers.{md,json} and
peers-*.png (a --quick run writes to bench/.peers-cache/results unless --out says otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.peers import measure, report
from bench.peers.counter import Counter
from bench.peers.simulator import TAGS
from bench.peers.systems import ROOT, SYSTEMS, Launch

sys.path.insert(0, str(ROOT / "tests"))
from servers import MosquittoServer  # tests/servers.py starts mosquitto for the tests too

CACHE = ROOT / "bench" / ".peers-cache"
RESULTS = ROOT / "bench" / "results"
STARTUP_TIMEOUT = 120.0
DRAIN_TIMEOUT = 90.0


class PersistentBroker(MosquittoServer):
    """The tests' mosquitto with persistence saved every second, so a kill -9 keeps the subscriber's session."""

    name = "mosquitto"

    def config_text(self) -> str:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        return super().config_text() + (
            f"persistence true\npersistence_location {data}/\nautosave_interval 1\n"
            "max_queued_messages 1000000\nuser root\n"
        ).replace("persistence false\n", "")


class Simulator:
    def __init__(self, devices: int, folder: Path) -> None:
        self.stats_file = folder / "simulator.json"
        self.log = (folder / "simulator.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.peers.simulator", str(devices), str(self.stats_file)],
            cwd=ROOT,
            stdout=self.log,
            stderr=self.log,
        )
        wait_for(self.stats_file.exists, 60, f"the simulator of {devices} devices to listen")
        self.started = self.stats()["started"]

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_file.read_text())

    def tick(self) -> int:
        return int(time.time() - self.started) + 1

    def tick_starts(self, tick: int) -> float:
        return self.started + tick - 1

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class Collector:
    """The system under test as a process group: started, killed with kill -9, started again."""

    def __init__(self, launch: Launch, folder: Path) -> None:
        self.launch = launch
        self.log_path = folder / "collector.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.launch.argv,
                cwd=self.launch.cwd,
                env={**os.environ, **self.launch.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9 of the whole tree, as a crash or a pulled plug."""
        if self.process is None:
            return
        for pid in reversed(measure.tree(self.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except FileNotFoundError:
            return ""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def sleep_until(epoch: float) -> None:
    time.sleep(max(0.0, epoch - time.time()))


def drain(counter: Counter, first: int, last: int, quiet: float = 3.0) -> float:
    """Wait until values read after the window arrive (a system with a backlog delivers in order) and none of
    the window's arrive for `quiet` seconds, at most DRAIN_TIMEOUT; returns how long it took."""
    began = time.monotonic()
    seen, since = counter.delivered(first, last), time.monotonic()
    while time.monotonic() - began < DRAIN_TIMEOUT:
        time.sleep(0.5)
        now = counter.delivered(first, last)
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet and counter.latest_tick() > last + 2:
            break
    return time.monotonic() - began


def agent_metrics(port: int | None) -> dict[str, float]:
    """Cycles that overran the interval and requests that failed, from the agent's Prometheus endpoint."""
    if port is None:
        return {}
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and line[0] != "#":
            name = line.split("{")[0].split(" ")[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def window_counts(simulator: Simulator, first: int, last: int) -> dict[str, int]:
    wait_for(lambda: simulator.stats()["tick"] > last, 10, "the simulator's counts of the window")
    stats = simulator.stats()

    def total(key: str) -> int:
        return sum(count for tick, count in stats[key].items() if first <= int(tick) <= last)

    return {"served": total("served"), "requests": total("requests"), "tag_reads": total("tag_reads")}


def measure_run(
    system: str,
    devices: int,
    window: float,
    cache: Path,
    *,
    outage: float | None,
    collector_kill: bool,
    keep: bool = False,
) -> dict[str, Any]:
    """One run: a fresh simulator, broker, subscriber and system; steady window, or an outage window."""
    peer = SYSTEMS[system]
    folder = Path(tempfile.mkdtemp(prefix=f"peers-{system}-{devices}-"))
    try:
        simulator = Simulator(devices, folder)
        broker = PersistentBroker(folder / "broker")
        collector: Collector | None = None
        counter: Counter | None = None
        try:
            broker.start()
            counter = Counter(broker.host, broker.port, devices, f"bench-counter-{os.getpid()}")
            ports = simulator.stats()["ports"]
            collector = Collector(peer.launch(folder, ports, broker.port, cache), folder)
            began = time.monotonic()
            expected = devices * TAGS

            def publishing() -> bool:
                assert collector is not None
                assert counter is not None
                if not collector.alive():
                    raise RuntimeError(f"{system} exited during start-up:\n{collector.tail()}")
                return counter.received > 0

            wait_for(publishing, STARTUP_TIMEOUT, f"{system} to deliver its first value")
            startup = time.monotonic() - began
            # Up to speed: a full second's worth arriving per second, or a rate that stopped rising (a system
            # that cannot keep up is measured as it is, not waited for).
            previous = 0.0
            for _ in range(15):
                before = counter.received
                time.sleep(2)
                rate = (counter.received - before) / 2
                if rate >= 0.95 * expected or (previous and rate <= 1.05 * previous):
                    break
                previous = rate
            time.sleep(3)  # settle: every connection open, first buffers filled
            first = simulator.tick() + 1
            span = window if outage is None else outage + 30.0
            last = first + int(span) - 1
            sleep_until(simulator.tick_starts(first))
            cpu0, wall0 = measure.cpu_seconds(collector.pid), time.time()
            simulator_cpu0, received0 = measure.cpu_seconds(simulator.process.pid), counter.received
            metrics0 = agent_metrics(collector.launch.metrics_port)
            rss_peak = measure.rss_mb(collector.pid)
            killed_at = None
            if outage is not None:
                sleep_until(wall0 + 10)
                broker.kill()
                if collector_kill:
                    sleep_until(wall0 + 10 + outage / 2)
                    collector.kill()
                    killed_at = time.time() - wall0
                    collector.start()
                sleep_until(wall0 + 10 + outage)
                broker.start()
            while time.time() < simulator.tick_starts(last + 1):
                rss_peak = max(rss_peak, measure.rss_mb(collector.pid))
                time.sleep(min(1.0, max(0.0, simulator.tick_starts(last + 1) - time.time())))
            cpu1, wall1 = measure.cpu_seconds(collector.pid), time.time()
            simulator_cpu, received = measure.cpu_seconds(simulator.process.pid) - simulator_cpu0, counter.received
            metrics1 = agent_metrics(collector.launch.metrics_port)
            rss = measure.rss_mb(collector.pid)
            counts = window_counts(simulator, first, last)
            catch_up = drain(counter, first, last)
            delivered = counter.delivered(first, last)
            # the killed tree's CPU is lost with it: count it as measured until the kill only when no kill happened
            cpu = cpu1 - cpu0 if killed_at is None else None
            seconds = wall1 - wall0
            return {
                "system": system,
                "devices": devices,
                "kind": "steady" if outage is None else ("broker+collector" if collector_kill else "broker"),
                "window_s": round(seconds, 2),
                "startup_s": round(startup, 1),
                "cpu_s": None if cpu is None else round(cpu, 3),
                "cpu_percent": None if cpu is None else round(100 * cpu / seconds, 1),
                "tags_per_cpu_s": round((received - received0) / cpu) if cpu else None,
                "rss_mb": round(rss, 1),
                "rss_peak_mb": round(max(rss_peak, rss), 1),
                "requests_per_device_cycle": round(counts["requests"] / (devices * (last - first + 1)), 2),
                "delivered_per_s": round((received - received0) / seconds),
                "simulator_cpu_percent": round(100 * simulator_cpu / seconds, 1),
                **{
                    key: metrics1.get(name, 0.0) - metrics0.get(name, 0.0)
                    for key, name in (
                        ("overruns", "aua_agent_cycle_overruns_total"),
                        ("request_errors", "aua_agent_request_errors_total"),
                    )
                    if metrics1 and metrics0 and killed_at is None
                },
                "nominal_per_s": expected,
                **counts,
                "delivered": delivered,
                "lost": counts["served"] - delivered,
                "duplicates": counter.duplicates,
                "wrong": counter.wrong,
                "messages": counter.messages,
                "undecodable": counter.undecodable,
                "undecodable_sample": counter.undecodable_sample,
                "catch_up_s": round(catch_up, 1),
                "collector_killed_at_s": None if killed_at is None else round(killed_at, 1),
            }
        finally:
            if collector is not None:
                collector.stop()
            if counter is not None:
                counter.close()
            broker.terminate()
            simulator.stop()
    finally:
        if keep:
            print(f"(files of this run kept in {folder})", end=" ", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 devices, 1 repeat, 10 s windows, 10 s outage")
    parser.add_argument("--sizes", default=None, help="device counts, default 10,100,500")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"default {','.join(SYSTEMS)}")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats of the steady runs (3)")
    parser.add_argument("--window", type=float, default=None, help="seconds measured per steady run (20)")
    parser.add_argument("--outage", type=float, default=None, help="seconds the broker is down (30); 0: none")
    parser.add_argument("--outage-devices", type=int, default=None, help="devices during the outages (100)")
    parser.add_argument(
        "--thingsboard-max", type=int, default=100, help="largest N for thingsboard-gateway, which sends one "
        "request per tag: 500 devices are 15,000 requests/s, more than one simulator process serves (100)"
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="results folder (bench/results)")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--keep", action="store_true", help="keep each run's files and logs (in /tmp)")
    options = parser.parse_args()
    # Stopped with kill PID or Ctrl-C (also when started in the background, where SIGINT comes ignored): the
    # `finally` blocks still stop the system, broker and simulator of the current run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    quick = options.quick
    sizes = [int(s) for s in (options.sizes or ("10" if quick else "10,100,500")).split(",")]
    repeats = options.repeats or (1 if quick else 3)
    window = options.window or (10.0 if quick else 20.0)
    outage = options.outage if options.outage is not None else (10.0 if quick else 30.0)
    outage_devices = options.outage_devices or (10 if quick else 100)
    out = options.out or (options.cache / "results" if quick else RESULTS)
    systems = options.systems.split(",")
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"--systems: unknown {sorted(unknown)}; known: {', '.join(SYSTEMS)}")

    options.cache.mkdir(parents=True, exist_ok=True)
    versions = {}
    for system in systems:
        print(f"installing {system} into {options.cache} ...", flush=True)
        versions[system] = SYSTEMS[system].install(options.cache)
        print(f"  {versions[system]}", flush=True)

    began = datetime.now(UTC)
    loads = [load()]
    rows: list[dict[str, Any]] = []
    plan: list[tuple[str, int, float | None, bool]] = []
    for repeat in range(repeats):
        for size in sizes:
            order = systems[repeat % len(systems) :] + systems[: repeat % len(systems)]  # interleaved
            plan += [(system, size, None, False) for system in order]
    if outage > 0:
        plan += [(system, outage_devices, outage, False) for system in systems]
        plan += [(system, outage_devices, outage, True) for system in systems]
    for system, size, down, kill in plan:
        if system == "thingsboard-gateway" and size > options.thingsboard_max:
            continue
        what = "steady" if down is None else f"{down:.0f} s broker outage" + (" + collector kill" if kill else "")
        print(f"{system:<20} N={size:<4} {what} ...", end=" ", flush=True)
        try:
            row = measure_run(system, size, window, options.cache, outage=down, collector_kill=kill, keep=options.keep)
        except RuntimeError as error:
            print(f"FAILED: {error}", flush=True)
            rows.append({"system": system, "devices": size, "kind": "failed", "error": str(error)[:2000]})
            continue
        rows.append(row)
        loads.append(load())
        efficiency = (
            f"{row['tags_per_cpu_s']:,} tags/CPU-s, {row['cpu_percent']} % CPU, " if row["tags_per_cpu_s"] else ""
        )
        print(
            f"{efficiency}{row['rss_mb']} MB, {row['requests_per_device_cycle']} req/device/s, served "
            f"{row['served']:,} -> delivered {row['delivered']:,} (dup {row['duplicates']}, wrong {row['wrong']}), "
            f"simulator {row['simulator_cpu_percent']} % CPU"
            + (
                f", agent overruns {row['overruns']:.0f}, failed requests {row['request_errors']:.0f}"
                if "overruns" in row
                else ""
            ),
            flush=True,
        )
    meta = {
        "started": began.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions,
        "loads": loads,
        "quick": quick,
        "repeats": repeats,
        "window_s": window,
        "outage_s": outage,
        "outage_devices": outage_devices,
        "thingsboard_max": options.thingsboard_max,
        "command": "python -m bench.peers " + " ".join(sys.argv[1:]),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    table = report.markdown(meta, rows)
    (out / "peers.md").write_text(table)
    report.plots(meta, rows, out)
    print("\n" + table)
    print(f"written to {out}")
    return 0 if all(row["kind"] != "failed" for row in rows) else 1
