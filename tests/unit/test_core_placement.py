"""Table-driven tests of the placement rules (docs/scheduler.md, "What it does with a model";
README, "How it places a model")."""

from __future__ import annotations

import pytest

from placement import (
    ELIGIBILITY,
    UNKNOWN_SERVER,
    Assignment,
    Gpu,
    Placement,
    Policy,
    Rejection,
    Replica,
    Request,
    Snapshot,
    first_failure,
    schedule,
)

GiB = 2**30
NOW = 1000.0
# Seldon Core 2's default MLServer capabilities.
MLSERVER_CAPABILITIES = frozenset(
    {"mlserver", "alibi-detect", "lightgbm", "mlflow", "python", "sklearn", "spark-mlib", "xgboost"}
)
GPU_CAPABILITIES = MLSERVER_CAPABILITIES | {"model-on-gpu"}


def gpu(uuid: str, room_gib: int, *, index: int | None = None, reserved_gib: int = 0) -> Gpu:
    """A device whose room is `room_gib` (free = room + reserved); index from the uuid."""
    return Gpu(
        uuid=uuid,
        name="NVIDIA H100",
        index=int(uuid[-1]) if index is None else index,
        total_bytes=80 * GiB,
        free_bytes=(room_gib + reserved_gib) * GiB,
        reserved_bytes=reserved_gib * GiB,
    )


# Free memory set, yet not measured: the reading is not trusted, whatever it says.
UNMEASURED = Gpu("GPU-x", "", 0, 0, 80 * GiB, measured=False)
NOT_MEASURED_X = (
    "memory of GPU GPU-x not measured (the agent cannot read it: set "
    "NVIDIA_VISIBLE_DEVICES=all on the agent)"
)


def replica(
    server: str,
    index: int = 0,
    *,
    capabilities: frozenset[str] = MLSERVER_CAPABILITIES,
    memory_gib: int = 100,
    used_gib: int = 0,
    overcommit: int = 0,
    gpus: tuple[Gpu, ...] = (),
    models: frozenset[str] = frozenset(),
    draining: bool = False,
) -> Replica:
    return Replica(
        server=server,
        index=index,
        capabilities=capabilities,
        memory_bytes=memory_gib * GiB,
        overcommit_percentage=overcommit,
        used_memory_bytes=used_gib * GiB,
        gpus=gpus,
        models=models,
        draining=draining,
    )


def request(
    *,
    requirements: frozenset[str] = frozenset(),
    server: str | None = None,
    memory_gib: int = 1,
    gpu_gib: int = 0,
    gpus: int = 1,
    replicas: int = 1,
    min_replicas: int = 0,
    excluded_until: tuple[tuple[tuple[str, int], float], ...] = (),
) -> Request:
    return Request(
        model="m",
        version=1,
        requirements=requirements,
        server=server,
        memory_bytes=memory_gib * GiB,
        gpu_memory_bytes=gpu_gib * GiB,
        gpus=gpus,
        replicas=replicas,
        min_replicas=min_replicas,
        excluded_until=excluded_until,
    )


def at(server: str, index: int, *uuids: str, held: bool = False) -> Assignment:
    return Assignment(server=server, index=index, device_uuids=uuids, held=held)


def placed(
    server: str, *assignments: Assignment, reasons: tuple[tuple[str, str], ...] = ()
) -> Placement:
    return Placement(server=server, assignments=assignments, reasons=reasons)


def rejected(*reasons: tuple[str, str]) -> Rejection:
    return Rejection(reasons=reasons)


HOLDS = frozenset({"m"})
ONE_24 = (gpu("u0", 24),)

