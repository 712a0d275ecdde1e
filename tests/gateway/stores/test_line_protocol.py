"""Line protocol formatting and escaping, table-driven; the same rules are checked against influxd in
test_store_contract.py (odd names round-trip through a real server)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aua_contract import EARLIEST_TIME, LATEST_TIME, MAX_ABS_VALUE, Batch, Quality, Reading
from gateway.stores.base import StoredReading
from gateway.stores.line_protocol import (
    escape_measurement,
    escape_tag,
    format_batch_lines,
    format_float_field,
    format_int_field,
    format_line,
    format_lines,
    format_string_field,
)

TS = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
TS_NS = 1709294400123456000


def reading(**changes: object) -> StoredReading:
    fields: dict[str, object] = {
        "site": "pavlodar",
        "agent": "chp-1",
        "instrument": "gas-1",
        "parameter": "SO2",
        "ts": TS,
        "value": 412.5,
        "unit": "mg/m³",
        "quality": Quality.OK,
        "status": 0,
    }
    fields.update(changes)
    return StoredReading(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("a,b", r"a\,b"),
        ("a b", r"a\ b"),
        ("a=b", r"a\=b"),
        ("a, =b", r"a\,\ \=b"),
        ("µg/m³", "µg/m³"),
        ('quo"te', 'quo"te'),  # quotes are literal in tags
        (r"back\slash", r"back\slash"),  # so is a backslash (influxd 1.6 stores it as is)
        ("a\\,b", "a\\\\,b"),  # backslash before a comma: influxd reads back a\,b
        ("a\\\\ b", "a\\\\\\ b"),
    ],
)
def test_escape_tag(raw: str, escaped: str) -> None:
    assert escape_tag(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "empty"),
        ("line\nbreak", "newline"),
        ("carriage\rreturn", "newline"),
        ("trailing\\", "trailing backslash"),
        ("nul\x00", "control character"),  # NUL ends an InfluxQL string: writable, never queryable
        ("tab\there", "control character"),
        ("del\x7f", "control character"),
    ],
)
def test_escape_tag_rejects_what_line_protocol_cannot_carry(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        escape_tag(raw)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("reading", "reading"),
        ("a,b c", r"a\,b\ c"),
        ("a=b", "a=b"),  # equals signs need no escape in a measurement
    ],
)
def test_escape_measurement(raw: str, escaped: str) -> None:
    assert escape_measurement(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "formatted"),
    [
        ("mg/m³", '"mg/m³"'),
        ("", '""'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ('\\"', r'"\\\""'),
        ("a,b c=d", '"a,b c=d"'),  # commas, spaces and equals signs are literal inside quotes
    ],
)
def test_format_string_field(raw: str, formatted: str) -> None:
    assert format_string_field(raw) == formatted


@pytest.mark.parametrize(("raw", "problem"), [("two\nlines", "newline"), ("nul\x00", "control character")])
def test_format_string_field_rejects_control_characters(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        format_string_field(raw)


def test_non_ascii_control_and_format_characters_are_kept() -> None:
    """Only ASCII controls are refused; C1 controls, zero-width and bidi marks round-trip through influxd."""
    assert escape_tag("a\x85b\u200bc\u202e") == "a\x85b\u200bc\u202e"


@pytest.mark.parametrize(
    ("value", "formatted"),
    [
        (1.0, "1.0"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (412.5, "412.5"),
        (0.1, "0.1"),
        (1e-05, "1e-05"),
        (1.5e300, "1.5e+300"),
        (123456789.123456789, "123456789.12345679"),
        (3, "3.0"),  # an int in a float field stays a float (else InfluxDB sees a type conflict)
    ],
)
def test_format_float_field(value: float, formatted: str) -> None:
    assert format_float_field(value) == formatted
    assert float(formatted) == value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_format_float_field_rejects_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        format_float_field(value)


@pytest.mark.parametrize(
    ("value", "formatted"),
    [
        (0, "0i"),
        (-1, "-1i"),
        (65535, "65535i"),
        (2**63 - 1, "9223372036854775807i"),
        (-(2**63), "-9223372036854775808i"),
    ],
)
def test_format_int_field(value: int, formatted: str) -> None:
    assert format_int_field(value) == formatted


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1])
def test_format_int_field_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="64-bit"):
        format_int_field(value)


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        (
            {},
            'reading,agent=chp-1,instrument=gas-1,parameter=SO2,site=pavlodar quality="ok",unit="mg/m³",status=0i,'
            f"value=412.5 {TS_NS}",
        ),
        (
            {"value": None, "status": None, "quality": Quality.FAILURE},
            f'reading,agent=chp-1,instrument=gas-1,parameter=SO2,site=pavlodar quality="failure",unit="mg/m³" {TS_NS}',
        ),
        (
            {"value": None, "status": 12},
            'reading,agent=chp-1,instrument=gas-1,parameter=SO2,site=pavlodar quality="ok",unit="mg/m³",status=12i '
            f"{TS_NS}",
        ),
        (
            {"site": "site one", "instrument": "a,b", "parameter": "x=y", "unit": 'u"\\', "status": None},
            r"reading,agent=chp-1,instrument=a\,b,parameter=x\=y,site=site\ one "
            rf'quality="ok",unit="u\"\\",value=412.5 {TS_NS}',
        ),
        (
            {"ts": datetime(1970, 1, 1, tzinfo=UTC), "status": None},
            'reading,agent=chp-1,instrument=gas-1,parameter=SO2,site=pavlodar quality="ok",unit="mg/m³",value=412.5 0',
        ),
        (
            {"ts": datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), "status": None},
            'reading,agent=chp-1,instrument=gas-1,parameter=SO2,site=pavlodar quality="ok",unit="mg/m³",'
            "value=412.5 -1000000000",
        ),
        (
            # a non-UTC time is stored as the same instant in UTC
            {"ts": TS.astimezone(timezone(timedelta(hours=6))), "status": None},
            'reading,agent=chp-1,instrument=gas-1,parameter=SO2,site=pavlodar quality="ok",unit="mg/m³",'
            f"value=412.5 {TS_NS}",
        ),
    ],
    ids=["all-fields", "value-and-status-none", "value-none", "escaping", "epoch", "before-epoch", "utc+6"],
)
def test_format_line(changes: dict[str, object], line: str) -> None:
    assert format_line(reading(**changes)) == line


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"site": ""}, "tag site must not be empty"),
        ({"agent": "a\nb"}, "tag agent"),
        ({"parameter": "p\\"}, "trailing backslash"),
        ({"unit": "m\ng"}, "unit"),
    ],
)
def test_format_line_rejects_unwritable_readings(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        format_line(reading(**changes))


def test_format_lines_ends_every_line_with_a_newline() -> None:
    body = format_lines([reading(), reading(parameter="NOx")])
    assert body.count("\n") == 2
    assert body.endswith("\n")
    assert format_lines([]) == ""


batch_readings = st.builds(
    Reading,
    instrument=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True),
    parameter=st.sampled_from(["SO2", "NOx", "p.1", "a-b"]),
    value=st.none() | st.floats(min_value=-MAX_ABS_VALUE, max_value=MAX_ABS_VALUE),
    unit=st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="\u2028\u2029"), max_size=6)
    | st.sampled_from(["mg/m³", 'u"\\', "a b,c=d"]),
    ts=st.datetimes(
        min_value=EARLIEST_TIME.replace(tzinfo=None), max_value=LATEST_TIME.replace(tzinfo=None), timezones=st.just(UTC)
    ),
    quality=st.sampled_from(Quality),
    status=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(batch_readings, max_size=6))
def test_batch_lines_are_the_lines_of_its_stored_readings(readings: list[Reading]) -> None:
    """The ingest path formats contract readings directly; it must write exactly what format_line writes
    for the same readings as StoredReadings, and refuse exactly what format_line refuses."""
    batch = Batch(site="pavlodar", agent="chp-1", seq=0, sent_at=TS, readings=readings)
    try:
        expected = [format_line(StoredReading.from_reading("pavlodar", "chp-1", r)) for r in readings]
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error))):
            format_batch_lines(batch)
        return
    assert format_batch_lines(batch) == expected


@pytest.mark.parametrize(
    "ts", [datetime(1677, 9, 21, 0, 12, 43, 145224, tzinfo=UTC), datetime(2262, 4, 11, 23, 47, 16, 854776, tzinfo=UTC)]
)
def test_times_influxdb_cannot_hold_are_refused_not_wrapped(ts: datetime) -> None:
    """Just outside InfluxDB's int64 nanosecond range (no instrument means such a time; a wrong clock sends one)."""
    with pytest.raises(ValueError, match="outside what InfluxDB stores"):
        format_line(reading(ts=ts))


def test_times_at_the_edge_of_influxdbs_range_are_written() -> None:
    inside = datetime(2262, 4, 11, 23, 47, 16, 854774, tzinfo=UTC)
    assert format_line(reading(ts=inside)).endswith(" 9223372036854774000")
