"""`schedule()`: one placement decision over one snapshot, with a reason for every server.

Replica counts, as in Seldon Core 2: `request.replicas` (at least 1) distinct replicas of one
server. When no server has that many fitting replicas, a partial placement is made only when
`request.min_replicas` is k >= 1: on the server with the most fitting replicas, provided it
has at least k. With `min_replicas` 0 (unset) it is all `replicas` or a Rejection whose
reasons say how many fit of how many.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from placement.filters import (
    BEFORE_DEVICES,
    CAUSES,
    NO_SERVER,
    TOO_FEW_REPLICAS,
    failing,
    gpu_memory,
    gpus_needed,
)
from placement.sorters import Candidate, ReplicaKey, candidate, replica_key
from placement.types import (
    Assignment,
    Placement,
    Policy,
    Rejection,
    Replica,
    Request,
    Snapshot,
)

UNKNOWN_SERVER = "server not connected / unknown server"


@dataclass(frozen=True)
class ServerVerdict:
    """How one server's replicas fared: the fitting ones ranked, the others with reasons."""

    server: str
    fitting: tuple[Candidate, ...]  # best first
    failures: tuple[tuple[int, str], ...]  # (replica index, reason), by index
    # The filter the replicas that fail got furthest to (a `CAUSES` code; "": none failed).
    cause: str = ""


def schedule(
    snapshot: Snapshot, request: Request, policy: Policy, now: float
) -> Placement | Rejection:
    """Place `request` on replicas of one server, or say for every server why not.

    Pure and deterministic: the same snapshot (in any replica order), request, policy and
    `now` give the same answer. A pinned request (`request.server`) considers that server
    only, and its reasons name that server only.
    """
    groups = _group_by_server(snapshot.replicas, request.server)
    if request.server is not None and not groups:
        return Rejection(((request.server, UNKNOWN_SERVER),), NO_SERVER)
    verdicts = [judge(request, policy, now, replicas) for _, replicas in sorted(groups.items())]
    wanted = max(request.replicas, 1)
    least = least_replicas(request.replicas, request.min_replicas)
    chosen = choose(verdicts, wanted, least, replica_key(request, policy))
    if chosen is None:
        return Rejection(
            tuple((v.server, _shortfall(v, wanted, least)) for v in verdicts), _cause(verdicts)
        )
    return to_placement(chosen, wanted, _placement_reasons(verdicts, chosen, wanted, least))


def _cause(verdicts: Sequence[ServerVerdict]) -> str:
    """A refusal's nearest miss over all servers (see `Rejection.cause`)."""
    if any(verdict.fitting for verdict in verdicts):
        return TOO_FEW_REPLICAS
    return max((verdict.cause for verdict in verdicts), key=CAUSES.index, default=NO_SERVER)


def to_placement(
    chosen: ServerVerdict, wanted: int, reasons: tuple[tuple[str, str], ...]
) -> Placement:
    """The best `wanted` fitting replicas of the chosen server, by index."""
    picked = sorted(chosen.fitting[:wanted], key=lambda option: option.replica.index)
    return Placement(
        server=chosen.server,
        assignments=tuple(_assignment(option) for option in picked),
        reasons=reasons,
    )


def least_replicas(replicas: int, min_replicas: int | None) -> int:
    """The fewest replicas a placement may have, and the fewest available copies that make
    a model available, as in Seldon Core 2: `min_replicas` when it is 1 or more (a partial
    placement of that many is allowed), else every one of `replicas` (unset or 0)."""
    wanted = max(replicas, 1)
    return min(min_replicas, wanted) if min_replicas else wanted


def _group_by_server(replicas: Iterable[Replica], pinned: str | None) -> dict[str, list[Replica]]:
    groups: dict[str, list[Replica]] = {}
    for replica in replicas:
        if pinned is None or replica.server == pinned:
            groups.setdefault(replica.server, []).append(replica)
    return groups


