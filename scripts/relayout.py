#!/usr/bin/env python3
"""Move the gateway's flat modules into subsystem packages, the simulator into its own package, and the
tests into folders that mirror the packages; then rewrite every reference to a moved module (issue 15).

Deterministic and idempotent: a module or test is moved only if it is still at its old place and its new
place is free; a module listed here but absent is skipped, so the script can be run again after more
branches are merged (their new flat modules and tests then move too, and their references are rewritten).
References are rewritten in every tracked text file: imports (`from gateway import report`,
`import gateway.report as r`, `from gateway.report import X`), dotted module paths in strings and comments
(`python -m edge_agent.simulator`, monkeypatch targets, logger names), file paths (`gateway/report.py`,
`tests/test_report.py`), `Path(__file__)` climbs in files that moved deeper, pyproject's package lists and
the Dockerfile's COPY lines. Imports are then sorted and formatted with the project's ruff.

Usage: `python scripts/relayout.py [--dry-run]` from anywhere in the repository; it prints what it did.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

PACKAGES: dict[str, str] = {
    "gateway.ingest": (
        "Ingest: MQTT batches in, validated readings stored, every message accounted for.\n\n"
        "Pure core: validation, quality_checks, gap_repair, accounting. I/O: service (the subscriber), ledger and\n"
        "spool (SQLite state files), agent_presence, revisions_cli.\n"
    ),
    "gateway.mrv": (
        "MRV: rollups, emission arithmetic, compliance tests, QA of the analysers and the reports built on them.\n\n"
        "Pure core: arithmetic, rollup, substitution, compliance, calibration, operating_state, twenty_minute,\n"
        "report and the QA rules. I/O: rollup_engine, retention, operating_log, report_files, state_feed and the\n"
        "QA logs (SQLite, files, HTTP).\n"
    ),
    "gateway.alerts": (
        "Alerts: rules over readings, the life of each alert, and the notices that go out.\n\n"
        "Pure core: rules, state, messages. I/O: engine (the running service and its state file), notify\n"
        "(the delivery channels).\n"
    ),
    "gateway.dashboards": ("Grafana dashboards: built from code (build) and pushed to a Grafana server (grafana).\n"),
    "aua_simulator": (
        "Simulated instruments on Modbus TCP/RTU for the demo, the tests and the benches.\n\n"
        "Not part of the edge agent: `edge_agent` never imports it (tests/test_purity.py checks), so a plant's\n"
        "agent runs without it.\n"
    ),
}
"""New packages and the docstring of their `__init__.py` (written only when the package has none)."""

MODULE_MOVES: dict[str, str] = {
    # ingest
    "gateway.ingest": "gateway.ingest.service",
    "gateway.ledger": "gateway.ingest.ledger",
    "gateway.spool": "gateway.ingest.spool",
    "gateway.gap_repair": "gateway.ingest.gap_repair",
    "gateway.accounting": "gateway.ingest.accounting",
    "gateway.validation": "gateway.ingest.validation",
    "gateway.quality_checks": "gateway.ingest.quality_checks",
    "gateway.agent_presence": "gateway.ingest.agent_presence",
    "gateway.revisions_cli": "gateway.ingest.revisions_cli",
    # MRV
    "gateway.mrv": "gateway.mrv.arithmetic",
    "gateway.mrv_config": "gateway.mrv.config",
    "gateway.report": "gateway.mrv.report",
    "gateway.report_files": "gateway.mrv.report_files",
    "gateway.report_charts": "gateway.mrv.report_charts",
    "gateway.rollup": "gateway.mrv.rollup",
    "gateway.rollup_engine": "gateway.mrv.rollup_engine",
    "gateway.retention": "gateway.mrv.retention",
    "gateway.substitution": "gateway.mrv.substitution",
    "gateway.compliance": "gateway.mrv.compliance",
    "gateway.calibration": "gateway.mrv.calibration",
    "gateway.operating_state": "gateway.mrv.operating_state",
    "gateway.operating_log": "gateway.mrv.operating_log",
    "gateway.twenty_minute": "gateway.mrv.twenty_minute",
    "gateway.state_feed": "gateway.mrv.state_feed",
    "gateway.qal3": "gateway.mrv.qal3",
    "gateway.qa_checks": "gateway.mrv.qa_checks",
    "gateway.part75": "gateway.mrv.part75",
    "gateway.part75_log": "gateway.mrv.part75_log",
    "gateway.qa_alerts": "gateway.mrv.qa_alerts",
    "gateway.stored_batches": "gateway.mrv.stored_batches",
    # alerts
    "gateway.alerts": "gateway.alerts.engine",
    "gateway.alert_rules": "gateway.alerts.rules",
    "gateway.alert_state": "gateway.alerts.state",
    "gateway.notify": "gateway.alerts.notify",
    "gateway.alert_messages": "gateway.alerts.messages",
    # dashboards
    "gateway.dashboards": "gateway.dashboards.grafana",
    "gateway.dashboard_build": "gateway.dashboards.build",
    # the simulator leaves the agent
    "edge_agent.simulator": "aua_simulator.instruments",
}
"""Old module -> new module. Everything else (gateway's process and operations modules: cli, config,
http_api, metrics, health_writer, supervisor, preflight, gc_tuning, state_file, cli_time, roles, units;
gateway.stores; the agent; the contract) stays where it is."""

TEST_FOLDERS: dict[str, str] = {
    # tests of one package that are not named after one of its modules
    "test_agent_commissioning.py": "edge_agent",
    "test_agent_config.py": "edge_agent",
    "test_agent_crash.py": "edge_agent",
    "test_agent_metrics.py": "edge_agent",
    "test_agent_resend.py": "edge_agent",
    "test_agent_runtime.py": "edge_agent",
    "test_agent_tls.py": "edge_agent",
    "test_driver_contract.py": "edge_agent",
    "test_isolation.py": "edge_agent",
    "test_state_change_logs.py": "edge_agent",
    "test_contract.py": "aua_contract",
    "test_revisions.py": "gateway/ingest",
    "test_shared_subscription.py": "gateway/ingest",
    "test_store_outage.py": "gateway/ingest",
    "test_operating_report.py": "gateway/mrv",
    "test_alerts_delivery.py": "gateway/alerts",
    "test_dashboards_push.py": "gateway/dashboards",
    "test_store_contract.py": "gateway/stores",
    "test_gateway_crash.py": "gateway",
    "test_gateway_metrics.py": "gateway",
    "test_state_bounds.py": "gateway",
    "test_state_transactions.py": "gateway",
    "test_log_secrets.py": "gateway",
    "test_config.py": "gateway",
    "test_roles.py": "gateway",
    "test_units.py": "gateway",
    "test_errors.py": "gateway",
    "test_config_errors.py": "aua_ops",
    "test_demo_replay.py": "aua_demo",
    "test_simulator_story.py": "aua_simulator",
    # whole-system tests stay at the top: test_end_to_end, test_deployment, test_hostile_input,
    # test_purity, test_steady_state*
}
"""Test file -> folder under tests/. A test not listed here that is named after a module
(`test_<module>.py` or `test_<module>_<more>.py`) goes to its module's package; any other stays put."""

