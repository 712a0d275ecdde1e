"""`edge-agent check`: everything a commissioning engineer wants to know before leaving the cabinet.

Reads every tag of every instrument once and shows raw registers next to the decoded value, unit and
quality; checks that the outbox folder is writable, the TLS files and serial ports exist, and that the
broker accepts the agent's credentials. Any problem makes the exit status non-zero.
"""

from __future__ import annotations

import shutil
import ssl
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from aua_contract import Quality, Reading
from aua_mqtt import broker_problem
from aua_ops import ConfigFile
from aua_ops.startup import bind_problem, path_problem
from edge_agent.config import Instrument, LoadedConfig, Transport
from edge_agent.driver import Answer
from edge_agent.instrument_reader import ModbusReader, readings_from_answers, words_by_span
from edge_agent.modbus_drivers import build_drivers
from edge_agent.outbox import FILE_OVERHEAD, WAL_LIMIT_BYTES
from edge_agent.planner import ReadRequest


@dataclass(frozen=True)
class Row:
    instrument: str
    tag: str
    raw: str
    value: str
    unit: str
    quality: str


def format_raw(words: Answer | None) -> str:
    """Registers as hex words (as they arrived), bits as 0/1; '-' when nothing came."""
    if words is None:
        return "-"
    if words and isinstance(words[0], bool):
        return " ".join("1" if bit else "0" for bit in words)
    return " ".join(f"{int(word):04X}" for word in words)


def tag_rows(instrument: Instrument, answers: dict[ReadRequest, Answer | None], readings: list[Reading]) -> list[Row]:
    """One row per tag of an instrument, from one read of its plan. Pure."""
    words = words_by_span(answers)
    rows = []
    for reading in readings:
        value = "-" if reading.value is None else repr(reading.value)  # all of it: what is published
        quality = reading.quality.value + (f" (status {reading.status:#x})" if reading.status is not None else "")
        raw = format_raw(words.get(reading.parameter))
        rows.append(Row(instrument.id, reading.parameter, raw, value, reading.unit, quality))
    return rows


def table(rows: list[Row]) -> str:
    header = Row("instrument", "tag", "raw registers", "value", "unit", "quality")
    fields = ("instrument", "tag", "raw", "value", "unit", "quality")
    widths = {name: max(len(getattr(row, name)) for row in [header, *rows]) for name in fields}
    return "\n".join(
        "  ".join(getattr(row, name).ljust(widths[name]) for name in fields).rstrip() for row in [header, *rows]
    )


def static_problems(loaded: LoadedConfig, *, serial_ports: bool = True) -> list[str]:
    """What can be checked without talking to anything: files, folders, TLS files, the metrics port, serial
    ports (`run` skips those: an adapter may be plugged in later). One line each: FILE:LINE: KEY: what."""
    located = ConfigFile.read(loaded.path, named=True)
    problems = []
    agent = loaded.config.agent
    outbox = path_problem(agent.outbox, create_dirs=agent.create_dirs, create_key="agent.create_dirs")
    if outbox is not None:
        problems.append(located.problem(("agent", "outbox"), outbox))
    else:
        folder = agent.outbox.parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None:
            problem = disk_problem(
                agent.outbox_max_bytes,
                shutil.disk_usage(existing).free,
                sum(path.stat().st_size for path in folder.glob(f"{agent.outbox.name}*") if path.is_file()),
            )
            if problem is not None:
                problems.append(
                    located.problem(("agent", "outbox_max_bytes"), f"{problem} on the disk holding {existing}")
                )
    mqtt = loaded.config.mqtt
    missing = False
    for name in ("ca_file", "cert_file", "key_file"):
        path: Path | None = getattr(mqtt, name)
        if path is not None and not path.is_file():
            problems.append(located.problem(("mqtt", name), f"{path} does not exist"))
            missing = True
    password = mqtt.password_problem()
    if password is not None:
        problems.append(located.problem(("mqtt", "password_file"), password))
    if not missing:
        try:
            mqtt.tls_context()
        except (OSError, ssl.SSLError) as error:
            problems.append(located.problem(("mqtt",), f"TLS files cannot be used: {error}"))
    if agent.metrics_port is not None:
        taken = bind_problem(agent.metrics_host, agent.metrics_port)
        if taken is not None:
            problems.append(located.problem(("agent", "metrics_port"), taken))
    for index, instrument in enumerate(loaded.instruments):
        section = instrument.config
        if (
            serial_ports
            and section.transport is Transport.RTU
            and section.serial_port
            and not Path(section.serial_port).exists()
        ):
            problems.append(
                located.problem(("instrument", index, "serial_port"), f"{section.serial_port} does not exist")
            )
    return problems


def disk_problem(max_bytes: int, free: int, held: int) -> str | None:
    """Whether a disk with `free` bytes, beside the `held` bytes the outbox files take already, can hold an
    outbox at its byte bound (payload bytes plus page overhead plus the WAL). Pure."""
    needed = int(max_bytes * FILE_OVERHEAD) + WAL_LIMIT_BYTES
    if free + held >= needed:
        return None
    mib = 1 << 20
    return (
        f"an outbox of {max_bytes / mib:,.0f} MiB needs about {needed / mib:,.0f} MiB, but only"
        f" {(free + held) / mib:,.0f} MiB are free (lower outbox_max_bytes or give it a bigger disk)"
    )


async def check(loaded: LoadedConfig, *, broker: bool = True, out: TextIO | None = None) -> int:
    """Validate, read every tag once, print the table, test the broker; 0 only if nothing is wrong."""
    out = out or sys.stdout
    config = loaded.config
    problems = static_problems(loaded)
    drivers = build_drivers(loaded.instruments)
    rows: list[Row] = []
    try:
        for instrument in loaded.instruments:
            reader = ModbusReader(instrument, drivers.by_instrument[instrument.id])
            answers, stamps = await reader.read_plan()
            readings = readings_from_answers(instrument, answers, datetime.now(UTC), stamps)
            rows += tag_rows(instrument, answers, readings)
            # A tag the device refuses is one problem, said below; not also "no good value".
            failed = [
                r.parameter
                for r in readings
                if r.quality is Quality.FAILURE and r.parameter not in reader.stats.isolated
            ]
            if failed:
                why = f": {reader.stats.last_error}" if reader.stats.last_error else ""
                problems.append(
                    f"{instrument.id} ({reader.driver.endpoint}): no good value for {', '.join(failed)}{why}"
                )
            for tag in reader.stats.isolated:
                problems.append(f"{instrument.id}: the device refuses tag {tag} (illegal data address)")
    finally:
        await drivers.close()
    print(table(rows), file=out)
    if broker:
        identifier = f"{config.mqtt.client_id or f'aua-agent-{config.agent.site}-{config.agent.id}'}-check"
        problem = await broker_problem(config.mqtt, identifier)
        if problem is None:
            scheme = "mqtts" if config.mqtt.use_tls else "mqtt"
            print(f"\nbroker {scheme}://{config.mqtt.host}:{config.mqtt.port}: connected", file=out)
        else:
            problems.append(ConfigFile.read(loaded.path, named=True).problem(("mqtt",), problem.removeprefix("mqtt: ")))
    if problems:
        print(f"\n{len(problems)} problem{'s' if len(problems) > 1 else ''}:", file=out)
        for problem in problems:
            print(f"  - {problem}", file=out)
        return 1
    print(f"\nok: {len(rows)} tags of {len(loaded.instruments)} instruments read", file=out)
    return 0
