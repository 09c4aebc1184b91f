"""Which nodes a Server's pods could run on, and why not the others — Kubernetes' rules.

Pure functions over the parsed resources (no cluster needed):

- taints and tolerations: a NoSchedule or NoExecute taint the pod does not tolerate keeps it
  off the node; an untolerated PreferNoSchedule taint only makes the node less preferred.
  A toleration matches a taint when the effects match (an empty effect matches every
  effect) and either the operator is Exists (an empty key with Exists matches every key) or
  the keys and values are equal (operator Equal, the default).
- `spec.unschedulable`: the node carries `node.kubernetes.io/unschedulable:NoSchedule`.
- nodeSelector: every pair must equal a node label.
- required nodeAffinity: the terms are ORed, the expressions of a term ANDed. In / NotIn /
  Exists / DoesNotExist as Kubernetes; Gt / Lt compare integers: the one value is an integer
  and the node label must parse as one, else the expression does not match. An empty term
  matches nothing. matchFields supports `metadata.name`.
- resources: the pod's requests (sum over containers; an init container's alone when
  larger) must fit the node's `status.allocatable`; an extended resource such as
  nvidia.com/gpu the node does not list counts as 0. A node without `status.allocatable`
  is not checked (said so in the notes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from contract.quantity import format_bytes
from gpuplace.render import RenderSettings, add_agent, extended_resource_warnings, resolve_server
from gpuplace.resources import (
    GPU_RESOURCE,
    Bundle,
    Container,
    Loaded,
    NodeResource,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PodSpec,
    Problem,
    ResourceError,
    Taint,
    Toleration,
)

BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")
UNSCHEDULABLE_TAINT = Taint(key="node.kubernetes.io/unschedulable", effect="NoSchedule")
CORE_RESOURCES = ("cpu", "memory", "ephemeral-storage", "pods")


# ----------------------------------------------------------------------------------------
# Single rules


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """Kubernetes' ToleratesTaint."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator == "Exists":
        return True
    return (toleration.value or "") == (taint.value or "")


def describe_taint(taint: Taint) -> str:
    value = f"={taint.value}" if taint.value else ""
    return f"{taint.key}{value}:{taint.effect}"


def parse_int(value: str) -> int | None:
    """An integer as Kubernetes' strconv.ParseInt(value, 10, 64) reads it, else None."""
    text = value
    if text[:1] in "+-":
        text = text[1:]
    if not text or not text.isascii() or not text.isdigit():
        return None
    number = int(value)
    return number if -(2**63) <= number < 2**63 else None


def requirement_reason(requirement: NodeSelectorRequirement, labels: dict[str, str]) -> str | None:
    """None when the labels satisfy the expression, else why not."""
    key = requirement.key
    operator = requirement.operator
    values = requirement.values
    present = key in labels
    label = labels.get(key)
    if operator in ("Gt", "Lt") and len(values) == 1:
        shown = f"{key} {operator} {values[0]}"
    else:
        shown = f"{key} {operator}" + (f" [{', '.join(values)}]" if values else "")
    if operator == "In":
        if not present:
            return f"{shown}: node has no label {key}"
        return None if label in values else f"{shown}: node label {key} is {label!r}"
    if operator == "NotIn":
        return None if label not in values else f"{shown}: node label {key} is {label!r}"
    if operator == "Exists":
        return None if present else f"{shown}: node has no label {key}"
    if operator == "DoesNotExist":
        return None if not present else f"{shown}: node has label {key}={label}"
    # Gt / Lt: the one value is an integer (checked when parsed); the label must be one too.
    bound = parse_int(values[0]) if len(values) == 1 else None
    if bound is None:
        return f"{shown}: needs exactly one integer value"
    if not present or label is None:
        return f"{shown}: node has no label {key}"
    number = parse_int(label)
    if number is None:
        return f"{shown}: node label {key} is {label!r}, not an integer"
    if operator == "Gt":
        return None if number > bound else f"{shown}: node label {key} is {number}, not > {bound}"
    return None if number < bound else f"{shown}: node label {key} is {number}, not < {bound}"


