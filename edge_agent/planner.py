"""Tags -> the fewest Modbus read requests. Pure.

Tags of one table are sorted by address and merged into one request while the merged span stays within
the protocol's limit (125 registers, 2000 bits) and the hole between neighbours is at most `max_gap`
registers (reading a few unused registers is cheaper than another round trip).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.profiles import Function, Profile

MAX_REGISTERS = 125
MAX_BITS = 2000


@dataclass(frozen=True)
class Span:
    """Something to read: a tag or a status block, `count` registers/bits from `address`."""

    name: str
    function: Function
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True)
class ReadRequest:
    function: Function
    address: int
    count: int
    spans: tuple[Span, ...] = field(default=())

    def slice_for(self, span: Span) -> slice:
        """Where in this request's answer a span's registers/bits sit."""
        start = span.address - self.address
        return slice(start, start + span.count)


def spans_of(profile: Profile) -> list[Span]:
    spans = [Span(tag.name, tag.function, tag.address, tag.type.words) for tag in profile.tag]
    spans += [Span(block.name, block.function, block.address, block.registers) for block in profile.status]
    return spans


def plan(spans: list[Span], max_gap: int = 10) -> list[ReadRequest]:
    """Merge spans into requests; output is ordered by function code, then address."""
    requests: list[ReadRequest] = []
    for function in sorted({span.function for span in spans}, key=lambda f: f.code):
        limit = MAX_BITS if function.is_bit else MAX_REGISTERS
        gap = max_gap * 16 if function.is_bit else max_gap
        group = sorted((s for s in spans if s.function is function), key=lambda s: (s.address, s.count, s.name))
        current: list[Span] = []
        start = end = 0
        for span in group:
            if current and span.address - end <= gap and max(end, span.end) - start <= limit:
                current.append(span)
                end = max(end, span.end)
                continue
            if current:
                requests.append(ReadRequest(function, start, end - start, tuple(current)))
            current, start, end = [span], span.address, span.end
        if current:
            requests.append(ReadRequest(function, start, end - start, tuple(current)))
    return requests
