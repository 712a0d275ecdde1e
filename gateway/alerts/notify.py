"""Delivery of alert messages: what a message says (pure), and the channels that carry it.

A `Message` is one or more notices sent together (grouping, gateway/alerts/state.py). Every channel is a
`Notifier`: `name` for logs and the delivery ledger, and `async send(message)` that either delivers or
raises `NotifyError` (retryable or not). The engine (gateway/alerts/engine.py) records each delivery per notifier,
so a channel that fails is retried alone and one that succeeded is not repeated.

Channels:
- `AppriseNotifier`: one apprise URL (mailto://, tgram://, slack://, json://, ... about 100 services);
- `MqttNotifier`: one JSON document per notice on `aua/v1/{site}/alerts`, QoS 1, not retained;
- `GrafanaAnnotationNotifier`: an annotation per notice through Grafana's HTTP API;
- `ConsoleNotifier`: one line per notice on standard output (the demo, a terminal).

Every message says what (rule, title, severity), where (site, instrument or agent, parameter), value
against the limit with units and the averaging window, since when (UTC and site-local time), and links
to the dashboard when a base URL is configured.
"""

from __future__ import annotations

import asyncio
import json
import sys
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol, TextIO, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiomqtt
import apprise
import httpx

from aua_mqtt import BrokerConnection
from aua_ops import redact_url
from gateway.alerts.rules import format_duration
from gateway.alerts.state import AlertKey, Notice, NoticeKind, Severity
from gateway.config import AlertNotifySection, MqttSection
from gateway.errors import GatewayError

DOCUMENT_VERSION = 1
"""`v` of the JSON documents on the alerts topic."""


class NotifyError(GatewayError):
    """A channel could not deliver; `retryable` says whether trying again later can succeed."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Message:
    """What one send carries: notices, oldest first."""

    id: int
    notices: tuple[Notice, ...]

    @property
    def severity(self) -> Severity:
        return max((notice.severity for notice in self.notices), key=lambda s: s.rank, default=Severity.INFO)


@runtime_checkable
class Notifier(Protocol):
    @property
    def name(self) -> str:
        """Stable name of the channel (secrets redacted): the delivery ledger's key."""
        ...

    async def send(self, message: Message) -> None:
        """Deliver the message or raise NotifyError."""
        ...


# --------------------------------------------------------------------------------------------------
# Text (pure)
# --------------------------------------------------------------------------------------------------

_UNIT_DISPLAY = {"ng/m3": "ng/m³", "ug/m3": "µg/m³", "mg/m3": "mg/m³", "g/m3": "g/m³", "nm3/h": "Nm³/h"}


def display_unit(unit: str) -> str:
    return _UNIT_DISPLAY.get(unit.strip().lower().replace("µ", "u"), unit)


def display_number(value: float) -> str:
    """Four significant digits, no exponent for the ranges measured here (0.0003 ... 1e6)."""
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-4:
        return f"{value:.3e}"
    text = f"{value:.4g}"
    if "e" in text:  # .4g switches to an exponent from 1e4 up: print the integer instead
        return f"{value:.0f}"
    return text


def quantity(value: float | None, unit: str) -> str:
    if value is None:
        return "no value"
    return f"{display_number(value)} {display_unit(unit)}".rstrip()


def _zone_name(tz: tzinfo) -> str:
    return getattr(tz, "key", None) or str(tz)


