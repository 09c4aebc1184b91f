"""Model, Server, ServerConfig and Node resources, parsed from multi-document YAML.

The YAML of Seldon Core 2 (`apiVersion: mlops.seldon.io/v1alpha1`) and Kubernetes Nodes
(`apiVersion: v1`, also inside a `kind: List`) is accepted as written. Every document is
checked field by field before anything uses it; every problem names the file, the document,
the line, the field path and what is allowed, and every problem of every file is reported at
once. Every field of Seldon's Model, Server and ServerConfig is known: those gpuplace does not
act on are accepted with a warning that says why; a field no resource has is an error (with
a "did you mean" when it is close to one). As in Kubernetes, a field written as `null` is
unset. Documents of other kinds (a Service, a Role, Seldon's Pipeline) are skipped with a
warning; an unknown kind under `mlops.seldon.io` is an error.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from contract import spec_rules as rules
from contract.names import LABEL_RULE, SUBDOMAIN_RULE, is_dns1123_label, is_dns1123_subdomain
from contract.quantity import QuantityError, format_bytes, parse_bytes, parse_quantity
from protos import common_pb2

SELDON_GROUP = "mlops.seldon.io"
SELDON_API_VERSION = f"{SELDON_GROUP}/v1alpha1"
KINDS: dict[str, str] = {
    "Model": SELDON_API_VERSION,
    "Server": SELDON_API_VERSION,
    "ServerConfig": SELDON_API_VERSION,
    "Node": "v1",
}
KINDS_ALLOWED = (
    "Model, Server, ServerConfig (apiVersion mlops.seldon.io/v1alpha1), "
    "Node or List (apiVersion v1)"
)
# Seldon Core 2's other kinds: skipped, with the reason.
SELDON_SKIPPED_KINDS: dict[str, str] = {
    "Pipeline": "a Pipeline runs on Seldon's dataflow engine, which gpuplace does not run "
    "(its Models are placed when they are loaded)",
    "Experiment": "an Experiment splits traffic in Seldon's data plane, which gpuplace does "
    "not run",
    "SeldonConfig": "Seldon Core 2's installation settings; gpuplace has its own (chart, flags)",
    "SeldonRuntime": "Seldon Core 2's runtime components; gpuplace runs its own scheduler and "
    "agents",
}
GPU_RESOURCE = "nvidia.com/gpu"
MAX_UINT32 = 2**32 - 1

_INTEGER = re.compile(r"^[+-]?[0-9]+$")

STDIN = "<stdin>"

# ----------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in one document."""

    file: str
    message: str
    document: int | None = None
    path: str = ""
    line: int | None = None
    what: str = ""

    def __str__(self) -> str:
        where = [self.file]
        if self.document is not None:
            where.append(f"document {self.document}" + (f" ({self.what})" if self.what else ""))
        if self.line is not None:
            where.append(f"line {self.line}")
        field_part = f"{self.path}: " if self.path else ""
        return f"{', '.join(where)}: {field_part}{self.message}"


class ResourceError(ValueError):
    """One or more problems in the resource files: nothing may be acted upon."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def format_path(path: Sequence[str | int]) -> str:
    """`('spec', 'containers', 0, 'env')` -> `spec.containers[0].env`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return text


@dataclass(frozen=True)
class Source:
    """Where a resource came from: file, document (1-based), and a line per field path."""

    file: str
    document: int
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict, compare=False)
    prefix: tuple[str | int, ...] = ()
    what: str = ""

    def line(self, path: Sequence[str | int]) -> int | None:
        full = (*self.prefix, *path)
        while True:
            if full in self.lines:
                return self.lines[full]
            if not full:
                return None
            full = full[:-1]

    def problem(self, path: Sequence[str | int], message: str) -> Problem:
        return Problem(
            file=self.file,
            document=self.document,
            path=format_path((*self.prefix, *path)),
            line=self.line(path),
            message=message,
            what=self.what,
        )


# ----------------------------------------------------------------------------------------
# Field types


def _quantity(value: object) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PydanticCustomError(
            "quantity",
            "expected a quantity such as 1, 500m or 20Gi, got {value}",
            {"value": repr(value)},
        )
    try:
        amount = parse_quantity(value)
    except QuantityError as exc:
        raise PydanticCustomError("quantity", str(exc)) from exc
    if amount < 0:
        raise PydanticCustomError(
            "quantity", "{value} is negative; expected 0 or more", {"value": repr(value)}
        )
    return amount


