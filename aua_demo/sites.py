"""The demo's sites: the example configs in config/, moved onto free local ports and a scratch folder."""

from __future__ import annotations

from pathlib import Path

from edge_agent.config import Instrument, LoadedConfig, load_config
from edge_agent.profiles import load_profile

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEMO_SITES = ("pavlodar-chp.toml", "pavlodar-ambient.toml")


def relocate(
    loaded: LoadedConfig, *, broker_host: str, broker_port: int, ports: dict[int, int], workdir: Path
) -> LoadedConfig:
    """Point the agent at the given broker, its instruments' ports through `ports`, its outbox into workdir."""
    config = loaded.config.model_copy(deep=True)
    config.mqtt.host, config.mqtt.port = broker_host, broker_port
    config.agent.outbox = workdir / f"outbox-{config.agent.site}-{config.agent.id}.sqlite"
    instruments = []
    for instrument in loaded.instruments:
        port = ports.get(instrument.config.port, instrument.config.port)
        section = instrument.config.model_copy(update={"port": port})
        instruments.append(Instrument(config=section, profile=instrument.profile))
    config.instrument = [instrument.config for instrument in instruments]
    return LoadedConfig(path=loaded.path, config=config, instruments=instruments)


def demo_sites() -> list[LoadedConfig]:
    return [load_config(CONFIG_DIR / name) for name in DEMO_SITES]


DCS_PROFILE = Path(__file__).resolve().parent / "profiles" / "dcs-unit.toml"
DCS_INSTRUMENT = "stack1-dcs"


def with_unit_signals(loaded: LoadedConfig, *, device_id: int = 10) -> LoadedConfig:
    """The stack's site with the boiler's DCS as one more instrument (unit state, load, coal feed), behind the
    same Modbus TCP port as the analyzers: the signals config/demo-gateway.toml derives the operating state from."""
    config = loaded.config.model_copy(deep=True)
    first = config.instrument[0]
    section = first.model_copy(update={"id": DCS_INSTRUMENT, "profile": DCS_PROFILE, "device_id": device_id})
    config.instrument = [*config.instrument, section]
    instruments = [*loaded.instruments, Instrument(config=section, profile=load_profile(DCS_PROFILE))]
    return LoadedConfig(path=loaded.path, config=config, instruments=instruments)
