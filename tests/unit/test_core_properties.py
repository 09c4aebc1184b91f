"""Property tests (hypothesis) of the placement invariants, checked against the raw inputs."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from placement import (
    Gpu,
    Placement,
    Policy,
    Rejection,
    Replica,
    Request,
    Snapshot,
    schedule,
)

GiB = 2**30
SERVERS = ("a", "b", "c")
CAPABILITIES = ("sklearn", "model-on-gpu", "xgboost")
MODEL = "m"

sizes = st.integers(min_value=0, max_value=8).map(lambda gib: gib * GiB // 2)


@st.composite
def gpus(draw: st.DrawFn, prefix: str) -> tuple[Gpu, ...]:
    count = draw(st.integers(min_value=0, max_value=3))
    devices = []
    for index in range(count):
        free = draw(sizes)
        devices.append(
            Gpu(
                uuid=f"{prefix}-{index}",
                name="NVIDIA H100",
                index=index,
                total_bytes=4 * GiB,
                free_bytes=free,
                reserved_bytes=draw(st.integers(min_value=0, max_value=free + GiB)),
            )
        )
    return tuple(draw(st.permutations(devices)))


@st.composite
def replicas(draw: st.DrawFn) -> tuple[Replica, ...]:
    keys = draw(
        st.sets(
            st.tuples(st.sampled_from(SERVERS), st.integers(min_value=0, max_value=3)), max_size=7
        )
    )
    found = []
    for server, index in sorted(keys):
        found.append(
            Replica(
                server=server,
                index=index,
                capabilities=frozenset(draw(st.sets(st.sampled_from(CAPABILITIES)))),
                memory_bytes=draw(sizes),
                overcommit_percentage=draw(st.sampled_from((0, 10, 50))),
                used_memory_bytes=draw(sizes),
                gpus=draw(gpus(f"{server}{index}")),
                models=frozenset(draw(st.sets(st.sampled_from((MODEL, "other"))))),
                draining=draw(st.booleans()),
            )
        )
    return tuple(found)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    wanted = draw(st.integers(min_value=1, max_value=3))
    excluded = draw(
        st.lists(
            st.tuples(
                st.tuples(st.sampled_from(SERVERS), st.integers(min_value=0, max_value=3)),
                st.floats(min_value=0, max_value=200),
            ),
            max_size=3,
        )
    )
    return Request(
        model=MODEL,
        version=draw(st.integers(min_value=1, max_value=3)),
        requirements=frozenset(draw(st.sets(st.sampled_from(CAPABILITIES), max_size=2))),
        server=draw(st.one_of(st.none(), st.sampled_from((*SERVERS, "unknown")))),
        memory_bytes=draw(sizes),
        gpu_memory_bytes=draw(st.one_of(st.just(0), sizes)),
        gpus=draw(st.integers(min_value=1, max_value=3)),
        replicas=wanted,
        min_replicas=draw(st.integers(min_value=0, max_value=wanted)),
        excluded_until=tuple(excluded),
    )


policies = st.sampled_from(list(Policy))
nows = st.floats(min_value=0, max_value=200)


def by_key(snapshot: Snapshot) -> dict[tuple[str, int], Replica]:
    return {replica.key: replica for replica in snapshot.replicas}


@settings(max_examples=200)
@given(replicas(), requests(), policies, nows)
def test_devices_always_have_room_and_are_distinct(
    found: tuple[Replica, ...], request: Request, policy: Policy, now: float
) -> None:
    snapshot = Snapshot(found)
    result = schedule(snapshot, request, policy, now)
    if not isinstance(result, Placement):
        return
    replicas = by_key(snapshot)
    for assignment in result.assignments:
        replica = replicas[(assignment.server, assignment.index)]
        assert assignment.held == (request.model in replica.models)
        devices = {gpu.uuid: gpu for gpu in replica.gpus}
        assert len(set(assignment.device_uuids)) == len(assignment.device_uuids)
        for uuid in assignment.device_uuids:
            assert devices[uuid].room_bytes >= request.gpu_memory_bytes
        if request.gpu_memory_bytes == 0:
            assert assignment.device_uuids == ()
        elif assignment.held:
            assert len(assignment.device_uuids) in (0, request.gpus)
        else:
            assert len(assignment.device_uuids) == request.gpus


@settings(max_examples=200)
@given(replicas(), requests(), policies, nows, st.randoms(use_true_random=False))
def test_same_snapshot_same_answer_in_any_order(
    found: tuple[Replica, ...], request: Request, policy: Policy, now: float, rng: random.Random
) -> None:
    first = schedule(Snapshot(found), request, policy, now)
    assert schedule(Snapshot(found), request, policy, now) == first
    shuffled = list(found)
    rng.shuffle(shuffled)
    assert schedule(Snapshot(tuple(shuffled)), request, policy, now) == first


@settings(max_examples=200)
@given(replicas(), requests(), policies, nows)
def test_pinned_model_never_lands_off_its_server(
    found: tuple[Replica, ...], request: Request, policy: Policy, now: float
) -> None:
    result = schedule(Snapshot(found), request, policy, now)
    if request.server is None:
        return
    if isinstance(result, Placement):
        assert result.server == request.server
        assert {a.server for a in result.assignments} == {request.server}
        assert {server for server, _ in result.reasons} <= {request.server}
    else:
        assert [server for server, _ in result.reasons] == [request.server]


@settings(max_examples=200)
@given(replicas(), requests(), policies, nows)
def test_placement_is_distinct_replicas_of_one_server_that_fit(
    found: tuple[Replica, ...], request: Request, policy: Policy, now: float
) -> None:
    snapshot = Snapshot(found)
    result = schedule(snapshot, request, policy, now)
    if not isinstance(result, Placement):
        return
    replicas = by_key(snapshot)
    keys = [(a.server, a.index) for a in result.assignments]
    assert len(set(keys)) == len(keys)
    assert {server for server, _ in keys} == {result.server}
    # Seldon's rule: fewer than `replicas` only when min_replicas >= 1 allows it.
    least = request.min_replicas or request.replicas
    assert least <= len(keys) <= request.replicas
    for key in keys:
        replica = replicas[key]
        held = request.model in replica.models
        assert not replica.draining
        assert request.requirements <= replica.capabilities
        assert held or request.memory_bytes <= replica.available_memory_bytes
        assert all(now >= until for excluded, until in request.excluded_until if excluded == key)
        if request.gpu_memory_bytes > 0:
            assert len(replica.gpus) >= request.gpus


@settings(max_examples=200)
@given(replicas(), requests(), policies, nows)
def test_rejection_has_one_reason_per_server_considered(
    found: tuple[Replica, ...], request: Request, policy: Policy, now: float
) -> None:
    result = schedule(Snapshot(found), request, policy, now)
    if not isinstance(result, Rejection):
        return
    servers = [server for server, _ in result.reasons]
    considered = {r.server for r in found} if request.server is None else {request.server}
    assert servers == sorted(considered)
    assert all(reason for _, reason in result.reasons)


@settings(max_examples=200)
@given(replicas(), requests(), policies, nows)
def test_a_lone_fitting_replica_is_found(
    found: tuple[Replica, ...], request: Request, policy: Policy, now: float
) -> None:
    """Completeness: a roomy, capable, idle replica on a fresh server is always placed on."""
    lone = Replica(
        server="z",
        index=0,
        capabilities=frozenset(CAPABILITIES),
        memory_bytes=request.memory_bytes,
        gpus=tuple(
            Gpu(f"z-{i}", "NVIDIA H100", i, 8 * GiB, request.gpu_memory_bytes) for i in range(3)
        ),
    )
    single = replace(request, server=None, replicas=1, excluded_until=())
    result = schedule(Snapshot((*found, lone)), single, policy, now)
    assert isinstance(result, Placement)
