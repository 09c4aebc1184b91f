"""The client API's bearer token: every call but a health check must carry
`authorization: Bearer <token>`; the comparison takes the same time whatever it finds."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter

_EXEMPT = "/grpc.health.v1.Health/"
if TYPE_CHECKING:  # generic in the type stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]


class TokenError(ValueError):
    """The token file cannot be used."""


def read_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace dropped); never logged."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"--client-token-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TokenError(f"--client-token-file {path}: not text") from None
    if len(token) < 16:
        raise TokenError(f"--client-token-file {path}: the token is shorter than 16 characters")
    return token


class BearerToken(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, refused: Counter) -> None:
        self._expected = f"Bearer {token}".encode()
        self._refused = refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_EXEMPT):
            return handler
        given = next(
            (value for key, value in details.invocation_metadata or () if key == "authorization"),
            "",
        )
        if hmac.compare_digest(str(given).encode(), self._expected):
            return handler
        self._refused.inc()
        return _refusal(handler)


async def _abort(_: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "this scheduler's client API needs a bearer token (gpuplace --token-file, or "
        "GPUPLACE_TOKEN_FILE)",
    )


async def _abort_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await _abort(request, context)
    yield  # pragma: no cover - never reached: abort raises


def _refusal(handler: Handler) -> Handler:
    """A handler of the same shape as `handler` that refuses the call."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_abort_stream)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_abort)
    return grpc.unary_unary_rpc_method_handler(_abort)
