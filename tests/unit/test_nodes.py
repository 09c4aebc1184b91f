"""Kubernetes node rules: taints/tolerations, nodeSelector, nodeAffinity, GPU allocatable."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuplace.nodes import (
    explain_bundle,
    judge_node,
    parse_int,
    requirement_reason,
    term_reasons,
    tolerates,
)
from gpuplace.resources import (
    Bundle,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PodSpec,
    ResourceError,
    Taint,
    Toleration,
    load_files,
    parse_text,
)

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed"
REQUIRED = (
    "affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: "
    "{nodeSelectorTerms: ["
)


def gpus(count: int) -> str:
    return f"{{requests: {{nvidia.com/gpu: {count}}}, limits: {{nvidia.com/gpu: {count}}}}}"


def node(name: str, labels: str = "{}", spec: str = "{}", status: str = "") -> str:
    text = (
        f"apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {labels}\nspec: {spec}\n"
    )
    return text + (f"status: {status}\n" if status else "")


def nodes_of(*texts: str) -> Bundle:
    return parse_text("---\n".join(texts), "nodes.yaml")


def pod(text: str) -> PodSpec:
    bundle = parse_text(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: s}\nspec:\n"
        "  podSpec:\n" + "".join(f"    {line}\n" for line in text.splitlines()),
        "server.yaml",
    )
    spec = bundle.servers[0].obj.spec.pod_spec
    assert spec is not None
    return spec


# ----------------------------------------------------------------------------------------
# Tolerations (Kubernetes' ToleratesTaint)

GPU_TAINT = Taint(key="seldon-gpu-srv", value="true", effect="NoSchedule")

TOLERATIONS = [
    (
        Toleration(key="seldon-gpu-srv", operator="Equal", value="true", effect="NoSchedule"),
        GPU_TAINT,
        True,
    ),
    (
        Toleration(key="seldon-gpu-srv", value="true", effect="NoSchedule"),
        GPU_TAINT,
        True,
    ),  # Equal default
    (
        Toleration(key="seldon-gpu-srv", operator="Equal", value="false", effect="NoSchedule"),
        GPU_TAINT,
        False,
    ),
    (Toleration(key="seldon-gpu-srv", operator="Equal", effect="NoSchedule"), GPU_TAINT, False),
    (
        Toleration(key="other", operator="Equal", value="true", effect="NoSchedule"),
        GPU_TAINT,
        False,
    ),
    (Toleration(key="seldon-gpu-srv", operator="Exists", effect="NoSchedule"), GPU_TAINT, True),
    (Toleration(key="seldon-gpu-srv", operator="Exists"), GPU_TAINT, True),  # every effect
    (Toleration(key="seldon-gpu-srv", operator="Exists", effect="NoExecute"), GPU_TAINT, False),
    (Toleration(key="seldon-gpu-srv", value="true"), GPU_TAINT, True),
    (Toleration(operator="Exists"), GPU_TAINT, True),  # empty key + Exists: every taint
    (Toleration(operator="Exists", effect="NoExecute"), GPU_TAINT, False),
    (
        Toleration(key="dedicated", operator="Equal"),
        Taint(key="dedicated", effect="NoExecute"),
        True,
    ),
]


@pytest.mark.parametrize(("toleration", "taint", "expected"), TOLERATIONS)
def test_tolerates(toleration: Toleration, taint: Taint, expected: bool) -> None:
    assert tolerates(toleration, taint) is expected


# ----------------------------------------------------------------------------------------
# Node selector requirements

LABELS = {
    "pool": "infer-srv",
    "cloud.google.com/gke-accelerator-count": "2",
    "gpu-memory": "80000",
    "negative": "-3",
    "signed": "+5",
    "leading-zero": "07",
    "version": "1.5",
    "text": "abc",
}

REQUIREMENTS = [
    ("pool", "In", ["infer-srv", "other"], None),
    ("pool", "In", ["other"], "pool In [other]: node label pool is 'infer-srv'"),
    ("zone", "In", ["a"], "zone In [a]: node has no label zone"),
    ("pool", "NotIn", ["other"], None),
    ("pool", "NotIn", ["infer-srv"], "pool NotIn [infer-srv]: node label pool is 'infer-srv'"),
    ("zone", "NotIn", ["a"], None),  # a missing label is not in any set
    ("pool", "Exists", [], None),
    ("zone", "Exists", [], "zone Exists: node has no label zone"),
    ("zone", "DoesNotExist", [], None),
    ("pool", "DoesNotExist", [], "pool DoesNotExist: node has label pool=infer-srv"),
    ("cloud.google.com/gke-accelerator-count", "Gt", ["1"], None),
    (
        "cloud.google.com/gke-accelerator-count",
        "Gt",
        ["2"],
        "cloud.google.com/gke-accelerator-count Gt 2: node label "
        "cloud.google.com/gke-accelerator-count is 2, not > 2",
    ),
    ("gpu-memory", "Gt", ["75000"], None),
    (
        "gpu-memory",
        "Lt",
        ["75000"],
        "gpu-memory Lt 75000: node label gpu-memory is 80000, not < 75000",
    ),
    ("negative", "Lt", ["0"], None),
    ("signed", "Gt", ["4"], None),
    ("leading-zero", "Gt", ["6"], None),
    ("gpu-memory", "Gt", ["-1"], None),
    ("version", "Gt", ["1"], "version Gt 1: node label version is '1.5', not an integer"),
    ("text", "Lt", ["9"], "text Lt 9: node label text is 'abc', not an integer"),
    ("missing", "Gt", ["0"], "missing Gt 0: node has no label missing"),
]


@pytest.mark.parametrize(("key", "operator", "values", "expected"), REQUIREMENTS)
def test_requirement(key: str, operator: str, values: list[str], expected: str | None) -> None:
    requirement = NodeSelectorRequirement.model_validate(
        {"key": key, "operator": operator, "values": values}
    )
    assert requirement_reason(requirement, LABELS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("-3", -3),
        ("+5", 5),
        ("007", 7),
        ("1.5", None),
        ("", None),
        ("1e3", None),
        (" 1", None),
        ("9223372036854775808", None),
        ("\u0661", None),
    ],
)
def test_parse_int_like_kubernetes(text: str, expected: int | None) -> None:
    assert parse_int(text) == expected


def test_a_term_ands_its_expressions_and_an_empty_term_matches_nothing() -> None:
    target = nodes_of(node("n1", "{pool: infer-srv, zone: a}")).nodes[0]
    both = NodeSelectorTerm.model_validate(
        {
            "matchExpressions": [
                {"key": "pool", "operator": "In", "values": ["infer-srv"]},
                {"key": "zone", "operator": "In", "values": ["b"]},
            ]
        }
    )
    assert term_reasons(both, target) == ["zone In [b]: node label zone is 'a'"]
    assert term_reasons(NodeSelectorTerm(), target) == ["an empty term matches no node"]
    by_name = NodeSelectorTerm.model_validate(
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
    )
    assert term_reasons(by_name, target) == []


# ----------------------------------------------------------------------------------------
# One pod against one node

NODES = nodes_of(
    node(
        "gpu-1",
        "{pool: infer-srv, gpus: '2'}",
        "{taints: [{key: seldon-gpu-srv, value: 'true', effect: NoSchedule}]}",
        "{allocatable: {nvidia.com/gpu: '2', cpu: '64', memory: 512Gi}}",
    ),
    node("cpu-1", "{pool: general}", "{}", "{allocatable: {cpu: '16', memory: 64Gi}}"),
    node("soft-1", "{pool: infer-srv}", "{taints: [{key: spot, effect: PreferNoSchedule}]}"),
    node("cordoned", "{pool: infer-srv}", "{unschedulable: true}"),
    node("evict-1", "{pool: infer-srv}", "{taints: [{key: maint, value: now, effect: NoExecute}]}"),
)


def verdict_for(pod_text: str, name: str) -> tuple[bool, list[str], list[str]]:
    target = next(n for n in NODES.nodes if n.name == name)
    verdict = judge_node(pod(pod_text), target)
    return verdict.fits, verdict.reasons, verdict.preferences


JUDGEMENTS = [
    pytest.param("{}", "cpu-1", True, [], id="plain-pod-untainted-node"),
    pytest.param(
        "{}",
        "gpu-1",
        False,
        ["taint seldon-gpu-srv=true:NoSchedule is not tolerated"],
        id="untolerated-noschedule",
    ),
    pytest.param(
        "{}",
        "evict-1",
        False,
        ["taint maint=now:NoExecute is not tolerated"],
        id="untolerated-noexecute",
    ),
    pytest.param(
        "{}",
        "cordoned",
        False,
        ["taint node.kubernetes.io/unschedulable:NoSchedule is not tolerated"],
        id="unschedulable",
    ),
    pytest.param(
        "tolerations: [{key: seldon-gpu-srv, operator: Equal, value: 'true', effect: NoSchedule}]",
        "gpu-1",
        True,
        [],
        id="tolerated",
    ),
    pytest.param(
        "nodeSelector: {pool: infer-srv}",
        "cpu-1",
        False,
        ["nodeSelector pool=infer-srv: node label pool is 'general'"],
        id="node-selector-mismatch",
    ),
    pytest.param(
        "nodeSelector: {accelerator: a100}",
        "cpu-1",
        False,
        ["nodeSelector accelerator=a100: node has no label accelerator"],
        id="node-selector-missing-label",
    ),
    pytest.param(
        "containers: [{name: m, resources: " + gpus(4) + "}]\ntolerations: [{operator: Exists}]",
        "gpu-1",
        False,
        ["requests nvidia.com/gpu 4, node allocatable 2"],
        id="too-many-gpus",
    ),
    pytest.param(
        "containers: [{name: m, resources: {limits: {nvidia.com/gpu: 1}}}]",
        "cpu-1",
        False,
        ["requests nvidia.com/gpu 1, node allocatable 0"],
        id="gpu-on-node-without-gpus",
    ),
    pytest.param(
        "containers:\n- {name: m, resources: " + gpus(1) + "}\n"
        "- {name: n, resources: " + gpus(1) + "}\n"
        "tolerations: [{operator: Exists}]",
        "gpu-1",
        True,
        [],
        id="gpus-summed-over-containers-fit",
    ),
    pytest.param(
        "initContainers: [{name: i, resources: {requests: {memory: 100Gi}}}]\n"
        "containers: [{name: m, resources: {requests: {memory: 1Gi}}}]",
        "cpu-1",
        False,
        ["requests memory 100 GiB, node allocatable 64 GiB"],
        id="init-container-max",
    ),
    pytest.param(
        REQUIRED + "{matchExpressions: [{key: pool, operator: In, values: [infer-srv]}]},"
        "{matchExpressions: [{key: pool, operator: In, values: [general]}]}]}}}",
        "cpu-1",
        True,
        [],
        id="terms-are-ored",
    ),
    pytest.param(
        REQUIRED + "{matchExpressions: [{key: pool, operator: In, values: [infer-srv]}]},"
        "{matchExpressions: [{key: gpus, operator: Gt, values: ['1']}]}]}}}",
        "cpu-1",
        False,
        [
            "nodeAffinity: none of the 2 terms matches (term 1: pool In [infer-srv]: node label "
            "pool is 'general'; term 2: gpus Gt 1: node has no label gpus)"
        ],
        id="no-term-matches",
    ),
    pytest.param("{}", "soft-1", True, [], id="prefer-no-schedule-still-fits"),
]


@pytest.mark.parametrize(("pod_text", "name", "fits", "reasons"), JUDGEMENTS)
def test_judge_node(pod_text: str, name: str, fits: bool, reasons: list[str]) -> None:
    got_fits, got_reasons, _ = verdict_for(pod_text, name)
    assert (got_fits, got_reasons) == (fits, reasons)


def test_prefer_no_schedule_and_preferred_affinity_are_preferences() -> None:
    text = (
        "affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: "
        "[{weight: 20, preference: {matchExpressions: "
        "[{key: pool, operator: In, values: [infer-srv]}]}}]}}"
    )
    _, _, preferences = verdict_for(text, "soft-1")
    assert preferences == [
        "taint spot:PreferNoSchedule is not tolerated: Kubernetes prefers other nodes",
        "preferred nodeAffinity term (weight 20) matches",
    ]


def test_node_without_allocatable_is_not_checked_and_says_so() -> None:
    verdict = judge_node(
        pod("containers: [{name: m, resources: {limits: {nvidia.com/gpu: 8}}}]"),
        next(n for n in NODES.nodes if n.name == "soft-1"),
    )
    assert verdict.fits
    assert verdict.notes == [
        "node has no status.allocatable: requests (nvidia.com/gpu) not checked"
    ]


# ----------------------------------------------------------------------------------------
# Servers against nodes: the seed


CPU_NODE = node("cpu-node", "{pool: general}")
PLAIN_GPU_NODE = node(
    "gpu-untainted",
    "{pool: infer-srv, cloud.google.com/gke-accelerator: nvidia-a100-80gb}",
)


def explain(
    *files: str, extra: str = ""
) -> dict[str, tuple[list[str], dict[str, list[str]], list[str]]]:
    bundle = load_files([SEED / name for name in files])
    if extra:
        parse_text(extra, "extra-nodes.yaml", bundle)
    result = {}
    for placement in explain_bundle(bundle):
        refused = {v.node: v.reasons for v in placement.nodes if not v.fits}
        result[placement.server] = (placement.fitting, refused, placement.warnings)
    return result


@pytest.mark.parametrize(
    "server_file",
    ["server-node-selector.yaml", "server-node-affinity.yaml"],
)
def test_seed_servers_run_on_the_seed_gpu_node_only(server_file: str) -> None:
    fitting, refused, warnings = explain(server_file, "node.yaml", extra=CPU_NODE)[
        "mlserver-llm-local-gpu"
    ]
    assert fitting == ["example-node"]
    assert list(refused) == ["cpu-node"]
    assert any("pool" in reason for reason in refused["cpu-node"])
    # The seed asks for 1 GPU and limits 2: Kubernetes would refuse the pod.
    assert any("requests nvidia.com/gpu 1 but limits it to 2" in w for w in warnings)
    assert not any("tolerations alone" in w or "pin it" in w for w in warnings)


def test_seed_gt_server_needs_labels_the_seed_node_lacks() -> None:
    fitting, refused, _ = explain("server-node-affinity-gt.yaml", "node.yaml")[
        "mlserver-llm-local-gpu"
    ]
    assert fitting == []
    reasons = refused["example-node"]
    assert (
        "nodeAffinity gpu.gpu-vendor.example/installed-memory Gt 75000: node has no label "
        "gpu.gpu-vendor.example/installed-memory" in reasons
    )
    # gke-accelerator-count "2" > 1: that expression matches, so it is not among the reasons.
    assert not any("gke-accelerator-count" in reason for reason in reasons)


def test_seed_server_with_only_capabilities_cannot_use_the_tainted_node() -> None:
    fitting, refused, warnings = explain(
        "server-extra-capabilities.yaml", "node.yaml", extra=CPU_NODE
    )["mlserver-llm-local-gpu"]
    assert fitting == ["cpu-node"]
    assert refused == {"example-node": ["taint seldon-gpu-srv=true:NoSchedule is not tolerated"]}
    assert warnings == []


def test_server_config_node_selector_applies_to_servers_using_it() -> None:
    server = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\n"
        "metadata: {name: s1, namespace: seldon-mesh}\n"
        "spec: {serverConfig: mlserver-llm}\n"
    )
    bundle = load_files([SEED / "serverconfig-gpu.yaml", SEED / "node.yaml"])
    parse_text(server + "---\n" + CPU_NODE, "more.yaml", bundle)
    placement = explain_bundle(bundle)[0]
    assert placement.server_config == "mlserver-llm"
    assert placement.fitting == ["example-node"]


def test_tolerations_without_pinning_are_warned_about() -> None:
    server = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: loose}\n"
        "spec:\n  podSpec:\n"
        "    tolerations: [{key: seldon-gpu-srv, operator: Exists, effect: NoSchedule}]\n"
    )
    bundle = load_files([SEED / "node.yaml"])
    parse_text(server + "---\n" + CPU_NODE, "more.yaml", bundle)
    placement = explain_bundle(bundle)[0]
    assert placement.fitting == ["example-node", "cpu-node"]
    assert any("tolerations alone do not place a pod" in w for w in placement.warnings)
    assert any(
        "tolerates seldon-gpu-srv=true:NoSchedule (nodes example-node) but may also run on nodes "
        "without that taint (cpu-node)" in w
        for w in placement.warnings
    )


def test_pinned_but_too_loosely_is_also_warned_about() -> None:
    """A selector that admits both the tainted GPU node and an untainted one."""
    server = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: half}\n"
        "spec:\n  podSpec:\n    nodeSelector: {pool: infer-srv}\n"
        "    tolerations: [{key: seldon-gpu-srv, operator: Equal, value: 'true', "
        "effect: NoSchedule}]\n"
    )
    bundle = load_files([SEED / "node.yaml"])
    parse_text(server + "---\n" + PLAIN_GPU_NODE, "more.yaml", bundle)
    warnings = explain_bundle(bundle)[0].warnings
    assert len(warnings) == 1
    assert "(gpu-untainted): pin it with nodeSelector or nodeAffinity" in warnings[0]


def test_explain_needs_servers_and_nodes() -> None:
    with pytest.raises(ResourceError, match="no Node in the files given"):
        explain_bundle(load_files([SEED / "server-node-selector.yaml"]))
    with pytest.raises(ResourceError, match="no Server in the files given"):
        explain_bundle(load_files([SEED / "node.yaml"]))


def test_a_seldon_server_config_is_judged_as_render_writes_the_pod() -> None:
    """Seldon's rclone container is dropped and its agent replaced by gpuplace's: their
    requests are not counted (mlserver 1 CPU + 1G, the agent kept at 0.5 CPU + 500M)."""
    seldon = SEED.parent / "seldon" / "operator" / "config" / "serverconfigs" / "mlserver.yaml"
    server = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: mlserver\n"
        "spec:\n  serverConfig: mlserver\n"
    )
    tiny = node("tiny", status="{allocatable: {cpu: 100m, memory: 1Mi}}")
    bundle = load_files([seldon])
    parse_text(server + "---\n" + tiny, "more.yaml", bundle)
    (placement,) = explain_bundle(bundle)
    (verdict,) = placement.nodes
    assert "requests cpu 1.5," in " ".join(verdict.reasons)
