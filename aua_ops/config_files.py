"""Config files and the problems found in them, each one line: `FILE:LINE: KEY: what is wrong`.

Both programs report every config and start-up problem this way, whether pydantic found it while loading
or a start-up check found it later (a port in use, a folder that does not exist): the person reading it
goes straight to the line.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

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


def key_text(location: Location) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


@dataclass(frozen=True)
class ConfigFile:
    """A config file's path and text, to say where a key is: `where(("gateway", "http"))` ->
    `gw.toml:4: gateway.http`."""

    path: Path
    text: str | None = None
    _lines: dict[tuple[str, ...], int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.text is not None:
            self._lines.update(key_lines(self.text))

    @classmethod
    def read(cls, path: Path) -> ConfigFile:
        """For locating keys after loading: an unreadable file only loses the line numbers."""
        try:
            return cls(path, path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return cls(path)

    def line(self, location: Location) -> int | None:
        return line_of(self._lines, location)

    def where(self, location: Location) -> str:
        line = self.line(location)
        return f"{self.path}{f':{line}' if line else ''}: {key_text(location)}"

    def problem(self, location: Location, message: str) -> str:
        return f"{self.where(location)}: {message}"


def describe_validation_error(error: ValidationError, source: str, text: str | None = None) -> str:
    """One line per problem, each naming the dotted key path (tag.3.address) in `source` and, given the file's
    text, its line: `site.toml:54: instrument.0.port: Input should be ...`."""
    located = ConfigFile(Path(source), text)
    return "\n".join(
        located.problem(item["loc"], redact_text(" ".join(item["msg"].split())))
        for item in error.errors(include_url=False)
    )
