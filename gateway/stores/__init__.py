"""Where the gateway keeps readings: SQLite (default, zero setup) or InfluxDB (1.x, or 2.x/3.x via v1 API).

`open_store(url)` builds the store a config URL names; call `await store.open()` before use. The protocol
(`Store`, gateway.stores.base) loads with the package; the adapters (sqlite, influx) load on first use, so the
pure modules here (base, line_protocol) and those that only name the protocol import no database client.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from gateway.stores.base import BatchReceipt, Store, StoredReading, StoreError

if TYPE_CHECKING:
    from gateway.stores.influx import InfluxStore
    from gateway.stores.retention import RetentionSettings
    from gateway.stores.sqlite import SqliteStore

__all__ = ["BatchReceipt", "InfluxStore", "SqliteStore", "Store", "StoreError", "StoredReading", "open_store"]

_INFLUX_SCHEMES = {"influx": "http", "http": "http", "https": "https"}
_INFLUX_DEFAULT_PORT = 8086
_INFLUX_OPTIONS = frozenset({"token", "rp", "timeout", "series_marks"})
_USAGE = "expected sqlite:///ABSOLUTE/PATH, sqlite://RELATIVE/PATH, a file path, or influx|http|https://HOST:PORT/DB"


def __getattr__(name: str) -> object:
    """`from gateway.stores import SqliteStore`: the adapter module loads here, on first use."""
    if name == "SqliteStore":
        from gateway.stores.sqlite import SqliteStore

        return SqliteStore
    if name == "InfluxStore":
        from gateway.stores.influx import InfluxStore

        return InfluxStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url_or_path: str | Path, *, retention: RetentionSettings | None = None) -> Store:
    """Build (not yet open) the store a URL or path names.

    - a plain path, or `sqlite://` + path: SqliteStore. Everything after `sqlite://` is the path, so
      `sqlite:///var/lib/aua.db` is absolute and `sqlite://aua.db` relative; `sqlite://:memory:` works.
    - `influx://HOST[:PORT]/DB` (plain HTTP, port 8086 by default) or `http(s)://HOST:PORT[/PREFIX]/DB`:
      InfluxStore. `USER:PASSWORD@` in the URL for InfluxDB 1.x auth; `?token=` for 2.x/3.x;
      `?rp=` for a retention policy; `?timeout=` seconds; `?series_marks=` the bound of the write-once
      high-water marks (0: learn them from the store on every write, for gateways sharing a subscription).

    `retention`: InfluxDB creates its raw/rollup retention policies from it at open (gateway.stores.retention);
    SQLite is pruned by gateway.mrv.retention instead.
    """
    from gateway.stores.sqlite import SqliteStore

    if isinstance(url_or_path, Path):
        return SqliteStore(url_or_path)
    if "://" not in url_or_path:
        if not url_or_path:
            raise ValueError(f"empty store URL: {_USAGE}")
        return SqliteStore(url_or_path)
    scheme = url_or_path.split("://", 1)[0].lower()
    if scheme == "sqlite":
        path = url_or_path[len("sqlite://") :]
        if not path:
            raise ValueError(f"store URL {url_or_path!r} has no path: {_USAGE}")
        return SqliteStore(path)
    if scheme in _INFLUX_SCHEMES:
        return _influx_store(url_or_path, _INFLUX_SCHEMES[scheme], retention)
    raise ValueError(f"unknown store URL {_redact(url_or_path)!r}: {_USAGE}")


def _influx_store(url: str, http_scheme: str, retention: RetentionSettings | None = None) -> InfluxStore:
    from gateway.stores.influx import SERIES_MARKS, InfluxStore

    shown = _redact(url)
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"store URL {shown!r} has no host: {_USAGE}")
    segments = [segment for segment in parts.path.split("/") if segment]
    if not segments:
        raise ValueError(f"store URL {shown!r} names no database (…/DB at the end): {_USAGE}")
    database = unquote(segments[-1])
    prefix = "".join(f"/{segment}" for segment in segments[:-1])
    options = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - _INFLUX_OPTIONS)
    if unknown:
        known = ", ".join(sorted(_INFLUX_OPTIONS))
        raise ValueError(f"store URL {shown!r}: unknown option(s) {', '.join(unknown)} (known: {known})")
    try:
        port = parts.port
        timeout = float(options.get("timeout", 10))
        series_marks = int(options.get("series_marks", SERIES_MARKS))
    except ValueError as error:
        raise ValueError(f"store URL {shown!r}: {error}") from None
    if port is None and parts.scheme.lower() == "influx":
        port = _INFLUX_DEFAULT_PORT
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    return InfluxStore(
        urlunsplit((http_scheme, netloc, prefix, "", "")),
        database,
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
        token=options.get("token") or None,
        retention_policy=options.get("rp") or None,
        timeout=timeout,
        series_marks=series_marks,
        retention=retention,
    )


def _redact(url: str) -> str:
    """No password or token in an error message."""
    from gateway.stores.influx import redact_url

    parts = urlsplit(redact_url(url))
    if "token=" not in parts.query:
        return urlunsplit(parts)
    query = "&".join("token=***" if item.startswith("token=") else item for item in parts.query.split("&"))
    return urlunsplit(parts._replace(query=query))
