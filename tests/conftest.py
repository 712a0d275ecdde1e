"""Shared fixtures. Servers are real child processes (see servers.py); a missing binary fails, never skips."""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from http_receiver import http_receiver  # noqa: F401 (a fixture for every test module)
from hypothesis import HealthCheck, settings
from servers import InfluxServer, MosquittoServer, ServerError, unique_database_name

S = TypeVar("S", InfluxServer, MosquittoServer)

# Property tests on a loaded 2-core CI machine: no per-example deadline (timing is not what they test),
# and under CI a fixed seed, so a run is reproducible; locally they explore new examples every run.
settings.register_profile("aua", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("aua"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "aua")


def _start(make: Callable[[], S], attempts: int = 3) -> S:
    """Start a server, trying fresh ports when another process took the free one first; fail, never skip."""
    for attempt in range(1, attempts + 1):
        try:
            server = make()
            server.start()
        except ServerError as error:
            if attempt < attempts and "address already in use" in str(error).lower():
                continue
            pytest.fail(str(error), pytrace=False)
        return server
    raise AssertionError("unreachable")


# -- InfluxDB ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One influxd 1.x for the whole run (.url); each test uses a database of its own (`influx_db_url`)."""
    server = _start(lambda: InfluxServer(tmp_path_factory.mktemp("influxd")))
    yield server
    server.terminate()


@pytest.fixture
def influx_db_url(influxdb: InfluxServer, request: pytest.FixtureRequest) -> str:
    """A store URL (http://127.0.0.1:PORT/DB) for a database no other test uses."""
    return influxdb.database_url(unique_database_name(request.node.name))


# -- MQTT broker ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """One mosquitto for the whole run (.host, .port). Tests that stop() it should use `mqtt_broker`."""
    server = _start(lambda: MosquittoServer(tmp_path_factory.mktemp("mosquitto")))
    yield server
    server.terminate()


@pytest.fixture
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A mosquitto of this test's own, free to stop() (SIGKILL) and start() again on the same port."""
    server = _start(lambda: MosquittoServer(tmp_path_factory.mktemp("mosquitto")))
    yield server
    server.terminate()


# -- the `servers` marker ------------------------------------------------------------------------------------

SERVER_FIXTURES = frozenset({"influxdb", "influx_db_url", "mosquitto", "mqtt_broker"})
"""The session's servers; a fixture that requests one of them is in a test's `fixturenames` too."""

SERVER_NAMES = frozenset(
    {
        *SERVER_FIXTURES,
        "subprocess",  # a gateway, agent or demo process; socat
        "InfluxServer",
        "MosquittoServer",
        "SocatPty",
        "simulator_for_config",  # pymodbus servers playing instruments
        "Simulator",
        "SimulatedInstrument",
        "RtuLine",
        "StartAsyncTcpServer",
        "StartAsyncSerialServer",
    }
)
"""Names whose use in a test, a fixture or a helper of tests/ means the test starts or needs a server."""

TESTS_DIR = Path(__file__).resolve().parent


def _names_used(source: str) -> set[str]:
    """Identifiers, attributes and string constants (getfixturevalue("mosquitto")) in the code, not its
    docstrings or comments (a string that is exactly a server fixture's name counts)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.update(node.name.split("."))
        elif isinstance(node, ast.Constant) and node.value in SERVER_FIXTURES:
            names.add(str(node.value))
    return names


_VERDICTS: dict[object, bool] = {}
"""Per test, fixture or helper: uses a server? (A helper being judged counts as no while its callees are.)"""


def _starts_servers(obj: object) -> bool:
    """Whether a test, fixture or helper uses a server, directly or through helpers defined under tests/."""
    if obj in _VERDICTS:
        return _VERDICTS[obj]
    _VERDICTS[obj] = False  # a helper that calls itself (or back) adds nothing
    try:
        source = inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return False
    names = _names_used(source)
    scope = getattr(obj, "__globals__", None) or vars(inspect.getmodule(obj) or object())
    helpers = (scope.get(name) for name in names)
    verdict = bool(names & SERVER_NAMES) or any(
        (inspect.isfunction(helper) or inspect.isclass(helper))
        and _defined_in_tests(helper)
        and _starts_servers(helper)
        for helper in helpers
    )
    _VERDICTS[obj] = verdict
    return verdict


def _defined_in_tests(obj: object) -> bool:
    try:
        return Path(inspect.getfile(obj)).resolve().is_relative_to(TESTS_DIR)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return False


def _uses_servers(item: pytest.Item) -> bool:
    if not isinstance(item, pytest.Function):
        return False
    if SERVER_FIXTURES & set(item.fixturenames):
        return True
    if _starts_servers(item.function):
        return True
    definitions = item._fixtureinfo.name2fixturedefs
    return any(
        _starts_servers(definition.func) for name in item.fixturenames for definition in definitions.get(name, ())
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that starts or needs a server `servers`, so `pytest -m "not servers"` runs the rest."""
    for item in items:
        if _uses_servers(item):
            item.add_marker(pytest.mark.servers)
