"""Agent CPU and memory polling N simulated instruments x 30 float32 tags every second, against a baseline.

    .venv/bin/python bench/edge_agent_cpu.py [--window 10] [--repeats 3] [--sizes 10,100,500] [--markdown]

The instruments are Modbus TCP devices, one port each, played by `python -m aua_simulator.instruments --tick 1`
in another process: every value changes every second (the subscriber checks it). Two pollers take turns on
the same simulator and the same local mosquitto, interleaved (agent, baseline, agent, baseline, ...):

- the agent, `edge-agent run CONFIG` (its own process, outbox on disk, publishing QoS 1);
- the baseline, bench/_naive_poller.py: the straightforward way (pymodbus's client, one read per device,
  the contract's pydantic models, one QoS 1 message per device, no outbox).

Throughput is what an independent MQTT subscriber on the broker received during the window: readings with a
value, each batch once (a failed read, sent without a value, is not throughput). CPU is the poller's whole
process tree (utime + stime), memory the tree's peak RSS (sampled from the start of the process), and the
machine's load is printed with the results. Each run: a fresh poller, a warm-up of 3 cycles + 2 s, then
`window` seconds measured. Bounded: about 2 x repeats x (8 + window) seconds per size.

The agent's row also has, from its /metrics over the window: overruns (cycles sealed after the next tick was
due), the ticks skipped for every instrument because of them (an overrun less than half an interval late starts
the next tick late instead), late polls (instruments not answered by their cycle's deadline: their readings came
in a later batch) and busy skips (ticks an instrument skipped because its earlier poll was still running).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _delivery import Counts, DeliveryCounter, difference
from _harness import TreeMonitor, TreeUsage, interleave, machine_note, markdown_table, spread

from aua_contract import TopicKind, subscription

ROOT = Path(__file__).resolve().parent.parent
TAGS = 30
SITE = "bench"
AGENT = "bench-agent"
NAIVE = "naive-agent"

RSS_LIMIT_MB = 150


def free_ports(count: int) -> list[int]:
    """Ports free now, below the ephemeral range: on a shared machine every new outgoing connection takes an
    ephemeral port, and with hundreds of them a port picked there is often gone before the simulator binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(10_000, low))
    random.shuffle(candidates)
    ports: list[int] = []
    with ExitStack() as stack:
        for port in candidates:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"fewer than {count} free ports between 10000 and {low}")


def write_site(folder: Path, ports: list[int], broker_port: int, metrics_port: int) -> Path:
    profile = ['[profile]\nname = "bench-30-floats"\nbyte_order = "ABCD"\n']
    profile += [
        f'[[tag]]\nname = "t{i:02d}"\nfunction = "input"\naddress = {2 * i}\ntype = "float32"\nunit = "mg/m3"\n'
        for i in range(TAGS)
    ]
    (folder / "bench-profile.toml").write_text("\n".join(profile))
    site = [
        f'[agent]\nsite = "{SITE}"\nid = "{AGENT}"\npoll_interval = 1.0\noutbox = "{folder / "outbox.sqlite"}"\n'
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


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and line[0] != "#":
            name = line.split("{")[0].split(" ")[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            if predicate():
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


def sleep_to_mid_second() -> None:
    """Windows start half-way between poll ticks: a window of N whole seconds then sees N cycles' batches arrive
    (not N +- 1, as a window opened at any moment would)."""
    time.sleep((0.5 - time.time() % 1) % 1)


def broker_listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), 1):
        return True


class PortTaken(RuntimeError):
    """Another process took one of the free ports before the simulator bound it: try again with others."""


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in reversed(processes):
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass(frozen=True)
class Run:
    usage: TreeUsage
    peak_rss_mb: float
    counts: Counts
    expected: int
    """readings the window should have delivered: instruments x tags x whole seconds"""
    overruns: float | None = None
    backlog: float | None = None
    late_polls: float | None = None
    """polls not finished by their cycle's deadline (their readings went into a later batch)"""
    busy_skips: float | None = None
    """ticks an instrument skipped because its earlier poll was still running"""
    ticks_skipped: float | None = None
    """ticks skipped for every instrument (an overrun more than half an interval late)"""

    @property
    def tags_per_cpu_s(self) -> float:
        return self.counts.delivered / self.usage.cpu_s if self.usage.cpu_s else float("inf")

    @property
    def delivered_per_s(self) -> float:
        return self.counts.delivered / self.usage.wall_s


