"""The real-time feed to the state system (cems-mrv.md §1: an АСМ transmits in real time; interval and format
are configuration). Pure selection table-driven; the feed itself on a real SQLite store and a local HTTP
receiver (no state system can run here): each completed average once, corrections as revisions, nothing lost
when the receiver fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from http_receiver import HttpReceiver

from gateway.config import GatewayConfig
from gateway.rollup import Aggregate, Period
from gateway.state_feed import StateFeed, due_values, feed_document, fingerprint, period_end
from gateway.stores import open_store
from gateway.stores.base import to_ns

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def hour(start: datetime, value: float | None = 12.5, *, parameter: str = "so2", valid: bool = True) -> Aggregate:
    n_valid = 58 if value is not None else 0
    reason = "" if valid else "39 of 60 minutes valid (< 66.67 %)"
    return Aggregate(
        "pavlodar-chp", "stack1-gas", parameter, Period.HOUR, start, value, n_valid, 60, valid, reason, 0, "mg/m3"
    )


def sent_entry(aggregate: Aggregate, revision: int = 1) -> dict[tuple[str, str, str, str, int], tuple[str, int]]:
    a = aggregate
    return {(a.site, a.instrument, a.parameter, a.period.value, to_ns(a.start)): (fingerprint(a), revision)}


@pytest.mark.parametrize(
    ("aggregate", "sent", "send_before", "expected_revision"),
    [
        (hour(T0), {}, T0 + HOUR, 1),
        (hour(T0), {}, T0 + HOUR - timedelta(seconds=1), None),
        (hour(T0), sent_entry(hour(T0)), T0 + 2 * HOUR, None),
        (hour(T0, 13.0), sent_entry(hour(T0)), T0 + 2 * HOUR, 2),
        (hour(T0, valid=False), sent_entry(hour(T0), revision=3), T0 + 2 * HOUR, 4),
    ],
    ids=["a completed hour", "an hour not over yet", "sent and unchanged", "late data changed it", "now invalid"],
)
def test_what_is_due(
    aggregate: Aggregate, sent: dict[tuple[str, str, str, str, int], tuple[str, int]], send_before: datetime,
    expected_revision: int | None,
) -> None:  # fmt: skip
    due = due_values(
        [aggregate], sent, ends=lambda a: a.start + HOUR, send_before=send_before, codes={}, only_coded=False
    )
    assert [v.revision for v in due] == ([] if expected_revision is None else [expected_revision])


def test_only_coded_series_are_sent_when_asked() -> None:
    both = [hour(T0), hour(T0, parameter="nox")]
    codes = {"pavlodar-chp/stack1-gas/so2": "0330"}
    due = due_values(both, {}, ends=lambda a: a.start + HOUR, send_before=T0 + HOUR, codes=codes, only_coded=True)
    assert [v.aggregate.parameter for v in due] == ["so2"]
    document = feed_document(due, gateway="gw-1", period="1h", codes=codes, sent_at=T0 + HOUR)
    assert document["values"] == [
        {
            "site": "pavlodar-chp",
            "instrument": "stack1-gas",
            "parameter": "so2",
            "code": "0330",
            "start": "2026-12-01T06:00:00Z",
            "end": "2026-12-01T07:00:00Z",
            "value": 12.5,
            "unit": "mg/m3",
            "valid": True,
            "n_valid": 58,
            "n_expected": 60,
            "reason": "",
            "revision": 1,
        }
    ]


def test_a_local_day_ends_at_local_midnight() -> None:
    """§3 daily values follow the local calendar: an Almaty (UTC+5) day starting 19:00 UTC ends 19:00 UTC."""
    start = datetime(2026, 11, 30, 19, 0, tzinfo=UTC)
    day = Aggregate("s", "i", "p", Period.DAY, start, 1.0, 24, 24, True)
    assert period_end(day, ZoneInfo("Asia/Almaty")) == start + timedelta(days=1)


async def test_the_feed_sends_each_average_once_and_corrections_as_revisions(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    now = [T0 + 3 * HOUR + timedelta(minutes=5)]
    config = GatewayConfig.model_validate(
        {
            "gateway": {"id": "gw-pvl", "state": str(tmp_path / "state.sqlite")},
            "store": {"url": f"sqlite://{tmp_path / 'aua.sqlite'}"},
            "state_feed": {
                "url": f"{http_receiver.url}/asm",
                "token": "secret-token",
                "period": "1h",
                "delay_s": 120,
                "max_values": 2,
                "codes": {"pavlodar-chp/stack1-gas/so2": "0330"},
            },
        }
    )
    store = open_store(config.store.url)
    await store.open()
    await store.write_aggregates([hour(T0 + n * HOUR, 10.0 + n) for n in range(3)] + [hour(T0 + 3 * HOUR)])
    feed = StateFeed(config, store, now=lambda: now[0])
    try:
        http_receiver.statuses = [503]  # the state system is down for the first POST
        first = await feed.tick()
        assert (first.sent, first.error is not None) == (0, True)
        assert "HTTP 503" in (first.error or "")

        second = await feed.tick()  # the three completed hours, in POSTs of at most two values
        assert (second.sent, second.revisions, second.error) == (3, 0, None)
        posted = [request.json() for request in http_receiver.requests[1:]]
        assert [len(document["values"]) for document in posted] == [2, 1]
        values = [value for document in posted for value in document["values"]]
        assert [(v["start"], v["value"], v["code"], v["revision"]) for v in values] == [
            ("2026-12-01T06:00:00Z", 10.0, "0330", 1),
            ("2026-12-01T07:00:00Z", 11.0, "0330", 1),
            ("2026-12-01T08:00:00Z", 12.0, "0330", 1),
        ]
        assert http_receiver.requests[1].headers["Authorization"] == "Bearer secret-token"
        assert http_receiver.requests[1].path == "/asm"

        assert (await feed.tick()).sent == 0  # nothing new, nothing sent twice

        await store.write_aggregates([hour(T0 + HOUR, 11.5)])  # late data recomputed one hour
        now[0] = T0 + 4 * HOUR + timedelta(minutes=3)  # and the fourth hour is over
        third = await feed.tick()
        assert (third.sent, third.revisions) == (2, 1)
        last = [v for r in http_receiver.requests[3:] for v in r.json()["values"]]
        assert [(v["start"], v["value"], v["revision"]) for v in last] == [
            ("2026-12-01T07:00:00Z", 11.5, 2),
            ("2026-12-01T09:00:00Z", 12.5, 1),
        ]
    finally:
        feed.close()
        await store.close()


async def test_daily_values_are_sent_once_the_local_day_is_over(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    """A 1d average starts at local midnight (19:00 UTC for Almaty) and is sent after that day ends, even with
    a correction window no longer than a day."""
    day_start = datetime(2026, 11, 30, 19, 0, tzinfo=UTC)
    config = GatewayConfig.model_validate(
        {
            "gateway": {"id": "gw-pvl", "state": str(tmp_path / "state.sqlite")},
            "store": {"url": f"sqlite://{tmp_path / 'aua.sqlite'}"},
            "rollup": {"time_zone": "Asia/Almaty"},
            "state_feed": {"url": http_receiver.url, "period": "1d", "delay_s": 60, "correction_hours": 24},
        }
    )
    store = open_store(config.store.url)
    await store.open()
    await store.write_aggregates([Aggregate("s", "hg1", "hg", Period.DAY, day_start, 4.9, 24, 24, True, unit="ng/m3")])
    now = [day_start + timedelta(days=1)]
    feed = StateFeed(config, store, now=lambda: now[0])
    try:
        assert (await feed.tick()).sent == 0  # the day has just ended: not yet (delay_s)
        now[0] += timedelta(minutes=2)
        assert (await feed.tick()).sent == 1
        [value] = http_receiver.requests[0].json()["values"]
        assert (value["start"], value["end"], value["value"]) == ("2026-11-30T19:00:00Z", "2026-12-01T19:00:00Z", 4.9)
    finally:
        feed.close()
        await store.close()
