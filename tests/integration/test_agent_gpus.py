"""The NVML probe over the real nvidia-ml-py code path: a fake libnvidia-ml.so built from C,
and (marked `gpu`) a real driver where one exists."""

from __future__ import annotations

import ctypes
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from agent.gpus import NvmlGpuProbe
from contract.protocol import GpuDevice
from devharness import fake_nvml
from devharness.fake_nvml import FakeGpu, FakeMig, FakeNvml, GiB


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
