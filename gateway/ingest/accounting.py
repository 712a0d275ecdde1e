"""What `cems-gateway accounting` prints: per agent what arrived, what came late or by gap repair, and
which sequence ranges are still missing. Pure: the CLI reads the ledger and prints these lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from gateway.ingest.gap_repair import Owed, SeqRange

if TYPE_CHECKING:
    from gateway.ingest.ledger import AgentAccount  # the ledger's row type; the ledger itself is I/O

HEADER = (
    f"{'site':<20} {'agent':<20} {'batches':>8} {'readings':>9} {'seqs':>15} {'dups':>6} {'late':>6} "
    f"{'repaired':>8} {'reused':>6} {'resends':>7} {'missing':>8} {'lost':>6}"
)


def count(ranges: Sequence[SeqRange]) -> int:
    return sum(last - first + 1 for first, last in ranges)


def format_ranges(ranges: Sequence[SeqRange], *, limit: int = 20) -> str:
    """`3..5, 9`; beyond `limit` ranges, how many more."""
    shown = ", ".join(str(first) if first == last else f"{first}..{last}" for first, last in ranges[:limit])
    more = len(ranges) - limit
    return shown + (f" and {more} more ranges" if more > 0 else "")


def accounting_lines(
    accounts: Sequence[AgentAccount],
    owed: Mapping[tuple[str, str], Owed],
    resends: Mapping[tuple[str, str], int],
    counters: Mapping[str, int] | None = None,
) -> list[str]:
    """The table, then one line per agent with ranges still missing (resendable), refused by the store or lost
    for good, then what the ledger's bounds dropped (`Ledger.counters()`), if anything."""
    by_agent = {(a.site, a.agent): a for a in accounts}
    nothing = Owed([], [])
    lines = [HEADER]
    details = []
    for site, agent in sorted(set(by_agent) | set(owed)):
        account = by_agent.get((site, agent))
        what = owed.get((site, agent), nothing)
        if account is None:
            counts = f"{0:>8} {0:>9} {'-':>15} {0:>6} {0:>6} {0:>8} {0:>6}"
        else:
            seqs = f"{account.first_seq}..{account.last_seq}"
            counts = (
                f"{account.batches:>8} {account.readings:>9} {seqs:>15} {account.duplicates:>6} "
                f"{account.late:>6} {account.repaired:>8} {account.reused:>6}"
            )
        lines.append(
            f"{site:<20} {agent:<20} {counts} {resends.get((site, agent), 0):>7} "
            f"{count(what.requestable):>8} {count(what.unrecoverable):>6}"
        )
        if what.requestable:
            details.append(f"{site}/{agent} still missing (gap repair asks again): {format_ranges(what.requestable)}")
        if account is not None and account.reused:
            details.append(
                f"{site}/{agent} sent {account.reused} batches under sequence numbers it had used before (last: "
                f"{account.last_reused_seq}): its outbox was replaced or another agent has its id; their readings "
                "are stored, but its accounting is unreliable until it gets a new agent id"
            )
        if account is not None and account.refused:
            details.append(
                f"{site}/{agent} {account.refused} batches refused by the store for good (dead letters, not asked "
                "for again)"
            )
        if what.unrecoverable:
            details.append(
                f"{site}/{agent} lost (no longer in the agent's outbox): {format_ranges(what.unrecoverable)}"
            )
    counters = counters or {}
    if counters.get("dead_letters_pruned") or counters.get("dead_letters_truncated"):
        details.append(
            f"dead letters: {counters.get('dead_letter_rows', 0)} kept ({counters.get('dead_letter_bytes', 0)} "
            f"bytes of payload), {counters.get('dead_letters_pruned', 0)} pruned by the [ledger] bounds, "
            f"{counters.get('dead_letters_truncated', 0)} kept truncated"
        )
    if counters.get("receipts_pruned"):
        details.append(
            f"batch receipts: {counters['receipts_pruned']} pruned from the store (older than [ledger] "
            "receipt_batches or than what the agents still hold)"
        )
    return lines + details
