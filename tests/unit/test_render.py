"""ServerConfig + Server -> StatefulSet + Service: merge rules, agent injection, validity."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from gpuplace.render import (
    RenderSettings,
    merge_by_name,
    merge_pod_specs,
    render_bundle,
    resolve_server,
)
from gpuplace.resources import Bundle, ResourceError, load_files, parse_text

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed"
K8S_VERSION = kubernetes_validate.latest_version()
SETTINGS = RenderSettings(agent_image="registry.example/gpuplace:9.9", scheduler_host="sched.ns")


def seed(*names: str) -> Bundle:
    return load_files([SEED / name for name in names])


def kind(manifests: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [manifest for manifest in manifests if manifest["kind"] == name]


def containers(statefulset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in statefulset["spec"]["template"]["spec"]["containers"]}


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def server_yaml(body: str, name: str = "gpu-a", config: str = "mlserver-llm") -> str:
    return (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\n"
        f"metadata:\n  name: {name}\n  namespace: seldon-mesh\n"
        f"spec:\n  serverConfig: {config}\n{body}"
    )


# ----------------------------------------------------------------------------------------
# Merge rules


MERGES = [
    pytest.param(
        {"containers": [{"name": "mlserver", "image": "a", "args": ["x"]}]},
        {"containers": [{"name": "mlserver", "image": "b"}]},
        {"containers": [{"name": "mlserver", "image": "b", "args": ["x"]}]},
        id="container-field-overridden-others-kept",
    ),
    pytest.param(
        {"containers": [{"name": "mlserver"}]},
        {"containers": [{"name": "sidecar", "image": "s"}]},
        {"containers": [{"name": "mlserver"}, {"name": "sidecar", "image": "s"}]},
        id="new-container-appended",
    ),
    pytest.param(
        {
            "containers": [
                {
                    "name": "mlserver",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                }
            ]
        },
        {
            "containers": [
                {
                    "name": "mlserver",
                    "env": [{"name": "A", "value": "9"}, {"name": "C", "value": "3"}],
                }
            ]
        },
        {
            "containers": [
                {
                    "name": "mlserver",
                    "env": [
                        {"name": "A", "value": "9"},
                        {"name": "B", "value": "2"},
                        {"name": "C", "value": "3"},
                    ],
                }
            ]
        },
        id="env-merged-by-name-in-place",
    ),
    pytest.param(
        {
            "containers": [
                {"name": "m", "resources": {"requests": {"cpu": 1}, "limits": {"cpu": 2}}}
            ]
        },
        {"containers": [{"name": "m", "resources": {"requests": {"nvidia.com/gpu": 1}}}]},
        {"containers": [{"name": "m", "resources": {"requests": {"nvidia.com/gpu": 1}}}]},
        id="resources-overridden-whole",
    ),
    pytest.param(
        {
            "nodeSelector": {"pool": "a", "zone": "z"},
            "tolerations": [{"key": "a", "operator": "Exists"}],
        },
        {"nodeSelector": {"pool": "b"}, "tolerations": [{"key": "b", "operator": "Exists"}]},
        {"nodeSelector": {"pool": "b"}, "tolerations": [{"key": "b", "operator": "Exists"}]},
        id="scheduling-fields-overridden",
    ),
    pytest.param(
        {"affinity": {"nodeAffinity": {"x": 1}}, "priorityClassName": "low"},
        {"priorityClassName": "high"},
        {"affinity": {"nodeAffinity": {"x": 1}}, "priorityClassName": "high"},
        id="unset-fields-kept",
    ),
    pytest.param(
        {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}]},
        {"volumes": [{"name": "b", "configMap": {"name": "c"}}]},
        {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "configMap": {"name": "c"}}]},
        id="volumes-by-name",
    ),
]


@pytest.mark.parametrize(("base", "override", "expected"), MERGES)
def test_merge_pod_specs(
    base: dict[str, Any], override: dict[str, Any], expected: dict[str, Any]
) -> None:
    before = copy.deepcopy(base)
    assert merge_pod_specs(base, override) == expected
    assert base == before, "the ServerConfig's pod spec must not change"


def test_merge_by_name_keeps_order_and_appends() -> None:
    merged = merge_by_name(
        [{"name": "a", "v": 1}, {"name": "b", "v": 2}], [{"name": "c"}, {"name": "a", "v": 3}]
    )
    assert merged == [{"name": "a", "v": 3}, {"name": "b", "v": 2}, {"name": "c"}]


def test_seed_server_overrides_seed_server_config() -> None:
    bundle = seed("serverconfig-gpu.yaml")
    text = server_yaml(
        """\
  podSpec:
    nodeSelector: {pool: other}
    containers:
      - name: mlserver
        env: [{name: MLSERVER_PARALLEL_WORKERS, value: "2"}, {name: EXTRA, value: "x"}]
        resources:
          requests: {nvidia.com/gpu: 2, memory: 100Gi}
          limits: {nvidia.com/gpu: 2, memory: 100Gi}
