"""The MLServer client against a fake V2 server, and http(s) artifacts."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import math
import socket
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.artifacts import ArtifactError, ModelRepository, fetch
from agent.inference_server import (
    IndexEntry,
    InferenceServerError,
    InferenceServerUnavailable,
    MLServerClient,
    error_text,
    normalise_state,
    serves_folder,
)
from tests.fakes.fake_v2 import FakeV2Server


def client(url: str, load_timeout_s: float = 5, request_timeout_s: float = 5) -> MLServerClient:
    return MLServerClient(url, load_timeout_s=load_timeout_s, request_timeout_s=request_timeout_s)


def listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def put_model(root: Path, folder: str, name: str, version: str = "1") -> None:
    (root / folder).mkdir(parents=True)
    (root / folder / "model-settings.json").write_text(
        json.dumps({"name": name, "parameters": {"version": version}})
    )


async def test_serves_folder_tells_the_served_folder_from_another(
    v2: FakeV2Server, tmp_path: Path
) -> None:
    mlserver = client(v2.url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        assert await serves_folder(mlserver, v2.repository) is True
        assert await serves_folder(mlserver, elsewhere) is False
    finally:
        await mlserver.close()
    # The probe is gone from both folders, so nothing of it is ever loaded.
    assert listing(v2.repository) == listing(elsewhere) == []


async def test_serves_folder_cannot_tell_when_the_index_fails(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mlserver = client(f"http://127.0.0.1:{port}", request_timeout_s=1)
    try:
        assert await serves_folder(mlserver, tmp_path) is None
    finally:
        await mlserver.close()
    assert listing(tmp_path) == []


def test_an_error_keeps_the_exception_of_a_traceback() -> None:
    trace = (
        "Traceback (most recent call last):\n"
        + '  File "/venv/starlette/middleware/errors.py", line 164, in __call__\n' * 20
        + "ModuleNotFoundError: No module named 'mlserver_sklearn'\n"
    )
    assert error_text(trace) == "ModuleNotFoundError: No module named 'mlserver_sklearn'"
    assert error_text(json.dumps({"error": "model not found"})) == "model not found"
    assert error_text("x" * 900) == "x" * 500


@pytest.mark.parametrize(
    ("raw", "state"),
    [("State.READY", "READY"), ("READY", "READY"), ("ready", "READY"), (None, ""), ("", "")],
)
def test_states_are_normalised(raw: object, state: str) -> None:
    assert normalise_state(raw) == state


async def test_index_load_unload(v2: FakeV2Server, tmp_path: Path) -> None:
    put_model(v2.repository, "iris", "iris", "3")
    put_model(v2.repository, ".hidden/x", "hidden")
    mlserver = client(v2.url)
    try:
        assert await mlserver.ready()
        assert await mlserver.index() == [IndexEntry("iris", "UNAVAILABLE", "3")]
        await mlserver.load("iris")
        assert await mlserver.index() == [IndexEntry("iris", "READY", "3")]
        assert (await mlserver.index())[0].ready
        await mlserver.unload("iris")
        await mlserver.unload("iris")  # 404: already gone, counts as done
        assert v2.calls[-2:] == [("unload", "iris"), ("unload", "iris")]
        assert v2.loaded == {}
    finally:
        await mlserver.close()


async def test_load_failure_carries_the_servers_message(v2: FakeV2Server) -> None:
    put_model(v2.repository, "iris", "iris")
    v2.fail["iris"] = "No module named 'mlserver_sklearn'"
    mlserver = client(v2.url)
    try:
        with pytest.raises(InferenceServerError, match="HTTP 400: No module named") as caught:
            await mlserver.load("iris")
        assert not isinstance(caught.value, InferenceServerUnavailable)
        with pytest.raises(InferenceServerError, match="HTTP 404"):
            await mlserver.load("absent")
    finally:
        await mlserver.close()


async def test_load_timeout(v2: FakeV2Server) -> None:
    put_model(v2.repository, "slow", "slow")
    v2.hold["slow"] = asyncio.Event()
    mlserver = client(v2.url, load_timeout_s=0.2)
    try:
        with pytest.raises(InferenceServerUnavailable, match=r"no answer within 0.2s"):
            await mlserver.load("slow")
    finally:
        await mlserver.close()


async def test_not_ready_and_unreachable(v2: FakeV2Server) -> None:
    v2.ready = False
    mlserver = client(v2.url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    dead = client(f"http://127.0.0.1:{dead_port}")
    try:
        assert not await mlserver.ready()
        assert not await dead.ready()
        with pytest.raises(InferenceServerUnavailable):
            await dead.unload("iris")
        with pytest.raises(InferenceServerUnavailable):
            await dead.index()
    finally:
        await mlserver.close()
        await dead.close()


async def test_resident_memory_is_read_from_the_metrics_page(
    v2: FakeV2Server, caplog: pytest.LogCaptureFixture
) -> None:
    mlserver = MLServerClient(
        v2.url, load_timeout_s=5, request_timeout_s=5, metrics_url=f"{v2.url}/metrics"
    )
    unmeasured = client(v2.url)  # no metrics_url: never asks
    try:
        with caplog.at_level(logging.WARNING, logger="agent.inference_server"):
            # No process series (MLServer with parallel workers): None, said once.
            assert await mlserver.resident_bytes() is None
            assert await mlserver.resident_bytes() is None
            v2.resident = 1_234_567_000
            assert await mlserver.resident_bytes() == 1_234_567_000
            await v2.stop()  # unreachable: None, said again
            assert await mlserver.resident_bytes() is None
            assert await unmeasured.resident_bytes() is None
    finally:
        await mlserver.close()
        await unmeasured.close()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert "no process_resident_memory_bytes series" in said[0]
    assert "MLSERVER_PARALLEL_WORKERS=0" in said[0] and f"{v2.url}/metrics" in said[0]
    assert "host memory is not measured" in said[1]
    assert ("index", "") not in v2.calls  # reading memory asks nothing else


async def test_a_large_metrics_page_is_read_whole_and_a_bad_value_is_no_size(
    v2: FakeV2Server, caplog: pytest.LogCaptureFixture
) -> None:
    mlserver = MLServerClient(
        v2.url, load_timeout_s=5, request_timeout_s=5, metrics_url=f"{v2.url}/metrics"
    )
    try:
        # A page that arrives in many pieces, the series at its end.
        v2.metrics_padding, v2.resident = 3 * 2**20, 5_000_000
        assert await mlserver.resident_bytes() == 5_000_000
        with caplog.at_level(logging.WARNING, logger="agent.inference_server"):
            for bad in (math.nan, math.inf, -1.0):
                v2.resident = bad
                assert await mlserver.resident_bytes() is None
            v2.resident = 5_000_000
            assert await mlserver.resident_bytes() == 5_000_000  # the next problem is said
            v2.metrics_padding = 9 * 2**20
            assert await mlserver.resident_bytes() is None  # past the 8 MiB bound
    finally:
        await mlserver.close()
    said = [r.getMessage() for r in caplog.records]
    assert "process_resident_memory_bytes is not a size: [nan]" in said[0], said
    assert "the page is larger than 8 MiB" in said[1], said


async def test_grpc_style_states_from_the_index() -> None:
    async def index(request: web.Request) -> web.Response:
        body = await request.json()
        assert body == {}
        return web.json_response([{"name": "iris", "version": "2", "state": "State.READY"}])

    app = web.Application()
    app.router.add_post("/v2/repository/index", index)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    mlserver = client(f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        assert await mlserver.index() == [IndexEntry("iris", "READY", "2")]
    finally:
        await mlserver.close()
        await runner.cleanup()


@pytest.fixture
async def files() -> AsyncIterator[str]:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        data = b"weights"
        member = tarfile.TarInfo("iris/model.joblib")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    safe = archive.getvalue()
    evil_archive = io.BytesIO()
    with tarfile.open(fileobj=evil_archive, mode="w:gz") as tar:
        evil = tarfile.TarInfo("../escape.txt")
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))

    routes = {
        "/m/model.joblib": b"single file",
        "/m/iris.tar.gz": safe,
        "/m/evil.tar.gz": evil_archive.getvalue(),
        "/m/big.bin": b"b" * 2000,
    }

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.path == "/m/forbidden.tar.gz":
            return web.Response(status=403)
        if request.path == "/m/streamed.bin":
            # no Content-Length: the size is known only while reading
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(4):
                await response.write(b"s" * 400)
            await response.write_eof()
            return response
        if request.path == "/m/encoded.bin":
            return web.Response(
                body=gzip.compress(b"0" * 100_000), headers={"Content-Encoding": "gzip"}
            )
        if request.path not in routes:
            return web.Response(status=404)
        return web.Response(body=routes[request.path])

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_http_artifacts(files: str, tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "models")
    repo.prepare()
    single = repo.new_staging_folder("a")
    await fetch(repo, f"{files}/m/model.joblib", single, timeout_s=5)
    assert (single / "model.joblib").read_bytes() == b"single file"

    archive = repo.new_staging_folder("b")
    await fetch(repo, f"{files}/m/iris.tar.gz", archive, timeout_s=5)
    assert (archive / "model.joblib").read_bytes() == b"weights"
    assert not (archive / "iris.tar.gz").exists()

    evil = repo.new_staging_folder("c")
    with pytest.raises(ArtifactError, match=r"'\.\.'"):
        await fetch(repo, f"{files}/m/evil.tar.gz", evil, timeout_s=5)
    assert not (repo.staging / "escape.txt").exists()

    with pytest.raises(ArtifactError, match="HTTP 404"):
        await fetch(repo, f"{files}/m/absent.bin", repo.new_staging_folder("d"), timeout_s=5)


@pytest.mark.parametrize("path", ["big.bin", "streamed.bin"])
async def test_downloads_past_the_size_limit_are_refused(
    files: str, tmp_path: Path, path: str
) -> None:
    repo = ModelRepository(tmp_path / "models", max_artifact_bytes=1000)
    repo.prepare()
    with pytest.raises(ArtifactError, match="max_artifact_bytes"):
        await fetch(repo, f"{files}/m/{path}", repo.new_staging_folder("m"), timeout_s=5)


async def test_encoded_downloads_are_stored_as_sent(files: str, tmp_path: Path) -> None:
    """No transparent gunzip: a small gzip-encoded body cannot inflate past the limit."""
    repo = ModelRepository(tmp_path / "models", max_artifact_bytes=1000)
    repo.prepare()
    staged = repo.new_staging_folder("m")
    await fetch(repo, f"{files}/m/encoded.bin", staged, timeout_s=5)
    assert gzip.decompress((staged / "encoded.bin").read_bytes()) == b"0" * 100_000


def agent_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The agent's own log records (not the test's fake file server's access log)."""
    return [record for record in caplog.records if record.name.startswith("agent")]


