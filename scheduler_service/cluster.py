"""The cluster as the scheduler knows it: each agent's session, what the placed models take
from each replica, and the views of both that the placement core and the lifecycle read."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field, replace

from contract.errors import AlreadyExists
from contract.names import replica_id
from contract.protocol import Command, GpuDevice, Hello
from placement import (
    ClusterIndex,
    Placement,
    Policy,
    Rejection,
    Replica,
    Request,
    Snapshot,
    place,
    schedule,
)
from scheduler_service.model import ACTIVE, IN_FLIGHT, CopyState, Key, ModelCopy, ModelRecord


@dataclass
class AgentSession:
    """One agent's stream, i.e. one server replica, while connected and for a grace period
    after."""

    hello: Hello
    send: Callable[[Command], bool]  # False when the agent's queue is full
    close: Callable[[str], None]
    gpus: dict[str, GpuDevice] = field(default_factory=dict)
    connected: bool = True
    disconnected_at: float = 0.0
    draining: bool = False
    drain_deadline: float = 0.0
    drained: bool = False
    peer: str = ""  # where the stream comes from (gRPC's peer string), for messages
    joined_at: float = 0.0
    # Told whenever what the placement core sees of this replica changes (the cluster's
    # index refreshes the replica before its next placement).
    on_change: Callable[[], None] = lambda: None

    @property
    def key(self) -> Key:
        return (self.hello.server, self.hello.index)

    def leave(self, now: float) -> None:
        """The stream ended; the replica's copies wait out the grace period from `now`."""
        self.connected = False
        self.disconnected_at = now
        self.on_change()

    def start_drain(self, deadline: float) -> bool:
        """The agent asked to drain (SIGTERM); False when it is draining already."""
        if self.draining:
            return False
        self.draining, self.drain_deadline = True, deadline
        self.on_change()
        return True

    def finish_drain(self) -> None:
        """DrainComplete is on its way: nothing more is waited for."""
        self.drained = True
        self.on_change()

    def measured(self, devices: Iterable[GpuDevice]) -> bool:
        """The agent measured its devices again; returns whether free memory grew."""
        before = sum(gpu.free_bytes for gpu in self.gpus.values())
        self.gpus = {gpu.uuid: gpu for gpu in devices}
        self.on_change()
        return sum(gpu.free_bytes for gpu in self.gpus.values()) > before

    def measured_on_own_devices(self, footprint: Mapping[str, int]) -> dict[str, int]:
        """`footprint` as this replica can have taken it: on its own devices only, at most
        each device's total (what an agent reports beyond that is not believed: it would be
        learned for every model of the artifact)."""
        return {
            uuid: min(size, gpu.total_bytes)
            for uuid, size in footprint.items()
            if (gpu := self.gpus.get(uuid)) is not None
        }

    def charge(self, footprint: Mapping[str, int]) -> None:
        """Until the agent measures again, count a fresh load's memory as used."""
        for uuid, size in footprint.items():
            gpu = self.gpus.get(uuid)
            if gpu is not None:
                self.gpus[uuid] = replace(
                    gpu,
                    free_bytes=max(0, gpu.free_bytes - size),
                    used_bytes=min(gpu.total_bytes, gpu.used_bytes + size),
                )
                self.on_change()


@dataclass
class Usage:
    """What the models placed on one replica take from it."""

    memory_bytes: int = 0
    reserved_bytes: Counter[str] = field(default_factory=Counter)
    models: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Share:
    """What one model takes from one replica."""

    memory_bytes: int
    reserved_bytes: tuple[tuple[str, int], ...]


