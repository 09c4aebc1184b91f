"""The model lifecycle as a table: a record, an event, the record's next states and the
commands sent. Each row is one row of the state table in docs/scheduler.md (its id starts
with that row's id), checked with plain values: no SQLite, no event loop, no clock."""

from __future__ import annotations

import re
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from contract.names import replica_id
from contract.protocol import DrainComplete, EventKind, Load, LoadedModel, ModelEvent
from placement import (
    ClusterIndex,
    Gpu,
    Placement,
    Policy,
    Rejection,
    Replica,
    Request,
    place,
)
from scheduler_service import lifecycle
from scheduler_service.lifecycle import Context, Outcome
from scheduler_service.model import (
    CopyState,
    Footprint,
    FootprintBook,
    Key,
    Learned,
    ModelCopy,
    ModelRecord,
    ModelState,
    validate_spec,
    waiting_for,
    with_margin,
)
from scheduler_service.settings import SchedulerSettings

GiB = 2**30
MiB = 2**20
NOW = 1000.0
# Validated without reading the environment: the rows depend on these values only.
SETTINGS = SchedulerSettings.model_validate(
    {
        "load_timeout_s": 300,
        "disconnect_grace_s": 30,
        "exclusion_s": 300,
        "retry_initial_s": 1,
        "retry_max_s": 60,
        "drain_timeout_s": 55,
    }
)
A0, A1, B0 = ("a", 0), ("a", 1), ("b", 0)
DOC = Path(__file__).resolve().parents[2] / "docs" / "scheduler.md"

REQUESTED, AVAILABLE, FAILED = CopyState.LOAD_REQUESTED, CopyState.AVAILABLE, CopyState.LOAD_FAILED
UNLOADING, UNLOADED = CopyState.UNLOADING, CopyState.UNLOADED


@dataclass(frozen=True)
class Cluster:
    """A `lifecycle.ClusterView` over plain values: the connected replicas, and the keys of
    the draining ones (connected or not)."""

    replicas: tuple[Replica, ...] = ()
    draining_keys: frozenset[Key] = frozenset()

    def connected(self, key: Key) -> bool:
        return self.replica(key) is not None

    def draining(self, key: Key) -> bool:
        return key in self.draining_keys

    def replica(self, key: Key) -> Replica | None:
        return next((r for r in self.replicas if r.key == key), None)

    def place(
        self, record: ModelRecord, request: Request, policy: Policy, now: float
    ) -> Placement | Rejection:
        index = ClusterIndex(
            replace(r, draining=r.key in self.draining_keys) for r in self.replicas
        )
        return place(index, request, policy, now)


def replica(key: Key, *capabilities: str, gpus: tuple[Gpu, ...] = ()) -> Replica:
    return Replica(
        server=key[0],
        index=key[1],
        capabilities=frozenset(capabilities or ("sklearn",)),
        memory_bytes=16 * GiB,
        gpus=gpus,
    )


def ctx(*connected: Key, draining: tuple[Key, ...] = (), now: float = NOW) -> Context:
    cluster = Cluster(tuple(replica(key) for key in connected), frozenset(draining))
    return Context(cluster, SETTINGS, now)


def copy(key: Key, state: CopyState, version: int = 1, **fields: Any) -> ModelCopy:
    return ModelCopy(server=key[0], index=key[1], version=version, state=state, **fields)


def model(
    *copies: ModelCopy,
    state: ModelState = ModelState.PROGRESSING,
    version: int = 1,
    **spec: Any,
) -> ModelRecord:
    record = ModelRecord(spec=validate_spec("iris", **spec), version=version, state=state)
    record.copies = {c.key: c for c in copies}
    return record


def terminating(*copies: ModelCopy) -> ModelRecord:
    record = model(*copies, state=ModelState.TERMINATING)
    record.deleted = True
    return record


def event(
    kind: EventKind, version: int = 1, message: str = "", footprint: dict[str, int] | None = None
) -> ModelEvent:
    return ModelEvent(kind, "iris", version, message, footprint_bytes=footprint or {})


def sent(outcome: Outcome) -> list[tuple[str, str, int]]:
    """The commands as (replica, kind, version): what the tables show."""
    return [(replica_id(*key), type(c).__name__, c.version) for key, c in outcome.commands]


def copies_of(record: ModelRecord) -> dict[str, str]:
    return {replica_id(*key): c.state.value for key, c in sorted(record.copies.items())}


def step(context: Context) -> Callable[[ModelRecord], Outcome]:
    return lambda record: lifecycle.step(record, context)


def on_event(key: Key, what: ModelEvent, context: Context) -> Callable[[ModelRecord], Outcome]:
    return lambda record: lifecycle.on_event(record, key, what, context)


def on_hello(key: Key, loaded: LoadedModel | None) -> Callable[[ModelRecord], Outcome]:
    return lambda record: lifecycle.on_hello(record, key, loaded, ctx(key))


def on_disconnect(key: Key, context: Context) -> Callable[[ModelRecord], Outcome]:
    return lambda record: lifecycle.on_disconnect(record, key, context)


def then(*actions: Callable[[ModelRecord], object]) -> Callable[[ModelRecord], Outcome]:
    """Several things happen in order; the last one's outcome is checked."""

    def run(record: ModelRecord) -> Outcome:
        results = [action(record) for action in actions]
        assert isinstance(results[-1], Outcome)
        return results[-1]

    return run


def always(record: ModelRecord, outcome: Outcome) -> bool:
    return True


def failed_and_excluded(kind: str) -> Callable[[ModelRecord, Outcome], bool]:
    """C3: the replica is excluded for this version and the model is placed again at once."""
    return lambda r, o: (
        r.excluded_until == {A0: NOW + 300}
        and r.load_failures == 1
        and r.next_retry_at == 0
        and r.copies[A0].reason == "boom"
        and o.load_failures == [kind]
    )


@dataclass(frozen=True)
class Row:
    id: str
    given: ModelRecord
    event: Callable[[ModelRecord], Outcome]
    state: ModelState  # the model's next state
    copies: dict[str, str]  # the next copy states, by replica
    sent: tuple[tuple[str, str, int], ...] = ()
    also: Callable[[ModelRecord, Outcome], bool] = always  # what else the row promises


