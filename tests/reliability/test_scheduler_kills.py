"""The scheduler SIGKILLed again and again in the middle of hundreds of loads over four
agents: nothing answered is lost, no copy is loaded twice on a replica, none is left behind
untracked, and in the end every model is Available with all its copies."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import grpc

from devharness.scheduler import SchedulerProcess
from devharness.sim_agent import GiB, SimAgent
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc

MODELS = 240
KILLS = 6
SEED = 20261201


def spec(number: int) -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(
        name=f"m-{number:03d}", requirements=["sklearn"], memory="64Mi", replicas=1 + number % 2
    )


async def load_until_answered(
    scheduler: SchedulerProcess, model: common_pb2.ModelSpec, deadline: float
) -> None:
    """LoadModel until an answer comes (a killed scheduler answers nothing: ask again; the
    same spec again changes nothing once it is saved)."""
    while True:
        try:
            async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
                stub = scheduler_pb2_grpc.SchedulerStub(channel)
                await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=model), timeout=5)
                return
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED,
            ), exc
            assert time.monotonic() < deadline, f"{model.name}: never answered"
            await asyncio.sleep(0.05)


async def statuses(scheduler: SchedulerProcess) -> list[scheduler_pb2.ModelStatus]:
    async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        found: list[scheduler_pb2.ModelStatus] = []
        token = ""
        while True:
            page = await stub.ListModels(
                scheduler_pb2.ListModelsRequest(page_token=token), timeout=10
            )
            found.extend(page.models)
            if not (token := page.next_page_token):
                return found


async def reconnect(fleet: list[SimAgent]) -> None:
    for agent in fleet:
        await agent.disconnect()
        agent.welcomed = 0
    await asyncio.gather(*(agent.connect() for agent in fleet))


async def test_sigkills_during_hundreds_of_loads_lose_duplicate_and_leak_nothing(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    scheduler = SchedulerProcess(tmp_path, log_level="INFO", disconnect_grace_s=30).start()
    fleet = [
        SimAgent(scheduler.agent_address, f"srv-{n // 2}", index=n % 2, memory_bytes=64 * GiB)
        for n in range(4)
    ]
    try:
        await asyncio.gather(*(agent.connect() for agent in fleet))
        deadline = time.monotonic() + 120
        gate = asyncio.Semaphore(16)

        async def one(number: int) -> None:
            async with gate:
                await load_until_answered(scheduler, spec(number), deadline)

        loading = asyncio.gather(*(one(n) for n in range(MODELS)))
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            scheduler.kill()
            scheduler.restart()
            await reconnect(fleet)
        await loading

        async def settled() -> bool:
            found = await statuses(scheduler)
            return len(found) == MODELS and all(s.state == "Available" for s in found)

        while not await settled():
            assert time.monotonic() < deadline, "not every model Available in time"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a reload or an unload, if one were to follow, is sent
        found = {s.name: s for s in await statuses(scheduler)}
        for number in range(MODELS):
            model = spec(number)
            copies = [r for r in found[model.name].replicas if r.state == "Available"]
            assert len(copies) == model.replicas, found[model.name]
        for agent in fleet:
            tracked = {
                name
                for name, status in found.items()
                for r in status.replicas
                if (r.server, r.replica_index) == (agent.server, agent.index)
            }
            assert set(agent.loaded) == tracked, f"{agent.name}: untracked or missing copies"
            # A repeated Load of what it holds is answered at once (a real agent does the
            # same): never two loads of one model on one replica in between.
            loaded_twice = {
                c.model for c in agent.loads if sum(d.model == c.model for d in agent.loads) > 1
            }
            assert not loaded_twice - {c.model for c in agent.unloads}, loaded_twice
    finally:
        for agent in fleet:
            await agent.disconnect()
        scheduler.stop()