class UsageTable:
    """Per replica, what the placed models take, kept up to date model by model: each
    model's share is remembered when it is added, so taking it out again is exact even
    after the record has changed. A pass then costs the models it touches, not all."""

    def __init__(self) -> None:
        self.by_key: dict[Key, Usage] = {}
        self._shares: dict[str, dict[Key, _Share]] = {}
        # Replicas whose usage changed since the cluster's index last read them.
        self.changed: set[Key] = set()

    def get(self, key: Key) -> Usage:
        return self.by_key.get(key) or Usage()

    def account(self, record: ModelRecord) -> None:
        """(Re)count `record` as it is now."""
        shares = {key: _share(record, copy) for key, copy in _holding(record)}
        if self._shares.get(record.name) == shares:
            return  # a change that moves no memory (most events): no replica changed
        self.forget(record.name)
        for key, share in shares.items():
            self._apply(record.name, key, share, 1)
        self._shares[record.name] = shares

    def forget(self, name: str) -> None:
        for key, share in self._shares.pop(name, {}).items():
            self._apply(name, key, share, -1)

    def _apply(self, name: str, key: Key, share: _Share, sign: int) -> None:
        self.changed.add(key)
        entry = self.by_key.setdefault(key, Usage())
        entry.memory_bytes += sign * share.memory_bytes
        for uuid, size in share.reserved_bytes:
            entry.reserved_bytes[uuid] += sign * size
        if sign > 0:
            entry.models.add(name)
        else:
            entry.models.discard(name)


class Cluster:
    """The agents' sessions by replica and the usage table; a `lifecycle.ClusterView`.

    The placement core reads the connected replicas through a `ClusterIndex`, refreshed
    before each placement for the replicas whose session or usage changed since (each
    session and the usage table say so), so that a placement costs the replicas that
    changed, not all of them."""

    def __init__(self, *, indexed: bool = True) -> None:
        self.sessions: dict[Key, AgentSession] = {}
        self.usage = UsageTable()
        # None: a view made on the side (a dry run), whose placements judge every replica.
        self._index = ClusterIndex() if indexed else None
        self._stale: set[Key] = set()
        # The sessions draining (connected, not done) and the ones gone: what a pass looks
        # at, without a scan of every session.
        self._draining: set[Key] = set()
        self._gone: set[Key] = set()

    def join(
        self,
        hello: Hello,
        send: Callable[[Command], bool],
        close: Callable[[str], None],
        now: float,
        peer: str = "",
    ) -> AgentSession:
        """An agent's new stream. Refused while another agent's stream of the same replica
        is connected: two live agents with one POD_NAME would take the replica from each
        other for ever. (A dead one's stream ends within the keepalive: the new one's next
        try gets in.)"""
        session = AgentSession(
            hello, send, close, gpus={gpu.uuid: gpu for gpu in hello.devices}, peer=peer
        )
        previous = self.sessions.get(session.key)
        if previous is not None and previous.connected:
            refused = AlreadyExists(
                f"replica {replica_id(*session.key)} is connected already (since "
                f"{_clock(previous.joined_at)}): two agents with the same POD_NAME? This one "
                "is refused while that stream is open"
            )
            refused.holder = previous.peer  # for the scheduler's log, not for the caller
            raise refused
        session.joined_at = now
        self.sessions[session.key] = session
        session.on_change = lambda: self._changed(session)
        self._changed(session)
        return session

    def _changed(self, session: AgentSession) -> None:
        key = session.key
        if self.sessions.get(key) is not session:
            return  # replaced by a newer stream of the same replica
        self._stale.add(key)
        (self._gone.discard if session.connected else self._gone.add)(key)
        draining = session.draining and session.connected and not session.drained
        (self._draining.add if draining else self._draining.discard)(key)

    def draining_sessions(self) -> list[AgentSession]:
        """The connected sessions draining and not drained yet, by key."""
        return [self.sessions[key] for key in sorted(self._draining)]

    def connected(self, key: Key) -> bool:
        session = self.sessions.get(key)
        return session is not None and session.connected

    def draining(self, key: Key) -> bool:
        session = self.sessions.get(key)
        return session is not None and session.draining

    def replica(self, key: Key) -> Replica | None:
        session = self.sessions.get(key)
        if session is None or not session.connected:
            return None
        return _view(session, self.usage.get(key))

    def known(self) -> list[AgentSession]:
        """Every replica connected now or within the grace period, by key."""
        return [self.sessions[key] for key in sorted(self.sessions)]

    def views(self) -> list[tuple[AgentSession, Replica | None]]:
        """Every known replica with the core's view of it (None while disconnected)."""
        return [(session, self.replica(session.key)) for session in self.known()]

    def snapshot(self, record: ModelRecord) -> Snapshot:
        """The connected replicas as if `record` were on none of them (the caller has taken
        its usage out; the memory its copies measured is added back): what `schedule()`
        judges whole, for a dry run or to word the reasons of a placement."""
        own = self._own(record)
        return Snapshot(
            tuple(
                own.get(key) or _view(session, self.usage.get(key))
                for key, session in sorted(self.sessions.items())
                if session.connected
            )
        )

    def place(
        self, record: ModelRecord, request: Request, policy: Policy, now: float
    ) -> Placement | Rejection:
        """`schedule(self.snapshot(record), ...)`'s answer, through the index (a placement
        without its reasons: `snapshot` words them for whoever asks). The model's own usage
        is taken out first: the caller counts it again once the model's pass is over."""
        self.usage.forget(record.name)
        if self._index is None:
            return schedule(self.snapshot(record), request, policy, now)
        index = self._index
        for key in self._stale | self.usage.changed:
            session = self.sessions.get(key)
            if session is None or not session.connected:
                index.remove(key)
            else:
                index.put(_view(session, self.usage.get(key)))
        self._stale.clear()
        self.usage.changed.clear()
        own = self._own(record)
        for replica in own.values():
            index.put(replica)
        try:
            return place(index, request, policy, now)
        finally:
            self._stale.update(own)  # their own views again at the next refresh

    def _own(self, record: ModelRecord) -> dict[Key, Replica]:
        """The connected replicas `record` holds, seen as holding it, with the memory its
        copies measured added back."""
        found = {}
        for copy in record.copies.values():
            session = self.sessions.get(copy.key)
            if copy.state in ACTIVE and session is not None and session.connected:
                replica = _view(session, self.usage.get(copy.key), copy.footprint_bytes)
                found[copy.key] = replace(replica, models=replica.models | {record.name})
        return found

    def without(self, name: str) -> Cluster:
        """A view for a decision made on the side (a dry run), only read: these sessions,
        and the usage as if model `name` held nothing. The live accounts stay as they are."""
        view = Cluster(indexed=False)
        view.sessions = self.sessions
        view.usage = deepcopy(self.usage)
        view.usage.forget(name)
        return view

    def forget_gone(self, now: float, grace_s: float) -> None:
        """Replicas gone for longer than the grace period leave the server list."""
        for key in list(self._gone):
            session = self.sessions[key]
            if now - session.disconnected_at >= grace_s:
                del self.sessions[key]
                self._gone.discard(key)
                self._stale.add(key)

    def wake_times(self, grace_s: float) -> list[float]:
        """When a drain times out or a gone replica is to be forgotten."""
        drains = [self.sessions[key].drain_deadline for key in self._draining]
        gone = [self.sessions[key].disconnected_at + grace_s for key in self._gone]
        return drains + gone


