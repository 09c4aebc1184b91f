"""The scheduler's shell: it applies what the model lifecycle decides.

Everything runs on one event loop. Client calls and agent messages go through the pure
lifecycle (`lifecycle.py`), which changes records and says which commands follow; this
shell saves the records, queues the commands and marks the models dirty. One reconcile loop
applies the agents' queued events, takes each dirty (or timer-due) model through its pass,
persists all of it in one transaction, and only then shows and sends what it decided.
Persisting first means a crash never leaves an agent doing something the state file does
not know about.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from contract.errors import GpuplaceError, NotFound, ResourceExhausted
from contract.logs import log_fields
from contract.names import replica_id, shown
from contract.protocol import Command, GpuDevice, Hello, ModelEvent, Welcome
from contract.quantity import format_bytes
from contract.redaction import scrub_uri
from placement import Replica, schedule
from scheduler_service import lifecycle
from scheduler_service.cluster import AgentSession, Cluster
from scheduler_service.lifecycle import Outcome
from scheduler_service.metrics import ClusterGauges, SchedulerMetrics, count_states
from scheduler_service.model import (
    ACTIVE,
    Artifact,
    Footprint,
    FootprintBook,
    Key,
    ModelRecord,
    ModelSpec,
    waiting_for,
)
from scheduler_service.pacing import Pacing
from scheduler_service.settings import SchedulerSettings
from scheduler_service.timers import Timers

log = logging.getLogger(__name__)
# Longest the reconcile loop sleeps when no timer is due sooner.
_IDLE_WAKE_S = 1.0
# Models reconciled before the loop yields to other tasks.
_SLICE = 200
# Refused models are tried again when the cluster changes, at most once per this many
# seconds: a storm of reconnecting agents costs one retry per window, not one per hello.
_RETRY_WINDOW_S = 1.0
# Requests and events waiting for the next pass at most (~10 MB); past it they are applied
# at once.
_MAX_INTAKE = 50_000
# The most turns of the event loop a woken pass gives to messages still arriving.
_MAX_YIELDS = 8


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class StateStore(Protocol):
    """Where the models are kept across restarts (`store.Store`: SQLite). A save or delete
    has happened once it returns; the service acts on nothing before that."""

    def save(self, record: ModelRecord) -> None: ...

    def delete(self, name: str) -> None: ...

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Saves and deletes inside happen together when it exits without an error; when
        it raises, none of them happened (each one that raised inside did not either)."""
        ...

    def load(self) -> list[ModelRecord]: ...

    def last_version(self, name: str) -> int:
        """The highest version the name ever had (0: never seen), deleted models included."""
        ...

    def save_footprint(self, footprint: Footprint) -> None:
        """Keep one learned footprint (per artifact and GPU product), replacing it."""
        ...

    def footprints(self) -> list[Footprint]:
        """Every learned footprint, as last saved."""
        ...

    def close(self) -> None: ...


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


@dataclass
class _Request:
    """A client's LoadModel or UnloadModel waiting for a pass: `decide` makes its change
    (or gives the record it leaves as it is); answered once the change is saved, through
    `future` when a call awaits it."""

    decide: Callable[[float], lifecycle.Change | ModelRecord]
    future: asyncio.Future[tuple[int, bool]] | None = None
    result: tuple[int, bool] | None = None
    error: Exception | None = None

    def give(self, result: tuple[int, bool] | None = None, error: Exception | None = None) -> None:
        self.result, self.error = (None, error) if error is not None else (result, None)
        if self.future is None or self.future.done():  # no caller, or it gave up
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)  # type: ignore[arg-type]

    def answer(self) -> tuple[int, bool]:
        """The answer given (a request applied at once), or its error raised."""
        if self.error is not None:
            raise self.error
        assert self.result is not None, "the request was not applied"
        return self.result


@dataclass
class _Work:
    """What one transaction decided, shown and acted on once it commits."""

    # Each model as it was before the transaction first changed it: what a failure restores.
    befores: dict[str, ModelRecord] = field(default_factory=dict)
    # In order: each event's and each pass's record (None: a model unknown) and outcome.
    decided: list[tuple[ModelRecord | None, Outcome]] = field(default_factory=list)
    # Events about a known model: its record, the agent, the outcome, and whether it
    # concerns the current version (what is learned).
    reported: list[tuple[ModelRecord, AgentSession, Outcome, bool]] = field(default_factory=list)
    # The agents whose news each model's change holds (by id: sessions are not hashable).
    sources: dict[str, dict[int, AgentSession]] = field(default_factory=dict)
    # Models changed by events and not saved yet: each is saved once, by its pass or last.
    unsaved: set[str] = field(default_factory=set)
    # Models whose save failed, and why: back to what was saved, nothing of theirs shown
    # or sent.
    failed: dict[str, Exception] = field(default_factory=dict)
    # Models the transaction created: a failure forgets them again.
    created: set[str] = field(default_factory=set)
    # Each request's model and its answer, given once the transaction commits.
    answers: list[tuple[str, _Request, tuple[int, bool]]] = field(default_factory=list)
    # An event said an unload ended: a replica has room again.
    freed: bool = False

    def remember(self, record: ModelRecord) -> None:
        """Keep `record` as it is now, unless the transaction changed it already."""
        if record.name not in self.befores:
            self.befores[record.name] = record.clone()

    def sessions(self, names: Iterable[str] | None = None) -> list[AgentSession]:
        """The agents whose news the models `names` (None: all) hold."""
        found: dict[int, AgentSession] = {}
        for name in self.sources if names is None else names:
            found.update(self.sources.get(name, {}))
        return list(found.values())


