"""The Grafana dashboards under dashboards/json/, built from code so limits and names come from one place.

`python -m gateway.dashboards.build [DIR]` writes them (default: dashboards/json next to this package);
tests/gateway/dashboards/test_dashboards.py fails when the files differ from what this module builds, so edit here, then
run it.

Every panel reads InfluxDB through Grafana's InfluxQL data source of uid `aua-influxdb`
(dashboards/provisioning/datasources/aua-influxdb.yaml), the measurements the gateway writes:
`reading` (raw), `rollup` (1m, 1h, ... aggregates) and `aua_health` (gateway and agent accounting).

Each measurement is named with its retention policy through a template variable, `"$raw_rp"."reading"`,
`"$rollup_rp"."rollup"` and `"$health_rp"."aua_health"`: with `[store] raw_retention_days` set the gateway writes
readings to the policy `aua_raw` and rollups to `aua_rollup` (gateway/stores/retention.py), otherwise
everything goes to the database's default policy (`autogen`, or the store URL's `?rp=`). The files default to
`autogen` (the shipped deployment keeps raw data forever); `cems-gateway dashboards push CONFIG` sets the
variables from the gateway's config (gateway/dashboards/grafana.py), and each is a drop-down on the dashboard.

Units on the ambient dashboard: SO2 and NO2 arrive in ppb (config/profiles/ambient-gas-analyzer.toml) and
PM in µg/m³; the panels convert them in the query to mg/m³ at 0 °C and 101.3 kPa (docs/regulatory-basis.md §2: ppb ×
M / 22.42 / 1000), so the thresholds are the ПДК of regulatory-basis.md §5 as written there. Mercury stays in ng/m³.

O2-corrected concentrations and mass rates are computed by Grafana transformations (join by time, then
binary calculations): InfluxQL cannot combine two series (so2 and o2) in one expression.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from gateway.alerts.rules import AMBIENT_PDK
from gateway.mrv.rollup import Period
from gateway.stores.base import HEALTH_MEASUREMENT
from gateway.stores.line_protocol import AGGREGATE_MEASUREMENT, MEASUREMENT
from gateway.stores.retention import RAW_POLICY, ROLLUP_POLICY
from gateway.units import mg_m3_per_ppm

DATASOURCE_UID: Final = "aua-influxdb"
DATASOURCE: Final = {"type": "influxdb", "uid": DATASOURCE_UID}
FOLDER: Final = "Aua"
DEFAULT_DIR: Final = Path(__file__).resolve().parents[2] / "dashboards" / "json"

STACK_SITE: Final = "pavlodar-chp"
AMBIENT_SITE: Final = "pavlodar-ambient"
REFERENCE_O2: Final = 6.0
"""% vol dry, solid fuel (config/demo-gateway.toml `fuel = "solid"`)."""

STACK_ELV: Final = {"so2": 1000.0, "nox": 600.0, "co": 400.0, "dust": 100.0}
"""mg/Nm³ dry at 6 % O2, the example permit of config/demo-gateway.toml: a guide line, not a compliance test
(compliance is judged on validated daily means in the MRV report)."""

STATIONS: Final = {
    AMBIENT_SITE: {"name": "Pavlodar station 1", "latitude": 52.2874, "longitude": 76.9674},
}
"""Where each ambient site stands (WGS 84). Add a station here and rebuild the dashboards."""

HG_LIMIT_NG_M3: Final = 300.0

DEFAULT_POLICY: Final = "autogen"
"""The retention policy InfluxDB 1.x creates with a database (and deploy/influxdb/init.sh maps for 2.x)."""
RAW_RP: Final = "raw_rp"
ROLLUP_RP: Final = "rollup_rp"
HEALTH_RP: Final = "health_rp"
POLICY_CHOICES: Final = {
    RAW_RP: (DEFAULT_POLICY, RAW_POLICY),
    ROLLUP_RP: (DEFAULT_POLICY, ROLLUP_POLICY),
    HEALTH_RP: (DEFAULT_POLICY,),
}
"""The drop-down's values per retention-policy variable; the first is the files' default."""
RAW: Final = f'"${RAW_RP}"."{MEASUREMENT}"'
ROLLUP: Final = f'"${ROLLUP_RP}"."{AGGREGATE_MEASUREMENT}"'
HEALTH: Final = f'"${HEALTH_RP}"."{HEALTH_MEASUREMENT}"'

RED: Final = "red"
ORANGE: Final = "orange"
GREEN: Final = "green"


def ppb_to_mg_m3(species: str) -> float:
    """mg/m³ per ppb at 0 °C, 101.3 kPa (docs/regulatory-basis.md §2, gateway/units.py), the factor the ambient
    queries multiply by."""
    return round(mg_m3_per_ppm(species) / 1000, 8)


def _limit(parameter: str) -> tuple[float | None, float | None]:
    for limit in AMBIENT_PDK:
        if limit.parameter == parameter:
            return limit.one_time, limit.daily
    raise KeyError(parameter)


# -- building blocks ----------------------------------------------------------------------------------------


def _target(ref: str, query: str, *, alias: str | None = None, table: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {
        "refId": ref,
        "datasource": DATASOURCE,
        "rawQuery": True,
        "query": query,
        "resultFormat": "table" if table else "time_series",
    }
    if alias:
        target["alias"] = alias
    return target


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def _panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    *,
    grid: tuple[int, int, int, int],
    unit: str | None = None,
    thresholds: dict[str, Any] | None = None,
    description: str = "",
    transformations: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    defaults: dict[str, Any] = {}
    if unit:
        defaults["unit"] = unit
    if thresholds:
        defaults["thresholds"] = thresholds
    if custom:
        defaults["custom"] = custom
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options or {},
    }
    if description:
        panel["description"] = description
    if transformations:
        panel["transformations"] = transformations
    return panel


def _limit_lines(*steps: tuple[float | None, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Thresholds drawn as dashed lines on a time series."""
    return _thresholds(*steps), {"thresholdsStyle": {"mode": "dashed"}}


