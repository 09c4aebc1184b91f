"""The agent end to end against a small in-test AgentService (a real gRPC server on
127.0.0.1:0), a fake V2 inference server and the fake NVML library."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest

from agent.main import Agent
from agent.settings import AgentSettings
from contract.protocol import Load, Unload
from contract.wire import encode_command
from devharness import fake_nvml
from devharness.fake_nvml import FakeNvml, GiB
from protos import agent_pb2, agent_pb2_grpc
from tests.fakes.fake_v2 import FakeV2Server
from tests.support.wait import wait_until

GPU_A = "GPU-11111111-aaaa"  # 80 GiB free
GPU_B = "GPU-22222222-bbbb"  # 50 GiB free
SKLEARN = {"implementation": "mlserver_sklearn.SKLearnModel"}


class FakeScheduler(agent_pb2_grpc.AgentServiceServicer):
    """Records what agents send; lets a test push commands down the open stream."""

    def __init__(self) -> None:
        self.hellos: list[agent_pb2.Hello] = []
        self.received: list[agent_pb2.AgentMessage] = []
        self._outbound: asyncio.Queue[agent_pb2.SchedulerMessage | None] | None = None
        self.open = False
        # True: take the hello, never welcome (an overloaded or broken scheduler).
        self.hold_welcome = False

    async def Connect(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            return
        self.hellos.append(first.hello)
        if self.hold_welcome:
            while await context.read() is not grpc.aio.EOF:
                pass
            return
        queue: asyncio.Queue[agent_pb2.SchedulerMessage | None] = asyncio.Queue()
        self._outbound = queue
        self.open = True  # before the welcome: the agent may act on it at once
        await context.write(agent_pb2.SchedulerMessage(welcome=agent_pb2.Welcome()))

        async def read() -> None:
            try:
                while True:
                    message = await context.read()
                    if message is grpc.aio.EOF:
                        return
                    self.received.append(message)
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (command := await queue.get()) is not None:
                await context.write(command)
        finally:
            self.open = False
            reader.cancel()

    def send(self, message: agent_pb2.SchedulerMessage) -> None:
        assert self._outbound is not None and self.open, "no agent connected"
        self._outbound.put_nowait(message)

    def load(
        self,
        name: str,
        uri: Path | str,
        *,
        version: int = 1,
        gpu_memory: int = 0,
        devices: tuple[str, ...] = (),
        parameters: dict[str, str] | None = None,
    ) -> None:
        self.send(
            encode_command(
                Load(name, version, str(uri), parameters or SKLEARN, gpu_memory, devices)
            )
        )

    def unload(self, name: str, version: int = 1) -> None:
        self.send(encode_command(Unload(name, version)))

    def events(self, name: str | None = None) -> list[agent_pb2.ModelEvent]:
        return [
            m.event
            for m in self.received
            if m.HasField("event") and (name is None or m.event.model_name == name)
        ]

    def kinds(self, name: str) -> list[str]:
        return [agent_pb2.ModelEvent.Kind.Name(e.kind) for e in self.events(name)]

    def resource_updates(self) -> list[agent_pb2.ResourceUpdate]:
        return [m.resources for m in self.received if m.HasField("resources")]

    def drains(self) -> int:
        return sum(1 for m in self.received if m.HasField("drain"))


class SchedulerServer:
    def __init__(self, fake: FakeScheduler) -> None:
        self.fake = fake
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> SchedulerServer:
        self.server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self.fake, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)
            self.server = None


@pytest.fixture
async def stand_in() -> AsyncIterator[SchedulerServer]:
    server = await SchedulerServer(FakeScheduler()).start()
    yield server
    await server.stop()


def settings_for(v2: FakeV2Server, scheduler_port: int, **overrides: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "pod_name": "gpu-server-1",
        "capabilities": ["sklearn", "model-on-gpu"],
        "memory_bytes": 8 * GiB,
        "overcommit_percentage": 20,
        "scheduler_host": "127.0.0.1",
        "scheduler_port": scheduler_port,
        "inference_host": "127.0.0.1",
        "inference_http_port": v2.port,
        "model_repository": v2.repository,
        "http_host": "127.0.0.1",
        "readiness_port": 0,
        "metrics_port": 0,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.2,
        "resource_report_interval_s": 0.05,
        "request_timeout_s": 5,
        "load_timeout_s": 10,
        "drain_timeout_s": 10,
    }
    values.update(overrides)
    return AgentSettings(**values)


@dataclass
class Running:
    agent: Agent
    fake: FakeScheduler

    async def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        port = port or self.agent.http.readiness_port
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.text()


@pytest.fixture
async def running(
    gpus: FakeNvml, v2: FakeV2Server, stand_in: SchedulerServer
) -> AsyncIterator[Running]:
    agent = Agent(settings_for(v2, stand_in.port))
    await agent.start()
    await wait_until(lambda: agent.link.connected, what="agent connected")
    yield Running(agent, stand_in.fake)
    await agent.stop()


async def test_hello_reports_identity_devices_and_capabilities(running: Running) -> None:
    (hello,) = running.fake.hellos
    assert hello.server_name == "gpu-server"
    assert hello.replica_index == 1
    assert list(hello.capabilities) == ["model-on-gpu", "sklearn"]  # a set, sent sorted
    assert hello.memory_bytes == 8 * GiB
    assert hello.overcommit_percentage == 20
    assert hello.agent_version
    assert [(d.uuid, d.index, d.total_bytes, d.free_bytes) for d in hello.devices] == [
        (GPU_A, 0, 80 * GiB, 80 * GiB),
        (GPU_B, 1, 80 * GiB, 50 * GiB),
    ]
    assert list(hello.loaded_models) == []


async def test_http_endpoints(running: Running) -> None:
    assert await running.get("/ready") == (200, "ready\n")
    assert (await running.get("/live"))[0] == 200
    status, text = await running.get("/metrics", running.agent.http.metrics_port)
    assert status == 200
    assert "gpuplace_agent_scheduler_connected 1.0" in text
    assert (
        f'gpuplace_agent_gpu_memory_free_bytes{{name="NVIDIA H100 80GB HBM3",uuid="{GPU_B}"}}'
        in text
    )


async def test_load_measures_the_footprint_nvml_sees(
    running: Running, gpus: FakeNvml, v2: FakeV2Server, artifact: Path
) -> None:
    v2.on_load = lambda name: gpus.take(GPU_B, 6 * GiB)
    running.fake.load("iris", artifact, version=1, gpu_memory=4 * GiB, devices=(GPU_B,))
    (event,) = await wait_until(lambda: running.fake.events("iris"), what="an event")
    assert agent_pb2.ModelEvent.Kind.Name(event.kind) == "LOADED"
    assert event.version == 1
    assert dict(event.footprint_bytes) == {GPU_B: 6 * GiB}
    settings = json.loads((v2.repository / "iris" / "model-settings.json").read_text())
    assert settings["name"] == "iris"
    assert settings["parameters"]["version"] == "1"
    assert v2.loaded == {"iris": "1"}
    assert (artifact / "model.joblib").exists()
    # the drop is also reported as a resource update, after the event
    update = await wait_until(
        lambda: [u for u in running.fake.resource_updates() if u.devices[1].free_bytes == 44 * GiB],
        what="resource update",
    )
    assert [d.uuid for d in update[0].devices] == [GPU_A, GPU_B]
    kinds = [m.WhichOneof("message") for m in running.fake.received]
    assert kinds.index("event") < kinds.index("resources")


async def test_memory_refusal_does_not_touch_the_inference_server(
    running: Running, v2: FakeV2Server, artifact: Path
) -> None:
    running.fake.load("big", artifact, gpu_memory=60 * GiB, devices=(GPU_B,))
    (event,) = await wait_until(lambda: running.fake.events("big"))
    assert agent_pb2.ModelEvent.Kind.Name(event.kind) == "LOAD_FAILED_MEMORY"
    assert GPU_B in event.message and "50 GiB free" in event.message
    assert v2.load_count("big") == 0
    assert not (v2.repository / "big").exists()


async def test_inference_server_failure_is_reported(
    running: Running, v2: FakeV2Server, artifact: Path
) -> None:
    v2.fail["iris"] = "runtime exploded"
    running.fake.load("iris", artifact)
    (event,) = await wait_until(lambda: running.fake.events("iris"))
    assert agent_pb2.ModelEvent.Kind.Name(event.kind) == "LOAD_FAILED"
    assert "runtime exploded" in event.message
    assert not (v2.repository / "iris").exists()


async def test_commands_for_one_model_never_interleave(
    running: Running, v2: FakeV2Server, artifact: Path
) -> None:
    gate = v2.hold["iris"] = asyncio.Event()
    running.fake.load("iris", artifact)
    running.fake.unload("iris")
    await wait_until(lambda: v2.loads_started == 1)
    assert v2.calls.count(("unload", "iris")) == 0
    gate.set()
    await wait_until(lambda: len(running.fake.events("iris")) == 2)
    assert running.fake.kinds("iris") == ["LOADED", "UNLOADED"]
    assert [c for c in v2.calls if c[0] != "index"] == [("load", "iris"), ("unload", "iris")]
    assert not (v2.repository / "iris").exists()


async def test_new_version_in_place_and_old_version_unload(
    running: Running, v2: FakeV2Server, artifact: Path
) -> None:
    running.fake.load("iris", artifact, version=1)
    running.fake.load("iris", artifact, version=2)
    await wait_until(lambda: len(running.fake.events("iris")) == 2)
    running.fake.unload("iris", version=1)
    await wait_until(lambda: len(running.fake.events("iris")) == 3)
    assert running.fake.kinds("iris") == ["LOADED", "LOADED", "UNLOADED"]
    assert [e.version for e in running.fake.events("iris")] == [1, 2, 1]
    assert v2.loaded == {"iris": "2"}
    assert running.agent.manager.loaded["iris"].version == 2


async def test_resource_update_when_memory_drifts(running: Running, gpus: FakeNvml) -> None:
    gpus.take(GPU_A, 2 * GiB)
    update = await wait_until(
        lambda: [u for u in running.fake.resource_updates() if u.devices[0].free_bytes == 78 * GiB]
    )
    assert len(update[0].devices) == 2


async def test_reconnect_resends_hello_without_reloading(
    running: Running, stand_in: SchedulerServer, v2: FakeV2Server, artifact: Path
) -> None:
    running.fake.load("iris", artifact, version=3)
    await wait_until(lambda: running.fake.kinds("iris") == ["LOADED"])
    port = stand_in.port
    await stand_in.stop()
    await wait_until(lambda: not running.agent.link.connected, what="disconnect noticed")
    assert (await running.get("/ready"))[0] == 503
    await stand_in.start(port)
    await wait_until(lambda: len(running.fake.hellos) == 2, what="second hello")
    hello = running.fake.hellos[1]
    assert [(m.name, m.version) for m in hello.loaded_models] == [("iris", 3)]
    assert v2.load_count("iris") == 1
    await wait_until(lambda: running.agent.link.connected)
    registry = running.agent.registry
    assert registry.get_sample_value("gpuplace_agent_scheduler_reconnects_total") == 1
    assert (await running.get("/ready"))[0] == 200


async def test_restarted_agent_reports_what_the_server_holds(
    gpus: FakeNvml, v2: FakeV2Server, stand_in: SchedulerServer, artifact: Path
) -> None:
    first = Agent(settings_for(v2, stand_in.port))
    await first.start()
    await wait_until(lambda: first.link.connected)
    v2.on_load = lambda name: gpus.take(GPU_A, GiB)
    stand_in.fake.load("iris", artifact, version=4, gpu_memory=GiB // 2, devices=(GPU_A,))
    await wait_until(lambda: stand_in.fake.kinds("iris") == ["LOADED"])
    await first.stop()  # a crash: nothing unloaded

    second = Agent(settings_for(v2, stand_in.port))
    await second.start()
    try:
        await wait_until(lambda: len(stand_in.fake.hellos) == 2)
        (model,) = stand_in.fake.hellos[1].loaded_models
        assert (model.name, model.version, dict(model.footprint_bytes)) == ("iris", 4, {GPU_A: GiB})
        assert v2.load_count("iris") == 1
    finally:
        await second.stop()


async def test_not_ready_until_connected(gpus: FakeNvml, v2: FakeV2Server) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = sock.getsockname()[1]
    agent = Agent(settings_for(v2, nobody))
    await agent.start()
    try:
        running = Running(agent, FakeScheduler())
        assert await running.get("/ready") == (503, "not connected to the scheduler\n")
        assert (await running.get("/live"))[0] == 200
    finally:
        await agent.stop()


async def test_drain_moves_models_then_unloads_the_rest(
    running: Running, v2: FakeV2Server, artifact: Path
) -> None:
    running.fake.load("a", artifact)
    running.fake.load("b", artifact)
    await wait_until(lambda: running.fake.kinds("a") == ["LOADED"] == running.fake.kinds("b"))
    drain = asyncio.create_task(running.agent.drain_and_stop())
    await wait_until(lambda: running.fake.drains() == 1, what="drain request")
    assert (await running.get("/ready"))[0] == 503
    # the scheduler moved "a" elsewhere: it unloads it here, the agent keeps obeying
    running.fake.unload("a")
    await wait_until(lambda: running.fake.kinds("a") == ["LOADED", "UNLOADED"])
    running.fake.send(
        agent_pb2.SchedulerMessage(drain_complete=agent_pb2.DrainComplete(stranded_models=["b"]))
    )
    await asyncio.wait_for(drain, timeout=10)
    assert running.fake.kinds("b") == ["LOADED", "UNLOADED"]
    assert running.agent.link.stranded == ["b"]
    assert v2.loaded == {}
    assert not (v2.repository / "a").exists() and not (v2.repository / "b").exists()


async def test_sigterm_drains_and_exits_zero(
    tmp_path: Path, fake_library: Path, v2: FakeV2Server, stand_in: SchedulerServer, artifact: Path
) -> None:
    state = fake_nvml.two_gpus(tmp_path / "nvml-process.txt")
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gpuplace.cli",
            "agent",
            "--pod-name=gpu-server-0",
            "--scheduler-host=127.0.0.1",
            f"--scheduler-port={stand_in.port}",
            f"--inference-http-port={v2.port}",
            f"--model-repository={v2.repository}",
            "--http-host=127.0.0.1",
            "--readiness-port=0",
            "--metrics-port=0",
            "--drain-timeout-s=20",
            env=fake_nvml.subprocess_env(state),
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await wait_until(lambda: stand_in.fake.hellos, timeout=30, what="hello")
            (hello,) = stand_in.fake.hellos
            assert [d.uuid for d in hello.devices] == [
                GPU_A,
                GPU_B,
            ]  # fake NVML via LD_LIBRARY_PATH
            stand_in.fake.load("iris", artifact)
            await wait_until(lambda: stand_in.fake.kinds("iris") == ["LOADED"], timeout=20)
            process.send_signal(signal.SIGTERM)
            await wait_until(lambda: stand_in.fake.drains() == 1, timeout=20, what="drain")
            stand_in.fake.send(agent_pb2.SchedulerMessage(drain_complete=agent_pb2.DrainComplete()))
            code = await asyncio.wait_for(process.wait(), timeout=20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert stand_in.fake.kinds("iris") == ["LOADED", "UNLOADED"], output
    assert v2.loaded == {}
    assert not (v2.repository / "iris").exists()


async def started(settings: AgentSettings) -> Agent:
    agent = Agent(settings)
    await agent.start()
    await wait_until(lambda: agent.link.connected, what="agent connected")
    return agent


async def test_shutdown_keeps_within_the_drain_timeout(
    gpus: FakeNvml, v2: FakeV2Server, stand_in: SchedulerServer, artifact: Path
) -> None:
    """No drain answer and a load that never ends: the agent still exits within
    drain_timeout_s, after unloading what it holds and sending those events."""
    agent = await started(settings_for(v2, stand_in.port, drain_timeout_s=3))
    fake = stand_in.fake
    fake.load("a", artifact)
    await wait_until(lambda: fake.kinds("a") == ["LOADED"])
    v2.hold["stuck"] = asyncio.Event()
    fake.load("stuck", artifact)
    await wait_until(lambda: v2.loads_started >= 2, what="the stuck load")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(agent.drain_and_stop(), timeout=10)
    assert loop.time() - began < 3.2
    assert fake.kinds("a") == ["LOADED", "UNLOADED"]
    assert "a" not in v2.loaded


async def test_a_second_signal_skips_every_wait(
    gpus: FakeNvml, v2: FakeV2Server, stand_in: SchedulerServer, artifact: Path
) -> None:
    agent = await started(settings_for(v2, stand_in.port, drain_timeout_s=60))
    v2.hold["stuck"] = asyncio.Event()
    stand_in.fake.load("stuck", artifact)
    await wait_until(lambda: v2.loads_started >= 1, what="the stuck load")
    force = asyncio.Event()
    drain = asyncio.create_task(agent.drain_and_stop(force))
    await wait_until(lambda: stand_in.fake.drains() == 1, what="drain request")
    force.set()
    await asyncio.wait_for(drain, timeout=3)


async def test_a_missing_welcome_is_named_in_the_log(
    gpus: FakeNvml, v2: FakeV2Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A scheduler that takes the hello but never welcomes: the log says so."""
    caplog.set_level(logging.WARNING, logger="agent.link")
    fake = FakeScheduler()
    fake.hold_welcome = True
    server = await SchedulerServer(fake).start()
    agent = Agent(settings_for(v2, server.port, request_timeout_s=0.3))
    await agent.start()
    try:
        await wait_until(
            lambda: "no welcome from the scheduler within 0.3s" in caplog.text, what="log line"
        )
    finally:
        await agent.stop()
        await server.stop()


