"""Rollup engine at a constant arrival rate through the hour: what each pass reads, and its CPU; simulated clock.

    .venv/bin/python bench/rollup_steady.py [--rate 150] [--minutes 65] [--compare-with 788fba9 --compare-minutes 20]

Readings arrive at `--rate` per second (instruments × 30 parameters at 1 s, on a SQLite store on disk), one
rollup pass per minute of data, as `[rollup] interval = 60` gives; the clock is simulated, so an hour takes a
minute or two. For each pass: the raw readings it read, the stored aggregates it read (with running totals
only when a period's totals are first built: the first pass, each new hour, day, month and year; the engine
before them read the hour's stored minutes, up to 60 per series, and the year's days every pass) and its CPU
time (process CPU, so the SQLite thread counts too). The CPU share a real-time gateway would spend on rollups
is that CPU over the 60 s interval. Fails if the raw readings read per pass grow through the hour.
`--compare-with REV` first runs gateway/mrv/rollup_engine.py of that git revision on the same data (the engine
before issue 12 read the whole hour so far every pass, and under live ingest ran passes back to back).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aua_contract import Batch, Reading  # noqa: E402
from gateway.mrv import rollup_engine as current_engine  # noqa: E402
from gateway.mrv.config import RollupSection, RuleResolver  # noqa: E402
from gateway.stores import SqliteStore  # noqa: E402

PARAMETERS = 30
START = datetime(2026, 3, 2, tzinfo=UTC)


def engine_module(revision: str | None) -> ModuleType:
    if revision is None:
        return current_engine
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:gateway/mrv/rollup_engine.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "rollup_engine_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rollup_engine_old", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def minute_batches(minute: int, instruments: int) -> list[Batch]:
    start = START + timedelta(minutes=minute)
    return [
        Batch(
            site="bench",
            agent=f"agent-{n:02d}",
            seq=minute,
            sent_at=start,
            readings=[
                Reading(
                    instrument=f"dev{n:02d}",
                    parameter=f"p{p:02d}",
                    value=40.0 + (s * 7 + p) % 13,
                    unit="mg/m3",
                    ts=start + timedelta(seconds=s),
                )
                for s in range(60)
                for p in range(PARAMETERS)
            ],
        )
        for n in range(instruments)
    ]


async def run(module: ModuleType, label: str, rate: int, minutes: int, folder: Path) -> list[tuple[int, int, float]]:
    instruments = max(1, rate // PARAMETERS)
    rules = RuleResolver.from_config(RollupSection(rule_set="ied-lcp"), [])
    results = []
    async with SqliteStore(folder / f"{label}.sqlite") as store:
        engine = module.RollupEngine(store, module.DirtyMarks(folder / f"{label}-state.sqlite"), rules)
        print(f"\n{label}: {instruments * PARAMETERS} readings/s ({instruments} instruments × {PARAMETERS} at 1 s)")
        print(f"{'minute':>6} {'raw read':>9} {'aggregates read':>15} {'pass CPU s':>10} {'CPU share at 60 s':>18}")
        for minute in range(minutes):
            batches = minute_batches(minute, instruments)
            await store.write_batches(batches)
            await engine.note_batches(batches)
            cpu = time.process_time()
            stats = await engine.process_dirty()
            used = time.process_time() - cpu
            aggregates = getattr(stats, "aggregates_read", -1)
            results.append((stats.raw_read, aggregates, used))
            if minute % 5 == 4 or minute == minutes - 1:
                print(f"{minute + 1:>6} {stats.raw_read:>9} {aggregates:>15} {used:>10.3f} {used / 60:>17.1%}")
        engine.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=150, help="readings per second")
    parser.add_argument("--minutes", type=int, default=65, help="simulated minutes (passes)")
    parser.add_argument("--compare-with", metavar="REV", help="also run the engine of this git revision first")
    parser.add_argument("--compare-minutes", type=int, default=20, help="passes of the compared engine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.compare_with:
            module = engine_module(args.compare_with)
            old = asyncio.run(run(module, args.compare_with, args.rate, args.compare_minutes, Path(folder)))
            print(f"{args.compare_with}: CPU in {len(old)} passes {sum(c for _, _, c in old):.1f} s")
        new = asyncio.run(run(engine_module(None), "current", args.rate, args.minutes, Path(folder)))
    print(f"current: CPU in {len(new)} passes {sum(c for _, _, c in new):.1f} s")
    early, late = new[2:15], new[45:58] or new[2:15]
    for name, part in (("3-15", early), ("46-58", late)):
        print(
            f"minutes {name}: median raw read {statistics.median(r for r, _, _ in part):.0f}, aggregates read "
            f"{statistics.median(a for _, a, _ in part):.0f}, pass CPU {statistics.median(c for _, _, c in part):.3f} s"
        )
    if max(r for r, _, _ in late) > max(r for r, _, _ in early):
        print("FAIL: the raw readings read per pass grow through the hour")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
