"""Alerts end to end on real parts: the simulator's mercury episode through the engine to an SMTP sink
(aiosmtpd) and a local HTTP receiver via apprise, MQTT on a real mosquitto, Grafana annotations (a local
HTTP receiver: no Grafana server can run here), restarts on the same state DB, rate limits, silences, CLI.

Time is injected: the engine gets `received_at` and `tick(now)` from the test, the simulator a hand-moved
clock, so four simulated minutes take well under a second.
"""

from __future__ import annotations

import asyncio
import email
import io
import json
import re
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from eventually import eventually
from http_receiver import HttpReceiver
from ports import free_port
from servers import MosquittoServer

from aua_contract import AgentState, AgentStatus, Batch, Quality, Reading, encode_batch, readings_topic
from aua_mqtt import BrokerConnection
from aua_simulator.incidents import Incidents
from aua_simulator.modbus_servers import simulator_for_config
from edge_agent.config import load_config
from edge_agent.quality import quality_from_bits
from gateway.alerts.engine import AlertEngine, AlertStore
from gateway.alerts.messages import Message, MessageFormat, Notifier, NotifyError, notice_document, notice_from_document
from gateway.alerts.notify import (
    AppriseNotifier,
    ConsoleNotifier,
    GrafanaAnnotationNotifier,
    MqttNotifier,
    alerts_topic,
)
from gateway.alerts.state import AlertKey, Notice, NoticeKind, Phase, Severity
from gateway.cli import main as gateway_main
from gateway.config import AlertsSection, GatewayConfig, GatewaySection, MqttSection, load_gateway_config
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.stores import open_store

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
START = 1_796_104_800.0
"""2026-12-01 06:00:00 UTC, 11:00 in Pavlodar; the demo's mercury episode starts 20 s later."""
SITE = "pavlodar-ambient"
HG_SCREENING = AlertKey("hg-screening", SITE, "pvl-station-1", "pvl1-hg", "hg")
DASHBOARD = "http://grafana.test:3000/d/aua-ambient"
ALMATY = ZoneInfo("Asia/Almaty")


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# --------------------------------------------------------------------------------------------------
# Receivers
# --------------------------------------------------------------------------------------------------


class SmtpSink:
    """aiosmtpd handler keeping every message it is given."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        message = email.message_from_bytes(content, policy=default_policy)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"

    @property
    def subjects(self) -> list[str]:
        return [str(message["Subject"]) for message in self.messages]

    def text(self, index: int) -> str:
        part = self.messages[index].get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())


@pytest.fixture
def smtp_sink() -> Iterator[tuple[SmtpSink, int]]:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


def mail_url(port: int) -> str:
    return f"mailto://127.0.0.1:{port}?from=aua@example.com&to=ops@example.com&mode=insecure"


def json_url(receiver: HttpReceiver, path: str = "hook") -> str:
    return f"json://{receiver.hostport}/{path}"


def apprise_channels(*urls: str) -> list[Notifier]:
    """apprise notifiers without apprise's 5.5 s pause between two sends to one service (see AppriseNotifier)."""
    return [AppriseNotifier(url, MessageFormat(ALMATY, DASHBOARD), throttle=0) for url in urls]


# --------------------------------------------------------------------------------------------------
# The simulated station, read the way the agent decodes it
# --------------------------------------------------------------------------------------------------


class Station:
    """aua_simulator.modbus_servers playing config/pavlodar-ambient.toml with the demo's incidents on a clock the test
    moves: per tick, each tag's served value and the NE107 quality its status block gives (as the agent)."""

    def __init__(self, seed: int = 0) -> None:
        self.now = START
        self.site = load_config(CONFIG_DIR / "pavlodar-ambient.toml")
        self.simulator = simulator_for_config(
            self.site, seed=seed, incidents=Incidents.demo(START), clock=lambda: self.now
        )
        self.served: list[Reading] = []

    def batch(self, tick: int) -> Batch:
        self.now = START + tick
        ts = utc(self.now)
        readings: list[Reading] = []
        for instrument in self.simulator.instruments:
            image = self.simulator.image_now(instrument.id)
            words = image.served.status
            quality = {
                block.name: quality_from_bits(block, [bool(words[block.name] >> bit & 1) for bit in range(block.count)])
                for block in instrument.profile.status
            }
            readings += [
                Reading(
                    instrument=instrument.id,
                    parameter=tag.name,
                    value=image.served.values[tag.name],
                    unit=tag.unit,
                    ts=ts,
                    quality=quality[tag.status] if tag.status else Quality.OK,
                    status=words[tag.status] if tag.status else None,
                )
                for tag in instrument.profile.tag
            ]
        self.served += readings
        agent = self.site.config.agent
        return Batch(site=agent.site, agent=agent.id, seq=tick, sent_at=ts, readings=readings)


