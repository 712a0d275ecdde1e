"""The hostile-input campaign of tests/test_hostile_input.py, long: many more messages, repeated rounds, a table.

    .venv/bin/python bench/hostile_input.py --messages 200000 --store sqlite
    .venv/bin/python bench/hostile_input.py --messages 50000 --store influxdb --rounds 3

Each round starts a fresh mosquitto (and influxd), publishes the campaign (valid batches interleaved with
poison, hypothesis-generated messages included) to a real `cems-gateway run` while a real `edge-agent run`
(polling a pymodbus simulator) publishes beside it and a tenth of the campaign attacks the agent's topics,
restarts the gateway with the retained poison still on the broker, and checks what tests/test_hostile_input.py
checks, the RSS bound included (hostile_campaign.rss_bound_kb: growth after the warm-up below a fixed slack plus
1 KiB per message handled since). The table shows each process's RSS growth per 1,000 messages after the
warm-up: a leak shows as a figure that stays up as rounds get longer. `--minutes` repeats rounds until that
much time has passed. Exit status 1 if any round failed a check. `--leak-bytes 2048` runs a gateway that keeps
2 KiB per message (tests/leaky_gateway.py), to see the RSS check catch a leak of that size.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _harness import TreeMonitor, machine_note  # noqa: E402
from hostile_campaign import (  # noqa: E402
    REAL_AGENT,
    Outcome,
    build,
    check_agent_stored,
    check_stored,
    run,
    stored_readings,
)
from servers import InfluxServer, MosquittoServer, unique_database_name  # noqa: E402


def checks(outcome: Outcome) -> list[str]:
    """What tests/test_hostile_input.py asserts, as a list of failures."""
    problems = []
    if outcome.health_failures:
        problems.append(f"/health: {outcome.health_failures[:3]}")
    if (outcome.first_exit, outcome.second_exit) != (0, 0):
        problems.append(f"exit codes {outcome.first_exit}, {outcome.second_exit}")
    if "Traceback" in outcome.log:
        problems.append("a traceback in the gateway's log")
    if outcome.dead_letters != outcome.dead_letters_expected:
        problems.append(f"{outcome.dead_letters:g} dead letters, expected {outcome.dead_letters_expected}")
    retained = outcome.retained + outcome.retained_valid
    if (
        outcome.restart_dead_letters != outcome.restart_messages - outcome.retained_valid
        or outcome.restart_messages < retained
    ):
        problems.append(
            f"after the restart: {outcome.restart_messages:g} messages, {outcome.restart_dead_letters:g} dead"
        )
    if outcome.agent_failures:
        problems.append(f"agent: {outcome.agent_failures[:3]}")
    if any(code != 0 for code in outcome.agent_exits) or "Traceback" in outcome.agent_log:
        problems.append(f"agent exits {outcome.agent_exits}, or a traceback in its log")
    problems += outcome.rss_problems()
    return problems


async def one_round(number: int, args: argparse.Namespace, workdir: Path) -> tuple[Outcome, list[str]]:
    messages, store, seed, generated = args.messages, args.store, args.seed, args.generated
    broker = MosquittoServer(workdir / "mosquitto")
    broker.start()
    influx = None
    try:
        if store == "influxdb":
            influx = InfluxServer(workdir / "influxd")
            influx.start()
            store_url = influx.database_url(unique_database_name(f"hostile{number}"))
        else:
            store_url = f"sqlite://{workdir}/aua.sqlite"
        began = time.monotonic()
        campaign = build(
            f"hostile{number}",
            messages,
            seed=seed + number,
            generated=min(generated, messages // 8),
            agent=REAL_AGENT,
        )
        print(
            f"round {number}: built {len(campaign.messages):,} messages in {time.monotonic() - began:.1f} s", flush=True
        )
        outcome = await run(
            campaign,
            broker=(broker.host, broker.port),
            store_url=store_url,
            workdir=workdir,
            settle_s=600,
            leak_bytes=args.leak_bytes,
        )
        problems = checks(outcome)
        stored = await stored_readings(store_url, campaign.site)
        for check in (
            lambda: check_stored(campaign, stored),
            lambda: check_agent_stored(outcome.agent_expected, stored),
        ):
            try:
                check()
            except AssertionError as error:
                problems.append(str(error)[:300])
        return outcome, problems
    finally:
        broker.terminate()
        if influx is not None:
            influx.terminate()


def _per_1k(rss_kb: tuple[int, int], messages: int) -> str:
    """RSS growth after the warm-up, in KiB per 1,000 messages handled."""
    return f"{(rss_kb[1] - rss_kb[0]) / max(messages, 1) * 1000:.0f}"


def row(number: int, outcome: Outcome, problems: list[str]) -> str:
    rate = outcome.received / outcome.ingest_s if outcome.ingest_s else 0.0
    gateway = (
        f"{outcome.gateway_rss_kb[0] / 1024:.0f}->{outcome.gateway_rss_kb[1] / 1024:.0f}"
        f"({outcome.gateway_rss_final_kb / 1024:.0f})"
    )
    agent = f"{outcome.agent_rss_kb[0] / 1024:.0f}->{outcome.agent_rss_kb[1] / 1024:.0f}"
    return (
        f"{number:>5} {outcome.messages:>9,} {outcome.received:>9,} {outcome.dead_letters:>9,.0f} "
        f"{outcome.valid_readings:>9,} {outcome.publish_s:>9.1f} {outcome.ingest_s:>9.1f} {rate:>9,.0f} "
        f"{gateway:>16} {_per_1k(outcome.gateway_rss_kb, outcome.gateway_messages_after_warmup):>8} "
        f"{agent:>9} {_per_1k(outcome.agent_rss_kb, outcome.agent_messages_after_warmup):>8} "
        f"{outcome.agent_sealed:>7,} {outcome.agent_resent:>7,.0f} {outcome.restart_messages:>8,.0f}  "
        f"{'; '.join(problems) or 'ok'}"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000, help="messages per round (default 200,000)")
    parser.add_argument("--store", choices=["sqlite", "influxdb"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=0.0, help="repeat rounds until this much time has passed")
    parser.add_argument("--seed", type=int, default=13, help="hypothesis and shuffle seed of round 0")
    parser.add_argument(
        "--generated",
        type=int,
        default=5000,
        help="hypothesis messages a round (~5 ms each to generate; default 5,000)",
    )
    parser.add_argument(
        "--leak-bytes",
        type=int,
        default=0,
        help="run a gateway that leaks this much per message (tests/leaky_gateway.py): the RSS check must fail",
    )
    args = parser.parse_args()
    header = (
        f"{'round':>5} {'messages':>9} {'received':>9} {'dead':>9} {'readings':>9} {'publish s':>9} "
        f"{'ingest s':>9} {'msg/s':>9} {'gw RSS MiB':>16} {'KiB/1k':>8} {'agent MiB':>9} {'KiB/1k':>8} "
        f"{'sealed':>7} {'resent':>7} {'restart':>8}  checks"
    )
    lines = [header]
    failed = False
    began = time.monotonic()
    number = 0
    monitor = TreeMonitor().__enter__()  # this process and everything it starts: the machine's load beside it
    while number < args.rounds or time.monotonic() - began < args.minutes * 60:
        with tempfile.TemporaryDirectory(prefix="aua-hostile-") as directory:
            try:
                outcome, problems = await one_round(number, args, Path(directory))
            except Exception:  # a round that could not finish is a failed round, reported, not a crash
                traceback.print_exc()
                failed = True
                lines.append(f"{number:>5} did not finish (traceback above)")
            else:
                failed = failed or bool(problems)
                lines.append(row(number, outcome, problems))
        print(lines[-1], flush=True)
        number += 1
    print(
        f"\nhostile input, {args.store} store, {args.messages:,} messages a round (RSS: at the warm-up -> once the "
        "campaign is taken (after the agent's resends too), and the growth per 1,000 messages handled after the "
        "warm-up; sealed/resent: the real agent's batches)"
    )
    print("\n".join(lines))
    monitor.__exit__(None, None, None)
    assert monitor.usage is not None
    print(f"{machine_note([monitor.usage])}; this bench's process tree peaked at {monitor.usage.peak_rss_mb:.0f} MB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
