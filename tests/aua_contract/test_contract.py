"""The wire contract (aua_contract): round trips, every rejection path, fuzzing, topics, purity."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import sys
import types
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import aua_contract
from aua_contract import (
    SCHEMA_VERSION,
    TOPIC_ROOT,
    AgentState,
    AgentStatus,
    Batch,
    ContractError,
    Quality,
    Reading,
    ResendRequest,
    TopicKind,
    TopicParts,
    decode_batch,
    decode_resend,
    decode_status,
    encode_batch,
    encode_resend,
    encode_status,
    parse_topic,
    readings_topic,
    resend_topic,
    status_topic,
)
from aua_contract.codec import _decode, _WireBatch
from aua_contract.models import (
    EARLIEST_TIME,
    LATEST_TIME,
    MAX_ABS_VALUE,
    MAX_INT64,
    MAX_READINGS_PER_BATCH,
    MAX_RESEND_SPAN,
)
from aua_contract.topics import subscription

FUZZ = settings(max_examples=150, deadline=None)

# --- strategies ---------------------------------------------------------------------------------------------------

identifiers = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))
)
aware_times = st.datetimes(  # a day inside the contract's range, whatever the offset
    min_value=datetime(1678, 1, 2), max_value=datetime(2261, 12, 30), timezones=st.just(UTC) | offsets
)
extreme_floats = st.sampled_from(
    [MAX_ABS_VALUE, -MAX_ABS_VALUE, sys.float_info.min, 5e-324, -5e-324, -0.0, 0.0, 1e-300, MAX_ABS_VALUE - 0.125]
)
values = st.none() | st.floats(min_value=-MAX_ABS_VALUE, max_value=MAX_ABS_VALUE) | extreme_floats
printable = st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="\u2028\u2029")
units = st.text(printable, max_size=32) | st.sampled_from(
    ["mg/Nm³", "µg/m³", "°C", "m³/h", "ppm·m", "мг/м³", "Nm³/h 🔥", ""]
)
counts = st.integers(min_value=0, max_value=MAX_INT64)

readings = st.builds(
    Reading,
    instrument=identifiers,
    parameter=identifiers,
    value=values,
    unit=units,
    ts=aware_times,
    quality=st.sampled_from(Quality),
    status=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
batches = st.builds(
    Batch,
    site=identifiers,
    agent=identifiers,
    seq=counts,
    sent_at=aware_times,
    readings=st.lists(readings, max_size=5),
)
statuses = st.builds(
    AgentStatus,
    site=identifiers,
    agent=identifiers,
    state=st.sampled_from(AgentState),
    at=st.none() | aware_times,
    version=st.none() | st.text(printable, max_size=64),
    next_seq=st.none() | counts,
    oldest_seq=st.none() | counts,
    dropped=st.none() | counts,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

# --- round trips --------------------------------------------------------------------------------------------------


@FUZZ
@given(batches)
def test_batch_round_trip(batch: Batch) -> None:
    """decode(encode(b)) == b, including value None (a failed read), unicode units and extreme finite floats."""
    payload = encode_batch(batch)
    decoded = decode_batch(payload)
    assert decoded == batch
    assert encode_batch(decoded) == payload


@FUZZ
@given(statuses)
def test_status_round_trip(status: AgentStatus) -> None:
    payload = encode_status(status)
    decoded = decode_status(payload)
    assert decoded == status
    assert encode_status(decoded) == payload


def _reading(**changes: Any) -> Reading:
    fields: dict[str, Any] = {
        "instrument": "marsic-1",
        "parameter": "so2",
        "value": 12.5,
        "unit": "mg/Nm³",
        "ts": datetime(2025, 1, 1, 12, 0, tzinfo=UTC),
    }
    return Reading(**(fields | changes))


def _batch(*items: Reading) -> Batch:
    return Batch(
        site="pavlodar-1",
        agent="stack-a",
        seq=7,
        sent_at=datetime(2025, 1, 1, 12, 0, 5, tzinfo=UTC),
        readings=list(items) or [_reading()],
    )


def test_failed_read_survives_the_wire() -> None:
    """A reading whose read failed (value None, quality failure) decodes back; it must not poison its batch."""
    batch = _batch(_reading(value=None, quality=Quality.FAILURE), _reading(parameter="nox", value=3.0))
    assert decode_batch(encode_batch(batch)) == batch


def test_timestamps_are_normalised_to_utc() -> None:
    """Time is UTC everywhere inside (design.md); an offset time is converted by the batch, not rejected."""
    almaty = timezone(timedelta(hours=5))
    batch = _batch(_reading(ts=datetime(2025, 1, 1, 17, 0, tzinfo=almaty)), _reading(parameter="nox"))
    reading = batch.readings[0]
    assert reading.ts == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert reading.ts.utcoffset() == timedelta(0)
    assert batch.readings[1] == _reading(parameter="nox")
    assert b'"ts":"2025-01-01T12:00:00Z"' in encode_batch(batch)
    decoded = decode_batch(encode_batch(batch).replace(b"12:00:00Z", b"17:00:00+05:00"))
    assert decoded.readings[0].ts == reading.ts
    assert decoded.readings[0].ts.utcoffset() == timedelta(0)


def test_a_reading_accepts_any_aware_time_and_refuses_a_naive_one() -> None:
    """A lone Reading checks awareness inside pydantic-core (no Python validator per reading: decode speed)."""
    almaty = timezone(timedelta(hours=5))
    assert _reading(ts=datetime(2025, 1, 1, 17, 0, tzinfo=almaty)).ts == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    with pytest.raises(ValidationError, match="timezone"):
        _reading(ts=datetime(2025, 1, 1, 17, 0))


@pytest.mark.parametrize("status", [-(2**63), 0, 2**63 - 1])
def test_status_words_up_to_int64_are_carried(status: int) -> None:
    batch = _batch(_reading(status=status))
    assert decode_batch(encode_batch(batch)).readings[0].status == status


@pytest.mark.parametrize("status", [-(2**63) - 1, 2**63, 2**64])
def test_status_words_beyond_int64_are_refused(status: int) -> None:
    """Stores keep status as a signed 64-bit integer; a bigger one would fail at the store, after validation."""
    with pytest.raises(ValidationError, match="status"):
        _reading(status=status)


def test_encoding_omits_absent_optionals() -> None:
    payload = json.loads(encode_status(AgentStatus(site="s", agent="a", state=AgentState.OFFLINE)))
    assert payload == {"v": SCHEMA_VERSION, "site": "s", "agent": "a", "state": "offline"}


# --- rejection paths ----------------------------------------------------------------------------------------------


def _valid_batch_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(encode_batch(_batch()))
    return document


def _valid_status_document() -> dict[str, Any]:
    return {"v": 1, "site": "pavlodar-1", "agent": "stack-a", "state": "online", "at": "2025-01-01T00:00:00Z"}


def _without(document: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != key}


def _with_reading(**changes: Any) -> dict[str, Any]:
    document = _valid_batch_document()
    document["readings"] = [document["readings"][0] | changes]
    return document


def _reading_without(key: str) -> dict[str, Any]:
    document = _valid_batch_document()
    document["readings"] = [_without(document["readings"][0], key)]
    return document


def _raw(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


TIME_RANGE = "outside 1678-01-01 .. 2262-01-01 UTC"
OUT_OF_RANGE_TIMES = [
    "1677-12-31T23:59:59.999999Z",
    "1678-01-01T00:30:00+01:00",  # 1677-12-31T23:30Z
    "2262-01-01T00:00:00.000001Z",
    "2261-12-31T23:30:00-01:00",  # 2262-01-01T00:30Z
    "2262-04-11T23:47:17Z",  # past what a signed 64-bit count of nanoseconds holds
    "1677-09-21T00:12:43Z",
    "1000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
]
CONTROL_TEXTS = ["a\x00b", "mg\r\n", "\n", "a\tb", "\x7f", "\x85", "\x9f", "a\u2028b", "\u2029", "\x1b[31m"]

BAD_IDENTIFIERS = ["a/b", "a+b", "+", "#", "a#", "a b", " a", "", "-a", ".a", "a" * 65, "é", "a\n", "a\x00", "a/+/#"]

BATCH_REJECTIONS: list[Any] = [
    pytest.param(b"", ["not JSON"], id="empty"),
    pytest.param(b"{not json", ["not JSON"], id="not-json"),
    pytest.param(b"\xff\xfe\x00", ["not JSON"], id="not-text"),
    pytest.param(b"\x80abc", ["not JSON"], id="invalid-utf8"),
    pytest.param(b"1" * 5000, ["not JSON"], id="integer-over-4300-digits"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, ["batch:"], id="deep-nesting"),
    pytest.param(b"[]", ["JSON object", "list"], id="array"),
    pytest.param(b"null", ["JSON object", "NoneType"], id="null"),
    pytest.param(b'"batch"', ["JSON object", "str"], id="string"),
    pytest.param(b"42", ["JSON object", "int"], id="number"),
    pytest.param(_raw(_without(_valid_batch_document(), "v")), ["'v'", "missing"], id="missing-v"),
    pytest.param(_raw(_valid_batch_document() | {"v": 2}), ["v=2", "schema version"], id="v=2"),
    pytest.param(_raw(_valid_batch_document() | {"v": 0}), ["v=0", "schema version"], id="v=0"),
    pytest.param(_raw(_valid_batch_document() | {"v": True}), ["v=True", "schema version"], id="v=true"),
    pytest.param(_raw(_valid_batch_document() | {"v": "1"}), ["v='1'", "schema version"], id="v-string"),
    pytest.param(_raw(_valid_batch_document() | {"v": None}), ["v=None", "schema version"], id="v=null"),
    pytest.param(_raw(_valid_batch_document() | {"v": [1]}), ["v=[1]", "schema version"], id="v-list"),
    *(
        pytest.param(_raw(_without(_valid_batch_document(), key)), [key, "Field required"], id=f"missing-{key}")
        for key in ("site", "agent", "seq", "sent_at", "readings")
    ),
    *(
        pytest.param(_raw(_reading_without(key)), [f"readings.0.{key}", "Field required"], id=f"missing-reading-{key}")
        for key in ("instrument", "parameter", "unit", "ts")
    ),
    pytest.param(
        _raw(_valid_batch_document() | {"sent_at": "2025-01-01T12:00:00"}), ["sent_at", "time zone"], id="naive-sent_at"
    ),
    pytest.param(_raw(_with_reading(ts="2025-01-01T12:00:00")), ["readings.0.ts", "timezone"], id="naive-ts"),
    pytest.param(
        _raw(_valid_batch_document() | {"sent_at": "0001-01-01T00:00:00+01:00"}),
        ["sent_at", "outside the range"],
        id="sent_at-before-year-1-in-utc",
    ),
    pytest.param(
        _raw(_with_reading(ts="9999-12-31T23:59:59-01:00")), ["readings.0.ts", "2262-01-01"], id="ts-after-9999"
    ),
    # json.loads accepts the non-JSON literals NaN/Infinity: they must still never become a measurement.
    pytest.param(
        _raw(_valid_batch_document()).replace(b'"value": 12.5', b'"value": NaN'),
        ["readings.0.value", "finite"],
        id="value-NaN-literal",
    ),
    pytest.param(
        _raw(_valid_batch_document()).replace(b'"value": 12.5', b'"value": Infinity'),
        ["readings.0.value", "finite"],
        id="value-Infinity-literal",
    ),
    pytest.param(
        _raw(_valid_batch_document()).replace(b'"value": 12.5', b'"value": -Infinity'),
        ["readings.0.value", "finite"],
        id="value-minus-Infinity-literal",
    ),
    pytest.param(_raw(_with_reading(value="NaN")), ["readings.0.value", "valid number"], id="value-NaN-string"),
    # Strict: a number is a JSON number, a time a string; nothing is coerced (a CEMS record is evidence).
    pytest.param(_raw(_with_reading(value="12.5")), ["readings.0.value", "valid number"], id="value-as-string"),
    pytest.param(_raw(_with_reading(value=True)), ["readings.0.value", "valid number"], id="value-as-boolean"),
    pytest.param(_raw(_with_reading(status="3")), ["readings.0.status", "valid integer"], id="status-as-string"),
    pytest.param(_raw(_with_reading(status=3.0)), ["readings.0.status", "valid integer"], id="status-as-float"),
    pytest.param(_raw(_with_reading(ts=1700000000)), ["readings.0.ts", "valid datetime"], id="ts-as-number"),
    pytest.param(_raw(_valid_batch_document() | {"seq": "7"}), ["seq", "valid integer"], id="seq-as-string"),
    pytest.param(_raw(_with_reading(value=1e308 * 10)), ["readings.0.value", "finite"], id="value-overflow"),
    pytest.param(
        _raw(_valid_batch_document()).replace(b'"seq": 7', b'"seq": NaN'),
        ["seq", "valid integer"],
        id="seq-NaN-literal",
    ),
    pytest.param(
        _raw(_valid_batch_document()).replace(b'"sent_at": "2025-01-01T12:00:05Z"', b'"sent_at": NaN'),
        ["sent_at"],
        id="sent_at-NaN-literal",
    ),
    pytest.param(_raw(_with_reading(status=float("nan"))), ["readings.0.status"], id="status-NaN"),
    pytest.param(_raw(_valid_batch_document() | {"seq": -1}), ["seq", "greater than or equal to 0"], id="negative-seq"),
    pytest.param(_raw(_valid_batch_document() | {"extra": 1}), ["extra", "Extra inputs"], id="extra-field"),
    pytest.param(_raw(_with_reading(extra=1)), ["readings.0.extra", "Extra inputs"], id="extra-reading-field"),
    pytest.param(_raw(_with_reading(unit="x" * 33)), ["readings.0.unit", "32"], id="unit-too-long"),
    pytest.param(_raw(_with_reading(quality="bad")), ["readings.0.quality"], id="unknown-quality"),
    pytest.param(_raw(_valid_batch_document() | {"readings": {}}), ["readings", "array"], id="readings-not-a-list"),
    pytest.param(
        _raw(
            _valid_batch_document()
            | {"readings": [_valid_batch_document()["readings"][0]] * (MAX_READINGS_PER_BATCH + 1)}
        ),
        ["readings", str(MAX_READINGS_PER_BATCH)],
        id="too-many-readings",
    ),
    # Bounds (issue 13): what the stores hold, decided where a message is decoded, never at the store.
    *(
        pytest.param(_raw(_valid_batch_document() | {"seq": bad}), ["seq", str(MAX_INT64)], id=f"seq={bad}")
        for bad in (2**63, 2**64, 10**30)
    ),
    *(
        pytest.param(_raw(_valid_batch_document() | {"sent_at": bad}), ["sent_at", TIME_RANGE], id=f"sent_at={bad}")
        for bad in OUT_OF_RANGE_TIMES
    ),
    *(
        pytest.param(_raw(_with_reading(ts=bad)), ["readings.0.ts", "than or equal to"], id=f"ts={bad}")
        for bad in OUT_OF_RANGE_TIMES
    ),
    *(
        pytest.param(_raw(_with_reading(value=bad)), ["readings.0.value", "1000000000000000"], id=f"value={bad!r}")
        for bad in (1.0000000000000002e15, -1.0000000000000002e15, 1e16, 1.79e308, -1.79e308, 10**20)
    ),
    *(
        pytest.param(_raw(_with_reading(unit=bad)), ["readings.0.unit", "control characters"], id=f"unit={bad!r}")
        for bad in CONTROL_TEXTS
    ),
    *(
        pytest.param(_raw(_valid_batch_document() | {field: bad}), [field, "pattern"], id=f"{field}={bad!r}")
        for field in ("site", "agent")
        for bad in BAD_IDENTIFIERS
    ),
    *(
        pytest.param(_raw(_with_reading(**{field: bad})), [f"readings.0.{field}", "pattern"], id=f"{field}={bad!r}")
        for field in ("instrument", "parameter")
        for bad in ("a/b", "a+b", "#", "a b")
    ),
]


@pytest.mark.parametrize(("payload", "expected"), BATCH_REJECTIONS)
def test_batch_rejections_name_the_problem(payload: bytes, expected: list[str]) -> None:
    with pytest.raises(ContractError) as caught:
        decode_batch(payload)
    message = str(caught.value)
    assert message.startswith("batch: ")
    for fragment in expected:
        assert fragment in message


STATUS_REJECTIONS: list[Any] = [
    pytest.param(b"not json", ["not JSON"], id="not-json"),
    pytest.param(b"[1]", ["JSON object"], id="array"),
    pytest.param(_raw(_without(_valid_status_document(), "v")), ["'v'"], id="missing-v"),
    pytest.param(_raw(_valid_status_document() | {"v": 2}), ["v=2"], id="v=2"),
    pytest.param(_raw(_valid_status_document() | {"v": True}), ["v=True"], id="v=true"),
    pytest.param(_raw(_valid_status_document() | {"v": "1"}), ["v='1'"], id="v-string"),
    *(
        pytest.param(_raw(_without(_valid_status_document(), key)), [key, "Field required"], id=f"missing-{key}")
        for key in ("site", "agent", "state")
    ),
    pytest.param(_raw(_valid_status_document() | {"state": "asleep"}), ["state"], id="unknown-state"),
    pytest.param(_raw(_valid_status_document() | {"at": "2025-01-01T00:00:00"}), ["at", "time zone"], id="naive-at"),
    pytest.param(
        _raw(_valid_status_document() | {"at": "0001-01-01T00:30:00+01:00"}), ["at", "outside the range"], id="at-range"
    ),
    pytest.param(_raw(_valid_status_document() | {"extra": 1}), ["extra"], id="extra-field"),
    *(
        pytest.param(_raw(_valid_status_document() | {field: bad}), [field, str(MAX_INT64)], id=f"{field}={bad}")
        for field in ("next_seq", "oldest_seq", "dropped")
        for bad in (2**63, 10**30)
    ),
    *(
        pytest.param(_raw(_valid_status_document() | {"at": bad}), ["at", TIME_RANGE], id=f"at={bad}")
        for bad in OUT_OF_RANGE_TIMES
    ),
    *(
        pytest.param(
            _raw(_valid_status_document() | {"version": bad}), ["version", "control characters"], id=f"v={bad!r}"
        )
        for bad in CONTROL_TEXTS
    ),
    pytest.param(_raw(_valid_status_document() | {"version": "1" * 65}), ["version", "64"], id="version-too-long"),
    *(
        pytest.param(_raw(_valid_status_document() | {field: bad}), [field, "pattern"], id=f"{field}={bad!r}")
        for field in ("site", "agent")
        for bad in BAD_IDENTIFIERS
    ),
]


@pytest.mark.parametrize(("payload", "expected"), STATUS_REJECTIONS)
def test_status_rejections_name_the_problem(payload: bytes, expected: list[str]) -> None:
    with pytest.raises(ContractError) as caught:
        decode_status(payload)
    message = str(caught.value)
    assert message.startswith("status: ")
    for fragment in expected:
        assert fragment in message


def test_many_problems_are_summarised() -> None:
    """At most five problems are listed, then a count of the rest, so a dead-letter line stays readable."""
    document = _valid_batch_document()
    document["readings"] = [{"instrument": "#"}] * 3
    with pytest.raises(ContractError, match=r"\(\+\d+ more\)"):
        decode_batch(_raw(document))


def test_contract_error_is_a_value_error() -> None:
    assert issubclass(ContractError, ValueError)


# --- fuzzing: nothing but ContractError ---------------------------------------------------------------------------


def _decode_or_contract_error(payload: bytes) -> None:
    for decode in (decode_batch, decode_status):
        with contextlib.suppress(ContractError):
            decode(payload)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_contract_error(payload: bytes) -> None:
    _decode_or_contract_error(payload)


@FUZZ
@given(json_values)
def test_arbitrary_json_raises_only_contract_error(document: object) -> None:
    _decode_or_contract_error(json.dumps(document).encode())


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(document, dict):
        return [(*prefix, key) for key in document] + [
            path for key, child in document.items() for path in _paths(child, (*prefix, key))
        ]
    if isinstance(document, list):
        return [path for index, child in enumerate(document) for path in _paths(child, (*prefix, index))]
    return []


def _replace(document: Any, path: tuple[Any, ...], value: object) -> Any:
    if not path:
        return value
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[path[0]] = _replace(document[path[0]], path[1:], value)
    return copy


_VALID_DOCUMENTS = [_valid_batch_document(), _valid_status_document()]
_HUGE_INTEGER = "<an integer literal over 4300 digits>"
odd_values = json_values | st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:00:00-12:00", _HUGE_INTEGER])


@FUZZ
@given(st.data(), st.sampled_from(_VALID_DOCUMENTS), odd_values)
def test_near_miss_documents_raise_only_contract_error(data: st.DataObject, valid: Any, value: object) -> None:
    """A valid message with one field replaced by anything (incl. NaN, huge ints, odd dates) still fails cleanly."""
    path = data.draw(st.sampled_from(_paths(valid)))
    text = json.dumps(_replace(valid, path, value)).replace(json.dumps(_HUGE_INTEGER), "9" * 5000)
    _decode_or_contract_error(text.encode())


# --- topics -------------------------------------------------------------------------------------------------------


@FUZZ
@given(identifiers, identifiers)
def test_topic_round_trip(site: str, agent: str) -> None:
    assert readings_topic(site, agent) == f"{TOPIC_ROOT}/{site}/{agent}/readings"
    assert parse_topic(readings_topic(site, agent)) == TopicParts(site, agent, TopicKind.READINGS)
    assert parse_topic(status_topic(site, agent)) == TopicParts(site, agent, TopicKind.STATUS)


@pytest.mark.parametrize("bad", BAD_IDENTIFIERS)
@pytest.mark.parametrize("topic", [readings_topic, status_topic])
def test_topic_rejects_unsafe_identifiers(topic: Any, bad: str) -> None:
    """MQTT wildcards (+ #), level separators (/), spaces and a trailing newline never reach a topic name."""
    with pytest.raises(ValueError, match="site id"):
        topic(bad, "agent")
    with pytest.raises(ValueError, match="agent id"):
        topic("site", bad)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "aua",
        "aua/v1",
        "aua/v1/s/a",
        "aua/v1/s/a/readings/extra",
        "aua/v1/s/a/other",
        "aua/v1/s/a/Readings",
        "aua/v2/s/a/readings",
        "other/v1/s/a/readings",
        "/aua/v1/s/a/readings",
        "aua/v1//a/readings",
        "aua/v1/+/a/readings",
        "aua/v1/s/#/status",
        "aua/v1/s a/a/readings",
        "aua/v1/s\n/a/readings",
        "aua/v1/s/a\n/status",
        "$share/g/aua/v1/s/a/readings",
    ],
)
def test_foreign_topics_parse_to_none(topic: str) -> None:
    assert parse_topic(topic) is None


