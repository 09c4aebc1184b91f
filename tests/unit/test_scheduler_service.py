"""The service without a network: reconcile passes and agent events driven by hand, on a
fake clock. Each test pins down one path where a copy could be lost, leaked or stuck."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from contract.errors import AlreadyExists, NotFound, ResourceExhausted
from contract.protocol import (
    Command,
    DrainComplete,
    EventKind,
    GpuDevice,
    Hello,
    Load,
    LoadedModel,
    ModelEvent,
    Unload,
)
from placement import Placement, Policy, schedule
from scheduler_service import convert, lifecycle
from scheduler_service.cluster import AgentSession, UsageTable
from scheduler_service.metrics import SchedulerMetrics
from scheduler_service.model import CopyState, Footprint, ModelRecord, ModelState, validate_spec
from scheduler_service.service import SchedulerService, StateStore
from scheduler_service.settings import SchedulerSettings
from scheduler_service.store import Store

GiB = 2**30


@dataclass
class Clock:
    time: float = 1000.0

    def now(self) -> float:
        return self.time


@dataclass
class Agent:
    session: AgentSession
    sent: list[Command] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # why the scheduler ended its stream

    def loads(self) -> list[tuple[str, int]]:
        return [(c.model, c.version) for c in self.sent if isinstance(c, Load)]

    def unloads(self) -> list[tuple[str, int]]:
        return [(c.model, c.version) for c in self.sent if isinstance(c, Unload)]


class MemoryStore:
    """A `StateStore` in memory: what the service needs of its store, without SQLite. Like
    the real one, it keeps what is saved, not the record the service goes on changing."""

    def __init__(self) -> None:
        self.saved: dict[str, ModelRecord] = {}
        self.versions: dict[str, int] = {}
        self.learned: dict[tuple[object, str], Footprint] = {}

    def save(self, record: ModelRecord) -> None:
        self.saved[record.name] = deepcopy(record)
        self.versions[record.name] = record.version

    def delete(self, name: str) -> None:
        self.saved.pop(name, None)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Saves happen at once in memory; a failed commit is the real store's business."""
        yield

    def load(self) -> list[ModelRecord]:
        return [deepcopy(record) for _, record in sorted(self.saved.items())]

    def last_version(self, name: str) -> int:
        return self.versions.get(name, 0)

    def save_footprint(self, footprint: Footprint) -> None:
        self.learned[(footprint.artifact, footprint.product)] = footprint

    def footprints(self) -> list[Footprint]:
        return list(self.learned.values())

    def close(self) -> None:
        self.saved.clear()


class Harness:
    def __init__(self, tmp_path: Path, store: StateStore | None = None, **settings: Any) -> None:
        self.clock = Clock()
        self.settings = SchedulerSettings(db=tmp_path / "s.db", **settings)
        self.store = store or Store(self.settings.db)
        self.start()

    def start(self) -> None:
        """(Re)start the service on the store: what a restart keeps is what was saved."""
        self.service = SchedulerService(
            self.settings, self.store, SchedulerMetrics(CollectorRegistry()), self.clock
        )

    def connect(
        self,
        server: str,
        index: int = 0,
        capabilities: tuple[str, ...] = ("sklearn",),
        loaded: tuple[LoadedModel, ...] = (),
        devices: tuple[GpuDevice, ...] = (),
    ) -> Agent:
        agent = Agent(session=None)  # type: ignore[arg-type]

        def send(command: Command) -> bool:
            agent.sent.append(command)
            return True

        hello = Hello(
            server, index, frozenset(capabilities), 16 * GiB, 0, devices=devices, loaded=loaded
        )
        agent.session = self.service.connect(hello, send, agent.closed.append)
        self.service.reconcile()
        return agent

    def load(self, name: str, **fields: Any) -> int:
        version, _ = self.service.load_model(validate_spec(name, **fields))
        self.service.reconcile()
        return version

    def event(self, agent: Agent, kind: EventKind, name: str, version: int, msg: str = "") -> None:
        self.service.on_event(agent.session, ModelEvent(kind, name, version, msg))
        self.service.reconcile()

    def state(self, name: str) -> tuple[ModelState, dict[str, str]]:
        record = self.service.model(name)
        return record.state, {
            f"{r.server}-{r.index}": r.state.value for r in record.copies.values()
        }


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path, disconnect_grace_s=30, retry_max_s=10)


def test_a_budget_slices_a_large_pass_and_nothing_is_left_out(h: Harness) -> None:
    agent = h.connect("mlserver")
    for index in range(5):
        h.service.load_model(validate_spec(f"m{index}"))
    assert h.service.reconcile(budget=2) is True
    assert [name for name, _ in agent.loads()] == ["m0", "m1"]
    assert h.service.reconcile(budget=2) is True
    assert h.service.reconcile(budget=2) is False
    assert [name for name, _ in agent.loads()] == ["m0", "m1", "m2", "m3", "m4"]


def test_an_idle_pass_sends_nothing_again(h: Harness) -> None:
    agent = h.connect("mlserver")
    h.load("iris")
    count = len(agent.sent)
    assert h.service.reconcile() is False
    assert len(agent.sent) == count


def test_a_load_that_outlives_a_disconnect_is_kept_not_leaked(h: Harness) -> None:
    first = h.connect("a")
    h.load("iris")
    h.service.disconnect(first.session)  # mid-load: failed at once, placed again
    h.service.reconcile()
    # No other replica: the agent comes back empty, then its old load finishes.
    again = h.connect("a")
    h.event(again, EventKind.LOADED, "iris", 1)
    state, replicas = h.state("iris")
    assert (state, replicas) == (ModelState.AVAILABLE, {"a-0": "Available"})


def test_a_late_load_nobody_wants_is_unloaded(h: Harness) -> None:
    first = h.connect("a")
    second = h.connect("b")
    h.load("iris")
    holder = first if first.loads() else second
    other = second if holder is first else first
    h.event(holder, EventKind.LOADED, "iris", 1)
    # A LOADED for the same model from a replica that was never asked (or asked long ago).
    h.event(other, EventKind.LOADED, "iris", 1)
    assert other.unloads() == [("iris", 1)]
    assert h.state("iris")[1] == {holder.session.hello.server + "-0": "Available"}


