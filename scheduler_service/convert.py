"""The client API's wire format ↔ the scheduler's records. (The agent protocol has its own,
shared conversion: contract.wire.)"""

from __future__ import annotations

import functools

from contract.redaction import redact
from contract.wire import device_to_proto
from placement.types import Replica
from protos import common_pb2, scheduler_pb2
from scheduler_service.cluster import AgentSession
from scheduler_service.lifecycle import Plan, current_copies
from scheduler_service.model import ModelCopy, ModelRecord, ModelSpec, validate_spec

# The state of a copy a dry run would load (it has no copy state yet).
PLANNED = "Planned"


def spec_from_proto(spec: common_pb2.ModelSpec) -> ModelSpec:
    return validate_spec(
        spec.name,
        storage_uri=spec.storage_uri,
        requirements=tuple(spec.requirements),
        server=spec.server,
        memory=spec.memory,
        gpu_memory=spec.gpu_memory,
        gpus=spec.gpus,
        replicas=spec.replicas if spec.HasField("replicas") else None,
        min_replicas=spec.min_replicas if spec.HasField("min_replicas") else None,
        parameters=tuple(spec.parameters.items()),
        artifact_version=spec.artifact_version if spec.HasField("artifact_version") else None,
        namespace=spec.namespace,
        secret_name=spec.secret_name,
    )


# Statuses are made for every change of every model (a watcher follows them all) while a
# spec changes rarely: its message is made once per spec. It is shared, never changed: a
# ModelStatus built with it copies it.
@functools.lru_cache(maxsize=16_384)
def spec_to_proto(spec: ModelSpec) -> common_pb2.ModelSpec:
    """The spec as statuses show it: the storageUri without a user:password or a query string
    (a presigned URL's signature, a SAS token), which only the agent that loads it gets."""
    message = common_pb2.ModelSpec(
        name=spec.name,
        storage_uri=redact(spec.storage_uri),
        requirements=spec.requirements,
        server=spec.server,
        memory=spec.memory,
        gpu_memory=spec.gpu_memory,
        gpus=spec.gpus,
        replicas=spec.replicas,
        parameters=dict(spec.parameters),
        artifact_version=spec.artifact_version,
        namespace=spec.namespace,
        secret_name=spec.secret_name,
    )
    if spec.min_replicas is not None:
        message.min_replicas = spec.min_replicas
    return message


def _server_reasons(record: ModelRecord) -> list[scheduler_pb2.ServerReason]:
    return [
        scheduler_pb2.ServerReason(server=server, reason=reason)
        for server, reason in record.server_reasons
    ]


def _copy_to_proto(copy: ModelCopy, state: str) -> scheduler_pb2.CopyStatus:
    return scheduler_pb2.CopyStatus(
        server=copy.server,
        replica_index=copy.index,
        state=state,
        reason=copy.reason,
        device_uuids=copy.device_uuids,
        footprint_bytes=copy.footprint_bytes,
        version=copy.version,
    )


def status_to_proto(record: ModelRecord) -> scheduler_pb2.ModelStatus:
    return scheduler_pb2.ModelStatus(
        name=record.name,
        version=record.version,
        state=record.state.value,
        reason=record.reason,
        server_reasons=_server_reasons(record),
        replicas=[
            _copy_to_proto(r, r.state.value)
            for r in sorted(record.copies.values(), key=lambda r: r.key)
        ],
        spec=spec_to_proto(record.spec),
        available_replicas=record.available_count(),
        updated_at=record.updated_at,
        placement_gpu_memory_bytes=record.gpu_memory_bytes,
        gpu_memory_source=record.gpu_memory_source,
        learned_footprints=[
            scheduler_pb2.LearnedFootprint(
                product=f.product,
                gpu_memory_bytes=f.gpu.size,
                samples=f.gpu.samples,
                updated_at=f.updated_at,
                memory_bytes=f.host.size,
                memory_samples=f.host.samples,
            )
            for f in record.learned
        ],
        placement_memory_bytes=record.memory_bytes,
        memory_source=record.memory_source,
    )


def plan_to_proto(plan: Plan) -> scheduler_pb2.PlanModelResponse:
    """A dry run's answer: the copies of the version the model would have after the next
    pass ("Planned" where a load would go), its state then, and the reasons."""
    record = plan.record
    return scheduler_pb2.PlanModelResponse(
        name=record.name,
        version=record.version,
        changed=plan.changed,
        planned=[
            _copy_to_proto(c, PLANNED if c.key in plan.loads else c.state.value)
            for c in sorted(current_copies(record), key=lambda c: c.key)
        ],
        reason=record.reason,
        server_reasons=_server_reasons(record),
        state=record.state.value,
    )


def replica_to_proto(session: AgentSession, view: Replica | None) -> scheduler_pb2.ReplicaStatus:
    hello = session.hello
    reserved = {gpu.uuid: gpu.reserved_bytes for gpu in view.gpus} if view else {}
    return scheduler_pb2.ReplicaStatus(
        index=hello.index,
        connected=session.connected,
        draining=session.draining,
        capabilities=sorted(hello.capabilities),
        memory_bytes=hello.memory_bytes,
        overcommit_percentage=hello.overcommit_percentage,
        available_memory_bytes=view.available_memory_bytes if view else 0,
        gpus=[
            scheduler_pb2.GpuStatus(
                device=device_to_proto(gpu),
                reserved_bytes=reserved.get(gpu.uuid, 0),
            )
            for gpu in sorted(session.gpus.values(), key=lambda g: (g.index, g.uuid))
        ],
        models=sorted(view.models) if view else [],
    )