class Bench:
    """One simulator and one broker for a size; pollers started and measured one at a time."""

    def __init__(self, size: int, window: float, folder: Path) -> None:
        self.size, self.window, self.folder = size, window, folder
        self.broker_port, self.metrics_port, *self.ports = free_ports(2 + size)
        self.config = write_site(folder, self.ports, self.broker_port, self.metrics_port)
        (folder / "mosquitto.conf").write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages 1000\n"
        )
        self.log = (folder / "bench.log").open("ab")
        self.services: list[subprocess.Popen[bytes]] = []
        self.counter: DeliveryCounter | None = None

    def __enter__(self) -> Bench:
        try:
            self.services.append(
                subprocess.Popen(
                    [mosquitto_binary(), "-c", str(self.folder / "mosquitto.conf")], stdout=self.log, stderr=self.log
                )
            )
            simulator = subprocess.Popen(
                [sys.executable, "-m", "aua_simulator.instruments", "--tick", "1", str(self.config)],
                stdout=subprocess.PIPE,
                stderr=self.log,
                cwd=ROOT,
            )
            self.services.append(simulator)
            assert simulator.stdout is not None
            if not any(line.startswith(b"simulating") for line in simulator.stdout):
                raise PortTaken(f"the simulator did not start (a port was taken?); see {self.folder / 'bench.log'}")  # noqa: TRY301
            self.simulator = simulator
            wait_for(lambda: broker_listening(self.broker_port), 10, "the broker listening")
            self.counter = DeliveryCounter("127.0.0.1", self.broker_port, subscription(TopicKind.READINGS, SITE))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.counter is not None:
            self.counter.close()
        stop(self.services)
        self.log.close()

    def measure(self, argv: list[str], agent: str, warmed_up: Callable[[], bool]) -> Run:
        assert self.counter is not None
        self.counter.forget(agent)
        process = subprocess.Popen(argv, stdout=self.log, stderr=self.log, cwd=self.folder)
        try:
            with TreeMonitor(process.pid) as lifetime:
                wait_for(lambda: process.poll() is None and warmed_up(), 60, f"{agent}: three poll cycles")
                time.sleep(2)
                sleep_to_mid_second()
                before = self.counter.snapshot(agent)
                metrics = scrape(self.metrics_port) if agent == AGENT else {}
                with TreeMonitor(process.pid) as window:
                    time.sleep(self.window)
                after = self.counter.snapshot(agent)
                metrics_after = scrape(self.metrics_port) if agent == AGENT else {}
        except RuntimeError as error:
            self.log.flush()
            tail = (self.folder / "bench.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{error}; exit status {process.poll()}; log:\n{tail}") from None
        finally:
            stop([process])
        assert window.usage is not None
        assert lifetime.usage is not None
        counts = difference(after, before)
        run = Run(
            usage=window.usage,
            peak_rss_mb=lifetime.usage.peak_rss_mb,
            counts=counts,
            expected=round(window.usage.wall_s) * self.size * TAGS,
        )
        if metrics:

            def grown(name: str) -> float:
                return metrics_after.get(name, 0.0) - metrics.get(name, 0.0)

            run = Run(
                **{
                    **run.__dict__,
                    "overruns": grown("aua_agent_cycle_overruns_total"),
                    "backlog": metrics_after["aua_agent_outbox_pending"],
                    "late_polls": grown("aua_agent_late_polls_total"),
                    "busy_skips": grown("aua_agent_busy_skips_total"),
                    "ticks_skipped": grown("aua_agent_ticks_skipped_total"),
                }
            )
        return run

    def agent(self, _round: int) -> Run:
        argv = [str(Path(sys.executable).parent / "edge-agent"), "run", str(self.config)]
        for _attempt in range(3):
            (self.folder / "outbox.sqlite").unlink(missing_ok=True)
            try:
                return self.measure(
                    argv, AGENT, lambda: scrape(self.metrics_port).get("aua_agent_cycles_total", 0) >= 3
                )
            except RuntimeError as error:
                if "port is in use" not in str(error):
                    raise
                # another process on the shared machine took the metrics port: move to a free one
                old, (self.metrics_port,) = self.metrics_port, free_ports(1)
                text = self.config.read_text().replace(
                    f"metrics_port = {old}\n", f"metrics_port = {self.metrics_port}\n"
                )
                self.config.write_text(text)
        raise RuntimeError("the agent's metrics port was taken three times")

    def naive(self, _round: int) -> Run:
        assert self.counter is not None
        ports = ",".join(str(port) for port in self.ports)
        argv = [sys.executable, str(ROOT / "bench" / "_naive_poller.py"), str(self.broker_port), SITE, NAIVE, ports]
        counter = self.counter
        return self.measure(argv, NAIVE, lambda: counter.snapshot(NAIVE).batches >= 3 * self.size)