def config(tmp_path: Path, mqtt: MqttSection | None = None, **alerts: Any) -> GatewayConfig:
    section: dict[str, Any] = {"ambient_sites": [SITE], "group_wait": 0, "dashboard_url": DASHBOARD}
    section.update(alerts)
    return GatewayConfig(
        gateway=GatewaySection(id="gw-test", state=tmp_path / "gateway-state.sqlite"),
        mqtt=mqtt or MqttSection(),
        alerts=AlertsSection.model_validate(section),
    )


async def feed(engine: AlertEngine, station: Station, ticks: range) -> None:
    """One batch per second, received 0.3 s after the sample, and the engine's tick 0.2 s later."""
    for tick in ticks:
        batch = station.batch(tick)
        await engine.on_batch(batch, utc(START + tick + 0.3))
        await engine.tick(utc(START + tick + 0.5))


def fired_alerts(engine: AlertEngine) -> list[AlertKey]:
    return [row.key for row in engine.store.load() if row.state.episode > 0]


# --------------------------------------------------------------------------------------------------
# The mercury episode
# --------------------------------------------------------------------------------------------------


async def test_a_mercury_episode_gives_one_firing_and_one_resolution(
    tmp_path: Path, smtp_sink: tuple[SmtpSink, int], http_receiver: HttpReceiver
) -> None:
    """The demo episode (480 ng/m³ for ~2 min on a 5 ng/m³ background; a zero/span check in the middle with
    seed 0) fires the hg-screening rule once and resolves it once, by e-mail and by webhook; nothing else fires.
    The daily-mean ПДК (docs/regulatory-basis.md §5) is not claimed: the messages name the instant value and say so."""
    sink, port = smtp_sink
    gateway = config(tmp_path)
    engine = AlertEngine.from_config(gateway, notifiers=apprise_channels(mail_url(port), json_url(http_receiver)))
    station = Station(seed=0)
    await feed(engine, station, range(240))

    assert len(sink.messages) == 2
    firing, resolved = sink.subjects
    assert firing == (
        "[WARNING] FIRING: gaseous mercury above 300 ng/m³ (instant value, screening) at pavlodar-ambient/pvl1-hg hg"
    )
    assert (
        resolved
        == "[RESOLVED] gaseous mercury above 300 ng/m³ (instant value, screening) at pavlodar-ambient/pvl1-hg hg"
    )
    assert sink.envelopes[0] == ("aua@example.com", ["ops@example.com"])
    text = sink.text(0)
    assert "Where: site pavlodar-ambient, instrument pvl1-hg, parameter hg, agent pvl-station-1" in text
    assert "instant value: " in text
    assert "ng/m³, above the limit 300 ng/m³" in text
    assert "Since 2026-12-01 06:00:" in text
    assert "UTC (11:00:" in text
    assert "Asia/Almaty)" in text
    assert "screening level, not a ПДК exceedance" in text
    assert f"Dashboard: {DASHBOARD}?var-site=pavlodar-ambient&var-instrument=pvl1-hg&from=" in text
    assert re.search(r"Alert \d+; acknowledge: cems-gateway alerts ack CONFIG \d+", text)
    assert "Resolved 2026-12-01 06:02:" in sink.text(1)
    assert "highest" in sink.text(1)

    assert [request.path for request in http_receiver.requests] == ["/hook", "/hook"]
    documents = [request.json() for request in http_receiver.requests]
    assert [d["type"] for d in documents] == ["warning", "success"]
    assert documents[0]["title"] == firing

    assert fired_alerts(engine) == [HG_SCREENING]
    state = engine.state_of(HG_SCREENING)
    assert state is not None
    assert (state.phase, state.episode) == (Phase.RESOLVED, 1)
    assert state.since is not None
    assert state.fired_at is not None
    assert state.resolved_at is not None
    assert state.fired_at - state.since >= timedelta(seconds=30)  # the rule's `for`
    # The zero/span check inside the episode read ~0 ng/m³ while firing; flagged check_function, it was not used.
    calibration = [
        r
        for r in station.served
        if r.parameter == "hg" and r.quality is Quality.CHECK_FUNCTION and state.fired_at < r.ts < state.resolved_at
    ]
    assert calibration
    assert all(r.value is not None and r.value < 270 for r in calibration)
    engine.close()


