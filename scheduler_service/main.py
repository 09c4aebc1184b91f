"""`gpuplace scheduler`: settings from flags and environment, then run until signalled.

The CLI registers the sub-command (gpuplace/commands/processes.py) and imports this module
only when it runs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from contract.settings_cli import describe_error, settings_from_args
from scheduler_service.server import running
from scheduler_service.settings import SchedulerSettings
from scheduler_service.store import StoreError

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(SchedulerSettings, args)
    except ValidationError as exc:
        print(describe_error(SchedulerSettings, exc), file=sys.stderr)
        return 2
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
