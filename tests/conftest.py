"""Shared fixtures. Servers are real child processes (see servers.py); a missing binary fails, never skips."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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
