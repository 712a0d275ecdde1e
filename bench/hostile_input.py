"""The hostile-input campaign of tests/test_hostile_input.py, long: many more messages, repeated rounds, a table.

    .venv/bin/python bench/hostile_input.py --messages 200000 --store sqlite
    .venv/bin/python bench/hostile_input.py --messages 50000 --store influxdb --rounds 3

Each round starts a fresh mosquitto (and influxd), publishes the campaign (valid batches interleaved with
poison, hypothesis-generated messages included) to a real `cems-gateway run`, restarts the gateway with the
retained poison still on the broker, and checks what tests/test_hostile_input.py checks. `--minutes` repeats
rounds until that much time has passed. Exit status 1 if any round failed a check.
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

from hostile_campaign import Outcome, build, check_stored, run, stored_readings  # noqa: E402
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
    if outcome.restart_dead_letters != outcome.restart_messages or outcome.restart_messages < outcome.retained:
        problems.append(
            f"after the restart: {outcome.restart_messages:g} messages, {outcome.restart_dead_letters:g} dead"
        )
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
        campaign = build(f"hostile{number}", messages, seed=seed + number, generated=min(generated, messages // 8))
        print(
            f"round {number}: built {len(campaign.messages):,} messages in {time.monotonic() - began:.1f} s", flush=True
        )
        outcome = await run(
            campaign, broker=(broker.host, broker.port), store_url=store_url, workdir=workdir, settle_s=600
        )
        problems = checks(outcome)
        try:
            check_stored(campaign, await stored_readings(store_url, campaign.site))
        except AssertionError as error:
            problems.append(str(error)[:300])
        return outcome, problems
    finally:
        broker.terminate()
        if influx is not None:
            influx.terminate()


def row(number: int, outcome: Outcome, problems: list[str]) -> str:
    rate = outcome.received / outcome.ingest_s if outcome.ingest_s else 0.0
    return (
        f"{number:>5} {outcome.messages:>9,} {outcome.received:>9,} {outcome.dead_letters:>9,.0f} "
        f"{outcome.valid_readings:>9,} {outcome.publish_s:>9.1f} {outcome.ingest_s:>9.1f} {rate:>9,.0f} "
        f"{outcome.rss_kb / 1024:>8.0f} {outcome.restart_messages:>8,.0f}  {'; '.join(problems) or 'ok'}"
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
    args = parser.parse_args()
    header = (
        f"{'round':>5} {'messages':>9} {'received':>9} {'dead':>9} {'readings':>9} {'publish s':>9} "
        f"{'ingest s':>9} {'msg/s':>9} {'RSS MB':>8} {'restart':>8}  checks"
    )
    lines = [header]
    failed = False
    began = time.monotonic()
    number = 0
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
    print(f"\nhostile input, {args.store} store, {args.messages:,} messages a round (RSS: the gateway's peak)")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
