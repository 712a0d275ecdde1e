"""A time given on the command line: ISO 8601, a time without a zone taken as UTC, as every gateway command does."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime


def cli_time(text: str) -> datetime:
    """An argparse `type`: the time in UTC, or a usage error that names the text and shows the form."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time such as 2024-06-01T00:00+05:00") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
