"""The wire contract between edge agents and the gateway: message models, topics, codec.

Pure data and functions, no I/O. Both sides import this package and nothing else from each other.
"""

from aua_contract.codec import (
    ContractError,
    decode_batch,
    decode_resend,
    decode_status,
    encode_batch,
    encode_resend,
    encode_status,
)
from aua_contract.models import (
    EARLIEST_TIME,
    IDENTIFIER_PATTERN,
    LATEST_TIME,
    MAX_ABS_VALUE,
    MAX_INT64,
    SCHEMA_VERSION,
    TEXT_PATTERN,
    AgentState,
    AgentStatus,
    Batch,
    Quality,
    Reading,
    ResendRequest,
)
from aua_contract.topics import (
    TOPIC_ROOT,
    TopicKind,
    TopicParts,
    parse_topic,
    readings_topic,
    resend_topic,
    status_topic,
    subscription,
)

__all__ = [
    "EARLIEST_TIME",
    "IDENTIFIER_PATTERN",
    "LATEST_TIME",
    "MAX_ABS_VALUE",
    "MAX_INT64",
    "SCHEMA_VERSION",
    "TEXT_PATTERN",
    "TOPIC_ROOT",
    "AgentState",
    "AgentStatus",
    "Batch",
    "ContractError",
    "Quality",
    "Reading",
    "ResendRequest",
    "TopicKind",
    "TopicParts",
    "decode_batch",
    "decode_resend",
    "decode_status",
    "encode_batch",
    "encode_resend",
    "encode_status",
    "parse_topic",
    "readings_topic",
    "resend_topic",
    "status_topic",
    "subscription",
]
