"""Agent tags per CPU-second with an empty outbox and with the outbox full at its byte bound, same run, same way.

    .venv/bin/python bench/edge_agent_outbox.py [--instruments 200] [--window 8] [--repeats 3] [--max-bytes N]

Issue 12's steady-state target: at 500 instruments x 30 tags the agent with its outbox full (every append
evicts the oldest batches) does within 10 % of its tags per CPU-second with an empty outbox. One mosquitto and
one simulator (`python -m aua_simulator.instruments`, a Modbus TCP port per instrument) run throughout; the agent
(`edge-agent run`, its own process) is started for each measurement, alternately on a fresh outbox and on
one filled to its `outbox_max_bytes` before the first run (bulk insert of acknowledged batches of the size the
agent seals, then opened by the agent as an older file would be: counters from one count). After
warm-up the agent's CPU (its process tree) is taken over the window, and the readings an independent MQTT
subscriber received in it (with a value; failed reads are not throughput); the simulator's values change every
second. Overruns from the agent's /metrics, the machine's load printed with the results.
Prints each run, then the median and spread per mode. The defaults (200 instruments, a 256 MiB bound) keep a run
near 2 minutes on a shared 2-core machine, where 500 instruments overran their cycles whatever the outbox held;
`--instruments 500 --max-bytes 1073741824` is the full-size run (the default bound; the fill alone takes 6-30 s).
Each operation's cost does not depend on the outbox's size (tests/edge_agent/test_outbox.py counts it), so the smaller
bound
measures the same steady state: every append evicts.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from _delivery import DeliveryCounter, difference
from _harness import TreeMonitor, TreeUsage, machine_note, markdown_table, spread
from edge_agent_cpu import (
    AGENT,
    ROOT,
    SITE,
    TAGS,
    PortTaken,
    broker_listening,
    free_ports,
    mosquitto_binary,
    scrape,
    sleep_to_mid_second,
    wait_for,
    write_site,
)

from aua_contract import Quality, TopicKind, subscription
from edge_agent.config import AgentSection
from edge_agent.outbox import Outbox
from edge_agent.sealing import Sample, batch_payload

TARGET = 0.10
"""Full may cost at most this much fewer tags per CPU-second than empty."""


def batch_bytes(readings: int) -> int:
    """Bytes of a sealed batch of `readings` float readings as the bench's instruments give them."""
    now = datetime.now(UTC)
    samples = [Sample(f"dev{i // TAGS:03d}", f"t{i % TAGS:02d}", 12.345678, "mg/m3", now, Quality.OK, None)
               for i in range(readings)]  # fmt: skip
    return len(batch_payload("bench", "bench-agent", 123_456, now, samples))


def fill(path: Path, max_bytes: int, size: int) -> int:
    """An outbox at its byte bound: acknowledged batches of `size` bytes, written in one transaction."""
    Outbox(path).close()
    count = max_bytes // size
    db = sqlite3.connect(path, isolation_level=None)
    numbers = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?) "
    db.execute("BEGIN")
    db.execute(numbers + "INSERT INTO batch (seq, created_ns, payload) SELECT i, 0, zeroblob(?) FROM n", (count, size))
    db.execute(numbers + "INSERT INTO acked (seq, size, acked_ns) SELECT i, ?, ? FROM n", (count, size, time.time_ns()))
    db.execute("UPDATE counter SET value = ? WHERE name = 'next_seq'", (count,))
    db.execute("DELETE FROM counter WHERE name = 'schema'")
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return count


def files_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / (1 << 20)


