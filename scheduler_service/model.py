"""The scheduler's records: what a user asked for and what each replica holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from contract import spec_rules as rules
from contract.errors import InvalidArgument
from contract.names import SUBDOMAIN_RULE, InvalidName, check_name, is_dns1123_subdomain
from contract.protocol import Load
from contract.quantity import QuantityError, parse_bytes
from placement.schedule import least_replicas


class ModelState(StrEnum):
    PENDING = "Pending"
    SCHEDULE_FAILED = "ScheduleFailed"
    PROGRESSING = "Progressing"
    AVAILABLE = "Available"
    FAILED = "Failed"
    TERMINATING = "Terminating"
    TERMINATED = "Terminated"


class CopyState(StrEnum):
    LOAD_REQUESTED = "LoadRequested"
    LOADING = "Loading"
    AVAILABLE = "Available"
    LOAD_FAILED = "LoadFailed"
    UNLOADING = "Unloading"
    UNLOADED = "Unloaded"


# A replica: (server, replica index).
Key = tuple[str, int]


IN_FLIGHT = frozenset({CopyState.LOAD_REQUESTED, CopyState.LOADING})
# A replica in one of these states holds (or is about to hold) the model.
ACTIVE = IN_FLIGHT | {CopyState.AVAILABLE}


@dataclass(frozen=True)
class ModelSpec:
    """A validated model spec; quantities kept as written and resolved to bytes."""

    name: str
    storage_uri: str = ""
    requirements: tuple[str, ...] = ()
    server: str = ""
    memory: str = ""
    gpu_memory: str = ""
    gpus: int = 1
    replicas: int = 1
    min_replicas: int | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    memory_bytes: int = 0
    gpu_memory_bytes: int = 0
    artifact_version: int | None = None
    namespace: str = ""
    secret_name: str = ""

    @property
    def required_replicas(self) -> int:
        """Fewest available copies that make the model Available (placement's rule)."""
        return least_replicas(self.replicas, self.min_replicas)

    def load_command(self, version: int, device_uuids: tuple[str, ...]) -> Load:
        """What an agent needs to load `version` of this model on `device_uuids`."""
        return Load(
            model=self.name,
            version=version,
            storage_uri=self.storage_uri,
            parameters=dict(self.parameters),
            gpu_memory_bytes=self.gpu_memory_bytes,
            device_uuids=device_uuids,
            gpus=self.gpus,
            secret_name=self.secret_name,
            artifact_version=self.artifact_version,
        )


def validate_spec(
    name: str,
    *,
    storage_uri: str = "",
    requirements: tuple[str, ...] = (),
    server: str = "",
    memory: str = "",
    gpu_memory: str = "",
    gpus: int = 0,
    replicas: int | None = None,
    min_replicas: int | None = None,
    parameters: tuple[tuple[str, str], ...] = (),
    artifact_version: int | None = None,
    namespace: str = "",
    secret_name: str = "",
) -> ModelSpec:
    """Check every field; raise InvalidArgument naming the field and the rule."""
    try:
        check_name(name, "model.name")
        if server:
            check_name(server, "model.server")
        if namespace:
            check_name(namespace, "model.namespace")
    except InvalidName as exc:
        field_name = str(exc).split(":", 1)[0]
        raise InvalidArgument(field_name, str(exc).split(": ", 1)[1]) from None
    if secret_name and not is_dns1123_subdomain(secret_name):
        raise InvalidArgument("model.secretName", f"{secret_name!r} is not {SUBDOMAIN_RULE}")
    count = 1 if replicas is None else replicas
    memory_bytes = _bytes("model.memory", memory)
    gpu_memory_bytes = _bytes("model.gpuMemory", gpu_memory)
    checks = [
        ("model.replicas", rules.replicas_problem(count)),
        ("model.storageUri", rules.storage_uri_problem(storage_uri, secret_name)),
        ("model.gpus", rules.gpus_problem(gpus, gpu_memory_bytes > 0)),
        *(("model.requirements", rules.requirement_problem(r)) for r in requirements),
    ]
    if min_replicas is not None:
        checks.append(("model.minReplicas", rules.min_replicas_problem(min_replicas, count)))
    for field_name, problem in checks:
        if problem:
            raise InvalidArgument(field_name, problem)
    return ModelSpec(
        name=name,
        storage_uri=storage_uri,
        requirements=tuple(requirements),
        server=server,
        memory=memory,
        gpu_memory=gpu_memory,
        gpus=max(gpus, 1),
        replicas=count,
        min_replicas=min_replicas,
        parameters=tuple(sorted(parameters)),
        memory_bytes=memory_bytes,
        gpu_memory_bytes=gpu_memory_bytes,
        artifact_version=artifact_version,
        namespace=namespace,
        secret_name=secret_name,
    )


def _bytes(field_name: str, value: str) -> int:
    if not value:
        return 0
    try:
        return parse_bytes(value)
    except QuantityError as exc:
        raise InvalidArgument(field_name, str(exc)) from None


@dataclass
class ModelCopy:
    """One replica's copy of a model (the latest version sent there)."""

    server: str
    index: int
    version: int
    state: CopyState
    reason: str = ""
    device_uuids: tuple[str, ...] = ()
    footprint_bytes: dict[str, int] = field(default_factory=dict)
    # Wall-clock time when the copy needs a look without any event (0: none): a load in
    # flight times out, an unload is asked again (no answer, or after UNLOAD_FAILED).
    deadline: float = 0.0
    # The placement no longer wants this replica: unload it once the model is available.
    retire: bool = False
    # When its agent went away while it was Available (0: connected).
    lost_since: float = 0.0
    # The older version this load replaces in place (0: none); unloaded if the load fails.
    replaced_version: int = 0

    @property
    def key(self) -> Key:
        return (self.server, self.index)


@dataclass
class ModelRecord:
    """A model: the desired spec and version, the observed replicas, the last decision."""

    spec: ModelSpec
    version: int
    state: ModelState = ModelState.PENDING
    reason: str = ""
    server_reasons: tuple[tuple[str, str], ...] = ()
    copies: dict[Key, ModelCopy] = field(default_factory=dict)
    deleted: bool = False
    updated_at: float = 0.0
    # Not persisted: runtime bookkeeping of retries.
    excluded_until: dict[Key, float] = field(default_factory=dict)
    attempts: int = 0
    next_retry_at: float = 0.0
    load_failures: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def available_count(self) -> int:
        return sum(
            1
            for r in self.copies.values()
            if r.version == self.version and r.state == CopyState.AVAILABLE and not r.retire
        )
