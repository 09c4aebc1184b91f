"""Sorters: which devices a model goes on, and how replicas that fit are ranked.

The device choice is the device-fit rule of `placement.fit` (`fit_devices`, `device_key`).

Every key ends in a unique tie-break (device index then uuid; server name then replica
index), so a ranking never depends on the order the snapshot lists things in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from placement.filters import gpus_needed, holds_model
from placement.fit import DeviceShortfall, fit_devices
from placement.types import Gpu, Policy, Replica, Request

ReplicaKey = tuple[int, int, int, str, int]


@dataclass(frozen=True)
class Candidate:
    """A replica that passed every filter, with the devices the model would go on."""

    replica: Replica
    devices: tuple[Gpu, ...]
    held: bool


def choose_devices(request: Request, replica: Replica, policy: Policy) -> tuple[Gpu, ...]:
    """The devices for a fitting replica under the policy (`placement.fit`), in index order;
    none for a CPU model, and none when the devices lack the room (the filters reject such a
    replica before it is ranked).
    """
    count = gpus_needed(request)
    if count == 0:
        return ()
    fit = fit_devices(replica.gpus, request.gpu_memory_bytes, count, policy)
    return () if isinstance(fit, DeviceShortfall) else fit


def candidate(request: Request, replica: Replica, policy: Policy) -> Candidate:
    """A fitting replica with its devices chosen under the policy."""
    return Candidate(
        replica=replica,
        devices=choose_devices(request, replica, policy),
        held=holds_model(request, replica),
    )


def replica_key(request: Request, policy: Policy) -> Callable[[Candidate], ReplicaKey]:
    """Rank fitting replicas: holders of the model first, then the policy, then the name.

    GPU models: binpack = least room left on the chosen devices after the load (best fit),
    spread = most room left. Then, and for CPU models under both policies, the most free
    host memory first. Ties: server name, then replica index.
    """
    need = request.gpu_memory_bytes
    sign = 1 if policy is Policy.BINPACK else -1

    def key(option: Candidate) -> ReplicaKey:
        leftover = sum(gpu.room_bytes - need for gpu in option.devices)
        replica = option.replica
        return (
            0 if option.held else 1,
            sign * leftover,
            -replica.available_memory_bytes,
            replica.server,
            replica.index,
        )

    return key
