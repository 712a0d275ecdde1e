"""No secret in a log line: credentials inside URLs (`user:password@`, `?token=`) and the secret values a
config names (passwords, tokens, notifier URLs) are replaced by `***` in every record a handler we install
writes, whatever logged it (httpx logs each request's URL at INFO) and at every level."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

MASK = "***"

# scheme://userinfo@ : the userinfo (user, or user:password) goes, the host stays
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/@?#]+)@")
# ?token=... &api_key=... in a URL's query, and password=... token=... secret=... anywhere
_SECRET_PARAM = re.compile(
    r"(?P<name>(?:[?&;][A-Za-z0-9_.-]*(?:token|password|passwd|pwd|secret|key|auth|signature|sig)[A-Za-z0-9_-]*"
    r"|\b[A-Za-z0-9_-]*(?:password|passwd|token|secret))=)(?P<value>[^\s&;#'\"]+)",
    re.IGNORECASE,
)
_MIN_SECRET = 4  # a shorter configured value would mask ordinary words and numbers


def redact_url(url: str) -> str:
    """The URL without userinfo and without secret query values, for messages, logs and stored records."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{MASK}@{host}" + (f":{parts.port}" if parts.port is not None else "")
        parts = parts._replace(netloc=netloc)
    return redact_text(urlunsplit(parts))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL credentials, secret-looking parameters and the given secret values masked."""
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}{MASK}", text)


class SecretFilter(logging.Filter):
    """Rewrites each record's message (and its traceback text) with secrets masked; drops nothing."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Configured secret values (passwords, tokens, whole notifier URLs), masked wherever they appear."""
        for secret in secrets:
            if secret and len(secret) >= _MIN_SECRET:
                self.secrets.add(secret)
                # a URL's password also shows percent-decoded or inside the URL it came from
                parts = urlsplit(secret) if "://" in secret else None
                if parts is not None and parts.password and len(parts.password) >= _MIN_SECRET:
                    self.secrets.add(parts.password)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.secrets)
        return True


def install_secret_filter(secrets: Iterable[str] = ()) -> SecretFilter:
    """Put one SecretFilter on every handler of the root logger (and on loggers that have their own handlers),
    and return it so the config's secrets can be added once the config is read."""
    existing = next((f for h in logging.getLogger().handlers for f in h.filters if isinstance(f, SecretFilter)), None)
    secret_filter = existing or SecretFilter()
    secret_filter.add_secrets(secrets)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        if isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                if secret_filter not in handler.filters:
                    handler.addFilter(secret_filter)
    return secret_filter


def _first_line(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()[:1]
    except (OSError, UnicodeDecodeError):
        return []  # the start-up checks say why


def secrets_of(model: BaseModel) -> set[str]:
    """Every secret a config holds: SecretStr values (notifier URLs whole: their tokens may sit in host or path),
    the contents of *password_file/*token_file keys, and the passwords of URLs, found by walking the model, so a
    new secret key is covered without listing it here."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, SecretStr):
            found.add(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                field = getattr(value, name)
                if name.endswith("_file") and ("password" in name or "token" in name) and field is not None:
                    found.update(_first_line(Path(field)))
                else:
                    walk(field)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, str) and "://" in value and redact_url(value) != value:
            # a plain URL keeps its host and path in logs: its password goes (and userinfo and ?token= by pattern)
            password = urlsplit(value).password
            if password:
                found.add(password)
                found.add(unquote(password))

    walk(model)
    return {secret for secret in found if len(secret) >= _MIN_SECRET}