STAY_AT_TOP = ("test_end_to_end", "test_deployment", "test_hostile_input", "test_purity", "test_steady_state")

CONFIG_KEYS = frozenset({"gateway.spool", "gateway.state", "gateway.http"})
"""Config keys (`[gateway] spool`) spelt like module paths: left alone in strings, except as logger names."""

TEXT_SUFFIXES = (".py", ".toml", ".md", ".yml", ".yaml", ".json", ".cfg", ".ini", ".sh", ".txt", ".conf")
TEXT_NAMES = ("Dockerfile",)
TEXT_FOLDERS = ("scripts/", ".ci/")
ROOT_PACKAGES = ("gateway", "edge_agent", "aua_simulator")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def module_path(dotted: str) -> Path:
    return ROOT / (dotted.replace(".", "/") + ".py")


def tracked_files() -> list[str]:
    return sorted(
        set(git("ls-files").splitlines()) | set(git("ls-files", "--others", "--exclude-standard").splitlines())
    )


def on_disk_modules() -> set[str]:
    """Every module and package under the project's packages, as dotted names."""
    names: set[str] = set()
    for top in ROOT_PACKAGES:
        base = ROOT / top
        if not base.is_dir():
            continue
        for path in base.rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if "__pycache__" in parts:
                continue
            names.add(".".join(parts))
    return names