async def test_a_restart_during_a_firing_alert_sends_nothing_new(
    tmp_path: Path, smtp_sink: tuple[SmtpSink, int]
) -> None:
    sink, port = smtp_sink
    gateway = config(tmp_path)
    station = Station(seed=0)
    first = AlertEngine.from_config(gateway, notifiers=apprise_channels(mail_url(port)))
    await feed(first, station, range(90))
    assert [s.split(":")[0] for s in sink.subjects] == ["[WARNING] FIRING"]
    first.close()

    second = AlertEngine.from_config(gateway, notifiers=apprise_channels(mail_url(port)))  # a new process, same DB
    state = second.state_of(HG_SCREENING)
    assert state is not None
    assert state.phase is Phase.FIRING
    await feed(second, station, range(90, 130))  # still above the limit, through the calibration
    assert len(sink.messages) == 1
    await feed(second, station, range(130, 240))
    assert [s.split(" ")[0] for s in sink.subjects] == ["[WARNING]", "[RESOLVED]"]
    second.close()


async def test_a_notice_queued_before_a_crash_is_delivered_once_after_it(
    tmp_path: Path, smtp_sink: tuple[SmtpSink, int]
) -> None:
    sink, port = smtp_sink
    gateway = config(tmp_path)
    station = Station(seed=0)
    first = AlertEngine.from_config(gateway, notifiers=apprise_channels(mail_url(port)))
    for tick in range(120):
        await first.on_batch(station.batch(tick), utc(START + tick + 0.3))
        state = first.state_of(HG_SCREENING)
        if state is not None and state.phase is Phase.FIRING:
            break  # the firing is on disk, nobody told yet: the gateway dies here
        await first.tick(utc(START + tick + 0.5))
    first.close()
    assert sink.messages == []

    second = AlertEngine.from_config(gateway, notifiers=apprise_channels(mail_url(port)))
    await second.tick(utc(START + tick + 1))
    await second.tick(utc(START + tick + 2))
    assert [s.split(" ")[1] for s in sink.subjects] == ["FIRING:"]
    second.close()


# --------------------------------------------------------------------------------------------------
# Synthetic data: grouping, rate limits, retries, data rules, silences and the CLI
# --------------------------------------------------------------------------------------------------

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def hg_batch(site: str, instruments: list[str], value: float, at: datetime, seq: int = 0) -> Batch:
    readings = [Reading(instrument=i, parameter="hg", value=value, unit="ng/m3", ts=at) for i in instruments]
    return Batch(site=site, agent="a1", seq=seq, sent_at=at, readings=readings)


