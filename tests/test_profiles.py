"""The shipped device profiles and sample site configs: they load, and every test vector decodes as declared.

The vectors were computed with Python's struct, independently of edge_agent.decoding, so they check the
decoder (and its encode_value, which the simulator relies on) against an outside reference.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.decoding import decode_registers, encode_value, scale_value
from edge_agent.profiles import Profile, Vector, load_profile

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
PROFILE_PATHS = sorted((CONFIG_DIR / "profiles").glob("*.toml"))
SHIPPED_PROFILES = {
    "stack-gas-analyzer",
    "stack-flow",
    "stack-dust",
    "ambient-gas-analyzer",
    "ambient-pm-monitor",
    "mercury-analyzer",
    "met-station",
}


def _vectors() -> list[object]:
    params: list[object] = []
    for path in PROFILE_PATHS:
        profile = load_profile(path)
        for index, vector in enumerate(profile.vector):
            params.append(pytest.param(profile, vector, id=f"{path.stem}[{index}]-{vector.tag}"))
    return params


def test_every_shipped_profile_is_there() -> None:
    assert {path.stem for path in PROFILE_PATHS} >= SHIPPED_PROFILES


@pytest.mark.parametrize("path", PROFILE_PATHS, ids=lambda path: path.stem)
def test_profile_loads_and_says_where_its_map_comes_from(path: Path) -> None:
    profile = load_profile(path)
    assert profile.profile.name == path.stem
    assert profile.profile.notes, "a profile must say where its register map comes from"
    if not profile.profile.verified:
        assert "not verified" in profile.profile.notes


@pytest.mark.parametrize(("profile", "vector"), _vectors())
def test_vector_decodes_to_its_expected_value(profile: Profile, vector: Vector) -> None:
    tag = profile.tag_named(vector.tag)
    raw = decode_registers(vector.registers, tag.type, profile.byte_order_of(tag))
    assert scale_value(raw, tag.scale, tag.offset) == vector.expect


@pytest.mark.parametrize(("profile", "vector"), _vectors())
def test_encoder_reproduces_the_vector(profile: Profile, vector: Vector) -> None:
    """The simulator encodes with encode_value; it must give the registers struct gave."""
    tag = profile.tag_named(vector.tag)
    raw = (vector.expect - tag.offset) / tag.scale
    assert encode_value(raw, tag.type, profile.byte_order_of(tag)) == vector.registers


@pytest.mark.parametrize("path", PROFILE_PATHS, ids=lambda path: path.stem)
def test_every_tag_has_a_vector(path: Path) -> None:
    profile = load_profile(path)
    covered = {vector.tag for vector in profile.vector}
    assert [tag.name for tag in profile.tag if tag.name not in covered] == []


@pytest.mark.parametrize("path", PROFILE_PATHS, ids=lambda path: path.stem)
def test_every_data_type_used_has_two_vectors(path: Path) -> None:
    profile = load_profile(path)
    per_type = Counter(profile.tag_named(vector.tag).type for vector in profile.vector)
    used = {tag.type for tag in profile.tag}
    assert {data_type: per_type[data_type] for data_type in used if per_type[data_type] < 2} == {}


@pytest.mark.parametrize(
    ("file", "site", "agent", "instruments"),
    [
        (
            "pavlodar-chp.toml",
            "pavlodar-chp",
            "chp-stack1",
            [("stack1-gas", 5020, 1), ("stack1-flow", 5020, 2), ("stack1-dust", 5020, 3)],
        ),
        (
            "pavlodar-ambient.toml",
            "pavlodar-ambient",
            "pvl-station-1",
            [("pvl1-gas", 5021, 1), ("pvl1-pm", 5021, 2), ("pvl1-hg", 5021, 3), ("pvl1-met", 5021, 4)],
        ),
    ],
)
def test_site_config_loads_with_its_profiles(
    file: str, site: str, agent: str, instruments: list[tuple[str, int, int]]
) -> None:
    loaded = load_config(CONFIG_DIR / file)
    assert (loaded.config.agent.site, loaded.config.agent.id) == (site, agent)
    assert [(i.id, i.config.port, i.config.device_id) for i in loaded.instruments] == instruments
    for instrument in loaded.instruments:
        assert not instrument.config.profile.is_absolute(), "sample configs name profiles relative to themselves"
        assert instrument.profile.profile.name == instrument.config.profile.stem
