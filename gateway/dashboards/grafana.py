"""`cems-gateway dashboards push`: upload dashboards/json/*.json to a Grafana server with grafana-client.

The dashboards go into one folder (created when missing), each with `overwrite`, so pushing again replaces
them and Grafana keeps the older versions in its history. They read the InfluxQL data source of uid
`aua-influxdb`: provision it (dashboards/provisioning/datasources/) or create it with that uid; the push
warns when Grafana does not have it. Authentication: a service account token (`Authorization: Bearer`).

The panels name each measurement's retention policy through the variables `raw_rp`, `rollup_rp` and
`health_rp` (gateway/dashboards/build.py). The push sets them to where the gateway of CONFIG writes
(`policies_for`): `aua_raw`/`aua_rollup` with `[store] raw_retention_days`, else the store URL's `?rp=` or the
database's default policy `autogen`.

No Grafana server can run where the tests run: tests/gateway/dashboards/test_dashboards_push.py checks the requests
against a
local HTTP receiver that records them and answers the way Grafana's HTTP API does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from aua_ops import redact_text, redact_url
from gateway.config import GatewayConfig
from gateway.dashboards.build import DATASOURCE_UID, DEFAULT_DIR, DEFAULT_POLICY, FOLDER, HEALTH_RP, RAW_RP, ROLLUP_RP
from gateway.errors import GatewayError
from gateway.stores.retention import RAW_POLICY, ROLLUP_POLICY

log = logging.getLogger(__name__)

FOLDER_UID = "aua"
TOKEN_ENV = "AUA_GRAFANA_TOKEN"


class DashboardPushError(GatewayError, RuntimeError):
    """The push failed; the message names the dashboard and quotes Grafana."""


@dataclass(frozen=True)
class Pushed:
    uid: str
    title: str
    url: str
    version: int | None


@dataclass(frozen=True)
class Policies:
    """The InfluxDB retention policy of each measurement the dashboards read."""

    raw: str = DEFAULT_POLICY
    rollup: str = DEFAULT_POLICY
    health: str = DEFAULT_POLICY

    def values(self) -> dict[str, str]:
        """variable name -> value."""
        return {RAW_RP: self.raw, ROLLUP_RP: self.rollup, HEALTH_RP: self.health}


def policies_for(config: GatewayConfig) -> Policies:
    """Where the gateway of `config` writes (gateway/stores/influx.py): readings and rollups to aua_raw and
    aua_rollup when `[store] raw_retention_days` is set; everything else (and everything without it) to the
    store URL's `?rp=`, or the database's default policy. A SQLite store: the defaults (no Grafana panel
    reads SQLite)."""
    rp = parse_qs(urlsplit(config.store.url).query).get("rp", [""])[-1] or DEFAULT_POLICY
    if config.store.raw_retention_days is not None:
        return Policies(raw=RAW_POLICY, rollup=ROLLUP_POLICY, health=rp)
    return Policies(raw=rp, rollup=rp, health=rp)


def with_policies(dashboard: dict[str, Any], policies: Policies) -> dict[str, Any]:
    """A copy of `dashboard` whose retention-policy variables select `policies` (added to the drop-down when
    it does not offer them, e.g. a URL's `?rp=`)."""
    values = policies.values()
    variables = []
    for variable in dashboard.get("templating", {}).get("list", []):
        value = values.get(variable.get("name"))
        if value is None:
            variables.append(variable)
            continue
        choices = [option["value"] for option in variable.get("options", [])]
        if value not in choices:
            choices.append(value)
        variables.append(
            {
                **variable,
                "query": ",".join(choices),
                "options": [{"text": c, "value": c, "selected": c == value} for c in choices],
                "current": {"text": value, "value": value},
            }
        )
    return {**dashboard, "templating": {**dashboard.get("templating", {}), "list": variables}}


def load_dashboards(directory: Path = DEFAULT_DIR) -> list[dict[str, Any]]:
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise DashboardPushError(f"no dashboards (*.json) in {directory}")
    dashboards = []
    for path in paths:
        try:
            dashboard = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DashboardPushError(f"{path}: {error}") from None
        if not isinstance(dashboard, dict) or not dashboard.get("uid") or not dashboard.get("title"):
            raise DashboardPushError(f"{path}: not a dashboard model with uid and title")
        dashboards.append(dashboard)
    return dashboards


def _grafana_text(error: GrafanaException) -> str:
    return f"HTTP {error.status_code}: {error.message}"


def ensure_folder(api: GrafanaApi, uid: str = FOLDER_UID, title: str = FOLDER) -> bool:
    """The folder exists afterwards; True when this call created it."""
    try:
        api.folder.get_folder(uid)  # type: ignore[no-untyped-call]
    except GrafanaClientError as error:
        if error.status_code != 404:
            raise
    else:
        return False
    api.folder.create_folder(title, uid=uid)  # type: ignore[no-untyped-call]
    return True


def push(
    url: str,
    token: str | None,
    *,
    directory: Path = DEFAULT_DIR,
    folder_uid: str = FOLDER_UID,
    folder_title: str = FOLDER,
    message: str = "pushed by cems-gateway dashboards push",
    timeout: float = 10.0,
    policies: Policies | None = None,
) -> list[Pushed]:
    """Create the folder if needed and upload every dashboard (overwrite), its retention-policy variables set
    to `policies` (None: as in the files). Raises DashboardPushError."""
    dashboards = load_dashboards(directory)
    if policies is not None:
        dashboards = [with_policies(dashboard, policies) for dashboard in dashboards]
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    try:
        if ensure_folder(api, folder_uid, folder_title):
            log.info("created folder %r (uid %s)", folder_title, folder_uid)
        try:
            api.datasource.get_datasource_by_uid(DATASOURCE_UID)
        except GrafanaClientError as error:
            if error.status_code != 404:
                raise
            log.warning(
                "Grafana has no data source of uid %r: the panels stay empty until it exists "
                "(dashboards/provisioning/datasources/aua-influxdb.yaml)",
                DATASOURCE_UID,
            )
    except GrafanaException as error:
        raise DashboardPushError(f"Grafana {url}: {_grafana_text(error)}") from None
    except OSError as error:  # connection refused, DNS, TLS
        raise DashboardPushError(f"Grafana {url}: {error}") from None
    pushed = []
    for dashboard in dashboards:
        body = {
            "dashboard": {**dashboard, "id": None},
            "folderUid": folder_uid,
            "overwrite": True,
            "message": message,
        }
        try:
            answer = api.dashboard.update_dashboard(body)
        except GrafanaException as error:
            raise DashboardPushError(f"Grafana {url}: dashboard {dashboard['uid']}: {_grafana_text(error)}") from None
        except OSError as error:
            raise DashboardPushError(f"Grafana {url}: dashboard {dashboard['uid']}: {error}") from None
        answer = answer if isinstance(answer, dict) else {}
        version = answer.get("version")
        pushed.append(
            Pushed(
                uid=str(answer.get("uid", dashboard["uid"])),
                title=str(dashboard["title"]),
                url=str(answer.get("url", "")),
                version=version if isinstance(version, int) else None,
            )
        )
    return pushed


# -- CLI ---------------------------------------------------------------------------------------------------


def add_dashboard_commands(commands: Any) -> None:
    """`dashboards push CONFIG [--url URL] [--token TOKEN] [--dir DIR] [--folder-uid UID]`."""
    dashboards = commands.add_parser("dashboards", help="Grafana dashboards").add_subparsers(
        dest="dashboards_command", required=True
    )
    command = dashboards.add_parser("push", help="upload dashboards/json/*.json to Grafana (overwrite)")
    command.add_argument("config", type=Path)
    command.add_argument("--url", help="Grafana base URL (default: [alerts.notify] grafana_url)")
    command.add_argument(
        "--token", help=f"service account token (default: ${TOKEN_ENV}, else [alerts.notify] grafana_token)"
    )
    command.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="folder of dashboard JSON files")
    command.add_argument("--folder-uid", default=FOLDER_UID, help="Grafana folder uid (created when missing)")


def run_dashboards_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    notify = config.alerts.notify if config.alerts is not None else None
    url = args.url or (notify.grafana_url if notify else None)
    if not url:
        print("no Grafana URL: give --url or set [alerts.notify] grafana_url", file=sys.stderr)
        return 1
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token and notify is not None and notify.grafana_token is not None:
        token = notify.grafana_token.get_secret_value()
    try:
        policies = policies_for(config)
        pushed = push(url, token, directory=args.dir, folder_uid=args.folder_uid, policies=policies)
    except DashboardPushError as error:
        print(redact_text(str(error)), file=sys.stderr)
        return 1
    print(f"retention policies: reading {policies.raw}, rollup {policies.rollup}, aua_health {policies.health}")
    for item in pushed:
        version = "" if item.version is None else f" (version {item.version})"
        print(f"pushed {item.uid:<22} {item.title}{version} {redact_url(url.rstrip('/'))}{item.url}")
    return 0
