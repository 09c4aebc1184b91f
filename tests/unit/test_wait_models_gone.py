"""`gpuplace model unload --wait` (and `model wait --for deleted`) must notice a model that
disappears between the first status call and the watch.

Found by the end-to-end cluster test: an unload through real agents and MLServers takes a few
milliseconds, so the model is often gone by the time `wait_models` opens its watch. The
watch then answers NOT_FOUND, which `wait_models` treats as "retry the watch" — forever, as
only `check()` turns NOT_FOUND into "deleted" — until the timeout (exit 1).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from gpuplace.client import ClientError
from gpuplace.commands._wait import wait_models
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
    started = time.monotonic()
    results = wait_models(client, {"m": 0}, goal="deleted", timeout_s=3.0)  # type: ignore[arg-type]
    assert results["m"].outcome == "deleted"
    assert time.monotonic() - started < 2.0