async def test_notices_are_grouped_and_rate_limited_without_loss(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    """Four sites exceed at once: with 2 messages per hour, one message for the first site's three
    instruments and one digest for the other three sites; the resolutions wait for the next hour."""
    gateway = config(
        tmp_path,
        ambient_sites=["s*"],
        group_wait="10s",
        max_messages=2,
        per="1h",
        data_rules=False,
        rules={"hg-screening": {"for": 0}},
    )
    engine = AlertEngine.from_config(gateway, notifiers=apprise_channels(json_url(http_receiver)))
    sites = {"s1": ["hg1", "hg2", "hg3"], "s2": ["hg1"], "s3": ["hg1"], "s4": ["hg1"]}
    for site, instruments in sites.items():
        await engine.on_batch(hg_batch(site, instruments, 480.0, T0), T0)
    await engine.tick(T0 + timedelta(seconds=5))
    assert http_receiver.requests == []  # group_wait
    await engine.tick(T0 + timedelta(seconds=10))
    titles = [request.json()["title"] for request in http_receiver.requests]
    assert len(titles) == 2
    assert titles[0].startswith("[WARNING] 3 alert notices (3 firing): gaseous mercury")
    assert titles[1].startswith("[WARNING] 3 alert notices (3 firing)")
    assert "s4/hg1" in http_receiver.requests[1].json()["message"]

    for seq, (site, instruments) in enumerate(sites.items(), start=1):
        await engine.on_batch(hg_batch(site, instruments, 5.0, T0 + timedelta(minutes=5), seq), T0)
    await engine.tick(T0 + timedelta(minutes=30))
    assert len(http_receiver.requests) == 2  # budget spent
    await engine.tick(T0 + timedelta(minutes=60, seconds=10))
    titles = [request.json()["title"] for request in http_receiver.requests[2:]]
    assert len(titles) == 2
    assert titles[0].startswith("[WARNING] 3 alert notices (3 resolved)")
    everything = " ".join(request.json()["message"] for request in http_receiver.requests)
    for site, instruments in sites.items():
        for instrument in instruments:
            assert everything.count(f"at {site}/{instrument} hg") == 2  # every firing and resolution told once
    engine.close()


async def test_a_failing_channel_is_retried_alone(
    tmp_path: Path, smtp_sink: tuple[SmtpSink, int], http_receiver: HttpReceiver
) -> None:
    sink, port = smtp_sink
    http_receiver.statuses = [500]
    gateway = config(tmp_path, data_rules=False, rules={"hg-screening": {"for": 0}})
    engine = AlertEngine.from_config(gateway, notifiers=apprise_channels(mail_url(port), json_url(http_receiver)))
    await engine.on_batch(hg_batch(SITE, ["pvl1-hg"], 480.0, T0), T0)
    await engine.tick(T0)
    assert (len(sink.messages), len(http_receiver.requests)) == (1, 1)
    [failed] = engine.store.deliveries(undelivered_only=True)
    assert failed.notifier.startswith("apprise:json://")
    assert failed.next_at == T0 + timedelta(seconds=5)
    await engine.tick(T0 + timedelta(seconds=4))
    assert len(http_receiver.requests) == 1  # backing off
    await engine.tick(T0 + timedelta(seconds=5))
    assert (len(sink.messages), len(http_receiver.requests)) == (1, 2)
    assert engine.store.deliveries(undelivered_only=True) == []
    engine.close()


INJECTED = "CREATE TEMP TRIGGER injected BEFORE INSERT ON alert_notice BEGIN SELECT RAISE(ABORT, 'injected'); END"
"""A failure between an alert's transition and its notice: the notice's INSERT fails on the store's connection."""


async def test_a_failure_between_a_transition_and_its_notice_writes_neither(tmp_path: Path) -> None:
    """The firing fails to be written: nothing says "firing" on disk, and a restart tells it when it comes
    again (before: the alert stayed "firing, told" with no notice, and nobody was ever told)."""
    stream = io.StringIO()
    gateway = config(tmp_path, data_rules=False, rules={"hg-screening": {"for": 0}})
    console = ConsoleNotifier(MessageFormat(ALMATY), stream)
    first = AlertEngine.from_config(gateway, notifiers=[console])
    first.store._db.execute(INJECTED)
    await first.on_batch(hg_batch(SITE, ["pvl1-hg"], 480.0, T0), T0)  # logged, not raised: ingest goes on
    assert [row.state.phase for row in first.store.load()] == [Phase.INACTIVE]
    assert first.store.queued() == []
    first.close()  # the gateway dies

    second = AlertEngine.from_config(gateway, notifiers=[console])
    later = T0 + timedelta(seconds=1)
    await second.on_batch(hg_batch(SITE, ["pvl1-hg"], 480.0, later, seq=1), later)
    await second.tick(later)
    assert [line.split(" ")[2] for line in stream.getvalue().splitlines()] == ["FIRING"]
    second.close()


async def test_a_transition_whose_write_failed_is_written_and_told_with_the_next_one(tmp_path: Path) -> None:
    stream = io.StringIO()
    gateway = config(tmp_path, data_rules=False, rules={"hg-screening": {"for": 0}})
    engine = AlertEngine.from_config(gateway, notifiers=[ConsoleNotifier(MessageFormat(ALMATY), stream)])
    engine.store._db.execute(INJECTED)
    await engine.on_batch(hg_batch(SITE, ["pvl1-hg"], 480.0, T0), T0)
    with pytest.raises(sqlite3.IntegrityError, match="injected"):
        await engine.tick(T0 + timedelta(seconds=1))  # still failing (the run loop logs it and ticks again)
    assert stream.getvalue() == ""
    engine.store._db.execute("DROP TRIGGER injected")
    await engine.tick(T0 + timedelta(seconds=2))
    assert [line.split(" ")[2] for line in stream.getvalue().splitlines()] == ["FIRING"]
    [row] = engine.store.load()
    assert (row.state.phase, row.firing_sent) == (Phase.FIRING, True)
    engine.close()


def start_gateway(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", str(config_path)], stdout=out, stderr=subprocess.STDOUT
        )


def outbox_rows(state: Path) -> list[tuple[str, int | None, int]]:
    """(notice status, delivered_ns, attempts) of every notice with a delivery, read on a connection of its own."""
    db = sqlite3.connect(state, timeout=10)
    try:
        query = """SELECT n.status, d.delivered_ns, d.attempts FROM alert_notice n
                   JOIN alert_delivery d ON d.message_id = n.message_id ORDER BY n.id"""
        return [(str(s), d, int(a)) for s, d, a in db.execute(query).fetchall()]
    finally:
        db.close()


class HoldingReceiver:
    """A webhook that records every POST and leaves the first one unanswered until `release` is set: a
    delivery in flight when the gateway dies. The rest are answered 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.bodies.append(body)
                if len(receiver.bodies) == 1:
                    receiver.release.wait(timeout=30)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def hostport(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize(
    ("when", "before_kill"),
    [
        ("after a failed attempt (HTTP 500), before its retry", ("sending", None, 1)),
        ("while the attempt is in flight (no answer yet)", ("sending", None, 0)),
    ],
    ids=["after-a-failed-attempt", "in-flight"],
)
async def test_a_notice_of_a_gateway_killed_before_delivering_it_arrives_after_the_restart(
    tmp_path: Path,
    mosquitto: MosquittoServer,
    http_receiver: HttpReceiver,
    when: str,
    before_kill: tuple[str, None, int],
) -> None:
    """A real `cems-gateway run` fires on a batch from the broker and is killed (SIGKILL) before the webhook has
    taken the notice: the notice waits in the outbox (the state DB) and the restarted gateway delivers it. At
    least once: the receiver saw the first attempt too, the same message both times."""
    site, agent = f"s{uuid.uuid4().hex[:8]}", f"a{uuid.uuid4().hex[:8]}"
    holding = HoldingReceiver()
    if when.startswith("after"):
        http_receiver.statuses = [500]
        hostport = http_receiver.hostport
        bodies = lambda: [request.body for request in http_receiver.requests]  # noqa: E731
    else:
        hostport = holding.hostport
        bodies = lambda: list(holding.bodies)  # noqa: E731
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
id = "gw-{site}"
state = "state.sqlite"

[mqtt]
host = "{mosquitto.host}"
port = {mosquitto.port}

[store]
url = "sqlite://aua.sqlite"

[alerts]
ambient_sites = ["{site}"]
data_rules = false
group_wait = 0

[alerts.rules.hg-screening]
for = 0

[alerts.notify]
apprise = ["json://{hostport}/hook"]
"""
    )
    log, state = tmp_path / "gateway.log", tmp_path / "state.sqlite"
    gateway = start_gateway(path, log)
    try:
        await eventually(lambda: log.exists() and "subscribed at" in log.read_text(), timeout=60)
        now = datetime.now(UTC)
        batch = Batch(
            site=site,
            agent=agent,
            seq=0,
            sent_at=now,
            readings=[Reading(instrument="hg1", parameter="hg", value=480.0, unit="ng/m3", ts=now)],
        )
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"pub-{agent}") as client:
            await client.publish(readings_topic(site, agent), encode_batch(batch), qos=1)
        await eventually(lambda: len(bodies()) == 1, timeout=30)
        await eventually(lambda: outbox_rows(state) == [before_kill], timeout=10)
        gateway.kill()  # SIGKILL: before the retry 5 s later, or with the request unanswered
        gateway.wait(timeout=10)
        assert outbox_rows(state) == [before_kill]  # firing, taken by nobody yet, waiting in the outbox
        holding.release.set()

        gateway = start_gateway(path, log)
        await eventually(lambda: len(bodies()) == 2, timeout=60)
        await eventually(lambda: [row[0] for row in outbox_rows(state)] == ["sent"], timeout=10)
        first, second = (json.loads(body) for body in bodies())
        assert first == second  # the same message twice: at least once, never lost
        assert second["title"].startswith("[WARNING] FIRING: gaseous mercury above 300 ng/m³")
        assert f"{site}/hg1 hg" in second["title"]
    finally:
        gateway.kill()
        gateway.wait(timeout=10)
        holding.close()


