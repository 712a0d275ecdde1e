"""The three systems under test: how each is installed (into a cache outside the tracked files), configured
for N devices x 30 float32 tags read every second, and started. Each is configured as its documentation
shows, publishing QoS 1 to the run's local mosquitto."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

from bench.peers.simulator import TAGS

ROOT = Path(__file__).resolve().parents[2]
THINGSBOARD_GATEWAY = "thingsboard-gateway>=3.8,<3.9"
NODE_RED = "node-red@4"
CONTRIB_MODBUS = "node-red-contrib-modbus@5.23.3"
"""5.23.3: later releases depend on a tarball outside the npm registry; Node-RED 5 needs Node 22."""


class InstallError(SystemExit):
    """A peer could not be installed: the message says which and why."""


def _run(argv: list[str], what: str, log: Path) -> None:
    with log.open("ab") as out:
        out.write(f"--- {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=900)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise InstallError(f"bench/peers: cannot install {what} (exit {done.returncode}); see {log}:\n{tail}")


@dataclass
class Launch:
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    metrics_port: int | None = None
    """a Prometheus endpoint telling cycles that overran and requests that failed (Aua's agent has one)"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def device(n: int) -> str:
    return f"dev{n:03d}"


class Aua:
    name = "aua"
    label = "Aua edge agent"

    def install(self, cache: Path) -> str:
        binary = Path(sys.executable).parent / "edge-agent"
        if not binary.exists():
            raise InstallError(f"bench/peers: {binary} not found: run scripts/bootstrap.sh (ensure_venv) first")
        version = subprocess.run(
            [sys.executable, "-c", "from importlib.metadata import version; print(version('aua'))"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return f"Aua {version or '(this checkout)'}"

    def launch(self, folder: Path, ports: list[int], broker_port: int, cache: Path) -> Launch:
        profile = ['[profile]\nname = "bench-30-floats"\nbyte_order = "ABCD"\n']
        profile += [
            f'[[tag]]\nname = "t{i:02d}"\nfunction = "input"\naddress = {2 * i}\ntype = "float32"\nunit = "mg/m3"\n'
            for i in range(TAGS)
        ]
        (folder / "profile.toml").write_text("\n".join(profile))
        metrics_port = free_port()
        site = [
            f'[agent]\nsite = "bench"\nid = "peers"\npoll_interval = 1.0\noutbox = "{folder / "outbox.sqlite"}"\n'
            f"metrics_port = {metrics_port}\n",
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n',
        ]
        site += [
            f'[[instrument]]\nid = "{device(n)}"\nprofile = "profile.toml"\nport = {port}\ndevice_id = 1\n'
            for n, port in enumerate(ports)
        ]
        (folder / "site.toml").write_text("\n".join(site))
        binary = Path(sys.executable).parent / "edge-agent"
        return Launch([str(binary), "run", str(folder / "site.toml")], folder, {}, metrics_port)


class ThingsboardGateway:
    name = "thingsboard-gateway"
    label = "thingsboard-gateway (Modbus connector, memory storage)"

    def _home(self, cache: Path) -> Path:
        return cache / "thingsboard-gateway"

    def install(self, cache: Path) -> str:
        home = self._home(cache)
        python = home / "bin" / "python"
        log = cache / "install-thingsboard-gateway.log"
        if not (home / "bin" / "thingsboard-gateway").exists():
            shutil.rmtree(home, ignore_errors=True)
            venv.create(home, with_pip=True)
            _run([str(python), "-m", "pip", "install", "-q", THINGSBOARD_GATEWAY], THINGSBOARD_GATEWAY, log)
        package = self._package(home)
        # The Modbus connector pip-installs the pymodbus it wants at its first start: do it here, not in a run.
        source = (package / "connectors" / "modbus" / "modbus_connector.py").read_text()
        wanted = re.search(r"required_version = '([^']+)'", source)
        if wanted:
            pinned = f"pymodbus=={wanted.group(1)}"
            check = subprocess.run(
                [str(python), "-c", f"import pymodbus,sys; sys.exit(pymodbus.__version__ != '{wanted.group(1)}')"],
                capture_output=True,
                check=False,
            )
            if check.returncode != 0:
                _run([str(python), "-m", "pip", "install", "-q", pinned, "pyserial", "pyserial-asyncio"], pinned, log)
        version = subprocess.run(
            [str(python), "-c", "from importlib.metadata import version; print(version('thingsboard-gateway'))"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return f"thingsboard-gateway {version}"

    @staticmethod
    def _package(home: Path) -> Path:
        found = sorted(home.glob("lib/python*/site-packages/thingsboard_gateway"))
        if not found:
            raise InstallError(f"bench/peers: thingsboard_gateway not found in {home}; delete it and run again")
        return found[0]

    def launch(self, folder: Path, ports: list[int], broker_port: int, cache: Path) -> Launch:
        home = self._home(cache)
        config = folder / "config"
        shutil.copytree(self._package(home) / "config", config)
        main = json.loads((config / "tb_gateway.json").read_text())
        main["thingsboard"].update(
            host="127.0.0.1",
            port=broker_port,
            remoteConfiguration=False,
            remoteShell=False,
            security={"type": "accessToken", "accessToken": "bench-peers"},
        )
        main["thingsboard"]["statistics"]["enable"] = False
        main["storage"] = {"type": "memory", "read_records_count": 100, "max_records_count": 100000}
        main["connectors"] = [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}]
        (config / "tb_gateway.json").write_text(json.dumps(main, indent=2))
        timeseries = [
            {"tag": f"t{i:02d}", "type": "32float", "functionCode": 4, "objectsCount": 2, "address": 2 * i}
            for i in range(TAGS)
        ]
        slaves = [
            {
                "host": "127.0.0.1",
                "port": port,
                "type": "tcp",
                "method": "socket",
                "unitId": 1,
                "deviceName": device(n),
                "deviceType": "default",
                "timeout": 35,
                "byteOrder": "BIG",
                "wordOrder": "BIG",
                "retries": 3,
                "retryOnEmpty": True,
                "retryOnInvalid": True,
                "pollPeriod": 1000,
                "connectAttemptTimeMs": 5000,
                "connectAttemptCount": 5,
                "waitAfterFailedAttemptsMs": 300000,
                "attributes": [],
                "timeseries": timeseries,
                "attributeUpdates": [],
                "rpc": [],
            }
            for n, port in enumerate(ports)
        ]
        (config / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}, indent=2))
        # Its logs.json writes to ./logs/, which only its development entry point creates: without it the
        # logging configuration fails and the gateway runs on its fallback logging.
        (folder / "logs").mkdir()
        return Launch([str(home / "bin" / "thingsboard-gateway")], folder, {"TB_GW_CONFIG_DIR": f"{config}/"})


DECODE = """\
const words = msg.payload;
const buffer = Buffer.alloc(words.length * 2);
for (let i = 0; i < words.length; i++) buffer.writeUInt16BE(words[i], 2 * i);
const values = [];
for (let i = 0; i < words.length / 2; i++) values.push(buffer.readFloatBE(4 * i));
return {topic: "nr/" + msg.topic, payload: JSON.stringify({ts: Date.now(), v: values})};
"""


class NodeRed:
    name = "node-red"
    label = "Node-RED 4 + node-red-contrib-modbus 5.23.3"

    def _home(self, cache: Path) -> Path:
        return cache / "node-red"

    def install(self, cache: Path) -> str:
        home = self._home(cache)
        npm, node = shutil.which("npm"), shutil.which("node")
        if npm is None or node is None:
            raise InstallError("bench/peers: Node-RED needs node (20 or newer) and npm on PATH (apt-get install npm)")
        red = home / "node_modules" / "node-red" / "red.js"
        modbus = home / "node_modules" / "node-red-contrib-modbus" / "package.json"
        if not (red.exists() and modbus.exists()):
            home.mkdir(parents=True, exist_ok=True)
            (home / "package.json").write_text('{"name": "bench-peers-node-red", "private": true}\n')
            _run(
                [npm, "install", "--prefix", str(home), "--no-audit", "--no-fund", NODE_RED, CONTRIB_MODBUS],
                f"{NODE_RED} and {CONTRIB_MODBUS}",
                cache / "install-node-red.log",
            )
        versions = [
            json.loads((home / "node_modules" / package / "package.json").read_text())["version"]
            for package in ("node-red", "node-red-contrib-modbus")
        ]
        return f"Node-RED {versions[0]} + node-red-contrib-modbus {versions[1]}"

    def launch(self, folder: Path, ports: list[int], broker_port: int, cache: Path) -> Launch:
        home = self._home(cache)
        user = folder / "node-red"
        user.mkdir()
        (user / "node_modules").symlink_to(home / "node_modules")
        flows: list[dict[str, object]] = [
            {"id": "tab", "type": "tab", "label": "bench"},
            {"id": "decode", "type": "function", "z": "tab", "name": "decode floats", "func": DECODE,
             "outputs": 1, "wires": [["publish"]]},
            {"id": "publish", "type": "mqtt out", "z": "tab", "name": "", "topic": "", "qos": "1",
             "retain": "false", "broker": "broker", "wires": []},
            {"id": "broker", "type": "mqtt-broker", "name": "bench", "broker": "127.0.0.1",
             "port": str(broker_port), "clientid": "bench-node-red", "autoConnect": True, "usetls": False,
             "protocolVersion": "4", "keepalive": "60", "cleansession": True},
        ]  # fmt: skip
        for n, port in enumerate(ports):
            flows.append(
                {"id": f"client{n}", "type": "modbus-client", "name": device(n), "clienttype": "tcp",
                 "bufferCommands": True, "stateLogEnabled": False, "queueLogEnabled": False,
                 "failureLogEnabled": False, "tcpHost": "127.0.0.1", "tcpPort": str(port), "tcpType": "DEFAULT",
                 "unit_id": "1", "commandDelay": "1", "clientTimeout": "1000", "reconnectOnTimeout": True,
                 "reconnectTimeout": "2000", "parallelUnitIdsAllowed": True, "showErrors": False,
                 "showWarnings": False, "showLogs": False}
            )  # fmt: skip
            flows.append(
                {"id": f"read{n}", "type": "modbus-read", "z": "tab", "name": "", "topic": device(n),
                 "showStatusActivities": False, "logIOActivities": False, "showErrors": False,
                 "showWarnings": False, "unitid": "1", "dataType": "InputRegister", "adr": "0",
                 "quantity": str(2 * TAGS), "rate": "1", "rateUnit": "s", "delayOnStart": False,
                 "startDelayTime": "", "server": f"client{n}", "useIOFile": False, "ioFile": "",
                 "useIOForPayload": False, "emptyMsgOnFail": False, "wires": [["decode"], []]}
            )  # fmt: skip
        (user / "flows.json").write_text(json.dumps(flows))
        (user / "settings.js").write_text(
            "module.exports = {uiHost: '127.0.0.1', uiPort: 0, httpAdminRoot: false, httpNodeRoot: false,\n"
            "  credentialSecret: false, logging: {console: {level: 'warn'}}};\n"
        )
        red = home / "node_modules" / "node-red" / "red.js"
        node = shutil.which("node") or "node"
        argv = [node, str(red), "--userDir", str(user), "--settings", str(user / "settings.js"), "flows.json"]
        return Launch(argv, folder, {})


SYSTEMS = {system.name: system for system in (Aua(), ThingsboardGateway(), NodeRed())}
