"""Placement benchmark: the pure core (the indexed `place()`, the reference `schedule()` and
a plain filter-then-sort loop, side by side) and the SchedulerService end to end.

Run from the repository root:

    .venv/bin/python bench/placement.py [--quick] [--out bench/results/placement.json]

Part 1 times one placement on synthetic clusters of 10 to 10,000 replicas (servers of 4
replicas, every other server with 2-8 GPUs of varied free memory) for four kinds of model
under both policies, with three implementations interleaved round by round: `place()` over
a `ClusterIndex` (what the scheduler runs), `schedule()` (the reference: every replica
judged, every refusal worded) and a plain loop that filters every replica and sorts the
ones that fit. It reports placements/s, p50/p99 and the growth exponent of a log-log fit
over the sizes. Part 2 drives a real SchedulerService (real Store on SQLite, real metrics
on a fresh registry) with in-process fake agents that answer every Load with a LOADED
event, and times loading M models until all are Available. No network is used.

Ratios within one run mean more than the absolute numbers, which depend on the machine and
on whatever else runs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

# Run as a script from a checkout: the repository's packages come from its root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet import arguments, machine, report, table
from prometheus_client import CollectorRegistry

from contract.protocol import (
    Command,
    EventKind,
    GpuDevice,
    Hello,
    Load,
    ModelEvent,
)
from placement import (
    ClusterIndex,
    Gpu,
    Placement,
    Policy,
    Rejection,
    Replica,
    Request,
    Snapshot,
    place,
    schedule,
)
from scheduler_service.cluster import AgentSession
from scheduler_service.main import tune_collector
from scheduler_service.metrics import SchedulerMetrics
from scheduler_service.model import ModelRecord, ModelSpec, ModelState, validate_spec
from scheduler_service.service import SchedulerService
from scheduler_service.settings import SchedulerSettings
from scheduler_service.store import Store

GI = 1024**3
REPLICAS_PER_SERVER = 4
SEED = 20240601
CORE_SIZES = (10, 100, 1000, 10_000)
QUICK_CORE_SIZES = (10, 100, 1000)
IMPLEMENTATIONS = ("index", "schedule", "plain loop")
MODEL_KINDS = ("cpu", "gpu", "replicas3", "pinned")
POLICIES = (Policy.BINPACK, Policy.SPREAD)
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- synthetic cluster


@dataclass(frozen=True)
class DeviceShape:
    uuid: str
    index: int
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class ReplicaShape:
    server: str
    index: int
    capabilities: frozenset[str]
    memory_bytes: int
    overcommit_percentage: int
    used_memory_bytes: int
    devices: tuple[DeviceShape, ...]


def gpu_server(number: int) -> bool:
    """Every other server (the odd ones) has GPUs."""
    return number % 2 == 1


def server_name(number: int) -> str:
    return f"srv-{number:04d}"


def cluster(replicas: int, seed: int = SEED) -> list[ReplicaShape]:
    """`replicas` replicas in servers of 4 (the last may be smaller); deterministic.

    CPU servers: sklearn/xgboost (some lightgbm). GPU servers: sklearn/pytorch/model-on-gpu
    plus a100 or h100, 2-8 devices per replica (fixed per server) of 40 or 80 GiB, each with
    10-100 % of it free. Host memory 16-64 GiB, 0-50 % already used, overcommit 0 or 10 %.
    """
    rng = random.Random(seed)
    shapes: list[ReplicaShape] = []
    servers = math.ceil(replicas / REPLICAS_PER_SERVER)
    for number in range(servers):
        name = server_name(number)
        count = min(REPLICAS_PER_SERVER, replicas - number * REPLICAS_PER_SERVER)
        if gpu_server(number):
            capabilities = {"mlserver", "sklearn", "pytorch", "model-on-gpu"}
            capabilities.add("a100" if number % 4 == 1 else "h100")
            device_count = 2 + (number * 3) % 7  # 2..8
            total = 80 * GI if number % 3 else 40 * GI
        else:
            capabilities = {"mlserver", "sklearn", "xgboost"}
            if number % 4 == 0:
                capabilities.add("lightgbm")
            device_count = 0
            total = 0
        memory = rng.choice((16, 32, 48, 64)) * GI
        overcommit = rng.choice((0, 10))
        for index in range(count):
            devices = tuple(
                DeviceShape(
                    uuid=f"GPU-{number:04d}-{index}-{device}",
                    index=device,
                    total_bytes=total,
                    free_bytes=int(total * rng.uniform(0.1, 1.0)),
                )
                for device in range(device_count)
            )
            shapes.append(
                ReplicaShape(
                    server=name,
                    index=index,
                    capabilities=frozenset(capabilities),
                    memory_bytes=memory,
                    overcommit_percentage=overcommit,
                    used_memory_bytes=int(memory * rng.uniform(0.0, 0.5)),
                    devices=devices,
                )
            )
    return shapes


def first_gpu_server(replicas: int) -> str:
    """The pinned model's server: the first GPU server, present in every size."""
    return server_name(1) if replicas > REPLICAS_PER_SERVER else server_name(0)


