"""`edge-agent check` and `edge-agent plan`: what a commissioning engineer runs, against real devices and broker."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from agent_site import write_site
from ports import free_port
from servers import MosquittoServer

from aua_simulator.incidents import Incidents
from aua_simulator.modbus_servers import Quirks, simulator_for_config
from edge_agent.cli import main as agent_main
from edge_agent.commissioning import Row, check, disk_problem, format_raw, static_problems, table
from edge_agent.config import load_config


def site(tmp_path: Path, broker_port: int, device_port: int, **extra: object) -> Path:
    instruments: list[dict[str, object]] = [
        {"id": "hg", "profile": "mercury-analyzer", "port": device_port, "device_id": 1, "timeout": 0.3},
        {"id": "met", "profile": "met-station", "port": device_port, "device_id": 2, "timeout": 0.3},
    ]
    instruments += [dict(i) for i in extra.get("more", [])]  # type: ignore[attr-defined]
    return write_site(
        tmp_path / "site.toml",
        agent={"site": "commissioning", "id": "a1", "outbox": str(tmp_path / "o.sqlite")},
        mqtt={"host": "127.0.0.1", "port": broker_port},
        instruments=instruments,
    )


def test_raw_words_and_the_table_are_readable() -> None:
    assert format_raw([0x42C8, 0]) == "42C8 0000"
    assert format_raw([True, False, True]) == "1 0 1"
    assert format_raw(None) == "-"
    assert table([Row("hg", "hg", "0000 41A0", "20", "ng/m3", "ok")]).splitlines() == [
        "instrument  tag  raw registers  value  unit   quality",
        "hg          hg   0000 41A0      20     ng/m3  ok",
    ]


async def test_check_reads_every_tag_once_and_tests_the_broker(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    device_port = free_port()
    loaded = load_config(site(tmp_path, mosquitto.port, device_port))
    out = io.StringIO()
    async with simulator_for_config(loaded, incidents=Incidents.none(), clock=lambda: 1.8e9) as simulator:
        status = await check(loaded, out=out)
    text = out.getvalue()
    assert status == 0, text
    lines = text.splitlines()
    assert lines[0].split() == ["instrument", "tag", "raw", "registers", "value", "unit", "quality"]
    rows = {tuple(line.split()[:2]): line for line in lines[1:] if line.startswith(("hg ", "met "))}
    tags = {(i.id, t.name) for i in loaded.instruments for t in i.profile.tag}
    assert set(rows) == tags
    hg_value = simulator.image_now("hg").served.values["hg"]
    assert repr(hg_value) in rows["hg", "hg"].split()
    assert rows["hg", "hg"].split()[-1] == "ok" or "ok (status" in rows["hg", "hg"]
    assert f"broker mqtt://127.0.0.1:{mosquitto.port}: connected" in text
    assert text.rstrip().endswith(f"ok: {len(tags)} tags of 2 instruments read")


async def test_check_lists_every_problem_and_fails(tmp_path: Path) -> None:
    device_port = free_port()
    loaded = load_config(
        site(
            tmp_path,
            free_port(),  # no broker there
            device_port,
            more=[{"id": "dust", "profile": "stack-dust", "port": free_port(), "device_id": 1, "timeout": 0.3}],
        )
    )
    out = io.StringIO()
    async with simulator_for_config(loaded.model_copy(update={"instruments": loaded.instruments[:2]})):
        status = await check(loaded, out=out)
    text = out.getvalue()
    assert status == 1
    problems = text.split("problems:")[1]
    assert "dust (tcp://127.0.0.1:" in problems
    assert "no good value for dust" in problems
    assert "mqtt: cannot reach" in problems or "mqtt: 127.0.0.1" in problems
    assert "hg (" not in problems


async def test_a_refused_tag_is_one_problem(tmp_path: Path) -> None:
    """The device refuses air_pressure (input register 3): check says so once, not also "no good value"."""
    loaded = load_config(site(tmp_path, free_port(), free_port()))
    out = io.StringIO()
    quirks = {"met": Quirks(refuse=frozenset({3}))}
    async with simulator_for_config(loaded, incidents=Incidents.none(), clock=lambda: 1.8e9, quirks=quirks):
        status = await check(loaded, broker=False, out=out)
    text = out.getvalue()
    assert status == 1, text
    assert text.split("\n1 problem:\n")[1].splitlines() == [
        "  - met: the device refuses tag air_pressure (illegal data address)"
    ]


def test_check_cli_exits_non_zero_and_plan_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = site(tmp_path, free_port(), free_port())
    assert agent_main(["check", "--no-broker", str(path)]) == 1
    out = capsys.readouterr().out
    assert "2 problems:" in out
    assert agent_main(["plan", str(Path(__file__).resolve().parents[2] / "config" / "pavlodar-ambient.toml")]) == 0
    out = capsys.readouterr().out
    assert "apart from the previous request: 28 unused registers between them > max_gap 10" in out
    assert out.rstrip().endswith("total: 6 requests per poll cycle for 16 spans (one request per span would be 16)")


@pytest.mark.parametrize(
    ("max_bytes", "free", "held", "fits"),
    [
        (1 << 30, 2 << 30, 0, True),
        (1 << 30, 1 << 30, 0, False),  # pages and WAL need more than the payload bound
        (1 << 30, 100 << 20, 1100 << 20, True),  # already full: the file's own bytes count
        (100 << 20, 119 << 20, 0, True),
        (100 << 20, 110 << 20, 0, False),
    ],
)
def test_disk_problem(max_bytes: int, free: int, held: int, fits: bool) -> None:
    assert (disk_problem(max_bytes, free, held) is None) is fits


def test_check_says_when_the_disk_cannot_hold_the_outbox(tmp_path: Path) -> None:
    config = write_site(
        tmp_path / "site.toml",
        agent={"site": "s", "id": "a1", "outbox": str(tmp_path / "o.sqlite"), "outbox_max_bytes": 1 << 60},
        mqtt={"host": "127.0.0.1", "port": 1883},
        instruments=[{"id": "hg", "profile": "mercury-analyzer", "port": 5020, "device_id": 1}],
    )
    problems = static_problems(load_config(config))
    assert len(problems) == 1
    assert re.match(
        rf"{re.escape(str(config))}:\d+: agent.outbox_max_bytes: an outbox of 1,099,511,627,776 MiB needs about",
        problems[0],
    ), problems[0]
    assert f"on the disk holding {tmp_path}" in problems[0]


# --- the mistakes a plant engineer makes in a profile, as `edge-agent` shows them -----------------------------------

EDGE_AGENT = Path(sys.executable).parent / "edge-agent"

MISTAKES_SITE = """\
[agent]
site = "mistakes"
id = "m1"
outbox = "outbox.sqlite"

