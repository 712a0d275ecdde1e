"""`cems-gateway`: run the gateway, show per-agent accounting, list dead letters, summarise the store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import ssl
import sys
import threading
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path

from aua_ops import ConfigFile, install_secret_filter, secrets_of
from gateway import preflight
from gateway.alerts.builtin import BUILTIN_RULES
from gateway.alerts.engine import AlertEngine, AlertError, AlertStore
from gateway.alerts.messages import MessageFormat, NotifyError, both_times, test_message
from gateway.alerts.notify import notifiers_from_config
from gateway.alerts.rules import ThresholdRule, format_duration, parse_duration
from gateway.alerts.state import Phase
from gateway.config import GatewayConfig, GatewayConfigError, load_gateway_config
from gateway.dashboards.grafana import add_dashboard_commands, run_dashboards_command
from gateway.gc_tuning import tune_for_ingest
from gateway.health_writer import HealthWriter
from gateway.ingest.accounting import accounting_lines
from gateway.ingest.ledger import Ledger
from gateway.ingest.revisions_cli import (
    add_revision_commands,
    revision_count_lines,
    revision_counts,
    run_revisions_command,
)
from gateway.ingest.service import Ingest
from gateway.mrv.mrv_cli import MRV_COMMANDS, add_mrv_commands, run_mrv_command
from gateway.mrv.operating_log import add_operating_state_commands, run_operating_state_command
from gateway.mrv.part75_log import add_cal_test_commands, run_cal_test_command
from gateway.mrv.qa_alerts import QaAlerts
from gateway.mrv.qa_checks import QA_WATCH_LOOKBACK, QaWatch, add_qa_check_commands, run_qa_check_command
from gateway.mrv.report_feed import ReportFeed
from gateway.mrv.retention import retention_settings
from gateway.mrv.rollup_engine import RollupEngine
from gateway.mrv.state_feed import StateFeed
from gateway.roles import Role, plan
from gateway.stores import InfluxStore, Store, StoreError, open_store
from gateway.supervisor import Supervisor, TaskFailed, describe
from gateway.time_ns import from_ns

log = logging.getLogger("gateway.cli")  # not __main__ under `python -m gateway.cli`

STOP_DEADLINE_S = 30.0
"""After a stop begins (signal or failed task), the process ends within this long whatever hangs."""


class _Stopper:
    """SIGTERM/SIGINT: cancel the gateway (a clean stop, exit 0). Whatever starts a stop also starts a
    deadline after which the process exits anyway, and a second signal exits at once: a task or thread
    that does not stop can delay the exit, never prevent it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, main: asyncio.Task[int]) -> None:
        self.loop = loop
        self.main = main
        self.code: int | None = None

    def install(self) -> None:
        # signal.signal, not loop.add_signal_handler: the handler runs whenever the main thread runs
        # Python code, so a stop is started even while the loop is busy.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.code is not None:
            log.error("%s again while stopping: exiting now", signal.Signals(signum).name)
            _exit_now(self.code)
        log.info("stopping (%s)", signal.Signals(signum).name)
        self.begin(0)
        self.loop.call_soon_threadsafe(self.main.cancel)

    def begin(self, code: int) -> None:
        """Start the deadline (once); `code` is the exit status if it expires."""
        if self.code is not None:
            return
        self.code = code
        timer = threading.Timer(STOP_DEADLINE_S, self._deadline)
        timer.daemon = True
        timer.start()

    def _deadline(self) -> None:
        log.error("gateway did not stop within %.0f s: exiting anyway", STOP_DEADLINE_S)
        _exit_now(self.code if self.code is not None else 1)


def _exit_now(code: int) -> None:
    logging.shutdown()
    os._exit(code)


def role_parts(
    config: GatewayConfig, store: Store
) -> tuple[AlertEngine | None, RollupEngine | None, ReportFeed | None, StateFeed | None]:
    """What this instance computes besides ingest, by its `[gateway] roles` (gateway/roles.py): the alert
    engine (alerts), and the rollups, scheduled reports and state feed (mrv); None for what it leaves to
    another instance or what the config does not ask for."""
    roles = plan(config.gateway.roles, shared_group=config.mqtt.shared_group)
    alerts = AlertEngine.from_config(config) if roles.alerts and config.alerts is not None else None
    rollups = RollupEngine.from_config(config, store) if roles.mrv else None
    feed = ReportFeed(config, store, engine=rollups) if rollups and config.rollup.reports.schedule else None
    state_feed = StateFeed(config, store) if roles.mrv and config.state_feed is not None else None
    return alerts, rollups, feed, state_feed


