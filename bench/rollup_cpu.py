"""Gateway CPU at a constant arrival rate, real time, over a few minutes: the rollup engine must keep it flat.

    .venv/bin/python bench/rollup_cpu.py [--seconds 150] [--rate 600] [--code DIR]

`cems-gateway run` (its own process, SQLite store on disk, `[rollup] interval = 60`) subscribed to a local
mosquitto; a publisher process sends one batch a second of `--rate` readings (600 series at 1 Hz), timed now.
The gateway's CPU (all threads, /proc schedstat) is printed as a share of one core per 30 s window. Before issue
12 the engine ran passes back to back, each re-reading the hour so far: the share climbed within minutes.
`--code DIR` runs the gateway from another source tree, e.g. `git archive 788fba9 | tar -x -C DIR`, for a
before/after on the same machine. Bounded: about `--seconds` + 10 s; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import MosquittoServer  # noqa: E402

WINDOW_S = 30
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process, threads that ended included (schedstat per thread would lose
    the time of the worker threads asyncio.to_thread retires)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=150)
    parser.add_argument("--rate", type=int, default=600, help="readings per second (one batch a second)")
    parser.add_argument("--code", type=Path, default=ROOT, help="source tree the gateway runs from")
    args = parser.parse_args()
    code = args.code.resolve()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        broker = MosquittoServer(work)
        broker.start()
        config = work / "gateway.toml"
        config.write_text(
            f'[gateway]\nid = "bench"\nstate = "{work / "state.sqlite"}"\n'
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'[store]\nurl = "sqlite://aua.sqlite"\n[rollup]\ninterval = 60\n'
        )
        env = {**os.environ, "PYTHONPATH": str(code)}
        launch = "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))"
        gateway = subprocess.Popen(
            [sys.executable, "-c", launch, "-v", "run", str(config)],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "gateway.log", "w"),  # noqa: SIM115
        )
        publish = [broker.host, str(broker.port), "bench", "a1", str(args.seconds + 30), str(args.rate), "1"]
        publisher = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "_publisher.py"), *publish],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(3)  # the gateway subscribes
            assert publisher.stdout is not None
            assert publisher.stdin is not None
            publisher.stdout.readline()  # "ready"
            publisher.stdin.write("go\n")
            publisher.stdin.flush()
            print(f"gateway from {code}: {args.rate} readings/s, [rollup] interval 60 s")
            print(f"{'seconds':>7} {'CPU share of one core':>22}")
            began = time.monotonic()
            last = cpu_seconds(gateway.pid)
            shares = []
            while time.monotonic() - began < args.seconds:
                time.sleep(WINDOW_S)
                if gateway.poll() is not None:
                    print((work / "gateway.log").read_text()[-3000:])
                    raise RuntimeError(f"the gateway exited with {gateway.returncode}")
                now = cpu_seconds(gateway.pid)
                shares.append((now - last) / WINDOW_S)
                last = now
                print(f"{time.monotonic() - began:>7.0f} {shares[-1]:>22.2f}")
            passes = sum("rollups: read" in line for line in (work / "gateway.log").read_text().splitlines())
            print(f"rollup passes logged: {passes} in {time.monotonic() - began:.0f} s")
            with sqlite3.connect(work / "aua.sqlite") as db:
                stored = db.execute("SELECT count(*) FROM reading").fetchone()[0]
                minutes = db.execute("SELECT count(*) FROM rollup WHERE period = '1m'").fetchone()[0]
            print(f"stored {stored} readings, {minutes} 1-minute rollups")
        finally:
            for process in (publisher, gateway):
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
            broker.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
