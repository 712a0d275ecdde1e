"""The agent's metrics endpoint under hostile clients (issue 13): no thread per connection, timeouts, a cap on
open connections that cannot lock a real scrape out, and clean answers to malformed requests; and counters
that count every failed request (issue 16)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from agent_site import write_site
from ports import free_port
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from edge_agent.config import load_config
from edge_agent.metrics import MetricsServer
from edge_agent.poller import Agent


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    """An agent that is never run: the endpoint only reads its counters."""
    config = write_site(
        tmp_path / "site.toml",
        agent={"site": "m", "id": "a1", "outbox": str(tmp_path / "o.sqlite")},
        mqtt={"host": "127.0.0.1", "port": free_port()},
        instruments=[{"id": "hg", "profile": "mercury-analyzer", "port": free_port(), "device_id": 1}],
    )
    agent = Agent(load_config(config))
    yield agent
    await agent.drivers.close()
    agent.outbox.close()


async def scrape(port: int) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{port}/metrics")


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read the whole answer (the server closes after one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    return answer


async def test_slow_and_idle_connections_take_no_threads_and_a_scrape_still_answers(agent: Agent) -> None:
    server = MetricsServer(agent, "127.0.0.1", free_port(), max_connections=16)
    await server.start()
    try:
        assert (await scrape(server.port)).status_code == 200  # the render thread exists from here on
        threads = threading.active_count()
        slow = []
        for index in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            if index % 2:
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            slow.append((reader, writer))
        await asyncio.sleep(0.2)
        response = await scrape(server.port)
        assert response.status_code == 200
        assert "aua_agent_cycles_total 0.0" in response.text
        assert "aua_agent_outbox_bytes 0.0" in response.text
        assert threading.active_count() <= threads
        assert server.evicted >= 300 - 16
        assert (
            f'aua_agent_metrics_requests_total{{outcome="evicted"}} {server.evicted}.0'
            in (await scrape(server.port)).text
        )
        for _, writer in slow:
            writer.close()
    finally:
        await server.close()


async def test_an_idle_connection_is_closed_after_the_timeout(agent: Agent) -> None:
    server = MetricsServer(agent, "127.0.0.1", free_port(), timeout_s=0.3)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metr")
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the server, no answer to half a request
        writer.close()
        assert server.timed_out == 1
        assert (await scrape(server.port)).status_code == 200
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET /metrics HTTP/1.1\r\nX-Long: " + b"b" * 70_000 + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"431"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", b"400"),  # a TLS hello on the plain port
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"GET /admin HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", b"200"),
    ],
)
async def test_malformed_requests_get_an_error_answer_not_a_traceback(
    agent: Agent, request_bytes: bytes, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    server = MetricsServer(agent, "127.0.0.1", free_port())
    await server.start()
    try:
        answer = await exchange(server.port, request_bytes)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
        assert (await scrape(server.port)).status_code == 200
    finally:
        await server.close()
    assert not [r for r in caplog.records if r.exc_info]


# --------------------------------------------------------------------------------------------------
# Every failed request counts (issue 16), against a real pymodbus device that refuses one register
# --------------------------------------------------------------------------------------------------

REFUSING_PROFILE = """
[profile]
name = "refusing"
byte_order = "ABCD"
"""
REFUSED_ADDRESS = 104


class RefusingDevice:
    """A pymodbus server with holding registers 100..107 that refuses any read touching 104, and counts what it
    refused: the truth the agent's counters are held to."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.refused = 0
        self.answered = 0
        self.server: ModbusTcpServer | None = None

    async def action(  # noqa: PLR0917 - pymodbus calls it with six positional arguments
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if address <= REFUSED_ADDRESS < address + count:
            self.refused += 1
            return ExcCodes.ILLEGAL_ADDRESS
        self.answered += 1
        registers[:] = [start_address + i for i in range(len(registers))]  # the block, from its first address
        return None

    async def __aenter__(self) -> RefusingDevice:
        bits = [SimData(0, values=[False] * 16, datatype=SimType.BITS)]
        device = SimDevice(
            id=1,
            simdata=(bits, bits, [SimData(100, count=8, values=0, datatype=SimType.REGISTERS)], bits),
            action=self.action,
        )
        self.server = ModbusTcpServer([device], address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.shutdown()  # type: ignore[no-untyped-call]


async def test_every_refused_request_of_a_narrowed_block_is_counted(tmp_path: Path) -> None:
    profile = tmp_path / "refusing.toml"
    tags = "".join(
        f'\n[[tag]]\nname = "r{address}"\nfunction = "holding"\naddress = {address}\ntype = "uint16"\nunit = "ppm"\n'
        for address in range(100, 108)
    )
    profile.write_text(REFUSING_PROFILE + tags)
    device_port = free_port()
    config = write_site(
        tmp_path / "site.toml",
        agent={"site": "m", "id": "refused", "outbox": str(tmp_path / "o.sqlite")},
        mqtt={"host": "127.0.0.1", "port": free_port()},
        instruments=[
            {"id": "dev", "profile": str(profile.with_suffix("")), "port": device_port, "device_id": 1, "timeout": 2}
        ],
    )
    agent = Agent(load_config(config))
    metrics = MetricsServer(agent, "127.0.0.1", free_port())
    try:
        async with RefusingDevice(device_port) as device:
            first = await agent.poll_once()
            second = await agent.poll_once()
            await metrics.start()
            text = (await scrape(metrics.port)).text
    finally:
        await metrics.close()
        await agent.drivers.close()
        agent.outbox.close()
    [reader] = agent.readers
    # the merged block 100+8 was narrowed down through several refused requests before r104 stood alone
    assert device.refused > 1
    assert reader.stats.errors == {"exception": device.refused}
    assert reader.stats.failed_requests == device.refused
    assert reader.stats.requests == device.refused + device.answered
    line = f'aua_agent_request_errors_total{{endpoint="{reader.driver.endpoint}",instrument="dev",kind="exception"}}'
    assert f"{line} {float(device.refused)}" in text, text
    # the second poll reads around r104 and is refused nothing more
    for readings in (first, second):
        values = {r.parameter: r.value for r in readings}
        assert values == {f"r{a}": (None if a == REFUSED_ADDRESS else float(a)) for a in range(100, 108)}