H100 = Gpu(uuid="GPU-1", name="H100", index=0, total_bytes=80 * GiB, free_bytes=80 * GiB)
GPU_REPLICA = Context(Cluster((replica(A0, "torch", gpus=(H100,)),)), SETTINGS, NOW)
LOADING: dict[str, Any] = {"deadline": NOW + 295.0}  # requested 5 s ago
WAITING: dict[str, Any] = {"lost_since": NOW - 10.0}  # its agent away for 10 s
GONE: dict[str, Any] = {"lost_since": NOW - 31.0}  # ... for longer than the grace

ROWS = [
    # ------------------------------------------------------------------ the model
    Row(
        "M7-placement-found",
        model(state=ModelState.PENDING),
        step(ctx(A0)),
        ModelState.PROGRESSING,
        {"a-0": "LoadRequested"},
        (("a-0", "Load", 1),),
        lambda r, o: o.placement is not None and o.placement.outcome == "placed" and o.publish,
    ),
    Row(
        "M8-placement-refused",
        model(state=ModelState.PENDING, requirements=("torch",)),
        step(ctx(A0)),
        ModelState.SCHEDULE_FAILED,
        {},
        also=lambda r, o: (
            r.reason == "a: missing capability torch"
            and r.server_reasons == (("a", "missing capability torch"),)
            and r.next_retry_at == NOW + 1
            and o.placement is not None
            and o.placement.outcome == "rejected"
        ),
    ),
    Row(
        "M9-refused-after-a-failed-load",
        model(copy(A0, FAILED)),
        then(
            lambda r: r.excluded_until.update({A0: NOW + 300}),
            lambda r: setattr(r, "load_failures", 1),
            step(ctx(A0)),
        ),
        ModelState.FAILED,
        {"a-0": "LoadFailed"},
        also=lambda r, o: "load of version 1 failed here" in r.reason,
    ),
    Row(
        "M10-enough-copies-available",
        model(copy(A0, AVAILABLE, 2), copy(A1, AVAILABLE, 1), version=2),
        step(ctx(A0, A1)),
        ModelState.AVAILABLE,
        {"a-0": "Available", "a-1": "Unloading"},
        (("a-1", "Unload", 1),),
    ),
    *(
        # As in Seldon Core 2: without minReplicas (or with 0) it is all replicas or none.
        Row(
            f"M8-too-few-replicas-fit-{why}",
            model(state=ModelState.PENDING, **spec),
            step(ctx(A0)),
            ModelState.SCHEDULE_FAILED,
            {},
            also=lambda r, o: (
                r.reason == "a: only 1 of 2 requested replicas fit; the server has 1 connected"
                and o.placement is not None
                and o.placement.outcome == "rejected"
            ),
        )
        for why, spec in (
            ("min-replicas-unset", {"replicas": 2}),
            ("min-replicas-0-is-unset", {"replicas": 2, "min_replicas": 0}),
        )
    ),
    Row(
        "M8-fewer-than-min-replicas-fit",
        model(state=ModelState.PENDING, replicas=3, min_replicas=2),
        step(ctx(A0)),
        ModelState.SCHEDULE_FAILED,
        {},
        also=lambda r, o: (
            r.reason
            == ("a: only 1 of 3 requested replicas fit (minReplicas 2); the server has 1 connected")
        ),
    ),
    Row(
        "M11-partial-placement",
        model(state=ModelState.PENDING, replicas=2, min_replicas=1),
        step(ctx(A0)),
        ModelState.PROGRESSING,
        {"a-0": "LoadRequested"},
        (("a-0", "Load", 1),),
        lambda r, o: (
            r.reason == "partial: 1/2 replicas fit (minReplicas 1); the rest is retried"
            and r.next_retry_at == NOW + 1
            and o.placement is not None
            and o.placement.outcome == "partial"
        ),
    ),
    Row(
        "M11-as-many-as-fit-above-min-replicas",
        model(state=ModelState.PENDING, replicas=3, min_replicas=1),
        step(ctx(A0, A1)),
        ModelState.PROGRESSING,
        {"a-0": "LoadRequested", "a-1": "LoadRequested"},
        (("a-0", "Load", 1), ("a-1", "Load", 1)),
        lambda r, o: r.reason.startswith("partial: 2/3 replicas fit"),
    ),
    Row(
        "M10-partial-placement-available-at-min-replicas",
        model(copy(A0, AVAILABLE), replicas=2, min_replicas=1),
        step(ctx(A0)),
        ModelState.AVAILABLE,
        {"a-0": "Available"},
        also=lambda r, o: r.reason.startswith("partial: 1/2 replicas fit"),
    ),
    Row(
        "M12-cluster-changed-cuts-the-back-off",
        model(state=ModelState.SCHEDULE_FAILED),
        then(
            lambda r: setattr(r, "attempts", 3),
            lambda r: setattr(r, "next_retry_at", NOW + 4),
            lifecycle.on_cluster_changed,
            step(ctx(A0)),
        ),
        ModelState.PROGRESSING,
        {"a-0": "LoadRequested"},
        (("a-0", "Load", 1),),
        lambda r, o: o.placement is not None and o.placement.retry,
    ),
    Row(
        "M12-unchanged-cluster-keeps-the-back-off",
        model(state=ModelState.SCHEDULE_FAILED),
        then(
            lambda r: setattr(r, "attempts", 3),
            lambda r: setattr(r, "next_retry_at", NOW + 4),
            step(ctx(A0)),
        ),
        ModelState.SCHEDULE_FAILED,
        {},
        also=lambda r, o: o.placement is None,
    ),
    Row(
        "M13-drain-places-elsewhere",
        model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
        then(
            lambda r: setattr(r, "next_retry_at", NOW + 30),
            lambda r: lifecycle.on_drain(r, A0),
            step(ctx(A0, A1, draining=(A0,))),
        ),
        ModelState.PROGRESSING,
        {"a-0": "Available", "a-1": "LoadRequested"},
        (("a-1", "Load", 1),),
        lambda r, o: r.copies[A0].retire,
    ),
    Row(
        "M14-terminating-unloads",
        terminating(copy(A0, AVAILABLE), copy(A1, UNLOADING, deadline=NOW + 100)),
        step(ctx(A0, A1)),
        ModelState.TERMINATING,
        {"a-0": "Unloading", "a-1": "Unloading"},
        (("a-0", "Unload", 1),),
        lambda r, o: not o.terminated and o.publish,
    ),
    Row(
        "M15-terminated",
        terminating(),
        step(ctx(A0)),
        ModelState.TERMINATED,
        {},
        also=lambda r, o: o.terminated and r.reason == "unloaded",
    ),
    # ------------------------------------------------------------------ its copies
    Row(
        "C1-placement-found",
        model(state=ModelState.PENDING, requirements=("torch",), gpu_memory="1Gi"),
        step(GPU_REPLICA),
        ModelState.PROGRESSING,
        {"a-0": "LoadRequested"},
        (("a-0", "Load", 1),),
        lambda r, o: (
            r.copies[A0].deadline == NOW + 300
            and isinstance(o.commands[0][1], Load)
            and o.commands[0][1].device_uuids == ("GPU-1",)
        ),
    ),
    Row(
        "C2-loaded",
        model(copy(A0, REQUESTED, **LOADING)),
        on_event(A0, event(EventKind.LOADED, footprint={"GPU-1": 5}), ctx(A0)),
        ModelState.PROGRESSING,  # derived by the next pass (M10)
        {"a-0": "Available"},
        also=lambda r, o: (
            o.load_s == 5.0
            and o.footprint == {"GPU-1": 5}
            and r.copies[A0].footprint_bytes == {"GPU-1": 5}
            and r.copies[A0].deadline == 0
            and o.publish
        ),
    ),
    *(
        Row(
            f"C3-{kind.value}",
            model(copy(A0, REQUESTED, **LOADING)),
            on_event(A0, event(kind, message="boom"), ctx(A0)),
            ModelState.PROGRESSING,
            {"a-0": "LoadFailed"},
            also=failed_and_excluded(kind.value),
        )
        for kind in (EventKind.LOAD_FAILED, EventKind.LOAD_FAILED_MEMORY)
    ),
    Row(
        "C3-placed-again-elsewhere",
        model(copy(A0, FAILED)),
        then(lambda r: r.excluded_until.update({A0: NOW + 300}), step(ctx(A0, A1))),
        ModelState.PROGRESSING,
        {"a-0": "LoadFailed", "a-1": "LoadRequested"},
        (("a-1", "Load", 1),),
    ),
    Row(
        "C4-failed-in-place-upgrade",
        model(copy(A0, REQUESTED, 2, replaced_version=1, **LOADING), version=2),
        on_event(A0, event(EventKind.LOAD_FAILED, 2, "bad artifact"), ctx(A0)),
        ModelState.PROGRESSING,
        {"a-0": "LoadFailed"},
        (("a-0", "Unload", 1),),
        lambda r, o: r.copies[A0].replaced_version == 0,
    ),
    Row(
        "C5-load-timeout",
        model(copy(A0, REQUESTED, deadline=NOW - 1)),
        step(ctx(A0, A1)),
        ModelState.PROGRESSING,
        {"a-0": "LoadFailed", "a-1": "LoadRequested"},
        (("a-0", "Unload", 1), ("a-1", "Load", 1)),
        lambda r, o: (
            o.load_failures == ["timeout"] and r.copies[A0].reason == "load timed out after 300s"
        ),
    ),
    Row(
        "C6-agent-disconnected-during-the-load",
        model(copy(A0, REQUESTED, **LOADING)),
        on_disconnect(A0, ctx()),
        ModelState.PROGRESSING,
        {"a-0": "LoadFailed"},
        # Not the replica's doing: it is not excluded, and may take the model when back.
        also=lambda r, o: o.load_failures == ["agent_disconnected"] and not r.excluded_until,
    ),
    Row(
        "C7-available-waits-for-its-agent",
        model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
        on_disconnect(A0, ctx()),
        ModelState.AVAILABLE,
        {"a-0": "Available"},
        also=lambda r, o: r.copies[A0].lost_since == NOW and o.publish,
    ),
    Row(
        "C8-agent-back-within-the-grace",
        model(copy(A0, AVAILABLE, **WAITING), state=ModelState.AVAILABLE),
        on_hello(A0, LoadedModel("iris", 1, {"GPU-1": 7})),
        ModelState.AVAILABLE,
        {"a-0": "Available"},
        also=lambda r, o: (
            r.copies[A0].lost_since == 0 and r.copies[A0].footprint_bytes == {"GPU-1": 7}
        ),
    ),
    Row(
        "C8-waiting-within-the-grace",
        model(copy(A0, AVAILABLE, **WAITING), state=ModelState.AVAILABLE),
        step(ctx(A1)),
        ModelState.AVAILABLE,
        {"a-0": "Available"},
    ),
    Row(
        "C9-grace-expired",
        model(copy(A0, AVAILABLE, **GONE), state=ModelState.AVAILABLE),
        step(ctx(A1)),
        ModelState.PROGRESSING,
        {"a-1": "LoadRequested"},
        (("a-1", "Load", 1),),
    ),
    Row(
        "C10-restored-load-grace-expired",
        model(copy(A0, REQUESTED, deadline=NOW + 200)),
        then(lifecycle.restored, step(replace(ctx(), restored_since=NOW - 31))),
        ModelState.FAILED,  # its load failed and there is nowhere else to go
        {"a-0": "LoadFailed"},
        also=lambda r, o: o.load_failures == ["agent_disconnected"],
    ),
    Row(
        "C11-hello-without-a-load-asks-again",
        model(copy(A0, REQUESTED, deadline=NOW + 1, **WAITING)),
        on_hello(A0, None),
        ModelState.PROGRESSING,
        {"a-0": "LoadRequested"},
        (("a-0", "Load", 1),),
        lambda r, o: r.copies[A0].deadline == NOW + 300 and r.copies[A0].lost_since == 0,
    ),
    Row(
        "C12-hello-without-an-available-copy",
        model(copy(A0, AVAILABLE, **WAITING), state=ModelState.AVAILABLE),
        on_hello(A0, None),
        ModelState.AVAILABLE,  # derived by the next pass, which places it again (C9)
        {},
    ),
    Row(
        "C12-hello-without-an-unloading-copy",
        terminating(copy(A0, UNLOADING)),
        on_hello(A0, None),
        ModelState.TERMINATING,
        {},
    ),
    Row(
        "C13-hello-reports-a-failed-copy-still-wanted",
        model(copy(A0, FAILED)),
        on_hello(A0, LoadedModel("iris", 1)),
        ModelState.PROGRESSING,
        {"a-0": "Available"},  # the load finished after all (its stream dropped during it)
    ),
    Row(
        "C13-hello-reports-a-failed-copy-no-longer-wanted",
        model(copy(A0, FAILED), copy(B0, AVAILABLE), state=ModelState.AVAILABLE),
        on_hello(A0, LoadedModel("iris", 1)),
        ModelState.AVAILABLE,
        {"a-0": "LoadFailed", "b-0": "Available"},
        (("a-0", "Unload", 1),),
    ),
    Row(
        "C14-hello-copy-adopted",
        model(state=ModelState.PENDING),
        on_hello(A0, LoadedModel("iris", 1, {"GPU-1": 3})),
        ModelState.PENDING,
        {"a-0": "Available"},
        also=lambda r, o: r.copies[A0].footprint_bytes == {"GPU-1": 3} and o.publish,
    ),
    Row(
        "C14-hello-copy-adopted-beside-one-on-the-same-server",
        model(copy(A1, AVAILABLE), replicas=2),
        on_hello(A0, LoadedModel("iris", 1)),
        ModelState.PROGRESSING,
        {"a-0": "Available", "a-1": "Available"},
    ),
    *(
        Row(
            f"C15-hello-copy-unloaded-{why}",
            given,
            on_hello(A0, LoadedModel("iris", 1)),
            given.state,
            copies_of(given),
            (("a-0", "Unload", 1),),
        )
        for why, given in (
            ("old-version", model(version=2)),
            ("pinned-elsewhere", model(server="b")),
            ("missing-capability", model(requirements=("torch",))),
            ("enough-copies", model(copy(A1, AVAILABLE))),
            ("copies-on-another-server", model(copy(B0, AVAILABLE), replicas=2)),
            ("model-unloading", terminating()),
        )
    ),
    Row(
        "C15-hello-unknown-model-unloaded",
        model(),  # not passed: the scheduler holds no model of that name
        lambda r: lifecycle.on_hello(None, A0, LoadedModel("other", 4), ctx(A0)),
        ModelState.PROGRESSING,
        {},
        (("a-0", "Unload", 4),),
        lambda r, o: not o.publish,
    ),
    Row(
        "C16-late-load-kept",
        model(copy(A0, FAILED)),
        then(
            lambda r: r.excluded_until.update({A0: NOW + 300}),
            on_event(A0, event(EventKind.LOADED), ctx(A0)),
        ),
        ModelState.PROGRESSING,
        {"a-0": "Available"},
        also=lambda r, o: o.publish and not o.commands,
    ),
    Row(
        "C16-late-load-on-a-replica-without-a-copy-kept",
        model(state=ModelState.PENDING),
        on_event(A0, event(EventKind.LOADED), ctx(A0)),
        ModelState.PENDING,
        {"a-0": "Available"},
    ),
    Row(
        "C17-late-load-not-wanted",
        model(copy(B0, AVAILABLE), state=ModelState.AVAILABLE),
        on_event(A0, event(EventKind.LOADED), ctx(A0, B0)),
        ModelState.AVAILABLE,
        {"b-0": "Available"},
        (("a-0", "Unload", 1),),
    ),
    Row(
        "C17-late-load-of-an-unknown-model",
        model(),
        lambda r: lifecycle.on_event(None, A0, event(EventKind.LOADED, 9), ctx(A0)),
        ModelState.PROGRESSING,
        {},
        (("a-0", "Unload", 9),),
        lambda r, o: not o.publish,
    ),
    Row(
        "C17-late-load-of-an-old-version",
        model(copy(A0, AVAILABLE, 2), version=2),
        on_event(A0, event(EventKind.LOADED, 1), ctx(A0)),
        ModelState.PROGRESSING,
        {"a-0": "Available"},
        (("a-0", "Unload", 1),),
    ),
    Row(
        "C18-old-version-retired",
        model(copy(A0, AVAILABLE, 2), copy(A1, AVAILABLE, 1), version=2),
        step(ctx(A0, A1)),
        ModelState.AVAILABLE,
        {"a-0": "Available", "a-1": "Unloading"},
        (("a-1", "Unload", 1),),
        lambda r, o: r.copies[A1].deadline == NOW + 300,
    ),
    Row(
        "C18-old-version-waits-for-the-new-one",
        model(copy(A0, REQUESTED, 2, **LOADING), copy(A1, AVAILABLE, 1), version=2),
        step(ctx(A0, A1)),
        ModelState.PROGRESSING,
        {"a-0": "LoadRequested", "a-1": "Available"},
    ),
    Row(
        "C18-scaled-in",
        model(copy(A0, AVAILABLE), copy(A1, AVAILABLE), state=ModelState.PROGRESSING),
        step(ctx(A0, A1)),
        ModelState.AVAILABLE,
        {"a-0": "Available", "a-1": "Unloading"},
        (("a-1", "Unload", 1),),
    ),
    Row(
        "C18-drained-copy-retired",
        model(copy(A0, AVAILABLE, retire=True), copy(A1, AVAILABLE)),
        step(ctx(A0, A1, draining=(A0,))),
        ModelState.AVAILABLE,
        {"a-0": "Unloading", "a-1": "Available"},
        (("a-0", "Unload", 1),),
    ),
    Row(
        "C19-unloaded",
        terminating(copy(A0, UNLOADING, deadline=NOW + 100)),
        on_event(A0, event(EventKind.UNLOADED), ctx(A0)),
        ModelState.TERMINATING,
        {"a-0": "Unloaded"},
        also=lambda r, o: o.freed and o.publish and r.copies[A0].deadline == 0,
    ),
    Row(
        "C19-unloaded-while-available",
        model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
        on_event(A0, event(EventKind.UNLOADED), ctx(A0)),
        ModelState.AVAILABLE,
        {"a-0": "Unloaded"},
        also=lambda r, o: o.freed,
    ),
    Row(
        "C19-unloaded-gone-at-the-next-pass",
        model(copy(A0, AVAILABLE), copy(A1, UNLOADED, 0)),
        step(ctx(A0, A1)),
        ModelState.AVAILABLE,
        {"a-0": "Available"},
    ),
    Row(
        "C20-unload-failed",
        terminating(copy(A0, UNLOADING, deadline=NOW + 100)),
        on_event(A0, event(EventKind.UNLOAD_FAILED, message="HTTP 500"), ctx(A0)),
        ModelState.TERMINATING,
        {"a-0": "Unloading"},
        also=lambda r, o: (
            r.copies[A0].reason == "unload failed: HTTP 500"
            and r.reason == "unload failed on a-0: HTTP 500"
            and r.copies[A0].deadline == NOW + 60
        ),
    ),
    Row(
        "C21-unload-asked-again",
        terminating(copy(A0, UNLOADING, deadline=NOW - 1)),
        step(ctx(A0)),
        ModelState.TERMINATING,
        {"a-0": "Unloading"},
        (("a-0", "Unload", 1),),
        lambda r, o: r.copies[A0].deadline == NOW + 300,
    ),
    Row(
        "C21-unload-not-asked-before-its-deadline",
        terminating(copy(A0, UNLOADING, deadline=NOW + 1)),
        step(ctx(A0)),
        ModelState.TERMINATING,
        {"a-0": "Unloading"},
    ),
    Row(
        "C22-agent-disconnected-while-unloading",
        terminating(copy(A0, UNLOADING)),
        on_disconnect(A0, ctx()),
        ModelState.TERMINATING,
        {},
    ),
    Row(
        "C22-draining-agent-disconnected",
        model(copy(A0, AVAILABLE), copy(A1, AVAILABLE), replicas=2),
        on_disconnect(A0, ctx(draining=(A0,))),
        ModelState.PROGRESSING,
        {"a-1": "Available"},
    ),
    Row(
        "C23-terminating-unloads-loads-too",
        terminating(copy(A0, REQUESTED, **LOADING)),
        step(ctx(A0)),
        ModelState.TERMINATING,
        {"a-0": "Unloading"},
        (("a-0", "Unload", 1),),
    ),
    Row(
        "C24-terminating-forgets-failed-and-disconnected",
        terminating(copy(A0, FAILED), copy(A1, AVAILABLE, **WAITING)),
        step(ctx(A0)),
        ModelState.TERMINATED,
        {},
        also=lambda r, o: o.terminated and not o.commands,
    ),
    *(
        Row(
            f"C25-ignored-{why}",
            given,
            on_event(A0, what, ctx(A0)),
            given.state,
            copies_of(given),
            also=lambda r, o: not o.publish and not o.freed,
        )
        for why, given, what in (
            (
                "failure-of-another-version",
                model(copy(A0, REQUESTED, 2, **LOADING), version=2),
                event(EventKind.LOAD_FAILED, 1),
            ),
            (
                "unloaded-overtaken-by-a-load",
                model(copy(A0, REQUESTED, **LOADING)),
                event(EventKind.UNLOADED),
            ),
            (
                "repeated-loaded",
                model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
                event(EventKind.LOADED),
            ),
            (
                "failure-after-loaded",
                model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
                event(EventKind.LOAD_FAILED),
            ),
            ("event-without-a-copy", model(copy(A1, AVAILABLE)), event(EventKind.UNLOADED)),
        )
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_transition(row: Row) -> None:
    record = deepcopy(row.given)
    outcome = row.event(record)
    assert record.state == row.state
    assert copies_of(record) == row.copies
    assert sent(outcome) == list(row.sent)
    assert row.also(record, outcome)


# ------------------------------------------------------------------ client requests

ClientCall = Callable[[ModelRecord], lifecycle.Change | None]


@dataclass(frozen=True)
class ClientRow:
    id: str
    given: ModelRecord
    call: ClientCall
    state: ModelState | None  # None: nothing changed
    version: int = 1
    also: Callable[[ModelRecord], bool] = lambda record: True


def respecify(**spec: Any) -> ClientCall:
    return lambda record: lifecycle.respecified(record, validate_spec("iris", **spec), NOW)


def unload(record: ModelRecord) -> lifecycle.Change | None:
    return lifecycle.unload_requested(record, NOW)


def failed_twice() -> ModelRecord:
    record = model(copy(A0, FAILED), state=ModelState.FAILED)
    record.excluded_until = {A0: NOW + 100}
    record.load_failures, record.attempts = 2, 3
    return record


CLIENT_ROWS = [
    ClientRow(
        "M1-load-requested",
        model(),
        lambda r: lifecycle.created(validate_spec("iris"), 4, NOW),
        ModelState.PENDING,
        4,
        lambda r: r.copies == {} and r.updated_at == NOW,
    ),
    ClientRow(
        "M2-spec-changed-while-available",
        model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
        respecify(storage_uri="/models/v2"),
        ModelState.PROGRESSING,
        2,
        lambda r: copies_of(r) == {"a-0": "Available"} and r.spec.storage_uri == "/models/v2",
    ),
    *(
        ClientRow(
            f"M2-{field}-changed",
            model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
            respecify(**{field: value}),
            ModelState.PROGRESSING,
            2,
            lambda r: copies_of(r) == {"a-0": "Available"},
        )
        for field, value in (
            ("artifact_version", 2),
            ("secret_name", "s3-credentials"),
            ("requirements", ("sklearn",)),
        )
    ),
    ClientRow(
        "M3-spec-changed-after-failures",
        failed_twice(),
        respecify(storage_uri="/models/v2"),
        ModelState.PENDING,
        2,
        lambda r: r.excluded_until == {} and r.load_failures == 0 and r.attempts == 0,
    ),
    ClientRow(
        "M3-spec-changed-after-an-unload-request",
        terminating(copy(A0, UNLOADING)),
        respecify(),
        ModelState.PENDING,
        2,
        lambda r: not r.deleted,
    ),
    ClientRow(
        "M4-scaled",
        model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
        respecify(replicas=3, min_replicas=2),
        ModelState.PROGRESSING,
        1,
        lambda r: r.spec.replicas == 3 and copies_of(r) == {"a-0": "Available"},
    ),
    ClientRow(
        "M4-min-replicas-changed",
        model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
        respecify(min_replicas=0),
        ModelState.PROGRESSING,
        1,
        lambda r: r.spec.min_replicas == 0,
    ),
    ClientRow(
        "M4-scaled-and-namespace-changed",
        model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
        respecify(replicas=2, namespace="seldon-mesh"),
        ModelState.PROGRESSING,
        1,
        lambda r: (r.spec.replicas, r.spec.namespace) == (2, "seldon-mesh"),
    ),
    ClientRow(
        "M16-namespace-changed",
        model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE, namespace="team-a"),
        respecify(namespace="seldon-mesh"),
        ModelState.AVAILABLE,
        1,
        lambda r: (
            r.spec.namespace == "seldon-mesh"
            and copies_of(r) == {"a-0": "Available"}
            and r.updated_at == NOW
        ),
    ),
    ClientRow("M5-same-spec", model(copy(A0, AVAILABLE)), respecify(), None),
    ClientRow(
        "M6-unload-requested",
        model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE),
        unload,
        ModelState.TERMINATING,
        1,
        lambda r: r.deleted and r.reason == "unload requested",
    ),
    ClientRow("M6-unload-requested-again", terminating(), unload, None),
]


