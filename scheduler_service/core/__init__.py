"""The pure placement core: frozen values in, a Placement or a Rejection out, no I/O.

`schedule(snapshot, request, policy, now)` is the one entry point; the filters and sorters
it is built from are exported for `explain` and for tests.
"""

from __future__ import annotations

from scheduler_service.core.filters import FILTERS, Filter, first_failure
from scheduler_service.core.schedule import UNKNOWN_SERVER, schedule
from scheduler_service.core.sorters import choose_devices
from scheduler_service.core.types import (
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
    "FILTERS",
    "UNKNOWN_SERVER",
    "Assignment",
    "Filter",
    "Gpu",
    "Placement",
    "Policy",
    "Rejection",
    "Replica",
    "Request",
    "Snapshot",
    "choose_devices",
    "first_failure",
    "schedule",
]
