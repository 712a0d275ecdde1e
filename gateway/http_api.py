"""GET /health (JSON) and GET /metrics (Prometheus text) on a small asyncio HTTP/1.1 responder.

Two read-only endpoints do not justify a web framework dependency; anything else answers 404. The port
may be reachable by more than Prometheus, so every request is bounded: the request line (414 beyond
MAX_LINE), the header block (431 beyond MAX_HEADER_BYTES or MAX_HEADERS), the time a client may take to
send them (TIMEOUT_S, then the connection is closed) and the connections served at once (beyond
MAX_CONNECTIONS: 503 and closed). What is refused is counted by reason (`refused`, in /metrics). No
request, however malformed, raises out of the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gateway.metrics import Health

log = logging.getLogger(__name__)

MAX_LINE = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100
TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64
LINGER_BYTES = 1024 * 1024
"""After an error answer, at most this much of what the client still sends is read and dropped before
closing (closing with unread input makes the kernel send a reset, which can destroy the answer)."""

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _response(status: int, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refused(Exception):
    """A request answered with an error status without routing it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def _read_line(reader: asyncio.StreamReader, limit: int, status: int, reason: str) -> bytes:
    """One CRLF-terminated line of at most `limit` bytes, or _Refused(status)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as error:
        raise _Refused(status, reason) from error
    except asyncio.IncompleteReadError as error:
        raise _Refused(400, "incomplete request") from error
    if len(line) > limit:
        raise _Refused(status, reason)
    return line


class HttpApi:
    def __init__(
        self,
        health: Callable[[], Health],
        metrics: Callable[[], bytes],
        *,
        max_connections: int = MAX_CONNECTIONS,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.server: asyncio.Server | None = None
        # One thread of its own: scrapes wait for each other, never for (or instead of) the ingest's
        # ledger and spool calls on the default executor.
        self._render = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics")
        self.open_connections = 0
        self.refused: Counter[str] = Counter()

    def route_health(self) -> tuple[int, str, bytes]:
        health = self.health()
        document = {
            "status": health.status,
            "broker_connected": health.broker_connected,
            "spool_depth": health.spool_depth,
            "spool_bytes": health.spool_bytes,
            "spool_full": health.spool_full,
            "spool_full_count": health.spool_full_count,
            "spool_full_seconds": round(health.spool_full_seconds, 3),
            "tasks": health.tasks,
        }
        body = json.dumps(document).encode()
        return (200 if health.status == "ok" else 503), "application/json", body

    async def route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"only GET\n"
        path = path.split("?", 1)[0]
        if path == "/health":
            return self.route_health()
        if path == "/metrics":
            # In a thread: the collectors read the ledger (SQLite), which must not stop the event loop.
            body = await asyncio.get_running_loop().run_in_executor(self._render, self.metrics)
            return 200, "text/plain; version=0.0.4; charset=utf-8", body
        return 404, "text/plain", b"not found: try /health or /metrics\n"

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        line = await _read_line(reader, MAX_LINE, 414, "request line too long")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _Refused(400, "malformed request line")
        header_bytes = headers = 0
        while True:
            header = await _read_line(reader, MAX_HEADER_BYTES, 431, "header too large")
            if header in (b"\r\n", b"\n"):
                return parts[0], parts[1]
            header_bytes += len(header)
            headers += 1
            if header_bytes > MAX_HEADER_BYTES or headers > MAX_HEADERS:
                raise _Refused(431, "headers too large")

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, reason: str
    ) -> None:
        """Answer an error, then drop what the client still sends (bounded) so the answer arrives."""
        self.refused[reason] += 1
        writer.write(_response(status, "text/plain", f"{reason}\n".encode()))
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            async with asyncio.timeout(1.0):
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                dropped = 0
                while dropped < LINGER_BYTES:
                    chunk = await reader.read(64 * 1024)
                    if not chunk:
                        break
                    dropped += len(chunk)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            await self._serve_one(reader, writer)
        except asyncio.CancelledError:
            pass  # the server is stopping; nobody awaits this task, so ending quietly loses nothing
        finally:
            self.open_connections -= 1
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(self.timeout_s):
                    await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.open_connections > self.max_connections:
                await self._refuse(reader, writer, 503, "too many connections")
                return
            try:
                async with asyncio.timeout(self.timeout_s):
                    method, path = await self._read_request(reader)
            except _Refused as refused:
                await self._refuse(reader, writer, refused.status, refused.reason)
                return
            except TimeoutError:
                await self._refuse(reader, writer, 408, "timeout")
                return
            try:
                status, content_type, body = await self.route(method, path)
            except Exception as error:  # a failing collector must cost one 500, not the server
                log.error("HTTP %s %s failed: %s: %s", method, path[:200], type(error).__name__, error)
                status, content_type, body = 500, "text/plain", b"internal error\n"
            writer.write(_response(status, content_type, body))
            async with asyncio.timeout(self.timeout_s):
                await writer.drain()
        except (TimeoutError, ConnectionError, OSError) as error:
            self.refused["client went away"] += 1
            log.debug("http client went away: %s", error)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with port 0)."""
        self.server = await asyncio.start_server(self._serve, host, port, limit=max(MAX_LINE, MAX_HEADER_BYTES) + 2)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    await self.server.wait_closed()
        self._render.shutdown(wait=False, cancel_futures=True)