@pytest.mark.parametrize("row", CLIENT_ROWS, ids=lambda row: row.id)
def test_client_request(row: ClientRow) -> None:
    before = deepcopy(row.given)
    change = row.call(row.given)
    if row.state is None:
        assert change is None
        return
    assert change is not None
    record = change.record
    assert (record.state, record.version) == (row.state, row.version)
    # The line that tells of it, logged by the shell once the change is saved, names it.
    assert change.note.args[0] == "iris" and change.note.message.startswith("model %s: ")
    assert row.also(record)
    # Decided on a copy: the record the scheduler holds changes only once this is saved.
    assert row.given == before


# ------------------------------------------------------------------ a dry run


def backed_off(record: ModelRecord) -> ModelRecord:
    record.attempts, record.next_retry_at = 2, NOW + 30
    return record


@dataclass(frozen=True)
class PlanRow:
    id: str
    given: ModelRecord
    context: Context
    state: ModelState  # after the pass the plan makes
    loads: frozenset[Key]
    copies: dict[str, str]  # the planned record's copies


PLANS = [
    PlanRow(
        "M17-dry-run-placement-found",
        model(state=ModelState.PENDING, replicas=2, min_replicas=1),
        ctx(A0),
        ModelState.PROGRESSING,
        frozenset({A0}),
        {"a-0": "LoadRequested"},
    ),
    PlanRow(
        "M17-dry-run-refused",
        model(state=ModelState.PENDING, requirements=("torch",)),
        ctx(A0),
        ModelState.SCHEDULE_FAILED,
        frozenset(),
        {},
    ),
    PlanRow(
        "M17-dry-run-cuts-the-back-off",
        backed_off(model(state=ModelState.SCHEDULE_FAILED)),
        ctx(A0),
        ModelState.PROGRESSING,
        frozenset({A0}),
        {"a-0": "LoadRequested"},
    ),
    PlanRow(
        "M17-dry-run-keeps-the-copies-it-has",
        model(copy(A0, AVAILABLE), replicas=2),
        ctx(A0, A1),
        ModelState.PROGRESSING,
        frozenset({A1}),
        {"a-0": "Available", "a-1": "LoadRequested"},
    ),
]


