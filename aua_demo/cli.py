"""`aua-demo`: the whole chain on embedded defaults, live, then a summary of what was stored.

simulated instruments (Modbus TCP) -> two edge agents (a CHP stack, a Pavlodar ambient station)
-> MQTT broker (mosquitto if installed, else in-process amqtt) -> gateway -> SQLite store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from aua_contract import Batch, Quality
from aua_demo.broker import embedded_broker, free_port
from aua_demo.sites import CONFIG_DIR, demo_sites, relocate
from edge_agent.config import LoadedConfig
from edge_agent.poller import Agent
from edge_agent.simulator import Incidents, simulator_for_config
from gateway.alerts import AlertEngine
from gateway.config import GatewayConfig, load_gateway_config
from gateway.health_writer import HealthWriter
from gateway.ingest import Ingest
from gateway.ledger import Ledger
from gateway.report_files import produce_report, write_report_files
from gateway.rollup import Period
from gateway.rollup_engine import RollupEngine
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


def demo_gateway_config(workdir: Path, broker_host: str, broker_port: int, store_url: str) -> GatewayConfig:
    """config/demo-gateway.toml, moved onto the demo's broker, store and scratch folder."""
    config = load_gateway_config(DEMO_CONFIG)
    config.gateway.state = workdir / "gateway-state.sqlite"
    config.mqtt.host, config.mqtt.port = broker_host, broker_port
    config.store.url = store_url
    config.rollup.reports.directory = workdir / "reports"
    return config


async def monthly_report(config: GatewayConfig, store: Store, rollups: RollupEngine) -> list[Path]:
    """Roll up what arrived and write this month's MRV report of the stack (CSV, JSON, XLSX, PDF)."""
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
    now = datetime.now(ZoneInfo(source.time_zone))
    produced = await produce_report(config, store, source.id, year=now.year, month=now.month, workers=1)
    report = produced.report
    for total in report.totals:
        state = "complete" if total.complete else "incomplete: the rest of the month has no data yet"
        print(f"  {report.source} {now:%Y-%m} {total.name}: {total.measured_t * 1000:.3f} kg measured ({state})")
    if report.reproducibility is not None:
        print(f"  recomputed from raw data: {'same totals' if report.reproducibility.matches else 'DIFFERENT'}")
    return write_report_files(produced, config.rollup.reports.directory)


DEMO_FILES = ("outbox-*.sqlite*", "aua.sqlite*", "gateway-state*.sqlite*", "reports/*")


def fresh_workdir(workdir: Path) -> None:
    """Start each demo from empty stores so its summary counts this run; only the demo's own files go."""
    workdir.mkdir(parents=True, exist_ok=True)
    for pattern in DEMO_FILES:
        for path in workdir.glob(pattern):
            path.unlink()


async def run_demo(seconds: float | None, workdir: Path, quiet: bool) -> int:
    fresh_workdir(workdir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with embedded_broker() as broker:
        print(f"broker: {broker.kind} on {broker.host}:{broker.port}")
        sites: list[LoadedConfig] = []
        for loaded in demo_sites():
            ports = {port: free_port() for port in {i.config.port for i in loaded.instruments}}
            sites.append(
                relocate(loaded, broker_host=broker.host, broker_port=broker.port, ports=ports, workdir=workdir)
            )
        # A short mercury episode 10 s in, so a 60 s demo shows an alert firing and resolving.
        incidents = replace(
            Incidents.demo(time.time()), demo_hg_episode_at=time.time() + 10, demo_hg_episode_seconds=35
        )
        simulators = [simulator_for_config(site, incidents=incidents) for site in sites]
        for simulator in simulators:
            await simulator.start()
        store_url = f"sqlite://{(workdir / 'aua.sqlite').resolve()}"
        gateway_config = demo_gateway_config(workdir, broker.host, broker.port, store_url)
        store = open_store(gateway_config.store.url)
        await store.open()
        ledger = Ledger(gateway_config.gateway.state)
        view = LiveView(quiet)
        alerts = AlertEngine.from_config(gateway_config)
        rollups = RollupEngine.from_config(gateway_config, store)
        ingest = Ingest(gateway_config, store, ledger, on_batch=view, alerts=alerts, rollups=rollups)
        agents = [Agent(site) for site in sites]
        for site in sites:
            names = ", ".join(i.id for i in site.instruments)
            print(f"agent {site.config.agent.site}/{site.config.agent.id}: {names}")
        print(f"store: {gateway_config.store.url}")
        print("live (Ctrl-C to stop):" if seconds is None else f"live for {seconds:g} s:")
        gateway_task = asyncio.create_task(ingest.run())
        health_task = asyncio.create_task(HealthWriter(ingest, store).run())
        await asyncio.wait_for(ingest.connected.wait(), timeout=10)
        agent_tasks = [asyncio.create_task(agent.run()) for agent in agents]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        for task in agent_tasks:
            task.cancel()
        await asyncio.gather(*agent_tasks, return_exceptions=True)
        await _wait_drained(agents, ledger, within_s=10)
        gateway_task.cancel()
        health_task.cancel()
        await asyncio.gather(gateway_task, health_task, return_exceptions=True)
        for simulator in simulators:
            await simulator.stop()
        counts = await store.count_by_instrument()
        accounts = ledger.accounts()
        print()
        print("rollups and this month's MRV report of the stack:")
        report_files = await monthly_report(gateway_config, store, rollups)
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
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--for takes a positive number of seconds")
    print(f"Aua demo, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    return asyncio.run(run_demo(args.seconds, args.workdir, args.quiet))


if __name__ == "__main__":
    sys.exit(main())