def _memory(value: object) -> str:
    """A memory quantity, kept as written (the scheduler parses it again)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PydanticCustomError(
            "quantity",
            "expected a memory quantity such as 512Mi or 20Gi, got {value}",
            {"value": repr(value)},
        )
    try:
        parse_bytes(value)
    except QuantityError as exc:
        raise PydanticCustomError("quantity", str(exc)) from exc
    return value if isinstance(value, str) else str(value)


Quantity = Annotated[Decimal, BeforeValidator(_quantity)]
MemoryQuantity = Annotated[str, BeforeValidator(_memory)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


class _Loose(_Strict):
    """Status objects written by Kubernetes itself: fields gpuplace does not read are ignored."""

    model_config = ConfigDict(extra="ignore")


def _unused(why: str) -> Any:
    """A Seldon Core 2 field that gpuplace accepts and does not act on: a warning says why."""
    return Field(default=None, json_schema_extra={"unused": why})


def _needed(why: str) -> Any:
    """A required field; `why` completes the message when it is missing."""
    return Field(json_schema_extra={"needed": why})


def _extra(model: type[BaseModel], name: str, what: str) -> str | None:
    for key, info in model.model_fields.items():
        if name in (info.alias, key) and isinstance(info.json_schema_extra, dict):
            text = info.json_schema_extra.get(what)
            return text if isinstance(text, str) else None
    return None


def unused_reason(model: type[BaseModel], name: str) -> str | None:
    """Why gpuplace does not act on the field `name` (its YAML name) of `model`; None: used."""
    return _extra(model, name, "unused")


# ----------------------------------------------------------------------------------------
# Kubernetes shapes (the parts gpuplace reads are typed; the rest pass through unchanged)


class ObjectMeta(_Strict):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    generate_name: Any = None
    uid: Any = None
    resource_version: Any = None
    generation: Any = None
    creation_timestamp: Any = None
    deletion_timestamp: Any = None
    deletion_grace_period_seconds: Any = None
    finalizers: Any = None
    owner_references: Any = None
    managed_fields: Any = None
    self_link: Any = None


class EnvVar(_Strict):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None


class ResourceRequirements(_Strict):
    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}
    claims: Any = None


class Container(_Strict):
    name: str
    image: str | None = None
    env: list[EnvVar] = []
    resources: ResourceRequirements | None = None
    args: Any = None
    command: Any = None
    env_from: Any = None
    image_pull_policy: Any = None
    lifecycle: Any = None
    liveness_probe: Any = None
    ports: Any = None
    readiness_probe: Any = None
    resize_policy: Any = None
    restart_policy: Any = None
    restart_policy_rules: Any = None
    security_context: Any = None
    startup_probe: Any = None
    stdin: Any = None
    stdin_once: Any = None
    termination_message_path: Any = None
    termination_message_policy: Any = None
    tty: Any = None
    volume_devices: Any = None
    volume_mounts: Any = None
    working_dir: Any = None


class Toleration(_Strict):
    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Toleration:
        if not self.key and self.operator != "Exists":
            raise PydanticCustomError(
                "toleration",
                "a toleration without a key must have operator Exists (it tolerates every taint)",
            )
        if self.operator == "Exists" and self.value:
            raise PydanticCustomError(
                "toleration",
                "operator Exists takes no value (got {value})",
                {"value": repr(self.value)},
            )
        return self


OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")


class NodeSelectorRequirement(_Strict):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] = Field(default=[], validate_default=True)

    @field_validator("values")
    @classmethod
    def _values_fit_operator(cls, values: list[str], info: ValidationInfo) -> list[str]:
        operator = info.data.get("operator")
        if operator in ("In", "NotIn") and not values:
            raise PydanticCustomError(
                "values", "operator {op} needs at least one value", {"op": operator}
            )
        if operator in ("Exists", "DoesNotExist") and values:
            raise PydanticCustomError("values", "operator {op} takes no values", {"op": operator})
        if operator in ("Gt", "Lt") and (len(values) != 1 or not _INTEGER.match(values[0])):
            raise PydanticCustomError(
                "values",
                "operator {op} needs exactly one value that is an integer "
                '(e.g. ["1"]), got {values}',
                {"op": operator, "values": values},
            )
        return values


class NodeSelectorTerm(_Strict):
    match_expressions: list[NodeSelectorRequirement] = []
    match_fields: list[NodeSelectorRequirement] = []

    @field_validator("match_fields")
    @classmethod
    def _only_metadata_name(
        cls, fields: list[NodeSelectorRequirement]
    ) -> list[NodeSelectorRequirement]:
        for requirement in fields:
            if requirement.key != "metadata.name" or requirement.operator not in ("In", "NotIn"):
                raise PydanticCustomError(
                    "match_fields",
                    "matchFields supports only key metadata.name with operator In or NotIn",
                )
        return fields


class NodeSelector(_Strict):
    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1)


class PreferredSchedulingTerm(_Strict):
    weight: int = Field(ge=1, le=100)
    preference: NodeSelectorTerm


class NodeAffinity(_Strict):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = []


class Affinity(_Strict):
    node_affinity: NodeAffinity | None = None
    pod_affinity: Any = None
    pod_anti_affinity: Any = None


class PodSpec(_Strict):
    """A Kubernetes PodSpec. Containers are optional: a Server's podSpec is an override."""

    containers: list[Container] = []
    init_containers: list[Container] = []
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    affinity: Affinity | None = None
    node_name: str | None = None
    active_deadline_seconds: Any = None
    automount_service_account_token: Any = None
    dns_config: Any = None
    dns_policy: Any = None
    enable_service_links: Any = None
    ephemeral_containers: Any = None
    eviction_responders: Any = None
    host_aliases: Any = None
    host_ipc: Any = Field(default=None, alias="hostIPC")
    host_network: Any = None
    host_pid: Any = Field(default=None, alias="hostPID")
    host_users: Any = None
    hostname: Any = None
    hostname_override: Any = None
    image_pull_secrets: Any = None
    os: Any = None
    overhead: Any = None
    preemption_policy: Any = None
    priority: Any = None
    priority_class_name: Any = None
    readiness_gates: Any = None
    resource_claims: Any = None
    resources: Any = None
    restart_policy: Any = None
    runtime_class_name: Any = None
    scheduler_name: Any = None
    scheduling_gates: Any = None
    scheduling_group: Any = None
    security_context: Any = None
    service_account: Any = None
    service_account_name: Any = None
    set_hostname_as_fqdn: Any = Field(default=None, alias="setHostnameAsFQDN")
    share_process_namespace: Any = None
    subdomain: Any = None
    termination_grace_period_seconds: Any = None
    topology_spread_constraints: Any = None
    volumes: Any = None

    @field_validator("containers", "init_containers")
    @classmethod
    def _unique_names(cls, containers: list[Container]) -> list[Container]:
        seen: set[str] = set()
        for container in containers:
            if container.name in seen:
                raise PydanticCustomError(
                    "duplicate", "two containers are named {name}", {"name": repr(container.name)}
                )
            seen.add(container.name)
        return containers


