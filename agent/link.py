"""The agent's one bidirectional stream to the scheduler.

Up: Hello first (every time the stream is opened), then model events, resource updates and a
drain request. Down: Welcome, then load/unload commands and DrainComplete. A lost stream is
opened again with capped exponential back-off and jitter; the Hello then reports the models
loaded here, so the scheduler reconciles instead of reloading them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

import grpc
import grpc.aio

from agent.gpu_monitor import GpuMonitor
from agent.gpus import gpu_capabilities
from agent.metrics import AgentMetrics
from agent.models import ModelManager
from agent.settings import AgentSettings
from contract import __version__
from contract.aio import stop_tasks
from contract.errors import InvalidArgument
from contract.grpc_tls import channel_credentials
from contract.logs import log_fields
from contract.protocol import (
    AgentMessage,
    DrainComplete,
    DrainRequest,
    GpuDevice,
    Hello,
    Load,
    ModelEvent,
    ResourceUpdate,
    Unload,
    Welcome,
)
from contract.tls import TlsError
from contract.wire import decode_command, encode_agent_message
from protos import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)


class BadHandshake(Exception):
    """The scheduler did not answer the hello with a welcome."""


class Outbox:
    """Where messages for the scheduler go: the open stream's queue, or nowhere.

    Messages produced while no stream is open are dropped: the next Hello carries the state
    they described (loaded models, devices).
    """

    def __init__(self, replica: str = "") -> None:
        self.replica = replica
        self._queue: asyncio.Queue[agent_pb2.AgentMessage | None] | None = None

    def attach(self, queue: asyncio.Queue[agent_pb2.AgentMessage | None]) -> None:
        self._queue = queue

    def detach(self) -> None:
        self._queue = None

    @property
    def attached(self) -> bool:
        return self._queue is not None

    def send(self, message: AgentMessage) -> bool:
        if self._queue is None:
            return False
        self._queue.put_nowait(encode_agent_message(message))
        return True

    def event(self, event: ModelEvent) -> None:
        if not self.send(event):
            log.info(
                "model %s v%d on %s: %s not sent, no stream to the scheduler (the next "
                "hello reports the state)",
                event.model,
                event.version,
                self.replica,
                event.kind,
                extra=log_fields(model=event.model, version=event.version),
            )

    def end(self) -> bool:
        """Queue the end of the stream: the writer half-closes it after what is queued.
        Nothing is sent after it (the outbox detaches)."""
        queue, self._queue = self._queue, None
        if queue is None:
            return False
        queue.put_nowait(None)
        return True


class SchedulerLink:
    def __init__(
        self,
        settings: AgentSettings,
        manager: ModelManager,
        gpus: GpuMonitor,
        metrics: AgentMetrics,
        outbox: Outbox,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.gpus = gpus
        self.metrics = metrics
        self.outbox = outbox
        self._jitter = jitter
        self.connected = False
        self.draining = False
        self.drain_complete = asyncio.Event()
        self.stranded: list[str] = []
        self._welcomed_once = False
        self._closing = False
        self._closed = asyncio.Event()

    @property
    def replica(self) -> str:
        return self.settings.replica

    def backoff_s(self, attempt: int) -> float:
        """Capped exponential back-off with jitter: between half and all of the step."""
        step = min(
            self.settings.reconnect_max_s,
            self.settings.reconnect_initial_s * 2.0 ** min(attempt, 30),
        )
        return step * (0.5 + 0.5 * self._jitter())

    def send_resource_update(self, devices: Sequence[GpuDevice]) -> bool:
        sent = self.outbox.send(ResourceUpdate(tuple(devices)))
        if sent:
            self.metrics.resource_updates.inc()
            log.info("%s: resource update sent (%d device(s))", self.replica, len(devices))
        return sent

    def request_drain(self) -> None:
        """Ask the scheduler to move this replica's models (now, and after any reconnect)."""
        if self.draining:
            return
        self.draining = True
        if self.outbox.send(DrainRequest()):
            log.info("%s: drain requested", self.replica)
        else:
            log.info("%s: drain will be requested once connected", self.replica)

    async def close(self) -> None:
        """End the stream gracefully: send what is queued, half-close, and wait for the
        scheduler to end it too, so nothing sent is lost to a cancel. (The caller bounds
        the wait.)"""
        self._closing = True
        if self.outbox.end():
            await self._closed.wait()

    async def run(self) -> None:
        """Keep a stream open until cancelled or closed."""
        attempt = 0
        while True:
            try:
                await self._session()
                if self._closing:
                    self.set_connected(False)
                    self._closed.set()
                    return
                log.warning("%s: the scheduler closed the stream", self.replica)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "%s: stream to the scheduler at %s: %s %s",
                    self.replica,
                    self.settings.scheduler_address,
                    exc.code().name,
                    exc.details(),
                )
            except TimeoutError:
                log.warning(
                    "%s: handshake with the scheduler failed: no welcome from the scheduler "
                    "within %gs",
                    self.replica,
                    self.settings.request_timeout_s,
                )
            except (BadHandshake, TlsError) as exc:
                log.warning("%s: handshake with the scheduler failed: %s", self.replica, exc)
            except Exception:
                log.exception("%s: stream to the scheduler failed", self.replica)
            if self.connected:
                attempt = 0
            self.set_connected(False)
            delay = self.backoff_s(attempt)
            attempt += 1
            log.info("%s: reconnecting in %.2fs", self.replica, delay)
            await asyncio.sleep(delay)

    def set_connected(self, value: bool) -> None:
        self.connected = value
        self.metrics.connected.set(1 if value else 0)

    async def hello(self) -> Hello:
        devices = await self.gpus.refresh()
        self.gpus.mark_reported(devices)
        capabilities = frozenset(self.settings.capabilities)
        if self.settings.gpu_capabilities:
            # Sent in the hello only: devices that change later change them at the next
            # connection.
            derived = gpu_capabilities(devices)
            log.info(
                "%s: capabilities from NVML: %s",
                self.replica,
                ", ".join(sorted(derived)) or "none (no GPU read)",
            )
            capabilities |= derived
        return Hello(
            server=self.settings.server,
            index=self.settings.index,
            capabilities=capabilities,
            memory_bytes=self.settings.memory_bytes,
            overcommit_percentage=self.settings.overcommit_percentage,
            devices=tuple(devices),
            loaded=tuple(sorted(self.manager.loaded.values(), key=lambda m: m.name)),
            agent_version=__version__,
        )

    async def _session(self) -> None:
        options = [
            ("grpc.max_receive_message_length", 64 * 2**20),
            ("grpc.max_send_message_length", 64 * 2**20),
            # The scheduler permits a ping every 10 s; one every 20 s finds a dead peer.
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        tls = self.settings.client_tls()
        if tls is None:
            channel = grpc.aio.insecure_channel(self.settings.scheduler_address, options=options)
        else:
            channel = grpc.aio.secure_channel(
                self.settings.scheduler_address, channel_credentials(tls), options + tls.options()
            )
        async with channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Connect()
            # Queue events from now on: whatever completes after the hello is built is sent
            # right after the welcome, so no event falls between hello and stream.
            queue: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()
            if self.draining:
                queue.put_nowait(encode_agent_message(DrainRequest()))
            self.outbox.attach(queue)
            try:
                hello = await self.hello()
                await _write_or_fail(call, encode_agent_message(hello))
                first = await asyncio.wait_for(call.read(), timeout=self.settings.request_timeout_s)
                if not isinstance(first, agent_pb2.SchedulerMessage) or not first.HasField(
                    "welcome"
                ):
                    raise BadHandshake(f"expected a welcome, got {first!r}")
            except BaseException:
                self.outbox.detach()
                call.cancel()
                raise
            self.set_connected(True)
            if self._welcomed_once:
                self.metrics.reconnects.inc()
            self._welcomed_once = True
            log.info(
                "%s: connected to the scheduler at %s (%d model(s), %d GPU(s) reported)",
                self.replica,
                self.settings.scheduler_address,
                len(hello.loaded),
                len(hello.devices),
            )
            # Not start_task: these two end with the stream, and their error is raised
            # (and logged once) by run() below.
            writer = asyncio.create_task(self._write(call, queue), name="agent stream writer")
            reader = asyncio.create_task(self._read(call), name="agent stream reader")
            try:
                done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if reader not in done:
                    # The writer half-closed the stream: read until the scheduler ends it.
                    await reader
            finally:
                self.outbox.detach()
                await stop_tasks([writer, reader])
                call.cancel()

    async def _write(
        self,
        call: grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.SchedulerMessage],
        queue: asyncio.Queue[agent_pb2.AgentMessage | None],
    ) -> None:
        while (message := await queue.get()) is not None:
            await _write_or_fail(call, message)
        await call.done_writing()

    async def _read(
        self, call: grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.SchedulerMessage]
    ) -> None:
        while True:
            message = await call.read()
            if not isinstance(message, agent_pb2.SchedulerMessage):
                return  # end of stream
            self.dispatch(message)

    def dispatch(self, message: agent_pb2.SchedulerMessage) -> None:
        try:
            command = decode_command(message)
        except InvalidArgument as exc:
            log.warning("%s: unknown message from the scheduler: %s", self.replica, exc)
            return
        match command:
            case Load() as load:
                log.info(
                    "model %s v%d on %s: load command (devices %s, %d GPU bytes)",
                    load.model,
                    load.version,
                    self.replica,
                    ",".join(load.device_uuids) or "-",
                    load.gpu_memory_bytes,
                    extra=log_fields(model=load.model, version=load.version),
                )
                self.manager.load(load)
            case Unload() as unload:
                log.info(
                    "model %s v%d on %s: unload command",
                    unload.model,
                    unload.version,
                    self.replica,
                    extra=log_fields(model=unload.model, version=unload.version),
                )
                self.manager.unload(unload)
            case DrainComplete(stranded=stranded):
                self.stranded = list(stranded)
                log.info(
                    "%s: drain complete%s",
                    self.replica,
                    f" (stranded: {', '.join(self.stranded)})" if self.stranded else "",
                )
                self.drain_complete.set()
            case Welcome():
                log.debug("%s: extra welcome ignored", self.replica)


async def _write_or_fail(
    call: grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.SchedulerMessage],
    message: agent_pb2.AgentMessage,
) -> None:
    """Write, or raise the call's own error when it has ended already (the scheduler is
    unreachable, or ended the stream): gRPC says only "RPC already finished"."""
    try:
        await call.write(message)
    except asyncio.InvalidStateError:
        code = await call.code()
        raise grpc.aio.AioRpcError(
            code,
            await call.initial_metadata(),
            await call.trailing_metadata(),
            await call.details(),
        ) from None
