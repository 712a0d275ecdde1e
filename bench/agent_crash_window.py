"""What a kill -9 shortly after a poll tick costs: readings the instruments answered that never got sealed.

    .venv/bin/python bench/agent_crash_window.py [--trials 8] [--instruments 10]

The agent runs as `edge-agent run CONFIG` against simulated Modbus TCP instruments (in this process, so what
they served is known) and a local mosquitto. Each trial starts it, lets it seal a few cycles, kills it -9 at a
poll tick + 4..20 ms, and the next trial starts it again on the same outbox. At the end the outbox is read:
a kill "lost" an instrument's cycle if the instrument served that tick but the outbox holds no reading of it
from that tick. Counted separately: cycles the agent itself reported cut short, and readings it sealed on
restart (issue 16). Bounded: about 4 s per trial.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _harness import TreeMonitor, machine_note  # noqa: E402
from agent_site import write_site  # noqa: E402
from ports import free_port  # noqa: E402
from servers import MosquittoServer  # noqa: E402

from aua_contract import decode_batch  # noqa: E402
from aua_simulator.incidents import Incidents  # noqa: E402
from aua_simulator.modbus_servers import simulator_for_config  # noqa: E402
from edge_agent.config import load_config  # noqa: E402
from edge_agent.outbox import Outbox  # noqa: E402

EDGE_AGENT = Path(sys.executable).parent / "edge-agent"
KILL_DELAYS_MS = (4, 6, 8, 10, 12, 14, 16, 20)


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([str(EDGE_AGENT), "run", str(config)], stdout=out, stderr=out)


def next_seq(outbox_path: Path) -> int:
    outbox = Outbox(outbox_path)
    try:
        return outbox.stats().next_seq
    finally:
        outbox.close()


async def run(trials: int, instruments: int, folder: Path) -> dict[str, object]:
    (folder / "mqtt").mkdir()
    broker = MosquittoServer(folder / "mqtt")
    broker.start()
    device_port = free_port()
    outbox = folder / "outbox.sqlite"
    config = write_site(
        folder / "site.toml",
        agent={"site": "crash-window", "id": "a1", "poll_interval": 1.0, "outbox": str(outbox)},
        mqtt={"host": broker.host, "port": broker.port},
        instruments=[
            {"id": f"gas{i}", "profile": "stack-gas-analyzer", "port": device_port, "device_id": i + 1, "timeout": 0.5}
            for i in range(instruments)
        ],
    )
    loaded = load_config(config)
    log_path = folder / "agent.log"
    kills: list[float] = []
    try:
        async with simulator_for_config(loaded, seed=1, incidents=Incidents.none()) as simulator:
            for trial in range(trials):
                agent = start_agent(config, log_path)
                try:
                    sealed = await asyncio.to_thread(next_seq, outbox)
                    for _ in range(100):  # two cycles sealed by this run
                        await asyncio.sleep(0.25)
                        if await asyncio.to_thread(next_seq, outbox) >= sealed + 2:
                            break
                    delay = KILL_DELAYS_MS[trial % len(KILL_DELAYS_MS)] / 1000
                    now = time.time()
                    await asyncio.sleep(math.floor(now) + 1 + delay - now)
                    kills.append(time.time())
                    agent.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(agent.wait, 10)
                finally:
                    if agent.poll() is None:
                        agent.kill()
                        agent.wait(10)
            # one more start: it seals what the last kill left staged, and stops cleanly
            agent = start_agent(config, log_path)
            sealed = await asyncio.to_thread(next_seq, outbox)
            for _ in range(100):  # past its start (and any recovery): two cycles of its own
                await asyncio.sleep(0.25)
                if await asyncio.to_thread(next_seq, outbox) >= sealed + 3:
                    break
            agent.send_signal(signal.SIGTERM)
            await asyncio.to_thread(agent.wait, 15)
            served = {i.id: {tick.time for tick in simulator.served(i.id)} for i in loaded.instruments}
    finally:
        broker.terminate()
    box = Outbox(outbox)
    sealed_ticks: dict[str, set[float]] = {}
    per_cycle = {i.id: len(i.profile.tag) for i in loaded.instruments}
    for _, payload in box.get(0, box.stats().next_seq):
        for reading in decode_batch(payload).readings:
            sealed_ticks.setdefault(reading.instrument, set()).add(float(math.floor(reading.ts.timestamp())))
    stats = box.stats()
    box.close()
    lost_kills = 0
    lost_readings = 0
    for kill in kills:
        tick = float(math.floor(kill))
        lost = [i for i, ticks in served.items() if tick in ticks and tick not in sealed_ticks.get(i, set())]
        lost_kills += bool(lost)
        lost_readings += sum(per_cycle.get(i, 0) for i in lost)
    # counted by the outbox itself (0 where the outbox has no such counters: before issue 16)
    cut = getattr(stats, "cut_cycles", 0)
    recovered = getattr(stats, "recovered_readings", 0)
    return {
        "trials": trials,
        "kills losing answered readings": lost_kills,
        "answered readings never sealed": lost_readings,
        "cycles the agent reported cut short": cut,
        "readings sealed on restart": recovered,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--instruments", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="aua-crash-") as folder, TreeMonitor() as monitor:
        result = asyncio.run(run(args.trials, args.instruments, Path(folder)))
    for key, value in result.items():
        print(f"{key}: {value}")
    assert monitor.usage is not None
    # the loss window is a matter of milliseconds: the machine's load decides how much a kill catches
    print(machine_note([monitor.usage]))


if __name__ == "__main__":
    main()
