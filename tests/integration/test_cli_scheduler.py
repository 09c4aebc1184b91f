"""The CLI against the real scheduler (ephemeral ports) with simulated agents.

The scheduler runs in this test's event loop, so the CLI (synchronous gRPC) runs in a
worker thread: `await cli(...)`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devharness.sim_agent import GiB, SimAgent, SimGpu
from gpuplace.cli import main
from tests.support.scheduler import SchedulerHandle, running_scheduler
from tests.support.wait import wait_until

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed"
UUID = "GPU-12345678-aaaa-bbbb-cccc-000000000001"

MODELS = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: iris}
spec:
  storageUri: https://models.example/iris
  requirements: [sklearn]
  memory: 100Mi
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: llama3}
spec:
  storageUri: https://models.example/llama3
  requirements: [model-on-gpu]
  gpuMemory: 20Gi
"""


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[SchedulerHandle, SimAgent, SimAgent]]:
    async with running_scheduler(tmp_path) as scheduler:
        cpu = SimAgent(scheduler.agent_address, "cpu-a", capabilities=("mlserver", "sklearn"))
        gpu = SimAgent(
            scheduler.agent_address,
            "gpu-a",
            capabilities=("mlserver", "sklearn", "model-on-gpu"),
            gpus=[SimGpu(UUID, total_bytes=40 * GiB, free_bytes=30 * GiB)],
        )
        await cpu.connect()
        await gpu.connect()
        await wait_until(lambda: cpu.welcomed and gpu.welcomed, what="both agents welcomed")
        try:
            yield scheduler, cpu, gpu
        finally:
            await cpu.disconnect()
            await gpu.disconnect()


