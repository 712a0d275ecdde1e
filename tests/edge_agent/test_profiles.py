"""The shipped device profiles and sample site configs: they load, and every test vector decodes as declared.

The vectors were computed with Python's struct, independently of edge_agent.decoding, so they check the
decoder (and its encode_value, which the simulator relies on) against an outside reference.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from aua_ops import ConfigError
from edge_agent.config import load_config
from edge_agent.decoding import decode_registers, encode_value, scale_value
from edge_agent.profile_reference import SECTIONS, example_profile, render
from edge_agent.profiles import Profile, Vector, load_profile

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
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


# --- what a profile's author is told ------------------------------------------------------------------------------

HEAD = '[profile]\nname = "t"\n'
SO2 = '[[tag]]\nname = "so2"\naddress = 1000\nunit = "mg/m3"\n'
NOX = '[[tag]]\nname = "nox"\naddress = 1002\nunit = "mg/m3"\n'


def problems_of(tmp_path: Path, text: str) -> list[str]:
    """The lines load_profile refuses the profile with, the file's path shown as p.toml."""
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    return [line.replace(str(path), "p.toml") for line in str(caught.value).splitlines()]


def test_a_tag_half_over_another_is_refused_naming_both(tmp_path: Path) -> None:
    assert problems_of(tmp_path, HEAD + SO2 + NOX.replace("1002", "1001")) == [
        'p.toml:9: tag #2 "nox".address: float32 at input registers 1001..1002 overlaps tag #1 "so2" (float32 at'
        ' input registers 1000..1001): give one of them its own address, or add overlaps = ["so2"] if both are'
        " meant to read it (e.g. two status blocks over the same bits)"
    ]


def test_two_tags_at_one_address_are_refused(tmp_path: Path) -> None:
    (line,) = problems_of(tmp_path, HEAD + SO2 + NOX.replace("1002", "1000"))
    assert line.startswith('p.toml:9: tag #2 "nox".address: float32 at input registers 1000..1001 is at the same')
    assert 'address as tag #1 "so2"' in line


def test_other_tables_and_neighbours_do_not_overlap(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(HEAD + SO2 + NOX + NOX.replace('"nox"', '"flow"').replace("1002", '1000\nfunction = "holding"'))
    assert [tag.name for tag in load_profile(path).tag] == ["so2", "nox", "flow"]


STATUS = '[[status]]\nname = "{name}"\naddress = 0\ncount = 8\n[status.bits]\n{bit} = "{quality}"\n'


def test_status_blocks_over_the_same_bits_need_overlaps(tmp_path: Path) -> None:
    """A maintenance bit that flags only some tags: a second block over the same inputs, said to be deliberate."""
    general = STATUS.format(name="general", bit=0, quality="failure")
    maintenance = STATUS.format(name="maint", bit=3, quality="maintenance_required")
    (line,) = problems_of(tmp_path, HEAD + SO2 + general + maintenance)
    assert line.startswith('p.toml:15: status #2 "maint".address: 8-bit status block at discrete bits 0..7 is at')
    path = tmp_path / "ok.toml"
    path.write_text(HEAD + SO2 + general + maintenance.replace("count = 8\n", 'count = 8\noverlaps = ["general"]\n'))
    assert [block.name for block in load_profile(path).status] == ["general", "maint"]


def test_overlaps_must_name_something_that_overlaps(tmp_path: Path) -> None:
    assert problems_of(tmp_path, HEAD + SO2.replace("1000\n", '1000\noverlaps = ["nox", "co"]\n') + NOX) == [
        'p.toml:6: tag #1 "so2".overlaps: names "co", which is no tag or status block',
        'p.toml:6: tag #1 "so2".overlaps: names "nox", but they share no register or bit',
    ]


def test_duplicate_names_are_refused_naming_the_first(tmp_path: Path) -> None:
    assert problems_of(tmp_path, HEAD + SO2 + NOX.replace('"nox"', '"so2"')) == [
        'p.toml:8: tag #2 "so2".name: the name "so2" is already used by tag #1 "so2": names must be unique'
    ]


VECTOR = '[[vector]]\ntag = "so2"\nregisters = [{registers}]\nexpect = {expect}\n'


@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        (
            VECTOR.format(registers="0x42C8, 0x0000", expect="100.5"),
            'p.toml:10: vector #1 (tag "so2").expect: registers [0x42C8, 0x0000] decode to 100.0 (float32 ABCD),'
            " not 100.5: the vector or the tag's type, byte order, scale or offset is wrong",
        ),
        (
            VECTOR.format(registers="0x42C8", expect="100.0"),
            'p.toml:9: vector #1 (tag "so2").registers: 1 register given, but tag "so2" is float32: 2 registers',
        ),
        (
            VECTOR.format(registers="0x42C8, 0x10000", expect="100.0"),
            'p.toml:9: vector #1 (tag "so2").registers: register value 65536 is not a 16-bit word',
        ),
        (
            VECTOR.format(registers="0x42C8, 0x0000", expect="100.0").replace('"so2"', '"so3"'),
            "p.toml:8: vector #1 (tag \"so3\").tag: unknown tag 'so3'",
        ),
    ],
)
def test_every_vector_is_checked_when_the_profile_loads(tmp_path: Path, vector: str, expected: str) -> None:
    assert problems_of(tmp_path, HEAD + SO2 + vector) == [expected]


