"""The peers table (markdown) and plots (PNG) from one run's rows: median and min-max over the repeats."""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Any

LABELS = {
    "aua": "Aua edge agent",
    "thingsboard-gateway": "thingsboard-gateway",
    "node-red": "Node-RED + contrib-modbus",
}


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """`median (min–max)`, or the one value."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _groups(rows: list[dict[str, Any]], kind: str) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        if row["kind"] == kind:
            groups.setdefault((row["system"], row["devices"]), []).append(row)
    return groups


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# Beside the peers: {meta['started']} – {meta['finished']}",
        "",
        f"Command: `{meta['command']}`. Loaded machine (other jobs running): {meta['loads'][0]} at the start, "
        f"{meta['loads'][-1]} at the end. Each device: 30 float32 tags read every second, values changing every "
        f"second. Steady runs: {meta['repeats']} interleaved repeat(s) of {meta['window_s']:.0f} s; figures are "
        "median (min–max). CPU is of the system's whole process tree, in % of one core; tags per CPU-second "
        "count the distinct values the independent subscriber received during the window, not the reads "
        "attempted; served → delivered counts the values read in the window and those of them that arrived, "
        "however late (up to 90 s after). The simulator's CPU shows when it, not the system, was the limit.",
        "",
        "Versions: " + "; ".join(meta["versions"].values()) + ".",
        "",
        *([meta["note"], ""] if meta.get("note") else []),
        "| system | N | tags per CPU-second | CPU % | RSS MB | requests per device per cycle "
        "| delivered per s (of nominal) | served → delivered in the window | simulator CPU % | runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (system, devices), group in sorted(_groups(rows, "steady").items(), key=lambda item: (item[0][1], item[0][0])):
        served = sum(r["served"] for r in group)
        delivered = sum(r["delivered"] for r in group)
        lines.append(
            f"| {LABELS.get(system, system)} | {devices} | {spread([r['tags_per_cpu_s'] for r in group])} "
            f"| {spread([r['cpu_percent'] for r in group], '{:.1f}')} | {spread([r['rss_mb'] for r in group])} "
            f"| {spread([r['requests_per_device_cycle'] for r in group], '{:.1f}')} "
            f"| {spread([r['delivered_per_s'] for r in group])} (of {group[0]['nominal_per_s']:,}) "
            f"| {served:,} → {delivered:,} | {spread([r.get('simulator_cpu_percent') for r in group], '{:.0f}')} "
            f"| {len(group)} |"
        )
    if meta["thingsboard_max"] and any(r["system"] == "thingsboard-gateway" for r in rows):
        lines += [
            "",
            f"thingsboard-gateway runs only up to N={meta['thingsboard_max']}: it sends one Modbus request per tag "
            "(30 per device per second), so 500 devices would need 15,000 requests/s from the one simulator process.",
        ]
    outages = [r for r in rows if r["kind"] in ("broker", "broker+collector")]
    if outages:
        lines += [
            "",
            f"## {meta['outage_s']:.0f} s broker outage (kill -9) at N={meta['outage_devices']}",
            "",
            "Counted over the whole window (10 s before, the outage, 20 s after), after the system had time to "
            'catch up. "+ collector kill": the system itself is killed with kill -9 halfway through the outage '
            "and started again.",
            "",
            "| system | scenario | served → delivered | lost | duplicates received | catch-up s |",
            "|---|---|---|---|---|---|",
        ]
        for row in outages:
            lost = row["served"] - row["delivered"]
            share = 100 * lost / row["served"] if row["served"] else 0.0
            scenario = "broker kill -9" if row["kind"] == "broker" else "broker kill -9 + collector kill -9"
            lines.append(
                f"| {LABELS.get(row['system'], row['system'])} | {scenario} | {row['served']:,} → "
                f"{row['delivered']:,} | {lost:,} ({share:.1f} %) | {row['duplicates']:,} | {row['catch_up_s']} |"
            )
    failed = [r for r in rows if r["kind"] == "failed"]
    if failed:
        lines += ["", "## Runs that failed", ""]
        lines += [f"- {r['system']} N={r['devices']}: {r['error'].splitlines()[0]}" for r in failed]
    return "\n".join(lines) + "\n"


def plots(meta: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> None:
    """peers-efficiency.png (tags per CPU-s and RSS against N) and peers-outage.png (served vs delivered)."""
    import matplotlib  # noqa: PLC0415 - only the bench needs it (optional dependency group `bench`)

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    steady = _groups(rows, "steady")
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for system, label in LABELS.items():
        sizes = sorted(devices for name, devices in steady if name == system)
        if not sizes:
            continue
        for axis, key in ((left, "tags_per_cpu_s"), (right, "rss_mb")):
            values = [[r[key] for r in steady[(system, n)] if r[key] is not None] for n in sizes]
            mid = [median(v) for v in values]
            low = [m - min(v) for m, v in zip(mid, values, strict=True)]
            high = [max(v) - m for m, v in zip(mid, values, strict=True)]
            axis.errorbar(sizes, mid, yerr=[low, high], marker="o", capsize=4, label=label)
    left.set(xscale="log", xlabel="devices (x 30 float32 tags, 1 s)", ylabel="tags delivered per CPU-second")
    right.set(xscale="log", xlabel="devices (x 30 float32 tags, 1 s)", ylabel="RSS of the process tree, MB")
    for axis in (left, right):
        ticks = sorted({devices for _, devices in steady})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    left.legend(fontsize=8)
    figure.suptitle(f"Beside the peers, {meta['started'][:10]}, loaded machine: median, min–max", fontsize=10)
    figure.tight_layout()
    figure.savefig(out / "peers-efficiency.png", dpi=90)
    pyplot.close(figure)

    outages = [r for r in rows if r["kind"] in ("broker", "broker+collector")]
    if not outages:
        return
    figure, axis = pyplot.subplots(figsize=(9, 4))
    short = {"aua": "Aua", "thingsboard-gateway": "thingsboard-gw", "node-red": "Node-RED"}
    names = [
        f"{short.get(r['system'], r['system'])}\n{'broker' if r['kind'] == 'broker' else 'broker + collector'}"
        for r in outages
    ]
    positions = range(len(outages))
    axis.bar([p - 0.2 for p in positions], [r["served"] for r in outages], 0.4, label="served (read)")
    axis.bar([p + 0.2 for p in positions], [r["delivered"] for r in outages], 0.4, label="delivered (distinct)")
    axis.set_xticks(list(positions), names, fontsize=7)
    axis.set_ylabel("tag values")
    axis.set_title(
        f"{meta['outage_s']:.0f} s broker kill -9 at N={meta['outage_devices']} (loaded machine)", fontsize=10
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "peers-outage.png", dpi=90)
    pyplot.close(figure)
