"""`ClusterIndex` and `place()`: `schedule()`'s answers without judging every server.

`schedule()` judges every replica of every server and words a reason for each one it turns
down: its cost grows with the cluster, and a placement needs only the winner. The index keeps
the replicas in the orders the ranking uses, updated one replica at a time (`put`, `remove`),
so `place()` reads replicas best first and stops at the first server that takes the model:

* replicas are grouped by capability set; a request reads only the groups whose set covers
  its requirements;
* in each group, replicas by free host memory (most first: the CPU ranking, and past the
  first that lacks the memory none has it), and devices by room (least first for binpack,
  most first for spread: a replica's first device in that order is the one the model goes
  on, and past the first device without the room none has it);
* the replicas that hold each model (they rank first on their server).

The answer is `schedule()`'s on the same replicas, server and devices included (a property
test compares them on random clusters). A placement's `reasons` are left empty: words are
for refusals and for whoever asks (`schedule()` gives them). Requests the orders do not
cover — pinned to a server (one server: judged whole), spanning several devices, or that no
server takes whole (a partial placement is ranked over every server) — are judged by
`schedule()`, with its reasons.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import TypeVar

from sortedcontainers import SortedList

from placement.filters import draining, excluded, first_failure, gpus_needed, host_memory
from placement.schedule import ServerVerdict, choose, judge, least_replicas, schedule, to_placement
from placement.sorters import Candidate, replica_key
from placement.types import Gpu, Placement, Policy, Rejection, Replica, Request, Snapshot

Key = tuple[str, int]
# (-free host memory, server, index): most free memory first, then the name.
_MemoryEntry = tuple[int, str, int]
# (room or -room, -free host memory, server, index, device index, uuid)
_DeviceEntry = tuple[int, int, str, int, int, str]
_Entry = TypeVar("_Entry", _MemoryEntry, _DeviceEntry)


class _Group:
    """The replicas of one capability set, in the orders the ranking reads."""

    def __init__(self) -> None:
        self.by_memory: SortedList[_MemoryEntry] = SortedList()
        self.by_room: SortedList[_DeviceEntry] = SortedList()  # least room first
        self.by_room_desc: SortedList[_DeviceEntry] = SortedList()  # most room first

    def add(self, replica: Replica, sign: int) -> None:
        """Add (`sign` 1) or take out (`sign` -1) one replica's entries."""
        change = self.by_memory.add if sign > 0 else self.by_memory.remove
        memory = -replica.available_memory_bytes
        change((memory, replica.server, replica.index))
        for gpu in replica.gpus:
            room = gpu.room_bytes
            tail = (memory, replica.server, replica.index, gpu.index, gpu.uuid)
            if sign > 0:
                self.by_room.add((room, *tail))
                self.by_room_desc.add((-room, *tail))
            else:
                self.by_room.remove((room, *tail))
                self.by_room_desc.remove((-room, *tail))

    def __bool__(self) -> bool:
        return bool(self.by_memory)


