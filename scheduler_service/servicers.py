"""gRPC servicers: convert the request, call the service, convert the reply."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from contract.aio import start_task
from contract.errors import (
    AlreadyExists,
    GpuplaceError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from contract.logs import log_fields
from contract.names import replica_id
from contract.protocol import Command, DrainRequest, Hello, ModelEvent, ResourceUpdate
from contract.wire import decode_agent_message, encode_command
from protos import agent_pb2, agent_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from scheduler_service import convert
from scheduler_service.cluster import AgentSession
from scheduler_service.service import SchedulerService

log = logging.getLogger(__name__)
_CODES: dict[type[GpuplaceError], grpc.StatusCode] = {
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# A stream that says nothing is dropped after this long (a silent stream holds memory).
_HELLO_TIMEOUT_S = 10.0
Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    """The one place where errors become status codes."""
    if isinstance(exc, GpuplaceError):
        await context.abort(_CODES.get(type(exc), grpc.StatusCode.UNKNOWN), str(exc))
    log.error("unexpected error in a gRPC call", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the scheduler log")


def _unary(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await method(self, _well_formed(request), context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return wrapper


class Malformed:
    """A request whose bytes are not the message its method takes (garbage, or another
    message): answered INVALID_ARGUMENT by the method, never a traceback in the log."""

    def __init__(self, message: str, error: str) -> None:
        self.problem = f"not a valid {message} ({error})"


def _reader(message_class: Any) -> Callable[[bytes], Any]:
    def read(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Malformed(message_class.DESCRIPTOR.name, str(exc))

    return read


_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def register(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Add `servicer`'s methods for `service` to `server`, as the generated
    `add_*_to_server` does, with requests read by `_reader`: a malformed one reaches the
    method as `Malformed` instead of failing inside gRPC (which logs a traceback per
    request: an unauthenticated log flood)."""
    handlers = {
        method.name: _HANDLERS[method.client_streaming, method.server_streaming](
            getattr(servicer, method.name),
            request_deserializer=_reader(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


def _well_formed(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise InvalidArgument("request", request.problem)
    return request


# ListModels: models per page by default and at most, and the bytes a page stays under
# (gRPC's default message limit is 4 MiB).
PAGE_MODELS = 500
MAX_PAGE_MODELS = 1000
PAGE_BYTES = 3 * 2**20


class ClientServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, service: SchedulerService) -> None:
        self._service = service

    @_unary
    async def LoadModel(
        self, request: scheduler_pb2.LoadModelRequest, context: Any
    ) -> scheduler_pb2.LoadModelResponse:
        spec = convert.spec_from_proto(request.model)
        version, changed = await self._service.request_load(spec)
        return scheduler_pb2.LoadModelResponse(name=spec.name, version=version, changed=changed)

    @_unary
    async def PlanModel(
        self, request: scheduler_pb2.PlanModelRequest, context: Any
    ) -> scheduler_pb2.PlanModelResponse:
        return convert.plan_to_proto(
            self._service.plan_model(convert.spec_from_proto(request.model))
        )

    @_unary
    async def UnloadModel(
        self, request: scheduler_pb2.UnloadModelRequest, context: Any
    ) -> scheduler_pb2.UnloadModelResponse:
        await self._service.request_unload(request.name)
        return scheduler_pb2.UnloadModelResponse()

    @_unary
    async def GetModelStatus(
        self, request: scheduler_pb2.GetModelStatusRequest, context: Any
    ) -> scheduler_pb2.ModelStatus:
        return convert.status_to_proto(self._service.explained(request.name))

    @_unary
    async def ListModels(
        self, request: scheduler_pb2.ListModelsRequest, context: Any
    ) -> scheduler_pb2.ListModelsResponse:
        size = min(request.page_size or PAGE_MODELS, MAX_PAGE_MODELS)
        page = scheduler_pb2.ListModelsResponse()
        used = 0
        for record in self._service.models_after(request.page_token):
            status = convert.status_to_proto(record)
            grown = used + status.ByteSize()
            if page.models and (len(page.models) >= size or grown > PAGE_BYTES):
                page.next_page_token = page.models[-1].name
                break
            page.models.append(status)
            used = grown
        return page

    @_unary
    async def ListServers(
        self, request: scheduler_pb2.ListServersRequest, context: Any
    ) -> scheduler_pb2.ListServersResponse:
        servers: dict[str, scheduler_pb2.ServerStatus] = {}
        for session, view in self._service.replica_views():
            server = servers.setdefault(
                session.hello.server, scheduler_pb2.ServerStatus(name=session.hello.server)
            )
            server.replicas.append(convert.replica_to_proto(session, view))
        return scheduler_pb2.ListServersResponse(servers=list(servers.values()))

    async def WatchModels(
        self, request: scheduler_pb2.WatchModelsRequest, context: Any
    ) -> AsyncIterator[scheduler_pb2.ModelStatus]:
        try:
            watcher = self._service.watch(_well_formed(request).name)
        except GpuplaceError as exc:
            await _abort(context, exc)
        try:
            while (record := await watcher.queue.get()) is not None:
                yield convert.status_to_proto(record)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher too slow: updates were dropped"
            )
        finally:
            self._service.unwatch(watcher)


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, service: SchedulerService, queue_size: int) -> None:
        self._service = service
        self._queue_size = queue_size

    async def Connect(
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: Any
    ) -> AsyncIterator[agent_pb2.SchedulerMessage]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), _HELLO_TIMEOUT_S)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected a hello first")
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no hello within {_HELLO_TIMEOUT_S:g}s"
            )
        try:
            hello = decode_agent_message(_well_formed(first))
            if not isinstance(hello, Hello):
                raise InvalidArgument(
                    "message", f"the first must be a hello, not {first.WhichOneof('message')}"
                )
        except GpuplaceError as exc:
            await _abort(context, exc)
        key = (hello.server, hello.index)
        outbox: asyncio.Queue[agent_pb2.SchedulerMessage | None] = asyncio.Queue()

        def send(command: Command) -> bool:
            if outbox.qsize() >= self._queue_size:
                return False
            outbox.put_nowait(encode_command(command))
            return True

        def close(reason: str) -> None:
            log.info(
                "replica %s: closing stream: %s",
                replica_id(*key),
                reason,
                extra=log_fields(replica=replica_id(*key)),
            )
            outbox.put_nowait(None)

        try:
            session = self._service.connect(hello, send, close, peer=context.peer())
        except AlreadyExists as exc:
            log.warning(
                "%s (held by %s; refused: %s)",
                exc,
                exc.holder,
                context.peer(),
                extra=log_fields(replica=replica_id(*key), reason="already_connected"),
            )
            await _abort(context, exc)
        except Exception as exc:  # the state file cannot be written, say
            log.error(
                "replica %s: its hello could not be recorded: %s: %s",
                replica_id(*key),
                type(exc).__name__,
                exc,
                extra=log_fields(replica=replica_id(*key)),
            )
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the scheduler could not record this hello (its state file); try again",
            )
        reader = start_task(
            self._read(request_iterator, session, close), f"agent-{replica_id(*key)}"
        )
        try:
            while (message := await outbox.get()) is not None:
                yield message
        finally:
            reader.cancel()
            self._service.disconnect(session)

    async def _read(
        self,
        messages: AsyncIterator[agent_pb2.AgentMessage],
        session: AgentSession,
        close: Callable[[str], None],
    ) -> None:
        reason = "agent closed the stream"
        try:
            async for wire in messages:
                match decode_agent_message(_well_formed(wire)):
                    case ModelEvent() as event:
                        self._service.on_event(session, event)
                    case ResourceUpdate(devices=devices):
                        self._service.on_resource_update(session, devices)
                    case DrainRequest():
                        self._service.on_drain(session)
                    case Hello():
                        raise InvalidArgument("message", "a second hello on one stream")
        except GpuplaceError as exc:
            reason = f"protocol error: {exc}"
        except grpc.aio.AioRpcError as exc:
            reason = f"stream broken: {exc.code().name}"
        except Exception:
            log.exception(
                "replica %s: error handling its message",
                replica_id(*session.key),
                extra=log_fields(replica=replica_id(*session.key)),
            )
            reason = "internal error handling a message; see the scheduler log"
        finally:
            close(reason)