def measure(config: Path, metrics_port: int, window: float, log: Path, counter: DeliveryCounter) -> dict[str, float]:
    """One run: a fresh agent process, warm-up, then `window` seconds; throughput is what the subscriber got."""
    counter.forget(AGENT)  # each mode's outbox numbers batches its own way
    with log.open("ab") as output:
        agent = subprocess.Popen(
            [str(Path(sys.executable).parent / "edge-agent"), "run", str(config)],
            stdout=output,
            stderr=output,
            cwd=config.parent,
        )
        try:
            with TreeMonitor(agent.pid) as lifetime:
                wait_for(lambda: scrape(metrics_port).get("aua_agent_cycles_total", 0) >= 2, 60, "two poll cycles")
                time.sleep(1)
                sleep_to_mid_second()
                before, delivered_before = scrape(metrics_port), counter.snapshot(AGENT)
                with TreeMonitor(agent.pid) as monitor:
                    time.sleep(window)
                after, delivered_after = scrape(metrics_port), counter.snapshot(AGENT)
        finally:
            agent.kill()  # nothing to flush for a bench, and the outbox survives kill -9 by design
            agent.wait(10)
    usage: TreeUsage | None = monitor.usage
    assert usage is not None
    assert lifetime.usage is not None
    counts = difference(delivered_after, delivered_before)
    return {
        "tags_per_cpu_s": counts.delivered / usage.cpu_s if usage.cpu_s else float("inf"),
        "delivered_per_s": counts.delivered / usage.wall_s,
        "failed": counts.failed,
        "cpu_percent": 100 * usage.cpu_cores,
        "cycles": after["aua_agent_cycles_total"] - before["aua_agent_cycles_total"],
        "overruns": after["aua_agent_cycle_overruns_total"] - before["aua_agent_cycle_overruns_total"],
        "dropped": after["aua_agent_outbox_dropped_total"],
        "outbox_mb": after["aua_agent_outbox_bytes"] / (1 << 20),
        "rss_mb": lifetime.usage.peak_rss_mb,
        "others_cores": usage.others_cores,
        "load_before": usage.load_before,
        "load_after": usage.load_after,
        "wall_s": usage.wall_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instruments", type=int, default=200)
    parser.add_argument("--window", type=int, default=8, help="whole seconds measured per run (default 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--max-bytes", type=int, default=256 << 20, help="outbox_max_bytes in both modes' configs (default 256 MiB)"
    )
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a stopped bench still stops its children
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        broker_port, metrics_port, *ports = free_ports(2 + options.instruments)
        sites = {}
        for mode in ("empty", "full"):
            (folder / mode).mkdir()
            sites[mode] = write_site(folder / mode, ports, broker_port, metrics_port)
            text = sites[mode].read_text()
            bound = f"metrics_port = {metrics_port}\noutbox_max_bytes = {options.max_bytes}\n"
            sites[mode].write_text(text.replace(f"metrics_port = {metrics_port}\n", bound, 1))
        size = batch_bytes(AgentSection.model_fields["batch_max_readings"].default)
        began = time.monotonic()
        count = fill(folder / "full" / "outbox.sqlite", options.max_bytes, size)
        print(
            f"filled the outbox to {options.max_bytes / (1 << 20):,.0f} MiB: {count:,} acknowledged batches of"
            f" {size:,} bytes in {time.monotonic() - began:.1f} s;"
            f" file {files_mb(folder / 'full' / 'outbox.sqlite'):,.0f} MiB",
            flush=True,
        )
        (folder / "mosquitto.conf").write_text(
            f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 1000\n"
        )
        log = folder / "bench.log"
        processes: list[subprocess.Popen[bytes]] = []
        processes_closing: list[Callable[[], None]] = []
        results: dict[str, list[dict[str, float]]] = {"empty": [], "full": []}
        try:
            with log.open("ab") as output:
                processes.append(
                    subprocess.Popen(
                        [mosquitto_binary(), "-c", str(folder / "mosquitto.conf")], stdout=output, stderr=output
                    )
                )
                simulator = subprocess.Popen(
                    [sys.executable, "-m", "aua_simulator.instruments", "--tick", "1", str(sites["empty"])],
                    stdout=subprocess.PIPE,
                    stderr=output,
                    cwd=ROOT,
                )
                processes.append(simulator)
                assert simulator.stdout is not None
                if not any(line.startswith(b"simulating") for line in simulator.stdout):
                    raise PortTaken(f"the simulator did not start; see {log}")
            wait_for(lambda: broker_listening(broker_port), 10, "the broker listening")
            counter = DeliveryCounter("127.0.0.1", broker_port, subscription(TopicKind.READINGS, SITE))
            processes_closing.append(counter.close)
            for repeat in range(options.repeats):
                for mode in ("empty", "full"):
                    outbox = folder / mode / "outbox.sqlite"
                    if mode == "empty":
                        for path in outbox.parent.glob(outbox.name + "*"):
                            path.unlink()
                    result = measure(sites[mode], metrics_port, options.window, log, counter)
                    results[mode].append(result)
                    print(
                        f"run {repeat + 1} {mode:>5}: {result['tags_per_cpu_s']:>9,.0f} tags per CPU-s"
                        f" ({result['delivered_per_s']:,.0f} delivered/s, {result['failed']:.0f} failed reads),"
                        f" CPU {result['cpu_percent']:5.1f} %, {result['cycles']:.0f} cycles,"
                        f" {result['overruns']:.0f} overruns, outbox {result['outbox_mb']:,.0f} MiB"
                        f" (file {files_mb(outbox):,.0f} MiB), dropped {result['dropped']:.0f},"
                        f" RSS {result['rss_mb']:.0f} MB",
                        flush=True,
                    )
        finally:
            for close in processes_closing:
                close()
            for process in reversed(processes):
                process.send_signal(signal.SIGTERM)
            for process in reversed(processes):
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            if any(r["overruns"] for runs in results.values() for r in runs):
                print(
                    "some cycles overran:\n"
                    + "\n".join(line for line in log.read_text().splitlines() if "edge_agent" in line)
                )
    medians = {mode: statistics.median(r["tags_per_cpu_s"] for r in runs) for mode, runs in results.items()}
    print(
        f"\n{options.instruments} instruments x {TAGS} tags (values change every second), {options.repeats}"
        f" interleaved runs of {options.window:.0f} s; median (min–max); delivered = counted by a subscriber\n"
    )
    rows = [
        (
            mode,
            spread(r["tags_per_cpu_s"] for r in runs),
            spread(r["delivered_per_s"] for r in runs),
            f"{sum(r['failed'] for r in runs):.0f}",
            spread((r["cpu_percent"] for r in runs), ".1f"),
            spread(r["rss_mb"] for r in runs),
            f"{sum(r['overruns'] for r in runs):.0f}",
            spread(r["outbox_mb"] for r in runs),
        )
        for mode, runs in results.items()
    ]
    headers = ["outbox", "tags per CPU-s", "delivered/s", "failed reads", "CPU % of a core", "peak RSS MB (tree)",
               "overruns", "outbox MiB"]  # fmt: skip
    print(markdown_table(headers, rows))
    usages = [
        TreeUsage(r["wall_s"], 0, 0, 0, r["others_cores"], r["load_before"], r["load_after"])
        for runs in results.values()
        for r in runs
    ]
    print(machine_note(usages))
    ratio = medians["full"] / medians["empty"]
    verdict = "PASS" if ratio >= 1 - TARGET else "FAIL"
    print(f"{verdict}: full outbox at {100 * ratio:.1f} % of empty (target >= {100 * (1 - TARGET):.0f} %)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