def _variable(name: str, query: str, current: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": False,
        "includeAll": False,
        "current": {"text": current, "value": current},
    }


def _policy_variable(name: str, label: str, measurement: str) -> dict[str, Any]:
    """A drop-down naming the retention policy `measurement` is read from; `dashboards push` sets it."""
    choices = POLICY_CHOICES[name]
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "description": f"InfluxDB retention policy of measurement {measurement!r}: {RAW_POLICY}/{ROLLUP_POLICY} "
        f"when the gateway has [store] raw_retention_days, else the database's default ({DEFAULT_POLICY} or the "
        "store URL's ?rp=). `cems-gateway dashboards push CONFIG` sets it from the gateway's config.",
        "query": ",".join(choices),
        "options": [{"text": choice, "value": choice, "selected": choice == choices[0]} for choice in choices],
        "current": {"text": choices[0], "value": choices[0]},
        "multi": False,
        "includeAll": False,
    }


def _policy_variables(*names: str) -> list[dict[str, Any]]:
    labels = {
        RAW_RP: ("Raw policy", MEASUREMENT),
        ROLLUP_RP: ("Rollup policy", AGGREGATE_MEASUREMENT),
        HEALTH_RP: ("Health policy", HEALTH_MEASUREMENT),
    }
    return [_policy_variable(name, *labels[name]) for name in names]


SITE_QUERY: Final = f'SHOW TAG VALUES FROM {RAW} WITH KEY = "site"'
INSTRUMENT_QUERY: Final = f'SHOW TAG VALUES FROM {RAW} WITH KEY = "instrument" WHERE "site" =~ /^$site$/'
PARAMETER_QUERY: Final = (
    f'SHOW TAG VALUES FROM {RAW} WITH KEY = "parameter" WHERE "site" =~ /^$site$/ AND "instrument" =~ /^$instrument$/'
)