CASES = [
    # Capabilities: every requirement, exact string match.
    pytest.param(
        [replica("a")],
        request(requirements=frozenset({"sklearn", "python"})),
        placed("a", at("a", 0)),
        id="capabilities-all-present",
    ),
    pytest.param(
        [replica("a")],
        request(requirements=frozenset({"sklearn", "model-on-gpu"})),
        rejected(("a", "missing capability model-on-gpu")),
        id="capabilities-missing-one",
    ),
    pytest.param(
        [replica("a", capabilities=frozenset())],
        request(requirements=frozenset({"xgboost", "sklearn"})),
        rejected(("a", "missing capabilities sklearn, xgboost")),
        id="capabilities-missing-two-sorted",
    ),
    pytest.param(
        [replica("a", capabilities=frozenset({"SKLearn", "sklearn "}))],
        request(requirements=frozenset({"sklearn"})),
        rejected(("a", "missing capability sklearn")),
        id="capabilities-exact-string-match",
    ),
    pytest.param(
        [replica("a"), replica("b", capabilities=GPU_CAPABILITIES)],
        request(requirements=frozenset({"model-on-gpu"})),
        placed("b", at("b", 0), reasons=(("a", "missing capability model-on-gpu"),)),
        id="capabilities-pick-the-capable-server",
    ),
    # Pinning: only that server; its reasons name that server only.
    pytest.param(
        [replica("a", memory_gib=500), replica("b", memory_gib=10)],
        request(server="b"),
        placed("b", at("b", 0)),
        id="pinned-to-fitting-server-though-another-ranks-better",
    ),
    pytest.param(
        [replica("a", memory_gib=500), replica("b", memory_gib=10), replica("c")],
        request(server="b", memory_gib=20),
        rejected(("b", "needs 20 GiB host memory, 10 GiB available")),
        id="pinned-without-room-names-only-that-server",
    ),
    pytest.param(
        [replica("a"), replica("b")],
        request(server="b", requirements=frozenset({"model-on-gpu"})),
        rejected(("b", "missing capability model-on-gpu")),
        id="pinned-missing-capability-names-only-that-server",
    ),
    pytest.param(
        [replica("a")],
        request(server="nope"),
        rejected(("nope", UNKNOWN_SERVER)),
        id="pinned-to-unknown-server",
    ),
    pytest.param(
        [],
        request(server="nope"),
        rejected(("nope", UNKNOWN_SERVER)),
        id="pinned-empty-snapshot",
    ),
    pytest.param([], request(), rejected(), id="no-servers-connected"),
    # Host memory with overcommit: MEMORY_REQUEST x (1 + overcommit%) minus what is placed.
    pytest.param(
        [replica("a", memory_gib=10)],
        request(memory_gib=12),
        rejected(("a", "needs 12 GiB host memory, 10 GiB available")),
        id="host-memory-too-small",
    ),
    pytest.param(
        [replica("a", memory_gib=10, overcommit=20)],
        request(memory_gib=12),
        placed("a", at("a", 0)),
        id="host-memory-fits-with-overcommit",
    ),
    pytest.param(
        [replica("a", memory_gib=10, overcommit=20, used_gib=4)],
        request(memory_gib=8),
        placed("a", at("a", 0)),
        id="host-memory-used-exactly-filled",
    ),
    pytest.param(
        [replica("a", memory_gib=10, overcommit=20, used_gib=4)],
        request(memory_gib=9),
        rejected(("a", "needs 9 GiB host memory, 8 GiB available")),
        id="host-memory-used-counts",
    ),
    # GPU memory per device, never summed across devices.
    pytest.param(
        [replica("a", gpus=(gpu("u0", 12), gpu("u1", 12)))],
        request(gpu_gib=20),
        rejected(("a", "needs 20 GiB on 1 GPU, largest room 12 GiB")),
        id="gpu-per-device-not-summed",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 12), gpu("u1", 24)))],
        request(gpu_gib=20),
        placed("a", at("a", 0, "u1")),
        id="gpu-fits-on-one-device",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 12), gpu("u1", 20)))],
        request(gpu_gib=20, gpus=0),
        placed("a", at("a", 0, "u1")),
        id="gpu-count-zero-means-one",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 24), gpu("u1", 12), gpu("u2", 24)))],
        request(gpu_gib=20, gpus=2),
        placed("a", at("a", 0, "u0", "u2")),
        id="gpus-2-spanning",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 24), gpu("u1", 12)))],
        request(gpu_gib=20, gpus=2),
        rejected(("a", "needs 20 GiB on each of 2 GPUs, largest rooms 24 GiB, 12 GiB")),
        id="gpus-2-only-one-device-has-room",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 80), gpu("u1", 80)))],
        request(gpu_gib=20, gpus=3),
        rejected(("a", "needs 3 GPUs, has 2")),
        id="gpus-3-on-a-2-gpu-replica",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 16, reserved_gib=8),))],
        request(gpu_gib=20),
        rejected(("a", "needs 20 GiB on 1 GPU, largest room 16 GiB")),
        id="ledger-reserved-reduces-room",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 20, reserved_gib=4),))],
        request(gpu_gib=20),
        placed("a", at("a", 0, "u0")),
        id="ledger-room-exactly-enough",
    ),
    pytest.param(
        [replica("a"), replica("b", gpus=ONE_24)],
        request(gpu_gib=20),
        placed("b", at("b", 0, "u0"), reasons=(("a", "no GPUs"),)),
        id="no-gpu-replica-refuses-gpu-model",
    ),
    pytest.param(
        [replica("a")],
        request(gpu_gib=0),
        placed("a", at("a", 0)),
        id="no-gpu-replica-takes-cpu-model",
    ),
    # A device the agent cannot read (kubelet-assigned, invisible to NVML in its container).
    pytest.param(
        [replica("a", gpus=(UNMEASURED,)), replica("b", gpus=ONE_24)],
        request(gpu_gib=20),
        placed(
            "b",
            at("b", 0, "u0"),
            reasons=(("a", f"needs 20 GiB on 1 GPU, {NOT_MEASURED_X}"),),
        ),
        id="unmeasured-device-refuses-gpu-model",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 12), UNMEASURED))],
        request(gpu_gib=20),
        rejected(("a", f"needs 20 GiB on 1 GPU, largest room 12 GiB, {NOT_MEASURED_X}")),
        id="unmeasured-device-named-beside-measured-ones",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 24), UNMEASURED))],
        request(gpu_gib=20, gpus=2),
        rejected(
            ("a", f"needs 20 GiB on each of 2 GPUs, largest rooms 24 GiB, 0 B, {NOT_MEASURED_X}")
        ),
        id="unmeasured-device-never-spanned",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 24), UNMEASURED))],
        request(gpu_gib=20),
        placed("a", at("a", 0, "u0")),
        id="measured-device-beside-an-unmeasured-one-fits",
    ),
    pytest.param(
        [replica("a", gpus=(UNMEASURED,))],
        request(gpu_gib=0),
        placed("a", at("a", 0)),
        id="unmeasured-device-cpu-model-unaffected",
    ),
    # Replicas: N distinct replicas of ONE server, never split.
    pytest.param(
        [replica("a", 0), replica("b", 0)],
        request(replicas=2, min_replicas=2),
        rejected(
            ("a", "only 1 of 2 requested replicas fit; the server has 1 connected"),
            ("b", "only 1 of 2 requested replicas fit; the server has 1 connected"),
        ),
        id="replicas-2-not-split-across-servers",
    ),
    pytest.param(
        [replica("a", 0), replica("a", 1, draining=True), replica("b", 0), replica("b", 1)],
        request(replicas=2),
        placed(
            "b",
            at("b", 0),
            at("b", 1),
            reasons=(("a", "only 1 of 2 requested replicas fit: replica 1: draining"),),
        ),
        id="replicas-2-on-the-server-that-has-2",
    ),
    pytest.param(
        [replica("a", 0), replica("a", 1, memory_gib=1), replica("a", 2)],
        request(memory_gib=2, replicas=3, min_replicas=2),
        placed(
            "a",
            at("a", 0),
            at("a", 2),
            reasons=(
                (
                    "a",
                    "only 2 of 3 requested replicas fit: "
                    "replica 1: needs 2 GiB host memory, 1 GiB available",
                ),
            ),
        ),
        id="min-replicas-partial",
    ),
    pytest.param(
        [replica("a", 0, draining=True), replica("a", 1), replica("a", 2, draining=True)],
        request(replicas=3, min_replicas=2),
        rejected(
            ("a", "only 1 of 3 requested replicas fit (minReplicas 2): replicas 0, 2: draining")
        ),
        id="min-replicas-not-reached",
    ),
    pytest.param(
        [replica("a", 0), replica("b", 0), replica("b", 1)],
        request(replicas=3, min_replicas=1),
        placed(
            "b",
            at("b", 0),
            at("b", 1),
            reasons=(
                ("a", "only 1 of 3 requested replicas fit; the server has 1 connected"),
                ("b", "only 2 of 3 requested replicas fit; the server has 2 connected"),
            ),
        ),
        id="min-replicas-partial-on-server-with-most",
    ),
    # As in Seldon Core 2: minReplicas 0 (unset) allows no partial placement.
    pytest.param(
        [replica("a", 0), replica("a", 1, draining=True)],
        request(replicas=2, min_replicas=0),
        rejected(("a", "only 1 of 2 requested replicas fit: replica 1: draining")),
        id="min-replicas-0-means-all-replicas",
    ),
    pytest.param(
        [replica("a", 0), replica("b", 0), replica("b", 1)],
        request(replicas=3),
        rejected(
            ("a", "only 1 of 3 requested replicas fit; the server has 1 connected"),
            ("b", "only 2 of 3 requested replicas fit; the server has 2 connected"),
        ),
        id="min-replicas-unset-says-how-many-fit-of-how-many",
    ),
    pytest.param(
        [replica("a", 0, draining=True)],
        request(replicas=2, min_replicas=1),
        rejected(("a", "draining")),
        id="min-replicas-1-never-empty",
    ),
    pytest.param(
        [replica("a", 0), replica("a", 1), replica("a", 2)],
        request(replicas=2, min_replicas=1),
        placed("a", at("a", 0), at("a", 1)),
        id="min-replicas-does-not-cap-a-full-placement",
    ),
    # Exclusion after a failed load, until the cool-down ends.
    pytest.param(
        [replica("a")],
        request(excluded_until=((("a", 0), NOW + 12),)),
        rejected(("a", "load of version 1 failed here; excluded for 12s")),
        id="excluded-before-until",
    ),
    pytest.param(
        [replica("a")],
        request(excluded_until=((("a", 0), NOW + 0.2),)),
        rejected(("a", "load of version 1 failed here; excluded for 1s")),
        id="excluded-rounds-up",
    ),
    pytest.param(
        [replica("a")],
        request(excluded_until=((("a", 0), NOW),)),
        placed("a", at("a", 0)),
        id="excluded-until-now-is-over",
    ),
    pytest.param(
        [replica("a")],
        request(excluded_until=((("a", 0), NOW - 5),)),
        placed("a", at("a", 0)),
        id="excluded-after-until",
    ),
    pytest.param(
        [replica("a")],
        request(excluded_until=((("a", 0), NOW - 5), (("a", 0), NOW + 3))),
        rejected(("a", "load of version 1 failed here; excluded for 3s")),
        id="excluded-latest-until-counts",
    ),
    pytest.param(
        [replica("a", 0, memory_gib=500), replica("a", 1), replica("b", 0, memory_gib=500)],
        request(excluded_until=((("a", 0), NOW + 30), (("b", 0), NOW + 30))),
        placed(
            "a",
            at("a", 1),
            reasons=(("b", "load of version 1 failed here; excluded for 30s"),),
        ),
        id="excluded-other-replica-of-same-server",
    ),
    # Draining.
    pytest.param(
        [replica("a", draining=True)],
        request(),
        rejected(("a", "draining")),
        id="draining-takes-nothing",
    ),
    pytest.param(
        [replica("a", 0, draining=True, memory_gib=500), replica("a", 1)],
        request(),
        placed("a", at("a", 1)),
        id="draining-other-replica-takes-it",
    ),
    # Ranking tie-breaks: server name, then replica index.
    pytest.param(
        [replica("b"), replica("a")],
        request(),
        placed("a", at("a", 0), reasons=(("b", "fits, but a ranks first"),)),
        id="tie-break-server-name",
    ),
    pytest.param(
        [replica("a", 2), replica("a", 1), replica("a", 3)],
        request(replicas=2),
        placed("a", at("a", 1), at("a", 2)),
        id="tie-break-replica-index",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u1", 24), gpu("u0", 24, index=1)))],
        request(gpu_gib=20),
        placed("a", at("a", 0, "u0")),
        id="tie-break-device-index-then-uuid",
    ),
    # Host memory ranks CPU models under both policies: most available first.
    pytest.param(
        [replica("a", memory_gib=30), replica("b", memory_gib=50)],
        request(),
        placed("b", at("b", 0), reasons=(("a", "fits, but b ranks first"),)),
        id="cpu-model-most-free-host-memory",
    ),
    # Already holding the model: first. Its memory is not waived: the caller's snapshot
    # leaves the model out, so a holder is judged on what its old copy would leave.
    pytest.param(
        [replica("a", memory_gib=500), replica("b", memory_gib=10, models=HOLDS)],
        request(),
        placed("b", at("b", 0, held=True), reasons=(("a", "fits, but b ranks first"),)),
        id="holder-first",
    ),
    pytest.param(
        [replica("a", memory_gib=10, used_gib=10, models=HOLDS)],
        request(memory_gib=4),
        rejected(("a", "needs 4 GiB host memory, 0 B available")),
        id="holder-still-needs-host-memory",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 0),), models=HOLDS), replica("b", gpus=(gpu("u0", 40),))],
        request(gpu_gib=20),
        placed("b", at("b", 0, "u0"), reasons=(("a", "needs 20 GiB on 1 GPU, largest room 0 B"),)),
        id="holder-still-needs-gpu-memory",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 40), gpu("u1", 24)), models=HOLDS)],
        request(gpu_gib=20),
        placed("a", at("a", 0, "u1", held=True)),
        id="holder-with-room-gets-devices",
    ),
    pytest.param(
        [replica("a", models=HOLDS)],
        request(gpu_gib=20),
        rejected(("a", "no GPUs")),
        id="holder-still-needs-gpus",
    ),
    pytest.param(
        [replica("a", models=HOLDS)],
        request(requirements=frozenset({"model-on-gpu"})),
        rejected(("a", "missing capability model-on-gpu")),
        id="holder-still-needs-capabilities",
    ),
    pytest.param(
        [replica("a", models=HOLDS, draining=True), replica("b")],
        request(),
        placed("b", at("b", 0), reasons=(("a", "draining"),)),
        id="holder-draining-is-skipped",
    ),
    pytest.param(
        [
            replica("a", 0, models=HOLDS),
            replica("a", 1, memory_gib=500),
            replica("b", 0, models=HOLDS),
            replica("b", 1, models=HOLDS),
        ],
        request(replicas=2),
        placed(
            "b",
            at("b", 0, held=True),
            at("b", 1, held=True),
            reasons=(("a", "fits, but b ranks first"),),
        ),
        id="holder-server-with-most-holders-wins",
    ),
]