def core_snapshot(shapes: Sequence[ReplicaShape]) -> Snapshot:
    """The core's view; every replica already holds a few (other) models."""
    replicas = tuple(
        Replica(
            server=shape.server,
            index=shape.index,
            capabilities=shape.capabilities,
            memory_bytes=shape.memory_bytes,
            overcommit_percentage=shape.overcommit_percentage,
            used_memory_bytes=shape.used_memory_bytes,
            gpus=tuple(
                Gpu(
                    uuid=device.uuid,
                    name="NVIDIA H100 80GB HBM3",
                    index=device.index,
                    total_bytes=device.total_bytes,
                    free_bytes=device.free_bytes,
                )
                for device in shape.devices
            ),
            models=frozenset(f"resident-{(shape.index + n) % 50}" for n in range(5)),
        )
        for shape in shapes
    )
    return Snapshot(replicas)


def core_request(kind: str, replicas: int) -> Request:
    if kind == "cpu":
        return Request(
            model="bench-cpu", version=1, requirements=frozenset({"sklearn"}), memory_bytes=2 * GI
        )
    if kind == "gpu":
        return Request(
            model="bench-gpu",
            version=1,
            requirements=frozenset({"pytorch"}),
            memory_bytes=4 * GI,
            gpu_memory_bytes=20 * GI,
        )
    if kind == "replicas3":
        return Request(
            model="bench-replicas3",
            version=1,
            requirements=frozenset({"sklearn"}),
            memory_bytes=1 * GI,
            replicas=3,
            min_replicas=3,
        )
    if kind == "pinned":
        return Request(
            model="bench-pinned",
            version=1,
            requirements=frozenset({"pytorch"}),
            server=first_gpu_server(replicas),
            memory_bytes=4 * GI,
            gpu_memory_bytes=20 * GI,
        )
    raise ValueError(kind)


# ---------------------------------------------------------------------- timing helpers


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def time_interleaved(
    calls: Sequence[Callable[[], object]], budget_s: float, min_rounds: int, seed: int = SEED
) -> list[list[float]]:
    """Seconds per call for each of `calls`, measured in rounds.

    Every round runs every call once, in a shuffled order, so that a slow spell of a shared
    machine hits all of them alike and ratios between them stay meaningful. Rounds go on
    until `budget_s` has passed (at least `min_rounds`). Each call runs twice to warm up.
    """
    for call in calls:
        call()
        call()
    rng = random.Random(seed)
    order = list(range(len(calls)))
    samples: list[list[float]] = [[] for _ in calls]
    deadline = time.perf_counter() + budget_s
    with gc_paused():
        rounds = 0
        while rounds < min_rounds or time.perf_counter() < deadline:
            rng.shuffle(order)
            for position in order:
                started = time.perf_counter()
                calls[position]()
                samples[position].append(time.perf_counter() - started)
            rounds += 1
    return samples


# ---------------------------------------------------------------------- part 1: the core


