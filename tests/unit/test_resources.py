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


@pytest.mark.parametrize(
    ("uri", "file", "sent"),
    [
        ("artifacts/iris", "examples/models.yaml", "{cwd}/examples/artifacts/iris"),
        ("../artifacts/iris", "/srv/examples/demo/models.yaml", "/srv/examples/artifacts/iris"),
        ("./iris", "<stdin>", "{cwd}/iris"),
        ("/srv/models/iris", "examples/models.yaml", "/srv/models/iris"),
        ("file:///srv/models/iris", "examples/models.yaml", "file:///srv/models/iris"),
        ("gs://seldon-models/iris", "examples/models.yaml", "gs://seldon-models/iris"),
        ("https://models.example/iris.tgz", "m.yaml", "https://models.example/iris.tgz"),
    ],
)
def test_a_relative_storage_uri_is_read_from_the_files_folder(
    uri: str, file: str, sent: str
) -> None:
    spec = to_model_spec(parse_text(MODEL_HEAD + f"  storageUri: {uri}\n", file).models[0])
    assert spec.storage_uri == sent.format(cwd=Path.cwd())


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


def test_seldon_fields_gpuplace_does_not_act_on_are_warnings() -> None:
    bundle = parse_text(MODEL_HEAD + "  maxReplicas: 4\n  secretName: s3\n", "m.yaml")
    assert len(bundle.models) == 1
    assert [w.path for w in bundle.warnings] == ["spec.maxReplicas"]
    assert "not acted on by gpuplace: gpuplace does not autoscale" in bundle.warnings[0].message


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
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Severconfig\nmetadata: {name: p}\n",
        [
            "line 2: kind: unknown kind 'Severconfig' of mlops.seldon.io (did you mean "
            "ServerConfig?); gpuplace reads Model, Server, ServerConfig and skips Pipeline"
        ],
        id="unknown-seldon-kind",
    ),
    pytest.param(
        "kind: Model\nmetadata: {name: p}\nspec: {}\n",
        ["line 1: apiVersion: missing; expected mlops.seldon.io/v1alpha1 for kind Model"],
        id="no-api-version",
    ),
    pytest.param(
        "apiVersion: v1\nmetadata: {name: p}\n",
        ["line 1: kind: required field is missing; expected one of: Model, Server"],
        id="no-kind",
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
        [
            "line 7: spec.gpuMemroy: unknown field (did you mean gpuMemory?); allowed: "
            "artifactVersion, dataflow, dedicated, explainer, gpuMemory, gpus, llm, logger, "
            "maxReplicas, memory, minReplicas, modelType, parameters, preloaded, replicas, "
            "requirements, schemaUri, secretName, server, storageUri"
        ],
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
            "spec.podSpec.containers[0].imagee: unknown field (did you mean image?); allowed: "
            "args, command, env, envFrom, image, imagePullPolicy,",
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


# ----------------------------------------------------------------------------------------
# Seldon users' files (tests/fixtures/resources): every field, null, other kinds, all at once

CASES = Path(__file__).resolve().parents[1] / "fixtures" / "resources"


def test_null_means_unset_as_in_kubernetes() -> None:
    bundle = load_files([CASES / "null-fields.yaml"])
    assert bundle.warnings == []
    config, server, model = bundle.server_configs[0], bundle.servers[0], bundle.models[0]
    assert config.obj.metadata.labels == {}
    container = config.obj.spec.pod_spec.containers[0]
    assert container.env == []
    assert container.resources is not None and container.resources.limits == {}
    assert (server.obj.metadata.labels, server.obj.metadata.annotations) == ({}, {})
    assert (server.namespace, server.obj.spec.pod_spec, server.obj.spec.capabilities) == (
        None,
        None,
        None,
    )
    assert model.obj.spec.requirements == [] and model.obj.spec.server is None
    # What render merges: the document without its nulls.
    assert "env" not in config.raw["spec"]["podSpec"]["containers"][0]
    assert "podSpec" not in server.raw["spec"]


def test_a_required_field_written_as_null_is_missing() -> None:
    problems = problems_of(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: ServerConfig\nmetadata: {name: c}\n"
        "spec:\n  podSpec: null\n---\n" + MODEL_HEAD + "  # nothing yet\n"
    )
    assert problems == [
        "in.yaml, document 1 (ServerConfig c), line 5: spec.podSpec: required field is null "
        "(null means unset, as in Kubernetes); a ServerConfig needs the pod its Servers run",
        "in.yaml, document 2 (Model iris), line 11: spec: required field is null (null means "
        "unset, as in Kubernetes); a Model needs a spec: what to load and where",
    ]


def test_every_seldon_model_field_gpuplace_does_not_act_on_is_one_warning() -> None:
    bundle = load_files([CASES / "seldon-model-fields.yaml"])
    assert [m.name for m in bundle.models] == ["income-explainer", "chat", "scaled"]
    assert [(w.document, w.path) for w in bundle.warnings] == [
        (1, "spec.explainer"),
        (2, "spec.llm"),
        (3, "spec.schemaUri"),
        (3, "spec.maxReplicas"),
        (3, "spec.preloaded"),
        (3, "spec.dedicated"),
        (3, "spec.logger"),
        (3, "spec.dataflow"),
    ]
    assert str(bundle.warnings[0]).endswith(
        "line 8: spec.explainer: accepted, not acted on by gpuplace: placed like any model; "
        "the explainer's modelRef/pipelineRef wiring belongs to Seldon's data plane, which "
        "gpuplace does not run"
    )
    explainer = bundle.models[0].obj.spec.explainer
    assert explainer is not None and (explainer.type, explainer.model_ref) == (
        "anchor_tabular",
        "income",
    )


def test_model_type_is_a_requirement_as_in_seldon() -> None:
    chat = load_files([CASES / "seldon-model-fields.yaml"]).models[1]
    assert list(to_model_spec(chat).requirements) == ["openai", "llm"]
    sklearn = load_files([CASES / "artifact-and-secret.yaml"]).models[0]
    assert list(to_model_spec(sklearn).requirements) == ["sklearn", "mlserver"]  # no twice


def test_artifact_version_secret_name_and_namespace_go_to_the_scheduler() -> None:
    bundle = load_files([CASES / "artifact-and-secret.yaml"])
    assert bundle.warnings == []
    spec = to_model_spec(bundle.models[0])
    assert (spec.artifact_version, spec.secret_name, spec.namespace) == (
        2,
        "minio-secret",
        "seldon-mesh",
    )
    assert spec.storage_uri == "minio-store://models/iris"  # the remote of minio-secret
    plain = to_model_spec(parse_text(MODEL_HEAD + "  replicas: 1\n", "m.yaml").models[0])
    assert (plain.artifact_version, plain.secret_name, plain.namespace) == (0, "", "")


def test_every_seldon_server_field_is_read_and_the_unused_ones_warned() -> None:
    bundle = load_files([CASES / "seldon-server-fields.yaml"])
    spec = bundle.servers[0].obj.spec
    assert spec.stateful_set_persistent_volume_claim_retention_policy == {
        "whenDeleted": "Delete",
        "whenScaled": "Retain",
    }
    assert bundle.server_configs[0].obj.spec.volume_claim_templates[0].name == "models"
    assert [w.path for w in bundle.warnings] == [
        "spec.minReplicas",
        "spec.maxReplicas",
        "spec.imageOverrides",
        "spec.disableAutoUpdate",
        "spec.deploymentStrategy",
    ]


def test_other_kinds_are_skipped_with_one_warning_each() -> None:
    bundle = load_files([CASES / "other-kinds.yaml"])
    assert [m.name for m in bundle.models] == ["iris"]
    assert bundle.servers == []
    assert [str(w).removeprefix(str(CASES) + "/") for w in bundle.warnings] == [
        "other-kinds.yaml, document 1 (Service myapps), line 2: skipped: kind Service "
        "(apiVersion v1) is not one gpuplace reads",
        "other-kinds.yaml, document 3 (Pipeline iris-pipeline), line 17: skipped: kind "
        "Pipeline (apiVersion mlops.seldon.io/v1alpha1): a Pipeline runs on Seldon's dataflow "
        "engine, which gpuplace does not run (its Models are placed when they are loaded)",
        "other-kinds.yaml, document 4 (Server iris-http), line 26: skipped: kind Server "
        "(apiVersion policy.linkerd.io/v1beta1) is not one gpuplace reads",
    ]


def test_other_kinds_inside_a_list_are_skipped_too() -> None:
    text = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "  - {apiVersion: v1, kind: Pod, metadata: {name: p}}\n"
        "  - {apiVersion: v1, kind: Node, metadata: {name: n1}}\n"
    )
    bundle = parse_text(text, "all.yaml")
    assert [n.name for n in bundle.nodes] == ["n1"]
    assert [str(w) for w in bundle.warnings] == [
        "all.yaml, document 1 (Pod p), line 4: items[0]: skipped: kind Pod (apiVersion v1) is "
        "not one gpuplace reads"
    ]


