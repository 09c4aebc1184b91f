"""The model lifecycle, decided without I/O: a model record and what happened in, the
record's next state and the commands to send out.

Each function takes a record and a Context: a read-only view of the cluster (which replicas
are connected or draining, the placement snapshot), the footprints learned so far, the
settings and `now`. It changes the
record it is given and returns an Outcome: the Load/Unload commands, each addressed to a
replica; whether the record must be saved and published first; and the facts the shell
counts in its metrics, and the lines to log. Nothing here saves, sends, waits, logs or reads
a clock (`now` and a stopwatch come in the Context), so a test drives every transition with
plain values; the shell (`service.py`) saves a record before any command that follows from
it goes out or any line that tells of it is logged. docs/scheduler.md tables the transitions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from contract.names import clip, replica_id
from contract.protocol import DrainComplete, EventKind, Load, LoadedModel, ModelEvent, Unload
from contract.quantity import format_bytes
from placement import (
    ELIGIBILITY,
    Assignment,
    Placement,
    Policy,
    Rejection,
    Replica,
    Request,
    first_failure,
)
from scheduler_service.model import (
    ACTIVE,
    IN_FLIGHT,
    RECENT_SAMPLES,
    Artifact,
    CopyState,
    Footprint,
    Key,
    ModelCopy,
    ModelRecord,
    ModelSpec,
    ModelState,
    with_margin,
)
from scheduler_service.settings import SchedulerSettings

# A command for one replica's agent.
Addressed = tuple[Key, Load | Unload]
# The kind of a load that failed because its agent's stream ended during it.
DISCONNECTED = "agent_disconnected"
# The longest reason kept per server, and for the model as a whole.
MAX_REASON = 300
MAX_MESSAGE = 2000


class ClusterView(Protocol):
    """What a decision reads about the replicas: the shell's cluster, or plain values in a test."""

    def connected(self, key: Key) -> bool: ...

    def draining(self, key: Key) -> bool: ...

    def replica(self, key: Key) -> Replica | None:
        """The placement core's view of a connected replica (None: not connected)."""
        ...

    def place(
        self, record: ModelRecord, request: Request, policy: Policy, now: float
    ) -> Placement | Rejection:
        """The placement core's answer for `request` over the connected replicas as if
        `record` were on none of them: the caller has taken the record's own usage out of the
        cluster's accounts before the decision (the shell does so around `step`), and the
        memory its copies measured is added back. A placement may come without reasons."""
        ...


def nothing_learned(artifact: Artifact) -> tuple[Footprint, ...]:
    return ()


@dataclass(frozen=True)
class Context:
    """What a decision reads besides the record: the cluster, the settings, and `now` (on
    the clock of the record's deadlines)."""

    cluster: ClusterView
    settings: SchedulerSettings
    now: float
    # A monotonic stopwatch (seconds) that times the core for the metrics; it decides nothing.
    stopwatch: Callable[[], float] = lambda: 0.0
    # Since when the agents of copies read back from the state file are awaited (RESTORED).
    restored_since: float = 0.0
    # The footprints learned for an artifact, one per GPU product (the shell's
    # FootprintBook.of; none in a test that does not say).
    learned: Callable[[Artifact], tuple[Footprint, ...]] = nothing_learned


@dataclass(frozen=True)
class PlacementFact:
    """One run of the placement core, for the metrics."""

    outcome: str  # placed, partial or rejected
    seconds: float  # spent inside schedule()
    retry: bool  # made again after a failed load or a refusal


Level = Literal["debug", "info", "warning"]


@dataclass(frozen=True)
class Note:
    """A line for the log, written by the shell once the decision it tells of is saved (a
    decision rolled back is never logged as done)."""

    level: Level
    message: str  # %-style, with `args`
    args: tuple[object, ...] = ()
    # What the line is about, as fields of a structured log line (empty: not about one).
    model: str = ""
    version: int = 0
    key: Key | None = None
    reason: str = ""


@dataclass(frozen=True)
class Change:
    """A client's request decided: the record to save in place of the current one."""

    record: ModelRecord
    note: Note


