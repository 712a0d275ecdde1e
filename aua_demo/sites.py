"""The demo's sites: the example configs in config/, moved onto free local ports and a scratch folder."""

from __future__ import annotations

from pathlib import Path

from edge_agent.config import Instrument, LoadedConfig, load_config

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