FIXTURE_ERRORS = [
    pytest.param(
        ["misspelled-field.yaml"],
        [
            "misspelled-field.yaml, document 1 (Model iris), line 6: spec.storagUri: unknown "
            "field (did you mean storageUri?); allowed: artifactVersion, dataflow, dedicated, "
            "explainer, gpuMemory, gpus, llm, logger, maxReplicas, memory, minReplicas, "
            "modelType, parameters, preloaded, replicas, requirements, schemaUri, secretName, "
            "server, storageUri",
            "misspelled-field.yaml, document 1 (Model iris), line 10: spec.explainer.modelReff: "
            "unknown field (did you mean modelRef?); allowed: modelRef, pipelineRef, type",
        ],
        id="misspelled-field",
    ),
    pytest.param(
        ["empty-storage-uri.yaml"],
        [
            "empty-storage-uri.yaml, document 1 (Model no-uri), line 6: spec.storageUri: must "
            "not be empty; leave storageUri out for a model without an artifact",
            "empty-storage-uri.yaml, document 2 (Model blank-uri), line 13: spec.storageUri: "
            "must not be empty; leave storageUri out for a model without an artifact",
        ],
        id="empty-storage-uri",
    ),
    pytest.param(
        ["wrong-kind.yaml"],
        [
            "wrong-kind.yaml, document 1 (Modle iris), line 2: kind: unknown kind 'Modle' of "
            "mlops.seldon.io (did you mean Model?); gpuplace reads Model, Server, ServerConfig "
            "and skips Pipeline, Experiment, SeldonConfig, SeldonRuntime",
            "wrong-kind.yaml, document 2 (Server mlserver), line 8: apiVersion: "
            "'mlops.seldon.io/v1' is not allowed for kind Server; expected "
            "mlops.seldon.io/v1alpha1",
        ],
        id="wrong-kind-and-api-version",
    ),
    pytest.param(
        ["bad-model-fields.yaml"],
        [
            "bad-model-fields.yaml, document 1 (Model iris), line 8: spec.secretName: "
            "'Minio_Secret' is not a DNS-1123 subdomain: at most 253 characters, lower-case "
            "letters, digits, '-' and '.', each '.'-separated part starting and ending with a "
            "letter or digit",
            "bad-model-fields.yaml, document 1 (Model iris), line 9: spec.artifactVersion: -1 "
            "(an integer) is not allowed; expected an integer >= 0",
            "bad-model-fields.yaml, document 1 (Model iris), line 10: spec.preloaded: expected "
            "true or false, got 'yes'",
            "bad-model-fields.yaml, document 1 (Model iris), line 12: spec.maxReplicas: 2 is "
            "not allowed; expected at least replicas (3) and minReplicas (0), or 0 for no "
            "maximum",
            "bad-model-fields.yaml, document 2 (Model both), line 21: spec.llm: a Model is an "
            "explainer or an llm, not both (Seldon Core 2 refuses both too)",
        ],
        id="seldon-field-values",
    ),
    pytest.param(
        ["all-problems-a.yaml", "all-problems-b.yaml"],
        [
            "all-problems-a.yaml, document 1 (Model Iris_Model), line 4: metadata.name: "
            "'Iris_Model' is not a DNS-1123 label: at most 63 characters, lower-case letters, "
            "digits and '-', starting and ending with a letter or digit (Kubernetes refuses it "
            "as an object name too)",
            "all-problems-a.yaml, document 1 (Model Iris_Model), line 6: spec.storageUri: "
            "scheme 'ftp' is not supported; use a local path, file://, http://, https://, "
            "gs://, gcs://, s3://, az://, azureblob:// (or the remote name of a secretName's "
            "config)",
            "all-problems-a.yaml, document 1 (Model Iris_Model), line 7: spec.replicas: 0 (an "
            "integer) is not allowed; expected an integer >= 1",
            "all-problems-b.yaml, document 1 (Model llama3), line 4: metadata.name: Model "
            "'llama3' is defined twice (first in all-problems-a.yaml, document 2); gpuplace has "
            "one namespace of Models: 'llama3' in namespace team-a and in team-b are the same "
            "Model",
            "all-problems-b.yaml, document 1 (Model llama3), line 8: spec.gpus: needs gpuMemory: "
            "the GPU memory the model needs on each device",
        ],
        id="every-problem-of-every-file-at-once",
    ),
]