@pytest.mark.parametrize(
    ("kind", "site", "expected"),
    [
        (TopicKind.READINGS, "+", "aua/v1/+/+/readings"),
        (TopicKind.STATUS, "+", "aua/v1/+/+/status"),
        (TopicKind.READINGS, "pavlodar-1", "aua/v1/pavlodar-1/+/readings"),
    ],
)
def test_subscription(kind: TopicKind, site: str, expected: str) -> None:
    assert subscription(kind, site) == expected


@pytest.mark.parametrize("bad", ["#", "a/b", "a+", "", "a b"])
def test_subscription_rejects_invalid_site(bad: str) -> None:
    with pytest.raises(ValueError, match="site id"):
        subscription(TopicKind.READINGS, bad)


# --- public surface and purity ------------------------------------------------------------------------------------


def test_all_matches_public_names() -> None:
    """Like httpx: everything public in the package namespace is in __all__, and nothing else."""
    public = {
        name
        for name, value in vars(aua_contract).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert len(aua_contract.__all__) == len(set(aua_contract.__all__))
    assert set(aua_contract.__all__) == public


CONTRACT_DIR = Path(aua_contract.__file__).parent
ALLOWED_THIRD_PARTY = {"pydantic", "aua_contract"}
IO_MODULES = {
    "asyncio", "http", "io", "logging", "os", "pathlib", "select", "selectors", "shutil", "socket", "sqlite3",
    "ssl", "subprocess", "sys", "tempfile", "threading", "urllib",
}  # fmt: skip
IO_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


@pytest.mark.parametrize("module", sorted(CONTRACT_DIR.glob("*.py")), ids=lambda path: path.name)
def test_contract_imports_only_stdlib_and_pydantic(module: Path) -> None:
    """Both sides import the contract and nothing else of each other (design.md): no edge_agent, no gateway, no I/O."""
    tree = ast.parse(module.read_text(), filename=str(module))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module.name}: relative import"
            imported.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in IO_CALLS, f"{module.name}:{node.lineno} calls {node.func.id}()"
    foreign = {name for name in imported if name not in sys.stdlib_module_names and name not in ALLOWED_THIRD_PARTY}
    assert not foreign, f"{module.name} imports {sorted(foreign)}"
    assert not imported & IO_MODULES, f"{module.name} imports I/O modules {sorted(imported & IO_MODULES)}"


