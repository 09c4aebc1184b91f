"""1,000 agents reconnecting at once to a restarted scheduler that holds models which fit
nowhere (each retried whenever the cluster changes): every agent gets back, nothing is
loaded again, and the models that fit stay Available."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from devharness.scheduler import SchedulerProcess
from devharness.sim_agent import GiB, SimAgent
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc

AGENTS = 1000
PLACED = 500
REFUSED = 50


async def wait(done: object, what: str, timeout_s: float = 120) -> None:
    assert callable(done)
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g}s"
        await asyncio.sleep(0.05)


async def connect(fleet: list[SimAgent]) -> None:
    gate = asyncio.Semaphore(200)

    async def one(agent: SimAgent) -> None:
        async with gate:
            agent.welcomed = 0
            await agent.connect()

    await asyncio.gather(*(one(agent) for agent in fleet))
    await wait(lambda: all(agent.welcomed for agent in fleet), "every agent welcomed")


async def test_a_thousand_agents_reconnect_with_refused_models_and_nothing_reloads(
    tmp_path: Path,
) -> None:
    scheduler = SchedulerProcess(tmp_path, log_level="INFO", disconnect_grace_s=60).start()
    fleet = [
        SimAgent(scheduler.agent_address, f"srv-{n // 4:03d}", index=n % 4, memory_bytes=8 * GiB)
        for n in range(AGENTS)
    ]
    try:
        await connect(fleet)
        async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            for number in range(PLACED + REFUSED):
                memory = "100Ti" if number >= PLACED else "64Mi"
                spec = common_pb2.ModelSpec(name=f"m-{number:03d}", memory=memory)
                await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=spec))
        await wait(lambda: sum(len(a.loaded) for a in fleet) == PLACED, "every copy loaded")
        loads = sum(len(agent.loads) for agent in fleet)

        scheduler.kill()
        for agent in fleet:
            await agent.disconnect()
        scheduler.restart()
        await connect(fleet)
        await asyncio.sleep(2.0)  # a reload, if one were to come, comes now
        assert sum(len(agent.loads) for agent in fleet) == loads, "copies loaded again"
        assert sum(len(agent.unloads) for agent in fleet) == 0
        async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            models = await stub.ListModels(scheduler_pb2.ListModelsRequest(page_size=1000))
        states = {m.name: m.state for m in models.models}
        assert [n for n, s in states.items() if s == "Available"] == [
            f"m-{n:03d}" for n in range(PLACED)
        ]
        assert {states[f"m-{n:03d}"] for n in range(PLACED, PLACED + REFUSED)} == {"ScheduleFailed"}
    finally:
        for agent in fleet:
            await agent.disconnect()
        scheduler.stop()
