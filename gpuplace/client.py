"""A thin synchronous client of the scheduler's client API (gRPC :9004)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from types import TracebackType

import grpc

from contract.grpc_tls import channel_credentials
from contract.tls import ClientTls
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc

DEFAULT_SCHEDULER = "localhost:9004"
SCHEDULER_ENV = "GPUPLACE_SCHEDULER"
CALL_TIMEOUT_S = 15.0


def scheduler_address(flag: str | None, environ: dict[str, str] | None = None) -> str:
    """`--scheduler`, else GPUPLACE_SCHEDULER, else localhost:9004; raises AddressError
    naming where a bad one came from."""
    env = os.environ if environ is None else environ
    if flag:
        return check_address(flag, "--scheduler")
    if env.get(SCHEDULER_ENV):
        return check_address(env[SCHEDULER_ENV], SCHEDULER_ENV)
    return DEFAULT_SCHEDULER


class AddressError(ValueError):
    """A scheduler address that is not HOST:PORT."""


_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>[0-9]+)$")


def check_address(address: str, source: str) -> str:
    """`address` when it is HOST:PORT (an IPv6 host in brackets) or a gRPC `unix:` target."""
    if address.startswith("unix:"):
        return address
    match = _HOST_PORT.match(address)
    problem = None
    if match is None:
        problem = "expected HOST:PORT (a port is required: gRPC would pick 443)"
    elif not 1 <= int(match["port"]) <= 65535:
        problem = f"port {int(match['port'])} is out of range (1 to 65535)"
    if problem:
        raise AddressError(
            f"{source} {address[:100]!r}: {problem}, e.g. {DEFAULT_SCHEDULER} (the client API; "
            "the agent API listens on 9005, HTTP on 9999)"
        )
    return address


class ClientError(Exception):
    """A call the scheduler refused or could not answer: its gRPC code and details."""

    def __init__(self, address: str, code: grpc.StatusCode, details: str) -> None:
        self.address = address
        self.code = code
        self.details = details
        super().__init__(self.describe())

    @property
    def code_name(self) -> str:
        return str(self.code.name)

    def describe(self) -> str:
        if self.code == grpc.StatusCode.UNAVAILABLE and "http1" in self.details.lower():
            return (
                f"{self.address} speaks HTTP/1, not gRPC: is it the scheduler's HTTP port "
                "(9999 by default)? The client API listens on 9004 by default"
            )
        if self.code == grpc.StatusCode.UNAVAILABLE:
            return (
                f"cannot reach the scheduler at {self.address} ({self.details}); set --scheduler "
                f"HOST:PORT or {SCHEDULER_ENV}"
            )
        if self.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"the scheduler at {self.address} did not answer in time"
        if self.code == grpc.StatusCode.UNIMPLEMENTED and self.details.startswith(
            "Method not found"
        ):
            return (
                f"{self.address} does not serve gpuplace's client API: is it the scheduler's "
                "agent port (9005 by default)? The client API listens on 9004 by default"
            )
        if self.code == grpc.StatusCode.UNIMPLEMENTED:
            return (
                f"the scheduler at {self.address} does not know this call (an older version?): "
                f"{self.details or 'UNIMPLEMENTED'}"
            )
        return f"{self.details} ({self.code_name})" if self.details else self.code_name


def _error(address: str, exc: grpc.RpcError) -> ClientError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return ClientError(address, code, details or "")


class SchedulerClient:
    """One channel to the scheduler; each method is one call; errors become ClientError."""

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = CALL_TIMEOUT_S,
        tls: ClientTls | None = None,
        token: str = "",
    ) -> None:
        """`tls`: connect with TLS (and a client certificate, for a scheduler that asks);
        `token`: the bearer token every call carries."""
        self.address = address
        self.timeout_s = timeout_s
        if tls is None:
            self._channel = grpc.insecure_channel(address)
        else:
            self._channel = grpc.secure_channel(address, channel_credentials(tls), tls.options())
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> SchedulerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def load(self, spec: common_pb2.ModelSpec) -> scheduler_pb2.LoadModelResponse:
        try:
            return self._stub.LoadModel(
                scheduler_pb2.LoadModelRequest(model=spec),
                timeout=self.timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise _error(self.address, exc) from None

    def plan(self, spec: common_pb2.ModelSpec) -> scheduler_pb2.PlanModelResponse:
        """Where the scheduler would place the model now, and why; nothing is loaded."""
        try:
            return self._stub.PlanModel(
                scheduler_pb2.PlanModelRequest(model=spec),
                timeout=self.timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise _error(self.address, exc) from None

    def unload(self, name: str) -> None:
        try:
            self._stub.UnloadModel(
                scheduler_pb2.UnloadModelRequest(name=name),
                timeout=self.timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise _error(self.address, exc) from None

    def model(self, name: str) -> scheduler_pb2.ModelStatus:
        try:
            return self._stub.GetModelStatus(
                scheduler_pb2.GetModelStatusRequest(name=name),
                timeout=self.timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise _error(self.address, exc) from None

    def models(self, page_size: int = 0) -> list[scheduler_pb2.ModelStatus]:
        """Every model, by name, read a page at a time (`page_size` 0: the scheduler's)."""
        found: list[scheduler_pb2.ModelStatus] = []
        token = ""
        while True:
            request = scheduler_pb2.ListModelsRequest(page_size=page_size, page_token=token)
            try:
                reply = self._stub.ListModels(
                    request, timeout=self.timeout_s, metadata=self._metadata
                )
            except grpc.RpcError as exc:
                raise _error(self.address, exc) from None
            found.extend(reply.models)
            token = reply.next_page_token
            if not token:
                return found

    def servers(self) -> list[scheduler_pb2.ServerStatus]:
        try:
            reply = self._stub.ListServers(
                scheduler_pb2.ListServersRequest(), timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _error(self.address, exc) from None
        return list(reply.servers)

    def watch(self, name: str, deadline: float) -> Iterator[scheduler_pb2.ModelStatus]:
        """Statuses of one model ("" = every model) until `deadline` (time.monotonic()).

        Ends quietly at the deadline or when the scheduler ends the stream.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        call = self._stub.WatchModels(
            scheduler_pb2.WatchModelsRequest(name=name), timeout=remaining, metadata=self._metadata
        )
        try:
            yield from call
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise _error(self.address, exc) from None
        finally:
            call.cancel()
