"""The device-fit rule: which GPUs of one replica a model goes on, or why none can take it.

One rule for both processes: the scheduler's filters and sorters call `fit_devices` over the
devices of a snapshot (room = measured free minus the in-flight ledger), and the agent calls
it over the devices it measured just before a load (room = free now plus the memory of the
version the load replaces). Each caller words a `DeviceShortfall` for its own readers.

A device that was not measured (`Gpu.measured` False: its agent cannot read it) never fits,
whatever the need (its room is 0, as a shortfall's largest rooms show it).

Ordering under a policy: binpack = least room first (best fit), spread = most room first;
ties by device index, then uuid, so a choice never depends on the order devices are listed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from placement.types import Gpu, Policy

DeviceKey = Callable[[Gpu], tuple[int, int, str]]


def _binpack_key(gpu: Gpu) -> tuple[int, int, str]:
    return (gpu.room_bytes, gpu.index, gpu.uuid)


def _spread_key(gpu: Gpu) -> tuple[int, int, str]:
    return (-gpu.room_bytes, gpu.index, gpu.uuid)


def _index_key(gpu: Gpu) -> tuple[int, str]:
    return (gpu.index, gpu.uuid)


def device_key(policy: Policy) -> DeviceKey:
    """Binpack: least room first (best fit). Spread: most room first. Then index, uuid."""
    return _binpack_key if policy is Policy.BINPACK else _spread_key


@dataclass(frozen=True, slots=True)
class DeviceShortfall:
    """Why the devices cannot take the model: the facts, for each caller to word.

    "Considered": every device of the replica when none are named, else the named devices
    the replica has. (Kept to two fields: the filters build one per replica rejected.)
    """

    fitting: int  # considered devices with the room
    # The rooms of the considered devices, largest first: `count` of them at most (as many
    # as were named, when devices are named). A device not measured counts as room 0.
    largest_rooms: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NamedShortfall(DeviceShortfall):
    """Why the named devices cannot take the model."""

    missing: tuple[str, ...]  # named devices the replica does not have, in named order
    short: tuple[Gpu, ...]  # named devices it has, without the room (or not measured), in
    # named order


def fit_devices(
    gpus: Sequence[Gpu],
    need_bytes: int,
    count: int,
    policy: Policy | None,
    named: Sequence[str] = (),
) -> tuple[Gpu, ...] | DeviceShortfall:
    """The devices a model needing `need_bytes` of room on each goes on, or why none can.

    None named: `count` distinct devices with the room, the first under
    `device_key(policy)`, returned in index order (then uuid); `count` <= 0 (a CPU model)
    gets `()`. Whether they fit never depends on the policy, only which are chosen: with
    `policy` None no choice is made (a yes/no check, as the filters make) and the devices
    returned are the first `count` with the room, in the order given.

    Named (the scheduler already chose them; duplicates ignored; `count` and `policy`
    unused): those devices, in the order named, when the replica has every one and each
    has the room; else a `NamedShortfall`.
    """
    if named:
        return _fit_named(gpus, need_bytes, named)
    if count <= 0:
        return ()
    if count == 1:  # the common case: one pass, no sorting, nothing allocated but the answer
        best: Gpu | None = None
        best_room = 0
        largest = 0  # the largest room seen, for a shortfall
        spread = policy is Policy.SPREAD
        for gpu in gpus:
            if not gpu.measured:
                continue
            room = gpu.room_bytes
            if room < need_bytes:
                largest = max(largest, room)
                continue
            if best is None:
                if policy is None:
                    return (gpu,)
                best, best_room = gpu, room
            elif room != best_room:
                if (room > best_room) if spread else (room < best_room):
                    best, best_room = gpu, room
            elif (gpu.index, gpu.uuid) < (best.index, best.uuid):
                best = gpu
        if best is not None:
            return (best,)
        return DeviceShortfall(0, (largest,) if gpus else ())
    fitting = [gpu for gpu in gpus if gpu.measured and gpu.room_bytes >= need_bytes]
    if len(fitting) < count:
        return DeviceShortfall(len(fitting), _largest_rooms(gpus, count))
    if policy is None:
        return tuple(fitting[:count])
    if len(fitting) > count:
        fitting = sorted(fitting, key=device_key(policy))[:count]
    return tuple(sorted(fitting, key=_index_key))


def _fit_named(
    gpus: Sequence[Gpu], need_bytes: int, named: Sequence[str]
) -> tuple[Gpu, ...] | NamedShortfall:
    by_uuid = {gpu.uuid: gpu for gpu in gpus}
    wanted = tuple(dict.fromkeys(named))
    present = tuple(by_uuid[uuid] for uuid in wanted if uuid in by_uuid)
    missing = tuple(uuid for uuid in wanted if uuid not in by_uuid)
    short = tuple(gpu for gpu in present if not gpu.measured or gpu.room_bytes < need_bytes)
    if not missing and not short:
        return present
    return NamedShortfall(
        len(present) - len(short),
        _largest_rooms(present, len(wanted)),
        missing,
        short,
    )


def _largest_rooms(gpus: Sequence[Gpu], count: int) -> tuple[int, ...]:
    rooms = [gpu.room_bytes for gpu in gpus]
    rooms.sort(reverse=True)
    return tuple(rooms[:count])
