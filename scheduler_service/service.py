"""The scheduler's model lifecycle: desired specs in, commands to agents out.

Everything runs on one event loop. Client calls and agent messages change records and mark
models dirty; one reconcile loop takes each dirty (or timer-due) model, runs the pure
placement core over one snapshot of the cluster, persists the result, and only then sends
the commands. Persisting first means a crash never leaves an agent doing something the state
file does not know about.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from contract.errors import NotFound, ResourceExhausted
from contract.protocol import (
    Command,
    DrainComplete,
    EventKind,
    GpuDevice,
    Hello,
    LoadedModel,
    ModelEvent,
    Unload,
    Welcome,
)
from placement import schedule
from placement.types import (
    Assignment,
    Gpu,
    Placement,
    Rejection,
    Replica,
    Request,
    Snapshot,
)
from scheduler_service.metrics import ClusterGauges, DeviceView, SchedulerMetrics
from scheduler_service.model import (
    ACTIVE,
    IN_FLIGHT,
    CopyState,
    ModelCopy,
    ModelRecord,
    ModelSpec,
    ModelState,
)
from scheduler_service.settings import SchedulerSettings
from scheduler_service.store import Store

log = logging.getLogger(__name__)
Key = tuple[str, int]
# Longest the reconcile loop sleeps when no timer is due sooner.
_IDLE_WAKE_S = 1.0
# Models reconciled before the loop yields to other tasks.
_SLICE = 200


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


def _name(key: Key) -> str:
    return f"{key[0]}-{key[1]}"


@dataclass
class AgentSession:
    """One connected (or recently connected) agent, i.e. one server replica."""

    hello: Hello
    send: Callable[[Command], bool]  # False when the agent's queue is full
    close: Callable[[str], None]
    gpus: dict[str, GpuDevice] = field(default_factory=dict)
    connected: bool = True
    disconnected_at: float = 0.0
    draining: bool = False
    drain_deadline: float = 0.0
    drained: bool = False

    @property
    def key(self) -> Key:
        return (self.hello.server, self.hello.index)


@dataclass
class _Usage:
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
        self.by_key: dict[Key, _Usage] = {}
        self._shares: dict[str, dict[Key, _Share]] = {}

    def get(self, key: Key) -> _Usage:
        return self.by_key.get(key) or _Usage()

    def account(self, record: ModelRecord) -> None:
        """(Re)count `record` as it is now."""
        self.forget(record.name)
        shares = {key: _share(record, replica) for key, replica in _holding(record)}
        for key, share in shares.items():
            self._apply(record.name, key, share, 1)
        self._shares[record.name] = shares

    def forget(self, name: str) -> None:
        for key, share in self._shares.pop(name, {}).items():
            self._apply(name, key, share, -1)

    def _apply(self, name: str, key: Key, share: _Share, sign: int) -> None:
        entry = self.by_key.setdefault(key, _Usage())
        entry.memory_bytes += sign * share.memory_bytes
        for uuid, size in share.reserved_bytes:
            entry.reserved_bytes[uuid] += sign * size
        if sign > 0:
            entry.models.add(name)
        else:
            entry.models.discard(name)


class Watcher:
    """A bounded queue of status changes for one WatchModels stream."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.queue: asyncio.Queue[ModelRecord | None] = asyncio.Queue(size)
        self.overflowed = False

    def offer(self, record: ModelRecord) -> None:
        if self.name and record.name != self.name:
            return
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self.overflowed = True
            self.queue.get_nowait()
            self.queue.put_nowait(None)  # tells the stream to end


