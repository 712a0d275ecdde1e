"""A shared serial line for the RTU tests: devices answer in their own time, dead ones never, and late answers
stay on the line, which pymodbus cannot play itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Self

from edge_agent.rtu import REQUEST_FRAME_SIZE, frame_size


class RtuLine:
    """A serial line as the master sees it, in front of an RTU-framed simulator port.

    Accepts the master's connection on a loopback TCP port (directly for RTU over TCP, or through
    `socat pty,... tcp:HOST:PORT` for a real pty), passes each request to the simulator one at a time, and
    writes each answer back after its device's delay, whether or not the master still waits for it: a late
    answer lands on the line while the master talks to another device, as on a real RS-485 bus. Requests to
    a `silent` device get no answer at all (dead, unplugged, wrong address). pymodbus cannot play this itself:
    its serial server needs pyserial, and a delaying action in its TCP server mislabels concurrent answers.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delays: Mapping[int, float] | None = None,
        silent: Iterable[int] = (),
    ) -> None:
        self.upstream = upstream
        self.host, self._port = host, port
        self.delays = dict(delays or {})
        self.silent = set(silent)
        self.requests: dict[int, int] = {}
        """device id -> requests seen on the line"""
        self.sequence: list[int] = []
        """device ids of the requests, in the order they came (the last 10,000)"""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("line not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, master_in: asyncio.StreamReader, master_out: asyncio.StreamWriter) -> None:
        self._spawn(self._relay(master_in, master_out))

    async def _relay(self, master_in: asyncio.StreamReader, master_out: asyncio.StreamWriter) -> None:
        device_in, device_out = await asyncio.open_connection(*self.upstream)
        try:
            while True:
                try:
                    request = await master_in.readexactly(REQUEST_FRAME_SIZE)
                except asyncio.IncompleteReadError:
                    return
                device = request[0]
                self.requests[device] = self.requests.get(device, 0) + 1
                self.sequence.append(device)
                del self.sequence[:-10_000]
                if device in self.silent:
                    continue
                device_out.write(request)
                head = await device_in.readexactly(3)
                size = frame_size(head) or 3
                answer = head + await device_in.readexactly(max(0, size - 3))
                self._spawn(self._answer_later(master_out, answer, self.delays.get(device, 0.0)))
        finally:
            device_out.close()
            master_out.close()

    @staticmethod
    async def _answer_later(master_out: asyncio.StreamWriter, answer: bytes, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if not master_out.is_closing():
            master_out.write(answer)
