"""Soak: the whole chain at a steady rate for a long run, one row a minute, failing if anything trends (issue 12).

simulator (N Modbus TCP devices x 30 float32 tags, values changing every second) -> `edge-agent run` ->
mosquitto -> `cems-gateway run` (SQLite store, rollups, alerts, health writer), each its own process, all on
loopback. Every `--sample` seconds one row: readings the gateway made durable per second (its /metrics counter,
so what was stored, not what was sent), CPU of the agent and of the gateway (% of one core), RSS of both
programs (not the simulator's, which keeps what it served), the agent's cycle overruns, the gateway's missing
batches and every state file's size (with its WAL).

Trends are judged at steady state only: the rows after every file has reached its bound (the store's raw
retention, `--raw-retention-h`, is the last: its pruning starts that long after the start) and `--warmup` more.
Pruning is work the full files add: the step it makes is printed (median CPU per reading while filling and at
steady state), not judged as a trend. Each series then gets a least-squares slope as % of its mean per hour; the
run fails when throughput falls, or CPU per reading, memory or a file's size rises, beyond `--tolerance` % per
hour. Beside the verdict it prints the CPU of a fixed reference workload run in the middle of each minute (on a
shared machine a fixed piece of work costs more CPU while other programs run), CPU per reading divided by it, and
how closely the two follow each other: a trend that is the machine's, not the programs', shows there. `--analyse
LOG` judges a saved run's output again.

Each row shows the UTC time it was taken: rollup hours are UTC hours, so a run started a few minutes before
one shows the gateway's CPU through the hour's end (the pass that closes the hour, its day, month and year).

The clock is not accelerated: the agent's poll and the gateway's rollup and pruning timers run on wall time. To
reach the bounds sooner the run sets them small: the agent's outbox (`--outbox-mb`, `--outbox-batches`,
`--outbox-retention-s`), the gateway's per-batch ledger window (`--ledger-detail`) and its raw retention
(`--raw-retention-h`, at least the one hour the config allows: the store reaches its bound after that long).

Each row also gives CPU per stored reading (µs of CPU per reading, steadier than % of a core on a shared
machine) and each program's resident memory split into anonymous (heap: Python objects, SQLite caches) and
file-backed (mapped code and libraries) from /proc/PID/smaps_rollup, so growth can be told apart.

`--tracemalloc FRAMES` starts the gateway under tracemalloc (bench only: the gateway itself is unchanged) and
writes, every `--trace-every` seconds, the top allocations by traceback that grew since the first snapshot
after start-up and since the previous one, to `tracemalloc.txt` in the run's folder (use `--keep`). Tracing
costs the gateway CPU and memory of its own, so CPU and RSS of such a run are not comparable with others.
tracemalloc sees Python's allocations only: each snapshot line also gives C malloc's totals (glibc mallinfo2:
in use and kept free, e.g. SQLite's page caches), and `--malloc-stats` writes those alone (`malloc.txt`) at
no tracing cost.

Run: .venv/bin/python bench/soak.py [--minutes 180] [--devices 20]   (20 devices x 30 tags = 600 readings/s)
Stops by itself; everything it starts is ended on the way out.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TAGS = 30
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def tree(pid: int) -> list[int]:
    """The process and all its descendants (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            total_kb += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total_kb / 1024


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """Resident memory of the processes as (anonymous, file-backed) MB, from /proc/PID/smaps_rollup."""
    anonymous_kb = resident_kb = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:] if line.endswith("kB")}
        anonymous_kb += fields.get("Anonymous", 0)
        resident_kb += fields.get("Rss", 0)
    return anonymous_kb / 1024, (resident_kb - anonymous_kb) / 1024


