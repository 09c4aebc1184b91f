"""GPU memory as NVML measures it, keyed by device UUID.

The NVML probe uses nvidia-ml-py (`import pynvml`). When the library is missing, the driver
is not loaded or no device is present, it says so in one log line and reports zero GPUs: the
agent keeps serving CPU models. It never raises out of `devices()`. An initialisation
error other than a missing library is tried again at every reading.

With MIG mode on, a GPU's memory is usable only through its MIG instances, so the instances
are reported (with `parent_uuid` set and the parent's index) instead of the physical GPU.

`gpu_capabilities()` turns the devices reported into capability strings (the product, its
memory class, its CUDA compute capability, `mig`), for `--gpu-capabilities`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from contract.protocol import GpuDevice

log = logging.getLogger(__name__)


class GpuProbe(Protocol):
    """Reads the devices of this machine. Blocking: call it from a worker thread."""

    def devices(self) -> list[GpuDevice]:
        """Every selected device, fresh; an empty list when there is no usable GPU."""
        ...

    def close(self) -> None: ...


class NoGpus:
    """A probe for machines known to have no GPU."""

    def devices(self) -> list[GpuDevice]:
        return []

    def close(self) -> None:
        return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlGpuProbe:
    """The real probe: nvidia-ml-py over libnvidia-ml.so.1."""

    def __init__(self, uuids: Iterable[str] = ()) -> None:
        self._wanted = tuple(uuids)
        self._lock = threading.Lock()
        self._initialised = False
        self._unavailable = False
        self._memory_v2: bool | None = None
        self._warned: set[str] = set()
        self._last: list[GpuDevice] = []
        self._compute: dict[str, str] = {}  # uuid -> "major.minor" ("" unknown), read once

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _init(self) -> bool:
        if self._initialised:
            return True
        if self._unavailable:
            return False
        try:
            import pynvml
        except ImportError:
            self._unavailable = True
            log.warning("NVML: nvidia-ml-py is not installed; reporting no GPUs")
            return False
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            self._unavailable = True
            log.warning(
                "NVML: libnvidia-ml.so.1 not found (no NVIDIA driver here); reporting no GPUs"
            )
            return False
        except pynvml.NVMLError as exc:
            # Perhaps passing (a driver being upgraded, a device reset): tried again at the
            # next reading; said once per distinct error.
            self._warn_once(
                f"init:{exc}",
                "NVML: initialisation failed (%s); reporting no GPUs, retrying at each reading",
                exc,
            )
            return False
        self._initialised = True
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            log.warning("NVML: cannot list devices (%s); reporting no GPUs", exc)
            return True
        if count == 0:
            log.warning("NVML: driver %s sees no device; reporting no GPUs", driver)
        else:
            log.info("NVML: driver %s, %d device(s)", driver, count)
        return True

    def devices(self) -> list[GpuDevice]:
        with self._lock:
            if not self._init():
                return []
            try:
                self._last = self._select(self._read_all())
            except Exception as exc:  # a driver hiccup must never stop the agent
                self._warn_once(
                    f"read:{exc}",
                    "NVML: reading devices failed (%s); keeping the last reading",
                    exc,
                )
            return list(self._last)

    def _select(self, found: Sequence[GpuDevice]) -> list[GpuDevice]:
        if not self._wanted:
            return list(found)
        by_uuid = {device.uuid: device for device in found}
        for uuid in self._wanted:
            if uuid not in by_uuid:
                self._warn_once(f"missing:{uuid}", "NVML: selected GPU %s is not present", uuid)
        return [by_uuid[uuid] for uuid in self._wanted if uuid in by_uuid]

    def _read_all(self) -> list[GpuDevice]:
        import pynvml

        result: list[GpuDevice] = []
        for position in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(position)
                if self._mig_enabled(handle):
                    # The parent's own memory info needs admin rights in MIG mode (and says
                    # nothing usable): read only its identity, then its instances.
                    parent = self._read(handle, index=position, memory=False)
                    result.extend(self._read_migs(handle, parent))
                    continue
                gpu = self._read(handle, index=position)
            except pynvml.NVMLError as exc:
                self._warn_once(
                    f"device:{position}:{exc}", "NVML: device %d unreadable: %s", position, exc
                )
                continue
            result.append(gpu)
        return result

    def _read(
        self,
        handle: Any,
        index: int,
        parent_uuid: str = "",
        memory: bool = True,
        compute_capability: str = "",
    ) -> GpuDevice:
        """One device; a MIG instance (`parent_uuid` set) takes its GPU's
        `compute_capability`, a GPU's own is read (once)."""
        import pynvml

        if not parent_uuid:
            with contextlib.suppress(pynvml.NVMLError):
                index = int(pynvml.nvmlDeviceGetIndex(handle))
        total, free, used = self._memory(handle) if memory else (0, 0, 0)
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        if not parent_uuid:
            compute_capability = self._compute_capability(handle, uuid)
        return GpuDevice(
            uuid=uuid,
            name=_text(pynvml.nvmlDeviceGetName(handle)),
            index=index,
            total_bytes=total,
            free_bytes=free,
            used_bytes=used,
            parent_uuid=parent_uuid,
            compute_capability=compute_capability,
        )

    def _compute_capability(self, handle: Any, uuid: str) -> str:
        """The GPU's CUDA compute capability, "9.0"; "" when NVML cannot tell. Read once
        per device (it never changes)."""
        import pynvml

        if uuid not in self._compute:
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                self._compute[uuid] = f"{int(major)}.{int(minor)}"
            except pynvml.NVMLError as exc:
                log.info("NVML: compute capability of %s unknown (%s)", uuid, exc)
                self._compute[uuid] = ""
        return self._compute[uuid]

    def _memory(self, handle: Any) -> tuple[int, int, int]:
        import pynvml

        version = getattr(pynvml, "nvmlMemory_v2", None)
        if version is not None and self._memory_v2 is not False:
            try:
                info = pynvml.nvmlDeviceGetMemoryInfo(handle, version=version)
                self._memory_v2 = True
                return int(info.total), int(info.free), int(info.used)
            except (
                pynvml.NVMLError_FunctionNotFound,
                pynvml.NVMLError_NotSupported,
                pynvml.NVMLError_ArgumentVersionMismatch,
            ):
                log.info("NVML: memory info v2 unavailable, using v1")
                self._memory_v2 = False
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return int(info.total), int(info.free), int(info.used)

    @staticmethod
    def _mig_enabled(handle: Any) -> bool:
        """Whether MIG mode is on (False when off or unsupported)."""
        import pynvml

        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError:
            return False
        return bool(current == pynvml.NVML_DEVICE_MIG_ENABLE)

    def _read_migs(self, handle: Any, gpu: GpuDevice) -> list[GpuDevice]:
        """The MIG instances of a GPU in MIG mode (`gpu`: its identity)."""
        import pynvml

        instances: list[GpuDevice] = []
        try:
            slots = pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        except pynvml.NVMLError as exc:
            self._warn_once(f"mig:{gpu.uuid}", "NVML: MIG devices of %s: %s", gpu.uuid, exc)
            return instances
        for slot in range(slots):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError_NotFound:
                continue
            except pynvml.NVMLError as exc:
                self._warn_once(
                    f"mig:{gpu.uuid}:{slot}", "NVML: MIG slot %d of %s: %s", slot, gpu.uuid, exc
                )
                continue
            try:
                instances.append(
                    self._read(
                        mig,
                        index=gpu.index,
                        parent_uuid=gpu.uuid,
                        compute_capability=gpu.compute_capability,
                    )
                )
            except pynvml.NVMLError as exc:
                self._warn_once(
                    f"mig:{gpu.uuid}:{slot}", "NVML: MIG slot %d of %s: %s", slot, gpu.uuid, exc
                )
        if not instances:
            self._warn_once(
                f"mig-empty:{gpu.uuid}",
                "NVML: %s is in MIG mode without instances; it offers no memory",
                gpu.uuid,
            )
        return instances

    def close(self) -> None:
        with self._lock:
            if not self._initialised:
                return
            import pynvml

            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.debug("NVML: shutdown: %s", exc)
            self._initialised = False