async def test_load_wait_status_unload_round_trip(
    cluster: tuple[SchedulerHandle, SimAgent, SimAgent],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scheduler, _cpu, gpu = cluster
    address = scheduler.client_address
    path = tmp_path / "models.yaml"
    path.write_text(MODELS)

    code = await cli(
        "model", "load", "-f", str(path), "--wait", "--timeout", "20s", "--scheduler", address
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "model/iris requested (version 1)" in captured.out
    assert "llama3 is Available (version 1, 1/1 replicas): gpu-a-0" in captured.out
    assert "llama3 v1" in captured.err  # the progress display
    assert [load.model for load in gpu.loads if load.model == "llama3"] == ["llama3"]
    assert gpu.loads[-1].gpu_memory_bytes == 20 * GiB or any(
        load.gpu_memory_bytes == 20 * GiB for load in gpu.loads
    )

    assert await cli("model", "status", "-o", "json", "--scheduler", address) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert models["iris"]["state"] == "Available"
    assert models["iris"]["spec"]["memory"] == "100Mi"
    llama = models["llama3"]
    assert llama["state"] == "Available"
    assert [(r["server"], r["replica"], r["state"]) for r in llama["replicas"]] == [
        ("gpu-a", 0, "Available")
    ]
    assert llama["replicas"][0]["devices"] == [UUID]

    assert await cli("model", "status", "--scheduler", address) == 0
    table = capsys.readouterr().out
    assert "llama3" in table and "gpu0 (GPU-12345678)" in table
    assert "missing capability" not in table  # placed: the other servers' reasons are left out

    assert await cli("explain", "model", "llama3", "--scheduler", address) == 0
    explained = capsys.readouterr().out
    assert "  the other servers:\n    cpu-a: missing capability model-on-gpu" in explained

    assert await cli("server", "status", "-o", "json", "--scheduler", address) == 0
    servers = {s["name"]: s for s in json.loads(capsys.readouterr().out)["servers"]}
    assert set(servers) == {"cpu-a", "gpu-a"}
    gpu_replica = servers["gpu-a"]["replicas"][0]
    assert gpu_replica["connected"] is True
    assert "model-on-gpu" in gpu_replica["capabilities"]
    assert gpu_replica["gpus"][0]["uuid"] == UUID
    assert gpu_replica["gpus"][0]["totalBytes"] == 40 * GiB

    assert await cli("server", "status", "--scheduler", address) == 0
    assert "GPU-12345678" in capsys.readouterr().out

    code = await cli(
        "model", "unload", "llama3", "--wait", "--timeout", "20s", "--scheduler", address
    )
    assert code == 0, capsys.readouterr().err
    assert "llama3 is deleted" in capsys.readouterr().out
    assert [u.model for u in gpu.unloads] == ["llama3"]
    assert await cli("model", "wait", "llama3", "--for", "deleted", "--scheduler", address) == 0
    assert await cli("model", "status", "llama3", "--scheduler", address) == 1


async def test_bad_input_reaches_nothing(
    cluster: tuple[SchedulerHandle, SimAgent, SimAgent], tmp_path: Path
) -> None:
    scheduler, cpu, gpu = cluster
    path = tmp_path / "bad.yaml"
    path.write_text(MODELS.replace("memory: 100Mi", "memory: -100Mi"))
    assert await cli("model", "load", "-f", str(path), "--scheduler", scheduler.client_address) == 2
    assert scheduler.service.models() == []
    assert cpu.loads == [] and gpu.loads == []


async def test_refusal_exits_1_with_reasons_and_explain_model_shows_them(
    cluster: tuple[SchedulerHandle, SimAgent, SimAgent],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scheduler, _cpu, _gpu = cluster
    address = scheduler.client_address
    path = tmp_path / "huge.yaml"
    path.write_text(MODELS.split("---\n")[1].replace("20Gi", "35Gi"))
    code = await cli(
        "model", "load", "-f", str(path), "--wait", "--timeout", "20s", "--scheduler", address
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "llama3 failed (state ScheduleFailed)" in err
    assert "  cpu-a: " in err and "  gpu-a: " in err

    assert await cli("explain", "model", "llama3", "--scheduler", address) == 0
    out = capsys.readouterr().out
    assert "Model llama3 (version 1): ScheduleFailed" in out
    assert "GPU memory 35Gi on each of 1 device" in out
    assert "servers that could not take it:" in out
    assert "    gpu-a: " in out


async def test_seed_model_pinned_to_an_unknown_server_fails_with_that_reason(
    cluster: tuple[SchedulerHandle, SimAgent, SimAgent], capsys: pytest.CaptureFixture[str]
) -> None:
    scheduler, _cpu, _gpu = cluster
    code = await cli(
        "model",
        "load",
        "-f",
        str(SEED / "model-pinned.yaml"),
        "--wait",
        "--timeout",
        "20s",
        "--scheduler",
        scheduler.client_address,
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "mlserver-llm-local-gpu" in err


async def test_a_server_dry_run_prints_the_plan_and_loads_nothing(
    cluster: tuple[SchedulerHandle, SimAgent, SimAgent],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scheduler, cpu, gpu = cluster
    address = scheduler.client_address
    path = tmp_path / "models.yaml"
    path.write_text(MODELS)

    code = await cli("model", "load", "-f", str(path), "--dry-run=server", "--scheduler", address)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "VERSION",
        "CHANGED",
        "STATE",
        "PLACED",
        "SERVER",
        "REPLICA",
        "PLAN",
        "GPU",
    ]
    assert lines[1].split() == [
        "iris",
        "1",
        "yes",
        "Progressing",
        "1/1",
        "cpu-a",
        "0",
        "Planned",
        "-",
    ]
    assert lines[2].split() == [
        "llama3",
        "1",
        "yes",
        "Progressing",
        "1/1",
        "gpu-a",
        "0",
        "Planned",
        "gpu0",
        "(GPU-12345678)",
    ]
    assert "dry run: nothing was loaded or stored" in captured.err
    assert scheduler.service.models() == []
    assert cpu.loads == [] and gpu.loads == []

    code = await cli(
        "model", "load", "-f", str(path), "--dry-run=server", "-o", "json", "--scheduler", address
    )
    assert code == 0
    plans = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert [(r["server"], r["replica"], r["state"]) for r in plans["llama3"]["replicas"]] == [
        ("gpu-a", 0, "Planned")
    ]
    assert (plans["llama3"]["version"], plans["llama3"]["changed"]) == (1, True)
    assert plans["llama3"]["serverReasons"] == [
        {"server": "cpu-a", "reason": "missing capability model-on-gpu"}
    ]


async def test_a_server_dry_run_of_a_model_that_would_be_refused_exits_1_with_reasons(
    cluster: tuple[SchedulerHandle, SimAgent, SimAgent],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scheduler, _cpu, gpu = cluster
    path = tmp_path / "huge.yaml"
    path.write_text(MODELS.split("---\n")[1].replace("20Gi", "35Gi"))
    code = await cli(
        "model",
        "load",
        "-f",
        str(path),
        "--dry-run=server",
        "--scheduler",
        scheduler.client_address,
    )
    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines()[1].split()[:5] == ["llama3", "1", "yes", "ScheduleFailed", "0/1"]
    assert "llama3: cpu-a: missing capability model-on-gpu" in out
    assert "llama3: gpu-a: needs 35 GiB" in out
    assert scheduler.service.models() == [] and gpu.loads == []


async def test_a_partial_placement_shows_as_k_of_n_replicas(
    cluster: tuple[SchedulerHandle, SimAgent, SimAgent],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scheduler, _cpu, _gpu = cluster
    address = scheduler.client_address
    path = tmp_path / "llama3.yaml"
    # One replica has a GPU: two are asked for, one is enough (minReplicas 1).
    path.write_text(MODELS.split("---\n")[1] + "  replicas: 2\n  minReplicas: 1\n")
    code = await cli(
        "model", "load", "-f", str(path), "--wait", "--timeout", "20s", "--scheduler", address
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "llama3 is Available (version 1, 1/2 replicas): gpu-a-0" in captured.out
    assert await cli("model", "status", "--scheduler", address) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[1].split()[:4] == ["llama3", "1", "Available", "1/2"]
    assert "llama3: partial: 1/2 replicas fit (minReplicas 1); the rest is retried" in table


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("localhost:99999", "port 99999 is out of range (1 to 65535)"),
        ("localhost", "expected HOST:PORT (a port is required: gRPC would pick 443)"),
        ("http://localhost:9004", "expected HOST:PORT"),
    ],
)
async def test_a_scheduler_address_that_is_not_host_port_is_refused(
    address: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("model", "status", "--scheduler", address) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: --scheduler {address!r}: {says}"), error


async def test_the_likely_port_mix_ups_are_named(
    cluster: tuple[SchedulerHandle, SimAgent, SimAgent],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The CLI names the port it probably meant; the scheduler logs no traceback for a gRPC
    client on its HTTP port."""
    scheduler, _, _ = cluster
    assert await cli("model", "status", "--scheduler", scheduler.agent_address) == 3
    assert "is it the scheduler's agent port" in capsys.readouterr().err
    http = scheduler.http_url.removeprefix("http://")
    assert await cli("model", "status", "--scheduler", http) == 3
    assert "is it the scheduler's HTTP port" in capsys.readouterr().err
    assert not [r for r in caplog.records if r.exc_info], caplog.text
