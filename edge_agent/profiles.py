"""Device profiles: an instrument's register map declared as data, with test vectors as its proof.

A profile says where each value lives and how to decode it; a site config says where the instrument is.
Adding an instrument means adding a TOML file, not code.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from aua_contract import IDENTIFIER_PATTERN, TEXT_PATTERN, Quality
from aua_ops import ConfigError, ConfigFile, describe_validation_error, read_toml_text
from edge_agent.decoding import ByteOrder, DataType, DecodeError, decode_registers, scale_value


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
    """[profile]: what instrument the map is for, where it comes from, and the byte order of its values."""

    name: str = Field(description="the profile's name; by convention the file's name without .toml")
    vendor: str | None = Field(default=None, description="manufacturer, as on the instrument's plate")
    model: str | None = Field(default=None, description="instrument model or model family")
    byte_order: ByteOrder = Field(
        default=ByteOrder.ABCD,
        description="order of the bytes of multi-register values, for every tag that does not set its own:"
        " ABCD big-endian (Modbus's own), CDAB words swapped, BADC bytes swapped in each word, DCBA both",
    )
    verified: bool = Field(default=False, description="register numbers checked against the vendor manual")
    notes: str | None = Field(
        default=None, description="where the register map comes from (manual, version); say 'not verified' if not"
    )


class Tag(_Strict):
    """[[tag]]: one measured value: where it is, how to decode it, what unit it is in."""

    name: Annotated[
        str, Field(pattern=IDENTIFIER_PATTERN, description="the parameter's name in readings (so2, flow, ...)")
    ]
    function: Function = Field(
        default=Function.INPUT,
        description="Modbus table: input (FC04), holding (FC03), discrete (FC02) or coil (FC01)",
    )
    address: Annotated[
        int, Field(ge=0, le=65535, description="0-based protocol address (register 30001 in a manual is input 0)")
    ]
    type: DataType = Field(
        default=DataType.FLOAT32,
        description="int16, uint16, int32, uint32, int64, uint64, float32, float64 (registers), bool (coil/discrete)",
    )
    byte_order: ByteOrder | None = Field(
        default=None, description="this tag's byte order when it differs from [profile] byte_order"
    )
    scale: float = Field(
        default=1.0,
        description="multiplier, never 0 (0.1 for a value sent as value x 10); applied exactly in decimal:"
        " 1013 x 0.1 is 101.3",
    )
    offset: float = Field(default=0.0, description="added after scaling: value = raw x scale + offset")
    unit: Annotated[
        str,
        Field(
            min_length=1,
            max_length=32,
            pattern=TEXT_PATTERN,
            description="engineering unit as the readings carry it (mg/m3, %, degC, m/s, ...)",
        ),
    ]
    status: str | None = Field(default=None, description="name of the status block giving this value's quality")
    overlaps: list[str] = Field(
        default_factory=list,
        description="names of tags or status blocks this one deliberately shares registers with (else refused)",
    )

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
"""The qualities an instrument's own status bits can give (NAMUR NE 107); the rest are set by the gateway."""


STATUS_BITS_MAX = 63
"""A block's bits travel as one raw status integer, which stores keep as a signed 64-bit integer (InfluxDB,
SQLite): a longer status table is split into several blocks."""


class StatusBlock(_Strict):
    """[[status]]: status bits that set the NE107 quality of the values that point at this block.

    For bit tables (coil/discrete) bit i is the input at address + i; for registers (uint16 words read
    from address on, `count` of them) bit i is bit i % 16 of word i // 16, least significant first.
    """

    name: Annotated[
        str, Field(pattern=IDENTIFIER_PATTERN, description="the block's name, which tags give as their status")
    ]
    function: Function = Field(
        default=Function.DISCRETE,
        description="discrete or coil: one bit per address; input or holding: 16 bits per register",
    )
    address: Annotated[int, Field(ge=0, le=65535, description="0-based protocol address of the first bit/register")]
    count: Annotated[
        int,
        Field(
            ge=1,
            le=STATUS_BITS_MAX,
            description="how many bits the block has (read as count inputs, or ceil(count / 16) registers)",
        ),
    ] = 16
    bits: dict[int, Quality] = Field(default_factory=dict, description="bit index -> quality when the bit is set")
    required: dict[int, Quality] = Field(
        default_factory=dict, description="bit index -> quality when the bit is NOT set (e.g. 'system OK')"
    )
    overlaps: list[str] = Field(
        default_factory=list,
        description="names of status blocks (or tags) this block deliberately shares bits with, e.g. a second"
        " block over the same inputs that flags only some tags",
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
                    f" to NAMUR NE 107 qualities only ({', '.join(sorted(NE107))})"
                )
        return self