async def test_credentials_never_reach_messages_or_logs(
    files: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    repo = ModelRepository(tmp_path / "models")
    repo.prepare()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    host = files.removeprefix("http://")
    for url in (
        f"http://alice:s3cr3t@{host}/m/forbidden.tar.gz?X-Amz-Signature=deadbeef",
        f"http://alice:s3cr3t@127.0.0.1:{closed_port}/m.tar.gz?X-Amz-Signature=deadbeef",
        "http://alice:s3cr3t@[::zz]/m.tar.gz?X-Amz-Signature=deadbeef",
    ):
        with pytest.raises(ArtifactError) as caught:
            await fetch(repo, url, repo.new_staging_folder("m"), timeout_s=5)
        message = str(caught.value)
        assert "/m" in message or "unparseable" in message
        for secret in ("s3cr3t", "alice", "deadbeef", "Signature"):
            assert secret not in message
            assert all(secret not in r.getMessage() for r in agent_records(caplog))


async def test_a_request_on_a_connection_the_server_closed_is_sent_again() -> None:
    """MLServer closes a keep-alive connection after a 500; the next request must not fail."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)  # the `{}` body
        if connections == 1:
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n[]")
            await writer.drain()
            # The client reuses the connection; the server has already given up on it.
            await reader.readuntil(b"\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    inference = MLServerClient(f"http://127.0.0.1:{port}", load_timeout_s=5, request_timeout_s=5)
    try:
        with pytest.raises(InferenceServerError):
            await inference.index()
        assert await inference.index() == []
        assert connections == 2
    finally:
        await inference.close()
        server.close()
        await server.wait_closed()


async def test_a_load_is_never_sent_twice() -> None:
    """A disconnect after a load was sent may mean MLServer crashed while loading it."""
    loads = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal loads
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/load" in head:
            loads += 1
        if loads == 1:
            writer.close()  # received, then gone without an answer
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    inference = MLServerClient(f"http://127.0.0.1:{port}", load_timeout_s=5, request_timeout_s=5)
    try:
        with pytest.raises(InferenceServerUnavailable):
            await inference.load("iris")
        assert loads == 1
    finally:
        await inference.close()
        server.close()
        await server.wait_closed()
