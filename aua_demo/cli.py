"""`aua-demo`: the whole chain on embedded defaults, live, then a summary of what was stored.

simulated instruments (Modbus TCP) -> two edge agents (a CHP stack, a Pavlodar ambient station)
-> MQTT broker (mosquitto if installed, else in-process amqtt) -> gateway -> SQLite store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from aua_contract import Batch, Quality
from aua_demo.broker import embedded_broker, free_port
from aua_demo.replay import ReplayClock, history_then_live
from aua_demo.sites import CONFIG_DIR, demo_sites, relocate, with_unit_signals
from aua_simulator.incidents import Incidents
from aua_simulator.modbus_servers import simulator_for_config
from aua_simulator.plant_story import PlantStory
from edge_agent.config import LoadedConfig
from edge_agent.poller import Agent
from gateway.alerts.engine import AlertEngine
from gateway.config import GatewayConfig, load_gateway_config
from gateway.health_writer import HealthWriter
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.mrv.qa_checks import QaCheckLog, capture
from gateway.mrv.qal3 import CheckKind, CheckResult
from gateway.mrv.report import MrvReport
from gateway.mrv.report_files import write_report_files
from gateway.mrv.report_production import produce_report
from gateway.mrv.rollup import Period
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import Store, open_store

# What the live view shows per site: (instrument suffix, parameter) pairs.
HEADLINE = ("so2", "nox", "co", "dust", "o2", "flow", "pm25", "pm10", "hg", "wind_speed")


def _headline(batch: Batch) -> str:
    parts = []
    for reading in batch.readings:
        if reading.parameter not in HEADLINE:
            continue
        if reading.value is None:
            parts.append(f"{reading.parameter}=--")
            continue
        flag = "" if reading.quality is Quality.OK else f"[{reading.quality}]"
        parts.append(f"{reading.parameter}={reading.value:.4g}{flag}")
    return " ".join(parts)


class LiveView:
    """Prints what arrives at the gateway, one line per batch (alerts print themselves, via the console notifier)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, batch: Batch) -> None:
        if self.quiet:
            return
        stamp = batch.sent_at.astimezone(UTC).strftime("%H:%M:%S")
        count = len(batch.readings)
        print(f"{stamp} {batch.site}/{batch.agent} #{batch.seq:<4} {count:>2} readings  {_headline(batch)}")


async def _wait_drained(agents: list[Agent], ledger: Ledger, within_s: float) -> None:
    """After the agents stop polling, give the gateway time to store what they already sent."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        sealed = sum(agent.outbox_stats().next_seq for agent in agents)
        delivered = sum(account.batches for account in ledger.accounts())
        if delivered >= sealed:
            return
        await asyncio.sleep(0.2)


DEMO_CONFIG = CONFIG_DIR / "demo-gateway.toml"
REPLAY_CADENCE_S = 600.0
"""Simulated seconds between two polls of the replay. 43,200 one-minute cycles (30 days) take about 22 minutes
through agent, broker and gateway on a loaded 2-core machine (about 33 cycles/s); 4,320 ten-minute cycles about
2 minutes. config/demo-gateway.toml's rule set says so (sample_interval_s = 600: an hour expects 6 samples)."""
MAX_REPLAY_DAYS = 31


def demo_gateway_config(
    workdir: Path, broker_host: str, broker_port: int, store_url: str, *, history_days: float = 0.0
) -> GatewayConfig:
    """config/demo-gateway.toml, moved onto the demo's broker, store and scratch folder; readings as old as the
    replayed history are accepted ([registry] max_age_days)."""
    config = load_gateway_config(DEMO_CONFIG)
    config.gateway.state = workdir / "gateway-state.sqlite"
    config.mqtt.host, config.mqtt.port = broker_host, broker_port
    config.store.url = store_url
    config.rollup.reports.directory = workdir / "reports"
    config.registry.max_age_days = max(config.registry.max_age_days, history_days + 2)
    return config