def test_an_old_unloaded_answer_does_not_cancel_a_newer_load(h: Harness) -> None:
    agents = [h.connect("a", index) for index in range(2)]
    h.load("iris", replicas=2)
    for agent in agents:
        h.event(agent, EventKind.LOADED, "iris", 1)
    h.load("iris", replicas=1)  # scale in: replica 1 is asked to unload
    assert agents[1].unloads() == [("iris", 1)]
    h.load("iris", replicas=2)  # and back out before it answers: loaded there again
    assert agents[1].loads() == [("iris", 1), ("iris", 1)]
    h.event(agents[1], EventKind.UNLOADED, "iris", 1)  # the old answer arrives
    assert h.state("iris")[1] == {"a-0": "Available", "a-1": "LoadRequested"}
    h.event(agents[1], EventKind.LOADED, "iris", 1)
    assert h.state("iris") == (ModelState.AVAILABLE, {"a-0": "Available", "a-1": "Available"})


def test_a_failed_in_place_upgrade_unloads_the_old_version_it_replaced(h: Harness) -> None:
    agent = h.connect("a")
    h.load("iris", storage_uri="/models/v1")
    h.event(agent, EventKind.LOADED, "iris", 1)
    h.load("iris", storage_uri="/models/v2")
    assert agent.loads() == [("iris", 1), ("iris", 2)]
    h.event(agent, EventKind.LOAD_FAILED, "iris", 2, "bad artifact")
    # The agent may have kept v1; nothing tracks it any more, so it is unloaded.
    assert agent.unloads() == [("iris", 1)]


def test_a_recreated_model_gets_a_new_version_and_a_stale_copy_is_not_adopted(
    h: Harness,
) -> None:
    agent = h.connect("cpu", capabilities=("sklearn",))
    h.load("iris")
    h.event(agent, EventKind.LOADED, "iris", 1)
    h.service.disconnect(agent.session)
    h.service.unload_model("iris")
    h.service.reconcile()  # the agent is away: its copy is simply forgotten
    with pytest.raises(Exception, match="not found"):
        h.service.model("iris")
    version = h.load("iris", server="gpu", requirements=("model-on-gpu",))
    assert version == 2
    back = h.connect("cpu", loaded=(LoadedModel("iris", 1),))
    assert back.unloads() == [("iris", 1)]
    assert h.state("iris")[1] == {}


def test_a_copy_reported_by_an_agent_is_adopted_only_where_the_model_may_run(
    h: Harness,
) -> None:
    h.load("iris", server="gpu")
    wrong = h.connect("cpu", loaded=(LoadedModel("iris", 1),))
    assert wrong.unloads() == [("iris", 1)]
    right = h.connect("gpu", loaded=(LoadedModel("iris", 1),))
    assert right.loads() == [] and right.unloads() == []
    assert h.state("iris") == (ModelState.AVAILABLE, {"gpu-0": "Available"})