async def test_invented_series_names_meet_a_bound_and_real_series_keep_alerting(tmp_path: Path) -> None:
    """20,000 invented instrument/parameter names (a buggy agent, or an attacker with one agent's credentials)
    after a real series: every per-name structure of the engine stays at `max_series`, what is refused is
    counted, and the real mercury series still fires and resolves."""
    bound = 1_000
    stream = io.StringIO()
    gateway = config(tmp_path, max_series=bound, rules={"hg-screening": {"for": "30s"}})
    engine = AlertEngine.from_config(gateway, notifiers=[ConsoleNotifier(MessageFormat(ALMATY), stream)])
    real = Batch(
        site=SITE,
        agent="pvl-station-1",
        seq=0,
        sent_at=T0,
        readings=[Reading(instrument="pvl1-hg", parameter="hg", value=5.0, unit="ng/m3", ts=T0)],
    )
    await engine.on_batch(real, T0)

    sizes = []
    for chunk in range(40):  # 40 batches of 500 new names each
        at = T0 + timedelta(milliseconds=chunk)
        readings = [
            Reading(instrument=f"i{chunk}-{n}", parameter=f"p{chunk}-{n}", value=float(n), unit="mg/m3", ts=at)
            for n in range(500)
        ]
        await engine.on_batch(Batch(site="junk", agent="a-junk", seq=chunk, sent_at=at, readings=readings), at)
        if chunk in (19, 39):
            sizes.append(engine.state_sizes())
    assert sizes[0] == sizes[1]  # nothing grew in the second 10,000 names
    assert sizes[1]["tracked"] == bound
    per_name = {name: size for name, size in sizes[1].items() if name != "alerts"}
    assert max(per_name.values()) <= bound, sizes[1]
    assert sizes[1]["alerts"] <= bound * len(engine.rules)  # one per rule that applies to a tracked name
    assert engine.tracked.refused >= 20_000 - bound  # each refused name's observation counted

    for second in range(1, 80):  # the real series: 480 ng/m³ for 40 s, then back to 5
        at = T0 + timedelta(seconds=second)
        value = 480.0 if second <= 40 else 5.0
        reading = Reading(instrument="pvl1-hg", parameter="hg", value=value, unit="ng/m3", ts=at)
        await engine.on_batch(real.model_copy(update={"seq": second, "sent_at": at, "readings": [reading]}), at)
        await engine.tick(at)
    told = [line for line in stream.getvalue().splitlines() if "pvl1-hg hg" in line]
    assert [line.split(" ")[2] for line in told] == ["FIRING", "RESOLVED"]
    assert engine.state_sizes()["tracked"] == bound

    store = open_store(f"sqlite://{tmp_path / 'aua.sqlite'}")
    ingest = Ingest(gateway, store, Ledger(gateway.gateway.state), alerts=engine)  # not run: its /metrics only
    scrape = ingest.metrics.exposition().decode()
    assert f"aua_gateway_alert_series {float(bound)}" in scrape
    assert f"aua_gateway_alert_series_refused_total {float(engine.tracked.refused)}" in scrape
    assert "aua_gateway_alert_rule_cache_evictions_total" in scrape
    ingest.ledger.close()
    engine.close()