@pytest.mark.parametrize("row", PLANS, ids=lambda row: row.id)
def test_dry_run(row: PlanRow) -> None:
    """A dry run makes the pass on a copy: the record given does not change."""
    before = deepcopy(row.given)
    plan = lifecycle.plan(row.given, row.context)
    assert row.given == before
    assert (plan.record.state, plan.loads, plan.changed) == (row.state, row.loads, True)
    assert copies_of(plan.record) == row.copies


# ------------------------------------------------------------------ a draining replica


def held_on(key: Key, name: str, attempts: int = 0) -> ModelRecord:
    record = ModelRecord(spec=validate_spec(name), version=1)
    record.copies[key] = copy(key, AVAILABLE)
    record.attempts = attempts
    return record


DRAINS: list[tuple[str, list[ModelRecord], float, DrainComplete | None]] = [
    ("D1-a-model-waits-to-move", [held_on(A0, "iris")], NOW, None),
    ("D2-nothing-held-there", [held_on(A1, "iris")], NOW, DrainComplete()),
    (
        "D2-a-model-refused-elsewhere-is-stranded",
        [held_on(A0, "iris", attempts=2), held_on(A1, "other")],
        NOW,
        DrainComplete(("iris",)),
    ),
    (
        "D3-drain-timeout",
        [held_on(A0, "iris"), held_on(A0, "digits")],
        NOW + 55,
        DrainComplete(("digits", "iris")),
    ),
]


