"""InfluxDB store over the HTTP v1 API only (/write, /query), which InfluxDB 1.x serves natively and 2.x/3.x
serve as a compatibility layer, so one small client covers all three without a vendor SDK.

Readings are write-once (base.Store) without a query per reading: per series the store keeps a high-water
mark, the latest time stored (learned with one query per agent on first sight, then kept up to date; a bounded
map, the least recently written agents forgotten first). A reading newer than its series' mark cannot exist
yet and is written straight away; only readings at or before it (resends, replays, reused sequence numbers) are
looked up, with one query per agent and hour of them per call. The marks assume this store object is the only
writer of its agents' readings; gateways sharing a subscription each learn them from the store, so a reading
another instance stored after that can be overwritten by a same-identity reading this one has not seen (rare:
both would have to carry one identity with different content at the same moment).

InfluxDB merges the fields of a point written twice, and a field cannot be null: approving a revision without
a value (or status) that the stored point has deletes the point before writing the revision's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, NoReturn, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from aua_contract import Batch, Quality, Reading
from gateway.errors import GatewayError
from gateway.mrv.rollup import Aggregate, Period
from gateway.stores import line_protocol
from gateway.stores import retention as retention_rules
from gateway.stores.base import (
    HEALTH_MEASUREMENT,
    HEALTH_TAG_KEYS,
    RECEIPT_MEASUREMENT,
    Approval,
    BatchReceipt,
    Content,
    HealthPoint,
    Revision,
    RevisionCount,
    RevisionError,
    RevisionState,
    StoredReading,
    StoreError,
    aggregate_sort_key,
    health_sort_key,
    not_pending,
    revision_id,
    revision_sort_key,
    sort_key,
)
from gateway.time_ns import from_ns, to_ns

log = logging.getLogger(__name__)

WRITE_BATCH_LINES = 5_000
"""Lines per /write request: far under InfluxDB's 25 MB body limit; ≈390k points/s measured at this size."""

QUERY_CHUNK_SIZE = 10_000
"""Rows per chunk of a chunked /query answer, so large results stream instead of hitting row limits."""

SERIES_MARKS = 100_000
"""Default bound of the high-water-mark map, in series (about 100 bytes each)."""

_FIELDS = ("value", "unit", "quality", "status")
_REVISION_FIELDS = (
    *_FIELDS,
    "state",
    "seq",
    "sent_at",
    "received",
    "decided_by",
    "decided_why",
    "decided_at",
    "superseded_by",
)
_ALL_TIME = "time >= -9223372036854775806 AND time <= 9223372036854775806"
"""InfluxDB's whole time range: without a time condition an aggregate stops at now()."""
_SUSPECT_SPAN_NS = 3_600_000_000_000
"""Readings at or before their mark are looked up in stretches of at most an hour: a query's answer stays
small however far apart the replayed times are."""
_SERIES_PER_QUERY = 100
_AGGREGATE_FIELDS = (
    "value",
    "n_valid",
    "n_expected",
    "n_maintenance",
    "valid",
    "reason",
    "unit",
    "substituted",
    "method",
    "n_flagged",
)
_RETRYABLE_4XX = frozenset({408, 429})
_MICROSECOND = timedelta(microseconds=1)


# -- pure helpers: InfluxQL text and answer parsing ------------------------------------------------------


T = TypeVar("T")
W = TypeVar("W")


def quote_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def redact_url(url: str) -> str:
    """The URL without user:password, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))


def select_statement(
    *,
    retention_policy: str | None = None,
    site: str | None = None,
    instrument: str | None = None,
    parameter: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> str:
    """The InfluxQL for `InfluxStore.query`: named columns, not `*`, so other fields someone adds stay out.

    No ::field/::tag suffixes: our tag and field names never clash, and InfluxDB 3's InfluxQL lacks them.
    """
    columns = [quote_identifier(name) for name in (*_FIELDS, *line_protocol.TAG_KEYS)]
    conditions = [
        f"{quote_identifier(tag)} = {quote_string(wanted)}"
        for tag, wanted in (("site", site), ("instrument", instrument), ("parameter", parameter))
        if wanted is not None
    ]
    if start is not None:
        conditions.append(f"time >= {to_ns(start)}")
    if end is not None:
        conditions.append(f"time < {to_ns(end)}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT {', '.join(columns)} FROM {_measurement(retention_policy)}{where}"


def select_aggregates_statement(
    *,
    period: Period,
    retention_policy: str | None = None,
    site: str | None = None,
    instrument: str | None = None,
    parameter: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> str:
    """The InfluxQL for `InfluxStore.query_aggregates` (measurement `rollup`)."""
    columns = [quote_identifier(name) for name in (*_AGGREGATE_FIELDS, *line_protocol.AGGREGATE_TAG_KEYS)]
    filters = {"period": Period(period).value, "site": site, "instrument": instrument, "parameter": parameter}
    conditions = [
        f"{quote_identifier(tag)} = {quote_string(wanted)}" for tag, wanted in filters.items() if wanted is not None
    ]
    if start is not None:
        conditions.append(f"time >= {to_ns(start)}")
    if end is not None:
        conditions.append(f"time < {to_ns(end)}")
    measurement = quote_identifier(line_protocol.AGGREGATE_MEASUREMENT)
    source = f"{quote_identifier(retention_policy)}.{measurement}" if retention_policy else measurement
    return f"SELECT {', '.join(columns)} FROM {source} WHERE {' AND '.join(conditions)}"


def iter_rows(documents: Iterator[dict[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Every row of every series of every statement result, as column -> value."""
    for series in iter_series(documents):
        columns = series["columns"]
        for values in series.get("values", []):
            yield dict(zip(columns, values, strict=True))