def plain_loop(
    replicas: Sequence[Replica], request: Request, policy: Policy, now: float
) -> list[tuple[int, int, str, int]]:
    """The baseline: check every replica, sort the ones that fit, take the best `replicas`
    (no grouping by server, no reasons, no held copies: the least a placement can do)."""
    need, wanted = request.gpu_memory_bytes, max(request.replicas, 1)
    sign = 1 if policy is Policy.BINPACK else -1
    fitting = []
    for replica in replicas:
        if request.server is not None and replica.server != request.server:
            continue
        if replica.draining or not request.requirements <= replica.capabilities:
            continue
        available = replica.available_memory_bytes
        if available < request.memory_bytes:
            continue
        leftover = 0
        if need:
            rooms = sorted(gpu.room_bytes for gpu in replica.gpus if gpu.room_bytes >= need)
            if not rooms:
                continue
            leftover = (rooms[0] if sign > 0 else rooms[-1]) - need
        fitting.append((sign * leftover, -available, replica.server, replica.index))
    fitting.sort()
    return fitting[:wanted]


@dataclass
class CoreRow:
    implementation: str
    replicas: int
    model: str
    policy: str
    outcome: str  # "<server> xN" or "rejected"
    repeats: int
    p50_us: float
    p99_us: float
    min_us: float

    @property
    def placements_per_s(self) -> float:
        return 1e6 / self.p50_us


def outcome_of(result: Placement | Rejection) -> str:
    if isinstance(result, Placement):
        return f"{result.server} x{len(result.assignments)}"
    return "rejected"


def bench_core(sizes: Sequence[int], budget_s: float) -> list[CoreRow]:
    """Every (implementation, model, policy) case of each size, interleaved round by round
    for `budget_s` per size; `place()` must give `schedule()`'s placement."""
    now = 1_000.0
    rows: list[CoreRow] = []
    for size in sizes:
        snapshot = core_snapshot(cluster(size))
        index = ClusterIndex(snapshot.replicas)
        cases: list[tuple[str, str, Policy, str]] = []
        calls: list[Callable[[], object]] = []
        for kind in MODEL_KINDS:
            request = core_request(kind, size)
            for policy in POLICIES:
                expected = schedule(snapshot, request, policy, now)
                found = place(index, request, policy, now)
                if isinstance(found, Placement) and isinstance(expected, Placement):
                    assert found.assignments == expected.assignments, (size, kind, policy)
                else:
                    assert found == expected, (size, kind, policy)
                implementations: dict[str, Callable[[], object]] = {
                    "index": lambda r=request, p=policy, i=index: place(i, r, p, now),
                    "schedule": lambda r=request, p=policy, s=snapshot: schedule(s, r, p, now),
                    "plain loop": lambda r=request, p=policy, s=snapshot: plain_loop(
                        s.replicas, r, p, now
                    ),
                }
                for name in IMPLEMENTATIONS:
                    cases.append((name, kind, policy, outcome_of(expected)))
                    calls.append(implementations[name])
        # The reference judges every replica: at 10,000 a few rounds take seconds.
        timings = time_interleaved(calls, budget_s, min_rounds=3 if size >= 10_000 else 7)
        rows += [
            CoreRow(
                implementation=name,
                replicas=size,
                model=kind,
                policy=policy.value,
                outcome=outcome,
                repeats=len(samples),
                p50_us=statistics.median(samples) * 1e6,
                p99_us=percentile(samples, 0.99) * 1e6,
                min_us=min(samples) * 1e6,
            )
            for (name, kind, policy, outcome), samples in zip(cases, timings, strict=True)
        ]
    return rows


