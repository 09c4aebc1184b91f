"""Parsing Model / Server / ServerConfig / Node YAML: the seed as written, and every error."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import kubernetes_validate
import pytest
from pydantic import BaseModel

from gpuplace.resources import (
    Affinity,
    Container,
    EnvVar,
    NodeAffinity,
    NodeSelectorTerm,
    NodeSpecFields,
    ObjectMeta,
    PodSpec,
    ResourceError,
    ResourceRequirements,
    Taint,
    Toleration,
    format_path,
    load_files,
    parse_text,
    split_capabilities,
    to_model_spec,
)

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed"

MODEL_HEAD = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: iris
spec:
"""
SERVER_HEAD = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata:
  name: gpu-a
spec:
"""


def problems_of(text: str, file: str = "in.yaml") -> list[str]:
    with pytest.raises(ResourceError) as caught:
        parse_text(text, file)
    return [str(problem) for problem in caught.value.problems]


# ----------------------------------------------------------------------------------------
# The seed's documents, as written


@pytest.mark.parametrize(
    ("file", "kind", "count"),
    [
        ("node.yaml", "nodes", 1),
        ("server-node-selector.yaml", "servers", 1),
        ("server-node-affinity.yaml", "servers", 1),
        ("server-node-affinity-gt.yaml", "servers", 1),
        ("server-extra-capabilities.yaml", "servers", 1),
        ("serverconfig-gpu.yaml", "server_configs", 1),
        ("serverconfig-capabilities.yaml", "server_configs", 1),
        ("model-requirements.yaml", "models", 1),
        ("model-pinned.yaml", "models", 1),
    ],
)
def test_every_seed_document_parses_without_warnings(file: str, kind: str, count: int) -> None:
    bundle = load_files([SEED / file])
    assert len(getattr(bundle, kind)) == count
    assert bundle.warnings == []


def test_seed_node_taint_and_labels() -> None:
    node = load_files([SEED / "node.yaml"]).nodes[0]
    assert node.name == "example-node"
    taint = node.obj.spec.taints[0]
    assert (taint.key, taint.value, taint.effect) == ("seldon-gpu-srv", "true", "NoSchedule")
    assert node.obj.metadata.labels["cloud.google.com/gke-accelerator-count"] == "2"
    assert node.obj.status is None


def test_seed_server_node_selector_fields() -> None:
    server = load_files([SEED / "server-node-selector.yaml"]).servers[0]
    spec = server.obj.spec
    assert server.namespace == "seldon-mesh"
    assert spec.server_config == "mlserver"
    assert spec.extra_capabilities == ["model-on-gpu"]
    assert spec.replicas == 1
    pod = spec.pod_spec
    assert pod is not None
    assert pod.node_selector == {
        "pool": "infer-srv",
        "cloud.google.com/gke-accelerator": "nvidia-a100-80gb",
    }
    resources = pod.containers[0].resources
    assert resources is not None
    assert resources.requests["memory"] == Decimal(360 * 2**30)
    assert resources.requests["nvidia.com/gpu"] == 1
    assert resources.limits["nvidia.com/gpu"] == 2


def test_seed_server_without_server_config_defaults_to_mlserver() -> None:
    server = load_files([SEED / "server-node-affinity.yaml"]).servers[0]
    assert server.obj.spec.server_config == "mlserver"
    pod = server.obj.spec.pod_spec
    assert pod is not None and pod.affinity is not None and pod.affinity.node_affinity is not None
    required = pod.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    assert required is not None
    expressions = required.node_selector_terms[0].match_expressions
    assert [(e.key, e.operator, e.values) for e in expressions] == [
        ("pool", "In", ["infer-srv"]),
        ("cloud.google.com/gke-accelerator", "In", ["nvidia-a100-80gb"]),
    ]


def test_seed_models_to_model_spec() -> None:
    recommended = to_model_spec(load_files([SEED / "model-requirements.yaml"]).models[0])
    assert recommended.name == "llama3"
    assert list(recommended.requirements) == ["model-on-gpu"]
    assert recommended.server == ""
    assert not recommended.HasField("replicas")
    pinned = to_model_spec(load_files([SEED / "model-pinned.yaml"]).models[0])
    assert pinned.server == "mlserver-llm-local-gpu"
    assert list(pinned.requirements) == ["model-on-gpu"]


def test_full_model_spec_keeps_quantities_as_written() -> None:
    text = (
        MODEL_HEAD
        + """\
  storageUri: https://models.example/iris
  requirements: [sklearn, model-on-gpu]
  server: gpu-a
  memory: 1.5Gi
  gpuMemory: 20Gi
  gpus: 2
  replicas: 3
  minReplicas: 2
  parameters:
    - name: implementation
      value: mlserver_sklearn.SKLearnModel
