"""The placement core's values: frozen, comparable, free of I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Policy(StrEnum):
    """How replicas that all fit are ranked."""

    # GPU models: best fit (least free GPU memory left on the chosen devices);
    # CPU models: most free host memory. Fills devices, keeps large ones free.
    BINPACK = "binpack"
    # GPU models: most free GPU memory; CPU models: most free host memory.
    SPREAD = "spread"


@dataclass(frozen=True)
class Gpu:
    """One device of a replica as the scheduler sees it."""

    uuid: str
    name: str
    index: int
    total_bytes: int
    free_bytes: int  # measured by NVML on the agent
    reserved_bytes: int = 0  # promised to loads still in flight (the ledger)
    # False: the replica has the device but its agent cannot read it (no memory known);
    # it has no room and never takes a GPU model.
    measured: bool = True

    @property
    def room_bytes(self) -> int:
        """Free memory that is really room: measured free minus the in-flight ledger; 0 for
        a device not measured."""
        room = self.free_bytes - self.reserved_bytes
        # not max(): read per device in the hot path
        return room if room > 0 and self.measured else 0


@dataclass(frozen=True)
class Replica:
    """One server replica (one agent) in a snapshot."""

    server: str
    index: int
    capabilities: frozenset[str]
    memory_bytes: int  # MEMORY_REQUEST
    overcommit_percentage: int = 0
    used_memory_bytes: int = 0  # host memory of the models placed there (loaded or loading)
    gpus: tuple[Gpu, ...] = ()
    models: frozenset[str] = frozenset()  # models placed there (any version)
    draining: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.server, self.index)

    @property
    def capacity_bytes(self) -> int:
        return self.memory_bytes * (100 + self.overcommit_percentage) // 100

    @property
    def available_memory_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_memory_bytes)


@dataclass(frozen=True)
class Snapshot:
    """Every connected replica, read once for one decision."""

    replicas: tuple[Replica, ...]


@dataclass(frozen=True)
class Request:
    """What one placement needs."""

    model: str
    version: int
    requirements: frozenset[str] = frozenset()
    server: str | None = None  # pinned server
    memory_bytes: int = 0
    gpu_memory_bytes: int = 0  # per device
    gpus: int = 1  # devices the model spans when gpu_memory_bytes > 0
    replicas: int = 1
    # As Seldon's minReplicas: k >= 1 allows a partial placement of at least k replicas when
    # `replicas` do not fit; 0 (unset) allows none: every one of `replicas` or a Rejection.
    min_replicas: int = 0
    # Replicas that failed this version, with the time (same clock as `now`) until which
    # they stay excluded.
    excluded_until: tuple[tuple[tuple[str, int], float], ...] = ()


@dataclass(frozen=True)
class Assignment:
    """One replica chosen, with the devices the model goes on (empty for a CPU model)."""

    server: str
    index: int
    device_uuids: tuple[str, ...] = ()
    # The replica already holds the model (`Request.model in Replica.models`): it was not
    # charged memory again, and `device_uuids` is empty when its devices have no room left.
    held: bool = False


@dataclass(frozen=True)
class Placement:
    """Replicas of one server. Fewer than requested only when min_replicas (>= 1) allows."""

    server: str
    assignments: tuple[Assignment, ...]
    # Reasons for the servers (and replicas) that were not chosen, for `explain`.
    reasons: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True)
class Rejection:
    """No placement: one reason per server considered (server name, reason)."""

    reasons: tuple[tuple[str, str], ...]
    # What stood in the way at the nearest miss, as a code for metrics and log fields (one of
    # `placement.CAUSES`): the last filter any replica failed, in filter order, or too few
    # fitting replicas, or no server at all. Not part of the answer's identity.
    cause: str = field(default="", compare=False)

    @property
    def message(self) -> str:
        if not self.reasons:
            return "no servers connected"
        return "; ".join(f"{server}: {reason}" for server, reason in self.reasons)