def parse_policies(documents: Iterator[dict[str, Any]]) -> dict[str, timedelta | None]:
    """SHOW RETENTION POLICIES → name → duration (None: infinite)."""
    policies: dict[str, timedelta | None] = {}
    for row in iter_rows(documents):
        policies[str(row["name"])] = retention_rules.parse_duration(str(row["duration"]))
    return policies


def count_statement(*, retention_policy: str | None = None) -> str:
    """count() of a string field works in InfluxDB 1.6; `quality` is on every point, so it counts points."""
    return f'SELECT count("quality") FROM {_measurement(retention_policy)} GROUP BY "site", "instrument"'


def _measurement(retention_policy: str | None) -> str:
    measurement = quote_identifier(line_protocol.MEASUREMENT)
    return f"{quote_identifier(retention_policy)}.{measurement}" if retention_policy else measurement


def decode_documents(text: str) -> Iterator[dict[str, Any]]:
    """The JSON documents of a /query answer: one, or one per line when chunked."""
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        document, position = decoder.raw_decode(text, position)
        if not isinstance(document, dict):
            raise TypeError(f"expected a JSON object, got {type(document).__name__}")
        yield document


class StatementError(GatewayError, ValueError):
    """InfluxDB answered 200 but the statement failed (e.g. "database not found"); holds InfluxDB's text."""