def run_size(size: int, window: float, repeats: int) -> tuple[dict[str, list[Run]], float]:
    for attempt in range(3):
        with tempfile.TemporaryDirectory() as folder:
            try:
                with Bench(size, window, Path(folder)) as bench:
                    with TreeMonitor(bench.simulator.pid) as simulator:
                        runs = interleave([("agent", bench.agent), ("baseline", bench.naive)], repeats)
                    assert simulator.usage is not None
                    return runs, simulator.usage.cpu_cores
            except PortTaken as error:
                print(f"  {error}; attempt {attempt + 2} of 3", flush=True)
    raise SystemExit(f"could not start the simulator for {size} instruments")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=10, help="whole seconds measured per run (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each poller (default 3)")
    parser.add_argument("--sizes", default="10,100,500")
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    results: dict[int, dict[str, list[Run]]] = {}
    simulator_cores: dict[int, float] = {}
    for size in sizes:
        print(f"{size} instruments x {TAGS} tags, {options.repeats} x {options.window:.0f} s each ...", flush=True)
        try:
            results[size], simulator_cores[size] = run_size(size, options.window, options.repeats)
        except (SystemExit, RuntimeError) as error:  # the sizes measured so far are still printed
            print(f"  {size} instruments not measured: {error}", flush=True)

    print(f"\nN Modbus TCP devices x {TAGS} float32 tags every second (values change every second), QoS 1 to a")
    print("local mosquitto; median (min–max) of the interleaved runs; delivered = counted by a subscriber.\n")
    rows = []
    for size, by_poller in results.items():
        for name, runs in by_poller.items():
            changed = sum(r.counts.changed for r in runs)
            compared = changed + sum(r.counts.unchanged for r in runs)
            rows.append(
                (
                    name,
                    size,
                    spread(r.tags_per_cpu_s for r in runs),
                    spread(r.delivered_per_s for r in runs),
                    spread((r.counts.delivered / r.expected * 100 for r in runs), ".1f", " %"),
                    sum(r.counts.failed for r in runs),
                    spread((r.usage.cpu_cores * 100 for r in runs), ".1f"),
                    spread(r.peak_rss_mb for r in runs),
                    f"{changed / compared * 100:.0f} %" if compared else "-",
                    "-" if runs[0].overruns is None else f"{sum(r.overruns or 0 for r in runs):.0f}",
                    "-" if runs[0].ticks_skipped is None else f"{sum(r.ticks_skipped or 0 for r in runs):.0f}",
                    "-" if runs[0].late_polls is None else f"{sum(r.late_polls or 0 for r in runs):.0f}",
                    "-" if runs[0].busy_skips is None else f"{sum(r.busy_skips or 0 for r in runs):.0f}",
                )
            )
    headers = ["poller", "N", "tags per CPU-s", "delivered/s", "delivered of expected", "failed reads",
               "CPU % of a core", "peak RSS MB (tree)", "values changed", "overruns", "ticks skipped", "late polls",
               "busy skips"]  # fmt: skip
    print(markdown_table(headers, rows))
    print()
    print("simulator CPU: " + ", ".join(f"N={n}: {c * 100:.0f} % of a core" for n, c in simulator_cores.items()))
    print(machine_note(r.usage for by_poller in results.values() for runs in by_poller.values() for r in runs))
    ok = True
    print()
    if 500 in results:
        peak = max(r.peak_rss_mb for r in results[500]["agent"])
        verdict = "PASS" if peak <= RSS_LIMIT_MB else "FAIL"
        ok &= verdict == "PASS"
        print(f"{verdict}: agent's peak tree RSS at 500 instruments {peak:.0f} MB (limit {RSS_LIMIT_MB} MB)")
    agent_runs = [r for by_poller in results.values() for r in by_poller["agent"]]
    on_time = all(r.overruns == 0 for r in agent_runs)
    print(f"{'PASS' if on_time else 'FAIL'}: agent: every cycle sealed before the next tick (no overrun)")
    failed = sum(r.counts.failed for r in agent_runs)
    baseline_failed = sum(r.counts.failed for by_poller in results.values() for r in by_poller["baseline"])
    print(
        f"{'PASS' if failed == 0 else 'FAIL'}: agent: no failed read ({failed}; the baseline, on the same simulator:"
        f" {baseline_failed})"
    )
    return 0 if ok and on_time and failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