[mqtt]
host = "127.0.0.1"
port = {broker_port}

[[instrument]]
id = "gas"
profile = "p.toml"
port = {device_port}
"""

GOOD_PROFILE = """\
[profile]
name = "p"
notes = "not verified"

[[tag]]
name = "so2"
address = 1000
unit = "mg/m3"
status = "analyzer"

[[tag]]
name = "nox"
address = 1002
unit = "mg/m3"

[[tag]]
name = "pressure"
address = 20
type = "uint16"
scale = 0.1
unit = "kPa"

[[status]]
name = "analyzer"
address = 0

[[vector]]
tag = "so2"
registers = [0x42C8, 0x0000]
expect = 100.0

[[vector]]
tag = "pressure"
registers = [1013]
expect = 101.3
"""

REFUSED = 'site.toml:12: instrument #1 "gas".profile: the profile p.toml cannot be used:'


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "scale = 0.1",
            "scaling = 0.1",
            "p.toml:20: tag #3 \"pressure\".scaling: unknown key 'scaling' (did you mean 'scale'?)",
            id="unknown-key",
        ),
        pytest.param(
            "address = 1002",
            "address = 1001",
            'p.toml:13: tag #2 "nox".address: float32 at input registers 1001..1002 overlaps tag #1 "so2" (float32 at'
            ' input registers 1000..1001): give one of them its own address, or add overlaps = ["so2"] if both are'
            " meant to read it (e.g. two status blocks over the same bits)",
            id="overlap",
        ),
        pytest.param(
            "address = 1002",
            "address = 1000",
            'p.toml:13: tag #2 "nox".address: float32 at input registers 1000..1001 is at the same address as tag #1'
            ' "so2" (float32 at input registers 1000..1001): give one of them its own address, or add overlaps ='
            ' ["so2"] if both are meant to read it (e.g. two status blocks over the same bits)',
            id="duplicate-address",
        ),
        pytest.param(
            "expect = 101.3",
            "expect = 101.4",
            'p.toml:35: vector #2 (tag "pressure").expect: registers [0x03F5] decode to 101.3 (uint16 ABCD x 0.1),'
            " not 101.4: the vector or the tag's type, byte order, scale or offset is wrong",
            id="wrong-expected-value",
        ),
        pytest.param(
            "registers = [0x42C8, 0x0000]",
            "registers = [0x42C8]",
            'p.toml:29: vector #1 (tag "so2").registers: 1 register given, but tag "so2" is float32: 2 registers',
            id="wrong-register-count",
        ),
        pytest.param(
            'status = "analyzer"',
            'status = "analyser"',
            "p.toml:9: tag #1 \"so2\".status: unknown status block 'analyser' (status blocks: analyzer)",
            id="unknown-status-block",
        ),
    ],
)
@pytest.mark.parametrize("command", [["validate"], ["check", "--no-broker"], ["run"]])
def test_a_profile_mistake_is_one_clear_line_in_validate_check_and_run(
    tmp_path: Path, command: list[str], old: str, new: str, expected: str
) -> None:
    """The real CLI in its own process: exit 1, the instrument's line, then the problem at the profile's line."""
    assert old in GOOD_PROFILE
    (tmp_path / "p.toml").write_text(GOOD_PROFILE.replace(old, new, 1))
    site_path = tmp_path / "site.toml"
    site_path.write_text(MISTAKES_SITE.format(broker_port=free_port(), device_port=free_port()))
    done = subprocess.run(
        [str(EDGE_AGENT), *command, "site.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.replace(str(tmp_path / "p.toml"), "p.toml").splitlines() == [REFUSED, expected]


def test_the_good_profile_of_the_mistakes_validates(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(GOOD_PROFILE)
    site_path = tmp_path / "site.toml"
    site_path.write_text(MISTAKES_SITE.format(broker_port=free_port(), device_port=free_port()))
    done = subprocess.run(
        [str(EDGE_AGENT), "validate", "site.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "site.toml: ok, 1 instrument, 2 test vectors of their profiles decoded as expected\n",
        "",
    )


def test_a_missing_serial_port_names_the_instrument(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(GOOD_PROFILE)
    site_path = tmp_path / "site.toml"
    site_path.write_text(
        MISTAKES_SITE.format(broker_port=free_port(), device_port=1).replace(
            "port = 1\n", 'transport = "rtu"\nserial_port = "/dev/ttyAUA-missing"\n'
        )
    )
    assert static_problems(load_config(site_path)) == [
        f'{site_path}:14: instrument #1 "gas".serial_port: /dev/ttyAUA-missing does not exist'
    ]
