"""Gateway ingest benchmark (issue 5): sustained readings/s stored into a real InfluxDB, next to the raw
InfluxDB /write ceiling measured in the same run, and sample-to-stored latency at 1,000 readings/s.

Run: .venv/bin/python bench/ingest_throughput.py [--readings 1000000] [--repeats 3]
Targets: >= 50 % of the raw ceiling and >= 50,000 readings/s on 2 cores; p99 latency reported.

The ceiling is InfluxDB written the gateway's way (the same request size and concurrency as
gateway/stores/influx.py), measured before and after every gateway run (C G C G C G C); each gateway run is
compared with the mean of the two around it. Every throughput is what InfluxDB held afterwards (a count
query), CPU and memory are per process tree, and the machine's load is printed with the results.

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _harness import TreeMonitor, TreeUsage, machine_note, markdown_table, spread  # noqa: E402
from _publisher import make_batch  # noqa: E402
from servers import InfluxServer, MosquittoServer  # noqa: E402

from aua_contract import Batch, readings_topic  # noqa: E402
from gateway.config import GatewayConfig, GatewaySection, LedgerSection, MqttSection, StoreSection  # noqa: E402
from gateway.gc_tuning import tune_for_ingest  # noqa: E402
from gateway.ingest.ledger import Ledger  # noqa: E402
from gateway.ingest.service import Ingest  # noqa: E402
from gateway.stores import open_store  # noqa: E402
from gateway.stores.influx import WRITE_BATCH_LINES  # noqa: E402

BATCH_READINGS = 500


async def stored_count(influx: InfluxServer, database: str) -> int:
    """Points InfluxDB holds in `database`: what a run stored, counted by a query, not by the writer."""
    store = open_store(influx.database_url(database))
    await store.open()
    try:
        return sum((await store.count_by_instrument()).values())
    finally:
        await store.close()


@dataclass(frozen=True)
class CeilingRun:
    points_per_s: float
    influxd: TreeUsage
    client: TreeUsage


async def raw_ceiling(influx: InfluxServer, readings: int) -> CeilingRun:
    """Points/s InfluxDB stores when written the gateway's way (gateway/stores/influx.py): gzip bodies of
    WRITE_BATCH_LINES lines, write_max_readings of them posted at once, the next group after the answers;
    counted by a query afterwards. The bodies are compressed before the clock starts (the gateway's gzip is
    its own CPU), so this is influxd's ceiling, not the client's."""
    database = f"ceiling_{uuid.uuid4().hex[:8]}"
    assert influx.process is not None
    group = GatewaySection.model_fields["write_max_readings"].default // WRITE_BATCH_LINES
    async with httpx.AsyncClient(base_url=influx.url, timeout=60) as client:
        await client.post("/query", params={"q": f'CREATE DATABASE "{database}"'})
        bodies = []
        for start in range(0, readings, WRITE_BATCH_LINES):
            lines = [
                f"reading,agent=a1,instrument=i{n % 50},parameter=p{n // 50 % 10},site=s1 "
                f'quality="ok",unit="mg/m3",value={n / 7} {1_700_000_000_000_000_000 + n * 1_000_000}\n'
                for n in range(start, min(readings, start + WRITE_BATCH_LINES))
            ]
            bodies.append(gzip.compress("".join(lines).encode(), compresslevel=1))

        async def post(body: bytes) -> None:
            response = await client.post(
                "/write",
                params={"db": database, "precision": "ns"},
                content=body,
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"},
            )
            response.raise_for_status()

        with TreeMonitor(influx.process.pid) as influxd, TreeMonitor(os.getpid(), descendants=False) as me:
            for first in range(0, len(bodies), group):
                await asyncio.gather(*(post(body) for body in bodies[first : first + group]))
    assert influxd.usage is not None
    assert me.usage is not None
    stored = await stored_count(influx, database)
    assert stored == readings, f"InfluxDB holds {stored} of the {readings} points written"
    return CeilingRun(stored / influxd.usage.wall_s, influxd.usage, me.usage)


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


@dataclass(frozen=True)
class GatewayRun:
    readings_per_s: float
    latencies: list[float]
    usage: dict[str, TreeUsage]
    """gateway (this process alone), influxd, mosquitto, publisher"""


async def gateway_run(
    influx: InfluxServer,
    broker: MosquittoServer,
    workdir: Path,
    readings: int,
    rate: float,
) -> GatewayRun:
    """The gateway's ingest (in this process) fed by a publisher process through mosquitto into InfluxDB; the
    readings/s are what InfluxDB holds afterwards (a query), over the time until the gateway had stored them all."""
    site = f"bench{uuid.uuid4().hex[:6]}"
    database = f"gw_{uuid.uuid4().hex[:8]}"
    url = influx.database_url(database)
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
    async with asyncio.timeout(10):
        await ingest.connected.wait()
    size = 100 if rate else BATCH_READINGS
    batches = readings // size
    publisher = start_publisher(broker, site, "a1", batches, size, rate=rate / size if rate else 0)
    assert publisher.stdin is not None
    assert influx.process is not None
    assert broker.process is not None
    monitors = {
        "gateway": TreeMonitor(os.getpid(), descendants=False),
        "influxd": TreeMonitor(influx.process.pid),
        "mosquitto": TreeMonitor(broker.process.pid),
        "publisher": TreeMonitor(publisher.pid),
    }
    for monitor in monitors.values():
        monitor.__enter__()
    began = time.perf_counter()
    publisher.stdin.write("go\n")
    publisher.stdin.flush()
    while ingest.stats.readings < batches * size:
        await asyncio.sleep(0.01)
        if time.perf_counter() - began > 600:
            raise TimeoutError(f"only {ingest.stats.readings} of {batches * size} readings stored in 600 s")
    elapsed = time.perf_counter() - began
    for monitor in monitors.values():
        monitor.__exit__(None, None, None)
    publisher.wait(timeout=30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()
    ledger.close()
    stored = await stored_count(influx, database)
    assert stored == batches * size, f"InfluxDB holds {stored}, {batches * size} were sent"
    usage = {name: monitor.usage for name, monitor in monitors.items() if monitor.usage is not None}
    return GatewayRun(stored / elapsed, latencies, usage)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="gateway runs, each between two ceiling runs")
    parser.add_argument("--latency-seconds", type=float, default=10, help="per latency run (3 runs)")
    parser.add_argument("--ledger", action="store_true", help="only: empty ledger vs a year of history")
    parser.add_argument("--batch-readings", type=int, default=20, help="with --ledger: readings per batch")
    parser.add_argument("--ledger-batches", type=int, default=10_000, help="with --ledger: batches per run")
    args = parser.parse_args()
    if args.ledger:
        await ledger_comparison(args.ledger_batches * args.batch_readings, args.batch_readings, args.repeats)
        return
    ceilings: list[CeilingRun] = []
    gateways: list[GatewayRun] = []
    latency_runs: list[GatewayRun] = []
    with tempfile.TemporaryDirectory(prefix="aua-bench-") as folder:
        workdir = Path(folder)
        influx = InfluxServer(workdir / "influxd")
        broker = MosquittoServer(workdir / "mosquitto")
        influx.start()
        broker.start()
        try:
            tune_for_ingest()  # as `cems-gateway run` does
            # ceiling, gateway, ceiling, gateway, ..., ceiling: each gateway run between two ceiling runs
            ceilings.append(await raw_ceiling(influx, args.readings))
            for round_index in range(args.repeats):
                print(f"  round {round_index + 1}/{args.repeats}: gateway, then ceiling ...", flush=True)
                gateways.append(await gateway_run(influx, broker, workdir, args.readings, rate=0))
                ceilings.append(await raw_ceiling(influx, args.readings))
            for _ in range(3):
                latency = await gateway_run(influx, broker, workdir, int(1000 * args.latency_seconds), rate=1000)
                latency_runs.append(latency)
        finally:
            broker.terminate()
            influx.terminate()
    ratios = [
        g.readings_per_s / ((before.points_per_s + after.points_per_s) / 2)
        for g, before, after in zip(gateways, ceilings, ceilings[1:], strict=False)
    ]
    p50 = [statistics.median(run.latencies) * 1000 for run in latency_runs]
    p99 = [sorted(run.latencies)[int(len(run.latencies) * 0.99) - 1] * 1000 for run in latency_runs]
    group = GatewaySection.model_fields["write_max_readings"].default
    print()
    print(f"{args.readings:,} readings per run, median (min–max) of {len(gateways)} gateway runs and the")
    print(f"{len(ceilings)} ceiling runs around them; every count is what InfluxDB held afterwards (a query).")
    print()
    rows = [
        (
            f"raw InfluxDB /write ceiling, the gateway's way ({group:,} lines as concurrent "
            f"{WRITE_BATCH_LINES:,}-line gzip requests)",
            spread(c.points_per_s for c in ceilings) + " points/s",
            "baseline, same run",
        ),
        ("gateway: MQTT -> validate -> InfluxDB", spread(g.readings_per_s for g in gateways) + " readings/s",
         ">= 50,000/s"),
        ("gateway / mean of the ceilings before and after", spread((r * 100 for r in ratios), ".0f", " %"),
         ">= 50 %"),
        ("latency sample -> stored at 1,000 readings/s, p50", spread(p50, ".1f", " ms"), ""),
        ("latency sample -> stored at 1,000 readings/s, p99", spread(p99, ".1f", " ms"), ""),
        ("CPU per reading: gateway process", spread(
            (g.usage["gateway"].cpu_s / (g.readings_per_s * g.usage["gateway"].wall_s) * 1e6 for g in gateways),
            ".2f", " us"), ""),
        ("CPU per reading: influxd (gateway run / ceiling run)",
         spread((g.usage["influxd"].cpu_s / (g.readings_per_s * g.usage["influxd"].wall_s) * 1e6 for g in gateways),
                ".2f", " us") + " / " + spread((c.influxd.cpu_s / args.readings * 1e6 for c in ceilings), ".2f", " us"),
         ""),
        ("peak RSS: gateway process / influxd tree", spread(g.usage["gateway"].peak_rss_mb for g in gateways)
         + " / " + spread(g.usage["influxd"].peak_rss_mb for g in gateways) + " MB", ""),
    ]  # fmt: skip
    print(markdown_table(["measure", "value", "target"], rows))
    print()
    print(machine_note([g.usage["gateway"] for g in gateways] + [c.influxd for c in ceilings]))
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
    stored = sum((await store.count_by_instrument()).values())
    assert stored == batches * size, f"InfluxDB holds {stored}, {batches * size} were fed"
    ingest.spool.close()
    ledger.close()
    await store.close()
    return stored / elapsed, cpu / batches


async def ledger_comparison(readings: int, batch_readings: int, repeats: int) -> None:
    """Empty ledger, a year of ledger, interleaved `repeats` times (the loaded machine's drift hits both)."""
    batches = readings // batch_readings
    with tempfile.TemporaryDirectory(prefix="aua-bench-") as folder:
        workdir = Path(folder)
        influx = InfluxServer(workdir / "influxd")
        influx.start()
        try:
            tune_for_ingest()
            results: dict[bool, list[tuple[float, float, TreeUsage]]] = {False: [], True: []}
            for round_index in range(repeats):
                for year in (False, True):
                    print(f"  round {round_index + 1}/{repeats}: {'a year' if year else 'empty'} ...", flush=True)
                    with TreeMonitor(os.getpid(), descendants=False) as monitor:
                        throughput, cpu_per_batch = await ledger_run(
                            influx, workdir, batches, batch_readings, year=year
                        )
                    assert monitor.usage is not None
                    results[year].append((throughput, cpu_per_batch, monitor.usage))
        finally:
            influx.terminate()
    print()
    print(f"{batches:,} batches of {batch_readings} readings, fed in-process into a real InfluxDB; median (min–max)")
    print(f"of {repeats} interleaved runs; readings counted in InfluxDB afterwards.")
    print()
    rows = [
        (
            "a year, 4 agents" if year else "empty",
            spread(t for t, _, _ in runs),
            spread(t / batch_readings for t, _, _ in runs),
            spread((c * 1e6 for _, c, _ in runs), ",.0f", " us"),
            spread(u.peak_rss_mb for _, _, u in runs),
        )
        for year, runs in results.items()
    ]
    print(markdown_table(["ledger", "readings/s", "batches/s", "gateway CPU per batch", "peak RSS MB"], rows))
    empty = statistics.median(t for t, _, _ in results[False])
    full = statistics.median(t for t, _, _ in results[True])
    cpu_empty = statistics.median(c for _, c, _ in results[False])
    cpu_full = statistics.median(c for _, c, _ in results[True])
    print()
    print(f"a year / empty, readings/s (medians): {full / empty:.0%} (target: >= 90 %)")
    print(f"a year / empty, gateway CPU per batch (medians): {cpu_full / cpu_empty:.0%} (target: <= 110 %; steadier")
    print("than readings/s on a shared machine, where the wall clock also measures the other processes)")
    print(machine_note(u for runs in results.values() for _, _, u in runs))


if __name__ == "__main__":
    asyncio.run(main())
