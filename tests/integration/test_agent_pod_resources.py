"""Which GPUs are this pod's: a fake kubelet serving the PodResources API (grpc.aio on a unix
socket in a temp dir, gpuplace's own proto) and the fake NVML library with four devices."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry

from agent.gpu_monitor import GpuMonitor
from agent.gpus import NvmlGpuProbe
from agent.main import Agent
from agent.metrics import AgentMetrics
from agent.pod_resources import (
    Assigned,
    KubeletGpus,
    NoAnswer,
    NoKubelet,
    NotListed,
    assigned_gpus,
)
from agent.settings import AgentSettings
from contract.protocol import GpuDevice
from devharness.fake_nvml import FakeGpu, FakeMig, FakeNvml, GiB
from placement import Replica, Request, first_failure
from protos import agent_pb2, podresources_pb2, podresources_pb2_grpc
from tests.support.probes import CountingProbe

POD, NAMESPACE, CONTAINER = "mlserver-gpu-0", "seldon-mesh", "mlserver"
FOUR = [
    FakeGpu("GPU-0000", 80 * GiB, 80 * GiB),
    FakeGpu("GPU-1111", 80 * GiB, 70 * GiB),
    FakeGpu("GPU-2222", 80 * GiB, 60 * GiB),
    FakeGpu(
        "GPU-3333",
        80 * GiB,
        80 * GiB,
        mig_mode=1,
        migs=[
            FakeMig(0, "MIG-aaaa", 10 * GiB, 9 * GiB),
            FakeMig(1, "MIG-bbbb", 10 * GiB, 10 * GiB),
        ],
    ),
]


class FakeKubelet(podresources_pb2_grpc.PodResourcesListerServicer):
    """Answers for the pods in `pods`: {(namespace, name): {container: [device ids]}}."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, list[str]]] = {}
        self.has_get = True
        self.calls: list[str] = []

    def _resources(self, namespace: str, name: str) -> podresources_pb2.PodResources:
        containers = [
            podresources_pb2.ContainerResources(
                name=container,
                devices=[
                    podresources_pb2.ContainerDevices(
                        resource_name="nvidia.com/gpu", device_ids=ids
                    ),
                    podresources_pb2.ContainerDevices(
                        resource_name="example.com/nic", device_ids=["nic-0"]
                    ),
                ],
            )
            for container, ids in self.pods[(namespace, name)].items()
        ]
        return podresources_pb2.PodResources(name=name, namespace=namespace, containers=containers)

    async def List(self, request: Any, context: Any) -> podresources_pb2.ListPodResourcesResponse:
        self.calls.append("List")
        return podresources_pb2.ListPodResourcesResponse(
            pod_resources=[self._resources(ns, name) for ns, name in self.pods]
        )

    async def Get(self, request: Any, context: Any) -> podresources_pb2.GetPodResourcesResponse:
        self.calls.append("Get")
        # As the kubelet answers: a plain error (code UNKNOWN) for a disabled Get (its
        # feature gate is off by default before Kubernetes 1.34) and for a pod it does not know.
        if not self.has_get:
            await context.abort(grpc.StatusCode.UNKNOWN, "PodResources API Get method disabled")
        key = (request.pod_namespace, request.pod_name)
        if key not in self.pods:
            await context.abort(
                grpc.StatusCode.UNKNOWN,
                f"pod {request.pod_name} not found in {request.pod_namespace}",
            )
        return podresources_pb2.GetPodResourcesResponse(pod_resources=self._resources(*key))


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[tuple[FakeKubelet, str]]:
    fake = FakeKubelet()
    server = grpc.aio.server()
    podresources_pb2_grpc.add_PodResourcesListerServicer_to_server(fake, server)
    socket_path = str(tmp_path / "kubelet.sock")
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    try:
        yield fake, socket_path
    finally:
        await server.stop(grace=None)


@pytest.fixture
def four(gpus: FakeNvml) -> FakeNvml:
    gpus.gpus = list(FOUR)
    gpus.write()
    return gpus