def both_times(moment: datetime, tz: tzinfo) -> str:
    """ "2026-12-01 06:00:41 UTC (11:00:41 Asia/Almaty)"; the local date is shown when it differs."""
    utc = moment.astimezone(UTC)
    local = moment.astimezone(tz)
    local_text = f"{local:%H:%M:%S}" if local.date() == utc.date() else f"{local:%Y-%m-%d %H:%M:%S}"
    return f"{utc:%Y-%m-%d %H:%M:%S} UTC ({local_text} {_zone_name(tz)})"


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def dashboard_link(base: str, notice: Notice) -> str:
    """The dashboard at this site/instrument, from an hour before the condition began."""
    parts = urlsplit(base)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.append(("var-site", notice.key.site))
    if notice.key.instrument:
        query.append(("var-instrument", notice.key.instrument))
    query.append(("from", str(_epoch_ms(notice.since - timedelta(hours=1)))))
    resolved = notice.kind is NoticeKind.RESOLVED
    query.append(("to", str(_epoch_ms(notice.at + timedelta(hours=1))) if resolved else "now"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def where_text(key: AlertKey) -> str:
    """ "site pavlodar-ambient, instrument pvl1-hg, parameter hg, agent pvl-station-1"."""
    parts = [f"site {key.site}"]
    if key.instrument:
        parts.append(f"instrument {key.instrument}")
    if key.parameter:
        parts.append(f"parameter {key.parameter}")
    if key.agent:
        parts.append(f"agent {key.agent}")
    return ", ".join(parts)


def value_text(notice: Notice) -> str:
    """Value against the limit, or the data rule's finding."""
    if not notice.comparison or notice.limit is None:
        return notice.detail
    peak = ""
    if notice.peak is not None and notice.peak != notice.value:
        peak = f"; {'highest' if notice.comparison == 'above' else 'lowest'} {quantity(notice.peak, notice.unit)}"
    limit = quantity(notice.limit, notice.unit)
    if notice.kind is NoticeKind.RESOLVED:
        return f"{notice.detail}: now {quantity(notice.value, notice.unit)}, limit {limit}{peak}"
    return f"{notice.detail}: {quantity(notice.value, notice.unit)}, {notice.comparison} the limit {limit}{peak}"


@dataclass(frozen=True)
class Rendered:
    title: str
    body: str


@dataclass(frozen=True)
class MessageFormat:
    """How messages read at this gateway: the site's time zone, the dashboard, how to acknowledge."""

    tz: tzinfo
    dashboard_url: str | None = None
    ack_hint: str = "cems-gateway alerts ack CONFIG {id}"

    def headline(self, notice: Notice) -> str:
        """ "[WARNING] FIRING: <title> at site/instrument parameter"; "[RESOLVED] <title> at ..." """
        if notice.kind is NoticeKind.RESOLVED:
            return f"[RESOLVED] {notice.title} at {notice.key.where}"
        return f"[{notice.severity.value.upper()}] {notice.kind.value.upper()}: {notice.title} at {notice.key.where}"

    def notice_lines(self, notice: Notice, *, headline: bool = True) -> list[str]:
        if notice.kind is NoticeKind.RESOLVED:
            lasted = format_duration(notice.at - notice.since)
            began = both_times(notice.since, self.tz)
            when = f"Resolved {both_times(notice.at, self.tz)} after {lasted}; began {began}"
        else:
            when = f"Since {both_times(notice.since, self.tz)}"
            if notice.at - notice.since >= timedelta(seconds=1):
                when += f"; firing from {both_times(notice.at, self.tz)}"
            if notice.late:
                when += " (told only now: a silence just ended)"
            if notice.kind is NoticeKind.REMINDER:
                when += "; still firing, not acknowledged"
        lines = [self.headline(notice)] if headline else []
        lines += [
            f"What: {notice.title}; rule {notice.key.rule}, severity {notice.severity.value}",
            f"Where: {where_text(notice.key)}",
            f"Value: {value_text(notice)}",
            when,
        ]
        if notice.note:
            lines.append(f"Note: {notice.note}")
        if self.dashboard_url:
            lines.append(f"Dashboard: {dashboard_link(self.dashboard_url, notice)}")
        if notice.kind is not NoticeKind.RESOLVED:
            lines.append(f"Alert {notice.alert_id}; acknowledge: {self.ack_hint.format(id=notice.alert_id)}")
        return lines

    def render(self, message: Message) -> Rendered:
        notices = message.notices
        if len(notices) == 1:
            return Rendered(self.headline(notices[0]), "\n".join(self.notice_lines(notices[0], headline=False)))
        counts: dict[str, int] = {}
        for notice in notices:
            counts[notice.kind.value] = counts.get(notice.kind.value, 0) + 1
        summary = ", ".join(f"{count} {kind}" for kind, count in counts.items())
        first = notices[0]
        rest = len({n.key for n in notices}) - 1
        more = f" and {rest} more" if rest > 0 else ""
        title = f"[{message.severity.value.upper()}] {len(notices)} alert notices ({summary}): {first.title}{more}"
        body = "\n\n".join("\n".join(self.notice_lines(notice)) for notice in notices)
        return Rendered(title, body)

    def one_line(self, notice: Notice) -> str:
        mark = "ok" if notice.kind is NoticeKind.RESOLVED else "!!"
        when = notice.at.astimezone(UTC).strftime("%H:%M:%S")
        what = f"{notice.kind.value.upper()} [{notice.severity.value}] {notice.title} at {notice.key.where}"
        return f"{when} {mark} {what}: {value_text(notice)}"


def test_message(now: datetime) -> Message:
    """What `cems-gateway alerts test` sends: clearly a test, shaped like a real firing."""
    notice = Notice(
        alert_id=0,
        kind=NoticeKind.FIRING,
        key=AlertKey("test", "test-site", "test-agent", "test-instrument", "hg"),
        severity=Severity.INFO,
        title="TEST message from the Aua gateway (no alert)",
        episode=0,
        at=now,
        since=now,
        value=1.0,
        peak=None,
        limit=300.0,
        unit="ng/m3",
        comparison="above",
        measure="instant value",
        detail="test",
        note="sent by `cems-gateway alerts test` to check this channel",
    )
    return Message(0, (notice,))


# --------------------------------------------------------------------------------------------------
# Notices as JSON (the engine's queue, the MQTT document)
# --------------------------------------------------------------------------------------------------


def notice_document(notice: Notice) -> dict[str, Any]:
    return {
        "alert": notice.alert_id,
        "state": notice.kind.value,
        "rule": notice.key.rule,
        "site": notice.key.site,
        "agent": notice.key.agent,
        "instrument": notice.key.instrument,
        "parameter": notice.key.parameter,
        "severity": notice.severity.value,
        "title": notice.title,
        "episode": notice.episode,
        "at": notice.at.astimezone(UTC).isoformat(),
        "since": notice.since.astimezone(UTC).isoformat(),
        "value": notice.value,
        "peak": notice.peak,
        "limit": notice.limit,
        "unit": notice.unit,
        "comparison": notice.comparison,
        "measure": notice.measure,
        "detail": notice.detail,
        "note": notice.note,
        "late": notice.late,
    }


def notice_from_document(document: dict[str, Any]) -> Notice:
    return Notice(
        alert_id=int(document["alert"]),
        kind=NoticeKind(document["state"]),
        key=AlertKey(
            document["rule"], document["site"], document["agent"], document["instrument"], document["parameter"]
        ),
        severity=Severity(document["severity"]),
        title=str(document["title"]),
        episode=int(document["episode"]),
        at=datetime.fromisoformat(document["at"]),
        since=datetime.fromisoformat(document["since"]),
        value=document["value"],
        peak=document["peak"],
        limit=document["limit"],
        unit=str(document["unit"]),
        comparison=str(document["comparison"]),
        measure=str(document["measure"]),
        detail=str(document["detail"]),
        note=str(document["note"]),
        late=bool(document.get("late", False)),
    )


# --------------------------------------------------------------------------------------------------
# Channels
# --------------------------------------------------------------------------------------------------

_NOTIFY_TYPE = {
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.INFO: apprise.NotifyType.INFO,
}


def _load_apprise_url(url: str) -> apprise.Apprise:
    """An Apprise object for one URL. Loading the plugins imports the standard library's `imghdr` (via the
    email plugin's PGP support), which warns on Python 3.11/3.12 that it goes away in 3.13; apprise brings
    its own stand-in for 3.13, so that one warning is silenced here and nothing else."""
    instance = apprise.Apprise()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"'imghdr' is deprecated", category=DeprecationWarning)
        added = instance.add(url)
    if not added:
        scheme = url.split("://", 1)[0] if "://" in url else "(no scheme)"
        raise NotifyError(f"apprise does not understand the {scheme}:// URL (see apprise's list of services)")
    return instance


class AppriseNotifier:
    """One apprise URL: e-mail (mailto://), Telegram (tgram://), Slack (slack://), a webhook (json://), ...

    `throttle`: seconds apprise waits between two sends to this service; None keeps apprise's own default
    (5.5 s for most services, which protects rate-limited APIs such as Telegram's and Slack's).
    """

    def __init__(self, url: str, message_format: MessageFormat, *, throttle: float | None = None) -> None:
        self._apprise = _load_apprise_url(url)
        self._format = message_format
        service = self._apprise[0]
        if throttle is not None:
            service.request_rate_per_sec = throttle
        self._name = f"apprise:{service.url(privacy=True)}"  # type: ignore[no-untyped-call]

    @property
    def name(self) -> str:
        return self._name

    async def send(self, message: Message) -> None:
        rendered = self._format.render(message)
        # apprise's plugins block (smtplib, requests): run them off the event loop. The body is plain text
        # (apprise would otherwise take it for HTML and join its lines in an e-mail's text part).
        delivered = await asyncio.to_thread(
            self._apprise.notify,
            body=rendered.body,
            title=rendered.title,
            body_format=apprise.NotifyFormat.TEXT,
            notify_type=_NOTIFY_TYPE[message.severity] if _any_firing(message) else apprise.NotifyType.SUCCESS,
        )
        if not delivered:
            raise NotifyError(f"{self.name}: not delivered (apprise logs the reason)")


def _any_firing(message: Message) -> bool:
    return any(notice.kind is not NoticeKind.RESOLVED for notice in message.notices)


def alerts_topic(site: str) -> str:
    """`aua/v1/{site}/alerts`: four levels, so the gateway's own `aua/v1/+/+/…` subscriptions never see it."""
    return f"aua/v1/{site}/alerts"


class MqttNotifier:
    """One JSON document per notice on `aua/v1/{site}/alerts`, QoS 1.

    Not retained: a retained message keeps only the last document per topic, so a late subscriber would
    see one arbitrary event of one alert (say, a resolution) and take it for the site's state. The
    current state is `cems-gateway alerts list`; a retained per-alert state topic would be a separate feature.
    """

    def __init__(self, broker: BrokerConnection, *, identifier: str, timeout: float = 10.0) -> None:
        self.broker = broker
        self.identifier = identifier
        self.timeout = timeout

    @property
    def name(self) -> str:
        return f"mqtt:{self.broker.host}:{self.broker.port}"

    async def send(self, message: Message) -> None:
        try:
            async with aiomqtt.Client(**self.broker.client_options(self.identifier), timeout=self.timeout) as client:
                for notice in message.notices:
                    document = {"v": DOCUMENT_VERSION, "message": message.id, **notice_document(notice)}
                    payload = json.dumps(document, ensure_ascii=False).encode()
                    await client.publish(alerts_topic(notice.key.site), payload, qos=1, retain=False)
        except aiomqtt.MqttError as error:
            raise NotifyError(f"{self.name}: {error}") from None


class GrafanaAnnotationNotifier:
    """Annotations through Grafana's HTTP API (`POST /api/annotations`), with a service account token.

    A firing becomes a point annotation at the time the condition began; a resolution a region from then
    to the resolution. Tagged `aua`, `alert`, the state, rule, site, instrument and severity, so a dashboard's
    annotation query can pick them by tag. No Grafana server can run in the test environment: the tests
    check the requests against a local HTTP receiver, not against Grafana itself.
    """

    def __init__(
        self,
        base_url: str,
        message_format: MessageFormat,
        *,
        token: str | None = None,
        dashboard_uid: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._format = message_format
        self._token = token
        self.dashboard_uid = dashboard_uid
        self.timeout = timeout
        self._transport = transport

    @property
    def name(self) -> str:
        return f"grafana:{redact_url(self.base_url)}"

    def annotation(self, notice: Notice) -> dict[str, Any]:
        tags = ["aua", "alert", notice.kind.value, notice.key.rule, notice.key.site, notice.severity.value]
        if notice.key.instrument:
            tags.append(notice.key.instrument)
        body: dict[str, Any] = {
            "time": _epoch_ms(notice.since),
            "tags": tags,
            "text": f"{self._format.headline(notice)}\n{value_text(notice)}",
        }
        if notice.kind is NoticeKind.RESOLVED:
            body["timeEnd"] = _epoch_ms(notice.at)
        if self.dashboard_uid:
            body["dashboardUID"] = self.dashboard_uid
        return body

    async def send(self, message: Message) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        async with httpx.AsyncClient(timeout=self.timeout, transport=self._transport, headers=headers) as client:
            for notice in message.notices:
                try:
                    response = await client.post(f"{self.base_url}/api/annotations", json=self.annotation(notice))
                except httpx.HTTPError as error:
                    raise NotifyError(f"{self.name}: {error!r}") from None
                if response.status_code >= 300:
                    retryable = response.status_code >= 500 or response.status_code == 429
                    raise NotifyError(
                        f"{self.name}: HTTP {response.status_code} {response.text[:200]}", retryable=retryable
                    )


class ConsoleNotifier:
    """One line per notice on a text stream (standard output by default)."""

    def __init__(self, message_format: MessageFormat, stream: TextIO | None = None) -> None:
        self._format = message_format
        self._stream = stream

    @property
    def name(self) -> str:
        return "console"

    async def send(self, message: Message) -> None:
        stream = self._stream or sys.stdout
        for notice in message.notices:
            print(self._format.one_line(notice), file=stream, flush=True)


def notifiers_from_config(
    notify: AlertNotifySection, mqtt: MqttSection, *, gateway_id: str, message_format: MessageFormat
) -> list[Notifier]:
    """The channels an `[alerts.notify]` section names (`mqtt` is the gateway's own `[mqtt]` section)."""
    channels: list[Notifier] = [AppriseNotifier(url.get_secret_value(), message_format) for url in notify.apprise]
    if notify.mqtt:
        channels.append(MqttNotifier(mqtt, identifier=f"aua-alerts-{gateway_id}"))
    if notify.grafana_url:
        channels.append(
            GrafanaAnnotationNotifier(
                notify.grafana_url,
                message_format,
                token=notify.grafana_token.get_secret_value() if notify.grafana_token else None,
                dashboard_uid=notify.grafana_dashboard_uid,
            )
        )
    if notify.console:
        channels.append(ConsoleNotifier(message_format))
    return channels