async def mrv_reports(
    config: GatewayConfig, store: Store, rollups: RollupEngine, months: list[tuple[int, int]]
) -> list[Path]:
    """Roll up what arrived and write the stack's MRV report of each month (CSV, JSON, XLSX, PDF)."""
    while await rollups.pending():
        await rollups.process_dirty()
    for instrument, parameter in (("stack1-gas", "so2"), ("pvl1-hg", "hg")):
        minutes = await store.query_aggregates(period=Period.MINUTE, instrument=instrument, parameter=parameter)
        valid = [m for m in minutes if m.valid]
        if valid:
            print(
                f"  {instrument} {parameter}: {len(valid)} of {len(minutes)} 1-minute averages valid, "
                f"last {valid[-1].value:.4g} {valid[-1].unit}"
            )
    source = config.sources[0]
    written: list[Path] = []
    for year, month in months:
        produced = await produce_report(config, store, source.id, year=year, month=month, workers=1)
        report = produced.report
        print(f"  {report.source} {year}-{month:02d}: {_operating_line(report)}")
        for total in report.totals:
            state = "complete" if total.complete else "incomplete"
            print(
                f"    {total.name}: {total.total_t:.3f} t ({total.measured_t:.3f} measured, "
                f"{total.substituted_t:.3f} substituted, {total.start_up_shut_down_t:.3f} in start-up/shut-down; "
                f"{state})"
            )
        if report.reproducibility is not None:
            print(f"    recomputed from raw data: {'same totals' if report.reproducibility.matches else 'DIFFERENT'}")
        written += write_report_files(produced, config.rollup.reports.directory)
    return written


REPAIR_BY = "demo technician"
REPAIR_WHY = "sample line leak found and fixed after the failed span check; analyzer adjusted (aua_demo plant story)"


async def calibration_log(config: GatewayConfig, store: Store, story: PlantStory | None, history: History) -> None:
    """The replayed days' zero and span checks into the calibration-check log, found in the stored readings as
    `cems-gateway qa-check capture` finds them (the replay's gateway runs no live QAL3 watch), then what the
    technician records after the plant story's failed check: a zero and a span check after repairing and
    adjusting the analyzer, which ends the out-of-control period (EN 14181:2014 §7; docs/qal3.md)."""
    source = config.sources[0]
    if source.qal3 is None or history.days <= 0:
        return
    checks_log = QaCheckLog(config.gateway.state)
    try:
        now = datetime.now(UTC)
        found, recorded = await capture(
            store, checks_log, source, start=history.start.astimezone(UTC), end=history.end.astimezone(UTC), now=now
        )
        print(
            f"  calibration checks: {len(found)} found from the analyzer's zero/span status bits, {len(recorded)} new"
        )
        if story is None or story.failed_check_at is None:
            return
        repaired = story.failed_check_at + 2 * story.check_step_s + story.repair_hours * 3600
        if repaired >= history.end.timestamp():
            return
        at = datetime.fromtimestamp(repaired, UTC)
        for component in source.qal3.component:
            for kind, reference in (
                (CheckKind.ZERO, component.zero_reference),
                (CheckKind.SPAN, component.span_reference),
            ):
                checks_log.record(
                    source.id,
                    CheckResult(at, kind, reference, reference, adjusted=True),
                    instrument=component.instrument,
                    parameter=component.parameter,
                    by=REPAIR_BY,
                    why=REPAIR_WHY,
                    now=now,
                )
        print(f"  calibration checks: the adjusted zero/span checks after the repair at {at:%Y-%m-%d %H:%M} UTC")
    finally:
        checks_log.close()


def _operating_line(report: MrvReport) -> str:
    operating = report.operating
    if operating is None or not operating.configured:
        return "no operating state configured"
    counts = ", ".join(f"{state} {count}" for state, count in operating.periods.items())
    return f"{report.period.base_period} periods by operating state: {counts}"


DEMO_FILES = ("outbox-*.sqlite*", "aua.sqlite*", "gateway-state*.sqlite*", "reports/*")


