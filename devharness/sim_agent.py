"""A simulated agent: speaks the real agent protocol over a real gRPC stream.

It does what a test tells it: load (or fail, or stay silent), unload, drain. Everything it
receives is kept for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from contract.grpc_tls import channel_credentials
from contract.protocol import (
    AgentMessage,
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
from contract.tls import ClientTls
from contract.wire import decode_command, encode_agent_message
from protos import agent_pb2, agent_pb2_grpc

GiB = 2**30


@dataclass
class SimGpu:
    uuid: str
    total_bytes: int
    free_bytes: int
    name: str = "Simulated GPU"
    index: int = 0

    def device(self) -> GpuDevice:
        return GpuDevice(
            uuid=self.uuid,
            name=self.name,
            index=self.index,
            total_bytes=self.total_bytes,
            free_bytes=self.free_bytes,
            used_bytes=self.total_bytes - self.free_bytes,
        )


@dataclass
class SimAgent:
    address: str
    server: str
    index: int = 0
    capabilities: tuple[str, ...] = ("mlserver", "sklearn", "xgboost")
    memory_bytes: int = 8 * GiB
    overcommit_percentage: int = 0
    gpus: list[SimGpu] = field(default_factory=list)
    # Behaviour: models whose loads fail (message), or never answer.
    fail: dict[str, str] = field(default_factory=dict)
    fail_memory: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    # Connect with TLS (and a client certificate, for a scheduler that asks for one).
    tls: ClientTls | None = None
    # The GPU memory a load of a model reports having taken, per device uuid (default none).
    footprints: dict[str, dict[str, int]] = field(default_factory=dict)
    # State and what was seen.
    loaded: dict[str, int] = field(default_factory=dict)
    loads: list[Load] = field(default_factory=list)
    unloads: list[Unload] = field(default_factory=list)
    welcomed: int = 0
    drain_complete: DrainComplete | None = None
    closed_with: grpc.StatusCode | None = None

    def __post_init__(self) -> None:
        self._outgoing: asyncio.Queue[AgentMessage | None] = asyncio.Queue()
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._call: grpc.aio.StreamStreamCall[Any, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.server}-{self.index}"

    def hello(self) -> Hello:
        return Hello(
            server=self.server,
            index=self.index,
            capabilities=frozenset(self.capabilities),
            memory_bytes=self.memory_bytes,
            overcommit_percentage=self.overcommit_percentage,
            devices=tuple(gpu.device() for gpu in self.gpus),
            loaded=tuple(
                LoadedModel(name, version) for name, version in sorted(self.loaded.items())
            ),
        )

    async def connect(self) -> SimAgent:
        """Open the stream and send the hello (with what it holds)."""
        self._outgoing = asyncio.Queue()
        self._outgoing.put_nowait(self.hello())
        if self.tls is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        else:
            self._channel = grpc.aio.secure_channel(
                self.address, channel_credentials(self.tls), self.tls.options()
            )
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        call = stub.Connect(self._requests())
        self._call = call
        self._task = asyncio.create_task(self._receive(call))
        return self

    async def disconnect(self) -> None:
        """Drop the stream, as a crashed agent would."""
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._task
        if self._channel is not None:
            await self._channel.close()
        self._task = self._channel = self._call = None

    @property
    def connected(self) -> bool:
        return self._task is not None and not self._task.done()

    def drain(self) -> None:
        self._outgoing.put_nowait(DrainRequest())

    def report_resources(self) -> None:
        self._outgoing.put_nowait(ResourceUpdate(tuple(g.device() for g in self.gpus)))

    def event(self, kind: EventKind, name: str, version: int, message: str = "") -> None:
        self._outgoing.put_nowait(ModelEvent(kind, name, version, message))

    async def _requests(self) -> AsyncIterator[agent_pb2.AgentMessage]:
        while (message := await self._outgoing.get()) is not None:
            yield encode_agent_message(message)

    async def _receive(self, call: AsyncIterable[agent_pb2.SchedulerMessage]) -> None:
        try:
            await self._dispatch(call)
        except grpc.aio.AioRpcError as exc:
            self.closed_with = exc.code()

    async def _dispatch(self, call: AsyncIterable[agent_pb2.SchedulerMessage]) -> None:
        async for message in call:
            match decode_command(message):
                case Welcome():
                    self.welcomed += 1
                case Load() as load:
                    self._load(load)
                case Unload() as unload:
                    self._unload(unload)
                case DrainComplete() as done:
                    self.drain_complete = done

    def _load(self, command: Load) -> None:
        name, version = command.model, command.version
        self.loads.append(command)
        if name in self.silent:
            return
        if name in self.fail_memory:
            self.event(EventKind.LOAD_FAILED_MEMORY, name, version, "not enough memory")
        elif name in self.fail:
            self.event(EventKind.LOAD_FAILED, name, version, self.fail[name])
        else:
            self.loaded[name] = version
            footprint = self.footprints.get(name, {})
            self._outgoing.put_nowait(
                ModelEvent(EventKind.LOADED, name, version, footprint_bytes=footprint)
            )

    def _unload(self, command: Unload) -> None:
        self.unloads.append(command)
        if self.loaded.get(command.model, 0) <= command.version:
            self.loaded.pop(command.model, None)
        self.event(EventKind.UNLOADED, command.model, command.version)
