"""The schedule's pure rules: ticks on a grid, each cycle's deadline, overruns, and which instruments a tick polls."""

from __future__ import annotations

import pytest

from edge_agent.schedule import TickPlan, cycle_deadline, following_tick, next_tick, plan_tick


@pytest.mark.parametrize(
    ("now", "interval", "expected"),
    [
        (100.0, 1.0, 101.0),  # on a tick: the next one, not this one again
        (100.3, 1.0, 101.0),
        (100.999, 1.0, 101.0),
        (100.2, 0.5, 100.5),
        (125.0, 60.0, 180.0),
    ],
)
def test_next_tick_is_the_next_multiple_of_the_interval(now: float, interval: float, expected: float) -> None:
    assert next_tick(now, interval) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("tick", "interval", "expected"),
    [
        (100.0, 1.0, 100.9),  # a tenth of the interval kept for sealing
        (100.0, 0.5, 100.45),
        (100.0, 0.1, 100.09),
        (120.0, 60.0, 179.75),  # at most 0.25 s: a long interval needs no longer seal
        (100.0, 2.5, 102.25),  # 0.25 s exactly at 2.5 s
    ],
)
def test_a_cycle_waits_until_the_next_tick_less_the_sealing_reserve(
    tick: float, interval: float, expected: float
) -> None:
    deadline = cycle_deadline(tick, interval)
    assert deadline == pytest.approx(expected)
    assert tick < deadline < tick + interval


@pytest.mark.parametrize(
    ("tick", "ended", "interval", "expected"),
    [
        (100.0, 100.05, 1.0, (101.0, 0)),  # ended well in time: the next tick
        (100.0, 100.95, 1.0, (101.0, 0)),  # after its deadline, before the next tick: nothing lost
        (100.0, 101.0, 1.0, (101.0, 0)),  # ended on the next tick: it starts at once
        (100.0, 101.3, 1.0, (101.0, 0)),  # an overrun of 0.3 s: the tick starts late, nobody loses it
        (100.0, 101.5, 1.0, (102.0, 1)),  # half an interval late: that tick is skipped for everyone
        (100.0, 101.7, 1.0, (102.0, 1)),
        (100.0, 103.2, 1.0, (103.0, 2)),  # a stall: 101 and 102 skipped, 103 starts late
        (100.0, 103.6, 1.0, (104.0, 3)),
        (100.0, 100.6, 0.5, (100.5, 0)),
        (100.0, 100.8, 0.5, (101.0, 1)),
        (120.0, 185.0, 60.0, (180.0, 0)),  # 5 s late on a minute's interval: still that minute's poll
    ],
)
def test_the_tick_after_a_cycle_and_the_ticks_skipped_for_everyone(
    tick: float, ended: float, interval: float, expected: tuple[float, int]
) -> None:
    following, skipped = following_tick(tick, ended, interval)
    assert (following, skipped) == (pytest.approx(expected[0]), expected[1])
    assert following >= tick + interval  # never a tick already polled
    assert following - ended < interval  # never more than an interval of waiting


@pytest.mark.parametrize(
    ("busy", "expected"),
    [
        ([], TickPlan(poll=(), busy=())),
        ([False, False, False], TickPlan(poll=(0, 1, 2), busy=())),
        ([False, True, False], TickPlan(poll=(0, 2), busy=(1,))),  # only the one still busy skips this tick
        ([True, True], TickPlan(poll=(), busy=(0, 1))),
    ],
)
def test_a_tick_polls_every_instrument_not_still_busy(busy: list[bool], expected: TickPlan) -> None:
    assert plan_tick(busy) == expected
