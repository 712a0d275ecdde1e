"""Modbus TCP framing for the read functions: the MBAP header around the PDU RTU also carries. Pure.

`transaction, protocol 0, length, unit` then `function, address, count`. Answers are matched to requests by
transaction id, so a late answer to a request that timed out can never be taken for the next one's.
"""

from __future__ import annotations

import struct

from edge_agent.rtu import READ_FUNCTIONS

HEADER = struct.Struct(">HHHB")
"""transaction id, protocol id (0), length of what follows (unit id + PDU), unit id"""
HEADER_SIZE = HEADER.size
_REQUEST = struct.Struct(">HHHBBHH")
MAX_FRAME = 260
"""largest Modbus TCP frame: 7-byte header + 253-byte PDU"""


def read_request(transaction: int, unit: int, function: int, address: int, count: int) -> bytes:
    if function not in READ_FUNCTIONS:
        raise ValueError(f"function code {function} is not a read function (1-4)")
    limit = 2000 if function <= 2 else 125
    if not 1 <= count <= limit or not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError(f"cannot read {count} from address {address} with function {function}")
    return _REQUEST.pack(transaction & 0xFFFF, 0, 6, unit, function, address, count)


def frame_size(head: bytes) -> int | None:
    """The whole frame's size from its header; None while fewer than 6 bytes are there; 0 if it is no frame."""
    if len(head) < 6:
        return None
    protocol = int.from_bytes(head[2:4], "big")
    length = int.from_bytes(head[4:6], "big")
    if protocol != 0 or not 2 <= length <= MAX_FRAME - 6:
        return 0
    return 6 + length


def split_frame(frame: bytes) -> tuple[int, int, bytes]:
    """(transaction id, unit id, PDU) of one whole frame."""
    transaction, _protocol, _length, unit = HEADER.unpack_from(frame)
    return transaction, unit, frame[HEADER_SIZE:]
