"""The agent's site config: who it is, where the broker is, which instruments to poll with which profile."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aua_contract import IDENTIFIER_PATTERN
from aua_mqtt import BrokerConnection
from aua_ops import ConfigError, ConfigFile, describe_validation_error, read_toml_text
from edge_agent.profiles import Profile, load_profile
from edge_agent.resend import ResendLimits

Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Strict):
    site: Identifier
    id: Identifier
    poll_interval: Annotated[float, Field(gt=0, le=3600)] = 1.0
    outbox: Path = Path("var/agent-outbox.sqlite")
    create_dirs: bool = False
    """create the outbox's folder at start if missing; off: a missing folder (often a typo) stops the start"""
    batch_max_readings: Annotated[int, Field(ge=1, le=10_000)] = 1000
    outbox_max_batches: Annotated[int, Field(ge=10)] = 1_000_000
    """bound of the outbox: past it the oldest batches go (acknowledged ones first; unsent ones counted as dropped)"""
    outbox_retention_s: Annotated[float, Field(ge=0)] = 7 * 86400
    """acknowledged batches stay this long for the gateway's resend requests"""
    outbox_max_bytes: Annotated[int, Field(ge=1 << 20)] = 1 << 30
    """bound of the outbox in payload bytes (the file is about 5 % more, plus up to 8 MiB of WAL)"""
    resend_max_batches: Annotated[int, Field(ge=1, le=100_000)] = ResendLimits.max_per_request
    """most batches one resend request republishes; gap repair asks again for the rest"""
    resend_max_queued: Annotated[int, Field(ge=1)] = ResendLimits.max_queued
    """most batches waiting to be republished; requests beyond are refused (and counted)"""
    resend_rate: Annotated[float, Field(gt=0, le=100_000)] = ResendLimits.rate
    """batches per second republished on resend requests, sustained (token bucket)"""
    resend_burst: Annotated[int, Field(ge=1, le=100_000)] = ResendLimits.burst
    """batches republished at once before resend_rate applies"""
    outbox_prune_interval_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    status_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """how often the retained status (with the outbox counters) is published"""
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Prometheus endpoint on this port; unset: off"""
    metrics_host: str = "127.0.0.1"
    clock_jump_s: Annotated[float, Field(gt=0)] = 2.0
    """warn when the wall clock moves this much more or less than the monotonic clock between two polls"""

    @property
    def resend_limits(self) -> ResendLimits:
        return ResendLimits(self.resend_max_batches, self.resend_max_queued, self.resend_rate, self.resend_burst)


class MqttSection(BrokerConnection):
    """[mqtt]: the broker, credentials and TLS (aua_mqtt, the same keys as the gateway's)."""


class Transport(StrEnum):
    TCP = "tcp"
    """Modbus TCP (MBAP header), to the instrument or a Modbus TCP gateway"""
    RTU = "rtu"
    """Modbus RTU on a local serial line (RS-485/RS-232): serial_port, baudrate, parity, ..."""
    RTU_OVER_TCP = "rtu-over-tcp"
    """RTU frames tunnelled through TCP by a serial device server in transparent mode"""

    @property
    def is_bus(self) -> bool:
        return self is not Transport.TCP


STANDARD_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class InstrumentSection(_Strict):
    id: Identifier
    profile: Path
    transport: Transport = Transport.TCP
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    device_id: Annotated[int, Field(ge=0, le=255)] = 1
    timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    max_gap: Annotated[int, Field(ge=0, le=124)] = 10
    serial_port: str | None = None
    """for transport = "rtu": the serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/..."""
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @model_validator(mode="after")
    def _transport_fields(self) -> Self:
        if self.transport is Transport.RTU and not self.serial_port:
            raise ValueError('transport "rtu" needs serial_port (e.g. "/dev/ttyUSB0")')
        if self.transport is not Transport.RTU and self.serial_port:
            raise ValueError(f'serial_port is only for transport "rtu", not "{self.transport}"')
        if self.transport.is_bus and not 1 <= self.device_id <= 247:
            raise ValueError(f"an RTU device id is 1 ... 247, not {self.device_id}")
        if self.baudrate not in STANDARD_BAUDRATES:
            raise ValueError(f"baudrate {self.baudrate} is not one of {', '.join(map(str, STANDARD_BAUDRATES))}")
        return self

    @property
    def bus_key(self) -> str | None:
        """Instruments with the same key share one bus (one master, one request at a time); None for Modbus TCP."""
        if self.transport is Transport.RTU:
            return f"rtu://{self.serial_port}"
        if self.transport is Transport.RTU_OVER_TCP:
            return f"rtu-over-tcp://{self.host}:{self.port}"
        return None

    @property
    def line_settings(self) -> tuple[int, str, int, int]:
        return self.baudrate, self.parity, self.stopbits, self.bytesize


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
        buses: dict[str, list[InstrumentSection]] = {}
        for item in self.instrument:
            if item.bus_key is not None:
                buses.setdefault(item.bus_key, []).append(item)
        for key, members in buses.items():
            devices = [m.device_id for m in members]
            clashes = sorted({d for d in devices if devices.count(d) > 1})
            if clashes:
                raise ValueError(f"{key}: more than one instrument with device id {clashes} on one bus")
            if members[0].transport is Transport.RTU and len({m.line_settings for m in members}) > 1:
                names = ", ".join(m.id for m in members)
                raise ValueError(f"{key}: instruments {names} share the line but not baudrate/parity/stopbits/bytesize")
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
    document, text = read_toml_text(path)
    try:
        config = AgentConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(
            describe_validation_error(error, str(path), text, model=AgentConfig, document=document)
        ) from None
    base = path.parent
    if not config.agent.outbox.is_absolute():
        config.agent.outbox = base / config.agent.outbox
    config.mqtt.resolve_paths(base)
    instruments = []
    for index, section in enumerate(config.instrument):
        profile_path = section.profile if section.profile.is_absolute() else base / section.profile
        try:
            profile = load_profile(profile_path)
        except ConfigError as error:
            # The instrument's line first, then each of the profile's problems at its own FILE:LINE.
            refused = ConfigFile(path, text, document).problem(
                ("instrument", index, "profile"), f"the profile {profile_path} cannot be used:"
            )
            raise ConfigError(f"{refused}\n{error}") from None
        instruments.append(Instrument(config=section, profile=profile))
    return LoadedConfig(path=path, config=config, instruments=instruments)
