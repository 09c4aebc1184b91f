"""`gpuplace scheduler` and `gpuplace agent`: the two long-running processes.

Their flags come from the settings models (pure pydantic, cheap to import); the process's own
module graph (gRPC servers, aiohttp, SQLite, NVML) is imported only when the sub-command runs,
so `gpuplace model status` never pays for it.
"""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from agent.settings import AgentSettings
from contract.logs import fatal
from contract.settings_cli import add_settings_arguments, describe_error, settings_from_args
from scheduler_service.settings import SchedulerSettings

S = TypeVar("S", bound=BaseSettings)


def _settings(settings_cls: type[S], args: argparse.Namespace) -> S | None:
    """The settings from flags and environment; None, with one line per bad setting printed,
    when any is wrong (exit code 2, before anything starts)."""
    try:
        return settings_from_args(settings_cls, args)
    except ValidationError as exc:
        fatal(*describe_error(settings_cls, exc).splitlines())
        return None


def _run_scheduler(args: argparse.Namespace) -> int:
    settings = _settings(SchedulerSettings, args)
    if settings is None:
        return 2
    from scheduler_service.main import run

    return run(settings)


def _run_agent(args: argparse.Namespace) -> int:
    settings = _settings(AgentSettings, args)
    if settings is None:
        return 2
    from agent.main import run

    return run(settings)


def register(commands: Any) -> None:
    scheduler: argparse.ArgumentParser = commands.add_parser(
        "scheduler",
        help="run the scheduler (client API, agent API, HTTP /metrics)",
        description="Run the gpuplace scheduler. It places models on the replicas whose agents "
        "connect to it, persists its state in SQLite and serves gRPC health and reflection "
        "on both gRPC ports.",
    )
    add_settings_arguments(scheduler, SchedulerSettings)
    scheduler.set_defaults(func=_run_scheduler)
    agent: argparse.ArgumentParser = commands.add_parser(
        "agent",
        help="run the agent sidecar next to an inference server",
        description=(
            "Run the gpuplace agent next to MLServer: report capabilities and NVML-measured "
            "GPU memory to the scheduler, load and unload models on its command, drain on "
            "SIGTERM."
        ),
    )
    add_settings_arguments(agent, AgentSettings)
    agent.set_defaults(func=_run_agent)