async def test_offline_agents_and_data_gaps(tmp_path: Path) -> None:
    """Offline (the last will) fires after its 60 s; a gap after 120 s without data, not resolved by a restart."""
    stream = io.StringIO()
    gateway = config(tmp_path, ambient_sites=[])
    console = ConsoleNotifier(MessageFormat(ALMATY), stream)
    engine = AlertEngine.from_config(gateway, notifiers=[console])
    await engine.on_batch(hg_batch("s1", ["hg1"], 5.0, T0), T0)
    will = AgentStatus(site="s1", agent="a1", state=AgentState.OFFLINE)
    await engine.on_status(will, T0 + timedelta(seconds=10))
    await engine.tick(T0 + timedelta(seconds=69))
    assert stream.getvalue() == ""
    await engine.tick(T0 + timedelta(seconds=70))
    assert stream.getvalue().splitlines() == [
        "06:01:10 !! FIRING [warning] agent offline at s1/a1: agent reported offline (status or last will)"
    ]
    await engine.tick(T0 + timedelta(seconds=300))  # offline: no gap alert on top of it
    await engine.on_status(AgentStatus(site="s1", agent="a1", state=AgentState.ONLINE), T0 + timedelta(seconds=301))
    await engine.tick(T0 + timedelta(seconds=302))
    await engine.tick(T0 + timedelta(seconds=421))  # back online: its instruments get `after` to send again
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("06:05:01 ok RESOLVED [warning] agent offline at s1/a1")
    await engine.tick(T0 + timedelta(seconds=422))
    assert stream.getvalue().splitlines()[2].endswith("data gap at s1/hg1: no data for 7 min 2 s")
    engine.close()

    restarted = AlertEngine.from_config(gateway, notifiers=[console])
    await restarted.tick(T0 + timedelta(seconds=500))  # nothing from hg1 since the restart, yet no "resolved"
    assert len(stream.getvalue().splitlines()) == 3
    back = T0 + timedelta(seconds=510)
    await restarted.on_batch(hg_batch("s1", ["hg1"], 5.0, back, seq=1), back)
    await restarted.tick(back)
    assert "RESOLVED [warning] data gap at s1/hg1" in stream.getvalue().splitlines()[3]
    restarted.close()


