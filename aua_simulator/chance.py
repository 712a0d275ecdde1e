"""Pure: the simulator's only source of chance, a hash of (seed, key), so any tick can be recomputed on its own,
in any order, with the same result.
"""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist

_NORMAL = NormalDist()


def uniform(seed: int, *key: object) -> float:
    """A number in [0, 1) fixed by the seed and the key: the simulator's only source of chance."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def gauss(seed: int, *key: object) -> float:
    """A standard normal number fixed by the seed and the key."""
    return _NORMAL.inv_cdf(min(max(uniform(seed, *key), 1e-12), 1 - 1e-12))


def drift(seed: int, name: str, t: float, period: float) -> float:
    """Smooth noise (roughly standard normal) that wanders over `period` seconds: weather, fuel, load wobble.

    Normal values at knots `period` apart, eased between them, so consecutive ticks stay close.
    """
    position = t / period
    knot = math.floor(position)
    ease = (1 - math.cos(math.pi * (position - knot))) / 2
    before, after = gauss(seed, name, period, knot), gauss(seed, name, period, knot + 1)
    return before + (after - before) * ease


def clamp(value: float, low: float, high: float) -> float:
    """`value` held within [low, high]."""
    return min(max(value, low), high)
