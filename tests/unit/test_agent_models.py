"""The model manager: memory checks, footprints, versions, ordering, concurrency."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.artifacts import ModelRepository, Placement, Record
from agent.gpu_monitor import GpuMonitor
from agent.gpus import GpuProbe
from agent.inference_server import (
    IndexEntry,
    InferenceServer,
    InferenceServerError,
    InferenceServerUnavailable,
)
from agent.metrics import AgentMetrics
from agent.models import STRAY_MIN_BYTES, ModelManager, cuda_placement, footprint, misplaced
from contract.protocol import EventKind, GpuDevice, Load, ModelEvent, Unload
from tests.support.wait import wait_until

GiB = 2**30
MiB = 2**20
SKLEARN = {"implementation": "mlserver_sklearn.SKLearnModel"}
HUGGINGFACE = {"implementation": "mlserver_huggingface.HuggingFaceRuntime", "task": "fill-mask"}


class FakeProbe:
    def __init__(self, *devices: GpuDevice) -> None:
        self.by_uuid = {device.uuid: device for device in devices}
        self.reads = 0

    def devices(self) -> list[GpuDevice]:
        self.reads += 1
        return list(self.by_uuid.values())

    def take(self, uuid: str, nbytes: int) -> None:
        device = self.by_uuid[uuid]
        self.by_uuid[uuid] = dataclasses.replace(
            device, free_bytes=device.free_bytes - nbytes, used_bytes=device.used_bytes + nbytes
        )

    def close(self) -> None:
        return None


def gpu(uuid: str, free_gib: int, total_gib: int = 80) -> GpuDevice:
    return GpuDevice(
        uuid, "NVIDIA H100", 0, total_gib * GiB, free_gib * GiB, (total_gib - free_gib) * GiB
    )


def indexed(uuid: str, index: int, free_gib: int = 80, parent: str = "") -> GpuDevice:
    """A device with its NVML index (a MIG instance: `parent` set, the parent's index)."""
    return GpuDevice(
        uuid, "NVIDIA H100", index, 80 * GiB, free_gib * GiB, (80 - free_gib) * GiB, parent
    )


class FakeInference:
    """An in-memory InferenceServer that records its calls."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.loaded: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, str] = {}
        self.unload_error: InferenceServerError | None = None
        self.gates: dict[str, asyncio.Event] = {}
        self.on_load: Callable[[str], None] | None = None
        self.on_unload: Callable[[str], None] | None = None
        self.active = 0
        self.most_active = 0
        # The server's resident host memory (None: not measurable) and what each load adds.
        self.resident: int | None = None
        self.takes: dict[str, int] = {}
        self.loading: set[str] = set()  # shown LOADING in the index (a load it still runs)
        self.readings = 0  # of its resident memory

    async def ready(self) -> bool:
        return True

    async def index(self) -> list[IndexEntry]:
        return [IndexEntry(name, "READY", version) for name, version in self.loaded.items()] + [
            IndexEntry(name, "LOADING") for name in sorted(self.loading)
        ]

    async def load(self, name: str) -> None:
        self.calls.append(("load", name))
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if name in self.gates:
                await self.gates[name].wait()
            if name in self.fail:
                raise InferenceServerError(self.fail[name])
            settings = json.loads((self.repository / name / "model-settings.json").read_text())
            if self.on_load:
                self.on_load(name)
            if self.resident is not None:
                self.resident += self.takes.get(name, 0)
            replaced = self.loaded.get(name)
            self.loaded[name] = settings["parameters"]["version"]
            if replaced is not None and self.on_unload:
                # as MLServer does: the new version is up, the stale one is dropped
                self.on_unload(name)
        finally:
            self.active -= 1

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))
        if self.unload_error is not None:
            raise self.unload_error
        if self.loaded.pop(name, None) is not None:
            if self.resident is not None:
                self.resident -= self.takes.get(name, 0)
            if self.on_unload:
                self.on_unload(name)

    async def resident_bytes(self) -> int | None:
        self.readings += 1
        return self.resident

    async def close(self) -> None:
        return None


@dataclasses.dataclass
class Harness:
    manager: ModelManager
    inference: FakeInference
    probe: FakeProbe
    events: list[ModelEvent]
    metrics: AgentMetrics
    registry: CollectorRegistry
    artifact: Path
    repository: ModelRepository
    changes: list[int]

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.registry.get_sample_value(name, labels or {})


def make(tmp_path: Path, *devices: GpuDevice, max_loads: int = 2) -> Harness:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    repository = ModelRepository(tmp_path / "models")
    repository.prepare()
    inference = FakeInference(repository.root)
    probe = FakeProbe(*devices)
    events: list[ModelEvent] = []
    changes: list[int] = []

    async def changed() -> None:
        changes.append(1)

    typed_inference: InferenceServer = inference
    typed_probe: GpuProbe = probe
    manager = ModelManager(
        replica="gpu-server-1",
        repository=repository,
        inference=typed_inference,
        gpus=GpuMonitor(typed_probe, metrics, 0),
        metrics=metrics,
        emit=events.append,
        max_concurrent_loads=max_loads,
        fetch_timeout_s=5,
        after_change=changed,
    )
    source = tmp_path / "artifact"
    source.mkdir()
    (source / "model.joblib").write_bytes(b"w")
    return Harness(
        manager, inference, probe, events, metrics, registry, source, repository, changes
    )


def load(h: Harness, name: str = "iris", version: int = 1, **kwargs: object) -> Load:
    kwargs.setdefault("measure_host_memory", True)
    return Load(
        model=name,
        version=version,
        storage_uri=str(h.artifact),
        parameters=SKLEARN,
        **kwargs,  # type: ignore[arg-type]
    )


def test_footprint_is_free_before_minus_after_never_negative() -> None:
    before = {"a": 10, "b": 10, "c": 10}
    after = [gpu("a", 0), gpu("b", 0), gpu("c", 0)]
    after = [
        dataclasses.replace(after[0], free_bytes=4),
        dataclasses.replace(after[1], free_bytes=12),
        dataclasses.replace(after[2], free_bytes=10),
    ]
    assert footprint(before, after, ["a", "b"]) == {"a": 6, "b": 0}
    assert footprint(before, after, None) == {"a": 6}


async def test_load_measures_the_footprint_on_the_target_device(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-a", 40), gpu("GPU-b", 70))
    h.inference.on_load = lambda name: h.probe.take("GPU-b", 12 * GiB)
    event = await h.manager.load(load(h, gpu_memory_bytes=10 * GiB, device_uuids=("GPU-b",)))
    assert event == ModelEvent(EventKind.LOADED, "iris", 1, footprint_bytes={"GPU-b": 12 * GiB})
    assert h.events == [event]
    assert h.manager.loaded["iris"].footprint_bytes == {"GPU-b": 12 * GiB}
    assert h.repository.read_record("iris") == Record("iris", 1, {"GPU-b": 12 * GiB})
    assert h.sample("gpuplace_agent_loads_total", {"outcome": "loaded"}) == 1
    assert h.sample("gpuplace_agent_loaded_models") == 1
    assert (
        h.sample("gpuplace_agent_model_footprint_bytes", {"model": "iris", "uuid": "GPU-b"})
        == 12 * GiB
    )
    assert h.changes == [1]


async def test_any_device_load_picks_one_with_room(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-a", 5), gpu("GPU-b", 30))
    h.inference.on_load = lambda name: h.probe.take("GPU-b", 20 * GiB)
    event = await h.manager.load(load(h, gpu_memory_bytes=20 * GiB))
    assert event.kind is EventKind.LOADED
    assert event.footprint_bytes == {"GPU-b": 20 * GiB}


async def test_cpu_model_reports_no_footprint(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-a", 5), gpu("GPU-b", 30))
    event = await h.manager.load(load(h))
    assert event.kind is EventKind.LOADED
    assert event.footprint_bytes == {}


async def test_a_model_that_declares_no_gpu_memory_but_takes_some_reports_it(
    tmp_path: Path,
) -> None:
    """Seldon's Models declare no GPU memory: what one takes anyway is its footprint, so
    the scheduler charges it and learns it. A few MiB (a CUDA context) are not."""
    h = make(tmp_path, gpu("GPU-a", 5), gpu("GPU-b", 30))
    h.inference.on_load = lambda name: h.probe.take("GPU-b", 3 * GiB)
    event = await h.manager.load(load(h))
    assert event.kind is EventKind.LOADED
    assert event.footprint_bytes == {"GPU-b": 3 * GiB}
    h.inference.on_load = lambda name: h.probe.take("GPU-a", 16 * 2**20)
    small = await h.manager.load(load(h, "tiny"))
    assert small.footprint_bytes == {}


async def test_the_devices_are_read_where_a_load_or_unload_needs_them(tmp_path: Path) -> None:
    """A GPU load is checked before its fetch, then measured before and after the server's
    load. A load that asks for no GPU memory cannot be refused: it is only measured (for
    what it takes anyway). An unload's reading follows its event (`after_change`)."""
    h = make(tmp_path, gpu("GPU-a", 80))
    await h.manager.gpus.refresh()  # the agent's hello reads them
    reads = h.probe.reads
    await h.manager.load(load(h, "gpu-model", gpu_memory_bytes=GiB))
    assert h.probe.reads - reads == 3
    await h.manager.load(load(h, "cpu-model"))
    assert h.probe.reads - reads == 5
    changes = len(h.changes)
    assert (await h.manager.unload(Unload("cpu-model", 1))).kind is EventKind.UNLOADED
    assert h.probe.reads - reads == 5
    assert len(h.changes) == changes + 1  # the agent's reading after the event


@pytest.mark.parametrize("first", ["llm", "small"])
@pytest.mark.parametrize("ends_first", ["llm", "small"])
async def test_two_undeclared_loads_at_once_are_charged_nothing(
    tmp_path: Path, first: str, ends_first: str
) -> None:
    """Neither can tell its memory from the other's: a sklearn model loading next to an
    LLM that declares nothing must not learn the LLM's 20 GiB, whichever starts or ends
    first."""
    h = make(tmp_path, gpu("GPU-0", 80))
    gates = {"llm": asyncio.Event(), "small": asyncio.Event()}
    h.inference.gates = dict(gates)
    h.inference.on_load = lambda name: h.probe.take("GPU-0", 20 * GiB) if name == "llm" else None
    second = "small" if first == "llm" else "llm"
    tasks = {first: asyncio.ensure_future(h.manager.load(load(h, first)))}
    await wait_until(lambda: len(h.inference.calls) == 1)
    tasks[second] = asyncio.ensure_future(h.manager.load(load(h, second)))
    await wait_until(lambda: len(h.inference.calls) == 2)
    ends_last = "small" if ends_first == "llm" else "llm"
    gates[ends_first].set()
    await wait_until(lambda: ends_first in h.inference.loaded)
    gates[ends_last].set()
    llm, small = tasks["llm"], tasks["small"]
    events = {event.model: event for event in await asyncio.gather(llm, small)}
    assert events["llm"].kind is events["small"].kind is EventKind.LOADED
    assert events["llm"].footprint_bytes == events["small"].footprint_bytes == {}


async def test_a_load_alone_reports_the_host_memory_the_server_took(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-0", 80))
    h.inference.resident = 700 * MiB
    h.inference.takes = {"iris": 300 * MiB, "tiny": 0}
    event = await h.manager.load(load(h))
    assert (event.kind, event.host_bytes) == (EventKind.LOADED, 300 * MiB)
    assert (await h.manager.load(load(h, "tiny"))).host_bytes == 0
    # Less than before (the allocator gave memory back): a figure that means nothing.
    h.inference.takes["small"] = -5 * MiB
    assert (await h.manager.load(load(h, "small"))).host_bytes is None
    # A new version loads next to the old one, which is dropped meanwhile: not measured.
    assert (await h.manager.load(load(h, version=2))).host_bytes is None
    # A server whose memory cannot be read (MLServer with parallel workers): not measured.
    h.inference.resident = None
    assert (await h.manager.load(load(h, "other"))).host_bytes is None


async def test_host_memory_is_read_only_when_the_scheduler_asks(tmp_path: Path) -> None:
    """Two readings of the server's metrics cost the load time: none unless asked."""
    h = make(tmp_path, gpu("GPU-0", 80))
    h.inference.resident, h.inference.takes = GiB, {"iris": 300 * MiB}
    event = await h.manager.load(load(h, measure_host_memory=False))
    assert (event.kind, event.host_bytes, h.inference.readings) == (EventKind.LOADED, None, 0)
    assert (await h.manager.load(load(h, "other"))).host_bytes == 0
    assert h.inference.readings == 2


@pytest.mark.parametrize("first", ["iris", "other"])
@pytest.mark.parametrize("ends_first", ["iris", "other"])
async def test_two_loads_at_once_measure_no_host_memory(
    tmp_path: Path, first: str, ends_first: str
) -> None:
    """The server's resident memory is one number: loads that overlapped, whichever started
    or ended first, cannot tell their parts apart."""
    h = make(tmp_path, gpu("GPU-0", 80))
    h.inference.resident = GiB
    h.inference.takes = {"iris": 300 * MiB, "other": 2 * GiB}
    gates = {"iris": asyncio.Event(), "other": asyncio.Event()}
    h.inference.gates = dict(gates)
    second = "other" if first == "iris" else "iris"
    tasks = {first: h.manager.load(load(h, first))}
    await wait_until(lambda: len(h.inference.calls) == 1)
    tasks[second] = h.manager.load(load(h, second))
    await wait_until(lambda: len(h.inference.calls) == 2)
    gates[ends_first].set()
    await wait_until(lambda: ends_first in h.inference.loaded)
    gates["other" if ends_first == "iris" else "iris"].set()
    events = await asyncio.gather(*tasks.values())
    assert [(e.kind, e.host_bytes) for e in events] == [(EventKind.LOADED, None)] * 2


async def test_an_unload_during_a_load_measures_no_host_memory(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-0", 80))
    h.inference.resident = GiB
    h.inference.takes = {"iris": 300 * MiB, "other": 2 * GiB}
    assert (await h.manager.load(load(h, "other"))).host_bytes == 2 * GiB
    gate = asyncio.Event()
    h.inference.gates = {"iris": gate}
    measured = h.manager.load(load(h))
    await wait_until(lambda: ("load", "iris") in h.inference.calls)
    assert (await h.manager.unload(Unload("other", 1))).kind is EventKind.UNLOADED
    gate.set()
    assert (await measured).host_bytes is None


async def test_a_load_that_may_still_run_in_the_server_stops_host_measurements(
    tmp_path: Path,
) -> None:
    """A load that timed out and could not be unloaded may still run inside the server:
    while its index shows it LOADING, no load's host memory is told apart from it."""
    h = make(tmp_path, gpu("GPU-0", 80))
    h.inference.resident = GiB
    h.inference.takes = {"iris": 300 * MiB, "tiny": 0}
    h.inference.fail["slow"] = "timed out"
    h.inference.unload_error = InferenceServerUnavailable("unreachable")
    assert (await h.manager.load(load(h, "slow"))).kind is EventKind.LOAD_FAILED
    h.inference.loading.add("slow")  # the server goes on loading it
    h.inference.unload_error = None
    assert (await h.manager.load(load(h))).host_bytes is None
    h.inference.loading.clear()  # it ended (in or out): its memory moves no more
    assert (await h.manager.load(load(h, "tiny"))).host_bytes == 0
    # Settled once seen so: a server that shows it LOADING again is another matter.
    h.inference.loading.add("slow")
    assert (await h.manager.load(load(h, "other"))).host_bytes == 0


async def test_a_memory_reading_that_raises_never_fails_a_load(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-0", 80))

    async def broken() -> int | None:
        raise OverflowError("cannot convert float infinity to integer")

    h.inference.resident_bytes = broken  # type: ignore[method-assign]
    event = await h.manager.load(load(h))
    assert (event.kind, event.host_bytes) == (EventKind.LOADED, None)


@pytest.mark.parametrize("cpu_first", [True, False])
async def test_a_gpu_load_next_to_a_cpu_load_is_not_charged_to_it(
    tmp_path: Path, cpu_first: bool
) -> None:
    h = make(tmp_path, gpu("GPU-0", 80))
    gpu_gate, cpu_gate = asyncio.Event(), asyncio.Event()
    h.inference.gates = {"gpu-model": gpu_gate, "cpu-model": cpu_gate}
    h.inference.on_load = lambda name: (
        h.probe.take("GPU-0", 20 * GiB) if name == "gpu-model" else None
    )
    cpu = load(h, "cpu-model")
    gpu_load = load(h, "gpu-model", gpu_memory_bytes=20 * GiB, device_uuids=("GPU-0",))
    first, second = (cpu, gpu_load) if cpu_first else (gpu_load, cpu)
    first_task, second_task = h.manager.load(first), h.manager.load(second)
    await wait_until(lambda: len(h.inference.calls) == 2)
    gpu_gate.set()
    await wait_until(lambda: "gpu-model" in h.inference.loaded)
    cpu_gate.set()
    events = {event.model: event for event in await asyncio.gather(first_task, second_task)}
    assert events["gpu-model"].footprint_bytes == {"GPU-0": 20 * GiB}
    assert events["cpu-model"].kind is EventKind.LOADED
    assert events["cpu-model"].footprint_bytes == {}


async def test_an_unload_waits_for_a_load_measuring_the_same_device(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-0", 80))
    sizes = {"old": 30 * GiB, "new": 20 * GiB}
    h.inference.on_load = lambda name: h.probe.take("GPU-0", sizes[name])
    h.inference.on_unload = lambda name: h.probe.take("GPU-0", -sizes[name])
    pinned = {"gpu_memory_bytes": 20 * GiB, "device_uuids": ("GPU-0",)}
    assert (await h.manager.load(load(h, "old", **pinned))).kind is EventKind.LOADED
    gate = asyncio.Event()
    h.inference.gates["new"] = gate
    loading = h.manager.load(load(h, "new", **pinned))
    await wait_until(lambda: ("load", "new") in h.inference.calls)
    unloading = h.manager.unload(Unload("old", 1))
    await asyncio.sleep(0.05)
    assert ("unload", "old") not in h.inference.calls  # held back by the device lock
    gate.set()
    loaded = await loading
    assert loaded.footprint_bytes == {"GPU-0": 20 * GiB}
    assert (await unloading).kind is EventKind.UNLOADED
    assert h.probe.by_uuid["GPU-0"].free_bytes == 60 * GiB


async def test_a_model_the_inference_server_lost_is_loaded_again(tmp_path: Path) -> None:
    """MLServer restarted (its models gone, their folders still there): the agent loads
    each again and says LOADED (the scheduler's copy stays Available); one that cannot be
    loaded again is forgotten and reported UNLOADED, so the scheduler places it again."""
    h = make(tmp_path)
    for name in ("iris", "wine"):
        await h.manager.load(load(h, name))
    h.events.clear()
    h.inference.loaded.clear()  # a restart
    h.inference.fail["wine"] = "out of memory"
    watching = asyncio.create_task(h.manager.watch_server(interval_s=0.01))
    try:
        await wait_until(lambda: len(h.events) == 2, what="both looked at")
    finally:
        watching.cancel()
    by_name = {event.model: event for event in h.events}
    assert by_name["iris"].kind == EventKind.LOADED and "iris" in h.inference.loaded
    assert by_name["wine"].kind == EventKind.UNLOADED
    assert "could not load it again: out of memory" in by_name["wine"].message
    assert set(h.manager.loaded) == {"iris"} and not (h.repository.root / "wine").exists()


async def test_an_unreadable_index_forgets_nothing(tmp_path: Path) -> None:
    """The same version again while MLServer stalls: LOAD_FAILED, model and folder kept."""
    h = make(tmp_path, gpu("GPU-0", 40))
    h.inference.on_load = lambda name: h.probe.take("GPU-0", 30 * GiB)
    request = load(h, "big", gpu_memory_bytes=30 * GiB, device_uuids=("GPU-0",))
    assert (await h.manager.load(request)).kind is EventKind.LOADED
    folder = h.repository.root / "big"
    marker = (folder / "model-settings.json").stat().st_ino

    async def stalled() -> list[IndexEntry]:
        raise InferenceServerUnavailable("POST /v2/repository/index: no answer within 30s")

    h.inference.index = stalled  # type: ignore[method-assign]
    event = await h.manager.load(request)
    assert event.kind is EventKind.LOAD_FAILED
    assert "inference server unavailable" in event.message
    assert h.inference.calls.count(("load", "big")) == 1
    assert "big" in h.manager.loaded
    assert (folder / "model-settings.json").stat().st_ino == marker
    assert h.sample("gpuplace_agent_loaded_models") == 1


@pytest.mark.parametrize(
    ("devices", "request_kwargs", "message"),
    [
        (
            [gpu("GPU-a", 8)],
            {"gpu_memory_bytes": 10 * GiB, "device_uuids": ("GPU-a",)},
            "8 GiB free",
        ),
        ([gpu("GPU-a", 80)], {"gpu_memory_bytes": GiB, "device_uuids": ("GPU-x",)}, "GPU-x is not"),
        ([gpu("GPU-a", 8), gpu("GPU-b", 9)], {"gpu_memory_bytes": 10 * GiB}, "largest free now 9"),
        ([gpu("GPU-a", 30), gpu("GPU-b", 9)], {"gpu_memory_bytes": 10 * GiB, "gpus": 2}, "1 have"),
        ([], {"gpu_memory_bytes": GiB}, "no GPU"),
    ],
)
async def test_memory_refusal_never_calls_the_inference_server(
    tmp_path: Path,
    devices: list[GpuDevice],
    request_kwargs: dict[str, object],
    message: str,
) -> None:
    h = make(tmp_path, *devices)
    event = await h.manager.load(load(h, **request_kwargs))
    assert event.kind is EventKind.LOAD_FAILED_MEMORY
    assert message in event.message
    assert h.inference.calls == []
    assert not (h.repository.root / "iris").exists()
    assert h.sample("gpuplace_agent_loads_total", {"outcome": "failed_memory"}) == 1


async def test_inference_failure_is_load_failed_and_cleans_up(tmp_path: Path) -> None:
    h = make(tmp_path)
    h.inference.fail["iris"] = "boom: no such runtime"
    event = await h.manager.load(load(h))
    assert event.kind is EventKind.LOAD_FAILED
    assert "boom" in event.message
    assert not (h.repository.root / "iris").exists()
    assert list(h.repository.staging.iterdir()) == []
    assert "iris" not in h.manager.loaded
    assert h.sample("gpuplace_agent_loads_total", {"outcome": "failed"}) == 1


async def test_bad_artifact_and_bad_name(tmp_path: Path) -> None:
    h = make(tmp_path)
    missing = await h.manager.load(Load("iris", 1, str(tmp_path / "nowhere"), SKLEARN))
    assert missing.kind is EventKind.LOAD_FAILED and "artifact" in missing.message
    bad = await h.manager.load(Load("../x", 1, str(h.artifact), SKLEARN))
    assert bad.kind is EventKind.LOAD_FAILED and "DNS-1123" in bad.message
    assert h.inference.calls == []


async def test_a_model_without_storage_uri_is_its_settings_alone(tmp_path: Path) -> None:
    h = make(tmp_path)
    runtime = await h.manager.load(Load("echo", 1, "", {"implementation": "my.Runtime"}))
    assert runtime.kind is EventKind.LOADED
    settings = json.loads((h.repository.root / "echo" / "model-settings.json").read_text())
    assert (settings["name"], settings["implementation"]) == ("echo", "my.Runtime")
    # The seed's llama3 as written: neither files nor an implementation.
    nothing = await h.manager.load(Load("llama3", 1, "", {}))
    assert nothing.kind is EventKind.LOAD_FAILED
    assert "nothing to load" in nothing.message and "implementation" in nothing.message


async def test_the_artifact_version_picks_the_version_folder(tmp_path: Path) -> None:
    """Seldon's layout: numbered folders, each a model; artifactVersion names one."""
    h = make(tmp_path)
    versions = tmp_path / "versions"
    for number in ("1", "2"):
        (versions / number).mkdir(parents=True)
        (versions / number / "model-settings.json").write_text('{"implementation": "x.Y"}')
        (versions / number / "weights").write_text(number)
    first = await h.manager.load(Load("iris", 1, str(versions), artifact_version=1))
    assert first.kind is EventKind.LOADED
    assert (h.repository.root / "iris" / "weights").read_text() == "1"
    assert not (h.repository.root / "iris" / "2").exists()
    missing = await h.manager.load(Load("iris", 2, str(versions), artifact_version=7))
    assert missing.kind is EventKind.LOAD_FAILED
    assert "artifactVersion 7" in missing.message and "1/, 2/" in missing.message


async def test_commands_for_one_model_are_serialised(tmp_path: Path) -> None:
    h = make(tmp_path)
    gate = h.inference.gates["iris"] = asyncio.Event()
    loading = h.manager.load(load(h))
    unloading = h.manager.unload(Unload("iris", 1))
    await wait_until(lambda: bool(h.inference.calls))
    assert h.inference.calls == [("load", "iris")]
    assert not unloading.done()
    gate.set()
    first, second = await asyncio.gather(loading, unloading)
    assert (first.kind, second.kind) == (EventKind.LOADED, EventKind.UNLOADED)
    assert h.inference.calls == [("load", "iris"), ("unload", "iris")]
    assert [e.kind for e in h.events] == [EventKind.LOADED, EventKind.UNLOADED]
    assert not (h.repository.root / "iris").exists()


async def test_loads_run_concurrently_up_to_the_limit(tmp_path: Path) -> None:
    h = make(tmp_path, max_loads=2)
    gates = {name: asyncio.Event() for name in ("a", "b", "c")}
    h.inference.gates.update(gates)
    tasks = [h.manager.load(load(h, name)) for name in gates]
    await wait_until(lambda: h.inference.active == 2)
    assert not any(task.done() for task in tasks)
    assert len(h.inference.calls) == 2  # the third waits for a slot
    for gate in gates.values():
        gate.set()
    events = await asyncio.gather(*tasks)
    assert {e.kind for e in events} == {EventKind.LOADED}
    assert h.inference.most_active == 2


async def test_new_version_loads_next_to_the_old_when_both_fit(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-a", 40))
    h.inference.on_load = lambda name: h.probe.take("GPU-a", 15 * GiB)
    h.inference.on_unload = lambda name: h.probe.take("GPU-a", -15 * GiB)
    request = load(h, gpu_memory_bytes=15 * GiB, device_uuids=("GPU-a",))
    assert (await h.manager.load(request)).kind is EventKind.LOADED
    event = await h.manager.load(dataclasses.replace(request, version=2))
    # no unload: the server swaps the versions itself; the footprint is the new version's
    assert h.inference.calls == [("load", "iris"), ("load", "iris")]
    assert event == ModelEvent(EventKind.LOADED, "iris", 2, footprint_bytes={"GPU-a": 15 * GiB})
    assert h.inference.loaded == {"iris": "2"}
    assert h.probe.by_uuid["GPU-a"].free_bytes == 25 * GiB


async def test_new_version_unloads_the_old_first_when_only_then_it_fits(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-a", 20))
    h.inference.on_load = lambda name: h.probe.take("GPU-a", 15 * GiB)
    h.inference.on_unload = lambda name: h.probe.take("GPU-a", -15 * GiB)
    request = load(h, gpu_memory_bytes=15 * GiB, device_uuids=("GPU-a",))
    assert (await h.manager.load(request)).kind is EventKind.LOADED
    # 5 GiB free now, but the 15 GiB of version 1 come back when it is replaced
    event = await h.manager.load(dataclasses.replace(request, version=2))
    assert event == ModelEvent(EventKind.LOADED, "iris", 2, footprint_bytes={"GPU-a": 15 * GiB})
    assert h.inference.calls == [("load", "iris"), ("unload", "iris"), ("load", "iris")]
    assert h.inference.loaded == {"iris": "2"}
    assert h.manager.loaded["iris"].version == 2


async def test_failed_replacement_restores_the_old_version(tmp_path: Path) -> None:
    h = make(tmp_path)
    assert (await h.manager.load(load(h, version=1))).kind is EventKind.LOADED
    original = h.inference.load

    async def fail_version_2(name: str) -> None:
        settings = json.loads((h.repository.root / name / "model-settings.json").read_text())
        if settings["parameters"]["version"] == "2":
            h.inference.calls.append(("load", name))
            raise InferenceServerError("version 2 is broken")
        await original(name)

    h.inference.load = fail_version_2  # type: ignore[method-assign]
    event = await h.manager.load(load(h, version=2))
    assert event.kind is EventKind.LOAD_FAILED and "broken" in event.message
    assert h.manager.loaded["iris"].version == 1
    assert h.inference.loaded == {"iris": "1"}
    assert ("unload", "iris") not in h.inference.calls  # the server kept version 1 serving
    assert h.repository.read_record("iris") is not None
    assert h.repository.read_record("iris").version == 1  # type: ignore[union-attr]


async def test_timed_out_replacement_reloads_the_old_version(tmp_path: Path) -> None:
    h = make(tmp_path)
    assert (await h.manager.load(load(h, version=1))).kind is EventKind.LOADED
    original = h.inference.load

    async def time_out_version_2(name: str) -> None:
        settings = json.loads((h.repository.root / name / "model-settings.json").read_text())
        if settings["parameters"]["version"] == "2":
            h.inference.calls.append(("load", name))
            raise InferenceServerUnavailable("no answer within 600s")
        await original(name)

    h.inference.load = time_out_version_2  # type: ignore[method-assign]
    event = await h.manager.load(load(h, version=2))
    assert event.kind is EventKind.LOAD_FAILED
    assert h.inference.calls == [
        ("load", "iris"),
        ("load", "iris"),
        ("unload", "iris"),
        ("load", "iris"),
    ]
    assert h.inference.loaded == {"iris": "1"}
    assert h.manager.loaded["iris"].version == 1


async def test_replacement_that_cannot_restore_reports_the_old_version_unloaded(
    tmp_path: Path,
) -> None:
    h = make(tmp_path)
    assert (await h.manager.load(load(h, version=1))).kind is EventKind.LOADED
    h.inference.fail["iris"] = "disk full"
    h.inference.loaded.clear()  # say the server lost version 1 as well
    event = await h.manager.load(load(h, version=2))
    assert event.kind is EventKind.LOAD_FAILED
    assert [(e.kind, e.version) for e in h.events[-2:]] == [
        (EventKind.UNLOADED, 1),
        (EventKind.LOAD_FAILED, 2),
    ]
    assert "iris" not in h.manager.loaded
    assert not (h.repository.root / "iris").exists()


async def test_same_version_again_is_acknowledged_without_reloading(tmp_path: Path) -> None:
    h = make(tmp_path)
    await h.manager.load(load(h))
    again = await h.manager.load(load(h))
    assert again.kind is EventKind.LOADED
    assert h.inference.calls == [("load", "iris"), ("index", "")][:1]
    assert again.footprint_bytes == h.manager.loaded["iris"].footprint_bytes


async def test_older_version_load_is_refused(tmp_path: Path) -> None:
    h = make(tmp_path)
    await h.manager.load(load(h, version=5))
    event = await h.manager.load(load(h, version=4))
    assert event.kind is EventKind.LOAD_FAILED
    assert "version 5 is loaded" in event.message
    assert h.inference.calls == [("load", "iris")]


async def test_unload_of_another_version_leaves_the_loaded_one(tmp_path: Path) -> None:
    h = make(tmp_path)
    await h.manager.load(load(h, version=3))
    event = await h.manager.unload(Unload("iris", 2))
    assert event.kind is EventKind.UNLOADED
    assert h.inference.calls == [("load", "iris")]
    assert h.manager.loaded["iris"].version == 3
    assert (h.repository.root / "iris").exists()


async def test_unload_with_server_unreachable_counts_as_unloaded(tmp_path: Path) -> None:
    h = make(tmp_path)
    await h.manager.load(load(h))
    h.inference.unload_error = InferenceServerUnavailable("connection refused")
    event = await h.manager.unload(Unload("iris", 1))
    assert event.kind is EventKind.UNLOADED
    assert "unreachable" in event.message
    assert not (h.repository.root / "iris").exists()
    assert h.manager.loaded == {}
    assert h.sample("gpuplace_agent_loaded_models") == 0


async def test_unload_refused_by_the_server_keeps_the_folder(tmp_path: Path) -> None:
    h = make(tmp_path)
    await h.manager.load(load(h))
    h.inference.unload_error = InferenceServerError("unload iris: HTTP 500: stuck")
    event = await h.manager.unload(Unload("iris", 1))
    assert event.kind is EventKind.UNLOAD_FAILED
    assert "stuck" in event.message
    assert (h.repository.root / "iris").exists()
    assert "iris" in h.manager.loaded
    assert h.sample("gpuplace_agent_unloads_total", {"outcome": "failed"}) == 1


async def test_unknown_model_unload_is_done(tmp_path: Path) -> None:
    h = make(tmp_path)
    event = await h.manager.unload(Unload("ghost", 4))
    assert event == ModelEvent(EventKind.UNLOADED, "ghost", 4)


async def test_restore_adopts_loaded_models_and_clears_leftovers(tmp_path: Path) -> None:
    h = make(tmp_path)
    await h.manager.load(load(h, "iris", 3, gpu_memory_bytes=0))
    await h.manager.load(load(h, "stale", 1))
    h.repository.write_record(Record("iris", 3, {"GPU-a": 7}))
    # the inference server lost "stale" (e.g. it restarted); a new agent starts
    del h.inference.loaded["stale"]
    h.inference.loaded["foreign"] = ""
    fresh = make(tmp_path / "again")
    fresh.manager.repository = h.repository
    fresh.manager.inference = h.inference
    await fresh.manager.restore()
    assert {m.name: m.version for m in fresh.manager.loaded.values()} == {"iris": 3, "foreign": 0}
    assert fresh.manager.loaded["iris"].footprint_bytes == {"GPU-a": 7}
    assert not (h.repository.root / "stale").exists()
    assert fresh.sample("gpuplace_agent_loaded_models") == 2


async def test_unload_all(tmp_path: Path) -> None:
    h = make(tmp_path)
    for name in ("a", "b"):
        await h.manager.load(load(h, name))
    events = await h.manager.unload_all()
    assert sorted((e.model, e.kind) for e in events) == [
        ("a", EventKind.UNLOADED),
        ("b", EventKind.UNLOADED),
    ]
    assert h.manager.loaded == {}
    assert await h.manager.wait_idle(1)


async def test_memory_is_checked_before_fetching(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-a", 2))
    request = Load("iris", 1, str(tmp_path / "not-fetched"), SKLEARN, 10 * GiB, ("GPU-a",))
    event = await h.manager.load(request)
    assert event.kind is EventKind.LOAD_FAILED_MEMORY  # not an artifact error: no fetch
    assert list(h.repository.staging.iterdir()) == []


async def test_memory_taken_during_the_fetch_is_caught(tmp_path: Path) -> None:
    h = make(tmp_path, gpu("GPU-a", 30))
    readings = iter([30, 5, 5, 5])
    original = h.probe.devices

    def devices() -> list[GpuDevice]:
        free = next(readings) * GiB
        return [dataclasses.replace(d, free_bytes=free) for d in original()]

    h.probe.devices = devices  # type: ignore[method-assign]
    event = await h.manager.load(load(h, gpu_memory_bytes=20 * GiB, device_uuids=("GPU-a",)))
    assert event.kind is EventKind.LOAD_FAILED_MEMORY
    assert "5 GiB free now" in event.message
    assert h.inference.calls == []


# -- models run where they were placed ---------------------------------------------------


def test_cuda_ordinals_follow_nvml_order_not_the_listing() -> None:
    # --gpu-uuids lists devices in the order given; CUDA (PCI_BUS_ID) counts in NVML's
    visible = [indexed("GPU-c", 2), indexed("GPU-a", 0), indexed("GPU-b", 1)]
    assert cuda_placement(visible, ["GPU-c"]) == Placement(("GPU-c",), (2,), "cuda:2")
    assert cuda_placement(visible, ["GPU-b", "GPU-a"]) == Placement(("GPU-b", "GPU-a"), (1, 0))


def test_cuda_ordinals_count_the_pods_devices_from_zero() -> None:
    # a pod given GPUs 3 and 5 of its node sees them as cuda:0 and cuda:1
    visible = [indexed("GPU-five", 5), indexed("GPU-three", 3)]
    assert cuda_placement(visible, ["GPU-five"]).device == "cuda:1"
    assert cuda_placement(visible, ["GPU-three"]).cuda_ordinals == (0,)


def test_no_ordinal_is_guessed_next_to_a_device_nvml_cannot_read() -> None:
    """An unmeasured device has no NVML index: counting it would shift every ordinal."""
    visible = [indexed("GPU-a", 2), GpuDevice.unmeasured("GPU-b")]
    assert cuda_placement(visible, ["GPU-a"]) == Placement(("GPU-a",), ("GPU-a",), "")


def test_a_mig_instance_is_named_by_its_uuid() -> None:
    alone = [indexed("MIG-1", 0, 20, parent="GPU-p")]
    assert cuda_placement(alone, ["MIG-1"]) == Placement(("MIG-1",), ("MIG-1",), "cuda:0")
    several = [
        indexed("MIG-1", 0, 20, parent="GPU-p"),
        indexed("MIG-2", 0, 20, parent="GPU-p"),
        indexed("GPU-q", 1),
    ]
    assert cuda_placement(several, ["MIG-2"]) == Placement(("MIG-2",), ("MIG-2",), "")
    # whole GPUs are counted among whole GPUs only
    assert cuda_placement(several, ["GPU-q"]) == Placement(("GPU-q",), (0,), "cuda:0")


def test_misplaced_only_when_most_memory_appeared_elsewhere() -> None:
    assert misplaced({"a": 10 * GiB}, {"a": 10 * GiB, "b": GiB}) is None
    assert misplaced({"a": 0}, {"b": STRAY_MIN_BYTES - 1}) is None
    assert misplaced({"a": GiB}, {"a": GiB, "b": 12 * GiB}) == {"a": GiB, "b": 12 * GiB}
    assert misplaced({"a": 0}, {"b": 12 * GiB, "c": 0}) == {"b": 12 * GiB}


async def test_the_placed_device_is_written_into_the_model_settings(tmp_path: Path) -> None:
    h = make(tmp_path, indexed("GPU-b", 1, 70), indexed("GPU-a", 0, 70))
    h.inference.on_load = lambda name: h.probe.take("GPU-b", 12 * GiB)
    event = await h.manager.load(Load("llm", 1, "", HUGGINGFACE, 10 * GiB, ("GPU-b",)))
    assert event == ModelEvent(EventKind.LOADED, "llm", 1, footprint_bytes={"GPU-b": 12 * GiB})
    settings = json.loads((h.repository.root / "llm" / "model-settings.json").read_text())
    assert settings["parameters"]["extra"] == {
        "task": "fill-mask",
        "device": "cuda:1",
        "gpuplace": {"device_uuids": ["GPU-b"], "cuda_ordinals": [1]},
    }


async def test_a_device_the_agent_chose_is_written_too(tmp_path: Path) -> None:
    h = make(tmp_path, indexed("GPU-a", 0, 5), indexed("GPU-b", 1, 30))
    h.inference.on_load = lambda name: h.probe.take("GPU-b", 20 * GiB)
    event = await h.manager.load(load(h, gpu_memory_bytes=20 * GiB))
    assert event.footprint_bytes == {"GPU-b": 20 * GiB}
    settings = json.loads((h.repository.root / "iris" / "model-settings.json").read_text())
    assert settings["parameters"]["extra"] == {
        "gpuplace": {"device_uuids": ["GPU-b"], "cuda_ordinals": [1]}
    }


async def test_a_cpu_model_settings_carry_no_placement(tmp_path: Path) -> None:
    h = make(tmp_path, indexed("GPU-a", 0))
    assert (await h.manager.load(load(h))).kind is EventKind.LOADED
    settings = json.loads((h.repository.root / "iris" / "model-settings.json").read_text())
    assert "extra" not in settings["parameters"]


async def test_a_model_found_on_another_device_is_reported_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = make(tmp_path, indexed("GPU-a", 0, 40), indexed("GPU-b", 1, 70))
    # the runtime ignored the placement and loaded on the first GPU
    h.inference.on_load = lambda name: h.probe.take("GPU-a", 12 * GiB)
    with caplog.at_level(logging.WARNING, logger="agent.models"):
        event = await h.manager.load(load(h, gpu_memory_bytes=10 * GiB, device_uuids=("GPU-b",)))
    assert event.kind is EventKind.LOADED
    assert event.footprint_bytes == {"GPU-a": 12 * GiB}
    assert "placed on GPU-b but its memory appeared on GPU-a (12 GiB)" in event.message
    (warning,) = [r.getMessage() for r in caplog.records if "appeared on" in r.getMessage()]
    assert warning.startswith("model iris v1 on gpu-server-1: placed on GPU-b")
    assert h.manager.loaded["iris"].footprint_bytes == {"GPU-a": 12 * GiB}
    assert h.repository.read_record("iris") == Record("iris", 1, {"GPU-a": 12 * GiB})
    assert (
        h.sample("gpuplace_agent_model_footprint_bytes", {"model": "iris", "uuid": "GPU-a"})
        == 12 * GiB
    )


async def test_another_loads_memory_is_not_taken_for_a_misplacement(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = make(tmp_path, indexed("GPU-a", 0), indexed("GPU-b", 1))
    h.inference.gates = {"one": asyncio.Event(), "two": asyncio.Event()}
    sizes = {"one": ("GPU-a", 2 * GiB), "two": ("GPU-b", 30 * GiB)}
    h.inference.on_load = lambda name: h.probe.take(*sizes[name])
    with caplog.at_level(logging.WARNING, logger="agent.models"):
        one = h.manager.load(load(h, "one", gpu_memory_bytes=GiB, device_uuids=("GPU-a",)))
        two = h.manager.load(load(h, "two", gpu_memory_bytes=20 * GiB, device_uuids=("GPU-b",)))
        await wait_until(lambda: len(h.inference.calls) == 2)
        h.inference.gates["two"].set()
        await wait_until(lambda: "two" in h.inference.loaded)
        h.inference.gates["one"].set()
        first, second = await asyncio.gather(one, two)
    assert first.footprint_bytes == {"GPU-a": 2 * GiB}
    assert second.footprint_bytes == {"GPU-b": 30 * GiB}
    assert not [r for r in caplog.records if "appeared on" in r.getMessage()]