def iter_series(documents: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every series of every statement result."""
    for document in documents:
        if "error" in document:
            raise StatementError(document["error"])
        for result in document.get("results", []):
            if "error" in result:
                raise StatementError(result["error"])
            yield from result.get("series", [])


def parse_readings(documents: Iterator[dict[str, Any]]) -> list[StoredReading]:
    """Rows of `select_statement` (queried with epoch=ns) -> StoredReadings in the store's order."""
    readings = [_stored_reading(row) for row in iter_rows(documents)]
    readings.sort(key=sort_key)
    return readings


def _stored_reading(row: Mapping[str, Any]) -> StoredReading:
    """One row of a reading or revision query (epoch=ns) as the reading it holds."""
    value, status = row.get("value"), row.get("status")
    return StoredReading(
        site=row["site"],
        agent=row["agent"],
        instrument=row["instrument"],
        parameter=row["parameter"],
        ts=from_ns(int(row["time"])),
        value=None if value is None else float(value),
        unit=row.get("unit") or "",
        quality=Quality(row["quality"]),
        status=None if status is None else int(status),
    )


def parse_aggregates(documents: Iterator[dict[str, Any]]) -> list[Aggregate]:
    """Rows of `select_aggregates_statement` (queried with epoch=ns) -> Aggregates in the store's order."""
    aggregates = []
    for row in iter_rows(documents):
        n_valid = int(row["n_valid"])
        value = row.get("value")
        aggregates.append(
            Aggregate(
                site=row["site"],
                instrument=row["instrument"],
                parameter=row["parameter"],
                period=Period(row["period"]),
                start=from_ns(int(row["time"])),
                value=float(value) if value is not None and n_valid else None,
                n_valid=n_valid,
                n_expected=int(row["n_expected"]),
                valid=bool(row["valid"]),
                reason=row.get("reason") or "",
                n_maintenance=int(row["n_maintenance"]),
                unit=row.get("unit") or "",
                substituted=bool(row["substituted"]),
                method=row.get("method") or "",
                n_flagged=int(row.get("n_flagged") or 0),  # absent in points written before it existed
            )
        )
    aggregates.sort(key=aggregate_sort_key)
    return aggregates


def _counts_by(tag: str) -> Callable[[Iterator[dict[str, Any]]], dict[tuple[str, str], int]]:
    """A parser of count() rows grouped by "site" and `tag` -> (site, tag value) -> total."""

    def parse(documents: Iterator[dict[str, Any]]) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for series in iter_series(documents):
            tags = series.get("tags", {})
            index = series["columns"].index("count")
            total = sum(int(values[index] or 0) for values in series.get("values", []))
            counts[(tags.get("site", ""), tags.get(tag, ""))] = total
        return counts

    return parse


parse_counts = _counts_by("instrument")
parse_counts_by_agent = _counts_by("agent")


def parse_marks(documents: Iterator[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Rows of a last() query grouped by instrument and parameter (epoch=ns) -> (instrument, parameter) -> ns."""
    marks = {}
    for series in iter_series(documents):
        tags = series.get("tags", {})
        for values in series.get("values", []):
            marks[(tags["instrument"], tags["parameter"])] = int(values[0])
    return marks


def error_text(response: httpx.Response) -> str:
    """InfluxDB's own words: the JSON `error`, else the X-Influxdb-Error header, else the body."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict):
        for key in ("error", "message"):  # 1.x says "error", 2.x/3.x "message"
            if isinstance(document.get(key), str):
                return str(document[key])
    header: str = response.headers.get("X-Influxdb-Error", "")
    if header:
        return header
    return response.text.strip()[:500] or response.reason_phrase


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in _RETRYABLE_4XX


def parse_receipts(documents: Iterator[dict[str, Any]]) -> dict[int, int]:
    """Rows of a batch receipt SELECT (epoch=ns: the time is the seq) -> seq -> readings."""
    return {int(time): int(readings) for series in iter_series(documents) for time, readings in series["values"]}


def parse_count(documents: Iterator[dict[str, Any]]) -> int:
    """The one row of a `SELECT count(...)` (none when nothing matched) -> the count."""
    return sum(int(row[1]) for series in iter_series(documents) for row in series["values"])


def select_health_statement(
    *,
    retention_policy: str | None = None,
    component: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> str:
    """The InfluxQL for `InfluxStore.query_health`: every field (`*`), since the field set is open."""
    conditions = [f"{quote_identifier('component')} = {quote_string(component)}"] if component else []
    if start is not None:
        conditions.append(f"time >= {to_ns(start)}")
    if end is not None:
        conditions.append(f"time < {to_ns(end)}")
    measurement = quote_identifier(HEALTH_MEASUREMENT)
    source = f"{quote_identifier(retention_policy)}.{measurement}" if retention_policy else measurement
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT * FROM {source}{where}"


def parse_health(documents: Iterator[dict[str, Any]]) -> list[HealthPoint]:
    """Rows of `select_health_statement` (queried with epoch=ns) -> HealthPoints; null columns are absent fields."""
    points = []
    for row in iter_rows(documents):
        fields = {
            name: int(value)
            for name, value in row.items()
            if name != "time" and name not in HEALTH_TAG_KEYS and value is not None
        }
        points.append(
            HealthPoint(
                component=row["component"],
                id=row["id"],
                site=row["site"],
                agent=row["agent"],
                ts=from_ns(int(row["time"])),
                fields=fields,
            )
        )
    points.sort(key=health_sort_key)
    return points


def _source(measurement: str, retention_policy: str | None) -> str:
    quoted = quote_identifier(measurement)
    return f"{quote_identifier(retention_policy)}.{quoted}" if retention_policy else quoted


def _tag_conditions(tags: Mapping[str, str | None]) -> list[str]:
    return [f"{quote_identifier(tag)} = {quote_string(wanted)}" for tag, wanted in tags.items() if wanted is not None]


def select_revisions_statement(
    *,
    retention_policy: str | None = None,
    tags: Mapping[str, str | None],
    state: RevisionState | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> str:
    """The InfluxQL for `InfluxStore.query_revisions` (measurement `reading_revision`)."""
    columns = [quote_identifier(name) for name in (*_REVISION_FIELDS, *line_protocol.REVISION_TAG_KEYS)]
    conditions = _tag_conditions(tags)
    if state is not None:
        conditions.append(f'"state" = {quote_string(RevisionState(state).value)}')
    conditions.append(f"time >= {to_ns(start)}" if start is not None else "time >= -9223372036854775806")
    conditions.append(f"time < {to_ns(end)}" if end is not None else "time <= 9223372036854775806")
    source = _source(line_protocol.REVISION_MEASUREMENT, retention_policy)
    return f"SELECT {', '.join(columns)} FROM {source} WHERE {' AND '.join(conditions)}"


def parse_revisions(documents: Iterator[dict[str, Any]]) -> list[Revision]:
    """Rows of `select_revisions_statement` (epoch=ns) -> Revisions by `revision_sort_key`."""
    revisions = []
    for row in iter_rows(documents):

        def moment(name: str, row: Mapping[str, Any] = row) -> datetime | None:
            return None if row.get(name) is None else from_ns(int(row[name]))

        seq = row.get("seq")
        revisions.append(
            Revision(
                id=row["id"],
                reading=_stored_reading(row),
                state=RevisionState(row["state"]),
                received_at=moment("received"),
                batch_seq=None if seq is None else int(seq),
                batch_sent_at=moment("sent_at"),
                decided_by=row.get("decided_by") or "",
                decided_why=row.get("decided_why") or "",
                decided_at=moment("decided_at"),
                superseded_by=row.get("superseded_by") or "",
            )
        )
    revisions.sort(key=revision_sort_key)
    return revisions


Identity = tuple[str, str, str, str, int]
"""site, agent, instrument, parameter, time in ns"""


def parse_contents(documents: Iterator[dict[str, Any]]) -> list[tuple[Identity, Content]]:
    """Rows of `_contents_statement` (epoch=ns) -> (identity, content) pairs."""
    found = []
    for row in iter_rows(documents):
        value, status = row.get("value"), row.get("status")
        identity = (row["site"], row["agent"], row["instrument"], row["parameter"], int(row["time"]))
        content = (
            None if value is None else float(value),
            row.get("unit") or "",
            row["quality"],
            None if status is None else int(status),
        )
        found.append((identity, content))
    return found


def _contents_statement(
    source: str, agent_key: tuple[str, str], series: Sequence[tuple[str, str]], lo: int, hi: int
) -> str:
    """Content and identity of the points of some series of one agent with time in [lo, hi]."""
    columns = [quote_identifier(name) for name in (*_FIELDS, *line_protocol.TAG_KEYS)]
    which = " OR ".join(
        f'("instrument" = {quote_string(instrument)} AND "parameter" = {quote_string(parameter)})'
        for instrument, parameter in series
    )
    site, agent = agent_key
    return (
        f"SELECT {', '.join(columns)} FROM {source} WHERE "
        f'"site" = {quote_string(site)} AND "agent" = {quote_string(agent)} AND ({which}) '
        f"AND time >= {lo} AND time <= {hi}"
    )


def suspect_stretches(times: Sequence[int], span: int = _SUSPECT_SPAN_NS) -> list[tuple[int, int]]:
    """Sorted times -> [lo, hi] stretches, each at most `span` long, covering them all."""
    stretches: list[tuple[int, int]] = []
    for ns in times:
        if stretches and ns - stretches[-1][0] <= span:
            stretches[-1] = (stretches[-1][0], ns)
        else:
            stretches.append((ns, ns))
    return stretches


def _content(r: Reading | StoredReading) -> Content:
    return (r.value, r.unit, r.quality.value, r.status)


@dataclass(frozen=True, slots=True)
class _Group:
    """Readings of one agent to write together, and the batch they came in (seq None: not from a batch)."""

    site: str
    agent: str
    seq: int | None
    sent_ns: int | None
    readings: Sequence[Reading] | Sequence[StoredReading]

    def describe(self) -> str:
        return f"batch {self.seq} of {self.site}/{self.agent}" if self.seq is not None else f"{self.site}/{self.agent}"


# -- the store: I/O ----------------------------------------------------------------------------------------


class InfluxStore:
    """Readings in one InfluxDB database, measurement `reading` (schema in line_protocol)."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        retention_policy: str | None = None,
        timeout: float = 10,
        series_marks: int = SERIES_MARKS,
        retention: retention_rules.RetentionSettings | None = None,
    ) -> None:
        if not database:
            raise ValueError(f"InfluxDB {redact_url(url)}: database name must not be empty")
        if token is not None and username is not None:
            raise ValueError(f"InfluxDB {redact_url(url)}: give a token or a username/password, not both")
        if series_marks < 0:
            raise ValueError(f"InfluxDB {redact_url(url)}: series_marks must be 0 or more, got {series_marks}")
        parts = urlsplit(url)
        if parts.username is not None and username is None:
            username = unquote(parts.username)
            password = None if parts.password is None else unquote(parts.password)
        self.url = redact_url(url).rstrip("/")
        self.database = database
        self.retention_policy = retention_policy
        self.timeout = timeout
        self._username = username
        self._password = password
        self._token = token
        self._client: httpx.AsyncClient | None = None
        self.series_marks = series_marks
        self.marks_forgotten = 0
        """Agents whose marks were dropped to stay within `series_marks` (learned again when they write)."""
        self._marks: OrderedDict[tuple[str, str], dict[tuple[str, str], int]] = OrderedDict()
        self._marked_series = 0
        self._write_lock = asyncio.Lock()
        self._revisions_recorded = 0
        self._database_ready = False
        self.retention = retention
        self.raw_policy = retention_policy
        """where readings are written and read: RAW_POLICY once it exists (gateway.stores.retention)"""
        self.rollup_policy = retention_policy
        self.raw_retention: timedelta | None = None
        """the raw policy's duration; None: raw readings are kept forever"""

    @property
    def kind(self) -> str:
        return "influx"

    def __repr__(self) -> str:
        return f"InfluxStore({self.url!r}, {self.database!r})"

    async def __aenter__(self) -> InfluxStore:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self, *, tolerate_down: bool = False) -> None:
        """Connect and create the database; a 4xx there (no admin right, InfluxDB 2/3 DBRP) is only logged.

        With `tolerate_down` (the gateway's `run`), InfluxDB down or unreachable is not an error: the gateway
        starts and spools (docs/gateway.md), and the database is created before the first write that reaches it."""
        if self._client is not None:
            return
        headers = {"Authorization": f"Token {self._token}"} if self._token else {}
        auth = httpx.BasicAuth(self._username, self._password or "") if self._username is not None else None
        self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout, headers=headers, auth=auth)
        try:
            await self.ensure_database()
        except StoreError as error:
            if not error.retryable or not tolerate_down:
                await self.close()
                raise
            log.warning("InfluxDB %s does not answer at start (%s): spooling until it does", self.url, error)
        except BaseException:
            await self.close()
            raise

    async def ensure_database(self) -> None:
        """Create the database unless done already; a StoreError (retryable) while InfluxDB does not answer."""
        if not self._database_ready:
            await self._create_database()
            self._database_ready = True  # before the policies: their SHOW goes through _query, which calls this
            try:
                await self._use_retention_policies()
            except BaseException:
                self._database_ready = False
                raise

    async def _use_retention_policies(self) -> None:
        """Raw readings and rollups in their own retention policies (gateway.stores.retention): created or
        altered here when raw retention is configured, and used whenever both exist, so every program that
        opens this database (reports, recomputation) reads where the gateway writes."""
        show = f"SHOW RETENTION POLICIES ON {quote_identifier(self.database)}"
        wanted = self.retention is not None and self.retention.raw_days is not None
        try:
            existing = await self._query(show, parse_policies, "show retention policies")
        except StoreError as error:
            if error.retryable:
                raise
            if self.retention is None or self.retention.raw_days is None:
                log.info("InfluxDB %s: cannot list retention policies (%s); using the default one", self.url, error)
                return
            # InfluxDB 2.x/3.x: buckets mapped to these names by DBRP mappings (docs/deployment.md)
            log.warning(
                "InfluxDB %s: cannot list retention policies (%s); writing to %s and %s, which must exist "
                "(InfluxDB 2.x/3.x: DBRP mappings, docs/deployment.md)",
                self.url,
                error,
                retention_rules.RAW_POLICY,
                retention_rules.ROLLUP_POLICY,
            )
            existing = {
                retention_rules.RAW_POLICY: timedelta(days=self.retention.raw_days),
                retention_rules.ROLLUP_POLICY: None,
            }
            wanted = False
        if wanted and self.retention is not None:
            try:
                for statement in retention_rules.policy_statements(self.database, existing, self.retention):
                    response = await self._send("create retention policy", "POST", "/query", data={"q": statement})
                    if response.status_code != 200:
                        self._fail("create retention policy", response)
                    list(iter_series(decode_documents(response.text)))
                    log.info("InfluxDB %s: %s", self.url, statement)
            except (StoreError, StatementError) as error:
                if isinstance(error, StoreError) and error.retryable:
                    raise
                log.warning(
                    "InfluxDB %s: cannot create or alter retention policies %s/%s (%s: an admin user can, or create "
                    "them yourself); raw readings and rollups go where the existing policies say",
                    self.url,
                    retention_rules.RAW_POLICY,
                    retention_rules.ROLLUP_POLICY,
                    error,
                )
            existing = await self._query(show, parse_policies, "show retention policies")
        if retention_rules.RAW_POLICY in existing and retention_rules.ROLLUP_POLICY in existing:
            self.raw_policy, self.rollup_policy = retention_rules.RAW_POLICY, retention_rules.ROLLUP_POLICY
            self.raw_retention = existing[retention_rules.RAW_POLICY]

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def write(self, readings: Sequence[StoredReading]) -> None:
        by_agent: dict[tuple[str, str], list[StoredReading]] = defaultdict(list)
        for reading in readings:
            by_agent[(reading.site, reading.agent)].append(reading)
        await self._write_once([_Group(site, agent, None, None, rows) for (site, agent), rows in by_agent.items()])

    async def write_batches(self, batches: Sequence[Batch]) -> None:
        await self._write_once(
            [_Group(b.site, b.agent, b.seq, to_ns(b.sent_at), b.readings) for b in batches if b.readings]
        )

    @property
    def revisions_recorded(self) -> int:
        return self._revisions_recorded

    async def _write_once(self, groups: list[_Group]) -> None:
        """Readings newer than their series' mark are written; the others are looked up and written only if
        absent, skipped if the same, kept as a revision if different. Every line is formatted (checked) before
        anything is written; the marks move only once everything is written."""
        if not groups:
            return
        async with self._write_lock:
            await self._learn_marks({(group.site, group.agent) for group in groups})
            lines, marks, suspects = self._newer_than_marks(groups)
            recorded = 0
            if suspects:
                more, recorded = await self._settle(groups, suspects)
                lines += more
            if lines:
                await self._write_lines(lines, self.raw_policy)
            self._keep_marks(marks)
            self._revisions_recorded += recorded

    def _newer_than_marks(
        self, groups: list[_Group]
    ) -> tuple[list[str], dict[tuple[str, str], dict[tuple[str, str], int]], list[tuple[int, Any, int]]]:
        """The fast path: lines of the readings newer than their series' mark, the marks they move to, and
        the other readings (suspects) as (group index, reading, ns)."""
        lines: list[str] = []
        marks: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
        suspects: list[tuple[int, Any, int]] = []
        for index, group in enumerate(groups):
            key = (group.site, group.agent)
            series_marks = marks.get(key)
            if series_marks is None:
                series_marks = marks[key] = dict(self._marks.get(key, {}))
            try:
                others = line_protocol.format_newer_lines(group.site, group.agent, group.readings, series_marks, lines)
            except ValueError as error:
                raise self._error(f"cannot write {group.describe()}: {error}", retryable=False) from error
            suspects += [(index, r, ns) for r, ns in others]
        return lines, marks, suspects

    async def _settle(self, groups: list[_Group], suspects: list[tuple[int, Any, int]]) -> tuple[list[str], int]:
        """Lines for readings at or before their mark: absent ones as readings, different ones as revisions
        (once per identity and content). Compared with the store and with this call's earlier readings."""
        received = from_ns(time.time_ns())
        wanted: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
        suspect_ids = set()
        for index, r, _ in suspects:
            wanted[(groups[index].site, groups[index].agent)].add((r.instrument, r.parameter))
            suspect_ids.add(id(r))
        current: dict[Identity, Content] = {}
        for group in groups:  # this call's new readings of those series come first
            series = wanted.get((group.site, group.agent))
            if series:
                for r in group.readings:
                    if id(r) not in suspect_ids and (r.instrument, r.parameter) in series:
                        identity = (group.site, group.agent, r.instrument, r.parameter, to_ns(r.ts))
                        current.setdefault(identity, _content(r))
        stored, kept = await self._stored_contents(groups, suspects)
        for identity, content in stored.items():
            current.setdefault(identity, content)
        lines: list[str] = []
        recorded = 0
        for index, r, ns in suspects:
            group = groups[index]
            identity = (group.site, group.agent, r.instrument, r.parameter, ns)
            content = _content(r)
            was = current.get(identity)
            try:
                if was is None:
                    current[identity] = content
                    lines.append(line_protocol.format_reading_line(group.site, group.agent, r, ns))
                    continue
                if was == content or content in kept[identity]:
                    continue
                kept[identity].add(content)
                revision = Revision(
                    id=revision_id(identity, content),
                    reading=StoredReading(
                        site=group.site,
                        agent=group.agent,
                        instrument=r.instrument,
                        parameter=r.parameter,
                        ts=r.ts,
                        value=r.value,
                        unit=r.unit,
                        quality=r.quality,
                        status=r.status,
                    ),
                    state=RevisionState.PENDING,
                    received_at=received,
                    batch_seq=group.seq,
                    batch_sent_at=None if group.sent_ns is None else from_ns(group.sent_ns),
                )
                lines.append(line_protocol.format_revision_line(revision))
            except ValueError as error:
                raise self._error(f"cannot write {group.describe()}: {error}", retryable=False) from error
            recorded += 1
        return lines, recorded

    async def _stored_contents(
        self, groups: list[_Group], suspects: list[tuple[int, Any, int]]
    ) -> tuple[dict[Identity, Content], defaultdict[Identity, set[Content]]]:
        """What the store holds at the suspects' identities: the readings, and the revisions' contents."""
        times: dict[tuple[str, str], list[tuple[int, tuple[str, str]]]] = defaultdict(list)
        for index, r, ns in suspects:
            times[(groups[index].site, groups[index].agent)].append((ns, (r.instrument, r.parameter)))
        statements: list[tuple[str, str]] = []
        for (site, agent), items in times.items():
            items.sort()
            for lo, hi in suspect_stretches([ns for ns, _ in items]):
                series = sorted({s for ns, s in items if lo <= ns <= hi})
                for first in range(0, len(series), _SERIES_PER_QUERY):
                    part = series[first : first + _SERIES_PER_QUERY]
                    for measurement in (line_protocol.MEASUREMENT, line_protocol.REVISION_MEASUREMENT):
                        source = _source(measurement, self.raw_policy)
                        statement = _contents_statement(source, (site, agent), part, lo, hi)
                        statements.append((measurement, statement))
        answers = await asyncio.gather(
            *(self._query(statement, parse_contents, "stored readings query") for _, statement in statements)
        )
        stored: dict[Identity, Content] = {}
        kept: defaultdict[Identity, set[Content]] = defaultdict(set)
        for (measurement, _), found in zip(statements, answers, strict=True):
            for identity, content in found:
                if measurement == line_protocol.MEASUREMENT:
                    stored[identity] = content
                else:
                    kept[identity].add(content)
        return stored, kept

    async def _learn_marks(self, agents: set[tuple[str, str]]) -> None:
        """The marks of agents not in the map, from the store: the time of each series' last point."""
        unknown = sorted(agents - self._marks.keys())
        learned = await asyncio.gather(*(self._stored_marks(site, agent) for site, agent in unknown))
        for key, marks in zip(unknown, learned, strict=True):
            self._marks[key] = marks
            self._marked_series += len(marks)

    async def _stored_marks(self, site: str, agent: str) -> dict[tuple[str, str], int]:
        statement = (
            f'SELECT last("quality") FROM {_measurement(self.raw_policy)} WHERE "site" = {quote_string(site)} '
            f'AND "agent" = {quote_string(agent)} AND {_ALL_TIME} GROUP BY "instrument", "parameter"'
        )
        return await self._query(statement, parse_marks, "high-water mark query")

    def _keep_marks(self, marks: dict[tuple[str, str], dict[tuple[str, str], int]]) -> None:
        """Everything was written: the marks move, those agents become the most recently used, and the least
        recently used are forgotten beyond `series_marks`."""
        for key, series_marks in marks.items():
            old = self._marks.pop(key, None)
            self._marked_series += len(series_marks) - (len(old) if old is not None else 0)
            self._marks[key] = series_marks
        while self._marked_series > self.series_marks and self._marks:
            _, forgotten = self._marks.popitem(last=False)
            self._marked_series -= len(forgotten)
            self.marks_forgotten += 1

    async def query_revisions(
        self,
        *,
        site: str | None = None,
        agent: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        state: RevisionState | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Revision]:
        tags = {"site": site, "agent": agent, "instrument": instrument, "parameter": parameter}

        def statement(start: datetime | None, end: datetime | None, suffix: str = "") -> str:
            return (
                select_revisions_statement(
                    retention_policy=self.raw_policy, tags=tags, state=state, start=start, end=end
                )
                + suffix
            )

        if limit is None and not offset:
            return await self._query(statement(start, end), parse_revisions, "revision query")
        offset = max(0, offset)
        wanted = offset + max(0, limit if limit is not None else 0)
        if limit is None:
            found = await self._query(statement(start, end), parse_revisions, "revision query")
            return found[offset:]
        if wanted == 0:
            return []
        # InfluxQL orders by time only: take the first `wanted` by time, then every revision at the last of
        # those times (ties are ordered by the other keys), so the page is the one revision_sort_key gives.
        head = await self._query(statement(start, end, f" LIMIT {wanted}"), parse_revisions, "revision query")
        if len(head) >= wanted:
            last = sorted(r.reading.ts for r in head)[wanted - 1]
            ties = await self._query(
                statement(last, last + timedelta(microseconds=1)), parse_revisions, "revision query"
            )
            head = [r for r in head if r.reading.ts < last] + ties
            head.sort(key=revision_sort_key)
        return head[offset:wanted]

    async def revision_counts(
        self, *, site: str | None = None, start: datetime | None = None, end: datetime | None = None
    ) -> dict[tuple[str, str], RevisionCount]:
        counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for state in RevisionState:
            conditions = [*_tag_conditions({"site": site}), f'"state" = {quote_string(state.value)}']
            conditions.append(f"time >= {to_ns(start)}" if start is not None else "time >= -9223372036854775806")
            conditions.append(f"time < {to_ns(end)}" if end is not None else "time <= 9223372036854775806")
            statement = (
                f'SELECT count("quality") FROM {_source(line_protocol.REVISION_MEASUREMENT, self.raw_policy)} '
                f'WHERE {" AND ".join(conditions)} GROUP BY "site", "agent"'
            )
            for (site_, agent), count in (
                await self._query(statement, parse_counts_by_agent, "revision count")
            ).items():
                counts[(site_, agent)][state.value] = count
        return {key: RevisionCount(**by_state) for key, by_state in counts.items()}

    async def approve_revision(self, revision_id: str, *, by: str, why: str, at: datetime) -> Approval:
        """The old value is recorded first, then the point rewritten, then the revision marked approved: an
        approval cut short leaves the revision pending and can be run again (every step repeats harmlessly)."""
        async with self._write_lock:
            statement = select_revisions_statement(retention_policy=self.raw_policy, tags={"id": revision_id})
            found = await self._query(statement, parse_revisions, "revision query")
            if not found:
                raise RevisionError(f"no revision {revision_id!r} in {self!r}")
            revision = found[0]
            if revision.state is not RevisionState.PENDING:
                raise RevisionError(not_pending(revision))
            r = revision.reading
            stored = [
                s
                for s in await self.query(
                    site=r.site, instrument=r.instrument, parameter=r.parameter, start=r.ts, end=r.ts + _MICROSECOND
                )
                if s.agent == r.agent and s.ts == r.ts
            ]
            replaced = stored[0] if stored else None
            if replaced is not None:
                await self._write_lines(
                    [await self._superseded_line(replaced, revision, by=by, why=why, at=at)], self.raw_policy
                )
                if (r.value is None and replaced.value is not None) or (
                    r.status is None and replaced.status is not None
                ):
                    await self._delete_point(r)
            approved = dataclasses.replace(
                revision, state=RevisionState.APPROVED, decided_by=by, decided_why=why, decided_at=at
            )
            await self._write_lines([line_protocol.format_line(r)], self.raw_policy)
            await self._write_lines([line_protocol.format_revision_state_line(approved)], self.raw_policy)
            return Approval(approved, replaced)

    async def _superseded_line(
        self, replaced: StoredReading, by_revision: Revision, *, by: str, why: str, at: datetime
    ) -> str:
        """The stored value as a superseded revision: a new point, or a state change of the revision it was."""
        ns = to_ns(replaced.ts)
        identity = (replaced.site, replaced.agent, replaced.instrument, replaced.parameter, ns)
        number = revision_id(identity, replaced.content)
        statement = select_revisions_statement(retention_policy=self.raw_policy, tags={"id": number})
        earlier = await self._query(statement, parse_revisions, "revision query")
        if earlier:  # a value approved before: keep who approved it then, say what replaced it
            was = earlier[0]
            decided = {} if was.decided_at is not None else {"decided_by": by, "decided_why": why, "decided_at": at}
            changed = dataclasses.replace(
                was,
                state=RevisionState.SUPERSEDED,
                superseded_by=by_revision.id,
                **decided,  # type: ignore[arg-type]
            )
            return line_protocol.format_revision_state_line(changed)
        original = Revision(
            id=number,
            reading=replaced,
            state=RevisionState.SUPERSEDED,
            decided_by=by,
            decided_why=why,
            decided_at=at,
            superseded_by=by_revision.id,
        )
        return line_protocol.format_revision_line(original)

    async def _delete_point(self, reading: StoredReading) -> None:
        ns = to_ns(reading.ts)
        conditions = _tag_conditions(
            {
                "site": reading.site,
                "agent": reading.agent,
                "instrument": reading.instrument,
                "parameter": reading.parameter,
            }
        )
        statement = (
            f"DELETE FROM {quote_identifier(line_protocol.MEASUREMENT)} WHERE {' AND '.join(conditions)} "
            f"AND time >= {ns} AND time <= {ns}"
        )
        response = await self._send("delete", "POST", "/query", params={"db": self.database}, data={"q": statement})
        if response.status_code != 200:
            self._fail("delete", response)
        try:
            list(iter_series(decode_documents(response.text)))
        except StatementError as error:
            raise self._error(f"delete failed: {error}", retryable=False) from error

    async def write_aggregates(self, aggregates: Sequence[Aggregate]) -> None:
        if not aggregates:
            return
        await self._write_formatted(
            aggregates, line_protocol.format_aggregate_line, lambda a: f"rollup {a.key}", self.rollup_policy
        )

    async def write_receipts(self, receipts: Sequence[BatchReceipt]) -> None:
        if not receipts:
            return
        await self._write_formatted(receipts, line_protocol.format_receipt_line, lambda r: f"batch receipt {r}")

    async def received_batches(self, site: str, agent: str, first: int, last: int) -> dict[int, int]:
        measurement = quote_identifier(RECEIPT_MEASUREMENT)
        source = f"{quote_identifier(self.retention_policy)}.{measurement}" if self.retention_policy else measurement
        statement = (
            f"SELECT {quote_identifier('readings')} FROM {source} WHERE {quote_identifier('site')} = "
            f"{quote_string(site)} AND {quote_identifier('agent')} = {quote_string(agent)} "
            f"AND time >= {first} AND time <= {last}"
        )
        return await self._query(statement, parse_receipts, "batch receipt query")

    async def prune_receipts(self, site: str, agent: str, below: int) -> int:
        measurement = quote_identifier(RECEIPT_MEASUREMENT)
        source = f"{quote_identifier(self.retention_policy)}.{measurement}" if self.retention_policy else measurement
        where = f"{' AND '.join(_tag_conditions({'site': site, 'agent': agent}))} AND time < {below}"
        count = await self._query(
            f"SELECT count({quote_identifier('readings')}) FROM {source} WHERE {where}", parse_count, "receipt count"
        )
        if count == 0:
            return 0
        response = await self._send(
            "delete",
            "POST",
            "/query",
            params={"db": self.database},
            data={"q": f"DELETE FROM {measurement} WHERE {where}"},
        )
        if response.status_code != 200:
            self._fail("delete", response)
        try:
            list(iter_series(decode_documents(response.text)))
        except StatementError as error:
            raise self._error(f"receipt delete failed: {error}", retryable=False) from error
        return count

    async def write_health(self, points: Sequence[HealthPoint]) -> None:
        if not points:
            return
        await self._write_formatted(points, line_protocol.format_health_line, lambda p: f"health {p.identity}")

    async def query_health(
        self, *, component: str | None = None, start: datetime | None = None, end: datetime | None = None
    ) -> list[HealthPoint]:
        statement = select_health_statement(
            retention_policy=self.retention_policy, component=component, start=start, end=end
        )
        return await self._query(statement, parse_health, "health query")

    async def query_aggregates(
        self,
        *,
        period: Period,
        site: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Aggregate]:
        statement = select_aggregates_statement(
            period=period,
            retention_policy=self.rollup_policy,
            site=site,
            instrument=instrument,
            parameter=parameter,
            start=start,
            end=end,
        )
        return await self._query(statement, parse_aggregates, "rollup query")

    async def _write_formatted(
        self,
        items: Sequence[W],
        format_line: Callable[[W], str],
        describe: Callable[[W], str],
        policy: str | None = None,
    ) -> None:
        """Format every item before anything is sent; one that cannot be written fails the call, naming it."""
        lines = []
        for item in items:
            try:
                lines.append(format_line(item))
            except ValueError as error:
                raise self._error(f"cannot write {describe(item)}: {error}", retryable=False) from error
        await self._write_lines(lines, policy or self.retention_policy)

    async def _write_lines(self, lines: list[str], policy: str | None) -> None:
        """POST the lines in requests of WRITE_BATCH_LINES, all at once: influxd ingests concurrent requests
        on several cores, and the next request need not wait for the previous one's answer. The first
        failure (in line order) is raised after every request has ended, so a retry repeats a known set."""
        await self.ensure_database()
        params = {"db": self.database, "precision": "ns"}
        if policy:
            params["rp"] = policy
        # Level 1: readings' line protocol still shrinks ~30x (measured), for a fraction of level 9's CPU.
        bodies = [
            gzip.compress("".join(line + "\n" for line in lines[first : first + WRITE_BATCH_LINES]).encode(), 1)
            for first in range(0, len(lines), WRITE_BATCH_LINES)
        ]
        outcomes = await asyncio.gather(*(self._post_lines(params, body) for body in bodies), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _post_lines(self, params: dict[str, str], content: bytes) -> None:
        response = await self._send(
            "write",
            "POST",
            "/write",
            params=params,
            content=content,
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"},
        )
        if response.status_code != 204:
            self._fail("write", response)

    async def query(
        self,
        *,
        site: str | None = None,
        instrument: str | None = None,
        parameter: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[StoredReading]:
        statement = select_statement(
            retention_policy=self.raw_policy,
            site=site,
            instrument=instrument,
            parameter=parameter,
            start=start,
            end=end,
        )
        return await self._query(statement, parse_readings, "query")

    async def count_by_instrument(self) -> dict[tuple[str, str], int]:
        return await self._query(count_statement(retention_policy=self.raw_policy), parse_counts, "count")

    async def _query(self, statement: str, parse: Callable[[Iterator[dict[str, Any]]], T], what: str) -> T:
        """Run a SELECT and parse its answer; an error InfluxDB reports, or an answer we cannot read, is a
        StoreError that is not worth retrying."""
        await self.ensure_database()  # after a start with InfluxDB down, the first SELECT may come before a write
        text = await self._select(statement)
        try:
            return parse(decode_documents(text))
        except StatementError as error:
            raise self._error(f"{what} failed: {error}", retryable=False) from error
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise self._error(f"{what} answer not understood: {error!r}", retryable=False) from error

    async def _create_database(self) -> None:
        response = await self._send(
            "create database", "POST", "/query", data={"q": f"CREATE DATABASE {quote_identifier(self.database)}"}
        )
        if is_retryable_status(response.status_code):
            self._fail("create database", response)
        problem: str | None = None
        if response.is_error:
            problem = f"HTTP {response.status_code}: {error_text(response)}"
        else:
            try:
                list(iter_series(decode_documents(response.text)))
            except ValueError as error:
                problem = str(error)
        if problem is not None:
            log.warning(
                "InfluxDB %s: could not create database %r (%s); assuming it exists (InfluxDB 2/3 map it via DBRP)",
                self.url,
                self.database,
                problem,
            )

    async def _select(self, statement: str) -> str:
        params = {
            "db": self.database,
            "q": statement,
            "epoch": "ns",
            "chunked": "true",
            "chunk_size": str(QUERY_CHUNK_SIZE),
        }
        response = await self._send("query", "GET", "/query", params=params)
        if response.status_code != 200:
            self._fail("query", response)
        return response.text

    async def _send(self, action: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._client is None:
            raise self._error(f"cannot {action}: store is not open", retryable=False)
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise self._error(f"{action} failed: {type(error).__name__}: {error}", retryable=True) from error
        # httpx binds the response and its stream to each other: a cycle that only the cyclic collector frees,
        # which the gateway runs rarely (gateway/gc_tuning.py), so every answer, body included, stayed in
        # memory until then (~1 KiB a message on InfluxDB in tests/test_hostile_input.py). The body is read
        # and the stream closed by now: a plain stream of it breaks the cycle, and reference counting frees it.
        response.stream = httpx.ByteStream(response.content)
        return response

    def _fail(self, action: str, response: httpx.Response) -> NoReturn:
        status = response.status_code
        raise self._error(
            f"{action} rejected with HTTP {status}: {error_text(response)}",
            retryable=is_retryable_status(status),
            status=status,
        )

    def _error(self, detail: str, *, retryable: bool, status: int | None = None) -> StoreError:
        return StoreError(
            f"InfluxDB {self.url} (database {self.database!r}): {detail}", retryable=retryable, status=status
        )
