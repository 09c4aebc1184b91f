"""`gpuplace model unload --wait` (and `model wait --for deleted`) must notice a model that
disappears between the first status call and the watch.

Found by the end-to-end cluster test: an unload through real agents and MLServers takes a few
milliseconds, so the model is often gone by the time `wait_models` opens its watch. A watch
of one model then answers NOT_FOUND; a watch of every model (several unloaded at once, as
docs/running-locally.md does) never mentions it again: without a recheck, the wait ran into
its timeout (exit 1 after 5 minutes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from gpuplace.client import ClientError
from gpuplace.commands._wait import RECHECK_S, wait_models
from protos import scheduler_pb2


class GoneBeforeTheWatch:
    """The first status call still sees the model Terminating; then it is gone."""

    def __init__(self) -> None:
        self.model_calls = 0
        self.watch_calls = 0

    def model(self, name: str) -> scheduler_pb2.ModelStatus:
        self.model_calls += 1
        if self.model_calls == 1:
            return scheduler_pb2.ModelStatus(name=name, version=1, state="Terminating")
        raise ClientError("scheduler", grpc.StatusCode.NOT_FOUND, f"model {name!r} not found")

    def watch(self, name: str, deadline: float) -> Iterator[scheduler_pb2.ModelStatus]:
        self.watch_calls += 1
        raise ClientError("scheduler", grpc.StatusCode.NOT_FOUND, f"model {name!r} not found")
        yield  # a generator, as the real client's watch is  # pragma: no cover


def test_a_model_gone_before_the_watch_counts_as_deleted() -> None:
    client = GoneBeforeTheWatch()
    results = wait_models(client, {"m": 0}, goal="deleted", timeout_s=3.0)  # type: ignore[arg-type]
    assert results["m"].outcome == "deleted"
    assert client.watch_calls == 1


class SilentWatchOfEveryModel:
    """Two models Terminating at the first look, gone at the next; the watch of every model
    says nothing about them (they went before it opened) and lasts until its deadline."""

    def __init__(self) -> None:
        self.looked: dict[str, int] = {}
        self.windows: list[float] = []

    def model(self, name: str) -> scheduler_pb2.ModelStatus:
        self.looked[name] = self.looked.get(name, 0) + 1
        if self.looked[name] == 1:
            return scheduler_pb2.ModelStatus(name=name, version=1, state="Terminating")
        raise ClientError("scheduler", grpc.StatusCode.NOT_FOUND, f"model {name!r} not found")

    def watch(self, name: str, deadline: float) -> Iterator[scheduler_pb2.ModelStatus]:
        assert name == "", "two models pending: one watch of every model"
        window = deadline - time.monotonic()
        self.windows.append(window)
        # A real watch would block this long; the wait must never hand it the whole timeout.
        assert window <= RECHECK_S, f"a watch of {window:.0f}s would miss the deletion"
        return iter(())


def test_models_gone_before_a_watch_of_every_model_count_as_deleted() -> None:
    client = SilentWatchOfEveryModel()
    results = wait_models(
        client,  # type: ignore[arg-type]
        {"iris": 0, "llama3": 0},
        goal="deleted",
        timeout_s=300.0,
    )
    assert {name: waited.outcome for name, waited in results.items()} == {
        "iris": "deleted",
        "llama3": "deleted",
    }
    assert len(client.windows) == 1