def growth_exponent(points: Sequence[tuple[int, float]]) -> float:
    """The slope of a least-squares fit of log(time) on log(replicas): 1 is linear."""
    xs = [math.log(size) for size, _ in points]
    ys = [math.log(value) for _, value in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return num / sum((x - mean_x) ** 2 for x in xs)


def core_summary(rows: Sequence[CoreRow]) -> list[dict[str, object]]:
    """Per implementation and size: placements/s of the median case (over the models and
    policies) and the growth exponent of each implementation over the sizes."""
    summary: list[dict[str, object]] = []
    for name in IMPLEMENTATIONS:
        mine = [r for r in rows if r.implementation == name]
        sizes = sorted({r.replicas for r in mine})
        medians = [
            (size, statistics.median(r.p50_us for r in mine if r.replicas == size))
            for size in sizes
        ]
        exponent = growth_exponent(medians) if len(medians) > 1 else float("nan")
        for size, p50 in medians:
            summary.append(
                {
                    "implementation": name,
                    "replicas": size,
                    "placements_per_s": 1e6 / p50,
                    "median_case_us": p50,
                    "growth_exponent": exponent,
                }
            )
    return summary


def core_ratios(rows: Sequence[CoreRow]) -> dict[str, float]:
    """Per size: how many times faster the index is than the reference and the plain loop
    (median over the models and policies of each case's ratio)."""
    by_key = {(r.implementation, r.replicas, r.model, r.policy): r.p50_us for r in rows}
    ratios: dict[str, float] = {}
    for size in sorted({r.replicas for r in rows}):
        for other in ("schedule", "plain loop"):
            ratios[f"@{size}: {other} / index"] = statistics.median(
                by_key[(other, size, kind, policy.value)]
                / by_key[("index", size, kind, policy.value)]
                for kind in MODEL_KINDS
                for policy in POLICIES
            )
    return ratios


# ---------------------------------------------------------------------- part 2: the service


class TimedStore(Store):
    """The real Store, with the time spent writing added up."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.seconds = 0.0
        self.writes = 0

    def save(self, record: ModelRecord) -> None:
        started = time.perf_counter()
        super().save(record)
        self.seconds += time.perf_counter() - started
        self.writes += 1

    def delete(self, name: str) -> None:
        started = time.perf_counter()
        super().delete(name)
        self.seconds += time.perf_counter() - started
        self.writes += 1


@dataclass
class FakeAgent:
    """One replica's agent: commands it is sent go to the shared outbox."""

    outbox: list[tuple[FakeAgent, Command]]
    session: AgentSession | None = None

    def send(self, command: Command) -> bool:
        self.outbox.append((self, command))
        return True

    def close(self, reason: str) -> None:
        self.session = None


def hello(shape: ReplicaShape) -> Hello:
    return Hello(
        server=shape.server,
        index=shape.index,
        capabilities=shape.capabilities,
        memory_bytes=shape.memory_bytes,
        overcommit_percentage=shape.overcommit_percentage,
        devices=tuple(
            GpuDevice(
                uuid=device.uuid,
                name="NVIDIA H100 80GB HBM3",
                index=device.index,
                total_bytes=device.total_bytes,
                free_bytes=device.free_bytes,
                used_bytes=device.total_bytes - device.free_bytes,
            )
            for device in shape.devices
        ),
    )


def service_spec(number: int, gpu_servers: Sequence[str]) -> ModelSpec:
    """A mix by number % 10: 6 CPU, 2 GPU, 1 with 3 replicas, 1 pinned to a GPU server."""
    name = f"model-{number:05d}"
    kind = number % 10
    if kind <= 5:
        return validate_spec(name, requirements=("sklearn",), memory="256Mi")
    if kind <= 7:
        return validate_spec(name, requirements=("pytorch",), memory="512Mi", gpu_memory="1Gi")
    if kind == 8:
        return validate_spec(name, requirements=("sklearn",), memory="128Mi", replicas=3)
    server = gpu_servers[(number // 10) % len(gpu_servers)]
    return validate_spec(
        name, requirements=("pytorch",), server=server, memory="512Mi", gpu_memory="1Gi"
    )


@dataclass
class ServiceRow:
    storage: str
    policy: str  # the settings' (default binpack unless GPUPLACE_SCHEDULER_POLICY says else)
    replicas: int
    models: int
    instances: int  # model replicas placed
    load_model_s: float  # M request_load() calls queued
    passes: list[float] = field(default_factory=list)  # seconds per reconcile pass
    placed_per_pass: list[int] = field(default_factory=list)
    events_s: float = 0.0  # on_event() calls answering every Load
    total_s: float = 0.0  # first load_model() to all Available
    sqlite_s: float = 0.0
    sqlite_writes: int = 0
    placements: int = 0  # placement decisions (placement histogram count)
    # The service's placement histogram times `Cluster.place()`: the index refreshed for
    # the replicas that changed, and the core.
    placement_s: float = 0.0
    idle_pass_ms: float = 0.0  # median reconcile() with nothing to do
    one_more_pass_ms: float = 0.0  # median pass placing one new (CPU) model among M
    one_more_core_ms: float = 0.0  # of which placing (index refresh and core)
    # Median reconcile() after a single LOADED event: what run() pays per event when events
    # arrive one by one (each wakes the loop).
    per_event_pass_ms: float = 0.0
    # The same through the real `run()` loop: from on_event() until the model is Available
    # (the loop wakes, reconciles, computes its next timer, waits again).
    per_event_loop_ms: float = 0.0

    @property
    def core_s(self) -> float:
        return self.placement_s

    @property
    def models_per_s(self) -> float:
        return self.models / self.total_s

    @property
    def placement_pass_models_per_s(self) -> float:
        return self.models / self.passes[0]

    @property
    def sqlite_share(self) -> float:
        return self.sqlite_s / self.total_s


def take_loads(outbox: list[tuple[FakeAgent, Command]]) -> list[tuple[AgentSession, Load]]:
    """The Loads sent so far (the outbox is emptied; other commands need no answer)."""
    pending, outbox[:] = list(outbox), []
    return [
        (agent.session, command)
        for agent, command in pending
        if isinstance(command, Load) and agent.session is not None
    ]


def loaded(command: Load) -> ModelEvent:
    """The agent's answer: loaded, with the model's GPU memory on each of its devices."""
    footprint = {uuid: command.gpu_memory_bytes for uuid in command.device_uuids}
    return ModelEvent(EventKind.LOADED, command.model, command.version, footprint_bytes=footprint)


def answer(service: SchedulerService, outbox: list[tuple[FakeAgent, Command]]) -> int:
    """Answer every Load sent so far with LOADED."""
    loads = take_loads(outbox)
    for session, command in loads:
        service.on_event(session, loaded(command))
    return len(loads)


def all_available(service: SchedulerService, names: Sequence[str]) -> bool:
    """Whether every model is known (its request applied) and Available."""
    known = {record.name: record.state for record in service.models()}
    return all(known.get(name) == ModelState.AVAILABLE for name in names)


def histogram_sum(registry: CollectorRegistry, sample: str = "sum") -> float:
    name = f"gpuplace_scheduler_placement_duration_seconds_{sample}"
    return float(registry.get_sample_value(name) or 0.0)


@dataclass(frozen=True)
class ServiceParams:
    replicas: int  # fake agents connected
    model_counts: tuple[int, ...]  # each run on disk
    all_storage_at: int  # this count also on tmpfs and :memory:
    extra: int  # single models added one pass at a time after the run
    trickle: int  # LOADED events answered one at a time, a reconcile() after each


async def bench_service_once(
    storage: str, db: Path, models: int, params: ServiceParams
) -> ServiceRow:
    """Connect the fake agents, load `models` models, reconcile until all Available.

    Runs inside an event loop: SchedulerService creates an asyncio.Event (which on Python
    3.11 binds to a loop only when awaited), and the last measurement runs `service.run()`.
    Passes are driven by calling `reconcile()` directly, as `run()` would after a wake-up.
    """
    replicas, extra, trickle = params.replicas, params.extra, params.trickle
    shapes = cluster(replicas)
    gpu_servers = sorted({s.server for s in shapes if s.devices})
    registry = CollectorRegistry()
    store = TimedStore(db)
    # Defaults plus the environment, as in production; the pydantic model is untyped for mypy.
    overrides: dict[str, Any] = {"db": db, "max_models": models + 1000}
    settings = SchedulerSettings(**overrides)
    service = SchedulerService(settings, store, SchedulerMetrics(registry))
    outbox: list[tuple[FakeAgent, Command]] = []
    for shape in shapes:
        agent = FakeAgent(outbox)
        agent.session = service.connect(hello(shape), agent.send, agent.close)
    service.reconcile()
    outbox.clear()
    store.seconds, store.writes = 0.0, 0

    specs = [service_spec(number, gpu_servers) for number in range(models)]
    names = [spec.name for spec in specs]
    row = ServiceRow(
        storage=storage,
        policy=settings.policy.value,
        replicas=replicas,
        models=models,
        instances=sum(spec.replicas for spec in specs),
        load_model_s=0.0,
    )
    started = time.perf_counter()
    # As LoadModel calls do: each waits for the pass that saves (and places) its model.
    calls = [asyncio.ensure_future(service.request_load(spec)) for spec in specs]
    await asyncio.sleep(0)  # each call queues its request
    row.load_model_s = time.perf_counter() - started
    while not all_available(service, names):
        if len(row.passes) >= 10:
            states = {service.model(n).state for n in names}
            raise RuntimeError(f"{storage}/{models}: not all Available after 10 passes: {states}")
        pass_started = time.perf_counter()
        service.reconcile()
        row.passes.append(time.perf_counter() - pass_started)
        loads = sum(1 for _, command in outbox if isinstance(command, Load))
        row.placed_per_pass.append(loads)
        event_started = time.perf_counter()
        answer(service, outbox)
        row.events_s += time.perf_counter() - event_started
    row.total_s = time.perf_counter() - started
    await asyncio.gather(*calls)  # answered by the first pass
    row.sqlite_s, row.sqlite_writes = store.seconds, store.writes
    row.placement_s = histogram_sum(registry)
    row.placements = int(histogram_sum(registry, "count"))

    idle = []
    for _ in range(15):
        idle_started = time.perf_counter()
        service.reconcile()
        idle.append(time.perf_counter() - idle_started)
    row.idle_pass_ms = statistics.median(idle) * 1e3

    one_pass, one_core = [], []
    for number in range(extra):
        service.load_model(validate_spec(f"extra-{number:05d}", requirements=("sklearn",)))
        before_placement = histogram_sum(registry)
        pass_started = time.perf_counter()
        service.reconcile()
        one_pass.append(time.perf_counter() - pass_started)
        one_core.append(histogram_sum(registry) - before_placement)
        answer(service, outbox)
        service.reconcile()
    row.one_more_pass_ms = statistics.median(one_pass) * 1e3
    row.one_more_core_ms = statistics.median(one_core) * 1e3

    for number in range(trickle):
        service.load_model(validate_spec(f"trickle-{number:05d}", requirements=("sklearn",)))
    service.reconcile()
    per_event = []
    for session, command in take_loads(outbox):
        service.on_event(session, loaded(command))
        pass_started = time.perf_counter()
        service.reconcile()
        per_event.append(time.perf_counter() - pass_started)
    row.per_event_pass_ms = statistics.median(per_event) * 1e3
    row.per_event_loop_ms = await per_event_in_run_loop(service, outbox, trickle) * 1e3
    store.close()
    return row


async def until(done: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Yield to the event loop until `done()`; a benchmark that hangs is a failed one."""
    deadline = time.perf_counter() + timeout_s
    while not done():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0)


async def per_event_in_run_loop(
    service: SchedulerService, outbox: list[tuple[FakeAgent, Command]], count: int
) -> float:
    """Median seconds from one LOADED event to Available with `service.run()` running."""
    outbox.clear()
    task = asyncio.create_task(service.run())
    try:
        names = [f"loop-{number:05d}" for number in range(count)]
        for name in names:
            service.load_model(validate_spec(name, requirements=("sklearn",)))
        await until(lambda: len(outbox) >= count, f"{count} loads from run()")
        samples = []
        for session, command in take_loads(outbox):
            record = service.model(command.model)

            def available(record: ModelRecord = record) -> bool:
                return record.state == ModelState.AVAILABLE

            started = time.perf_counter()
            service.on_event(session, loaded(command))
            await until(available, f"{record.name} Available")
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def storage_dirs() -> list[tuple[str, Path | None]]:
    """Where the state file goes: a disk directory, tmpfs when there is one, and :memory:."""
    places: list[tuple[str, Path | None]] = [("disk", ROOT / "bench" / "results")]
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        places.append(("tmpfs", Path("/dev/shm")))
    places.append((":memory:", None))
    return places


def bench_service(params: ServiceParams) -> list[ServiceRow]:
    """Every model count on disk; `params.all_storage_at` also on tmpfs and :memory:.

    A small run on :memory: goes first and is thrown away (first-call costs).
    """
    warm_up = replace(params, extra=2, trickle=2)
    asyncio.run(bench_service_once("warm-up", Path(":memory:"), 20, warm_up))
    rows: list[ServiceRow] = []
    for storage, directory in storage_dirs():
        for models in params.model_counts:
            if storage != "disk" and models != params.all_storage_at:
                continue
            if directory is None:
                run = bench_service_once(storage, Path(":memory:"), models, params)
                rows.append(asyncio.run(run))
                continue
            directory.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix="gpuplace-bench-", dir=directory))
            try:
                run = bench_service_once(storage, folder / "state.db", models, params)
                rows.append(asyncio.run(run))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    return rows


def service_ratios(rows: Sequence[ServiceRow]) -> dict[str, float]:
    disk = sorted((r for r in rows if r.storage == "disk"), key=lambda r: r.models)
    ratios: dict[str, float] = {}
    if len(disk) >= 2:
        small, large = disk[0], disk[-1]
        scale = large.models / small.models
        label = f"{large.models} vs {small.models} models"
        ratios[f"total time, {label} (x{scale:g} models)"] = large.total_s / small.total_s
        ratios[f"placement pass, {label}"] = large.passes[0] / small.passes[0]
        ratios[f"placing per placement, {label}"] = (large.core_s / large.placements) / (
            small.core_s / small.placements
        )
        ratios[f"pass placing one more model, {label}"] = (
            large.one_more_pass_ms / small.one_more_pass_ms
        )
        ratios[f"idle pass, {label}"] = large.idle_pass_ms / small.idle_pass_ms
        ratios[f"pass after one event, {label}"] = large.per_event_pass_ms / small.per_event_pass_ms
        ratios[f"run() loop per event, {label}"] = large.per_event_loop_ms / small.per_event_loop_ms
    reference = next((r for r in rows if r.storage == "disk" and r.models == disk[-1].models), None)
    for row in rows:
        if reference is not None and row.storage != "disk":
            ratios[f"total time, {row.storage} vs disk @{row.models}"] = (
                row.total_s / reference.total_s
            )
    return ratios


# ---------------------------------------------------------------------- report


def core_table(rows: Sequence[CoreRow]) -> str:
    return table(
        ("impl", "replicas", "model", "policy", "outcome", "n", "p50 us", "p99 us", "place/s"),
        [
            (
                r.implementation,
                str(r.replicas),
                r.model,
                r.policy,
                r.outcome,
                str(r.repeats),
                f"{r.p50_us:.1f}",
                f"{r.p99_us:.1f}",
                f"{r.placements_per_s:,.0f}",
            )
            for r in sorted(rows, key=lambda r: (r.replicas, r.model, r.policy))
        ],
    )


def summary_table(summary: Sequence[dict[str, object]]) -> str:
    return table(
        ("impl", "replicas", "placements/s", "median case us", "growth exponent"),
        [
            (
                str(row["implementation"]),
                str(row["replicas"]),
                f"{row['placements_per_s']:,.0f}",
                f"{row['median_case_us']:.1f}",
                f"{row['growth_exponent']:.2f}",
            )
            for row in summary
        ],
    )


def service_table(rows: Sequence[ServiceRow]) -> str:
    """Loading M models until all are Available: throughput and where the time goes."""
    return table(
        (
            "store",
            "replicas",
            "models",
            "total s",
            "models/s",
            "passes",
            "pass 1 ms",
            "pass 2 ms",
            "events ms",
            "sqlite %",
            "placing %",
        ),
        [
            (
                r.storage,
                str(r.replicas),
                str(r.models),
                f"{r.total_s:.2f}",
                f"{r.models_per_s:.0f}",
                str(len(r.passes)),
                f"{r.passes[0] * 1e3:.0f}",
                f"{r.passes[1] * 1e3:.0f}" if len(r.passes) > 1 else "-",
                f"{r.events_s * 1e3:.0f}",
                f"{100 * r.sqlite_share:.0f}",
                f"{100 * r.core_s / r.total_s:.0f}",
            )
            for r in rows
        ],
    )


def pass_table(rows: Sequence[ServiceRow]) -> str:
    """Single passes once M models are Available (medians, milliseconds)."""
    return table(
        (
            "store",
            "models",
            "idle pass",
            "+1 model pass",
            "of which placing",
            "pass after 1 event",
            "run() per event",
        ),
        [
            (
                r.storage,
                str(r.models),
                f"{r.idle_pass_ms:.2f}",
                f"{r.one_more_pass_ms:.2f}",
                f"{r.one_more_core_ms:.2f}",
                f"{r.per_event_pass_ms:.2f}",
                f"{r.per_event_loop_ms:.2f}",
            )
            for r in rows
        ],
    )


def ratio_table(ratios: dict[str, float]) -> str:
    return table(("ratio", "value"), [(name, f"{value:.2f}") for name, value in ratios.items()])


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__, "placement", "smaller budgets and sizes (~25 s)", argv)
    tune_collector()  # as the scheduler process does
    quick: bool = args.quick
    core_budget_s = 0.5 if quick else 4.0
    core_sizes = QUICK_CORE_SIZES if quick else CORE_SIZES
    counts = (100, 300) if quick else (100, 1000)
    service_params = ServiceParams(
        replicas=40 if quick else 100,
        model_counts=counts,
        all_storage_at=counts[-1],
        extra=5 if quick else 15,
        trickle=10 if quick else 40,
    )
    params: dict[str, object] = {
        "quick": quick,
        "seed": SEED,
        "core_sizes": list(core_sizes),
        "core_budget_s_per_size": core_budget_s,
        "replicas_per_server": REPLICAS_PER_SERVER,
        "service": asdict(service_params),
        "service_model_mix": "per 10: 6 CPU 256Mi, 2 GPU 1Gi, 1 CPU x3 replicas, 1 GPU pinned",
        "gc_disabled_while_timing_core": True,
    }
    info = machine()
    wall = time.perf_counter()

    print(f"gpuplace placement benchmark ({'quick' if quick else 'full'}), python {info['python']}")
    print(f"{info['platform']}, {info['cpu_count']} CPUs, load {info['loadavg_start']}\n")

    core = bench_core(core_sizes, core_budget_s)
    print("one placement (pure core): place() over the index, schedule(), a plain loop")
    print(core_table(core))
    summary = core_summary(core)
    print()
    print(summary_table(summary))
    c_ratios = core_ratios(core)
    print()
    print(ratio_table(c_ratios))
    print()

    service = bench_service(service_params)
    print(f"SchedulerService end to end ({service_params.replicas} replicas, fake agents)")
    print(service_table(service))
    print()
    print("single passes with M models Available (medians, ms)")
    print(pass_table(service))
    s_ratios = service_ratios(service)
    print()
    print(ratio_table(s_ratios))
    # The scale: 10,000 models into 1,000 replicas (quick: 2,000 into 200).
    scale_replicas, scale_models = (200, 2000) if quick else (1000, 10_000)
    with tempfile.TemporaryDirectory(prefix="gpuplace-bench-") as folder:
        scale_params = replace(service_params, replicas=scale_replicas, extra=5, trickle=10)
        scale = asyncio.run(
            bench_service_once("disk", Path(folder) / "state.db", scale_models, scale_params)
        )
    print()
    print(f"SchedulerService at scale ({scale_replicas} replicas, fake agents)")
    print(service_table([scale]))

    report(
        args.out,
        "placement",
        info,
        wall,
        params,
        core=[{**asdict(row), "placements_per_s": row.placements_per_s} for row in core],
        core_summary=summary,
        core_ratios=c_ratios,
        service=[
            {
                **asdict(row),
                "models_per_s": row.models_per_s,
                "placement_pass_models_per_s": row.placement_pass_models_per_s,
                "sqlite_share": row.sqlite_share,
                "core_s": row.core_s,
            }
            for row in service
        ],
        service_ratios=s_ratios,
        service_at_scale={
            **asdict(scale),
            "models_per_s": scale.models_per_s,
            "sqlite_share": scale.sqlite_share,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
