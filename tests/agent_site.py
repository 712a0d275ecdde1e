"""Write agent site configs for tests: real TOML files, as an operator would, so `edge-agent` can read them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

PROFILES = Path(__file__).resolve().parent.parent / "config" / "profiles"


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _table(header: str, values: Mapping[str, object]) -> str:
    return "\n".join([header, *(f"{key} = {_value(value)}" for key, value in values.items())]) + "\n"


def write_site(
    path: Path,
    *,
    agent: Mapping[str, object],
    mqtt: Mapping[str, object],
    instruments: Sequence[Mapping[str, object]],
) -> Path:
    """A site config at `path`; instrument `profile` names a file in config/profiles (e.g. "stack-dust")."""
    parts = [_table("[agent]", agent), _table("[mqtt]", mqtt)]
    for instrument in instruments:
        values = dict(instrument)
        values["profile"] = str(PROFILES / f"{values['profile']}.toml")
        parts.append(_table("[[instrument]]", values))
    path.write_text("\n".join(parts))
    return path
