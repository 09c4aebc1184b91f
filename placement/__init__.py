"""The pure placement core: frozen values in, a Placement or a Rejection out, no I/O.

`schedule(snapshot, request, policy, now)` is the one entry point; the filters and sorters
it is built from are exported for `explain` and for tests. `fit_devices` is the device-fit
rule the filters and sorters use, and the agent's check before a load uses too.
"""

from __future__ import annotations

from placement.filters import ELIGIBILITY, FILTERS, Filter, first_failure
from placement.fit import DeviceShortfall, NamedShortfall, fit_devices
from placement.schedule import UNKNOWN_SERVER, schedule
from placement.sorters import choose_devices
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
    "ELIGIBILITY",
    "FILTERS",
    "UNKNOWN_SERVER",
    "Assignment",
    "DeviceShortfall",
    "Filter",
    "Gpu",
    "NamedShortfall",
    "Placement",
    "Policy",
    "Rejection",
    "Replica",
    "Request",
    "Snapshot",
    "choose_devices",
    "first_failure",
    "fit_devices",
    "schedule",
]
