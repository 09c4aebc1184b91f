"""The client API's wire format ↔ the scheduler's records. (The agent protocol has its own,
shared conversion: contract.wire.)"""

from __future__ import annotations

from contract.wire import device_to_proto
from placement.types import Replica
from protos import common_pb2, scheduler_pb2
from scheduler_service.cluster import AgentSession
from scheduler_service.model import ModelRecord, ModelSpec, validate_spec


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
        artifact_version=spec.artifact_version,
        namespace=spec.namespace,
        secret_name=spec.secret_name,
    )


def spec_to_proto(spec: ModelSpec) -> common_pb2.ModelSpec:
    message = common_pb2.ModelSpec(
        name=spec.name,
        storage_uri=spec.storage_uri,
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


def status_to_proto(record: ModelRecord) -> scheduler_pb2.ModelStatus:
    return scheduler_pb2.ModelStatus(
        name=record.name,
        version=record.version,
        state=record.state.value,
        reason=record.reason,
        server_reasons=[
            scheduler_pb2.ServerReason(server=server, reason=reason)
            for server, reason in record.server_reasons
        ],
        replicas=[
            scheduler_pb2.CopyStatus(
                server=r.server,
                replica_index=r.index,
                state=r.state.value,
                reason=r.reason,
                device_uuids=r.device_uuids,
                footprint_bytes=r.footprint_bytes,
                version=r.version,
            )
            for r in sorted(record.copies.values(), key=lambda r: r.key)
        ],
        spec=spec_to_proto(record.spec),
        available_replicas=record.available_count(),
        updated_at=record.updated_at,
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