@pytest.mark.parametrize(("replicas", "req", "expected"), CASES)
def test_placement_rule(
    replicas: list[Replica], req: Request, expected: Placement | Rejection
) -> None:
    assert schedule(Snapshot(tuple(replicas)), req, Policy.BINPACK, NOW) == expected


GPU_POLICY_CASES = [
    pytest.param(
        [replica("a", gpus=(gpu("u0", 24),)), replica("b", gpus=(gpu("u0", 40),))],
        Policy.BINPACK,
        placed("a", at("a", 0, "u0"), reasons=(("b", "fits, but a ranks first"),)),
        id="binpack-replica-best-fit",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 24),)), replica("b", gpus=(gpu("u0", 40),))],
        Policy.SPREAD,
        placed("b", at("b", 0, "u0"), reasons=(("a", "fits, but b ranks first"),)),
        id="spread-replica-most-room",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 30), gpu("u1", 21), gpu("u2", 40), gpu("u3", 12)))],
        Policy.BINPACK,
        placed("a", at("a", 0, "u1")),
        id="binpack-device-least-room-that-fits",
    ),
    pytest.param(
        [replica("a", gpus=(gpu("u0", 30), gpu("u1", 21), gpu("u2", 40), gpu("u3", 12)))],
        Policy.SPREAD,
        placed("a", at("a", 0, "u2")),
        id="spread-device-most-room",
    ),
    pytest.param(
        [
            replica("a", memory_gib=30, gpus=(gpu("u0", 24),)),
            replica("b", memory_gib=50, gpus=(gpu("u0", 24),)),
        ],
        Policy.BINPACK,
        placed("b", at("b", 0, "u0"), reasons=(("a", "fits, but b ranks first"),)),
        id="gpu-tie-then-most-host-memory",
    ),
    pytest.param(
        [replica("a", memory_gib=30), replica("b", memory_gib=50)],
        Policy.BINPACK,
        rejected(("a", "no GPUs"), ("b", "no GPUs")),
        id="gpu-model-nowhere",
    ),
]


