"""Every benchmark's `--quick` size runs to the end and writes well-formed JSON (the numbers
are the benchmarks' business, recorded in docs/benchmarks.md, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, out: Path, *flags: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", "--out", str(out), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{script}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert f"results written to {out}" in done.stdout
    result = json.loads(out.read_text())
    assert isinstance(result, dict) and result["machine"] and result["elapsed_s"] > 0
    return result


def test_placement_quick(tmp_path: Path) -> None:
    result = run("placement.py", tmp_path / "placement.json")
    summary = result["core_summary"]
    assert isinstance(summary, list)
    for row in summary:
        assert row["replicas"] in (10, 100, 1000) and row["placements_per_s"] > 0
    assert {row["implementation"] for row in summary} == {"index", "schedule", "plain loop"}


@pytest.mark.parametrize(
    ("script", "keys"),
    [
        ("fanin.py", {"agents", "models", "models_per_s", "p99_ms", "scheduler_peak_rss_mb"}),
        ("restart.py", {"case", "agents", "settled_s", "reloads"}),
        ("agent_footprint.py", {"rss_mean_mb", "peak_rss_mb", "cpu_percent"}),
        ("mlserver_overhead.py", {"path", "load_ms", "unload_ms", "cycle_ms"}),
        ("grpc_floor.py", {"server", "models_per_s", "server_cpu_ms_per_model", "bench_cpu_s"}),
    ],
)
def test_quick(script: str, keys: set[str], tmp_path: Path) -> None:
    rows = run(script, tmp_path / "out.json")["rows"]
    assert isinstance(rows, list) and rows
    for row in rows:
        assert keys <= set(row), (script, row)


def test_overhead_trace_quick(tmp_path: Path) -> None:
    """`--trace`: the scheduler and the agent both timed their steps, in a cycle's order."""
    trace = run("mlserver_overhead.py", tmp_path / "out.json", "--trace")["trace"]
    assert isinstance(trace, list)
    steps = [row["step"] for row in trace]
    for step in (
        "scheduler: ClientServicer.LoadModel",
        "agent: ModelManager._load",
        "agent: MLServerClient.load",
        "client: gone seen",
    ):
        assert step in steps, steps
    assert steps.index("scheduler: ClientServicer.LoadModel") < steps.index(
        "agent: MLServerClient.load"
    )
