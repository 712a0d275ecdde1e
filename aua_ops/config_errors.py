"""The one form of a config problem, for both programs: `FILE:LINE: KEY: what is wrong`, one line each.

Every config and start-up problem of the agent and the gateway is written by `problem_line` (directly, through
`ConfigFile.problem`, or through `describe_validation_error` for what pydantic found), so the person reading
it goes straight to the line, whichever program and whichever check found it. Pure.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from aua_ops.redaction import redact_text
from aua_ops.toml_lines import key_lines, line_of

Location = Sequence[str | int]


class ConfigError(ValueError):
    """A config (or profile) that cannot be used; the message is one line per problem, naming file, line, key."""


def at_line(source: str | Path, line: int | None) -> str:
    """`FILE:LINE`, or `FILE` when the line is not known (a key the file does not have, a file not read)."""
    return f"{source}:{line}" if line else str(source)


def problem_line(source: str | Path, line: int | None, key: str, message: str) -> str:
    """`FILE:LINE: KEY: message`: the one line every config problem is."""
    return f"{at_line(source, line)}: {key}: {message}"


def key_text(location: Location, document: Mapping[str, object] | None = None) -> str:
    """`instrument.0.port`; given the parsed document, elements of an array of tables are named by their `name`
    or `id` and counted from 1, as a person counts them in the file: `tag #10 "air_pressure".scale`."""
    if document is None:
        return ".".join(str(part) for part in location) or "(top level)"
    text = ""
    node: object = document
    for part in location:
        if isinstance(part, int) and isinstance(node, list):
            element = node[part] if 0 <= part < len(node) else None
            text += f" #{part + 1}{_label(element)}"
            node = element
            continue
        text += f"{'.' if text else ''}{part}"
        node = node.get(str(part)) if isinstance(node, Mapping) else None
    return text or "(top level)"


def _label(element: object) -> str:
    if not isinstance(element, Mapping):
        return ""
    for key in ("name", "id"):
        if isinstance(element.get(key), str):
            return f' "{element[key]}"'
    if isinstance(element.get("tag"), str):  # a profile's test vector: named by the tag it tests
        return f' (tag "{element["tag"]}")'
    return ""


def describe_validation_error(
    error: ValidationError,
    source: str,
    text: str | None = None,
    *,
    model: type[BaseModel] | None = None,
    document: Mapping[str, object] | None = None,
) -> str:
    """One line per problem (`problem_line`), each naming the dotted key path (tag.3.address) in `source` and,
    given the file's text, its line: `site.toml:54: instrument.0.port: Input should be ...`.

    Given the `model` validated, an unknown key is `unknown key 'scaling' (did you mean 'scale'?)` rather than
    pydantic's "Extra inputs are not permitted". Given the parsed `document` too, the lines speak to the person
    who wrote the file: array elements are named and counted from 1 (`tag #10 "air_pressure".scale`; the agent's
    files: the gateway's keep dotted indexes, as its docs and messages name them). Pydantic's "Value error, "
    is left out for both."""
    found = key_lines(text) if text is not None else {}
    lines = []
    for item in error.errors(include_url=False):
        message = " ".join(item["msg"].split())
        if model is not None and item["type"] == "extra_forbidden":
            message = unknown_key_message(str(item["loc"][-1]), known_keys(model, item["loc"][:-1]))
        message = message.removeprefix("Value error, ")  # pydantic's wording, not the reader's
        location = item["loc"]
        lines.append(problem_line(source, line_of(found, location), key_text(location, document), redact_text(message)))
    return "\n".join(lines)


def unknown_key_message(key: str, known: Sequence[str] | None) -> str:
    """`unknown key 'scaling' (did you mean 'scale'?)`, or the keys allowed there when nothing is close."""
    if not known:
        return f"unknown key '{key}'"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key '{key}' (did you mean '{close[0]}'?)"
    return f"unknown key '{key}' (allowed here: {', '.join(known)})"


def known_keys(model: type[BaseModel], location: Location) -> list[str] | None:
    """The keys the table at `location` may have (as written in the file: aliases), found by walking the model's
    fields through arrays and tables of named tables (`[alerts.rules.NAME]`); None if not a model."""
    current = model
    parts = [part for part in location if not isinstance(part, int)]  # array elements: the array's model
    index = 0
    while index < len(parts):
        field_info = _field(current, str(parts[index]))
        if field_info is None:
            return None
        named = _named_tables_of(field_info.annotation)
        if named is not None:  # the next part is a name of the user's (a rule's name), then that table's keys
            if index + 1 >= len(parts):
                return None
            current, index = named, index + 2
            continue
        found = _model_in(field_info.annotation)
        if found is None:
            return None
        current, index = found, index + 1
    return [info.alias or name for name, info in current.model_fields.items()]


def _field(model: type[BaseModel], key: str) -> typing.Any:
    """The field a key of the file names: by its name or by its alias (`[[source]]` is the field `sources`)."""
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def _named_tables_of(annotation: object) -> type[BaseModel] | None:
    """The model of the values of a `dict[str, Model]` field (a table of tables named by the user)."""
    if typing.get_origin(annotation) in (dict, Mapping):
        arguments = typing.get_args(annotation)
        return _model_in(arguments[1]) if len(arguments) == 2 else None
    for argument in typing.get_args(annotation):
        found = _named_tables_of(argument)
        if found is not None:
            return found
    return None


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model inside an annotation such as `list[Tag]`, `Section | None` or `Annotated[Section, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (dict, Mapping):
        return None  # a table of free keys
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None
