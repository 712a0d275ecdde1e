"""Bytes <-> messages. Every failure becomes one ContractError that says what is wrong and where."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from aua_contract.models import SCHEMA_VERSION, TEXT_PATTERN, AgentStatus, Batch, ResendRequest

M = TypeVar("M", bound=BaseModel)


class ContractError(ValueError):
    """A payload that is not a valid message of a version this side understands."""


def encode_batch(batch: Batch) -> bytes:
    return batch.model_dump_json(exclude_none=True).encode()


def encode_status(status: AgentStatus) -> bytes:
    return status.model_dump_json(exclude_none=True).encode()


def encode_resend(request: ResendRequest) -> bytes:
    return request.model_dump_json(exclude_none=True).encode()


def _load(payload: bytes, what: str) -> None:
    """The checks before the model's: JSON, an object, a schema version this side reads."""
    try:
        document = json.loads(payload)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer literal over 4300 digits
        raise ContractError(f"{what}: payload is not JSON ({error})") from None
    except RecursionError:
        raise ContractError(f"{what}: payload nests too deeply") from None
    if not isinstance(document, dict):
        raise ContractError(f"{what}: payload must be a JSON object, got {type(document).__name__}")
    if "v" not in document:
        raise ContractError(f"{what}: missing schema version field 'v'")
    version = document["v"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ContractError(f"{what}: unsupported schema version v={version!r} (this side reads v={SCHEMA_VERSION})")


def _decode(model: type[M], payload: bytes, what: str) -> M:
    """Strict, as on the fast path: numbers must be JSON numbers and times strings (the models are strict)."""
    _load(payload, what)
    try:
        return model.model_validate_json(payload)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(root)'}: {_message(item)}"
            for item in error.errors(include_url=False)[:5]
        )
        more = error.error_count() - 5
        suffix = f" (+{more} more)" if more > 0 else ""
        raise ContractError(f"{what}: {problems}{suffix}") from None


def _message(item: Mapping[str, Any]) -> str:
    """pydantic's message, except for free text, where a bare regular expression would hide what is wrong."""
    if item["type"] == "string_pattern_mismatch" and (item.get("ctx") or {}).get("pattern") == TEXT_PATTERN:
        return "must not contain control characters (NUL, CR, LF, tab, DEL, C1) or line separators"
    return str(item["msg"])


class _WireBatch(Batch):
    """A batch as it must arrive: `v` present and exactly the integer 1 (no default, no coercion)."""

    v: Annotated[int, Field(strict=True, ge=SCHEMA_VERSION, le=SCHEMA_VERSION)]  # type: ignore[assignment]


def decode_batch(payload: bytes) -> Batch:
    """Valid batches take pydantic's JSON fast path; anything else is parsed again for a precise message."""
    try:
        wire = _WireBatch.model_validate_json(payload)
    except ValidationError:
        return _decode(Batch, payload, "batch")
    return Batch.model_construct(
        v=SCHEMA_VERSION, site=wire.site, agent=wire.agent, seq=wire.seq, sent_at=wire.sent_at, readings=wire.readings
    )


def decode_status(payload: bytes) -> AgentStatus:
    return _decode(AgentStatus, payload, "status")


def decode_resend(payload: bytes) -> ResendRequest:
    return _decode(ResendRequest, payload, "resend request")
