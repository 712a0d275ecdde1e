"""The operator's manual operating-state log: durable, append-only, superseded never overwritten; its CLI."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cli import main as gateway_main
from gateway.config import GatewayConfigError, load_gateway_config
from gateway.mrv.config import RuleResolver
from gateway.mrv.operating_log import OperatingLog, OperatingLogError
from gateway.mrv.operating_state import State

JUNE = datetime(2026, 6, 1, tzinfo=UTC)
NOW = datetime(2026, 10, 1, tzinfo=UTC)

CONFIG = """[gateway]
state = "state.sqlite"
[store]
url = "sqlite://aua.sqlite"
[[source]]
id = "boiler2"
site = "plant"
time_zone = "Asia/Almaty"
flow = { instrument = "flow", parameter = "flow", unit = "Nm3/h" }
"""


def test_entries_survive_a_reopen_and_a_later_entry_supersedes_without_overwriting(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    log = OperatingLog(path)
    first = log.record(
        "boiler2", "off", start=JUNE, end=JUNE + timedelta(days=90), by="ivanov", why="summer shutdown", now=NOW
    )
    log.record(
        "boiler2",
        "start-up",
        start=JUNE + timedelta(days=80),
        end=JUNE + timedelta(days=81),
        by="petrov",
        why="early start for a test",
        now=NOW,
    )
    log.record("other", "off", start=JUNE, end=JUNE + timedelta(days=1), by="x", why="y", now=NOW)
    log.close()
    log = OperatingLog(path)
    entries = log.entries("boiler2")
    assert [(e.id, e.state, e.by) for e in entries] == [(first.id, State.OFF, "ivanov"), (2, State.START_UP, "petrov")]
    assert entries[0].end == JUNE + timedelta(days=90)  # the earlier entry is kept as recorded
    assert [e.id for e in log.entries("boiler2", start=JUNE + timedelta(days=85), end=NOW)] == [first.id]
    assert len(log.entries()) == 3
    log.close()


def test_the_table_refuses_changes_and_deletes(tmp_path: Path) -> None:
    log = OperatingLog(tmp_path / "state.sqlite")
    log.record("boiler2", "off", start=JUNE, end=JUNE + timedelta(days=1), by="ivanov", why="shutdown", now=NOW)
    log.close()
    db = sqlite3.connect(tmp_path / "state.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="never changed"):
        db.execute("UPDATE operating_log SET state = 'normal'")
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        db.execute("DELETE FROM operating_log")
    db.close()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (("idle", timedelta(hours=1), "a", "b"), "state 'idle'"),
        (("off", timedelta(0), "a", "b"), "is not after from"),
        (("off", timedelta(days=400), "a", "b"), "more than 366 days"),
        (("off", timedelta(hours=1), " ", "b"), "by:"),
        (("off", timedelta(hours=1), "a", ""), "why:"),
        (("off", timedelta(hours=1), "a", "x" * 2001), "why:"),
    ],
)
def test_bad_entries_are_refused_naming_the_field(
    tmp_path: Path, entry: tuple[str, timedelta, str, str], message: str
) -> None:
    state, span, by, why = entry
    log = OperatingLog(tmp_path / "state.sqlite")
    with pytest.raises(OperatingLogError, match=message):
        log.record("boiler2", state, start=JUNE, end=JUNE + span, by=by, why=why, now=NOW)
    assert log.entries() == []
    log.close()


def test_cli_log_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    common = ["operating-state", "log", str(path), "boiler2", "--by", "ivanov"]
    assert (
        gateway_main(
            [
                *common,
                "--state",
                "off",
                "--from",
                "2026-06-01T00:00+05:00",
                "--to",
                "2026-09-01T00:00+05:00",
                "--why",
                "summer shutdown",
            ]
        )
        == 0
    )
    assert "recorded #1 boiler2 off 2026-05-31T19:00Z..2026-08-31T19:00Z" in capsys.readouterr().out
    assert (
        gateway_main(
            [
                *common,
                "--state",
                "derived",
                "--from",
                "2026-08-20T00:00",
                "--to",
                "2026-09-01T00:00",
                "--why",
                "restarted early",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert gateway_main(["operating-state", "list", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("#1 boiler2 off")
    assert "by ivanov" in lines[0]
    assert "summer shutdown" in lines[0]
    assert "superseded where they overlap by #2" in lines[0]
    assert lines[1].startswith("#2 boiler2 derived")
    assert "superseded" not in lines[1]

    assert gateway_main([*common, "--state", "off", "--from", "2026-06-02", "--to", "2026-06-01", "--why", "x"]) == 1
    assert "is not after from" in capsys.readouterr().err
    assert gateway_main(["operating-state", "list", str(path), "boiler9"]) == 1
    assert "no [[source]] with id 'boiler9'" in capsys.readouterr().err
    state = load_gateway_config(path).gateway.state
    assert len(OperatingLog(state).entries()) == 2


CRITERIA = """
[source.operating]
running = [{ instrument = "dcs", parameter = "fuel", at_least = 0.5 }]
required = 2
[[source.operating.startup_end]]
instrument = "dcs"
parameter = "load"
at_least = 40
[[source.operating.startup_end]]
instrument = "dcs"
parameter = "steam"
at_least = 100
"""


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (CRITERIA, "source.0.operating: startup_end: 2 criteria"),
        (CRITERIA.replace("required = 2", "required = 1"), "source.0.operating.required"),
        ("[source.operating]\nrequired = 2\n", "set status or running"),
        ('[source.operating]\nrunning = [{ instrument = "dcs", parameter = "fuel" }]\n', "set at_least or at_most"),
        (
            '[source.operating]\nstatus = { instrument = "dcs", parameter = "state", normal = 0 }\n',
            "four different codes",
        ),
        ('[source.operating]\nstatus = { instrument = "dcs", parameter = "state", idle = 5 }\n', "idle"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG + table, encoding="utf-8")
    with pytest.raises(GatewayConfigError, match=message):
        load_gateway_config(path)


def test_config_with_status_and_criteria_gives_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    third = '[[source.operating.startup_end]]\ninstrument = "dcs"\nparameter = "fgt"\nat_least = 120\n'
    status = 'status = { instrument = "dcs", parameter = "state" }\n'
    path.write_text(CONFIG + CRITERIA.replace("required = 2\n", "required = 2\n" + status) + third, encoding="utf-8")
    source = load_gateway_config(path).sources[0]
    assert source.operating is not None
    spec = source.operating.spec()
    assert spec.signal_keys() == ["dcs/state", "dcs/fuel", "dcs/load", "dcs/steam", "dcs/fgt"]
    assert [c.name for c in spec.shutdown_criteria] == ["not dcs/load", "not dcs/steam", "not dcs/fgt"]


def test_signals_roll_up_with_the_sources_rules_and_a_channel_keeps_its_own(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    text = CONFIG.replace('source]]\nid = "boiler2"', 'source]]\nid = "boiler2"\nrule_set = "mrr"')
    text = text.replace('unit = "Nm3/h" }', 'unit = "Nm3/h", rule_set = "ied-lcp" }')
    fourth = '[[source.operating.startup_end]]\ninstrument = "flow"\nparameter = "flow"\nat_least = 1000\n'
    path.write_text(text + CRITERIA + fourth, encoding="utf-8")
    config = load_gateway_config(path)
    resolver = RuleResolver.from_config(config.rollup, config.sources)
    assert resolver("plant", "dcs", "load")[0].name == "mrr"  # the source's
    assert resolver("plant", "flow", "flow")[0].name == "ied-lcp"  # the channel's own
