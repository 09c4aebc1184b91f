"""The CLI against a scripted scheduler on a real gRPC server (127.0.0.1:0).

A fake is used where a test needs canned statuses (failures with per-server reasons,
multi-GPU servers, a model that never settles); the round trip against the real scheduler
is in test_cli_scheduler.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gpuplace.cli import main
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed"
GiB = 2**30
MiB = 2**20
UUID_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
UUID_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"


class FakeScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """Answers from `models` / `servers`; WatchModels plays `script`, then waits."""

    def __init__(self) -> None:
        self.address = ""
        self.calls: list[tuple[str, Any]] = []
        self.models: dict[str, scheduler_pb2.ModelStatus] = {}
        self.servers: list[scheduler_pb2.ServerStatus] = []
        self.script: list[scheduler_pb2.ModelStatus] = []
        self.load_error: tuple[grpc.StatusCode, str] | None = None
        self.watch_errors: list[grpc.StatusCode] = []
        self.lock = threading.Lock()

    def LoadModel(self, request: Any, context: Any) -> scheduler_pb2.LoadModelResponse:
        self.calls.append(("LoadModel", request))
        if self.load_error is not None:
            context.abort(*self.load_error)
        name = request.model.name
        with self.lock:
            current = self.models.get(name)
            version = 1 if current is None else current.version + 1
            self.models[name] = scheduler_pb2.ModelStatus(
                name=name, version=version, state="Pending", spec=request.model
            )
        return scheduler_pb2.LoadModelResponse(name=name, version=version, changed=True)

    def UnloadModel(self, request: Any, context: Any) -> scheduler_pb2.UnloadModelResponse:
        self.calls.append(("UnloadModel", request))
        if request.name not in self.models:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} not found")
        self.models[request.name].state = "Terminating"
        return scheduler_pb2.UnloadModelResponse()

    def GetModelStatus(self, request: Any, context: Any) -> scheduler_pb2.ModelStatus:
        self.calls.append(("GetModelStatus", request))
        with self.lock:
            status = self.models.get(request.name)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} not found")
        return status

    def ListModels(self, request: Any, context: Any) -> scheduler_pb2.ListModelsResponse:
        self.calls.append(("ListModels", request))
        return scheduler_pb2.ListModelsResponse(models=list(self.models.values()))

    def ListServers(self, request: Any, context: Any) -> scheduler_pb2.ListServersResponse:
        self.calls.append(("ListServers", request))
        return scheduler_pb2.ListServersResponse(servers=self.servers)

    def WatchModels(self, request: Any, context: Any) -> Iterator[scheduler_pb2.ModelStatus]:
        self.calls.append(("WatchModels", request))
        if self.watch_errors:
            context.abort(self.watch_errors.pop(0), "watcher too slow: updates were dropped")
        for status in self.script:
            if request.name and status.name != request.name:
                continue
            with self.lock:
                self.models[status.name] = status
            yield status
        while context.is_active():
            time.sleep(0.02)

    def called(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]


@pytest.fixture
def fake() -> Iterator[FakeScheduler]:
    servicer = FakeScheduler()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    try:
        yield servicer
    finally:
        server.stop(None)


def status(
    name: str,
    state: str,
    *,
    version: int = 1,
    replicas: list[scheduler_pb2.CopyStatus] | None = None,
    reason: str = "",
    server_reasons: dict[str, str] | None = None,
    wanted: int = 1,
) -> scheduler_pb2.ModelStatus:
    placed = replicas or []
    return scheduler_pb2.ModelStatus(
        name=name,
        version=version,
        state=state,
        reason=reason,
        replicas=placed,
        available_replicas=sum(1 for r in placed if r.state == "Available"),
        server_reasons=[
            scheduler_pb2.ServerReason(server=s, reason=r)
            for s, r in (server_reasons or {}).items()
        ],
        spec=common_pb2.ModelSpec(name=name, requirements=["sklearn"], replicas=wanted),
        updated_at=1_700_000_000.5,
    )


def replica(
    server: str, index: int, state: str, uuid: str = "", reason: str = ""
) -> scheduler_pb2.CopyStatus:
    return scheduler_pb2.CopyStatus(
        server=server,
        replica_index=index,
        state=state,
        reason=reason,
        device_uuids=[uuid] if uuid else [],
        footprint_bytes={uuid: 3 * GiB} if uuid else {},
        version=1,
    )


def gpu_server() -> scheduler_pb2.ServerStatus:
    def gpu(uuid: str, index: int, free: int, reserved: int = 0) -> scheduler_pb2.GpuStatus:
        return scheduler_pb2.GpuStatus(
            device=common_pb2.GpuDevice(
                uuid=uuid,
                name="NVIDIA A100",
                index=index,
                total_bytes=40 * GiB,
                free_bytes=free,
                used_bytes=40 * GiB - free,
            ),
            reserved_bytes=reserved,
        )

    return scheduler_pb2.ServerStatus(
        name="gpu-a",
        replicas=[
            scheduler_pb2.ReplicaStatus(
                index=0,
                connected=True,
                capabilities=["mlserver", "model-on-gpu"],
                memory_bytes=8 * GiB,
                overcommit_percentage=0,
                available_memory_bytes=6 * GiB,
                gpus=[gpu(UUID_A, 0, 30 * GiB), gpu(UUID_B, 1, 12 * GiB, reserved=2 * GiB)],
                models=["llama3"],
            )
        ],
    )


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


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
  replicas: 2
  minReplicas: 1
  parameters:
    - {name: implementation, value: mlserver_huggingface.HuggingFaceRuntime}
"""