TRACED_GATEWAY = "--traced-gateway"
"""argv[1] of this script when it runs the gateway with its memory watched (started so by `run`)."""


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc 2.33+): totals over every malloc arena."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def malloc_summary() -> str:
    """What C malloc holds (SQLite's page caches and statements, Python's large objects) and what it keeps free
    (fragmentation): anonymous memory tracemalloc cannot see. Python's pymalloc arenas are mmapped apart."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return "malloc: mallinfo2 not available"
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return (
        f"malloc: arenas {info.arena / 2**20:.1f} MiB (in use {info.uordblks / 2**20:.1f}, free "
        f"{info.fordblks / 2**20:.1f}), mmapped {info.hblkhd / 2**20:.1f} MiB in {info.hblks}; "
        f"Python blocks allocated {sys.getallocatedblocks():,}; {pymalloc_summary()}"
    )


_PYMALLOC_LINES = ("# arenas allocated current", "# arenas highwater mark", "# bytes in allocated blocks")


def pymalloc_summary() -> str:
    """pymalloc's arenas (1 MiB each, mmapped; one is returned only when every block in it is free) and the
    bytes of live small objects in them: arenas x 1 MiB far above the live bytes is fragmentation. From
    sys._debugmallocstats, which writes to file descriptor 2: redirected for the call (a log line written
    meanwhile by another thread lands in the dump's file)."""
    with tempfile.TemporaryFile("w+") as dump:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(dump.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        dump.seek(0)
        found = {
            line.split("=")[0].strip(): line.split("=")[1].strip().replace(",", "")
            for line in dump
            if line.startswith(_PYMALLOC_LINES)
        }
    arenas = found.get("# arenas allocated current", "?")
    live = int(found.get("# bytes in allocated blocks", "0")) / 2**20
    return f"pymalloc: {arenas} arenas (highwater {found.get('# arenas highwater mark', '?')}), live {live:.1f} MiB"


def traced_gateway(frames: int, every_s: float, out: Path, gateway_argv: list[str], top: int = 25) -> int:
    """`cems-gateway` in this process, writing every `every_s` what C malloc holds and, with `frames`, the
    allocations (tracemalloc) that grew most by traceback since the first snapshot (taken `every_s` after start,
    past start-up) and since the previous one."""
    from gateway.cli import main as gateway_main  # noqa: PLC0415 (only this child runs the gateway)

    if frames:
        tracemalloc.start(frames)
    leave_out = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib*")]

    def report(title: str, now: tracemalloc.Snapshot, then: tracemalloc.Snapshot, sink: TextIO) -> None:
        stats = now.compare_to(then, "traceback")
        grew = sorted(stats, key=lambda stat: stat.size_diff, reverse=True)[:top]
        total = sum(stat.size_diff for stat in stats)
        print(f"-- {title}: {total / 1024:+.0f} KiB net, {sum(s.count_diff for s in stats):+d} blocks", file=sink)
        for stat in grew:
            if stat.size_diff <= 0:
                break
            print(
                f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks (now {stat.size / 1024:.1f} KiB)",
                file=sink,
            )
            for line in stat.traceback.format(most_recent_first=True):
                print(f"      {line}", file=sink)

    def dump_forever() -> None:
        first = previous = None
        while True:
            time.sleep(every_s)
            if not frames:
                with out.open("a") as sink:
                    print(f"== {time.strftime('%H:%M:%S', time.gmtime())} UTC {malloc_summary()}", file=sink)
                continue
            snapshot = tracemalloc.take_snapshot().filter_traces(leave_out)
            traced, peak = tracemalloc.get_traced_memory()
            with out.open("a") as sink:
                stamp = time.strftime("%H:%M:%S", time.gmtime())
                print(
                    f"== {stamp} UTC traced {traced / 2**20:.1f} MiB (peak {peak / 2**20:.1f}); {malloc_summary()}",
                    file=sink,
                )
                if first is not None and previous is not None:
                    report("since the first snapshot", snapshot, first, sink)
                    report("since the previous snapshot", snapshot, previous, sink)
            first = first or snapshot
            previous = snapshot

    threading.Thread(target=dump_forever, name="soak-tracemalloc", daemon=True).start()
    return gateway_main(gateway_argv)


REFERENCE_ROWS = 60_000
"""rows of the reference workload: about 0.2-0.4 s of CPU on this machine"""


def reference_ms() -> float:
    """CPU milliseconds of a fixed workload shaped like the programs' own (JSON batches, SQLite inserts and a
    range read), run in this process once per row. On a shared machine the CPU a fixed piece of work costs moves
    with what else runs (co-scheduled hyperthreads, caches, frequency): the programs' CPU per reading is divided
    by this, measured the same way in the same minute, so a trend left is the programs' own."""
    import json  # noqa: PLC0415
    import sqlite3  # noqa: PLC0415

    began = time.thread_time()
    readings = [{"tag": f"t{i:02d}", "v": i * 1.5, "q": "good"} for i in range(30)]
    batch: dict[str, object] = {"agent": "ref", "seq": 0, "readings": readings}
    with sqlite3.connect(":memory:") as connection:
        connection.execute("CREATE TABLE raw (series TEXT, ts INTEGER, value REAL, PRIMARY KEY (series, ts))")
        rows: list[tuple[str, int, float]] = []
        for n in range(REFERENCE_ROWS // 30):
            batch["seq"] = n
            decoded = json.loads(json.dumps(batch))
            rows.extend((reading["tag"], n, reading["v"]) for reading in decoded["readings"])
        connection.executemany("INSERT INTO raw VALUES (?, ?, ?)", rows)
        connection.execute("SELECT series, avg(value) FROM raw WHERE ts >= ? GROUP BY series", (100,)).fetchall()
    connection.close()
    return 1000 * (time.thread_time() - began)


def scrape(port: int) -> dict[str, float]:
    """Prometheus text -> metric name -> sum over its labels (a tracemalloc snapshot stalls the gateway for
    seconds, hence the long timeout)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and line[0] != "#":
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def size_mb(path: Path) -> float:
    """A SQLite file with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file()) / 1e6


def write_configs(folder: Path, args: argparse.Namespace, ports: dict[str, int], device_ports: list[int]) -> None:
    profile = ['[profile]\nname = "soak-30-floats"\nbyte_order = "ABCD"\n']
    profile += [
        f'[[tag]]\nname = "t{i:02d}"\nfunction = "input"\naddress = {2 * i}\ntype = "float32"\nunit = "mg/m3"\n'
        for i in range(TAGS)
    ]
    (folder / "profile.toml").write_text("\n".join(profile))
    site = [
        f'[agent]\nsite = "soak"\nid = "soak-agent"\npoll_interval = 1.0\noutbox = "{folder / "outbox.sqlite"}"\n'
        f"metrics_port = {ports['agent_metrics']}\noutbox_max_batches = {args.outbox_batches}\n"
        f"outbox_max_bytes = {args.outbox_mb << 20}\n"
        f"outbox_retention_s = {args.outbox_retention_s}\noutbox_prune_interval_s = 10\n",
        f'[mqtt]\nhost = "127.0.0.1"\nport = {ports["broker"]}\n',
    ]
    site += [
        f'[[instrument]]\nid = "dev{n:03d}"\nprofile = "profile.toml"\nport = {port}\ndevice_id = 1\n'
        for n, port in enumerate(device_ports)
    ]
    (folder / "site.toml").write_text("\n".join(site))
    (folder / "gateway.toml").write_text(
        f'[gateway]\nid = "soak-gateway"\nstate = "{folder / "gateway-state.sqlite"}"\n'
        f'http = "127.0.0.1:{ports["gateway_http"]}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {ports["broker"]}\n'
        '[store]\nurl = "sqlite://store.sqlite"\n'  # relative: the gateway runs in the folder
        f"raw_retention_days = {args.raw_retention_h / 24}\n"
        f"[ledger]\ndetail_batches = {args.ledger_detail}\n"
        f'[rollup]\nrule_set = "ied-lcp"\ntime_zone = "Asia/Almaty"\ninterval = {args.rollup_interval}\n'
        f'[rollup.reports]\ndirectory = "{folder / "reports"}"\n'
    )
    (folder / "mosquitto.conf").write_text(
        f"listener {ports['broker']} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 1000\n"
    )


def mosquitto_binary() -> str:
    for folder in (*os.environ.get("PATH", "").split(":"), "/usr/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / "mosquitto"
        if candidate.exists():
            return str(candidate)
    raise SystemExit("mosquitto not found: scripts/test installs it (apt-get install mosquitto)")


@dataclass
class Row:
    minute: float
    stored_per_s: float
    agent_cpu: float
    gateway_cpu: float
    rss_mb: float
    overruns: float
    missing: float
    files: dict[str, float] = field(default_factory=dict)
    gateway_us: float = 0.0
    """gateway CPU µs per stored reading"""
    agent_us: float = 0.0
    """agent CPU µs per stored reading"""
    memory: dict[str, float] = field(default_factory=dict)
    """MB: gateway anon/file, agent anon/file (smaps_rollup)"""
    reference_ms: float = 0.0
    """CPU ms of the fixed reference workload, run in the middle of the row's minute"""


def slope_per_hour(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (minutes), as % of the mean of ys per hour; 0 for a flat or empty series."""
    if len(xs) < 3:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    denominator = sum((x - mean_x) ** 2 for x in xs)
    if not denominator or not mean_y:
        return 0.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / denominator
    return 100 * slope * 60 / abs(mean_y)


def steady_rows(args: argparse.Namespace) -> int:
    """Rows before every file has reached its bound: the store's raw readings are kept `--raw-retention-h`, so
    its first prune (and the work pruning adds) starts that long after the start; the outbox and the ledger fill
    sooner. Trends are judged on the rows after, at steady state, plus `--warmup` rows to settle."""
    hours: float = args.raw_retention_h
    sample: float = args.sample
    warmup: int = args.warmup
    return math.ceil(hours * 3600 / sample) + warmup


def trends(rows: list[Row], skip: int) -> dict[str, float]:
    """Slopes, % of the mean per hour, over the rows after `skip`: what the verdict judges."""
    steady = rows[skip:]
    xs = [row.minute for row in steady]
    found = {
        "stored/s": slope_per_hour(xs, [row.stored_per_s for row in steady]),
        "gateway µs/reading": slope_per_hour(xs, [row.gateway_us for row in steady]),
        "agent µs/reading": slope_per_hour(xs, [row.agent_us for row in steady]),
        "RSS": slope_per_hour(xs, [row.rss_mb for row in steady]),
    }
    for name in steady[0].memory if steady else ():
        found[f"{name} MB"] = slope_per_hour(xs, [row.memory[name] for row in steady])
    for name in steady[0].files if steady else ():
        found[f"{name} MB"] = slope_per_hour(xs, [row.files[name] for row in steady])
    return found


def informational(rows: list[Row], skip: int) -> dict[str, float]:
    """Slopes shown but not judged: % of a core moves with the rate; the reference workload's CPU shows whether the
    machine changed, and CPU per reading divided by it (scaled to its median) what is left of a trend if the programs
    slowed exactly as the reference did (they need not: a fixed compute loop and programs that wake every second
    feel other load differently), with the correlation of each program's CPU per reading with the reference."""
    steady = rows[skip:]
    xs = [row.minute for row in steady]
    reference = sorted(row.reference_ms for row in steady)[len(steady) // 2] if steady else 1.0

    def adjusted(us: float, row: Row) -> float:
        return us * reference / row.reference_ms if row.reference_ms else us

    return {
        "agent CPU %": slope_per_hour(xs, [row.agent_cpu for row in steady]),
        "gateway CPU %": slope_per_hour(xs, [row.gateway_cpu for row in steady]),
        "reference ms": slope_per_hour(xs, [row.reference_ms for row in steady]),
        "gateway µs/reading ÷ reference": slope_per_hour(xs, [adjusted(row.gateway_us, row) for row in steady]),
        "agent µs/reading ÷ reference": slope_per_hour(xs, [adjusted(row.agent_us, row) for row in steady]),
        "r(gateway µs, reference)": correlation([r.gateway_us for r in steady], [r.reference_ms for r in steady]),
        "r(agent µs, reference)": correlation([r.agent_us for r in steady], [r.reference_ms for r in steady]),
    }


def correlation(xs: list[float], ys: list[float]) -> float:
    """Pearson's r (0 for a flat series)."""
    if len(xs) < 3:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mean_x) ** 2 for x in xs), sum((y - mean_y) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else 0.0


def levels(rows: list[Row], skip: int) -> str:
    """Median CPU per reading while the files fill and at steady state: pruning is work the full files add, a step
    (not a trend) the trends after `skip` leave out, so it is shown here."""

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2] if ordered else float("nan")

    filling, steady = rows[:skip], rows[skip:]
    return (
        f"CPU per reading, median while filling → at steady state: gateway "
        f"{median([r.gateway_us for r in filling]):.1f} → {median([r.gateway_us for r in steady]):.1f} µs, agent "
        f"{median([r.agent_us for r in filling]):.1f} → {median([r.agent_us for r in steady]):.1f} µs; reference "
        f"workload {median([r.reference_ms for r in filling]):.0f} → {median([r.reference_ms for r in steady]):.0f} ms"
    )


def verdicts(found: dict[str, float], tolerance: float) -> list[str]:
    """What trends the wrong way beyond the tolerance: throughput down, anything else up."""
    bad = []
    for name, slope in found.items():
        wrong = -slope if name == "stored/s" else slope
        if wrong > tolerance:
            bad.append(f"{name}: {slope:+.1f} %/h")
    return bad


def run(args: argparse.Namespace, folder: Path) -> list[Row]:
    ports = dict(zip(("broker", "agent_metrics", "gateway_http"), free_ports(3), strict=True))
    device_ports = free_ports(args.devices)
    write_configs(folder, args, ports, device_ports)
    log = (folder / "soak.log").open("ab")
    started: list[subprocess.Popen[bytes]] = []
    programs: dict[int, str] = {}

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, stdout=log, stderr=log, cwd=folder, start_new_session=True)
        started.append(process)
        programs[process.pid] = argv[0]
        return process

    rows: list[Row] = []
    try:
        start([mosquitto_binary(), "-c", str(folder / "mosquitto.conf")])
        start([sys.executable, "-m", "aua_simulator.instruments", "--tick", "1", str(folder / "site.toml")])
        gateway_argv = ["run", str(folder / "gateway.toml")]
        if args.tracemalloc or args.malloc_stats:
            out = folder / ("tracemalloc.txt" if args.tracemalloc else "malloc.txt")
            trace = [TRACED_GATEWAY, str(args.tracemalloc), str(args.trace_every), str(out)]
            gateway = start([sys.executable, str(Path(__file__).resolve()), *trace, *gateway_argv])
        else:
            gateway = start([str(BIN / "cems-gateway"), *gateway_argv])
        time.sleep(3)
        agent = start([str(BIN / "edge-agent"), "run", str(folder / "site.toml")])
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(ports["agent_metrics"])
                scrape(ports["gateway_http"])
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"agent or gateway did not come up; see {folder / 'soak.log'}") from None
                time.sleep(0.5)
        files = {
            "outbox": folder / "outbox.sqlite",
            "gateway state": folder / "gateway-state.sqlite",
            "store": folder / "store.sqlite",
        }
        header = (
            f"{'min':>4} {'UTC':>8} {'stored/s':>9} {'agent CPU%':>10} {'gw CPU%':>8} {'RSS MB':>7} {'overruns':>8} "
        )
        header += f"{'missing':>8} {'gw µs/rd':>8} {'ag µs/rd':>8} {'gw anon':>7} {'gw file':>7} {'ag anon':>7} "
        header += f"{'ag file':>7} " + " ".join(f"{name + ' MB':>16}" for name in files) + f" {'ref ms':>7}"
        print(header, flush=True)
        began = time.monotonic()
        previous = (time.monotonic(), scrape(ports["gateway_http"]), scrape(ports["agent_metrics"]))
        agent_cpu_before, gateway_cpu_before = cpu_seconds(tree(agent.pid)), cpu_seconds(tree(gateway.pid))
        while time.monotonic() - began < args.minutes * 60:
            row_began = time.monotonic()
            time.sleep(args.sample / 2)
            reference = reference_ms()
            time.sleep(max(0.0, args.sample - (time.monotonic() - row_began)))
            for process in started:
                if process.poll() is not None:
                    name, code = programs[process.pid], process.returncode
                    raise SystemExit(f"{name} exited with {code}; see {folder / 'soak.log'}")
            now, gw, ag = time.monotonic(), scrape(ports["gateway_http"]), scrape(ports["agent_metrics"])
            elapsed = now - previous[0]
            agent_cpu, gateway_cpu = cpu_seconds(tree(agent.pid)), cpu_seconds(tree(gateway.pid))
            # Aua's own programs: the simulator keeps what it served (for the tests' exactness checks) and grows
            ours = [pid for process in (agent, gateway) for pid in tree(process.pid)]
            stored = gw["aua_gateway_readings_total"] - previous[1]["aua_gateway_readings_total"]
            gateway_anon, gateway_file = memory_mb(tree(gateway.pid))
            agent_anon, agent_file = memory_mb(tree(agent.pid))
            row = Row(
                minute=(now - began) / 60,
                stored_per_s=stored / elapsed,
                agent_cpu=100 * (agent_cpu - agent_cpu_before) / elapsed,
                gateway_cpu=100 * (gateway_cpu - gateway_cpu_before) / elapsed,
                rss_mb=rss_mb(ours),
                overruns=ag.get("aua_agent_cycle_overruns_total", 0)
                - previous[2].get("aua_agent_cycle_overruns_total", 0),
                missing=gw.get("aua_gateway_missing_batches", 0),
                files={name: size_mb(path) for name, path in files.items()},
                gateway_us=1e6 * (gateway_cpu - gateway_cpu_before) / max(stored, 1),
                agent_us=1e6 * (agent_cpu - agent_cpu_before) / max(stored, 1),
                memory={
                    "gateway anon": gateway_anon,
                    "gateway file": gateway_file,
                    "agent anon": agent_anon,
                    "agent file": agent_file,
                },
                reference_ms=reference,
            )
            rows.append(row)
            previous = (now, gw, ag)
            agent_cpu_before, gateway_cpu_before = agent_cpu, gateway_cpu
            print(
                f"{row.minute:>4.1f} {time.strftime('%H:%M:%S', time.gmtime()):>8} "
                f"{row.stored_per_s:>9.0f} {row.agent_cpu:>10.1f} {row.gateway_cpu:>8.1f} "
                f"{row.rss_mb:>7.0f} {row.overruns:>8.0f} {row.missing:>8.0f} "
                f"{row.gateway_us:>8.1f} {row.agent_us:>8.1f} "
                + " ".join(f"{row.memory[name]:>7.1f}" for name in row.memory)
                + " "
                + " ".join(f"{row.files[name]:>16.1f}" for name in files)
                + f" {row.reference_ms:>7.0f}",
                flush=True,
            )
    finally:
        for process in reversed(started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(started):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        log.close()
    return rows


def rows_from_table(text: str) -> list[Row]:
    """The rows of the table a run printed (header line first), so a saved run can be judged again."""
    lines = [line for line in text.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["min", "UTC"])
    rows = []
    for line in lines[start + 1 :]:
        fields = line.split()
        if len(fields) < 18 or not re.fullmatch(r"\d+\.\d", fields[0]):
            break
        number = [float(field) for field in fields[2:]]
        rows.append(
            Row(
                minute=float(fields[0]),
                stored_per_s=number[0],
                agent_cpu=number[1],
                gateway_cpu=number[2],
                rss_mb=number[3],
                overruns=number[4],
                missing=number[5],
                gateway_us=number[6],
                agent_us=number[7],
                memory=dict(
                    zip(("gateway anon", "gateway file", "agent anon", "agent file"), number[8:12], strict=True)
                ),
                files=dict(zip(("outbox", "gateway state", "store"), number[12:15], strict=True)),
                reference_ms=number[15],
            )
        )
    return rows


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [TRACED_GATEWAY]:
        frames, every_s, out, *gateway_argv = argv[1:]
        return traced_gateway(int(frames), float(every_s), Path(out), gateway_argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--minutes", type=float, default=180.0, help="how long to run (default 180: 60 filling, 120 at steady state)"
    )
    parser.add_argument("--devices", type=int, default=20, help="simulated devices of 30 tags (default 20)")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds per row (default 60)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="rows after the files reach their bounds left out of the trends (default 2)",
    )
    parser.add_argument("--tolerance", type=float, default=10.0, help="allowed trend, %% of the mean per hour")
    parser.add_argument("--rollup-interval", type=float, default=60.0, help="gateway [rollup] interval, s")
    parser.add_argument("--outbox-batches", type=int, default=600, help="agent outbox_max_batches (default 600)")
    parser.add_argument("--outbox-retention-s", type=float, default=300.0, help="agent outbox_retention_s")
    parser.add_argument("--outbox-mb", type=int, default=32, help="agent outbox_max_bytes in MiB (default 32)")
    parser.add_argument("--raw-retention-h", type=float, default=1.0, help="gateway raw retention, hours (min 1)")
    parser.add_argument("--ledger-detail", type=int, default=1000, help="gateway [ledger] detail_batches")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES", help="trace the gateway's memory")
    parser.add_argument(
        "--malloc-stats", action="store_true", help="write the gateway's malloc totals to malloc.txt (no tracemalloc)"
    )
    parser.add_argument("--trace-every", type=float, default=120.0, help="seconds between memory snapshots")
    parser.add_argument("--keep", type=Path, help="keep the run's files in this folder")
    parser.add_argument(
        "--analyse",
        type=Path,
        metavar="LOG",
        help="judge the table a run printed (its output saved) instead of running",
    )
    args = parser.parse_args(argv)
    if (args.tracemalloc or args.malloc_stats) and not args.keep:
        parser.error("--tracemalloc and --malloc-stats write into the run's folder: give --keep FOLDER")
    # SIGTERM (and SIGINT, which a shell ignores for background jobs) end the run through `finally`, so the
    # programs it started are stopped too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupted)
    if args.analyse:
        rows = rows_from_table(args.analyse.read_text())
    elif args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        rows = run(args, args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="aua-soak-") as folder:
            rows = run(args, Path(folder))
    skip = steady_rows(args)
    if len(rows) <= skip + 2:
        print(f"too few rows at steady state (the first {skip} fill the files): run longer than {skip} rows")
        return 1
    found = trends(rows, skip)
    load = os.getloadavg()
    print(f"\n{levels(rows, skip)}")
    print(f"trends over the {len(rows) - skip} rows at steady state (after {skip}), % of the mean per hour:")
    for name, slope in found.items():
        print(f"  {name:<30} {slope:+8.1f}")
    print(f"shown, not judged (load average now {load[0]:.1f}):")
    for name, slope in informational(rows, skip).items():
        print(f"  {name:<30} {slope:+8.1f}")
    bad = verdicts(found, args.tolerance)
    stored = sorted(row.stored_per_s for row in rows[skip:])
    print(
        f"stored/s median {stored[len(stored) // 2]:.0f} (min {stored[0]:.0f}, max {stored[-1]:.0f}) of "
        f"{args.devices * TAGS} read per second; overruns {sum(row.overruns for row in rows):.0f}"
    )
    if bad or not math.isfinite(sum(found.values())):
        print("FAIL: " + "; ".join(bad))
        return 1
    print(f"PASS: nothing trends beyond {args.tolerance:g} %/h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
