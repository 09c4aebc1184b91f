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
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import arguments, machine, report, table

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


def gpuplace_cycle(client: SchedulerClient, artifact: Path, number: int) -> tuple[float, float]:
    name = f"through-{number}"
    spec = common_pb2.ModelSpec(name=name, storage_uri=str(artifact), requirements=["sklearn"])
    deadline = time.monotonic() + 60
    statuses = client.watch(name="", deadline=deadline)
    started = time.perf_counter()
    client.load(spec)
    loaded = None
    for status in statuses:
        if status.name != name:
            continue
        if loaded is None and status.state == "Available":
            loaded = time.perf_counter()
            client.unload(name)
        elif loaded is not None and status.state == "Terminated":
            return loaded - started, time.perf_counter() - loaded
    raise TimeoutError(f"{name}: not loaded and unloaded within 60 s")


def measure(cycles: int) -> list[Row]:
    mlserver_bin = ensure_mlserver_venv()
    server = ServerSpec("mlserver", capabilities=("mlserver", "sklearn"))
    timings: dict[str, list[tuple[float, float]]] = {"direct": [], "gpuplace": []}
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
                through = gpuplace_cycle(client, artifact, number)
                if number >= 2:
                    timings["direct"].append(direct)
                    timings["gpuplace"].append(through)
    return [
        Row(
            path=path,
            cycles=len(pairs),
            load_ms=statistics.median(load for load, _ in pairs) * 1e3,
            unload_ms=statistics.median(unload for _, unload in pairs) * 1e3,
            cycle_ms=statistics.median(load + unload for load, unload in pairs) * 1e3,
        )
        for path, pairs in timings.items()
    ]


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, "overhead", "10 cycles instead of 100", argv)
    info, wall = machine(), time.perf_counter()
    rows = measure(10 if args.quick else 100)
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
    report(
        args.out,
        "mlserver_overhead",
        info,
        wall,
        {"quick": args.quick},
        rows=[asdict(row) for row in rows],
        ratio=ratio,
        added_ms_per_cycle=added_ms,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
