"""What `cems-gateway check` looks at, and what `run` refuses to start without: each problem one line,
`FILE:LINE: KEY: what`, found before anything is opened.

Errors (the gateway would not work): state, spool or SQLite store in a folder that does not exist or is not
writable, TLS files missing or unusable, the HTTP address not bindable. Warnings (the gateway works and
catches up): broker or InfluxDB unreachable now, since the broker redelivers and the store is spooled for.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aua_mqtt import broker_problem, reach_problem
from aua_ops import ConfigFile
from aua_ops.startup import bind_problem, path_problem
from gateway.config import GatewayConfig
from gateway.stores import InfluxStore, SqliteStore, StoreError, open_store

Location = tuple[str, ...]


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _data_files(config: GatewayConfig) -> Iterator[tuple[Location, Path]]:
    """The files the gateway writes, with the key that names each."""
    yield ("gateway", "state"), config.gateway.state
    if config.gateway.spool is not None:  # by default it is next to the state: the same folder, one problem
        yield ("gateway", "spool"), config.gateway.spool_path
    store = open_store(config.store.url)
    if isinstance(store, SqliteStore) and store.path != ":memory:":
        yield ("store", "url"), Path(store.path)


def create_folders(config: GatewayConfig) -> None:
    """With gateway.create_dirs: the folders of state, spool and a SQLite store, once the checks passed."""
    if config.gateway.create_dirs:
        for _, path in _data_files(config):
            path.parent.mkdir(parents=True, exist_ok=True)


def static_findings(config: GatewayConfig, located: ConfigFile) -> Findings:
    """Everything that needs no server: files, folders, TLS files, the HTTP address."""
    findings = Findings()
    for location, path in _data_files(config):
        problem = path_problem(path, create_dirs=config.gateway.create_dirs, create_key="gateway.create_dirs")
        if problem is not None:
            findings.errors.append(located.problem(location, problem))
    mqtt = config.mqtt
    missing = False
    for name in ("ca_file", "cert_file", "key_file"):
        tls_file: Path | None = getattr(mqtt, name)
        if tls_file is not None and not tls_file.is_file():
            findings.errors.append(located.problem(("mqtt", name), f"{tls_file} does not exist"))
            missing = True
    password = mqtt.password_problem()
    if password is not None:
        findings.errors.append(located.problem(("mqtt", "password_file"), password))
    if not missing:
        try:
            mqtt.tls_context()
        except (OSError, ssl.SSLError) as error:
            findings.errors.append(located.problem(("mqtt",), f"TLS files cannot be used: {error}"))
    address = config.gateway.http_address
    if address is not None:
        problem = bind_problem(*address)
        if problem is not None:
            findings.errors.append(located.problem(("gateway", "http"), problem))
    findings.warnings += [located.problem(location, what) for location, what in role_warnings(config)]
    return findings


def role_warnings(config: GatewayConfig) -> list[tuple[Location, str]]:
    """Sections this instance will not run by its [gateway] roles (gateway/roles.py), and a role with nothing
    to do: not wrong in a scale-out (another instance runs them), but worth a line in `check`."""
    roles = set(config.gateway.roles)
    elsewhere = 'another instance must run them (docs/gateway.md, "Roles")'
    found: list[tuple[Location, str]] = []
    if "alerts" not in roles and config.alerts is not None:
        found.append((("alerts",), f"not evaluated here: [gateway] roles has no alerts; {elsewhere}"))
    if "mrv" not in roles and config.rollup.reports.schedule:
        found.append((("rollup", "reports", "schedule"), f"not run here: [gateway] roles has no mrv; {elsewhere}"))
    if "mrv" not in roles and config.state_feed is not None:
        found.append((("state_feed",), f"not sent from here: [gateway] roles has no mrv; {elsewhere}"))
    if "alerts" in roles and config.alerts is None and "roles" in config.gateway.model_fields_set:
        found.append((("gateway", "roles"), "has alerts, but the config has no [alerts] section: nothing to evaluate"))
    return found


async def store_problem(config: GatewayConfig, timeout_s: float) -> str | None:
    """InfluxDB answers (a SQLite store is a file: the path checks cover it)."""
    store = open_store(config.store.url)
    if not isinstance(store, InfluxStore):
        return None
    try:
        async with asyncio.timeout(timeout_s):
            await store.open()
    except (StoreError, TimeoutError) as error:
        problem = str(error) or f"InfluxDB {store.url}: no answer within {timeout_s:g} s"
        return f"{problem} (the gateway spools until it does)"
    finally:
        with contextlib.suppress(StoreError):
            await store.close()
    return None


async def findings(
    config: GatewayConfig, located: ConfigFile, *, servers: bool = True, login: bool = False
) -> Findings:
    """Static checks, then (with `servers`) whether the broker and the store answer now; with `login`, an MQTT
    login with the gateway's credentials too (under a broker that binds client ids to usernames it takes over,
    and with its clean session discards, a running gateway's session: only before `run`)."""
    found = static_findings(config, located)
    if servers:
        if login:
            broker = await broker_problem(config.mqtt, f"{config.mqtt.client_id or config.gateway.id}-check")
        else:
            broker = await reach_problem(config.mqtt)
        if broker is not None:
            found.warnings.append(
                located.problem(("mqtt",), f"{broker.removeprefix('mqtt: ')} (the gateway retries until it connects)")
            )
        store = await store_problem(config, timeout_s=10)
        if store is not None:
            found.warnings.append(located.problem(("store", "url"), store))
    return found