"""
    )
    parse_text(text, "server.yaml", bundle)
    resolved = resolve_server(bundle, bundle.servers[0])
    pod = resolved.pod_spec
    assert resolved.config.name == "mlserver-llm"
    assert pod["nodeSelector"] == {"pool": "other"}
    assert pod["tolerations"][0]["key"] == "seldon-gpu-srv"  # kept from the ServerConfig
    mlserver = pod["containers"][0]
    assert mlserver["image"] == "seldonio/mlserver:1.7.1"
    assert mlserver["env"] == [
        {"name": "MLSERVER_PARALLEL_WORKERS", "value": "2"},
        {"name": "EXTRA", "value": "x"},
    ]
    assert mlserver["resources"]["requests"] == {"nvidia.com/gpu": 2, "memory": "100Gi"}


# ----------------------------------------------------------------------------------------
# Rendered manifests


@pytest.mark.parametrize(
    "files",
    [
        ("server-node-selector.yaml",),
        ("server-node-affinity.yaml",),
        ("server-node-affinity-gt.yaml",),
        ("server-extra-capabilities.yaml",),
        ("server-extra-capabilities.yaml", "serverconfig-capabilities.yaml"),
    ],
)
def test_seed_servers_render_to_manifests_valid_for_kubernetes_validate_strict(
    files: tuple[str, ...],
) -> None:
    rendered = render_bundle(seed(*files), SETTINGS)
    assert [m["kind"] for m in rendered.manifests] == ["StatefulSet", "Service"]
    for manifest in rendered.manifests:
        assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) is not None
    statefulset, service = rendered.manifests
    assert statefulset["metadata"] == service["metadata"]
    assert statefulset["metadata"]["name"] == "mlserver-llm-local-gpu"
    assert statefulset["metadata"]["namespace"] == "seldon-mesh"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]


def test_kubernetes_validate_does_reject_a_bad_manifest() -> None:
    """The check above could fail: a field Kubernetes does not know is refused."""
    statefulset = render_bundle(seed("server-node-selector.yaml"), SETTINGS).manifests[0]
    broken = copy.deepcopy(statefulset)
    broken["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_agent_sidecar_and_its_environment_are_injected() -> None:
    rendered = render_bundle(seed("server-node-selector.yaml"), SETTINGS)
    statefulset = rendered.manifests[0]
    found = containers(statefulset)
    assert list(found) == ["mlserver", "agent"]
    agent = found["agent"]
    assert agent["image"] == "registry.example/gpuplace:9.9"
    assert agent["command"] == ["gpuplace", "agent"]
    variables = env(agent)
    assert variables["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert variables["MEMORY_REQUEST"] == {
        "resourceFieldRef": {"containerName": "mlserver", "resource": "requests.memory"}
    }
    assert variables["SELDON_SCHEDULER_HOST"] == "sched.ns"
    assert variables["SELDON_SCHEDULER_PORT"] == "9005"
    # The built-in mlserver ServerConfig's list, plus the Server's extraCapabilities.
    capabilities = variables["SELDON_SERVER_CAPABILITIES"].split(",")
    assert capabilities[0] == "mlserver" and capabilities[-1] == "model-on-gpu"
    # The inference server listens where the agent is told to look.
    assert (
        variables["SELDON_SERVER_HTTP_PORT"]
        == env(found["mlserver"])["MLSERVER_HTTP_PORT"]
        == "9000"
    )
    ports = {p["name"]: p["port"] for p in rendered.manifests[1]["spec"]["ports"]}
    assert ports["http"] == 9000 and ports["grpc"] == 9500
    # Agent and inference server share the model repository folder; the agent of a GPU
    # server also reads the kubelet's PodResources socket and sees every device, to measure
    # the inference container's GPUs, whose CUDA numbers follow NVML's (PCI) order.
    mounts = {c: [m["mountPath"] for m in found[c]["volumeMounts"]] for c in found}
    assert mounts == {
        "mlserver": ["/mnt/models"],
        "agent": ["/mnt/models", "/var/lib/kubelet/pod-resources"],
    }
    assert found["agent"]["volumeMounts"][1]["readOnly"] is True
    assert variables["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert variables["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert variables["GPUPLACE_AGENT_INFERENCE_CONTAINER"] == "mlserver"
    assert variables["GPUPLACE_AGENT_INFERENCE_METRICS_PORT"] == "8082"  # MLServer's default
    assert env(found["mlserver"])["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "NVIDIA_VISIBLE_DEVICES" not in env(found["mlserver"])
    # The Server's GPU resources replaced the built-in ServerConfig's.
    assert found["mlserver"]["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_existing_agent_settings_are_kept() -> None:
    bundle = seed("serverconfig-gpu.yaml")
    text = server_yaml(
        """\
  podSpec:
    containers:
      - name: agent
        image: my/agent:1
        env:
          - {name: SELDON_SCHEDULER_HOST, value: mine}
          - name: POD_NAME
            valueFrom: {fieldRef: {fieldPath: metadata.name}}
