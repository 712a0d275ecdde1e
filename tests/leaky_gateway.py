"""`cems-gateway` with a memory leak put in on purpose, to show the hostile campaign's RSS bound catches one.

`python tests/leaky_gateway.py BYTES run CONFIG`: the real gateway, except that each MQTT message it handles
leaves BYTES behind for good, as a gateway would that kept every payload, or a cache entry per name, forever.
bench/hostile_input.py --leak-bytes runs the campaign against it; the round must fail its RSS check.
"""

from __future__ import annotations

import sys
from typing import Any

from gateway import cli
from gateway.ingest.service import Ingest

_kept: list[bytes] = []


def _leak(size: int) -> None:
    handle = Ingest.handle

    async def leaking(self: Ingest, topic: str, payload: bytes, *args: Any, **kwargs: Any) -> None:
        _kept.append(b"x" * size)  # written, so its pages are resident
        await handle(self, topic, payload, *args, **kwargs)

    Ingest.handle = leaking  # type: ignore[method-assign]


if __name__ == "__main__":
    _leak(int(sys.argv[1]))
    sys.exit(cli.main(sys.argv[2:]))