class Vector(_Strict):
    """[[vector]]: raw registers -> expected engineering value, checked whenever the profile is loaded."""

    tag: str = Field(description="name of the tag the vector decodes")
    registers: list[int] = Field(description="the registers as the device sends them (as many as the tag's type has)")
    expect: float = Field(
        description="the engineering value they mean, compared exactly (a float32 vector may name the decimal whose"
        " nearest float32 the registers hold)"
    )
    note: str | None = Field(default=None, description="how the vector was computed, for the next reader")


class Profile(_Strict):
    """A device profile file."""

    profile: ProfileInfo
    tag: list[Tag] = Field(min_length=1)
    status: list[StatusBlock] = Field(default_factory=list)
    vector: list[Vector] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Self:
        if info.context and info.context.get("located"):
            return self  # load_profile reports these with the line of each
        problems = profile_problems(self)
        if problems:
            raise ValueError("; ".join(f"{_key(location)}: {message}" for location, message in problems))
        return self

    def byte_order_of(self, tag: Tag) -> ByteOrder:
        return tag.byte_order or self.profile.byte_order

    def tag_named(self, name: str) -> Tag:
        return next(tag for tag in self.tag if tag.name == name)


Location = tuple[str | int, ...]


def _key(location: Location) -> str:
    return ".".join(str(part) for part in location)


def _who(kind: str, index: int, name: str) -> str:
    """How messages name a tag or block: as the file shows it, counted from 1."""
    return f'{kind} #{index + 1} "{name}"'


def _where(element: Tag | StatusBlock) -> str:
    unit = "bit" if element.function.is_bit else "register"
    count = element.type.words if isinstance(element, Tag) else element.registers
    what = element.type.value if isinstance(element, Tag) else f"{element.count}-bit status block"
    last = element.address + count - 1
    span = f"{unit} {element.address}" if count == 1 else f"{unit}s {element.address}..{last}"
    return f"{what} at {element.function} {span}"


def profile_problems(profile: Profile) -> list[tuple[Location, str]]:
    """What makes a profile inconsistent beyond each key's own type: names used twice, references to nothing,
    tags whose registers overlap, and test vectors that the declared map does not decode as written. Pure;
    each problem with the location of the key to fix."""
    problems = _name_problems(profile)
    problems += _overlap_problems(profile)
    problems += vector_problems(profile)
    return problems


def _name_problems(profile: Profile) -> list[tuple[Location, str]]:
    problems: list[tuple[Location, str]] = []
    # Tags and status blocks share one namespace: the planner reads both as named spans.
    seen: dict[str, str] = {}
    elements: list[tuple[str, int, Tag | StatusBlock]] = [("tag", i, t) for i, t in enumerate(profile.tag)]
    elements += [("status", i, b) for i, b in enumerate(profile.status)]
    every = {element.name for _, _, element in elements}
    for kind, index, element in elements:
        first = seen.get(element.name)
        if first is not None:
            problems.append(
                ((kind, index, "name"), f'the name "{element.name}" is already used by {first}: names must be unique')
            )
        else:
            seen[element.name] = _who(kind, index, element.name)
        problems.extend(
            ((kind, index, "overlaps"), f'names "{other}", which is no tag or status block')
            for other in element.overlaps
            if other not in every
        )
    blocks = {block.name for block in profile.status}
    for index, tag in enumerate(profile.tag):
        if tag.status is not None and tag.status not in blocks:
            known = f" (status blocks: {', '.join(sorted(blocks))})" if blocks else " (the profile has no [[status]])"
            problems.append((("tag", index, "status"), f"unknown status block '{tag.status}'{known}"))
    names = {tag.name for tag in profile.tag}
    for index, vector in enumerate(profile.vector):
        if vector.tag not in names:
            problems.append((("vector", index, "tag"), f"unknown tag '{vector.tag}'"))
    return problems


