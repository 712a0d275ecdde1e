"""Every Grafana panel query runs against a real InfluxDB filled by the simulator, agents and gateway.

The chain (pymodbus simulator -> agents -> mosquitto -> gateway with rollups and the health writer -> influxd
1.6) runs for a few seconds; then each dashboard's InfluxQL, template variables substituted with the values the
dashboard selects by default, goes to `/query` and must answer non-empty, finite, plausible numbers. A static
check ties every measurement, tag and field a query names to what the gateway writes (derived from
gateway/stores/line_protocol.py by formatting real points), so a typo fails here, not on a blank panel.
Grafana itself cannot run here: its transformations (O2 correction, mass rate) are evaluated by a small
re-implementation of the two it uses (joinByField, calculateField binary).

The chain runs twice: into the database's default retention policy (the files' defaults, as provisioned), and
with `[store] raw_retention_days` set, where the gateway writes readings to `aua_raw` and rollups to `aua_rollup`;
there the retention-policy variables take what `cems-gateway dashboards push` sets from that config.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from ports import free_port
from servers import InfluxServer, MosquittoServer, unique_database_name

from aua_contract import Quality
from aua_demo.sites import demo_sites, relocate
from aua_simulator.modbus_servers import simulator_for_config
from edge_agent.poller import Agent
from gateway.config import GatewayConfig, GatewaySection, MqttSection, StoreSection
from gateway.dashboards import build as dashboard_build
from gateway.dashboards.grafana import policies_for, with_policies
from gateway.health_writer import HealthWriter
from gateway.ingest.ledger import Ledger
from gateway.ingest.service import Ingest
from gateway.mrv.retention import retention_settings
from gateway.mrv.rollup import Aggregate, Period
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import StoredReading, open_store
from gateway.stores import line_protocol as lp
from gateway.stores.base import HEALTH_MEASUREMENT, HEALTH_TAG_KEYS, HealthPoint
from gateway.stores.retention import RAW_POLICY, ROLLUP_POLICY

REPO = Path(__file__).resolve().parents[3]
DASHBOARDS = REPO / "dashboards"
RUN_SECONDS = 4.5
TIME_FILTER = "time >= now() - 1h"
INTERVAL = "1s"

RANGES: dict[str, tuple[float, float]] = {
    "so2": (-5, 5000),
    "no": (-5, 5000),
    "no2": (-5, 5000),
    "nox": (-5, 5000),
    "co": (-5, 5000),
    "co2": (0, 25),
    "o2": (0, 21),
    "h2o": (0, 40),
    "dust": (-1, 1000),
    "flow": (0, 5e6),
    "velocity": (0, 60),
    "temperature": (-50, 400),
    "pressure": (50, 120),
    "pm25": (-5, 2000),
    "pm10": (-5, 2000),
    "hg": (0, 5000),
    "wind_speed": (0, 60),
    "wind_dir": (0, 360),
    "air_temp": (-50, 50),
    "air_pressure": (800, 1100),
    "rel_humidity": (0, 100),
}
"""Broad physical ranges per parameter in the unit the profiles give (config/profiles/*.toml)."""
VALUE_COLUMNS = frozenset({"value", "mean", "last", "hg"})
POLICY_VARIABLE = {
    lp.MEASUREMENT: dashboard_build.RAW_RP,
    lp.AGGREGATE_MEASUREMENT: dashboard_build.ROLLUP_RP,
    HEALTH_MEASUREMENT: dashboard_build.HEALTH_RP,
}
"""The retention-policy variable each measurement must be read through (where the gateway writes it)."""


# -- what the gateway writes, derived from the line protocol -------------------------------------------------


def _keys_of(line: str) -> tuple[str, set[str], set[str]]:
    """measurement, tag keys, field keys of one line (names here need no unescaping)."""
    series, fields, _ = line.split(" ")
    measurement, *tags = series.split(",")
    return measurement, {tag.split("=")[0] for tag in tags}, {field.split("=")[0] for field in fields.split(",")}


def written_schema() -> dict[str, set[str]]:
    """measurement -> every tag and field key the gateway can write there."""
    now = datetime.now(UTC)
    reading = StoredReading("s", "a", "i", "p", now, 1.0, "u", Quality.OK, 0)
    aggregate = Aggregate("s", "i", "p", Period.MINUTE, now, 1.0, 1, 1, True, "", 0, "u", False, "mean")
    health = HealthPoint("agent", "g", "s", "a", now, dict.fromkeys(lp.HEALTH_FIELDS, 0))
    schema: dict[str, set[str]] = {}
    for line in (lp.format_line(reading), lp.format_aggregate_line(aggregate), lp.format_health_line(health)):
        measurement, tags, fields = _keys_of(line)
        schema[measurement] = tags | fields
    assert set(schema) == {lp.MEASUREMENT, lp.AGGREGATE_MEASUREMENT, HEALTH_MEASUREMENT}
    assert set(HEALTH_TAG_KEYS) <= schema[HEALTH_MEASUREMENT]
    return schema


def schema_problems(query: str, schema: dict[str, set[str]]) -> list[str]:
    """What a query names that the gateway does not write: measurement, tags, fields; and a measurement read
    from another retention policy than the variable of the policy the gateway writes it to."""
    measurements = re.findall(r"\bFROM\s+(\S+)", query)
    if len(measurements) != 1:
        return [f"expected one FROM, found {measurements}: {query}"]
    quoted = re.fullmatch(r'"\$([a-z_]+)"\."([^"]+)"', measurements[0])
    if quoted is None:
        return [f'{measurements[0]} must be "$POLICY_VARIABLE"."measurement", both double-quoted: {query}']
    policy, measurement = quoted.groups()
    if measurement not in schema:
        return [f"measurement {measurement!r} is not written by the gateway (known: {sorted(schema)})"]
    if policy != POLICY_VARIABLE[measurement]:
        return [f"{measurement} is read through ${policy}, not ${POLICY_VARIABLE[measurement]}: {query}"]
    query = query.replace(f'"${policy}".', "", 1)
    without_strings = re.sub(r"'[^']*'", "''", re.sub(r"([=!]~)\s*/(?:[^/\\]|\\.)*/", r"\1 //", query))
    aliases = set(re.findall(r'\bAS\s+"([^"]+)"', without_strings))
    return [
        f"{measurement} has no tag or field {name!r}: {query}"
        for name in re.findall(r'"([^"]+)"', without_strings)
        if name != measurement and name not in aliases and name not in schema[measurement]
    ]


# -- the dashboards --------------------------------------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted((DASHBOARDS / "json").glob("*.json"))
    }


