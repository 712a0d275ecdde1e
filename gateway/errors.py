"""The gateway's base exception: every error the gateway raises on purpose is a `GatewayError`, so a caller can
tell "the gateway refused or could not" from a bug. Pure.

Each subclass also keeps the built-in base it always had (`AlertError` is a `ValueError`, `RevisionError` a
`LookupError`), so existing `except` clauses still catch it. The whole tree, for every package: docs/errors.md.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Something the gateway refused or could not do, said in one line (see docs/errors.md)."""