# --------------------------------------------------------------------------------------------------
# Moving
# --------------------------------------------------------------------------------------------------


class Plan:
    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.moved: dict[str, str] = {}  # old path -> new path (files moved in this run)
        self.notes: list[str] = []

    def mv(self, old: str, new: str) -> None:
        print(f"move  {old} -> {new}")
        self.moved[old] = new
        if not self.dry_run:
            (ROOT / new).parent.mkdir(parents=True, exist_ok=True)
            if git("ls-files", old):
                git("mv", old, new)
            else:  # not committed yet: moved and added
                (ROOT / old).rename(ROOT / new)
                git("add", new)


def ensure_package(plan: Plan, dotted: str) -> None:
    """The package's folders get an `__init__.py` each (with the package's docstring when it is new)."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        init = ROOT / Path(*parts[:i]) / "__init__.py"
        if init.exists():
            continue
        doc = PACKAGES.get(".".join(parts[:i]), "")
        print(f"new   {init.relative_to(ROOT)}")
        if not plan.dry_run:
            init.parent.mkdir(parents=True, exist_ok=True)
            doc = doc.rstrip()
            init.write_text((f'"""{doc}\n"""\n' if "\n" in doc else f'"""{doc}"""\n') if doc else "")
            git("add", str(init.relative_to(ROOT)))


def shadowed_names(effective: dict[str, str]) -> list[str]:
    """`gateway.mrv` was a module and is now a package: a name the old module defined that is also a module
    of the new package (`from gateway.dashboards import push`) would be read as the module."""
    found = []
    for old, new in effective.items():
        package = new.rsplit(".", 1)[0]
        if package != old:
            continue
        source = module_path(new)
        defined = {
            node.name
            for node in ast.parse(source.read_text()).body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        submodules = {path.stem for path in module_path(new).parent.glob("*.py")}
        found += [f"{new}.{name} is also the module {package}.{name}: rename one" for name in defined & submodules]
    return found


def move_modules(plan: Plan) -> dict[str, str]:
    """Moves what is still at its old place; returns the moves whose target now exists."""
    effective: dict[str, str] = {}
    for old, new in MODULE_MOVES.items():
        old_path, new_path = module_path(old), module_path(new)
        if old_path.exists() and not new_path.exists():
            ensure_package(plan, new.rsplit(".", 1)[0])
            plan.mv(old_path.relative_to(ROOT).as_posix(), new_path.relative_to(ROOT).as_posix())
        elif old_path.exists() and new_path.exists():
            plan.notes.append(
                f"both {old_path.relative_to(ROOT)} and {new_path.relative_to(ROOT)} exist: merge by hand"
            )
            continue
        if new_path.exists() or (plan.dry_run and new_path.relative_to(ROOT).as_posix() in plan.moved.values()):
            effective[old] = new
    return effective


def module_folders() -> dict[str, str]:
    """A module's name -> the folder of its package (moved modules by their old names; `agent`, `demo`...)."""
    folders: dict[str, str] = {"agent": "edge_agent", "gateway": "gateway"}
    for old, new in MODULE_MOVES.items():
        folders[old.rsplit(".", 1)[1]] = new.rsplit(".", 1)[0].replace(".", "/")
    for top in (*ROOT_PACKAGES, "aua_contract", "aua_demo", "aua_mqtt", "aua_ops"):
        folders.setdefault(top.removeprefix("aua_"), top)
        base = ROOT / top
        for path in sorted(base.rglob("*.py")) if base.is_dir() else ():
            if "__pycache__" not in path.parts and path.stem != "__init__":
                folders.setdefault(path.stem, path.relative_to(ROOT).parent.as_posix())
    return folders