@pytest.mark.parametrize(
    ("records", "now", "expected"), [case[1:] for case in DRAINS], ids=[case[0] for case in DRAINS]
)
def test_drain(records: list[ModelRecord], now: float, expected: DrainComplete | None) -> None:
    assert lifecycle.drain_verdict(A0, records, NOW + 55, now) == expected


# ------------------------------------------------------------------ timers, and the table


def test_next_due_is_the_earliest_deadline_grace_exclusion_or_retry() -> None:
    record = model(
        copy(A0, REQUESTED, deadline=NOW + 50),
        copy(A1, AVAILABLE, lost_since=NOW - 10),
        replicas=3,
    )
    record.next_retry_at = NOW + 100
    assert lifecycle.next_due(record, SETTINGS, 0.0) == NOW + 20  # A1's grace ends
    # Read back from the state file: the grace counts from when the agents are awaited.
    record.copies[A1].lost_since = lifecycle.RESTORED
    assert lifecycle.next_due(record, SETTINGS, NOW - 25) == NOW + 5
    record.copies[A1].lost_since = 0.0
    record.excluded_until[B0] = NOW + 40
    assert lifecycle.next_due(record, SETTINGS, 0.0) == NOW + 40
    record.next_retry_at = NOW + 5
    assert lifecycle.next_due(record, SETTINGS, 0.0) == NOW + 5
    record.spec = validate_spec("iris", replicas=2)  # enough copies: no retry due
    assert lifecycle.next_due(record, SETTINGS, 0.0) == NOW + 40


