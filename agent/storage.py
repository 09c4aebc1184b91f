"""Object-store artifacts: S3, Google Cloud Storage and Azure Blob, through fsspec.

The libraries are fsspec's own file systems: s3fs (aiobotocore), gcsfs (aiohttp, the JSON
API) and adlfs (azure-storage-blob). Each is imported only when a storageUri of its scheme
is fetched, so an agent that serves local artifacts loads none of them. Their async methods
run on fsspec's I/O loop (a daemon thread, where their clients live for the whole process);
the agent awaits them from its own loop, so a fetch that is cancelled or times out cancels
the requests too.

A fetch:

1. works out the store and its credentials (`storage_config`);
2. for GCS and Azure, checks that the endpoint accepts a connection (their libraries retry a
   refused connection for 30 s to minutes; this makes a wrong endpoint a failure in seconds);
3. asks what the URI names: one object (fetched as one file, named after the key's last
   part: an archive is then unpacked by the caller) or a prefix (every object under it,
   each key below the prefix becoming a path in the staging folder);
4. refuses any key that would not be a plain relative path (`..`, `.`, empty components, a
   backslash, NUL), names that clash (a file and a folder), and a total size over the limit;
5. downloads the files in ranges of `chunk_bytes`, `concurrency` ranges at a time (many small
   files in parallel, and one large file in parallel), each written at its offset; every
   range must be exactly the size the listing gave, so no more than the checked total is
   ever written;
6. logs progress for a large artifact (every 10 % and at least every 5 s).

Library errors become a `StorageError` that says which case it is (not found, access denied,
endpoint unreachable, ...) without a traceback, a secret or a signed URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.storage_config import (
    DEFAULT_SECRETS_DIR,
    Family,
    ObjectUri,
    StorageError,
    StoreConfig,
    parse_object_uri,
    scrub,
    store_config,
)
from contract.quantity import format_bytes

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
DEFAULT_CHUNK_BYTES = 8 * 2**20
# Artifacts at least this large get progress lines while they are fetched.
DEFAULT_PROGRESS_BYTES = 64 * 2**20
_PROGRESS_EVERY_S = 5.0
# How long the endpoint check waits for a TCP connection.
_CONNECT_TIMEOUT_S = 10.0
_GCS_ENDPOINT = "https://storage.googleapis.com"
# Bounded retries and timeouts for botocore (its default retries are fine, but a wrong
# endpoint should fail in seconds, as for the other stores).
_S3_CLIENT_CONFIG = {
    "retries": {"max_attempts": 3, "mode": "standard"},
    "connect_timeout": _CONNECT_TIMEOUT_S,
    "read_timeout": 60,
}


@dataclass(frozen=True)
class Fetched:
    """What a fetch wrote: its size, and the one file when the URI named a single object."""

    bytes: int
    single: Path | None


class Progress:
    """Log lines while a large artifact arrives: at every 10 % and at least every 5 s."""

    def __init__(
        self,
        what: str,
        shown: str,
        total: int,
        files: int,
        large_bytes: int = DEFAULT_PROGRESS_BYTES,
    ) -> None:
        self.what = what
        self.shown = shown
        self.total = total
        self.files = files
        self.done = 0
        self.enabled = total >= large_bytes > 0
        self._next_tenth = 1
        self._last = time.monotonic()
        if self.enabled:
            log.info("%s: fetching %s: %s in %d file(s)", what, shown, format_bytes(total), files)

    def add(self, size: int) -> None:
        self.done += size
        if not self.enabled:
            return
        tenth = self.done * 10 // self.total
        now = time.monotonic()
        if tenth >= self._next_tenth or now - self._last >= _PROGRESS_EVERY_S:
            self._next_tenth = tenth + 1
            self._last = now
            log.info(
                "%s: fetching %s: %s of %s (%d%%)",
                self.what,
                self.shown,
                format_bytes(self.done),
                format_bytes(self.total),
                self.done * 100 // self.total,
            )


@dataclass(frozen=True)
class ObjectStores:
    """How the agent fetches from object stores (its settings)."""

    secrets_dir: Path = DEFAULT_SECRETS_DIR
    concurrency: int = DEFAULT_CONCURRENCY
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    progress_bytes: int = DEFAULT_PROGRESS_BYTES

    async def fetch(
        self, uri: str, secret_name: str, into: Path, *, limit: int, shown: str, what: str
    ) -> Fetched:
        """Fetch the object or prefix `uri` names into the folder `into`."""
        try:
            target = parse_object_uri(uri, secret_scheme_ok=bool(secret_name))
            config = await asyncio.to_thread(
                store_config, target, secret_name, self.secrets_dir, dict(os.environ)
            )
        except StorageError as exc:
            raise StorageError(f"{shown}: {exc}") from None
        fs, config = await asyncio.to_thread(_filesystem, config)
        fail = _Failure(shown, target, config)
        await _check_endpoint(fs, config, fail)
        files, single = await _listing(fs, target, fail)
        total = sum(file.size for file in files)
        if total > limit:
            raise StorageError(
                f"{shown}: {format_bytes(total)} in {len(files)} object(s) is more than the "
                f"{format_bytes(limit)} an artifact may have (max_artifact_bytes); refused"
            )
        progress = Progress(what, shown, total, len(files), self.progress_bytes)
        await _download(
            fs, files, into, progress, fail, concurrency=self.concurrency, chunk=self.chunk_bytes
        )
        return Fetched(total, into / files[0].parts[0] if single else None)


# -- file systems -------------------------------------------------------------------------

# One file system per distinct configuration, for the whole process (as fsspec's own
# instance cache does): their HTTP clients live on fsspec's I/O loop and are closed by the
# libraries at exit. The key includes the environment the libraries read.
_FILESYSTEMS: dict[str, Any] = {}
_FILESYSTEMS_LOCK = threading.Lock()
_ENVIRONMENT_PREFIXES = ("AWS_", "GOOGLE_", "GCE_", "STORAGE_EMULATOR_HOST", "AZURE_")


def _filesystem(config: StoreConfig) -> tuple[Any, StoreConfig]:
    """The file system for `config` (blocking: credentials may be looked up), and the
    configuration as used (S3 without credentials: anonymous)."""
    environment = sorted(
        (name, value)
        for name, value in os.environ.items()
        if name.startswith(_ENVIRONMENT_PREFIXES)
    )
    key = json.dumps([config.family, config.options, environment], sort_keys=True, default=str)
    with _FILESYSTEMS_LOCK:
        entry = _FILESYSTEMS.get(key)
        if entry is None:
            entry = _FILESYSTEMS[key] = _BUILDERS[config.family](config)
    fs, anonymous = entry
    return fs, replace(config, has_credentials=False) if anonymous else config


def _s3(config: StoreConfig) -> tuple[Any, bool]:
    """An S3 file system, and whether it reads anonymously for want of credentials."""
    import botocore.session
    import s3fs

    options = dict(config.options)
    anonymous = (
        config.anonymous_fallback and botocore.session.get_session().get_credentials() is None
    )
    if anonymous:
        log.info("no AWS credentials in the agent's environment: reading S3 anonymously")
        options["anon"] = True
    client_config = {**_S3_CLIENT_CONFIG, **options.pop("config_kwargs", {})}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs=client_config, **options)
    fs.retries = 3  # s3fs's own retries of a broken read
    return fs, anonymous


def _gcs(config: StoreConfig) -> tuple[Any, bool]:
    # gcsfs.core.GCSFileSystem is the JSON API file system. gcsfs's package default is an
    # experimental variant that also calls the Storage Control gRPC API, which neither
    # emulators nor most proxies serve.
    # gcsfs logs every request it gives up on with a traceback; the agent reports the
    # failure itself (a load failure naming the reason).
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(skip_instance_cache=True, **config.options), False


def _azure(config: StoreConfig) -> tuple[Any, bool]:
    # The Azure SDK logs every request and response (headers, URLs) at INFO.
    logging.getLogger("azure").setLevel(logging.WARNING)
    import adlfs

    return adlfs.AzureBlobFileSystem(skip_instance_cache=True, **config.options), False


_BUILDERS: dict[Family, Callable[[StoreConfig], tuple[Any, bool]]] = {
    "s3": _s3,
    "gcs": _gcs,
    "azure": _azure,
}


async def _remote(call: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine of a file system on fsspec's I/O loop, where its client lives; a
    cancellation here cancels it there."""
    import fsspec.asyn

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, fsspec.asyn.get_loop()))


