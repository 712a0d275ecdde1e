"""The gateway's config: broker, store, and where it keeps its own state."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError


class GatewayConfigError(ValueError):
    """A gateway config that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewaySection(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "gateway-1"
    state: Path = Field(default=Path("var/gateway-state.sqlite"), description="ledger and dead letters")
    spool: Path | None = Field(
        default=None, description="batches waiting while the store is down; default: next to `state`"
    )
    http: str | None = Field(
        default=None, pattern=r"^[^\s:]+:\d{1,5}$", description="HOST:PORT for /health and /metrics; unset: off"
    )
    write_max_readings: Annotated[int, Field(ge=1)] = Field(
        default=5000, description="readings gathered from many batches into one store write"
    )
    write_max_delay_s: Annotated[float, Field(ge=0, le=10)] = Field(
        default=0.0,
        description="how long a batch may wait for others to share its store write; 0: group only what is "
        "already queued (under load the queue fills while a write is in flight, so writes grow by themselves)",
    )
    write_queue_batches: Annotated[int, Field(ge=1)] = Field(
        default=2000, description="batches waiting for the writer before the MQTT consumer slows down"
    )
    gap_check_s: Annotated[float, Field(gt=0)] = Field(default=5.0, description="how often to look for missing batches")
    gap_grace_s: Annotated[float, Field(ge=0)] = Field(
        default=10.0, description="a missing batch is asked for only after this long (it may be in flight)"
    )
    gap_retry_s: Annotated[float, Field(gt=0)] = Field(default=30.0, description="ask again this often until filled")


    @property
    def spool_path(self) -> Path:
        return self.spool or self.state.with_name(f"{self.state.stem}-spool.sqlite")


class MqttSection(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    sites: str = Field(default="+", description="site id to subscribe to, or + for all")


class StoreSection(_Strict):
    url: str = Field(default="sqlite:///var/aua.sqlite", description="sqlite:///PATH or influx://HOST:PORT/DB")


class ParameterRule(_Strict):
    """What is plausible for one parameter; `*` matches any site or instrument."""

    site: str = "*"
    instrument: str = "*"
    parameter: str
    min: float | None = None
    max: float | None = None
    max_rate_per_s: Annotated[float, Field(gt=0)] | None = None
    stuck_samples: Annotated[int, Field(ge=2)] | None = None


class RegistrySection(_Strict):
    """Who may send and what is plausible. Empty lists accept everything (the demo's default)."""

    agents: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")]] = Field(
        default_factory=list, description="SITE/AGENT pairs allowed to publish; others are dead letters"
    )
    known_parameters_only: bool = Field(
        default=False, description="dead-letter readings whose instrument/parameter matches no [[registry.parameter]]"
    )
    parameter: list[ParameterRule] = Field(default_factory=list)
    max_payload_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_future_s: Annotated[float, Field(ge=0)] = 300.0
    max_age_days: Annotated[float, Field(gt=0)] = 30.0

    def rule_for(self, site: str, instrument: str, parameter: str) -> ParameterRule | None:
        """The most specific matching rule (exact instrument beats *, exact site beats *)."""
        best: tuple[int, ParameterRule] | None = None
        for rule in self.parameter:
            if rule.parameter != parameter or rule.site not in ("*", site) or rule.instrument not in ("*", instrument):
                continue
            score = (rule.instrument != "*") * 2 + (rule.site != "*")
            if best is None or score > best[0]:
                best = (score, rule)
        return None if best is None else best[1]


class GatewayConfig(_Strict):
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    store: StoreSection = Field(default_factory=StoreSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)


def resolve_store_url(url: str, base: Path) -> str:
    """Relative SQLite paths are relative to the config file, like every other path in it."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/"):
        return prefix + str((base / url[len(prefix) :]).resolve()).lstrip("/")
    return url


def load_gateway_config(path: Path) -> GatewayConfig:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise GatewayConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise GatewayConfigError(f"{path}: not valid TOML: {error}") from None
    try:
        config = GatewayConfig.model_validate(document)
    except ValidationError as error:
        lines = [
            f"{path}: {'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
            for item in error.errors(include_url=False)
        ]
        raise GatewayConfigError("\n".join(lines)) from None
    base = path.parent
    if not config.gateway.state.is_absolute():
        config.gateway.state = base / config.gateway.state
    if config.gateway.spool is not None and not config.gateway.spool.is_absolute():
        config.gateway.spool = base / config.gateway.spool
    config.store.url = resolve_store_url(config.store.url, base)
    return config