def test_folder(name: str, folders: dict[str, str]) -> str | None:
    """Where a test goes: TEST_FOLDERS, else the package of the longest module name it is named after."""
    if name in TEST_FOLDERS:
        return TEST_FOLDERS[name]
    stem = name.removesuffix(".py").removeprefix("test_")
    if any(name.removesuffix(".py") == top or name.startswith(top + "_") for top in STAY_AT_TOP):
        return None
    for candidate in sorted(folders, key=lambda c: (-len(c), c)):
        if stem == candidate or stem.startswith(candidate + "_"):
            return folders[candidate]
    return None


def move_tests(plan: Plan) -> list[str]:
    unplaced: list[str] = []
    folders = module_folders()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        folder = test_folder(path.name, folders)
        if folder is None:
            unplaced.append(path.name)
            continue
        new = ROOT / "tests" / folder / path.name
        if new.exists():
            plan.notes.append(f"both tests/{path.name} and {new.relative_to(ROOT)} exist: merge by hand")
            continue
        plan.mv(path.relative_to(ROOT).as_posix(), new.relative_to(ROOT).as_posix())
    return unplaced


# --------------------------------------------------------------------------------------------------
# Rewriting references
# --------------------------------------------------------------------------------------------------

DOTTED = re.compile(r"(?<![\w.])(?:gateway|edge_agent)(?:\.\w+)+")
PATH_CLIMB = re.compile(r"Path\(__file__\)(\.resolve\(\))?((?:\.parent\b)+|\.parents\[(\d+)\])")


def resolve_dotted(name: str, effective: dict[str, str], disk: set[str]) -> str:
    """The new spelling of a dotted reference (a module, or an attribute of one), or the same name."""
    parts = name.split(".")
    k_old = max((i for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in effective), default=0)
    if not k_old:
        return name
    k_disk = max((i for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in disk), default=0)
    if k_disk > k_old:  # gateway.mrv.report: already the new layout
        return name
    old = ".".join(parts[:k_old])
    return ".".join([effective[old], *parts[k_old:]])


def text_spans(source: str) -> list[tuple[int, int]]:
    """Offsets of strings and comments in Python source (dotted names there are rewritten everywhere)."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    spans = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type in (tokenize.STRING, tokenize.COMMENT) or tokenize.tok_name[token.type].startswith("FSTRING"):
                (sl, sc), (el, ec) = token.start, token.end
                spans.append((starts[sl - 1] + sc, starts[el - 1] + ec))
    except (tokenize.TokenError, SyntaxError):
        return [(0, len(source))]
    return spans


def rewrite_import_froms(source: str, effective: dict[str, str], disk: set[str]) -> tuple[str, list[tuple[int, int]]]:
    """`from gateway import a, b as c` and `from gateway.old import X`, statement by statement (ast)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source, []
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        module = node.module
        if module.split(".")[0] not in ROOT_PACKAGES:
            continue
        groups: dict[str, list[str]] = {}
        for alias in node.names:
            full = f"{module}.{alias.name}"
            if full in effective:
                new_parent, new_leaf = effective[full].rsplit(".", 1)
                shown = alias.asname or alias.name
                groups.setdefault(new_parent, []).append(new_leaf if shown == new_leaf else f"{new_leaf} as {shown}")
                continue
            target = module
            if module in effective and not (module in disk and full in disk):
                target = effective[module]  # from gateway.ingest import Ingest -> gateway.ingest.service
            else:
                target = resolve_dotted(module, effective, disk) if module not in disk else module
            groups.setdefault(target, []).append(
                alias.name if alias.asname is None else f"{alias.name} as {alias.asname}"
            )
        if list(groups) == [module]:
            continue
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        indent = re.match(r"\s*", lines[first]).group(0)  # type: ignore[union-attr]
        tail = lines[last][node.end_col_offset :].rstrip("\n") if node.end_col_offset is not None else ""
        comment = tail.strip()
        new_lines = [
            f"{indent}from {target} import {', '.join(names)}{('  ' + comment) if comment else ''}\n"
            for target, names in groups.items()
        ]
        edits.append((first, last, "".join(new_lines)))
    if not edits:
        return source, []
    for first, last, text in sorted(edits, reverse=True):
        lines[first : last + 1] = [text]
    new_source = "".join(lines)
    return new_source, []


