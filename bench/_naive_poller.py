"""The straightforward way to do the agent's job: the same-run baseline of bench/edge_agent_cpu.py.

pymodbus's asyncio client, one connection per device; every second each device's 60 input registers are
read at once, decoded as 30 float32 (ABCD), built into the contract's Batch (pydantic models) and published
QoS 1 with aiomqtt, one message per device. No outbox, no planner beyond the one read per device.

    _naive_poller.py BROKER_PORT SITE AGENT PORT[,PORT...]
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import sys
import time
from datetime import UTC, datetime

import aiomqtt
from pymodbus.client import AsyncModbusTcpClient

from aua_contract import Batch, Reading, encode_batch, readings_topic

TAGS = 30
LAYOUT = struct.Struct(f">{TAGS}f")
REGISTERS = struct.Struct(f">{2 * TAGS}H")


async def read_device(client: AsyncModbusTcpClient) -> tuple[float, ...] | None:
    try:
        answer = await client.read_input_registers(0, count=2 * TAGS, device_id=1)
    except Exception:
        return None
    if answer.isError():
        return None
    return LAYOUT.unpack(REGISTERS.pack(*answer.registers))


async def main() -> None:
    broker_port, site, agent = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ports = [int(port) for port in sys.argv[4].split(",")]
    topic = readings_topic(site, agent)
    clients = [AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0) for port in ports]
    await asyncio.gather(*(client.connect() for client in clients))
    seq = itertools.count()
    async with aiomqtt.Client("127.0.0.1", broker_port, identifier=f"bench-{agent}") as mqtt:
        next_at = time.time() // 1 + 1
        while True:
            await asyncio.sleep(max(0.0, next_at - time.time()))
            ts = datetime.fromtimestamp(next_at, UTC)
            next_at += 1
            values = await asyncio.gather(*(read_device(client) for client in clients))
            payloads = []
            for n, device in enumerate(values):
                readings = [
                    Reading(
                        instrument=f"dev{n:03d}",
                        parameter=f"t{i:02d}",
                        value=None if device is None else device[i],
                        unit="mg/m3",
                        ts=ts,
                    )
                    for i in range(TAGS)
                ]
                batch = Batch(site=site, agent=agent, seq=next(seq), sent_at=datetime.now(UTC), readings=readings)
                payloads.append(encode_batch(batch))
            await asyncio.gather(*(mqtt.publish(topic, payload, qos=1) for payload in payloads))


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