def monitor(socket_path: str, container: str = CONTAINER) -> GpuMonitor:
    assignment = KubeletGpus(socket_path, POD, NAMESPACE, container, "mlserver-gpu-0")
    return GpuMonitor(NvmlGpuProbe(), AgentMetrics(CollectorRegistry()), GiB, assignment)


async def test_the_agent_reports_exactly_its_inference_containers_gpus(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str]
) -> None:
    fake, socket_path = kubelet
    fake.pods[(NAMESPACE, POD)] = {"mlserver": ["GPU-1111", "GPU-2222"], "agent": []}
    fake.pods[(NAMESPACE, "other-0")] = {"mlserver": ["GPU-0000"]}
    gpus = monitor(socket_path)
    try:
        devices = await gpus.refresh()
    finally:
        gpus.close()
    assert [(d.uuid, d.free_bytes) for d in devices] == [
        ("GPU-1111", 70 * GiB),
        ("GPU-2222", 60 * GiB),
    ]
    assert fake.calls == ["Get"]


async def test_mig_uuids_map_to_mig_instances(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str]
) -> None:
    fake, socket_path = kubelet
    fake.pods[(NAMESPACE, POD)] = {"mlserver": ["MIG-bbbb"]}
    gpus = monitor(socket_path)
    try:
        (device,) = await gpus.refresh()
    finally:
        gpus.close()
    assert (device.uuid, device.parent_uuid, device.total_bytes) == (
        "MIG-bbbb",
        "GPU-3333",
        10 * GiB,
    )


async def test_a_changed_assignment_is_picked_up_and_reported(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str]
) -> None:
    fake, socket_path = kubelet
    fake.pods[(NAMESPACE, POD)] = {"mlserver": ["GPU-1111"]}
    gpus = monitor(socket_path)
    sent: list[list[str]] = []
    try:
        gpus.mark_reported(await gpus.refresh())
        fake.pods[(NAMESPACE, POD)] = {"mlserver": ["GPU-1111", "GPU-0000"]}
        await gpus.refresh()
        assert gpus.report_if_moved(lambda devices: sent.append([d.uuid for d in devices]) or True)
    finally:
        gpus.close()
    assert sent == [["GPU-0000", "GPU-1111"]]


async def test_a_loads_readings_ask_nvml_again_but_not_the_kubelet(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str]
) -> None:
    """A load's before and after readings keep the assignment of the last refresh (a pod's
    devices do not change while it runs): no kubelet round trip in a load's path."""
    fake, socket_path = kubelet
    fake.pods[(NAMESPACE, POD)] = {"mlserver": ["GPU-1111"]}
    gpus = monitor(socket_path)
    try:
        await gpus.refresh()
        four.gpus[1] = FakeGpu("GPU-1111", 80 * GiB, 50 * GiB)
        four.write()
        reading = await gpus.reading()
        assert fake.calls == ["Get"]
        assert [(d.uuid, d.free_bytes) for d in reading] == [("GPU-1111", 50 * GiB)]
        await gpus.refresh()  # the periodic refresh asks again
        assert fake.calls == ["Get", "Get"]
    finally:
        gpus.close()


async def test_the_update_after_a_change_asks_no_kubelet(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str], tmp_path: Path
) -> None:
    """After each load and unload the agent sends a fresh NVML reading of the devices the
    last refresh was assigned: a change waits on no kubelet."""
    fake, socket_path = kubelet
    fake.pods[(NAMESPACE, POD)] = {"mlserver": ["GPU-1111"]}
    agent = Agent(
        AgentSettings(
            pod_name=POD,
            pod_namespace=NAMESPACE,
            pod_resources_socket=socket_path,
            capabilities=["sklearn"],
            memory_bytes=8 * GiB,
            model_repository=tmp_path / "models",
        )
    )
    sent: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()
    agent.outbox.attach(sent)
    try:
        agent.gpus.mark_reported(await agent.gpus.refresh())  # the hello's reading
        four.gpus[1] = FakeGpu("GPU-1111", 80 * GiB, 40 * GiB)
        four.write()
        assert agent.manager.after_change is not None
        await agent.manager.after_change()
    finally:
        agent.gpus.close()
    message = sent.get_nowait()
    assert message is not None and message.WhichOneof("message") == "resources"
    (device,) = message.resources.devices
    assert (device.uuid, device.free_bytes) == ("GPU-1111", 40 * GiB)
    assert fake.calls == ["Get"]


