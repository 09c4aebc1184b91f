"""The NVML probe over the real nvidia-ml-py code path: a fake libnvidia-ml.so built from C,
and (marked `gpu`) a real driver where one exists."""

from __future__ import annotations

import ctypes
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from agent.gpu_monitor import GpuMonitor
from agent.gpus import NvmlGpuProbe, gpu_capabilities, memory_class, product_capability
from agent.link import Outbox, SchedulerLink
from agent.metrics import AgentMetrics
from agent.models import ModelManager
from agent.settings import AgentSettings
from contract.protocol import GpuDevice, Hello
from contract.spec_rules import requirement_problem
from contract.wire import decode_agent_message, encode_agent_message
from devharness import fake_nvml
from devharness.fake_nvml import FakeGpu, FakeMig, FakeNvml, GiB
from tests.support.probes import CountingProbe


@pytest.fixture
def fake(gpus: FakeNvml) -> FakeNvml:
    """The fake library's state (conftest's `gpus`), named for what these tests change."""
    return gpus


def read(uuids: tuple[str, ...] = ()) -> list[GpuDevice]:
    probe = NvmlGpuProbe(uuids)
    try:
        return probe.devices()
    finally:
        probe.close()


def test_two_devices_keyed_by_uuid(fake: FakeNvml) -> None:
    devices = read()
    assert devices == [
        GpuDevice("GPU-11111111-aaaa", "NVIDIA H100 80GB HBM3", 0, 80 * GiB, 80 * GiB, 0),
        GpuDevice("GPU-22222222-bbbb", "NVIDIA H100 80GB HBM3", 1, 80 * GiB, 50 * GiB, 30 * GiB),
    ]


def test_memory_is_read_fresh_on_every_call(fake: FakeNvml) -> None:
    probe = NvmlGpuProbe()
    try:
        assert probe.devices()[1].free_bytes == 50 * GiB
        fake.take("GPU-22222222-bbbb", 12 * GiB)
        assert probe.devices()[1].free_bytes == 38 * GiB
        assert probe.devices()[1].used_bytes == 42 * GiB
    finally:
        probe.close()


