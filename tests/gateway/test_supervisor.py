"""The supervisor: the first task to fail or end stops the others and says which and why."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from eventually import eventually

from gateway.supervisor import Supervisor, TaskFailed, describe


async def forever() -> None:
    await asyncio.Event().wait()


async def fails_after(delay: float, error: Exception) -> None:
    await asyncio.sleep(delay)
    raise error


async def returns() -> None:
    await asyncio.sleep(0)


async def test_the_first_failure_stops_every_task_and_names_itself() -> None:
    supervisor = Supervisor()
    supervisor.start("consume", forever())
    supervisor.start("write", fails_after(0.01, OSError(28, "No space left on device")))
    with pytest.raises(TaskFailed) as failure:
        await supervisor.run()
    assert failure.value.name == "write"
    assert str(failure.value) == "task 'write' failed: OSError: [Errno 28] No space left on device"
    assert supervisor.liveness() == {"consume": "stopped", "write": "stopped"}


async def test_a_task_that_returns_is_a_failure_too() -> None:
    supervisor = Supervisor()
    supervisor.start("rollups", returns())
    with pytest.raises(TaskFailed, match="task 'rollups' failed: ended, but it should run until the gateway stops"):
        await supervisor.run()


async def test_liveness_shows_a_dead_task_before_the_stop() -> None:
    supervisor = Supervisor()
    supervisor.start("consume", forever())
    supervisor.start("alerts", fails_after(0, ValueError("bad rule\nsecond line")))
    await eventually(lambda: supervisor.liveness()["alerts"] != "running")
    assert supervisor.liveness() == {"consume": "running", "alerts": "failed: ValueError: bad rule"}
    with pytest.raises(TaskFailed):
        await supervisor.run()


async def test_a_unit_of_work_longer_than_stall_s_is_a_stall() -> None:
    supervisor = Supervisor(stall_s=0.05)
    supervisor.start("write", forever())
    with supervisor.working("write"):
        await eventually(lambda: supervisor.liveness()["write"] != "running")
        assert supervisor.liveness()["write"].startswith("stalled: ")
    assert supervisor.liveness() == {"write": "running"}
    await supervisor.stop()


async def test_cancelling_the_caller_is_a_clean_stop() -> None:
    supervisor = Supervisor()
    supervisor.start("consume", forever())
    runner = asyncio.create_task(supervisor.run())
    await asyncio.sleep(0.01)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert supervisor.liveness() == {"consume": "stopped"}


async def test_a_task_that_ignores_cancellation_is_left_behind_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    supervisor = Supervisor()
    supervisor.start("stubborn", stubborn())
    await asyncio.sleep(0)
    await supervisor.stop(grace_s=0.05)
    assert "task 'stubborn' did not stop within 0 s of being cancelled" in caplog.text
    release.set()
    await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError("disk I/O error"), "OSError: disk I/O error"),
        (ExceptionGroup("group", [KeyError("k")]), "KeyError: 'k'"),
        (RuntimeError(""), "RuntimeError"),
    ],
)
def test_describe_is_one_line(error: BaseException, expected: str) -> None:
    assert describe(error) == expected