# -- errors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """Builds the StorageError for a library error, for one fetch."""

    shown: str
    uri: ObjectUri
    config: StoreConfig

    def __call__(self, exc: BaseException, what: str = "") -> StorageError:
        where = f"{self.shown}: {what}: " if what else f"{self.shown}: "
        return StorageError(where + _reason(exc, self.uri, self.config))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status(exc: BaseException) -> tuple[int | None, str]:
    """The HTTP status and the service's error code behind a library error, when known."""
    for error in _chain(exc):
        response = getattr(error, "response", None)
        if isinstance(response, Mapping):  # botocore's ClientError
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return status, str(response.get("Error", {}).get("Code", ""))
        for attribute in ("status_code", "status", "code"):
            value = getattr(error, attribute, None)
            if isinstance(value, int) and 100 <= value < 600:
                code = getattr(error, "error_code", None)  # Azure's, an enum
                return value, str(getattr(code, "value", code) or "")
    return None, ""


def _detail(exc: BaseException, config: StoreConfig) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return scrub(line[:300], config.secrets)


_DENIED_TYPES = {
    "NoCredentialsError",
    "PartialCredentialsError",
    "DefaultCredentialsError",
    "RefreshError",
    "ClientAuthenticationError",
    "CredentialUnavailableError",
}
_CONNECT_TYPES = {"EndpointConnectionError", "ConnectTimeoutError", "ServiceRequestError"}


