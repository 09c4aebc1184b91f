"""Values of the agent protocol that both ends use, free of the wire format.

The agent builds them from NVML and MLServer and converts them to protobuf; the scheduler
converts protobuf back to them. One definition keeps the two ends in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class GpuInfo:
    """One GPU or MIG instance, as NVML reports it."""

    uuid: str
    name: str
    index: int
    total_bytes: int
    free_bytes: int
    used_bytes: int
    parent_uuid: str = ""


class EventKind(StrEnum):
    LOADED = "loaded"
    LOAD_FAILED = "load_failed"
    LOAD_FAILED_MEMORY = "load_failed_memory"
    UNLOADED = "unloaded"
    UNLOAD_FAILED = "unload_failed"


@dataclass(frozen=True)
class ModelEvent:
    """What happened to one model version on one replica."""

    kind: EventKind
    model: str
    version: int
    message: str = ""
    # For LOADED: memory measured per device uuid.
    footprint_bytes: Mapping[str, int] = field(default_factory=dict)
