"""`render` with Seldon Core 2's own files: its ServerConfigs run Seldon's agent and rclone.

Every Server in tests/fixtures/seldon renders, with each set of Seldon's own ServerConfigs,
into manifests that pass kubernetes-validate --strict, with gpuplace's agent in place of
Seldon's. The other tests pin each rule down with small files of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from contract.names import SUBDOMAIN_RULE
from gpuplace.render import (
    AGENT_READS,
    STORAGE_SECRETS_PATH,
    Rendered,
    RenderSettings,
    render_bundle,
)
from gpuplace.resources import Bundle, ResourceError, load_files, parse_text

SELDON = Path(__file__).resolve().parents[1] / "fixtures" / "seldon"
K8S_VERSION = kubernetes_validate.latest_version()
SETTINGS = RenderSettings(
    agent_image="registry.example/gpuplace:9.9", scheduler_host="gpuplace-scheduler.gpuplace"
)
# Seldon's ServerConfigs named mlserver and triton, as its kustomize files, its experimental
# ones and its Helm chart (rendered, with other kinds around them) install them.
SERVER_CONFIGS = {
    "operator": (
        "operator/config/serverconfigs/mlserver.yaml",
        "operator/config/serverconfigs/triton.yaml",
    ),
    "experimental": (
        "operator/config/serverconfigs-experimental/mlserver.yaml",
        "operator/config/serverconfigs-experimental/triton.yaml",
    ),
    "helm": ("k8s/yaml/components.yaml",),
}
# Server files Seldon keeps on purpose as bad input.
REFUSED = {"samples/servers/mlserver-badname.yaml": "'mlserver.name' is not a DNS-1123 label"}
# The models folder variable of each of Seldon's inference containers.
MODELS_DIR = {"mlserver": "MLSERVER_MODELS_DIR", "triton": "SERVER_MODELS_DIR"}


def server_files() -> list[str]:
    """Every file under tests/fixtures/seldon that holds a Server."""
    found = []
    for path in sorted(SELDON.rglob("*.yaml")):
        documents = yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if any(isinstance(doc, dict) and doc.get("kind") == "Server" for doc in documents):
            found.append(path.relative_to(SELDON).as_posix())
    return found


def by_name(items: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items or []}


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def pod_of(rendered: Rendered, index: int = 0) -> dict[str, Any]:
    statefulsets = [m for m in rendered.manifests if m["kind"] == "StatefulSet"]
    pod: dict[str, Any] = statefulsets[index]["spec"]["template"]["spec"]
    return pod


def render(*texts: str, settings: RenderSettings = SETTINGS) -> Rendered:
    bundle = Bundle()
    for number, text in enumerate(texts):
        parse_text(text, f"file{number}.yaml", bundle)
    return render_bundle(bundle, settings)


def messages(rendered: Rendered) -> list[str]:
    return [warning.message for warning in rendered.warnings]


# ----------------------------------------------------------------------------------------
# Seldon's own files


def test_the_fixtures_hold_seldons_server_files() -> None:
    found = server_files()
    assert len(found) >= 13, found
    assert {"samples/servers/triton-gpu.yaml", "k8s/yaml/servers.yaml"} <= set(found)


def assert_seldon_pod_became_gpuplaces(statefulset: dict[str, Any]) -> None:
    pod = statefulset["spec"]["template"]["spec"]
    containers = by_name(pod["containers"])
    assert "rclone" not in containers
    agent = containers.pop("agent")
    assert agent["image"] == SETTINGS.agent_image
    assert agent["command"] == ["gpuplace", "agent"]
    assert all("seldon-agent" not in c["image"] for c in pod["containers"])
    # Only the variables gpuplace's agent reads remain of Seldon's agent settings.
    variables = env(agent)
    seldons = {n for n in variables if n.startswith(("SELDON_", "CONTROL_PLANE_", "ENVOY_"))}
    assert seldons <= AGENT_READS
    assert variables["SELDON_SCHEDULER_HOST"] == SETTINGS.scheduler_host
    # The inference container is Seldon's mlserver or triton, found by name.
    (name,) = containers
    inference = containers[name]
    assert variables["MEMORY_REQUEST"]["resourceFieldRef"]["containerName"] == name
    # The agent writes where the inference server reads, on a volume both mount there.
    folder = env(inference)[MODELS_DIR[name]]
    assert agent["args"] == [f"--model-repository={folder}"]
    holders = {(m["name"], m["mountPath"]) for m in inference["volumeMounts"]}
    holders = {(volume, path) for volume, path in holders if folder.startswith(path)}
    assert holders & {(m["name"], m["mountPath"]) for m in agent["volumeMounts"]}
    # Every mount names a volume of the pod (or a claim template), and no hook calls the
    # drainer of Seldon's agent.
    claims = {t["metadata"]["name"] for t in statefulset["spec"].get("volumeClaimTemplates", [])}
    volumes = set(by_name(pod.get("volumes"))) | claims
    for container in pod["containers"]:
        assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
        assert "preStop" not in container.get("lifecycle", {})


@pytest.mark.parametrize("configs", sorted(SERVER_CONFIGS))
@pytest.mark.parametrize("server_file", server_files())
def test_every_seldon_server_renders_with_gpuplaces_agent_valid_for_kubernetes(
    server_file: str, configs: str
) -> None:
    files = [SELDON / name for name in (*SERVER_CONFIGS[configs], server_file)]
    if server_file in REFUSED:
        with pytest.raises(ResourceError, match=REFUSED[server_file]):
            load_files(files)
        return
    bundle = load_files(files)
    rendered = render_bundle(bundle, SETTINGS)
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    statefulsets = [m for m in rendered.manifests if m["kind"] == "StatefulSet"]
    assert len(statefulsets) == len(bundle.servers) >= 1
    for statefulset in statefulsets:
        assert_seldon_pod_became_gpuplaces(statefulset)
    replaced = [m for m in messages(rendered) if "runs Seldon Core 2's agent" in m]
    assert len(replaced) == len(bundle.servers)


def test_seldons_pvc_sample_mounts_its_models_claim_into_the_agent() -> None:
    """Seldon's rclone read the local models; gpuplace's agent reads them itself."""
    bundle = load_files(
        [SELDON / SERVER_CONFIGS["operator"][0], SELDON / "samples/examples/k8s-pvc/server.yaml"]
    )
    rendered = render_bundle(bundle, SETTINGS)
    agent = by_name(pod_of(rendered)["containers"])["agent"]
    assert {"name": "models-pvc", "mountPath": "/var/models"} in agent["volumeMounts"]
    # ... and only there may a local storageUri (/var/models/iris) read.
    assert env(agent)["GPUPLACE_AGENT_LOCAL_ARTIFACT_ROOTS"] == "/var/models"
    assert "models-pvc" in by_name(pod_of(rendered)["volumes"])
    assert any(
        "rclone' removed" in m and "/var/models moved to the agent" in m for m in messages(rendered)
    )


# ----------------------------------------------------------------------------------------
# Seldon's agent replaced

SELDON_LIKE = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: ServerConfig
metadata: {name: seldon-like}
spec:
  podSpec:
    serviceAccountName: seldon-server
    containers:
      - name: rclone
        image: seldonio/seldon-rclone:2.9.0
        lifecycle: {preStop: {httpGet: {path: terminate, port: 9107}}}
        volumeMounts:
          - {name: models, mountPath: /mnt/agent}
          - {name: rclone-config, mountPath: /rclone}
      - name: agent
        image: registry.example/seldonio/seldon-agent:2.9.0
        imagePullPolicy: Always
        ports: [{name: grpc, containerPort: 9501}]
        lifecycle: {preStop: {httpGet: {path: terminate, port: 9107}}}
        resources: {requests: {cpu: 100m, memory: 256Mi}}
        env:
          - {name: SELDON_SERVER_CAPABILITIES, value: "mlserver,sklearn"}
          - {name: SELDON_OVERCOMMIT_PERCENTAGE, value: "20"}
          - {name: SELDON_SCHEDULER_HOST, value: seldon-scheduler}
          - {name: SELDON_SCHEDULER_PORT, value: "9005"}
          - {name: SELDON_DRAINER_PORT, value: "9107"}
          - {name: SELDON_ENVOY_HOST, value: seldon-mesh}
          - {name: CONTROL_PLANE_SECURITY_PROTOCOL, value: PLAINTEXT}
          - {name: AGENT_TLS_FOLDER_PATH, value: ""}
          - {name: NVIDIA_VISIBLE_DEVICES, value: all}
        volumeMounts:
          - {name: models, mountPath: /mnt/agent}
          - {name: agent-config, mountPath: /mnt/config}
      - name: mlserver
        image: seldonio/mlserver:1.7.1
        lifecycle: {preStop: {httpGet: {path: terminate, port: 9107}}}
        env:
          - {name: MLSERVER_HTTP_PORT, value: "9000"}
          - {name: MLSERVER_MODELS_DIR, value: /mnt/agent/models}
        resources: {requests: {memory: 1Gi}}
        volumeMounts: [{name: models, mountPath: /mnt/agent, readOnly: true}]
    volumes:
      - {name: models, emptyDir: {}}
      - {name: agent-config, configMap: {name: seldon-agent}}
      - {name: rclone-config, secret: {secretName: rclone}}
"""