def queries(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, panel, target) of every panel target."""
    return [
        (f"{dashboard['uid']} / {panel['title']} / {target['refId']}", panel, target)
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def variables(dashboard: dict[str, Any]) -> dict[str, str]:
    return {variable["name"]: variable["current"]["value"] for variable in dashboard["templating"]["list"]}


def substitute(query: str, values: dict[str, str]) -> str:
    text = query.replace("$timeFilter", TIME_FILTER).replace("$__interval", INTERVAL)
    for name in sorted(values, key=len, reverse=True):
        text = text.replace(f"${name}", re.escape(values[name]) if f"/^${name}$/" in text else values[name])
    assert "$" not in text.replace("$/", "").replace("/^", ""), f"unsubstituted variable in {text}"
    return text


def test_dashboard_files_are_what_the_builder_makes() -> None:
    built = dashboard_build.build_all()
    on_disk = {path.name: path.read_text(encoding="utf-8") for path in (DASHBOARDS / "json").glob("*.json")}
    assert set(on_disk) == set(built), "run `.venv/bin/python -m gateway.dashboards.build`"
    for name, dashboard in built.items():
        assert on_disk[name] == dashboard_build.render(dashboard), (
            f"{name} is stale: run python -m gateway.dashboards.build"
        )


def test_every_query_names_only_what_the_gateway_writes() -> None:
    schema = written_schema()
    dashboards = load_dashboards()
    assert len(dashboards) == 5
    problems = []
    for dashboard in dashboards.values():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                problems += schema_problems(variable["query"], schema)
            else:
                assert variable["name"] in POLICY_VARIABLE.values(), variable
        for _, panel, target in queries(dashboard):
            assert panel["datasource"]["uid"] == target["datasource"]["uid"] == dashboard_build.DATASOURCE_UID
            problems += schema_problems(target["query"], schema)
    assert problems == []


@pytest.mark.parametrize(
    "typo",
    [
        ('"$raw_rp"."reading"', '"$raw_rp"."readings"'),
        ('"n_valid"', '"n_vaild"'),
        ('"site"', '"sites"'),
        ('"$health_rp"."aua_health"', '"$health_rp".aua_health'),
        ('"$raw_rp"."reading"', '"$rollup_rp"."reading"'),
        ('"$rollup_rp"."rollup"', '"rollup"'),
        ('"$health_rp"."aua_health"', '"autogen"."aua_health"'),
    ],
)
def test_the_static_check_catches_a_typo(typo: tuple[str, str]) -> None:
    schema = written_schema()
    all_queries = [t["query"] for d in load_dashboards().values() for _, _, t in queries(d)]
    broken = [q.replace(*typo) for q in all_queries if typo[0] in q]
    assert broken, typo
    assert all(schema_problems(q, schema) for q in broken)


def test_provisioning_points_at_the_datasource_uid_and_the_json_folder() -> None:
    datasource = (DASHBOARDS / "provisioning" / "datasources" / "aua-influxdb.yaml").read_text()
    assert f"uid: {dashboard_build.DATASOURCE_UID}" in datasource
    assert "InfluxQL" in datasource
    provider = (DASHBOARDS / "provisioning" / "dashboards" / "aua.yaml").read_text()
    assert "/var/lib/grafana/dashboards/aua" in provider


def test_ambient_limits_are_the_pdk_converted() -> None:
    """ppb -> mg/m³ at 0 °C, 101.3 kPa: SO2 1 ppb = 2.8576 µg/m³, NO2 1 ppb = 2.0520 µg/m³ (docs/regulatory-basis.md
    §2)."""
    assert dashboard_build.ppb_to_mg_m3("so2") == pytest.approx(0.0028576, rel=1e-4)
    assert dashboard_build.ppb_to_mg_m3("no2") == pytest.approx(0.0020520, rel=1e-4)
    ambient = json.loads((DASHBOARDS / "json" / "aua-ambient.json").read_text())
    so2 = next(p for p in ambient["panels"] if p["title"].startswith("SO2"))
    steps = [step["value"] for step in so2["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0.05, 0.5]
    hg = next(p for p in ambient["panels"] if p["title"].startswith("Gaseous mercury"))
    assert [s["value"] for s in hg["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 300.0]


# -- filled InfluxDB ---------------------------------------------------------------------------------------------


async def _fill(config: GatewayConfig, broker: MosquittoServer, workdir: Path) -> list[HealthPoint]:
    sites = []
    for loaded in demo_sites():
        ports = {port: free_port() for port in {i.config.port for i in loaded.instruments}}
        sites.append(relocate(loaded, broker_host=broker.host, broker_port=broker.port, ports=ports, workdir=workdir))
    store = open_store(config.store.url, retention=retention_settings(config.store))
    await store.open()
    ledger = Ledger(config.gateway.state)
    rollups = RollupEngine.from_config(config, store)
    try:
        async with simulator_for_config(sites, seed=5):
            ingest = Ingest(config, store, ledger, rollups=rollups)
            health = HealthWriter(ingest, store, interval=0.5)
            gateway = asyncio.create_task(ingest.run())
            await asyncio.wait_for(ingest.connected.wait(), timeout=10)
            health_task = asyncio.create_task(health.run())
            agents = [Agent(site) for site in sites]
            running = [asyncio.create_task(agent.run()) for agent in agents]
            await asyncio.sleep(RUN_SECONDS)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            sealed = sum(agent.outbox_stats().next_seq for agent in agents)
            for _ in range(100):
                if sum(a.batches for a in ledger.accounts()) >= sealed:
                    break
                await asyncio.sleep(0.1)
            while await rollups.pending():
                await rollups.process_dirty()
            await asyncio.sleep(0.6)  # the health writer's last tick sees everything stored
            health_task.cancel()
            gateway.cancel()
            await asyncio.gather(gateway, health_task, return_exceptions=True)
            return await store.query_health()
    finally:
        await store.close()
        ledger.close()
        rollups.close()


@dataclass(frozen=True)
class Filled:
    base: str
    """influxd's base URL"""
    database: str
    points: list[HealthPoint]
    """the health points written"""
    config: GatewayConfig
    """the gateway's config"""

    @property
    def retention(self) -> bool:
        return self.config.store.raw_retention_days is not None

    def dashboards(self) -> dict[str, dict[str, Any]]:
        """As Grafana shows them: the files as provisioned, or as `dashboards push CONFIG` sets them."""
        files = load_dashboards()
        if not self.retention:
            return files
        return {name: with_policies(dashboard, policies_for(self.config)) for name, dashboard in files.items()}


