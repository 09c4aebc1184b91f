"""Filters: may this replica take this request?

Each filter is `(request, replica, now) -> str | None`: None when the replica may take the
model, else a short reason a person reads ("missing capability model-on-gpu").

A replica that already holds the model (`request.model in replica.models`) gets no
waiver: the caller's snapshot shows the cluster as if the model were on none of it (its
memory added back), so every check, the amounts included, applies to it as to any replica.
The GPU check is the device-fit rule of `placement.fit`, shared with the agent.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from placement.fit import DeviceShortfall, fit_devices
from placement.types import Replica, Request
from placement.units import format_bytes

Filter = Callable[[Request, Replica, float], str | None]


def holds_model(request: Request, replica: Replica) -> bool:
    """The replica already holds the model (any version): it ranks first. Its memory is not
    waived: the caller's snapshot shows the cluster as if the model were on none of it, so
    a new version is checked against what the old one leaves."""
    return request.model in replica.models


def gpus_needed(request: Request) -> int:
    """Devices a GPU model spans (at least one); 0 for a model that asks no GPU memory."""
    if request.gpu_memory_bytes <= 0:
        return 0
    return max(request.gpus, 1)


def pinned(request: Request, replica: Replica, now: float) -> str | None:
    """A pinned model runs on its server only. (`schedule()` considers only the pinned
    server's replicas to begin with; the filter states the rule for a replica found holding
    a copy.)"""
    if request.server is None or request.server == replica.server:
        return None
    return f"the model is pinned to server {request.server}"


def capabilities(request: Request, replica: Replica, now: float) -> str | None:
    """Every requirement must be one of the replica's capabilities (exact match)."""
    missing = sorted(request.requirements - replica.capabilities)
    if not missing:
        return None
    noun = "capability" if len(missing) == 1 else "capabilities"
    return f"missing {noun} {', '.join(missing)}"


def draining(request: Request, replica: Replica, now: float) -> str | None:
    """A draining replica takes no model."""
    return "draining" if replica.draining else None


def excluded(request: Request, replica: Replica, now: float) -> str | None:
    """A replica that failed this version stays out until its cool-down ends."""
    until = max((until for key, until in request.excluded_until if key == replica.key), default=now)
    if now >= until:
        return None
    return f"load of version {request.version} failed here; excluded for {math.ceil(until - now)}s"


def host_memory(request: Request, replica: Replica, now: float) -> str | None:
    """The model's host memory must fit in what the replica has left (with overcommit)."""
    available = replica.available_memory_bytes
    if request.memory_bytes <= available:
        return None
    return (
        f"needs {format_bytes(request.memory_bytes)} host memory, "
        f"{format_bytes(available)} available"
    )


def gpu_memory(request: Request, replica: Replica, now: float) -> str | None:
    """A GPU model needs `gpus` distinct devices, each with room for `gpu_memory_bytes`."""
    count = gpus_needed(request)
    if count == 0:
        return None
    # Too few devices: said without looking at their room (and cheaply: the hot path).
    if not replica.gpus:
        return "no GPUs"
    if len(replica.gpus) < count:
        return f"needs {count} GPUs, has {len(replica.gpus)}"
    # Whether devices fit never depends on the policy: no choice is made here (policy None).
    fit = fit_devices(replica.gpus, request.gpu_memory_bytes, count, None)
    if not isinstance(fit, DeviceShortfall):
        return None
    need = format_bytes(request.gpu_memory_bytes)
    shown = ", ".join(format_bytes(room) for room in fit.largest_rooms)
    if count == 1:
        return f"needs {need} on 1 GPU, largest room {shown}"
    return f"needs {need} on each of {count} GPUs, largest rooms {shown}"


# In order: the first reason found is the one reported.
FILTERS: tuple[Filter, ...] = (capabilities, draining, excluded, host_memory, gpu_memory)
# Where a model may run at all, whatever the replica's load: a copy already found on a replica
# (an agent's hello, a late load) is kept there only if these pass. Memory is not among
# them: a copy already loaded uses its memory already.
ELIGIBILITY: tuple[Filter, ...] = (pinned, capabilities)


def first_failure(
    request: Request, replica: Replica, now: float, filters: tuple[Filter, ...] = FILTERS
) -> str | None:
    """The first filter's reason against this replica, or None when it may take the model."""
    for check in filters:
        reason = check(request, replica, now)
        if reason is not None:
            return reason
    return None