@dataclass
class Outcome:
    """What a decision asks of the shell besides the record it changed."""

    commands: list[Addressed] = field(default_factory=list)
    # The record changed: save it and publish it to the watchers before any command goes out.
    publish: bool = False
    # The model is gone: delete it from the store (and publish its last state).
    terminated: bool = False
    # An unload ended, so a replica has room again: refused models may fit now.
    freed: bool = False
    # A load ended on the replica the event came from: the memory it measured per device,
    # counted as used there until the agent measures again.
    footprint: Mapping[str, int] = field(default_factory=dict)
    # ... and the host memory it measured (None: not measured).
    host_bytes: int | None = None
    # Facts for the metrics.
    load_failures: list[str] = field(default_factory=list)  # the kind of each failed load
    load_s: float | None = None  # from load requested to loaded
    available_s: float | None = None  # from the client's request to the model Available
    placement: PlacementFact | None = None
    notes: list[Note] = field(default_factory=list)

    def note(
        self,
        level: Level,
        message: str,
        *args: object,
        model: str = "",
        version: int = 0,
        key: Key | None = None,
        reason: str = "",
    ) -> None:
        self.notes.append(Note(level, message, args, model, version, key, reason))


# ------------------------------------------------------------------ client requests


def _said(name: str, version: int, what: str, *args: object) -> Note:
    """A client's request decided, as the log tells it: `model NAME: what`."""
    return Note("info", f"model %s: {what}", (name, *args), name, version)


def created(spec: ModelSpec, version: int, now: float) -> Change:
    """A model the scheduler does not hold; `version` is one above any it ever had."""
    record = _requested(ModelRecord(spec=spec, version=version, updated_at=now), now)
    return Change(record, _said(spec.name, version, "version %d requested", version))


def respecified(current: ModelRecord, spec: ModelSpec, now: float) -> Change | None:
    """A known model asked for again: the same spec changes nothing (None); a changed replica
    count (`replicas`, `minReplicas`) scales in place; a changed namespace alone is metadata,
    kept as it is (nothing is reloaded); anything else (the artifact, its `artifactVersion`,
    where it may run, what it needs) is a new version. Decided on a copy: the change counts
    once the shell has saved it."""
    if current.spec == spec and not current.deleted:
        return None
    record = current.clone()
    record.spec = spec
    if current.deleted or _new_version(current.spec, spec):
        record.version += 1
        record.deleted = False
        record.excluded_until.clear()
        record.load_failures = 0
        note = _said(spec.name, record.version, "version %d requested", record.version)
    elif (current.spec.replicas, current.spec.min_replicas) != (spec.replicas, spec.min_replicas):
        note = _said(spec.name, record.version, "scaled to %d replicas in place", spec.replicas)
    else:
        record.updated_at = now
        note = _said(
            spec.name,
            record.version,
            "namespace set to %r (metadata only, nothing reloaded)",
            spec.namespace,
        )
        return Change(record, note)
    return Change(_requested(record, now), note)


def unload_requested(current: ModelRecord, now: float) -> Change | None:
    """The model is to go (None: it is going already); decided on a copy, as above."""
    if current.deleted:
        return None
    record = current.clone()
    record.deleted = True
    record.state = ModelState.TERMINATING
    record.reason = "unload requested"
    record.updated_at = now
    return Change(record, _said(record.name, record.version, "unload requested"))


def _requested(record: ModelRecord, now: float) -> ModelRecord:
    record.requested_at = now
    record.attempts = 0
    record.next_retry_at = 0.0
    record.state = (
        ModelState.PROGRESSING if record.state == ModelState.AVAILABLE else ModelState.PENDING
    )
    record.updated_at = now
    return record


def _new_version(old: ModelSpec, new: ModelSpec) -> bool:
    """Whether `new` changes more than the replica counts and the namespace."""
    same_rest = replace(
        old, replicas=new.replicas, min_replicas=new.min_replicas, namespace=new.namespace
    )
    return same_rest != new


# ------------------------------------------------------------------ agents


# `ModelCopy.lost_since` of a copy read back from the state file whose agent has not said
# hello since: its grace counts from `Context.restored_since`, which the shell sets when the
# agent API serves and moves on while agents it expects are still coming back.
RESTORED = -1.0


def restored(record: ModelRecord) -> None:
    """Read back from the state file: each copy's agent must come back within the grace,
    counted from when the agents can reach the scheduler again."""
    for copy in record.copies.values():
        if copy.state in ACTIVE:
            copy.lost_since = RESTORED


def lost_since(copy: ModelCopy, restored_since: float) -> float:
    """Since when the copy's agent is away (0: it is not)."""
    return restored_since if copy.lost_since == RESTORED else copy.lost_since


def on_hello(
    record: ModelRecord | None, key: Key, loaded: LoadedModel | None, ctx: Context
) -> Outcome:
    """An agent said hello, holding `loaded` of this model (or not). A copy the record
    expects is kept as it is; one the model may use is adopted; anything else is unloaded.
    A load the agent no longer knows of is asked again (the agent answers at once when it
    holds that version already, so nothing is loaded twice)."""
    out = Outcome()
    if record is None:
        if loaded is not None:
            out.note(
                "info",
                "replica %s: unloading unknown model %s",
                replica_id(*key),
                loaded.name,
                model=loaded.name,
                version=loaded.version,
                key=key,
            )
            out.commands.append((key, Unload(loaded.name, loaded.version)))
        return out
    before = _digest(record)
    _hello_copy(record, key, loaded, ctx, out)
    # Saved and shown only when it changed: a hello that finds its copies as they were
    # (the common case after a restart) costs no write.
    out.publish = _digest(record) != before
    return out


