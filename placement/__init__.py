"""The pure placement core: frozen values in, a Placement or a Rejection out, no I/O.

`schedule(snapshot, request, policy, now)` judges every replica and words a reason for each
server it turns down; `place(index, request, policy, now)` gives the same answer over a
`ClusterIndex` kept up to date replica by replica, reading replicas best first. `ELIGIBILITY` (with
`first_failure`) says where a model may run at all, for a copy the scheduler finds already
loaded; `fit_devices` is the device-fit rule the filters and sorters use, and the agent's
check before a load uses too.
"""

from __future__ import annotations

from placement.filters import CAUSES, ELIGIBILITY, first_failure
from placement.fit import DeviceShortfall, NamedShortfall, fit_devices
from placement.index import ClusterIndex, place
from placement.schedule import UNKNOWN_SERVER, schedule
from placement.types import (
    Assignment,
    Gpu,
    Placement,
    Policy,
    Rejection,
    Replica,
    Request,
    Snapshot,
)

__all__ = [
    "CAUSES",
    "ELIGIBILITY",
    "UNKNOWN_SERVER",
    "Assignment",
    "ClusterIndex",
    "DeviceShortfall",
    "Gpu",
    "NamedShortfall",
    "Placement",
    "Policy",
    "Rejection",
    "Replica",
    "Request",
    "Snapshot",
    "first_failure",
    "fit_devices",
    "place",
    "schedule",
]
