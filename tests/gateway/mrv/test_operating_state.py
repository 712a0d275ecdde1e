"""Operating state per period (gateway.mrv.operating_state): table-driven, each rule with its source.

Commission Implementing Decision 2012/249/EU Art. 9: at least three criteria; start-up ends and shut-down
starts when at least two of them are met. EU MRR 2018/2066 Art. 43 / 40 CFR 72.2: an operating hour is one
in which fuel is burned. Directive 2010/75/EU Annex V Part 4: start-up and shut-down are excluded from limit
compliance.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.mrv.operating_state import Criterion, ManualEntry, OperatingSpec, State, StatusTag, derive_states

T0 = datetime(2026, 7, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
OFF, SU, N, SD = State.OFF, State.START_UP, State.NORMAL, State.SHUT_DOWN

RUNNING = (Criterion("fuel", "dcs", "fuel", at_least=0.5),)
CRITERIA = (
    Criterion("load ≥ MSUL", "dcs", "load", at_least=40),
    Criterion("steam flow", "dcs", "steam", at_least=100),
    Criterion("flue-gas temperature", "dcs", "fgt", at_least=120),
)
SPEC = OperatingSpec(running=RUNNING, startup_end=CRITERIA)


def _series(**columns: list[float | None]) -> tuple[list[datetime], dict[str, dict[datetime, float]]]:
    length = len(next(iter(columns.values())))
    starts = [T0 + i * HOUR for i in range(length)]
    signals = {
        f"dcs/{name}": {start: value for start, value in zip(starts, values, strict=True) if value is not None}
        for name, values in columns.items()
    }
    return starts, signals


# fuel, load, steam, fgt per hour → expected states
CASES = [
    pytest.param(
        {"fuel": [0, 0], "load": [0, 0], "steam": [0, 0], "fgt": [20, 20]},
        [OFF, OFF],
        id="no fuel burned: OFF (MRR Art. 43)",
    ),
    pytest.param(
        {"fuel": [0, 5, 5, 5], "load": [0, 10, 30, 50], "steam": [0, 20, 120, 150], "fgt": [20, 90, 110, 130]},
        [OFF, SU, SU, N],
        id="start-up ends when 2 of 3 criteria are met, not 1 (2012/249/EU Art. 9)",
    ),
    pytest.param(
        {"fuel": [5, 5, 5], "load": [50, 50, 50], "steam": [150, 150, 150], "fgt": [100, 100, 100]},
        [N, N, N],
        id="2 of 3 met from the first hour: NORMAL",
    ),
    pytest.param(
        {
            "fuel": [5, 5, 5, 5, 0],
            "load": [50, 35, 30, 10, 0],
            "steam": [150, 150, 90, 20, 0],
            "fgt": [130, 130, 125, 90, 20],
        },
        [N, N, SD, SD, OFF],
        id="shut-down starts when 2 of 3 criteria are no longer met; fuel off: OFF (2012/249/EU Art. 9)",
    ),
    pytest.param(
        {"fuel": [5, 5, 5, 5], "load": [50, 30, 50, 50], "steam": [150, 90, 150, 150], "fgt": [130, 130, 130, 130]},
        [N, SD, N, N],
        id="a shut-down that regains stable generation returns to NORMAL",
    ),
    pytest.param(
        {"fuel": [5, 5], "load": [50, None], "steam": [150, None], "fgt": [130, None]},
        [N, N],
        id="criteria without a value do not start a shut-down (conservative: judged)",
    ),
    pytest.param(
        {"fuel": [0, 5, 5], "load": [0, 50, 50], "steam": [0, None, None], "fgt": [20, 20, 20]},
        [OFF, N, N],
        id="criteria without a value count as met for the end of start-up (conservative: judged)",
    ),
    pytest.param(
        {"fuel": [None, None], "load": [None, None], "steam": [None, None], "fgt": [None, None]},
        [N, N],
        id="no signal at all: taken as operating and NORMAL (substituted and judged, the conservative side)",
    ),
]


@pytest.mark.parametrize(("columns", "expected"), CASES)
def test_states_from_thresholds(columns: dict[str, list[float | None]], expected: list[State]) -> None:
    starts, signals = _series(**columns)
    assert [h.state for h in derive_states(SPEC, starts, signals)] == expected


def test_the_basis_names_the_rule() -> None:
    starts, signals = _series(fuel=[5], load=[50], steam=[150], fgt=[20])
    (hour,) = derive_states(SPEC, starts, signals)
    assert hour.source == "signals"
    assert "2 of 3 start-up criteria met" in hour.basis
    assert "2012/249/EU Art. 9" in hour.basis


def test_missing_signals_say_they_were_assumed() -> None:
    starts, signals = _series(fuel=[None])
    (hour,) = derive_states(SPEC, starts, signals)
    assert (hour.state, hour.source) == (N, "assumed")


def test_explicit_shutdown_criteria_and_three_of_four() -> None:
    four = (*CRITERIA, Criterion("O2 below 15 %", "dcs", "o2", at_most=15))
    shutdown = (
        Criterion("load < MSDL", "dcs", "load", at_most=25),
        Criterion("steam low", "dcs", "steam", at_most=60),
        Criterion("fgt low", "dcs", "fgt", at_most=100),
    )
    spec = OperatingSpec(running=RUNNING, startup_end=four, shutdown_start=shutdown, required=3)
    starts, signals = _series(
        fuel=[5, 5, 5, 5, 5],
        load=[50, 50, 50, 20, 20],
        steam=[150, 150, 150, 150, 50],
        fgt=[20, 130, 130, 130, 130],
        o2=[18, 10, 10, 10, 10],
    )
    # hour 0: load, steam met (2 < 3 required); hour 1: all 4; hour 3: 1 shut-down criterion; hour 4: 2 (< 3)
    assert [h.state for h in derive_states(spec, starts, signals)] == [SU, N, N, N, N]


STATUS = StatusTag("dcs", "state", {OFF: 0, SU: 1, N: 2, SD: 3})


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        pytest.param([0, 1, 2, 3, 0], [OFF, SU, N, SD, OFF], id="each code is its state"),
        pytest.param([0, 0.5, 2, 2.5, 0], [OFF, SU, N, SD, OFF], id="a mean between codes is a change in the hour"),
        pytest.param([2, None, 2], [N, N, N], id="no status value and no running criteria: assumed operating"),
    ],
)
def test_states_from_a_status_tag(codes: list[float | None], expected: list[State]) -> None:
    starts, signals = _series(state=codes)
    spec = OperatingSpec(status=STATUS)
    assert [h.state for h in derive_states(spec, starts, signals)] == expected


def test_status_tag_wins_over_thresholds_and_thresholds_fill_its_gaps() -> None:
    spec = OperatingSpec(status=STATUS, running=RUNNING, startup_end=CRITERIA)
    starts, signals = _series(
        state=[1, None, None], fuel=[5, 5, 0], load=[50, 50, 0], steam=[150, 150, 0], fgt=[130, 130, 20]
    )
    hours = derive_states(spec, starts, signals)
    assert [(h.state, h.source) for h in hours] == [(SU, "status"), (N, "signals"), (OFF, "signals")]


def _entry(number: int, state: State | None, first: int, last: int) -> ManualEntry:
    return ManualEntry(
        number, "boiler", state, T0 + first * HOUR, T0 + (last + 1) * HOUR, "ivanov", f"entry {number}", T0
    )


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param([], [N, N, N, N], id="no entry: the signals"),
        pytest.param([_entry(1, OFF, 1, 2)], [N, OFF, OFF, N], id="an entry overrides its periods only"),
        pytest.param(
            [_entry(1, OFF, 0, 3), _entry(2, SD, 2, 2)], [OFF, OFF, SD, OFF], id="a later entry supersedes an earlier"
        ),
        pytest.param(
            [_entry(1, OFF, 0, 3), _entry(2, None, 1, 1)], [OFF, N, OFF, OFF], id="'derived' hands periods back"
        ),
    ],
)
def test_manual_log_overrides(entries: list[ManualEntry], expected: list[State]) -> None:
    starts, signals = _series(fuel=[5] * 4, load=[50] * 4, steam=[150] * 4, fgt=[130] * 4)
    hours = derive_states(SPEC, starts, signals, entries)
    assert [h.state for h in hours] == expected
    assert all(h.source == "manual" and "ivanov" in h.basis for h in hours if h.manual_id is not None)


def test_manual_log_without_a_spec_and_no_spec_at_all() -> None:
    starts = [T0 + i * HOUR for i in range(3)]
    assert [h.state for h in derive_states(None, starts, {})] == [N, N, N]
    assert [h.state for h in derive_states(None, starts, {}, [_entry(1, OFF, 1, 1)])] == [N, OFF, N]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({}, "status tag or running criteria", id="nothing to decide by"),
        pytest.param(
            {"running": RUNNING, "startup_end": CRITERIA[:2]}, "at least 3", id="two criteria (Art. 9: at least three)"
        ),
        pytest.param(
            {"running": RUNNING, "startup_end": CRITERIA, "required": 1}, "not between 2 and the 3", id="one of three"
        ),
        pytest.param(
            {"running": RUNNING, "startup_end": CRITERIA, "required": 4}, "not between 2 and the 3", id="4 of 3"
        ),
        pytest.param({"running": RUNNING, "shutdown_start": CRITERIA}, "set startup_end", id="only shut-down"),
    ],
)
def test_spec_refuses_what_the_decision_does_not_allow(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperatingSpec(**kwargs)  # type: ignore[arg-type]


def test_criterion_needs_a_threshold() -> None:
    with pytest.raises(ValueError, match="at_least or at_most"):
        Criterion("nothing", "dcs", "load")