def hello_confirms(record: ModelRecord, key: Key, loaded: LoadedModel | None) -> bool:
    """The agent's hello reports exactly the available copy the record has there (the
    common case after a restart): its absence ends, nothing else changes, nothing is
    saved or sent. False: `on_hello` decides."""
    copy = record.copies.get(key)
    if (
        copy is None
        or loaded is None
        or copy.state != CopyState.AVAILABLE
        or copy.version != loaded.version
        or copy.footprint_bytes != loaded.footprint_bytes
    ):
        return False
    copy.lost_since = 0.0
    return True


def _hello_copy(
    record: ModelRecord, key: Key, loaded: LoadedModel | None, ctx: Context, out: Outcome
) -> None:
    copy = record.copies.get(key)
    if copy is None:
        if loaded is None:
            return
        if _adoptable(record, ctx.cluster.replica(key), loaded.version, ctx.now):
            _adopt(record, key, loaded.version, loaded.footprint_bytes)
            out.note(
                "info",
                "model %s: adopted the copy already on %s",
                record.name,
                replica_id(*key),
                model=record.name,
                version=loaded.version,
                key=key,
            )
        else:
            out.note(
                "info",
                "model %s v%d on %s: a copy the model may not use there (version, pin, "
                "capabilities or count), unloading",
                record.name,
                loaded.version,
                replica_id(*key),
                model=record.name,
                version=loaded.version,
                key=key,
            )
            out.commands.append((key, Unload(record.name, loaded.version)))
        return
    copy.lost_since = 0.0
    if loaded is not None and loaded.version == copy.version:
        if copy.state in ACTIVE:
            copy.state = CopyState.AVAILABLE
            copy.deadline = 0.0
            copy.footprint_bytes = dict(loaded.footprint_bytes)
        elif copy.state in (CopyState.LOAD_FAILED, CopyState.UNLOADED) and _adoptable(
            record, ctx.cluster.replica(key), loaded.version, ctx.now
        ):
            # A load that finished after the scheduler stopped waiting for it (its agent's
            # stream dropped during it, say), as a late LOADED would be.
            _keep_late(record, key, loaded.version, loaded.footprint_bytes, out)
        else:
            out.note(
                "info",
                "model %s v%d on %s: its load had failed here; unloading the copy",
                record.name,
                loaded.version,
                replica_id(*key),
                model=record.name,
                version=loaded.version,
                key=key,
            )
            out.commands.append((key, Unload(record.name, loaded.version)))
    elif copy.state in IN_FLIGHT or (loaded is not None and copy.state in ACTIVE):
        copy.state = CopyState.LOAD_REQUESTED
        copy.deadline = ctx.now + ctx.settings.load_timeout_s
        out.commands.append((key, record.spec.load_command(copy.version, copy.device_uuids)))
    elif copy.state in (CopyState.AVAILABLE, CopyState.UNLOADING):
        del record.copies[key]


def on_event(record: ModelRecord | None, key: Key, event: ModelEvent, ctx: Context) -> Outcome:
    """What an agent reported about one model version on its replica. An event that does
    not answer what the record asked of that replica (another version, an old answer
    overtaken by a newer command) changes nothing; a load nobody waits for is adopted or
    unloaded."""
    out = Outcome()
    if record is None:
        if event.kind == EventKind.LOADED:
            _unwanted(key, event, out)
        return out
    copy = record.copies.get(key)
    expected = copy is not None and copy.version == event.version
    where = f"model {event.model} v{event.version} on {replica_id(*key)}"
    if event.kind == EventKind.LOADED:
        if not expected or copy is None or copy.state not in ACTIVE:
            _unexpected_load(record, key, event, ctx, out)
        elif copy.state in IN_FLIGHT:
            _loaded(copy, event, ctx, out)
            out.note(
                "info", "%s: available", where, model=event.model, version=event.version, key=key
            )
        else:
            return out  # a repeated answer for a copy already Available
    elif copy is None or not expected:
        out.note(
            "debug",
            "%s: stale %s event ignored",
            where,
            event.kind,
            model=event.model,
            version=event.version,
            key=key,
        )
        return out
    elif event.kind in (EventKind.LOAD_FAILED, EventKind.LOAD_FAILED_MEMORY):
        if copy.state not in IN_FLIGHT:
            return out
        _load_failed(record, copy, ctx, out, reason=event.message, kind=event.kind.value)
    elif event.kind == EventKind.UNLOADED:
        if copy.state not in (CopyState.UNLOADING, CopyState.AVAILABLE):
            return out  # an old unload's answer, overtaken by a newer load here
        # Shown (and streamed to watchers) once; the next pass forgets it.
        copy.state = CopyState.UNLOADED
        copy.reason = ""
        copy.deadline = 0.0
        out.freed = True
        out.note("info", "%s: unloaded", where, model=event.model, version=event.version, key=key)
    else:  # UNLOAD_FAILED: asked again after a while.
        out.note(
            "warning",
            "%s: unload failed: %s",
            where,
            event.message,
            reason="unload_failed",
            model=event.model,
            version=event.version,
            key=key,
        )
        copy.reason = f"unload failed: {event.message}"
        copy.deadline = ctx.now + ctx.settings.retry_max_s
        if record.deleted:
            record.reason = f"unload failed on {replica_id(*key)}: {event.message}"
    out.publish = True
    return out


