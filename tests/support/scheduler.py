"""The real scheduler in this test's event loop, on ephemeral 127.0.0.1 ports.

(As a separate process that a test can kill: :class:`devharness.scheduler.SchedulerProcess`.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devharness.scheduler import SCHEDULER_DEFAULTS
from scheduler_service.server import RunningScheduler, running
from scheduler_service.service import SchedulerService
from scheduler_service.settings import SchedulerSettings


@dataclass
class SchedulerHandle:
    running: RunningScheduler

    @property
    def service(self) -> SchedulerService:
        return self.running.service

    @property
    def client_address(self) -> str:
        return f"127.0.0.1:{self.running.client_port}"

    @property
    def agent_address(self) -> str:
        return f"127.0.0.1:{self.running.agent_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.running.http_port}"


@asynccontextmanager
async def running_scheduler(tmp_path: Path, **settings: Any) -> AsyncIterator[SchedulerHandle]:
    """The real scheduler on ephemeral 127.0.0.1 ports, state in `tmp_path/state.db`."""
    values = {**SCHEDULER_DEFAULTS, "db": tmp_path / "state.db", **settings}
    async with running(SchedulerSettings(**values)) as scheduler:
        yield SchedulerHandle(scheduler)