@pytest.mark.parametrize(("replicas", "policy", "expected"), GPU_POLICY_CASES)
def test_gpu_policy(
    replicas: list[Replica], policy: Policy, expected: Placement | Rejection
) -> None:
    assert schedule(Snapshot(tuple(replicas)), request(gpu_gib=20), policy, NOW) == expected


@pytest.mark.parametrize("policy", list(Policy))
def test_cpu_model_ranks_by_host_memory_under_both_policies(policy: Policy) -> None:
    snapshot = Snapshot((replica("a", memory_gib=30), replica("b", memory_gib=50)))
    result = schedule(snapshot, request(), policy, NOW)
    assert isinstance(result, Placement)
    assert result.server == "b"


# The seed document's scenario: `mlserver` (default capabilities) and `mlserver-llm-local-gpu`
# (the same plus `model-on-gpu` through extraCapabilities), model llama3 requiring it.
def seed_snapshot(gpu_room_gib: int) -> Snapshot:
    return Snapshot(
        (
            replica("mlserver", 0, memory_gib=360),
            replica("mlserver", 1, memory_gib=360),
            replica(
                "mlserver-llm-local-gpu",
                0,
                capabilities=GPU_CAPABILITIES,
                memory_gib=360,
                gpus=(gpu("GPU-a100-0", gpu_room_gib), gpu("GPU-a100-1", gpu_room_gib)),
            ),
        )
    )