def server(body: str = "", name: str = "s1", config: str = "seldon-like") -> str:
    return (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\n"
        f"metadata: {{name: {name}}}\nspec:\n  serverConfig: {config}\n{body}"
    )


def test_seldons_agent_is_replaced_keeping_what_applies() -> None:
    rendered = render(SELDON_LIKE, server("  extraCapabilities: [gpu]\n"))
    pod = pod_of(rendered)
    containers = by_name(pod["containers"])
    assert list(containers) == ["agent", "mlserver"]
    agent = containers["agent"]
    assert agent["image"] == SETTINGS.agent_image
    assert agent["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}}
    assert agent["ports"][0]["name"] == "agent-metrics"  # gpuplace's, not Seldon's
    assert "lifecycle" not in agent and "imagePullPolicy" not in agent
    assert env(agent) == {
        "SELDON_SERVER_CAPABILITIES": "mlserver,sklearn,gpu",
        "SELDON_OVERCOMMIT_PERCENTAGE": "20",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "MEMORY_REQUEST": {
            "resourceFieldRef": {"containerName": "mlserver", "resource": "requests.memory"}
        },
        "SELDON_SCHEDULER_HOST": "gpuplace-scheduler.gpuplace",
        "SELDON_SCHEDULER_PORT": "9005",
        "SELDON_SERVER_HTTP_PORT": "9000",
        "SELDON_SERVER_GRPC_PORT": "8081",
        "GPUPLACE_AGENT_INFERENCE_METRICS_PORT": "8082",  # MLServer's default: host memory
        "POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "GPUPLACE_AGENT_INFERENCE_CONTAINER": "mlserver",
        "GPUPLACE_AGENT_LOCAL_ARTIFACT_ROOTS": "",  # no persistent volume: no local artifact
    }
    # The model folder stays Seldon's; rclone's config mount moved to the agent with it.
    assert agent["volumeMounts"] == [
        {"name": "models", "mountPath": "/mnt/agent"},
        {"name": "rclone-config", "mountPath": "/rclone"},
    ]
    assert agent["args"] == ["--model-repository=/mnt/agent/models"]
    assert "lifecycle" not in containers["mlserver"]
    assert list(by_name(pod["volumes"])) == ["models", "rclone-config"]
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    (replaced,) = [m for m in messages(rendered) if "runs Seldon Core 2's agent" in m]
    assert (
        "(registry.example/seldonio/seldon-agent:2.9.0): replaced by gpuplace's agent" in replaced
    )
    assert "removed the volumes only Seldon's containers used: agent-config" in replaced
    assert "preStop hooks that called Seldon's agent (port 9107) from mlserver" in replaced
    assert "ServiceAccount 'seldon-server': it must exist" in replaced
    assert sum("rclone" in m for m in messages(rendered)) == 1


@pytest.mark.parametrize(
    ("agent", "replaced"),
    [
        pytest.param("{name: agent, image: seldonio/seldon-agent:2.9.0}", True, id="by-image"),
        pytest.param(
            "{name: agent, image: agent:latest, command: [/bin/agent]}", True, id="by-command"
        ),
        pytest.param("{name: agent, image: my/gpuplace:1, args: [agent]}", False, id="own-agent"),
    ],
)
def test_seldons_agent_is_recognised_by_its_image_or_command(agent: str, replaced: bool) -> None:
    config = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: ServerConfig\nmetadata: {name: c}\n"
        "spec:\n  podSpec:\n    containers:\n"
        f"      - {agent}\n"
        "      - {name: mlserver, image: seldonio/mlserver:1.7.1, "
        "resources: {requests: {memory: 1Gi}}}\n"
    )
    rendered = render(config, server(config="c"))
    image = by_name(pod_of(rendered)["containers"])["agent"]["image"]
    assert (image == SETTINGS.agent_image) is replaced
    assert any("runs Seldon Core 2's agent" in m for m in messages(rendered)) is replaced


