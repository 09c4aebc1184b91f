"""The agent's link: back-off, the outbox, the resource-report rule."""

from __future__ import annotations

import asyncio
import statistics

import pytest
from prometheus_client import CollectorRegistry

from agent.gpu_monitor import GpuMonitor, moved
from agent.gpus import NoGpus
from agent.link import Outbox, SchedulerLink
from agent.metrics import AgentMetrics
from agent.settings import AgentSettings
from contract.protocol import DrainRequest, EventKind, GpuDevice, ModelEvent
from protos import agent_pb2

GiB = 2**30


def device(uuid: str, free: int, total: int = 80 * GiB) -> GpuDevice:
    return GpuDevice(uuid, "H100", 0, total, free, total - free)


def test_moved_past_threshold() -> None:
    before = [device("a", 40 * GiB), device("b", 40 * GiB)]
    assert not moved(before, [device("a", 40 * GiB - GiB), device("b", 40 * GiB)], GiB)
    assert moved(before, [device("a", 40 * GiB - GiB - 1), device("b", 40 * GiB)], GiB)
    assert moved(before, [device("a", 40 * GiB)], GiB)  # a device vanished
    assert moved(before, [*before, device("c", 1)], GiB)  # a device appeared


def make_link(jitter: float) -> SchedulerLink:
    settings = AgentSettings(reconnect_initial_s=0.5, reconnect_max_s=8)
    metrics = AgentMetrics(CollectorRegistry())
    return SchedulerLink(
        settings,
        manager=None,  # type: ignore[arg-type]
        gpus=GpuMonitor(NoGpus(), metrics, 0),
        metrics=metrics,
        outbox=Outbox(),
        jitter=lambda: jitter,
    )


@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
def test_backoff_is_exponential_capped_and_jittered(jitter: float) -> None:
    link = make_link(jitter)
    delays = [link.backoff_s(attempt) for attempt in range(10)]
    steps = [0.5, 1, 2, 4, 8, 8, 8, 8, 8, 8]
    for delay, step in zip(delays, steps, strict=True):
        assert step / 2 <= delay <= step
        assert delay == pytest.approx(step * (0.5 + 0.5 * jitter))


def test_backoff_jitter_spreads_agents() -> None:
    import random

    rng = random.Random(7)
    link = make_link(0)
    link._jitter = rng.random
    samples = [link.backoff_s(3) for _ in range(200)]
    assert min(samples) >= 2 and max(samples) <= 4
    assert statistics.pstdev(samples) > 0.2


async def test_outbox_drops_when_detached_and_queues_when_attached() -> None:
    outbox = Outbox()
    outbox.event(ModelEvent(EventKind.LOADED, "iris", 1))
    assert not outbox.attached
    assert not outbox.end()
    queue: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()
    outbox.attach(queue)
    outbox.event(ModelEvent(EventKind.UNLOADED, "iris", 1))
    assert outbox.end()
    assert not outbox.send(DrainRequest()), "nothing is sent after the end of the stream"
    assert queue.qsize() == 2
    message = queue.get_nowait()
    assert message is not None and message.event.kind == agent_pb2.ModelEvent.UNLOADED
    assert queue.get_nowait() is None


async def test_resource_report_only_when_moved() -> None:
    class Probe:
        def __init__(self) -> None:
            self.free = 40 * GiB

        def devices(self) -> list[GpuDevice]:
            return [device("a", self.free)]

        def close(self) -> None:
            return None

    probe = Probe()
    registry = CollectorRegistry()
    monitor = GpuMonitor(probe, AgentMetrics(registry), GiB)
    sent: list[list[GpuDevice]] = []

    def send(devices: list[GpuDevice]) -> bool:
        sent.append(devices)
        return True

    await monitor.refresh()
    assert not monitor.report_if_moved(send)  # nothing reported yet: the hello comes first
    monitor.mark_reported(monitor.latest)
    probe.free -= GiB // 2
    await monitor.refresh()
    assert not monitor.report_if_moved(send)
    probe.free -= GiB
    await monitor.refresh()
    assert monitor.report_if_moved(send)
    assert [d.free_bytes for d in sent[0]] == [40 * GiB - GiB // 2 - GiB]
    assert not monitor.report_if_moved(send)  # the new baseline is what was sent
    labels = {"uuid": "a", "name": "H100"}
    assert registry.get_sample_value("gpuplace_agent_gpu_memory_free_bytes", labels) == (
        40 * GiB - GiB // 2 - GiB
    )
