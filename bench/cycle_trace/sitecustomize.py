"""Times named steps of the scheduler and agent processes: `bench/mlserver_overhead.py
--trace` puts this folder on their PYTHONPATH, so Python imports it at start.

Only with CYCLE_TRACE_DIR set (a GPUPLACE_ name would be dropped: the local cluster does
not pass those on), and only in a `gpuplace scheduler` or `gpuplace agent` process (an
MLServer started with the same environment records nothing): the steps below, and every
`asyncio.to_thread` call (by the function it runs), are wrapped as their modules are
imported; each call's start and end (wall clock, shared by the processes) are written to
`<dir>/<role>-<pid>.json` when the process exits. A measuring tool, never imported by
gpuplace itself.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

# module: {class: [methods]}
STEPS: dict[str, dict[str, list[str]]] = {
    "scheduler_service.servicers": {"ClientServicer": ["LoadModel", "UnloadModel"]},
    "scheduler_service.service": {"SchedulerService": ["reconcile", "on_event"]},
    "scheduler_service.store": {"Store": ["save"]},
    "agent.link": {"SchedulerLink": ["dispatch"], "Outbox": ["event"]},
    "agent.models": {
        "ModelManager": ["_load", "_fetch", "_check_memory", "_install_and_load", "_unload"]
    },
    "agent.inference_server": {"MLServerClient": ["load", "unload", "index"]},
}

Record = tuple[str, float, float]


def _role(argv: Sequence[str]) -> str | None:
    for role in ("scheduler", "agent"):
        if role in argv[1:]:
            return role
    return None


def _timed(step: str, function: Callable[..., Any], records: list[Record]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.time()
            try:
                return await function(*args, **kwargs)
            finally:
                records.append((step, started, time.time()))

        return timed_async

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            records.append((step, started, time.time()))

    return timed


def _wrap_module(module: ModuleType, records: list[Record]) -> None:
    for class_name, methods in STEPS[module.__name__].items():
        cls = getattr(module, class_name)
        for method in methods:
            setattr(cls, method, _timed(f"{class_name}.{method}", vars(cls)[method], records))


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the modules of STEPS as Python would, and wraps their steps once executed."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in STEPS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _wrap_module(module, self.records)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _install(folder: str, role: str) -> None:
    records: list[Record] = []
    sys.meta_path.insert(0, _Finder(records))
    to_thread = asyncio.to_thread

    async def timed_to_thread(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return await to_thread(function, *args, **kwargs)
        finally:
            name = getattr(function, "__qualname__", type(function).__name__)
            records.append((f"thread: {name}", started, time.time()))

    asyncio.to_thread = timed_to_thread

    def write() -> None:
        path = os.path.join(folder, f"{role}-{os.getpid()}.json")
        with open(path, "w") as out:
            json.dump(records, out)

    atexit.register(write)


_folder = os.environ.get("CYCLE_TRACE_DIR")
_process_role = _role(sys.argv)
if _folder and _process_role:
    _install(_folder, _process_role)
