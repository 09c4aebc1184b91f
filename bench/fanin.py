"""Fan-in benchmark: the real scheduler process and N simulated agents over gRPC.

Run from the repository root:

    .venv/bin/python bench/fanin.py [--quick] [--out bench/results/fanin.json]

For N = 10, 100 and 1,000 agents (servers of 4 replicas) it starts `gpuplace scheduler` on a
fresh state file, connects the agents (one process, the real protocol; each answers every
load at once), loads M = 10,000 models (1 to 3 replicas each) through the client API and
follows their states through WatchModels until all are Available. It reports models/s to
Available, LoadModel-return-to-Available p50/p99, the CPU seconds of the scheduler and of
this process (the agents and the client) from the first call to all Available, and the
scheduler's peak resident memory. `--quick`: N = 10 and 100, M = 1,000.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import (
    ProcessUsage,
    agents,
    arguments,
    client_channel,
    connect_all,
    disconnect_all,
    load_all,
    machine,
    model_spec,
    percentile,
    report,
    scheduler_pid,
    table,
    until,
    watch,
)

from devharness.scheduler import SchedulerProcess
from protos import scheduler_pb2_grpc


@dataclass
class Row:
    agents: int
    models: int
    copies: int
    connect_s: float
    load_calls_s: float  # every LoadModel answered
    to_available_s: float  # first LoadModel to every model Available
    models_per_s: float
    p50_ms: float  # LoadModel returned -> Available
    p99_ms: float
    scheduler_cpu_s: float  # since it started
    scheduler_loading_cpu_s: float  # first LoadModel to every model Available
    bench_loading_cpu_s: float  # this process (the agents and the client), the same span
    scheduler_peak_rss_mb: float


async def run_once(work: Path, count: int, models: int) -> Row:
    scheduler = SchedulerProcess(
        work,
        log_level="INFO",
        disconnect_grace_s=60,
        load_timeout_s=120,
        # The benchmark's one watcher follows every update of every model.
        watch_queue_size=1_000_000,
    ).start()
    try:
        return await measure(
            scheduler.client_address,
            scheduler.agent_address,
            scheduler_pid(scheduler),
            count,
            models,
        )
    finally:
        scheduler.stop()


async def measure(
    client_address: str, agent_address: str, pid: int, count: int, models: int
) -> Row:
    """`count` agents connect to `agent_address`, `models` models are loaded through
    `client_address` and followed until Available; the server's (process `pid`) usage."""
    fleet = agents(agent_address, count)
    channel = client_channel(client_address)
    try:
        connect_s = await connect_all(fleet)
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        seen = await watch(stub)
        specs = [model_spec(number) for number in range(models)]
        before, bench_before = ProcessUsage.of(pid), ProcessUsage.of(os.getpid())
        started = time.perf_counter()
        returned = await load_all(stub, specs, concurrency=64)
        load_calls_s = time.perf_counter() - started
        await until(
            lambda: seen.count("Available") == models,
            timeout_s=600,
            what=f"{models} models Available with {count} agents",
            watching=seen,
        )
        to_available = time.perf_counter() - started
        bench_loading_cpu_s = ProcessUsage.of(os.getpid()).cpu_s - bench_before.cpu_s
        latencies = [(seen.available_at[name] - returned[name]) * 1e3 for name in returned]
        usage = ProcessUsage.of(pid)
        if seen.task is not None:
            seen.task.cancel()
        return Row(
            agents=count,
            models=models,
            copies=sum(len(agent.loaded) for agent in fleet),
            connect_s=connect_s,
            load_calls_s=load_calls_s,
            to_available_s=to_available,
            models_per_s=models / to_available,
            p50_ms=statistics.median(latencies),
            p99_ms=percentile(latencies, 0.99),
            scheduler_cpu_s=usage.cpu_s,
            scheduler_loading_cpu_s=usage.cpu_s - before.cpu_s,
            bench_loading_cpu_s=bench_loading_cpu_s,
            scheduler_peak_rss_mb=usage.peak_rss_bytes / 2**20,
        )
    finally:
        await channel.close()
        await disconnect_all(fleet)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, "fanin", "N = 10 and 100, 1,000 models", argv)
    counts, models = ((10, 100), 1000) if args.quick else ((10, 100, 1000), 10_000)
    info, wall = machine(), time.perf_counter()
    rows = []
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="gpuplace-fanin-") as work:
            rows.append(asyncio.run(run_once(Path(work), count, models)))
        print(f"{count} agents: {rows[-1].models_per_s:,.0f} models/s", flush=True)
    print()
    print(
        table(
            (
                "agents",
                "models",
                "copies",
                "connect s",
                "to Available s",
                "models/s",
                "p50 ms",
                "p99 ms",
                "sched CPU s",
                "bench CPU s",
                "sched peak MB",
            ),
            [
                (
                    str(r.agents),
                    str(r.models),
                    str(r.copies),
                    f"{r.connect_s:.2f}",
                    f"{r.to_available_s:.2f}",
                    f"{r.models_per_s:,.0f}",
                    f"{r.p50_ms:.0f}",
                    f"{r.p99_ms:.0f}",
                    f"{r.scheduler_loading_cpu_s:.1f}",
                    f"{r.bench_loading_cpu_s:.1f}",
                    f"{r.scheduler_peak_rss_mb:.0f}",
                )
                for r in rows
            ],
        )
    )
    parameters = {"quick": args.quick, "agents": list(counts), "models": models}
    report(args.out, "fanin", info, wall, parameters, rows=[asdict(row) for row in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
