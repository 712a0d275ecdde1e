"""`cems-gateway revisions`: the revisions of stored raw readings, and an operator's approval of one.

A stored reading is write-once: other content later sent for its identity (a resend with another value, a
reused sequence number, a replay) is kept beside it as a pending revision, and the original stays what rollups,
reports and dashboards use. `revisions approve ID --by NAME --why TEXT` makes a revision the stored value,
keeps the value it replaces as a superseded revision and records who approved it, why and when; the rollups of
the reading's hour are marked for recompute (the running gateway's rollup engine picks the mark up).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.cli_time import cli_time
from gateway.config import GatewayConfig
from gateway.mrv.rollup_engine import RollupEngine
from gateway.stores import StoredReading, StoreError, open_store
from gateway.stores.base import Revision, RevisionCount, RevisionError, RevisionState

__all__ = ["add_revision_commands", "format_revision", "revision_counts", "run_revisions_command"]

LIST_LIMIT = 100
"""Revisions `revisions list` prints unless told otherwise (each costs a look-up of the stored value)."""
MAX_LIST = 10**9
"""The largest --limit and --offset accepted (only a page of revisions is ever held in memory)."""


def add_revision_commands(commands: Any) -> None:
    """`revisions list` and `revisions approve` under `cems-gateway`."""
    revisions = commands.add_parser(
        "revisions", help="other content received for stored readings: list, approve"
    ).add_subparsers(dest="revisions_command", required=True)
    listing = revisions.add_parser("list", help="revisions of stored readings (pending ones unless --all)")
    listing.add_argument("config", type=Path)
    listing.add_argument("--site", help="only this site")
    listing.add_argument("--agent", help="only this agent")
    listing.add_argument("--since", type=cli_time, help="readings sampled at or after this time (ISO 8601, UTC)")
    listing.add_argument("--until", type=cli_time, help="readings sampled before this time (ISO 8601, UTC)")
    listing.add_argument("--all", action="store_true", help="approved and superseded ones too")
    listing.add_argument(
        "--limit", type=_count, default=LIST_LIMIT, help=f"print at most this many (default {LIST_LIMIT})"
    )
    listing.add_argument("--offset", type=_count, default=0, help="skip this many first (the next page)")
    approve = revisions.add_parser(
        "approve", help="make a pending revision the stored value (the replaced value is kept as a revision)"
    )
    approve.add_argument("config", type=Path)
    approve.add_argument("id", help="revision id from `revisions list`")
    approve.add_argument("--by", required=True, help="who approves it, for the record")
    approve.add_argument("--why", required=True, help="why, for the record (e.g. the lab report that confirms it)")


def run_revisions_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    if args.revisions_command == "list":
        return asyncio.run(_list(config, args))
    return asyncio.run(_approve(config, args.id, by=args.by, why=args.why))


def _count(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_LIST:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to {MAX_LIST}")
    return number


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _content(reading: StoredReading) -> str:
    value = "-" if reading.value is None else f"{reading.value:g}"
    status = "" if reading.status is None else f" status {reading.status}"
    return f"{value} {reading.unit} {reading.quality.value}{status}".replace("  ", " ")


def format_revision(revision: Revision, stored: StoredReading | None) -> str:
    """One line: id, state, the reading's identity and time, its content, what is stored, where it came from."""
    r = revision.reading
    now = "nothing stored" if stored is None else f"stored {_content(stored)}"
    batch = "" if revision.batch_seq is None else f"batch {revision.batch_seq} sealed {_time(revision.batch_sent_at)}, "
    came = f"{batch}received {_time(revision.received_at)}" if revision.received_at else batch.rstrip(", ")
    line = (
        f"{revision.id:>6} {revision.state.value:<10} {_time(r.ts)} {r.site}/{r.agent} {r.instrument}/{r.parameter}: "
        f"{_content(r)} ({now})"
    )
    if came:
        line += f"; {came}"
    if revision.decided_at is not None:
        line += f"; decided by {revision.decided_by} at {_time(revision.decided_at)}: {revision.decided_why}"
    if revision.superseded_by:
        line += f"; replaced by revision {revision.superseded_by}"
    return line