def term_reasons(term: NodeSelectorTerm, node: Loaded[NodeResource]) -> list[str]:
    """Why a node selector term does not match the node (empty: it matches)."""
    if not term.match_expressions and not term.match_fields:
        return ["an empty term matches no node"]
    labels = node.obj.metadata.labels
    reasons = [
        reason
        for requirement in term.match_expressions
        if (reason := requirement_reason(requirement, labels)) is not None
    ]
    fields = {"metadata.name": node.name}
    reasons.extend(
        f"matchFields {reason}"
        for requirement in term.match_fields
        if (reason := requirement_reason(requirement, fields)) is not None
    )
    return reasons


# ----------------------------------------------------------------------------------------
# Resources


def pod_requests(pod: PodSpec) -> dict[str, Decimal]:
    """What the scheduler counts: sum over containers, or the largest init container."""

    def requests(container: Container) -> dict[str, Decimal]:
        resources = container.resources
        if resources is None:
            return {}
        result = dict(resources.requests)
        # A limit without a request: the request defaults to the limit.
        for name, amount in resources.limits.items():
            result.setdefault(name, amount)
        return result

    total: dict[str, Decimal] = {}
    for container in pod.containers:
        for name, amount in requests(container).items():
            total[name] = total.get(name, Decimal(0)) + amount
    for container in pod.init_containers:
        for name, amount in requests(container).items():
            total[name] = max(total.get(name, Decimal(0)), amount)
    return total


def _show(name: str, amount: Decimal) -> str:
    if name in ("memory", "ephemeral-storage") or name.startswith("hugepages-"):
        return format_bytes(int(amount))
    return format(amount.normalize(), "f")


def resource_reasons(
    requests: dict[str, Decimal], node: Loaded[NodeResource]
) -> tuple[list[str], list[str]]:
    """(reasons, notes) for the pod's requests against the node's allocatable resources."""
    status = node.obj.status
    allocatable = status.allocatable if status is not None else None
    if allocatable is None:
        wanted = [name for name in requests if name == GPU_RESOURCE or "/" in name]
        notes = (
            [f"node has no status.allocatable: requests ({', '.join(sorted(wanted))}) not checked"]
            if wanted
            else []
        )
        return [], notes
    reasons: list[str] = []
    for name in sorted(requests):
        amount = requests[name]
        if amount <= 0:
            continue
        if name in allocatable:
            available = allocatable[name]
        elif name in CORE_RESOURCES:
            continue
        else:
            available = Decimal(0)
        if amount > available:
            reasons.append(
                f"requests {name} {_show(name, amount)}, node allocatable {_show(name, available)}"
            )
    return reasons, []


# ----------------------------------------------------------------------------------------
# A pod against every node