# ----------------------------------------------------------------------------------------
# The inference container, by name


def config_with(containers: str, name: str = "c") -> str:
    return (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: ServerConfig\n"
        f"metadata: {{name: {name}}}\nspec:\n  podSpec:\n    containers:\n{containers}"
    )


def test_the_inference_container_is_found_by_name_not_by_position() -> None:
    """Seldon's Triton pod starts with rclone: the inference container is `triton`."""
    containers = (
        "      - {name: logger, image: fluent/fluent-bit:3}\n"
        "      - name: triton\n"
        "        image: nvcr.io/nvidia/tritonserver:24.01-py3\n"
        "        env: [{name: SERVER_HTTP_PORT, value: '7000'}]\n"
        "        resources: {requests: {memory: 8Gi}}\n"
    )
    rendered = render(config_with(containers), server(config="c"))
    found = by_name(pod_of(rendered)["containers"])
    agent = env(found["agent"])
    assert agent["MEMORY_REQUEST"]["resourceFieldRef"]["containerName"] == "triton"
    assert (agent["SELDON_SERVER_HTTP_PORT"], agent["SELDON_SERVER_GRPC_PORT"]) == ("7000", "8001")
    # Triton's metrics have no process memory: the agent does not read them.
    assert agent["GPUPLACE_AGENT_INFERENCE_METRICS_PORT"] == "0"
    assert env(found["triton"])["SERVER_MODELS_DIR"] == "/mnt/models"
    assert "MLSERVER_LOAD_MODELS_AT_STARTUP" not in env(found["triton"])
    assert "volumeMounts" not in found["logger"]
    ports = {p["name"]: p["port"] for p in rendered.manifests[1]["spec"]["ports"]}
    assert (ports["http"], ports["grpc"]) == (7000, 8001)