# ------------------------------------------------------------------ capabilities from NVML

GiB = 2**30
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
# A MIG instance's NVML name is its GPU's name, then " MIG <profile>" ("... MIG 1g.5gb").
_MIG_SUFFIX = re.compile(r"\s+MIG(\s.*)?$")
_COMPUTE_CAPABILITY = re.compile(r"[0-9]+\.[0-9]+")


def slug(text: str) -> str:
    """Lower case, every run of characters other than a-z and 0-9 turned into one '-', no
    '-' at either end: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return _NOT_ALNUM.sub("-", text.lower()).strip("-")


def product_capability(name: str) -> str | None:
    """`gpu-<slug of the product name>`; a MIG instance names its GPU's product. None for a
    device without a name (not measured)."""
    product = slug(_MIG_SUFFIX.sub("", name))
    return f"gpu-{product}" if product else None


def memory_class(total_bytes: int) -> str | None:
    """`gpu-mem-<N>gi`: the device's total memory in GiB, rounded to the nearest (half up).
    An "80GB" H100 (79.6 GiB) is `gpu-mem-80gi`, a MIG 1g.5gb instance (4.75 GiB)
    `gpu-mem-5gi`. None for a device without memory (not measured)."""
    if total_bytes <= 0:
        return None
    return f"gpu-mem-{(total_bytes + GiB // 2) // GiB}gi"


def gpu_capabilities(devices: Iterable[GpuDevice]) -> frozenset[str]:
    """The capabilities the devices reported give the replica (`--gpu-capabilities`): for
    each measured device its product, memory class and `cuda-cc-<major>.<minor>` (when
    NVML gives it), and `mig` when any is a MIG instance. Each is a valid requirement: a
    lower-case DNS-style label of a-z, 0-9, '-' (and '.' in the compute capability)."""
    found: set[str] = set()
    for device in devices:
        if not device.measured:
            continue
        product = product_capability(device.name)
        memory = memory_class(device.total_bytes)
        found.update(item for item in (product, memory) if item is not None)
        if _COMPUTE_CAPABILITY.fullmatch(device.compute_capability):
            found.add(f"cuda-cc-{device.compute_capability}")
        if device.parent_uuid:
            found.add("mig")
    return frozenset(found)
