"""Idle agent benchmark: what one agent costs its pod when nothing happens.

Run from the repository root:

    .venv/bin/python bench/agent_footprint.py [--quick] [--out bench/results/agent.json]

Starts a local cluster of one GPU replica (the real scheduler, a real MLServer and a real
agent reading two simulated GPUs through the fake NVML library, polling them every 10 s as
by default), waits until the agent is connected, then samples the agent process for 60 s
(`--quick`: 10 s): its resident memory (mean and peak of the samples, and the kernel's
peak) and its CPU use (CPU seconds over wall seconds).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import ProcessUsage, arguments, machine, report, table

from devharness.cluster import LocalCluster, ServerSpec
from devharness.mlserver import ensure_mlserver_venv


@dataclass
class Row:
    seconds: float
    samples: int
    rss_mean_mb: float
    rss_max_mb: float
    peak_rss_mb: float  # VmHWM: the most it ever held, start included
    cpu_percent: float


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def measure(seconds: float) -> Row:
    mlserver = ensure_mlserver_venv()
    # The agent's own default polling interval (the test clusters poll faster).
    flags = {"resource-report-interval-s": "10"}
    server = ServerSpec("gpu", capabilities=("mlserver", "sklearn"), gpus="fake", agent_flags=flags)
    with (
        tempfile.TemporaryDirectory(prefix="gpuplace-agent-") as work,
        LocalCluster(Path(work), [server], mlserver=mlserver) as cluster,
    ):
        cluster.wait_connected()
        agent = cluster.replica("gpu").agent
        assert agent.pid is not None
        time.sleep(2.0)  # past the first readings after the hello
        before, started = ProcessUsage.of(agent.pid), time.perf_counter()
        samples = []
        while time.perf_counter() - started < seconds:
            samples.append(rss(agent.pid))
            time.sleep(0.5)
        after, wall = ProcessUsage.of(agent.pid), time.perf_counter() - started
    return Row(
        seconds=wall,
        samples=len(samples),
        rss_mean_mb=sum(samples) / len(samples) / 2**20,
        rss_max_mb=max(samples) / 2**20,
        peak_rss_mb=after.peak_rss_bytes / 2**20,
        cpu_percent=100 * (after.cpu_s - before.cpu_s) / wall,
    )


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, "agent", "sample 10 s instead of 60 s", argv)
    info, wall = machine(), time.perf_counter()
    row = measure(10.0 if args.quick else 60.0)
    print(
        table(
            ("seconds", "samples", "RSS mean MB", "RSS max MB", "peak RSS MB", "CPU %"),
            [
                (
                    f"{row.seconds:.0f}",
                    str(row.samples),
                    f"{row.rss_mean_mb:.1f}",
                    f"{row.rss_max_mb:.1f}",
                    f"{row.peak_rss_mb:.1f}",
                    f"{row.cpu_percent:.2f}",
                )
            ],
        )
    )
    parameters = {"quick": args.quick, "nvml": "fake library, 2 GPUs, 10 s polling"}
    report(args.out, "agent_footprint", info, wall, parameters, rows=[asdict(row)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