def _clock(at: float) -> str:
    """A wall-clock time of day, UTC, for a message."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(at))


def _view(
    session: AgentSession, usage: Usage, add_back: Mapping[str, int] | None = None
) -> Replica:
    """`add_back`: memory measured as used that belongs to the model being placed."""
    hello = session.hello
    add_back = add_back or {}
    return Replica(
        server=hello.server,
        index=hello.index,
        capabilities=hello.capabilities,
        memory_bytes=hello.memory_bytes,
        overcommit_percentage=hello.overcommit_percentage,
        used_memory_bytes=usage.memory_bytes,
        gpus=tuple(
            gpu.placement_view(
                extra_free_bytes=add_back.get(uuid, 0),
                reserved_bytes=usage.reserved_bytes[uuid],
            )
            for uuid, gpu in sorted(session.gpus.items())
        ),
        models=frozenset(usage.models),
        draining=session.draining,
    )


def _holding(record: ModelRecord) -> Iterable[tuple[Key, ModelCopy]]:
    """The replicas where `record` takes memory: loaded, loading or still unloading."""
    for key, copy in record.copies.items():
        if copy.state in ACTIVE or copy.state == CopyState.UNLOADING:
            yield key, copy


def _share(record: ModelRecord, copy: ModelCopy) -> _Share:
    """Host memory always; GPU memory promised to a load still in flight (the ledger)."""
    reserved: tuple[tuple[str, int], ...] = ()
    if copy.state in IN_FLIGHT:
        # What the model was placed with: its declared gpuMemory, or its learned figure.
        reserved = tuple((uuid, record.gpu_memory_bytes) for uuid in copy.device_uuids)
    return _Share(record.memory_bytes, reserved)
