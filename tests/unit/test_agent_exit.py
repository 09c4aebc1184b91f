"""The agent's exit does not wait without a bound for worker threads."""

from __future__ import annotations

import asyncio
import threading
import time

from agent.main import run_bounded


def test_an_agent_without_running_threads_exits_normally() -> None:
    async def main() -> int:
        await asyncio.to_thread(time.sleep, 0.01)
        return 3

    assert run_bounded(main(), grace_s=5.0) == (3, False)


def test_a_thread_still_copying_does_not_hold_the_exit() -> None:
    release = threading.Event()

    async def main() -> int:
        # A copy that outlives the agent's own shutdown.
        asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
        await asyncio.sleep(0)
        return 0

    started = time.monotonic()
    try:
        code, stuck = run_bounded(main(), grace_s=0.2)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert (code, stuck) == (0, True)
    assert elapsed < 10
