"""The edge agent's base exception: every error the agent raises on purpose is an `AgentError`, so a caller can
tell "the agent refused or could not" from a bug. Pure.

Each subclass also keeps the built-in base it always had (`DecodeError` is a `ValueError`), so existing
`except` clauses still catch it. The whole tree, for every package: docs/errors.md.
"""

from __future__ import annotations


class AgentError(Exception):
    """Something the agent refused or could not do, said in one line (see docs/errors.md)."""
