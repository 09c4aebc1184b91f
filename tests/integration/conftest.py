"""Fixtures for the integration tests: the real scheduler, a client, simulated agents; the fake
NVML library in this process, a fake V2 inference server, a model artifact."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from devharness import fake_nvml
from devharness.fake_nvml import FakeNvml
from devharness.sim_agent import SimAgent
from protos import scheduler_pb2_grpc
from tests.fakes.fake_v2 import FakeV2Server
from tests.support.scheduler import SchedulerHandle, running_scheduler


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


@pytest.fixture(scope="session")
def fake_library() -> Path:
    """The fake ``libnvidia-ml.so.1``, compiled (once) from ``tests/fakes/fake_nvml.c``."""
    return fake_nvml.build()


@pytest.fixture
def gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_library: Path) -> Iterator[FakeNvml]:
    """This process's pynvml on the fake library, serving two 80 GiB GPUs (30 GiB used on the
    second); change them through the returned state."""
    state = fake_nvml.two_gpus(tmp_path / "nvml-state.txt")
    monkeypatch.setenv(fake_nvml.STATE_ENV, str(state.path))
    with fake_nvml.in_process(fake_library):
        yield state


@pytest.fixture
async def v2(tmp_path: Path) -> AsyncIterator[FakeV2Server]:
    """A fake V2 inference server on 127.0.0.1 serving the repository ``tmp_path/models``."""
    server = await FakeV2Server(tmp_path / "models").start()
    yield server
    await server.stop()


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """A model artifact folder (``model.joblib`` is not a real model: fake servers do not
    read it)."""
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "model.joblib").write_bytes(b"weights")
    return folder