# ----------------------------------------------------------------------------------------
# Seldon Core 2 resources and the Node


class Parameter(_Strict):
    name: str = Field(min_length=1)
    value: str


def _parameters(value: object) -> object:
    """Seldon's `[{name, value}]` list, or a plain mapping of strings."""
    if isinstance(value, dict):
        return [{"name": key, "value": item} for key, item in value.items()]
    return value


def _rule(problem: str | None) -> None:
    if problem:
        raise PydanticCustomError("spec", "{problem}", {"problem": problem})


def _requirement(value: object) -> object:
    if isinstance(value, str):
        _rule(rules.requirement_problem(value))
    return value


Requirement = Annotated[str, BeforeValidator(_requirement)]


def _max_replicas_problem(maximum: int, replicas: int, min_replicas: int | None) -> str | None:
    """Seldon Core 2's rule: a maxReplicas above 0 bounds replicas and minReplicas."""
    floor = max(replicas, min_replicas or 0)
    if maximum <= 0 or maximum >= floor:
        return None
    return (
        f"{maximum} is not allowed; expected at least replicas ({replicas}) and minReplicas "
        f"({min_replicas or 0}), or 0 for no maximum"
    )


class ExplainerSpec(_Strict):
    type: str | None = None
    model_ref: str | None = None
    pipeline_ref: str | None = None


class LlmSpec(_Strict):
    model_ref: str | None = None
    pipeline_ref: str | None = None


class DataflowSpec(_Strict):
    clean_topics_on_delete: bool | None = None


class LoggingSpec(_Strict):
    percent: int | None = Field(default=None, ge=0)


_DATA_PLANE = "which gpuplace does not run"


