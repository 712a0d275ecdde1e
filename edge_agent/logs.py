"""Log output: human lines on a terminal, or one JSON object per line for journald/Loki/Elasticsearch."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from aua_ops import install_secret_filter

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """{"ts": "...Z", "level": "warning", "logger": "edge_agent.bus", "msg": "...", ...extra fields}."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_text:  # first: the secret filter leaves the traceback there, secrets masked
            document["exception"] = record.exc_text
        elif record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def configure(*, verbose: bool = False, json_lines: bool = False) -> None:
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Like logging.basicConfig: a process that configured logging already (a test runner, an embedding
    # application) keeps its handlers.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    install_secret_filter()  # URL credentials masked now; the config's own secrets are added once it is read
    # pymodbus logs every timeout as an error with a traceback; the agent reports them itself, once, counted.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def add_secrets(secrets: Iterable[str]) -> None:
    """The config's passwords and credential URLs, masked in every log line from now on."""
    install_secret_filter(secrets)
