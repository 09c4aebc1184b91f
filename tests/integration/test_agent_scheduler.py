"""Real agents against the real scheduler (in this process, or as `devharness.scheduler`'s
child process), with fake V2 inference servers: the whole control path except MLServer itself.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from agent.gpus import GpuProbe, NoGpus
from agent.main import Agent
from agent.settings import AgentSettings
from devharness.fake_nvml import FakeNvml, GiB
from devharness.scheduler import SchedulerProcess
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.fakes.fake_v2 import FakeV2Server
from tests.support.scheduler import SchedulerHandle
from tests.support.wait import wait_until

SKLEARN = {"implementation": "mlserver_sklearn.SKLearnModel"}
GPU_A = "GPU-11111111-aaaa"


def agent_settings(
    scheduler_address: str, v2: FakeV2Server, pod_name: str, **overrides: Any
) -> AgentSettings:
    host, port = scheduler_address.rsplit(":", 1)
    values: dict[str, Any] = {
        "pod_name": pod_name,
        "capabilities": ["mlserver", "sklearn"],
        "memory_bytes": 8 * GiB,
        "scheduler_host": host,
        "scheduler_port": int(port),
        "inference_http_port": v2.port,
        "model_repository": v2.repository,
        "http_host": "127.0.0.1",
        "readiness_port": 0,
        "metrics_port": 0,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.3,
        "load_timeout_s": 10,
        "drain_timeout_s": 15,
    }
    values.update(overrides)
    return AgentSettings(**values)


StartAgent = Callable[..., Awaitable[tuple[Agent, FakeV2Server]]]


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[StartAgent]:
    """`await start_agent(address, "mlserver-0")`: a fake V2 server and an agent next to it."""
    async with AsyncExitStack() as stack:

        async def start(
            address: str, pod_name: str, probe: GpuProbe | None = None, **overrides: Any
        ) -> tuple[Agent, FakeV2Server]:
            v2 = await FakeV2Server(tmp_path / pod_name / "models").start()
            stack.push_async_callback(v2.stop)
            agent = Agent(
                agent_settings(address, v2, pod_name, **overrides),
                probe=probe if probe is not None else NoGpus(),
            )
            await agent.start()
            stack.push_async_callback(agent.stop)
            await wait_until(lambda: agent.link.connected, what=f"{pod_name} connected")
            return agent, v2

        yield start


def spec(name: str, artifact: Path, **fields: Any) -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(name=name, storage_uri=str(artifact), parameters=SKLEARN, **fields)


async def status(client: scheduler_pb2_grpc.SchedulerStub, name: str) -> scheduler_pb2.ModelStatus:
    return await client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name=name))


async def wait_state(
    client: scheduler_pb2_grpc.SchedulerStub, name: str, *states: str, timeout: float = 15
) -> scheduler_pb2.ModelStatus:
    async def reached() -> scheduler_pb2.ModelStatus | None:
        current = await status(client, name)
        return current if current.state in states else None

    result: scheduler_pb2.ModelStatus = await wait_until(
        reached, timeout=timeout, what=f"{name} in {states}"
    )
    return result


async def test_load_and_unload_round_trip(
    scheduler: SchedulerHandle,
    client: scheduler_pb2_grpc.SchedulerStub,
    start_agent: StartAgent,
    artifact: Path,
) -> None:
    agent, v2 = await start_agent(scheduler.agent_address, "mlserver-0")
    await client.LoadModel(scheduler_pb2.LoadModelRequest(model=spec("iris", artifact)))
    available = await wait_state(client, "iris", "Available")
    (replica,) = available.replicas
    assert (replica.server, replica.replica_index, replica.state) == ("mlserver", 0, "Available")
    assert v2.loaded == {"iris": "1"}
    assert (v2.repository / "iris" / "model-settings.json").exists()

    await client.UnloadModel(scheduler_pb2.UnloadModelRequest(name="iris"))

    async def gone() -> bool:
        try:
            await status(client, "iris")
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    await wait_until(gone, what="iris terminated")
    assert v2.loaded == {}
    assert not (v2.repository / "iris").exists()
    assert agent.manager.loaded == {}


async def test_memory_taken_since_the_last_report_is_refused(
    scheduler: SchedulerHandle,
    client: scheduler_pb2_grpc.SchedulerStub,
    start_agent: StartAgent,
    gpus: FakeNvml,
    artifact: Path,
) -> None:
    from agent.gpus import NvmlGpuProbe

    # Reports only on change of more than 1 TiB: the scheduler keeps the hello's view.
    _, v2 = await start_agent(
        scheduler.agent_address,
        "gpu-server-0",
        probe=NvmlGpuProbe(),
        capabilities=["mlserver", "sklearn", "model-on-gpu"],
        resource_report_threshold_bytes=2**40,
    )
    for device in gpus.gpus:  # another process takes the memory
        device.free_bytes = 5 * GiB
    gpus.write()
    model = spec("llm", artifact, gpu_memory="20Gi", requirements=["model-on-gpu"])
    await client.LoadModel(scheduler_pb2.LoadModelRequest(model=model))

    async def refused() -> scheduler_pb2.ModelStatus | None:
        current = await status(client, "llm")
        failed = [r for r in current.replicas if r.state == "LoadFailed"]
        return current if failed else None

    refusal = await wait_until(refused, what="a refusal")
    (replica,) = refusal.replicas
    assert "needs 20 GiB free" in replica.reason
    assert "5 GiB free now" in replica.reason
    assert v2.load_count("llm") == 0
    assert not (v2.repository / "llm").exists()


async def test_inference_failure_is_retried_on_another_agent(
    scheduler: SchedulerHandle,
    client: scheduler_pb2_grpc.SchedulerStub,
    start_agent: StartAgent,
    artifact: Path,
) -> None:
    _, broken = await start_agent(scheduler.agent_address, "mlserver-0")
    _, healthy = await start_agent(scheduler.agent_address, "mlserver-1")
    broken.fail["iris"] = "cannot import mlserver_sklearn"
    await client.LoadModel(scheduler_pb2.LoadModelRequest(model=spec("iris", artifact)))
    available = await wait_state(client, "iris", "Available")
    states = {(r.server, r.replica_index): r.state for r in available.replicas}
    assert states[("mlserver", 1)] == "Available"
    assert broken.load_count("iris") == 1
    assert "iris" not in broken.loaded
    assert healthy.loaded == {"iris": "1"}
    assert not (broken.repository / "iris").exists()


async def test_reconnect_after_scheduler_restart_without_reloading(
    tmp_path: Path, start_agent: StartAgent, artifact: Path
) -> None:
    (tmp_path / "scheduler").mkdir()
    process = await asyncio.to_thread(
        SchedulerProcess(tmp_path / "scheduler", disconnect_grace_s=30).start
    )
    agent: Agent | None = None
    try:
        agent, v2 = await start_agent(process.agent_address, "mlserver-0")
        async with grpc.aio.insecure_channel(process.client_address) as channel:
            client = scheduler_pb2_grpc.SchedulerStub(channel)
            await client.LoadModel(scheduler_pb2.LoadModelRequest(model=spec("iris", artifact)))
            await wait_state(client, "iris", "Available")
        await asyncio.to_thread(process.kill)
        await wait_until(lambda: not agent.link.connected, what="stream lost")
        await asyncio.to_thread(process.restart)
        await wait_until(lambda: agent.link.connected, timeout=20, what="reconnected")
        async with grpc.aio.insecure_channel(process.client_address) as channel:
            client = scheduler_pb2_grpc.SchedulerStub(channel)
            available = await wait_state(client, "iris", "Available")
        assert [(r.replica_index, r.state) for r in available.replicas] == [(0, "Available")]
        assert v2.load_count("iris") == 1
        assert agent.registry.get_sample_value("gpuplace_agent_scheduler_reconnects_total") == 1
    finally:
        if agent is not None:  # first, so the scheduler's shutdown sees no live stream
            await agent.stop()
        await asyncio.to_thread(process.stop)


async def test_sigterm_drains_to_another_replica(
    tmp_path: Path,
    scheduler: SchedulerHandle,
    client: scheduler_pb2_grpc.SchedulerStub,
    start_agent: StartAgent,
    artifact: Path,
) -> None:
    leaving_v2 = await FakeV2Server(tmp_path / "leaving" / "models").start()
    host, port = scheduler.agent_address.rsplit(":", 1)
    log_path = tmp_path / "agent.log"
    process: asyncio.subprocess.Process | None = None
    try:
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gpuplace.cli",
                "agent",
                "--pod-name=mlserver-0",
                "--capabilities=mlserver,sklearn",
                "--memory-bytes=8Gi",
                f"--scheduler-host={host}",
                f"--scheduler-port={port}",
                f"--inference-http-port={leaving_v2.port}",
                f"--model-repository={leaving_v2.repository}",
                "--http-host=127.0.0.1",
                "--readiness-port=0",
                "--metrics-port=0",
                "--drain-timeout-s=20",
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
            )

        async def connected() -> bool:
            reply = await client.ListServers(scheduler_pb2.ListServersRequest())
            return any(r.index == 0 and r.connected for s in reply.servers for r in s.replicas)

        await wait_until(connected, timeout=30, what="the agent process connected")
        await client.LoadModel(scheduler_pb2.LoadModelRequest(model=spec("iris", artifact)))
        first = await wait_state(client, "iris", "Available")
        assert [r.replica_index for r in first.replicas] == [0]
        assert leaving_v2.loaded == {"iris": "1"}

        _, staying_v2 = await start_agent(scheduler.agent_address, "mlserver-1")
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=30)
        assert code == 0, log_path.read_text()
        moved = await wait_state(client, "iris", "Available")
        assert [(r.replica_index, r.state) for r in moved.replicas] == [(1, "Available")]
        assert staying_v2.loaded == {"iris": "1"}
        assert leaving_v2.loaded == {}
        assert not (leaving_v2.repository / "iris").exists()
        log = log_path.read_text()
        assert "drain complete" in log
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await leaving_v2.stop()
