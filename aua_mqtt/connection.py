"""The broker connection settings ([mqtt] of an agent and of a gateway) and the TLS context they describe."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

PLACEHOLDER_PREFIX = "change-me"
PLACEHOLDER_HELP = (
    "a placeholder password from the shipped examples: set a real one (the compose stack: python3 "
    "deploy/init-secrets.py generates them)"
)


def is_placeholder(secret: str) -> bool:
    """The shipped examples' passwords start with change-me: refused, so no deployment runs with a known one."""
    return secret.lower().startswith(PLACEHOLDER_PREFIX)


class BrokerConnection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    """a file holding the password (first line), read at each connection: a secret mounted by the deployment
    instead of a password in the config"""
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    tls: bool = False
    """TLS to the broker (port 8883 usually); implied by ca_file/cert_file/key_file"""
    ca_file: Path | None = None
    """CA certificate(s) that signed the broker's certificate; unset: the system's CA store"""
    cert_file: Path | None = None
    """client certificate (PEM) for brokers that authenticate clients by certificate"""
    key_file: Path | None = None
    """the client certificate's private key (PEM)"""
    insecure: bool = False
    """do not verify the broker's certificate or host name (testing only: anyone can pose as the broker)"""

    @property
    def use_tls(self) -> bool:
        return self.tls or self.insecure or any(f is not None for f in (self.ca_file, self.cert_file, self.key_file))

    @model_validator(mode="after")
    def _key_with_certificate(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate needs its private key)")
        if self.password is not None and self.password_file is not None:
            raise ValueError("password and password_file: give one")
        return self

    @field_validator("password")
    @classmethod
    def _not_a_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and is_placeholder(value.get_secret_value()):
            raise ValueError(PLACEHOLDER_HELP)
        return value

    def password_value(self) -> str | None:
        """The password, from the config or its file (OSError or ValueError when the file cannot be used)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        lines = self.password_file.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0]:
            raise ValueError(f"{self.password_file} is empty")
        if is_placeholder(lines[0]):
            raise ValueError(f"{self.password_file}: {PLACEHOLDER_HELP}")
        return lines[0]

    def password_problem(self) -> str | None:
        """Why the password file cannot be used, or None; for start-up checks."""
        try:
            self.password_value()
        except (OSError, UnicodeDecodeError) as error:
            return f"cannot read {self.password_file}: {getattr(error, 'strerror', None) or error}"
        except ValueError as error:
            return str(error)
        return None

    def resolve_paths(self, base: Path) -> None:
        """Certificate paths in a config file are relative to its folder, like every other path in it."""
        for name in ("ca_file", "cert_file", "key_file", "password_file"):
            value = getattr(self, name)
            if value is not None and not value.is_absolute():
                setattr(self, name, base / value)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for the connection: system CAs or ca_file, optional client certificate."""
        if not self.use_tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def client_options(self, identifier: str, *, tls_context: ssl.SSLContext | None = None) -> dict[str, Any]:
        """Keyword arguments for `aiomqtt.Client`: address, credentials, TLS. Certificates are read now (so a
        reconnect picks up renewed ones) unless the caller passes the context it already built."""
        return {
            "hostname": self.host,
            "port": self.port,
            "identifier": identifier,
            "keepalive": self.keepalive,
            "username": self.username,
            "password": self.password_value(),
            "tls_context": tls_context or self.tls_context(),
            "tls_insecure": True if self.insecure else None,
        }