"""
    )
    spec = to_model_spec(parse_text(text, "m.yaml").models[0])
    assert spec.storage_uri == "https://models.example/iris"
    assert list(spec.requirements) == ["sklearn", "model-on-gpu"]
    assert spec.server == "gpu-a"
    assert (spec.memory, spec.gpu_memory, spec.gpus) == ("1.5Gi", "20Gi", 2)
    assert (spec.replicas, spec.min_replicas) == (3, 2)
    assert dict(spec.parameters) == {"implementation": "mlserver_sklearn.SKLearnModel"}


def test_parameters_as_mapping_and_integer_memory() -> None:
    text = MODEL_HEAD + "  memory: 1000000\n  parameters:\n    implementation: x.Y\n"
    spec = to_model_spec(parse_text(text, "m.yaml").models[0])
    assert spec.memory == "1000000"
    assert dict(spec.parameters) == {"implementation": "x.Y"}


def test_several_models_in_one_file_and_a_node_list() -> None:
    text = (
        MODEL_HEAD
        + "  replicas: 1\n---\n"
        + MODEL_HEAD.replace("iris", "llama3")
        + "  replicas: 2\n---\n"
        + """\
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Node
    metadata: {name: gpu-1.example.internal}
    status:
      allocatable: {nvidia.com/gpu: "4", cpu: 64, memory: 512Gi}
      conditions: [{type: Ready, status: "True"}]
