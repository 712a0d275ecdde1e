"""Config files and the problems found in them, each one line: `FILE:LINE: KEY: what is wrong`.

Both programs report every config and start-up problem this way, whether pydantic found it while loading
or a start-up check found it later (a port in use, a folder that does not exist): the person reading it
goes straight to the line.
"""

from __future__ import annotations

import contextlib
import difflib
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ValidationError

from aua_ops.redaction import redact_text
from aua_ops.toml_lines import key_lines, line_of

Location = Sequence[str | int]


class ConfigError(ValueError):
    """A config (or profile) that cannot be used; the message is one line per problem, naming file, line, key."""


def read_toml_text(path: Path, error: type[ConfigError] = ConfigError) -> tuple[dict[str, object], str]:
    """The parsed document and its text (for line numbers). Every way of failing is one line, never a traceback:
    missing, a folder, unreadable, not UTF-8, not TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text (byte {problem.start}): save the file as UTF-8") from None
    except OSError as problem:
        raise error(f"{path}: cannot read: {problem.strerror or problem}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as problem:
        raise error(f"{path}: not valid TOML: {problem}") from None


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


@dataclass(frozen=True)
class ConfigFile:
    """A config file's path and text, to say where a key is: `where(("gateway", "http"))` ->
    `gw.toml:4: gateway.http`."""

    path: Path
    text: str | None = None
    document: Mapping[str, object] | None = None
    """the parsed file, to name array elements (key_text); None: dotted indexes from 0"""
    _lines: dict[tuple[str, ...], int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.text is not None:
            self._lines.update(key_lines(self.text))

    @classmethod
    def read(cls, path: Path, *, named: bool = False) -> ConfigFile:
        """For locating keys after loading: an unreadable file only loses the line numbers. `named`: name array
        elements (key_text)."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return cls(path)
        document = None
        if named:
            with contextlib.suppress(tomllib.TOMLDecodeError):
                document = tomllib.loads(text)
        return cls(path, text, document)

    def line(self, location: Location) -> int | None:
        return line_of(self._lines, location)

    def where(self, location: Location) -> str:
        line = self.line(location)
        return f"{self.path}{f':{line}' if line else ''}: {key_text(location, self.document)}"

    def problem(self, location: Location, message: str) -> str:
        return f"{self.where(location)}: {message}"


def describe_validation_error(
    error: ValidationError,
    source: str,
    text: str | None = None,
    *,
    model: type[BaseModel] | None = None,
    document: Mapping[str, object] | None = None,
) -> str:
    """One line per problem, each naming the dotted key path (tag.3.address) in `source` and, given the file's
    text, its line: `site.toml:54: instrument.0.port: Input should be ...`.

    Given the `model` validated and the parsed `document`, the lines speak to the person who wrote the file
    rather than to pydantic: an unknown key is `unknown key 'scaling' (did you mean 'scale'?)`, array elements
    are named and counted from 1 (`tag #10 "air_pressure".scale`), and "Value error, " is left out."""
    located = ConfigFile(Path(source), text, document)
    lines = []
    for item in error.errors(include_url=False):
        message = " ".join(item["msg"].split())
        if model is not None:
            if item["type"] == "extra_forbidden":
                message = unknown_key_message(str(item["loc"][-1]), known_keys(model, item["loc"][:-1]))
            message = message.removeprefix("Value error, ")
        lines.append(located.problem(item["loc"], redact_text(message)))
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
    """The keys the table at `location` may have, found by walking the model's fields; None if not a model."""
    current = model
    for part in location:
        if isinstance(part, int):
            continue  # an array element: its model was found with the array's field
        field_info = current.model_fields.get(part)
        found = None if field_info is None else _model_in(field_info.annotation)
        if found is None:
            return None
        current = found
    return list(current.model_fields)


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