class ModelSpecFields(_Strict):
    """Every field of Seldon Core 2's Model spec, and gpuplace's `gpuMemory` and `gpus`.
    Validators read the fields declared before them: keep the order."""

    secret_name: str | None = None
    storage_uri: str | None = None
    artifact_version: int | None = Field(default=None, ge=0, le=MAX_UINT32)
    model_type: Requirement | None = None
    requirements: list[Requirement] = []
    server: str | None = None
    memory: MemoryQuantity | None = None
    gpu_memory: MemoryQuantity | None = None
    gpus: int | None = Field(default=None, ge=1, le=64)
    replicas: int | None = Field(default=None, ge=1)
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = _unused(
        "gpuplace does not autoscale: it places `replicas` copies (a maxReplicas above 0 must "
        "still be at least replicas and minReplicas)"
    )
    parameters: Annotated[list[Parameter], BeforeValidator(_parameters)] = []
    schema_uri: str | None = _unused(
        "the schema of the model's inputs and outputs; gpuplace sends only the artifact"
    )
    preloaded: bool | None = _unused(
        "gpuplace always places and loads the model itself (Seldon Core 2 does not act on it "
        "either)"
    )
    dedicated: bool | None = _unused(
        "gpuplace does not reserve a server for one model: other models may share its replicas"
    )
    logger: LoggingSpec | None = _unused(
        f"payload logging belongs to Seldon's data plane, {_DATA_PLANE}"
    )
    explainer: ExplainerSpec | None = _unused(
        "placed like any model; the explainer's modelRef/pipelineRef wiring belongs to "
        f"Seldon's data plane, {_DATA_PLANE}"
    )
    llm: LlmSpec | None = _unused(
        "placed like any model; the llm's modelRef/pipelineRef wiring belongs to Seldon's data "
        f"plane, {_DATA_PLANE}"
    )
    dataflow: DataflowSpec | None = _unused(
        f"Kafka topics belong to Seldon's dataflow engine, {_DATA_PLANE}"
    )

    @field_validator("storage_uri")
    @classmethod
    def _fetchable(cls, uri: str | None, info: ValidationInfo) -> str | None:
        if uri is not None:
            if not uri.strip():
                _rule("must not be empty; leave storageUri out for a model without an artifact")
            _rule(rules.storage_uri_problem(uri, info.data.get("secret_name") or ""))
        return uri

    @field_validator("min_replicas")
    @classmethod
    def _min_not_above_replicas(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None:
            _rule(rules.min_replicas_problem(value, info.data.get("replicas") or 1))
        return value

    @field_validator("max_replicas")
    @classmethod
    def _max_not_below_replicas(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None:
            replicas = info.data.get("replicas") or 1
            _rule(_max_replicas_problem(value, replicas, info.data.get("min_replicas")))
        return value

    @field_validator("gpus")
    @classmethod
    def _gpus_need_gpu_memory(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None:
            _rule(rules.gpus_problem(value, bool(info.data.get("gpu_memory"))))
        return value

    @field_validator("parameters")
    @classmethod
    def _unique_parameters(cls, value: list[Parameter]) -> list[Parameter]:
        names = [parameter.name for parameter in value]
        for name in names:
            if names.count(name) > 1:
                raise PydanticCustomError(
                    "duplicate", "parameter {name} is given twice", {"name": repr(name)}
                )
        return value

    @field_validator("llm")
    @classmethod
    def _not_with_explainer(cls, value: LlmSpec | None, info: ValidationInfo) -> LlmSpec | None:
        if value is not None and info.data.get("explainer") is not None:
            _rule("a Model is an explainer or an llm, not both (Seldon Core 2 refuses both too)")
        return value


class ImageOverrides(_Strict):
    agent: dict[str, Any] | None = None
    rclone: dict[str, Any] | None = None


_NO_AUTOSCALING = "gpuplace renders `replicas` (default 1) and does not autoscale Servers"
RetentionPolicy = Literal["Retain", "Delete"]


class ServerSpecFields(_Strict):
    """Every field of Seldon Core 2's Server spec. `serverConfig` defaults to mlserver."""

    server_config: str = "mlserver"
    capabilities: list[Annotated[str, Field(min_length=1)]] | None = None
    extra_capabilities: list[Annotated[str, Field(min_length=1)]] = []
    pod_spec: PodSpec | None = None
    replicas: int | None = Field(default=None, ge=0)
    min_replicas: int | None = _unused(_NO_AUTOSCALING)
    max_replicas: int | None = _unused(_NO_AUTOSCALING)
    stateful_set_persistent_volume_claim_retention_policy: (
        dict[Literal["whenDeleted", "whenScaled"], RetentionPolicy] | None
    ) = None
    image_overrides: ImageOverrides | None = _unused(
        "gpuplace's agent replaces Seldon's agent and rclone containers; its image is "
        "`render --agent-image`"
    )
    disable_auto_update: bool | None = _unused(
        "no controller re-renders Servers when a ServerConfig changes: run `render` again"
    )
    deployment_strategy: dict[str, Any] | None = _unused(
        "gpuplace renders a StatefulSet, to which a Deployment's strategy does not apply"
    )

    @field_validator("min_replicas")
    @classmethod
    def _min_not_above_replicas(cls, value: int | None, info: ValidationInfo) -> int | None:
        replicas = info.data.get("replicas")
        if value is not None and value > 0 and replicas is not None:
            _rule(rules.min_replicas_problem(value, replicas))
        return value

    @field_validator("max_replicas")
    @classmethod
    def _max_not_below_replicas(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None:
            replicas = info.data.get("replicas")
            _rule(
                _max_replicas_problem(
                    value, 1 if replicas is None else replicas, info.data.get("min_replicas")
                )
            )
        return value


class VolumeClaimTemplate(_Strict):
    name: str
    spec: dict[str, Any]


class ServerConfigSpecFields(_Strict):
    """Every field of Seldon Core 2's ServerConfig spec."""

    pod_spec: PodSpec = _needed("a ServerConfig needs the pod its Servers run")
    volume_claim_templates: list[VolumeClaimTemplate] = []


class Taint(_Strict):
    key: str = Field(min_length=1)
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
    time_added: Any = None


class NodeSpecFields(_Strict):
    taints: list[Taint] = []
    unschedulable: bool = False
    config_source: Any = None
    external_id: Any = Field(default=None, alias="externalID")
    pod_cidr: Any = Field(default=None, alias="podCIDR")
    pod_cidrs: Any = Field(default=None, alias="podCIDRs")
    pod_preemption_policy: Any = None
    provider_id: Any = Field(default=None, alias="providerID")


class NodeStatusFields(_Loose):
    allocatable: dict[str, Quantity] | None = None
    capacity: dict[str, Quantity] | None = None


class ModelResource(_Strict):
    api_version: str
    kind: Literal["Model"]
    metadata: ObjectMeta
    spec: ModelSpecFields = _needed("a Model needs a spec: what to load and where")
    status: Any = None


class ServerResource(_Strict):
    api_version: str
    kind: Literal["Server"]
    metadata: ObjectMeta
    spec: ServerSpecFields = ServerSpecFields()
    status: Any = None


class ServerConfigResource(_Strict):
    api_version: str
    kind: Literal["ServerConfig"]
    metadata: ObjectMeta
    spec: ServerConfigSpecFields = _needed("a ServerConfig needs a spec with its podSpec")
    status: Any = None


class NodeResource(_Strict):
    api_version: str
    kind: Literal["Node"]
    metadata: ObjectMeta
    spec: NodeSpecFields = NodeSpecFields()
    status: NodeStatusFields | None = None


_ROOTS: dict[str, type[_Strict]] = {
    "Model": ModelResource,
    "Server": ServerResource,
    "ServerConfig": ServerConfigResource,
    "Node": NodeResource,
}
SPECS: dict[str, type[_Strict]] = {
    "Model": ModelSpecFields,
    "Server": ServerSpecFields,
    "ServerConfig": ServerConfigSpecFields,
}

R = TypeVar("R", bound=_Strict)


@dataclass(frozen=True)
class Loaded(Generic[R]):
    """One validated resource, its document as written (fields written as `null` left out:
    Kubernetes reads them as unset), and where it came from."""

    obj: R
    raw: dict[str, Any]
    source: Source

    @property
    def name(self) -> str:
        return str(self.raw["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        namespace = self.raw["metadata"].get("namespace")
        return None if namespace is None else str(namespace)

    @property
    def kind(self) -> str:
        return str(self.raw["kind"])


@dataclass
class Bundle:
    """Every resource of a set of files, checked; `warnings` are problems that do not stop."""

    models: list[Loaded[ModelResource]] = field(default_factory=list)
    servers: list[Loaded[ServerResource]] = field(default_factory=list)
    server_configs: list[Loaded[ServerConfigResource]] = field(default_factory=list)
    nodes: list[Loaded[NodeResource]] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    # Every name read so far, valid document or not (for the duplicate check): the key is
    # (kind, namespace or None where gpuplace has one namespace of that kind, name).
    names: dict[tuple[str, str | None, str], tuple[Source, str | None]] = field(
        default_factory=dict, repr=False
    )

    def server_config(
        self, name: str, namespace: str | None
    ) -> Loaded[ServerConfigResource] | None:
        """The ServerConfig a Server refers to: same name, same namespace first."""
        candidates = [config for config in self.server_configs if config.name == name]
        for config in candidates:
            if config.namespace == namespace:
                return config
        return candidates[0] if candidates else None


# ----------------------------------------------------------------------------------------
# YAML with line numbers


# A document's nodes once its aliases are expanded: a few "billion laughs" aliases would
# otherwise take the CLI's memory and time without bound.
MAX_NODES = 100_000
# A resource file's size (kubectl's own limit for one object is about 1.5 MiB).
MAX_FILE_BYTES = 16 * 2**20


class _Unsafe(Exception):
    """A document that cannot be read safely: too many nodes, or an alias to itself."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def _walk(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    duplicates: list[tuple[tuple[str | int, ...], int]],
    *,
    seen_nodes: list[int] | None = None,
    open_nodes: frozenset[int] = frozenset(),
) -> None:
    """Record each field's line and each duplicated key; raise _Unsafe for a document that
    expands past MAX_NODES or holds an alias to itself (before anything is built from it)."""
    counter = [0] if seen_nodes is None else seen_nodes
    counter[0] += 1
    line = node.start_mark.line + 1
    if counter[0] > MAX_NODES:
        raise _Unsafe(
            f"the document expands to more than {MAX_NODES:,} YAML nodes (through aliases); "
            "refused",
            line,
        )
    if id(node) in open_nodes:
        raise _Unsafe("an alias refers to a node that contains it (a cycle); refused", line)
    lines.setdefault(path, line)
    inside = open_nodes | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                _walk(value_node, path, {}, [], seen_nodes=counter, open_nodes=inside)
                continue
            key = key_node.value
            if key in seen:
                duplicates.append(((*path, key), key_node.start_mark.line + 1))
            seen.add(key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _walk(
                value_node, (*path, key), lines, duplicates, seen_nodes=counter, open_nodes=inside
            )
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines, duplicates, seen_nodes=counter, open_nodes=inside)


@dataclass(frozen=True)
class _Document:
    index: int
    data: Any
    lines: dict[tuple[str | int, ...], int]


def _documents(text: str, file: str, problems: list[Problem]) -> Iterator[_Document]:
    loader = yaml.SafeLoader(text)
    index = 0
    try:
        while loader.check_node():
            index += 1
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there is one
                continue
            lines: dict[tuple[str | int, ...], int] = {}
            duplicates: list[tuple[tuple[str | int, ...], int]] = []
            try:
                _walk(node, (), lines, duplicates)
            except _Unsafe as exc:
                problems.append(Problem(file, str(exc), index, line=exc.line))
                return
            data = loader.construct_document(node)
            for path, line in duplicates:
                problems.append(
                    Problem(
                        file,
                        "the key is given twice in one mapping",
                        index,
                        format_path(path),
                        line,
                    )
                )
            yield _Document(index, data, lines)
    except RecursionError:
        problems.append(
            Problem(file, "the YAML is nested too deeply to be read; refused", max(index, 1))
        )
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        message = f"malformed YAML: {reason}" + (f" ({context})" if context else "")
        problems.append(
            Problem(file, message, max(index, 1), line=None if mark is None else mark.line + 1)
        )
    finally:
        loader.dispose()


# ----------------------------------------------------------------------------------------
# Validation errors in words


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a number)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return repr(value)


def _unwrap(annotation: Any) -> Any:
    """The model class inside Optional[...] / Annotated[...]."""
    while True:
        args = get_args(annotation)
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = args[0]
            continue
        if origin is not None and origin not in (list, dict) and args:
            models = [arg for arg in args if isinstance(arg, type) and issubclass(arg, BaseModel)]
            if models:
                return models[0]
            lists = [arg for arg in args if get_origin(arg) in (list, dict)]
            if lists:
                annotation = lists[0]
                continue
        return annotation


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that holds the field at `loc` (for 'allowed fields' messages)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            match = [
                info.annotation
                for name, info in current.model_fields.items()
                if part in (info.alias, name)
            ]
            if not match:
                return None
            current = match[0]
        elif get_origin(current) in (list, dict):
            current = get_args(current)[-1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _field_names(model: type[BaseModel]) -> list[str]:
    """The YAML names of a model's fields, sorted as a person looks them up."""
    return sorted((info.alias or name for name, info in model.model_fields.items()), key=str.lower)


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    """` (did you mean X?)` for the choice closest to `word` (case aside), or nothing."""
    lowered = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]}?)" if close else ""


def _message(root: type[BaseModel], error: Any, null: bool = False) -> str:
    """One pydantic error in words; `null`: the field was written as null (left out)."""
    kind = error["type"]
    value = error.get("input")
    loc = [part for part in error["loc"] if isinstance(part, str | int)]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        holder = _model_at(root, loc[:-1])
        if holder is None:
            return "unknown field"
        names = _field_names(holder)
        hint = _did_you_mean(str(loc[-1]), names)
        return f"unknown field{hint}; allowed: {', '.join(names)}"
    if kind == "missing":
        holder = _model_at(root, loc[:-1])
        extra = _extra(holder, str(loc[-1]), "needed") if holder else None
        why = f"; {extra}" if extra else ""
        if null:
            return f"required field is null (null means unset, as in Kubernetes){why}"
        return f"required field is missing{why}"
    if kind == "string_type":
        hint = f' (quote it: "{value}")' if isinstance(value, bool | int | float) else ""
        if isinstance(value, bool):
            hint = f' (quote it: "{str(value).lower()}")'
        return f"expected a string, got {_describe(value)}{hint}"
    if kind == "int_type":
        return f"expected an integer, got {_describe(value)}"
    if kind == "bool_type":
        return f"expected true or false, got {_describe(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {_describe(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {_describe(value)}"
    if kind == "literal_error":
        return f"{_describe(value)} is not allowed; expected one of: {ctx.get('expected', '')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        symbol = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        limit = next(iter(ctx.values()), "")
        return f"{_describe(value)} is not allowed; expected an integer {symbol} {limit}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


# ----------------------------------------------------------------------------------------
# Parsing


def _what(raw: Any) -> str:
    if not isinstance(raw, dict):
        return ""
    kind = raw.get("kind")
    metadata = raw.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if isinstance(kind, str) and isinstance(name, str):
        return f"{kind} {name}"
    return kind if isinstance(kind, str) else ""


def _drop_nulls(value: Any, path: tuple[str | int, ...], nulls: set[tuple[str | int, ...]]) -> Any:
    """`value` without the mapping entries written as null (Kubernetes: null is unset);
    their paths go to `nulls`."""
    if isinstance(value, dict):
        kept: dict[Any, Any] = {}
        for key, item in value.items():
            if item is None:
                nulls.add((*path, key))
            else:
                kept[key] = _drop_nulls(item, (*path, key), nulls)
        return kept
    if isinstance(value, list):
        return [_drop_nulls(item, (*path, index), nulls) for index, item in enumerate(value)]
    return value


def _group(api_version: str) -> str:
    """The API group of an apiVersion: `mlops.seldon.io/v1alpha1` -> `mlops.seldon.io`,
    `v1` -> `` (the core group)."""
    return api_version.rpartition("/")[0]


def _kind(
    raw: dict[str, Any], source: Source, warnings: list[Problem], problems: list[Problem]
) -> str:
    """The kind gpuplace reads this document as; '' when it is skipped (with a warning) or
    refused (with a problem)."""
    kind = raw.get("kind")
    api_version = raw.get("apiVersion")
    if kind is None:
        problems.append(
            source.problem(
                ("kind",), f"required field is missing; expected one of: {KINDS_ALLOWED}"
            )
        )
        return ""
    if not isinstance(kind, str):
        problems.append(source.problem(("kind",), f"expected a string, got {_describe(kind)}"))
        return ""
    if not isinstance(api_version, str):
        shown = "missing" if api_version is None else f"{_describe(api_version)} is not allowed"
        wanted = f"; expected {KINDS[kind]} for kind {kind}" if kind in KINDS else ""
        problems.append(source.problem(("apiVersion",), f"{shown}{wanted}"))
        return ""
    expected = KINDS.get(kind)
    group = _group(api_version)
    if expected == api_version:
        return kind
    if expected is not None and (
        group == _group(expected) or difflib.get_close_matches(api_version, [expected], cutoff=0.8)
    ):
        problems.append(
            source.problem(
                ("apiVersion",),
                f"{_describe(api_version)} is not allowed for kind {kind}; expected {expected}",
            )
        )
        return ""
    if kind in SELDON_SKIPPED_KINDS and group == SELDON_GROUP:
        warnings.append(
            source.problem(
                (), f"skipped: kind {kind} (apiVersion {api_version}): {SELDON_SKIPPED_KINDS[kind]}"
            )
        )
        return ""
    if group == SELDON_GROUP:
        seldon_kinds = [k for k, v in KINDS.items() if v == SELDON_API_VERSION]
        hint = _did_you_mean(kind, [*seldon_kinds, *SELDON_SKIPPED_KINDS])
        problems.append(
            source.problem(
                ("kind",),
                f"unknown kind {kind!r} of {SELDON_GROUP}{hint}; gpuplace reads "
                f"{', '.join(seldon_kinds)} and skips {', '.join(SELDON_SKIPPED_KINDS)}",
            )
        )
        return ""
    warnings.append(
        source.problem(
            (), f"skipped: kind {kind} (apiVersion {api_version}) is not one gpuplace reads"
        )
    )
    return ""


def _name_problems(kind: str, raw: dict[str, Any], source: Source) -> list[Problem]:
    """The naming rules (Kubernetes' and gpuplace's) of the names a document holds: a
    DNS-1123 label, or (`label` false) a DNS-1123 subdomain."""
    names: list[tuple[tuple[str, str], bool]] = [
        (("metadata", "name"), kind != "Node"),
        (("metadata", "namespace"), True),
    ]
    if kind == "Model":
        names += [(("spec", "server"), True), (("spec", "secretName"), False)]
    if kind == "Server":
        names.append((("spec", "serverConfig"), True))
    found: list[Problem] = []
    for (part, key), label in names:
        holder = raw.get(part)
        value = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(value, str):
            continue  # absent, or a type error pydantic reports
        subdomain = is_dns1123_subdomain(value)
        if label and not is_dns1123_label(value):
            also = "" if subdomain or part != "metadata" else f" ({_K8S_REFUSES})"
            found.append(source.problem((part, key), f"{value!r} is not {LABEL_RULE}{also}"))
        elif not label and not subdomain:
            found.append(source.problem((part, key), f"{value!r} is not {SUBDOMAIN_RULE}"))
    return found


_K8S_REFUSES = "Kubernetes refuses it as an object name too"


def _duplicate_problem(
    kind: str, raw: dict[str, Any], source: Source, bundle: Bundle
) -> Problem | None:
    """Remember the document's name; a problem when another document has it too."""
    metadata = raw.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name")
    namespace = metadata.get("namespace")
    namespace = namespace if isinstance(namespace, str) else None
    if not isinstance(name, str):
        return None
    key = (kind, namespace if kind == "ServerConfig" else None, name)
    first = bundle.names.get(key)
    if first is None:
        bundle.names[key] = (source, namespace)
        return None
    where, other = first
    message = f"{kind} {name!r} is defined twice (first in {where.file}, document {where.document})"
    if other != namespace:
        message += (
            f"; gpuplace has one namespace of {kind}s: {name!r} in namespace "
            f"{other or '(none)'} and in {namespace or '(none)'} are the same {kind}"
        )
    return source.problem(("metadata", "name"), message)


def _unused_warnings(kind: str, raw: dict[str, Any], source: Source) -> list[Problem]:
    spec = raw.get("spec")
    if kind not in SPECS or not isinstance(spec, dict):
        return []
    warnings = []
    for name in spec:
        why = unused_reason(SPECS[kind], str(name))
        if why:
            warnings.append(
                source.problem(("spec", name), f"accepted, not acted on by gpuplace: {why}")
            )
    return warnings


def _parse_one(
    written: Any, source: Source, bundle: Bundle, problems: list[Problem]
) -> Loaded[Any] | None:
    """Check one document (every rule, every problem) and read it; None when it is skipped
    or wrong."""
    if not isinstance(written, dict):
        problems.append(
            source.problem(
                (), f"expected a mapping with apiVersion and kind, got {_describe(written)}"
            )
        )
        return None
    nulls: set[tuple[str | int, ...]] = set()
    raw: dict[str, Any] = _drop_nulls(written, (), nulls)
    kind = _kind(raw, source, bundle.warnings, problems)
    if not kind:
        return None
    root = _ROOTS[kind]
    found: list[Problem] = []
    obj: _Strict | None = None
    try:
        obj = root.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(part for part in error["loc"] if isinstance(part, str | int))
            found.append(source.problem(loc, _message(root, error, loc in nulls)))
    found.extend(_name_problems(kind, raw, source))
    duplicate = _duplicate_problem(kind, raw, source, bundle)
    if duplicate is not None:
        found.append(duplicate)
    bundle.warnings.extend(_unused_warnings(kind, raw, source))
    problems.extend(sorted(found, key=lambda problem: problem.line or 0))
    if obj is None or found:
        return None
    return Loaded(obj=obj, raw=raw, source=source)


def parse_text(text: str, file: str, bundle: Bundle | None = None) -> Bundle:
    """Parse one file's text into `bundle` (a new one by default); raise ResourceError."""
    bundle = Bundle() if bundle is None else bundle
    problems: list[Problem] = []
    _parse_into(text, file, bundle, problems)
    if problems:
        raise ResourceError(problems)
    return bundle


def _parse_into(text: str, file: str, bundle: Bundle, problems: list[Problem]) -> None:
    targets: dict[str, list[Any]] = {
        "Model": bundle.models,
        "Server": bundle.servers,
        "ServerConfig": bundle.server_configs,
        "Node": bundle.nodes,
    }
    for document in _documents(text, file, problems):
        if document.data is None:
            continue
        items: list[tuple[Any, tuple[str | int, ...]]] = [(document.data, ())]
        data = document.data
        if isinstance(data, dict) and data.get("kind") == "List" and data.get("apiVersion") == "v1":
            entries = data.get("items")
            if not isinstance(entries, list):
                problems.append(
                    Problem(
                        file, "a List needs items: a list of resources", document.index, "items"
                    )
                )
                continue
            items = [(item, ("items", index)) for index, item in enumerate(entries)]
        for raw, prefix in items:
            source = Source(file, document.index, document.lines, prefix, _what(raw))
            loaded = _parse_one(raw, source, bundle, problems)
            if loaded is not None:
                targets[loaded.kind].append(loaded)


def load_files(paths: Sequence[str | Path], *, stdin_text: str | None = None) -> Bundle:
    """Parse every file (`-` reads `stdin_text`); raise one ResourceError listing all problems."""
    bundle = Bundle()
    problems: list[Problem] = []
    for path in paths:
        name = str(path)
        if name == "-":
            text = stdin_text if stdin_text is not None else ""
            name = STDIN
            if len(text) > MAX_FILE_BYTES:
                problems.append(
                    Problem(
                        name,
                        f"more than the {format_bytes(MAX_FILE_BYTES)} a resource "
                        "file may have; split it",
                    )
                )
                continue
        else:
            try:
                size = Path(path).stat().st_size
                if size > MAX_FILE_BYTES:
                    problems.append(
                        Problem(
                            name,
                            f"{format_bytes(size)} is more than the {format_bytes(MAX_FILE_BYTES)} "
                            "a resource file may have; split it",
                        )
                    )
                    continue
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                problems.append(Problem(name, f"cannot read the file: {exc.strerror or exc}"))
                continue
            except UnicodeDecodeError as exc:
                problems.append(Problem(name, f"not UTF-8 text: {exc.reason}"))
                continue
        _parse_into(text, name, bundle, problems)
    if problems:
        raise ResourceError(problems)
    return bundle


# ----------------------------------------------------------------------------------------
# Model -> ModelSpec


def local_artifact_path(storage_uri: str, file: str) -> str:
    """A relative local `storageUri` made absolute against the folder of the file that says
    it (the current folder for stdin), as docker compose and kustomize read relative paths;
    every other URI unchanged. The agent reads the path on its own machine."""
    if not storage_uri or rules.uri_scheme(storage_uri) or Path(storage_uri).is_absolute():
        return storage_uri
    folder = Path.cwd() if file == STDIN else Path(file).parent
    return os.path.abspath(folder / storage_uri)


def to_model_spec(model: Loaded[ModelResource]) -> common_pb2.ModelSpec:
    """The LoadModel request body for one Model: quantities kept as written, a relative
    local storageUri made absolute (local_artifact_path)."""
    spec = model.obj.spec
    requirements = list(spec.requirements)
    if spec.model_type is not None and spec.model_type not in requirements:
        requirements.append(spec.model_type)  # as Seldon Core 2 does
    message = common_pb2.ModelSpec(
        name=model.name,
        storage_uri=local_artifact_path(spec.storage_uri or "", model.source.file),
        requirements=requirements,
        server=spec.server or "",
        memory=spec.memory or "",
        gpu_memory=spec.gpu_memory or "",
        gpus=spec.gpus or 0,
        parameters={parameter.name: parameter.value for parameter in spec.parameters},
        artifact_version=spec.artifact_version,
        namespace=model.namespace or "",
        secret_name=spec.secret_name or "",
    )
    if spec.replicas is not None:
        message.replicas = spec.replicas
    if spec.min_replicas is not None:
        message.min_replicas = spec.min_replicas
    return message


def split_capabilities(value: str) -> list[str]:
    """`SELDON_SERVER_CAPABILITIES`: a comma list, trimmed, empty items dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]
