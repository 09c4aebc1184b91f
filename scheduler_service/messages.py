"""What agents tell the scheduler and what it tells them, free of the wire format."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuplace.protocol import EventKind, GpuInfo, ModelEvent
from scheduler_service.model import ModelSpec

__all__ = [
    "Command",
    "DrainComplete",
    "EventKind",
    "GpuInfo",
    "Hello",
    "Load",
    "LoadedModel",
    "ModelEvent",
    "Unload",
    "Welcome",
]


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
