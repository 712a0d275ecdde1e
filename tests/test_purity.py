"""The pure core is pure, and the parts keep their rules (docs/architecture.md), checked in fresh interpreters.

One list of pure modules, the first `[[tool.mypy.overrides]]` of pyproject.toml (strict there): importing one
loads no I/O library, directly or through the project's own imports. pydantic pulls in `socket` and
`threading` from the standard library; what is judged is the libraries that do I/O, not what lies under them.
The agent never loads the gateway or the simulator; the shared packages load neither program.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from pathlib import Path
from subprocess import run

import pytest

ROOT = Path(__file__).resolve().parent.parent

IO_LIBRARIES = (
    "asyncio",
    "sqlite3",
    "ssl",
    "httpx",
    "paho",
    "aiomqtt",
    "amqtt",
    "apprise",
    "openpyxl",
    "fpdf",
    "pymodbus",
    "serial",
    "grafana_client",
    "prometheus_client",
)
PROJECT_PACKAGES = ("aua_contract", "aua_ops", "aua_mqtt", "edge_agent", "gateway", "aua_simulator", "aua_demo")

# Runs in the fresh interpreter: imports argv[1] with a finder that notes, for each I/O library, the chain of
# project modules that were importing when it was first asked for; prints {library: "a <- b <- c"}.
PROBE = """
import importlib, json, sys
IO, PROJECT = set(sys.argv[2].split(",")), tuple(sys.argv[3].split(","))
chains = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name in IO and name not in chains:
            chain, frame = [], sys._getframe(1)
            while frame is not None:
                module = frame.f_globals.get("__name__", "")
                if frame.f_code.co_name == "<module>" and module.split(".")[0] in PROJECT and module not in chain:
                    chain.append(module)
                frame = frame.f_back
            chains[name] = " <- ".join(chain) or "?"
        return None
sys.meta_path.insert(0, Spy())
for name in sys.argv[1].split(","):
    importlib.import_module(name)
loaded = {name: chains.get(name, "?") for name in IO if name in sys.modules}
project = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in PROJECT})
print(json.dumps({"io": loaded, "project": project}))
"""


def modules_of(package: str) -> list[str]:
    """The package and every module under it, as dotted names."""
    base = ROOT / package.replace(".", "/")
    names = []
    for path in sorted(base.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def pure_modules() -> list[str]:
    """The first mypy override's module list, wildcards expanded."""
    overrides = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["overrides"]
    assert overrides[0].get("strict") is True, "the first [[tool.mypy.overrides]] is the pure list and is strict"
    names: list[str] = []
    for pattern in overrides[0]["module"]:
        names += modules_of(pattern.removesuffix(".*")) if pattern.endswith(".*") else [pattern]
    return names


def probe(*modules: str) -> dict[str, object]:
    result = run(
        [sys.executable, "-c", PROBE, ",".join(modules), ",".join(IO_LIBRARIES), ",".join(PROJECT_PACKAGES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"importing {', '.join(modules)} failed:\n{result.stderr[-2000:]}"
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("module", pure_modules())
def test_a_pure_module_loads_no_io_library(module: str) -> None:
    loaded = probe(module)["io"]
    assert loaded == {}, f"{module} is listed as pure but loads: " + "; ".join(
        f"{library} (via {chain})"
        for library, chain in sorted(loaded.items())  # type: ignore[union-attr]
    )


def test_every_module_that_says_it_is_pure_is_in_the_list() -> None:
    """A docstring that says "Pure" is a claim; the list is where the claim is checked."""
    listed = set(pure_modules())
    claims = []
    for package in PROJECT_PACKAGES:
        for module in modules_of(package):
            path = ROOT / (module.replace(".", "/") + ".py")
            if not path.exists():
                path = ROOT / module.replace(".", "/") / "__init__.py"
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            if re.search(r"\bPure\b", docstring.split("\n\n")[0]):
                claims.append(module)
    assert claims, "the scan finds the modules that say they are pure"
    assert sorted(set(claims) - listed) == []


def test_the_list_names_modules_that_exist() -> None:
    missing = [m for m in pure_modules() if not (ROOT / (m.replace(".", "/") + ".py")).exists()]
    missing = [m for m in missing if not (ROOT / m.replace(".", "/") / "__init__.py").exists()]
    assert missing == []


def test_the_agent_loads_neither_the_gateway_nor_the_simulator() -> None:
    """Agent ↛ gateway: a plant's agent runs without the gateway's or the simulator's code."""
    loaded = probe(*modules_of("edge_agent"))["project"]
    assert set(loaded) <= {"edge_agent", "aua_contract", "aua_ops", "aua_mqtt"}, loaded


@pytest.mark.parametrize("package", ["aua_contract", "aua_ops", "aua_mqtt"])
def test_the_shared_packages_load_neither_program(package: str) -> None:
    loaded = probe(*modules_of(package))["project"]
    assert set(loaded) <= {"aua_contract", "aua_ops", "aua_mqtt"}, loaded


def test_the_gateway_loads_neither_the_agent_nor_the_simulator() -> None:
    loaded = probe(*modules_of("gateway"))["project"]
    assert set(loaded) <= {"gateway", "aua_contract", "aua_ops", "aua_mqtt"}, loaded


def test_the_probe_sees_an_io_library_and_who_loaded_it() -> None:
    """The check can fail: an adapter that is not pure is caught, with the chain that loaded the library."""
    loaded = probe("gateway.ingest.ledger")["io"]
    assert "sqlite3" in loaded
    assert "gateway.ingest.ledger" in loaded["sqlite3"]  # type: ignore[index]
