"""One process of N Modbus TCP devices x 30 float32 input registers that counts every read it serves.

    python -m bench.peers.simulator N STATS_FILE

Every device listens on its own loopback port (chosen by the kernel; the list goes to STATS_FILE first).
Tag i of every device holds `i * 100000 + tick` as a big-endian float32 at input registers 2i, 2i+1, where
`tick` counts the seconds since the simulator started: the value changes every second, any byte-order slip
shows (the tag part would not match), and a subscriber can tell which second a delivered value was read in.

Served reads are counted per tick as distinct (device, tag) pairs, so a tag read twice in one second counts
once, as it does for the de-duplicating subscriber; requests and raw tag reads are counted too. The counts go
to STATS_FILE (JSON, replaced atomically) every half second.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import sys
import time
from pathlib import Path

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

TAGS = 30
REGISTERS = 2 * TAGS
TAG_STRIDE = 100_000
"""value = tag * TAG_STRIDE + tick: exact in float32 (24-bit mantissa) for 27 hours of ticks"""
INPUT_REGISTERS = 4
KEEP_TICKS = 3600


def image(tick: int) -> list[int]:
    """The 60 register words of every device at this tick."""
    words: list[int] = []
    for tag in range(TAGS):
        words.extend(struct.unpack(">HH", struct.pack(">f", float(tag * TAG_STRIDE + tick))))
    return words


def tags_covered(address: int, count: int) -> int:
    """Bit mask of the tags whose both registers lie within [address, address + count)."""
    first = (address + 1) // 2
    end = min((address + count) // 2, TAGS)
    if end <= first:
        return 0
    return ((1 << (end - first)) - 1) << first


class Counting:
    """The shared clock, register image and counters of all devices."""

    def __init__(self, devices: int) -> None:
        self.started = time.time()
        self.devices = devices
        self.tick = 0
        self.words = image(0)
        self.masks: dict[int, list[int]] = {}  # tick -> per-device mask of tags served in that tick
        self.requests: dict[int, int] = {}
        self.tag_reads: dict[int, int] = {}

    def now(self) -> int:
        tick = int(time.time() - self.started) + 1
        if tick != self.tick:
            self.tick = tick
            self.words = image(tick)
            self.masks.setdefault(tick, [0] * self.devices)
            for old in [t for t in self.masks if t < tick - KEEP_TICKS]:
                del self.masks[old], self.requests[old], self.tag_reads[old]
        return tick

    def action(self, device: int):  # type: ignore[no-untyped-def]
        async def answer(  # noqa: PLR0917 - pymodbus calls it with six positional arguments
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if function_code != INPUT_REGISTERS or set_values is not None or address + count > REGISTERS:
                return ExcCodes.ILLEGAL_ADDRESS
            tick = self.now()
            registers[:REGISTERS] = self.words
            mask = tags_covered(address, count)
            self.masks.setdefault(tick, [0] * self.devices)[device] |= mask
            self.requests[tick] = self.requests.get(tick, 0) + 1
            self.tag_reads[tick] = self.tag_reads.get(tick, 0) + mask.bit_count()
            return None

        return answer

    def stats(self, ports: list[int]) -> dict[str, object]:
        return {
            "ports": ports,
            "tick": self.now(),
            "started": self.started,
            "served": {t: sum(m.bit_count() for m in masks) for t, masks in self.masks.items()},
            "requests": self.requests,
            "tag_reads": self.tag_reads,
        }


def _port(server: ModbusTcpServer) -> int:
    for sock in getattr(server.transport, "sockets", None) or ():
        return int(sock.getsockname()[1])
    raise RuntimeError("pymodbus server has no listening socket")


async def serve(devices: int, stats_file: Path) -> None:
    counting = Counting(devices)
    servers = []
    for device in range(devices):
        table = [SimData(0, count=REGISTERS, values=0, datatype=SimType.REGISTERS, readonly=True)]
        bits = [SimData(0, values=[False] * 16, datatype=SimType.BITS)]
        sim = SimDevice(id=1, simdata=(bits, bits, table, table), action=counting.action(device))
        server = ModbusTcpServer([sim], address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        servers.append(server)
    ports = [_port(server) for server in servers]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    temporary = stats_file.with_suffix(".tmp")
    while not stop.is_set():
        temporary.write_text(json.dumps(counting.stats(ports)))
        os.replace(temporary, stats_file)
        try:
            async with asyncio.timeout(0.5):
                await stop.wait()
        except TimeoutError:
            pass
    for server in servers:
        await server.shutdown()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2])))
