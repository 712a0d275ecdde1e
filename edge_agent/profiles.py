"""Device profiles: an instrument's register map declared as data, with test vectors as its proof.

A profile says where each value lives and how to decode it; a site config says where the instrument is.
Adding an instrument means adding a TOML file, not code.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aua_contract import IDENTIFIER_PATTERN, TEXT_PATTERN, Quality
from aua_ops import ConfigError, describe_validation_error, read_toml_text
from edge_agent.decoding import ByteOrder, DataType


class Function(StrEnum):
    """Modbus table a tag is read from, named for humans; the function code follows."""

    COIL = "coil"  # FC01
    DISCRETE = "discrete"  # FC02
    HOLDING = "holding"  # FC03
    INPUT = "input"  # FC04

    @property
    def is_bit(self) -> bool:
        return self in (Function.COIL, Function.DISCRETE)

    @property
    def code(self) -> int:
        return {Function.COIL: 1, Function.DISCRETE: 2, Function.HOLDING: 3, Function.INPUT: 4}[self]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileInfo(_Strict):
    name: str
    vendor: str | None = None
    model: str | None = None
    byte_order: ByteOrder = ByteOrder.ABCD
    verified: bool = Field(default=False, description="register numbers checked against the vendor manual")
    notes: str | None = None


class Tag(_Strict):
    """One measured value: where it is, how to decode it, what unit it is in."""

    name: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
    function: Function = Function.INPUT
    address: Annotated[int, Field(ge=0, le=65535)]
    type: DataType = DataType.FLOAT32
    byte_order: ByteOrder | None = None
    scale: float = Field(default=1.0, description="multiplier, never 0 (value x 10^-n for scaled integers)")
    offset: float = 0.0
    unit: Annotated[str, Field(min_length=1, max_length=32, pattern=TEXT_PATTERN)]  # what the contract carries
    status: str | None = Field(default=None, description="name of the status block giving this value's quality")

    @model_validator(mode="after")
    def _type_fits_function(self) -> Self:
        if self.function.is_bit != (self.type is DataType.BOOL):
            raise ValueError(f"type {self.type} cannot be read from {self.function} (bool goes with coil/discrete)")
        if self.scale == 0:
            raise ValueError("scale must not be 0 (every reading would be 0)")
        if self.address + self.type.words > 65536:
            raise ValueError(f"{self.type} at address {self.address} runs past the last Modbus address 65535")
        return self


NE107 = frozenset(
    {Quality.OK, Quality.MAINTENANCE_REQUIRED, Quality.OUT_OF_SPECIFICATION, Quality.CHECK_FUNCTION, Quality.FAILURE}
)
"""The qualities an instrument's own status bits can give (cems-mrv.md §3); the rest are set by the gateway."""


STATUS_BITS_MAX = 63
"""A block's bits travel as one raw status integer, which stores keep as a signed 64-bit integer (InfluxDB,
SQLite): a longer status table is split into several blocks."""


class StatusBlock(_Strict):
    """Status bits that set the NE107 quality of the values that point at this block.

    For bit tables (coil/discrete) bit i is the input at address + i; for registers (uint16 words read
    from address on, `count` of them) bit i is bit i % 16 of word i // 16, least significant first.
    """

    name: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
    function: Function = Function.DISCRETE
    address: Annotated[int, Field(ge=0, le=65535)]
    count: Annotated[int, Field(ge=1, le=STATUS_BITS_MAX)] = 16
    bits: dict[int, Quality] = Field(default_factory=dict, description="bit index -> quality when the bit is set")
    required: dict[int, Quality] = Field(
        default_factory=dict, description="bit index -> quality when the bit is NOT set (e.g. 'system OK')"
    )

    @property
    def registers(self) -> int:
        return self.count if self.function.is_bit else (self.count + 15) // 16

    @model_validator(mode="after")
    def _bits_in_range(self) -> Self:
        for index, quality in (*self.bits.items(), *self.required.items()):
            if not 0 <= index < self.count:
                raise ValueError(f"status bit {index} is outside the block's {self.count} bits")
            if quality not in NE107:
                raise ValueError(
                    f"status bit {index} maps to {quality.value!r}, a gateway-side flag; instrument status bits map"
                    f" to NE107 qualities only ({', '.join(sorted(NE107))}), cems-mrv.md §3"
                )
        return self


class Vector(_Strict):
    """Raw registers -> expected engineering value; the tests check every profile's vectors."""

    tag: str
    registers: list[int]
    expect: float
    note: str | None = None


class Profile(_Strict):
    profile: ProfileInfo
    tag: list[Tag] = Field(min_length=1)
    status: list[StatusBlock] = Field(default_factory=list)
    vector: list[Vector] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references_resolve(self) -> Self:
        names = [tag.name for tag in self.tag]
        # Tags and status blocks share one namespace: the planner reads both as named spans.
        every = names + [block.name for block in self.status]
        duplicates = {name for name in every if every.count(name) > 1}
        if duplicates:
            raise ValueError(f"duplicate tag or status block names: {sorted(duplicates)}")
        blocks = {block.name for block in self.status}
        for tag in self.tag:
            if tag.status is not None and tag.status not in blocks:
                raise ValueError(f"tag {tag.name!r} refers to unknown status block {tag.status!r}")
        for vector in self.vector:
            if vector.tag not in names:
                raise ValueError(f"vector refers to unknown tag {vector.tag!r}")
        return self

    def byte_order_of(self, tag: Tag) -> ByteOrder:
        return tag.byte_order or self.profile.byte_order

    def tag_named(self, name: str) -> Tag:
        return next(tag for tag in self.tag if tag.name == name)


def read_toml(path: Path) -> dict[str, object]:
    return read_toml_text(path)[0]


def load_profile(path: Path) -> Profile:
    document, text = read_toml_text(path)
    try:
        return Profile.model_validate(document)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, str(path), text)) from None
