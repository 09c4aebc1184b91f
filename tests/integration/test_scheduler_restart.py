"""The scheduler is killed (SIGKILL) and started again: nothing is lost, nothing reloaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devharness.scheduler import SchedulerProcess
from devharness.sim_agent import SimAgent
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.support.wait import wait_until


@pytest.fixture
def process(tmp_path: Path) -> Iterator[SchedulerProcess]:
    scheduler = SchedulerProcess(tmp_path, disconnect_grace_s=20).start()
    yield scheduler
    scheduler.stop()


async def statuses(address: str) -> dict[str, scheduler_pb2.ModelStatus]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await scheduler_pb2_grpc.SchedulerStub(channel).ListModels(
            scheduler_pb2.ListModelsRequest()
        )
    return {model.name: model for model in reply.models}


async def test_kill_and_restart_keeps_every_model_without_reloading(
    process: SchedulerProcess,
) -> None:
    agents = [
        await SimAgent(process.agent_address, "mlserver", index=i).connect() for i in range(2)
    ]
    async with grpc.aio.insecure_channel(process.client_address) as channel:
        client = scheduler_pb2_grpc.SchedulerStub(channel)
        for name, replicas, requirements in (
            ("iris", 2, []),
            ("wine", 1, []),
            ("llama3", 1, ["model-on-gpu"]),
        ):
            await client.LoadModel(
                scheduler_pb2.LoadModelRequest(
                    model=common_pb2.ModelSpec(
                        name=name, replicas=replicas, requirements=requirements
                    )
                )
            )

    async def settled() -> dict[str, str] | None:
        states = {name: m.state for name, m in (await statuses(process.client_address)).items()}
        wanted = {"iris": "Available", "wine": "Available", "llama3": "ScheduleFailed"}
        return states if states == wanted else None

    await wait_until(settled, timeout=15, what="models settled before the kill")
    before = await statuses(process.client_address)
    loads_before = [len(agent.loads) for agent in agents]

    process.kill()
    await wait_until(lambda: not any(a.connected for a in agents), what="streams broken")
    process.restart()
    for agent in agents:
        await agent.disconnect()
        await agent.connect()

    after = await wait_until(settled, timeout=15, what="models settled after the restart")
    assert set(after) == set(before)
    # A probe on both replicas: commands on one stream keep their order, so a reload of a
    # restored model, had one been sent, would arrive before the probe's load.
    async with grpc.aio.insecure_channel(process.client_address) as channel:
        await scheduler_pb2_grpc.SchedulerStub(channel).LoadModel(
            scheduler_pb2.LoadModelRequest(model=common_pb2.ModelSpec(name="probe", replicas=2))
        )
    await wait_until(lambda: all("probe" in a.loaded for a in agents), what="probe loaded")
    loads_before = [count + 1 for count in loads_before]
    for name, model in before.items():  # the probe aside, all as before
        restored = (await statuses(process.client_address))[name]
        assert restored.version == model.version
        assert restored.spec == model.spec
        assert [(r.server, r.replica_index, r.state) for r in restored.replicas] == [
            (r.server, r.replica_index, r.state) for r in model.replicas
        ]
    assert [len(agent.loads) for agent in agents] == loads_before
    assert all(agent.unloads == [] for agent in agents)
    assert "restored 3 models" in process.log_path.read_text()
    for agent in agents:
        await agent.disconnect()


async def test_a_model_requested_just_before_the_kill_is_not_lost(
    process: SchedulerProcess,
) -> None:
    async with grpc.aio.insecure_channel(process.client_address) as channel:
        reply = await scheduler_pb2_grpc.SchedulerStub(channel).LoadModel(
            scheduler_pb2.LoadModelRequest(model=common_pb2.ModelSpec(name="iris", memory="1Gi"))
        )
    process.kill()
    process.restart()
    restored = (await statuses(process.client_address))["iris"]
    assert restored.version == reply.version
    assert restored.spec.memory == "1Gi"
    # Placed as soon as a replica connects.
    agent = await SimAgent(process.agent_address, "mlserver").connect()
    await wait_until(lambda: agent.loaded.get("iris") == reply.version, what="iris loaded")
    await agent.disconnect()
