"""The agent protocol's values, free of the wire format: what an agent tells the scheduler
(AgentMessage) and what the scheduler tells it (Command).

Both ends and the test harness's simulated agents use these; `contract.wire` is their one
conversion to and from protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from placement import Gpu


@dataclass(frozen=True)
class GpuDevice:
    """One GPU or MIG instance of a replica, as NVML measured it.

    `measured` False: the device is this replica's (the kubelet assigned it) but NVML in the
    agent's container cannot see it, so nothing about it is known but its uuid: name "",
    index 0, memory 0. The placement core never puts a GPU model on such a device.
    """

    uuid: str
    name: str
    index: int
    total_bytes: int
    free_bytes: int
    used_bytes: int
    parent_uuid: str = ""  # set for a MIG instance: its physical GPU
    measured: bool = True
    # CUDA compute capability "<major>.<minor>" (a MIG instance: its GPU's); "" unknown.
    compute_capability: str = ""

    @classmethod
    def unmeasured(cls, uuid: str) -> GpuDevice:
        """A device known by its uuid only: its memory was not measured."""
        return cls(
            uuid=uuid, name="", index=0, total_bytes=0, free_bytes=0, used_bytes=0, measured=False
        )

    def placement_view(self, *, extra_free_bytes: int = 0, reserved_bytes: int = 0) -> Gpu:
        """The device as the placement core sees it: measured free memory, plus what is
        known to come back (`extra_free_bytes`: a copy's own footprint), never above the
        total; less the memory promised to loads in flight (`reserved_bytes`)."""
        return Gpu(
            uuid=self.uuid,
            name=self.name,
            index=self.index,
            total_bytes=self.total_bytes,
            free_bytes=min(self.total_bytes, self.free_bytes + extra_free_bytes),
            reserved_bytes=reserved_bytes,
            measured=self.measured,
        )


class EventKind(StrEnum):
    LOADED = "loaded"
    LOAD_FAILED = "load_failed"
    # Refused before the inference server was called: not enough GPU memory free now.
    LOAD_FAILED_MEMORY = "load_failed_memory"
    UNLOADED = "unloaded"
    UNLOAD_FAILED = "unload_failed"


@dataclass(frozen=True)
class LoadedModel:
    """A model version an inference server holds, with the memory measured per device."""

    name: str
    version: int
    footprint_bytes: Mapping[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------ agent -> scheduler


# The most SELDON_OVERCOMMIT_PERCENTAGE may be (with MAX_BYTES of memory, a replica's
# capacity stays inside 64 bits).
MAX_OVERCOMMIT_PERCENTAGE = 1000
# Devices one replica may report (8 GPUs of 7 MIG instances each is 56).
MAX_DEVICES = 256
# The longest message an event carries: it becomes a copy's reason, shown in every status.
MAX_EVENT_MESSAGE = 2000
# Capabilities one replica may advertise, and the longest string of a hello (a capability,
# a device's name or uuid): they are shown in every server status and keyed.
MAX_CAPABILITIES = 256
MAX_TEXT = 253


@dataclass(frozen=True)
class Hello:
    """The first message of every stream: who the replica is and what it holds."""

    server: str
    index: int
    capabilities: frozenset[str]
    memory_bytes: int  # MEMORY_REQUEST
    overcommit_percentage: int  # SELDON_OVERCOMMIT_PERCENTAGE
    devices: tuple[GpuDevice, ...] = ()
    loaded: tuple[LoadedModel, ...] = ()
    agent_version: str = ""


@dataclass(frozen=True)
class ModelEvent:
    """What happened to one model version on one replica."""

    kind: EventKind
    model: str
    version: int
    message: str = ""
    # For LOADED: memory measured per device uuid.
    footprint_bytes: Mapping[str, int] = field(default_factory=dict)
    # For LOADED: the host memory the inference server took for it; None: not measured.
    host_bytes: int | None = None


@dataclass(frozen=True)
class ResourceUpdate:
    """The replica's devices, sent when their measured memory moved past the threshold."""

    devices: tuple[GpuDevice, ...]


@dataclass(frozen=True)
class DrainRequest:
    """Move my models elsewhere, then answer with DrainComplete (sent on SIGTERM)."""


AgentMessage = Hello | ModelEvent | ResourceUpdate | DrainRequest


# ------------------------------------------------------------------ scheduler -> agent


@dataclass(frozen=True)
class Welcome:
    """The hello was accepted."""


@dataclass(frozen=True)
class Load:
    """Load one version of a model: what the agent needs for it, once."""

    model: str
    version: int
    storage_uri: str = field(default="", repr=False)  # may carry credentials: never logged
    parameters: Mapping[str, str] = field(default_factory=dict)
    gpu_memory_bytes: int = 0  # needed on each device; 0: a CPU model
    # Devices the scheduler chose on this replica (empty for a CPU model).
    device_uuids: tuple[str, ...] = ()
    # Devices the model spans when the scheduler named none.
    gpus: int = 1
    # The storage credentials to use (the model's secretName); "": the environment's.
    secret_name: str = ""
    # The artifact's numbered version folder to load (Seldon's artifactVersion); None: unset.
    artifact_version: int | None = None
    # Measure the host memory the load takes (two readings of the inference server's
    # metrics around it): asked while the artifact has few measurements.
    measure_host_memory: bool = False


@dataclass(frozen=True)
class Unload:
    model: str
    version: int


@dataclass(frozen=True)
class DrainComplete:
    # Models that could not be placed elsewhere (unloaded all the same).
    stranded: tuple[str, ...] = ()


Command = Welcome | Load | Unload | DrainComplete
