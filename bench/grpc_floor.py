"""The gRPC floor: what the fan-in's messages cost on this machine with no scheduler behind
them.

Run from the repository root:

    .venv/bin/python bench/grpc_floor.py [--quick] [--out bench/results/grpc_floor.json]

A do-nothing server (a process of its own, Python's grpc.aio as the scheduler uses it)
serves the scheduler's client and agent APIs with the fan-in's messages per model: the
`LoadModel` call and its answer, one `Load` command per copy to the agents in turn, one
`LOADED` back per copy, and two watch updates (Progressing at the call, Available once
every copy answered). It places nothing, stores nothing and keeps no state but a count per
model. `bench/fanin.py`'s simulated agents and client run against it and against the real
scheduler, one after the other: 1,000 agents and 10,000 models (`--quick`: 100 agents and
1,000 models). Each row has the server's CPU per model and the benchmark process's own, from
the first call to every model Available (the agents and the client share the machine's
cores with the server).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from fanin import Row, measure, run_once
from fleet import machine, options, report, table

from contract.protocol import EventKind, Hello, Load, ModelEvent, Welcome
from contract.wire import decode_agent_message, encode_command
from protos import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
)


class Floor(scheduler_pb2_grpc.SchedulerServicer, agent_pb2_grpc.AgentServiceServicer):
    """The fan-in's messages, and nothing else."""

    def __init__(self) -> None:
        self.agents: list[asyncio.Queue[agent_pb2.SchedulerMessage]] = []
        self.turn = 0
        self.waiting: dict[str, int] = {}  # copies not yet LOADED, per model
        self.specs: dict[str, common_pb2.ModelSpec] = {}
        self.watchers: list[asyncio.Queue[scheduler_pb2.ModelStatus]] = []

    def publish(self, spec: common_pb2.ModelSpec, state: str) -> None:
        status = scheduler_pb2.ModelStatus(
            name=spec.name, version=1, state=state, spec=spec, updated_at=time.time()
        )
        for watcher in self.watchers:
            watcher.put_nowait(status)

    async def LoadModel(
        self, request: scheduler_pb2.LoadModelRequest, context: Any
    ) -> scheduler_pb2.LoadModelResponse:
        spec = request.model
        self.specs[spec.name] = spec
        self.waiting[spec.name] = max(1, spec.replicas)
        for _ in range(self.waiting[spec.name]):
            agent = self.agents[self.turn % len(self.agents)]
            self.turn += 1
            agent.put_nowait(encode_command(Load(spec.name, 1, storage_uri=spec.storage_uri)))
        self.publish(spec, "Progressing")
        return scheduler_pb2.LoadModelResponse(name=spec.name, version=1, changed=True)

    async def WatchModels(
        self, request: scheduler_pb2.WatchModelsRequest, context: Any
    ) -> AsyncIterator[scheduler_pb2.ModelStatus]:
        updates: asyncio.Queue[scheduler_pb2.ModelStatus] = asyncio.Queue()
        self.watchers.append(updates)
        while True:
            yield await updates.get()

    async def Connect(
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: Any
    ) -> AsyncIterator[agent_pb2.SchedulerMessage]:
        commands: asyncio.Queue[agent_pb2.SchedulerMessage] = asyncio.Queue()
        reader = asyncio.create_task(self._read(request_iterator, commands))
        try:
            while True:
                yield await commands.get()
        finally:
            reader.cancel()

    async def _read(
        self,
        messages: AsyncIterator[agent_pb2.AgentMessage],
        commands: asyncio.Queue[agent_pb2.SchedulerMessage],
    ) -> None:
        async for message in messages:
            match decode_agent_message(message):
                case Hello():
                    self.agents.append(commands)
                    commands.put_nowait(encode_command(Welcome()))
                case ModelEvent(kind=EventKind.LOADED, model=name):
                    self.waiting[name] -= 1
                    if self.waiting[name] == 0:
                        self.publish(self.specs[name], "Available")


async def serve() -> None:
    """Serve the floor on two ports (client, agent) until SIGTERM; print them when ready."""
    floor = Floor()
    client, agent = grpc.aio.server(), grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(floor, client)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(floor, agent)
    ports = [server.add_insecure_port("127.0.0.1:0") for server in (client, agent)]
    for server in (client, agent):
        await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(*ports, flush=True)
    await stop.wait()
    for server in (client, agent):
        await server.stop(grace=None)


@dataclass
class FloorRow:
    server: str  # "floor" or "scheduler"
    agents: int
    models: int
    models_per_s: float
    # First LoadModel to every model Available:
    server_cpu_s: float
    server_cpu_ms_per_model: float
    bench_cpu_s: float  # this process: the simulated agents and the client
    server_peak_rss_mb: float


def row(server: str, result: Row) -> FloorRow:
    return FloorRow(
        server=server,
        agents=result.agents,
        models=result.models,
        models_per_s=result.models_per_s,
        server_cpu_s=result.scheduler_loading_cpu_s,
        server_cpu_ms_per_model=result.scheduler_loading_cpu_s / result.models * 1e3,
        bench_cpu_s=result.bench_loading_cpu_s,
        server_peak_rss_mb=result.scheduler_peak_rss_mb,
    )


async def against_floor(count: int, models: int) -> FloorRow:
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        ports = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()
        if len(ports) != 2:
            raise RuntimeError(f"the floor server did not start (exit code {process.returncode})")
        client_port, agent_port = ports
        result = await measure(
            f"127.0.0.1:{client_port}", f"127.0.0.1:{agent_port}", process.pid, count, models
        )
        return row("floor", result)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = options(__doc__, "grpc_floor", "100 agents and 1,000 models")
    parser.add_argument("--serve", action="store_true", help="be the floor server (internal)")
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve())
        return 0
    count, models = (100, 1000) if args.quick else (1000, 10_000)
    info, wall = machine(), time.perf_counter()
    rows = [asyncio.run(against_floor(count, models))]
    with tempfile.TemporaryDirectory(prefix="gpuplace-floor-") as work:
        rows.append(row("scheduler", asyncio.run(run_once(Path(work), count, models))))
    print(
        table(
            (
                "server",
                "agents",
                "models",
                "models/s",
                "server CPU s",
                "CPU ms/model",
                "bench CPU s",
                "peak MB",
            ),
            [
                (
                    r.server,
                    str(r.agents),
                    str(r.models),
                    f"{r.models_per_s:,.0f}",
                    f"{r.server_cpu_s:.1f}",
                    f"{r.server_cpu_ms_per_model:.2f}",
                    f"{r.bench_cpu_s:.1f}",
                    f"{r.server_peak_rss_mb:.0f}",
                )
                for r in rows
            ],
        )
    )
    floor, scheduler = rows
    print(
        f"\nthe scheduler does {scheduler.models_per_s / floor.models_per_s:.0%} of the floor's "
        f"models/s; its CPU per model is {scheduler.server_cpu_ms_per_model:.2f} ms, the "
        f"floor's {floor.server_cpu_ms_per_model:.2f} ms"
    )
    parameters = {"quick": args.quick, "agents": count, "models": models}
    report(args.out, "grpc_floor", info, wall, parameters, rows=[asdict(r) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