def test_the_back_off_doubles_up_to_its_cap() -> None:
    assert [lifecycle.backoff(SETTINGS, n) for n in (1, 2, 3, 6, 7, 100)] == [
        1.0,
        2.0,
        4.0,
        32.0,
        60.0,
        60.0,
    ]


def test_adoption_does_not_charge_memory() -> None:
    """A copy already loaded already uses its memory: a model that could not be placed on
    the replica now (64 GiB asked, 16 GiB there) is still adopted where it runs."""
    record = model(memory="64Gi")
    assert lifecycle.step(deepcopy(record), ctx(A0)).commands == []  # no placement fits
    outcome = lifecycle.on_hello(record, A0, LoadedModel("iris", 1), ctx(A0))
    assert copies_of(record) == {"a-0": "Available"}
    assert outcome.commands == []


def test_every_row_of_the_state_table_is_tested() -> None:
    """The table in docs/scheduler.md and these tests name the same rows."""
    documented = set(re.findall(r"^\| ([MCD]\d+) \|", DOC.read_text(), flags=re.MULTILINE))
    ids = [row.id for row in ROWS] + [row.id for row in CLIENT_ROWS] + [c[0] for c in DRAINS]
    ids += [row.id for row in PLANS]
    tested = {name.split("-")[0] for name in ids}
    assert len(documented) > 40
    assert tested == documented