@dataclass
class NodeVerdict:
    node: str
    fits: bool
    reasons: list[str] = field(default_factory=list)
    preferences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ServerPlacement:
    server: str
    namespace: str | None
    server_config: str
    nodes: list[NodeVerdict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def fitting(self) -> list[str]:
        return [verdict.node for verdict in self.nodes if verdict.fits]


def node_taints(node: Loaded[NodeResource]) -> list[Taint]:
    taints = list(node.obj.spec.taints)
    if node.obj.spec.unschedulable:
        taints.append(UNSCHEDULABLE_TAINT)
    return taints


def judge_node(pod: PodSpec, node: Loaded[NodeResource]) -> NodeVerdict:
    """Whether the pod may be scheduled onto the node, every reason when not."""
    verdict = NodeVerdict(node=node.name, fits=True)
    if pod.node_name and pod.node_name != node.name:
        verdict.reasons.append(f"nodeName is {pod.node_name!r}")
    for taint in node_taints(node):
        tolerated = any(tolerates(toleration, taint) for toleration in pod.tolerations)
        if tolerated:
            continue
        if taint.effect in BLOCKING_EFFECTS:
            verdict.reasons.append(f"taint {describe_taint(taint)} is not tolerated")
        else:
            verdict.preferences.append(
                f"taint {describe_taint(taint)} is not tolerated: Kubernetes prefers other nodes"
            )
    labels = node.obj.metadata.labels
    for key, value in pod.node_selector.items():
        if key not in labels:
            verdict.reasons.append(f"nodeSelector {key}={value}: node has no label {key}")
        elif labels[key] != value:
            verdict.reasons.append(
                f"nodeSelector {key}={value}: node label {key} is {labels[key]!r}"
            )
    affinity = pod.affinity.node_affinity if pod.affinity else None
    required = affinity.required_during_scheduling_ignored_during_execution if affinity else None
    if required is not None:
        per_term = [term_reasons(term, node) for term in required.node_selector_terms]
        if all(per_term):
            if len(per_term) == 1:
                verdict.reasons.extend(f"nodeAffinity {reason}" for reason in per_term[0])
            else:
                detail = "; ".join(
                    f"term {index + 1}: {', '.join(reasons)}"
                    for index, reasons in enumerate(per_term)
                )
                verdict.reasons.append(
                    f"nodeAffinity: none of the {len(per_term)} terms matches ({detail})"
                )
    if affinity is not None:
        for preferred in affinity.preferred_during_scheduling_ignored_during_execution:
            if not term_reasons(preferred.preference, node):
                verdict.preferences.append(
                    f"preferred nodeAffinity term (weight {preferred.weight}) matches"
                )
    reasons, notes = resource_reasons(pod_requests(pod), node)
    verdict.reasons.extend(reasons)
    verdict.notes.extend(notes)
    verdict.fits = not verdict.reasons
    return verdict


def _pinned(pod: PodSpec) -> bool:
    affinity = pod.affinity.node_affinity if pod.affinity else None
    required = affinity.required_during_scheduling_ignored_during_execution if affinity else None
    return bool(pod.node_selector) or required is not None or bool(pod.node_name)


def toleration_warnings(
    pod: PodSpec, nodes: Sequence[Loaded[NodeResource]], verdicts: Sequence[NodeVerdict]
) -> list[str]:
    """A toleration lets a pod onto tainted nodes; it does not keep it off the others."""
    warnings: list[str] = []
    if not pod.tolerations:
        return warnings
    if not _pinned(pod):
        warnings.append(
            "tolerations without nodeSelector or required nodeAffinity: the pods may run on any "
            "node, tainted or not (tolerations alone do not place a pod)"
        )
    fits = {verdict.node for verdict in verdicts if verdict.fits}
    blocking = {
        describe_taint(taint): taint
        for node in nodes
        for taint in node_taints(node)
        if taint.effect in BLOCKING_EFFECTS and any(tolerates(t, taint) for t in pod.tolerations)
    }
    for shown, taint in blocking.items():
        tainted = [n.name for n in nodes if n.name in fits and taint in node_taints(n)]
        untainted = [n.name for n in nodes if n.name in fits and taint not in node_taints(n)]
        if tainted and untainted:
            warnings.append(
                f"tolerates {shown} (nodes {', '.join(tainted)}) but may also run on nodes "
                f"without that taint ({', '.join(untainted)}): pin it with nodeSelector or "
                "nodeAffinity"
            )
    return warnings


def explain_pod(
    server: str,
    namespace: str | None,
    server_config: str,
    pod: PodSpec,
    nodes: Sequence[Loaded[NodeResource]],
) -> ServerPlacement:
    verdicts = [judge_node(pod, node) for node in nodes]
    placement = ServerPlacement(server, namespace, server_config, verdicts)
    placement.warnings = toleration_warnings(pod, nodes, verdicts)
    return placement


def explain_bundle(bundle: Bundle) -> list[ServerPlacement]:
    """Every Server of the bundle (pod spec merged with its ServerConfig) against every Node."""
    if not bundle.servers:
        raise ResourceError(
            [Problem("<input>", "no Server in the files given: nothing to explain")]
        )
    if not bundle.nodes:
        raise ResourceError(
            [
                Problem(
                    "<input>",
                    "no Node in the files given (e.g. kubectl get nodes -o yaml > nodes.yaml)",
                )
            ]
        )
    placements: list[ServerPlacement] = []
    problems: list[Problem] = []
    for server in bundle.servers:
        try:
            resolved = resolve_server(bundle, server)
            # The pod as `render` writes it: Seldon's agent and rclone replaced by gpuplace's
            # agent, whose requests count too.
            pod, _ = add_agent(resolved, RenderSettings())
        except ResourceError as exc:
            problems.extend(exc.problems)
            continue
        placement = explain_pod(
            server.name,
            server.namespace,
            resolved.config.name,
            PodSpec.model_validate(pod),
            bundle.nodes,
        )
        placement.warnings.extend(
            warning.message for warning in extended_resource_warnings(resolved)
        )
        placements.append(placement)
    if problems:
        raise ResourceError(problems)
    return placements
