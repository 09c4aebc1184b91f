"""A real Prometheus (Debian's `prometheus`, on 127.0.0.1 with a temporary folder, scraping
every second) against the real scheduler and two agents reading the fake NVML library:
asked through Prometheus's HTTP query API, every target is up, the models are counted by
state, each device's free memory is what the fake library serves, and a refused placement
is counted."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml

from agent.main import Agent
from devharness.fake_nvml import FakeNvml
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.fakes.fake_v2 import FakeV2Server
from tests.integration.test_agent_link import settings_for
from tests.support.scheduler import SchedulerHandle
from tests.support.wait import wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def agents(
    tmp_path: Path, gpus: FakeNvml, scheduler: SchedulerHandle
) -> AsyncIterator[list[Agent]]:
    started: list[tuple[Agent, FakeV2Server]] = []
    port = int(scheduler.agent_address.rsplit(":", 1)[1])
    for number in range(2):
        v2 = await FakeV2Server(tmp_path / f"models-{number}").start()
        agent = Agent(settings_for(v2, port, pod_name=f"gpu-server-{number}"))
        await agent.start()
        started.append((agent, v2))
    await wait_until(lambda: all(a.link.connected for a, _ in started), what="agents connected")
    yield [agent for agent, _ in started]
    for agent, v2 in started:
        await agent.stop()
        await v2.stop()


@pytest.fixture
async def prometheus(
    tmp_path: Path, scheduler: SchedulerHandle, agents: list[Agent]
) -> AsyncIterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is needed: apt-get install prometheus (Debian), as .ci/run does"
    targets = [scheduler.http_url.removeprefix("http://")] + [
        f"127.0.0.1:{agent.http.metrics_port}" for agent in agents
    ]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "gpuplace", "static_configs": [{"targets": targets}]}
                ],
            }
        )
    )
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await process.wait()


async def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(f"{prometheus}/api/v1/query", params={"query": expr}) as reply:
                body = await reply.json()
        except aiohttp.ClientError:
            return []  # not serving yet
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def value_of(prometheus: str, expr: str, wanted: float) -> None:
    async def reached() -> bool:
        found = await query(prometheus, expr)
        return bool(found) and float(found[0]["value"][1]) == wanted

    await wait_until(reached, timeout=30, interval=0.5, what=f"{expr} == {wanted}")


async def test_a_real_prometheus_sees_what_the_processes_do(
    prometheus: str,
    scheduler: SchedulerHandle,
    agents: list[Agent],
    gpus: FakeNvml,
    artifact: Path,
) -> None:
    await value_of(prometheus, 'count(up{job="gpuplace"} == 1)', 3)
    async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        await stub.LoadModel(
            scheduler_pb2.LoadModelRequest(
                model=common_pb2.ModelSpec(
                    name="iris",
                    storage_uri=str(artifact),
                    requirements=["sklearn"],
                    memory="1Gi",
                    parameters={"implementation": "mlserver_sklearn.SKLearnModel"},
                )
            )
        )
        await stub.LoadModel(
            scheduler_pb2.LoadModelRequest(model=common_pb2.ModelSpec(name="huge", memory="100Ti"))
        )
    await value_of(prometheus, 'gpuplace_scheduler_models{state="Available"}', 1)
    await value_of(prometheus, 'gpuplace_scheduler_models{state="ScheduleFailed"}', 1)
    await value_of(
        prometheus, 'sum(gpuplace_scheduler_placements_total{outcome="rejected"}) >= bool 1', 1
    )
    for device in gpus.gpus:
        for agent in agents:
            instance = f"127.0.0.1:{agent.http.metrics_port}"
            await value_of(
                prometheus,
                f'gpuplace_agent_gpu_memory_free_bytes{{instance="{instance}",uuid="{device.uuid}"}}',
                device.free_bytes,
            )
