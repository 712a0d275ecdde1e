"""The real-time feed to the state system (regulatory-basis.md §1: an АСМ transmits in real time; interval and format
are configuration). Pure selection table-driven; the feed itself on a real SQLite store and a local HTTP
receiver (no state system can run here): each completed average once, corrections as revisions, nothing lost
when the receiver fails."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from http_receiver import HttpReceiver

from gateway.config import GatewayConfig
from gateway.mrv.rollup import RULE_SETS, Aggregate, Period, RuleSet
from gateway.mrv.state_feed import StateFeed, due_values, feed_document, fingerprint, period_end
from gateway.mrv.twenty_minute import twenty_minute_averages
from gateway.stores import open_store
from gateway.time_ns import to_ns

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
ALMATY = ZoneInfo("Asia/Almaty")


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


# -- 20-minute averages (Kazakhstan's АСМ cadence), from the stored 1-minute rollups -------------------------

MINUTE = timedelta(minutes=1)


def minutes(
    start: datetime, values: list[float | None], *, parameter: str = "so2", maintenance: int = 0
) -> list[Aggregate]:
    """1-minute rollups from `start`: None is an invalid minute; the first `maintenance` of them in calibration."""
    return [
        Aggregate(
            "pavlodar-chp", "stack1-gas", parameter, Period.MINUTE, start + n * MINUTE, v, int(v is not None), 1,
            v is not None, "" if v is not None else "failure", int(v is None and n < maintenance), "mg/m3",
        )
        for n, v in enumerate(values)
    ]  # fmt: skip


def rules_of(name: str, **changes: object) -> Callable[[str, str, str], tuple[RuleSet, tzinfo]]:
    rules = RULE_SETS[name].with_changes(**changes) if changes else RULE_SETS[name]
    return lambda site, instrument, parameter: (rules, ALMATY)


@pytest.mark.parametrize(
    ("rule_set", "values", "maintenance", "expected", "reason"),
    [
        ("ied-lcp", [10.0] * 20, 0, (True, (20, 20)), ""),
        ("ied-lcp", [10.0] * 14 + [None] * 6, 0, (True, (14, 20)), ""),
        ("ied-lcp", [10.0] * 13 + [None] * 7, 0, (False, (13, 20)), "13 of 20 samples valid (< 66.67 %)"),
        ("mrr", [10.0] * 16 + [None] * 4, 0, (True, (16, 20)), ""),
        ("mrr", [10.0] * 15 + [None] * 5, 0, (False, (15, 20)), "15 of 20 samples valid (< 80 %)"),
        ("ambient", [None] * 5 + [10.0] * 12 + [None] * 3, 5, (True, (12, 20)), ""),
        ("ambient", [None] * 5 + [10.0] * 11 + [None] * 4, 5, (False, (11, 20)),
         "11 of 15 samples valid (< 75 %); 5 in maintenance (not counted)"),
        ("ied-lcp", [None] * 20, 20, (False, (0, 20)), "no valid minutes (20 in maintenance)"),
        ("part75", [10.0] * 14 + [None] * 6, 0, (True, (14, 20)), ""),
    ],
    ids=[
        "all 20 minutes", "ied-lcp: 14 of 20 ≥ 2/3", "ied-lcp: 13 of 20 < 2/3", "mrr: 16 of 20 = 80 %",
        "mrr: 15 of 20 < 80 %", "ambient: maintenance not counted, 12 of 15 ≥ 75 %", "ambient: 11 of 15 < 75 %",
        "calibration only", "part75: quadrants are hourly, the capture share applies",
    ],
)  # fmt: skip
def test_twenty_minute_validity_follows_the_rule_sets_capture(
    rule_set: str, values: list[float | None], maintenance: int, expected: tuple[bool, tuple[int, int]], reason: str
) -> None:
    [average] = twenty_minute_averages(minutes(T0, values, maintenance=maintenance), rules_of(rule_set))
    assert (average.start, (average.valid, (average.n_valid, average.n_expected)), average.reason) == (
        T0, expected, reason
    )  # fmt: skip
    assert average.value == (10.0 if any(v is not None for v in values) else None)


def test_a_slow_analyzer_expects_one_sample_per_cycle() -> None:
    """A 5-minute mercury cycle: 4 samples expected in 20 minutes; 3 of 4 = 75 % meets the ambient capture."""
    hg = [Aggregate("s", "hg1", "hg", Period.MINUTE, T0 + n * 5 * MINUTE, 4.0 + n, 1, 1, True) for n in range(3)]
    [average] = twenty_minute_averages(hg, rules_of("ambient", sample_interval_s=300))
    assert (average.n_valid, average.n_expected, average.valid, average.value) == (3, 4, True, 5.0)


@pytest.mark.parametrize(
    ("zone", "starts"),
    [("Asia/Almaty", ["06:00", "06:20", "06:40"]), ("Asia/Kolkata", ["05:50", "06:10", "06:30", "06:50"])],
    ids=["UTC+5: :00, :20, :40", "UTC+5:30: the local clock's :00, :20, :40"],
)
def test_twenty_minute_periods_follow_the_local_clock(zone: str, starts: list[str]) -> None:
    local = ZoneInfo(zone)
    found = twenty_minute_averages(minutes(T0, [1.0] * 60), lambda *_: (RULE_SETS["ied-lcp"], local))
    assert [a.start.strftime("%H:%M") for a in found] == starts
    assert sum(a.n_valid for a in found) == 60


async def test_the_feed_sends_twenty_minute_averages_from_the_stored_minutes(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    """period = "20m": each completed 20 minutes once, computed from the stored 1-minute rollups; a corrected
    minute makes its 20-minute average a revision. An hour of SO2 at 10, 20, 30 mg/m³ per 20 minutes."""
    config = GatewayConfig.model_validate(
        {
            "gateway": {"id": "gw-pvl", "state": str(tmp_path / "state.sqlite")},
            "store": {"url": f"sqlite://{tmp_path / 'aua.sqlite'}"},
            "rollup": {"time_zone": "Asia/Almaty"},
            "state_feed": {"url": f"{http_receiver.url}/asm", "period": "20m", "delay_s": 120, "correction_hours": 1},
        }
    )
    store = open_store(config.store.url)
    await store.open()
    await store.write_aggregates(minutes(T0, [10.0] * 20 + [20.0] * 20 + [30.0] * 20))
    now = [T0 + HOUR + timedelta(minutes=1)]  # the last period ended a minute ago: not yet (delay_s)
    feed = StateFeed(config, store, now=lambda: now[0])
    try:
        assert (await feed.tick()).sent == 2
        now[0] += timedelta(minutes=2)
        assert (await feed.tick()).sent == 1
        assert (await feed.tick()).sent == 0  # nothing twice
        await store.write_aggregates(minutes(T0 + 30 * MINUTE, [40.0]))  # a late correction of 06:30
        tick = await feed.tick()
        assert (tick.sent, tick.revisions) == (1, 1)
        documents = [request.json() for request in http_receiver.requests]
        assert {d["period"] for d in documents} == {"20m"}
        values = [v for d in documents for v in d["values"]]
        assert [(v["start"], v["end"], v["value"], v["n_valid"], v["n_expected"], v["revision"]) for v in values] == [
            ("2026-12-01T06:00:00Z", "2026-12-01T06:20:00Z", 10.0, 20, 20, 1),
            ("2026-12-01T06:20:00Z", "2026-12-01T06:40:00Z", 20.0, 20, 20, 1),
            ("2026-12-01T06:40:00Z", "2026-12-01T07:00:00Z", 30.0, 20, 20, 1),
            ("2026-12-01T06:20:00Z", "2026-12-01T06:40:00Z", 20.0 + 20.0 / 20, 20, 20, 2),
        ]
    finally:
        feed.close()
        await store.close()


def test_the_feed_period_is_configuration() -> None:
    with pytest.raises(ValueError, match=r"state_feed\.period"):
        GatewayConfig.model_validate({"state_feed": {"url": "http://x", "period": "15m"}})
