"""Every Grafana panel query over a year of history, at steady state (issue 12).

Fills a real influxd 1.6 with what the demo's two sites (24 series) accumulate: 1-minute, hourly and daily
rollups for `--days` (default 365), raw readings at 1 s for the last `--raw-hours` (default 24: raw data older
than the store's raw retention are gone, rollups stay) and a health point every 10 s from two agents and one
gateway for the whole period. Then runs every panel query of every dashboard (template variables at their
defaults, `$__interval` as Grafana would pick it for ~1,000 points) for the ranges 1 h (the baseline, measured
the same way in the same run), 1 d, 30 d and the whole period, `--repeats` times interleaved, and prints
min/median/max per query and range. Exits 1 when a query's median over the whole period exceeds `--budget-s`.

With `--retention`, readings and rollups go to the retention policies the gateway creates with `[store]
raw_retention_days` (aua_raw, aua_rollup; health stays in the default policy), and the dashboards' policy
variables take the values `cems-gateway dashboards push` sets for that config.

Run: .venv/bin/python bench/dashboard_queries.py [--days 365] [--budget-s 3] [--retention]
Everything runs on loopback (influxd started here in a temporary folder) and stops by itself.
"""

from __future__ import annotations

import argparse
import gzip
import math
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _harness import TreeMonitor, machine_note  # noqa: E402
from servers import InfluxServer  # noqa: E402

from aua_contract import Quality  # noqa: E402
from aua_demo.sites import demo_sites  # noqa: E402
from gateway.dashboards import build as dashboard_build  # noqa: E402
from gateway.dashboards.grafana import Policies, with_policies  # noqa: E402
from gateway.mrv.rollup import Aggregate, Period  # noqa: E402
from gateway.stores import StoredReading  # noqa: E402
from gateway.stores import line_protocol as lp  # noqa: E402
from gateway.stores.base import HEALTH_NOT_APPLICABLE, HealthPoint  # noqa: E402
from gateway.stores.retention import RAW_POLICY, ROLLUP_POLICY  # noqa: E402

DATABASE = "aua"
LINES_PER_WRITE = 20_000
HEALTH_INTERVAL_S = 10
RANGES = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "30d": timedelta(days=30)}
POINTS_PER_PANEL = 1000
"""Grafana's $__interval is roughly the range divided by the panel's width in pixels; ~1,000 is a wide panel."""


def series() -> list[tuple[str, str, str, str, str]]:
    """(site, agent, instrument, parameter, unit) of every tag of the demo's sites."""
    return [
        (site.config.agent.site, site.config.agent.id, instrument.id, tag.name, tag.unit)
        for site in demo_sites()
        for instrument in site.instruments
        for tag in instrument.profile.tag
    ]


def _value(n: int, parameter: str) -> float:
    """A plausible, changing value: positive, with daily and minute-scale variation."""
    base = 50.0 if parameter not in ("o2", "co2", "h2o") else 8.0
    return round(base * (1.2 + math.sin(n / 1440 * 2 * math.pi) * 0.5 + (n * 7919 % 97) / 970), 4)


