"""The agent protocol's one conversion: every value survives a round trip through protobuf,
and decoding refuses what the values promise never to be."""

from __future__ import annotations

import pytest

from contract.errors import InvalidArgument
from contract.protocol import (
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
from contract.wire import (
    decode_agent_message,
    decode_command,
    device_from_proto,
    device_to_proto,
    encode_agent_message,
    encode_command,
)
from protos import agent_pb2, common_pb2

GiB = 2**30
H100 = GpuDevice("GPU-a", "H100", 0, 80 * GiB, 60 * GiB, 20 * GiB)
MIG = GpuDevice("MIG-b", "H100 3g.40gb", 1, 40 * GiB, 40 * GiB, 0, parent_uuid="GPU-a")
H100_CC = GpuDevice("GPU-c", "H100", 2, 80 * GiB, 80 * GiB, 0, compute_capability="9.0")

AGENT_MESSAGES: list[AgentMessage] = [
    Hello(
        "mlserver",
        3,
        frozenset({"sklearn", "model-on-gpu"}),
        8 * GiB,
        25,
        devices=(H100, MIG),
        loaded=(LoadedModel("iris", 2, {"GPU-a": GiB}),),
        agent_version="0.1.0",
    ),
    Hello("triton", 0, frozenset(), 0, 0),
    *(ModelEvent(kind, "iris", 4, "why", {"GPU-a": 3 * GiB}) for kind in EventKind),
    ModelEvent(EventKind.LOADED, "iris", 4, host_bytes=0),  # measured: nothing taken
    ModelEvent(EventKind.LOADED, "iris", 4, host_bytes=300 * 2**20),
    ResourceUpdate((H100,)),
    ResourceUpdate((H100_CC, GpuDevice.unmeasured("GPU-z"))),
    ResourceUpdate(()),
    DrainRequest(),
]
COMMANDS: list[Command] = [
    Welcome(),
    Load("llama3", 9, "s3://bucket/llama3", {"implementation": "x.Y"}, 20 * GiB, ("GPU-a",), 2),
    Load("iris", 1),
    Load("iris", 2, "minio://models/iris", secret_name="minio-creds", artifact_version=3),
    Load("iris", 3, "gs://models/iris", artifact_version=0),  # folder 0/, not "unset"
    Load("iris", 4, "gs://models/iris", measure_host_memory=True),
    Unload("iris", 7),
    DrainComplete(("a", "b")),
    DrainComplete(),
]


@pytest.mark.parametrize("message", AGENT_MESSAGES, ids=repr)
def test_agent_messages_round_trip(message: AgentMessage) -> None:
    assert decode_agent_message(encode_agent_message(message)) == message


@pytest.mark.parametrize("command", COMMANDS, ids=repr)
def test_commands_round_trip(command: Command) -> None:
    assert decode_command(encode_command(command)) == command


def test_every_event_kind_has_its_own_wire_value() -> None:
    wire = {encode_agent_message(ModelEvent(kind, "m", 1)).event.kind for kind in EventKind}
    assert len(wire) == len(EventKind)
    assert agent_pb2.ModelEvent.KIND_UNSPECIFIED not in wire


def test_load_command_carries_each_value_once() -> None:
    """No client spec, no host memory: what the agent needs, nothing else."""
    fields = {field.name for field in agent_pb2.LoadCommand.DESCRIPTOR.fields}
    assert fields == {
        "model_name",
        "version",
        "storage_uri",
        "parameters",
        "gpu_memory_bytes",
        "device_uuids",
        "gpus",
        "secret_name",
        "artifact_version",
        "measure_host_memory",
    }


def test_storage_uri_is_not_in_the_repr() -> None:
    assert "hunter2" not in repr(Load("m", 1, "s3://key:hunter2@bucket/m"))


def test_a_load_without_gpus_spans_one_device() -> None:
    message = agent_pb2.SchedulerMessage(load=agent_pb2.LoadCommand(model_name="m", version=1))
    decoded = decode_command(message)
    assert isinstance(decoded, Load) and decoded.gpus == 1


def test_hello_capabilities_are_trimmed_and_empty_ones_dropped() -> None:
    wire = agent_pb2.AgentMessage(
        hello=agent_pb2.Hello(server_name="s", capabilities=[" sklearn ", "", "  "])
    )
    hello = decode_agent_message(wire)
    assert isinstance(hello, Hello) and hello.capabilities == frozenset({"sklearn"})


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        (agent_pb2.AgentMessage(hello=agent_pb2.Hello()), "hello.server_name"),
        (
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    server_name="s",
                    devices=[common_pb2.GpuDevice(uuid="x"), common_pb2.GpuDevice(uuid="x")],
                )
            ),
            "hello.devices",
        ),
        (
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(server_name="s", devices=[common_pb2.GpuDevice()])
            ),
            "hello.devices",
        ),
        (
            agent_pb2.AgentMessage(
                resources=agent_pb2.ResourceUpdate(
                    devices=[common_pb2.GpuDevice(uuid="x"), common_pb2.GpuDevice(uuid="x")]
                )
            ),
            "devices",
        ),
        (
            agent_pb2.AgentMessage(hello=agent_pb2.Hello(server_name="s", memory_bytes=2**61)),
            "hello.memory_bytes",
        ),
        (
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(server_name="s", overcommit_percentage=1001)
            ),
            "hello.overcommit_percentage",
        ),
        (
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    server_name="s", devices=[common_pb2.GpuDevice(uuid="x", free_bytes=2**64 - 1)]
                )
            ),
            "hello.devices[0].free_bytes",
        ),
        (
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    server_name="s",
                    devices=[common_pb2.GpuDevice(uuid=f"GPU-{n}") for n in range(257)],
                )
            ),
            "hello.devices",
        ),
        (
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    server_name="s",
                    loaded_models=[
                        common_pb2.LoadedModel(name="m", version=1, footprint_bytes={"x": 2**63})
                    ],
                )
            ),
            "hello.loaded.footprint_bytes['x']",
        ),
        (
            agent_pb2.AgentMessage(
                event=agent_pb2.ModelEvent(
                    kind=agent_pb2.ModelEvent.LOADED,
                    model_name="m",
                    footprint_bytes={"GPU-a": 2**64 - 1},
                )
            ),
            "event.footprint_bytes['GPU-a']",
        ),
        (
            agent_pb2.AgentMessage(
                event=agent_pb2.ModelEvent(
                    kind=agent_pb2.ModelEvent.LOADED, model_name="m", host_memory_bytes=2**62
                )
            ),
            "event.host_memory_bytes",
        ),
        (
            agent_pb2.AgentMessage(hello=agent_pb2.Hello(server_name="mlserver\nINFO forged")),
            "hello.server_name",
        ),
        (
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    server_name="s", loaded_models=[common_pb2.LoadedModel(name="../etc")]
                )
            ),
            "hello.loaded_models.name",
        ),
        (
            agent_pb2.AgentMessage(
                event=agent_pb2.ModelEvent(kind=agent_pb2.ModelEvent.LOADED, model_name="a\nb")
            ),
            "event.model_name",
        ),
        (
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    server_name="s", devices=[common_pb2.GpuDevice(uuid="x", name="n" * 254)]
                )
            ),
            "hello.devices[0].name",
        ),
        (
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(server_name="s", capabilities=[f"c{n}" for n in range(257)])
            ),
            "hello.capabilities",
        ),
        (
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(server_name="s", capabilities=["c" * 254])
            ),
            "hello.capabilities",
        ),
        (agent_pb2.AgentMessage(event=agent_pb2.ModelEvent(kind=99)), "event.kind"),
        (agent_pb2.AgentMessage(event=agent_pb2.ModelEvent()), "event.kind"),
        (agent_pb2.AgentMessage(), "message"),
    ],
)
def test_decoding_refuses_broken_agent_messages(wire: agent_pb2.AgentMessage, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_agent_message(wire)
    assert caught.value.field == field


def test_decoding_refuses_an_empty_command() -> None:
    with pytest.raises(InvalidArgument, match="message"):
        decode_command(agent_pb2.SchedulerMessage())


def test_a_device_from_an_older_agent_is_measured() -> None:
    """`memory_unknown` unset on the wire (an older agent) reads as measured."""
    decoded = device_from_proto(common_pb2.GpuDevice(uuid="GPU-a", total_bytes=GiB))
    assert decoded.measured
    assert not device_to_proto(H100).memory_unknown
    unknown = device_to_proto(GpuDevice.unmeasured("GPU-z"))
    assert unknown.memory_unknown
    assert device_from_proto(unknown) == GpuDevice.unmeasured("GPU-z")


def test_the_largest_sizes_accepted_are_one_exbibyte() -> None:
    hello = decode_agent_message(
        agent_pb2.AgentMessage(
            hello=agent_pb2.Hello(server_name="s", memory_bytes=2**60, overcommit_percentage=1000)
        )
    )
    assert isinstance(hello, Hello) and hello.memory_bytes == 2**60


def test_a_long_event_message_is_cut_short() -> None:
    event = decode_agent_message(
        agent_pb2.AgentMessage(
            event=agent_pb2.ModelEvent(
                kind=agent_pb2.ModelEvent.LOAD_FAILED, model_name="m", message="x" * 10**6
            )
        )
    )
    assert isinstance(event, ModelEvent)
    assert len(event.message) == 2000 and event.message.endswith("…")