def test_memory_info_v1_fallback(fake: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    fake.memory_v2 = False
    fake.write()
    with caplog.at_level(logging.INFO, logger="agent.gpus"):
        devices = read()
    assert [d.free_bytes for d in devices] == [80 * GiB, 50 * GiB]
    assert "memory info v2 unavailable" in caplog.text


def test_selected_uuids_only(fake: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.gpus"):
        devices = read(("GPU-22222222-bbbb", "GPU-absent"))
    assert [d.uuid for d in devices] == ["GPU-22222222-bbbb"]
    assert "GPU-absent is not present" in caplog.text


def test_mig_instances_replace_their_parent(fake: FakeNvml) -> None:
    fake.gpus = [
        FakeGpu(
            "GPU-a100",
            40 * GiB,
            40 * GiB,
            mig_mode=1,
            migs=[
                FakeMig(0, "MIG-one", 5 * GiB, 5 * GiB),
                FakeMig(3, "MIG-two", 10 * GiB, 4 * GiB, name="NVIDIA A100 MIG 2g.10gb"),
            ],
        ),
        FakeGpu("GPU-plain", 16 * GiB, 16 * GiB, name="Tesla T4", mig_mode=0),
    ]
    fake.write()
    devices = read()
    assert devices == [
        GpuDevice(
            "MIG-one", "NVIDIA A100-SXM4-40GB MIG 1g.5gb", 0, 5 * GiB, 5 * GiB, 0, "GPU-a100"
        ),
        GpuDevice("MIG-two", "NVIDIA A100 MIG 2g.10gb", 0, 10 * GiB, 4 * GiB, 6 * GiB, "GPU-a100"),
        GpuDevice("GPU-plain", "Tesla T4", 1, 16 * GiB, 16 * GiB, 0),
    ]
    assert [d.uuid for d in read(("MIG-two",))] == ["MIG-two"]


def test_mig_mode_without_instances_offers_nothing(
    fake: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    fake.gpus = [FakeGpu("GPU-a100", 40 * GiB, 40 * GiB, mig_mode=1)]
    fake.write()
    with caplog.at_level(logging.WARNING, logger="agent.gpus"):
        assert read() == []
    assert "MIG mode without instances" in caplog.text


def test_init_failure_is_one_line_and_zero_gpus(
    fake: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    fake.init_result = fake_nvml.NVML_ERROR_DRIVER_NOT_LOADED
    fake.write()
    probe = NvmlGpuProbe()
    with caplog.at_level(logging.INFO, logger="agent.gpus"):
        assert probe.devices() == []
        assert probe.devices() == []
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.gpus"]
    assert lines == [
        "NVML: initialisation failed (Driver Not Loaded); reporting no GPUs, retrying at "
        "each reading"
    ]
    # the driver comes back (an upgrade finished): the next reading finds the GPUs
    fake.init_result = 0
    fake.write()
    try:
        assert [device.uuid for device in probe.devices()] == [
            "GPU-11111111-aaaa",
            "GPU-22222222-bbbb",
        ]
    finally:
        probe.close()


def test_mig_instances_are_read_without_the_parents_memory(
    fake: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without admin rights, NVML refuses a MIG-mode parent's memory info."""
    import pynvml

    fake.gpus = [
        FakeGpu(
            "GPU-a100",
            40 * GiB,
            40 * GiB,
            mig_mode=1,
            migs=[FakeMig(0, "MIG-one", 5 * GiB, 5 * GiB)],
        )
    ]
    fake.write()
    real = pynvml.nvmlDeviceGetMemoryInfo

    def unprivileged(handle: object, version: object = None) -> object:
        if pynvml.nvmlDeviceGetUUID(handle).startswith("GPU-"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        return real(handle, version=version) if version is not None else real(handle)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", unprivileged)
    devices = read()
    assert [(d.uuid, d.parent_uuid, d.free_bytes) for d in devices] == [
        ("MIG-one", "GPU-a100", 5 * GiB)
    ]


def test_no_device(fake: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    fake.gpus = []
    fake.write()
    with caplog.at_level(logging.WARNING, logger="agent.gpus"):
        assert read() == []
    assert "sees no device" in caplog.text


def test_library_not_found(caplog: pytest.LogCaptureFixture) -> None:
    with fake_nvml.library_missing(), caplog.at_level(logging.INFO, logger="agent.gpus"):
        probe = NvmlGpuProbe()
        assert probe.devices() == []
        assert probe.devices() == []
        probe.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.gpus"]
    assert len(lines) == 1
    assert "libnvidia-ml.so.1 not found" in lines[0]


def test_state_file_vanishing_keeps_the_last_reading(fake: FakeNvml) -> None:
    probe = NvmlGpuProbe()
    try:
        first = probe.devices()
        fake.path.unlink()
        assert probe.devices() == first
    finally:
        probe.close()


def test_another_process_finds_the_fake_through_ld_library_path(
    tmp_path: Path, fake_library: Path
) -> None:
    state = fake_nvml.two_gpus(tmp_path / "state.txt")
    script = (
        "import json\n"
        "from agent.gpus import NvmlGpuProbe\n"
        "print(json.dumps([d.uuid for d in NvmlGpuProbe().devices()]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=fake_nvml.subprocess_env(state),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == ["GPU-11111111-aaaa", "GPU-22222222-bbbb"]


# -- capabilities from NVML (--gpu-capabilities) ----------------------------------------

# What a capability derived from NVML may look like: a lower-case DNS-style label (a dot only
# in the compute capability), so that it is a valid requirement and a Kubernetes label value.
CAPABILITY = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H200", "gpu-nvidia-h200"),
        ("NVIDIA H100 80GB HBM3", "gpu-nvidia-h100-80gb-hbm3"),
        ("NVIDIA A100-SXM4-40GB", "gpu-nvidia-a100-sxm4-40gb"),
        ("Tesla T4", "gpu-tesla-t4"),
        ("  NVIDIA  RTX 6000 Ada Generation ", "gpu-nvidia-rtx-6000-ada-generation"),
        ("NVIDIA GeForce RTX 4090 (ES)", "gpu-nvidia-geforce-rtx-4090-es"),
        # A MIG instance names its GPU's product; `mig` says it is an instance.
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "gpu-nvidia-a100-sxm4-40gb"),
        ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "gpu-nvidia-h100-80gb-hbm3"),
        ("", None),
        ("!!!", None),
    ],
)
def test_the_product_naming_rule(name: str, expected: str | None) -> None:
    assert product_capability(name) == expected


@pytest.mark.parametrize(
    ("total_bytes", "expected"),
    [
        (80 * GiB, "gpu-mem-80gi"),
        (81559 * 2**20, "gpu-mem-80gi"),  # an H100 80GB as NVML reports it (79.6 GiB)
        (143771 * 2**20, "gpu-mem-140gi"),  # an H200 (140.4 GiB)
        (4864 * 2**20, "gpu-mem-5gi"),  # a MIG 1g.5gb instance (4.75 GiB)
        (GiB // 2, "gpu-mem-1gi"),  # half up
        (GiB // 2 - 1, "gpu-mem-0gi"),
        (0, None),  # not measured
    ],
)
def test_the_memory_class_rule(total_bytes: int, expected: str | None) -> None:
    assert memory_class(total_bytes) == expected


def test_capabilities_from_the_fake_library(fake: FakeNvml) -> None:
    fake.gpus = [
        FakeGpu(
            "GPU-a100",
            40 * GiB,
            40 * GiB,
            mig_mode=1,
            migs=[FakeMig(0, "MIG-one", 4864 * 2**20, 4 * GiB)],
            compute_capability=(8, 0),
        ),
        FakeGpu(
            "GPU-h100", 80 * GiB, 80 * GiB, name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0)
        ),
        FakeGpu("GPU-old", 16 * GiB, 16 * GiB, name="Tesla T4"),  # no compute capability
    ]
    fake.write()
    devices = read()
    assert [(d.uuid, d.compute_capability) for d in devices] == [
        ("MIG-one", "8.0"),  # its GPU's
        ("GPU-h100", "9.0"),
        ("GPU-old", ""),
    ]
    found = gpu_capabilities([*devices, GpuDevice.unmeasured("GPU-unread")])
    assert found == {
        "gpu-nvidia-a100-sxm4-40gb",
        "gpu-mem-5gi",
        "cuda-cc-8.0",
        "mig",
        "gpu-nvidia-h100-80gb-hbm3",
        "gpu-mem-80gi",
        "cuda-cc-9.0",
        "gpu-tesla-t4",
        "gpu-mem-16gi",
    }
    for capability in found:
        assert requirement_problem(capability) is None
        assert CAPABILITY.fullmatch(capability), capability
    assert gpu_capabilities([GpuDevice.unmeasured("GPU-unread")]) == frozenset()


def test_the_compute_capability_is_read_once(
    fake: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pynvml

    calls: list[object] = []
    real = pynvml.nvmlDeviceGetCudaComputeCapability

    def counted(handle: object) -> object:
        calls.append(handle)
        return real(handle)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetCudaComputeCapability", counted)
    fake.gpus[0].compute_capability = (9, 0)
    fake.write()
    probe = NvmlGpuProbe()
    try:
        probe.devices()
        assert [d.compute_capability for d in probe.devices()] == ["9.0", ""]
    finally:
        probe.close()
    assert len(calls) == 2  # one per device, not one per reading


async def _hello(settings: AgentSettings) -> Hello:
    gpus = GpuMonitor(NvmlGpuProbe(), AgentMetrics(CollectorRegistry()), GiB)
    manager = cast(ModelManager, SimpleNamespace(loaded={}))
    link = SchedulerLink(settings, manager, gpus, AgentMetrics(CollectorRegistry()), Outbox())
    try:
        return await link.hello()
    finally:
        gpus.close()


async def test_the_hello_advertises_them_when_asked(fake: FakeNvml) -> None:
    for gpu in fake.gpus:
        gpu.compute_capability = (9, 0)
    fake.write()
    asked = AgentSettings(capabilities=["sklearn", "gpu-mem-80gi"], gpu_capabilities=True)
    hello = await _hello(asked)
    assert hello.capabilities == {
        "sklearn",
        "gpu-mem-80gi",
        "gpu-nvidia-h100-80gb-hbm3",
        "cuda-cc-9.0",
    }
    # ... and on the wire, as any capability
    assert decode_agent_message(encode_agent_message(hello)) == hello
    plain = await _hello(AgentSettings(capabilities=["sklearn"]))
    assert plain.capabilities == {"sklearn"}


async def test_the_hello_advertises_nothing_without_a_gpu(fake: FakeNvml) -> None:
    fake.gpus = []
    fake.write()
    hello = await _hello(AgentSettings(capabilities=["sklearn"], gpu_capabilities=True))
    assert hello.capabilities == {"sklearn"}


async def test_a_load_on_a_replica_without_gpus_reads_no_device_again(fake: FakeNvml) -> None:
    """A CPU server's loads and unloads skip NVML (and its worker thread); a GPU server's
    read it fresh every time."""
    fake.gpus = []
    fake.write()
    probe = CountingProbe()
    gpus = GpuMonitor(probe, AgentMetrics(CollectorRegistry()), GiB)
    try:
        assert await gpus.reading() == []  # the first reading looks
        assert await gpus.reading() == [] and probe.reads == 1
        await gpus.refresh()  # the periodic refresh still does
        assert probe.reads == 2
    finally:
        gpus.close()
    fake.gpus = [FakeGpu("GPU-a", 80 * GiB, 80 * GiB)]
    fake.write()
    probe = CountingProbe()
    gpus = GpuMonitor(probe, AgentMetrics(CollectorRegistry()), GiB)
    try:
        await gpus.reading()
        fake.gpus[0].free_bytes = 70 * GiB
        fake.write()
        assert [d.free_bytes for d in await gpus.reading()] == [70 * GiB] and probe.reads == 2
    finally:
        gpus.close()


# -- a real GPU ---------------------------------------------------------------------------


@pytest.fixture
def real_devices() -> list[GpuDevice]:
    devices = read()
    if not devices:
        pytest.skip("NVML finds no GPU here (no driver, no libnvidia-ml.so.1 or no device)")
    return devices


@pytest.mark.gpu
def test_real_gpus_report_consistent_memory(real_devices: list[GpuDevice]) -> None:
    uuids = [d.uuid for d in real_devices]
    assert len(set(uuids)) == len(uuids)
    for device in real_devices:
        assert device.uuid.startswith(("GPU-", "MIG-"))
        assert device.name
        assert 0 < device.free_bytes <= device.total_bytes
        assert device.used_bytes <= device.total_bytes
        assert re.fullmatch(r"[0-9]+\.[0-9]+", device.compute_capability)
    for capability in gpu_capabilities(real_devices):
        assert requirement_problem(capability) is None
        assert CAPABILITY.fullmatch(capability), capability


def _cuda() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        pytest.skip("libcuda.so.1 not found: cannot allocate GPU memory here")


@pytest.mark.gpu
def test_real_allocation_shows_up_as_footprint(real_devices: list[GpuDevice]) -> None:
    """Allocate 1 GiB with the CUDA driver API and see NVML's free memory drop by it."""
    from agent.models import footprint

    cuda = _cuda()
    assert cuda.cuInit(0) == 0
    device = ctypes.c_int()
    assert cuda.cuDeviceGet(ctypes.byref(device), 0) == 0
    context = ctypes.c_void_p()
    assert cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device) == 0
    try:
        before = {d.uuid: d.free_bytes for d in read()}
        pointer = ctypes.c_uint64()
        assert cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(GiB)) == 0
        try:
            measured = footprint(before, read(), None)
        finally:
            cuda.cuMemFree_v2(pointer)
    finally:
        cuda.cuCtxDestroy_v2(context)
    assert measured, "no device's free memory dropped"
    assert GiB <= max(measured.values()) < 2 * GiB