def test_no_container_of_an_inference_name_is_an_error_naming_the_option() -> None:
    text = config_with("      - {name: server, image: seldonio/mlserver:1.7.1}\n")
    with pytest.raises(ResourceError) as caught:
        render(text, server(config="c"))
    (problem,) = caught.value.problems
    assert problem.file == "file1.yaml" and problem.path == "spec.podSpec.containers"
    assert problem.message == (
        "the pod of Server 's1' (ServerConfig 'c') has no inference container: no container is "
        "named 'mlserver' or 'triton' (its containers: 'server'); name it with "
        "`gpuplace render --inference-container NAME`"
    )


def test_the_inference_container_can_be_named_in_the_settings() -> None:
    text = config_with(
        "      - {name: mlserver, image: example/other:1}\n"
        "      - {name: server, image: seldonio/mlserver:1.7.1}\n"
    )
    settings = RenderSettings(inference_container="server")
    rendered = render(text, server(config="c"), settings=settings)
    agent = by_name(pod_of(rendered)["containers"])["agent"]
    assert env(agent)["MEMORY_REQUEST"]["resourceFieldRef"]["containerName"] == "server"
    settings = RenderSettings(inference_container="absent")
    with pytest.raises(ResourceError, match="no container is named 'absent'"):
        render(text, server(config="c"), settings=settings)


# ----------------------------------------------------------------------------------------
# Images


