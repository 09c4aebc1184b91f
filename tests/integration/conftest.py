"""Fixtures for the integration tests: the real scheduler, a client, simulated agents."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos import scheduler_pb2_grpc
from tests.support.scheduler import SchedulerHandle, running_scheduler
from tests.support.sim_agent import SimAgent


@pytest.fixture
async def scheduler(tmp_path: Path) -> AsyncIterator[SchedulerHandle]:
    async with running_scheduler(tmp_path) as handle:
        yield handle


@pytest.fixture
async def client(scheduler: SchedulerHandle) -> AsyncIterator[scheduler_pb2_grpc.SchedulerStub]:
    async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
        yield scheduler_pb2_grpc.SchedulerStub(channel)


@pytest.fixture
async def agents(
    scheduler: SchedulerHandle,
) -> AsyncIterator[Callable[..., Any]]:
    """`await agents("mlserver", index=0, ...)` connects a simulated agent."""
    started: list[SimAgent] = []

    async def connect(server: str, **kwargs: Any) -> SimAgent:
        agent = await SimAgent(scheduler.agent_address, server, **kwargs).connect()
        started.append(agent)
        return agent

    yield connect
    for agent in started:
        await agent.disconnect()