def rewrite_dotted(text: str, effective: dict[str, str], disk: set[str], python: bool) -> str:
    spans = text_spans(text) if python else [(0, len(text))]
    binds_package = python and re.search(r"^\s*import (gateway|edge_agent)\.", text, re.MULTILINE) is not None

    def in_text(pos: int) -> bool:
        return any(a <= pos < b for a, b in spans)

    out: list[str] = []
    last = 0
    for match in DOTTED.finditer(text):
        name = match.group(0)
        new = resolve_dotted(name, effective, disk)
        if new == name:
            continue
        pos = match.start()
        line_start = text.rfind("\n", 0, pos) + 1
        line = text[line_start : text.find("\n", pos) if text.find("\n", pos) >= 0 else len(text)]
        if python and not in_text(pos):
            # code: only import statements and `gateway.x.y` after `import gateway.x` (a variable called
            # `gateway` with an attribute `alerts` is not the package)
            if re.match(r"\s*from\s", line):  # from-imports: rewrite_import_froms has them
                continue
            if not (re.match(r"\s*import\s", line) or binds_package):
                continue
        elif name in CONFIG_KEYS:
            before = text[line_start:pos]
            if "logger" not in before and "getLogger" not in before:
                continue
        out.append(text[last : match.start()])
        out.append(new)
        last = match.end()
    out.append(text[last:])
    return "".join(out)


def rewrite_paths(text: str, path_moves: dict[str, str]) -> str:
    for old, new in path_moves.items():
        text = re.sub(rf"(?<![\w.-]){re.escape(old)}(?![\w])", new, text)
    return text


def rewrite_climbs(text: str, delta: int) -> tuple[str, list[str]]:
    """`Path(__file__).parent.parent` in a file that moved `delta` folders deeper still finds the repository."""
    warnings: list[str] = []

    def climb(match: re.Match[str]) -> str:
        up = int(match.group(3)) + 1 if match.group(3) is not None else match.group(2).count(".parent")
        if up < 2:
            warnings.append(match.group(0))
            return match.group(0)
        return f"Path(__file__).resolve().parents[{up - 1 + delta}]"

    return PATH_CLIMB.sub(climb, text), warnings


LINE_LENGTH = 120


def wrap_long_lines(text: str, before: str) -> str:
    """Comment and docstring lines the rewrite made longer than the line length, broken at a space."""
    old_lines = set(before.splitlines())
    spans = text_spans(text)
    out: list[str] = []
    offset = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        indent = body[: len(body) - len(body.lstrip())]
        start = offset + len(indent)
        offset += len(line)
        cut = body.rfind(" ", 0, LINE_LENGTH + 1)
        comment = body.lstrip().startswith("#")
        in_string = any(a <= start < b for a, b in spans)
        if len(body) <= LINE_LENGTH or body in old_lines or not (comment or in_string) or cut <= len(indent):
            out.append(line)
            continue
        indent += "# " if comment else ""
        out.append(body[:cut].rstrip() + "\n")
        out.append(indent + body[cut + 1 :] + line[len(body) :])
    return "".join(out)


def ensure_pyproject(text: str) -> str:
    """aua_simulator in the wheel's and mypy's package lists."""

    def add(match: re.Match[str]) -> str:
        items = match.group(2)
        if '"aua_simulator"' in items:
            return match.group(0)
        return f'{match.group(1)}{items}, "aua_simulator"]'

    return re.sub(r'(^packages = \[)([^\]]*"aua_demo"[^\]]*)\]', add, text, flags=re.MULTILINE)


