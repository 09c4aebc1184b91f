"""HTTP, metrics, gRPC health and reflection, the watch stream and the command line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from devharness.sim_agent import GiB, SimGpu
from gpuplace.client import SchedulerClient
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from scheduler_service import servicers
from scheduler_service.model import WAITING_REASONS
from scheduler_service.settings import SchedulerSettings
from tests.support.scheduler import SchedulerHandle
from tests.support.wait import wait_until

Stub = scheduler_pb2_grpc.SchedulerStub


async def scrape(
    scheduler: SchedulerHandle,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{scheduler.http_url}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_live_and_ready(scheduler: SchedulerHandle) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/live", "/ready"):
            async with session.get(f"{scheduler.http_url}{path}") as response:
                assert response.status == 200, path


async def test_metrics_follow_placements_failures_and_gpus(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    await agents("bad", fail={"iris": "boom"})
    await agents("gpu", capabilities=("model-on-gpu",), gpus=[SimGpu("GPU-1", 40 * GiB, 30 * GiB)])
    await agents("good")
    await wait_until(lambda: len(scheduler.service.agents()) == 3, what="three agents")
    await client.LoadModel(scheduler_pb2.LoadModelRequest(model=common_pb2.ModelSpec(name="iris")))
    await client.LoadModel(
        scheduler_pb2.LoadModelRequest(
            model=common_pb2.ModelSpec(name="big", requirements=["model-on-gpu"], gpu_memory="80Gi")
        )
    )
    await client.LoadModel(
        scheduler_pb2.LoadModelRequest(
            model=common_pb2.ModelSpec(
                name="small", requirements=["model-on-gpu"], gpu_memory="8Gi"
            )
        )
    )

    async def settled() -> Any:
        metrics = await scrape(scheduler)
        ok = metrics.get(("gpuplace_scheduler_models", (("state", "Available"),))) == 2
        ok = ok and metrics.get(("gpuplace_scheduler_models", (("state", "ScheduleFailed"),))) == 1
        return metrics if ok else None

    metrics = await wait_until(settled, what="two models available and one refused")
    assert metrics[("gpuplace_scheduler_connected_agents", ())] == 3
    assert metrics[("gpuplace_scheduler_load_failures_total", (("reason", "load_failed"),))] == 1
    assert metrics[("gpuplace_scheduler_retries_total", ())] >= 1
    assert metrics[("gpuplace_scheduler_placements_total", (("outcome", "rejected"),))] >= 1
    assert metrics[("gpuplace_scheduler_placement_duration_seconds_count", ())] >= 3
    labels = (("name", "Simulated GPU"), ("replica", "0"), ("server", "gpu"), ("uuid", "GPU-1"))
    assert metrics[("gpuplace_scheduler_gpu_memory_total_bytes", labels)] == 40 * GiB
    assert metrics[("gpuplace_scheduler_gpu_memory_free_bytes", labels)] == 30 * GiB
    assert metrics[("gpuplace_scheduler_gpu_memory_reserved_bytes", labels)] == 0
    assert metrics[("gpuplace_scheduler_gpu_memory_used_bytes", labels)] == 10 * GiB
    # The device holds `small`, placed with its declared 8Gi.
    assert metrics[("gpuplace_scheduler_gpu_memory_placed_bytes", labels)] == 8 * GiB
    # `big` got furthest on the GPU server (the others lack the capability): its GPU memory.
    waiting = {
        dict(labels)["reason"]: value
        for (name, labels), value in metrics.items()
        if name == "gpuplace_scheduler_models_waiting"
    }
    assert waiting == {reason: int(reason == "gpu_memory") for reason in WAITING_REASONS}
    # iris (after a failed load and a retry) and small became Available after their LoadModel.
    assert metrics[("gpuplace_scheduler_model_available_duration_seconds_count", ())] == 2


async def test_health_and_reflection_on_both_ports(scheduler: SchedulerHandle) -> None:
    for address, service in (
        (scheduler.client_address, "gpuplace.scheduler.v1.Scheduler"),
        (scheduler.agent_address, "gpuplace.agent.v1.AgentService"),
    ):
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for answer in reflection.ServerReflectionInfo(iter([request])):
                names = {s.name for s in answer.list_services_response.service}
                assert service in names
            # v1, as newer grpcurl asks first: the same messages under another name.
            v1 = channel.stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
            async for answer in v1(iter([request, symbol])):
                if answer.HasField("list_services_response"):
                    names = {s.name for s in answer.list_services_response.service}
                    assert {service, "grpc.reflection.v1.ServerReflection"} <= names
                else:
                    assert answer.file_descriptor_response.file_descriptor_proto


async def test_watch_streams_every_state_change(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    await agents("a-server")
    await wait_until(scheduler.service.agents, what="an agent")
    seen: list[str] = []

    async def watch() -> None:
        async for status in client.WatchModels(scheduler_pb2.WatchModelsRequest(name="")):
            replicas = ",".join(r.state for r in status.replicas)
            seen.append(f"{status.state}[{replicas}]")
            if status.state == "Available":
                await client.UnloadModel(scheduler_pb2.UnloadModelRequest(name="iris"))
            if status.state == "Terminated":
                return

    watcher = asyncio.create_task(watch())
    await wait_until(lambda: scheduler.service._watchers, what="the watcher registered")
    await client.LoadModel(scheduler_pb2.LoadModelRequest(model=common_pb2.ModelSpec(name="iris")))
    await asyncio.wait_for(watcher, 10)
    # What each transaction left: the request and the pass placing it are one.
    assert seen[0] == "Progressing[LoadRequested]"
    assert seen == [
        "Progressing[LoadRequested]",
        "Available[Available]",
        "Terminating[Unloading]",
        "Terminated[]",  # the UNLOADED and the pass that ends the model are one too
    ]


async def test_watch_of_an_unknown_model_is_not_found(client: Stub) -> None:
    call = client.WatchModels(scheduler_pb2.WatchModelsRequest(name="nope"))
    try:
        async for _ in call:
            raise AssertionError("no status expected")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("expected NOT_FOUND")


def test_help_documents_every_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpuplace.cli", "scheduler", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for field in SchedulerSettings.model_fields:
        flag = f"--{field.replace('_', '-')}"
        assert flag in result.stdout, flag
        assert f"GPUPLACE_SCHEDULER_{field.upper()}" in result.stdout, field


def test_a_bad_setting_stops_the_scheduler_with_one_line_naming_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpuplace.cli", "scheduler"],
        capture_output=True,
        text=True,
        env={"GPUPLACE_SCHEDULER_PORT": "ninety", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 2
    assert "GPUPLACE_SCHEDULER_PORT" in result.stderr
    assert "'ninety'" in result.stderr


async def test_list_models_pages_by_count_and_by_bytes(
    scheduler: SchedulerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list of any length fits the message limit: pages of at most `page_size` models,
    and under a byte bound, each starting after the previous page's last name."""
    names = [f"m-{number:02d}" for number in range(25)]
    async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        for name in reversed(names):
            spec = common_pb2.ModelSpec(name=name, requirements=["sklearn"], memory="1Mi")
            await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=spec))

        async def pages(size: int) -> list[list[str]]:
            found, token = [], ""
            while True:
                request = scheduler_pb2.ListModelsRequest(page_size=size, page_token=token)
                reply = await stub.ListModels(request)
                found.append([status.name for status in reply.models])
                token = reply.next_page_token
                if not token:
                    return found

        by_count = await pages(7)
        assert [len(page) for page in by_count] == [7, 7, 7, 4]
        assert [name for page in by_count for name in page] == names
        assert [page[0] for page in await pages(0)] == ["m-00"]  # the default: one page
        monkeypatch.setattr(servicers, "PAGE_BYTES", 1)  # every model over the bound alone
        by_bytes = await pages(7)
        assert by_bytes == [[name] for name in names]
    client = SchedulerClient(scheduler.client_address)
    try:
        listed = await asyncio.to_thread(client.models, 4)
    finally:
        client.close()
    assert [status.name for status in listed] == names


async def test_a_second_live_agent_with_the_same_pod_name_is_refused(
    scheduler: SchedulerHandle, agents: Callable[..., Any]
) -> None:
    first = await agents("mlserver", index=0)
    await wait_until(lambda: first.welcomed, what="the first agent welcomed")
    second = await agents("mlserver", index=0)
    await wait_until(lambda: second.closed_with is not None, what="the second agent refused")
    assert second.closed_with == grpc.StatusCode.ALREADY_EXISTS and not second.welcomed
    [session] = scheduler.service.agents()
    assert session.connected and session.peer.startswith("ipv4:127.0.0.1:")
    await first.disconnect()
    await wait_until(lambda: not scheduler.service.agents()[0].connected, what="first gone")
    third = await agents("mlserver", index=0)
    await wait_until(lambda: third.welcomed, what="a new agent welcomed once the first left")