async def _serve(config: GatewayConfig) -> int:
    """Run until SIGINT/SIGTERM (exit 0) or until a background task fails (one log line, exit 1).

    A clean stop records what was stored; the broker redelivers what was not acknowledged, and gap repair
    asks the agents for anything else.
    """
    main = asyncio.current_task()
    assert main is not None
    stopper = _Stopper(asyncio.get_running_loop(), main)
    stopper.install()
    store = open_store(config.store.url, retention=retention_settings(config.store))
    if isinstance(store, InfluxStore):
        await store.open(tolerate_down=True)  # InfluxDB down at start: spool until it answers
    else:
        await store.open()
    ledger = Ledger(config.gateway.state, config.ledger)
    log.info("roles: %s", ", ".join(config.gateway.roles))
    alerts, rollups, feed, state_feed = role_parts(config, store)
    supervisor = Supervisor(stall_s=config.gateway.stall_s)
    ingest = Ingest(config, store, ledger, alerts=alerts, rollups=rollups, supervisor=supervisor)
    supervisor.start("health-writer", HealthWriter(ingest, store).run())
    if feed is not None:
        supervisor.start("report-feed", feed.run())
    if state_feed is not None:
        supervisor.start("state-feed", state_feed.run())
    # Analyzer QA reads the store and the QA logs in this instance's state file: the mrv role's work (one
    # instance), raising alerts when that instance also has the alerts role.
    analyses = Role.MRV in config.gateway.roles
    if analyses and alerts is not None and QaAlerts.needed(config):  # new QAL2 due, Part 75 daily calibration
        supervisor.start("qa-alerts", QaAlerts(config, store, alerts).run())
    qa_watch = (
        QaWatch(config, store, alerts, lookback=QA_WATCH_LOOKBACK)
        if analyses and any(s.qal3 for s in config.sources)
        else None
    )
    if qa_watch is not None:  # QAL3 checks captured as they end, out-of-control alerts (EN 14181:2014 §7)
        ingest.metrics.registry.register(qa_watch)
        supervisor.start("qa-watch", qa_watch.run())
    code = 0
    try:
        await ingest.run()
    except asyncio.CancelledError:
        log.info("stopped")
    except TaskFailed as failure:
        stopper.begin(1)
        code = 1
        log.error("gateway stopping: %s", failure)
        if failure.error is not None:
            log.debug("traceback of the failed task", exc_info=failure.error)
    finally:
        closes = [("store", store.close), ("ledger", ledger.close)]
        closes += [
            (name, obj.close)
            for name, obj in (("rollups", rollups), ("alerts", alerts), ("report feed", feed))
            if obj is not None
        ]
        if state_feed is not None:
            closes.append(("state feed", state_feed.close))
        if qa_watch is not None:
            closes.append(("qa watch", qa_watch.close))
        for name, close in closes:
            try:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as error:  # a failed close must not hide why the gateway stopped
                log.error("closing the %s failed: %s", name, describe(error))
                code = code or 1
    return code


async def _check(config: GatewayConfig, path: Path, *, servers: bool, login: bool) -> int:
    found = await preflight.findings(config, ConfigFile.read(path), servers=servers, login=login)
    for line in found.errors:
        print(line)
    for line in found.warnings:
        print(f"{line} [warning]")
    if not found.errors:
        count = len(found.warnings)
        print(f"{path}: ok{f', {count} warning' if count else ''}{'s' if count > 1 else ''}")
    return 1 if found.errors else 0


def _run(config: GatewayConfig, path: Path) -> int:
    """Refuse to start on what `check` calls an error, each one line; then serve until stopped."""
    found = preflight.static_findings(config, ConfigFile.read(path))
    if found.errors:
        print("\n".join(found.errors), file=sys.stderr)
        return 1
    preflight.create_folders(config)
    tune_for_ingest()
    try:
        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):  # a signal before _serve ran
            return asyncio.run(_serve(config))
    except (OSError, ssl.SSLError, StoreError) as error:  # found after the checks (a port taken since): one line
        log.debug("stopped by", exc_info=True)  # the traceback, with -v only
        print(f"{path}: cannot run: {error}", file=sys.stderr)
        return 1
    return 0


