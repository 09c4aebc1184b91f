"""Models run where they were placed: the real scheduler, an in-process agent reading the
fake NVML library, and a fake V2 inference server.

The agent writes the scheduler's devices into the model's model-settings.json; when the
memory of a load appears on another device than placed (the fake inference server takes it
there in the fake NVML), the agent warns and the scheduler's ledger follows what NVML
measured.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import grpc.aio
import pytest

from agent.gpus import NvmlGpuProbe
from agent.main import Agent
from agent.settings import AgentSettings
from devharness.fake_nvml import FakeNvml, GiB
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.fakes.fake_v2 import FakeV2Server
from tests.support.scheduler import SchedulerHandle
from tests.support.wait import wait_until

# The fake machine (conftest `gpus`): GPU_A has 80 GiB free, GPU_B 50 GiB; NVML index 0, 1.
GPU_A = "GPU-11111111-aaaa"
GPU_B = "GPU-22222222-bbbb"
HUGGINGFACE = {"implementation": "mlserver_huggingface.HuggingFaceRuntime", "task": "fill-mask"}


@pytest.fixture
async def gpu_agent(
    tmp_path: Path, scheduler: SchedulerHandle, gpus: FakeNvml
) -> AsyncIterator[tuple[Agent, FakeV2Server]]:
    async with AsyncExitStack() as stack:
        v2 = await FakeV2Server(tmp_path / "gpu-server-0" / "models").start()
        stack.push_async_callback(v2.stop)
        host, port = scheduler.agent_address.rsplit(":", 1)
        settings = AgentSettings(
            pod_name="gpu-server-0",
            capabilities=["mlserver", "huggingface", "model-on-gpu"],
            memory_bytes=8 * GiB,
            scheduler_host=host,
            scheduler_port=int(port),
            inference_http_port=v2.port,
            model_repository=v2.repository,
            http_host="127.0.0.1",
            readiness_port=0,
            metrics_port=0,
            reconnect_initial_s=0.05,
            reconnect_max_s=0.3,
            load_timeout_s=10,
        )
        agent = Agent(settings, probe=NvmlGpuProbe())
        await agent.start()
        stack.push_async_callback(agent.stop)
        await wait_until(lambda: agent.link.connected, what="agent connected")
        yield agent, v2


async def load_and_wait(
    client: scheduler_pb2_grpc.SchedulerStub, name: str
) -> scheduler_pb2.CopyStatus:
    # 20 GiB: best fit puts it on GPU_B (50 GiB free), not GPU_A (80 GiB free).
    model = common_pb2.ModelSpec(
        name=name,
        parameters=HUGGINGFACE,
        gpu_memory="20Gi",
        requirements=["model-on-gpu"],
    )
    await client.LoadModel(scheduler_pb2.LoadModelRequest(model=model))

    async def available() -> scheduler_pb2.CopyStatus | None:
        current = await client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name=name))
        if current.state != "Available":
            return None
        (replica,) = current.replicas
        return replica

    replica: scheduler_pb2.CopyStatus = await wait_until(available, what=f"{name} available")
    return replica


async def test_the_placement_reaches_the_model_settings(
    gpu_agent: tuple[Agent, FakeV2Server], gpus: FakeNvml, scheduler: SchedulerHandle
) -> None:
    _, v2 = gpu_agent
    v2.on_load = lambda name: gpus.take(GPU_B, 21 * GiB)
    async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
        replica = await load_and_wait(scheduler_pb2_grpc.SchedulerStub(channel), "llm")
    assert list(replica.device_uuids) == [GPU_B]
    assert dict(replica.footprint_bytes) == {GPU_B: 21 * GiB}
    settings = json.loads((v2.repository / "llm" / "model-settings.json").read_text())
    assert settings["parameters"]["extra"] == {
        "task": "fill-mask",
        "device": "cuda:1",
        "gpuplace": {"device_uuids": [GPU_B], "cuda_ordinals": [1]},
    }


async def test_a_model_found_on_another_device_is_charged_there(
    gpu_agent: tuple[Agent, FakeV2Server],
    gpus: FakeNvml,
    scheduler: SchedulerHandle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent, v2 = gpu_agent
    # the runtime ignored its device: the memory appears on the first GPU
    v2.on_load = lambda name: gpus.take(GPU_A, 21 * GiB)
    with caplog.at_level(logging.WARNING, logger="agent.models"):
        async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
            replica = await load_and_wait(scheduler_pb2_grpc.SchedulerStub(channel), "llm")
    assert list(replica.device_uuids) == [GPU_B]
    assert dict(replica.footprint_bytes) == {GPU_A: 21 * GiB}
    assert agent.manager.loaded["llm"].footprint_bytes == {GPU_A: 21 * GiB}
    (warning,) = [r.getMessage() for r in caplog.records if "appeared on" in r.getMessage()]
    assert f"placed on {GPU_B} but its memory appeared on {GPU_A} (21 GiB)" in warning
    assert "llm v1 on gpu-server-0" in warning