def _overlap_problems(profile: Profile) -> list[tuple[Location, str]]:
    """Two spans of one table that share a register (or bit) are refused, unless either names the other in
    `overlaps`: a float32 at 1001 over one at 1000 would read half of each, silently."""
    spans: list[tuple[str, int, Tag | StatusBlock, int]] = [
        ("tag", i, tag, tag.type.words) for i, tag in enumerate(profile.tag)
    ]
    spans += [("status", i, block, block.registers) for i, block in enumerate(profile.status)]
    problems: list[tuple[Location, str]] = []
    shared: set[frozenset[str]] = set()
    for later, (kind, index, element, count) in enumerate(spans):
        for other_kind, other_index, other, other_count in spans[:later]:  # each pair once, at the later one
            if other.function is not element.function or not (
                element.address < other.address + other_count and other.address < element.address + count
            ):
                continue
            if other.name in element.overlaps or element.name in other.overlaps:
                shared.add(frozenset((element.name, other.name)))
                continue
            same = element.address == other.address and count == other_count
            problems.append(
                (
                    (kind, index, "address"),
                    f"{_where(element)} {'is at the same address as' if same else 'overlaps'}"
                    f" {_who(other_kind, other_index, other.name)} ({_where(other)}): give one of them"
                    f' its own address, or add overlaps = ["{other.name}"] if both are meant to read it'
                    " (e.g. two status blocks over the same bits)",
                )
            )
    names = {element.name for _, _, element, _ in spans}
    problems.extend(
        ((kind, index, "overlaps"), f'names "{other_name}", but they share no register or bit')
        for kind, index, element, _ in spans
        for other_name in element.overlaps
        if other_name in names and frozenset((element.name, other_name)) not in shared
    )
    return problems


def vector_problems(profile: Profile) -> list[tuple[Location, str]]:
    """Every test vector decoded through the declared map, compared exactly: the vectors are the proof that the
    register map is read as the manual means. A float32 vector may name the decimal (101.3) of which the
    registers hold the nearest float32."""
    problems: list[tuple[Location, str]] = []
    tags = {tag.name: tag for tag in profile.tag}
    for index, vector in enumerate(profile.vector):
        tag = tags.get(vector.tag)
        if tag is None:
            continue  # reported as an unknown tag
        where: Location = ("vector", index)
        if tag.function.is_bit:
            problems.append(((*where, "tag"), f'tag "{tag.name}" is a bit ({tag.function}): vectors are for registers'))
            continue
        if len(vector.registers) != tag.type.words:
            problems.append(
                (
                    (*where, "registers"),
                    f"{len(vector.registers)} register{'s' if len(vector.registers) != 1 else ''} given, but tag"
                    f' "{tag.name}" is {tag.type}: {tag.type.words} register{"s" if tag.type.words > 1 else ""}',
                )
            )
            continue
        order = profile.byte_order_of(tag)
        try:
            value = scale_value(decode_registers(vector.registers, tag.type, order), tag.scale, tag.offset)
        except (DecodeError, OverflowError, ValueError) as error:
            problems.append(((*where, "registers"), str(error)))
            continue
        if value == vector.expect or _float32_of(vector.expect, tag) == value:
            continue
        scaled = f" x {tag.scale!r}" if tag.scale != 1 else ""
        scaled += f" + {tag.offset!r}" if tag.offset else ""
        words = ", ".join(f"0x{word:04X}" for word in vector.registers)
        problems.append(
            (
                (*where, "expect"),
                f"registers [{words}] decode to {value!r} ({tag.type} {order}{scaled}), not {vector.expect!r}:"
                " the vector or the tag's type, byte order, scale or offset is wrong",
            )
        )
    return problems


def _float32_of(expect: float, tag: Tag) -> float | None:
    """The float32 nearest `expect`, for an unscaled float32 tag (None otherwise)."""
    if tag.type is not DataType.FLOAT32 or tag.scale != 1 or tag.offset:
        return None
    try:
        return float(struct.unpack(">f", struct.pack(">f", expect))[0])
    except (OverflowError, struct.error):
        return None


def read_toml(path: Path) -> dict[str, object]:
    return read_toml_text(path)[0]


def load_profile(path: Path) -> Profile:
    """Read and check a profile: one line per problem, FILE:LINE: KEY: what, tags named as in the file."""
    document, text = read_toml_text(path)
    try:
        profile = Profile.model_validate(document, context={"located": True})
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, str(path), text, model=Profile, document=document)) from None
    problems = profile_problems(profile)
    if problems:
        located = ConfigFile(path, text, document)
        raise ConfigError("\n".join(located.problem(location, message) for location, message in problems))
    return profile


__all__: Sequence[str] = ["Profile", "load_profile", "profile_problems", "vector_problems"]