ALERT_ANNOTATIONS: Final = {
    "list": [
        {
            "name": "Aua alerts",
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "iconColor": "red",
            "target": {"type": "tags", "tags": ["aua", "alert"], "matchAny": False, "limit": 200},
        }
    ]
}
"""The gateway's GrafanaAnnotationNotifier posts alerts as annotations tagged `aua` and `alert`
(gateway/alerts/notify.py)."""


def _dashboard(uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]]) -> dict[str, Any]:
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return {
        "uid": uid,
        "title": title,
        "tags": ["aua"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": ALERT_ANNOTATIONS,
        "templating": {"list": variables},
        "links": [{"type": "dashboards", "tags": ["aua"], "asDropdown": True, "title": "Aua dashboards"}],
        "panels": panels,
    }


# -- the dashboards -----------------------------------------------------------------------------------------


def plant_overview() -> dict[str, Any]:
    site = _variable("site", SITE_QUERY, STACK_SITE, "Site")
    panels = [
        _panel(
            "stat",
            "Live values",
            [
                _target(
                    "A",
                    f'SELECT last("value") FROM {RAW} WHERE "site" =~ /^$site$/ AND $timeFilter '
                    'GROUP BY "instrument", "parameter"',
                    alias="$tag_instrument $tag_parameter",
                )
            ],
            grid=(0, 0, 24, 8),
            description="The last raw reading of every instrument and parameter of the site.",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "area"},
        ),
        _panel(
            "table",
            "Instrument status",
            [
                _target(
                    "A",
                    f'SELECT last("quality") AS "quality", last("status") AS "status word", last("value") AS "value", '
                    f'last("unit") AS "unit" FROM {RAW} WHERE "site" =~ /^$site$/ AND $timeFilter '
                    'GROUP BY "instrument", "parameter"',
                    table=True,
                )
            ],
            grid=(0, 8, 24, 10),
            description="NAMUR NE107 quality of the last reading (ok, check_function, maintenance_required, ...).",
        ),
    ]
    for index, (parameter, elv) in enumerate(STACK_ELV.items()):
        thresholds, custom = _limit_lines((None, GREEN), (elv, RED))
        panels.append(
            _panel(
                "timeseries",
                f"{parameter}: 1-minute means vs ELV {elv:g}",
                [
                    _target(
                        "A",
                        f'SELECT mean("value") FROM {ROLLUP} WHERE "site" =~ /^$site$/ '
                        f"AND \"period\" = '1m' AND \"parameter\" = '{parameter}' AND $timeFilter "
                        'GROUP BY time($__interval), "instrument" fill(none)',
                        alias="$tag_instrument",
                    )
                ],
                grid=(6 * index, 18, 6, 8),
                unit="conc. mg/m³",
                thresholds=thresholds,
                custom=custom,
                description="As measured. The ELV line (example permit, mg/Nm³ dry at 6 % O2) is a guide: "
                "compliance is judged on validated, O2-corrected daily means (stack detail, MRV report).",
            )
        )
    return _dashboard(
        "aua-plant-overview", "Aua · Plant overview", panels, [*_policy_variables(RAW_RP, ROLLUP_RP), site]
    )


