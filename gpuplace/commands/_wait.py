"""Waiting for models to become available (or to go away), with a progress display."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, TextIO

import grpc

from contract.names import replica_id
from gpuplace.client import ClientError, SchedulerClient
from protos import scheduler_pb2

Goal = Literal["available", "deleted"]
Outcome = Literal["available", "deleted", "failed", "missing", "timeout"]
RETRY_PAUSE_S = 0.2
# A watch of every model cannot tell a model deleted just before it opened from one still
# to come: each watch lasts at most this long, then every pending model is looked at again.
RECHECK_S = 2.0
RETRYABLE = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
)


@dataclass
class Waited:
    name: str
    outcome: Outcome = "timeout"
    status: scheduler_pb2.ModelStatus | None = None


@dataclass
class Progress:
    """One line per change of a model's state or its replicas' states (on stderr)."""

    stream: TextIO | None = None
    started: float = field(default_factory=time.monotonic)
    _last: dict[str, tuple[object, ...]] = field(default_factory=dict)

    def show(self, status: scheduler_pb2.ModelStatus) -> None:
        replicas = tuple((r.server, r.replica_index, r.state) for r in status.replicas)
        key = (status.version, status.state, replicas, status.reason)
        if self._last.get(status.name) == key:
            return
        self._last[status.name] = key
        wanted = status.spec.replicas if status.spec.HasField("replicas") else 1
        parts = ", ".join(
            f"{replica_id(server, index)} {state}" for server, index, state in replicas
        )
        line = (
            f"[{time.monotonic() - self.started:6.1f}s] {status.name} v{status.version} "
            f"{status.state} {status.available_replicas}/{wanted}"
        )
        if parts:
            line += f": {parts}"
        if status.reason and status.state not in ("Available",):
            line += f" ({status.reason})"
        stream = self.stream or sys.stderr
        print(line, file=stream, flush=True)


def _judge(
    status: scheduler_pb2.ModelStatus, goal: Goal, min_version: int, fail_on_schedule_failed: bool
) -> Outcome | None:
    """The outcome this status settles, or None to keep waiting."""
    if goal == "deleted":
        return "deleted" if status.state == "Terminated" else None
    if status.version < min_version:
        return None
    if status.state == "Available":
        return "available"
    if status.state == "Failed":
        return "failed"
    if status.state == "ScheduleFailed" and fail_on_schedule_failed:
        return "failed"
    if status.state in ("Terminating", "Terminated"):
        return "failed"
    return None


def wait_models(
    client: SchedulerClient,
    versions: dict[str, int],
    *,
    goal: Goal,
    timeout_s: float,
    fail_on_schedule_failed: bool = False,
    progress: Progress | None = None,
) -> dict[str, Waited]:
    """Wait until every model named in `versions` (name -> lowest version that counts)
    settles: available / failed for goal "available", deleted for goal "deleted"."""
    deadline = time.monotonic() + timeout_s
    results = {name: Waited(name) for name in versions}
    pending = set(versions)

    def settle(status: scheduler_pb2.ModelStatus) -> None:
        waited = results[status.name]
        waited.status = status
        if progress is not None:
            progress.show(status)
        outcome = _judge(status, goal, versions[status.name], fail_on_schedule_failed)
        if outcome is not None:
            waited.outcome = outcome
            pending.discard(status.name)

    def check(names: Iterable[str]) -> None:
        for name in sorted(names):
            try:
                settle(client.model(name))
            except ClientError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                results[name].outcome = "deleted" if goal == "deleted" else "missing"
                pending.discard(name)

    def recheck() -> None:
        """Look at every pending model again; a scheduler still restarting is no answer."""
        try:
            check(list(pending))
        except ClientError as exc:
            if exc.code not in RETRYABLE:
                raise

    check(list(pending))
    while pending and time.monotonic() < deadline:
        watched = next(iter(pending)) if len(pending) == 1 else ""
        try:
            # A watch of one model answers NOT_FOUND once it is gone: it may last to the end.
            until = deadline if watched else min(deadline, time.monotonic() + RECHECK_S)
            for status in client.watch(watched, until):
                if status.name in pending:
                    settle(status)
                if not pending:
                    break
            if pending and time.monotonic() < deadline:
                # The window ended, or the stream did (a restart, the model went away): look
                # again.
                recheck()
        except ClientError as exc:
            # Gone (NOT_FOUND), a watcher that fell behind, or a scheduler restarting: the
            # state is persisted there, so look again until the deadline.
            if exc.code not in RETRYABLE:
                raise
            time.sleep(min(RETRY_PAUSE_S * 2, max(0.0, deadline - time.monotonic())))
            recheck()
    return results
