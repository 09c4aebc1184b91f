"""The agent protocol's one conversion between its values (`contract.protocol`) and protobuf.

The agent encodes what it sends and decodes what it receives with these functions, the
scheduler does the reverse, and so do the test harness's simulated agents: the two ends
cannot drift apart. Decoding checks what the values promise (a hello names its server; every
device has a distinct uuid; an event kind is known) and raises InvalidArgument naming the
field.
"""

from __future__ import annotations

from collections.abc import Mapping

from contract.errors import InvalidArgument
from contract.names import InvalidName, check_name, clip
from contract.protocol import (
    MAX_CAPABILITIES,
    MAX_DEVICES,
    MAX_EVENT_MESSAGE,
    MAX_OVERCOMMIT_PERCENTAGE,
    MAX_TEXT,
    AgentMessage,
    Command,
    DrainComplete,
    DrainRequest,
    EventKind,
    GpuDevice,
    Hello,
    Load,
    LoadedModel,
    ModelEvent,
    ResourceUpdate,
    Unload,
    Welcome,
)
from contract.quantity import bytes_problem
from protos import agent_pb2, common_pb2

_KINDS: dict[EventKind, agent_pb2.ModelEvent.Kind.ValueType] = {
    EventKind.LOADED: agent_pb2.ModelEvent.LOADED,
    EventKind.LOAD_FAILED: agent_pb2.ModelEvent.LOAD_FAILED,
    EventKind.LOAD_FAILED_MEMORY: agent_pb2.ModelEvent.LOAD_FAILED_MEMORY,
    EventKind.UNLOADED: agent_pb2.ModelEvent.UNLOADED,
    EventKind.UNLOAD_FAILED: agent_pb2.ModelEvent.UNLOAD_FAILED,
}
_KIND_OF = {wire: kind for kind, wire in _KINDS.items()}


# ------------------------------------------------------------------ shared values


def device_to_proto(device: GpuDevice) -> common_pb2.GpuDevice:
    return common_pb2.GpuDevice(
        uuid=device.uuid,
        name=device.name,
        index=device.index,
        total_bytes=device.total_bytes,
        free_bytes=device.free_bytes,
        used_bytes=device.used_bytes,
        parent_uuid=device.parent_uuid,
        memory_unknown=not device.measured,
        compute_capability=device.compute_capability,
    )


def device_from_proto(device: common_pb2.GpuDevice) -> GpuDevice:
    return GpuDevice(
        uuid=device.uuid,
        name=device.name,
        index=device.index,
        total_bytes=device.total_bytes,
        free_bytes=device.free_bytes,
        used_bytes=device.used_bytes,
        parent_uuid=device.parent_uuid,
        measured=not device.memory_unknown,
        compute_capability=device.compute_capability,
    )


def _name(where: str, name: str) -> None:
    """A server or model name an agent sent: a DNS-1123 label, or refused (it is logged,
    keyed and shown)."""
    try:
        check_name(name, where)
    except InvalidName as exc:
        raise InvalidArgument(where, str(exc).split(": ", 1)[1]) from None


def _size(where: str, size: int) -> int:
    """A byte count an agent sent, refused when out of range (see MAX_BYTES)."""
    problem = bytes_problem(size)
    if problem is not None:
        raise InvalidArgument(where, problem)
    return size


def _sizes(where: str, sizes: Mapping[str, int]) -> dict[str, int]:
    return {uuid: _size(f"{where}[{uuid[:64]!r}]", size) for uuid, size in sizes.items()}


def _devices_from_proto(devices: list[common_pb2.GpuDevice], where: str) -> tuple[GpuDevice, ...]:
    if len(devices) > MAX_DEVICES:
        raise InvalidArgument(where, f"{len(devices)} devices; at most {MAX_DEVICES}")
    decoded = tuple(device_from_proto(device) for device in devices)
    uuids = [device.uuid for device in decoded]
    if len(set(uuids)) != len(uuids) or "" in uuids:
        raise InvalidArgument(where, "every device needs a distinct, non-empty uuid")
    for number, device in enumerate(decoded):
        for name in ("total_bytes", "free_bytes", "used_bytes"):
            _size(f"{where}[{number}].{name}", getattr(device, name))
        for name in ("uuid", "name", "parent_uuid", "compute_capability"):
            _short(f"{where}[{number}].{name}", getattr(device, name))
    return decoded


def _short(where: str, text: str, limit: int = MAX_TEXT) -> str:
    """A string an agent sent that is shown or keyed (a device's name, a capability):
    refused when longer than `limit`."""
    if len(text) > limit:
        raise InvalidArgument(where, f"{len(text):,} characters; at most {limit}")
    return text


# ------------------------------------------------------------------ agent -> scheduler