def ensure_dockerfile(text: str) -> str:
    if "COPY aua_simulator" in text or "COPY aua_demo ./aua_demo" not in text:
        return text
    return text.replace("COPY aua_demo ./aua_demo\n", "COPY aua_demo ./aua_demo\nCOPY aua_simulator ./aua_simulator\n")


def is_text_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return rel.endswith(TEXT_SUFFIXES) or name in TEXT_NAMES or (rel.startswith(TEXT_FOLDERS) and "." not in name)


def rewrite_all(plan: Plan, effective: dict[str, str]) -> list[str]:
    disk = on_disk_modules() if not plan.dry_run else on_disk_modules() | set(effective.values())
    path_moves = {
        module_path(old).relative_to(ROOT).as_posix(): module_path(new).relative_to(ROOT).as_posix()
        for old, new in effective.items()
    }
    path_moves.update({old: new for old, new in plan.moved.items() if old.startswith("tests/")})
    # every test placed in a folder, also those moved in an earlier run (their old paths in new docs)
    for path in (ROOT / "tests").rglob("test_*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.count("/") > 1:
            path_moves.setdefault(f"tests/{path.name}", rel)
    changed: list[str] = []
    for rel in tracked_files():
        if rel == THIS or not is_text_file(rel) or rel == "uv.lock":
            continue
        path = ROOT / rel
        if plan.dry_run:
            inverse = {new: old for old, new in plan.moved.items()}
            path = ROOT / inverse.get(rel, rel)
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        python = rel.endswith(".py")
        new = text
        if python:
            new, _ = rewrite_import_froms(new, effective, disk)
        new = rewrite_dotted(new, effective, disk, python)
        new = rewrite_paths(new, path_moves)
        if rel == "pyproject.toml":
            new = ensure_pyproject(new)
        if rel.endswith("Dockerfile"):
            new = ensure_dockerfile(new)
        old_rel = {v: k for k, v in plan.moved.items()}.get(rel)
        if python and old_rel is not None:
            delta = rel.count("/") - old_rel.count("/")
            if delta:
                new, warnings = rewrite_climbs(new, delta)
                for warning in warnings:
                    plan.notes.append(f"{rel}: `{warning}` names its own folder, which moved: check it")
                if re.search(r"__file__\)(\.resolve\(\))?\.with_name", new):
                    plan.notes.append(f"{rel}: uses Path.with_name on a file that moved: check it")
        if python and new != text:
            new = wrap_long_lines(new, text)
        if new != text:
            changed.append(rel)
            print(f"edit  {rel}")
            if not plan.dry_run:
                path.write_text(new)
    return changed


def tidy(changed: Iterable[str]) -> None:
    """Sorts the imports and formats the edited Python files with the project's ruff, if it is installed."""
    ruff = ROOT / ".venv" / "bin" / "ruff"
    command = str(ruff) if ruff.exists() else shutil.which("ruff")
    files = [rel for rel in changed if rel.endswith(".py")]
    if command is None or not files:
        print("ruff not found: imports are not sorted" if files else "", end="\n" if files else "")
        return
    subprocess.run([command, "check", "--select", "I", "--fix", "--quiet", *files], cwd=ROOT, check=False)
    subprocess.run([command, "format", "--quiet", *files], cwd=ROOT, check=False)
    print(f"ruff  sorted imports and formatted {len(files)} files")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dry-run", action="store_true", help="print roughly what would change, touch nothing")
    args = parser.parse_args(argv)
    plan = Plan(args.dry_run)
    effective = move_modules(plan)
    unplaced = move_tests(plan)
    plan.notes += [] if plan.dry_run else shadowed_names(effective)
    changed = rewrite_all(plan, effective)
    if not plan.dry_run:
        tidy(changed)
        git("add", "-A", *sorted(set(changed) | {"tests"}))
    print(f"done  {len(plan.moved)} files moved, {len(changed)} files edited")
    if unplaced:
        print(f"kept  at tests/: {', '.join(unplaced)}")
    for note in plan.notes:
        print(f"check {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
