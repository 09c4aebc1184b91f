"""`gpuplace scheduler`: run with the settings the CLI read (flags over environment) until
signalled.

The CLI registers the sub-command (gpuplace/commands/processes.py) and imports this module
only when it runs."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from scheduler_service.server import running
from scheduler_service.settings import SchedulerSettings
from scheduler_service.store import StoreError

log = logging.getLogger(__name__)


def run(settings: SchedulerSettings) -> int:
    """Serve until SIGTERM or SIGINT; the exit code."""
    try:
        asyncio.run(serve(settings))
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(settings: SchedulerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings):
        await stop.wait()
        log.info("signal received, stopping")
