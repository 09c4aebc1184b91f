"""What gpuplace adds to a load and an unload: MLServer's REST API directly against the same
MLServer through gpuplace.

Run from the repository root:

    .venv/bin/python bench/mlserver_overhead.py [--quick] [--out bench/results/overhead.json]

One local cluster (the real scheduler, one real MLServer, its real agent) and a tiny
sklearn model. Cycles alternate between the two paths, so a slow spell hits both alike:

* direct: the artifact copied into MLServer's model repository, `POST .../load`, then
  `POST .../unload` and the folder removed;
* gpuplace: `LoadModel` until WatchModels says Available, then `UnloadModel` until it says
  the model is gone (the agent fetches the artifact, writes its settings, loads, reports).

It reports each path's median load, unload and cycle, their ratio and the milliseconds
gpuplace adds per cycle. 100 cycles each (`--quick`: 10).

`--trace`: where a cycle through gpuplace spends its time. The scheduler and the agent time
their steps (`bench/cycle_trace/sitecustomize.py`: the client call, each pass and save, the
command's arrival, the agent's stages and its worker-thread trips, MLServer's REST calls);
the table gives each step's median start and end, in ms from the `LoadModel` call, over the
cycles. The wrappers add a little to every step.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import machine, options, report, table

from devharness.cluster import LocalCluster, ServerSpec
from devharness.mlserver import MLServerProcess, ensure_mlserver_venv
from devharness.sklearn_models import TrainJob, train_iris_models
from gpuplace.client import SchedulerClient
from protos import common_pb2


@dataclass
class Row:
    path: str
    cycles: int
    load_ms: float  # medians
    unload_ms: float
    cycle_ms: float


def direct_cycle(
    mlserver: MLServerProcess, artifact: Path, repository: Path
) -> tuple[float, float]:
    folder = repository / "direct"
    started = time.perf_counter()
    shutil.copytree(artifact, folder)
    (folder / "model-settings.json").write_text(
        (artifact / "model-settings.json").read_text().replace('"iris"', '"direct"')
    )
    mlserver.load_model("direct")
    loaded = time.perf_counter()
    mlserver.unload_model("direct")
    shutil.rmtree(folder)
    return loaded - started, time.perf_counter() - loaded


@dataclass
class Cycle:
    """One cycle through gpuplace on the wall clock (the one the traced processes read)."""

    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, what: str) -> float:
        self.marks[what] = time.time()
        return time.perf_counter()


def gpuplace_cycle(
    client: SchedulerClient, artifact: Path, number: int, cycle: Cycle
) -> tuple[float, float]:
    name = f"through-{number}"
    spec = common_pb2.ModelSpec(name=name, storage_uri=str(artifact), requirements=["sklearn"])
    deadline = time.monotonic() + 60
    statuses = client.watch(name="", deadline=deadline)
    started = cycle.mark("client: LoadModel called")
    client.load(spec)
    cycle.mark("client: LoadModel returned")
    loaded = None
    for status in statuses:
        if status.name != name:
            continue
        if loaded is None and status.state == "Available":
            loaded = cycle.mark("client: Available seen")
            client.unload(name)
            cycle.mark("client: UnloadModel returned")
        elif loaded is not None and status.state == "Terminated":
            return loaded - started, cycle.mark("client: gone seen") - loaded
    raise TimeoutError(f"{name}: not loaded and unloaded within 60 s")


@dataclass
class Step:
    step: str  # "<process>: <what>", numbered from its second time in a cycle
    start_ms: float  # medians, from the cycle's LoadModel call
    end_ms: float
    cycles: int  # the cycles it was seen in


@contextmanager
def traced() -> Iterator[Path]:
    """The environment that makes the cluster's scheduler and agent time their steps (it
    is read when they start), and the folder where they write them when they stop."""
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "CYCLE_TRACE_DIR")}
    with tempfile.TemporaryDirectory(prefix="gpuplace-trace-") as folder:
        hook = str(Path(__file__).resolve().parent / "cycle_trace")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [hook, saved["PYTHONPATH"]]))
        os.environ["CYCLE_TRACE_DIR"] = folder
        try:
            yield Path(folder)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def timeline(folder: Path, cycles: Sequence[Cycle]) -> list[Step]:
    """Each step's median start and end over `cycles` (those seen in at least half)."""
    calls = [
        (f"{path.stem.split('-')[0]}: {step}", start, end)
        for path in folder.glob("*.json")
        for step, start, end in json.loads(path.read_text())
    ]
    calls.sort(key=lambda call: call[1])
    seen: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for cycle in cycles:
        origin, last = cycle.marks["client: LoadModel called"], cycle.marks["client: gone seen"]
        times: Counter[str] = Counter()
        for step, start, end in calls:
            if origin <= start <= last:
                times[step] += 1
                key = step if times[step] == 1 else f"{step} #{times[step]}"
                seen[key].append(((start - origin) * 1e3, (end - origin) * 1e3))
        for what, at in cycle.marks.items():
            seen[what].append((0.0, (at - origin) * 1e3))
    steps = [
        Step(
            step,
            statistics.median(start for start, _ in spans),
            statistics.median(end for _, end in spans),
            len(spans),
        )
        for step, spans in seen.items()
        if 2 * len(spans) >= len(cycles)
    ]
    return sorted(steps, key=lambda step: (step.start_ms, step.end_ms))


