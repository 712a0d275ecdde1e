"""docs/profile-reference.md, generated from the profile model (edge_agent.profiles) so it cannot drift from it.

    .venv/bin/python -m edge_agent.profile_reference > docs/profile-reference.md

Every key's type, default and description come from the pydantic fields; the examples below are loaded as a
profile by the tests, so an example that stops being valid fails them, as does a committed file that differs
from `render()`.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Iterator

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from aua_contract import IDENTIFIER_PATTERN, TEXT_PATTERN
from edge_agent.profiles import NE107, ProfileInfo, StatusBlock, Tag, Vector

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    (
        "[profile]",
        ProfileInfo,
        """\
[profile]
name = "stack-gas-analyzer"
vendor = "ACME"
model = "GA-5000"
byte_order = "CDAB"              # low word first, for every tag that does not say otherwise
verified = true
notes = "GA-5000 Modbus manual rev. 3, table 7"
""",
    ),
    (
        "[[tag]]",
        Tag,
        """\
[[tag]]                          # a float32 in input registers 1000-1001 (manual: 31001), byte order of [profile]
name = "so2"
address = 1000
unit = "mg/m3"
status = "analyzer"

[[tag]]                          # a scaled integer: the device sends 1013 for 101.3 kPa
name = "pressure"
function = "holding"
address = 20
type = "uint16"
scale = 0.1
unit = "kPa"

[[tag]]                          # a 4-20 mA input in raw counts: 4000..20000 -> 0..100 %
name = "valve"
function = "holding"
address = 21
type = "uint16"
scale = 0.00625
offset = -25.0
unit = "%"

[[tag]]                          # one value in the other word order than the rest of the profile
name = "flow"
address = 1010
type = "float32"
byte_order = "ABCD"
unit = "m3/h"
""",
    ),
    (
        "[[status]]",
        StatusBlock,
        """\
[[status]]                       # discrete inputs 0-15, one bit per input
name = "analyzer"
address = 0                      # count = 16 by default
[status.bits]                    # set -> this quality
0 = "failure"
3 = "maintenance_required"
5 = "check_function"             # zero/span calibration running
[status.required]                # NOT set -> this quality
15 = "failure"                   # "system OK"

[[status]]                       # the same inputs again: flags only the tags that point here
name = "analyzer_maint"
address = 0
overlaps = ["analyzer"]          # deliberate: both blocks read discrete inputs 0-15
[status.bits]
8 = "maintenance_required"       # heated line fault: affects so2 only
""",
    ),
    (
        "[[vector]]",
        Vector,
        """\
[[vector]]
tag = "so2"
registers = [0x0000, 0x42C8]     # CDAB: low word first
expect = 100.0

[[vector]]
tag = "pressure"
registers = [1013]
expect = 101.3
note = "1013 x 0.1, exactly"

[[vector]]
tag = "valve"
registers = [12000]
expect = 50.0

[[vector]]
tag = "flow"
registers = [0x42CA, 0x999A]
expect = 101.3                   # float32 holds 101.30000305175781: the nearest float32 to 101.3 matches
""",
    ),
]

RULES = """\
## Rules the profile is checked against

`edge-agent validate`, `check` and `run` load every profile a site config names and refuse it, one line per
problem (`FILE:LINE: KEY: what`, tags named as in the file: `tag #10 "air_pressure".scale`), when:

