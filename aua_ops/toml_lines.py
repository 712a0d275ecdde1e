"""Where a key is in a TOML file: a light line scan, since tomllib gives values but no line numbers. Pure.

Understands what site configs and profiles use: `[table]`, `[[array.of.tables]]` (counted, so
`instrument.2.port` is the `port` line of the third `[[instrument]]`), sub-tables of the last array element
(`[status.bits]`), `key = value` and dotted keys. Values spanning lines and multi-line strings are skipped.
An unknown path gives the line of its closest known parent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")

Path = tuple[str, ...]


def _parts(dotted: str) -> list[str]:
    return [part.strip().strip("\"'") for part in re.findall(r"""(?:"[^"]*"|'[^']*'|[^.]+)""", dotted)]


def key_lines(text: str) -> dict[Path, int]:
    """Every table and key path in the text -> its 1-based line (array elements as their index, in str)."""
    lines: dict[Path, int] = {}
    counts: dict[Path, int] = {}
    table: Path = ()
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        header = _HEADER.match(line)
        if header is not None:
            names = _parts(header.group(2))
            resolved: list[str] = []
            for index, name in enumerate(names):
                resolved.append(name)
                prefix = tuple(resolved)
                is_last = index == len(names) - 1
                if is_last and header.group(1) == "[[":
                    counts[prefix] = counts.get(prefix, -1) + 1
                    resolved.append(str(counts[prefix]))
                elif not is_last and prefix in counts:
                    resolved.append(str(counts[prefix]))
            table = tuple(resolved)
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key is None:
            continue
        path = table + tuple(_parts(key.group(1)))
        lines.setdefault(path, number)
        rest = line[key.end() :]
        for quote in ('"""', "'''"):
            if rest.count(quote) % 2 == 1:
                in_string = quote
    return lines


def line_of(lines: dict[Path, int], location: Sequence[str | int]) -> int | None:
    """The line of a key path as pydantic reports it (('instrument', 0, 'port')), or of its nearest parent."""
    path = tuple(str(part) for part in location)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None
