"""The device-fit rule (`placement.fit_devices`), and the agent's pre-load check using it.

Table-driven cases for the rule itself; properties (hypothesis) for its invariants; and the
agreement the rule exists for: the device choice the scheduler's core makes is the one the
agent makes before a load, on the same readings.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.models import Refused, fit_load
from contract.protocol import EventKind, GpuDevice, Load
from placement import (
    DeviceShortfall,
    Gpu,
    NamedShortfall,
    Placement,
    Policy,
    Replica,
    Request,
    Snapshot,
    fit_devices,
    schedule,
)
from placement.fit import device_key

GiB = 2**30
BINPACK, SPREAD = Policy.BINPACK, Policy.SPREAD


def gpu(uuid: str, free_gib: float, index: int = 0, reserved_gib: float = 0) -> Gpu:
    return Gpu(uuid, "NVIDIA H100", index, 80 * GiB, int(free_gib * GiB), int(reserved_gib * GiB))


A40, B24, C30 = gpu("a", 40, 0), gpu("b", 24, 1), gpu("c", 30, 2)
X = Gpu("x", "", 0, 0, 80 * GiB, measured=False)  # free memory set, not measured

CASES = [
    # (devices, need GiB, count, policy, named, expected)
    pytest.param([A40], 20, 0, BINPACK, (), (), id="cpu-model-gets-none"),
    pytest.param([], 20, 1, BINPACK, (), DeviceShortfall(0, ()), id="no-devices"),
    pytest.param([A40], 20, 1, BINPACK, (), (A40,), id="one-fits"),
    pytest.param([A40, B24], 20, 1, BINPACK, (), (B24,), id="binpack-least-room"),
    pytest.param([A40, B24], 20, 1, SPREAD, (), (A40,), id="spread-most-room"),
    pytest.param([A40, B24], 30, 1, BINPACK, (), (A40,), id="binpack-only-those-with-room"),
    pytest.param([A40, B24], 40, 1, BINPACK, (), (A40,), id="room-equal-to-need-fits"),
    pytest.param(
        [gpu("u1", 24, 0), gpu("u0", 24, 1)],
        20,
        1,
        SPREAD,
        (),
        (gpu("u1", 24, 0),),
        id="tie-device-index-first",
    ),
    pytest.param(
        [gpu("z", 24, 3), gpu("y", 24, 3)],
        20,
        1,
        BINPACK,
        (),
        (gpu("y", 24, 3),),
        id="tie-then-uuid",
    ),
    pytest.param(
        [gpu("a", 40, 0, reserved_gib=30), B24],
        15,
        1,
        SPREAD,
        (),
        (B24,),
        id="room-is-free-minus-reserved",
    ),
    pytest.param(
        [gpu("a", 8), gpu("b", 9, 1)],
        10,
        1,
        SPREAD,
        (),
        DeviceShortfall(0, (9 * GiB,)),
        id="none-fits-largest-room",
    ),
    pytest.param([C30, A40, B24], 20, 2, BINPACK, (), (B24, C30), id="two-binpack-index-order"),
    pytest.param([C30, A40, B24], 20, 2, SPREAD, (), (A40, C30), id="two-spread-index-order"),
    pytest.param([B24, A40], 20, 2, SPREAD, (), (A40, B24), id="exactly-two-fit"),
    pytest.param(
        [A40, gpu("b", 9, 1), gpu("c", 5, 2)],
        10,
        2,
        BINPACK,
        (),
        DeviceShortfall(1, (40 * GiB, 9 * GiB)),
        id="two-wanted-one-fits",
    ),
    pytest.param(
        [A40, B24], 10, 3, SPREAD, (), DeviceShortfall(2, (40 * GiB, 24 * GiB)), id="too-few"
    ),
    # No policy: a yes/no check; the first devices with room in the order given.
    pytest.param([gpu("a", 8), C30, A40], 10, 1, None, (), (C30,), id="no-policy-first-fit"),
    pytest.param([gpu("a", 8), C30, A40], 10, 2, None, (), (C30, A40), id="no-policy-first-two"),
    # Named devices: exactly those, in the order named; count and policy unused.
    pytest.param([A40, B24, C30], 20, 1, BINPACK, ("c", "a"), (C30, A40), id="named"),
    pytest.param([A40, B24], 20, 5, SPREAD, ("b", "b"), (B24,), id="named-duplicates-dropped"),
    pytest.param([A40], 0, 1, SPREAD, ("a",), (A40,), id="named-no-memory-asked"),
    pytest.param(
        [A40],
        20,
        1,
        SPREAD,
        ("x", "a", "y"),
        NamedShortfall(1, (40 * GiB,), missing=("x", "y"), short=()),
        id="named-missing",
    ),
    pytest.param(
        [A40, B24, C30],
        28,
        1,
        SPREAD,
        ("b", "c", "a"),
        NamedShortfall(2, (40 * GiB, 30 * GiB, 24 * GiB), missing=(), short=(B24,)),
        id="named-short",
    ),
    pytest.param(
        [],
        1,
        1,
        SPREAD,
        ("a",),
        NamedShortfall(0, (), missing=("a",), short=()),
        id="named-on-no-devices",
    ),
    # A device not measured never fits, whatever its free memory says; its room is 0.
    pytest.param([X], 20, 1, SPREAD, (), DeviceShortfall(0, (0,)), id="unmeasured-one"),
    pytest.param([X], 0, 1, None, (), DeviceShortfall(0, (0,)), id="unmeasured-no-need"),
    pytest.param([X, B24], 20, 1, SPREAD, (), (B24,), id="unmeasured-beside-measured"),
    pytest.param(
        [X, B24], 20, 2, BINPACK, (), DeviceShortfall(1, (24 * GiB, 0)), id="unmeasured-two"
    ),
    pytest.param(
        [X, A40],
        20,
        1,
        SPREAD,
        ("x", "a"),
        NamedShortfall(1, (40 * GiB, 0), missing=(), short=(X,)),
        id="named-unmeasured",
    ),
]


@pytest.mark.parametrize(("devices", "need_gib", "count", "policy", "named", "expected"), CASES)
def test_fit_rule(
    *,
    devices: list[Gpu],
    need_gib: int,
    count: int,
    policy: Policy | None,
    named: tuple[str, ...],
    expected: tuple[Gpu, ...] | DeviceShortfall,
) -> None:
    assert fit_devices(devices, need_gib * GiB, count, policy, named) == expected


# ---------------------------------------------------------------------------- properties

rooms = st.integers(min_value=0, max_value=8).map(lambda half_gib: half_gib * GiB // 2)


@st.composite
def device_sets(draw: st.DrawFn) -> list[GpuDevice]:
    """Devices as NVML reports them; indexes may repeat (MIG instances share their GPU's)."""
    uuids = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=6))
    return [
        GpuDevice(
            uuid=f"GPU-{uuid}",
            name="NVIDIA H100",
            index=draw(st.integers(min_value=0, max_value=3)),
            total_bytes=4 * GiB,
            free_bytes=draw(rooms),
            used_bytes=0,
        )
        if draw(st.integers(min_value=0, max_value=5))  # 1 in 6: the agent cannot read it
        else GpuDevice.unmeasured(f"GPU-{uuid}")
        for uuid in uuids
    ]


