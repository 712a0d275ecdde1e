"""Resend requests as the agent takes them (issue 13): cut to what it holds, merged, bounded, paced, counted."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiomqtt
import pytest
from servers import MosquittoServer

from aua_contract import readings_topic, resend_topic
from edge_agent.config import MqttSection
from edge_agent.outbox import Outbox
from edge_agent.publisher import Publisher
from edge_agent.resend import Outcome, ResendLimits, ResendQueue, TokenBucket


@pytest.mark.parametrize(
    ("queued", "asked", "held", "expected", "after"),
    [
        ([], (10, 19), (0, 99), (Outcome.ACCEPTED, 10), [(10, 19)]),
        ([], (90, 200), (0, 99), (Outcome.ACCEPTED, 10), [(90, 99)]),  # cut to what the outbox holds
        ([], (0, 2**64), (5, 99), (Outcome.LIMITED, 50), [(5, 54)]),  # beyond int64: cut, never an overflow
        ([], (2**63, 2**64), (0, 99), (Outcome.NOT_HELD, 0), []),
        ([], (0, 4), (5, 99), (Outcome.NOT_HELD, 0), []),  # pruned already
        ([], (0, 4), None, (Outcome.NOT_HELD, 0), []),  # empty outbox
        ([(10, 19)], (10, 19), (0, 99), (Outcome.COALESCED, 0), [(10, 19)]),  # the same again: nothing more
        ([(10, 19)], (15, 24), (0, 99), (Outcome.COALESCED, 5), [(10, 24)]),
        ([(10, 19)], (20, 29), (0, 99), (Outcome.ACCEPTED, 10), [(10, 29)]),  # adjacent ranges merge
        ([(10, 19), (40, 49)], (0, 60), (0, 99), (Outcome.LIMITED, 30), [(0, 49)]),
        ([(0, 49), (60, 99)], (50, 59), (0, 999), (Outcome.ACCEPTED, 10), [(0, 99)]),
        ([(0, 49), (60, 99)], (100, 110), (0, 999), (Outcome.REFUSED, 0), [(0, 49), (60, 99)]),  # 100 wait already
    ],
)
def test_resend_queue(
    queued: list[tuple[int, int]],
    asked: tuple[int, int],
    held: tuple[int, int] | None,
    expected: tuple[Outcome, int],
    after: list[tuple[int, int]],
) -> None:
    queue = ResendQueue(
        max_per_request=50, max_queued=100, ranges=list(queued), queued=sum(b - a + 1 for a, b in queued)
    )
    assert queue.offer(*asked, held) == expected
    assert queue.ranges == after
    assert queue.queued == sum(b - a + 1 for a, b in after)


def test_the_queue_hands_out_pages_lowest_first() -> None:
    queue = ResendQueue(max_per_request=100, max_queued=100)
    queue.offer(30, 34, (0, 99))
    queue.offer(0, 6, (0, 99))
    assert [queue.take(4) for _ in range(5)] == [(0, 3), (4, 6), (30, 33), (34, 34), None]
    assert queue.queued == 0


def test_token_bucket() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=30, now=0.0)
    assert bucket.take(20, now=0.0) == 20
    assert bucket.take(20, now=0.0) == 10
    assert bucket.take(5, now=0.0) == 0
    assert bucket.wait_s() == pytest.approx(0.1)
    assert bucket.take(5, now=0.35) == 3
    assert bucket.take(100, now=100.0) == 30  # never more than the burst saved up


def request(site: str, agent: str, first: int, last: int) -> bytes:
    return json.dumps(
        {"v": 1, "site": site, "agent": agent, "first": first, "last": last, "requested_by": "gw"}
    ).encode()


async def test_a_flood_of_overlapping_requests_republishes_each_batch_once_within_the_rate(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """200 requests over 0..499 used to republish 43,723 batches; now the union, cut and paced."""
    site, agent = "resend", "a1"
    outbox = Outbox(tmp_path / "o.sqlite")
    for _ in range(500):
        outbox.mark_acked(outbox.append(lambda seq: f"batch {seq}".encode(), 0), 1)
    limits = ResendLimits(max_per_request=100, max_queued=150, rate=5.0, burst=20)
    publisher = Publisher(MqttSection(host=mosquitto.host, port=mosquitto.port), site, agent, outbox, resend=limits)
    received: list[bytes] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"gw-{site}") as gateway:
        await gateway.subscribe(readings_topic(site, agent), qos=1)

        async def collect() -> None:
            async for message in gateway.messages:
                assert isinstance(message.payload, bytes)
                received.append(message.payload)

        collecting = asyncio.create_task(collect())
        running = asyncio.create_task(publisher.run())
        for _ in range(50):
            if publisher.connected:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # subscribed to its resend topic
        started = time.monotonic()
        requests = [request(site, agent, 0, 299)] + [request(site, agent, first, first + 49) for first in range(1, 200)]
        requests[7] = b"{not json"
        requests[8] = request(site, "other", 0, 10)
        requests[9] = request(site, agent, 2**64, 2**64 + 5)  # the contract may refuse it, or it is not held
        requests[10] = request(site, agent, 10_000, 10_005)  # not sealed yet
        for payload in requests:
            await gateway.publish(resend_topic(site, agent), payload, qos=1)
        for _ in range(100):
            if sum(publisher.resend_requests.values()) == len(requests):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        resent_in_window, elapsed = publisher.resent, time.monotonic() - started
        await asyncio.sleep(0.5)  # what the broker took reaches the subscriber
        collecting.cancel()
        await asyncio.gather(collecting, return_exceptions=True)
    outbox.close()
    outcomes = publisher.resend_requests
    assert sum(outcomes.values()) == len(requests)
    assert outcomes[Outcome.FOREIGN] == 1
    assert outcomes[Outcome.MALFORMED] + outcomes[Outcome.NOT_HELD] == 3
    assert outcomes[Outcome.NOT_HELD] >= 1
    assert outcomes[Outcome.LIMITED] >= 1  # the first: 300 asked, 100 queued
    assert outcomes[Outcome.COALESCED] >= 1
    assert outcomes[Outcome.REFUSED] >= 1
    # the bucket: never more than the burst plus the rate over the time measured
    assert resent_in_window <= limits.burst + limits.rate * elapsed
    # a batch asked for again while it waits goes out once; the queue never holds more than its bound
    assert publisher.resent == len(received)
    assert publisher.resend_queue.queued <= limits.max_queued
    seqs = [int(payload.split()[1]) for payload in received]
    assert seqs[:20] == list(range(20))  # lowest first, a page at a time
    assert set(seqs) <= set(range(249))  # nothing beyond what was asked for