@pytest.mark.parametrize(("files", "expected"), FIXTURE_ERRORS)
def test_fixture_problems_exactly(
    files: list[str], expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(CASES)
    with pytest.raises(ResourceError) as caught:
        load_files(files)
    assert [str(problem) for problem in caught.value.problems] == expected


def test_a_duplicate_is_reported_even_when_the_first_document_is_wrong() -> None:
    text = MODEL_HEAD + "  replicas: -1\n---\n" + MODEL_HEAD + "  replicas: 1\n"
    assert problems_of(text)[1] == (
        "in.yaml, document 2 (Model iris), line 11: metadata.name: Model 'iris' is defined "
        "twice (first in in.yaml, document 1)"
    )


def test_remote_scheme_needs_a_secret_name() -> None:
    problems = problems_of(MODEL_HEAD + "  storageUri: minio://models/iris\n")
    assert "spec.storageUri: scheme 'minio' is not supported" in problems[0]
    assert parse_text(
        MODEL_HEAD + "  storageUri: minio://models/iris\n  secretName: minio\n", "m.yaml"
    ).models


BOMB = (
    "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\n"
    "metadata:\n  name: bomb\n  labels:\n"
    "    a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"    {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n"
        for i in range(8)
    )
    + "spec: {storageUri: /m}\n"
)


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    """Nine levels of nine aliases would be 387 million nodes (gigabytes, minutes)."""
    with pytest.raises(ResourceError) as caught:
        parse_text(BOMB, "bomb.yaml")
    assert "expands to more than 100,000 YAML nodes" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: m}\n"
        "spec: &s {storageUri: /m, self: *s}\n",
        "a: &l {x: *l}\n",
    ],
    ids=["spec", "plain"],
)
def test_an_alias_to_itself_is_refused_not_a_traceback(text: str) -> None:
    with pytest.raises(ResourceError) as caught:
        parse_text(text, "loop.yaml")
    assert "an alias refers to a node that contains it" in str(caught.value)