def on_disconnect(record: ModelRecord, key: Key, ctx: Context) -> Outcome:
    """The agent of `key` went away: a load there fails at once and moves; an available copy
    waits out the grace period for the agent; a draining replica's copies are gone."""
    copy = record.copies.get(key)
    if copy is None:
        return Outcome()
    out = Outcome(publish=True)
    if copy.state in IN_FLIGHT:
        reason = "agent disconnected during the load"
        _load_failed(record, copy, ctx, out, reason=reason, kind=DISCONNECTED)
    elif ctx.cluster.draining(key) or copy.state == CopyState.UNLOADING:
        del record.copies[key]
    elif copy.state == CopyState.AVAILABLE:
        copy.lost_since = ctx.now
    return out


def on_drain(record: ModelRecord, key: Key) -> bool:
    """The replica `key` drains: a model with a copy there is placed again now, elsewhere.
    Returns whether the model needs a pass."""
    if key not in record.copies:
        return False
    record.next_retry_at = 0.0
    return True


def on_cluster_changed(record: ModelRecord) -> bool:
    """A server joined, left or freed memory: a refused model is tried again now. Returns
    whether the model needs a pass."""
    if not record.attempts:
        return False
    record.next_retry_at = 0.0
    return True


def drain_verdict(
    key: Key, records: Iterable[ModelRecord], deadline: float, now: float
) -> DrainComplete | None:
    """Whether the draining replica `key` may go: once none of its models waits to move,
    or at the deadline. A model whose last placement was refused cannot go anywhere else:
    it does not hold the drain up, and is named as stranded."""
    held = [
        record
        for record in records
        if key in record.copies and record.copies[key].state in ACTIVE | {CopyState.UNLOADING}
    ]
    if any(not record.attempts for record in held) and now < deadline:
        return None
    return DrainComplete(tuple(sorted(record.name for record in held)))


def _loaded(copy: ModelCopy, event: ModelEvent, ctx: Context, out: Outcome) -> None:
    out.load_s = max(0.0, ctx.now - (copy.deadline - ctx.settings.load_timeout_s))
    copy.state = CopyState.AVAILABLE
    copy.reason = ""
    copy.deadline = 0.0
    copy.replaced_version = 0
    copy.footprint_bytes = dict(event.footprint_bytes)
    out.footprint = dict(event.footprint_bytes)
    out.host_bytes = event.host_bytes


def _unexpected_load(
    record: ModelRecord, key: Key, event: ModelEvent, ctx: Context, out: Outcome
) -> None:
    """A load ended that the record no longer waits for (e.g. it outlived a disconnect):
    keep the copy when the model wants one there, else unload it."""
    copy = record.copies.get(key)
    free = copy is None or copy.state in (CopyState.LOAD_FAILED, CopyState.UNLOADED)
    if free and _adoptable(record, ctx.cluster.replica(key), event.version, ctx.now):
        _keep_late(record, key, event.version, event.footprint_bytes, out)
    else:
        _unwanted(key, event, out)


def _unwanted(key: Key, event: ModelEvent, out: Outcome) -> None:
    out.note(
        "info",
        "model %s v%d on %s: loaded but not wanted, unloading",
        event.model,
        event.version,
        replica_id(*key),
        model=event.model,
        version=event.version,
        key=key,
    )
    out.commands.append((key, Unload(event.model, event.version)))


