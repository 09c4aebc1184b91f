"""`--log-format json` on both real processes: the scheduler (`gpuplace --log-format json
scheduler`) and an agent (`GPUPLACE_LOG_FORMAT=json gpuplace agent`, the fake NVML library,
a fake V2 inference server) write one JSON object per line, and the lines about a model or a
replica carry model, version, server, replica and reason as fields."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from devharness import fake_nvml
from devharness.cluster import AgentProcess, clean_env
from devharness.scheduler import SchedulerProcess
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.fakes.fake_v2 import FakeV2Server
from tests.support.wait import wait_until


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a process's log as an object (the harness's own `--- start` markers
    aside); a line that is not JSON fails the test."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("--- "):
            continue
        parsed = json.loads(line)
        assert isinstance(parsed, dict), line
        assert {"time", "level", "logger", "message"} <= parsed.keys(), line
        lines.append(parsed)
    return lines


def about(lines: list[dict[str, Any]], text: str, **fields: Any) -> dict[str, Any]:
    """The first line whose message contains `text`, checked to carry `fields`."""
    found = [line for line in lines if text in line["message"]]
    assert found, f"no line with {text!r} in:\n" + "\n".join(line["message"] for line in lines)
    line = found[0]
    assert {name: line.get(name) for name in fields} == fields, line
    return line


async def state_of(stub: scheduler_pb2_grpc.SchedulerStub, name: str) -> str:
    reply = await stub.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name=name))
    return str(reply.state)


@pytest.fixture
def fake_gpus(tmp_path: Path, fake_library: Path) -> fake_nvml.FakeNvml:
    return fake_nvml.two_gpus(tmp_path / "nvml-state.txt")


async def test_both_processes_write_json_lines_with_model_and_replica_fields(
    tmp_path: Path, fake_gpus: fake_nvml.FakeNvml, artifact: Path
) -> None:
    scheduler = SchedulerProcess(tmp_path, log_level="INFO", log_format="json")
    await asyncio.to_thread(scheduler.start)
    v2 = await FakeV2Server(tmp_path / "models").start()
    env = fake_nvml.subprocess_env(fake_gpus, clean_env())
    env["GPUPLACE_LOG_FORMAT"] = "json"
    port = scheduler.agent_address.rsplit(":", 1)[1]
    flags = {
        "pod-name": "gpu-server-0",
        "capabilities": "sklearn",
        "memory-bytes": str(8 * 2**30),
        "scheduler-host": "127.0.0.1",
        "scheduler-port": port,
        "inference-host": "127.0.0.1",
        "inference-http-port": str(v2.port),
        "model-repository": str(v2.repository),
        "http-host": "127.0.0.1",
        "readiness-port": "0",
        "metrics-port": "0",
    }
    agent = AgentProcess(
        ["agent", *(f"--{name}={value}" for name, value in flags.items())],
        env,
        tmp_path / "agent.log",
    )
    try:
        await asyncio.to_thread(agent.start)
        async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)

            async def connected() -> bool:
                reply = await stub.ListServers(scheduler_pb2.ListServersRequest())
                return any(server.replicas for server in reply.servers)

            await wait_until(connected, timeout=20, what="the agent connected")
            for spec in (
                common_pb2.ModelSpec(
                    name="iris",
                    storage_uri=str(artifact),
                    requirements=["sklearn"],
                    parameters={"implementation": "mlserver_sklearn.SKLearnModel"},
                ),
                common_pb2.ModelSpec(name="ranker", requirements=["triton"]),
            ):
                await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=spec))

            async def settled() -> bool:
                return (await state_of(stub, "iris"), await state_of(stub, "ranker")) == (
                    "Available",
                    "ScheduleFailed",
                )

            await wait_until(settled, timeout=20, what="iris Available, ranker refused")
    finally:
        await asyncio.to_thread(agent.stop)
        await v2.stop()
        await asyncio.to_thread(scheduler.stop)

    lines = json_lines(scheduler.log_path)
    about(lines, "scheduler ready", level="INFO")
    about(lines, "connected", server="gpu-server", replica="gpu-server-0")
    about(lines, "loading on", model="iris", version=1, server="gpu-server", replica="gpu-server-0")
    about(lines, "available", model="iris", version=1, replica="gpu-server-0")
    about(lines, "not placed", model="ranker", version=1, reason="capabilities")

    lines = json_lines(agent.log_path)
    # The agent's replica is on every line, its own link's lines and its GPUs' included.
    assert all(line.get("replica") == "gpu-server-0" for line in lines), lines
    assert all(line.get("server") == "gpu-server" for line in lines), lines
    about(lines, "connected to the scheduler")
    about(lines, "load command", model="iris", version=1)
    assert "ranker" not in {line.get("model") for line in lines}