async def test_silence_acknowledge_and_list_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI writes silences and acknowledgements into the state DB while the engine runs; the engine reads them."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[gateway]\nstate = "state.sqlite"\n[alerts]\nambient_sites = ["s1"]\ndata_rules = false\n'
        'group_wait = 0\nremind_every = "10m"\n[alerts.rules.hg-screening]\nfor = 0\n'
    )
    assert gateway_main(["alerts", "silence", str(path), "--rule", "hg-*", "--for", "1h", "--reason", "works"]) == 0
    assert "silence 1: rule hg-* (hg-daily, hg-screening)" in capsys.readouterr().out
    now = datetime.now(UTC)  # the CLI silences from the wall clock: from a moment ago for an hour
    stream = io.StringIO()
    engine = AlertEngine.from_config(load_gateway_config(path), notifiers=[ConsoleNotifier(MessageFormat(UTC), stream)])
    await engine.on_batch(hg_batch("s1", ["hg1"], 480.0, now), now)
    await engine.tick(now + timedelta(seconds=1))
    assert stream.getvalue() == ""  # silenced

    assert gateway_main(["alerts", "list", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "firing" in listing
    assert "hg-screening/s1/a1/hg1/hg" in listing
    assert "rule=hg-* site=* instrument=*" in listing

    assert gateway_main(["alerts", "unsilence", str(path), "1"]) == 0
    await engine.tick(now + timedelta(seconds=2))
    assert "FIRING [warning] gaseous mercury above 300 ng/m³" in stream.getvalue()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    await engine.tick(now + timedelta(minutes=11))
    assert "REMINDER" in stream.getvalue().splitlines()[1]

    capsys.readouterr()
    assert gateway_main(["alerts", "ack", str(path), "1", "--by", "aigerim"]) == 0
    assert "acknowledged by aigerim" in capsys.readouterr().out
    await engine.tick(now + timedelta(minutes=30))
    assert len(stream.getvalue().splitlines()) == 2  # acknowledged: no more reminders
    assert gateway_main(["alerts", "ack", str(path), "99"]) == 1
    assert "no alert 99" in capsys.readouterr().err
    assert gateway_main(["alerts", "rules", str(path)]) == 0
    assert "hg-screening" in capsys.readouterr().out
    engine.close()


def test_alert_commands_need_an_alerts_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nstate = "state.sqlite"\n')
    assert gateway_main(["alerts", "list", str(path)]) == 1
    assert "alerts are not configured" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Channels one by one
# --------------------------------------------------------------------------------------------------


def a_notice(kind: NoticeKind = NoticeKind.FIRING, site: str = SITE) -> Notice:
    return Notice(
        alert_id=7,
        kind=kind,
        key=AlertKey("hg-screening", site, "pvl-station-1", "pvl1-hg", "hg"),
        severity=Severity.WARNING,
        title="gaseous mercury above 300 ng/m³",
        episode=1,
        at=T0 + timedelta(minutes=2),
        since=T0,
        value=452.25,
        peak=480.0,
        limit=300.0,
        unit="ng/m3",
        comparison="above",
        measure="instant value",
        detail="instant value",
        note="screening",
    )


def test_notices_survive_their_json_form() -> None:
    for kind in NoticeKind:
        notice = a_notice(kind)
        assert notice_from_document(json.loads(json.dumps(notice_document(notice)))) == notice


async def test_grafana_annotations_reach_the_api(http_receiver: HttpReceiver) -> None:
    notifier = GrafanaAnnotationNotifier(
        http_receiver.url, MessageFormat(ALMATY), token="glsa_test", dashboard_uid="aua-ambient"
    )
    await notifier.send(Message(1, (a_notice(), a_notice(NoticeKind.RESOLVED))))
    firing, resolved = http_receiver.requests
    assert firing.path == resolved.path == "/api/annotations"
    assert firing.headers["Authorization"] == "Bearer glsa_test"
    body = firing.json()
    assert body["time"] == int(T0.timestamp() * 1000)
    assert "timeEnd" not in body
    assert body["dashboardUID"] == "aua-ambient"
    assert body["tags"] == ["aua", "alert", "firing", "hg-screening", SITE, "warning", "pvl1-hg"]
    assert "452.2 ng/m³, above the limit 300 ng/m³" in body["text"]
    assert resolved.json()["timeEnd"] == int((T0 + timedelta(minutes=2)).timestamp() * 1000)

    http_receiver.statuses = [503, 400]
    with pytest.raises(NotifyError, match="HTTP 503") as unavailable:
        await notifier.send(Message(2, (a_notice(),)))
    assert unavailable.value.retryable
    with pytest.raises(NotifyError, match="HTTP 400") as refused:
        await notifier.send(Message(3, (a_notice(),)))
    assert not refused.value.retryable


async def test_grafana_unreachable_is_a_retryable_error() -> None:
    notifier = GrafanaAnnotationNotifier(f"http://127.0.0.1:{free_port()}", MessageFormat(UTC), timeout=2)
    with pytest.raises(NotifyError, match="grafana:") as error:
        await notifier.send(Message(1, (a_notice(),)))
    assert error.value.retryable


async def test_mqtt_alerts_topic_on_a_real_broker(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    broker = MqttSection(host=mosquitto.host, port=mosquitto.port)
    gateway = config(tmp_path, broker, ambient_sites=[site], data_rules=False, notify={"mqtt": True})
    engine = AlertEngine.from_config(gateway)
    [notifier] = engine.notifiers.values()
    assert isinstance(notifier, MqttNotifier)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"sub-{site}") as client:
        await client.subscribe(alerts_topic(site), qos=1)
        for second in range(40):
            at = T0 + timedelta(seconds=second)
            await engine.on_batch(hg_batch(site, ["hg1"], 480.0, at, second), at)
            await engine.tick(at)
        async with asyncio.timeout(10):
            message = await anext(aiter(client.messages))
    assert str(message.topic) == f"aua/v1/{site}/alerts"
    assert not message.retain
    assert isinstance(message.payload, bytes)
    document = json.loads(message.payload)
    assert document["v"] == 1
    assert (document["state"], document["rule"], document["site"], document["instrument"]) == (
        "firing", "hg-screening", site, "hg1"
    )  # fmt: skip
    assert (document["value"], document["limit"], document["unit"], document["measure"]) == (
        480.0, 300.0, "ng/m3", "instant value"
    )  # fmt: skip
    assert document["since"] == T0.isoformat()
    engine.close()


def test_apprise_refuses_a_url_it_does_not_know() -> None:
    with pytest.raises(NotifyError, match="does not understand the nosuch:// URL"):
        AppriseNotifier("nosuch://x", MessageFormat(UTC))


def test_every_channel_is_a_notifier(http_receiver: HttpReceiver) -> None:
    fmt = MessageFormat(UTC)
    channels = [
        AppriseNotifier(json_url(http_receiver), fmt),
        MqttNotifier(BrokerConnection(), identifier="x"),
        GrafanaAnnotationNotifier(http_receiver.url, fmt),
        ConsoleNotifier(fmt),
    ]
    assert all(isinstance(channel, Notifier) for channel in channels)
    assert len({channel.name for channel in channels}) == 4
    secret = AppriseNotifier(f"json://user:secret@{http_receiver.hostport}/x", fmt)
    assert "secret" not in secret.name


def test_the_config_names_the_channels(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    gateway = config(
        tmp_path,
        notify={
            "apprise": [json_url(http_receiver), f"json://user:secret@{http_receiver.hostport}/other"],
            "mqtt": True,
            "grafana_url": "http://grafana.test:3000",
            "grafana_token": "glsa_secret",
            "console": True,
        },
    )
    engine = AlertEngine.from_config(gateway)
    names = list(engine.notifiers)
    assert [name.split(":")[0] for name in names] == ["apprise", "apprise", "mqtt", "grafana", "console"]
    assert not any("secret" in name for name in names)
    engine.close()


def test_the_engine_refuses_duplicate_channel_names(tmp_path: Path) -> None:
    fmt = MessageFormat(UTC)
    with pytest.raises(ValueError, match="notifier names must be unique"):
        AlertEngine([], AlertStore(tmp_path / "s.sqlite"), [ConsoleNotifier(fmt), ConsoleNotifier(fmt)])