def test_every_container_without_an_image_is_an_error_naming_it() -> None:
    text = config_with("      - {name: mlserver}\n")
    body = (
        "  podSpec:\n"
        "    initContainers: [{name: warm-up}]\n"
        "    containers: [{name: logger, args: [-v]}]\n"
    )
    with pytest.raises(ResourceError) as caught:
        render(text, server(body, config="c"))
    assert [(p.path, p.message) for p in caught.value.problems] == [
        (
            "spec.podSpec.initContainers",
            "init container 'warm-up' of Server 's1' has no image: neither the Server nor "
            "ServerConfig 'c' sets `image` on it (spec.podSpec.initContainers)",
        ),
        (
            "spec.podSpec.containers",
            "container 'mlserver' of Server 's1' has no image: neither the Server nor "
            "ServerConfig 'c' sets `image` on it (spec.podSpec.containers)",
        ),
        (
            "spec.podSpec.containers",
            "container 'logger' of Server 's1' has no image: neither the Server nor "
            "ServerConfig 'c' sets `image` on it (spec.podSpec.containers)",
        ),
    ]


def test_a_server_may_give_the_image_its_server_config_lacks() -> None:
    text = config_with("      - {name: mlserver, resources: {requests: {memory: 1Gi}}}\n")
    body = "  podSpec:\n    containers: [{name: mlserver, image: seldonio/mlserver:1.7.1}]\n"
    rendered = render(text, server(body, config="c"))
    assert by_name(pod_of(rendered)["containers"])["mlserver"]["image"] == "seldonio/mlserver:1.7.1"


# ----------------------------------------------------------------------------------------
# The model folder


def test_the_agent_writes_into_the_inference_servers_own_model_folder() -> None:
    containers = (
        "      - name: mlserver\n"
        "        image: seldonio/mlserver:1.7.1\n"
        "        env: [{name: MLSERVER_MODELS_DIR, value: /data/models/}]\n"
        "        resources: {requests: {memory: 1Gi}}\n"
        "        volumeMounts:\n"
        "          - {name: scratch, mountPath: /data/scratch}\n"
        "          - {name: disk, mountPath: /data, subPath: srv, readOnly: true}\n"
    )
    rendered = render(config_with(containers), server(config="c"))
    pod = pod_of(rendered)
    agent = by_name(pod["containers"])["agent"]
    assert agent["args"] == ["--model-repository=/data/models"]
    assert agent["volumeMounts"] == [{"name": "disk", "mountPath": "/data", "subPath": "srv"}]
    assert "volumes" not in pod  # `disk` is the user's (e.g. a claim template): none added


def test_a_model_folder_that_is_not_an_absolute_value_is_an_error() -> None:
    containers = (
        "      - name: mlserver\n"
        "        image: seldonio/mlserver:1.7.1\n"
        "        env: [{name: MLSERVER_MODELS_DIR, value: models}]\n"
    )
    with pytest.raises(ResourceError, match="MLSERVER_MODELS_DIR must be an absolute path"):
        render(config_with(containers), server(config="c"))


# ----------------------------------------------------------------------------------------
# Labels and annotations

LABELLED_CONFIG = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: ServerConfig
metadata:
  name: c
  labels: {team: ml, tier: config}
  annotations: {note: config, meta.helm.sh/release-name: seldon}
spec:
  podSpec:
    containers: [{name: mlserver, image: seldonio/mlserver:1.7.1}]
