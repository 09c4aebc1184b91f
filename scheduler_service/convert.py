"""Wire format ↔ domain values. The only module that knows both."""

from __future__ import annotations

from protos import agent_pb2, common_pb2, scheduler_pb2
from scheduler_service.core.types import Replica
from scheduler_service.errors import InvalidArgument
from scheduler_service.messages import (
    Command,
    DrainComplete,
    EventKind,
    GpuInfo,
    Hello,
    Load,
    LoadedModel,
    ModelEvent,
    Unload,
    Welcome,
)
from scheduler_service.model import ModelRecord, ModelSpec, validate_spec
from scheduler_service.service import AgentConn

_EVENT_KINDS = {
    agent_pb2.ModelEvent.LOADED: EventKind.LOADED,
    agent_pb2.ModelEvent.LOAD_FAILED: EventKind.LOAD_FAILED,
    agent_pb2.ModelEvent.LOAD_FAILED_MEMORY: EventKind.LOAD_FAILED_MEMORY,
    agent_pb2.ModelEvent.UNLOADED: EventKind.UNLOADED,
    agent_pb2.ModelEvent.UNLOAD_FAILED: EventKind.UNLOAD_FAILED,
}


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
    )
    if spec.min_replicas is not None:
        message.min_replicas = spec.min_replicas
    return message


def gpu_from_proto(device: common_pb2.GpuDevice) -> GpuInfo:
    return GpuInfo(
        uuid=device.uuid,
        name=device.name,
        index=device.index,
        total_bytes=device.total_bytes,
        free_bytes=device.free_bytes,
        used_bytes=device.used_bytes,
        parent_uuid=device.parent_uuid,
    )


def hello_from_proto(hello: agent_pb2.Hello) -> Hello:
    if not hello.server_name:
        raise InvalidArgument("hello.server_name", "must be set")
    devices = tuple(gpu_from_proto(device) for device in hello.devices)
    uuids = [device.uuid for device in devices]
    if len(set(uuids)) != len(uuids) or "" in uuids:
        raise InvalidArgument("hello.devices", "every device needs a distinct, non-empty uuid")
    return Hello(
        server=hello.server_name,
        index=hello.replica_index,
        capabilities=frozenset(c.strip() for c in hello.capabilities if c.strip()),
        memory_bytes=hello.memory_bytes,
        overcommit_percentage=hello.overcommit_percentage,
        devices=devices,
        loaded=tuple(
            LoadedModel(m.name, m.version, dict(m.footprint_bytes)) for m in hello.loaded_models
        ),
    )


def event_from_proto(event: agent_pb2.ModelEvent) -> ModelEvent:
    kind = _EVENT_KINDS.get(event.kind)
    if kind is None:
        raise InvalidArgument("event.kind", f"{event.kind} is not a known event kind")
    return ModelEvent(
        kind=kind,
        model=event.model_name,
        version=event.version,
        message=event.message,
        footprint_bytes=dict(event.footprint_bytes),
    )


def command_to_proto(command: Command) -> agent_pb2.SchedulerMessage:
    match command:
        case Welcome():
            return agent_pb2.SchedulerMessage(welcome=agent_pb2.Welcome())
        case Load(spec=spec, version=version, device_uuids=uuids):
            return agent_pb2.SchedulerMessage(
                load=agent_pb2.LoadCommand(
                    spec=spec_to_proto(spec),
                    version=version,
                    memory_bytes=spec.memory_bytes,
                    gpu_memory_bytes=spec.gpu_memory_bytes,
                    device_uuids=uuids,
                )
            )
        case Unload(model=model, version=version):
            return agent_pb2.SchedulerMessage(
                unload=agent_pb2.UnloadCommand(model_name=model, version=version)
            )
        case DrainComplete(stranded=stranded):
            return agent_pb2.SchedulerMessage(
                drain_complete=agent_pb2.DrainComplete(stranded_models=stranded)
            )
    raise TypeError(f"unknown command {command!r}")  # pragma: no cover


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
            scheduler_pb2.ReplicaStatus(
                server=r.server,
                replica_index=r.index,
                state=r.state.value,
                reason=r.reason,
                device_uuids=r.device_uuids,
                footprint_bytes=r.footprint_bytes,
                version=r.version,
            )
            for r in sorted(record.replicas.values(), key=lambda r: r.key)
        ],
        spec=spec_to_proto(record.spec),
        available_replicas=record.available_count(),
        updated_at=record.updated_at,
    )


def replica_to_proto(conn: AgentConn, view: Replica | None) -> scheduler_pb2.ReplicaInfo:
    hello = conn.hello
    reserved = {gpu.uuid: gpu.reserved_bytes for gpu in view.gpus} if view else {}
    return scheduler_pb2.ReplicaInfo(
        index=hello.index,
        connected=conn.connected,
        draining=conn.draining,
        capabilities=sorted(hello.capabilities),
        memory_bytes=hello.memory_bytes,
        overcommit_percentage=hello.overcommit_percentage,
        available_memory_bytes=view.available_memory_bytes if view else 0,
        gpus=[
            scheduler_pb2.GpuStatus(
                device=common_pb2.GpuDevice(
                    uuid=gpu.uuid,
                    name=gpu.name,
                    index=gpu.index,
                    total_bytes=gpu.total_bytes,
                    free_bytes=gpu.free_bytes,
                    used_bytes=gpu.used_bytes,
                    parent_uuid=gpu.parent_uuid,
                ),
                reserved_bytes=reserved.get(gpu.uuid, 0),
            )
            for gpu in sorted(conn.gpus.values(), key=lambda g: (g.index, g.uuid))
        ],
        models=sorted(view.models) if view else [],
    )
