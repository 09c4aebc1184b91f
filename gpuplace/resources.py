"""Model, Server, ServerConfig and Node resources, parsed from multi-document YAML.

The YAML of Seldon Core 2 (`apiVersion: mlops.seldon.io/v1alpha1`) and Kubernetes Nodes
(`apiVersion: v1`, also inside a `kind: List`) is accepted as written. Every document is
checked field by field before anything uses it; every problem names the file, the document,
the line, the field path and what is allowed. Unknown kinds and unknown fields are errors.
A few Seldon Core 2 fields that gpuplace does not act on are accepted with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
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
from contract.names import LABEL_RULE, is_dns1123_label
from contract.quantity import QuantityError, parse_bytes, parse_quantity
from protos import common_pb2

SELDON_API_VERSION = "mlops.seldon.io/v1alpha1"
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
GPU_RESOURCE = "nvidia.com/gpu"
# What the agent can fetch (as the scheduler checks it too).

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")

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


def _storage_uri(value: object) -> object:
    if isinstance(value, str):
        _rule(rules.storage_uri_problem(value))
    return value


class ModelSpecFields(_Strict):
    storage_uri: Annotated[str, BeforeValidator(_storage_uri)] | None = None
    requirements: list[Annotated[str, BeforeValidator(_requirement)]] = []
    server: str | None = None
    memory: MemoryQuantity | None = None
    gpu_memory: MemoryQuantity | None = None
    gpus: int | None = Field(default=None, ge=1, le=64)
    replicas: int | None = Field(default=None, ge=1)
    min_replicas: int | None = Field(default=None, ge=0)
    parameters: Annotated[list[Parameter], BeforeValidator(_parameters)] = []
    # Seldon Core 2 fields that gpuplace accepts and does not act on (a warning says so).
    artifact_version: Any = None
    schema_uri: Any = None
    secret_name: Any = None
    max_replicas: Any = None
    logger: Any = None
    preloaded: Any = None
    dedicated: Any = None

    @field_validator("min_replicas")
    @classmethod
    def _min_not_above_replicas(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None:
            _rule(rules.min_replicas_problem(value, info.data.get("replicas") or 1))
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


class ServerSpecFields(_Strict):
    server_config: str = "mlserver"
    capabilities: list[Annotated[str, Field(min_length=1)]] | None = None
    extra_capabilities: list[Annotated[str, Field(min_length=1)]] = []
    pod_spec: PodSpec | None = None
    replicas: int | None = Field(default=None, ge=0)
    stateful_set_persistent_volume_claim_retention_policy: dict[str, Any] | None = None
    # Seldon Core 2 fields that gpuplace accepts and does not act on (a warning says so).
    min_replicas: Any = None
    max_replicas: Any = None
    image_overrides: Any = None
    disable_auto_update: Any = None


class VolumeClaimTemplate(_Strict):
    name: str
    spec: dict[str, Any]


class ServerConfigSpecFields(_Strict):
    pod_spec: PodSpec
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
    spec: ModelSpecFields
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
    spec: ServerConfigSpecFields
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
_IGNORED_FIELDS: dict[str, tuple[str, ...]] = {
    "Model": (
        "artifactVersion",
        "schemaUri",
        "secretName",
        "maxReplicas",
        "logger",
        "preloaded",
        "dedicated",
    ),
    "Server": ("minReplicas", "maxReplicas", "imageOverrides", "disableAutoUpdate"),
}

R = TypeVar("R", bound=_Strict)


@dataclass(frozen=True)
class Loaded(Generic[R]):
    """One validated resource, its document exactly as written, and where it came from."""

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


def _walk(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    duplicates: list[tuple[tuple[str | int, ...], int]],
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = key_node.value
            if key in seen:
                duplicates.append(((*path, key), key_node.start_mark.line + 1))
            seen.add(key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines, duplicates)


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
            data = loader.construct_document(node)
            lines: dict[tuple[str | int, ...], int] = {}
            duplicates: list[tuple[tuple[str | int, ...], int]] = []
            _walk(node, (), lines, duplicates)
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


def _allowed_fields(model: type[BaseModel]) -> str:
    return ", ".join(info.alias or name for name, info in model.model_fields.items())


def _message(root: type[BaseModel], error: Any) -> str:
    kind = error["type"]
    value = error.get("input")
    loc = [part for part in error["loc"] if isinstance(part, str | int)]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        holder = _model_at(root, loc[:-1])
        allowed = f"; allowed: {_allowed_fields(holder)}" if holder else ""
        return f"unknown field{allowed}"
    if kind == "missing":
        return "required field is missing"
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


def _check_names(loaded: Loaded[Any], problems: list[Problem]) -> None:
    metadata = loaded.raw["metadata"]
    name = metadata["name"]
    if loaded.kind == "Node":
        if len(name) > 253 or not _SUBDOMAIN.match(name):
            problems.append(
                loaded.source.problem(
                    ("metadata", "name"),
                    f"{name!r} is not a DNS-1123 subdomain: at most 253 characters, lower-case "
                    "letters, digits, '-' and '.'",
                )
            )
    elif not is_dns1123_label(name):
        problems.append(
            loaded.source.problem(("metadata", "name"), f"{name!r} is not {LABEL_RULE}")
        )
    namespace = metadata.get("namespace")
    if namespace is not None and not is_dns1123_label(namespace):
        problems.append(
            loaded.source.problem(("metadata", "namespace"), f"{namespace!r} is not {LABEL_RULE}")
        )
    spec = loaded.raw.get("spec") or {}
    for key in ("server", "serverConfig"):
        value = spec.get(key) if loaded.kind in ("Model", "Server") else None
        if isinstance(value, str) and not is_dns1123_label(value):
            problems.append(loaded.source.problem(("spec", key), f"{value!r} is not {LABEL_RULE}"))


def _parse_one(
    raw: Any, source: Source, problems: list[Problem], warnings: list[Problem]
) -> Loaded[Any] | None:
    if not isinstance(raw, dict):
        problems.append(
            source.problem((), f"expected a mapping with apiVersion and kind, got {_describe(raw)}")
        )
        return None
    kind = raw.get("kind")
    api_version = raw.get("apiVersion")
    if kind is None:
        problems.append(
            source.problem(
                ("kind",), f"required field is missing; expected one of: {KINDS_ALLOWED}"
            )
        )
        return None
    if kind not in KINDS:
        problems.append(
            source.problem(("kind",), f"unknown kind {_describe(kind)}; allowed: {KINDS_ALLOWED}")
        )
        return None
    expected = KINDS[kind]
    if api_version != expected:
        shown = "missing" if api_version is None else f"{_describe(api_version)} is not allowed"
        problems.append(
            source.problem(("apiVersion",), f"{shown} for kind {kind}; expected {expected}")
        )
        return None
    root = _ROOTS[kind]
    try:
        obj = root.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            loc = [part for part in error["loc"] if isinstance(part, str | int)]
            problems.append(source.problem(loc, _message(root, error)))
        return None
    loaded: Loaded[Any] = Loaded(obj=obj, raw=raw, source=source)
    before = len(problems)
    _check_names(loaded, problems)
    if len(problems) > before:
        return None
    spec = raw.get("spec") or {}
    for name in spec:
        if name in _IGNORED_FIELDS.get(kind, ()):
            warnings.append(
                source.problem(
                    ("spec", name), "a Seldon Core 2 field that gpuplace does not use; ignored"
                )
            )
    return loaded


def parse_text(text: str, file: str, bundle: Bundle | None = None) -> Bundle:
    """Parse one file's text into `bundle` (a new one by default); raise ResourceError."""
    bundle = Bundle() if bundle is None else bundle
    problems: list[Problem] = []
    _parse_into(text, file, bundle, problems)
    if problems:
        raise ResourceError(problems)
    _check_duplicates(bundle)
    return bundle