def _adoptable(record: ModelRecord, replica: Replica | None, version: int, now: float) -> bool:
    """A copy found on a replica may stand for the current version there: where the model
    may run is the placement core's rule (its ELIGIBILITY filters: the pin, the
    capabilities), and all its copies are on one server, as long as it still needs one.
    Memory is not checked: a copy already loaded already uses it. Nor is the exclusion: the
    copy is there, whatever made the scheduler stop waiting for it."""
    if replica is None or record.deleted or version != record.version:
        return False
    request = placement_request(record)
    if first_failure(request, replica, now, ELIGIBILITY) is not None:
        return False
    current = current_copies(record)
    return len(current) < request.replicas and all(c.server == replica.server for c in current)


def _keep_late(
    record: ModelRecord, key: Key, version: int, footprint: Mapping[str, int], out: Outcome
) -> None:
    """A load that ended after the record stopped waiting for it stands for the model."""
    _adopt(record, key, version, footprint)
    out.note(
        "info",
        "model %s: kept the late copy on %s",
        record.name,
        replica_id(*key),
        model=record.name,
        version=version,
        key=key,
    )


def _adopt(record: ModelRecord, key: Key, version: int, footprint: Mapping[str, int]) -> None:
    record.copies[key] = ModelCopy(
        server=key[0],
        index=key[1],
        version=version,
        state=CopyState.AVAILABLE,
        footprint_bytes=dict(footprint),
    )


def _load_failed(
    record: ModelRecord, copy: ModelCopy, ctx: Context, out: Outcome, *, reason: str, kind: str
) -> None:
    """The copy's load failed: its replica is excluded for this version for a while (unless
    its agent's stream dropped: that is not the replica's doing), and the model is placed
    again at once."""
    out.note(
        "warning",
        "model %s v%d on %s: load failed (%s): %s",
        record.name,
        copy.version,
        replica_id(*copy.key),
        kind,
        reason,
        model=record.name,
        version=copy.version,
        key=copy.key,
        reason=kind,
    )
    if copy.replaced_version:
        # The agent may have kept the old version it was replacing: nobody tracks it now.
        out.commands.append((copy.key, Unload(record.name, copy.replaced_version)))
        copy.replaced_version = 0
    copy.state = CopyState.LOAD_FAILED
    copy.reason = reason
    copy.deadline = 0.0
    copy.lost_since = 0.0
    if kind != DISCONNECTED:  # not the replica's fault: it may take the model when back
        record.excluded_until[copy.key] = ctx.now + ctx.settings.exclusion_s
    record.load_failures += 1
    record.next_retry_at = 0.0
    out.load_failures.append(kind)


# ------------------------------------------------------------------ one model's pass


def step(record: ModelRecord, ctx: Context) -> Outcome:
    """One pass over a model: deadlines and grace periods expire; then a deleted model's
    copies are unloaded until none is left, and a wanted one is placed, its surplus copies
    retired once the current version is available, and its state derived."""
    before = _digest(record)
    out = Outcome()
    take_learned(record, ctx)
    _expire(record, ctx, out)
    if record.deleted:
        _terminate(record, ctx, out)
    else:
        _place(record, ctx, out)
        _retire(record, ctx, out)
        _set_state(record)
        if record.state == ModelState.AVAILABLE and record.requested_at:
            out.available_s = max(0.0, ctx.now - record.requested_at)
            record.requested_at = 0.0
    if not out.terminated and _digest(record) != before:
        record.updated_at = ctx.now
        out.publish = True
    return out


def take_learned(record: ModelRecord, ctx: Context) -> bool:
    """Take in what was learned for the model's artifact: a figure the spec does not declare
    (gpuMemory, memory) is placed with the largest learned one plus the margin (no GPU memory
    learned: a CPU model). A model placed already keeps its place: a GPU figure counts from
    its next placement; a host figure is what its replicas are charged from now on (host
    memory is not measured per replica afterwards). Returns whether what the model is
    placed with changed (shown figures alone need no pass)."""
    before = (record.learned_gpu_bytes, record.learned_memory_bytes)
    record.learned = learned = ctx.learned(record.spec.artifact)
    margin = ctx.settings.learned_margin_percent
    record.learned_gpu_bytes = (
        0 if record.spec.gpu_memory_bytes else with_margin((f.gpu.size for f in learned), margin)
    )
    record.learned_memory_bytes = (
        0 if record.spec.memory_bytes else with_margin((f.host.size for f in learned), margin)
    )
    return (record.learned_gpu_bytes, record.learned_memory_bytes) != before


