"""`gpuplace render` and `gpuplace explain nodes` as a user runs them (no scheduler needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpuplace.cli import main
from gpuplace.render import STORAGE_SECRETS_PATH
from tests.integration.test_packaging import _notes

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "fixtures" / "seed"
SELDON = ROOT / "tests" / "fixtures" / "seldon"
GPUPLACE = Path(sys.executable).parent / "gpuplace"
KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"

NODES = """\
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Node
    metadata:
      name: cpu-node
      labels: {pool: general}
    status:
      allocatable: {cpu: "16", memory: 64Gi}
  - apiVersion: v1
    kind: Node
    metadata:
      name: gpu-small
      labels: {pool: infer-srv, cloud.google.com/gke-accelerator: nvidia-a100-80gb}
    spec:
      taints: [{key: seldon-gpu-srv, value: "true", effect: NoSchedule}]
    status:
      allocatable: {cpu: "64", memory: 512Gi, nvidia.com/gpu: "1"}
"""


def test_render_seed_with_the_binary_and_kubernetes_validate_strict(tmp_path: Path) -> None:
    """The console script end to end; its output checked by kubernetes-validate's own CLI."""
    result = subprocess.run(
        [
            str(GPUPLACE),
            "render",
            "-f",
            str(SEED / "server-node-selector.yaml"),
            "--agent-image",
            "registry.example/gpuplace:1.2.3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in documents] == ["StatefulSet", "Service"]
    assert "requests nvidia.com/gpu 1 but limits it to 2" in result.stderr
    output = tmp_path / "manifests.yaml"
    output.write_text(result.stdout)
    checked = subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "--quiet", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # ... and the validator is not a rubber stamp.
    output.write_text(result.stdout.replace("serviceName:", "serviceNmae:"))
    refused = subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "--quiet", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0


def test_render_seldons_triton_sample_with_its_own_server_config(tmp_path: Path) -> None:
    """Seldon's files as its users have them: its agent and rclone give way to gpuplace's
    agent, which gets the storage Secret; kubernetes-validate's own CLI accepts the output."""
    result = subprocess.run(
        [
            str(GPUPLACE),
            "render",
            "-f",
            str(SELDON / "operator/config/serverconfigs/triton.yaml"),
            str(SELDON / "samples/servers/triton-gpu.yaml"),
            "--inference-container",
            "triton",
            "--storage-secret",
            "s3-creds",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    statefulset = next(yaml.safe_load_all(result.stdout))
    pod = statefulset["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["agent", "triton"]
    agent = pod["containers"][0]
    assert agent["command"] == ["gpuplace", "agent"]
    assert {"name": "gpuplace-storage-secret-0", "secret": {"secretName": "s3-creds"}} in pod[
        "volumes"
    ]
    assert f"{STORAGE_SECRETS_PATH}/s3-creds" in [m["mountPath"] for m in agent["volumeMounts"]]
    assert result.stderr.count("runs Seldon Core 2's agent (agent:latest): replaced") == 1
    assert "container 'rclone' removed" in result.stderr
    output = tmp_path / "manifests.yaml"
    output.write_text(result.stdout)
    checked = subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "--quiet", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_render_refuses_a_storage_secret_that_is_no_secret_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["render", "-f", str(SEED / "server-node-selector.yaml"), "--storage-secret", "a/b"])
    assert exited.value.code == 2
    assert "argument --storage-secret: 'a/b' is not a Secret name" in capsys.readouterr().err


def test_chart_notes_pass_the_storage_secrets_to_render(tmp_path: Path) -> None:
    notes = _notes("gpuplace", (("agent.storageSecrets", "{s3-creds,gcs.key}"),), tmp_path)
    assert (
        "--scheduler-port 9005 \\\n"
        "       --storage-secret s3-creds \\\n"
        "       --storage-secret gcs.key \\\n"
        "       > server-manifests.yaml"
    ) in notes


def test_render_server_with_server_config_from_another_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = tmp_path / "server.yaml"
    server.write_text(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\n"
        "metadata: {name: llm, namespace: seldon-mesh}\n"
        "spec:\n  serverConfig: mlserver-llm\n  replicas: 2\n  extraCapabilities: [model-on-gpu]\n"
    )
    code = main(
        [
            "render",
            "-f",
            str(SEED / "serverconfig-gpu.yaml"),
            "-f",
            str(server),
            "-o",
            "json",
            "--scheduler-host",
            "gpuplace-scheduler.gpuplace",
        ]
    )
    assert code == 0
    listing = json.loads(capsys.readouterr().out)
    statefulset = listing["items"][0]
    assert statefulset["spec"]["replicas"] == 2
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["pool"] == "infer-srv"  # from the ServerConfig
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["SELDON_SCHEDULER_HOST"] == "gpuplace-scheduler.gpuplace"
    assert env["SELDON_SERVER_CAPABILITIES"] == "model-on-gpu"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Server\nmetadata: {name: x}\n", "apiVersion: missing"),
        (
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: x}\n"
            "spec: {podSpec: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuring"
            "Execution: {nodeSelectorTerms: [{matchExpressions: [{key: n, operator: Gt, "
            "values: [x]}]}]}}}}}\n",
            "operator Gt needs exactly one value that is an integer",
        ),
        (
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: x}\n"
            "spec: {serverConfig: nope}\n",
            "no ServerConfig named 'nope'",
        ),
    ],
)
def test_render_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["render", "-f", str(path)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert f"{path}, document 1" in captured.err
    assert captured.out == ""


def test_explain_nodes_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(NODES)
    code = main(
        [
            "explain",
            "nodes",
            "-f",
            str(SEED / "server-node-selector.yaml"),
            "-f",
            str(SEED / "node.yaml"),
            str(nodes),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Server mlserver-llm-local-gpu (namespace seldon-mesh, ServerConfig mlserver)" in out
    assert "  can run on: example-node, gpu-small" in out
    assert (
        "    cpu-node: nodeSelector pool=infer-srv: node label pool is 'general'; nodeSelector "
        "cloud.google.com/gke-accelerator=nvidia-a100-80gb: node has no label "
        "cloud.google.com/gke-accelerator; requests cpu 40, node allocatable 16; requests "
        "memory 360 GiB, node allocatable 64 GiB; requests nvidia.com/gpu 1, node allocatable 0"
    ) in out
    assert "note on example-node: node has no status.allocatable" in out


def test_explain_nodes_json_and_exit_1_when_a_server_fits_nowhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(NODES)
    code = main(
        [
            "explain",
            "nodes",
            "-f",
            str(SEED / "server-node-affinity-gt.yaml"),
            str(nodes),
            "-o",
            "json",
        ]
    )
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    server = data["servers"][0]
    assert list(server) == ["name", "namespace", "serverConfig", "fitsOn", "nodes", "warnings"]
    assert server["fitsOn"] == []
    verdicts = {n["name"]: n for n in server["nodes"]}
    assert verdicts["gpu-small"]["fits"] is False
    assert (
        "nodeAffinity cloud.google.com/gke-accelerator-count Gt 1: node has no label "
        "cloud.google.com/gke-accelerator-count"
    ) in verdicts["gpu-small"]["reasons"]
    assert (
        "taint seldon-gpu-srv=true:NoSchedule is not tolerated"
        not in verdicts["gpu-small"]["reasons"]
    )


def test_explain_nodes_without_nodes_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "nodes", "-f", str(SEED / "server-node-affinity.yaml")]) == 2
    assert "no Node in the files given" in capsys.readouterr().err


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (
        ["model", "load"],
        ["model", "unload"],
        ["model", "status"],
        ["model", "wait"],
        ["server", "status"],
        ["render"],
        ["explain", "nodes"],
        ["explain", "model"],
    ):
        with pytest.raises(SystemExit) as exited:
            main([*command, "--help"])
        assert exited.value.code == 0
        assert f"usage: gpuplace {' '.join(command)}" in capsys.readouterr().out
