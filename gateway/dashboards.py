"""`cems-gateway dashboards push`: upload dashboards/json/*.json to a Grafana server with grafana-client.

The dashboards go into one folder (created when missing), each with `overwrite`, so pushing again replaces
them and Grafana keeps the older versions in its history. They read the InfluxQL data source of uid
`aua-influxdb`: provision it (dashboards/provisioning/datasources/) or create it with that uid; the push
warns when Grafana does not have it. Authentication: a service account token (`Authorization: Bearer`).

No Grafana server can run where the tests run: tests/test_dashboards_push.py checks the requests against a
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

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from aua_ops import redact_text, redact_url
from gateway.config import GatewayConfig
from gateway.dashboard_build import DATASOURCE_UID, DEFAULT_DIR, FOLDER

log = logging.getLogger(__name__)

FOLDER_UID = "aua"
TOKEN_ENV = "AUA_GRAFANA_TOKEN"


class DashboardPushError(RuntimeError):
    """The push failed; the message names the dashboard and quotes Grafana."""


@dataclass(frozen=True)
class Pushed:
    uid: str
    title: str
    url: str
    version: int | None


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
) -> list[Pushed]:
    """Create the folder if needed and upload every dashboard (overwrite). Raises DashboardPushError."""
    dashboards = load_dashboards(directory)
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
        pushed = push(url, token, directory=args.dir, folder_uid=args.folder_uid)
    except DashboardPushError as error:
        print(redact_text(str(error)), file=sys.stderr)
        return 1
    for item in pushed:
        version = "" if item.version is None else f" (version {item.version})"
        print(f"pushed {item.uid:<22} {item.title}{version} {redact_url(url.rstrip('/'))}{item.url}")
    return 0
