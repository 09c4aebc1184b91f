"""Restart benchmark: the real scheduler killed (SIGKILL) and started again on its state file,
its simulated agents reconnecting over gRPC.

Run from the repository root:

    .venv/bin/python bench/restart.py [--quick] [--out bench/results/restart.json]

Two cases, each loaded and then restarted:

* `restart`: 10,000 models (1 to 3 replicas each) on 100 agents;
* `storm`: 1,000 agents reconnecting at once, with 2,000 models placed and 50 that fit
  nowhere (refused, retried whenever the cluster changes).

For each: seconds from the new process's start until every agent is back and every placed
model is Available (the scheduler's count of models by state, read from its /metrics) with
all its copies held, and how many loads the agents received after the
restart (0: nothing was loaded again). `--quick`: 1,000 models on 20 agents, and a storm of
100 agents.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from fleet import (
    agents,
    arguments,
    client_channel,
    connect_all,
    disconnect_all,
    load_all,
    machine,
    model_spec,
    report,
    table,
    until,
    watch,
)

from devharness.scheduler import SchedulerProcess
from devharness.sim_agent import SimAgent
from protos import common_pb2, scheduler_pb2_grpc

# Well past the restart: a copy lost to the grace would be loaded again, which is what is
# counted; the grace itself is not what is measured.
GRACE_S = 30
SETTLE_S = 2.0  # after all is back: time for a reload, if any, to be sent


@dataclass
class Row:
    case: str
    agents: int
    models: int
    refused: int
    setup_s: float  # loading everything before the restart
    start_s: float  # the new process's start until it serves
    back_s: float  # from the restart until every agent is welcomed again
    settled_s: float  # from the restart until every placed model is Available again
    reloads: int  # loads the agents received after the restart


def huge(number: int) -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(
        name=f"huge-{number:03d}", requirements=["sklearn"], memory="100Ti", replicas=1
    )


async def run_case(case: str, work: Path, count: int, models: int, refused: int) -> Row:
    scheduler = SchedulerProcess(
        work, log_level="INFO", disconnect_grace_s=GRACE_S, watch_queue_size=1_000_000
    ).start()
    fleet = agents(scheduler.agent_address, count)
    channel = client_channel(scheduler.client_address)
    try:
        started = time.perf_counter()
        await connect_all(fleet)
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        seen = await watch(stub)
        placed = [model_spec(number) for number in range(models)]
        await load_all(stub, placed + [huge(n) for n in range(refused)], concurrency=64)
        await until(lambda: seen.count("Available") == models, 900, f"{case}: setup", watching=seen)
        setup_s = time.perf_counter() - started
        if seen.task is not None:
            seen.task.cancel()
        await channel.close()

        scheduler.kill()
        await disconnect_all(fleet)
        loads_before = sum(len(agent.loads) for agent in fleet)
        restarted = time.perf_counter()
        scheduler.restart()
        start_s = time.perf_counter() - restarted
        back_s = start_s + await reconnect(fleet)
        # The scheduler's own count of models by state (its /metrics: one small read, where
        # a watch would stream all 10,000 statuses first).
        async with aiohttp.ClientSession() as session:
            while await available(session, scheduler) != models or not all_copies(fleet, models):
                if time.perf_counter() - restarted > 300:
                    raise TimeoutError(f"{case}: not settled within 300 s after the restart")
                await asyncio.sleep(0.02)
            settled_s = time.perf_counter() - restarted
            await asyncio.sleep(SETTLE_S)
            later = await available(session, scheduler)
        if later != models:  # a copy lost after all, or a model moved
            raise RuntimeError(f"{case}: {later} of {models} models Available {SETTLE_S:g}s later")
        return Row(
            case=case,
            agents=count,
            models=models,
            refused=refused,
            setup_s=setup_s,
            start_s=start_s,
            back_s=back_s,
            settled_s=settled_s,
            reloads=sum(len(agent.loads) for agent in fleet) - loads_before,
        )
    finally:
        await channel.close()
        await disconnect_all(fleet)
        scheduler.stop()


async def reconnect(fleet: list[SimAgent]) -> float:
    for agent in fleet:
        agent.welcomed = 0
    return await connect_all(fleet, concurrency=len(fleet))


async def available(session: aiohttp.ClientSession, scheduler: SchedulerProcess) -> int:
    """How many models the scheduler counts Available now."""
    async with session.get(f"{scheduler.http_url}/metrics") as response:
        text = await response.text()
    found = re.search(r'^gpuplace_scheduler_models\{state="Available"\} (\S+)$', text, re.M)
    return int(float(found[1])) if found else 0


def all_copies(fleet: list[SimAgent], models: int) -> bool:
    """Every placed model's copies are still held (1 + n % 3 of model n, on the agents)."""
    held = sum(len(agent.loaded) for agent in fleet)
    return held == sum(1 + n % 3 for n in range(models))


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, "restart", "smaller fleets and model counts", argv)
    cases = (
        [("restart", 20, 1000, 0), ("storm", 100, 200, 50)]
        if args.quick
        else [("restart", 100, 10_000, 0), ("storm", 1000, 2000, 50)]
    )
    info, wall = machine(), time.perf_counter()
    rows = []
    for case, count, models, refused in cases:
        with tempfile.TemporaryDirectory(prefix="gpuplace-restart-") as work:
            rows.append(asyncio.run(run_case(case, Path(work), count, models, refused)))
        print(f"{case}: settled in {rows[-1].settled_s:.2f}s, {rows[-1].reloads} reloads")
    print()
    print(
        table(
            (
                "case",
                "agents",
                "models",
                "refused",
                "setup s",
                "start s",
                "all back s",
                "settled s",
                "reloads",
            ),
            [
                (
                    r.case,
                    str(r.agents),
                    str(r.models),
                    str(r.refused),
                    f"{r.setup_s:.1f}",
                    f"{r.start_s:.2f}",
                    f"{r.back_s:.2f}",
                    f"{r.settled_s:.2f}",
                    str(r.reloads),
                )
                for r in rows
            ],
        )
    )
    parameters = {"quick": args.quick, "cases": cases, "grace_s": GRACE_S}
    report(args.out, "restart", info, wall, parameters, rows=[asdict(row) for row in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