T_RESEND = datetime(2026, 12, 1, tzinfo=UTC)


# -- resend requests (gap repair) -----------------------------------------------------------------------------


def test_resend_request_round_trip_and_topic() -> None:
    request = ResendRequest(site="pvl", agent="a1", first=3, last=9, requested_by="gw-1", at=T_RESEND)
    assert decode_resend(encode_resend(request)) == request
    assert resend_topic("pvl", "a1") == "aua/v1/pvl/a1/resend"
    assert parse_topic("aua/v1/pvl/a1/resend") == TopicParts("pvl", "a1", TopicKind.RESEND)


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [(5, 4, "must be >= first (5)"), (0, MAX_RESEND_SPAN, "span at most"), (-1, 3, "first")],
)
def test_resend_request_ranges_are_checked(first: int, last: int, message: str) -> None:
    payload = json.dumps({"v": 1, "site": "pvl", "agent": "a1", "first": first, "last": last, "requested_by": "g"})
    with pytest.raises(ContractError, match=re.escape(message)):
        decode_resend(payload.encode())


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [(2**63, 2**63, "first: Input should be less than or equal to 9223372036854775807"), (MAX_INT64, 2**63, "last")],
)
def test_resend_request_numbers_are_bounded(first: int, last: int, message: str) -> None:
    """A resend request naming batches past int64 would crash the agent's outbox (SQLite OverflowError)."""
    payload = json.dumps({"v": 1, "site": "pvl", "agent": "a1", "first": first, "last": last, "requested_by": "g"})
    with pytest.raises(ContractError, match=re.escape(message)):
        decode_resend(payload.encode())
    document = json.loads(payload) | {"first": 0, "last": 0, "at": "2262-01-01T00:00:00.000001Z"}
    with pytest.raises(
        ContractError, match=re.escape(f"at: Value error, timestamp 2262-01-01T00:00:00.000001+00:00 is {TIME_RANGE}")
    ):
        decode_resend(json.dumps(document).encode())