# ------------------------------------------------------------------ learned footprints

URI = "gs://models/llama"


def learned(*figures: tuple[str, int], uri: str = URI) -> Callable[[Any], tuple[Footprint, ...]]:
    """A FootprintBook.of over plain values: `figures` (product, bytes) for artifact `uri`."""
    known = tuple(Footprint(uri, None, product, gpu=Learned(size, 2)) for product, size in figures)
    return lambda artifact: known if artifact == (uri, None) else ()


def gpu_cluster(free_gib: int = 80, *, margin: int = 10) -> Context:
    """A0 without GPUs, B0 with one H100 (`free_gib` free); nothing learned yet."""
    gpu = replace(H100, free_bytes=free_gib * GiB)
    cluster = Cluster((replica(A0), replica(B0, gpus=(gpu,))))
    settings = SETTINGS.model_copy(update={"learned_margin_percent": margin})
    return Context(cluster, settings, NOW, learned=learned())


def test_no_gpu_memory_declared_and_nothing_learned_is_a_cpu_model() -> None:
    record = model(state=ModelState.PENDING, storage_uri=URI)
    outcome = lifecycle.step(record, gpu_cluster())
    assert sent(outcome) == [("a-0", "Load", 1)]
    ((_, load),) = outcome.commands
    assert isinstance(load, Load) and load.gpu_memory_bytes == 0 and load.device_uuids == ()
    assert record.gpu_memory_source == "" and record.learned == ()


