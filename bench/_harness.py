"""Shared measuring for the benches, so none of them can flatter us.

- `interleave`: a measurement and its baseline run alternately (A B A B A B), so a change in the machine's
  load hits both alike; each bench reports min / median / max over the repeats, never the best run.
- `TreeMonitor`: CPU and peak memory of whole process trees (a process and every descendant: worker
  pools, subprocesses), from /proc. CPU is exact (live processes' utime + stime plus what reaped children
  left in their parent's cutime + cstime); memory is the sum of the tree's RSS, sampled every `interval`
  seconds, so a spike shorter than that can be missed, and pages shared between processes (libraries, a
  forked parent's memory) count once per process: an upper bound of what the tree holds.
- The machine's load during the window (load average before/after and the CPU that processes outside the
  measured trees used), printed with every result: the machine is shared.
- `markdown_table`: results as a table to paste into the docs.

Linux only (/proc), like the benches themselves.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CORES = os.cpu_count() or 1

R = TypeVar("R")


# ---- /proc ----


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text.rsplit(")", 1)[1].split()


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process on the machine."""
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    return parents


def tree_pids(roots: Iterable[int]) -> set[int]:
    """The roots and all their living descendants."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = [pid for pid in roots if Path(f"/proc/{pid}").exists()]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(pids: Iterable[int], *, reaped: bool = True) -> float:
    """utime + stime over the given processes, + cutime + cstime (what their reaped children used) if `reaped`."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += sum(int(value) for value in fields[11 : 15 if reaped else 13])
    return total / TICKS


def tree_rss_mb(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
    return total * PAGE / 2**20


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


def load_average() -> float:
    return os.getloadavg()[0]


# ---- measuring ----


@dataclass(frozen=True)
class TreeUsage:
    """What a process tree used during a window, and what the rest of the machine did meanwhile."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    last_rss_mb: float
    others_cores: float
    """CPU that processes outside the measured trees used during the window, in cores (of CORES)"""
    load_before: float
    load_after: float

    @property
    def cpu_cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    def load_note(self) -> str:
        return (
            f"load average {self.load_before:.1f} -> {self.load_after:.1f}; other processes used "
            f"{self.others_cores:.2f} of {CORES} cores"
        )


class TreeMonitor:
    """Measure one or more process trees over a `with` block (a thread samples memory every `interval` s).

    `roots` are pids (default: this process); the tree is re-read at every sample, so workers started during
    the window are counted. Several monitors can run at once (one per tree, e.g. gateway and influxd apart);
    `others_cores` then includes the other trees. `descendants=False` measures the roots alone (a bench
    process that runs the measured code in-process and also has the servers as children).
    """

    def __init__(self, *roots: int, interval: float = 0.2, descendants: bool = True) -> None:
        self.roots = roots or (os.getpid(),)
        self.interval = interval
        self.descendants = descendants
        self.usage: TreeUsage | None = None
        self._pids: set[int] = set()
        self._peak = 0.0
        self._last = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _tree(self) -> set[int]:
        if self.descendants:
            return tree_pids(self.roots)
        return {pid for pid in self.roots if Path(f"/proc/{pid}").exists()}

    def _cpu(self) -> float:
        return tree_cpu_seconds(self._tree(), reaped=self.descendants)

    def _sample(self) -> None:
        pids = self._tree()
        self._pids |= pids
        self._last = tree_rss_mb(pids)
        self._peak = max(self._peak, self._last)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeMonitor:
        self._load = load_average()
        self._started = time.monotonic()
        self._machine = machine_busy_seconds()
        self._cpu_began = self._cpu()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="tree-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample()
        cpu = self._cpu() - self._cpu_began
        wall = time.monotonic() - self._started
        machine = machine_busy_seconds() - self._machine
        self.usage = TreeUsage(
            wall_s=wall,
            cpu_s=cpu,
            peak_rss_mb=self._peak,
            last_rss_mb=self._last,
            others_cores=max(0.0, machine - cpu) / wall if wall else 0.0,
            load_before=self._load,
            load_after=load_average(),
        )


def interleave(runs: Sequence[tuple[str, Callable[[int], R]]], repeats: int) -> dict[str, list[R]]:
    """Run every measurement once per round, in order, `repeats` rounds (A B A B A B); results per name."""
    results: dict[str, list[R]] = {name: [] for name, _ in runs}
    for round_index in range(repeats):
        for name, run in runs:
            print(f"  round {round_index + 1}/{repeats}: {name} ...", flush=True)
            results[name].append(run(round_index))
    return results


# ---- reporting ----


@dataclass(frozen=True)
class Spread:
    low: float
    median: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        data = sorted(values)
        if not data:
            raise ValueError("no values to summarize")
        return cls(data[0], statistics.median(data), data[-1])

    def text(self, spec: str = ",.0f", unit: str = "") -> str:
        """'median (min–max)', e.g. '104,000 (91,000–113,000)'."""
        return f"{self.median:{spec}}{unit} ({self.low:{spec}}–{self.high:{spec}}{unit})"


def spread(values: Iterable[float], spec: str = ",.0f", unit: str = "") -> str:
    return Spread.of(values).text(spec, unit)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_note(usages: Iterable[TreeUsage]) -> str:
    """One line on the machine's load over a set of windows, to print under every table."""
    usages = list(usages)
    if not usages:
        return ""
    loads = [u.load_before for u in usages] + [u.load_after for u in usages]
    others = [u.others_cores for u in usages]
    return (
        f"machine: {CORES} cores, load average {min(loads):.1f}–{max(loads):.1f} during the runs; other processes "
        f"used {Spread.of(others).text('.2f')} cores (median, min–max over the windows)"
    )
