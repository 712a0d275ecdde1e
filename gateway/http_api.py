"""GET /health (JSON) and GET /metrics (Prometheus text) on a small asyncio HTTP/1.1 responder.

Two read-only endpoints do not justify a web framework dependency; anything else answers 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from gateway.metrics import Health

log = logging.getLogger(__name__)

Handler = Callable[[], tuple[int, str, bytes]]


def _response(status: int, content_type: str, body: bytes) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class HttpApi:
    def __init__(self, health: Callable[[], Health], metrics: Callable[[], bytes]) -> None:
        self.health = health
        self.metrics = metrics
        self.server: asyncio.Server | None = None

    def route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"only GET\n"
        path = path.split("?", 1)[0]
        if path == "/health":
            health = self.health()
            document = {
                "status": health.status,
                "broker_connected": health.broker_connected,
                "spool_depth": health.spool_depth,
            }
            body = json.dumps(document).encode()
            return (200 if health.status == "ok" else 503), "application/json", body
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics()
        return 404, "text/plain", b"not found: try /health or /metrics\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request_line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request_line.decode("latin-1").split()
            status, content_type, body = self.route(parts[0], parts[1]) if len(parts) >= 2 else (404, "text/plain", b"")
            writer.write(_response(status, content_type, body))
            await writer.drain()
        except (TimeoutError, ConnectionError) as error:
            log.debug("http client went away: %s", error)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with port 0)."""
        self.server = await asyncio.start_server(self._serve, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