def test_no_gpu_memory_declared_is_placed_on_a_gpu_with_the_learned_figure_plus_the_margin() -> (
    None
):
    context = replace(gpu_cluster(), learned=learned(("H100", 10 * GiB), ("A100", 12 * GiB)))
    record = model(state=ModelState.PENDING, storage_uri=URI)
    outcome = lifecycle.step(record, context)
    # The largest figure over every product, plus 10 %: a GPU model now, so not on A0.
    assert sent(outcome) == [("b-0", "Load", 1)]
    ((_, load),) = outcome.commands
    assert isinstance(load, Load)
    assert load.gpu_memory_bytes == record.gpu_memory_bytes == -(-12 * GiB * 110 // 100)
    assert load.device_uuids == ("GPU-1",)
    assert record.gpu_memory_source == "learned"
    assert [f.product for f in record.learned] == ["H100", "A100"]
    assert any("GPU memory learned" in n.message % n.args for n in outcome.notes)
    assert outcome.publish


def test_a_learned_figure_that_fits_nowhere_refuses_the_model_with_the_gpu_reason() -> None:
    context = replace(gpu_cluster(free_gib=10, margin=25), learned=learned(("H100", 10 * GiB)))
    record = model(state=ModelState.PENDING, storage_uri=URI)
    outcome = lifecycle.step(record, context)
    assert outcome.commands == [] and record.state == ModelState.SCHEDULE_FAILED
    assert "b: needs 12.5 GiB on 1 GPU, largest room 10 GiB" in record.reason
    assert "a: no GPUs" in record.reason
    assert any("GPU memory learned" in n.message % n.args for n in outcome.notes)


def test_a_declared_gpu_memory_wins_over_what_was_learned() -> None:
    context = replace(gpu_cluster(), learned=learned(("H100", 30 * GiB)))
    record = model(state=ModelState.PENDING, storage_uri=URI, gpu_memory="20Gi")
    outcome = lifecycle.step(record, context)
    ((_, load),) = outcome.commands
    assert isinstance(load, Load) and load.gpu_memory_bytes == 20 * GiB
    assert record.gpu_memory_source == "declared" and record.learned_gpu_bytes == 0
    assert record.learned[0].gpu.size == 30 * GiB  # shown, not used


def test_another_artifact_version_learns_apart() -> None:
    context = replace(gpu_cluster(), learned=learned(("H100", 10 * GiB)))
    record = model(state=ModelState.PENDING, storage_uri=URI, artifact_version=2)
    lifecycle.step(record, context)
    assert record.learned == () and record.gpu_memory_source == ""


def test_a_placed_model_keeps_its_place_when_a_figure_is_learned() -> None:
    """The figure counts from the next placement: an available CPU copy is not moved."""
    context = replace(gpu_cluster(), learned=learned(("H100", 10 * GiB)))
    record = model(copy(A0, AVAILABLE), state=ModelState.AVAILABLE, storage_uri=URI)
    outcome = lifecycle.step(record, context)
    assert outcome.commands == [] and copies_of(record) == {"a-0": "Available"}
    assert record.gpu_memory_source == "learned" and outcome.publish  # shown at once


def test_footprint_book_keeps_the_largest_of_the_recent_loads() -> None:
    book = FootprintBook()
    artifact = (URI, None)
    for size in (10, 30, 12, 11, 13, 14):
        book.keep(book.measured(artifact, "H100", NOW, gpu=size * GiB))
    # 30 GiB was the second of six: it left the window of the last five.
    (figure,) = book.of(artifact)
    assert figure.gpu.samples == 6
    assert figure.gpu.recent == tuple(s * GiB for s in (30, 12, 11, 13, 14))
    assert figure.gpu.size == 30 * GiB
    book.keep(book.measured(artifact, "H100", NOW, gpu=9 * GiB))
    assert book.of(artifact)[0].gpu.size == 14 * GiB
    assert book.of((URI, 1)) == ()
    assert with_margin((f.gpu.size for f in book.of(artifact)), 10) == -(-14 * GiB * 110 // 100)
    assert with_margin((), 10) == 0
    # Host memory is learned next to it, from the loads that measured it.
    book.keep(book.measured(artifact, "H100", NOW + 1, host=300 * MiB))
    (figure,) = book.of(artifact)
    assert figure.host == Learned(300 * MiB, 1, (300 * MiB,))
    assert figure.gpu.size == 14 * GiB and figure.updated_at == NOW + 1


def host_learned(size: int, uri: str = URI) -> Callable[[Any], tuple[Footprint, ...]]:
    """A FootprintBook.of with one host-memory figure (loads that took no GPU memory)."""
    known = (Footprint(uri, None, "", host=Learned(size, 1, (size,))),)
    return lambda artifact: known if artifact == (uri, None) else ()


def test_no_memory_declared_is_placed_with_the_learned_host_figure_plus_the_margin() -> None:
    context = replace(gpu_cluster(), learned=host_learned(4 * GiB))
    record = model(state=ModelState.PENDING, storage_uri=URI)
    outcome = lifecycle.step(record, context)
    assert sent(outcome) == [("a-0", "Load", 1)]
    assert record.memory_source == "learned" and record.gpu_memory_source == ""
    assert record.memory_bytes == -(-4 * GiB * 110 // 100)
    assert lifecycle.learned_text(record) == "memory learned: 4.4 GiB (4 GiB measured + margin)"


def test_a_learned_host_figure_that_fits_nowhere_refuses_the_model_with_the_memory_reason() -> None:
    context = replace(gpu_cluster(), learned=host_learned(15 * GiB))  # 16.5 GiB > 16 GiB
    record = model(state=ModelState.PENDING, storage_uri=URI)
    outcome = lifecycle.step(record, context)
    assert outcome.commands == [] and record.state == ModelState.SCHEDULE_FAILED
    assert all("memory" in reason for _, reason in record.server_reasons)


def test_a_declared_memory_wins_over_the_learned_host_figure() -> None:
    context = replace(gpu_cluster(), learned=host_learned(15 * GiB))
    record = model(state=ModelState.PENDING, storage_uri=URI, memory="1Gi")
    outcome = lifecycle.step(record, context)
    assert sent(outcome) == [("a-0", "Load", 1)]
    assert (record.memory_source, record.memory_bytes, record.learned_memory_bytes) == (
        "declared",
        GiB,
        0,
    )
    assert lifecycle.learned_text(record) == ""


@pytest.mark.parametrize(
    ("state", "version", "footprint", "confirms"),
    [
        (AVAILABLE, 1, {"GPU-1": GiB}, True),
        (AVAILABLE, 2, {"GPU-1": GiB}, False),  # another version there
        (AVAILABLE, 1, {"GPU-1": 2 * GiB}, False),  # measured anew
        (REQUESTED, 1, {"GPU-1": GiB}, False),  # a load that ended while away
        (UNLOADING, 1, {"GPU-1": GiB}, False),
        (FAILED, 1, {"GPU-1": GiB}, False),
    ],
)
def test_a_hello_confirms_only_the_copy_as_it_is_and_on_hello_agrees(
    state: CopyState, version: int, footprint: dict[str, int], confirms: bool
) -> None:
    record = model(copy(A0, state, footprint_bytes={"GPU-1": GiB}, lost_since=lifecycle.RESTORED))
    loaded = LoadedModel("iris", version, footprint)
    decided = record.clone()
    outcome = lifecycle.on_hello(decided, A0, loaded, ctx(A0))
    before = record.clone()
    assert lifecycle.hello_confirms(record, A0, loaded) is confirms
    if confirms:  # what on_hello does, without a clone, a digest or a save
        assert (outcome.commands, outcome.publish) == ([], False)
        assert record == decided and record.copies[A0].lost_since == 0.0
    else:
        assert record == before


@pytest.mark.parametrize(
    ("uri", "samples", "asked"),
    [(URI, 0, True), (URI, 4, True), (URI, 5, False), ("", 0, False)],
)
def test_the_agent_is_asked_to_measure_host_memory_while_the_artifact_has_few_figures(
    uri: str, samples: int, asked: bool
) -> None:
    """The readings cost the load time: asked for the first loads of an artifact only."""
    figure = Footprint(URI, None, "", host=Learned(GiB, samples, (GiB,) * min(samples, 5)))
    context = replace(gpu_cluster(), learned=lambda artifact: (figure,) if samples else ())
    record = model(state=ModelState.PENDING, storage_uri=uri, memory="2Gi")
    ((_, load),) = lifecycle.step(record, context).commands
    assert isinstance(load, Load) and load.measure_host_memory is asked


def test_what_keeps_a_model_waiting_and_when_it_became_available() -> None:
    """The metrics' view of a model in its passes: refused (the nearest miss), placing,
    loading, a load that failed, Available after its request (observed once), going."""
    record = lifecycle.created(validate_spec("iris", requirements=["triton"]), 1, NOW).record
    assert waiting_for(record) == "placing"
    step(ctx(A0))(record)
    assert (record.state, waiting_for(record)) == (ModelState.SCHEDULE_FAILED, "capabilities")
    record = lifecycle.created(validate_spec("iris"), 1, NOW).record
    assert step(ctx(A0))(record).available_s is None
    assert waiting_for(record) == "loading"
    on_event(A0, event(EventKind.LOAD_FAILED, message="boom"), ctx(A0))(record)
    step(ctx(A0))(record)  # the only replica is excluded now
    assert (record.state, record.refusal) == (ModelState.FAILED, "excluded")
    assert waiting_for(record) == "load_failed"
    step(ctx(A0, B0, now=NOW + 1))(record)  # placed again, on the other replica
    on_event(B0, event(EventKind.LOADED), ctx(A0, B0, now=NOW + 3))(record)
    outcome = step(ctx(A0, B0, now=NOW + 3))(record)
    assert (record.state, waiting_for(record), outcome.available_s) == (
        ModelState.AVAILABLE,
        None,
        3.0,
    )
    assert step(ctx(A0, B0, now=NOW + 4))(record).available_s is None  # once per request
    assert waiting_for(terminating()) is None
