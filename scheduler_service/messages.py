"""What agents tell the scheduler and what it tells them, free of the wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from scheduler_service.model import ModelSpec


@dataclass(frozen=True)
class GpuInfo:
    uuid: str
    name: str
    index: int
    total_bytes: int
    free_bytes: int
    used_bytes: int
    parent_uuid: str = ""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    footprint_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Hello:
    server: str
    index: int
    capabilities: frozenset[str]
    memory_bytes: int
    overcommit_percentage: int
    devices: tuple[GpuInfo, ...] = ()
    loaded: tuple[LoadedModel, ...] = ()


class EventKind(StrEnum):
    LOADED = "loaded"
    LOAD_FAILED = "load_failed"
    LOAD_FAILED_MEMORY = "load_failed_memory"
    UNLOADED = "unloaded"
    UNLOAD_FAILED = "unload_failed"


@dataclass(frozen=True)
class ModelEvent:
    kind: EventKind
    model: str
    version: int
    message: str = ""
    footprint_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Welcome:
    pass


@dataclass(frozen=True)
class Load:
    spec: ModelSpec
    version: int
    device_uuids: tuple[str, ...]


@dataclass(frozen=True)
class Unload:
    model: str
    version: int


@dataclass(frozen=True)
class DrainComplete:
    stranded: tuple[str, ...] = ()


Command = Welcome | Load | Unload | DrainComplete
