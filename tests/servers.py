"""Real servers (influxd, mosquitto) as child processes on free loopback ports, for tests.

Plain classes without pytest, so a failure message carries the server's own stderr and the fixtures in
conftest.py stay short. Each server writes its files under a directory the caller owns.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
from ports import free_ports, port_open

SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
"""Debian puts mosquitto in /usr/sbin, which is not on a non-root user's PATH."""

INSTALL_HINT = "run the README's test command, scripts/test, which installs the Debian packages mosquitto and influxdb"


class ServerError(RuntimeError):
    """A test server is missing or did not come up; the message says why, with its stderr."""


def find_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    if found is None:
        raise ServerError(f"{name} not found on PATH or in {', '.join(SBIN_DIRS)}: {INSTALL_HINT}")
    return found


class _ChildServer:
    """A server process whose stdout/stderr go to files (a pipe nobody reads would block it)."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            log.write(f"--- {' '.join(argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        return self.process

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return "(no output)"

    def _fail(self, reason: str) -> ServerError:
        self.terminate()
        return ServerError(f"{self.name} {reason}; its output:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, like a crash or a pulled plug."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


class InfluxServer(_ChildServer):
    """influxd 1.x with everything (meta, data, WAL) in `workdir` and every listener on a free port."""

    name = "influxd"

    def __init__(self, workdir: Path, binary: str | None = None, *, auth_enabled: bool = False) -> None:
        super().__init__(workdir)
        self.binary = binary or find_binary("influxd")
        self.auth_enabled = auth_enabled
        self.http_port, self.rpc_port = free_ports(2)
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config_text(self) -> str:
        # The listeners influxd 1.6 knows (`influxd config`): RPC (top-level bind-address) and HTTP get free
        # ports; ifql, graphite, collectd, opentsdb and udp are off (the last four are off by default).
        return f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"

[meta]
  dir = "{self.workdir / "meta"}"

[data]
  dir = "{self.workdir / "data"}"
  wal-dir = "{self.workdir / "wal"}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{self.http_port}"
  log-enabled = false
  unix-socket-enabled = false
  auth-enabled = {"true" if self.auth_enabled else "false"}

[ifql]
  enabled = false

[logging]
  suppress-logo = true
"""

    def start(self, timeout: float = 30.0) -> None:
        config = self.workdir / "influxdb.conf"
        config.write_text(self.config_text())
        began = time.monotonic()
        process = self._spawn([self.binary, "run", "-config", str(config)])
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() - began < timeout:
                if process.poll() is not None:
                    raise self._fail(f"exited with code {process.returncode} before answering /ping")
                try:
                    if client.get(f"{self.url}/ping").status_code == 204:
                        self.startup_seconds = time.monotonic() - began
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise self._fail(f"did not answer /ping with 204 within {timeout:.0f} s at {self.url}")

    def database_url(self, name: str | None = None) -> str:
        """A store URL for a database of its own (created by the store on open), so tests never share data."""
        return f"{self.url}/{name or unique_database_name()}"


def unique_database_name(hint: str = "test") -> str:
    """A database name nobody else uses: the hint (e.g. the test's name) made safe, plus a random suffix."""
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", hint).strip("_")[:40] or "test"
    return f"{safe}_{uuid.uuid4().hex[:8]}"


MQTT_INFLIGHT = 1000
"""As deploy/mosquitto/mosquitto.conf: mosquitto's default window of 20 unacknowledged QoS 1 messages per
client capped the gateway at ~90,000 readings/s (bench/ingest_throughput.py)."""


class MosquittoServer(_ChildServer):
    """mosquitto on one free port that survives stop()/start(), so clients can reconnect to the same place."""

    name = "mosquitto"

    def __init__(self, workdir: Path, binary: str | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(workdir)
        self.binary = binary or find_binary("mosquitto")
        self.host = host
        self.port = free_ports(1, host)[0]
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def config_text(self) -> str:
        return f"""\
listener {self.port} {self.host}
allow_anonymous true
persistence false
log_dest stderr
max_inflight_messages {MQTT_INFLIGHT}
"""

    def start(self, timeout: float = 10.0) -> None:
        """Start (again) on the same port; returns once the port accepts connections."""
        if self.running:
            return
        config = self.workdir / "mosquitto.conf"
        config.write_text(self.config_text())
        began = time.monotonic()
        process = self._spawn([self.binary, "-c", str(config)])
        while time.monotonic() - began < timeout:
            if process.poll() is not None:
                raise self._fail(f"exited with code {process.returncode} before listening on port {self.port}")
            if port_open(self.host, self.port):
                self.startup_seconds = time.monotonic() - began
                return
            time.sleep(0.02)
        raise self._fail(f"did not listen on {self.host}:{self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        """SIGKILL the broker (an outage: no will messages sent, sessions lost since persistence is off)."""
        self.kill()
