"""Gateway ingest benchmark (issue 5): sustained readings/s stored into a real InfluxDB, next to the raw
InfluxDB /write ceiling measured in the same run, and sample-to-stored latency at 1,000 readings/s.

Run: .venv/bin/python bench/ingest_throughput.py [--readings 1000000]
Targets: >= 50 % of the raw ceiling and >= 50,000 readings/s on 2 cores; p99 latency reported.

`--ledger` (issue 12) compares, in one run, the gateway at an empty ledger with the gateway at a ledger holding
a year of 1 s batches for four agents (bulk-inserted as the ledger keeps them: sequence ranges with an hourly
hole, a full per-batch detail window, dead letters at their bound), in small batches so that per-batch ledger
work shows, fed in-process (the broker and a publisher would bound it first). Target: the year within 10 % of
the empty ledger's readings/s.
Everything runs on loopback (influxd, mosquitto and a publisher process started here) and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _publisher import make_batch  # noqa: E402
from servers import InfluxServer, MosquittoServer  # noqa: E402

from aua_contract import Batch, readings_topic  # noqa: E402
from gateway.config import GatewayConfig, GatewaySection, LedgerSection, MqttSection, StoreSection  # noqa: E402
from gateway.gc_tuning import tune_for_ingest  # noqa: E402
from gateway.ingest import Ingest  # noqa: E402
from gateway.ledger import Ledger  # noqa: E402
from gateway.stores import open_store  # noqa: E402

BATCH_READINGS = 500
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class CpuMeter:
    """CPU seconds each named process used between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._began = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        self.used = {name: cpu_seconds(pid) - self._began[name] for name, pid in self.pids.items()}


async def raw_ceiling(influx: InfluxServer, readings: int) -> tuple[float, dict[str, float]]:
    """Points/s of gzip line-protocol writes of 5,000 lines from one client, as the gateway's writes are,
    and the CPU seconds influxd and this client used for them."""
    database = f"ceiling_{uuid.uuid4().hex[:8]}"
    assert influx.process is not None
    meter = CpuMeter({"influxd": influx.process.pid, "client": os.getpid()})
    async with httpx.AsyncClient(base_url=influx.url, timeout=60) as client:
        await client.post("/query", params={"q": f'CREATE DATABASE "{database}"'})
        bodies = []
        for start in range(0, readings, 5000):
            lines = [
                f"reading,agent=a1,instrument=i{n % 50},parameter=p{n // 50 % 10},site=s1 "
                f'quality="ok",unit="mg/m3",value={n / 7} {1_700_000_000_000_000_000 + n * 1_000_000}'
                for n in range(start, min(readings, start + 5000))
            ]
            bodies.append(gzip.compress("\n".join(lines).encode(), compresslevel=1))
        meter.start()
        began = time.perf_counter()
        for body in bodies:
            response = await client.post(
                "/write",
                params={"db": database, "precision": "ns"},
                content=body,
                headers={"Content-Encoding": "gzip"},
            )
            response.raise_for_status()
        elapsed = time.perf_counter() - began
        meter.stop()
        return readings / elapsed, meter.used


YEAR_OF_BATCHES = 365 * 86_400
"""A year of one batch a second: the sequence number an agent with a year of history has reached."""


def prefill_year_of_history(path: Path, site: str, agents: list[str]) -> None:
    """Bulk-insert a year of ledger for `agents` as the ledger keeps it at steady state: one sequence run per hour
    (an hourly hole: lost, the agent's outbox no longer has it), running totals, the per-batch detail window
    full, resend ranges, dead letters at their row bound, the agents' last status."""
    bounds = LedgerSection()
    Ledger(path, bounds).close()  # the schema, at the current version
    now = time.time_ns()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    for agent in agents:
        runs = [
            ("s", agent, start + 1 if start else 0, min(start + 3599, YEAR_OF_BATCHES - 1))
            for start in range(0, YEAR_OF_BATCHES, 3600)
        ]
        db.executemany(
            "INSERT INTO seq_run VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?)",
            [(site, agent, first, last, 30 * (last - first + 1), last * 10**9) for _, _, first, last in runs],
        )
        batches = sum(last - first + 1 for _, _, first, last in runs)
        db.execute("INSERT INTO agent_total VALUES (?, ?, ?, ?, 0, 0, 0)", (site, agent, batches, 30 * batches))
        window = range(YEAR_OF_BATCHES - bounds.detail_batches, YEAR_OF_BATCHES)
        db.executemany(
            "INSERT INTO batch_seen VALUES (?, ?, ?, 30, ?, 0, 0, ?)",
            [(site, agent, seq, now, seq * 10**9) for seq in window if seq % 3600],
        )
        db.executemany(
            "INSERT INTO resend_range VALUES (?, ?, ?, ?)", [(site, agent, n * 3600, n * 3600) for n in range(8)]
        )
        db.execute(
            "INSERT INTO agent_status VALUES (?, ?, 'online', ?, ?, ?, 0)",
            (site, agent, now, YEAR_OF_BATCHES, YEAR_OF_BATCHES - 1000),
        )
    db.executemany(
        "INSERT INTO dead_letter (received_ns, topic, reason, payload, size, sha256) VALUES (?, ?, ?, ?, 1024, '')",
        [(now, f"aua/v1/{site}/a9/readings", "bench", b"x" * 1024)] * bounds.dead_letter_max_rows,
    )
    db.execute("UPDATE ledger_counter SET value = ? WHERE name = 'dead_letter_rows'", (bounds.dead_letter_max_rows,))
    db.execute(
        "UPDATE ledger_counter SET value = ? WHERE name = 'dead_letter_bytes'", (1024 * bounds.dead_letter_max_rows,)
    )
    db.execute("COMMIT")
    db.close()


