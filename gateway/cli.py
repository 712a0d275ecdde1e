"""`cems-gateway`: run the gateway, show per-agent accounting, list dead letters, summarise the store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import signal
import sys
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path

from gateway.accounting import accounting_lines
from gateway.alert_rules import ThresholdRule, format_duration, parse_duration
from gateway.alert_state import Phase
from gateway.alerts import AlertEngine, AlertError, AlertStore
from gateway.config import GatewayConfig, GatewayConfigError, load_gateway_config
from gateway.dashboards import add_dashboard_commands, run_dashboards_command
from gateway.gc_tuning import tune_for_ingest
from gateway.health_writer import HealthWriter
from gateway.ingest import Ingest
from gateway.ledger import Ledger
from gateway.notify import MessageFormat, NotifyError, both_times, notifiers_from_config, test_message
from gateway.report_files import MRV_COMMANDS, ReportFeed, add_mrv_commands, run_mrv_command
from gateway.retention import retention_settings
from gateway.rollup_engine import RollupEngine
from gateway.state_feed import StateFeed
from gateway.stores import open_store


async def _serve_all(ingest: Ingest, feed: ReportFeed | None, state_feed: StateFeed | None) -> None:
    async with asyncio.TaskGroup() as group:
        group.create_task(ingest.run())
        group.create_task(HealthWriter(ingest, ingest.store).run())
        if feed is not None:
            group.create_task(feed.run())
        if state_feed is not None:
            group.create_task(state_feed.run())


async def _serve(config: GatewayConfig) -> None:
    """Run until SIGINT/SIGTERM, then stop cleanly: what was stored is recorded, the rest comes back by gap repair."""
    store = open_store(config.store.url, retention=retention_settings(config.store))
    await store.open()
    ledger = Ledger(config.gateway.state)
    alerts = AlertEngine.from_config(config) if config.alerts is not None else None
    rollups = RollupEngine.from_config(config, store)
    feed = ReportFeed(config, store, engine=rollups) if config.rollup.reports.schedule else None
    state_feed = StateFeed(config, store) if config.state_feed is not None else None
    ingest = Ingest(config, store, ledger, alerts=alerts, rollups=rollups)
    task = asyncio.create_task(_serve_all(ingest, feed, state_feed))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger(__name__).info("stopping")
    finally:
        await store.close()
        ledger.close()
        if alerts is not None:
            alerts.close()
        if feed is not None:
            feed.close()
        if state_feed is not None:
            state_feed.close()
        rollups.close()


def _accounting(config: GatewayConfig) -> int:
    ledger = Ledger(config.gateway.state)
    try:
        lines = accounting_lines(ledger.accounts(), ledger.owed(), ledger.resend_requests())
    finally:
        ledger.close()
    print("\n".join(lines))
    return 0


def _dead_letters(config: GatewayConfig) -> int:
    ledger = Ledger(config.gateway.state)
    for letter in ledger.dead_letters():
        when = datetime.fromtimestamp(letter.received_ns / 1e9, UTC).isoformat(timespec="seconds")
        print(f"{when} {letter.topic}: {letter.reason} ({len(letter.payload)} bytes)")
    ledger.close()
    return 0


async def _summary(config: GatewayConfig) -> int:
    store = open_store(config.store.url)
    await store.open()
    try:
        counts = await store.count_by_instrument()
    finally:
        await store.close()
    for (site, instrument), count in sorted(counts.items()):
        print(f"{site:<20} {instrument:<20} {count:>9}")
    return 0


# ---- alerts -------------------------------------------------------------------------------------------------


def _alert_store(config: GatewayConfig) -> AlertStore | None:
    if config.alerts is None:
        print("alerts are not configured: add an [alerts] section (see config/gateway.toml)", file=sys.stderr)
        return None
    return AlertStore(config.gateway.state)


def _who(name: str | None) -> str:
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _alerts_list(config: GatewayConfig, *, show_all: bool) -> int:
    store = _alert_store(config)
    if store is None or config.alerts is None:
        return 1
    tz, now = config.alerts.tz, datetime.now(UTC)
    try:
        rows = [row for row in store.load() if show_all or row.state.phase is not Phase.INACTIVE]
        print(f"{'id':>4} {'phase':<9} {'since (UTC)':<19} {'value':>10}  alert")
        for row in rows:
            state = row.state
            since = f"{state.since.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if state.since else "-"
            value = "-" if state.value is None else f"{state.value:.4g}"
            ack = f"  acked by {row.acked_by}" if row.acked_by else ""
            print(f"{row.id:>4} {state.phase.value:<9} {since:<19} {value:>10}  {row.key}  {state.detail}{ack}")
        silences = store.silences(now)
        if silences:
            print("\nactive silences:")
        for silence in silences:
            print(
                f"{silence.id:>4} rule={silence.rule} site={silence.site} instrument={silence.instrument} "
                f"until {both_times(silence.ends, tz)} by {silence.by or '?'}: {silence.reason}"
            )
        failing = store.deliveries(undelivered_only=True)
        if failing:
            print("\nundelivered messages:")
        for delivery in failing:
            state_text = "abandoned" if delivery.abandoned_at else f"retry at {delivery.next_at:%H:%M:%S} UTC"
            error = delivery.error or "not tried yet"
            print(f"  message {delivery.message_id} via {delivery.notifier}: {error} ({state_text})")
    finally:
        store.close()
    return 0


def _alerts_ack(config: GatewayConfig, alert_id: int, *, by: str | None, note: str) -> int:
    store = _alert_store(config)
    if store is None:
        return 1
    try:
        row = store.acknowledge(alert_id, by=_who(by), now=datetime.now(UTC), note=note)
    except AlertError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"alert {row.id} ({row.key}) acknowledged by {row.acked_by}: no reminders for this episode")
    return 0


def _alerts_silence(config: GatewayConfig, args: argparse.Namespace) -> int:
    store = _alert_store(config)
    if store is None or config.alerts is None:
        return 1
    try:
        span = parse_duration(args.duration)
        now = datetime.now(UTC)
        silence_id = store.add_silence(
            starts=now,
            ends=now + span,
            rule=args.rule,
            site=args.site,
            instrument=args.instrument,
            reason=args.reason,
            by=_who(args.by),
        )
    except (ValueError, AlertError) as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        store.close()
    known = [rule.name for rule in config.alerts.effective_rules() if fnmatchcase(rule.name, args.rule)]
    print(
        f"silence {silence_id}: rule {args.rule} ({', '.join(known) or 'matches no configured rule'}), "
        f"site {args.site}, instrument {args.instrument}, until {both_times(now + span, config.alerts.tz)}"
    )
    return 0


def _alerts_unsilence(config: GatewayConfig, silence_id: int) -> int:
    store = _alert_store(config)
    if store is None:
        return 1
    try:
        store.end_silence(silence_id, datetime.now(UTC))
    except AlertError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"silence {silence_id} ended")
    return 0


def _alerts_rules(config: GatewayConfig) -> int:
    if config.alerts is None:
        print("alerts are not configured: add an [alerts] section (see config/gateway.toml)", file=sys.stderr)
        return 1
    for name, table in sorted(config.alerts.rules.items()):
        rule = table.to_rule(name)
        scope = rule.scope
        where = f"site={','.join(scope.sites) or '(none: set [alerts] ambient_sites)'}"
        for label, patterns in (("agent", scope.agents), ("instrument", scope.instruments)):
            if patterns != ("*",):
                where += f" {label}={','.join(patterns)}"
        if scope.parameters != ("*",):
            where += f" parameter={','.join(scope.parameters)}"
        state = "" if table.enabled else " (disabled)"
        if isinstance(rule, ThresholdRule):
            threshold = rule.threshold
            where += (
                f"; {rule.window.label} {threshold.direction.value} {threshold.limit:g} {rule.unit}"
                f" (clear {threshold.clear:g})"
            )
        if rule.for_:
            where += f"; for {format_duration(rule.for_)}"
        print(f"{name:<20} {table.kind:<10} {rule.severity.value:<8} {rule.describe()}; {where}{state}")
    return 0


async def _alerts_test(config: GatewayConfig) -> int:
    if config.alerts is None:
        print("alerts are not configured: add an [alerts] section (see config/gateway.toml)", file=sys.stderr)
        return 1
    message_format = MessageFormat(config.alerts.tz, config.alerts.dashboard_url)
    try:
        notifiers = notifiers_from_config(
            config.alerts.notify, config.mqtt, gateway_id=config.gateway.id, message_format=message_format
        )
    except NotifyError as error:
        print(error, file=sys.stderr)
        return 1
    if not notifiers:
        print("no notifier configured in [alerts.notify]", file=sys.stderr)
        return 1
    message = test_message(datetime.now(UTC))
    failed = 0
    for notifier in notifiers:
        try:
            await notifier.send(message)
        except NotifyError as error:
            failed += 1
            print(f"FAILED {notifier.name}: {error}")
        else:
            print(f"sent   {notifier.name}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cems-gateway", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "subscribe, validate and store until stopped"),
        ("accounting", "per agent: batches received, sequence range, missing, duplicates"),
        ("dead-letters", "the most recent rejected messages and why"),
        ("summary", "readings stored per instrument"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("config", type=Path)
    add_mrv_commands(commands)
    add_dashboard_commands(commands)
    alerts = commands.add_parser("alerts", help="alert state, acknowledgements, silences, rules").add_subparsers(
        dest="alerts_command", required=True
    )
    for name, text in (
        ("list", "pending and firing alerts (--all: every alert), silences, undelivered messages"),
        ("ack", "acknowledge a firing alert: no reminders for it until it fires again"),
        ("silence", "no notifications for matching alerts for a while (they still change state)"),
        ("unsilence", "end a silence now"),
        ("rules", "the rules in force: defaults plus [alerts.rules] overrides"),
        ("test", "send a test message through every configured notifier"),
    ):
        command = alerts.add_parser(name, help=text)
        command.add_argument("config", type=Path)
        if name == "list":
            command.add_argument("--all", action="store_true", help="include inactive alerts")
        if name == "ack":
            command.add_argument("id", type=int, help="alert id from `alerts list`")
            command.add_argument("--by", help="who acknowledges (default: the login name)")
            command.add_argument("--note", default="", help="why, for the record")
        if name == "silence":
            command.add_argument("--rule", required=True, help="rule name or glob pattern, e.g. hg-* or '*'")
            command.add_argument("--for", dest="duration", required=True, help="how long: 30m, 2h, 1d")
            command.add_argument("--site", default="*", help="site name or glob (default: every site)")
            command.add_argument("--instrument", default="*", help="instrument (or agent) name or glob")
            command.add_argument("--reason", default="", help="why, for the record")
            command.add_argument("--by", help="who silences (default: the login name)")
        if name == "unsilence":
            command.add_argument("id", type=int, help="silence id from `alerts list`")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_gateway_config(args.config)
    except GatewayConfigError as error:
        print(f"config error:\n{error}", file=sys.stderr)
        return 1
    if args.command == "alerts":
        return _alerts_command(config, args)
    if args.command == "dashboards":
        return run_dashboards_command(config, args)
    if args.command in MRV_COMMANDS:
        return run_mrv_command(config, args)
    if args.command == "run":
        tune_for_ingest()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(config))
        return 0
    if args.command == "accounting":
        return _accounting(config)
    if args.command == "dead-letters":
        return _dead_letters(config)
    return asyncio.run(_summary(config))


def _alerts_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    if args.alerts_command == "list":
        return _alerts_list(config, show_all=args.all)
    if args.alerts_command == "ack":
        return _alerts_ack(config, args.id, by=args.by, note=args.note)
    if args.alerts_command == "silence":
        return _alerts_silence(config, args)
    if args.alerts_command == "unsilence":
        return _alerts_unsilence(config, args.id)
    if args.alerts_command == "rules":
        return _alerts_rules(config)
    return asyncio.run(_alerts_test(config))


if __name__ == "__main__":
    sys.exit(main())
