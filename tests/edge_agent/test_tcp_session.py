"""When the Modbus TCP driver drops its session: only when it is hung, not when the device is merely slow.

A half-open session (the device rebooted, a firewall forgot the connection) carries no answer at all, and only a
new connection helps. A slow device's answers still come, after the timeout: dropping its session (as the agent
did after 3 timeouts in a row) only adds a handshake for a device that is already behind; at 500 simulated
instruments on a starved machine 368 of 2,672 failed requests happened while reconnecting (issue 17).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.driver import DeviceTimeout, session_hung
from edge_agent.modbus_drivers import ModbusTcpDriver
from edge_agent.planner import plan, spans_of
from edge_agent.profiles import load_profile

PROFILE = load_profile(Path(__file__).resolve().parents[2] / "config" / "profiles" / "stack-dust.toml")
[REQUEST] = plan(spans_of(PROFILE))


@pytest.mark.parametrize(
    ("timeouts", "answers", "expected"),
    [
        (1, 0, False),
        (2, 0, False),
        (3, 0, True),  # three timeouts and silence: a hung session
        (3, 1, False),  # a late answer came: the device is there, only slow
        (3, 5, False),
        (4, 0, True),
    ],
)
def test_a_session_is_hung_only_when_nothing_at_all_came_back(timeouts: int, answers: int, expected: bool) -> None:
    assert session_hung(timeouts, answers, limit=3) is expected


async def close_server(server: asyncio.Server, connections: list[asyncio.StreamWriter]) -> None:
    """Close the server and the connections it accepted (Python 3.11's Server.close leaves those open)."""
    server.close()
    for writer in connections:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    await server.wait_closed()


@contextlib.asynccontextmanager
async def slow_device(delay_s: float) -> AsyncIterator[tuple[int, list[int]]]:
    """A Modbus TCP device that answers every read request `delay_s` late, each with its own transaction id
    (zeros for registers): slow, but there. Yields its port and the transaction ids it has answered.

    Not pymodbus's server: pymodbus 3.16 stamps an answer with the transaction id of the newest request on the
    connection (`last_pdu`), so a late answer would come back labelled as the next request's."""
    answered: list[int] = []
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

        async def answer(request: bytes) -> None:
            await asyncio.sleep(delay_s)
            transaction, unit, function, count = request[:2], request[6], request[7], request[10] << 8 | request[11]
            pdu = bytes([function, 2 * count]) + bytes(2 * count)
            writer.write(transaction + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu)
            answered.append(int.from_bytes(transaction, "big"))

        pending = set()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                task = asyncio.create_task(answer(await reader.readexactly(12)))
                pending.add(task)
                task.add_done_callback(pending.discard)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), answered
    finally:
        await close_server(server, connections)


async def test_a_slow_device_keeps_its_session() -> None:
    """Every read times out (the answers come 0.3 s after the request, the driver waits 0.25 s), the late answers
    arrive and are dropped by transaction id, and the session is never dropped."""
    async with slow_device(0.3) as (port, answered):
        driver = ModbusTcpDriver("127.0.0.1", port, 1, timeout=0.25)
        try:
            for _ in range(7):
                with pytest.raises(DeviceTimeout):
                    await driver.read(REQUEST)
            assert answered  # late answers did come back on the session
            assert driver.hung_sessions == 0
            assert driver.connections == 1
        finally:
            await driver.close()


async def test_a_slow_device_is_read_once_it_answers_within_the_timeout() -> None:
    """The same session serves the reads that come in time: the late answers before did not confuse it."""
    async with slow_device(0.05) as (port, _):
        driver = ModbusTcpDriver("127.0.0.1", port, 1, timeout=2.0)
        try:
            assert await driver.read(REQUEST) == [0] * REQUEST.count
            assert driver.connections == 1
        finally:
            await driver.close()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that takes every request and never answers: a hung session's far end."""

    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        await close_server(server, connections)


async def test_a_session_that_carries_no_answer_is_made_again() -> None:
    async with silent_server() as port:
        driver = ModbusTcpDriver("127.0.0.1", port, 1, timeout=0.1)
        try:
            for _ in range(3):
                with pytest.raises(DeviceTimeout):
                    await driver.read(REQUEST)
            assert driver.hung_sessions == 1
            await asyncio.sleep(0)  # the transport reports the close
            with pytest.raises(DeviceTimeout):
                await driver.read(REQUEST)
            assert driver.connections == 2
        finally:
            await driver.close()