# ----------------------------------------------------------------------------------------
# model load


def test_load_sends_every_model_of_a_file(
    fake: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["model", "load", "-f", write(tmp_path, "m.yaml", MODELS), "--scheduler", fake.address]
    )
    assert code == 0
    sent = [request.model for request in fake.called("LoadModel")]
    assert [spec.name for spec in sent] == ["iris", "llama3"]
    llama = sent[1]
    assert (llama.gpu_memory, llama.replicas, llama.min_replicas) == ("20Gi", 2, 1)
    assert dict(llama.parameters) == {"implementation": "mlserver_huggingface.HuggingFaceRuntime"}
    assert sent[0].memory == "100Mi" and not sent[0].HasField("replicas")
    out = capsys.readouterr().out
    assert "model/iris requested (version 1)" in out and "model/llama3 requested (version 1)" in out


def test_load_seed_model_as_written(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["model", "load", "-f", str(SEED / "model-pinned.yaml"), "--scheduler", fake.address]
    )
    assert code == 0
    spec = fake.called("LoadModel")[0].model
    assert (spec.name, spec.server, list(spec.requirements)) == (
        "llama3",
        "mlserver-llm-local-gpu",
        ["model-on-gpu"],
    )


BAD = [
    pytest.param(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: [\n",
        "malformed YAML",
        id="malformed",
    ),
    pytest.param(
        MODELS.replace("v1alpha1", "v1", 1),
        "apiVersion: 'mlops.seldon.io/v1' is not allowed",
        id="api-version",
    ),
    pytest.param(
        MODELS.replace("replicas: 2", "replicas: -2"),
        "spec.replicas: -2 (an integer) is not allowed",
        id="negative-replicas",
    ),
    pytest.param(
        MODELS.replace("memory: 100Mi", "memroy: 100Mi"),
        "spec.memroy: unknown field",
        id="unknown-field",
    ),
    pytest.param(
        MODELS.replace("gpuMemory: 20Gi", "gpuMemory: twenty"),
        "spec.gpuMemory: 'twenty' is not a quantity",
        id="bad-quantity",
    ),
]


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"], ["--dry-run=server"]], ids=str)
@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_input_exits_2_and_sends_nothing(
    fake: FakeScheduler,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    text: str,
    message: str,
    dry_run: list[str],
) -> None:
    path = write(tmp_path, "bad.yaml", text)
    code = main(["model", "load", "-f", path, *dry_run, "--scheduler", fake.address])
    assert code == 2
    assert fake.calls == [], "nothing may reach the scheduler"
    err = capsys.readouterr().err
    assert message in err
    assert f"{path}, document" in err


def test_a_bad_document_stops_the_good_ones_too(fake: FakeScheduler, tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", MODELS)
    bad = write(tmp_path, "bad.yaml", MODELS.replace("name: iris", "name: Iris"))
    assert main(["model", "load", "-f", good, "-f", bad, "--scheduler", fake.address]) == 2
    assert fake.calls == []


def test_a_dry_run_checks_the_files_and_needs_no_scheduler(
    fake: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "m.yaml", MODELS)
    # Nothing listens on port 1: a client dry run does not need the scheduler.
    for address in ("127.0.0.1:1", fake.address):
        assert main(["model", "load", "-f", path, "--dry-run", "--scheduler", address]) == 0
        out = capsys.readouterr().out
        assert out.splitlines() == ["model/iris valid (dry run)", "model/llama3 valid (dry run)"]
    assert main(["model", "load", "-f", path, "--dry-run=client", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["spec"]["replicas"]) for m in data["models"]] == [
        ("iris", None),
        ("llama3", 2),
    ]
    assert fake.calls == []


def test_a_server_dry_run_against_a_scheduler_without_plan_model_loads_nothing(
    fake: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dry run is its own RPC: a scheduler that lacks it refuses, never loads."""
    path = write(tmp_path, "m.yaml", MODELS)
    code = main(["model", "load", "-f", path, "--dry-run=server", "--scheduler", fake.address])
    assert code != 0
    assert fake.calls == []
    assert "does not know this call (an older version?)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dry-run", "--wait"], "--wait cannot be used with --dry-run"),
        (["-o", "json"], "-o json goes with --dry-run"),
    ],
)
def test_options_that_do_not_go_together_exit_2(
    fake: FakeScheduler,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    path = write(tmp_path, "m.yaml", MODELS)
    assert main(["model", "load", "-f", path, *options, "--scheduler", fake.address]) == 2
    assert message in capsys.readouterr().err
    assert fake.calls == []


def test_scheduler_side_rejection_exits_2(
    fake: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.load_error = (grpc.StatusCode.INVALID_ARGUMENT, "spec.memory: bad")
    code = main(
        ["model", "load", "-f", write(tmp_path, "m.yaml", MODELS), "--scheduler", fake.address]
    )
    assert code == 2
    assert "model iris: spec.memory: bad (INVALID_ARGUMENT)" in capsys.readouterr().err


def test_load_wait_shows_progress_and_exits_0_when_available(
    fake: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.servers = [gpu_server()]
    fake.script = [
        status(
            "llama3", "Progressing", wanted=2, replicas=[replica("gpu-a", 0, "Loading", UUID_A)]
        ),
        status(
            "llama3",
            "Progressing",
            wanted=2,
            replicas=[
                replica("gpu-a", 0, "Available", UUID_A),
                replica("gpu-a", 1, "Loading", UUID_B),
            ],
        ),
        status(
            "llama3",
            "Available",
            wanted=2,
            replicas=[
                replica("gpu-a", 0, "Available", UUID_A),
                replica("gpu-a", 1, "Available", UUID_B),
            ],
        ),
    ]
    path = write(tmp_path, "m.yaml", MODELS.split("---\n")[1])
    code = main(
        ["model", "load", "-f", path, "--wait", "--timeout", "10s", "--scheduler", fake.address]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    progress = [line for line in captured.err.splitlines() if "llama3 v1" in line]
    assert len(progress) >= 3
    assert "Progressing 0/2: gpu-a-0 Loading" in progress[-3]
    assert "Available 2/2: gpu-a-0 Available, gpu-a-1 Available" in progress[-1]
    assert (
        "llama3 is Available (version 1, 2/2 replicas): gpu-a-0 [gpu0 (GPU-aaaaaaaa)]"
        in captured.out
    )


def test_load_wait_exits_1_with_every_server_reason(
    fake: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script = [
        status(
            "llama3",
            "ScheduleFailed",
            reason="no server can take the model",
            server_reasons={
                "cpu-a": "missing capability model-on-gpu",
                "gpu-a": "needs 20 GiB on one GPU, largest free 12 GiB",
            },
        )
    ]
    path = write(tmp_path, "m.yaml", MODELS.split("---\n")[1])
    code = main(
        ["model", "load", "-f", path, "--wait", "--timeout", "10s", "--scheduler", fake.address]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "llama3 failed (state ScheduleFailed): no server can take the model" in err
    assert "  cpu-a: missing capability model-on-gpu" in err
    assert "  gpu-a: needs 20 GiB on one GPU, largest free 12 GiB" in err


def test_wait_times_out_with_exit_1(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.models["iris"] = status("iris", "Progressing", replicas=[replica("cpu-a", 0, "Loading")])
    started = time.monotonic()
    code = main(["model", "wait", "iris", "--timeout", "0.5s", "--scheduler", fake.address])
    elapsed = time.monotonic() - started
    assert code == 1
    assert 0.4 < elapsed < 5
    assert "iris timed out waiting (state Progressing)" in capsys.readouterr().err


def test_wait_for_available_keeps_waiting_through_schedule_failed(fake: FakeScheduler) -> None:
    fake.models["iris"] = status("iris", "Pending")
    fake.script = [
        status("iris", "ScheduleFailed", server_reasons={"cpu-a": "not enough memory"}),
        status("iris", "Available", replicas=[replica("cpu-a", 0, "Available")]),
    ]
    assert main(["model", "wait", "iris", "--for", "available", "--scheduler", fake.address]) == 0


def test_wait_survives_a_dropped_watch(fake: FakeScheduler) -> None:
    fake.models["iris"] = status("iris", "Pending")
    fake.watch_errors = [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE]
    fake.script = [status("iris", "Available", replicas=[replica("cpu-a", 0, "Available")])]
    code = main(["model", "wait", "iris", "--timeout", "10s", "--scheduler", fake.address])
    assert code == 0
    assert len(fake.called("WatchModels")) == 3


def test_wait_for_available_fails_on_failed(fake: FakeScheduler) -> None:
    fake.models["iris"] = status("iris", "Failed", reason="artifact not found")
    assert main(["model", "wait", "iris", "--scheduler", fake.address]) == 1


def test_wait_for_deleted(fake: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    fake.models["iris"] = status("iris", "Terminating")
    fake.script = [status("iris", "Terminated")]
    assert (
        main(
            [
                "model",
                "wait",
                "iris",
                "--for",
                "deleted",
                "--timeout",
                "5s",
                "--scheduler",
                fake.address,
            ]
        )
        == 0
    )
    assert "iris is deleted" in capsys.readouterr().out
    # Unknown to the scheduler: already deleted.
    assert main(["model", "wait", "nope", "--for", "deleted", "--scheduler", fake.address]) == 0


def test_wait_for_available_of_an_unknown_model_exits_1(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "wait", "nope", "--scheduler", fake.address]) == 1
    assert "no model named 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# unload, status, server status, explain model


def test_unload(fake: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    fake.models["iris"] = status("iris", "Available")
    assert main(["model", "unload", "iris", "--scheduler", fake.address]) == 0
    assert [r.name for r in fake.called("UnloadModel")] == ["iris"]
    assert main(["model", "unload", "nope", "--scheduler", fake.address]) == 1
    assert "no model named 'nope'" in capsys.readouterr().err


def loaded_fake(fake: FakeScheduler) -> None:
    fake.servers = [gpu_server()]
    fake.models["llama3"] = status(
        "llama3",
        "Available",
        wanted=2,
        replicas=[
            replica("gpu-a", 0, "Available", UUID_A),
            replica("gpu-a", 1, "Available", UUID_B),
        ],
    )
    fake.models["iris"] = status(
        "iris",
        "ScheduleFailed",
        reason="no server can take the model",
        server_reasons={"cpu-a": "missing capability sklearn"},
    )


def test_model_status_table(fake: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    loaded_fake(fake)
    assert main(["model", "status", "--scheduler", fake.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "VERSION",
        "STATE",
        "READY",
        "SERVER",
        "REPLICA",
        "REPLICA-STATE",
        "GPU",
    ]
    assert lines[1].split()[:4] == ["iris", "1", "ScheduleFailed", "0/1"]
    assert lines[2].split() == [
        "llama3",
        "1",
        "Available",
        "2/2",
        "gpu-a",
        "0",
        "Available",
        "gpu0",
        "(GPU-aaaaaaaa)",
        "3",
        "GiB",
    ]
    assert lines[3].split() == ["gpu-a", "1", "Available", "gpu1", "(GPU-bbbbbbbb)", "3", "GiB"]
    assert "iris: cpu-a: missing capability sklearn" in lines


def test_model_status_json_is_stable(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded_fake(fake)
    assert main(["model", "status", "-o", "json", "--scheduler", fake.address]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data["models"]] == ["iris", "llama3"]
    llama = data["models"][1]
    assert list(llama) == [
        "name",
        "version",
        "state",
        "reason",
        "availableReplicas",
        "updatedAt",
        "spec",
        "replicas",
        "serverReasons",
        "gpuMemory",
        "memory",
    ]
    assert (
        llama["gpuMemory"]
        == llama["memory"]
        == {
            "declared": None,
            "source": None,
            "placementBytes": 0,
            "learned": [],
        }
    )
    assert llama["updatedAt"] == "2023-11-14T22:13:20.500000Z"
    assert list(llama["spec"]) == [
        "storageUri",
        "requirements",
        "server",
        "memory",
        "gpuMemory",
        "gpus",
        "replicas",
        "minReplicas",
        "parameters",
        "artifactVersion",
        "namespace",
        "secretName",
    ]
    assert llama["replicas"][0] == {
        "server": "gpu-a",
        "replica": 0,
        "state": "Available",
        "reason": None,
        "version": 1,
        "devices": [UUID_A],
        "footprintBytes": {UUID_A: 3 * GiB},
    }
    assert data["models"][0]["serverReasons"] == [
        {"server": "cpu-a", "reason": "missing capability sklearn"}
    ]


def test_model_status_shows_the_namespace_in_table_and_json(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded_fake(fake)
    fake.models["llama3"].spec.namespace = "seldon-mesh"
    assert main(["model", "status", "--scheduler", fake.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "NAME", "VERSION"]
    assert lines[1].split()[:3] == ["-", "iris", "1"]
    assert lines[2].split()[:3] == ["seldon-mesh", "llama3", "1"]
    assert lines[3].split()[:2] == ["gpu-a", "1"]  # llama3's second replica
    assert main(["model", "status", "llama3", "-o", "json", "--scheduler", fake.address]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["namespace"] == "seldon-mesh"


def test_model_status_one_model_yaml(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded_fake(fake)
    assert main(["model", "status", "iris", "-o", "yaml", "--scheduler", fake.address]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert (data["name"], data["state"]) == ("iris", "ScheduleFailed")
    assert main(["model", "status", "nope", "--scheduler", fake.address]) == 1


def test_server_status_table_shows_each_gpu(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded_fake(fake)
    assert main(["server", "status", "--scheduler", fake.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["SERVER", "REPLICA", "STATUS", "CAPABILITIES", "HOST-MEMORY"]
    assert lines[1].split()[:9] == [
        "gpu-a",
        "0",
        "connected",
        "mlserver,model-on-gpu",
        "6",
        "GiB",
        "/",
        "8",
        "GiB",
    ]
    assert (
        "gpu0 NVIDIA A100 (GPU-aaaaaaaa)" in lines[1]
        and "10 GiB / 40 GiB" in lines[1]
        and "30 GiB" in lines[1]
    )
    assert "gpu1 NVIDIA A100 (GPU-bbbbbbbb)" in lines[2] and "28 GiB / 40 GiB" in lines[2]
    assert "12 GiB (2 GiB reserved)" in lines[2]
    assert lines[1].rstrip().endswith("llama3")


def test_server_status_json(fake: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    loaded_fake(fake)
    assert main(["server", "status", "gpu-a", "-o", "json", "--scheduler", fake.address]) == 0
    data = json.loads(capsys.readouterr().out)
    replica0 = data["replicas"][0]
    assert replica0["availableMemoryBytes"] == 6 * GiB
    assert replica0["gpus"][1] == {
        "uuid": UUID_B,
        "name": "NVIDIA A100",
        "index": 1,
        "parentUuid": None,
        "measured": True,
        "totalBytes": 40 * GiB,
        "usedBytes": 28 * GiB,
        "freeBytes": 12 * GiB,
        "reservedBytes": 2 * GiB,
    }
    assert main(["server", "status", "nope", "--scheduler", fake.address]) == 1


def test_a_gpu_whose_memory_is_not_measured_shows_as_unknown(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not 0 bytes free: the agent could not read it (NVIDIA_VISIBLE_DEVICES)."""
    loaded_fake(fake)
    (server,) = [s for s in fake.servers if s.name == "gpu-a"]
    server.replicas[0].gpus.append(
        scheduler_pb2.GpuStatus(device=common_pb2.GpuDevice(uuid="GPU-dark", memory_unknown=True))
    )
    assert main(["server", "status", "gpu-a", "-o", "json", "--scheduler", fake.address]) == 0
    dark = json.loads(capsys.readouterr().out)["replicas"][0]["gpus"][-1]
    assert (dark["measured"], dark["freeBytes"], dark["totalBytes"]) == (False, None, None)
    assert main(["server", "status", "gpu-a", "--scheduler", fake.address]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row == ["GPU-dark", "(memory", "not", "measured)", "unknown", "unknown"]


def test_explain_model_lists_per_server_reasons(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded_fake(fake)
    assert main(["explain", "model", "iris", "--scheduler", fake.address]) == 0
    out = capsys.readouterr().out
    assert "Model iris (version 1): ScheduleFailed" in out
    assert "reason: no server can take the model" in out
    assert "asks for: requirements sklearn; 1 replica" in out
    assert "    cpu-a: missing capability sklearn" in out
    assert main(["explain", "model", "llama3", "--scheduler", fake.address]) == 0
    assert "gpu-a-1: Available on gpu1 (GPU-bbbbbbbb)" in capsys.readouterr().out


def learned_fake(fake: FakeScheduler) -> None:
    """`declared` asks 20Gi and two loads measured 17.3 GiB; `undeclared` (same artifact)
    asks nothing and is placed with the learned figure plus a 10 % margin."""
    measured = scheduler_pb2.LearnedFootprint(
        product="NVIDIA H100",
        gpu_memory_bytes=int(17.3 * GiB),
        samples=2,
        updated_at=1.7e9,
        memory_bytes=300 * MiB,
        memory_samples=1,
    )
    declared = status("declared", "Available", replicas=[replica("gpu-a", 0, "Available", UUID_A)])
    declared.spec.gpu_memory = "20Gi"
    declared.placement_gpu_memory_bytes = 20 * GiB
    declared.gpu_memory_source = "declared"
    declared.learned_footprints.append(measured)
    undeclared = status("undeclared", "Available", replicas=[replica("gpu-a", 1, "Available")])
    undeclared.placement_gpu_memory_bytes = int(17.3 * GiB * 1.1)
    undeclared.gpu_memory_source = "learned"
    undeclared.placement_memory_bytes = 330 * MiB
    undeclared.memory_source = "learned"
    undeclared.learned_footprints.append(measured)
    fake.models.update(declared=declared, undeclared=undeclared)
    fake.models["cpu"] = status("cpu", "Available")


def test_explain_model_shows_declared_vs_measured_gpu_memory(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    learned_fake(fake)
    assert main(["explain", "model", "declared", "--scheduler", fake.address]) == 0
    assert (
        "  GPU memory: declared 20Gi, measured 17.3 GiB on NVIDIA H100 (2 loads)\n"
        in capsys.readouterr().out
    )
    assert main(["explain", "model", "undeclared", "--scheduler", fake.address]) == 0
    out = capsys.readouterr().out
    assert (
        "  GPU memory: not declared; measured 17.3 GiB on NVIDIA H100 (2 loads); placed with "
        "the learned 19.0 GiB per device (the largest measured plus the scheduler's margin)\n"
        "  memory: not declared; measured 300 MiB on NVIDIA H100 (1 load); placed with the "
        "learned 330 MiB (the largest measured plus the scheduler's margin)\n" in out
    )
    assert main(["explain", "model", "cpu", "--scheduler", fake.address]) == 0
    assert "GPU memory" not in capsys.readouterr().out


def test_model_status_json_shows_declared_vs_learned_gpu_memory(
    fake: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    learned_fake(fake)
    assert main(["model", "status", "undeclared", "-o", "json", "--scheduler", fake.address]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["gpuMemory"] == {
        "declared": None,
        "source": "learned",
        "placementBytes": int(17.3 * GiB * 1.1),
        "learned": [
            {
                "product": "NVIDIA H100",
                "gpuMemoryBytes": int(17.3 * GiB),
                "samples": 2,
                "updatedAt": "2023-11-14T22:13:20Z",
            }
        ],
    }
    assert shown["memory"] == {
        "declared": None,
        "source": "learned",
        "placementBytes": 330 * MiB,
        "learned": [
            {
                "product": "NVIDIA H100",
                "memoryBytes": 300 * MiB,
                "samples": 1,
                "updatedAt": "2023-11-14T22:13:20Z",
            }
        ],
    }
    assert main(["model", "status", "declared", "-o", "yaml", "--scheduler", fake.address]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)["gpuMemory"]
    assert (shown["declared"], shown["source"], shown["placementBytes"]) == (
        "20Gi",
        "declared",
        20 * GiB,
    )


# ----------------------------------------------------------------------------------------
# Finding the scheduler


def test_scheduler_from_environment(fake: FakeScheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.models["iris"] = status("iris", "Available")
    monkeypatch.setenv("GPUPLACE_SCHEDULER", fake.address)
    assert main(["model", "status", "iris"]) == 0
    assert [r.name for r in fake.called("GetModelStatus")] == ["iris"]


def test_unreachable_scheduler_exits_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPUPLACE_SCHEDULER", raising=False)
    code = main(["server", "status", "--scheduler", "127.0.0.1:1"])
    assert code == 3
    assert "cannot reach the scheduler at 127.0.0.1:1" in capsys.readouterr().err
