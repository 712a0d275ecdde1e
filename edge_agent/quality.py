"""Status bits -> NE107 quality of a value. Pure."""

from __future__ import annotations

from aua_contract import Quality
from edge_agent.profiles import StatusBlock

# The worst flag wins when several bits are set.
SEVERITY = {
    Quality.OK: 0,
    Quality.MAINTENANCE_REQUIRED: 1,
    Quality.OUT_OF_SPECIFICATION: 2,
    Quality.CHECK_FUNCTION: 3,
    Quality.FAILURE: 4,
}


def worst(qualities: list[Quality]) -> Quality:
    return max(qualities, key=lambda q: SEVERITY.get(q, 0), default=Quality.OK)


def quality_from_bits(block: StatusBlock, bits: list[bool]) -> Quality:
    """The quality a status block's bits give its values (bits[i] is bit i of the block)."""
    flags = [quality for index, quality in block.bits.items() if bits[index]]
    flags += [quality for index, quality in block.required.items() if not bits[index]]
    return worst(flags)


def status_word(bits: list[bool]) -> int:
    """The block's bits as one integer (bit i = bits[i]), carried raw next to the value."""
    return sum(1 << index for index, bit in enumerate(bits) if bit)
