"""An MQTT broker for the demo: mosquitto when installed, else amqtt in-process.

amqtt does not deliver QoS 1 messages queued for an offline persistent session (shared/notes/environment.md),
so it is fine for a demo and never for production or reliability tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


@dataclass(frozen=True)
class RunningBroker:
    host: str
    port: int
    kind: str


async def _wait_for_port(host: str, port: int, within_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def embedded_broker(*, prefer_mosquitto: bool = True) -> AsyncIterator[RunningBroker]:
    host, port = "127.0.0.1", free_port()
    binary = find_mosquitto() if prefer_mosquitto else None
    if binary:
        with tempfile.TemporaryDirectory(prefix="aua-mosquitto-") as folder:
            conf = Path(folder) / "mosquitto.conf"
            conf.write_text(f"listener {port} {host}\nallow_anonymous true\npersistence false\n")
            process = subprocess.Popen(  # noqa: ASYNC220 - a child that lives as long as the demo
                [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                await _wait_for_port(host, port, 10)
                yield RunningBroker(host, port, f"mosquitto ({binary})")
            finally:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                if process.stderr is not None:
                    process.stderr.close()
        return
    from amqtt.broker import Broker  # noqa: PLC0415 - only needed when mosquitto is absent

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    try:
        yield RunningBroker(host, port, "amqtt (in-process; install mosquitto for store-and-forward guarantees)")
    finally:
        await broker.shutdown()
