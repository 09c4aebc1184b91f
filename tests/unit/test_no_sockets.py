"""The unit tier's guard (tests/unit/conftest.py): a network socket fails the test, naming it;
asyncio's own machinery keeps working."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import grpc
import grpc.aio
import pytest

from tests.unit.conftest import SocketGuard

Refused = pytest.fail.Exception


def test_a_connection_fails_the_test_naming_it(no_sockets: SocketGuard) -> None:
    with pytest.raises(Refused) as refused:
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    message = str(refused.value)
    assert "test_a_connection_fails_the_test_naming_it" in message
    assert "unit tests are pure: no sockets; move this test to tests/integration" in message
    assert "socket.connect(('127.0.0.1', 9))" in message
    no_sockets.refused.clear()  # refused on purpose: do not fail at teardown


def test_the_refusal_is_not_an_oserror_that_a_retry_loop_would_swallow(
    no_sockets: SocketGuard,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", 0))
        except Exception:  # what product code catches to retry
            pytest.fail("the refusal was caught as an Exception")
        except Refused:
            pass
    assert no_sockets.refused == ["socket.bind(('127.0.0.1', 0))"]
    no_sockets.refused.clear()


def test_a_refusal_swallowed_in_a_thread_still_fails_at_teardown(
    no_sockets: SocketGuard,
) -> None:
    def swallow() -> None:
        with contextlib.suppress(BaseException):  # a thread that hides what went wrong
            socket.create_connection(("127.0.0.1", 9), timeout=1)

    thread = threading.Thread(target=swallow)
    thread.start()
    thread.join()
    assert len(no_sockets.refused) == 1
    with pytest.raises(Refused, match="caught and swallowed"):
        no_sockets.verdict()  # what the fixture's teardown calls
    no_sockets.refused.clear()


async def test_asyncio_connections_and_servers_are_refused(no_sockets: SocketGuard) -> None:
    with pytest.raises(Refused, match=r"socket\.connect"):
        await asyncio.open_connection("127.0.0.1", 9)
    with pytest.raises(Refused, match=r"socket\.bind"):
        await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    assert len(no_sockets.refused) == 2
    no_sockets.refused.clear()


def test_grpc_channels_and_servers_are_refused(no_sockets: SocketGuard) -> None:
    with pytest.raises(Refused, match=r"grpc\.insecure_channel\('127\.0\.0\.1:9'\)"):
        grpc.insecure_channel("127.0.0.1:9")
    with pytest.raises(Refused, match=r"grpc\.aio\.insecure_channel\('127\.0\.0\.1:9'\)"):
        grpc.aio.insecure_channel("127.0.0.1:9")
    with pytest.raises(Refused, match=r"grpc\.aio\.server"):
        grpc.aio.server()
    no_sockets.refused.clear()


async def test_asyncio_internals_still_work(no_sockets: SocketGuard) -> None:
    """The event loop's self-pipe (a socketpair), call_soon_threadsafe, to_thread and a
    local AF_UNIX pair are no network sockets."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    threading.Thread(target=lambda: loop.call_soon_threadsafe(woken.set)).start()
    await asyncio.wait_for(woken.wait(), timeout=5)
    assert await asyncio.to_thread(sum, [1, 2, 3]) == 6

    left, right = socket.socketpair()
    with left, right:
        reader, writer = await asyncio.open_connection(sock=left)
        right.sendall(b"ping\n")
        assert await reader.readline() == b"ping\n"
        writer.close()
        await writer.wait_closed()
    assert no_sockets.refused == []
