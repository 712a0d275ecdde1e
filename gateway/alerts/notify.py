"""The channels that carry alert messages (gateway/alerts/messages.py says what they say).

Every channel is a `Notifier`: `name` for logs and the delivery ledger, and `async send(message)` that either
delivers or raises `NotifyError` (retryable or not). The engine (gateway/alerts/engine.py) records each delivery
per notifier, so a channel that fails is retried alone and one that succeeded is not repeated.

Channels:
- `AppriseNotifier`: one apprise URL (mailto://, tgram://, slack://, json://, ... about 100 services);
- `MqttNotifier`: one JSON document per notice on `aua/v1/{site}/alerts`, QoS 1, not retained;
- `GrafanaAnnotationNotifier`: an annotation per notice through Grafana's HTTP API;
- `ConsoleNotifier`: one line per notice on standard output (the demo, a terminal).
"""

from __future__ import annotations

import asyncio
import json
import sys
import warnings
from typing import Any, TextIO

import aiomqtt
import apprise
import httpx

from aua_mqtt import BrokerConnection
from aua_ops import redact_url
from gateway.alerts.messages import (
    DOCUMENT_VERSION,
    Message,
    MessageFormat,
    Notifier,
    NotifyError,
    epoch_ms,
    notice_document,
    value_text,
)
from gateway.alerts.state import Notice, NoticeKind, Severity
from gateway.config import AlertNotifySection, MqttSection

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
            "time": epoch_ms(notice.since),
            "tags": tags,
            "text": f"{self._format.headline(notice)}\n{value_text(notice)}",
        }
        if notice.kind is NoticeKind.RESOLVED:
            body["timeEnd"] = epoch_ms(notice.at)
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
