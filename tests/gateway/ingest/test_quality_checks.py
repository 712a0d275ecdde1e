"""Gateway quality checks, table-driven (docs/regulatory-basis.md §3: out_of_range, stuck, spike, stale)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from aua_contract import EARLIEST_TIME, LATEST_TIME, Batch, Quality, Reading
from gateway.config import ParameterRule, RegistrySection
from gateway.ingest.quality_checks import BatchScreen, Limits, SeriesState, check, worse
from gateway.stores.line_protocol import format_batch_lines

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
S = timedelta(seconds=1)
SO2 = Limits(minimum=0, maximum=5000, max_rate_per_s=100, stuck_samples=3)


@pytest.mark.parametrize(
    ("value", "ts", "quality", "state", "expected"),
    [
        pytest.param(400.0, T0, Quality.OK, None, Quality.OK, id="plausible"),
        pytest.param(-5.0, T0, Quality.OK, None, Quality.OUT_OF_RANGE, id="§3 below physical minimum"),
        pytest.param(9000.0, T0, Quality.OK, None, Quality.OUT_OF_RANGE, id="§3 above physical maximum"),
        pytest.param(400.0, T0, Quality.FAILURE, None, Quality.FAILURE, id="never better than the instrument said"),
        pytest.param(-5.0, T0, Quality.FAILURE, None, Quality.FAILURE, id="failure outranks out_of_range"),
        pytest.param(400.0, T0, Quality.MAINTENANCE_REQUIRED, None, Quality.MAINTENANCE_REQUIRED, id="kept"),
        pytest.param(600.0, T0 + S, Quality.OK, SeriesState(400.0, T0, 1), Quality.SPIKE, id="§3 spike: 200/s > 100/s"),
        pytest.param(
            600.0, T0 + 3 * S, Quality.OK, SeriesState(400.0, T0, 1), Quality.OK, id="same change over 3 s is fine"
        ),
        pytest.param(
            400.0, T0 + S, Quality.OK, SeriesState(400.0, T0, 1), Quality.OK, id="two equal values are not stuck"
        ),
        pytest.param(
            400.0, T0 + S, Quality.OK, SeriesState(400.0, T0, 2), Quality.STUCK, id="§3 stuck: third equal value"
        ),
        pytest.param(
            400.0,
            T0 + S,
            Quality.CHECK_FUNCTION,
            SeriesState(400.0, T0, 5),
            Quality.CHECK_FUNCTION,
            id="check_function outranks stuck",
        ),
        pytest.param(400.0, T0 + 10 * 60 * S, Quality.OK, None, Quality.STALE, id="§3 ten minutes in the future"),
        pytest.param(400.0, T0 - timedelta(days=40), Quality.OK, None, Quality.STALE, id="§3 older than max age"),
        pytest.param(None, T0, Quality.FAILURE, None, Quality.FAILURE, id="no value: only the time is checked"),
    ],
)
def test_checks(
    value: float | None, ts: datetime, quality: Quality, state: SeriesState | None, expected: Quality
) -> None:
    got, _ = check(value, ts, quality, SO2, state, received=T0)
    assert got is expected


def test_state_follows_the_series_and_ignores_out_of_order_and_impossible_values() -> None:
    _, state = check(400.0, T0, Quality.OK, SO2, None, received=T0)
    _, state = check(400.0, T0 + S, Quality.OK, SO2, state, received=T0)
    assert state == SeriesState(400.0, T0 + S, 2)
    _, after_old = check(100.0, T0 - S, Quality.OK, SO2, state, received=T0)
    assert after_old == state
    _, after_impossible = check(-1.0, T0 + 2 * S, Quality.OK, SO2, state, received=T0)
    assert after_impossible == state


def test_worse_is_the_more_severe_and_symmetric() -> None:
    for a in Quality:
        for b in Quality:
            assert worse(a, b) == worse(b, a) or {a, b} == {Quality.STUCK, Quality.SUBSTITUTED}
            assert worse(a, Quality.OK) is a


def test_no_limits_means_only_the_time_check() -> None:
    got, _ = check(1e12, T0, Quality.OK, Limits(), SeriesState(0.0, T0 - S, 99), received=T0)
    assert got is Quality.OK


def test_screen_keeps_any_time_the_contract_accepts_and_flags_far_ones_stale() -> None:
    """A broken clock (year 2300, 1600) is refused by the contract (tests/gateway/ingest/test_validation.py); a time the
    stores
    hold but far from now is kept and flagged stale (§3), in whatever offset it came."""
    almaty = timezone(timedelta(hours=5))

    def at(parameter: str, ts: datetime) -> Reading:
        return Reading(instrument="gas-1", parameter=parameter, value=1.0, unit="mg/m³", ts=ts)

    readings = [at("now", T0.astimezone(almaty)), at("last", LATEST_TIME), at("first", EARLIEST_TIME)]
    batch = Batch(site="pavlodar", agent="chp-1", seq=0, sent_at=T0, readings=readings)
    for registry in (RegistrySection(), RegistrySection(parameter=[ParameterRule(parameter="last", max=10)])):
        screened = BatchScreen(registry).screen(batch, received=T0)
        assert [(r.parameter, r.quality) for r in screened.keep] == [
            ("now", Quality.OK),
            ("last", Quality.STALE),
            ("first", Quality.STALE),
        ]
        assert screened.refused == []
        assert len(format_batch_lines(batch.model_copy(update={"readings": screened.keep}))) == 3


def test_the_series_cache_is_bounded_least_recently_seen_first_and_counts_what_it_forgets() -> None:
    """Publishers name the series, so the stuck/spike history per series is an LRU of screen_cache_series."""
    registry = RegistrySection.model_validate(
        {"parameter": [{"parameter": "so2", "stuck_samples": 2}], "screen_cache_series": 2}
    )
    screen = BatchScreen(registry)

    def seen(instrument: str, second: int) -> Quality:
        reading = Reading(instrument=instrument, parameter="so2", value=7.0, unit="mg/m³", ts=T0 + second * S)
        batch = Batch(site="s", agent="a", seq=second, sent_at=T0 + second * S, readings=[reading])
        [kept] = screen.screen(batch, received=T0 + second * S).keep
        return kept.quality

    assert [seen("i1", 0), seen("i2", 1), seen("i1", 2)] == [Quality.OK, Quality.OK, Quality.STUCK]
    assert seen("i3", 3) is Quality.OK  # i2 (least recently seen) is forgotten, not i1
    assert (len(screen), screen.evictions) == (2, 1)
    assert seen("i1", 4) is Quality.STUCK  # i1's history survived
    assert seen("i2", 5) is Quality.OK  # i2 starts again without history: its repeat is not judged stuck
    assert (len(screen), screen.evictions) == (2, 2)
    for n in range(1000):
        seen(f"x{n}", 6 + n)
    assert (len(screen), screen.evictions) == (2, 1002)
