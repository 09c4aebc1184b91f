"""`gpuplace scheduler`: run with the settings the CLI read (flags over environment) until
signalled.

The CLI registers the sub-command (gpuplace/commands/processes.py) and imports this module
only when it runs."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from contract.logs import fatal
from contract.tls import TlsError
from scheduler_service.auth import TokenError
from scheduler_service.server import ListenError, running
from scheduler_service.settings import SchedulerSettings
from scheduler_service.store import StoreError

log = logging.getLogger(__name__)
# Python's cycle collector looks at the young objects every 700 allocations and at the whole
# heap every few hundred thousand: with 10,000s of models' records (long-lived, and free of
# cycles the program leaves behind) a pass spent a third of its time there. Rarer young
# collections; what the state file restored is frozen out of them altogether.
_GC_THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """The collector's thresholds for a scheduler process (the benchmarks call it too)."""
    gc.set_threshold(*_GC_THRESHOLDS)


def run(settings: SchedulerSettings) -> int:
    """Serve until SIGTERM or SIGINT; the exit code."""
    try:
        asyncio.run(serve(settings))
    except (StoreError, ListenError, TlsError, TokenError) as exc:
        fatal(f"error: {exc}")
        return 2
    except OSError as exc:  # the HTTP port (aiohttp)
        fatal(f"error: cannot listen: {exc.strerror or exc}")
        return 2
    return 0


async def serve(settings: SchedulerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tune_collector()
    async with running(settings):
        gc.freeze()  # the restored records live as long as the process
        await stop.wait()
        log.info("signal received, stopping")