def test_a_scaled_vector_must_be_exact_and_a_float32_one_may_name_its_decimal(tmp_path: Path) -> None:
    scaled = SO2.replace("1000\n", '1000\ntype = "uint16"\nscale = 0.1\n')
    assert problems_of(tmp_path, HEAD + scaled + VECTOR.format(registers="1013", expect="101.30000000000001")) == [
        'p.toml:12: vector #1 (tag "so2").expect: registers [0x03F5] decode to 101.3 (uint16 ABCD x 0.1), not'
        " 101.30000000000001: the vector or the tag's type, byte order, scale or offset is wrong"
    ]
    path = tmp_path / "ok.toml"
    path.write_text(HEAD + SO2 + VECTOR.format(registers="0x42CA, 0x999A", expect="101.3"))
    assert load_profile(path).vector[0].expect == 101.3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            HEAD + SO2 + NOX.replace("address", "scaling = 0.1\naddress"),
            "p.toml:9: tag #2 \"nox\".scaling: unknown key 'scaling' (did you mean 'scale'?)",
        ),
        (
            HEAD.replace('"t"', '"t"\nbyteorder = "CDAB"') + SO2,
            "p.toml:3: profile.byteorder: unknown key 'byteorder' (did you mean 'byte_order'?)",
        ),
        (
            HEAD + SO2 + NOX.replace("1002", "-2"),
            'p.toml:9: tag #2 "nox".address: Input should be greater than or equal to 0',
        ),
        (
            HEAD + SO2 + NOX.replace("address", 'type = "bool"\naddress'),
            'p.toml:7: tag #2 "nox": type bool cannot be read from input (bool goes with coil/discrete)',
        ),
    ],
)
def test_messages_name_the_key_and_the_tag(tmp_path: Path, text: str, expected: str) -> None:
    assert problems_of(tmp_path, text) == [expected]


# --- the generated reference --------------------------------------------------------------------------------------


def test_the_profile_reference_is_generated_from_the_model() -> None:
    """docs/profile-reference.md is render()'s output: regenerate it when the model changes (see its header)."""
    committed = (CONFIG_DIR.parent / "docs" / "profile-reference.md").read_text(encoding="utf-8")
    assert committed == render(), "stale: .venv/bin/python -m edge_agent.profile_reference > docs/profile-reference.md"


def test_the_reference_names_every_key_of_every_section() -> None:
    text = render()
    for header, model, _ in SECTIONS:
        section = text.split(f"## `{header}`")[1].split("\n## ")[0]
        assert [key for key in model.model_fields if f"| `{key}` |" not in section] == []


def test_the_reference_examples_are_a_valid_profile(tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(example_profile())
    profile = load_profile(path)
    assert [tag.name for tag in profile.tag] == ["so2", "pressure", "valve", "flow"]
    assert [block.name for block in profile.status] == ["analyzer", "analyzer_maint"]