@pytest.mark.usefixtures("gpus")
@pytest.mark.parametrize("same_folder", [True, False], ids=["served", "another-folder"])
async def test_the_agent_says_when_the_inference_server_serves_another_folder(
    same_folder: bool,
    v2: FakeV2Server,
    stand_in: SchedulerServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.main")
    repository = v2.repository if same_folder else tmp_path / "not-served"
    agent = await started(settings_for(v2, stand_in.port, model_repository=repository))
    try:
        said = "does not serve --model-repository" in caplog.text
        assert said is not same_folder, caplog.text
        if not same_folder:
            assert (
                str(repository) in caplog.text and "MLSERVER_MODEL_REPOSITORY_ROOT" in caplog.text
            )
    finally:
        await agent.stop()


async def test_an_unreachable_scheduler_is_one_line_per_try_without_a_traceback(
    gpus: FakeNvml, v2: FakeV2Server, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = sock.getsockname()[1]
    caplog.set_level(logging.INFO, logger="agent")
    agent = Agent(settings_for(v2, nobody, reconnect_initial_s=0.05, reconnect_max_s=0.1))
    await agent.start()
    try:
        await wait_until(
            lambda: caplog.text.count("reconnecting in") >= 3, what="three tries", timeout=15
        )
    finally:
        await agent.stop()
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "UNAVAILABLE" in caplog.text