class SchedulerService:
    def __init__(
        self,
        settings: SchedulerSettings,
        store: Store,
        metrics: SchedulerMetrics,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._clock = clock or SystemClock()
        self._agents: dict[Key, AgentSession] = {}
        self._watchers: set[Watcher] = set()
        self._models: dict[str, ModelRecord] = {m.name: m for m in store.load()}
        started = self._clock.now()
        for record in self._models.values():
            for replica in record.replicas.values():
                if replica.state in ACTIVE:
                    # Restored from disk: its agent has to come back within the grace period.
                    replica.lost_since = started
        self._dirty: set[str] = set(self._models)
        self._usage = UsageTable()
        # When each model next needs a pass without any event; refreshed after each of its
        # passes (any change in between marks it dirty, which wins).
        self._timers: dict[str, float] = {}
        self._kick = asyncio.Event()
        self._outbox: list[tuple[Key, Command]] = []
        metrics.watch_state(self.gauges)
        if self._models:
            log.info("restored %d models from %s", len(self._models), settings.db)

    # ------------------------------------------------------------------ client API

    def load_model(self, spec: ModelSpec) -> tuple[int, bool]:
        """Record the desired spec; return its version and whether anything changed."""
        now = self._clock.now()
        current = self._models.get(spec.name)
        if current is not None and current.spec == spec and not current.deleted:
            return current.version, False
        if current is None:
            if len(self._models) >= self._settings.max_models:
                raise ResourceExhausted(
                    f"the scheduler holds {len(self._models)} models, its limit (max_models)"
                )
            # Never reuse a version: a copy of a deleted model's old version may still sit
            # on an agent, and must not pass for the new one.
            version = self._store.last_version(spec.name) + 1
            record = ModelRecord(spec=spec, version=version, updated_at=now)
            log.info("model %s: version %d requested", spec.name, version)
        elif _scale_only(current.spec, spec) and not current.deleted:
            record = copy.deepcopy(current)  # changed on a copy: it counts once it is saved
            record.spec = spec
            log.info("model %s: scaled to %d replicas in place", spec.name, spec.replicas)
        else:
            record = copy.deepcopy(current)
            record.spec = spec
            record.version += 1
            record.deleted = False
            record.excluded_until.clear()
            record.load_failures = 0
            log.info("model %s: version %d requested", spec.name, record.version)
        record.attempts = 0
        record.next_retry_at = 0.0
        record.state = (
            ModelState.PROGRESSING if record.state == ModelState.AVAILABLE else ModelState.PENDING
        )
        record.updated_at = now
        self._store.save(record)
        self._models[record.name] = record
        self._publish(record)
        self._mark(record.name)
        return record.version, True

    def unload_model(self, name: str) -> None:
        current = self.model(name)
        if current.deleted:
            return
        record = copy.deepcopy(current)
        record.deleted = True
        record.state = ModelState.TERMINATING
        record.reason = "unload requested"
        record.updated_at = self._clock.now()
        self._store.save(record)
        self._models[name] = record
        self._publish(record)
        self._mark(name)
        log.info("model %s: unload requested", name)

    def model(self, name: str) -> ModelRecord:
        record = self._models.get(name)
        if record is None:
            raise NotFound(f"model {name!r} not found")
        return record

    def models(self) -> list[ModelRecord]:
        return [self._models[name] for name in sorted(self._models)]

    def agents(self) -> list[AgentSession]:
        return [self._agents[key] for key in sorted(self._agents)]

    def replica_views(self) -> list[tuple[AgentSession, Replica | None]]:
        """Every known replica with its view as the placement core sees it now (None while
        disconnected), for server status; one usage table for all of them."""
        self._sync_usage()
        return [
            (conn, self._replica(conn, self._usage.get(conn.key)) if conn.connected else None)
            for conn in self.agents()
        ]

    def watch(self, name: str) -> Watcher:
        if name and name not in self._models:
            raise NotFound(f"model {name!r} not found")
        # The first snapshot does not count against the slow-consumer bound.
        watcher = Watcher(name, self._settings.watch_queue_size + len(self._models))
        for record in self.models():
            watcher.offer(copy.deepcopy(record))
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    # ------------------------------------------------------------------ agent API

    def connect(
        self, hello: Hello, send: Callable[[Command], bool], close: Callable[[str], None]
    ) -> AgentSession:
        """An agent said hello: register it and reconcile what it holds with the records."""
        key = (hello.server, hello.index)
        previous = self._agents.get(key)
        if previous is not None and previous.connected:
            previous.connected = False
            previous.close("replaced by a new connection from the same replica")
        conn = AgentSession(hello=hello, send=send, close=close)
        conn.gpus = {gpu.uuid: gpu for gpu in hello.devices}
        self._agents[key] = conn
        conn.send(Welcome())
        reported = {loaded.name: loaded for loaded in hello.loaded}
        for record in list(self._models.values()):
            if record.name in reported or key in record.replicas:
                self._reconcile_hello(conn, record, reported.pop(record.name, None))
                self._commit(record)
        for loaded in reported.values():
            log.info("replica %s: unloading unknown model %s", _name(key), loaded.name)
            self._command(key, Unload(loaded.name, loaded.version))
        log.info(
            "replica %s connected: capabilities=%s memory=%d gpus=%d loaded=%d",
            _name(key),
            ",".join(sorted(hello.capabilities)),
            hello.memory_bytes,
            len(hello.devices),
            len(hello.loaded),
        )
        self._cluster_changed()
        return conn

    def disconnect(self, conn: AgentSession) -> None:
        if self._agents.get(conn.key) is not conn or not conn.connected:
            return
        conn.connected = False
        now = self._clock.now()
        conn.disconnected_at = now
        for record in self._models.values():
            replica = record.replicas.get(conn.key)
            if replica is None:
                continue
            if replica.state in IN_FLIGHT:
                self._load_failed(
                    record, replica, "agent disconnected during the load", "agent_disconnected"
                )
            elif conn.draining or replica.state == CopyState.UNLOADING:
                del record.replicas[conn.key]
            elif replica.state == CopyState.AVAILABLE:
                replica.lost_since = now
            self._commit(record)
        log.info(
            "replica %s disconnected%s", _name(conn.key), " (drained)" if conn.draining else ""
        )
        self._cluster_changed()

    def on_event(self, conn: AgentSession, event: ModelEvent) -> None:
        record = self._models.get(event.model)
        replica = record.replicas.get(conn.key) if record else None
        # The event answers what this replica's record asked for (same version).
        expected = replica is not None and replica.version == event.version
        where = f"model {event.model} v{event.version} on {_name(conn.key)}"
        if record is None:
            if event.kind == EventKind.LOADED:
                self._unwanted(conn.key, event)
            return
        if not expected and event.kind != EventKind.LOADED:
            log.debug("%s: stale %s event ignored", where, event.kind)
            return
        if event.kind == EventKind.LOADED:
            if not expected or replica is None or replica.state not in ACTIVE:
                self._unexpected_load(conn, record, event)
            elif replica.state in IN_FLIGHT:
                self._loaded(conn, replica, event)
                log.info("%s: available", where)
            else:
                return  # a repeated answer for a copy already Available
        elif replica is None or not expected:
            return
        elif event.kind in (EventKind.LOAD_FAILED, EventKind.LOAD_FAILED_MEMORY):
            if replica.state not in IN_FLIGHT:
                return
            self._load_failed(record, replica, event.message, event.kind.value)
        elif event.kind == EventKind.UNLOADED:
            if replica.state not in (CopyState.UNLOADING, CopyState.AVAILABLE):
                return  # an old unload's answer, overtaken by a newer load here
            # Shown (and streamed to watchers) once; the next pass forgets it.
            replica.state = CopyState.UNLOADED
            replica.reason = ""
            replica.deadline = 0.0
            log.info("%s: unloaded", where)
            self._cluster_changed()
        else:  # UNLOAD_FAILED: asked again after a while.
            log.warning("%s: unload failed: %s", where, event.message)
            replica.reason = f"unload failed: {event.message}"
            replica.deadline = self._clock.now() + self._settings.retry_max_s
            if record.deleted:
                record.reason = f"unload failed on {_name(conn.key)}: {event.message}"
        self._commit(record)

    def _loaded(self, conn: AgentSession, replica: ModelCopy, event: ModelEvent) -> None:
        self._metrics.load_seconds.observe(
            max(0.0, self._clock.now() - (replica.deadline - self._settings.load_timeout_s))
        )
        replica.state = CopyState.AVAILABLE
        replica.reason = ""
        replica.deadline = 0.0
        replica.replaced_version = 0
        replica.footprint_bytes = dict(event.footprint_bytes)
        self._charge_footprint(conn, event.footprint_bytes)

    def _unexpected_load(self, conn: AgentSession, record: ModelRecord, event: ModelEvent) -> None:
        """A load finished that the records no longer wait for (e.g. it outlived a
        disconnect): keep the copy when the model wants one there, else unload it."""
        key = conn.key
        replica = record.replicas.get(key)
        loaded = LoadedModel(event.model, event.version, dict(event.footprint_bytes))
        free = replica is None or replica.state in (CopyState.LOAD_FAILED, CopyState.UNLOADED)
        if free and self._adoptable(record, conn, loaded):
            record.replicas[key] = ModelCopy(
                server=key[0],
                index=key[1],
                version=event.version,
                state=CopyState.AVAILABLE,
                footprint_bytes=dict(event.footprint_bytes),
            )
            log.info("model %s: kept the late copy on %s", record.name, _name(key))
        else:
            self._unwanted(key, event)

    def _unwanted(self, key: Key, event: ModelEvent) -> None:
        log.info(
            "model %s v%d on %s: loaded but not wanted, unloading",
            event.model,
            event.version,
            _name(key),
        )
        self._command(key, Unload(event.model, event.version))
        self._kick.set()

    def on_resources(self, conn: AgentSession, devices: Iterable[GpuDevice]) -> None:
        before = sum(gpu.free_bytes for gpu in conn.gpus.values())
        conn.gpus = {gpu.uuid: gpu for gpu in devices}
        if sum(gpu.free_bytes for gpu in conn.gpus.values()) > before:
            self._cluster_changed()

    def on_drain(self, conn: AgentSession) -> None:
        if conn.draining:
            return
        conn.draining = True
        conn.drain_deadline = self._clock.now() + self._settings.drain_timeout_s
        log.info("replica %s: draining", _name(conn.key))
        for record in self._models.values():
            if conn.key in record.replicas:
                record.next_retry_at = 0.0
                self._mark(record.name)

    # ------------------------------------------------------------------ reconcile loop

    async def run(self) -> None:
        """Reconcile dirty and timer-due models until cancelled."""
        while True:
            # A large pass is cut into slices so that agent streams, client calls and
            # /metrics are served in between.
            while self.reconcile(budget=_SLICE):  # noqa: ASYNC110 - a deliberate yield
                await asyncio.sleep(0)
            wake = self._next_timer() - self._clock.now()
            if wake > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races with the event being set, and shutdown would hang.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(wake, _IDLE_WAKE_S)):
                        await self._kick.wait()
            self._kick.clear()

    def reconcile(self, budget: int | None = None) -> bool:
        """One pass over the models that need work (at most `budget` of them), then drains,
        then the commands. Returns whether models were left for another pass."""
        now = self._clock.now()
        names = sorted(self._dirty | {n for n, at in self._timers.items() if at <= now})
        if budget is not None and len(names) > budget:
            names, rest = names[:budget], names[budget:]
        else:
            rest = []
        self._sync_usage()
        self._dirty = set(rest)
        for name in names:
            record = self._models.get(name)
            if record is not None:
                self._reconcile_guarded(record, now)
        self._finish_drains(now)
        self._forget_agents(now)
        self._flush()
        return bool(rest)

    def _sync_usage(self) -> None:
        """Recount the models changed since their last pass (every change marks them)."""
        for name in self._dirty:
            record = self._models.get(name)
            if record is None:
                self._usage.forget(name)
            else:
                self._usage.account(record)

    def _reconcile_guarded(self, record: ModelRecord, now: float) -> None:
        """One model's pass; if it fails (e.g. the state file cannot be written), none of
        its commands go out and the model is tried again after a back-off."""
        sent = len(self._outbox)
        before = copy.deepcopy(record)
        try:
            self._reconcile_model(record, now)
        except Exception:
            # Back to what was saved: nothing unsaved may be acted on, now or later.
            del self._outbox[sent:]
            self._models[record.name] = before
            self._usage.account(before)
            retry_s = self._backoff(max(before.attempts, 1))
            self._timers[record.name] = now + retry_s
            log.exception("model %s: reconcile failed; trying again in %.1fs", record.name, retry_s)

    def _reconcile_model(self, record: ModelRecord, now: float) -> None:
        before = _digest(record)
        self._expire(record, now)
        self._usage.forget(record.name)
        if record.deleted:
            self._terminate(record)
        else:
            self._place(record, now)
            self._retire(record)
            self._set_state(record)
        if record.name not in self._models:
            self._timers.pop(record.name, None)
            return
        self._timers[record.name] = self._timer(record)
        self._usage.account(record)
        if _digest(record) != before:
            record.updated_at = now
            self._store.save(record)
            self._publish(record)

    def _expire(self, record: ModelRecord, now: float) -> None:
        """Loads past their deadline fail; replicas gone past the grace period are lost."""
        grace = self._settings.disconnect_grace_s
        for replica in list(record.replicas.values()):
            if replica.state == CopyState.UNLOADED:
                del record.replicas[replica.key]
                continue
            if (
                replica.state == CopyState.UNLOADING
                and replica.deadline
                and now >= replica.deadline
            ):
                log.warning(
                    "model %s: asking %s again to unload v%d",
                    record.name,
                    _name(replica.key),
                    replica.version,
                )
                self._start_unload(record, replica)
                continue
            gone = replica.lost_since and now - replica.lost_since >= grace
            if replica.state in IN_FLIGHT and replica.deadline and now >= replica.deadline:
                self._load_failed(
                    record,
                    replica,
                    f"load timed out after {self._settings.load_timeout_s:g}s",
                    "timeout",
                )
                self._command(replica.key, Unload(record.name, replica.version))
            elif gone and replica.state in IN_FLIGHT:
                self._load_failed(record, replica, "agent did not come back", "agent_disconnected")
            elif gone:
                log.warning(
                    "model %s: replica %s lost (agent away for %.0fs)",
                    record.name,
                    _name(replica.key),
                    now - replica.lost_since,
                )
                del record.replicas[replica.key]
        for key, until in list(record.excluded_until.items()):
            if until <= now:
                del record.excluded_until[key]

    def _terminate(self, record: ModelRecord) -> None:
        for replica in list(record.replicas.values()):
            conn = self._agents.get(replica.key)
            if conn is None or not conn.connected or replica.state == CopyState.LOAD_FAILED:
                del record.replicas[replica.key]
            elif replica.state != CopyState.UNLOADING:
                self._start_unload(record, replica)
        if not record.replicas:
            record.state = ModelState.TERMINATED
            record.reason = "unloaded"
            del self._models[record.name]
            self._store.delete(record.name)
            self._publish(record)
            log.info("model %s: terminated", record.name)

    def _current(self, record: ModelRecord) -> list[ModelCopy]:
        """Replicas of the current version that hold or are loading it, on live agents."""
        return [
            r
            for r in record.replicas.values()
            if r.version == record.version and r.state in ACTIVE and not r.retire
        ]

    def _place(self, record: ModelRecord, now: float) -> None:
        current = self._current(record)
        staying = [r for r in current if not self._draining(r.key)]
        if len(staying) > record.spec.replicas:
            # Scaled down: keep the available ones, lowest replica first.
            ranked = sorted(staying, key=lambda r: (r.state != CopyState.AVAILABLE, r.key))
            for replica in ranked[record.spec.replicas :]:
                replica.retire = True
            return
        if len(staying) == record.spec.replicas or now < record.next_retry_at:
            return
        request = self._request(record, now)
        snapshot = self._snapshot(record)
        started = time.perf_counter()
        result = schedule(snapshot, request, self._settings.policy, now)
        self._metrics.placement_seconds.observe(time.perf_counter() - started)
        if record.attempts or any(
            r.state == CopyState.LOAD_FAILED and r.version == record.version
            for r in record.replicas.values()
        ):
            self._metrics.retries.inc()
        if isinstance(result, Rejection):
            self._rejected(record, result, now)
            return
        self._placed(record, result, now)

    def _request(self, record: ModelRecord, now: float) -> Request:
        spec = record.spec
        return Request(
            model=spec.name,
            version=record.version,
            requirements=frozenset(spec.requirements),
            server=spec.server or None,
            memory_bytes=spec.memory_bytes,
            gpu_memory_bytes=spec.gpu_memory_bytes,
            gpus=spec.gpus,
            replicas=spec.replicas,
            min_replicas=spec.replicas if spec.min_replicas is None else spec.min_replicas,
            excluded_until=tuple(sorted(record.excluded_until.items())),
        )

    def _rejected(self, record: ModelRecord, result: Rejection, now: float) -> None:
        self._metrics.placements.labels("rejected").inc()
        record.server_reasons = result.reasons
        record.reason = result.message
        record.attempts += 1
        record.next_retry_at = now + self._backoff(record.attempts)
        log.info(
            "model %s v%d: not placed (retry in %.1fs): %s",
            record.name,
            record.version,
            record.next_retry_at - now,
            result.message,
        )

    def _placed(self, record: ModelRecord, result: Placement, now: float) -> None:
        wanted = {(a.server, a.index): a for a in result.assignments}
        full = len(wanted) >= record.spec.replicas
        self._metrics.placements.labels("placed" if full else "partial").inc()
        record.server_reasons = result.reasons
        record.reason = "" if full else f"only {len(wanted)} of {record.spec.replicas} fit"
        record.attempts = 0 if full else record.attempts + 1
        if full:
            record.load_failures = 0
        record.next_retry_at = 0.0 if full else now + self._backoff(record.attempts)
        for key, assignment in sorted(wanted.items()):
            existing = record.replicas.get(key)
            if (
                existing is not None
                and existing.version == record.version
                and existing.state in ACTIVE
            ):
                existing.retire = False
                continue
            self._start_load(record, assignment, now)
        for replica in self._current(record):
            if replica.key not in wanted:
                replica.retire = True

    def _start_load(self, record: ModelRecord, assignment: Assignment, now: float) -> None:
        key = (assignment.server, assignment.index)
        old = record.replicas.get(key)
        replaced = (
            old.version if old and old.state in ACTIVE and old.version != record.version else 0
        )
        record.replicas[key] = ModelCopy(
            server=assignment.server,
            index=assignment.index,
            version=record.version,
            state=CopyState.LOAD_REQUESTED,
            device_uuids=assignment.device_uuids,
            deadline=now + self._settings.load_timeout_s,
            replaced_version=replaced,
        )
        log.info(
            "model %s v%d: loading on %s%s",
            record.name,
            record.version,
            _name(key),
            f" (GPUs {', '.join(assignment.device_uuids)})" if assignment.device_uuids else "",
        )
        self._command(key, record.spec.load_command(record.version, assignment.device_uuids))

    def _retire(self, record: ModelRecord) -> None:
        """Once the current version is available, unload old versions and retired replicas."""
        if record.available_count() < record.spec.required_replicas or any(
            r.version == record.version and r.state in IN_FLIGHT and not r.retire
            for r in record.replicas.values()
        ):
            return
        for replica in list(record.replicas.values()):
            stale = replica.version != record.version or replica.retire
            if replica.state == CopyState.LOAD_FAILED and replica.version != record.version:
                del record.replicas[replica.key]
            elif stale and replica.state in ACTIVE:
                conn = self._agents.get(replica.key)
                if conn is None or not conn.connected:
                    del record.replicas[replica.key]
                    continue
                replica.retire = False
                log.info(
                    "model %s: unloading v%d from %s",
                    record.name,
                    replica.version,
                    _name(replica.key),
                )
                self._start_unload(record, replica)

    def _start_unload(self, record: ModelRecord, replica: ModelCopy) -> None:
        replica.state = CopyState.UNLOADING
        replica.deadline = self._clock.now() + self._settings.load_timeout_s
        self._command(replica.key, Unload(record.name, replica.version))

    def _set_state(self, record: ModelRecord) -> None:
        current = [r for r in record.replicas.values() if r.version == record.version]
        loading = any(r.state in IN_FLIGHT for r in current)
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

    def _forget_agents(self, now: float) -> None:
        """Replicas gone for longer than the grace period leave the server list."""
        grace = self._settings.disconnect_grace_s
        for key, conn in list(self._agents.items()):
            if not conn.connected and now - conn.disconnected_at >= grace:
                del self._agents[key]

    def _finish_drains(self, now: float) -> None:
        for conn in self._agents.values():
            if not conn.draining or conn.drained or not conn.connected:
                continue
            held = [
                record
                for record in self._models.values()
                if conn.key in record.replicas
                and record.replicas[conn.key].state in ACTIVE | {CopyState.UNLOADING}
            ]
            # A model whose last placement was refused cannot go anywhere else: it does not
            # hold the drain up.
            waiting = [r for r in held if not r.attempts]
            if waiting and now < conn.drain_deadline:
                continue
            stranded = tuple(sorted(r.name for r in held))
            conn.drained = True
            self._command(conn.key, DrainComplete(stranded))
            log.info(
                "replica %s: drained%s",
                _name(conn.key),
                f", stranded: {', '.join(stranded)}" if stranded else "",
            )

    # ------------------------------------------------------------------ helpers

    def _reconcile_hello(
        self, conn: AgentSession, record: ModelRecord, loaded: LoadedModel | None
    ) -> None:
        key = conn.key
        replica = record.replicas.get(key)
        if replica is None:
            if loaded is None:
                return
            if self._adoptable(record, conn, loaded):
                record.replicas[key] = ModelCopy(
                    server=key[0],
                    index=key[1],
                    version=loaded.version,
                    state=CopyState.AVAILABLE,
                    footprint_bytes=dict(loaded.footprint_bytes),
                )
                log.info("model %s: adopted the copy already on %s", record.name, _name(key))
            else:
                self._command(key, Unload(record.name, loaded.version))
            return
        replica.lost_since = 0.0
        if loaded is not None and loaded.version == replica.version:
            if replica.state in ACTIVE:
                replica.state = CopyState.AVAILABLE
                replica.deadline = 0.0
                replica.footprint_bytes = dict(loaded.footprint_bytes)
            else:
                self._command(key, Unload(record.name, loaded.version))
        elif replica.state in IN_FLIGHT or (loaded is not None and replica.state in ACTIVE):
            # Still (or again) wanted here: ask once more; the agent answers at once when it
            # already holds this version, so nothing is loaded twice.
            replica.state = CopyState.LOAD_REQUESTED
            replica.deadline = self._clock.now() + self._settings.load_timeout_s
            self._command(key, record.spec.load_command(replica.version, replica.device_uuids))
        elif replica.state in (CopyState.AVAILABLE, CopyState.UNLOADING):
            del record.replicas[key]

    def _adoptable(self, record: ModelRecord, conn: AgentSession, loaded: LoadedModel) -> bool:
        """A copy found on a replica may stand for the current version there."""
        spec, server = record.spec, conn.hello.server
        if record.deleted or loaded.version != record.version:
            return False
        if spec.server and spec.server != server:
            return False
        if not set(spec.requirements) <= conn.hello.capabilities:
            return False
        current = self._current(record)
        return len(current) < spec.replicas and all(r.server == server for r in current)

    def _load_failed(self, record: ModelRecord, replica: ModelCopy, reason: str, kind: str) -> None:
        now = self._clock.now()
        log.warning(
            "model %s v%d on %s: load failed (%s): %s",
            record.name,
            replica.version,
            _name(replica.key),
            kind,
            reason,
        )
        if replica.replaced_version:
            # The agent may have kept the old version it was replacing: nobody tracks it now.
            self._command(replica.key, Unload(record.name, replica.replaced_version))
            replica.replaced_version = 0
        replica.state = CopyState.LOAD_FAILED
        replica.reason = reason
        replica.deadline = 0.0
        replica.lost_since = 0.0
        record.excluded_until[replica.key] = now + self._settings.exclusion_s
        record.load_failures += 1
        record.next_retry_at = 0.0
        self._metrics.load_failures.labels(kind).inc()
        self._mark(record.name)

    def _charge_footprint(self, conn: AgentSession, footprint: Mapping[str, int]) -> None:
        """Until the agent measures again, count a fresh load's memory as used."""
        for uuid, size in footprint.items():
            gpu = conn.gpus.get(uuid)
            if gpu is not None:
                conn.gpus[uuid] = replace(
                    gpu,
                    free_bytes=max(0, gpu.free_bytes - size),
                    used_bytes=gpu.used_bytes + size,
                )

    def _replica(
        self, conn: AgentSession, usage: _Usage, add_back: Mapping[str, int] | None = None
    ) -> Replica:
        """`add_back`: memory measured as used that belongs to the model being placed."""
        hello = conn.hello
        add_back = add_back or {}
        return Replica(
            server=hello.server,
            index=hello.index,
            capabilities=hello.capabilities,
            memory_bytes=hello.memory_bytes,
            overcommit_percentage=hello.overcommit_percentage,
            used_memory_bytes=usage.memory_bytes,
            gpus=tuple(
                Gpu(
                    uuid=gpu.uuid,
                    name=gpu.name,
                    index=gpu.index,
                    total_bytes=gpu.total_bytes,
                    free_bytes=min(gpu.total_bytes, gpu.free_bytes + add_back.get(uuid, 0)),
                    reserved_bytes=usage.reserved_bytes[uuid],
                )
                for uuid, gpu in sorted(conn.gpus.items())
            ),
            models=frozenset(usage.models),
            draining=conn.draining,
        )

    def _snapshot(self, record: ModelRecord) -> Snapshot:
        """The cluster as if `record` were on none of it (its contribution is removed)."""
        own = {r.key: r for r in record.replicas.values() if r.state in ACTIVE}
        replicas = []
        for key in sorted(self._agents):
            conn = self._agents[key]
            if not conn.connected:
                continue
            held = own.get(key)
            replica = self._replica(
                conn, self._usage.get(key), held.footprint_bytes if held else None
            )
            if held is not None:
                replica = replace(replica, models=replica.models | {record.name})
            replicas.append(replica)
        return Snapshot(tuple(replicas))

    def _draining(self, key: Key) -> bool:
        conn = self._agents.get(key)
        return conn is not None and conn.draining

    def _timer(self, record: ModelRecord) -> float:
        """When this model next needs attention without any event."""
        times = [r.deadline for r in record.replicas.values() if r.deadline]
        times += [
            r.lost_since + self._settings.disconnect_grace_s
            for r in record.replicas.values()
            if r.lost_since
        ]
        times += list(record.excluded_until.values())
        if not record.deleted and len(self._current(record)) < record.spec.replicas:
            times.append(record.next_retry_at)
        return min(times, default=float("inf"))

    def _next_timer(self) -> float:
        if self._dirty:
            return 0.0
        drains = [
            c.drain_deadline
            for c in self._agents.values()
            if c.draining and not c.drained and c.connected
        ]
        forget = [
            c.disconnected_at + self._settings.disconnect_grace_s
            for c in self._agents.values()
            if not c.connected
        ]
        return min([*self._timers.values(), *drains, *forget], default=float("inf"))

    def _backoff(self, attempts: int) -> float:
        initial, cap = self._settings.retry_initial_s, self._settings.retry_max_s
        return float(min(cap, initial * 2 ** min(attempts - 1, 30)))

    def _cluster_changed(self) -> None:
        """A server joined, left or freed memory: refused models are tried again now."""
        for record in self._models.values():
            if record.attempts:
                record.next_retry_at = 0.0
                self._mark(record.name)
        self._kick.set()

    def _mark(self, name: str) -> None:
        self._dirty.add(name)
        self._kick.set()

    def _command(self, key: Key, command: Command) -> None:
        self._outbox.append((key, command))

    def _flush(self) -> None:
        """Send the commands of this pass; the records they follow from are saved already."""
        outbox, self._outbox = self._outbox, []
        for key, command in outbox:
            conn = self._agents.get(key)
            if conn is None or not conn.connected:
                continue
            if not conn.send(command):
                log.error("replica %s: command queue full, disconnecting it", _name(key))
                conn.close("command queue full")
                self.disconnect(conn)

    def _publish(self, record: ModelRecord) -> None:
        if not self._watchers:
            return
        frozen = copy.deepcopy(record)
        for watcher in list(self._watchers):
            watcher.offer(frozen)

    def _commit(self, record: ModelRecord) -> None:
        """Persist a change made outside a reconcile pass; its commands go out in the next."""
        if record.name in self._models:
            record.updated_at = self._clock.now()
            self._store.save(record)
            self._publish(record)
        self._mark(record.name)

    def gauges(self) -> ClusterGauges:
        replicas = [view for _, view in self.replica_views() if view is not None]
        return ClusterGauges(
            models_by_state=dict(Counter(r.state.value for r in self._models.values())),
            connected_agents=len(replicas),
            replica_memory=[
                (r.server, r.index, r.capacity_bytes, r.available_memory_bytes) for r in replicas
            ],
            devices=[
                DeviceView(
                    r.server, r.index, g.uuid, g.name, g.total_bytes, g.free_bytes, g.reserved_bytes
                )
                for r in replicas
                for g in r.gpus
            ],
        )