def stack_detail() -> dict[str, Any]:
    variables = [
        *_policy_variables(RAW_RP, ROLLUP_RP),
        _variable("site", SITE_QUERY, STACK_SITE, "Site"),
        _variable("instrument", INSTRUMENT_QUERY, "stack1-gas", "Instrument"),
        _variable("parameter", PARAMETER_QUERY, "so2", "Parameter"),
    ]
    where = '"site" =~ /^$site$/ AND "instrument" =~ /^$instrument$/ AND "parameter" =~ /^$parameter$/'
    minute = f"{ROLLUP} WHERE {where} AND \"period\" = '1m' AND $timeFilter"
    hour = f"{ROLLUP} WHERE {where} AND \"period\" = '1h' AND $timeFilter"
    site_minute = '"site" =~ /^$site$/ AND "period" = \'1m\' AND $timeFilter'
    per_pixel = "GROUP BY time($__interval) fill(none)"
    """Every 1-minute sample when zoomed in; over a year ~1,000 means instead of 525,600 points per series."""
    headroom = 21 - REFERENCE_O2
    join = {"id": "joinByField", "options": {"byField": "Time", "mode": "outer"}}

    def calc(left: str, operator: str, right: str, alias: str) -> dict[str, Any]:
        return {
            "id": "calculateField",
            "options": {
                "mode": "binary",
                "binary": {"left": left, "operator": operator, "right": right},
                "alias": alias,
                "replaceFields": False,
            },
        }

    def hide(*names: str) -> dict[str, Any]:
        return {"id": "organize", "options": {"excludeByName": dict.fromkeys(names, True)}}

    panels = [
        _panel(
            "timeseries",
            "Raw readings",
            [
                _target(
                    "A",
                    f'SELECT mean("value") AS "mean", min("value") AS "min", max("value") AS "max" '
                    f"FROM {RAW} WHERE {where} AND $timeFilter GROUP BY time($__interval) fill(none)",
                    alias="raw $col",
                )
            ],
            grid=(0, 0, 24, 8),
            description="Every sample when zoomed in; zoomed out, the mean and the envelope (min, max) per "
            "pixel, so a year-long range sends Grafana ~1,000 points, not millions. Raw data are kept for the "
            "store's raw retention; older periods live in the 1-minute and hourly panels.",
        ),
        _panel(
            "timeseries",
            "1-minute means and their coverage",
            [
                _target("A", f'SELECT mean("value") FROM {minute} {per_pixel}', alias="1-minute mean"),
                _target(
                    "B",
                    f'SELECT sum("n_valid") * 100 / sum("n_expected") FROM {minute} {per_pixel}',
                    alias="coverage %",
                ),
            ],
            grid=(0, 8, 12, 8),
            description="Coverage = usable samples / samples received; a minute is valid at ≥ 50 %. Zoomed out, "
            "each point is the mean of the minutes under one pixel.",
        ),
        _panel(
            "table",
            "Hourly means with validity",
            [
                _target(
                    "A",
                    f'SELECT "value" AS "mean", "valid", "n_valid" AS "valid minutes", "n_expected" AS "expected", '
                    f'"n_maintenance" AS "maintenance", "n_flagged" AS "flagged minutes", "reason", "substituted", '
                    f'"unit" FROM {hour}',
                    table=True,
                )
            ],
            grid=(12, 8, 12, 8),
            description="Hour validity follows the source's rule set (ied-lcp: ≥ 2/3 valid minutes); flagged "
            "minutes are valid ones whose samples were used but flagged (maintenance required, out of spec).",
        ),
        _panel(
            "timeseries",
            f"O2-corrected to {REFERENCE_O2:g} % (1-minute)",
            [
                _target("A", f'SELECT mean("value") FROM {minute} {per_pixel}', alias="measured"),
                _target(
                    "B",
                    f'SELECT mean("value") FROM {ROLLUP} WHERE {site_minute} AND "parameter" = \'o2\' {per_pixel}',
                    alias="o2",
                ),
            ],
            grid=(0, 16, 12, 8),
            description=f"c × (21 − {REFERENCE_O2:g}) / (21 − O2), O2 dry % vol from the site's analyzer; "
            "meaningful for concentrations in mg/Nm³ dry.",
            transformations=[
                join,
                calc("21", "-", "o2", "o2 headroom"),
                calc("measured", "*", f"{headroom:g}", "measured x headroom"),
                calc("measured x headroom", "/", "o2 headroom", f"at {REFERENCE_O2:g} % O2"),
                hide("o2 headroom", "measured x headroom"),
            ],
        ),
        _panel(
            "timeseries",
            "Mass rate (1-minute)",
            [
                _target("A", f'SELECT mean("value") FROM {minute} {per_pixel}', alias="measured"),
                _target(
                    "B",
                    f'SELECT mean("value") FROM {ROLLUP} WHERE {site_minute} AND "parameter" = \'flow\' {per_pixel}',
                    alias="flow",
                ),
            ],
            grid=(12, 16, 12, 8),
            unit="kg/h",
            description="mg/Nm³ × Nm³/h / 10⁶ = kg/h (dry standard flow from the flow meter).",
            transformations=[
                join,
                calc("measured", "*", "flow", "measured x flow"),
                calc("measured x flow", "/", "1000000", "mass rate kg/h"),
                hide("measured", "flow", "measured x flow"),
            ],
        ),
    ]
    return _dashboard("aua-stack-detail", "Aua · Stack detail", panels, variables)