def learned_text(record: ModelRecord) -> str:
    """How a model is placed with what was learned, for the log ("" when it declares all)."""
    parts = []
    if record.gpu_memory_source == "learned":
        top = max(record.learned, key=lambda f: f.gpu.size)
        parts.append(
            f"GPU memory learned: {format_bytes(record.learned_gpu_bytes)} per device "
            f"({format_bytes(top.gpu.size)} measured on {top.product} + margin)"
        )
    if record.memory_source == "learned":
        top = max(record.learned, key=lambda f: f.host.size)
        parts.append(
            f"memory learned: {format_bytes(record.learned_memory_bytes)} "
            f"({format_bytes(top.host.size)} measured + margin)"
        )
    return "; ".join(parts)


def _expire(record: ModelRecord, ctx: Context, out: Outcome) -> None:
    """Loads past their deadline fail; copies whose agent is gone past the grace are lost;
    unloads not answered in time are asked again; exclusions end."""
    now, grace = ctx.now, ctx.settings.disconnect_grace_s
    for copy in list(record.copies.values()):
        if copy.state == CopyState.UNLOADED:
            del record.copies[copy.key]
            continue
        if copy.state == CopyState.UNLOADING and copy.deadline and now >= copy.deadline:
            out.note(
                "warning",
                "model %s: asking %s again to unload v%d",
                record.name,
                replica_id(*copy.key),
                copy.version,
                model=record.name,
                version=copy.version,
                key=copy.key,
            )
            _start_unload(record, copy, ctx, out)
            continue
        away = lost_since(copy, ctx.restored_since)
        gone = away and now - away >= grace
        if copy.state in IN_FLIGHT and copy.deadline and now >= copy.deadline:
            reason = f"load timed out after {ctx.settings.load_timeout_s:g}s"
            _load_failed(record, copy, ctx, out, reason=reason, kind="timeout")
            out.commands.append((copy.key, Unload(record.name, copy.version)))
        elif gone and copy.state in IN_FLIGHT:
            _load_failed(
                record, copy, ctx, out, reason="agent did not come back", kind="agent_disconnected"
            )
        elif gone:
            out.note(
                "warning",
                "model %s: replica %s lost (agent away for %.0fs)",
                record.name,
                replica_id(*copy.key),
                now - away,
                model=record.name,
                version=copy.version,
                key=copy.key,
                reason=DISCONNECTED,
            )
            del record.copies[copy.key]
    for key, until in list(record.excluded_until.items()):
        if until <= now:
            del record.excluded_until[key]


def _terminate(record: ModelRecord, ctx: Context, out: Outcome) -> None:
    """Unload every copy on a connected replica; forget the others. None left: gone."""
    for copy in list(record.copies.values()):
        if not ctx.cluster.connected(copy.key) or copy.state == CopyState.LOAD_FAILED:
            del record.copies[copy.key]
        elif copy.state != CopyState.UNLOADING:
            _start_unload(record, copy, ctx, out)
    if not record.copies:
        record.state = ModelState.TERMINATED
        record.reason = "unloaded"
        out.terminated = True
        out.note("info", "model %s: terminated", record.name, model=record.name)


def settled(record: ModelRecord) -> bool:
    """Available, with every copy the current version's, available and staying: a pass has
    nothing to change until a timer or an event."""
    return (
        record.state == ModelState.AVAILABLE
        and not record.deleted
        and all(
            c.state == CopyState.AVAILABLE and c.version == record.version and not c.retire
            for c in record.copies.values()
        )
        and len(record.copies) >= record.spec.required_replicas
    )


def current_keys(record: ModelRecord) -> set[Key]:
    """The replicas that hold or are loading the model (any version)."""
    return {c.key for c in record.copies.values() if c.state in ACTIVE}


def current_copies(record: ModelRecord) -> list[ModelCopy]:
    """Copies of the current version that hold or are loading it and stay."""
    return [
        c
        for c in record.copies.values()
        if c.version == record.version and c.state in ACTIVE and not c.retire
    ]


def placement_request(record: ModelRecord) -> Request:
    """What the placement core is asked for the record's current version."""
    spec = record.spec
    return Request(
        model=spec.name,
        version=record.version,
        requirements=frozenset(spec.requirements),
        server=spec.server or None,
        memory_bytes=record.memory_bytes,
        gpu_memory_bytes=record.gpu_memory_bytes,
        gpus=spec.gpus,
        replicas=spec.replicas,
        min_replicas=spec.min_replicas or 0,
        excluded_until=tuple(sorted(record.excluded_until.items())),
    )


