"""`edge-agent check`: everything a commissioning engineer wants to know before leaving the cabinet.

Reads every tag of every instrument once and shows raw registers next to the decoded value, unit and
quality; checks that the outbox folder is writable, the TLS files and serial ports exist, and that the
broker accepts the agent's credentials. Any problem makes the exit status non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import aiomqtt

from aua_contract import Quality, Reading
from edge_agent.config import Instrument, LoadedConfig, MqttSection, Transport
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
        value = "-" if reading.value is None else f"{reading.value:.6g}"
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


def static_problems(loaded: LoadedConfig) -> list[str]:
    """What can be checked without talking to anything: files, folders, serial ports."""
    problems = []
    outbox = loaded.config.agent.outbox
    folder = outbox.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK):
        problems.append(f"agent.outbox: cannot create or write {outbox} (folder {existing} is not writable)")
    else:
        problem = disk_problem(
            loaded.config.agent.outbox_max_bytes,
            shutil.disk_usage(existing).free,
            sum(path.stat().st_size for path in folder.glob(f"{outbox.name}*") if path.is_file()),
        )
        if problem is not None:
            problems.append(f"agent.outbox_max_bytes: {problem} on the disk holding {existing}")
    mqtt = loaded.config.mqtt
    for name in ("ca_file", "cert_file", "key_file"):
        path: Path | None = getattr(mqtt, name)
        if path is not None and not path.is_file():
            problems.append(f"mqtt.{name}: {path} does not exist")
    for index, instrument in enumerate(loaded.instruments):
        section = instrument.config
        if section.transport is Transport.RTU and section.serial_port and not Path(section.serial_port).exists():
            problems.append(f"instrument.{index}.serial_port ({section.id}): {section.serial_port} does not exist")
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


async def tls_problem(mqtt: MqttSection, context: ssl.SSLContext, timeout_s: float) -> str | None:
    """A TLS handshake of our own first, so a wrong CA or a refused client certificate gets its own message.

    With TLS 1.3 a broker refuses a client certificate only after the handshake, with an alert: it shows on the
    first read. A broker that accepted waits for our MQTT CONNECT, so a short read timeout means fine.
    """
    where = f"{mqtt.host}:{mqtt.port}"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                mqtt.host, mqtt.port, ssl=context, server_hostname=None if mqtt.insecure else mqtt.host
            )
    except ssl.SSLError as error:
        return f"mqtt: TLS with {where} failed: {error.reason or error}"
    except (OSError, TimeoutError) as error:
        return f"mqtt: cannot reach {where}: {error or 'timeout'}"
    try:
        async with asyncio.timeout(0.5):
            await reader.read(1)
    except TimeoutError:
        pass
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        return f"mqtt: {where} refused the TLS session: {reason} (client certificate missing or not trusted?)"
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, OSError):
            await writer.wait_closed()
    return None


async def broker_problem(mqtt: MqttSection, client_id: str, timeout_s: float = 5.0) -> str | None:
    """Connect with the agent's address, TLS and credentials (under another client id, so a running agent's
    session is left alone); None when the broker accepts."""
    try:
        context = mqtt.tls_context()
    except (OSError, ssl.SSLError) as error:
        return f"mqtt: TLS files cannot be used: {error}"
    if context is not None:
        problem = await tls_problem(mqtt, context, timeout_s)
        if problem is not None:
            return problem
    client = aiomqtt.Client(
        **mqtt.client_options(client_id, tls_context=context), clean_session=True, timeout=timeout_s
    )
    try:
        async with asyncio.timeout(timeout_s):
            async with client:
                pass
    except TimeoutError:
        return (
            f"mqtt: no MQTT answer from {mqtt.host}:{mqtt.port} within {timeout_s:.0f} s"
            " (a TLS port spoken to in plain MQTT looks like this)"
        )
    except aiomqtt.MqttError as error:
        return f"mqtt: {mqtt.host}:{mqtt.port}: {error}"
    return None


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
            failed = [r.parameter for r in readings if r.quality is Quality.FAILURE]
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
            problems.append(problem)
    if problems:
        print(f"\n{len(problems)} problem{'s' if len(problems) > 1 else ''}:", file=out)
        for problem in problems:
            print(f"  - {problem}", file=out)
        return 1
    print(f"\nok: {len(rows)} tags of {len(loaded.instruments)} instruments read", file=out)
    return 0