async def _list(config: GatewayConfig, args: argparse.Namespace) -> int:
    store = open_store(config.store.url)
    try:
        await store.open()
        state = None if args.all else RevisionState.PENDING
        counts = await store.revision_counts(site=args.site, start=args.since, end=args.until)
        total = sum(
            count.total if state is None else count.pending
            for (_, agent), count in counts.items()
            if args.agent is None or agent == args.agent
        )
        shown = await store.query_revisions(
            site=args.site,
            agent=args.agent,
            start=args.since,
            end=args.until,
            state=state,
            limit=args.limit,
            offset=args.offset,
        )
        lines = [format_revision(revision, await _stored(store, revision.reading)) for revision in shown]
    except StoreError as error:
        print(f"cannot list revisions: {error}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    print(_summary(total, "revisions" if args.all else "pending revisions", args.offset, len(shown)))
    for line in lines:
        print(line)
    return 0


def _summary(total: int, what: str, offset: int, shown: int) -> str:
    """`12 pending revisions`, or which page is shown and how many more exist past it."""
    if offset == 0 and shown >= total:
        return f"{total} {what}"
    page = f"{offset + 1}..{offset + shown} shown" if shown else f"none shown from {offset + 1}"
    more = max(0, total - offset - shown)
    after = f"; {more} more (--offset {offset + shown})" if more else ""
    return f"{total} {what}, {page}{after}"


async def _stored(store: Any, reading: StoredReading) -> StoredReading | None:
    found = await store.query(
        site=reading.site,
        instrument=reading.instrument,
        parameter=reading.parameter,
        start=reading.ts,
        end=reading.ts + timedelta(microseconds=1),
    )
    return next((s for s in found if s.agent == reading.agent), None)


def _check_text(name: str, text: str) -> str | None:
    if not text.strip():
        return f"--{name} must not be empty: an approval records who and why"
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in text):
        return f"--{name} {text!r}: control characters (newlines, tabs) cannot be stored; use one line"
    return None


async def _approve(config: GatewayConfig, revision_id: str, *, by: str, why: str) -> int:
    for name, text in (("by", by), ("why", why)):
        problem = _check_text(name, text)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 2
    store = open_store(config.store.url)
    try:
        await store.open()
        approval = await store.approve_revision(revision_id, by=by, why=why, at=datetime.now(UTC))
    except (RevisionError, StoreError) as error:
        print(f"not approved: {error}", file=sys.stderr)
        await store.close()
        return 1
    r = approval.revision.reading
    replaced = "nothing" if approval.replaced is None else _content(approval.replaced)
    print(
        f"revision {approval.revision.id} approved by {by}: {r.site}/{r.agent} {r.instrument}/{r.parameter} at "
        f"{_time(r.ts)} is now {_content(r)} (was {replaced}, kept as a superseded revision)"
    )
    try:
        engine = RollupEngine.from_config(config, store)
        try:
            await engine.note_written([r])
        finally:
            engine.close()
    except (sqlite3.Error, OSError) as error:  # the approval stands: say what is left to do
        hour = r.ts.replace(minute=0, second=0, microsecond=0)
        print(
            f"the rollups of that hour could not be marked for recompute ({error}): run `cems-gateway rollup "
            f"recompute` from {_time(hour)} to {_time(hour + timedelta(hours=1))}",
            file=sys.stderr,
        )
        return 1
    finally:
        await store.close()
    print("its hour's rollups (and the day, month and year) are marked for recompute")
    return 0


def revision_counts(config: GatewayConfig) -> dict[tuple[str, str], RevisionCount]:
    """Per (site, agent), for `cems-gateway accounting`, which is synchronous: its own event loop, on a thread of
    its own so that a caller inside a running loop (a test, an embedding program) works too."""

    async def count() -> dict[tuple[str, str], RevisionCount]:
        store = open_store(config.store.url)
        try:
            await store.open()
            return await store.revision_counts()
        finally:
            await store.close()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aua-revisions") as pool:
        return pool.submit(asyncio.run, count()).result()


def revision_count_lines(counts: Sequence[tuple[tuple[str, str], RevisionCount]]) -> list[str]:
    """Accounting's detail lines: agents that sent other content for readings already stored."""
    return [
        f"{site}/{agent} sent {count.pending + count.approved} revisions (other content for readings already "
        f"stored): {count.pending} pending review, {count.approved} approved; see `cems-gateway revisions list`"
        for (site, agent), count in counts
        if count.pending or count.approved
    ]