- a key is unknown: `unknown key 'scaling' (did you mean 'scale'?)`;
- a value does not fit its key (type, range, a `bool` tag outside coil/discrete, `scale = 0`, a value running
  past address 65535, a status bit outside the block's `count`, a status bit mapped to a gateway-side flag);
- two tags or status blocks share a name, or a tag names a status block that does not exist;
- two tags or status blocks of one table read the same register or bit (a float32 at 1001 half on top of one
  at 1000), unless one of them names the other in `overlaps`;
- a test vector does not decode to its `expect` exactly, or has the wrong number of registers for its tag.

### Addresses

`address` is the 0-based protocol address within the table `function` names, as it travels in the request:
a manual's register 30001 (or 3x0001) is `function = "input"`, `address = 0`; 40001 is `function = "holding"`,
`address = 0`. A manual that already counts from 0 is copied as is; the vectors and `edge-agent check` (raw
registers next to the decoded value) show an off-by-one at once.

### Byte order

Multi-register values (32 and 64 bits) are named by the order their bytes arrive in: `ABCD` is big-endian,
Modbus's own; `CDAB` swaps the words (the common "low word first"); `BADC` swaps the bytes in each word;
`DCBA` does both. For 64-bit types the same rule applies to all four words. `[profile] byte_order` applies to
every tag; a tag's own `byte_order` overrides it for that tag only. 16-bit types use only the byte swap
(`BADC`/`DCBA` swap their two bytes).

### Scaling

value = raw x `scale` + `offset`, computed exactly in decimal and rounded once to the nearest float: raw 1013
with `scale = 0.1` is 101.3, not the 101.30000000000001 of float arithmetic. `scale` and `offset` are taken as
the decimals written in the file. A float tag's raw value is the exact binary number the registers hold.

### Status blocks

A status block is a run of bits: for `discrete`/`coil`, bit i is the input at `address + i`; for
`input`/`holding`, `count` bits are read from ceil(count / 16) registers, bit i being bit i % 16 (least
significant first) of register `address + i // 16`. `count` defaults to 16 (one register, or 16 inputs) and is
at most 63 (the bits travel as one signed 64-bit status integer; split a longer table into blocks).
`[status.bits]` maps a bit that is set to a quality, `[status.required]` a bit that must be set ("system OK")
to the quality when it is not. The qualities are NAMUR NE 107's: {qualities}.
The worst quality of all that apply is the one a reading gets.

A tag gets its quality from the block it names in `status`. To flag only some tags on a bit (a heated line
fault that affects so2 but not o2), declare a second block over the same bits with `overlaps = ["first
block"]` and point only those tags at it: each tag takes the quality of its own block (the planner reads both
in one request; `edge-agent plan` says they "read the same bits").

### Test vectors

Each `[[vector]]` gives the registers as the device sends them and the value they mean; the profile is refused
when a vector does not decode to `expect` exactly (`==`, no tolerance) through the tag's type, byte order,
scale and offset, or has more or fewer registers than the type. A float32 tag's vector may name the decimal
(`101.3`) whose nearest float32 the registers hold. Write them from the manual's worked examples, or compute
them independently (Python's `struct.pack('>f', 100.0)`), never with the agent's own decoder.
"""


def render() -> str:
    """The whole reference as Markdown."""
    parts = [
        "# Device profile reference\n",
        "<!-- Generated from edge_agent/profiles.py by `python -m edge_agent.profile_reference >"
        " docs/profile-reference.md`; tests/edge_agent/test_profiles.py fails when this file is stale. -->\n",
        "A device profile is a TOML file describing one instrument's Modbus register map: where each value is,"
        " how to decode it, which status bits set its quality, and test vectors proving the decoding. A site"
        ' config names the profile of each instrument (`profile = "profiles/stack-gas-analyzer.toml"`);'
        " adding an instrument means adding a profile, not code. The shipped ones are in `config/profiles/`.\n",
    ]
    for header, model, example in SECTIONS:
        parts.append(f"## `{header}`\n")
        parts.append(_first_paragraph(model) + "\n")
        parts.append("| key | type | default | description |\n|---|---|---|---|")
        parts.extend(_row(name, field) for name, field in model.model_fields.items())
        parts.append(f"\nExample:\n\n```toml\n{example}```\n")
    parts.append(RULES.format(qualities=", ".join(f"`{quality.value}`" for quality in sorted(NE107))))
    return "\n".join(parts)


def example_profile() -> str:
    """The examples of every section as one profile file (the tests load it)."""
    return "\n".join(example for _, _, example in SECTIONS)


def _first_paragraph(model: type[BaseModel]) -> str:
    """The docstring's first paragraph without its `[header]: ` (the section's title says it)."""
    text = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
    _, _, rest = text.partition(": ")
    return rest[:1].upper() + rest[1:] if rest else text


def _row(name: str, field: FieldInfo) -> str:
    cells = [f"`{name}`", _type_text(field), _default_text(field), field.description or ""]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _constraints(field: FieldInfo) -> Iterator[str]:
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            yield f">= {item.ge}"
        elif isinstance(item, annotated_types.Le):
            yield f"<= {item.le}"
        elif isinstance(item, annotated_types.MaxLen):
            yield f"at most {item.max_length} characters"
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 0:
            yield "not empty"
        pattern = getattr(item, "pattern", None)
        if pattern == IDENTIFIER_PATTERN:
            yield "letters, digits, `_` `.` `-`, at most 64, starting with a letter or digit"
        elif pattern == TEXT_PATTERN:
            yield "no control characters"


def _type_text(field: FieldInfo) -> str:
    text = _annotation_text(field.annotation)
    extra = list(_constraints(field))
    return f"{text} ({', '.join(extra)})" if extra else text


def _annotation_text(annotation: object) -> str:
    arguments = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is list:
        return {str: "list of names", int: "list of integers"}.get(arguments[0], f"list of {arguments[0]}")
    if origin is dict:
        return f"table: {_annotation_text(arguments[0])} -> {_annotation_text(arguments[1])}"
    if arguments and type(None) in arguments:
        return " or ".join(_annotation_text(a) for a in arguments if a is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if annotation.__name__ == "Quality":
            return "quality"
        return ", ".join(f'`"{member.value}"`' for member in annotation)
    names = {int: "integer", float: "number", str: "text", bool: "`true` or `false`"}
    if isinstance(annotation, type) and annotation in names:
        return names[annotation]
    return str(annotation)


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        return "`[]`" if isinstance(value, list) else "empty" if isinstance(value, dict) else f"`{value!r}`"
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        return f'`"{value.value}"`'
    return f"`{value!r}`"


if __name__ == "__main__":
    print(render(), end="")