def _place(record: ModelRecord, ctx: Context, out: Outcome) -> None:
    """Scale in by retiring the surplus; with too few copies, run the placement core (unless
    a refusal's back-off runs)."""
    staying = [c for c in current_copies(record) if not ctx.cluster.draining(c.key)]
    wanted = record.spec.replicas
    if len(staying) > wanted:
        # Scaled down: keep the available ones, lowest replica first.
        ranked = sorted(staying, key=lambda c: (c.state != CopyState.AVAILABLE, c.key))
        for copy in ranked[wanted:]:
            copy.retire = True
        return
    if len(staying) == wanted or ctx.now < record.next_retry_at:
        return
    request = placement_request(record)
    started = ctx.stopwatch()
    result = ctx.cluster.place(record, request, ctx.settings.policy, ctx.now)
    seconds = ctx.stopwatch() - started
    retry = bool(record.attempts) or any(
        c.state == CopyState.LOAD_FAILED and c.version == record.version
        for c in record.copies.values()
    )
    if isinstance(result, Rejection):
        _rejected(record, result, ctx, out)
        outcome = "rejected"
    else:
        outcome = _placed(record, result, ctx, out)
    out.placement = PlacementFact(outcome, seconds, retry)


def clipped(reasons: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Reasons per server as a status carries them: each cut at MAX_REASON characters (a
    status lists one per server, and goes into every list and watch message)."""
    return tuple((server, clip(reason, MAX_REASON)) for server, reason in reasons)


def _rejected(record: ModelRecord, result: Rejection, ctx: Context, out: Outcome) -> None:
    record.server_reasons = clipped(result.reasons)
    record.reason = clip(result.message, MAX_MESSAGE)
    record.refusal = result.cause
    record.attempts += 1
    record.next_retry_at = ctx.now + backoff(ctx.settings, record.attempts)
    learned = learned_text(record)
    out.note(
        "info",
        "model %s v%d: not placed (retry in %.1fs): %s%s",
        record.name,
        record.version,
        record.next_retry_at - ctx.now,
        result.message,
        f" ({learned})" if learned else "",
        model=record.name,
        version=record.version,
        reason=result.cause,
    )


def _placed(record: ModelRecord, result: Placement, ctx: Context, out: Outcome) -> str:
    """Load where the placement says and retire current copies it left out; returns the
    outcome for the metrics (placed or partial)."""
    wanted = {(a.server, a.index): a for a in result.assignments}
    full = len(wanted) >= record.spec.replicas
    record.server_reasons = clipped(result.reasons)
    record.reason = "" if full else _partial(len(wanted), record.spec)
    record.refusal = ""
    record.attempts = 0 if full else record.attempts + 1
    if full:
        record.load_failures = 0
    record.next_retry_at = 0.0 if full else ctx.now + backoff(ctx.settings, record.attempts)
    for key, assignment in sorted(wanted.items()):
        existing = record.copies.get(key)
        if existing is not None and existing.version == record.version and existing.state in ACTIVE:
            existing.retire = False
            continue
        _start_load(record, assignment, ctx, out)
    for copy in current_copies(record):
        if copy.key not in wanted:
            copy.retire = True
    return "placed" if full else "partial"


def _partial(placed: int, spec: ModelSpec) -> str:
    return (
        f"partial: {placed}/{spec.replicas} replicas fit (minReplicas {spec.min_replicas}); "
        "the rest is retried"
    )


def _start_load(record: ModelRecord, assignment: Assignment, ctx: Context, out: Outcome) -> None:
    key = (assignment.server, assignment.index)
    old = record.copies.get(key)
    replaced = old.version if old and old.state in ACTIVE and old.version != record.version else 0
    record.copies[key] = ModelCopy(
        server=assignment.server,
        index=assignment.index,
        version=record.version,
        state=CopyState.LOAD_REQUESTED,
        device_uuids=assignment.device_uuids,
        deadline=ctx.now + ctx.settings.load_timeout_s,
        replaced_version=replaced,
    )
    learned = learned_text(record)
    out.note(
        "info",
        "model %s v%d: loading on %s%s%s",
        record.name,
        record.version,
        replica_id(*key),
        f" (GPUs {', '.join(assignment.device_uuids)})" if assignment.device_uuids else "",
        f" ({learned})" if learned else "",
        model=record.name,
        version=record.version,
        key=key,
    )
    command = record.spec.load_command(
        record.version,
        assignment.device_uuids,
        record.gpu_memory_bytes,
        measure_host_memory=_measures_host(record, _product(ctx, key, assignment)),
    )
    out.commands.append((key, command))


def _product(ctx: Context, key: Key, assignment: Assignment) -> str:
    """The GPU product a load on `assignment` is learned under ("" for a CPU load)."""
    if not assignment.device_uuids:
        return ""  # without a view of the replica: most loads are CPU loads
    replica = ctx.cluster.replica(key)
    names = {gpu.uuid: gpu.name for gpu in replica.gpus} if replica else {}
    return min((names.get(uuid, "") for uuid in assignment.device_uuids), default="")


def _measures_host(record: ModelRecord, product: str) -> bool:
    """Whether the agent is asked to measure the load's host memory (two readings of the
    inference server's metrics, which cost the load time): while fewer than RECENT_SAMPLES
    loads of the model's artifact on `product` were measured. A model without storageUri
    has no artifact to learn it for."""
    samples = max((f.host.samples for f in record.learned if f.product == product), default=0)
    return bool(record.spec.storage_uri) and samples < RECENT_SAMPLES


def _retire(record: ModelRecord, ctx: Context, out: Outcome) -> None:
    """Once the current version is available, unload old versions and retired copies."""
    if record.available_count() < record.spec.required_replicas or any(
        c.version == record.version and c.state in IN_FLIGHT and not c.retire
        for c in record.copies.values()
    ):
        return
    for copy in list(record.copies.values()):
        stale = copy.version != record.version or copy.retire
        if copy.state == CopyState.LOAD_FAILED and copy.version != record.version:
            del record.copies[copy.key]
        elif stale and copy.state in ACTIVE:
            if not ctx.cluster.connected(copy.key):
                del record.copies[copy.key]
                continue
            copy.retire = False
            out.note(
                "info",
                "model %s: unloading v%d from %s",
                record.name,
                copy.version,
                replica_id(*copy.key),
                model=record.name,
                version=copy.version,
                key=copy.key,
            )
            _start_unload(record, copy, ctx, out)


def _start_unload(record: ModelRecord, copy: ModelCopy, ctx: Context, out: Outcome) -> None:
    copy.state = CopyState.UNLOADING
    copy.deadline = ctx.now + ctx.settings.load_timeout_s
    out.commands.append((copy.key, Unload(record.name, copy.version)))


def _set_state(record: ModelRecord) -> None:
    """The model's state, derived from its copies and its last placement."""
    current = [c for c in record.copies.values() if c.version == record.version]
    loading = any(c.state in IN_FLIGHT for c in current)
    available = record.available_count()
    if available >= record.spec.required_replicas and not loading:
        record.state = ModelState.AVAILABLE
        if available >= record.spec.replicas and not record.attempts:
            record.reason = ""
    elif loading:
        record.state = ModelState.PROGRESSING
    elif record.attempts:
        record.state = ModelState.FAILED if record.load_failures else ModelState.SCHEDULE_FAILED
    elif available >= record.spec.required_replicas:
        record.state = ModelState.AVAILABLE
    else:
        record.state = ModelState.PENDING


# ------------------------------------------------------------------ a dry run


@dataclass(frozen=True)
class Plan:
    """A dry run's answer: the record as the client's change and the next pass would leave
    it (as it is when nothing changed), and the replicas that pass would send a load to."""

    record: ModelRecord
    changed: bool = True
    loads: frozenset[Key] = frozenset()


def plan(record: ModelRecord, ctx: Context) -> Plan:
    """Where the next pass would place `record` now, its back-off cut. The pass is made on a
    copy: the record given stays as it is, and the commands the pass decides are only
    reported, never sent."""
    trial = record.clone()
    trial.next_retry_at = 0.0
    out = step(trial, ctx)
    loads = frozenset(
        key
        for key, command in out.commands
        if isinstance(command, Load) and command.version == trial.version
    )
    return Plan(trial, loads=loads)


# ------------------------------------------------------------------ timers


def next_due(record: ModelRecord, settings: SchedulerSettings, restored_since: float) -> float:
    """When this model next needs a pass without any event (inf: never)."""
    times = [c.deadline for c in record.copies.values() if c.deadline]
    times += [
        lost_since(c, restored_since) + settings.disconnect_grace_s
        for c in record.copies.values()
        if c.lost_since
    ]
    times += list(record.excluded_until.values())
    if not record.deleted and len(current_copies(record)) < record.spec.replicas:
        times.append(record.next_retry_at)
    return min(times, default=float("inf"))


def backoff(settings: SchedulerSettings, attempts: int) -> float:
    """Seconds before a refused model is placed again: doubling from the first, capped."""
    initial, cap = settings.retry_initial_s, settings.retry_max_s
    return float(min(cap, initial * 2 ** min(attempts - 1, 30)))


def _digest(record: ModelRecord) -> tuple[object, ...]:
    """What a pass may change that is saved and shown."""
    return (
        record.version,
        record.state,
        record.reason,
        record.server_reasons,
        record.deleted,
        record.learned,
        record.learned_gpu_bytes,
        record.learned_memory_bytes,
        tuple(
            (
                c.key,
                c.version,
                c.state,
                c.reason,
                c.device_uuids,
                c.retire,
                tuple(sorted(c.footprint_bytes.items())),
            )
            for c in sorted(record.copies.values(), key=lambda c: c.key)
        ),
    )
