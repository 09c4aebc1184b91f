"""Property-based fuzzing of both gRPC APIs of a real scheduler process: any client call,
any sequence of agent messages, is answered with OK or a refusal that names the problem —
never INTERNAL or UNKNOWN — and after each example the invariants hold: the scheduler is
ready, every model is in one known state, every copy in a known state on a replica that
said hello, and no replica holds more placed memory than it offers.

The test command runs a small budget; `GPUPLACE_FUZZ_EXAMPLES=10000` is the long run
(docs/reliability.md)."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devharness.scheduler import SchedulerProcess
from protos import agent_pb2, agent_pb2_grpc, common_pb2, scheduler_pb2, scheduler_pb2_grpc

EXAMPLES = int(os.environ.get("GPUPLACE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 100,  # the test command's budget: the same cases every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
}
MODEL_STATES = {"Pending", "ScheduleFailed", "Progressing", "Available", "Failed", "Terminating"}
COPY_STATES = {"LoadRequested", "Loading", "Available", "LoadFailed", "Unloading", "Unloaded"}

# Values where bugs live: empty, huge, unicode, control characters, path tricks.
texts = st.one_of(
    st.sampled_from(["", "iris", "a-b", "..", "../etc", "a\nb", "x" * 300, "ünïcode", "Model"]),
    st.text(max_size=40),
)
names = st.one_of(st.sampled_from(["iris", "m-1", "m-2", "llama"]), texts)
quantities = st.one_of(
    st.sampled_from(["", "1Gi", "512Mi", "2Ei", "1e400", "-1", "1e19", "0.5", "9" * 70, "1Ki"]),
    texts,
)
uris = st.one_of(
    st.sampled_from(
        ["", "gs://b/m", "s3://b/m", "http://[::1", "file:///proc/self/environ", "/etc/shadow",
         "https://u:p@h/m?sig=1", "gs://", "az://c/m", "x" * 5000]
    ),
    texts,
)  # fmt: skip
numbers = st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1))
specs = st.builds(
    common_pb2.ModelSpec,
    name=names,
    storage_uri=uris,
    requirements=st.lists(
        st.one_of(st.sampled_from(["sklearn", "model-on-gpu"]), texts), max_size=4
    ),
    server=st.one_of(st.just(""), names),
    memory=quantities,
    gpu_memory=quantities,
    gpus=st.integers(0, 100),
    replicas=numbers,
    parameters=st.dictionaries(texts, texts, max_size=3),
)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchedulerProcess]:
    process = SchedulerProcess(tmp_path_factory.mktemp("fuzz"), log_level="INFO").start()
    yield process
    assert process.process is not None and process.process.poll() is None, "it died"
    process.stop()
    log = Path(process.log_path).read_text()
    assert "Traceback" not in log, log[-4000:]


def invariants(scheduler: SchedulerProcess) -> None:
    with urllib.request.urlopen(f"{scheduler.http_url}/ready", timeout=10) as ready:
        assert ready.status == 200
    with grpc.insecure_channel(scheduler.client_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        models = stub.ListModels(scheduler_pb2.ListModelsRequest(page_size=1000), timeout=10)
        servers = stub.ListServers(scheduler_pb2.ListServersRequest(), timeout=10)
    known = {(s.name, r.index): r for s in servers.servers for r in s.replicas}
    placed: dict[tuple[str, int], int] = {}
    for model in models.models:
        assert model.state in MODEL_STATES, model.state
        for copy in model.replicas:
            assert copy.state in COPY_STATES, copy.state
            assert (copy.server, copy.replica_index) in known, "a copy on a replica never seen"
            if copy.state in ("LoadRequested", "Loading", "Available", "Unloading"):
                key = (copy.server, copy.replica_index)
                placed[key] = placed.get(key, 0) + model.placement_memory_bytes
    for key, used in placed.items():
        replica = known[key]
        assert used <= replica.memory_bytes * (100 + replica.overcommit_percentage) // 100, key


def call(action: str, spec: common_pb2.ModelSpec, stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    try:
        if action == "load":
            stub.LoadModel(scheduler_pb2.LoadModelRequest(model=spec), timeout=10)
        elif action == "plan":
            stub.PlanModel(scheduler_pb2.PlanModelRequest(model=spec), timeout=10)
        elif action == "unload":
            stub.UnloadModel(scheduler_pb2.UnloadModelRequest(name=spec.name), timeout=10)
        else:
            stub.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name=spec.name), timeout=10)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call) and exc.code() in REFUSALS, (exc.code(), exc.details())
        assert len(exc.details()) < 4096


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(["load", "plan", "unload", "status"]), specs), max_size=6)
)
def test_the_client_api_answers_anything_without_an_internal_error(
    scheduler: SchedulerProcess, calls: list[tuple[str, common_pb2.ModelSpec]]
) -> None:
    with grpc.insecure_channel(scheduler.client_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        for action, spec in calls:
            call(action, spec, stub)
    invariants(scheduler)


devices = st.builds(
    common_pb2.GpuDevice,
    uuid=st.one_of(st.sampled_from(["GPU-a", "GPU-b", ""]), texts),
    name=texts,
    total_bytes=st.integers(0, 2**64 - 1),
    free_bytes=st.integers(0, 2**64 - 1),
)
hellos = st.builds(
    agent_pb2.Hello,
    server_name=st.one_of(st.sampled_from(["fuzz", "fuzz-gpu"]), texts),
    replica_index=st.integers(0, 3),
    capabilities=st.lists(st.one_of(st.just("sklearn"), texts), max_size=3),
    memory_bytes=st.one_of(st.integers(0, 64 * 2**30), st.integers(0, 2**64 - 1)),
    overcommit_percentage=st.one_of(st.integers(0, 20), st.integers(0, 2**32 - 1)),
    devices=st.lists(devices, max_size=3),
)
events = st.builds(
    agent_pb2.ModelEvent,
    kind=st.integers(0, 6),
    model_name=names,
    version=st.one_of(st.integers(0, 3), st.integers(0, 2**64 - 1)),
    message=texts,
    footprint_bytes=st.dictionaries(texts, st.integers(0, 2**64 - 1), max_size=2),
)
messages = st.one_of(
    hellos.map(lambda h: agent_pb2.AgentMessage(hello=h)),
    events.map(lambda e: agent_pb2.AgentMessage(event=e)),
    st.lists(devices, max_size=2).map(
        lambda d: agent_pb2.AgentMessage(resources=agent_pb2.ResourceUpdate(devices=d))
    ),
    st.just(agent_pb2.AgentMessage(drain=agent_pb2.DrainRequest())),
    st.just(agent_pb2.AgentMessage()),
)


@FUZZ
@given(hellos, st.lists(messages, max_size=8))
def test_the_agent_stream_survives_any_messages(
    scheduler: SchedulerProcess, hello: agent_pb2.Hello, rest: list[agent_pb2.AgentMessage]
) -> None:
    with grpc.insecure_channel(scheduler.agent_address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        stream = stub.Connect(iter([agent_pb2.AgentMessage(hello=hello), *rest]), timeout=3)
        try:
            for _ in stream:
                pass  # commands: ignored (this agent never answers)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            assert exc.code() in REFUSALS | {
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED,
            }, (exc.code(), exc.details())
    invariants(scheduler)
