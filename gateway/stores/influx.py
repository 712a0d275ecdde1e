"""InfluxDB store over the HTTP v1 API only (/write, /query), which InfluxDB 1.x serves natively and 2.x/3.x
serve as a compatibility layer, so one small client covers all three without a vendor SDK.

Known difference from SQLite: InfluxDB merges the fields of a point written twice, and a field cannot be
null, so rewriting an identity with value=None (or status=None) keeps the value (status) written before.
Every other field follows "last write wins".
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, NoReturn, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from aua_contract import Batch, Quality
from gateway.rollup import Aggregate, Period
from gateway.stores import line_protocol
from gateway.stores import retention as retention_rules
from gateway.stores.base import (
    HEALTH_MEASUREMENT,
    HEALTH_TAG_KEYS,
    RECEIPT_MEASUREMENT,
    BatchReceipt,
    HealthPoint,
    StoredReading,
    StoreError,
    aggregate_sort_key,
    from_ns,
    health_sort_key,
    sort_key,
    to_ns,
)

log = logging.getLogger(__name__)

WRITE_BATCH_LINES = 5_000
"""Lines per /write request: far under InfluxDB's 25 MB body limit; ≈390k points/s measured at this size."""

QUERY_CHUNK_SIZE = 10_000
"""Rows per chunk of a chunked /query answer, so large results stream instead of hitting row limits."""

_FIELDS = ("value", "unit", "quality", "status")
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


def count_statement(*, retention_policy: str | None = None) -> str:
    """count() of a string field works in InfluxDB 1.6; `quality` is on every point, so it counts points."""
    return f'SELECT count("quality") FROM {_measurement(retention_policy)} GROUP BY "site", "instrument"'


def _measurement(retention_policy: str | None) -> str:
    measurement = quote_identifier(line_protocol.MEASUREMENT)
    return f"{quote_identifier(retention_policy)}.{measurement}" if retention_policy else measurement


def parse_policies(documents: Iterator[dict[str, Any]]) -> dict[str, timedelta | None]:
    """SHOW RETENTION POLICIES → name → duration (None: infinite)."""
    policies: dict[str, timedelta | None] = {}
    for series in iter_series(documents):
        columns = series["columns"]
        for values in series.get("values", []):
            row = dict(zip(columns, values, strict=True))
            policies[str(row["name"])] = retention_rules.parse_duration(str(row["duration"]))
    return policies


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


class StatementError(ValueError):
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
    readings = []
    for series in iter_series(documents):
        columns = series["columns"]
        for values in series.get("values", []):
            row: Mapping[str, Any] = dict(zip(columns, values, strict=True))
            value, status = row.get("value"), row.get("status")
            readings.append(
                StoredReading(
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
            )
    readings.sort(key=sort_key)
    return readings


def parse_aggregates(documents: Iterator[dict[str, Any]]) -> list[Aggregate]:
    """Rows of `select_aggregates_statement` (queried with epoch=ns) -> Aggregates in the store's order."""
    aggregates = []
    for series in iter_series(documents):
        columns = series["columns"]
        for values in series.get("values", []):
            row: Mapping[str, Any] = dict(zip(columns, values, strict=True))
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


def parse_counts(documents: Iterator[dict[str, Any]]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for series in iter_series(documents):
        tags = series.get("tags", {})
        index = series["columns"].index("count")
        total = sum(int(values[index] or 0) for values in series.get("values", []))
        counts[(tags.get("site", ""), tags.get("instrument", ""))] = total
    return counts


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
    for series in iter_series(documents):
        columns = series["columns"]
        for values in series.get("values", []):
            row: Mapping[str, Any] = dict(zip(columns, values, strict=True))
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
        retention: retention_rules.RetentionSettings | None = None,
    ) -> None:
        if not database:
            raise ValueError(f"InfluxDB {redact_url(url)}: database name must not be empty")
        if token is not None and username is not None:
            raise ValueError(f"InfluxDB {redact_url(url)}: give a token or a username/password, not both")
        parts = urlsplit(url)
        if parts.username is not None and username is None:
            username = unquote(parts.username)
            password = None if parts.password is None else unquote(parts.password)
        self.url = redact_url(url).rstrip("/")
        self.database = database
        self.retention_policy = retention_policy
        self.timeout = timeout
        self.retention = retention
        self.raw_policy = retention_policy
        """where readings are written and read: RAW_POLICY once it exists (gateway.stores.retention)"""
        self.rollup_policy = retention_policy
        self.raw_retention: timedelta | None = None
        """the raw policy's duration; None: raw readings are kept forever"""
        self._username = username
        self._password = password
        self._token = token
        self._client: httpx.AsyncClient | None = None

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

    async def open(self) -> None:
        """Connect and create the database; a 4xx there (no admin right, InfluxDB 2/3 DBRP) is only logged."""
        if self._client is not None:
            return
        headers = {"Authorization": f"Token {self._token}"} if self._token else {}
        auth = httpx.BasicAuth(self._username, self._password or "") if self._username is not None else None
        self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout, headers=headers, auth=auth)
        try:
            await self._create_database()
            await self._use_retention_policies()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def write(self, readings: Sequence[StoredReading]) -> None:
        if not readings:
            return
        lines = [self._format(reading) for reading in readings]  # all checked before anything is sent
        await self._write_lines(lines, self.raw_policy)

    async def write_batches(self, batches: Sequence[Batch]) -> None:
        lines: list[str] = []
        for batch in batches:  # all checked before anything is sent
            try:
                lines += line_protocol.format_batch_lines(batch)
            except ValueError as error:
                where = f"batch {batch.seq} of {batch.site}/{batch.agent}"
                raise self._error(f"cannot write {where}: {error}", retryable=False) from error
        if lines:
            await self._write_lines(lines, self.raw_policy)

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
        text = await self._select(statement)
        try:
            return parse(decode_documents(text))
        except StatementError as error:
            raise self._error(f"{what} failed: {error}", retryable=False) from error
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise self._error(f"{what} answer not understood: {error!r}", retryable=False) from error

    def _format(self, reading: StoredReading) -> str:
        try:
            return line_protocol.format_line(reading)
        except ValueError as error:
            raise self._error(f"cannot write {reading.identity}: {error}", retryable=False) from error

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
            return await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise self._error(f"{action} failed: {type(error).__name__}: {error}", retryable=True) from error

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