"""


def test_labels_and_annotations_of_server_config_then_server_reach_statefulset_and_pods() -> None:
    text = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: s1\n"
        "  labels: {tier: server, app.kubernetes.io/name: mine}\n"
        "  annotations: {note: server, kubectl.kubernetes.io/last-applied-configuration: '{}'}\n"
        "spec: {serverConfig: c}\n"
    )
    rendered = render(LABELLED_CONFIG, text)
    statefulset, service = rendered.manifests
    labels = {
        "app.kubernetes.io/name": "gpuplace-server",
        "app.kubernetes.io/instance": "s1",
        "app.kubernetes.io/managed-by": "gpuplace",
        "team": "ml",
        "tier": "server",
    }
    assert statefulset["metadata"]["labels"] == labels
    assert statefulset["metadata"]["annotations"] == {"note": "server"}
    template = statefulset["spec"]["template"]["metadata"]
    assert template["labels"] == labels
    assert template["annotations"] == {"note": "server", "gpuplace/server-config": "c"}
    assert statefulset["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert service["metadata"]["labels"] == dict(list(labels.items())[:3])
    assert "annotations" not in service["metadata"]
    assert (
        "label app.kubernetes.io/name=mine (Server 's1' or ServerConfig 'c') is replaced by "
        "gpuplace's app.kubernetes.io/name=gpuplace-server"
    ) in " ".join(messages(rendered))
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_null_labels_and_annotations_are_none() -> None:
    text = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: s1\n"
        "  labels: null\n  annotations: null\nspec: {serverConfig: mlserver}\n"
    )
    statefulset = render(text).manifests[0]
    assert set(statefulset["metadata"]["labels"]) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
    }
    assert "annotations" not in statefulset["metadata"]


# ----------------------------------------------------------------------------------------
# Storage secrets


def test_storage_secrets_are_mounted_read_only_into_the_agent() -> None:
    settings = RenderSettings(storage_secrets=("s3-creds", "gcs.key", "s3-creds"))
    rendered = render(server(config="mlserver"), settings=settings)
    pod = pod_of(rendered)
    agent = by_name(pod["containers"])["agent"]
    assert env(agent)["GPUPLACE_AGENT_STORAGE_SECRETS_DIR"] == STORAGE_SECRETS_PATH
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    volumes = by_name(pod["volumes"])
    for name in ("s3-creds", "gcs.key"):
        mount = mounts[f"{STORAGE_SECRETS_PATH}/{name}"]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]] == {"name": mount["name"], "secret": {"secretName": name}}
    assert len([v for v in volumes.values() if "secret" in v]) == 2
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_a_storage_secret_must_be_a_secret_name() -> None:
    with pytest.raises(ValueError, match="'S3_creds' is not a Secret name") as caught:
        RenderSettings(storage_secrets=("ok", "S3_creds"))
    assert SUBDOMAIN_RULE in str(caught.value)


def test_a_tls_secret_makes_every_agent_verify_the_scheduler_and_show_its_certificate() -> None:
    rendered = render(server(config="mlserver"), settings=RenderSettings(tls_secret="agent-tls"))
    pod = pod_of(rendered)
    agent = by_name(pod["containers"])["agent"]
    assert {k: v for k, v in env(agent).items() if k.startswith("GPUPLACE_AGENT_TLS")} == {
        "GPUPLACE_AGENT_TLS_CA": "/etc/gpuplace/tls/ca.crt",
        "GPUPLACE_AGENT_TLS_CERT": "/etc/gpuplace/tls/tls.crt",
        "GPUPLACE_AGENT_TLS_KEY": "/etc/gpuplace/tls/tls.key",
    }
    (mount,) = [m for m in agent["volumeMounts"] if m["mountPath"] == "/etc/gpuplace/tls"]
    assert mount["readOnly"] is True
    assert by_name(pod["volumes"])[mount["name"]]["secret"] == {
        "secretName": "agent-tls",
        "defaultMode": 0o400,
    }
    inference = by_name(pod["containers"])["mlserver"]
    assert "/etc/gpuplace/tls" not in {m["mountPath"] for m in inference.get("volumeMounts", [])}
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    with pytest.raises(ValueError, match="'Agent_TLS' is not a Secret name"):
        RenderSettings(tls_secret="Agent_TLS")


def test_the_agent_reads_mlservers_metrics_port_for_host_memory() -> None:
    containers = (
        "      - name: mlserver\n"
        "        image: seldonio/mlserver:1.7.1\n"
        "        env: [{name: MLSERVER_METRICS_PORT, value: '9100'}]\n"
        "        resources: {requests: {memory: 1Gi}}\n"
    )
    found = by_name(pod_of(render(config_with(containers), server(config="c")))["containers"])
    assert env(found["agent"])["GPUPLACE_AGENT_INFERENCE_METRICS_PORT"] == "9100"
