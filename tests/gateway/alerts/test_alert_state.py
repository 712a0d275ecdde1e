"""The alert state machine, silences, grouping and rate limiting: pure, table-driven, and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.alerts.state import (
    AlertKey,
    AlertState,
    DeliveryPolicy,
    Level,
    NoticeKind,
    Observation,
    Phase,
    Queued,
    Silence,
    Timing,
    budget_left,
    plan_dispatch,
    remind,
    should_send,
    silenced,
    step,
)

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def at(seconds: float) -> datetime:
    return T0 + seconds * SECOND


def obs(level: Level, seconds: float, value: float | None = None, *, since: float | None = None) -> Observation:
    return Observation(
        level, at(seconds), at(seconds if since is None else since), value, f"{level.value} at {seconds}"
    )


NO_WAIT = Timing()


def run(
    levels: list[tuple[Level, float]], timing: Timing = NO_WAIT
) -> tuple[AlertState, list[tuple[NoticeKind, float]]]:
    """Apply (level, seconds) observations; return the final state and the transitions as (kind, seconds)."""
    state = AlertState()
    told = []
    for level, seconds in levels:
        state, transition = step(state, obs(level, seconds, value=seconds), timing)
        if transition is not None:
            told.append((transition.kind, (transition.at - T0) / SECOND))
    return state, told


T, H, C = Level.TRIGGER, Level.HOLD, Level.CLEAR
FIRING, RESOLVED = NoticeKind.FIRING, NoticeKind.RESOLVED


@pytest.mark.parametrize(
    ("levels", "timing", "phase", "told"),
    [
        ([(T, 0)], Timing(), Phase.FIRING, [(FIRING, 0)]),
        ([(T, 0), (T, 1), (C, 2)], Timing(), Phase.RESOLVED, [(FIRING, 0), (RESOLVED, 2)]),
        ([(H, 0), (H, 1)], Timing(), Phase.INACTIVE, []),  # the hysteresis band never starts an alert
        ([(T, 0), (H, 1), (H, 2)], Timing(), Phase.FIRING, [(FIRING, 0)]),  # ... but keeps one going
        ([(T, 0), (T, 10)], Timing(for_=30 * SECOND), Phase.PENDING, []),
        ([(T, 0), (H, 10), (T, 30)], Timing(for_=30 * SECOND), Phase.FIRING, [(FIRING, 30)]),
        ([(T, 0), (C, 10), (T, 20), (T, 40)], Timing(for_=30 * SECOND), Phase.PENDING, []),  # clear restarts the clock
        ([(T, 0), (C, 5), (T, 6), (C, 20)], Timing(clear_for=30 * SECOND), Phase.FIRING, [(FIRING, 0)]),
        ([(T, 0), (C, 5), (C, 35)], Timing(clear_for=30 * SECOND), Phase.RESOLVED, [(FIRING, 0), (RESOLVED, 35)]),
        ([(T, 0), (C, 1), (T, 2), (C, 3)], Timing(), Phase.RESOLVED,
         [(FIRING, 0), (RESOLVED, 1), (FIRING, 2), (RESOLVED, 3)]),
        ([(T, 10), (C, 5)], Timing(), Phase.FIRING, [(FIRING, 10)]),  # an older observation changes nothing
        ([(C, 0), (C, 1)], Timing(), Phase.INACTIVE, []),
    ],
)  # fmt: skip
def test_transitions(
    levels: list[tuple[Level, float]], timing: Timing, phase: Phase, told: list[tuple[NoticeKind, float]]
) -> None:
    state, transitions = run(levels, timing)
    assert state.phase is phase
    assert transitions == told


def test_a_period_mean_fires_at_once_for_the_period_it_covers() -> None:
    """A daily mean speaks for the whole day: since = start of the day, so `for` up to a day is already met."""
    day = Observation(Level.TRIGGER, at(86400), at(0), 320.0, "daily mean")
    state, transition = step(AlertState(), day, Timing(for_=timedelta(hours=1)))
    assert state.phase is Phase.FIRING
    assert transition is not None
    assert (transition.since, transition.at, transition.episode) == (at(0), at(86400), 1)


def test_a_firing_remembers_its_worst_value_and_episode() -> None:
    state = AlertState()
    timing = Timing()
    for level, value in [(T, 310.0), (T, 480.0), (H, 290.0)]:
        state, _ = step(state, Observation(level, at(value), at(value), value), timing)
    state, transition = step(state, Observation(C, at(600), at(600), 5.0), timing)
    assert transition is not None
    assert (transition.kind, transition.value, transition.peak, transition.episode) == (RESOLVED, 5.0, 480.0, 1)
    assert transition.since == at(310)
    state, transition = step(state, Observation(T, at(700), at(700), 350.0), timing)
    assert transition is not None
    assert (transition.episode, transition.peak) == (2, 350.0)


def test_below_thresholds_track_the_lowest_value() -> None:
    state, timing = AlertState(), Timing(higher_is_worse=False)
    for second, value in enumerate((18.0, 17.0, 18.5)):
        state, _ = step(state, Observation(T, at(second), at(second), value), timing)
    assert state.peak == 17.0


def test_reminders_repeat_until_acknowledged() -> None:
    state, _ = step(AlertState(), obs(T, 0), Timing())
    every = timedelta(minutes=30)
    assert remind(state, at(1799), every, acknowledged=False)[1] is None
    state, reminder = remind(state, at(1800), every, acknowledged=False)
    assert reminder is not None
    assert (reminder.kind, reminder.episode, reminder.since) == (NoticeKind.REMINDER, 1, at(0))
    assert remind(state, at(3599), every, acknowledged=False)[1] is None
    assert remind(state, at(3600), every, acknowledged=False)[1] is not None
    assert remind(state, at(3600), every, acknowledged=True)[1] is None
    assert remind(state, at(3600), timedelta(0), acknowledged=False)[1] is None  # off


@pytest.mark.parametrize(
    ("kind", "is_silenced", "firing_sent", "send"),
    [
        (NoticeKind.FIRING, False, False, True),
        (NoticeKind.FIRING, True, False, False),
        (NoticeKind.RESOLVED, False, True, True),
        (NoticeKind.RESOLVED, False, False, False),  # nobody heard it fire: no "resolved" either
        (NoticeKind.RESOLVED, True, True, False),
        (NoticeKind.REMINDER, False, True, True),
        (NoticeKind.REMINDER, False, False, False),
    ],
)
def test_what_is_sent(kind: NoticeKind, is_silenced: bool, firing_sent: bool, send: bool) -> None:
    assert should_send(kind, is_silenced=is_silenced, firing_sent=firing_sent) is send


def test_silences_cover_matching_alerts_while_they_last() -> None:
    key = AlertKey("hg-screening", "pavlodar-ambient", "pvl-station-1", "pvl1-hg", "hg")
    agent_key = AlertKey("agent-offline", "pavlodar-ambient", "pvl-station-1")
    hg = Silence(1, at(0), at(7200), rule="hg-*")
    assert hg.covers(key, at(0))
    assert hg.covers(key, at(7199))
    assert not hg.covers(key, at(7200))
    assert not hg.covers(agent_key, at(10))
    assert Silence(2, at(0), at(10), instrument="pvl-station-1").covers(agent_key, at(5))
    assert not Silence(3, at(0), at(10), site="pavlodar-chp").covers(key, at(5))
    assert silenced(key, at(5), [Silence(3, at(0), at(10), site="pavlodar-chp"), hg])


# --------------------------------------------------------------------------------------------------
# Grouping and rate limiting
# --------------------------------------------------------------------------------------------------


def test_notices_of_one_group_wait_and_go_together() -> None:
    policy = DeliveryPolicy(group_wait=10 * SECOND)
    queued = [Queued(1, "hg|s1", at(0)), Queued(2, "hg|s1", at(4)), Queued(3, "gap|s1", at(8))]
    assert plan_dispatch(queued, [], at(9), policy) == []
    [first] = plan_dispatch(queued, [], at(10), policy)
    assert (first.notice_ids, first.groups) == ((1, 2), ("hg|s1",))
    assert len(plan_dispatch(queued, [], at(18), policy)) == 2


def test_the_rate_limit_sends_the_rest_as_one_digest_and_never_more() -> None:
    policy = DeliveryPolicy(max_messages=3, per=timedelta(hours=1))
    queued = [Queued(i, f"g{i}", at(i)) for i in range(1, 7)]
    dispatches = plan_dispatch(queued, [], at(10), policy)
    assert [d.notice_ids for d in dispatches] == [(1,), (2,), (3, 4, 5, 6)]
    assert dispatches[-1].groups == ("g3", "g4", "g5", "g6")
    sent = [at(10)] * 3
    assert plan_dispatch(queued, sent, at(3609), policy) == []
    assert budget_left(sent, at(3610), policy) == 3


def test_a_policy_checks_its_numbers() -> None:
    with pytest.raises(ValueError, match="max_messages"):
        DeliveryPolicy(max_messages=0)
    with pytest.raises(ValueError, match="group_wait"):
        DeliveryPolicy(group_wait=-SECOND)


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------

observations = st.lists(
    st.tuples(st.sampled_from(list(Level)), st.integers(min_value=0, max_value=20), st.floats(0, 1000)),
    max_size=80,
)
timings = st.builds(
    Timing,
    for_=st.integers(min_value=0, max_value=40).map(lambda s: s * SECOND),
    clear_for=st.integers(min_value=0, max_value=40).map(lambda s: s * SECOND),
)


@given(observations, timings)
def test_any_sequence_gives_alternating_firings_and_resolutions(
    sequence: list[tuple[Level, int, float]], timing: Timing
) -> None:
    """Never two firings (or resolutions) in a row for one alert; the first is a firing; episodes count up;
    a firing comes only after the condition held `for` without a CLEAR; a resolution only after `clear_for`."""
    state = AlertState()
    now = 0
    told = []
    run_start: int | None = None  # start of the current non-CLEAR run
    clear_start: int | None = None
    for level, gap, value in sequence:
        now += gap
        before = state
        state, transition = step(state, Observation(level, at(now), at(now), value), timing)
        if level is Level.CLEAR:
            run_start = None
            clear_start = now if clear_start is None else clear_start
        else:
            clear_start = None
            if run_start is None and level is Level.TRIGGER:
                run_start = now
        if transition is None:
            assert state.phase is before.phase or {before.phase, state.phase} <= {
                Phase.INACTIVE,
                Phase.PENDING,
                Phase.RESOLVED,
            }
            continue
        told.append(transition)
        if transition.kind is NoticeKind.FIRING:
            assert run_start is not None
            assert now - run_start >= timing.for_ / SECOND
            assert state.phase is Phase.FIRING
        else:
            assert clear_start is not None
            assert now - clear_start >= timing.clear_for / SECOND
            assert state.phase is Phase.RESOLVED
    kinds = [t.kind for t in told]
    alternating = [NoticeKind.FIRING, NoticeKind.RESOLVED] * len(kinds)
    assert kinds == alternating[: len(kinds)]
    assert [t.episode for t in told] == [1 + i // 2 for i in range(len(told))]


@given(observations, timings, st.integers(min_value=0, max_value=80))
def test_replaying_observations_after_a_restart_tells_nothing_twice(
    sequence: list[tuple[Level, int, float]], timing: Timing, cut: int
) -> None:
    """The engine persists the state; replaying already-applied observations on it adds no transition."""
    applied, now, state = [], 0, AlertState()
    for level, gap, value in sequence:
        now += gap
        applied.append(Observation(level, at(now), at(now), value))
    for observation in applied[:cut]:
        state, _ = step(state, observation, timing)
    restored = state
    last_applied = applied[: max(0, cut)][-1:]
    for observation in applied[:cut]:
        if not last_applied or observation.at >= last_applied[0].at:
            continue  # only strictly older ones are replays (two observations may share a timestamp)
        state, transition = step(state, observation, timing)
        assert transition is None
    assert state == restored


@settings(max_examples=60)
@given(
    arrivals=st.lists(
        st.tuples(st.integers(min_value=0, max_value=600), st.sampled_from(["a", "b", "c", "d"])), max_size=40
    ),
    max_messages=st.integers(min_value=1, max_value=4),
    group_wait=st.integers(min_value=0, max_value=30),
)
def test_every_notice_goes_out_once_and_the_budget_holds(
    arrivals: list[tuple[int, str]], max_messages: int, group_wait: int
) -> None:
    policy = DeliveryPolicy(group_wait=group_wait * SECOND, max_messages=max_messages, per=timedelta(minutes=5))
    pending: list[Queued] = []
    sent: list[datetime] = []
    delivered: list[int] = []
    arrivals = sorted(arrivals)
    for second in range(0, 600 + 4 * 300 + group_wait + 1, 5):
        pending += [Queued(i, group, at(t)) for i, (t, group) in enumerate(arrivals) if second - 5 < t <= second]
        for dispatch in plan_dispatch(pending, sent, at(second), policy):
            sent.append(at(second))
            delivered += dispatch.notice_ids
            pending = [q for q in pending if q.notice_id not in dispatch.notice_ids]
        window = [s for s in sent if at(second) - policy.per < s <= at(second)]
        assert len(window) <= max_messages
    assert sorted(delivered) == list(range(len(arrivals)))