# -- bounds: the largest and smallest accepted values pass both decode paths ---------------------------------


def test_values_at_the_bounds_are_carried() -> None:
    """Exactly at each bound is valid, on the wire and through the model (the agent's and the gateway's paths)."""
    readings = [
        _reading(value=MAX_ABS_VALUE, ts=LATEST_TIME),
        _reading(parameter="nox", value=-MAX_ABS_VALUE, ts=EARLIEST_TIME),
        _reading(parameter="co", value=5e-324, unit="Nm³/h 🔥", status=MAX_INT64),
        # An offset time just inside the range, whose local date is outside it: the UTC instant decides.
        _reading(parameter="o2", ts=datetime(2262, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))),
    ]
    batch = Batch(site="s", agent="a", seq=MAX_INT64, sent_at=LATEST_TIME, readings=readings)
    assert decode_batch(encode_batch(batch)) == batch
    assert decode_batch(encode_batch(batch)).readings[3].ts == datetime(2261, 12, 31, 23, 30, tzinfo=UTC)
    status = AgentStatus(
        site="s",
        agent="a",
        state=AgentState.ONLINE,
        at=EARLIEST_TIME,
        version="1.2.3.dev45+g0123456789ab.d20261207 — ok",
        next_seq=MAX_INT64,
        oldest_seq=MAX_INT64,
        dropped=MAX_INT64,
    )
    assert decode_status(encode_status(status)) == status
    request = ResendRequest(site="s", agent="a", first=MAX_INT64, last=MAX_INT64, requested_by="g", at=LATEST_TIME)
    assert decode_resend(encode_resend(request)) == request


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"value": 1e16}, "value"),
        ({"value": -1.79e308}, "value"),
        ({"unit": "mg\n"}, "unit"),
        ({"ts": datetime(1677, 12, 31, tzinfo=UTC)}, "ts"),
        ({"ts": datetime(2262, 1, 2, tzinfo=UTC)}, "ts"),
    ],
)
def test_the_model_refuses_what_the_wire_refuses(changes: dict[str, Any], field: str) -> None:
    """The agent builds readings in Python (Sample.to_reading): the same bounds hold there."""
    with pytest.raises(ValidationError, match=field):
        _reading(**changes)