def _parse_into(text: str, file: str, bundle: Bundle, problems: list[Problem]) -> None:
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
            loaded = _parse_one(raw, source, problems, bundle.warnings)
            if loaded is None:
                continue
            targets: dict[str, list[Any]] = {
                "Model": bundle.models,
                "Server": bundle.servers,
                "ServerConfig": bundle.server_configs,
                "Node": bundle.nodes,
            }
            targets[loaded.kind].append(loaded)


def _check_duplicates(bundle: Bundle) -> None:
    problems: list[Problem] = []
    groups: Iterable[list[Loaded[Any]]] = (
        bundle.models,
        bundle.servers,
        bundle.server_configs,
        bundle.nodes,
    )
    for group in groups:
        seen: dict[tuple[str | None, str], Loaded[Any]] = {}
        for loaded in group:
            # gpuplace has one namespace of models and servers: the name alone must be unique.
            key = (loaded.namespace if loaded.kind in ("ServerConfig",) else None, loaded.name)
            first = seen.get(key)
            if first is not None:
                problems.append(
                    loaded.source.problem(
                        ("metadata", "name"),
                        f"{loaded.kind} {loaded.name!r} is defined twice (first in "
                        f"{first.source.file}, document {first.source.document})",
                    )
                )
            else:
                seen[key] = loaded
    if problems:
        raise ResourceError(problems)


def load_files(paths: Sequence[str | Path], *, stdin_text: str | None = None) -> Bundle:
    """Parse every file (`-` reads `stdin_text`); raise one ResourceError listing all problems."""
    bundle = Bundle()
    problems: list[Problem] = []
    for path in paths:
        name = str(path)
        if name == "-":
            text = stdin_text if stdin_text is not None else ""
            name = "<stdin>"
        else:
            try:
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
    _check_duplicates(bundle)
    return bundle


# ----------------------------------------------------------------------------------------
# Model -> ModelSpec


def to_model_spec(model: Loaded[ModelResource]) -> common_pb2.ModelSpec:
    """The LoadModel request body for one Model: quantities kept as written."""
    spec = model.obj.spec
    message = common_pb2.ModelSpec(
        name=model.name,
        storage_uri=spec.storage_uri or "",
        requirements=list(spec.requirements),
        server=spec.server or "",
        memory=spec.memory or "",
        gpu_memory=spec.gpu_memory or "",
        gpus=spec.gpus or 0,
        parameters={parameter.name: parameter.value for parameter in spec.parameters},
    )
    if spec.replicas is not None:
        message.replicas = spec.replicas
    if spec.min_replicas is not None:
        message.min_replicas = spec.min_replicas
    return message


def split_capabilities(value: str) -> list[str]:
    """`SELDON_SERVER_CAPABILITIES`: a comma list, trimmed, empty items dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]