def ambient_network() -> dict[str, Any]:
    site = _variable("site", SITE_QUERY, AMBIENT_SITE, "Site")
    where = '"site" =~ /^$site$/ AND $timeFilter'
    group = 'GROUP BY time($__interval), "instrument" fill(none)'

    def minute_means(parameter: str, factor: float = 1.0) -> str:
        """The mean of the 1-minute rollups per interval: a year-long range reads 525,600 points per series,
        not the 31.5 million raw samples of a 1 s analyzer (which the raw retention has dropped anyway)."""
        scaled = f" * {factor:g}" if factor != 1.0 else ""
        return (
            f'SELECT mean("value"){scaled} FROM {ROLLUP} WHERE "parameter" = \'{parameter}\' '
            f"AND \"period\" = '{Period.MINUTE}' AND {where} {group}"
        )

    def converted(parameter: str, factor: float, title: str) -> dict[str, Any]:
        one_time, daily = _limit(parameter)
        thresholds, custom = _limit_lines((None, GREEN), (daily, ORANGE), (one_time, RED))
        return _panel(
            "timeseries",
            title,
            [_target("A", minute_means(parameter, factor), alias=f"{parameter} mg/m³")],
            grid=(0, 0, 12, 8),
            unit="conc. mg/m³",
            thresholds=thresholds,
            custom=custom,
            description=f"1-minute means, converted in the query (× {factor:g}). Lines: daily-mean ПДК "
            f"{daily:g} (orange), one-time ПДК {one_time:g} mg/m³ (red), hygienic standards of Order ҚР ДСМ-70 "
            "(2 Aug 2022). The one-time ПДК applies to a 20–30 minute "
            "mean, the daily one to the calendar day's mean.",
        )

    markers = []
    for index, (station, place) in enumerate(sorted(STATIONS.items())):
        markers.append(
            _target(
                chr(ord("A") + index),
                f'SELECT last("value") AS "hg", last("value") * 0 + {place["latitude"]} AS "latitude", '
                f'last("value") * 0 + {place["longitude"]} AS "longitude" FROM {RAW} '
                f'WHERE "site" = \'{station}\' AND "parameter" = \'hg\' AND $timeFilter GROUP BY "site"',
                table=True,
            )
        )
    hg_thresholds, hg_custom = _limit_lines((None, GREEN), (HG_LIMIT_NG_M3, RED))
    panels = [
        _panel(
            "geomap",
            "Stations: gaseous mercury (ng/m³)",
            markers,
            grid=(0, 0, 12, 12),
            unit="ng/m³",
            thresholds=_thresholds((None, GREEN), (HG_LIMIT_NG_M3 / 10, ORANGE), (HG_LIMIT_NG_M3, RED)),
            description="Station coordinates live in gateway/dashboards/build.py (STATIONS).",
            options={
                "view": {"id": "coords", "lat": 52.28, "lon": 76.97, "zoom": 10},
                "basemap": {"type": "default", "name": "Basemap"},
                "layers": [
                    {
                        "type": "markers",
                        "name": "stations",
                        "location": {"mode": "coords", "latitude": "latitude", "longitude": "longitude"},
                        "config": {
                            "showLegend": True,
                            "style": {
                                "color": {"field": "hg", "fixed": "dark-green"},
                                "size": {"fixed": 10, "min": 6, "max": 20, "field": "hg"},
                                "text": {"field": "site", "mode": "field"},
                            },
                        },
                    }
                ],
            },
        ),
        _panel(
            "timeseries",
            "Gaseous mercury (ng/m³)",
            [_target("A", minute_means("hg"), alias="hg")],
            grid=(12, 0, 12, 12),
            unit="ng/m³",
            thresholds=hg_thresholds,
            custom=hg_custom,
            description="Line: daily-mean ПДК 300 ng/m³ (regulatory-basis.md §5); Pavlodar urban background ≈ 5 ng/m³.",
        ),
        converted("so2", ppb_to_mg_m3("so2"), "SO2 (mg/m³, from ppb)"),
        converted("no2", ppb_to_mg_m3("no2"), "NO2 (mg/m³, from ppb)"),
        converted("pm25", 0.001, "PM2.5 (mg/m³, from µg/m³)"),
        converted("pm10", 0.001, "PM10 (mg/m³, from µg/m³)"),
        _panel(
            "timeseries",
            "Wind",
            [
                _target("A", minute_means("wind_speed"), alias="speed m/s"),
                _target(
                    "B",
                    f'SELECT last("value") FROM {RAW} WHERE "parameter" = \'wind_dir\' AND {where} {group}',
                    alias="from (deg)",
                ),
            ],
            grid=(0, 20, 24, 8),
            description="Speed: 1-minute means. Direction the wind comes from, degrees clockwise from north "
            "(right axis): the last raw sample per interval, since an arithmetic mean of directions is wrong "
            "across north (350° and 10° average to 180°).",
        ),
    ]
    # lay the four converted panels out two by two below the map
    for index, panel in enumerate(panels[2:6]):
        panel["gridPos"] = {"x": 12 * (index % 2), "y": 12 + 8 * (index // 2), "w": 12, "h": 8}
    panels[6]["gridPos"]["y"] = 28
    return _dashboard(
        "aua-ambient", "Aua · Ambient network (Pavlodar)", panels, [*_policy_variables(RAW_RP, ROLLUP_RP), site]
    )


def data_quality() -> dict[str, Any]:
    site = _variable("site", SITE_QUERY, STACK_SITE, "Site")
    minutes = f'{ROLLUP} WHERE "site" =~ /^$site$/ AND "period" = \'1m\' AND $timeFilter'
    hours = f'{ROLLUP} WHERE "site" =~ /^$site$/ AND "period" = \'1h\' AND $timeFilter'
    """Totals over the whole range read hours: a year is 8,760 points per series instead of 525,600 minutes."""
    panels = [
        _panel(
            "bargauge",
            "Data availability per instrument (valid minutes, %)",
            [
                _target(
                    "A",
                    f'SELECT sum("n_valid") * 100 / sum("n_expected") FROM {hours} GROUP BY "instrument"',
                    alias="$tag_instrument",
                )
            ],
            grid=(0, 0, 12, 8),
            unit="percent",
            thresholds=_thresholds((None, RED), (75, ORANGE), (90, GREEN)),
            description="Valid minutes out of the minutes of the hours in range, from the hourly rollups (so a "
            "year-long range reads 8,760 points per series). The hour in progress counts as a whole hour, so a "
            "short range reads low until that hour is over.",
            options={"reduceOptions": {"calcs": ["mean"]}, "orientation": "horizontal"},
        ),
        _panel(
            "timeseries",
            "Readings stored per interval",
            [
                _target(
                    "A",
                    f'SELECT sum("n_expected") FROM {minutes} GROUP BY time($__interval), "instrument" fill(0)',
                    alias="$tag_instrument",
                )
            ],
            grid=(12, 0, 12, 8),
            description="Samples received per interval, from the 1-minute rollups (so a year-long range stays "
            "fast). A drop to 0 is a gap: the instrument, the agent or the link stopped.",
        ),
        _panel(
            "timeseries",
            "Samples in maintenance or check per interval",
            [
                _target(
                    "A",
                    f'SELECT sum("n_maintenance") FROM {minutes} GROUP BY time($__interval), "instrument" fill(0)',
                    alias="$tag_instrument",
                )
            ],
            grid=(0, 8, 12, 8),
        ),
        _panel(
            "table",
            "Hours per instrument: valid minutes of expected",
            [
                _target(
                    "A",
                    f'SELECT count("n_valid") AS "hours", sum("n_valid") AS "valid minutes", '
                    f'sum("n_expected") AS "expected minutes" FROM {hours} GROUP BY "instrument", "parameter"',
                    table=True,
                )
            ],
            grid=(12, 8, 12, 8),
        ),
    ]
    return _dashboard(
        "aua-data-quality", "Aua · Data availability and quality", panels, [*_policy_variables(RAW_RP, ROLLUP_RP), site]
    )


def health() -> dict[str, Any]:
    agents = f"{HEALTH} WHERE \"component\" = 'agent' AND $timeFilter"
    gateways = f"{HEALTH} WHERE \"component\" = 'gateway' AND $timeFilter"
    per_agent = 'GROUP BY time($__interval), "site", "agent" fill(none)'
    per_gateway = 'GROUP BY time($__interval), "id" fill(none)'
    panels = [
        _panel(
            "table",
            "Agents: accounting (last value)",
            [
                _target(
                    "A",
                    'SELECT last("online") AS "online", last("batches") AS "batches", last("readings") AS "readings", '
                    'last("missing") AS "missing", last("duplicates") AS "duplicates", '
                    'last("resend_requests") AS "resend requests", last("next_seq") AS "next seq", '
                    'last("backlog") AS "outbox backlog", last("dropped") AS "dropped", '
                    f'last("status_age_s") AS "status age s" FROM {agents} GROUP BY "site", "agent", "id"',
                    table=True,
                )
            ],
            grid=(0, 0, 24, 7),
            description="From the gateway's ledger (id = the gateway that counted); next seq and dropped as the "
            "agent last reported them; outbox backlog = sealed by the agent, not yet stored.",
        ),
        _panel(
            "timeseries",
            "Agents: outbox backlog (batches)",
            [_target("A", f'SELECT last("backlog") FROM {agents} {per_agent}', alias="$tag_site/$tag_agent")],
            grid=(0, 7, 12, 8),
        ),
        _panel(
            "timeseries",
            "Agents: missing batches (gaps)",
            [_target("A", f'SELECT last("missing") FROM {agents} {per_agent}', alias="$tag_site/$tag_agent")],
            grid=(12, 7, 12, 8),
        ),
        _panel(
            "timeseries",
            "Gateway: messages per second",
            [
                _target(
                    "A",
                    f'SELECT non_negative_derivative(last("messages"), 1s) FROM {gateways} {per_gateway}',
                    alias="$tag_id",
                )
            ],
            grid=(0, 15, 12, 8),
            unit="mps",
        ),
        _panel(
            "timeseries",
            "Gateway: spool and write queue depth",
            [
                _target(
                    "A",
                    f'SELECT last("spool_depth") AS "spool", last("queue_depth") AS "queue" FROM {gateways} '
                    f"{per_gateway}",
                    alias="$tag_id $col",
                )
            ],
            grid=(12, 15, 12, 8),
            description="Spool > 0: the store was unreachable and batches wait on the gateway's disk.",
        ),
        _panel(
            "stat",
            "Gateway: dead letters, store retries, broker",
            [
                _target(
                    "A",
                    f'SELECT last("dead_letters") AS "dead letters", last("store_retries") AS "store retries", '
                    f'last("broker_connected") AS "broker connected" FROM {gateways} GROUP BY "id"',
                    alias="$tag_id $col",
                )
            ],
            grid=(0, 23, 24, 5),
            description="Counters since the gateway started; `cems-gateway dead-letters` lists them.",
        ),
    ]
    return _dashboard("aua-health", "Aua · Agent and gateway health", panels, _policy_variables(HEALTH_RP))


BUILDERS: Final = (plant_overview, stack_detail, ambient_network, data_quality, health)


def build_all() -> dict[str, dict[str, Any]]:
    """file name -> dashboard JSON model."""
    return {f"{dashboard['uid']}.json": dashboard for dashboard in (build() for build in BUILDERS)}


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def write_all(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dashboard in build_all().items():
        path = directory / name
        path.write_text(render(dashboard), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR):
        print(written_path)