@pytest.fixture(scope="module", params=["default policy", "raw retention"])
def filled(
    request: pytest.FixtureRequest,
    influxdb: InfluxServer,
    mosquitto: MosquittoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Filled:
    """The chain ran for a few seconds into a fresh database, with or without `[store] raw_retention_days`."""
    database = unique_database_name("dashboards")
    workdir = tmp_path_factory.mktemp("dash")
    config = GatewayConfig(
        gateway=GatewaySection(id=f"dash-{uuid.uuid4().hex[:6]}", state=workdir / "gateway-state.sqlite"),
        mqtt=MqttSection(host=mosquitto.host, port=mosquitto.port),
        store=StoreSection(
            url=influxdb.database_url(database),
            raw_retention_days=30 if request.param == "raw retention" else None,
        ),
    )
    points = asyncio.run(_fill(config, mosquitto, workdir))
    return Filled(influxdb.url, database, points, config)


def run_query(base: str, database: str, query: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/query", params={"db": database, "q": query, "epoch": "ms"}, timeout=10)
    assert response.status_code == 200, f"{response.status_code} {response.text}: {query}"
    result = response.json()["results"][0]
    assert "error" not in result, f"{result['error']}: {query}"
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def parameter_of(series: dict[str, Any], query: str) -> str | None:
    tags = series.get("tags") or {}
    if tags.get("parameter"):
        return str(tags["parameter"])
    found = re.findall(r"\"parameter\" (?:=|=~) (?:'([^']+)'|/\^([^$/]+)\$/)", query)
    names = {a or b for a, b in found}
    return names.pop() if len(names) == 1 else None


def check_plausible(where: str, query: str, series_list: list[dict[str, Any]]) -> int:
    """Every number finite and in its parameter's range (scaled when the query converts units); returns rows."""
    rows = 0
    factor_match = re.search(r'mean\("value"\) \* ([0-9.e-]+)', query)
    factor = float(factor_match.group(1)) if factor_match else 1.0
    for series in series_list:
        parameter = parameter_of(series, query)
        for row in series.get("values", []):
            rows += 1
            for column, value in zip(series["columns"], row, strict=True):
                if column == "time" or value is None or isinstance(value, str | bool):
                    continue
                assert isinstance(value, int | float), (where, column, value)
                assert math.isfinite(value), (where, column, value)
                if column in VALUE_COLUMNS and parameter is not None:
                    low, high = RANGES[parameter]
                    assert low * factor <= value <= high * factor, f"{where}: {parameter} {column}={value}"
                elif column == "latitude":
                    assert 40 < value < 56, (where, value)
                elif column == "longitude":
                    assert 46 < value < 88, (where, value)
                elif "* 100 /" in query:
                    assert 0 <= value <= 100, f"{where}: {column}={value} is not a percentage"
                else:
                    assert value >= 0, f"{where}: {column}={value} should be a count, flag or rate"
    return rows


def apply_transformations(panel: dict[str, Any], frames: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """joinByField (outer, on time) and calculateField binary, as Grafana applies them: alias -> {time: value}."""
    table = {name: dict(values) for name, values in frames.items()}
    for step in panel["transformations"]:
        if step["id"] == "joinByField":
            continue  # frames are already keyed by time
        if step["id"] == "organize":
            for name, hidden in step["options"]["excludeByName"].items():
                if hidden:
                    table.pop(name, None)
            continue
        assert step["id"] == "calculateField", step
        binary = step["options"]["binary"]

        def operand(text: str) -> dict[int, float] | float:
            return table[text] if text in table else float(text)

        left, right = operand(binary["left"]), operand(binary["right"])
        times = set().union(*(side.keys() for side in (left, right) if isinstance(side, dict)))
        result = {}
        for t in times:
            a = left.get(t) if isinstance(left, dict) else left
            b = right.get(t) if isinstance(right, dict) else right
            if a is None or b is None:
                continue
            operator = binary["operator"]
            result[t] = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else math.nan}[operator]
        table[step["options"]["alias"]] = result
    return table


def test_every_panel_query_answers_plausibly(filled: Filled) -> None:
    base, database = filled.base, filled.database
    for dashboard in filled.dashboards().values():
        values = variables(dashboard)
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "custom":  # a retention policy: Grafana offers the comma-separated values
                assert variable["current"]["value"] in variable["query"].split(","), variable
                continue
            answer = run_query(base, database, substitute(variable["query"], values))
            offered = {row[1] for series in answer for row in series["values"]}
            assert variable["current"]["value"] in offered, (dashboard["uid"], variable["name"], offered)
        for where, _panel, target in queries(dashboard):
            query = substitute(target["query"], values)
            answer = run_query(base, database, query)
            assert answer, f"{where}: no series for {query}"
            assert check_plausible(where, query, answer) > 0, f"{where}: no rows for {query}"
        for panel in dashboard["panels"]:
            if "transformations" not in panel:
                continue
            frames = {}
            for target in panel["targets"]:
                (series,) = run_query(base, database, substitute(target["query"], values))
                frames[target["alias"]] = {row[0]: row[1] for row in series["values"] if row[1] is not None}
            results = apply_transformations(panel, frames)
            shown = [name for name in results if name not in frames]
            assert shown, panel["title"]
            for name in shown:
                assert results[name], f"{panel['title']}: {name} is empty"
                for value in results[name].values():
                    assert math.isfinite(value)
                    assert 0 <= value <= 10_000, f"{panel['title']}: {name}={value}"


def test_readings_and_rollups_are_where_the_variables_say(filled: Filled) -> None:
    """With raw retention the default policy holds no reading or rollup: the files' defaults would show empty
    panels, and only the pushed variables find the data. Health points stay in the default policy."""
    listed = run_query(filled.base, filled.database, "SHOW RETENTION POLICIES")
    policies = {row[0] for series in listed for row in series["values"]}
    counted = {}
    for policy in sorted(policies):
        for measurement in (lp.MEASUREMENT, lp.AGGREGATE_MEASUREMENT, HEALTH_MEASUREMENT):
            answer = run_query(filled.base, filled.database, f'SELECT count(*) FROM "{policy}"."{measurement}"')
            counted[(policy, measurement)] = bool(answer)
    default = dashboard_build.DEFAULT_POLICY
    if filled.retention:
        assert {RAW_POLICY, ROLLUP_POLICY} <= policies
        where = {lp.MEASUREMENT: RAW_POLICY, lp.AGGREGATE_MEASUREMENT: ROLLUP_POLICY, HEALTH_MEASUREMENT: default}
    else:
        assert not {RAW_POLICY, ROLLUP_POLICY} & policies
        where = dict.fromkeys((lp.MEASUREMENT, lp.AGGREGATE_MEASUREMENT, HEALTH_MEASUREMENT), default)
    assert {key for key, found in counted.items() if found} == {(policy, m) for m, policy in where.items()}
    shown = filled.dashboards()
    for name, dashboard in shown.items():
        values = variables(dashboard)
        for measurement, policy in where.items():
            variable = POLICY_VARIABLE[measurement]
            if variable in values:
                assert values[variable] == policy, (name, variable)
    if filled.retention:  # the files as shipped read the default policy: the stack panels are empty there
        stack = load_dashboards()["aua-stack-detail.json"]
        for label, _, target in queries(stack):
            query = substitute(target["query"], variables(stack))
            assert run_query(filled.base, filled.database, query) == [], label


def test_health_points_carry_the_documented_fields(filled: Filled) -> None:
    points = filled.points
    gateways = [p for p in points if p.component == "gateway"]
    agents = {(p.site, p.agent) for p in points if p.component == "agent"}
    assert len(gateways) >= 3
    demo = {("pavlodar-chp", "chp-stack1"), ("pavlodar-ambient", "pvl-station-1")}
    assert demo <= agents  # the session broker may also hold retained status of other tests' agents
    for point in points:
        allowed = lp.HEALTH_GATEWAY_FIELDS if point.component == "gateway" else lp.HEALTH_AGENT_FIELDS
        assert set(point.fields) <= set(allowed), point
    last = gateways[-1].fields
    assert last["messages"] > 0
    assert last["dead_letters"] == 0
    assert last["broker_connected"] in (0, 1)
    final = {(p.site, p.agent): p.fields for p in points if p.component == "agent" and (p.site, p.agent) in demo}
    for fields in final.values():
        assert fields["batches"] >= 3
        assert fields["missing"] == 0
        assert fields["online"] in (0, 1)