"""
    )
    parse_text(text, "server.yaml", bundle)
    agent = containers(render_bundle(bundle, SETTINGS).manifests[0])["agent"]
    assert agent["image"] == "my/agent:1"
    assert "command" not in agent  # the user's image keeps its own entry point
    variables = env(agent)
    assert variables["SELDON_SCHEDULER_HOST"] == "mine"
    assert [item["name"] for item in agent["env"]].count("POD_NAME") == 1
    assert "MEMORY_REQUEST" in variables


CAPABILITIES = [
    pytest.param("", None, id="neither"),
    pytest.param(
        "  extraCapabilities: [model-on-gpu]\n", "mlserver,sklearn,model-on-gpu", id="extra-appends"
    ),
    pytest.param(
        "  extraCapabilities: [sklearn, a]\n", "mlserver,sklearn,a", id="extra-no-duplicates"
    ),
    pytest.param("  capabilities: [only-this]\n", "only-this", id="capabilities-replace"),
    pytest.param(
        "  capabilities: [x]\n  extraCapabilities: [y]\n", "x,y", id="replace-then-append"
    ),
]


@pytest.mark.parametrize(("server_spec", "expected"), CAPABILITIES)
def test_capabilities_replace_and_extra_capabilities_append(
    server_spec: str, expected: str | None
) -> None:
    config = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: ServerConfig
metadata: {name: caps}
spec:
  podSpec:
    containers:
      - name: mlserver
        image: seldonio/mlserver:1.7.1
      - name: agent
        env: [{name: SELDON_SERVER_CAPABILITIES, value: "mlserver, sklearn"}]
"""
    bundle = parse_text(config, "config.yaml")
    parse_text(server_yaml(server_spec, config="caps"), "server.yaml", bundle)
    agent = containers(render_bundle(bundle, SETTINGS).manifests[0])["agent"]
    value = env(agent)["SELDON_SERVER_CAPABILITIES"]
    assert value == (expected if expected is not None else "mlserver, sklearn")


def test_seed_capabilities_server_config_with_extra_capabilities() -> None:
    """The seed's capability-on-the-agent ServerConfig plus an inference container."""
    bundle = seed("serverconfig-capabilities.yaml")
    text = server_yaml(
        "  extraCapabilities: [big-gpu]\n  podSpec:\n    containers:\n"
        "      - {name: mlserver, image: seldonio/mlserver:1.7.1}\n"
    )
    parse_text(text, "server.yaml", bundle)
    rendered = render_bundle(bundle, SETTINGS)
    agent = containers(rendered.manifests[0])["agent"]
    assert agent["image"] == "gpuplace:0.1.0"  # as the ServerConfig says
    capabilities = env(agent)["SELDON_SERVER_CAPABILITIES"].split(",")
    assert capabilities[-2:] == ["model-on-gpu", "big-gpu"]
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_pod_without_inference_container_is_an_error() -> None:
    bundle = seed("serverconfig-capabilities.yaml")
    parse_text(server_yaml(""), "server.yaml", bundle)
    with pytest.raises(ResourceError, match="has no inference container") as caught:
        render_bundle(bundle, SETTINGS)
    assert caught.value.problems[0].file == "server.yaml"


