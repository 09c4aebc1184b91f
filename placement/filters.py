"""Filters: may this replica take this request?

Each filter is `(request, replica, now) -> str | None`: None when the replica may take the
model, else a short reason a person reads ("missing capability model-on-gpu").

A replica that already holds the model (`request.model in replica.models`) gets no
waiver: the caller's snapshot shows the cluster as if the model were on none of it (its
memory added back), so every check, the amounts included, applies to it as to any replica.
The GPU check is the device-fit rule of `placement.fit`, shared with the agent; a device
whose memory the agent could not read (`Gpu.measured` False) never takes a GPU model, and
the reason names it.
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
    if request.requirements <= replica.capabilities:  # the hot path: no set built
        return None
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
    if not request.excluded_until:  # the hot path: nothing excluded
        return None
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
    unmeasured = [gpu.uuid for gpu in replica.gpus if not gpu.measured]
    if len(unmeasured) == len(replica.gpus):  # no room to show: say only why
        where = "1 GPU" if count == 1 else f"each of {count} GPUs"
        return f"needs {need} on {where}, {_not_measured(unmeasured)}"
    shown = ", ".join(format_bytes(room) for room in fit.largest_rooms)
    if count == 1:
        reason = f"needs {need} on 1 GPU, largest room {shown}"
    else:
        reason = f"needs {need} on each of {count} GPUs, largest rooms {shown}"
    return f"{reason}, {_not_measured(unmeasured)}" if unmeasured else reason


def _not_measured(uuids: list[str]) -> str:
    """Why a replica's devices without a reading take no GPU model (no ';': reasons of
    several replicas are joined with it)."""
    noun = "GPU" if len(uuids) == 1 else "GPUs"
    return (
        f"memory of {noun} {', '.join(sorted(uuids))} not measured (the agent cannot read "
        "it: set NVIDIA_VISIBLE_DEVICES=all on the agent)"
    )


# In order: the first reason found is the one reported. The device fit comes last: a
# ranking that chooses the devices anyway asks it once (`BEFORE_DEVICES`, then the choice).
BEFORE_DEVICES: tuple[Filter, ...] = (capabilities, draining, excluded, host_memory)
FILTERS: tuple[Filter, ...] = (*BEFORE_DEVICES, gpu_memory)
# Where a model may run at all, whatever the replica's load: a copy already found on a replica
# (an agent's hello, a late load) is kept there only if these pass. Memory is not among
# them: a copy already loaded uses its memory already.
ELIGIBILITY: tuple[Filter, ...] = (pinned, capabilities)


# A refusal's cause, nearest miss last: the filters in order, then a server with fitting
# replicas but too few of them. (No server at all is the farthest.)
NO_SERVER = "no_server"
TOO_FEW_REPLICAS = "too_few_replicas"
CAUSES: tuple[str, ...] = (NO_SERVER, *(check.__name__ for check in FILTERS), TOO_FEW_REPLICAS)


def failing(
    request: Request, replica: Replica, now: float, filters: tuple[Filter, ...] = FILTERS
) -> tuple[str, str] | None:
    """The first failing filter's name and reason, or None when the replica may take it."""
    for check in filters:
        reason = check(request, replica, now)
        if reason is not None:
            return check.__name__, reason
    return None


def first_failure(
    request: Request, replica: Replica, now: float, filters: tuple[Filter, ...] = FILTERS
) -> str | None:
    """The first filter's reason against this replica, or None when it may take the model."""
    found = failing(request, replica, now, filters)
    return None if found is None else found[1]