"""
    )
    bundle = parse_text(text, "all.yaml")
    assert [model.name for model in bundle.models] == ["iris", "llama3"]
    node = bundle.nodes[0]
    assert node.name == "gpu-1.example.internal"
    assert node.obj.status is not None and node.obj.status.allocatable is not None
    assert node.obj.status.allocatable["nvidia.com/gpu"] == 4


def test_seldon_fields_gpuplace_ignores_are_warnings() -> None:
    bundle = parse_text(MODEL_HEAD + "  maxReplicas: 4\n  secretName: s3\n", "m.yaml")
    assert len(bundle.models) == 1
    assert [w.path for w in bundle.warnings] == ["spec.maxReplicas", "spec.secretName"]
    assert "does not use" in bundle.warnings[0].message


@pytest.mark.parametrize(
    ("model", "definition"),
    [
        (PodSpec, "io.k8s.api.core.v1.PodSpec"),
        (Container, "io.k8s.api.core.v1.Container"),
        (ObjectMeta, "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
        (Toleration, "io.k8s.api.core.v1.Toleration"),
        (Taint, "io.k8s.api.core.v1.Taint"),
        (NodeSpecFields, "io.k8s.api.core.v1.NodeSpec"),
        (Affinity, "io.k8s.api.core.v1.Affinity"),
        (NodeAffinity, "io.k8s.api.core.v1.NodeAffinity"),
        (NodeSelectorTerm, "io.k8s.api.core.v1.NodeSelectorTerm"),
        (EnvVar, "io.k8s.api.core.v1.EnvVar"),
        (ResourceRequirements, "io.k8s.api.core.v1.ResourceRequirements"),
    ],
)
def test_kubernetes_shapes_accept_exactly_the_kubernetes_fields(
    model: type[BaseModel], definition: str
) -> None:
    """Every field of the newest Kubernetes schema kubernetes-validate ships, and no other."""
    version = kubernetes_validate.latest_version()
    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    schema = json.loads((folder / f"v{version}-local-strict" / "_definitions.json").read_text())
    expected = set(schema["$defs"][definition]["properties"])
    accepted = {info.alias or name for name, info in model.model_fields.items()}
    assert accepted == expected


# ----------------------------------------------------------------------------------------
# Errors: file, document, line, field path and what is allowed


BAD_INPUT = [
    pytest.param(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: iris\n",
        ["in.yaml, document 1", "malformed YAML"],
        id="malformed-yaml",
    ),
    pytest.param(
        MODEL_HEAD.replace("v1alpha1", "v1") + "  replicas: 1\n",
        [
            "document 1 (Model iris), line 1: apiVersion: 'mlops.seldon.io/v1' is not allowed",
            "expected mlops.seldon.io/v1alpha1",
        ],
        id="wrong-api-version",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
        ["kind: unknown kind 'Pod'; allowed: Model, Server, ServerConfig"],
        id="unknown-kind",
    ),
    pytest.param(
        MODEL_HEAD + "  replicas: -1\n",
        ["line 6: spec.replicas: -1 (an integer) is not allowed; expected an integer >= 1"],
        id="negative-replicas",
    ),
    pytest.param(
        MODEL_HEAD + "  replicas: 2\n  minReplicas: 3\n",
        ["spec.minReplicas: 3 is not allowed; expected 0 to replicas (2)"],
        id="min-replicas-above-replicas",
    ),
    pytest.param(
        MODEL_HEAD + "  storageUri: https://x.example/m\n  gpuMemroy: 20Gi\n",
        ["line 7: spec.gpuMemroy: unknown field; allowed: storageUri, requirements", "gpuMemory"],
        id="unknown-field",
    ),
    pytest.param(
        MODEL_HEAD + "  memory: 12GB\n",
        ["spec.memory: '12GB' is not a quantity; expected a number with an optional suffix"],
        id="bad-quantity",
    ),
    pytest.param(
        MODEL_HEAD + "  gpuMemory: -1Gi\n",
        ["spec.gpuMemory: '-1Gi' is negative"],
        id="negative-gpu-memory",
    ),
    pytest.param(
        MODEL_HEAD + "  storageUri: ftp://bucket/iris\n",
        ["line 6: spec.storageUri: scheme 'ftp' is not supported; use a local path"],
        id="unsupported-storage-scheme",
    ),
    pytest.param(
        MODEL_HEAD + "  requirements: ['sklearn,gpu', '']\n",
        [
            "spec.requirements[0]: 'sklearn,gpu' must be non-empty and contain no comma",
            "spec.requirements[1]: '' must be non-empty",
        ],
        id="bad-requirements",
    ),
    pytest.param(
        MODEL_HEAD + "  gpus: 2\n",
        ["spec.gpus: needs gpuMemory"],
        id="gpus-without-gpu-memory",
    ),
    pytest.param(
        MODEL_HEAD.replace("name: iris", "name: Iris_Model") + "  replicas: 1\n",
        ["metadata.name: 'Iris_Model' is not a DNS-1123 label"],
        id="bad-model-name",
    ),
    pytest.param(
        MODEL_HEAD + "  server: GPU_A\n",
        ["spec.server: 'GPU_A' is not a DNS-1123 label"],
        id="bad-server-reference",
    ),
    pytest.param(
        MODEL_HEAD + "  parameters:\n    - {name: a, value: 1}\n",
        ['spec.parameters[0].value: expected a string, got 1 (an integer) (quote it: "1")'],
        id="parameter-not-a-string",
    ),
    pytest.param(
        MODEL_HEAD + "  parameters:\n    - {name: a, value: x}\n    - {name: a, value: y}\n",
        ["spec.parameters: parameter 'a' is given twice"],
        id="duplicate-parameter",
    ),
    pytest.param(
        MODEL_HEAD + "  replicas: 1\n  replicas: 2\n",
        ["line 7: spec.replicas: the key is given twice in one mapping"],
        id="duplicate-key",
    ),
    pytest.param(
        "- just\n- a list\n",
        ["in.yaml, document 1, line 1: expected a mapping with apiVersion and kind, got a list"],
        id="not-a-mapping",
    ),
    pytest.param(
        SERVER_HEAD
        + """\
  podSpec:
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms:
            - matchExpressions:
                - {key: gpu-count, operator: Gt, values: ["two"]}
""",
        [
            "line 12: spec.podSpec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuring"
            "Execution.nodeSelectorTerms[0].matchExpressions[0].values: operator Gt needs exactly "
            "one value that is an integer"
        ],
        id="gt-non-integer",
    ),
    pytest.param(
        SERVER_HEAD
        + """\
  podSpec:
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms:
            - matchExpressions:
                - {key: gpu-count, operator: Lt, values: ["1", "2"]}
""",
        ["operator Lt needs exactly one value that is an integer"],
        id="lt-two-values",
    ),
    pytest.param(
        SERVER_HEAD
        + """\
  podSpec:
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms:
            - matchExpressions:
                - {key: pool, operator: In}
                - {key: zone, operator: Exists, values: [a]}
                - {key: x, operator: Matches, values: [a]}