def test_unknown_server_config_is_an_error_naming_the_known_ones() -> None:
    bundle = parse_text(server_yaml("", config="triton"), "server.yaml")
    with pytest.raises(
        ResourceError, match=r"spec.serverConfig: no ServerConfig named 'triton'.*known: mlserver"
    ):
        render_bundle(bundle, SETTINGS)


def test_gpu_request_different_from_limit_is_warned_about() -> None:
    rendered = render_bundle(seed("server-node-selector.yaml"), SETTINGS)
    messages = [w.message for w in rendered.warnings]
    assert any("requests nvidia.com/gpu 1 but limits it to 2" in m for m in messages)
    assert any("built-in" in m for m in messages)


def test_replicas_namespace_and_claim_templates() -> None:
    config = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: ServerConfig
metadata: {name: disk}
spec:
  podSpec:
    containers:
      - name: mlserver
        image: seldonio/mlserver:1.7.1
        resources: {requests: {memory: 2Gi}}
  volumeClaimTemplates:
    - name: cache
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 10Gi}}
"""
    bundle = parse_text(config, "config.yaml")
    parse_text(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: s}\n"
        "spec: {serverConfig: disk, replicas: 3}\n",
        "server.yaml",
        bundle,
    )
    rendered = render_bundle(bundle, RenderSettings(namespace="models"))
    statefulset = rendered.manifests[0]
    assert statefulset["metadata"]["namespace"] == "models"
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"] == {"name": "cache"}
    assert rendered.warnings == []
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_a_cpu_server_gets_no_gpu_plumbing() -> None:
    """No hostPath into the kubelet's folder, no devices for a server that requests none."""
    bundle = parse_text(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: cpu}\n",
        "cpu.yaml",
    )
    rendered = render_bundle(bundle, RenderSettings())
    pod = rendered.manifests[0]["spec"]["template"]["spec"]
    assert all("hostPath" not in volume for volume in pod.get("volumes", []))
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    assert "NVIDIA_VISIBLE_DEVICES" not in env(agent)


def test_a_dra_claim_is_shared_with_the_agent() -> None:
    """With Dynamic Resource Allocation both containers reference one claim: the agent sees
    exactly the pod's GPUs, so it gets no kubelet socket and no NVIDIA_VISIBLE_DEVICES."""
    text = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: ServerConfig\nmetadata: {name: dra}\n"
        "spec:\n  podSpec:\n    resourceClaims:\n"
        "      - {name: gpu, resourceClaimTemplateName: one}\n"
        "    containers:\n      - name: mlserver\n        image: seldonio/mlserver:1.7.1\n"
        "        resources: {claims: [{name: gpu}], requests: {memory: 8Gi}}\n---\n"
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: s}\n"
        "spec: {serverConfig: dra}\n"
    )
    rendered = render_bundle(parse_text(text, "dra.yaml"), RenderSettings())
    pod = rendered.manifests[0]["spec"]["template"]["spec"]
    found = {c["name"]: c for c in pod["containers"]}
    assert found["agent"]["resources"]["claims"] == [{"name": "gpu"}]
    assert env(found["agent"])["GPUPLACE_AGENT_POD_RESOURCES_SOCKET"] == ""
    assert "NVIDIA_VISIBLE_DEVICES" not in env(found["agent"])
    assert env(found["mlserver"])["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert all("hostPath" not in volume for volume in pod.get("volumes", []))


@pytest.mark.parametrize("resource", ["nvidia.com/mig-1g.10gb", "nvidia.com/gpu.shared"])
def test_mig_and_time_sliced_servers_get_the_gpu_plumbing_too(resource: str) -> None:
    text = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: s}\nspec:\n"
        "  podSpec:\n    containers:\n      - name: mlserver\n"
        f"        resources: {{limits: {{{resource}: 1}}, requests: {{{resource}: 1}}}}\n"
    )
    rendered = render_bundle(parse_text(text, "s.yaml"), RenderSettings())
    pod = rendered.manifests[0]["spec"]["template"]["spec"]
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    assert env(agent)["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert any(v.get("hostPath") for v in pod["volumes"])