def _reason(exc: BaseException, uri: ObjectUri, config: StoreConfig) -> str:
    chain = list(_chain(exc))
    names = {type(error).__name__ for error in chain}
    status, code = _status(exc)
    code_shown = f" ({code})" if code else ""
    if status == 404 or any(isinstance(error, FileNotFoundError) for error in chain):
        # The libraries' own words only when they tell more than the path.
        detail = _detail(exc, config)
        told = f" ({detail})" if re.search("bucket|container", detail, re.IGNORECASE) else ""
        return (
            f"not found: no object or folder {uri.key or '/'!r} in bucket {uri.bucket!r}, "
            f"or no such bucket{told}"
        )
    if (
        status in (401, 403)
        or names & _DENIED_TYPES
        or any(isinstance(error, PermissionError) for error in chain)
    ):
        if config.has_credentials:
            why = f"the credentials from {config.source} were refused or may not read it"
        else:
            why = (
                f"no credentials were given ({config.source}), and anonymous access is not "
                "allowed: the bucket is not public"
            )
        return f"access denied{code_shown}: {why} ({_detail(exc, config)})"
    if names & _CONNECT_TYPES or any(isinstance(error, ConnectionError) for error in chain):
        return f"the store cannot be reached: {_detail(exc, config)}"
    if isinstance(exc, TimeoutError):
        return "the store did not answer in time"
    shown_status = f"HTTP {status}{code_shown}: " if status else ""
    return f"{shown_status}{type(exc).__name__}: {_detail(exc, config)}"


# -- the endpoint check -------------------------------------------------------------------


def _endpoint(fs: Any, config: StoreConfig) -> str:
    """The URL of the service `fs` talks to ('' for S3: botocore's retries are bounded)."""
    if config.family == "gcs":
        return str(config.options.get("endpoint_url") or _GCS_ENDPOINT)
    if config.family == "azure":
        return str(fs.service_client.primary_endpoint)
    return ""


def _behind_proxy(scheme: str, host: str) -> bool:
    import urllib.request

    return bool(urllib.request.getproxies().get(scheme)) and not urllib.request.proxy_bypass(host)


async def _check_endpoint(fs: Any, config: StoreConfig, fail: _Failure) -> None:
    """Fail at once when the store's endpoint takes no connection (when no proxy is in the
    way: a proxy is then what must be reached)."""
    endpoint = _endpoint(fs, config)
    if not endpoint:
        return
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if _behind_proxy(parts.scheme, host):
        return
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    try:
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise StorageError(
            f"{fail.shown}: the store cannot be reached: no connection to {shown} within "
            f"{_CONNECT_TIMEOUT_S:g}s"
        ) from None
    except OSError as exc:
        raise StorageError(
            f"{fail.shown}: the store cannot be reached: {shown}: {exc.strerror or exc}"
        ) from None
    writer.close()
    await writer.wait_closed()


# -- listing ------------------------------------------------------------------------------


@dataclass
class _File:
    """One object to fetch, and the file it becomes."""

    remote: str
    parts: tuple[str, ...]
    size: int
    fd: int = -1
    ranges_left: int = 0

    @property
    def name(self) -> str:
        return "/".join(self.parts)


def _key_problem(key: str) -> str | None:
    """Why an object key (below the prefix) cannot be a relative path, or None."""
    if "\x00" in key or "\\" in key:
        return "a NUL or backslash"
    parts = key.split("/")
    if any(part in ("", ".") for part in parts):
        return "an empty or '.' component (a leading '/' or '//')"
    if ".." in parts:
        return "a '..' component"
    if any(len(part.encode()) > 255 for part in parts):
        return "a component longer than 255 bytes"
    return None


