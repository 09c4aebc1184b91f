"""`make demo`: gpuplace placing real models on real MLServers, on one machine, in a minute.

1. sets up: MLServer's own virtualenv (once), the fake NVML library, the demo's model;
2. starts a local cluster: the scheduler and two servers, three replicas — `mlserver`
   (2 replicas) and `mlserver-llm-local-gpu` (1 replica, capability `model-on-gpu`), each
   replica a real MLServer with a real gpuplace agent next to it. The GPU server's agent
   reads two simulated GPUs through a fake libnvidia-ml (or the real NVML when this machine
   has a GPU);
3. loads examples/demo/models.yaml and examples/demo/refused.yaml with the real CLI, shows
   where each model landed and why the refused ones were refused, runs one inference;
4. shuts everything down (or, with --keep, stays up until Ctrl-C, the scheduler on its
   default ports so that `gpuplace` commands need no flag; --no-load skips steps 3 to 5: the
   README's tour loads its own models).

The demo's artifact, a scikit-learn iris classifier trained by MLServer's own Python, is
written to examples/artifacts/iris/, where the example Model files' relative storageUri
finds it.

Usage: .venv/bin/python scripts/demo.py [--keep [--no-load]] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devharness import fake_nvml
from devharness.cluster import (
    DEFAULT_CAPABILITIES,
    REPO_ROOT,
    LeftoverProcesses,
    LocalCluster,
    ServerSpec,
    real_gpu_count,
)
from devharness.fake_nvml import GiB
from devharness.mlserver import ensure_mlserver_venv, infer_request
from devharness.sklearn_models import IRIS_ROW, TrainJob, train_iris_models

ARTIFACT = REPO_ROOT / "examples" / "artifacts" / "iris"
EXAMPLES = REPO_ROOT / "examples" / "demo"
LOADED = EXAMPLES / "models.yaml"
REFUSED = EXAMPLES / "refused.yaml"
REFUSED_MODELS = ("llama3-pinned", "llama3-405b")
GPU_SERVER = "mlserver-llm-local-gpu"
IRIS_CLASSES = ("setosa", "versicolor", "virginica")
MARKER = ".gpuplace-demo"
# With --keep the scheduler listens where `gpuplace` looks by default.
DEFAULT_PORTS = {"port": 9004, "agent_port": 9005, "http_port": 9999}

_started = time.monotonic()
_print_lock = threading.Lock()  # the cluster reports from one thread per replica


def say(message: str) -> None:
    with _print_lock:
        print(f"[{time.monotonic() - _started:5.1f}s] {message}", flush=True)


def step(number: int, title: str) -> None:
    print(flush=True)
    say(f"== {number}/5 {title}")


def detail(message: str) -> None:
    say(f"   {message}")


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def gpuplace(cluster: LocalCluster, *args: str) -> int:
    """Run the real CLI against the cluster, its output straight to the terminal."""
    print(f"\n$ gpuplace {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "gpuplace.cli", *args],
        cwd=REPO_ROOT,
        env=cluster.cli_env(),
        check=False,
    )
    return result.returncode


def prepare() -> tuple[Path, int]:
    """MLServer's venv, the fake NVML library, the demo's artifact; and how many real GPUs
    this machine has."""
    step(1, "setting up (the first run installs MLServer: about a minute)")
    mlserver = ensure_mlserver_venv(log=detail)
    detail(f"MLServer 1.7.1 virtualenv: {relative(mlserver.parent.parent)}")
    library = fake_nvml.build()
    detail(f"fake NVML library (simulated GPUs): {relative(library)}")
    gpus = real_gpu_count()
    detail(
        f"real NVIDIA GPUs on this machine: {gpus}"
        + ("" if gpus else " (the GPU server will run on simulated GPUs)")
    )
    if not (ARTIFACT / "model.joblib").exists():
        detail("training the demo model (scikit-learn iris classifier) ...")
        train_iris_models([TrainJob(ARTIFACT, "iris")], venv=mlserver.parent.parent)
    detail(f"model artifact: {relative(ARTIFACT)} (model.joblib + model-settings.json)")
    return mlserver, gpus


def servers(real_gpus: int) -> list[ServerSpec]:
    return [
        ServerSpec("mlserver", replicas=2, capabilities=DEFAULT_CAPABILITIES, memory="4Gi"),
        ServerSpec(
            GPU_SERVER,
            replicas=1,
            capabilities=(*DEFAULT_CAPABILITIES, "model-on-gpu"),  # extraCapabilities
            memory="8Gi",
            gpus="real" if real_gpus else "fake",
        ),
    ]


def fresh_cluster_folder(work_dir: Path) -> Path:
    """`<work>/cluster`, emptied when an earlier demo left it there (and only then)."""
    folder = work_dir / "cluster"
    if folder.exists():
        if not (folder / MARKER).exists():
            raise SystemExit(
                f"error: {folder} exists and was not made by the demo; not touching it"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by scripts/demo.py; removed by its next run\n")
    return folder


def show_cluster(cluster: LocalCluster) -> None:
    for replica in cluster.replicas:
        label = replica.gpu_label
        if replica.gpu_mode == "fake" and replica.nvml_state is not None:
            label += ": " + ", ".join(
                f"{gpu.name} {gpu.free_bytes // GiB}/{gpu.total_bytes // GiB} GiB free"
                for gpu in replica.nvml_state.gpus
            )
        detail(f"{replica.name:<26} MLServer {replica.mlserver.base_url}  [{label}]")


def load_models(cluster: LocalCluster) -> None:
    step(3, "loading the models with the gpuplace CLI")
    code = gpuplace(cluster, "model", "load", "-f", relative(LOADED), "--wait", "--timeout", "90s")
    if code != 0:
        raise RuntimeError(f"gpuplace model load exited {code}")
    print(flush=True)
    say("== the next two are refused on purpose (exit 1 is expected):")
    code = gpuplace(cluster, "model", "load", "-f", relative(REFUSED), "--wait", "--timeout", "30s")
    if code != 1:
        raise RuntimeError(f"gpuplace model load of the refused models exited {code}, not 1")


def show_placement(cluster: LocalCluster) -> None:
    step(4, "where each model landed, and why the refused ones were refused")
    for args in (("model", "status"), ("server", "status")):
        if gpuplace(cluster, *args) != 0:
            raise RuntimeError(f"gpuplace {' '.join(args)} failed")
    for name in REFUSED_MODELS:
        if gpuplace(cluster, "explain", "model", name) != 0:
            raise RuntimeError(f"gpuplace explain model {name} failed")


def infer(cluster: LocalCluster) -> None:
    step(5, "one inference, straight to MLServer (V2 protocol)")
    replica = cluster.replica("mlserver", 0)
    body = json.dumps(infer_request([IRIS_ROW]))
    print(
        f"\n$ curl -s -X POST {replica.mlserver.base_url}/v2/models/iris/infer "
        f"-H 'Content-Type: application/json' -d '{body}'",
        flush=True,
    )
    started = time.monotonic()
    predicted = replica.mlserver.infer("iris", [IRIS_ROW])
    elapsed_ms = (time.monotonic() - started) * 1000
    print(f"outputs[0].data = {predicted}", flush=True)
    label = IRIS_CLASSES[int(predicted[0])] if predicted else "?"
    detail(
        f"iris on {replica.name} predicts class {predicted[0]} ({label}) for the flower "
        f"{list(IRIS_ROW)} in {elapsed_ms:.0f} ms"
    )


def wait_for_ctrl_c(cluster: LocalCluster) -> None:
    print(flush=True)
    say("== the cluster stays up (--keep). Endpoints:")
    print(cluster.describe(), flush=True)
    print(
        "\nTry:  .venv/bin/gpuplace model status   (the README's tour has more)\n"
        f"Logs: {relative(cluster.work_dir)}/*/ (agent.log, mlserver/mlserver.log, "
        "scheduler/scheduler.log)\n"
        "Stop: press Ctrl-C (every model is unloaded, every process stopped).",
        flush=True,
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # even where the shell started us with SIGINT ignored
    try:
        signal.pause()
    except KeyboardInterrupt:
        print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="stay up until Ctrl-C (or SIGTERM), the scheduler on its default ports "
        "(9004 clients, 9005 agents, 9999 HTTP)",
    )
    parser.add_argument(
        "--no-load",
        action="store_true",
        help="with --keep: start the cluster and load nothing (for the README's tour)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=REPO_ROOT / ".demo",
        help="folder for the artifact, the state and every log (default: .demo/)",
    )
    args = parser.parse_args(argv)
    if args.no_load and not args.keep:
        parser.error("--no-load needs --keep (without it the demo would stop at once)")
    work_dir: Path = args.work_dir.absolute()
    work_dir.mkdir(parents=True, exist_ok=True)

    print(
        "gpuplace demo: the scheduler and 3 server replicas (a real MLServer and a gpuplace "
        "agent each) on this machine",
        flush=True,
    )
    mlserver, real_gpus = prepare()

    step(2, "starting the cluster")
    cluster = LocalCluster(
        fresh_cluster_folder(work_dir),
        servers(real_gpus),
        scheduler_settings=DEFAULT_PORTS if args.keep else None,
        mlserver=mlserver,
        log=detail,
    )
    failed = False
    try:
        cluster.start()
        show_cluster(cluster)
        if not args.no_load:
            load_models(cluster)
            show_placement(cluster)
            infer(cluster)
        if args.keep:
            wait_for_ctrl_c(cluster)
    except KeyboardInterrupt:
        print(flush=True)
        say("interrupted")
    except Exception as exc:
        failed = True
        print(f"\nerror: {exc}\n\n{cluster.log_tails(lines=20)}", file=sys.stderr, flush=True)
    finally:
        print(flush=True)
        say("== shutting down: unload every model, stop agents, scheduler and MLServers")
        try:
            cluster.stop()
        except LeftoverProcesses as exc:
            print(f"error: the cluster did not stop cleanly:\n{exc}", file=sys.stderr)
            failed = True
    say(f"logs are in {relative(cluster.work_dir)}/")
    if failed:
        say("demo FAILED")
        return 1
    say(f"demo done in {time.monotonic() - _started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
