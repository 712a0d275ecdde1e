"""What the agent and the gateway share to be operated, without importing each other: config files read
with the line of every key (so a problem is one line, FILE:LINE: KEY: what), start-up problems in that
form (aua_ops.startup, which probes sockets and files, so it is imported by name), and log output with no
secret in it."""

from aua_ops.config_errors import ConfigError, describe_validation_error, problem_line
from aua_ops.config_files import ConfigFile, read_toml_text
from aua_ops.durations import spoken_duration
from aua_ops.redaction import SecretFilter, install_secret_filter, redact_text, redact_url, secrets_of

__all__ = [
    "ConfigError",
    "ConfigFile",
    "SecretFilter",
    "describe_validation_error",
    "install_secret_filter",
    "problem_line",
    "read_toml_text",
    "redact_text",
    "redact_url",
    "secrets_of",
    "spoken_duration",
]
