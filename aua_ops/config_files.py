"""Config files read with the line of every key, so that each problem is one line, `FILE:LINE: KEY: what is
wrong` (written by aua_ops/config_errors.py).

Both programs report every config and start-up problem this way, whether pydantic found it while loading
or a start-up check found it later (a port in use, a folder that does not exist): the person reading it
goes straight to the line.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aua_ops.config_errors import (
    ConfigError,
    Location,
    at_line,
    describe_validation_error,
    key_text,
    known_keys,
    problem_line,
    unknown_key_message,
)
from aua_ops.toml_lines import key_lines, line_of

__all__ = [  # the formatter lives in aua_ops/config_errors.py; these names were always importable from here
    "ConfigError",
    "ConfigFile",
    "describe_validation_error",
    "key_text",
    "known_keys",
    "read_toml_text",
    "unknown_key_message",
]


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

    def at(self, location: Location) -> str:
        """`gw.toml:4` (the file alone when the key's line is not known)."""
        return at_line(self.path, self.line(location))

    def where(self, location: Location) -> str:
        return f"{self.at(location)}: {key_text(location, self.document)}"

    def problem(self, location: Location, message: str) -> str:
        return problem_line(self.path, self.line(location), key_text(location, self.document), message)
