"""CPU time and memory of a whole process tree, from /proc (a Node-RED or a gateway may start helpers)."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            parents[int(entry.name)] = int(fields[1])
    return parents


def tree(pid: int) -> list[int]:
    """The process and all its descendants alive now."""
    parents = _parents()
    found, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return [p for p in found if Path(f"/proc/{p}").exists()]


def _cpu(pid: int) -> float:
    """All threads' CPU time in ns resolution (schedstat), plus what its reaped children used (cutime+cstime)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that just ended
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return total / 1e9 + (int(fields[13]) + int(fields[14])) / TICKS


def cpu_seconds(pid: int) -> float:
    return sum(_cpu(p) for p in tree(pid))


def rss_mb(pid: int) -> float:
    """Resident memory of the tree (sum of each process's RSS; shared pages count once per process)."""
    total = 0
    for p in tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total * PAGE / 2**20