class SchedulerService:
    def __init__(
        self,
        settings: SchedulerSettings,
        store: StateStore,
        metrics: SchedulerMetrics,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._clock = clock or SystemClock()
        self._cluster = Cluster()
        self._watchers: set[Watcher] = set()
        self._models: dict[str, ModelRecord] = {m.name: m for m in store.load()}
        # The models of each artifact: what a learned footprint concerns.
        self._by_artifact: dict[Artifact, set[str]] = {}
        for record in self._models.values():
            self._by_artifact.setdefault(record.spec.artifact, set()).add(record.name)
        self._footprints = FootprintBook(store.footprints())
        # Copies read back wait for their agents: the grace counts from when the agent API
        # serves (`serving`), and moves on with each of the awaited replicas that says hello.
        self._restored_since = self._clock.now()
        self._awaited: set[Key] = set()
        # When each model next needs a pass without any event; refreshed after each of its
        # passes (any change in between marks it dirty, which wins).
        self._timers = Timers()
        self._dirty: set[str] = set()
        ctx = self._context()
        for record in self._models.values():
            lifecycle.restored(record)
            lifecycle.take_learned(record, ctx)
            self._awaited.update(lifecycle.current_keys(record))
            self._cluster.usage.account(record)
            if lifecycle.settled(record):
                # Available on every copy: nothing to do until its agents' grace ends.
                self._timers.put(
                    record.name, lifecycle.next_due(record, settings, self._restored_since)
                )
            else:
                self._dirty.add(record.name)
        # Models whose last placement was refused (or partial), and when they were last
        # tried again for a cluster change; `_retry_due`: a retry waiting for its window.
        self._refused: set[str] = set()
        self._retried_at, self._retry_due = -math.inf, math.inf
        self._kick = asyncio.Event()
        self._pacing = Pacing(time.monotonic())  # measured again from run()
        self._outbox: list[tuple[Key, Command]] = []
        # Client requests and agents' events, applied in order at the start of the next
        # pass, in its transaction.
        self._intake: list[_Request | tuple[AgentSession, ModelEvent]] = []
        metrics.watch_state(self.gauges)
        if self._models:
            log.info("restored %d models from %s", len(self._models), settings.db)

    # ------------------------------------------------------------------ client API

    def load_model(self, spec: ModelSpec) -> tuple[int, bool]:
        """Record the desired spec now (its own transaction); return its version and whether
        anything changed."""
        request = _Request(functools.partial(self._requested, spec))
        self._take(request)
        self._apply_intake()
        return request.answer()

    async def request_load(self, spec: ModelSpec) -> tuple[int, bool]:
        """`load_model`, answered once the next pass has saved it: the calls that arrive
        meanwhile share its transaction, and the model is placed in that same pass."""
        future: asyncio.Future[tuple[int, bool]] = asyncio.Future()
        self._take(_Request(functools.partial(self._requested, spec), future))
        return await future

    def plan_model(self, spec: ModelSpec) -> lifecycle.Plan:
        """A dry run of load_model: what it would change, and where the next pass would place
        the model now, from the live state. Decided on copies, over a view of the cluster
        without the model's own usage: nothing is saved, numbered, sent or published."""
        now = self._clock.now()
        found = self._requested(spec, now)
        self._metrics.dry_runs.inc()
        if isinstance(found, ModelRecord):
            return lifecycle.Plan(found.clone(), changed=False)
        self._sync_usage()
        view = self._cluster.without(spec.name)
        context = lifecycle.Context(view, self._settings, now, learned=self._footprints.of)
        result = lifecycle.plan(found.record, context)
        log.debug(
            "model %s: dry run of version %d: %s, loads on %s",
            spec.name,
            result.record.version,
            result.record.state,
            ", ".join(replica_id(*key) for key in sorted(result.loads)) or "none",
            extra=log_fields(model=spec.name, version=result.record.version),
        )
        return result

    def _requested(self, spec: ModelSpec, now: float) -> lifecycle.Change | ModelRecord:
        """The change a LoadModel of `spec` makes (not yet saved), or the current record
        when the spec is the one it holds."""
        current = self._models.get(spec.name)
        if current is None:
            if len(self._models) >= self._settings.max_models:
                raise ResourceExhausted(
                    f"the scheduler holds {len(self._models)} models, its limit (max_models)"
                )
            # Never reuse a version: a copy of a deleted model's old version may still sit
            # on an agent, and must not pass for the new one.
            return lifecycle.created(spec, self._store.last_version(spec.name) + 1, now)
        return lifecycle.respecified(current, spec, now) or current

    def unload_model(self, name: str) -> None:
        """Mark the model to go now (its own transaction)."""
        request = _Request(functools.partial(self._unload_requested, name))
        self._take(request)
        self._apply_intake()
        request.answer()

    async def request_unload(self, name: str) -> None:
        """`unload_model`, answered once the next pass has saved it."""
        future: asyncio.Future[tuple[int, bool]] = asyncio.Future()
        self._take(_Request(functools.partial(self._unload_requested, name), future))
        await future

    def _unload_requested(self, name: str, now: float) -> lifecycle.Change | ModelRecord:
        current = self.model(name)
        return lifecycle.unload_requested(current, now) or current

    def _apply_request(self, request: _Request, now: float, work: _Work) -> None:
        """A client's request, inside the transaction: the record replaced in memory, saved
        once (by its pass, placed in the same transaction, or at the end), answered and
        shown once committed."""
        try:
            found = request.decide(now)
        except GpuplaceError as exc:
            request.give(error=exc)  # refused: nothing changed
            return
        if isinstance(found, ModelRecord):
            work.answers.append((found.name, request, (found.version, False)))
            return
        record = found.record
        previous = self._models.get(record.name)
        if previous is None:
            if record.name not in work.befores:
                work.created.add(record.name)
        else:
            work.befores.setdefault(record.name, previous)  # decided on a copy: untouched
            self._by_artifact[previous.spec.artifact].discard(record.name)
        self._models[record.name] = record
        self._by_artifact.setdefault(record.spec.artifact, set()).add(record.name)
        work.unsaved.add(record.name)
        work.decided.append((record, Outcome(publish=True, notes=[found.note])))
        work.answers.append((record.name, request, (record.version, True)))
        self._mark(record.name)

    def model(self, name: str) -> ModelRecord:
        record = self._models.get(name)
        if record is None:
            raise NotFound(f"model {shown(name)} not found")
        return record

    def serving(self) -> None:
        """The agent API serves: the grace of the copies read back counts from now (a slow
        start must not eat into it)."""
        self._restored_since = self._clock.now()

    def explained(self, name: str) -> ModelRecord:
        """The model as `model` gives it; for a placed model whose placement came without
        reasons (the core words them only for refusals), a copy with them worded now: why
        each other server was not chosen, over the cluster as if the model were on none of
        it. What GetModelStatus (and so `explain model`) shows."""
        record = self.model(name)
        if record.server_reasons or not lifecycle.current_copies(record):
            return record
        self._sync_usage()
        # As a pass reads it: the model's own usage out of the accounts for the moment (no
        # copy of every account; nothing runs in between).
        self._cluster.usage.forget(name)
        try:
            snapshot = self._cluster.snapshot(record)
        finally:
            self._cluster.usage.account(record)
        request = lifecycle.placement_request(record)
        result = schedule(snapshot, request, self._settings.policy, self._clock.now())
        worded = copy.copy(record)
        worded.server_reasons = lifecycle.clipped(result.reasons)
        return worded

    def models_after(self, name: str) -> Iterator[ModelRecord]:
        """The models whose names come after `name` ("": all), by name."""
        names = sorted(self._models)
        for found in names[bisect.bisect_right(names, name) if name else 0 :]:
            yield self._models[found]

    def models(self) -> list[ModelRecord]:
        return [self._models[name] for name in sorted(self._models)]

    def agents(self) -> list[AgentSession]:
        return self._cluster.known()

    def replica_views(self) -> list[tuple[AgentSession, Replica | None]]:
        """Every known replica with its view as the placement core sees it now (None while
        disconnected), for server status; one usage table for all of them."""
        self._sync_usage()
        return self._cluster.views()

    def watch(self, name: str) -> Watcher:
        if name and name not in self._models:
            raise NotFound(f"model {shown(name)} not found")
        # The first snapshot does not count against the slow-consumer bound.
        watcher = Watcher(name, self._settings.watch_queue_size + len(self._models))
        for record in self.models():
            watcher.offer(record.clone())
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    # ------------------------------------------------------------------ agent API

    def connect(
        self,
        hello: Hello,
        send: Callable[[Command], bool],
        close: Callable[[str], None],
        peer: str = "",
    ) -> AgentSession:
        """An agent said hello: register it and reconcile what it holds with the records.
        Costs the models it reports and those with a copy there, not all of them. Raises
        AlreadyExists while another stream of the same replica is connected."""
        self._apply_intake()  # an older stream's news comes first
        now = self._clock.now()
        session = self._cluster.join(hello, send, close, now, peer)
        key = session.key
        if key in self._awaited:
            # A replica the state file expected is back: the others are on their way.
            self._awaited.discard(key)
            self._restored_since = now
        try:
            self._welcome(session, now)
        except Exception:
            # Not half connected (a replica shown connected with no stream behind it): what
            # was decided is saved; the agent's next hello tells the rest again.
            self.disconnect(session)
            raise
        return session

    def _welcome(self, session: AgentSession, now: float) -> None:
        hello, key = session.hello, session.key
        ctx = self._context(now)
        session.send(Welcome())
        reported = {
            loaded.name: replace(
                loaded, footprint_bytes=session.measured_on_own_devices(loaded.footprint_bytes)
            )
            for loaded in hello.loaded
        }
        for name in sorted(set(reported) | self._holding(key)):
            record = self._models.get(name)
            if record is None:
                continue
            found = reported.pop(name, None)
            if lifecycle.hello_confirms(record, key, found):
                continue
            self._decide(
                record, functools.partial(lifecycle.on_hello, key=key, loaded=found, ctx=ctx)
            )
        for loaded in reported.values():
            self._settle(None, lifecycle.on_hello(None, key, loaded, ctx))
        log.info(
            "replica %s connected: capabilities=%s memory=%d gpus=%d loaded=%d",
            replica_id(*key),
            shown(",".join(sorted(hello.capabilities)), 300),
            hello.memory_bytes,
            len(hello.devices),
            len(hello.loaded),
            extra=log_fields(replica=replica_id(*key)),
        )
        self._cluster_changed()

    def _holding(self, key: Key) -> set[str]:
        """The models that hold, load or unload a copy on replica `key`: those the usage
        table counts there, and those changed since their last pass with a copy there."""
        found = {name for name in self._cluster.usage.get(key).models if name in self._models}
        found.update(
            name for name in self._dirty if key in getattr(self._models.get(name), "copies", ())
        )
        return found

    def disconnect(self, session: AgentSession) -> None:
        if self._cluster.sessions.get(session.key) is not session or not session.connected:
            return
        self._apply_intake()  # what the agent said before it left counts
        ctx = self._context()
        session.leave(ctx.now)
        for name in sorted(self._holding(session.key)):  # the others have nothing to decide
            self._decide(self._models[name], lambda r: lifecycle.on_disconnect(r, session.key, ctx))
        log.info(
            "replica %s disconnected%s",
            replica_id(*session.key),
            " (drained)" if session.draining else "",
            extra=log_fields(replica=replica_id(*session.key)),
        )
        self._cluster_changed()

    def on_event(self, session: AgentSession, event: ModelEvent) -> None:
        """Queue an agent's news about one model: the next pass applies it, in order, inside
        its transaction (so a burst of events costs one commit, not one each)."""
        self._take((session, event))

    def _take(self, item: _Request | tuple[AgentSession, ModelEvent]) -> None:
        """Queue a client's request or an agent's event for the next pass."""
        if len(self._intake) >= _MAX_INTAKE:
            self._apply_intake()
        self._intake.append(item)
        self._kick.set()

    def _apply_intake(self) -> None:
        """Apply what is queued now, in a transaction of its own: a hello, a disconnect, a
        drain or a measurement of the same agent must find its earlier news applied, and a
        call answered at once its request saved."""
        if self._intake:
            # Commands it queues wait for the next pass: the kick the intake set is still
            # set (the loop clears it only right before a pass).
            self._commit(self._clock.now(), lambda: [])

    def _apply_event(
        self, session: AgentSession, event: ModelEvent, now: float, work: _Work
    ) -> None:
        """One queued event, inside the transaction: the record changes in memory and is
        saved once, by its pass or at the end (`work.unsaved`)."""
        record = self._models.get(event.model)
        ctx = self._context(now)
        event = replace(
            event,
            footprint_bytes=session.measured_on_own_devices(event.footprint_bytes),
            message=scrub_uri(event.message, record.spec.storage_uri if record else ""),
        )
        if record is None:
            outcome = lifecycle.on_event(None, session.key, event, ctx)
        else:
            work.remember(record)
            work.sources.setdefault(record.name, {})[id(session)] = session
            outcome = lifecycle.on_event(record, session.key, event, ctx)
            if outcome.publish:
                record.updated_at = now
                work.unsaved.add(record.name)
                self._mark(record.name)
            work.reported.append((record, session, outcome, event.version == record.version))
        work.decided.append((record, outcome))
        work.freed |= outcome.freed

    def footprints(self) -> list[Footprint]:
        """Every footprint learned so far."""
        return self._footprints.all()

    def _learn(
        self,
        record: ModelRecord,
        session: AgentSession,
        measured: Mapping[str, int],
        host_bytes: int | None,
    ) -> None:
        """A load of the model's current version ended and measured `measured` (bytes per
        device) and `host_bytes` (None: not measured): keep them per (artifact, GPU product)
        — the largest per device when it spans several of one product; host memory goes with
        the first product, or with "" for a load that took no GPU memory. The models of that
        artifact take the new figures at their next pass. A footprint that cannot be saved is
        logged and dropped: it only informs."""
        if not record.spec.storage_uri:
            return  # no artifact to know it by (a runtime made of its settings alone)
        by_product: dict[str, int] = {}
        for uuid, size in measured.items():
            device = session.gpus.get(uuid)
            if device is not None and size > 0:
                by_product[device.name] = max(by_product.get(device.name, 0), size)
        learned: dict[str, tuple[int | None, int | None]] = {
            product: (size, None) for product, size in by_product.items()
        }
        if host_bytes is not None:
            product = min(by_product, default="")
            learned[product] = (by_product.get(product), host_bytes)
        if not learned:
            return
        artifact, now = record.spec.artifact, self._clock.now()
        for product, (gpu, host) in sorted(learned.items()):
            footprint = self._footprints.measured(artifact, product, now, gpu=gpu, host=host)
            try:
                self._store.save_footprint(footprint)
            except Exception:
                log.exception(
                    "model %s: its measured footprint was not saved",
                    record.name,
                    extra=log_fields(model=record.name, version=record.version),
                )
                return
            self._footprints.keep(footprint)
            what = []
            if gpu is not None:
                what.append(
                    f"{format_bytes(gpu)} per device (learned {format_bytes(footprint.gpu.size)}"
                    f" from {footprint.gpu.samples} loads)"
                )
            if host is not None:
                what.append(
                    f"{format_bytes(host)} of host memory (learned "
                    f"{format_bytes(footprint.host.size)} from {footprint.host.samples} loads)"
                )
            log.info(
                "model %s: measured %s on %s",
                record.name,
                ", ".join(what),
                product or "a replica, no GPU memory taken",
                extra=log_fields(model=record.name, version=record.version),
            )
        ctx = self._context(now)
        for name in self._by_artifact.get(artifact, ()):
            # Shown at once; a pass only where what the model is placed with changed.
            if lifecycle.take_learned(self._models[name], ctx):
                self._mark(name)

    def on_resource_update(self, session: AgentSession, devices: Iterable[GpuDevice]) -> None:
        self._apply_intake()  # a load it reported is charged before it is measured
        if session.measured(devices):
            self._cluster_changed()

    def on_drain(self, session: AgentSession) -> None:
        self._apply_intake()
        if not session.start_drain(self._clock.now() + self._settings.drain_timeout_s):
            return
        log.info(
            "replica %s: draining",
            replica_id(*session.key),
            extra=log_fields(replica=replica_id(*session.key)),
        )
        for record in self._models.values():
            if lifecycle.on_drain(record, session.key):
                self._mark(record.name)

    def _decide(self, record: ModelRecord, decision: Callable[[ModelRecord], Outcome]) -> Outcome:
        """Apply an agent's news to `record` (the lifecycle changes it in place) and settle
        it. When the save fails, the record goes back to what was saved and the error goes
        on: the agent's stream ends, and its next hello tells the news again."""
        before = record.clone()
        try:
            outcome = decision(record)
            self._settle(record, outcome)
        except Exception:
            self._metrics.state_write_errors.inc()
            self._models[before.name] = before
            self._mark(before.name)
            raise
        return outcome

    def _settle(self, record: ModelRecord | None, outcome: Outcome) -> None:
        """Apply what an event decided: save and publish the record, then queue the commands
        (the next pass sends them)."""
        if record is not None and outcome.publish:
            record.updated_at = self._clock.now()
            self._store.save(record)
            self._publish(record)
            self._mark(record.name)
        self._act(outcome)
        if outcome.commands:
            self._kick.set()
        if outcome.freed:
            self._cluster_changed()

    def _act(self, outcome: Outcome) -> None:
        """Log, count and queue what a decision whose record is saved said."""
        _log_notes(outcome.notes)
        for kind in outcome.load_failures:
            self._metrics.load_failures.labels(kind).inc()
        if outcome.load_s is not None:
            self._metrics.load_seconds.observe(outcome.load_s)
        if outcome.available_s is not None:
            self._metrics.available_seconds.observe(outcome.available_s)
        if outcome.placement is not None:
            self._metrics.placement_seconds.observe(outcome.placement.seconds)
            self._metrics.placements.labels(outcome.placement.outcome).inc()
            if outcome.placement.retry:
                self._metrics.retries.inc()
        self._outbox.extend(outcome.commands)

    # ------------------------------------------------------------------ reconcile loop

    async def run(self) -> None:
        """Reconcile dirty and timer-due models until cancelled."""
        # Loop timing, on the monotonic clock; what passes before the loop does not count.
        self._pacing = Pacing(time.monotonic())
        while True:
            # A large pass is cut into slices so that agent streams, client calls and
            # /metrics are served in between.
            try:
                while self.reconcile(budget=_SLICE):  # noqa: ASYNC110 - a deliberate yield
                    await asyncio.sleep(0)
            except Exception:
                # Each model's failure is handled in its pass; this is a bug elsewhere. The
                # loop must outlive it: placement stopping for good is worse.
                log.exception("the reconcile loop failed; going on in %.0fs", _IDLE_WAKE_S)
                self._metrics.loop_errors.inc()
                await asyncio.sleep(_IDLE_WAKE_S)
                continue
            # A pass that took requests or events marked their models, which set the kick:
            # the loop goes straight back to gathering, and the next pass takes what came
            # meanwhile (or finds nothing, for 0.01 ms). So in a flood the loop does not wait
            # here, and the pacing counts as waiting only the time after passes that took no
            # news (timers, retries, drains, or nothing), not gRPC's handlers running.
            idle_from = time.monotonic()
            wake = self._next_timer() - self._clock.now()
            if wake > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races with the event being set, and shutdown would hang.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(wake, _IDLE_WAKE_S)):
                        await self._kick.wait()
            self._pacing.waited(idle_from, time.monotonic())
            # Woken: the calls and messages already received go into this pass too (one
            # transaction for all of them, not one each); flooded, those of a few ms more.
            delay = self._pacing.delay()
            if delay:
                await asyncio.sleep(delay)
            for _ in range(_MAX_YIELDS):
                queued = len(self._intake)
                await asyncio.sleep(0)  # a message gRPC has read may take a turn or two more
                if len(self._intake) == queued:
                    break
            self._kick.clear()

    def reconcile(self, budget: int | None = None) -> bool:
        """The queued events, then one pass over the models that need work (at most
        `budget` of them), then drains, then the commands. Returns whether models were left
        for another pass."""
        now = self._clock.now()
        if now >= self._retry_due:
            self._retry_refused(now)
        rest: list[str] = []

        def chosen() -> list[str]:
            """The models this pass takes, once the events have marked theirs."""
            names = sorted(self._dirty | self._timers.due(now))
            if budget is not None and len(names) > budget:
                names, rest[:] = names[:budget], names[budget:]
            self._sync_usage()
            self._dirty = set(rest)
            return names

        self._commit(now, chosen)
        self._finish_drains(now)
        self._cluster.forget_gone(now, self._settings.disconnect_grace_s)
        self._flush()
        return bool(rest)

    def _commit(self, now: float, chosen: Callable[[], list[str]]) -> None:
        """One transaction: the queued events, then the passes of the models `chosen` names;
        what they decided is shown and acted on once it is committed. Nothing to do: no
        transaction."""
        intake, self._intake = self._intake, []
        self._pacing.took(len(intake))
        names = [] if intake else chosen()
        if not intake and not names:
            return
        work = _Work()
        try:
            with self._store.batch():
                for item in intake:
                    if isinstance(item, _Request):
                        self._apply_request(item, now, work)
                    else:
                        self._apply_event(*item, now, work)
                if intake:
                    names = chosen()
                for name in names:
                    record = self._models.get(name)
                    if record is not None:
                        self._reconcile_guarded(record, now, work)
                for name in sorted(work.unsaved):
                    self._save_guarded(self._models[name], now, work)
        except Exception as exc:
            self._undo_pass(intake, names, work, now, exc)
            return
        for name, request, result in work.answers:
            request.give(result, work.failed.get(name))
        to_show: dict[str, ModelRecord] = {}  # each model once, as the transaction left it
        for record, outcome in work.decided:
            if record is None:
                self._act(outcome)
            elif record.name not in work.failed:
                if outcome.publish or outcome.terminated:
                    to_show[record.name] = record
                self._act(outcome)
        for record in to_show.values():
            if record.name not in self._dirty:  # its pass is still to come: shown after it
                self._publish(record)
        if work.freed:
            self._cluster_changed()
        for record, session, outcome, current in work.reported:
            if record.name in work.failed:
                continue
            if current:
                self._learn(record, session, outcome.footprint, outcome.host_bytes)
            session.charge(outcome.footprint)

    def _sync_usage(self) -> None:
        """Recount the models changed since their last pass (every change marks them)."""
        for name in self._dirty:
            record = self._models.get(name)
            if record is None:
                self._cluster.usage.forget(name)
            else:
                self._cluster.usage.account(record)

    def _reconcile_guarded(self, record: ModelRecord, now: float, work: _Work) -> None:
        """One model's pass, added to `work`; if it fails (e.g. its save), the model goes
        back to what was saved (see `_failed`)."""
        if record.name not in work.created:
            work.remember(record)
        try:
            outcome = self._reconcile_model(record, now, work)
        except Exception as exc:
            self._failed(record.name, now, work, exc)
            return
        work.decided.append((record, outcome))

    def _save_guarded(self, record: ModelRecord, now: float, work: _Work) -> None:
        """Save a model that requests or events changed and no pass saved (see `_failed`)."""
        try:
            self._store.save(record)
        except Exception as exc:
            self._failed(record.name, now, work, exc)
        work.unsaved.discard(record.name)

    def _failed(self, name: str, now: float, work: _Work, exc: Exception) -> None:
        """A model's change in this transaction could not be saved (its statement is undone):
        it goes back to what was saved (a model created here is gone again), nothing
        decided about it is shown or sent, the requests about it get the error, it is tried
        again after a back-off, and the agents whose news it held are closed (their next
        hello tells it again)."""
        log.error(
            "model %s: reconcile failed; trying again",
            name,
            exc_info=exc,
            extra=log_fields(model=name),
        )
        self._metrics.state_write_errors.inc()
        work.failed[name] = exc
        work.unsaved.discard(name)
        if name in work.created:
            self._drop(name)
        else:
            self._restore(work.befores[name], now)
        for session in work.sessions([name]):
            session.close("its news could not be saved; say hello again")

    def _drop(self, name: str) -> None:
        """Forget a model that was never saved."""
        record = self._models.pop(name, None)
        if record is not None:
            self._by_artifact[record.spec.artifact].discard(name)
        self._cluster.usage.forget(name)
        self._timers.discard(name)
        self._refused.discard(name)
        self._dirty.discard(name)

    def _restore(self, before: ModelRecord, now: float) -> None:
        """Back to what was saved: nothing unsaved may be acted on, now or later; tried
        again after a back-off."""
        self._models[before.name] = before
        self._by_artifact.setdefault(before.spec.artifact, set()).add(before.name)
        self._cluster.usage.account(before)
        self._note(before)
        retry_s = lifecycle.backoff(self._settings, max(before.attempts, 1))
        self._timers.put(before.name, now + retry_s)

    def _undo_pass(
        self,
        intake: list[_Request | tuple[AgentSession, ModelEvent]],
        names: list[str],
        work: _Work,
        now: float,
        exc: Exception,
    ) -> None:
        """The transaction did not commit (or did not even begin): every model of it goes
        back to what was saved, nothing it decided is shown or sent, and each is tried again
        after a back-off (those it never reached too). The requests it held get the error;
        the agents whose news it held are closed: their next hello tells it again."""
        self._metrics.state_write_errors.inc()
        for before in work.befores.values():
            self._restore(before, now)
        for name in work.created:
            self._drop(name)
        for item in intake:
            if isinstance(item, _Request) and item.error is None:
                item.give(error=exc)
        retry_s = lifecycle.backoff(self._settings, 1)
        for name in names:
            if name in self._models and name not in self._timers:
                self._timers.put(name, now + retry_s)
        log.error(
            "a pass could not be saved (%d requests and events, %d models); trying again",
            len(intake),
            len(names),
            exc_info=exc,
        )
        for session in work.sessions():
            session.close("its news could not be saved; say hello again")

    def _reconcile_model(self, record: ModelRecord, now: float, work: _Work) -> Outcome:
        """The lifecycle's pass over the model (a placement takes its own usage out of what it
        reads), saved in the transaction (with what events changed before it); shown and
        acted on once that commits."""
        outcome = lifecycle.step(record, self._context(now))
        if outcome.terminated:
            self._cluster.usage.forget(record.name)
            del self._models[record.name]
            self._by_artifact[record.spec.artifact].discard(record.name)
            self._timers.discard(record.name)
            self._refused.discard(record.name)
            self._store.delete(record.name)
        else:
            self._timers.put(
                record.name, lifecycle.next_due(record, self._settings, self._restored_since)
            )
            self._cluster.usage.account(record)
            self._note(record)
            if outcome.publish or record.name in work.unsaved:
                self._store.save(record)
        work.unsaved.discard(record.name)
        return outcome

    def _finish_drains(self, now: float) -> None:
        for session in self._cluster.draining_sessions():
            done = lifecycle.drain_verdict(
                session.key, self._models.values(), session.drain_deadline, now
            )
            if done is not None:
                session.finish_drain()
                self._outbox.append((session.key, done))
                log.info(
                    "replica %s: drained%s",
                    replica_id(*session.key),
                    f", stranded: {', '.join(done.stranded)}" if done.stranded else "",
                    extra=log_fields(replica=replica_id(*session.key)),
                )

    # ------------------------------------------------------------------ helpers

    def _context(self, now: float | None = None) -> lifecycle.Context:
        """What the lifecycle reads: this cluster, these settings, `now` (default: the clock)."""
        return lifecycle.Context(
            self._cluster,
            self._settings,
            self._clock.now() if now is None else now,
            stopwatch=time.perf_counter,
            restored_since=self._restored_since,
            learned=self._footprints.of,
        )

    def _next_timer(self) -> float:
        if self._dirty:
            return 0.0
        wakes = self._cluster.wake_times(self._settings.disconnect_grace_s)
        return min([self._timers.next(), self._retry_due, *wakes])

    def _cluster_changed(self) -> None:
        """A server joined, left or freed memory: refused models are tried again now, or at
        the end of the window when they were tried again less than a window ago."""
        if self._refused:
            now = self._clock.now()
            next_at = self._retried_at + _RETRY_WINDOW_S
            if now >= next_at:
                self._retry_refused(now)
            else:
                self._retry_due = next_at
        self._kick.set()

    def _retry_refused(self, now: float) -> None:
        self._retried_at, self._retry_due = now, math.inf
        for name in self._refused:
            record = self._models.get(name)
            if record is not None and lifecycle.on_cluster_changed(record):
                self._mark(name)

    def _note(self, record: ModelRecord) -> None:
        """Keep the set of refused models (what a cluster change tries again) up to date."""
        if record.attempts and record.name in self._models:
            self._refused.add(record.name)
        else:
            self._refused.discard(record.name)

    def _mark(self, name: str) -> None:
        self._dirty.add(name)
        self._kick.set()

    def _flush(self) -> None:
        """Send the commands of this pass; the records they follow from are saved already."""
        outbox, self._outbox = self._outbox, []
        for key, command in outbox:
            session = self._cluster.sessions.get(key)
            if session is None or not session.connected:
                continue
            try:
                sent = session.send(command)
            except Exception:  # a command that cannot be encoded: a bug, never the loop's end
                log.exception(
                    "replica %s: a %s command could not be sent",
                    replica_id(*key),
                    type(command).__name__,
                    extra=log_fields(
                        model=getattr(command, "model", None), replica=replica_id(*key)
                    ),
                )
                continue
            if not sent:
                log.error(
                    "replica %s: command queue full, disconnecting it",
                    replica_id(*key),
                    extra=log_fields(replica=replica_id(*key), reason="queue_full"),
                )
                session.close("command queue full")
                self.disconnect(session)

    def _publish(self, record: ModelRecord) -> None:
        if not self._watchers:
            return
        frozen = record.clone()
        for watcher in list(self._watchers):
            watcher.offer(frozen)

    def gauges(self) -> ClusterGauges:
        waiting = (waiting_for(r) for r in self._models.values())
        return ClusterGauges(
            models_by_state=count_states(r.state.value for r in self._models.values()),
            waiting=count_states(reason for reason in waiting if reason is not None),
            replicas=tuple(view for _, view in self.replica_views() if view is not None),
            gpu_memory_ratios={
                r.name: max(f.gpu.size for f in r.learned) / r.spec.gpu_memory_bytes
                for r in self._models.values()
                if r.spec.gpu_memory_bytes and any(f.gpu.samples for f in r.learned)
            },
            memory_ratios={
                r.name: max(f.host.size for f in r.learned) / r.spec.memory_bytes
                for r in self._models.values()
                if r.spec.memory_bytes and any(f.host.samples for f in r.learned)
            },
            gpu_placed=self._gpu_placed(),
        )

    def _gpu_placed(self) -> dict[tuple[str, int, str], int]:
        placed: dict[tuple[str, int, str], int] = {}
        for record in self._models.values():
            per_device = record.gpu_memory_bytes
            if not per_device:
                continue
            for held in record.copies.values():
                if held.state in ACTIVE:
                    for uuid in held.device_uuids:
                        where = (held.server, held.index, uuid)
                        placed[where] = placed.get(where, 0) + per_device
        return placed


# The lifecycle's lines keep its logger's name: filter and find them as before.
_lifecycle_log = logging.getLogger(lifecycle.__name__)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _log_notes(notes: Iterable[lifecycle.Note]) -> None:
    for note in notes:
        level = _LEVELS[note.level]
        if not _lifecycle_log.isEnabledFor(level):
            continue
        fields = log_fields(
            model=note.model,
            version=note.version,
            replica=replica_id(*note.key) if note.key else None,
            reason=note.reason,
        )
        _lifecycle_log.log(level, note.message, *note.args, extra=fields)