def fresh_workdir(workdir: Path) -> None:
    """Start each demo from empty stores so its summary counts this run; only the demo's own files go."""
    workdir.mkdir(parents=True, exist_ok=True)
    for pattern in DEMO_FILES:
        for path in workdir.glob(pattern):
            path.unlink()


DEMO_ZONE = ZoneInfo("Asia/Almaty")
"""The stack's local calendar (config/demo-gateway.toml `time_zone`): the replayed month is one of its months."""


@dataclass(frozen=True)
class History:
    start: datetime
    end: datetime

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86400


def replayed_month(now: datetime, days: float | None) -> History:
    """The history the demo replays: the last calendar month before `now`'s (local), whole when `days` is None,
    else its last `days` days (0: none). A whole month makes the demo's report complete: every hour of it has
    data, and no hour of it lies in the future."""
    end = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    first = (end - timedelta(days=1)).replace(day=1)
    if days is None:
        return History(first, end)
    return History(max(first, end - timedelta(days=days)), end)


async def run_demo(
    seconds: float | None,
    workdir: Path,
    quiet: bool,
    *,
    replay_days: float | None = 0.0,
    cadence_s: float = REPLAY_CADENCE_S,
) -> int:
    fresh_workdir(workdir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    history = replayed_month(datetime.now(DEMO_ZONE), replay_days)
    history_start, history_end = history.start.timestamp(), history.end.timestamp()
    clock = ReplayClock(history_start)
    async with embedded_broker() as broker:
        print(f"broker: {broker.kind} on {broker.host}:{broker.port}")
        sites: list[LoadedConfig] = []
        for loaded in demo_sites():
            ports = {port: free_port() for port in {i.config.port for i in loaded.instruments}}
            sites.append(
                relocate(loaded, broker_host=broker.host, broker_port=broker.port, ports=ports, workdir=workdir)
            )
        stack_site, ambient_site = with_unit_signals(sites[0]), sites[1]
        # The stack plays the plant story of the replayed days (start-up, shut-down, daily checks, a failed one,
        # a week off) on the replay clock; the ambient station lives on the wall clock, with a short mercury
        # episode 10 s into the live part, so a 60 s demo shows an alert firing and resolving.
        story = PlantStory.for_window(history_start, history.days) if history.days >= 1 else None
        stack_simulator = simulator_for_config(stack_site, clock=clock.seconds, story=story)
        incidents = replace(
            Incidents.demo(time.time()), demo_hg_episode_at=time.time() + 1e9, demo_hg_episode_seconds=35
        )
        ambient_simulator = simulator_for_config(ambient_site, incidents=incidents)
        simulators = [stack_simulator, ambient_simulator]
        for simulator in simulators:
            await simulator.start()
        store_url = f"sqlite://{(workdir / 'aua.sqlite').resolve()}"
        history_age_days = (time.time() - history_start) / 86400
        gateway_config = demo_gateway_config(
            workdir, broker.host, broker.port, store_url, history_days=history_age_days
        )
        store = open_store(gateway_config.store.url)
        await store.open()
        ledger = Ledger(gateway_config.gateway.state)
        view = LiveView(quiet=True)
        alerts = AlertEngine.from_config(gateway_config)
        rollups = RollupEngine.from_config(gateway_config, store)
        ingest = Ingest(gateway_config, store, ledger, on_batch=view, alerts=alerts, rollups=rollups)
        stack_agent = Agent(stack_site, clock=clock.stamp)
        ambient_agent = Agent(ambient_site)
        for site in (stack_site, ambient_site):
            names = ", ".join(i.id for i in site.instruments)
            print(f"agent {site.config.agent.site}/{site.config.agent.id}: {names}")
        print(f"store: {gateway_config.store.url}")
        gateway_task = asyncio.create_task(ingest.run())
        health_task = asyncio.create_task(HealthWriter(ingest, store).run())
        await asyncio.wait_for(ingest.connected.wait(), timeout=10)
        live = asyncio.Event()
        live_alerts, ingest.alerts = ingest.alerts, None  # replayed history is reported, not alerted on

        def going_live() -> None:
            ingest.alerts = live_alerts
            view.quiet = quiet
            episode_at = time.time() + 10
            ambient_simulator.incidents = replace(ambient_simulator.incidents, demo_hg_episode_at=episode_at)
            live.set()

        if history.days > 0:
            print(
                f"replaying the stack's {history.days:g} days {history.start:%Y-%m-%d %H:%M} ... "
                f"{history.end:%Y-%m-%d %H:%M} ({DEMO_ZONE.key}): one poll every {cadence_s:g} simulated seconds, "
                "through agent, broker and gateway, as fast as the gateway stores:"
            )
        schedule = functools.partial(
            history_then_live,
            stack_agent,
            clock,
            start=history_start,
            end=history_end,
            cadence_s=cadence_s,
            stored_batches=lambda: ingest.stats.batches,
            on_live=going_live,
        )
        agent_tasks = [asyncio.create_task(stack_agent.run(schedule))]
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, asyncio.create_task(live.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if live.is_set():
            agent_tasks.append(asyncio.create_task(ambient_agent.run()))
            print("live (Ctrl-C to stop):" if seconds is None else f"live for {seconds:g} s:")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await stop.wait()
        stopped.cancel()
        for task in agent_tasks:
            task.cancel()
        await asyncio.gather(*agent_tasks, return_exceptions=True)
        await _wait_drained([stack_agent, ambient_agent], ledger, within_s=10)
        gateway_task.cancel()
        health_task.cancel()
        await asyncio.gather(gateway_task, health_task, return_exceptions=True)
        for simulator in simulators:
            await simulator.stop()
        counts = await store.count_by_instrument()
        accounts = ledger.accounts()
        print()
        print("rollups and the MRV reports of the stack:")
        month = history.start if history.days > 0 else datetime.now(DEMO_ZONE)  # live only: this month's
        await calibration_log(gateway_config, store, story, history)
        report_files = await mrv_reports(gateway_config, store, rollups, [(month.year, month.month)])
        await store.close()
        ledger.close()
        alerts.close()
        rollups.close()
    print()
    print("summary: readings stored per instrument")
    print(f"  {'site':<18} {'instrument':<14} {'readings':>9}")
    for (site_id, instrument), count in sorted(counts.items()):
        print(f"  {site_id:<18} {instrument:<14} {count:>9}")
    print(f"  {'total':<33} {sum(counts.values()):>9}")
    for account in accounts:
        print(
            f"  agent {account.site}/{account.agent}: batches {account.batches} "
            f"(seq {account.first_seq}..{account.last_seq}), missing {account.missing}, duplicates {account.duplicates}"
        )
    print(f"  dead letters: {ingest.stats.dead_letters}")
    for path in report_files:
        print(f"  MRV report: {path}")
    print(f"  data kept in {workdir}")
    return 0 if counts else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aua-demo", description=__doc__)
    parser.add_argument("--for", dest="seconds", type=float, default=None, help="stop by itself after SECONDS")
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"), help="where the demo keeps its data")
    parser.add_argument("--quiet", action="store_true", help="no line per batch, only alerts and the summary")
    parser.add_argument(
        "--replay-days",
        type=float,
        default=None,
        help="first replay the last DAYS of last month through agent, broker and gateway at accelerated time "
        "(default: the whole month; 0: live only)",
    )
    parser.add_argument(
        "--cadence",
        type=float,
        default=REPLAY_CADENCE_S,
        help="simulated seconds between two polls of the replay (default %(default)g)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.replay_days is not None and not 0 <= args.replay_days <= MAX_REPLAY_DAYS:
        parser.error(f"--replay-days takes 0 ... {MAX_REPLAY_DAYS} days (a month at most)")
    if not 1 <= args.cadence <= 3600 or 3600 % args.cadence:
        parser.error("--cadence takes 1 ... 3600 seconds that divide an hour")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--for takes a positive number of seconds")
    print(f"Aua demo, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    return asyncio.run(
        run_demo(args.seconds, args.workdir, args.quiet, replay_days=args.replay_days, cadence_s=args.cadence)
    )


if __name__ == "__main__":
    sys.exit(main())
