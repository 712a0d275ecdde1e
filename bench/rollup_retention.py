"""Raw-data retention at its bound: what each prune pass costs once the SQLite store holds all it keeps (issue 12).

The soak cannot reach a raw bound before an hour has passed (the config's least raw retention), and the clock is
not accelerated there. This bench fills a store to the bound at once (bulk insert: `--hours` of raw readings from
`--instruments` x `--tags` series at one reading a second), then plays steady state on a simulated clock: every
`--every` seconds the new readings of that interval are inserted and one retention pass runs
(gateway.mrv.retention.Retention.prune, the code the rollup engine calls), `--passes` times across an hour's end.

Per pass: readings deleted, CPU seconds of the process (the store's thread included), CPU µs per deleted reading,
SQLite VM steps (set_progress_handler, every 1,000), and the file's pages and free pages. A pass at steady state
should delete what arrived in one interval and cost the same every time; the run fails when a pass deletes more
than twice one interval's arrivals (a burst: before, each hour's readings fell due at once at the hour) or the
file grows once full.

Run: .venv/bin/python bench/rollup_retention.py [--instruments 20] [--tags 30] [--hours 1] [--passes 40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.mrv.retention import Retention
from gateway.stores import SqliteStore
from gateway.stores.retention import RetentionSettings

_INSERT = "INSERT INTO reading VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def rows(instruments: int, tags: int, start_s: int, end_s: int) -> list[tuple[object, ...]]:
    """One reading a second of every series in [start_s, end_s), in arrival (time) order."""
    return [
        ("bench", f"dev{i:03d}", f"t{t:02d}", "bench-agent", s * 10**9, float(s % 97), "mg/m3", "ok", None)
        for s in range(start_s, end_s)
        for i in range(instruments)
        for t in range(tags)
    ]


def bulk_insert(connection: sqlite3.Connection, batch: list[tuple[object, ...]]) -> None:
    connection.execute("BEGIN")
    connection.executemany(_INSERT, batch)
    connection.execute("COMMIT")


def pages(connection: sqlite3.Connection) -> tuple[int, int]:
    return (
        int(connection.execute("PRAGMA page_count").fetchone()[0]),
        int(connection.execute("PRAGMA freelist_count").fetchone()[0]),
    )


async def run(args: argparse.Namespace, folder: Path) -> int:
    start = datetime(2026, 6, 1, 9, 30, tzinfo=UTC)  # passes cross 10:00 and 11:00
    now_s = int(start.timestamp())
    fill_from = now_s - int(args.hours * 3600)
    arrivals = args.instruments * args.tags * int(args.every)
    async with SqliteStore(folder / "store.sqlite") as store:
        began = time.monotonic()
        for chunk in range(fill_from, now_s, 600):
            batch = rows(args.instruments, args.tags, chunk, min(chunk + 600, now_s))
            await store.run_on_connection(lambda c, b=batch: bulk_insert(c, b))
        held = (now_s - fill_from) * args.instruments * args.tags
        print(f"filled {held:,} readings ({args.hours:g} h) in {time.monotonic() - began:.0f} s", flush=True)
        retention = Retention(
            store, RetentionSettings(raw_days=args.hours / 24, rollup_days=None), step_rows=args.step, pause_s=0
        )
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        await store.run_on_connection(lambda c: c.set_progress_handler(count, 1000))
        if args.cache_mb:
            await store.run_on_connection(lambda c: c.execute(f"PRAGMA cache_size = {-args.cache_mb * 1024}"))
        print(
            f"{'pass':>4} {'sim UTC':>8} {'deleted':>9} {'CPU ms':>8} {'µs/del':>7} {'VM k/del':>8} "
            f"{'insert ms':>9} {'µs/ins':>7} {'pages':>8} {'free':>6}",
            flush=True,
        )
        deleted_counts: list[int] = []
        page_counts: list[int] = []
        for number in range(1, args.passes + 1):
            batch = rows(args.instruments, args.tags, now_s, now_s + int(args.every))
            now_s += int(args.every)
            cpu = time.process_time()
            await store.run_on_connection(lambda c, b=batch: bulk_insert(c, b))
            insert_cpu = time.process_time() - cpu
            steps[0] = 0
            cpu = time.process_time()
            deleted = await retention.prune(datetime.fromtimestamp(now_s, UTC))
            prune_cpu = time.process_time() - cpu
            page_count, free = await store.run_on_connection(pages)
            deleted_counts.append(deleted)
            page_counts.append(page_count)
            print(
                f"{number:>4} {datetime.fromtimestamp(now_s, UTC):%H:%M:%S} {deleted:>9,} {1000 * prune_cpu:>8.0f} "
                f"{1e6 * prune_cpu / max(deleted, 1):>7.1f} {steps[0] / max(deleted, 1):>8.3f} "
                f"{1000 * insert_cpu:>9.0f} {1e6 * insert_cpu / len(batch):>7.1f} {page_count:>8} {free:>6}",
                flush=True,
            )
        await store.run_on_connection(lambda c: c.set_progress_handler(None, 1000))
    bad = []
    burst = max(deleted_counts[1:], default=0)
    if burst > 2 * arrivals:
        bad.append(f"a pass deleted {burst:,} readings, {burst / arrivals:.0f} intervals' arrivals at once")
    half = len(page_counts) // 2
    if page_counts[half:] and max(page_counts[half:]) > 1.02 * page_counts[half]:
        bad.append(f"the file grew once full: {page_counts[half]} -> {max(page_counts[half:])} pages")
    load = os.getloadavg()[0]
    print(f"each interval brings {arrivals:,} readings; load average {load:.1f}")
    if bad:
        print("FAIL: " + "; ".join(bad))
        return 1
    print("PASS: every pass deletes one interval's readings or fewer; the file stays at its size")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instruments", type=int, default=20)
    parser.add_argument("--tags", type=int, default=30)
    parser.add_argument("--hours", type=float, default=1.0, help="raw retention, and what the store holds (h)")
    parser.add_argument("--every", type=float, default=60.0, help="simulated seconds between passes")
    parser.add_argument("--passes", type=int, default=40)
    parser.add_argument("--cache-mb", type=int, default=0, help="the store's SQLite page cache (default: 2 MB)")
    parser.add_argument("--step", type=int, default=5_000, help="rows per prune transaction (Retention.step_rows)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aua-retention-") as folder:
        return asyncio.run(run(args, Path(folder)))


if __name__ == "__main__":
    sys.exit(main())
