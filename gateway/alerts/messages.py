"""Alert messages as data and text: what a message says, in words and as a JSON document. Pure: no I/O.

A `Message` is one or more notices sent together (grouping, gateway/alerts/state.py). Every message says what
(rule, title, severity), where (site, instrument or agent, parameter), value against the limit with units and
the averaging window, since when (UTC and site-local time), and links to the dashboard when a base URL is
configured. The channels that carry messages are in gateway/alerts/notify.py; `Notifier` is their protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gateway.alerts.rules import format_duration
from gateway.alerts.state import AlertKey, Notice, NoticeKind, Severity
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


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def dashboard_link(base: str, notice: Notice) -> str:
    """The dashboard at this site/instrument, from an hour before the condition began."""
    parts = urlsplit(base)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.append(("var-site", notice.key.site))
    if notice.key.instrument:
        query.append(("var-instrument", notice.key.instrument))
    query.append(("from", str(epoch_ms(notice.since - timedelta(hours=1)))))
    resolved = notice.kind is NoticeKind.RESOLVED
    query.append(("to", str(epoch_ms(notice.at + timedelta(hours=1))) if resolved else "now"))
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
