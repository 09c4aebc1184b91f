"""gpuplace end to end: the real scheduler, real agents and real MLServers, as processes.

The cluster of the issue, started once for the module: server ``mlserver`` with two replicas
(capabilities ``mlserver,sklearn,xgboost``, 2Gi host memory each) and server
``mlserver-llm-local-gpu`` with one replica that also has ``model-on-gpu``, 1Gi of host
memory and two simulated 80 GiB GPUs (fake NVML: one with 80 GiB free, one with 50 GiB).

Each scenario uses its own model names and asserts on the scheduler's status *and* on
MLServer's own repository index, and calls ``/v2/models/<name>/infer`` on every replica
that holds the model. The tests run in file order: the retry scenario comes first because it
restarts ``mlserver-0``'s MLServer, which must hold nothing then; the last test stops the
cluster and checks that no process is left.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devharness.cluster import (
    DEFAULT_CAPABILITIES,
    LocalCluster,
    Replica,
    ServerSpec,
    cluster_pids,
)
from devharness.fake_nvml import GiB
from devharness.sklearn_models import IRIS_ROW, IRIS_ROW_CLASS, SKLEARN_IMPLEMENTATION
from devharness.wait import wait_until_sync
from gpuplace.client import ClientError
from gpuplace.output import model_to_dict, server_to_dict
from tests.e2e.conftest import IrisArtifacts

pytestmark = pytest.mark.e2e

MiB = 2**20
GPU_SERVER = "mlserver-llm-local-gpu"
GPU_ROOMY = "GPU-11111111-aaaa"  # 80 GiB free of 80
GPU_TIGHT = "GPU-22222222-bbbb"  # 50 GiB free of 80: the best fit for a 20 GiB model

SERVERS = [
    ServerSpec("mlserver", replicas=2, capabilities=DEFAULT_CAPABILITIES, memory="2Gi"),
    ServerSpec(
        GPU_SERVER,
        replicas=1,
        capabilities=(*DEFAULT_CAPABILITIES, "model-on-gpu"),
        memory="1Gi",
        gpus="fake",
    ),
]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, mlserver_executable: Path
) -> Iterator[LocalCluster]:
    work = tmp_path_factory.mktemp("cluster")
    with LocalCluster(work, SERVERS, mlserver=mlserver_executable) as running:
        yield running
    # Leaving the block stopped everything and raised if any process was left behind.
    assert running.leftover_pids() == {}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def model(name: str, storage_uri: Path, **spec: Any) -> dict[str, Any]:
    """A Model resource as a user writes it (Seldon Core 2's apiVersion and shape)."""
    return {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": "seldon-mesh"},
        "spec": {"storageUri": str(storage_uri), **spec},
    }


def load(cluster: LocalCluster, folder: Path, *models: dict[str, Any], expect: int = 0) -> str:
    """`gpuplace model load -f FILE --wait` with the models written to FILE; returns stderr."""
    path = folder / f"{models[0]['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump_all(models, sort_keys=False))
    result = cluster.gpuplace("model", "load", "-f", str(path), "--wait", "--timeout", "60s")
    assert result.returncode == expect, (
        f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stderr


def status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    """The scheduler's status of one model, in the CLI's JSON shape."""
    with cluster.client() as client:
        return model_to_dict(client.model(name))


def model_gone(cluster: LocalCluster, name: str) -> bool:
    """The scheduler answers NOT_FOUND for `name`."""
    try:
        status(cluster, name)
    except ClientError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            return True
        raise
    return False


def servers(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    with cluster.client() as client:
        return {server.name: server_to_dict(server) for server in client.servers()}


def available_on(state: dict[str, Any]) -> set[str]:
    return {
        f"{replica['server']}-{replica['replica']}"
        for replica in state["replicas"]
        if replica["state"] == "Available"
    }


def mentioned_anywhere(replica: Replica, name: str) -> list[str]:
    """Where this replica shows any trace of `name`: MLServer's index, its log, the agent's
    log, the model repository."""
    traces = []
    if name in replica.mlserver.model_states():
        traces.append("MLServer index")
    if f"'{name}'" in replica.mlserver.log_text() or f"/{name}/" in replica.mlserver.log_text():
        traces.append("MLServer log")
    if f"model {name} " in replica.agent.log_text() or f"/{name}" in replica.agent.log_text():
        traces.append("agent log")
    if (replica.repository / name).exists():
        traces.append("repository folder")
    return traces


def assert_served(cluster: LocalCluster, name: str, where: set[str]) -> None:
    """The scheduler says `name` is Available exactly on `where`; MLServer's own index agrees
    on every replica of the cluster; inference answers on every replica that holds it."""
    state = status(cluster, name)
    assert state["state"] == "Available", state
    assert available_on(state) == where, state
    assert state["availableReplicas"] == len(where)
    for replica in cluster.replicas:
        index = replica.mlserver.model_states()
        if replica.name in where:
            assert index.get(name) == "READY", (replica.name, index)
            assert (replica.repository / name / "model-settings.json").exists()
            assert replica.mlserver.infer(name, [IRIS_ROW, IRIS_ROW]) == [IRIS_ROW_CLASS] * 2
        else:
            assert index.get(name) != "READY", (replica.name, index)


def assert_nowhere(cluster: LocalCluster, name: str, replicas: Sequence[Replica] = ()) -> None:
    """No trace of `name` on `replicas` (default: every replica of the cluster)."""
    for replica in replicas or cluster.replicas:
        assert mentioned_anywhere(replica, name) == [], replica.name


def scheduler_counter(cluster: LocalCluster, metric: str, **labels: str) -> float:
    """The value of one counter sample on the scheduler's /metrics (0 when absent)."""
    for family in text_string_to_metric_families(cluster.scheduler_metrics()):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# --------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------


def test_retry_a_failed_load_lands_on_another_replica(
    cluster: LocalCluster, iris_artifacts: IrisArtifacts, tmp_path: Path
) -> None:
    """Scenario 3: mlserver-0's MLServer is down; the load fails there (visible in the
    status and the metrics) and the model lands on the next capable replica."""
    broken = cluster.replica("mlserver", 0)
    assert broken.mlserver.model_states() == {}, "this scenario must run on an empty mlserver-0"
    failures_before = scheduler_counter(
        cluster, "gpuplace_scheduler_load_failures_total", reason="load_failed"
    )
    retries_before = scheduler_counter(cluster, "gpuplace_scheduler_retries_total")

    broken.mlserver.stop()
    try:
        load(
            cluster,
            tmp_path,
            model("retry-iris", iris_artifacts.with_settings, requirements=["sklearn"]),
        )
        state = status(cluster, "retry-iris")
        assert state["state"] == "Available", state
        # Ties go to the first server by name, then the lowest replica: mlserver-0 was asked
        # first, failed, and the next capable replica took the model.
        (failed,) = [r for r in state["replicas"] if r["state"] == "LoadFailed"]
        assert (failed["server"], failed["replica"]) == ("mlserver", 0), state
        assert failed["reason"], state
        assert available_on(state) == {"mlserver-1"}, state
        assert (
            scheduler_counter(
                cluster, "gpuplace_scheduler_load_failures_total", reason="load_failed"
            )
            >= failures_before + 1
        )
        assert scheduler_counter(cluster, "gpuplace_scheduler_retries_total") >= retries_before + 1
        assert not (broken.repository / "retry-iris").exists()  # a failed load leaves nothing
    finally:
        broken.mlserver.start()  # same ports; nothing loaded (load at startup is off)
    cluster.wait_connected(timeout=30)
    assert_served(cluster, "retry-iris", {"mlserver-1"})
    # the restarted MLServer was never asked again: the failed replica is excluded
    assert "retry-iris" not in broken.mlserver.model_states()


def test_replicas_two_lands_on_both_mlserver_replicas(
    cluster: LocalCluster, iris_artifacts: IrisArtifacts, tmp_path: Path
) -> None:
    """Scenario 1: `replicas: 2` → Available on both replicas of server `mlserver`."""
    load(
        cluster,
        tmp_path,
        model(
            "iris",
            iris_artifacts.with_settings,
            requirements=["sklearn"],
            memory="100Mi",
            replicas=2,
        ),
    )
    assert_served(cluster, "iris", {"mlserver-0", "mlserver-1"})

    # The CLI's own view says the same.
    shown = cluster.gpuplace("model", "status", "iris", "-o", "json", check=True)
    cli_state = yaml.safe_load(shown.stdout)
    assert cli_state["state"] == "Available"
    assert available_on(cli_state) == {"mlserver-0", "mlserver-1"}
    table = cluster.gpuplace("model", "status", "-o", "table", check=True).stdout
    assert "iris" in table and "Available" in table


def test_gpu_model_lands_on_a_device_with_room_and_a_too_big_one_is_refused(
    cluster: LocalCluster, iris_artifacts: IrisArtifacts, tmp_path: Path
) -> None:
    """Scenario 2: a model requiring `model-on-gpu` with `gpuMemory` goes only to the GPU
    server, on a device with room; one too big for any single fake GPU is ScheduleFailed."""
    gpu_replica = cluster.replica(GPU_SERVER, 0)
    load(
        cluster,
        tmp_path,
        # no model-settings.json in this artifact: the agent writes it from the parameters
        model(
            "llama3",
            iris_artifacts.plain,
            requirements=["model-on-gpu"],
            gpuMemory="20Gi",
            parameters=[{"name": "implementation", "value": SKLEARN_IMPLEMENTATION}],
        ),
    )
    assert_served(cluster, "llama3", {f"{GPU_SERVER}-0"})
    (placed,) = status(cluster, "llama3")["replicas"]
    # binpack (the default policy): the device with the least room that still fits
    assert placed["devices"] == [GPU_TIGHT]
    assert gpu_replica.nvml_state is not None
    assert gpu_replica.nvml_state.gpu(GPU_TIGHT).free_bytes >= 20 * GiB
    gpu_view = servers(cluster)[GPU_SERVER]["replicas"][0]
    assert "llama3" in gpu_view["models"]
    assert {g["uuid"] for g in gpu_view["gpus"]} == {GPU_ROOMY, GPU_TIGHT}

    stderr = load(
        cluster,
        tmp_path,
        model(
            "llama3-405b",
            iris_artifacts.with_settings,
            requirements=["model-on-gpu"],
            gpuMemory="90Gi",
        ),
        expect=1,
    )
    assert "needs 90 GiB on 1 GPU, largest room 80 GiB" in stderr
    refused = status(cluster, "llama3-405b")
    assert refused["state"] == "ScheduleFailed", refused
    assert refused["replicas"] == []
    reasons = {item["server"]: item["reason"] for item in refused["serverReasons"]}
    assert reasons == {
        "mlserver": "missing capability model-on-gpu",
        GPU_SERVER: "needs 90 GiB on 1 GPU, largest room 80 GiB",
    }
    assert_nowhere(cluster, "llama3-405b")
    explained = cluster.gpuplace("explain", "model", "llama3-405b", check=True).stdout
    assert "largest room 80 GiB" in explained


def test_pinned_model_fails_and_no_other_server_is_asked(
    cluster: LocalCluster, iris_artifacts: IrisArtifacts, tmp_path: Path
) -> None:
    """Scenario 4: pinned to a server that cannot take it → fails; no other server is tried,
    although `mlserver` could take both models."""
    others = cluster.server_replicas("mlserver")
    room = [r["availableMemoryBytes"] for r in servers(cluster)["mlserver"]["replicas"]]
    assert all(free >= 1500 * 2**20 for free in room), room  # mlserver has room for it

    # (a) refused by placement: 1500Mi of host memory, the GPU server offers 1.1 GiB
    stderr = load(
        cluster,
        tmp_path,
        model(
            "pinned-iris",
            iris_artifacts.with_settings,
            requirements=["sklearn"],
            memory="1500Mi",
            server=GPU_SERVER,
        ),
        expect=1,
    )
    assert "host memory" in stderr
    refused = status(cluster, "pinned-iris")
    assert refused["state"] == "ScheduleFailed", refused
    assert [item["server"] for item in refused["serverReasons"]] == [GPU_SERVER]
    assert refused["replicas"] == []
    assert_nowhere(cluster, "pinned-iris")

    # (b) placed, but the load fails on the pinned server: it is not retried elsewhere
    load(
        cluster,
        tmp_path,
        model("pinned-broken", iris_artifacts.broken, requirements=["sklearn"], server=GPU_SERVER),
        expect=1,
    )
    failed = status(cluster, "pinned-broken")
    assert failed["state"] == "Failed", failed
    (replica,) = failed["replicas"]
    assert (replica["server"], replica["replica"], replica["state"]) == (
        GPU_SERVER,
        0,
        "LoadFailed",
    )
    assert replica["reason"], failed
    gpu_replica = cluster.replica(GPU_SERVER, 0)
    assert "pinned-broken" in gpu_replica.agent.log_text()  # the pinned server was asked ...
    assert gpu_replica.mlserver.model_states().get("pinned-broken") != "READY"
    assert not (gpu_replica.repository / "pinned-broken").exists()  # rolled back there
    assert_nowhere(cluster, "pinned-broken", others)  # ... and no other server was


def test_unload_removes_the_model_from_mlserver_and_the_repository(
    cluster: LocalCluster, iris_artifacts: IrisArtifacts, tmp_path: Path
) -> None:
    """Scenario 5: unload → gone from the scheduler, from MLServer's index and from the
    model repository folder of every replica that held it."""
    load(
        cluster,
        tmp_path,
        model("unload-me", iris_artifacts.with_settings, requirements=["sklearn"], replicas=2),
    )
    assert_served(cluster, "unload-me", {"mlserver-0", "mlserver-1"})
    with cluster.client() as client:
        others = {
            m.name: available_on(model_to_dict(m))
            for m in client.models()
            if m.state == "Available" and m.name != "unload-me"
        }

    # The unload takes milliseconds here: `--wait` must notice a model that is gone before
    # its watch opens (it once waited until its timeout).
    result = cluster.gpuplace("model", "unload", "unload-me", "--wait", "--timeout", "30s")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "model/unload-me unloading\nunload-me is deleted\n", result.stdout
    assert model_gone(cluster, "unload-me")
    for replica in cluster.replicas:
        assert "unload-me" not in replica.mlserver.model_states(), replica.name
        assert not (replica.repository / "unload-me").exists(), replica.name
    for name, where in others.items():  # the other models are untouched
        assert_served(cluster, name, where)


BALLAST_MIB = 96
BALLAST_RUNTIME = f"""
from mlserver import MLModel


class Ballast(MLModel):
    \"\"\"Holds {BALLAST_MIB} MiB while loaded, every byte written, as a model's weights do.\"\"\"

    async def load(self) -> bool:
        self._ballast = b"\\x01" * ({BALLAST_MIB} * 2**20)
        return True
"""


def test_host_memory_is_learned_from_mlserver_and_places_a_model_that_declares_none(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """MLServer's resident memory grows by what a model holds: the agent measures it around
    the load, the scheduler learns it for the artifact and places the next model of that
    artifact that declares no memory with it (plus the margin)."""
    artifact = tmp_path / "ballast"
    artifact.mkdir()
    (artifact / "ballast.py").write_text(BALLAST_RUNTIME)
    (artifact / "model-settings.json").write_text(
        '{"name": "ballast", "implementation": "ballast.Ballast"}'
    )
    load(cluster, tmp_path, model("ballast-declared", artifact, memory="500Mi"))
    declared = status(cluster, "ballast-declared")
    assert declared["state"] == "Available", declared
    (learned,) = declared["memory"]["learned"]
    # The ballast, plus what importing the runtime and registering the model cost (MiB).
    assert BALLAST_MIB * MiB <= learned["memoryBytes"] <= (BALLAST_MIB + 32) * MiB, learned
    assert (learned["product"], learned["samples"]) == ("", 1)
    assert declared["memory"]["source"] == "declared"
    ratio = scheduler_counter(
        cluster, "gpuplace_scheduler_model_memory_ratio", model="ballast-declared"
    )
    assert ratio == pytest.approx(learned["memoryBytes"] / (500 * MiB))

    load(cluster, tmp_path, model("ballast-learned", artifact))
    placed = status(cluster, "ballast-learned")
    assert placed["state"] == "Available", placed
    assert placed["memory"]["source"] == "learned"
    # Its own load was measured too: two samples now, and the figure is the larger one.
    (now,) = placed["memory"]["learned"]
    assert now["samples"] == 2 and now["memoryBytes"] >= learned["memoryBytes"]
    assert placed["memory"]["placementBytes"] == -(-now["memoryBytes"] * 110 // 100)
    explained = cluster.gpuplace("explain", "model", "ballast-learned")
    assert "  memory: not declared; measured " in explained.stdout, explained.stdout
    # They answer no inference: gone before the scenarios that check every model's.
    gone = cluster.gpuplace("model", "unload", "ballast-declared", "ballast-learned", "--wait")
    assert gone.returncode == 0, gone.stderr


def test_scheduler_sigkill_and_restart_keeps_every_model_without_a_second_load(
    cluster: LocalCluster, iris_artifacts: IrisArtifacts, tmp_path: Path
) -> None:
    """Scenario 6: SIGKILL the scheduler and start it again: the agents reconnect, every
    model is as it was (Available ones still Available) and no MLServer loaded anything
    twice."""
    load(cluster, tmp_path, model("survivor", iris_artifacts.with_settings, replicas=2))
    with cluster.client() as client:
        before = {m.name: model_to_dict(m) for m in client.models()}
    assert before["survivor"]["state"] == "Available"
    available = {name: available_on(m) for name, m in before.items() if m["state"] == "Available"}
    loads_before = {
        (replica.name, name): replica.mlserver.load_events(name)
        for replica in cluster.replicas
        for name in before
    }
    assert loads_before[("mlserver-0", "survivor")] == 1

    cluster.kill_scheduler()
    assert not cluster.connected_replicas()
    cluster.restart_scheduler()
    cluster.wait_connected(timeout=60)

    def settled() -> dict[str, dict[str, Any]] | None:
        with cluster.client() as client:
            now = {m.name: model_to_dict(m) for m in client.models()}
        same = set(now) == set(before) and all(
            now[name]["state"] == before[name]["state"] for name in now
        )
        return (
            now if same and all(available_on(now[n]) == w for n, w in available.items()) else None
        )

    after = wait_until_sync(settled, timeout=30, interval=0.2, what="every model as it was")
    assert after is not None
    assert {n: m["version"] for n, m in after.items()} == {
        n: m["version"] for n, m in before.items()
    }
    assert "restored" in cluster.scheduler.log_path.read_text().rsplit("--- start 2", 1)[-1]
    for name, where in available.items():
        assert_served(cluster, name, where)
    by_name = {replica.name: replica for replica in cluster.replicas}
    loads_after = {(at, name): by_name[at].mlserver.load_events(name) for at, name in loads_before}
    assert loads_after == loads_before


def test_an_agent_sigkilled_and_started_again_keeps_its_models_without_a_second_load(
    cluster: LocalCluster, iris_artifacts: IrisArtifacts, tmp_path: Path
) -> None:
    """The agent of a replica is SIGKILLed (MLServer keeps running) and started again within
    the grace: its hello reports what MLServer holds, the model stays where it was, and
    MLServer loads nothing again."""
    load(cluster, tmp_path, model("steady", iris_artifacts.with_settings, server="mlserver"))
    where = available_on(status(cluster, "steady"))
    (replica,) = [r for r in cluster.replicas if r.name in where]
    loads = replica.mlserver.load_events("steady")
    assert loads == 1
    replica.agent.kill()
    replica.agent.start()
    cluster.wait_connected(timeout=60)

    def back() -> dict[str, Any] | None:
        now = status(cluster, "steady")
        return now if now["state"] == "Available" and available_on(now) == where else None

    assert wait_until_sync(back, timeout=30, interval=0.2, what="steady back where it was")
    assert_served(cluster, "steady", where)
    assert replica.mlserver.load_events("steady") == loads
    assert "model steady on " in replica.agent.log_text()
    assert "already loaded (version 1)" in replica.agent.log_text()  # read back from MLServer


def test_mlserver_sigkilled_and_started_again_gets_its_models_back(
    cluster: LocalCluster, iris_artifacts: IrisArtifacts, tmp_path: Path
) -> None:
    """MLServer is SIGKILLed and started again (it loads nothing by itself): the agent finds
    the model gone from its index and loads it again from its folder; the scheduler's copy
    stays where it was."""
    load(cluster, tmp_path, model("phoenix", iris_artifacts.with_settings, server="mlserver"))
    where = available_on(status(cluster, "phoenix"))
    (replica,) = [r for r in cluster.replicas if r.name in where]
    replica.mlserver.kill()
    replica.mlserver.start()

    def served() -> bool:
        return "phoenix" in {
            entry["name"] for entry in replica.mlserver.repository_index(ready=True)
        }

    assert wait_until_sync(served, timeout=60, interval=0.5, what="phoenix loaded again")
    assert status(cluster, "phoenix")["state"] == "Available"
    assert available_on(status(cluster, "phoenix")) == where
    assert_served(cluster, "phoenix", where)
    assert "had lost it (restarted?); loaded again" in replica.agent.log_text()


def test_shutdown_leaves_no_process_behind(cluster: LocalCluster) -> None:
    """The cluster stops cleanly: every model unloaded, every agent exits 0, no scheduler,
    agent or MLServer process is left (checked by pid, process group and command line)."""
    pids = [cluster.scheduler.process.pid] if cluster.scheduler.process else []
    for replica in cluster.replicas:
        pids += [p for p in (replica.agent.pid, replica.mlserver.pid) if p is not None]
    assert len(pids) == 1 + 2 * len(cluster.replicas)
    assert set(pids) <= set(cluster_pids(cluster.work_dir))  # the command-line scan sees them

    cluster.stop()

    assert cluster.leftover_pids() == {}
    assert cluster.problems == []
    assert [replica.agent.returncode for replica in cluster.replicas] == [0] * len(cluster.replicas)
    for pid in pids:
        assert not _alive(pid), pid
    for replica in cluster.replicas:  # the agents unloaded everything on their way out
        assert [p.name for p in replica.repository.iterdir() if not p.name.startswith(".")] == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"