class ClusterIndex:
    """The connected replicas, indexed for `place()`; updated replica by replica. Pure:
    plain values in, no I/O."""

    def __init__(self, replicas: Iterable[Replica] = ()) -> None:
        self._replicas: dict[Key, Replica] = {}
        self._servers: dict[str, dict[int, Replica]] = {}
        self._groups: dict[frozenset[str], _Group] = {}
        self._holders: dict[str, set[Key]] = {}
        for replica in replicas:
            self.put(replica)

    def __len__(self) -> int:
        return len(self._replicas)

    def get(self, key: Key) -> Replica | None:
        return self._replicas.get(key)

    def put(self, replica: Replica) -> None:
        """Add `replica`, or replace the one of its key."""
        key = replica.key
        old = self._replicas.get(key)
        if old == replica:
            return
        gone: frozenset[str]
        added: frozenset[str]
        if old is None:
            self._servers.setdefault(replica.server, {})[replica.index] = replica
            gone, added = frozenset(), replica.models
        else:
            self._group_of(old).add(old, -1)
            self._servers[replica.server][replica.index] = replica
            # A replica holds many models: only those that changed move (set differences).
            gone, added = old.models - replica.models, replica.models - old.models
            if old.capabilities != replica.capabilities and not self._groups[old.capabilities]:
                del self._groups[old.capabilities]
        self._replicas[key] = replica
        self._group_of(replica).add(replica, 1)
        self._hold(key, gone, added)

    def remove(self, key: Key) -> None:
        replica = self._replicas.pop(key, None)
        if replica is None:
            return
        server = self._servers[replica.server]
        del server[replica.index]
        if not server:
            del self._servers[replica.server]
        group = self._group_of(replica)
        group.add(replica, -1)
        if not group:
            del self._groups[replica.capabilities]
        self._hold(key, replica.models, frozenset())

    def _group_of(self, replica: Replica) -> _Group:
        return self._groups.setdefault(replica.capabilities, _Group())

    def _hold(self, key: Key, gone: frozenset[str], added: frozenset[str]) -> None:
        for model in gone:
            holders = self._holders[model]
            holders.discard(key)
            if not holders:
                del self._holders[model]
        for model in added:
            self._holders.setdefault(model, set()).add(key)

    def snapshot(self) -> Snapshot:
        """Every replica, by key: what `schedule()` reads."""
        return Snapshot(tuple(self._replicas[key] for key in sorted(self._replicas)))

    def server(self, name: str) -> list[Replica]:
        """The replicas of server `name`, by index."""
        found = self._servers.get(name, {})
        return [found[index] for index in sorted(found)]

    def holders(self, model: str) -> list[Key]:
        """The replicas that hold `model` (any version), by key."""
        return sorted(self._holders.get(model, ()))

    def ranked(self, request: Request, policy: Policy) -> Iterator[tuple[Replica, tuple[Gpu, ...]]]:
        """Replicas whose capabilities cover the request's requirements, with the devices the
        model would go on there, in `replica_key` order for a replica that does not hold the
        model, as far as the order can tell they fit: CPU requests down to the last replica
        with the host memory, single-device GPU requests down to the last device with the
        room (the devices are then a fit). Draining, exclusions and host memory are left to
        the caller."""
        groups = [group for caps, group in self._groups.items() if request.requirements <= caps]
        if gpus_needed(request) == 0:
            need = request.memory_bytes
            for memory, server, index in _merged([g.by_memory for g in groups]):
                if -memory < need:
                    return
                yield self._servers[server][index], ()
            return
        need = request.gpu_memory_bytes
        seen: set[Key] = set()
        if policy is Policy.BINPACK:
            start = (need,)
            entries = _merged([g.by_room.irange(minimum=start) for g in groups])
        else:
            entries = _merged([g.by_room_desc for g in groups])
        for room, _, server, index, _, uuid in entries:
            if abs(room) < need:  # spread: past the last device with the room
                return
            if (server, index) not in seen:
                seen.add((server, index))
                replica = self._servers[server][index]
                yield replica, tuple(gpu for gpu in replica.gpus if gpu.uuid == uuid)


def _merged(orders: list[Iterable[_Entry]]) -> Iterator[_Entry]:
    """One order out of several sorted ones (most requests read one capability group)."""
    return iter(orders[0]) if len(orders) == 1 else heapq.merge(*orders)


# What the ranked order leaves to the caller: capabilities and GPU room it has seen to.
_REST = (draining, excluded, host_memory)


def place(
    index: ClusterIndex, request: Request, policy: Policy, now: float
) -> Placement | Rejection:
    """`schedule(index.snapshot(), request, policy, now)`'s answer, found by reading the
    index best first; a placement comes without reasons (see the module's docstring)."""
    if gpus_needed(request) > 1:
        return schedule(index.snapshot(), request, policy, now)
    wanted = max(request.replicas, 1)
    least = least_replicas(request.replicas, request.min_replicas)
    key = replica_key(request, policy)
    verdicts: dict[str, ServerVerdict] = {}

    def judged(server: str) -> ServerVerdict:
        verdict = verdicts.get(server)
        if verdict is None:
            verdict = verdicts[server] = judge(request, policy, now, index.server(server))
        return verdict

    if request.server is not None:  # one server: judged whole, worded only if it falls short
        pinned = index.server(request.server)
        if pinned and len(judged(request.server).fitting) >= wanted:
            return to_placement(judged(request.server), wanted, ())
        return schedule(Snapshot(tuple(pinned)), request, policy, now)
    # A server whose chosen replicas hold the model ranks before every other.
    holding = [
        verdict
        for verdict in map(judged, sorted({server for server, _ in index.holders(request.model)}))
        if len(verdict.fitting) >= wanted and verdict.fitting[0].held
    ]
    if holding:
        chosen = choose(holding, wanted, least, key)
        assert chosen is not None  # every one of them has `wanted` fitting replicas
        return to_placement(chosen, wanted, ())
    # Otherwise the first server, in the order of its best fitting replica, with `wanted`.
    for replica, devices in index.ranked(request, policy):
        if first_failure(request, replica, now, _REST) is not None:
            continue
        if wanted == 1:
            option = Candidate(replica, devices, request.model in replica.models)
            return to_placement(ServerVerdict(replica.server, (option,), ()), 1, ())
        verdict = judged(replica.server)
        if len(verdict.fitting) >= wanted:
            return to_placement(verdict, wanted, ())
    # No server takes every replica: a partial placement or a refusal, over every server.
    return schedule(index.snapshot(), request, policy, now)