def as_gpus(devices: Sequence[GpuDevice], reclaim: dict[str, int] | None = None) -> list[Gpu]:
    """The core's view of the agent's readings: room = free (+ what a replacement frees),
    never more than the device's total (as the scheduler counts a copy's memory back)."""
    reclaim = reclaim or {}
    return [
        Gpu(
            d.uuid,
            d.name,
            d.index,
            d.total_bytes,
            min(d.total_bytes, d.free_bytes + reclaim.get(d.uuid, 0)),
            measured=d.measured,
        )
        for d in devices
    ]


needs = st.integers(min_value=1, max_value=8).map(lambda half_gib: half_gib * GiB // 2)
counts = st.integers(min_value=1, max_value=4)
policies = st.sampled_from([BINPACK, SPREAD])


@settings(max_examples=300)
@given(device_sets(), needs, counts, policies, st.randoms(use_true_random=False))
def test_the_choice_is_the_best_fitting_devices_whatever_their_order(
    devices: list[GpuDevice], need: int, count: int, policy: Policy, rng: random.Random
) -> None:
    gpus = as_gpus(devices)
    result = fit_devices(gpus, need, count, policy)
    shuffled = list(gpus)
    rng.shuffle(shuffled)
    assert fit_devices(shuffled, need, count, policy) == result
    fitting = [g for g in gpus if g.room_bytes >= need]
    # Whether devices fit never depends on the policy.
    assert isinstance(fit_devices(gpus, need, count, None), DeviceShortfall) == isinstance(
        result, DeviceShortfall
    )
    if isinstance(result, DeviceShortfall):
        assert len(fitting) < count
        assert result.fitting == len(fitting)
        assert (
            list(result.largest_rooms) == sorted((g.room_bytes for g in gpus), reverse=True)[:count]
        )
        return
    assert len(result) == count == len({g.uuid for g in result})
    assert all(g.room_bytes >= need for g in result)
    assert list(result) == sorted(result, key=lambda g: (g.index, g.uuid))
    key = device_key(policy)
    worst_chosen = max(key(g) for g in result)
    assert all(key(g) > worst_chosen for g in fitting if g not in result)


@settings(max_examples=300)
@given(device_sets(), needs, counts, st.data())
def test_the_agent_chooses_the_devices_the_core_chooses_under_spread(
    devices: list[GpuDevice], need: int, count: int, data: st.DataObject
) -> None:
    """No device named: the agent's pre-load choice is the core's for an unpinned request
    under SPREAD, on the same readings (with the memory of a replaced version counted back)."""
    reclaim = {
        d.uuid: data.draw(rooms, label=f"reclaim {d.uuid}")
        for d in devices
        if data.draw(st.booleans(), label=f"replacing on {d.uuid}")
    }
    replica = Replica("mlserver", 0, frozenset(), 0, gpus=tuple(as_gpus(devices, reclaim)))
    request = Request("m", 1, gpu_memory_bytes=need, gpus=count)
    placed = schedule(Snapshot((replica,)), request, SPREAD, 0.0)
    chosen = fit_load(Load("m", 1, gpu_memory_bytes=need, gpus=count), devices, reclaim)
    if isinstance(placed, Placement):
        assert chosen == list(placed.assignments[0].device_uuids)
    else:
        assert isinstance(chosen, Refused)
        assert chosen.kind is EventKind.LOAD_FAILED_MEMORY


@settings(max_examples=200)
@given(device_sets(), needs, counts, policies)
def test_the_agent_accepts_the_devices_the_core_named(
    devices: list[GpuDevice], need: int, count: int, policy: Policy
) -> None:
    """Devices named by the scheduler pass the agent's check when the readings agree."""
    replica = Replica("mlserver", 0, frozenset(), 0, gpus=tuple(as_gpus(devices)))
    placed = schedule(
        Snapshot((replica,)), Request("m", 1, gpu_memory_bytes=need, gpus=count), policy, 0.0
    )
    if not isinstance(placed, Placement):
        return
    named = placed.assignments[0].device_uuids
    load = Load("m", 1, gpu_memory_bytes=need, device_uuids=named, gpus=count)
    assert fit_load(load, devices, {}) == list(named)


def test_the_agent_refuses_a_device_it_cannot_read() -> None:
    """The agent's pre-load check is the core's rule: an unmeasured device never fits, even
    with a replaced version's memory counted back or named by the scheduler."""
    devices = [GpuDevice.unmeasured("GPU-x")]
    for load in (
        Load("m", 1, gpu_memory_bytes=GiB),
        Load("m", 1, gpu_memory_bytes=GiB, device_uuids=("GPU-x",)),
    ):
        refused = fit_load(load, devices, {"GPU-x": 8 * GiB})
        assert isinstance(refused, Refused)
        assert refused.kind is EventKind.LOAD_FAILED_MEMORY


def test_the_agent_says_a_named_device_is_not_measured() -> None:
    load = Load("m", 1, gpu_memory_bytes=GiB, device_uuids=("GPU-x",))
    refused = fit_load(load, [GpuDevice.unmeasured("GPU-x")], {})
    assert isinstance(refused, Refused)
    assert "GPU-x's memory is not measured" in str(refused)
