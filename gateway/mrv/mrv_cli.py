"""cems-gateway's MRV commands (`rollup`, `report`, `report-feed`), thin over the engine, the reports and the feed."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from gateway.cli_time import cli_time
from gateway.config import GatewayConfig
from gateway.mrv.report_feed import ReportFeed
from gateway.mrv.report_files import write_report_files
from gateway.mrv.report_production import ReportError, produce_report
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import StoreError, open_store
from gateway.time_ns import from_ns

MRV_COMMANDS = ("rollup", "report", "report-feed")


def add_mrv_commands(commands: Any) -> None:
    """Adds `rollup recompute|status`, `report` and `report-feed` to cems-gateway's subcommands."""
    rollup = commands.add_parser("rollup", help="rollups: recompute a time range, show pending work")
    rollup_commands = rollup.add_subparsers(dest="rollup_command", required=True)
    recompute = rollup_commands.add_parser("recompute", help="recompute every rollup of [--from, --to) from raw data")
    recompute.add_argument("config", type=Path)
    recompute.add_argument(
        "--from", dest="start", required=True, type=cli_time, help="ISO time, e.g. 2024-05-01T00:00+05:00"
    )
    recompute.add_argument(
        "--to", dest="end", required=True, type=cli_time, help="ISO time (exclusive); no offset means UTC"
    )
    recompute.add_argument("--site", help="only this site")
    status = rollup_commands.add_parser("status", help="hours waiting to be recomputed; process them with --process")
    status.add_argument("config", type=Path)
    status.add_argument("--process", action="store_true", help="recompute the pending hours now")
    status.add_argument(
        "--retry", action="store_true", help="put the set-aside series (their rollup failed) back, then process"
    )
    report = commands.add_parser("report", help="MRV report of a source: CSV, JSON, XLSX and PDF")
    report.add_argument("config", type=Path)
    report.add_argument("--source", required=True, help="[[source]] id")
    report.add_argument("--year", type=int, required=True)
    report.add_argument("--month", type=int, help="1-12 for a monthly report")
    report.add_argument("--out", type=Path, help="directory (default: [rollup.reports] directory)")
    report.add_argument("--no-raw-check", action="store_true", help="skip the reproducibility check from raw data")
    feed = commands.add_parser("report-feed", help="write (and POST) monthly and annual reports on schedule")
    feed.add_argument("config", type=Path)
    feed.add_argument("--once", action="store_true", help="one pass, then exit")
    feed.add_argument("--interval", type=float, default=300.0, help="seconds between passes")


async def _rollup_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    store = open_store(config.store.url)
    await store.open()
    engine = RollupEngine.from_config(config, store)
    try:
        if args.rollup_command == "recompute":
            start, end = args.start, args.end
            if end <= start:
                print(f"--to {end.isoformat()} is not after --from {start.isoformat()}")
                return 2
            stats = await engine.recompute(start, end, site=args.site)
            print(f"recomputed [{start.isoformat()}, {end.isoformat()}): {stats.summary()}")
            return 0
        pending = await engine.pending()
        print(f"{pending} (series, hour) pairs waiting for recomputation")
        for site, instrument, parameter, hour_ns, _, error in engine.marks.set_aside_marks():
            print(f"set aside: {site}/{instrument}/{parameter} hour {from_ns(hour_ns).isoformat()}: {error}")
        if args.retry:
            print(f"{await engine.release_set_aside()} set-aside (series, hour) pairs put back")
        if args.process or args.retry:
            while True:  # every pass covers all marks present when it starts: only a full pass needs another
                stats = await engine.process_dirty()
                print(stats.summary())
                if not stats.full:
                    break
        return 0
    finally:
        engine.close()
        await store.close()


async def _report_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    store = open_store(config.store.url)
    await store.open()
    engine = RollupEngine.from_config(config, store)
    try:
        await engine.catch_up()  # pending rollups first, so the report sees every reading stored so far
        produced = await produce_report(
            config, store, args.source, year=args.year, month=args.month, check_raw=not args.no_raw_check
        )
    finally:
        engine.close()
        await store.close()
    directory = args.out or config.rollup.reports.directory
    paths = write_report_files(produced, directory, font=config.rollup.reports.font)
    for total in produced.report.totals:
        flag = "" if total.complete else " (INCOMPLETE)"
        print(f"{total.name:<12} {total.total_t:>16.3f} t{flag}")
    check = produced.report.reproducibility
    if check is not None:
        print(f"reproducible from raw data: {'yes' if check.matches else 'NO'} ({check.raw_readings} readings)")
    for warning in produced.report.warnings:
        print(f"warning: {warning}")
    for path in paths:
        print(f"wrote {path}")
    return 0


async def _feed_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    store = open_store(config.store.url)
    await store.open()
    engine = RollupEngine.from_config(config, store)
    feed = ReportFeed(config, store, engine=engine)
    try:
        if args.once:
            for event in await feed.tick():
                print(f"{event.source} {event.period}: {event.action} {event.detail}")
        else:
            await feed.run(interval=args.interval)
        return 0
    finally:
        feed.close()
        engine.close()
        await store.close()


def run_mrv_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    """Runs a command added by add_mrv_commands; errors are printed for the operator, not raised."""
    try:
        if args.command == "rollup":
            return asyncio.run(_rollup_command(config, args))
        if args.command == "report":
            return asyncio.run(_report_command(config, args))
        return asyncio.run(_feed_command(config, args))
    except ReportError as error:
        print(f"report error: {error}")
        return 1
    except StoreError as error:
        print(f"store error: {error}")
        return 1
    except ValueError as error:
        print(f"error: {error}")
        return 2
