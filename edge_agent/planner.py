"""Tags -> the fewest Modbus read requests. Pure.

Tags of one table are sorted by address and merged into one request while the merged span stays within
the protocol's limit (125 registers, 2000 bits) and the hole between neighbours is at most `max_gap`
registers (reading a few unused registers is cheaper than another round trip).

When a device refuses a merged request (exception 2, illegal data address) the reader splits it in halves
(`halves`) until the refused tag, or the refused hole between tags, is found; what was learned becomes a
`Forbidden` range the next plan never reads across. `explain` says in words why each request is what it is.
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
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        # Requests key the answers of every poll: hash the spans once, not on every lookup.
        object.__setattr__(self, "_hash", hash((self.function, self.address, self.count, self.spans)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def end(self) -> int:
        return self.address + self.count

    def slice_for(self, span: Span) -> slice:
        """Where in this request's answer a span's registers/bits sit."""
        start = span.address - self.address
        return slice(start, start + span.count)


def spans_of(profile: Profile) -> list[Span]:
    spans = [Span(tag.name, tag.function, tag.address, tag.type.words) for tag in profile.tag]
    spans += [Span(block.name, block.function, block.address, block.registers) for block in profile.status]
    return spans


@dataclass(frozen=True)
class Forbidden:
    """Addresses [address, end) of one table that the device refuses: no request may include them."""

    function: Function
    address: int
    end: int

    def within(self, function: Function, start: int, end: int) -> bool:
        """Whether reading [start, end) of `function` would touch these addresses."""
        return function is self.function and self.address < end and start < self.end


def limit_of(function: Function) -> int:
    return MAX_BITS if function.is_bit else MAX_REGISTERS


def gap_of(function: Function, max_gap: int) -> int:
    """max_gap is in registers; in bit tables it allows 16 bits per register."""
    return max_gap * 16 if function.is_bit else max_gap


def plan(spans: list[Span], max_gap: int = 10, forbidden: tuple[Forbidden, ...] = ()) -> list[ReadRequest]:
    """Merge spans into requests; output is ordered by function code, then address.

    Two spans are never merged across a forbidden range (the hole between them would be refused).
    """
    requests: list[ReadRequest] = []
    for function in sorted({span.function for span in spans}, key=lambda f: f.code):
        limit = limit_of(function)
        gap = gap_of(function, max_gap)
        group = sorted((s for s in spans if s.function is function), key=lambda s: (s.address, s.count, s.name))
        current: list[Span] = []
        start = end = 0
        for span in group:
            if (
                current
                and span.address - end <= gap
                and max(end, span.end) - start <= limit
                and not any(f.within(function, start, max(end, span.end)) for f in forbidden)
            ):
                current.append(span)
                end = max(end, span.end)
                continue
            if current:
                requests.append(ReadRequest(function, start, end - start, tuple(current)))
            current, start, end = [span], span.address, span.end
        if current:
            requests.append(ReadRequest(function, start, end - start, tuple(current)))
    return requests


def request_for(spans: tuple[Span, ...]) -> ReadRequest:
    """The one request that covers these spans (all of one function)."""
    start = min(span.address for span in spans)
    end = max(span.end for span in spans)
    return ReadRequest(spans[0].function, start, end - start, spans)


def halves(request: ReadRequest) -> tuple[ReadRequest, ReadRequest] | None:
    """Split a refused request in two (by its spans, in address order); None when it reads one span only."""
    spans = sorted(request.spans, key=lambda s: (s.address, s.count, s.name))
    if len(spans) < 2:
        return None
    middle = len(spans) // 2
    return request_for(tuple(spans[:middle])), request_for(tuple(spans[middle:]))


def hole_between(left: ReadRequest, right: ReadRequest) -> Forbidden | None:
    """When both halves of a refused request are accepted, the unused registers between them were refused."""
    if right.address > left.end:
        return Forbidden(left.function, left.end, right.address)
    return None


def forbidden_span(span: Span) -> Forbidden:
    return Forbidden(span.function, span.address, span.end)


def explain(requests: list[ReadRequest], max_gap: int, forbidden: tuple[Forbidden, ...] = ()) -> list[str]:
    """One line per request: why these spans share it, and why it is not merged with the request before it."""
    lines = []
    previous: ReadRequest | None = None
    for request in requests:
        unit = _unit(request.function)
        limit = limit_of(request.function)
        gap = gap_of(request.function, max_gap)
        if len(request.spans) == 1:
            parts = [f"1 span, {request.count} {unit}"]
        else:
            unused = request.count - _covered(request)
            how = []
            if unused > 0:
                how.append(f"{unused} unused {unit} read along, largest hole {_largest_hole(request)} <= max_gap {gap}")
            how += [
                f"{a.name} and {b.name} read the same {unit} {max(a.address, b.address)}..{min(a.end, b.end) - 1}"
                for a, b in _shared(request)
            ]
            parts = [
                f"{len(request.spans)} spans in one read of {request.count} {unit} (limit {limit}): "
                + (", ".join(how) or "contiguous")
            ]
        if previous is not None and previous.function is request.function:
            hole = request.address - previous.end
            merged = max(previous.end, request.end) - previous.address
            refused = [f for f in forbidden if f.within(request.function, previous.address, request.end)]
            if refused:
                where = ", ".join(f"{f.address}..{f.end - 1}" for f in refused)
                parts.append(f"apart from the previous request: the device refused {where}")
            elif hole > gap:
                parts.append(f"apart from the previous request: {hole} unused {unit} between them > max_gap {gap}")
            elif merged > limit:
                parts.append(f"apart from the previous request: together {merged} {unit} > {limit} per request")
        lines.append("; ".join(parts))
        previous = request
    return lines


def _largest_hole(request: ReadRequest) -> int:
    largest, end = 0, request.address
    for span in sorted(request.spans, key=lambda s: s.address):
        largest = max(largest, span.address - end)
        end = max(end, span.end)
    return largest


def _shared(request: ReadRequest) -> list[tuple[Span, Span]]:
    """Pairs of spans reading the same registers or bits (a profile's deliberate `overlaps`), in address order."""
    spans = sorted(request.spans, key=lambda s: (s.address, s.count, s.name))
    return [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if b.address < a.end]


def _covered(request: ReadRequest) -> int:
    marks: set[int] = set()
    for span in request.spans:
        marks.update(range(span.address, span.end))
    return len(marks)


def _unit(function: Function) -> str:
    return "bits" if function.is_bit else "registers"