def llama3(server: str | None = None) -> Request:
    return Request(
        model="llama3",
        version=1,
        requirements=frozenset({"model-on-gpu"}),
        server=server,
        memory_bytes=16 * GiB,
        gpu_memory_bytes=20 * GiB,
    )


@pytest.mark.parametrize("policy", list(Policy))
def test_seed_llama3_lands_only_on_the_gpu_server(policy: Policy) -> None:
    result = schedule(seed_snapshot(gpu_room_gib=80), llama3(), policy, NOW)
    assert result == Placement(
        server="mlserver-llm-local-gpu",
        assignments=(Assignment("mlserver-llm-local-gpu", 0, ("GPU-a100-0",)),),
        reasons=(("mlserver", "missing capability model-on-gpu"),),
    )


def test_seed_llama3_without_gpu_room_is_rejected_with_every_server() -> None:
    result = schedule(seed_snapshot(gpu_room_gib=12), llama3(), Policy.BINPACK, NOW)
    assert result == Rejection(
        (
            ("mlserver", "missing capability model-on-gpu"),
            ("mlserver-llm-local-gpu", "needs 20 GiB on 1 GPU, largest room 12 GiB"),
        )
    )
    assert result.message == (
        "mlserver: missing capability model-on-gpu; "
        "mlserver-llm-local-gpu: needs 20 GiB on 1 GPU, largest room 12 GiB"
    )