def test_yaml_nested_too_deeply_is_refused_not_a_traceback() -> None:
    with pytest.raises(ResourceError) as caught:
        parse_text("[" * 5000 + "]" * 5000, "deep.yaml")
    assert "nested too deeply" in str(caught.value)


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as out:
        out.truncate(17 * 2**20)
    with pytest.raises(ResourceError) as caught:
        load_files([path])
    assert "more than the 16 MiB a resource file may have" in str(caught.value)


def test_a_merge_key_and_an_alias_still_work() -> None:
    text = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\n"
        "metadata: {name: m, labels: &l {team: a}, annotations: *l}\n"
        "spec: {storageUri: /m, requirements: [sklearn]}\n"
    )
    (model,) = parse_text(text, "m.yaml").models
    assert model.raw["metadata"]["annotations"] == {"team": "a"}


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://AKIA:SECRET@models/iris", "carries no user, password or port"),
        ("gs://bucket:8080/iris", "carries no user, password or port"),
        ('"/models/ir\\u0000is"', "contains a control character"),
    ],
)
def test_a_storage_uri_that_would_store_a_secret_or_a_control_character_is_refused(
    uri: str, message: str
) -> None:
    with pytest.raises(ResourceError) as caught:
        parse_text(MODEL_HEAD + f"  storageUri: {uri}\n", "m.yaml")
    assert message in str(caught.value)
