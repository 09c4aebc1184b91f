"""Helpers for tests against the object-store emulators (devharness.object_stores)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from aiohttp import web

from devharness.object_stores import EmulatorProcess

E = TypeVar("E", bound=EmulatorProcess)

# Every variable through which the storage libraries find endpoints and credentials: a test
# sets the ones it means, never inherits the machine's.
STORAGE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCE_", "STORAGE_EMULATOR_HOST", "AZURE_", "GCSFS_")


def isolate_storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No inherited storage settings, and no credential chain that asks a cloud's metadata
    service (a link-local address: never a target here)."""
    for name in list(os.environ):
        if name.startswith(STORAGE_ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("NO_GCE_CHECK", "true")


@contextlib.contextmanager
def running(emulator: E) -> Iterator[E]:
    """Start `emulator`, stop it after; fail when a process of it is left."""
    with emulator:
        yield emulator
    assert emulator.alive_pids() == [], f"{emulator.name} left processes behind"


def folder_objects(folder: Path, prefix: str) -> dict[str, bytes]:
    """Every file under `folder` as an object under `prefix/`."""
    return {
        f"{prefix}/{path.relative_to(folder).as_posix()}": path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


class RangeIgnoringStore:
    """An HTTP endpoint holding one object, `bucket/key`, listed as `size` bytes, that
    answers every read of it with an endless body whatever `Range` asked for (status 206
    and a `Content-Range` echoing the range asked, as a broken proxy or store might):
    just enough of the S3, GCS JSON and Azure Blob APIs for a fetch to get that far.
    `declared`: the body comes with a huge `Content-Length`; otherwise chunked. `sent`
    counts the body bytes written; the server stops at `give_up_bytes`."""

    def __init__(
        self,
        bucket: str,
        key: str,
        size: int,
        *,
        declared: bool,
        give_up_bytes: int = 64 * 2**20,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.size = size
        self.declared = declared
        self.give_up_bytes = give_up_bytes
        self.sent = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RangeIgnoringStore:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _metadata_headers(self) -> dict[str, str]:
        return {
            "Content-Length": str(self.size),
            "Content-Type": "application/octet-stream",
            "ETag": '"0x1"',
            "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
            "Accept-Ranges": "bytes",
            "x-ms-blob-type": "BlockBlob",
            "x-ms-creation-time": "Mon, 01 Jan 2024 00:00:00 GMT",
            "x-ms-version": "2025-01-05",
        }

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        gcs_objects = f"/storage/v1/b/{self.bucket}/o"
        if request.method == "HEAD":  # S3 head_object, Azure get_blob_properties
            response = web.StreamResponse(headers=self._metadata_headers())
            await response.prepare(request)
            return response
        if path == f"{gcs_objects}/{self.key}":
            return web.json_response(
                {
                    "kind": "storage#object",
                    "bucket": self.bucket,
                    "name": self.key,
                    "size": str(self.size),
                    "generation": "1",
                    "updated": "2024-01-01T00:00:00.000Z",
                }
            )
        if path == gcs_objects:  # a listing: nothing below the object
            return web.json_response({"kind": "storage#objects"})
        return await self._endless(request)

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        asked = request.headers.get("Range") or request.headers.get("x-ms-range") or ""
        headers = {k: v for k, v in self._metadata_headers().items() if k != "Content-Length"}
        status = 200
        if asked.startswith("bytes="):
            status = 206
            headers["Content-Range"] = f"bytes {asked[len('bytes=') :]}/{self.size}"
        response = web.StreamResponse(status=status, headers=headers)
        if self.declared:
            response.content_length = 10 * 2**30
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        piece = bytes(64 * 1024)
        try:
            while self.sent < self.give_up_bytes:
                await response.write(piece)
                self.sent += len(piece)
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        return response