bound_values = (
    st.sampled_from(
        [2**63, MAX_INT64, 1.0000000000000002e15, MAX_ABS_VALUE, -1.79e308, "mg\n", "mg\x00", "\u2028", "x" * 33]
    )
    | st.sampled_from(
        ["2262-01-01T00:00:00Z", "2262-01-01T00:00:00.000001Z", "1678-01-01T00:00:00Z", "1677-12-31T23:59:59Z"]
    )
    | st.sampled_from(["2261-12-31T23:30:00-01:00", "2262-01-01T00:30:00+01:00", 1.0, True, None])
)


@FUZZ
@given(st.data(), odd_values | bound_values)
def test_the_fast_path_accepts_nothing_the_full_decode_refuses(data: st.DataObject, value: object) -> None:
    """decode_batch returns what pydantic's JSON fast path accepts; it must enforce every rule the full decode
    (JSON parse, schema version, the model) enforces, or a bound would hold on one path only."""
    valid = _valid_batch_document()
    path = data.draw(st.sampled_from(_paths(valid)))
    payload = json.dumps(_replace(valid, path, value)).replace(json.dumps(_HUGE_INTEGER), "9" * 5000).encode()
    try:
        fast = _WireBatch.model_validate_json(payload)
    except ValidationError:
        return
    assert _decode(Batch, payload, "batch").model_dump() == fast.model_dump()
