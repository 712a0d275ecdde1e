"""Publishes pre-encoded batches as fast as QoS 1 allows (a separate process, so it does not share the
gateway's CPU time slice). Usage: _publisher.py HOST PORT SITE AGENT BATCHES READINGS [RATE_PER_S]"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta

import aiomqtt

from aua_contract import Batch, Reading, encode_batch, readings_topic


def make_batch(site: str, agent: str, seq: int, size: int, ts: datetime) -> bytes:
    readings = [
        Reading(instrument=f"i{n % 50}", parameter=f"p{n // 50}", value=seq + n / 7, unit="mg/m3", ts=ts)
        for n in range(size)
    ]
    return encode_batch(Batch(site=site, agent=agent, seq=seq, sent_at=ts, readings=readings))


async def main() -> None:
    host, port, site, agent = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    batches, size = int(sys.argv[5]), int(sys.argv[6])
    rate = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    topic = readings_topic(site, agent)
    start = datetime.now(UTC) - timedelta(seconds=batches)  # recent: the registry's time window flags older data
    async with aiomqtt.Client(host, port, identifier=f"bench-{agent}", max_queued_outgoing_messages=0) as client:
        if rate == 0:
            payloads = [make_batch(site, agent, seq, size, start + timedelta(seconds=seq)) for seq in range(batches)]
            print("ready", flush=True)
            sys.stdin.readline()
            window = 64
            for first in range(0, batches, window):
                await asyncio.gather(*(client.publish(topic, p, qos=1) for p in payloads[first : first + window]))
        else:
            period = 1.0 / rate
            print("ready", flush=True)
            sys.stdin.readline()
            next_at = time.monotonic()
            for seq in range(batches):
                await client.publish(topic, make_batch(site, agent, seq, size, datetime.now(UTC)), qos=1)
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