async def test_a_pod_assigned_no_gpu_reads_nvml_for_no_load(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str]
) -> None:
    """NVML sees the node's devices, the kubelet gave this container none: a load has
    nothing of its own to measure."""
    fake, socket_path = kubelet
    fake.pods[(NAMESPACE, POD)] = {"mlserver": []}
    probe = CountingProbe()
    gpus = GpuMonitor(
        probe,
        AgentMetrics(CollectorRegistry()),
        GiB,
        KubeletGpus(socket_path, POD, NAMESPACE, CONTAINER, "mlserver-gpu-0"),
    )
    try:
        assert await gpus.refresh() == []
        assert await gpus.reading() == [] and probe.reads == 1
    finally:
        gpus.close()


async def test_a_kubelet_without_get_is_asked_with_list(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str]
) -> None:
    fake, socket_path = kubelet
    fake.has_get = False
    fake.pods[(NAMESPACE, POD)] = {"mlserver": ["GPU-2222"]}
    answer = await assigned_gpus(socket_path, POD, NAMESPACE, CONTAINER)
    assert answer == Assigned(("GPU-2222",))
    assert fake.calls == ["Get", "List"]


async def test_no_socket_falls_back_to_every_device_with_one_warning(
    four: FakeNvml, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.pod_resources")
    gpus = monitor(str(tmp_path / "absent.sock"))
    try:
        first = await gpus.refresh()
        await gpus.refresh()
    finally:
        gpus.close()
    assert [d.uuid for d in first] == ["GPU-0000", "GPU-1111", "GPU-2222", "MIG-aaaa", "MIG-bbbb"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "no PodResources socket" in warnings[0]
    assert "other pods' GPUs" in warnings[0]


async def test_a_pod_the_kubelet_does_not_list_reports_no_gpu(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.pod_resources")
    _, socket_path = kubelet
    gpus = monitor(socket_path)
    try:
        assert await gpus.refresh() == []
    finally:
        gpus.close()
    assert f"the kubelet lists no pod {NAMESPACE}/{POD}" in caplog.text
    assert "reporting no GPU (CPU models are still served)" in caplog.text


async def test_a_missing_inference_container_is_named(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str]
) -> None:
    fake, socket_path = kubelet
    fake.pods[(NAMESPACE, POD)] = {"triton": ["GPU-1111"], "agent": []}
    answer = await assigned_gpus(socket_path, POD, NAMESPACE, CONTAINER)
    assert isinstance(answer, NotListed)
    assert "no container 'mlserver'" in answer.reason and "triton, agent" in answer.reason


async def test_a_kubelet_that_stops_answering_keeps_the_last_assignment(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str], tmp_path: Path
) -> None:
    fake, socket_path = kubelet
    fake.pods[(NAMESPACE, POD)] = {"mlserver": ["GPU-2222"]}
    assignment = KubeletGpus(socket_path, POD, NAMESPACE, CONTAINER, "mlserver-gpu-0")
    assert await assignment.uuids(["GPU-2222"]) == ("GPU-2222",)
    assignment.socket_path = str(tmp_path / "gone.sock")
    assert await assignment.uuids(["GPU-2222"]) == ("GPU-2222",)
    assert isinstance(
        await assigned_gpus(assignment.socket_path, POD, NAMESPACE, CONTAINER), NoKubelet
    )


async def test_an_assigned_gpu_nvml_cannot_see_is_reported_with_unknown_memory(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The agent's container lacks a GPU the kubelet gave the inference container
    (NVIDIA_VISIBLE_DEVICES not `all` on the agent): it is reported, unmeasured, said once;
    its memory gauges are absent rather than 0."""
    caplog.set_level(logging.WARNING, logger="agent.gpu_monitor")
    fake, socket_path = kubelet
    fake.pods[(NAMESPACE, POD)] = {"mlserver": ["GPU-9999", "GPU-1111"]}
    metrics = AgentMetrics(CollectorRegistry())
    assignment = KubeletGpus(socket_path, POD, NAMESPACE, CONTAINER, "mlserver-gpu-0")
    gpus = GpuMonitor(NvmlGpuProbe(), metrics, GiB, assignment)
    try:
        devices = await gpus.refresh()
        await gpus.refresh()
    finally:
        gpus.close()
    assert [(d.uuid, d.measured, d.free_bytes) for d in devices] == [
        ("GPU-1111", True, 70 * GiB),
        ("GPU-9999", False, 0),
    ]
    assert devices[1] == GpuDevice.unmeasured("GPU-9999")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "GPU-9999" in warnings[0] and "unknown memory" in warnings[0]
    assert "NVIDIA_VISIBLE_DEVICES=all" in warnings[0]
    sample = metrics.registry.get_sample_value
    assert sample("gpuplace_agent_gpu_devices") == 2
    free = "gpuplace_agent_gpu_memory_free_bytes"
    assert sample(free, {"uuid": "GPU-1111", "name": "NVIDIA A100-SXM4-40GB"}) == 70 * GiB
    assert sample(free, {"uuid": "GPU-9999", "name": ""}) is None
    # The scheduler's view of this replica: the unread device takes no GPU model.
    views = tuple(device.placement_view() for device in devices)
    replica = Replica("mlserver-gpu", 0, frozenset(), GiB, gpus=views)
    reason = first_failure(Request("m", 1, gpu_memory_bytes=80 * GiB), replica, 0.0)
    assert reason is not None and "memory of GPU GPU-9999 not measured" in reason


async def test_a_socket_that_does_not_answer_reports_no_gpu(
    four: FakeNvml, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not every device: render gives the agent NVIDIA_VISIBLE_DEVICES=all, so every device
    NVML sees would include other pods' GPUs."""
    caplog.set_level(logging.WARNING, logger="agent.pod_resources")
    dead = tmp_path / "dead.sock"
    dead.write_text("not a socket")
    assert isinstance(await assigned_gpus(str(dead), POD, NAMESPACE, CONTAINER), NoAnswer)
    gpus = monitor(str(dead))
    try:
        assert await gpus.refresh() == []
    finally:
        gpus.close()
    assert "reporting no GPU until it answers" in caplog.text


async def test_time_sliced_and_mig_resources_count_as_gpus(
    four: FakeNvml, kubelet: tuple[FakeKubelet, str]
) -> None:
    """The device plugin's other names for GPUs: a time-sliced share ("::<n>" after the
    UUID, several shares of one GPU) and a MIG profile under the mixed strategy."""
    fake, socket_path = kubelet
    fake.pods[(NAMESPACE, POD)] = {"mlserver": []}
    resources = fake._resources  # the fixture's containers, with other resource names

    def with_other_names(namespace: str, name: str) -> podresources_pb2.PodResources:
        pod = resources(namespace, name)
        pod.containers[0].devices.extend(
            [
                podresources_pb2.ContainerDevices(
                    resource_name="nvidia.com/gpu.shared",
                    device_ids=["GPU-1111::0", "GPU-1111::3"],
                ),
                podresources_pb2.ContainerDevices(
                    resource_name="nvidia.com/mig-1g.10gb", device_ids=["MIG-aaaa"]
                ),
            ]
        )
        return pod

    fake._resources = with_other_names  # type: ignore[method-assign]
    answer = await assigned_gpus(socket_path, POD, NAMESPACE, CONTAINER)
    assert answer == Assigned(("GPU-1111", "MIG-aaaa"))
