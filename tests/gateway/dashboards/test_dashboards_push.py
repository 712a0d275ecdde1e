"""`cems-gateway dashboards push` against a local HTTP receiver that records requests and answers like Grafana.

No Grafana server can be installed where these tests run, so this checks the requests grafana-client sends
(paths, bearer token, folder, overwrite, the dashboard models) and how answers are handled, not Grafana.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.dashboards.build import DATASOURCE_UID, DEFAULT_DIR
from gateway.dashboards.grafana import DashboardPushError, push


@dataclass
class FakeGrafana:
    """Grafana's folder, data source and dashboard endpoints, in memory."""

    token: str = "glsa_test"
    folders: dict[str, str] = field(default_factory=dict)
    datasources: set[str] = field(default_factory=lambda: {DATASOURCE_UID})
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, headers, body))
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"message": "Unauthorized"}
        if method == "GET" and path.startswith("/api/folders/"):
            uid = path.rsplit("/", 1)[1]
            if uid not in self.folders:
                return 404, {"message": "folder not found", "status": "not-found"}
            return 200, {"uid": uid, "title": self.folders[uid], "id": 7}
        if method == "POST" and path == "/api/folders":
            self.folders[body["uid"]] = body["title"]
            return 200, {"uid": body["uid"], "title": body["title"], "id": 7}
        if method == "GET" and path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            if uid not in self.datasources:
                return 404, {"message": "Data source not found"}
            return 200, {"uid": uid, "type": "influxdb"}
        if method == "POST" and path == "/api/dashboards/db":
            model = body["dashboard"]
            if body.get("folderUid") not in self.folders:
                return 400, {"message": "folder not found"}
            previous = self.dashboards.get(model["uid"])
            if previous is not None and not body.get("overwrite"):
                return 412, {"message": "A dashboard with the same uid already exists", "status": "name-exists"}
            version = 1 if previous is None else previous["version"] + 1
            self.dashboards[model["uid"]] = {**model, "version": version}
            slug = model["title"].lower().replace(" ", "-")
            return 200, {"id": 1, "uid": model["uid"], "url": f"/d/{model['uid']}/{slug}", "status": "success",
                         "version": version, "slug": slug}  # fmt: skip
        return 404, {"message": "Not found"}


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, answer = fake.answer(self.command, self.path, headers, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_push_creates_the_folder_and_uploads_every_dashboard(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    pushed = push(url, fake.token)
    on_disk = {json.loads(path.read_text())["uid"] for path in DEFAULT_DIR.glob("*.json")}
    assert {item.uid for item in pushed} == on_disk == set(fake.dashboards)
    assert fake.folders == {"aua": "Aua"}
    posts = [body for method, path, _, body in fake.requests if (method, path) == ("POST", "/api/dashboards/db")]
    assert len(posts) == len(on_disk)
    for body in posts:
        assert body["folderUid"] == "aua"
        assert body["overwrite"] is True
        assert body["dashboard"]["id"] is None
        assert body["dashboard"]["panels"]
    assert all(headers["authorization"] == "Bearer glsa_test" for _, _, headers, _ in fake.requests)
    assert all(item.version == 1 and item.url.startswith(f"/d/{item.uid}/") for item in pushed)


def test_push_again_keeps_the_folder_and_overwrites(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    push(url, fake.token)
    fake.requests.clear()
    pushed = push(url, fake.token)
    assert ("POST", "/api/folders") not in [(m, p) for m, p, _, _ in fake.requests]
    assert {item.version for item in pushed} == {2}


def test_push_warns_when_the_datasource_is_missing(
    grafana: tuple[FakeGrafana, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = grafana
    fake.datasources.clear()
    push(url, fake.token)
    assert "no data source of uid 'aua-influxdb'" in caplog.text


def test_a_wrong_token_is_a_clear_error(grafana: tuple[FakeGrafana, str]) -> None:
    _, url = grafana
    with pytest.raises(DashboardPushError, match="HTTP 401"):
        push(url, "wrong")


def test_an_unreachable_grafana_is_a_clear_error() -> None:
    with pytest.raises(DashboardPushError, match=r"Grafana http://127\.0\.0\.1:9"):
        push("http://127.0.0.1:9", "token", timeout=2)


def test_cli_push(grafana: tuple[FakeGrafana, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = grafana
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nstate = "state.sqlite"\n[alerts.notify]\ngrafana_url = "{url}"\n')
    assert cli.main(["dashboards", "push", str(config), "--token", fake.token]) == 0
    out = capsys.readouterr().out
    assert out.count("pushed ") == len(fake.dashboards) == 5
    assert cli.main(["dashboards", "push", str(config), "--token", "nope"]) == 1
    assert "HTTP 401" in capsys.readouterr().err


def _policy_values(model: dict[str, Any]) -> dict[str, str]:
    return {
        variable["name"]: variable["current"]["value"]
        for variable in model["templating"]["list"]
        if variable["name"].endswith("_rp")
    }


@pytest.mark.parametrize(
    ("store", "policies"),
    [
        ('url = "influx://127.0.0.1:8086/aua"', ("autogen", "autogen", "autogen")),
        ('url = "influx://127.0.0.1:8086/aua"\nraw_retention_days = 400', ("aua_raw", "aua_rollup", "autogen")),
        ('url = "influx://127.0.0.1:8086/aua?rp=plant"', ("plant", "plant", "plant")),
        ('url = "influx://127.0.0.1:8086/aua?rp=plant"\nraw_retention_days = 30', ("aua_raw", "aua_rollup", "plant")),
    ],
)
def test_push_sets_the_retention_policies_the_gateway_writes_to(
    grafana: tuple[FakeGrafana, str], tmp_path: Path, store: str, policies: tuple[str, str, str]
) -> None:
    """gateway/stores/influx.py: readings to aua_raw and rollups to aua_rollup with raw retention, everything
    else to the URL's ?rp= or the default policy."""
    fake, url = grafana
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nstate = "state.sqlite"\n[store]\n{store}\n[alerts.notify]\ngrafana_url = "{url}"\n')
    assert cli.main(["dashboards", "push", str(config), "--token", fake.token]) == 0
    wanted = dict(zip(("raw_rp", "rollup_rp", "health_rp"), policies, strict=True))
    for uid, model in fake.dashboards.items():
        values = _policy_values(model)
        assert values, uid
        assert values == {name: wanted[name] for name in values}, uid
        for variable in model["templating"]["list"]:
            if variable["name"] in values:  # what the drop-down offers includes what it selects
                assert variable["current"]["value"] in variable["query"].split(","), (uid, variable)
                assert [o["value"] for o in variable["options"] if o["selected"]] == [variable["current"]["value"]]
    on_disk = {json.loads(path.read_text())["uid"]: json.loads(path.read_text()) for path in DEFAULT_DIR.glob("*.json")}
    assert {uid: _policy_values(model) for uid, model in on_disk.items()} == {
        uid: dict.fromkeys(_policy_values(model), "autogen") for uid, model in on_disk.items()
    }, "the files themselves keep the default policy"