def _scale_only(old: ModelSpec, new: ModelSpec) -> bool:
    return replace(old, replicas=new.replicas, min_replicas=new.min_replicas) == new


def _digest(record: ModelRecord) -> tuple[object, ...]:
    return (
        record.version,
        record.state,
        record.reason,
        record.server_reasons,
        record.deleted,
        tuple(
            (
                r.key,
                r.version,
                r.state,
                r.reason,
                r.device_uuids,
                r.retire,
                tuple(sorted(r.footprint_bytes.items())),
            )
            for r in sorted(record.replicas.values(), key=lambda r: r.key)
        ),
    )


def _holding(record: ModelRecord) -> Iterable[tuple[Key, ModelCopy]]:
    """The replicas where `record` takes memory: loaded, loading or still unloading."""
    for key, replica in record.replicas.items():
        if replica.state in ACTIVE or replica.state == CopyState.UNLOADING:
            yield key, replica


def _share(record: ModelRecord, replica: ModelCopy) -> _Share:
    """Host memory always; GPU memory promised to a load still in flight (the ledger)."""
    reserved: tuple[tuple[str, int], ...] = ()
    if replica.state in IN_FLIGHT:
        reserved = tuple((uuid, record.spec.gpu_memory_bytes) for uuid in replica.device_uuids)
    return _Share(record.spec.memory_bytes, reserved)
