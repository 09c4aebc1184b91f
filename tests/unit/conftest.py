"""The unit tier is pure: a unit test that opens a network socket fails, naming itself.

Every unit test runs under :func:`no_sockets`: ``connect``, ``connect_ex``, ``bind``,
``listen`` and ``sendto`` of any socket that is not ``AF_UNIX`` fail the test (asyncio's
``create_connection``, ``open_connection``, ``create_server`` and aiohttp all come down to
these), and so does creating a gRPC channel or server (gRPC's C core opens its sockets
without Python's ``socket`` module). The refusal is :func:`pytest.fail`, a ``BaseException``,
so product code that catches ``OSError`` or ``Exception`` to retry does not swallow it; a
refusal swallowed anyway (in a thread, a task nobody awaits) still fails the test at teardown.

What stays allowed is what the runtime itself needs: asyncio's event loop wakes itself
through ``socket.socketpair()`` (an ``AF_UNIX`` pair on Linux, which neither binds nor
connects), and ``AF_UNIX`` sockets in general (local IPC, e.g. multiprocessing).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Generator, Iterator
from typing import Any, NoReturn

import grpc
import grpc.aio
import pytest

_SOCKET_CALLS = ("connect", "connect_ex", "bind", "listen", "sendto")
_GRPC_FACTORIES = (
    (grpc, "insecure_channel"),
    (grpc, "secure_channel"),
    (grpc, "server"),
    (grpc.aio, "insecure_channel"),
    (grpc.aio, "secure_channel"),
    (grpc.aio, "server"),
)
_CALL_PASSED = pytest.StashKey[bool]()


class SocketGuard:
    """What :func:`no_sockets` refused during one test."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.refused: list[str] = []

    def message(self, what: str) -> str:
        return (
            f"{self.nodeid}: unit tests are pure: no sockets; move this test to "
            f"tests/integration (it called {what})"
        )

    def refuse(self, what: str) -> NoReturn:
        self.refused.append(what)
        pytest.fail(self.message(what))

    def verdict(self) -> None:
        """Fail when something was refused (called at teardown of a test that passed)."""
        if self.refused:
            pytest.fail(
                self.message(", ".join(self.refused))
                + " — the refusal was caught and swallowed, but the test still opened a socket"
            )


def _guarded_socket_call(guard: SocketGuard, name: str) -> Callable[..., Any]:
    original = getattr(socket.socket, name)

    def guarded(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if sock.family == socket.AF_UNIX:
            return original(sock, *args, **kwargs)
        shown = ", ".join(repr(arg) for arg in args if not isinstance(arg, bytes | bytearray))
        sock.close()  # nobody else will: the callers close only on OSError
        guard.refuse(f"socket.{name}({shown})")

    return guarded


def _guarded_grpc_factory(guard: SocketGuard, module: Any, name: str) -> Callable[..., Any]:
    original = getattr(module, name)

    def guarded(*args: Any, **kwargs: Any) -> Any:
        target = args[0] if args else kwargs.get("target", "")
        if isinstance(target, str) and target.startswith(("unix:", "unix-abstract:")):
            return original(*args, **kwargs)
        shown = repr(target) if isinstance(target, str) else "..."
        guard.refuse(f"{module.__name__}.{name}({shown})")

    return guarded


@pytest.fixture(autouse=True)
def no_sockets(request: pytest.FixtureRequest) -> Iterator[SocketGuard]:
    """Fail the test on any network socket or gRPC channel / server it opens."""
    guard = SocketGuard(request.node.nodeid)
    with pytest.MonkeyPatch.context() as patch:
        for name in _SOCKET_CALLS:
            patch.setattr(socket.socket, name, _guarded_socket_call(guard, name))
        for module, name in _GRPC_FACTORIES:
            patch.setattr(module, name, _guarded_grpc_factory(guard, module, name))
        yield guard
    if request.node.stash.get(_CALL_PASSED, False):
        guard.verdict()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether the test itself passed: :func:`no_sockets` then reports a swallowed
    refusal at teardown (a test that failed already says why)."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    return report