def judge(
    request: Request, policy: Policy, now: float, replicas: Sequence[Replica]
) -> ServerVerdict:
    """Filter one server's replicas (all of one server) and rank the ones that fit."""
    fitting: list[Candidate] = []
    failures: list[tuple[int, str]] = []
    cause = ""
    for replica in sorted(replicas, key=lambda r: r.index):
        found = failing(request, replica, now, BEFORE_DEVICES)
        if found is None:
            # The devices are chosen once: no choice means no fit (whatever the policy).
            option = candidate(request, replica, policy)
            if option.devices or not gpus_needed(request):
                fitting.append(option)
                continue
            reason = gpu_memory(request, replica, now)
            assert reason is not None
            found = (gpu_memory.__name__, reason)
        failures.append((replica.index, found[1]))
        cause = max(cause or found[0], found[0], key=CAUSES.index)
    ranked = tuple(sorted(fitting, key=replica_key(request, policy)))
    return ServerVerdict(replicas[0].server, ranked, tuple(failures), cause)


def choose(
    verdicts: Sequence[ServerVerdict],
    wanted: int,
    least: int,
    key: Callable[[Candidate], ReplicaKey],
) -> ServerVerdict | None:
    """The server with `wanted` fitting replicas that ranks best; else the partial one.

    A server ranks by how many of its chosen replicas already hold the model (more first),
    then by the key of its best replica (which ends in the server name).
    """

    def rank(verdict: ServerVerdict) -> tuple[int, ReplicaKey]:
        chosen = verdict.fitting[:wanted]
        return (-sum(option.held for option in chosen), key(chosen[0]))

    full = [v for v in verdicts if len(v.fitting) >= wanted]
    if full:
        return min(full, key=rank)
    partial = [v for v in verdicts if len(v.fitting) >= least]
    if partial:
        return min(partial, key=lambda v: (-len(v.fitting), rank(v)))
    return None


def _assignment(option: Candidate) -> Assignment:
    return Assignment(
        server=option.replica.server,
        index=option.replica.index,
        device_uuids=tuple(gpu.uuid for gpu in option.devices),
        held=option.held,
    )


def _placement_reasons(
    verdicts: Sequence[ServerVerdict], chosen: ServerVerdict, wanted: int, least: int
) -> tuple[tuple[str, str], ...]:
    """Why each other server was not chosen, and why the chosen one got fewer, if it did."""
    reasons: list[tuple[str, str]] = []
    for verdict in verdicts:
        if len(verdict.fitting) < wanted:
            reasons.append((verdict.server, _shortfall(verdict, wanted, least)))
        elif verdict is not chosen:
            reasons.append((verdict.server, f"fits, but {chosen.server} ranks first"))
    return tuple(reasons)


def _shortfall(verdict: ServerVerdict, wanted: int, least: int) -> str:
    """Why a server has fewer than `wanted` fitting replicas (and fewer than the `least` a
    partial placement needs, when one is allowed)."""
    count = len(verdict.fitting)
    if count == 0:
        return _describe_failures(verdict.failures, name_replicas=False)
    head = f"only {count} of {wanted} requested replicas fit"
    if count < least < wanted:
        head += f" (minReplicas {least})"
    if not verdict.failures:
        return f"{head}; the server has {count} connected"
    return f"{head}: {_describe_failures(verdict.failures, name_replicas=True)}"


def _describe_failures(failures: Sequence[tuple[int, str]], *, name_replicas: bool) -> str:
    """Replicas grouped by reason: "replicas 0, 2: draining; replica 1: no GPUs".

    When every replica failed for the same reason and names are not asked for, the reason
    alone is enough ("missing capability model-on-gpu").
    """
    groups: dict[str, list[int]] = {}
    for index, reason in failures:
        groups.setdefault(reason, []).append(index)
    if len(groups) == 1 and not name_replicas:
        return next(iter(groups))
    parts = []
    for reason, indexes in groups.items():
        noun = "replica" if len(indexes) == 1 else "replicas"
        parts.append(f"{noun} {', '.join(map(str, indexes))}: {reason}")
    return "; ".join(parts)