def encode_agent_message(message: AgentMessage) -> agent_pb2.AgentMessage:
    match message:
        case Hello():
            return agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    server_name=message.server,
                    replica_index=message.index,
                    capabilities=sorted(message.capabilities),
                    memory_bytes=message.memory_bytes,
                    overcommit_percentage=message.overcommit_percentage,
                    devices=[device_to_proto(device) for device in message.devices],
                    loaded_models=[
                        common_pb2.LoadedModel(
                            name=model.name,
                            version=model.version,
                            footprint_bytes=dict(model.footprint_bytes),
                        )
                        for model in message.loaded
                    ],
                    agent_version=message.agent_version,
                )
            )
        case ModelEvent():
            return agent_pb2.AgentMessage(
                event=agent_pb2.ModelEvent(
                    kind=_KINDS[message.kind],
                    model_name=message.model,
                    version=message.version,
                    message=message.message,
                    footprint_bytes=dict(message.footprint_bytes),
                    host_memory_bytes=message.host_bytes,
                )
            )
        case ResourceUpdate():
            return agent_pb2.AgentMessage(
                resources=agent_pb2.ResourceUpdate(
                    devices=[device_to_proto(device) for device in message.devices]
                )
            )
        case DrainRequest():
            return agent_pb2.AgentMessage(drain=agent_pb2.DrainRequest())
    raise TypeError(f"not an agent message: {message!r}")  # pragma: no cover


def decode_agent_message(message: agent_pb2.AgentMessage) -> AgentMessage:
    which = message.WhichOneof("message")
    if which == "hello":
        return _hello_from_proto(message.hello)
    if which == "event":
        event = message.event
        kind = _KIND_OF.get(event.kind)
        if kind is None:
            raise InvalidArgument("event.kind", f"{event.kind} is not a known event kind")
        _name("event.model_name", event.model_name)
        return ModelEvent(
            kind=kind,
            model=event.model_name,
            version=event.version,
            message=clip(event.message, MAX_EVENT_MESSAGE),
            footprint_bytes=_sizes("event.footprint_bytes", event.footprint_bytes),
            host_bytes=(
                _size("event.host_memory_bytes", event.host_memory_bytes)
                if event.HasField("host_memory_bytes")
                else None
            ),
        )
    if which == "resources":
        return ResourceUpdate(_devices_from_proto(list(message.resources.devices), "devices"))
    if which == "drain":
        return DrainRequest()
    raise InvalidArgument("message", "empty or unknown agent message")


def _hello_from_proto(hello: agent_pb2.Hello) -> Hello:
    if not hello.server_name:
        raise InvalidArgument("hello.server_name", "must be set")
    _name("hello.server_name", hello.server_name)
    for model in hello.loaded_models:
        _name("hello.loaded_models.name", model.name)
    if len(hello.capabilities) > MAX_CAPABILITIES:
        raise InvalidArgument(
            "hello.capabilities", f"{len(hello.capabilities)}; at most {MAX_CAPABILITIES}"
        )
    for capability in hello.capabilities:
        _short("hello.capabilities", capability)
    _short("hello.agent_version", hello.agent_version, 64)
    if hello.overcommit_percentage > MAX_OVERCOMMIT_PERCENTAGE:
        raise InvalidArgument(
            "hello.overcommit_percentage",
            f"{hello.overcommit_percentage} is out of range (0 to {MAX_OVERCOMMIT_PERCENTAGE})",
        )
    return Hello(
        server=hello.server_name,
        index=hello.replica_index,
        capabilities=frozenset(c.strip() for c in hello.capabilities if c.strip()),
        memory_bytes=_size("hello.memory_bytes", hello.memory_bytes),
        overcommit_percentage=hello.overcommit_percentage,
        devices=_devices_from_proto(list(hello.devices), "hello.devices"),
        loaded=tuple(
            LoadedModel(
                m.name, m.version, _sizes("hello.loaded.footprint_bytes", m.footprint_bytes)
            )
            for m in hello.loaded_models
        ),
        agent_version=hello.agent_version,
    )


# ------------------------------------------------------------------ scheduler -> agent


def encode_command(command: Command) -> agent_pb2.SchedulerMessage:
    match command:
        case Welcome():
            return agent_pb2.SchedulerMessage(welcome=agent_pb2.Welcome())
        case Load():
            return agent_pb2.SchedulerMessage(
                load=agent_pb2.LoadCommand(
                    model_name=command.model,
                    version=command.version,
                    storage_uri=command.storage_uri,
                    parameters=dict(command.parameters),
                    gpu_memory_bytes=command.gpu_memory_bytes,
                    device_uuids=command.device_uuids,
                    gpus=command.gpus,
                    secret_name=command.secret_name,
                    artifact_version=command.artifact_version,
                    measure_host_memory=command.measure_host_memory,
                )
            )
        case Unload():
            return agent_pb2.SchedulerMessage(
                unload=agent_pb2.UnloadCommand(model_name=command.model, version=command.version)
            )
        case DrainComplete():
            return agent_pb2.SchedulerMessage(
                drain_complete=agent_pb2.DrainComplete(stranded_models=command.stranded)
            )
    raise TypeError(f"not a command: {command!r}")  # pragma: no cover


def decode_command(message: agent_pb2.SchedulerMessage) -> Command:
    which = message.WhichOneof("message")
    if which == "welcome":
        return Welcome()
    if which == "load":
        load = message.load
        return Load(
            model=load.model_name,
            version=load.version,
            storage_uri=load.storage_uri,
            parameters=dict(load.parameters),
            gpu_memory_bytes=load.gpu_memory_bytes,
            device_uuids=tuple(load.device_uuids),
            gpus=load.gpus or 1,
            secret_name=load.secret_name,
            artifact_version=load.artifact_version if load.HasField("artifact_version") else None,
            measure_host_memory=load.measure_host_memory,
        )
    if which == "unload":
        return Unload(message.unload.model_name, message.unload.version)
    if which == "drain_complete":
        return DrainComplete(tuple(message.drain_complete.stranded_models))
    raise InvalidArgument("message", "empty or unknown scheduler message")
