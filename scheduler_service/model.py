"""The scheduler's records: what a user asked for and what each replica holds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from contract import spec_rules as rules
from contract.errors import InvalidArgument
from contract.names import (
    SUBDOMAIN_RULE,
    InvalidName,
    check_name,
    is_dns1123_subdomain,
    shown,
)
from contract.protocol import Load
from contract.quantity import QuantityError, parse_bytes
from placement import CAUSES
from placement.schedule import least_replicas


def _source(declared: int, learned: int) -> str:
    return "declared" if declared else "learned" if learned else ""


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


# What keeps a model from being Available, for the metrics: a placement to come, loads in
# flight, loads that failed, or the last refusal's cause.
WAITING_REASONS: tuple[str, ...] = ("placing", "loading", "load_failed", *CAUSES)


# An artifact's identity: (storageUri, artifactVersion).
Artifact = tuple[str, int | None]
# A learned figure is the largest of this many recent measurements.
RECENT_SAMPLES = 5


@dataclass(frozen=True)
class Learned:
    """One learned figure: the largest of the last RECENT_SAMPLES measurements."""

    size: int = 0
    samples: int = 0  # loads measured in all
    recent: tuple[int, ...] = ()  # the last RECENT_SAMPLES measurements, oldest first

    def measured(self, size: int) -> Learned:
        """This figure after one more load measured `size` bytes."""
        recent = (*self.recent, size)[-RECENT_SAMPLES:]
        return Learned(max(recent), self.samples + 1, recent)


@dataclass(frozen=True)
class Footprint:
    """What one artifact was measured to take on one GPU product (the device name the agent
    reported, e.g. "NVIDIA H100 80GB HBM3"; "" where it took no GPU memory): GPU memory per
    device, and the host memory of the inference server."""

    storage_uri: str
    artifact_version: int | None
    product: str
    gpu: Learned = Learned()
    host: Learned = Learned()
    updated_at: float = 0.0

    @property
    def artifact(self) -> Artifact:
        return (self.storage_uri, self.artifact_version)


class FootprintBook:
    """The learned footprints, by artifact and then GPU product (plain values: the service
    keeps one, the store saves each figure that changes)."""

    def __init__(self, footprints: Iterable[Footprint] = ()) -> None:
        self._by_artifact: dict[Artifact, dict[str, Footprint]] = {}
        for footprint in footprints:
            self._by_artifact.setdefault(footprint.artifact, {})[footprint.product] = footprint

    def of(self, artifact: Artifact) -> tuple[Footprint, ...]:
        """What was learned for `artifact`, one per product, by product name."""
        found = self._by_artifact.get(artifact, {})
        return tuple(found[product] for product in sorted(found))

    def measured(
        self,
        artifact: Artifact,
        product: str,
        now: float,
        *,
        gpu: int | None = None,
        host: int | None = None,
    ) -> Footprint:
        """The figures for `artifact` on `product` once a load measured `gpu` bytes per
        device and `host` bytes of host memory (None: not measured); not kept yet: see
        `keep`."""
        known = self._by_artifact.get(artifact, {}).get(product)
        if known is None:
            known = Footprint(artifact[0], artifact[1], product)
        return replace(
            known,
            gpu=known.gpu if gpu is None else known.gpu.measured(gpu),
            host=known.host if host is None else known.host.measured(host),
            updated_at=now,
        )

    def keep(self, footprint: Footprint) -> None:
        self._by_artifact.setdefault(footprint.artifact, {})[footprint.product] = footprint

    def all(self) -> list[Footprint]:
        return [f for artifact in sorted(self._by_artifact, key=str) for f in self.of(artifact)]


def with_margin(sizes: Iterable[int], margin_percent: int) -> int:
    """What a model that declares no figure is placed with: the largest learned for its
    artifact (over every GPU product) plus `margin_percent`, rounded up; 0 when nothing was
    learned."""
    largest = max(sizes, default=0)
    return -(-largest * (100 + margin_percent) // 100)


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

    @property
    def artifact(self) -> Artifact:
        """The artifact's identity: what a learned footprint is kept under."""
        return (self.storage_uri, self.artifact_version)

    def load_command(
        self,
        version: int,
        device_uuids: tuple[str, ...],
        gpu_memory_bytes: int | None = None,
        *,
        measure_host_memory: bool = False,
    ) -> Load:
        """What an agent needs to load `version` of this model on `device_uuids`;
        `gpu_memory_bytes`: what it was placed with per device, when not the declared amount
        (a learned footprint plus the margin)."""
        return Load(
            model=self.name,
            version=version,
            storage_uri=self.storage_uri,
            parameters=dict(self.parameters),
            gpu_memory_bytes=self.gpu_memory_bytes
            if gpu_memory_bytes is None
            else gpu_memory_bytes,
            device_uuids=device_uuids,
            gpus=self.gpus,
            secret_name=self.secret_name,
            artifact_version=self.artifact_version,
            measure_host_memory=measure_host_memory,
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
        raise InvalidArgument("model.secretName", f"{shown(secret_name)} is not {SUBDOMAIN_RULE}")
    count = 1 if replicas is None else replicas
    memory_bytes = _bytes("model.memory", memory)
    gpu_memory_bytes = _bytes("model.gpuMemory", gpu_memory)
    checks = [
        ("model.replicas", rules.replicas_problem(count)),
        ("model.storageUri", rules.storage_uri_problem(storage_uri, secret_name)),
        ("model.gpus", rules.gpus_problem(gpus, gpu_memory_bytes > 0)),
        ("model.requirements", rules.requirements_problem(requirements)),
        *(("model.requirements", rules.requirement_problem(r)) for r in requirements),
        ("model.parameters", rules.parameters_problem(parameters)),
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
    # The last refusal's cause (`placement.CAUSES`; "": placed since, or never refused).
    refusal: str = ""
    # When the client's request (a new version, a scale) that the model is not yet Available
    # for was made (0: none, or made before the scheduler started), for the metrics.
    requested_at: float = 0.0
    # Not saved with the record (the store keeps learned footprints in a table of their own),
    # set by each pass: the footprints learned for the spec's artifact (one per GPU product),
    # and, for a figure the spec does not declare, what the model is placed with (the largest
    # learned figure plus the margin; 0: nothing learned): GPU memory per device (0: a CPU
    # model) and host memory.
    learned: tuple[Footprint, ...] = ()
    learned_gpu_bytes: int = 0
    learned_memory_bytes: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def clone(self) -> ModelRecord:
        """A copy that shares nothing it may change: its copies and maps are its own (the
        spec, the learned footprints and the tuples cannot change and are shared). A pass
        rolls back to one and watchers get one: far cheaper than a deep copy."""
        return replace(
            self,
            copies={
                key: replace(copy, footprint_bytes=dict(copy.footprint_bytes))
                for key, copy in self.copies.items()
            },
            excluded_until=dict(self.excluded_until),
        )

    @property
    def gpu_memory_bytes(self) -> int:
        """GPU memory per device the model is placed with: declared, else learned."""
        return self.spec.gpu_memory_bytes or self.learned_gpu_bytes

    @property
    def gpu_memory_source(self) -> str:
        """Where `gpu_memory_bytes` comes from: "declared", "learned" or "" (a CPU model)."""
        return _source(self.spec.gpu_memory_bytes, self.learned_gpu_bytes)

    @property
    def memory_bytes(self) -> int:
        """Host memory the model is placed with: declared, else learned (else 0)."""
        return self.spec.memory_bytes or self.learned_memory_bytes

    @property
    def memory_source(self) -> str:
        """Where `memory_bytes` comes from: "declared", "learned" or "" (neither)."""
        return _source(self.spec.memory_bytes, self.learned_memory_bytes)

    def available_count(self) -> int:
        return sum(
            1
            for r in self.copies.values()
            if r.version == self.version and r.state == CopyState.AVAILABLE and not r.retire
        )


def waiting_for(record: ModelRecord) -> str | None:
    """Why the model is not Available (one of `WAITING_REASONS`); None when it is, or is
    going."""
    if record.deleted or record.state == ModelState.AVAILABLE:
        return None
    current = [c for c in record.copies.values() if c.version == record.version]
    if any(c.state in IN_FLIGHT for c in current):
        return "loading"
    if record.state == ModelState.FAILED:  # loads failed, and no other replica took it
        return "load_failed"
    return record.refusal or "placing"