def _single_name(key: str) -> str:
    """The file name of a single object: its key's last part, or `artifact`."""
    name = key.rpartition("/")[2]
    if _key_problem(name) or name.startswith("."):
        return "artifact"
    return name


async def _listing(fs: Any, uri: ObjectUri, fail: _Failure) -> tuple[list[_File], bool]:
    """The files to fetch, and whether the URI named a single object."""
    try:
        info = await _remote(fs._info(uri.path))
    except Exception as exc:
        raise fail(exc) from None
    if info.get("type") == "file":
        return [_File(uri.path, (_single_name(uri.key),), _size(info, uri.key, fail))], True
    try:
        found = await _remote(fs._find(uri.path, detail=True))
    except Exception as exc:
        raise fail(exc, "listing") from None
    prefix = uri.path + "/"
    files: list[_File] = []
    for name, entry in sorted(found.items()):
        if entry.get("type") != "file":
            continue
        if not name.startswith(prefix):
            raise StorageError(f"{fail.shown}: the listing returned {name!r}, not below {prefix!r}")
        key = name[len(prefix) :]
        size = _size(entry, key, fail)
        if key.endswith("/") and size == 0:
            continue  # a folder marker, as consoles create them
        why = _key_problem(key)
        if why:
            raise StorageError(
                f"{fail.shown}: object key {key!r} has {why}; refused (keys become file names)"
            )
        files.append(_File(name, tuple(key.split("/")), size))
    if not files:
        raise StorageError(f"{fail.shown}: the folder holds no object")
    _check_clashes(files, fail.shown)
    return files, False


def _size(entry: Mapping[str, Any], key: str, fail: _Failure) -> int:
    size = entry.get("size")
    if not isinstance(size, int) or size < 0:
        raise StorageError(f"{fail.shown}: the store gives no size for {key!r}")
    return size


def _check_clashes(files: list[_File], shown: str) -> None:
    names = {file.parts for file in files}
    for file in files:
        for depth in range(1, len(file.parts)):
            if file.parts[:depth] in names:
                folder = "/".join(file.parts[:depth])
                raise StorageError(
                    f"{shown}: {folder!r} is both an object and the folder of {file.name!r}; "
                    "refused"
                )


# -- downloading --------------------------------------------------------------------------


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


async def _write(fd: int, data: bytes, offset: int) -> None:
    """Write in a worker thread; when cancelled, let the write end first (a thread cannot
    be stopped), so that no write outlives the fetch."""
    write = asyncio.ensure_future(asyncio.to_thread(_write_all, fd, data, offset))
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await asyncio.wait([write])
        raise


def _open(root: Path, file: _File) -> int:
    folder = root.joinpath(*file.parts[:-1])
    folder.mkdir(parents=True, exist_ok=True)
    real = os.path.realpath(folder)
    if real != os.path.realpath(root) and not real.startswith(os.path.realpath(root) + os.sep):
        raise StorageError(f"{file.name!r} resolves outside the folder; refused")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(folder / file.parts[-1], flags, 0o644)


async def _download(
    fs: Any,
    files: list[_File],
    into: Path,
    progress: Progress,
    fail: _Failure,
    *,
    concurrency: int,
    chunk: int,
) -> None:
    ranges = [
        (file, start, min(start + chunk, file.size))
        for file in files
        for start in range(0, max(file.size, 1), chunk)
    ]
    for file, _start, _end in ranges:
        file.ranges_left += 1
    jobs = iter(ranges)

    async def worker() -> None:
        for file, start, end in jobs:
            if file.fd < 0:
                # Opened here, with no await in between: one worker creates each file.
                try:
                    file.fd = _open(into, file)
                except OSError as exc:
                    raise StorageError(
                        f"{fail.shown}: {file.name}: cannot be written: {exc.strerror or exc}"
                    ) from None
            if end > start:
                try:
                    data = await _remote(fs._cat_file(file.remote, start=start, end=end))
                except Exception as exc:
                    raise fail(exc, file.name) from None
                if len(data) != end - start:
                    raise StorageError(
                        f"{fail.shown}: {file.name}: {len(data)} bytes at offset {start} where "
                        f"{end - start} were listed: the object changed while it was fetched"
                    )
                try:
                    await _write(file.fd, data, start)
                except OSError as exc:
                    raise StorageError(
                        f"{fail.shown}: {file.name}: cannot be written: {exc.strerror or exc}"
                    ) from None
                progress.add(len(data))
            file.ranges_left -= 1
            if file.ranges_left == 0:
                os.close(file.fd)
                file.fd = -1

    workers = [asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for file in files:
            if file.fd >= 0:
                os.close(file.fd)
                file.fd = -1