""",
        [
            "matchExpressions[0].values: operator In needs at least one value",
            "matchExpressions[1].values: operator Exists takes no values",
            "matchExpressions[2].operator: 'Matches' is not allowed; expected one of: 'In'",
        ],
        id="operator-value-rules",
    ),
    pytest.param(
        SERVER_HEAD
        + """\
  podSpec:
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms: []
""",
        ["nodeSelectorTerms: must not be empty"],
        id="no-terms",
    ),
    pytest.param(
        SERVER_HEAD
        + """\
  podSpec:
    tolerations:
      - {key: seldon-gpu-srv, operator: Equal, value: true, effect: NoSchedule}
      - {operator: Equal, value: x}
      - {key: a, operator: Exists, value: x}
      - {key: a, effect: Sometimes}
""",
        [
            "line 8: spec.podSpec.tolerations[0].value: expected a string, got true (a boolean) "
            '(quote it: "true")',
            "tolerations[1]: a toleration without a key must have operator Exists",
            "tolerations[2]: operator Exists takes no value",
            "tolerations[3].effect: 'Sometimes' is not allowed; expected one of: 'NoSchedule'",
        ],
        id="toleration-rules",
    ),
    pytest.param(
        SERVER_HEAD
        + """\
  podSpec:
    nodeSelector: {gpu-count: 2}
    containers:
      - name: mlserver
        resources: {requests: {memory: lots}}
        imagee: x
""",
        [
            "spec.podSpec.nodeSelector.gpu-count: expected a string, got 2 (an integer) "
            '(quote it: "2")',
            "spec.podSpec.containers[0].resources.requests.memory: 'lots' is not a quantity",
            "spec.podSpec.containers[0].imagee: unknown field; allowed: name, image, env",
        ],
        id="pod-spec-rules",
    ),
    pytest.param(
        SERVER_HEAD
        + "  podSpec:\n    containers:\n      - name: mlserver\n      - name: mlserver\n",
        ["line 7: spec.podSpec.containers: two containers are named 'mlserver'"],
        id="duplicate-container",
    ),
    pytest.param(
        SERVER_HEAD + "  extraCapabilities: model-on-gpu\n  replicas: -2\n",
        [
            "spec.extraCapabilities: expected a list, got 'model-on-gpu'",
            "spec.replicas: -2 (an integer) is not allowed; expected an integer >= 0",
        ],
        id="server-spec-rules",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec:\n"
        "  taints: [{key: gpu, effect: NoRun}]\n",
        ["spec.taints[0].effect: 'NoRun' is not allowed"],
        id="node-taint-effect",
    ),
    pytest.param(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: ServerConfig\nmetadata: {name: c}\nspec: {}\n",
        ["document 1 (ServerConfig c), line 4: spec.podSpec: required field is missing"],
        id="server-config-without-pod-spec",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_INPUT)
def test_bad_input_names_file_document_field_and_what_is_allowed(
    text: str, expected: list[str]
) -> None:
    problems = problems_of(text)
    joined = "\n".join(problems)
    for fragment in expected:
        assert fragment in joined, f"{fragment!r} not in:\n{joined}"
    assert all(problem.startswith("in.yaml") for problem in problems)


def test_every_problem_of_every_document_is_reported_at_once() -> None:
    text = MODEL_HEAD + "  replicas: -1\n---\n" + MODEL_HEAD.replace("iris", "b") + "  foo: 1\n"
    problems = problems_of(text)
    assert len(problems) == 2
    assert problems[0].startswith("in.yaml, document 1 (Model iris)")
    assert problems[1].startswith("in.yaml, document 2 (Model b)")


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(MODEL_HEAD + "  replicas: 1\n")
    (tmp_path / "b.yaml").write_text(MODEL_HEAD + "  replicas: 2\n")
    with pytest.raises(ResourceError, match=r"Model 'iris' is defined twice \(first in .*a.yaml"):
        load_files([tmp_path / "a.yaml", tmp_path / "b.yaml"])


def test_missing_file_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(ResourceError, match=r"nope\.yaml: cannot read the file"):
        load_files([tmp_path / "nope.yaml"])


def test_stdin_text() -> None:
    bundle = load_files(["-"], stdin_text=MODEL_HEAD + "  replicas: 1\n")
    assert bundle.models[0].source.file == "<stdin>"


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), ""),
        (("spec",), "spec"),
        (("spec", "containers", 0, "env", 2, "name"), "spec.containers[0].env[2].name"),
    ],
)
def test_format_path(path: tuple[str | int, ...], text: str) -> None:
    assert format_path(path) == text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mlserver,sklearn", ["mlserver", "sklearn"]),
        (" mlserver , ,sklearn,", ["mlserver", "sklearn"]),
        ("", []),
    ],
)
def test_split_capabilities(value: str, expected: list[str]) -> None:
    assert split_capabilities(value) == expected