def start_publisher(
    broker: MosquittoServer, site: str, agent: str, batches: int, size: int, *, rate: float = 0
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "_publisher.py"),
            broker.host,
            str(broker.port),
            site,
            agent,
            str(batches),
            str(size),
            str(rate),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


async def gateway_run(
    influx: InfluxServer,
    broker: MosquittoServer,
    workdir: Path,
    readings: int,
    rate: float,
) -> tuple[float, list[float], dict[str, float]]:
    """Returns (readings/s, latencies of each batch from sample time to durable, CPU seconds per process)."""
    site = f"bench{uuid.uuid4().hex[:6]}"
    url = influx.database_url(f"gw_{uuid.uuid4().hex[:8]}")
    config = GatewayConfig(
        gateway=GatewaySection(id=f"gw-{site}", state=workdir / f"{site}.sqlite"),
        mqtt=MqttSection(host=broker.host, port=broker.port, sites=site),
        store=StoreSection(url=url),
    )
    store = open_store(url)
    await store.open()
    ledger = Ledger(config.gateway.state)
    latencies: list[float] = []

    def arrived(batch: Batch) -> None:
        if rate:
            latencies.append((datetime.now(UTC) - batch.readings[0].ts).total_seconds())

    ingest = Ingest(config, store, ledger, on_batch=arrived)
    task = asyncio.create_task(ingest.run())
    await asyncio.wait_for(ingest.connected.wait(), timeout=10)
    size = 100 if rate else BATCH_READINGS
    batches = readings // size
    publisher = start_publisher(broker, site, "a1", batches, size, rate=rate / size if rate else 0)
    assert publisher.stdin is not None
    assert influx.process is not None
    assert broker.process is not None
    meter = CpuMeter(
        {
            "gateway": os.getpid(),
            "influxd": influx.process.pid,
            "mosquitto": broker.process.pid,
            "publisher": publisher.pid,
        }
    )
    meter.start()
    began = time.perf_counter()
    publisher.stdin.write("go\n")
    publisher.stdin.flush()
    while ingest.stats.readings < batches * size:
        await asyncio.sleep(0.01)
        if time.perf_counter() - began > 600:
            raise TimeoutError(f"only {ingest.stats.readings} of {batches * size} readings stored in 600 s")
    elapsed = time.perf_counter() - began
    meter.stop()
    publisher.wait(timeout=30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    counted = sum((await store.count_by_instrument()).values())
    await store.close()
    ledger.close()
    assert counted == batches * size, f"stored {counted}, sent {batches * size}"
    return batches * size / elapsed, latencies, {name: used / elapsed for name, used in meter.used.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--ledger", action="store_true", help="only: empty ledger vs a year of history")
    parser.add_argument("--batch-readings", type=int, default=20, help="with --ledger: readings per batch")
    parser.add_argument("--ledger-batches", type=int, default=10_000, help="with --ledger: batches per run")
    args = parser.parse_args()
    if args.ledger:
        await ledger_comparison(args.ledger_batches * args.batch_readings, args.batch_readings)
        return
    with tempfile.TemporaryDirectory(prefix="aua-bench-") as folder:
        workdir = Path(folder)
        influx = InfluxServer(workdir / "influxd")
        broker = MosquittoServer(workdir / "mosquitto")
        influx.start()
        broker.start()
        try:
            ceiling, ceiling_cpu = await raw_ceiling(influx, args.readings)
            tune_for_ingest()  # as `cems-gateway run` does
            throughput, _, busy = await gateway_run(influx, broker, workdir, args.readings, rate=0)
            _, latencies, _ = await gateway_run(influx, broker, workdir, int(1000 * args.latency_seconds), rate=1000)
        finally:
            broker.terminate()
            influx.terminate()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print()
    print(f"{'measure':<52} {'value':>14} {'target':>22}")
    baseline = "(baseline, same run)"
    print(f"{'raw InfluxDB /write ceiling (5,000-line gzip batches)':<52} {ceiling:>12,.0f}/s {baseline:>22}")
    print(f"{'gateway: MQTT -> validate -> InfluxDB, readings/s':<52} {throughput:>12,.0f}/s {'>= 50,000/s':>22}")
    print(f"{'gateway / ceiling':<52} {throughput / ceiling:>13.0%} {'>= 50 %':>22}")
    print(f"{'latency sample -> stored at 1,000 readings/s, p50':<52} {p50 * 1000:>11.1f} ms")
    print(f"{'latency sample -> stored at 1,000 readings/s, p99':<52} {p99 * 1000:>11.1f} ms")
    print()
    print("CPU: microseconds per reading (cores busy during the run)")
    for name, used in ceiling_cpu.items():
        print(f"  ceiling run  {name:<12} {used / args.readings * 1e6:>6.2f} us")
    for name, cores in busy.items():
        print(f"  gateway run  {name:<12} {cores / throughput * 1e6:>6.2f} us   ({cores:.2f} cores)")
    print("(thingsboard-gateway users report ~200 datapoints/s: thingsboard-gateway issue #1484)")


async def ledger_run(
    influx: InfluxServer, workdir: Path, batches: int, size: int, *, year: bool
) -> tuple[float, float]:
    """The gateway's own pipeline (validate, queue, store in InfluxDB, record in the ledger) fed in-process, so
    neither the broker nor the publisher bounds it: (readings/s, gateway CPU seconds per batch)."""
    site = f"bench{uuid.uuid4().hex[:6]}"
    url = influx.database_url(f"gw_{uuid.uuid4().hex[:8]}")
    config = GatewayConfig(
        gateway=GatewaySection(id=f"gw-{site}", state=workdir / f"{site}.sqlite"),
        store=StoreSection(url=url),
    )
    if year:
        prefill_year_of_history(config.gateway.state, site, ["a1", "a2", "a3", "a4"])
    store = open_store(url)
    await store.open()
    ledger = Ledger(config.gateway.state)
    ingest = Ingest(config, store, ledger)
    first = YEAR_OF_BATCHES if year else 0
    start = datetime.now(UTC) - timedelta(seconds=batches)
    topic = readings_topic(site, "a1")
    payloads = [make_batch(site, "a1", first + n, size, start + timedelta(seconds=n)) for n in range(batches)]
    writer = asyncio.create_task(ingest.write_forever())
    cpu = time.process_time()
    began = time.perf_counter()
    for payload in payloads:
        await ingest.handle(topic, payload)
    await ingest.flushed()
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu  # this process: the gateway, and the ledger's thread
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    [account] = [a for a in ledger.accounts() if a.agent == "a1"]
    assert account.last_seq == first + batches - 1
    assert ingest.stats.batches == batches
    ingest.spool.close()
    ledger.close()
    await store.close()
    return batches * size / elapsed, cpu / batches


async def ledger_comparison(readings: int, batch_readings: int) -> None:
    """Empty ledger, a year of ledger, twice each alternating (to see the loaded machine's drift), one run."""
    batches = readings // batch_readings
    with tempfile.TemporaryDirectory(prefix="aua-bench-") as folder:
        workdir = Path(folder)
        influx = InfluxServer(workdir / "influxd")
        influx.start()
        results = []
        try:
            tune_for_ingest()
            for year in (False, True, False, True):
                throughput, cpu_per_batch = await ledger_run(influx, workdir, batches, batch_readings, year=year)
                results.append((year, throughput, cpu_per_batch))
        finally:
            influx.terminate()
    print()
    print(f"{batches:,} batches of {batch_readings} readings, fed in-process into a real InfluxDB")
    print(f"{'ledger':<18} {'readings/s':>12} {'batches/s':>10} {'gateway CPU per batch':>22}")
    for year, throughput, cpu_per_batch in results:
        name = "a year, 4 agents" if year else "empty"
        print(f"{name:<18} {throughput:>12,.0f} {throughput / batch_readings:>10,.0f} {cpu_per_batch * 1e6:>19.0f} us")
    empty = statistics.mean(t for year, t, _ in results if not year)
    full = statistics.mean(t for year, t, _ in results if year)
    print(f"a year / empty, readings/s: {full / empty:.0%} (target: >= 90 %)")
    cpu_empty = statistics.mean(c for year, _, c in results if not year)
    cpu_full = statistics.mean(c for year, _, c in results if year)
    print(f"a year / empty, gateway CPU per batch: {cpu_full / cpu_empty:.0%} (target: <= 110 %; steadier than")
    print("readings/s on a shared machine, where the wall clock also measures the other processes)")


if __name__ == "__main__":
    asyncio.run(main())