def test_seed_llama3_pinned_without_room_names_only_its_server() -> None:
    result = schedule(
        seed_snapshot(gpu_room_gib=12), llama3(server="mlserver-llm-local-gpu"), Policy.BINPACK, NOW
    )
    assert result == Rejection(
        (("mlserver-llm-local-gpu", "needs 20 GiB on 1 GPU, largest room 12 GiB"),)
    )


def test_seed_cpu_model_pinned_to_mlserver_stays_there() -> None:
    model = Request(model="iris", version=1, requirements=frozenset({"sklearn"}), server="mlserver")
    result = schedule(seed_snapshot(gpu_room_gib=80), model, Policy.SPREAD, NOW)
    assert result == Placement("mlserver", (Assignment("mlserver", 0),))


@pytest.mark.parametrize(
    ("request_", "found_on", "reason"),
    [
        (Request("m", 1), replica("any"), None),
        (Request("m", 1, server="gpu"), replica("gpu"), None),
        (Request("m", 1, server="gpu"), replica("cpu"), "the model is pinned to server gpu"),
        (
            Request("m", 1, requirements=frozenset({"model-on-gpu"})),
            replica("cpu"),
            "missing capability model-on-gpu",
        ),
        # Where a model may run, not whether it fits now: a full or draining replica that
        # already holds a copy is still eligible for it.
        (Request("m", 1, memory_bytes=500 * GiB), replica("cpu", used_gib=100), None),
        (Request("m", 1), replica("cpu", draining=True), None),
    ],
)
def test_eligibility_is_the_pin_and_the_capabilities(
    request_: Request, found_on: Replica, reason: str | None
) -> None:
    assert first_failure(request_, found_on, NOW, ELIGIBILITY) == reason


