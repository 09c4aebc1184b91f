"""What the fleet benchmarks share: a real scheduler process, simulated agents in this
process speaking the real protocol over gRPC (they answer every load at once), models loaded
through the client API, their states followed through WatchModels, and the scheduler's CPU
time and peak memory read from /proc.

Not a benchmark itself: `fanin.py` and `restart.py` use it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script from a checkout: the repository's packages come from its root.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from devharness.scheduler import SchedulerProcess  # noqa: E402
from devharness.sim_agent import GiB, SimAgent  # noqa: E402
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc  # noqa: E402

REPLICAS_PER_SERVER = 4
# gRPC's default is 4 MiB; a watch's first answers and a status are far smaller, this is
# room for a slow machine's bursts.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 2**20)]


def agents(address: str, count: int) -> list[SimAgent]:
    """`count` replicas in servers of 4, each with room for thousands of small models."""
    return [
        SimAgent(
            address,
            server=f"srv-{number // REPLICAS_PER_SERVER:04d}",
            index=number % REPLICAS_PER_SERVER,
            memory_bytes=1024 * GiB,
        )
        for number in range(count)
    ]


def model_spec(number: int) -> common_pb2.ModelSpec:
    """Model `number`: sklearn, 1 MiB, 1 to 3 replicas (1, 2, 3, 1, 2, 3, ...)."""
    return common_pb2.ModelSpec(
        name=f"model-{number:05d}",
        storage_uri=f"gs://bench/models/{number % 50}",
        requirements=["sklearn"],
        memory="1Mi",
        replicas=1 + number % 3,
    )


async def connect_all(fleet: Sequence[SimAgent], concurrency: int = 64) -> float:
    """Connect every agent (at most `concurrency` hellos in flight); seconds until every
    one was welcomed."""
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(agent: SimAgent) -> None:
        async with gate:
            await agent.connect()
            await until(lambda: agent.welcomed, timeout_s=120, what=f"{agent.name} welcomed")

    await asyncio.gather(*(one(agent) for agent in fleet))
    return time.perf_counter() - started


async def disconnect_all(fleet: Iterable[SimAgent]) -> None:
    await asyncio.gather(*(agent.disconnect() for agent in fleet))


@dataclass
class Watch:
    """Every model's latest state as WatchModels streams it, and when each first became
    Available."""

    states: dict[str, str] = field(default_factory=dict)
    available_at: dict[str, float] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def count(self, state: str) -> int:
        return sum(1 for value in self.states.values() if value == state)


async def watch(stub: scheduler_pb2_grpc.SchedulerStub) -> Watch:
    seen = Watch()

    async def follow() -> None:
        async for status in stub.WatchModels(scheduler_pb2.WatchModelsRequest()):
            seen.states[status.name] = status.state
            if status.state == "Available" and status.name not in seen.available_at:
                seen.available_at[status.name] = time.perf_counter()

    seen.task = asyncio.create_task(follow())
    return seen


async def load_all(
    stub: scheduler_pb2_grpc.SchedulerStub, specs: Sequence[common_pb2.ModelSpec], concurrency: int
) -> dict[str, float]:
    """LoadModel for each spec (at most `concurrency` calls in flight); when each returned."""
    returned: dict[str, float] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one(spec: common_pb2.ModelSpec) -> None:
        async with gate:
            await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=spec))
            returned[spec.name] = time.perf_counter()

    await asyncio.gather(*(one(spec) for spec in specs))
    return returned


async def until(done: object, timeout_s: float, what: str, watching: Watch | None = None) -> float:
    """Wait until `done()` is true; seconds waited. Raises after `timeout_s`, or when the
    watch `watching` ended (the scheduler dropped it)."""
    assert callable(done)
    started = time.perf_counter()
    while not done():
        if watching is not None and watching.task is not None and watching.task.done():
            raise RuntimeError(f"{what}: the watch ended: {watching.task.exception()!r}")
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:g}s")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


def client_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


@dataclass
class ProcessUsage:
    """CPU seconds (user + system) and peak resident memory of a process, from /proc."""

    cpu_s: float
    peak_rss_bytes: int

    @classmethod
    def of(cls, pid: int) -> ProcessUsage:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        peak = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
        return cls(cpu, peak)


def scheduler_pid(scheduler: SchedulerProcess) -> int:
    assert scheduler.process is not None
    return scheduler.process.pid


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * (len(ordered) - 1))))]


def cpu_model() -> str:
    """The CPU's model name on Linux (platform.processor() is often empty there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict[str, object]:
    """What the numbers were measured on: Python, CPU, SQLite, load, commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "sqlite": sqlite3.sqlite_version,
        "loadavg_start": list(os.getloadavg()),
        "git_commit": commit,
    }


def options(doc: str | None, name: str, quick: str) -> argparse.ArgumentParser:
    """A benchmark's options: `--quick` (what it shrinks to) and `--out` (its JSON file)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / f"{name}.json",
        help=f"JSON results file (default: bench/results/{name}.json)",
    )
    return parser


def arguments(
    doc: str | None, name: str, quick: str, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse a benchmark's `options`."""
    return options(doc, name, quick).parse_args(argv)


def report(
    out: Path,
    benchmark: str,
    info: dict[str, object],
    started: float,
    parameters: dict[str, object],
    **results: object,
) -> None:
    """Write the run's JSON (machine, parameters, time taken, `results`) and say where."""
    info["loadavg_end"] = list(os.getloadavg())
    elapsed = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": benchmark,
        "machine": info,
        "parameters": parameters,
        "elapsed_s": elapsed,
        **results,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{elapsed:.1f} s; results written to {out}")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