def test_a_failing_save_stops_neither_the_loop_nor_other_models(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = h.connect("a")
    h.service.load_model(validate_spec("m1"))
    h.service.load_model(validate_spec("m2"))
    save = h.store.save
    failures = {"m1": 1}

    def flaky(record: Any) -> None:
        if failures.get(record.name):
            failures[record.name] -= 1
            raise OSError("disk full")
        save(record)

    monkeypatch.setattr(h.store, "save", flaky)
    h.service.reconcile()
    # m1's pass failed: nothing it decided was sent; m2 went ahead.
    assert agent.loads() == [("m2", 1)]
    h.clock.time += 5
    h.service.reconcile()
    assert agent.loads() == [("m2", 1), ("m1", 1)]


def test_an_event_whose_save_fails_changes_nothing_and_its_news_comes_again(
    tmp_path: Path,
) -> None:
    """The record in memory is never ahead of the saved one: an agent's LOADED whose save
    fails leaves the copy LoadRequested (memory and store agree), and the error ends the
    agent's stream. Its reconnect is then a stream drop during a load: the copy its hello
    reports is kept."""
    store = MemoryStore()
    h = Harness(tmp_path, store=store)
    agent = h.connect("a")
    h.load("iris")
    save = store.save

    def full(record: ModelRecord) -> None:
        raise OSError("disk full")

    store.save = full  # type: ignore[method-assign]
    watcher = h.service.watch("iris")
    h.event(agent, EventKind.LOADED, "iris", 1)  # applied by the pass, in its transaction
    assert agent.closed == ["its news could not be saved; say hello again"]
    assert h.state("iris") == (ModelState.PROGRESSING, {"a-0": "LoadRequested"})
    shown = [watcher.queue.get_nowait() for _ in range(watcher.queue.qsize())]
    assert [r.state for r in shown] == [ModelState.PROGRESSING]  # the snapshot, nothing after
    assert store.saved["iris"].copies[("a", 0)].state == CopyState.LOAD_REQUESTED
    store.save = save  # type: ignore[method-assign]
    h.service.disconnect(agent.session)
    back = h.connect("a", loaded=(LoadedModel("iris", 1),))
    assert back.unloads() == [] and h.state("iris") == (ModelState.AVAILABLE, {"a-0": "Available"})
    memory, saved = h.service.model("iris"), store.saved["iris"]
    assert {k: c.state for k, c in memory.copies.items()} == {
        k: c.state for k, c in saved.copies.items()
    }


def test_a_pass_whose_save_fails_logs_nothing_it_decided(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lifecycle's lines are logged by the shell after the save: a rolled-back pass
    never says it did what it did not."""
    h.connect("a")
    h.service.load_model(validate_spec("iris"))

    def full(record: ModelRecord) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(h.store, "save", full)
    with caplog.at_level(logging.DEBUG):
        h.service.reconcile()
    assert "reconcile failed" in caplog.text
    assert "loading on" not in caplog.text
    monkeypatch.undo()
    h.clock.time += 5
    with caplog.at_level(logging.DEBUG):
        h.service.reconcile()
    assert "model iris v1: loading on a-0" in caplog.text


def test_an_unload_that_fails_is_asked_again(h: Harness) -> None:
    agent = h.connect("a")
    h.load("iris")
    h.event(agent, EventKind.LOADED, "iris", 1)
    h.service.unload_model("iris")
    h.service.reconcile()
    h.event(agent, EventKind.UNLOAD_FAILED, "iris", 1, "HTTP 500")
    record = h.service.model("iris")
    assert record.state == ModelState.TERMINATING
    assert "unload failed on a-0: HTTP 500" in record.reason
    h.clock.time += 11
    h.service.reconcile()
    assert agent.unloads() == [("iris", 1), ("iris", 1)]
    h.event(agent, EventKind.UNLOADED, "iris", 1)
    with pytest.raises(Exception, match="not found"):
        h.service.model("iris")


def test_a_drain_is_not_held_up_by_a_model_that_can_go_nowhere(h: Harness) -> None:
    agent = h.connect("s")
    h.load("pinned", server="s")
    h.event(agent, EventKind.LOADED, "pinned", 1)
    h.service.on_drain(agent.session)
    h.service.reconcile()
    done = [c for c in agent.sent if isinstance(c, DrainComplete)]
    assert [c.stranded for c in done] == [("pinned",)]
    record = h.service.model("pinned")
    assert record.state == ModelState.AVAILABLE
    assert "draining" in record.reason


def test_watching_more_models_than_the_queue_bound_does_not_overflow(tmp_path: Path) -> None:
    h = Harness(tmp_path, watch_queue_size=4)
    for index in range(10):
        h.service.load_model(validate_spec(f"m{index}"))
    watcher = h.service.watch("")
    assert not watcher.overflowed
    assert watcher.queue.qsize() == 10


def test_a_replica_gone_past_the_grace_period_leaves_the_server_list(h: Harness) -> None:
    agent = h.connect("a")
    h.service.disconnect(agent.session)
    h.clock.time += 31
    h.service.reconcile()
    assert h.service.agents() == []


def test_replica_states_of_a_finished_unload_are_not_kept(h: Harness) -> None:
    agent = h.connect("a")
    h.load("iris")
    h.event(agent, EventKind.LOADED, "iris", 1)
    h.service.unload_model("iris")
    h.service.reconcile()
    assert h.state("iris")[1] == {"a-0": CopyState.UNLOADING.value}
    h.event(agent, EventKind.UNLOADED, "iris", 1)
    assert h.service.models() == []


def test_after_a_restart_a_copy_is_kept_when_its_agent_comes_back_in_time(
    tmp_path: Path,
) -> None:
    """The service restarts from what its StateStore saved (here one in memory): a copy whose
    agent reports it within the grace is kept, not loaded again; the others move."""
    h = Harness(tmp_path, MemoryStore(), disconnect_grace_s=30)
    first = h.connect("a")
    for name in ("digits", "iris"):
        h.load(name)
        h.event(first, EventKind.LOADED, name, 1)
    h.start()
    assert h.state("iris") == (ModelState.AVAILABLE, {"a-0": "Available"})
    back = h.connect("a", loaded=(LoadedModel("iris", 1),))
    assert (back.loads(), back.unloads()) == ([("digits", 1)], [])
    h.start()
    other = h.connect("b")
    h.clock.time += 29
    h.service.reconcile()
    assert other.loads() == []
    h.clock.time += 2
    h.service.reconcile()
    assert other.loads() == [("digits", 1), ("iris", 1)]
    assert h.service.model("iris").version == 1


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def save(self, record: ModelRecord) -> None:
        self.writes += 1
        super().save(record)


def test_after_a_restart_the_grace_counts_from_serving_and_while_agents_come_back(
    tmp_path: Path,
) -> None:
    """A slow start does not eat into the grace, and each awaited agent that comes back
    gives the others another grace: a reconnect storm loses no copy whose agent is queued."""
    h = Harness(tmp_path, CountingStore(), disconnect_grace_s=30)
    agents = {server: h.connect(server) for server in ("a", "b", "c")}
    for server, agent in agents.items():
        h.load(f"m-{server}", server=server)
        h.event(agent, EventKind.LOADED, f"m-{server}", 1)
    h.start()
    h.clock.time += 40  # restoring took long: more than the grace
    h.service.serving()
    h.service.reconcile()
    h.clock.time += 25
    h.connect("a", loaded=(LoadedModel("m-a", 1),))
    h.clock.time += 25  # 50 s after serving, 25 after a came back: b and c still awaited
    h.service.reconcile()
    assert {h.state(f"m-{s}")[1].get(f"{s}-0") for s in "bc"} == {"Available"}
    h.connect("b", loaded=(LoadedModel("m-b", 1),))
    h.clock.time += 31  # nobody else came back for a whole grace: c is lost
    h.service.reconcile()
    assert h.state("m-b") == (ModelState.AVAILABLE, {"b-0": "Available"})
    assert h.state("m-c")[1] == {}


class CommitFails(Store):
    """A state file whose pass commits fail while `failing` (a full disk, say)."""

    failing = False
    locked = False  # the pass's transaction cannot even begin

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        if self.locked:
            raise sqlite3.OperationalError("database is locked")
        with super().batch():
            yield
            if self.failing:
                raise sqlite3.OperationalError("database or disk is full")


def test_a_pass_that_cannot_be_committed_sends_and_shows_nothing(tmp_path: Path) -> None:
    store = CommitFails(tmp_path / "s.db")
    h = Harness(tmp_path, store, disconnect_grace_s=30)
    agent = h.connect("a")
    watcher = h.service.watch("")
    h.service.load_model(validate_spec("iris"))  # saved at once: the client's answer
    store.failing = True
    h.service.reconcile()  # the pass placing it fails
    assert agent.loads() == [] and h.service.model("iris").copies == {}
    shown = [watcher.queue.get_nowait().state for _ in range(watcher.queue.qsize())]
    assert ModelState.PROGRESSING not in shown  # never published what was not saved
    assert Store(tmp_path / "s.db").load()[0].copies == {}
    store.failing = False
    h.clock.time += 60
    h.service.reconcile()
    assert agent.loads() == [("iris", 1)]
    assert set(Store(tmp_path / "s.db").load()[0].copies) == {("a", 0)}


def test_news_in_a_pass_that_cannot_be_committed_ends_its_agents_stream(tmp_path: Path) -> None:
    store = CommitFails(tmp_path / "s.db")
    h = Harness(tmp_path, store, disconnect_grace_s=30)
    agent, other = h.connect("a", 0), h.connect("a", 1)
    h.load("iris", replicas=2)
    store.failing = True
    h.event(agent, EventKind.LOADED, "iris", 1)
    assert agent.closed == ["its news could not be saved; say hello again"]
    assert other.closed == []  # it said nothing in that pass
    saved = Store(tmp_path / "s.db").load()[0]
    assert h.state("iris")[1] == {"a-0": "LoadRequested", "a-1": "LoadRequested"}
    assert {k: c.state for k, c in saved.copies.items()} == {
        k: c.state for k, c in h.service.model("iris").copies.items()
    }


def test_watchers_see_a_model_as_its_pass_leaves_it_never_between_an_event_and_its_pass(
    h: Harness,
) -> None:
    """An event's change is shown with the pass that follows it (which may undo it: a copy
    retired, a model being unloaded), never alone: a pass cut short by its budget shows the
    models it reached, the others after their own pass."""
    agent = h.connect("a")
    for name in ("m1", "m2"):
        h.service.load_model(validate_spec(name))
    h.service.reconcile()
    watcher = h.service.watch("")
    snapshot = watcher.queue.qsize()
    for _ in range(snapshot):
        watcher.queue.get_nowait()
    for name, version in agent.loads():
        h.service.on_event(agent.session, ModelEvent(EventKind.LOADED, name, version))
    assert h.service.reconcile(budget=1) is True  # both events applied, m1's pass only
    shown = [watcher.queue.get_nowait() for _ in range(watcher.queue.qsize())]
    assert [(r.name, r.state) for r in shown] == [("m1", ModelState.AVAILABLE)]
    h.service.reconcile()
    shown = [watcher.queue.get_nowait() for _ in range(watcher.queue.qsize())]
    assert [(r.name, r.state) for r in shown] == [("m2", ModelState.AVAILABLE)]


class CountingBatches(Store):
    transactions = 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        self.transactions += 1
        with super().batch():
            yield


def test_a_request_that_cannot_be_saved_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = CommitFails(tmp_path / "s.db")
    h = Harness(tmp_path, store, disconnect_grace_s=30)
    agent = h.connect("a")
    watcher = h.service.watch("")
    store.locked = True
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        h.service.load_model(validate_spec("iris"))
    store.locked = False
    h.clock.time += 60
    h.service.reconcile()
    assert agent.loads() == [] and watcher.queue.empty()
    with pytest.raises(NotFound):
        h.service.model("iris")
    assert h.service.load_model(validate_spec("iris")) == (1, True)  # its version unused


async def test_requests_waiting_for_a_pass_share_its_transaction_and_are_placed_in_it(
    tmp_path: Path,
) -> None:
    store = CountingBatches(tmp_path / "s.db")
    h = Harness(tmp_path, store)
    agent = h.connect("a")
    store.transactions = 0
    calls = [
        asyncio.ensure_future(h.service.request_load(validate_spec(f"m{number}")))
        for number in range(5)
    ]
    calls.append(asyncio.ensure_future(h.service.request_load(validate_spec("m0"))))
    calls.append(asyncio.ensure_future(h.service.request_unload("nobody")))
    await asyncio.sleep(0)
    assert not any(call.done() for call in calls)  # nothing is answered before it is saved
    h.service.reconcile()
    assert store.transactions == 1
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert answers[:6] == [(1, True)] * 5 + [(1, False)]
    assert isinstance(answers[6], NotFound)
    assert sorted(agent.loads()) == [(f"m{number}", 1) for number in range(5)]
    assert len(Store(tmp_path / "s.db").load()) == 5


def test_a_burst_of_events_and_the_passes_they_cause_are_one_transaction(
    tmp_path: Path,
) -> None:
    store = CountingBatches(tmp_path / "s.db")
    h = Harness(tmp_path, store)
    agent = h.connect("a")
    for number in range(20):
        h.service.load_model(validate_spec(f"m{number}"))
    h.service.reconcile()
    store.transactions = 0
    for name, version in agent.loads():
        h.service.on_event(agent.session, ModelEvent(EventKind.LOADED, name, version))
    h.service.reconcile()
    assert store.transactions == 1
    assert {h.state(f"m{number}")[0] for number in range(20)} == {ModelState.AVAILABLE}
    assert all(r.state == ModelState.AVAILABLE for r in Store(tmp_path / "s.db").load())


def test_a_pass_whose_transaction_cannot_begin_leaves_no_model_behind(tmp_path: Path) -> None:
    store = CommitFails(tmp_path / "s.db")
    h = Harness(tmp_path, store, disconnect_grace_s=30)
    agent = h.connect("a")
    h.service.load_model(validate_spec("iris"))
    store.locked = True
    h.service.reconcile()
    assert agent.loads() == []
    store.locked = False
    h.clock.time += 60  # past the back-off: tried again, not forgotten
    h.service.reconcile()
    assert agent.loads() == [("iris", 1)]


def test_only_an_awaited_replica_moves_the_restart_grace_on(tmp_path: Path) -> None:
    """A replica the state file did not expect (or one back already) saying hello again
    and again must not keep a dead replica's copies alive."""
    h = Harness(tmp_path, MemoryStore(), disconnect_grace_s=60)
    dead = h.connect("dead")
    h.load("m", server="dead")
    h.event(dead, EventKind.LOADED, "m", 1)
    h.start()
    h.service.serving()
    other = None
    for _ in range(3):
        h.clock.time += 50
        if other is not None:
            h.service.disconnect(other.session)
        other = h.connect("other")  # not awaited: a new replica, reconnecting every 50 s
        h.service.reconcile()
    assert h.state("m")[1] == {}  # dead-0 was lost 60 s after serving


def test_a_second_live_agent_of_one_replica_is_refused_saying_why(h: Harness) -> None:
    """Two live agents with one POD_NAME must not take the replica from each other: the
    second is refused while the first's stream is open, and gets in once it has ended."""
    first = h.connect("mlserver")
    h.load("iris")
    with pytest.raises(AlreadyExists, match=r"mlserver-0 is connected already .*POD_NAME"):
        h.connect("mlserver")
    assert first.session.connected and h.state("iris")[1] == {"mlserver-0": "LoadRequested"}
    h.service.disconnect(first.session)
    second = h.connect("mlserver")
    assert second.session.connected


def test_a_hello_that_cannot_be_recorded_leaves_no_replica_half_connected(
    tmp_path: Path,
) -> None:
    """A full disk while a hello is handled: the replica is not shown connected with no
    stream behind it; its next hello, once the disk has room, gets in."""
    store = MemoryStore()
    h = Harness(tmp_path, store=store)
    first = h.connect("a")
    h.load("iris")
    h.event(first, EventKind.LOADED, "iris", 1)
    h.service.disconnect(first.session)
    save = store.save

    def full(record: ModelRecord) -> None:
        raise OSError("disk full")

    store.save = full  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        h.connect("a", loaded=(LoadedModel("iris", 2),))  # an unknown version: decided
    assert [s.connected for s in h.service.agents()] == [False]
    store.save = save  # type: ignore[method-assign]
    back = h.connect("a", loaded=(LoadedModel("iris", 1),))
    assert back.session.connected and h.state("iris")[1] == {"a-0": "Available"}


def test_an_agents_footprint_counts_only_on_its_own_devices_and_within_their_size(
    h: Harness,
) -> None:
    """A footprint on a device the replica does not have, or larger than the device, is not
    believed: it would be charged there and learned for every model of the artifact."""
    device = GpuDevice("GPU-1", "H100", 0, 80 * GiB, 80 * GiB, 0)
    agent = h.connect("gpu", capabilities=("sklearn",), devices=(device,))
    h.load("iris", storage_uri="gs://b/iris", gpu_memory="1Gi")
    huge = {"GPU-1": 2**60, "GPU-elsewhere": GiB}
    h.service.on_event(agent.session, ModelEvent(EventKind.LOADED, "iris", 1, footprint_bytes=huge))
    h.service.reconcile()
    assert h.service.model("iris").copies[("gpu", 0)].footprint_bytes == {"GPU-1": 80 * GiB}
    assert agent.session.gpus["GPU-1"].used_bytes == 80 * GiB  # never past the device
    assert [f.gpu.size for f in h.service.footprints()] == [80 * GiB]


def test_a_storm_of_cluster_changes_tries_a_refused_model_once_per_window(h: Harness) -> None:
    h.connect("a")
    h.load("huge", memory="100Gi")
    record = h.service.model("huge")
    assert record.state == ModelState.SCHEDULE_FAILED and record.attempts == 1
    h.connect("b")  # the first change: tried again at once
    assert h.service.model("huge").attempts == 2
    for server in "cdefg":  # the rest of the storm, within the window: once, at its end
        h.connect(server)
    assert h.service.model("huge").attempts == 2
    h.clock.time += 1.0
    h.service.reconcile()
    assert h.service.model("huge").attempts == 3
    assert "g: needs 100 GiB host memory" in h.service.model("huge").reason


def test_a_hello_that_finds_its_copies_as_they_were_writes_nothing(tmp_path: Path) -> None:
    store = CountingStore()
    h = Harness(tmp_path, store, disconnect_grace_s=30)
    agent = h.connect("a")
    for name in ("digits", "iris"):
        h.load(name)
        h.event(agent, EventKind.LOADED, name, 1)
    h.start()
    before = store.writes
    back = h.connect("a", loaded=(LoadedModel("digits", 1), LoadedModel("iris", 1)))
    h.service.reconcile()
    assert store.writes == before
    assert (back.loads(), back.unloads()) == ([], [])
    assert h.state("iris") == (ModelState.AVAILABLE, {"a-0": "Available"})


# ------------------------------------------------------------------ replicas as in Seldon


def test_without_min_replicas_too_few_replicas_is_a_failure_saying_how_many_fit(
    h: Harness,
) -> None:
    agent = h.connect("a")
    h.load("iris", replicas=2)
    record = h.service.model("iris")
    assert record.state == ModelState.SCHEDULE_FAILED
    assert record.reason == "a: only 1 of 2 requested replicas fit; the server has 1 connected"
    assert agent.loads() == []


def test_with_min_replicas_as_many_as_fit_are_placed_and_the_rest_when_room_comes(
    h: Harness,
) -> None:
    first = h.connect("a")
    h.load("iris", replicas=2, min_replicas=1)
    h.event(first, EventKind.LOADED, "iris", 1)
    record = h.service.model("iris")
    assert (record.state, record.available_count()) == (ModelState.AVAILABLE, 1)
    assert record.reason == "partial: 1/2 replicas fit (minReplicas 1); the rest is retried"
    second = h.connect("a", 1)  # a replica joins: the rest is placed at once
    assert second.loads() == [("iris", 1)]
    h.event(second, EventKind.LOADED, "iris", 1)
    record = h.service.model("iris")
    assert (record.state, record.available_count(), record.reason) == (
        ModelState.AVAILABLE,
        2,
        "",
    )


# ------------------------------------------------------------------ artifactVersion, namespace


def test_a_changed_artifact_version_is_a_new_version_loaded_again(h: Harness) -> None:
    agent = h.connect("a")
    h.load("iris", storage_uri="/models/iris", artifact_version=1)
    h.event(agent, EventKind.LOADED, "iris", 1)
    assert h.load("iris", storage_uri="/models/iris", artifact_version=2) == 2
    assert agent.loads() == [("iris", 1), ("iris", 2)]
    h.event(agent, EventKind.LOADED, "iris", 2)
    assert h.state("iris") == (ModelState.AVAILABLE, {"a-0": "Available"})
    assert h.service.model("iris").spec.artifact_version == 2


def test_a_changed_namespace_alone_is_saved_and_reloads_nothing(h: Harness) -> None:
    agent = h.connect("a")
    h.load("iris", namespace="team-a")
    h.event(agent, EventKind.LOADED, "iris", 1)
    assert h.service.load_model(validate_spec("iris", namespace="seldon-mesh")) == (1, True)
    h.service.reconcile()
    assert (agent.loads(), agent.unloads()) == ([("iris", 1)], [])
    h.start()  # what was saved
    assert h.service.model("iris").spec.namespace == "seldon-mesh"
    assert h.state("iris") == (ModelState.AVAILABLE, {"a-0": "Available"})


def test_a_state_file_written_before_artifact_version_and_namespace_still_loads(
    h: Harness,
) -> None:
    agent = h.connect("a")
    h.load("iris", replicas=1, min_replicas=1)
    h.event(agent, EventKind.LOADED, "iris", 1)
    # What an older scheduler saved: a spec without the keys added since.
    with contextlib.closing(sqlite3.connect(h.settings.db)) as db, db:
        (text,) = db.execute("SELECT spec FROM models WHERE name='iris'").fetchone()
        old = json.loads(text)
        for key in ("artifact_version", "namespace", "secret_name"):
            del old[key]
        db.execute("UPDATE models SET spec=? WHERE name='iris'", (json.dumps(old),))
    h.start()
    record = h.service.model("iris")
    assert record.spec == validate_spec("iris", replicas=1, min_replicas=1)
    assert (record.state, record.version) == (ModelState.AVAILABLE, 1)
    assert h.service.load_model(validate_spec("iris", replicas=1, min_replicas=1)) == (1, False)


# ------------------------------------------------------------------ dry run


@dataclass
class Seen:
    """Everything a dry run must leave as it is."""

    models: list[ModelRecord]
    saved: list[ModelRecord]
    usage: dict[tuple[str, int], tuple[int, dict[str, int], set[str]]]
    sent: list[int]
    published: int
    placements: float
    versions: dict[str, int]


def seen(h: Harness, agents: list[Agent], watcher: Any) -> Seen:
    h.service.replica_views()  # the usage table as every reader sees it
    registry = h.service._metrics.registry
    return Seen(
        models=deepcopy(h.service.models()),
        saved=h.store.load(),
        usage=_normal(h.service._cluster.usage),
        sent=[len(agent.sent) for agent in agents],
        published=watcher.queue.qsize(),
        placements=sum(
            registry.get_sample_value("gpuplace_scheduler_placements_total", {"outcome": o}) or 0
            for o in ("placed", "partial", "rejected")
        ),
        versions={name: h.store.last_version(name) for name in ("iris", "digits")},
    )


@pytest.fixture
def busy(h: Harness) -> tuple[Harness, list[Agent]]:
    """Two replicas of 16 GiB; digits takes 12 GiB of a-0."""
    agents = [h.connect("a", index) for index in range(2)]
    h.load("digits", memory="12Gi")
    h.event(agents[0], EventKind.LOADED, "digits", 1)
    return h, agents


DRY_RUNS = [
    pytest.param(
        {"name": "iris", "memory": "8Gi", "replicas": 2, "min_replicas": 1},
        (1, True, ModelState.PROGRESSING, {("a", 1)}),
        "partial: 1/2 replicas fit (minReplicas 1); the rest is retried",
        id="new-model-partial",
    ),
    pytest.param(
        {"name": "iris", "memory": "8Gi", "replicas": 2},
        (1, True, ModelState.SCHEDULE_FAILED, set()),
        "a: only 1 of 2 requested replicas fit: replica 0: needs 8 GiB host memory, "
        "4 GiB available",
        id="new-model-refused",
    ),
    pytest.param(
        # Its own 12 GiB are not counted against it: a new version reloads in place.
        {"name": "digits", "memory": "12Gi", "storage_uri": "/models/digits-v2"},
        (2, True, ModelState.PROGRESSING, {("a", 0)}),
        "",
        id="new-version-in-place",
    ),
    pytest.param(
        {"name": "digits", "memory": "12Gi", "replicas": 2},
        (1, True, ModelState.PROGRESSING, {("a", 1)}),
        "",
        id="scaled",
    ),
    pytest.param(
        {"name": "digits", "memory": "12Gi"},
        (1, False, ModelState.AVAILABLE, set()),
        "",
        id="unchanged",
    ),
]


@pytest.mark.parametrize(("spec", "expected", "reason"), DRY_RUNS)
def test_a_dry_run_plans_from_the_live_state_and_changes_nothing(
    busy: tuple[Harness, list[Agent]],
    spec: dict[str, Any],
    expected: tuple[int, bool, ModelState, set[tuple[str, int]]],
    reason: str,
) -> None:
    h, agents = busy
    watcher = h.service.watch("")
    before = seen(h, agents, watcher)
    plan = h.service.plan_model(validate_spec(**spec))
    assert (plan.record.version, plan.changed, plan.record.state, set(plan.loads)) == expected
    assert plan.record.reason == reason
    h.service.reconcile()
    assert seen(h, agents, watcher) == before
    registry = h.service._metrics.registry
    assert registry.get_sample_value("gpuplace_scheduler_dry_runs_total") == 1


def test_a_dry_run_shows_where_an_unchanged_model_is(busy: tuple[Harness, list[Agent]]) -> None:
    h, _ = busy
    plan = h.service.plan_model(validate_spec("digits", memory="12Gi"))
    assert not plan.changed
    assert {key: c.state for key, c in plan.record.copies.items()} == {
        ("a", 0): CopyState.AVAILABLE
    }


def test_a_dry_run_then_the_real_load_does_what_it_planned(
    busy: tuple[Harness, list[Agent]],
) -> None:
    h, agents = busy
    spec = validate_spec("iris", memory="8Gi", replicas=2, min_replicas=1)
    plan = h.service.plan_model(spec)
    h.service.load_model(spec)
    h.service.reconcile()
    assert [agent.session.key for agent in agents if ("iris", 1) in agent.loads()] == sorted(
        plan.loads
    )


def test_a_dry_run_is_refused_as_the_real_load_is(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_models=1)
    h.load("digits")
    with pytest.raises(ResourceExhausted):
        h.service.plan_model(validate_spec("iris"))


def _normal(table: UsageTable) -> dict[tuple[str, int], tuple[int, dict[str, int], set[str]]]:
    return {
        key: (u.memory_bytes, {k: v for k, v in u.reserved_bytes.items() if v}, set(u.models))
        for key, u in table.by_key.items()
        if u.memory_bytes or any(u.reserved_bytes.values()) or u.models
    }


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("load"), st.integers(0, 2), st.integers(1, 2), st.booleans()),
        st.tuples(st.just("unload"), st.integers(0, 2)),
        st.tuples(
            st.sampled_from(["loaded", "failed", "unloaded"]), st.integers(0, 2), st.integers(0, 2)
        ),
        st.tuples(st.sampled_from(["disconnect", "reconnect", "drain"]), st.integers(0, 2)),
        st.tuples(st.just("resources"), st.integers(0, 2), st.integers(0, 80)),
        st.tuples(st.just("tick"), st.floats(0, 60)),
        st.tuples(st.just("plan"), st.integers(0, 2), st.integers(1, 3)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_the_usage_table_always_equals_a_full_recount(ops: list[tuple[Any, ...]]) -> None:
    """Kept model by model for speed, it must never drift from counting everything again."""
    # The usage table does not depend on the store: one in memory will do (and is quick).
    h = Harness(Path("unused"), MemoryStore(), disconnect_grace_s=30, load_timeout_s=40)
    agents = [gpu_agent(h, index) for index in range(3)]
    for op in ops:
        kind = op[0]
        if kind == "load":
            gpu: dict[str, Any] = {"gpu_memory": "1Gi"} if op[3] else {}
            h.service.load_model(validate_spec(f"m{op[1]}", replicas=op[2], memory="1Gi", **gpu))
        elif kind == "unload":
            with contextlib.suppress(NotFound):
                h.service.unload_model(f"m{op[1]}")
        elif kind in ("loaded", "failed", "unloaded"):
            agent, name = agents[op[1]], f"m{op[2]}"
            replica = (
                h.service.model(name).copies.get(agent.session.key)
                if name in {m.name for m in h.service.models()}
                else None
            )
            if agent.session.connected and replica is not None:
                event = {
                    "loaded": EventKind.LOADED,
                    "failed": EventKind.LOAD_FAILED,
                    "unloaded": EventKind.UNLOADED,
                }[kind]
                h.service.on_event(agent.session, ModelEvent(event, name, replica.version))
        elif kind == "disconnect":
            h.service.disconnect(agents[op[1]].session)
        elif kind == "reconnect" and not agents[op[1]].session.connected:
            agents[op[1]] = gpu_agent(h, op[1])
        elif kind == "drain" and agents[op[1]].session.connected:
            h.service.on_drain(agents[op[1]].session)
        elif kind == "resources" and agents[op[1]].session.connected:
            free = op[2] * GiB
            device = GpuDevice(f"GPU-{op[1]}", "NVIDIA H100", 0, 80 * GiB, free, 80 * GiB - free)
            h.service.on_resource_update(agents[op[1]].session, [device])
        elif kind == "plan":
            # A dry run between any two changes leaves the records and the accounts alone.
            h.service.replica_views()
            records, usage = deepcopy(h.service.models()), _normal(h.service._cluster.usage)
            h.service.plan_model(validate_spec(f"m{op[1]}", replicas=op[2], memory="1Gi"))
            assert h.service.models() == records
            assert _normal(h.service._cluster.usage) == usage
        else:
            h.clock.time += op[1]
        # What placements read between passes (after the changes are synced) and after.
        h.service.replica_views()
        assert _normal(h.service._cluster.usage) == _recount(h.service)
        _index_agrees(h)
        h.service.reconcile()
        assert _normal(h.service._cluster.usage) == _recount(h.service)
        _index_agrees(h)


def gpu_agent(h: Harness, index: int) -> Agent:
    return h.connect("s", index, capabilities=("sklearn", "gpu"), devices=(h100(f"GPU-{index}"),))


PROBES = (
    validate_spec("probe", memory="1Gi"),
    validate_spec("probe", memory="1Gi", replicas=2),
    validate_spec("probe", gpu_memory="30Gi"),
)


def _index_agrees(h: Harness) -> None:
    """The cluster's index, refreshed replica by replica as sessions and usage change,
    places as the reference does over views built afresh: for a new model, and for each
    model there is (its own usage taken out, as around its pass)."""
    cluster, now = h.service._cluster, h.clock.time
    records = [ModelRecord(spec=spec, version=1) for spec in PROBES] + h.service.models()
    for record in records:
        cluster.usage.forget(record.name)
        try:
            request = lifecycle.placement_request(record)
            for policy in Policy:
                expected = schedule(cluster.snapshot(record), request, policy, now)
                found = cluster.place(record, request, policy, now)
                if isinstance(found, Placement) and not found.reasons:
                    assert isinstance(expected, Placement)
                    expected = replace(expected, reasons=())
                assert found == expected
        finally:
            if record.name != "probe":
                cluster.usage.account(record)


def _recount(
    service: SchedulerService,
) -> dict[tuple[str, int], tuple[int, dict[str, int], set[str]]]:
    table = UsageTable()
    for record in service.models():
        table.account(record)
    return _normal(table)


# ------------------------------------------------------------------ learned footprints

URI = "gs://models/llama"


def h100(uuid: str, index: int = 0) -> GpuDevice:
    return GpuDevice(uuid, "NVIDIA H100", index, 80 * GiB, 80 * GiB, 0)


def loaded(
    h: Harness,
    agent: Agent,
    name: str,
    version: int,
    footprint: dict[str, int],
    *,
    host_bytes: int | None = None,
) -> None:
    event = ModelEvent(
        EventKind.LOADED, name, version, footprint_bytes=footprint, host_bytes=host_bytes
    )
    h.service.on_event(agent.session, event)
    h.service.reconcile()


def ratio(h: Harness, model: str, figure: str = "gpu_memory") -> float | None:
    return h.service._metrics.registry.get_sample_value(
        f"gpuplace_scheduler_model_{figure}_ratio", {"model": model}
    )


def test_a_measured_load_is_learned_and_places_a_model_that_declares_no_gpu_memory(
    h: Harness,
) -> None:
    h.connect("a")  # no GPUs: where a CPU model goes first (ties by name)
    gpu = h.connect("g", devices=(h100("GPU-1"), h100("GPU-2", 1)))
    h.load("declared", storage_uri=URI, gpu_memory="20Gi")
    assert [c.device_uuids for c in gpu.sent if isinstance(c, Load)] == [("GPU-1",)]
    loaded(h, gpu, "declared", 1, {"GPU-1": 17 * GiB})

    (learned,) = h.store.footprints()
    assert (learned.artifact, learned.product, learned.gpu.size, learned.gpu.samples) == (
        (URI, None),
        "NVIDIA H100",
        17 * GiB,
        1,
    )
    assert ratio(h, "declared") == pytest.approx(17 / 20)
    status = convert.status_to_proto(h.service.model("declared"))
    assert (status.gpu_memory_source, status.placement_gpu_memory_bytes) == ("declared", 20 * GiB)
    assert [(f.product, f.gpu_memory_bytes, f.samples) for f in status.learned_footprints] == [
        ("NVIDIA H100", 17 * GiB, 1)
    ]

    # Same artifact, no gpuMemory: a GPU model of the learned figure plus 10 %.
    h.load("undeclared", storage_uri=URI)
    want = -(-17 * GiB * 110 // 100)
    (load,) = [c for c in gpu.sent if isinstance(c, Load) and c.model == "undeclared"]
    assert (load.gpu_memory_bytes, load.device_uuids) == (want, ("GPU-1",))  # binpack
    record = h.service.model("undeclared")
    assert (record.gpu_memory_source, record.gpu_memory_bytes) == ("learned", want)
    # The ledger promises the learned figure while the load is in flight.
    (views,) = [v for s, v in h.service.replica_views() if s.key == ("g", 0)]
    assert views is not None and {g.uuid: g.reserved_bytes for g in views.gpus}["GPU-1"] == want
    assert ratio(h, "undeclared") is None  # nothing declared to compare with
    status = convert.status_to_proto(record)
    assert (status.gpu_memory_source, status.placement_gpu_memory_bytes) == ("learned", want)

    # Its own load is measured too: the figure follows what loads really take.
    loaded(h, gpu, "undeclared", 1, {"GPU-1": 18 * GiB})
    assert [(f.gpu.size, f.gpu.samples) for f in h.store.footprints()] == [(18 * GiB, 2)]
    assert ratio(h, "declared") == pytest.approx(18 / 20)  # the models of the artifact follow

    h.start()  # a restart keeps what was learned
    h.service.reconcile()
    record = h.service.model("undeclared")
    assert (record.gpu_memory_source, record.learned[0].gpu.samples) == ("learned", 2)
    assert ratio(h, "declared") == pytest.approx(18 / 20)


def test_a_span_learns_its_largest_device_and_a_cpu_load_learns_nothing(h: Harness) -> None:
    gpu = h.connect("g", devices=(h100("GPU-1"), h100("GPU-2", 1)))
    h.load("span", storage_uri=URI, gpu_memory="10Gi", gpus=2)
    loaded(h, gpu, "span", 1, {"GPU-1": 9 * GiB, "GPU-2": 11 * GiB, "GPU-gone": 50 * GiB})
    assert [(f.product, f.gpu.size) for f in h.store.footprints()] == [("NVIDIA H100", 11 * GiB)]
    h.load("cpu", storage_uri="gs://models/iris")
    loaded(h, gpu, "cpu", 1, {})
    assert h.service.model("cpu").state == ModelState.AVAILABLE
    assert len(h.store.footprints()) == 1
    assert h.service.model("cpu").gpu_memory_source == ""


def test_host_memory_a_load_measured_is_learned_and_places_a_model_that_declares_none(
    h: Harness,
) -> None:
    cpu = h.connect("a")
    gpu = h.connect("g", devices=(h100("GPU-1"),))
    h.load("declared", storage_uri=URI, memory="2Gi")
    loaded(h, cpu, "declared", 1, {}, host_bytes=3 * GiB)  # a CPU load: no GPU product
    (learned,) = h.store.footprints()
    assert (learned.product, learned.host.size, learned.gpu.samples) == ("", 3 * GiB, 0)
    assert ratio(h, "declared", "memory") == pytest.approx(3 / 2)
    assert ratio(h, "declared") is None  # no GPU memory declared or measured

    # Same artifact, no memory declared: placed (and charged) with 3 GiB plus 10 %.
    h.load("undeclared", storage_uri=URI)
    record = h.service.model("undeclared")
    want = -(-3 * GiB * 110 // 100)
    assert (record.memory_source, record.memory_bytes) == ("learned", want)
    assert record.gpu_memory_source == ""  # nothing learned on a GPU: still a CPU model
    used = {s.key: v.used_memory_bytes for s, v in h.service.replica_views() if v is not None}
    assert used == {("a", 0): 2 * GiB, ("g", 0): want}  # charged the learned figure
    status = convert.status_to_proto(record)
    assert (status.memory_source, status.placement_memory_bytes) == ("learned", want)
    assert [(f.product, f.memory_bytes, f.memory_samples) for f in status.learned_footprints] == [
        ("", 3 * GiB, 1)
    ]

    # A GPU load measures both: host memory goes with its GPU product.
    h.load("gpu", storage_uri="gs://models/llm", gpu_memory="10Gi")
    loaded(h, gpu, "gpu", 1, {"GPU-1": 9 * GiB}, host_bytes=GiB)
    (llm,) = [f for f in h.store.footprints() if f.storage_uri == "gs://models/llm"]
    assert (llm.product, llm.gpu.size, llm.host.size) == ("NVIDIA H100", 9 * GiB, GiB)
    # A load that could not measure host memory (None) learns nothing of it.
    assert set(h.service.model("undeclared").copies) == {("g", 0)}
    loaded(h, gpu, "undeclared", 1, {}, host_bytes=None)
    assert h.service.model("undeclared").state == ModelState.AVAILABLE
    assert [f.host.samples for f in h.store.footprints() if f.storage_uri == URI] == [1]


def test_a_model_without_storage_uri_learns_nothing(h: Harness) -> None:
    """Models made of their settings alone share no artifact: one's memory is not another's."""
    gpu = h.connect("g", devices=(h100("GPU-1"),))
    h.load("settings-only", gpu_memory="10Gi")
    loaded(h, gpu, "settings-only", 1, {"GPU-1": 9 * GiB}, host_bytes=GiB)
    h.load("other-settings-only")
    assert h.store.footprints() == [] and h.service.footprints() == []
    assert h.service.model("other-settings-only").memory_source == ""


class BrokenFootprints(MemoryStore):
    def save_footprint(self, footprint: Footprint) -> None:
        raise sqlite3.OperationalError("disk I/O error")


def test_a_footprint_that_cannot_be_saved_is_dropped_and_the_load_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(tmp_path, BrokenFootprints())
    gpu = h.connect("g", devices=(h100("GPU-1"),))
    h.load("declared", storage_uri=URI, gpu_memory="20Gi")
    with caplog.at_level(logging.ERROR):
        loaded(h, gpu, "declared", 1, {"GPU-1": 17 * GiB})
    assert h.state("declared") == (ModelState.AVAILABLE, {"g-0": "Available"})
    assert h.service.footprints() == [] and h.service.model("declared").learned == ()
    assert "its measured footprint was not saved" in caplog.text


def test_a_placed_models_reasons_are_worded_on_demand_and_leave_the_accounts_alone(
    h: Harness,
) -> None:
    agent = h.connect("a")
    h.connect("b", capabilities=("xgboost",))
    h.load("iris", memory="1Gi", requirements=("sklearn",))
    h.event(agent, EventKind.LOADED, "iris", 1)
    assert h.service.model("iris").server_reasons == ()  # placed without words
    h.service.replica_views()
    before = _normal(h.service._cluster.usage)
    shown = h.service.explained("iris")
    assert shown.server_reasons == (("b", "missing capability sklearn"),)
    assert _normal(h.service._cluster.usage) == before == _recount(h.service)
    assert h.service.model("iris").server_reasons == ()  # the record itself is unchanged