CAUSE_CASES = [
    pytest.param([], request(), "no_server", id="no server connected"),
    pytest.param([replica("a")], request(server="b"), "no_server", id="pinned server absent"),
    pytest.param(
        [replica("a")], request(requirements=frozenset({"triton"})), "capabilities", id="caps"
    ),
    pytest.param([replica("a", draining=True)], request(), "draining", id="draining"),
    pytest.param(
        [replica("a")],
        request(excluded_until=((("a", 0), NOW + 60),)),
        "excluded",
        id="excluded after a failed load",
    ),
    pytest.param([replica("a", memory_gib=1)], request(memory_gib=2), "host_memory", id="memory"),
    pytest.param([replica("a", gpus=ONE_24)], request(gpu_gib=40), "gpu_memory", id="GPU memory"),
    pytest.param(
        [replica("a"), replica("b", gpus=ONE_24, capabilities=GPU_CAPABILITIES)],
        request(requirements=frozenset({"model-on-gpu"}), gpu_gib=40),
        "gpu_memory",
        id="the nearest miss over servers",
    ),
    pytest.param(
        [replica("a", 0), replica("a", 1, draining=True), replica("b", memory_gib=1)],
        request(replicas=2),
        "too_few_replicas",
        id="some replicas fit, too few",
    ),
]


@pytest.mark.parametrize(("replicas", "request_", "cause"), CAUSE_CASES)
def test_a_refusal_names_its_nearest_miss(
    replicas: list[Replica], request_: Request, cause: str
) -> None:
    result = schedule(Snapshot(tuple(replicas)), request_, Policy.BINPACK, NOW)
    assert isinstance(result, Rejection)
    assert result.cause == cause