def _accounting(config: GatewayConfig) -> int:
    ledger = Ledger(config.gateway.state, config.ledger)
    try:
        lines = accounting_lines(ledger.accounts(), ledger.owed(), ledger.resend_requests(), ledger.counters())
    finally:
        ledger.close()
    try:
        lines += revision_count_lines(sorted(revision_counts(config).items()))
    except StoreError as error:
        lines.append(f"revisions: not counted, the store is unavailable ({error})")
    print("\n".join(lines))
    return 0


def _dead_letters(config: GatewayConfig) -> int:
    ledger = Ledger(config.gateway.state, config.ledger)
    for letter in ledger.dead_letters():
        when = from_ns(letter.received_ns).isoformat(timespec="seconds")
        kept = f", first {len(letter.payload)} kept, sha256 {letter.sha256}" if letter.truncated else ""
        print(f"{when} {letter.topic}: {letter.reason} ({letter.size} bytes{kept})")
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
    for builtin in BUILTIN_RULES:
        rule = builtin.rule
        sources = builtin.sources(config)
        if not config.alerts.enabled or not builtin.in_force(config):
            checks = "not in force"
        else:
            checks = f"source={','.join(sources)}" if sources else "in force, nothing to check in this config"
        print(f"{rule.name:<20} {'built-in':<10} {rule.severity.value:<8} {rule.describe()}; {checks}")
        print(f"    fires: {builtin.trigger}")
        print(f"    enabled by: {builtin.enabled_by}")
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
        ("check", "find config and start-up problems before `run` does: files, folders, ports, broker, store"),
        ("accounting", "per agent: batches received, sequence range, missing, duplicates"),
        ("dead-letters", "the most recent rejected messages and why"),
        ("summary", "readings stored per instrument"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("config", type=Path)
        if name == "check":
            command.add_argument("--no-servers", action="store_true", help="do not contact the broker or the store")
            command.add_argument(
                "--login",
                action="store_true",
                help="also log in to the broker with the gateway's credentials; only while the gateway is stopped: "
                "a broker that binds client ids to usernames hands the login the running gateway's session",
            )
    add_mrv_commands(commands)
    add_dashboard_commands(commands)
    add_revision_commands(commands)
    add_operating_state_commands(commands)
    add_cal_test_commands(commands)
    add_qa_check_commands(commands)
    alerts = commands.add_parser("alerts", help="alert state, acknowledgements, silences, rules").add_subparsers(
        dest="alerts_command", required=True
    )
    for name, text in (
        ("list", "pending and firing alerts (--all: every alert), silences, undelivered messages"),
        ("ack", "acknowledge a firing alert: no reminders for it until it fires again"),
        ("silence", "no notifications for matching alerts for a while (they still change state)"),
        ("unsilence", "end a silence now"),
        ("rules", "the rules: defaults plus [alerts.rules] overrides, then the built-in QA rules"),
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
    secret_filter = install_secret_filter()
    try:
        config = load_gateway_config(args.config)
    except GatewayConfigError as error:
        print(error, file=sys.stderr)  # one line per problem: FILE:LINE: KEY: what
        return 1
    secret_filter.add_secrets(secrets_of(config))
    if args.command == "check":
        return asyncio.run(_check(config, args.config, servers=not args.no_servers, login=args.login))
    if args.command == "alerts":
        return _alerts_command(config, args)
    if args.command == "dashboards":
        return run_dashboards_command(config, args)
    if args.command == "revisions":
        return run_revisions_command(config, args)
    if args.command == "operating-state":
        return run_operating_state_command(config, args)
    if args.command == "cal-test":
        return run_cal_test_command(config, args)
    if args.command == "qa-check":
        return run_qa_check_command(config, args)
    if args.command in MRV_COMMANDS:
        return run_mrv_command(config, args)
    if args.command == "run":
        return _run(config, args.config)
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
