"""The indexed core (`place` over a `ClusterIndex`) against the reference `schedule()`: the
same answer on random clusters, and an index kept up to date replica by replica."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from placement import ClusterIndex, Gpu, Placement, Policy, Replica, Request, Snapshot, place
from placement import schedule as reference
from tests.unit.test_core_properties import MODEL, nows, policies, replicas, requests

GiB = 2**30


def same_answer(index: ClusterIndex, request: Request, policy: Policy, now: float) -> None:
    """`place` answers as `schedule` does over the index's replicas; a placement's reasons
    are the reference's words, left for whoever asks."""
    expected = reference(index.snapshot(), request, policy, now)
    found = place(index, request, policy, now)
    if isinstance(expected, Placement) and isinstance(found, Placement) and not found.reasons:
        expected = replace(expected, reasons=())
    assert found == expected


@settings(max_examples=300)
@given(replicas(), requests(), policies, nows)
def test_place_answers_as_the_reference(
    found: tuple[Replica, ...], request: Request, policy: Policy, now: float
) -> None:
    same_answer(ClusterIndex(found), request, policy, now)


# Many replicas, few capability sets, rooms in coarse steps: ties everywhere, and the
# ranking's tie-breaks (free memory, server, index, device index, uuid) decide.
@st.composite
def crowded(draw: st.DrawFn) -> tuple[Replica, ...]:
    count = draw(st.integers(min_value=1, max_value=40))
    found = []
    for n in range(count):
        server, index = f"s{n // 4:02d}", n % 4
        gpus = tuple(
            Gpu(
                uuid=f"GPU-{server}-{index}-{d}",
                name="NVIDIA H100",
                index=d,
                total_bytes=8 * GiB,
                free_bytes=draw(st.integers(min_value=0, max_value=4)) * 2 * GiB,
                reserved_bytes=draw(st.sampled_from((0, 0, GiB))),
                measured=draw(st.sampled_from((True, True, True, False))),
            )
            for d in draw(st.sampled_from(((), (0,), (0, 1), (1, 0, 2))))
        )
        found.append(
            Replica(
                server=server,
                index=index,
                capabilities=frozenset(draw(st.sampled_from(({"sklearn"}, {"sklearn", "gpu"})))),
                memory_bytes=draw(st.integers(min_value=0, max_value=3)) * 4 * GiB,
                used_memory_bytes=draw(st.integers(min_value=0, max_value=2)) * 2 * GiB,
                gpus=gpus,
                models=frozenset(draw(st.sampled_from(((), (MODEL,), ("other",))))),
                draining=draw(st.booleans()) and draw(st.booleans()),
            )
        )
    return tuple(found)


@st.composite
def crowd_requests(draw: st.DrawFn) -> Request:
    wanted = draw(st.integers(min_value=1, max_value=4))
    return Request(
        model=MODEL,
        version=1,
        requirements=frozenset(draw(st.sampled_from(((), ("sklearn",), ("gpu",))))),
        memory_bytes=draw(st.integers(min_value=0, max_value=3)) * 2 * GiB,
        gpu_memory_bytes=draw(st.integers(min_value=0, max_value=4)) * GiB,
        gpus=draw(st.sampled_from((1, 1, 1, 2))),
        replicas=wanted,
        min_replicas=draw(st.integers(min_value=0, max_value=wanted)),
        excluded_until=tuple(
            ((f"s{n // 4:02d}", n % 4), 100.0)
            for n in draw(st.sets(st.integers(min_value=0, max_value=39), max_size=4))
        ),
    )


@settings(max_examples=250)
@given(crowded(), crowd_requests(), policies, st.sampled_from((0.0, 200.0)))
def test_place_answers_as_the_reference_in_a_crowd(
    found: tuple[Replica, ...], request: Request, policy: Policy, now: float
) -> None:
    same_answer(ClusterIndex(found), request, policy, now)


@settings(max_examples=100)
@given(crowded(), crowded(), crowd_requests(), policies, st.randoms(use_true_random=False))
def test_an_index_updated_replica_by_replica_is_the_index_of_the_result(
    before: tuple[Replica, ...],
    after: tuple[Replica, ...],
    request: Request,
    policy: Policy,
    rng: random.Random,
) -> None:
    """Put the new values, remove the replicas gone, in any order: the same index (and
    answers) as one built from the result."""
    index = ClusterIndex(before)
    gone = [r.key for r in before if r.key not in {a.key for a in after}]
    changes: list[Replica | tuple[str, int]] = [*after, *gone]
    rng.shuffle(changes)
    for change in changes:
        if isinstance(change, Replica):
            index.put(change)
        else:
            index.remove(change)
    rebuilt = ClusterIndex(after)
    assert (
        index.snapshot()
        == rebuilt.snapshot()
        == Snapshot(tuple(sorted(after, key=lambda r: r.key)))
    )
    for policy_ in Policy:
        assert list(index.ranked(request, policy_)) == list(rebuilt.ranked(request, policy_))
    same_answer(index, request, policy, 0.0)


def test_a_placement_comes_without_reasons_and_a_refusal_with_every_servers() -> None:
    small = Replica("a", 0, frozenset({"sklearn"}), memory_bytes=GiB)
    big = Replica("b", 0, frozenset({"sklearn"}), memory_bytes=8 * GiB)
    index = ClusterIndex([small, big])
    placed = place(
        index, Request("m", 1, frozenset({"sklearn"}), memory_bytes=GiB), Policy.BINPACK, 0
    )
    assert placed == Placement("b", (placed.assignments[0],), ())
    refused = place(index, Request("m", 1, memory_bytes=16 * GiB), Policy.BINPACK, 0)
    assert refused == reference(
        index.snapshot(), Request("m", 1, memory_bytes=16 * GiB), Policy.BINPACK, 0
    )
    assert [server for server, _ in refused.reasons] == ["a", "b"]


def test_a_server_that_holds_the_model_ranks_first_only_where_that_copy_fits() -> None:
    def replica(server: str, index: int, free_gib: int, *models: str) -> Replica:
        return Replica(
            server, index, frozenset({"sklearn"}), free_gib * GiB, models=frozenset(models)
        )

    request = Request(MODEL, 2, frozenset({"sklearn"}), memory_bytes=2 * GiB)
    # a-0 holds the model but has no room for the new version: a ranks by its free memory.
    cluster = [replica("a", 0, 1, MODEL), replica("a", 1, 4), replica("b", 0, 8)]
    index = ClusterIndex(cluster)
    for policy in Policy:
        same_answer(index, request, policy, 0)
        found = place(index, request, policy, 0)
        assert isinstance(found, Placement) and found.server == "b"
    # With room, the copy it holds makes a rank first, whatever b's memory.
    index.put(replica("a", 0, 3, MODEL))
    found = place(index, request, Policy.BINPACK, 0)
    assert isinstance(found, Placement) and found.server == "a" and found.assignments[0].held
    same_answer(index, request, Policy.BINPACK, 0)