def measure(cycles: int) -> tuple[list[Row], list[Cycle]]:
    mlserver_bin = ensure_mlserver_venv()
    server = ServerSpec("mlserver", capabilities=("mlserver", "sklearn"))
    timings: dict[str, list[tuple[float, float]]] = {"direct": [], "gpuplace": []}
    traced_cycles: list[Cycle] = []
    with (
        tempfile.TemporaryDirectory(prefix="gpuplace-overhead-") as work,
        LocalCluster(Path(work), [server], mlserver=mlserver_bin) as cluster,
    ):
        artifact = Path(work) / "iris"
        train_iris_models([TrainJob(artifact, "iris")], venv=mlserver_bin.parent.parent)
        cluster.wait_connected()
        replica = cluster.replica("mlserver")
        with SchedulerClient(cluster.client_address) as client:
            for number in range(cycles + 2):  # the first two warm both paths up
                direct = direct_cycle(replica.mlserver, artifact, replica.repository)
                cycle = Cycle()
                through = gpuplace_cycle(client, artifact, number, cycle)
                if number >= 2:
                    timings["direct"].append(direct)
                    timings["gpuplace"].append(through)
                    traced_cycles.append(cycle)
    rows = [
        Row(
            path=path,
            cycles=len(pairs),
            load_ms=statistics.median(load for load, _ in pairs) * 1e3,
            unload_ms=statistics.median(unload for _, unload in pairs) * 1e3,
            cycle_ms=statistics.median(load + unload for load, unload in pairs) * 1e3,
        )
        for path, pairs in timings.items()
    ]
    return rows, traced_cycles


def main(argv: list[str] | None = None) -> int:
    parser = options(__doc__, "overhead", "10 cycles instead of 100")
    parser.add_argument(
        "--trace", action="store_true", help="time the steps of a cycle in each process"
    )
    args = parser.parse_args(argv)
    info, wall = machine(), time.perf_counter()
    cycles = 10 if args.quick else 100
    steps: list[Step] = []
    if args.trace:
        with traced() as folder:
            rows, traced_cycles = measure(cycles)
            steps = timeline(folder, traced_cycles)
    else:
        rows, _ = measure(cycles)
    direct, through = rows
    added_ms = through.cycle_ms - direct.cycle_ms
    ratio = through.cycle_ms / direct.cycle_ms
    print(
        table(
            ("path", "cycles", "load ms", "unload ms", "cycle ms"),
            [
                (
                    r.path,
                    str(r.cycles),
                    f"{r.load_ms:.1f}",
                    f"{r.unload_ms:.1f}",
                    f"{r.cycle_ms:.1f}",
                )
                for r in rows
            ],
        )
    )
    print(f"\ngpuplace / direct: {ratio:.2f}; gpuplace adds {added_ms:.1f} ms per cycle")
    if steps:
        print("\nA cycle through gpuplace, step by step (medians, ms from the LoadModel call):\n")
        print(
            table(
                ("start", "end", "took", "step"),
                [
                    (f"{s.start_ms:.2f}", f"{s.end_ms:.2f}", f"{s.end_ms - s.start_ms:.2f}", s.step)
                    for s in steps
                ],
            )
        )
    report(
        args.out,
        "mlserver_overhead",
        info,
        wall,
        {"quick": args.quick, "trace": args.trace},
        rows=[asdict(row) for row in rows],
        ratio=ratio,
        added_ms_per_cycle=added_ms,
        trace=[asdict(step) for step in steps],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