def _aggregate_prefix(site: str, instrument: str, parameter: str, unit: str, *, period: Period, n: int) -> str:
    """The line of a valid aggregate up to its value, from the gateway's own formatter (so names cannot drift)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    line = lp.format_aggregate_line(Aggregate(site, instrument, parameter, period, start, 1.5, n, n, True, unit=unit))
    return line.rsplit(",value=", 1)[0] + ",value="


def lines(days: int, raw_hours: int, end: datetime) -> Iterator[str]:
    """Every line of the history, oldest period first per kind."""
    start = end - timedelta(days=days)
    start_ns = int(start.timestamp()) * 10**9
    for site, agent, instrument, parameter, unit in series():
        for period, step_s, n in ((Period.MINUTE, 60, 60), (Period.HOUR, 3600, 60), (Period.DAY, 86400, 24)):
            prefix = _aggregate_prefix(site, instrument, parameter, unit, period=period, n=n)
            for index in range(days * 86400 // step_s):
                yield f"{prefix}{_value(index * step_s // 60, parameter)} {start_ns + index * step_s * 10**9}"
        reading = StoredReading(site, agent, instrument, parameter, end, 1.5, unit, Quality.OK, 0)
        head = lp.format_line(reading).rsplit(",value=", 1)[0] + ",value="
        raw_start_ns = int((end - timedelta(hours=raw_hours)).timestamp()) * 10**9
        for second in range(raw_hours * 3600):
            yield f"{head}{_value(second // 60, parameter)} {raw_start_ns + second * 10**9}"
    sites = sorted({(site, agent) for site, agent, *_ in series()})
    for index in range(days * 86400 // HEALTH_INTERVAL_S):
        ts = start + timedelta(seconds=index * HEALTH_INTERVAL_S)
        for site, agent in sites:
            fields = dict.fromkeys(lp.HEALTH_AGENT_FIELDS, index)
            yield lp.format_health_line(HealthPoint("agent", "gw1", site, agent, ts, fields))
        yield lp.format_health_line(
            HealthPoint(
                "gateway",
                "gw1",
                HEALTH_NOT_APPLICABLE,
                HEALTH_NOT_APPLICABLE,
                ts,
                dict.fromkeys(lp.HEALTH_GATEWAY_FIELDS, 1),
            )
        )


def fill(client: httpx.Client, days: int, raw_hours: int, end: datetime, policies: Policies) -> int:
    client.post("/query", params={"q": f'CREATE DATABASE "{DATABASE}"'}).raise_for_status()
    for policy in {policies.raw, policies.rollup} - {dashboard_build.DEFAULT_POLICY}:
        statement = f'CREATE RETENTION POLICY "{policy}" ON "{DATABASE}" DURATION INF REPLICATION 1'
        client.post("/query", params={"q": statement}).raise_for_status()
    policy_of = {lp.MEASUREMENT: policies.raw, lp.AGGREGATE_MEASUREMENT: policies.rollup}
    written, chunks, began = 0, {}, time.monotonic()
    for line in lines(days, raw_hours, end):
        policy = policy_of.get(line.split(",", 1)[0], policies.health)
        chunk = chunks.setdefault(policy, [])
        chunk.append(line)
        if len(chunk) == LINES_PER_WRITE:
            _write(client, chunk, policy)
            written += len(chunk)
            chunk.clear()
            if written % 2_000_000 == 0:
                print(f"  filled {written:,} points in {time.monotonic() - began:.0f} s", flush=True)
    for policy, chunk in chunks.items():
        if chunk:
            _write(client, chunk, policy)
            written += len(chunk)
    return written


def _write(client: httpx.Client, chunk: list[str], policy: str) -> None:
    body = gzip.compress("\n".join(chunk).encode(), compresslevel=1)
    response = client.post(
        "/write",
        params={"db": DATABASE, "precision": "ns", "rp": policy},
        content=body,
        headers={"Content-Encoding": "gzip"},
    )
    if response.status_code != 204:
        raise SystemExit(f"write refused: {response.status_code} {response.text[:300]}")


def _grafana_interval(span: timedelta) -> str:
    """About what Grafana picks: range / points, at least 1 s, in whole seconds."""
    return f"{max(1, int(span.total_seconds() // POINTS_PER_PANEL))}s"


def panel_queries(policies: Policies) -> list[tuple[str, str, dict[str, str]]]:
    """(where, InfluxQL with variables, the dashboard's variable values: defaults, policies as pushed)."""
    dashboards = [with_policies(dashboard, policies) for dashboard in dashboard_build.build_all().values()]
    return [
        (
            f"{dashboard['uid']} / {panel['title']} / {target['refId']}",
            target["query"],
            {v["name"]: v["current"]["value"] for v in dashboard["templating"]["list"]},
        )
        for dashboard in dashboards
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def substitute(query: str, values: dict[str, str], end: datetime, span: timedelta) -> str:
    begin_ns, end_ns = int((end - span).timestamp() * 1e9), int(end.timestamp() * 1e9)
    text = query.replace("$timeFilter", f"time >= {begin_ns} AND time <= {end_ns}")
    text = text.replace("$__interval", _grafana_interval(span))
    for name in sorted(values, key=len, reverse=True):
        text = text.replace(f"${name}", re.escape(values[name]) if f"/^${name}$/" in text else values[name])
    return text


def run_query(client: httpx.Client, query: str) -> tuple[float, int]:
    began = time.perf_counter()
    response = client.get("/query", params={"db": DATABASE, "q": query, "epoch": "ns"})
    elapsed = time.perf_counter() - began
    response.raise_for_status()
    body = response.json()
    rows = 0
    for result in body.get("results", []):
        if "error" in result:
            raise SystemExit(f"query failed: {result['error']}: {query}")
        rows += sum(len(s.get("values", [])) for s in result.get("series", []))
    return elapsed, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=365, help="history to fill, days (default 365)")
    parser.add_argument("--raw-hours", type=int, default=24, help="raw readings kept, hours (default 24)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=3.0, help="median latency allowed per query (default 3 s)")
    parser.add_argument(
        "--retention", action="store_true", help=f"readings in {RAW_POLICY}, rollups in {ROLLUP_POLICY} (raw retention)"
    )
    args = parser.parse_args(argv)
    policies = Policies(raw=RAW_POLICY, rollup=ROLLUP_POLICY) if args.retention else Policies()
    end = datetime.now(UTC).replace(microsecond=0)
    ranges = {**RANGES, f"{args.days}d": timedelta(days=args.days)}
    with tempfile.TemporaryDirectory(prefix="aua-bench-dash-") as folder:
        influx = InfluxServer(Path(folder))
        influx.start()
        try:
            with httpx.Client(base_url=influx.url, timeout=600) as client:
                print(f"filling {args.days} days of rollups and health, {args.raw_hours} h of raw, 24 series ...")
                began = time.monotonic()
                points = fill(client, args.days, args.raw_hours, end, policies)
                print(f"  {points:,} points in {time.monotonic() - began:.0f} s; letting influxd compact ...")
                time.sleep(5)
                assert influx.process is not None
                with TreeMonitor(influx.process.pid) as monitor:
                    status = measure(
                        client,
                        panel_queries(policies),
                        ranges,
                        end,
                        repeats=args.repeats,
                        budget_s=args.budget_s,
                        whole=f"{args.days}d",
                    )
                assert monitor.usage is not None
                usage = monitor.usage
                print(
                    f"influxd during the queries: {usage.cpu_s:.1f} CPU-s, peak RSS {usage.peak_rss_mb:.0f} MB (tree)"
                )
                print(machine_note([usage]))
                return status
        finally:
            influx.terminate()


def measure(
    client: httpx.Client,
    queries: list[tuple[str, str, dict[str, str]]],
    ranges: dict[str, timedelta],
    end: datetime,
    *,
    repeats: int,
    budget_s: float,
    whole: str,
) -> int:
    timings: dict[tuple[str, str], list[float]] = {}
    rows: dict[tuple[str, str], int] = {}
    for _ in range(repeats):  # interleaved: every query and range once per round
        for where, query, values in queries:
            for name, span in ranges.items():
                elapsed, count = run_query(client, substitute(query, values, end, span))
                timings.setdefault((where, name), []).append(elapsed)
                rows[(where, name)] = count
    print(f"\n{'panel query':<78} " + " ".join(f"{name:>22}" for name in ranges) + f" {'points at ' + whole:>16}")
    print(f"{'':<78} " + " ".join(f"{'median (min-max) s':>22}" for _ in ranges))
    over = []
    for where, _, _ in queries:
        cells = []
        for name in ranges:
            sample = timings[(where, name)]
            median = statistics.median(sample)
            cells.append(f"{median:7.3f} ({min(sample):.3f}-{max(sample):.3f})")
            if name == whole and median > budget_s:
                over.append((where, median))
        print(f"{where[:78]:<78} " + " ".join(f"{cell:>22}" for cell in cells) + f" {rows[(where, whole)]:>16,}")
    total = {name: sum(statistics.median(timings[(w, name)]) for w, _, _ in queries) for name in ranges}
    print(f"{'all panels, sum of medians':<78} " + " ".join(f"{total[name]:>22.3f}" for name in ranges))
    if over:
        print(f"\nover the {budget_s:g} s budget at {whole}:")
        for where, median in over:
            print(f"  {median:.2f} s  {where}")
        return 1
    print(f"\nevery query at {whole} within {budget_s:g} s (median of {repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
