"""The agent's site config: who it is, where the broker is, which instruments to poll with which profile."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from aua_contract import IDENTIFIER_PATTERN
from edge_agent.profiles import ConfigError, Profile, describe_validation_error, load_profile, read_toml

Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Strict):
    site: Identifier
    id: Identifier
    poll_interval: Annotated[float, Field(gt=0, le=3600)] = 1.0
    outbox: Path = Path("var/agent-outbox.sqlite")
    batch_max_readings: Annotated[int, Field(ge=1, le=10_000)] = 1000


class MqttSection(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30


class Transport(StrEnum):
    TCP = "tcp"


class InstrumentSection(_Strict):
    id: Identifier
    profile: Path
    transport: Transport = Transport.TCP
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    device_id: Annotated[int, Field(ge=0, le=255)] = 1
    timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    max_gap: Annotated[int, Field(ge=0, le=124)] = 10


class AgentConfig(_Strict):
    agent: AgentSection
    mqtt: MqttSection = Field(default_factory=MqttSection)
    instrument: list[InstrumentSection] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_instruments(self) -> Self:
        ids = [item.id for item in self.instrument]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate instrument ids: {duplicates}")
        return self


class Instrument(BaseModel):
    """An instrument from the site config with its profile loaded."""

    model_config = ConfigDict(frozen=True)

    config: InstrumentSection
    profile: Profile

    @property
    def id(self) -> str:
        return self.config.id


class LoadedConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path
    config: AgentConfig
    instruments: list[Instrument]


def load_config(path: Path) -> LoadedConfig:
    """Read and validate a site config and every profile it names (relative paths are from the config's folder)."""
    try:
        config = AgentConfig.model_validate(read_toml(path))
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, str(path))) from None
    base = path.parent
    if not config.agent.outbox.is_absolute():
        config.agent.outbox = base / config.agent.outbox
    instruments = []
    for index, section in enumerate(config.instrument):
        profile_path = section.profile if section.profile.is_absolute() else base / section.profile
        try:
            profile = load_profile(profile_path)
        except ConfigError as error:
            raise ConfigError(f"{path}: instrument.{index}.profile ({section.id}): {error}") from None
        instruments.append(Instrument(config=section, profile=profile))
    return LoadedConfig(path=path, config=config, instruments=instruments)
