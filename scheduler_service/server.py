"""Composition root: store, service, gRPC servers, HTTP server, reconcile loop."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from contract.aio import start_task, stop_tasks
from contract.grpc_tls import server_credentials
from protos import agent_pb2, scheduler_pb2
from scheduler_service.auth import BearerToken, read_token
from scheduler_service.http import build_app
from scheduler_service.metrics import SchedulerMetrics
from scheduler_service.service import Clock, SchedulerService
from scheduler_service.servicers import AgentServicer, ClientServicer, register
from scheduler_service.settings import SchedulerSettings
from scheduler_service.store import Store, state_file_lock

log = logging.getLogger(__name__)
_GRACE_S = 2.0


@dataclass
class RunningScheduler:
    service: SchedulerService
    registry: CollectorRegistry
    client_port: int
    agent_port: int
    http_port: int


@dataclass
class _GrpcServer:
    server: grpc.aio.Server
    health: health.HealthServicer
    port: int

    async def start(self, service_name: str) -> None:
        await self.server.start()
        for name in ("", service_name):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)


def _grpc_server(
    settings: SchedulerSettings,
    service_name: str,
    port: int,
    tls: grpc.ServerCredentials | None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> _GrpcServer:
    """A gRPC server with health checking and reflection, bound to `port` (0: any), with
    TLS when `tls` is given."""
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Let agents send keepalive pings, and ping them: either side notices a
            # half-open stream (a dead node's agent) within half a minute, and its replica's
            # next agent gets in (a second live one is refused).
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # One process per port: never share it with another scheduler.
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (service_name, health.SERVICE_NAME, reflection.SERVICE_NAME, _REFLECTION_V1)
    reflection.enable_server_reflection(names, server)
    # Reflection v1 (what newer grpcurl and Postman ask first) is v1alpha under another
    # name, message for message: the same servicer answers both.
    v1 = reflection.aio.ReflectionServicer(names)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                _REFLECTION_V1,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        v1.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    if port:
        _check_free(settings.host, port, service_name)
    address = f"{settings.host}:{port}"
    try:
        bound = server.add_secure_port(address, tls) if tls else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ListenError(f"cannot listen on {settings.host}:{port} ({exc})") from None
    return _GrpcServer(server, health_servicer, bound)


_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


class ListenError(OSError):
    """A port the scheduler is told to listen on cannot be had."""


def _check_free(host: str, port: int, what: str) -> None:
    """Refuse, in one line, a port another process listens on: gRPC would bind it too
    (SO_REUSEPORT) and clients would reach either process at random, or fail with a log
    line of its own."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise ListenError(
                    f"cannot listen on {host}:{port} for {what}: {exc.strerror} (another "
                    "scheduler, or another program, has it)"
                ) from None


_SERVICES = {
    service.full_name: service
    for service in (
        agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
        scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"],
    )
}
_AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
_CLIENT_SERVICE = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


@asynccontextmanager
async def running(
    settings: SchedulerSettings, clock: Clock | None = None
) -> AsyncIterator[RunningScheduler]:
    """Start everything; on exit stop it all, in order, and close the state file."""
    registry = CollectorRegistry()
    with ExitStack() as held:
        held.enter_context(state_file_lock(settings.db))
        store = Store(settings.db, settings.db_synchronous)
        held.callback(store.close)
        async with _serving(settings, store, registry, clock) as scheduler:
            yield scheduler


@asynccontextmanager
async def _serving(
    settings: SchedulerSettings,
    store: Store,
    registry: CollectorRegistry,
    clock: Clock | None,
) -> AsyncIterator[RunningScheduler]:
    metrics = SchedulerMetrics(registry)
    service = SchedulerService(settings, store, metrics, clock)
    tls = agent_tls = None
    if (client_side := settings.server_tls()) is not None:
        tls = server_credentials(client_side)
    if (agent_side := settings.server_tls(agents=True)) is not None:
        agent_tls = server_credentials(agent_side)
    interceptors = []
    if settings.client_token_file is not None:
        token = read_token(settings.client_token_file)
        interceptors.append(BearerToken(token, metrics.auth_refusals.labels("client")))
    client = _grpc_server(settings, _CLIENT_SERVICE, settings.port, tls, interceptors)
    register(client.server, ClientServicer(service), _SERVICES[_CLIENT_SERVICE])
    agent = _grpc_server(settings, _AGENT_SERVICE, settings.agent_port, agent_tls)
    register(
        agent.server,
        AgentServicer(service, settings.agent_queue_size),
        _SERVICES[_AGENT_SERVICE],
    )
    ready = False
    tasks: list[asyncio.Task[None]] = []
    # Ready while every listener is up and the reconcile loop is alive.
    runner = web.AppRunner(
        build_app(registry, lambda: ready and not any(task.done() for task in tasks)),
        access_log=None,
    )
    await runner.setup()
    if settings.http_port:
        _check_free(settings.host, settings.http_port, "HTTP")
    site = web.TCPSite(runner, settings.host, settings.http_port)
    try:
        await site.start()
        http_port = runner.addresses[0][1]
        await client.start(_CLIENT_SERVICE)
        await agent.start(_AGENT_SERVICE)
        service.serving()
        tasks.append(start_task(service.run(), "reconcile"))
        ready = True
        log.info(
            "scheduler ready: client=%s:%d agent=%s:%d http=%s:%d db=%s policy=%s",
            settings.host,
            client.port,
            settings.host,
            agent.port,
            settings.host,
            http_port,
            settings.db,
            settings.policy.value,
        )
        yield RunningScheduler(service, registry, client.port, agent.port, http_port)
    finally:
        ready = False
        await asyncio.gather(client.server.stop(_GRACE_S), agent.server.stop(_GRACE_S))
        await stop_tasks(tasks)
        await runner.cleanup()
        log.info("scheduler stopped")
