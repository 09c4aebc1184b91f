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
4. lists a prefix page by page (the store's own paging, LIST_PAGE_SIZE objects a request),
   stopping as soon as the objects listed are over the size limit or more than
   `max_files`, and refuses any key that would not be a plain relative path (`..`, `.`,
   empty components, a backslash, NUL) and names that clash (a file and a folder);
5. downloads the files in ranges of `chunk_bytes`, `concurrency` ranges at a time (many small
   files in parallel, and one large file in parallel), each written at its offset. A
   range's answer is checked before it is held: a declared length other than the range's
   is refused before the body is read, and a body is read piece by piece and refused as
   soon as it is longer (an endpoint that ignores `Range`); so no more than the checked
   total is ever written, and no more than a range is ever held per request. One
   ObjectStores (the agent has one) holds at most max(`ranges_in_flight`, `concurrency`)
   ranges at once, over all its fetches: its memory is bounded by that times
   `chunk_bytes`; a failed download removes the files it wrote;
6. logs progress for a large artifact (every 10 % and at least every 5 s).

Library errors become a `StorageError` that says which case it is (not found, access denied,
endpoint unreachable, credentials that cannot be used, ...) without a traceback, a secret or
a signed URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
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
    store_config,
)
from contract.quantity import format_bytes
from contract.redaction import scrub

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
DEFAULT_CHUNK_BYTES = 8 * 2**20
# Ranges held at once by one ObjectStores, over all its fetches (at least `concurrency`, so
# that one fetch keeps its parallelism): 32 ranges of 8 MiB, 256 MiB at most for the agent.
DEFAULT_RANGES_IN_FLIGHT = 32
# The most objects an artifact may have; the listing stops past it. A module constant:
# agent/settings.py has no setting for it (ObjectStores.max_files).
MAX_ARTIFACT_FILES = 100_000
# Objects asked for per listing request (S3 and Azure answer at most 1000 and 5000 a page,
# GCS 1000 with gcsfs's defaults): no more than a page is listed past a limit.
LIST_PAGE_SIZE = 1000
# How much of a range is asked of the connection at a time.
_READ_PIECE_BYTES = 1 << 20
# The most of an error answer's body that is read (for its message).
_ERROR_BODY_BYTES = 64 * 1024
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
# What the agent asks of GCS with a key of its own: reading.
_GCS_READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
_MAX_KEY_FILE_BYTES = 1 << 20


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
    """How the agent fetches from object stores (its settings). The agent has one: the
    ranges it holds in memory at once, over all its fetches, are at most
    max(ranges_in_flight, concurrency)."""

    secrets_dir: Path = DEFAULT_SECRETS_DIR
    concurrency: int = DEFAULT_CONCURRENCY
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    progress_bytes: int = DEFAULT_PROGRESS_BYTES
    ranges_in_flight: int = DEFAULT_RANGES_IN_FLIGHT
    max_files: int = MAX_ARTIFACT_FILES
    # One gate per event loop (a semaphore belongs to one loop).
    _gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False, compare=False
    )

    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = asyncio.Semaphore(max(1, self.ranges_in_flight, self.concurrency))
            self._gates[loop] = gate
        return gate

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
        fail = _Failure(shown, target, config)
        try:
            fs, config = await asyncio.to_thread(_filesystem, config)
        except Exception as exc:  # the libraries' constructors: any error, named
            raise fail.unusable(exc) from None
        fail = _Failure(shown, target, config)
        await _check_endpoint(fs, config, fail)
        files, single = await _listing(fs, target, fail, limit=limit, max_files=self.max_files)
        total = sum(file.size for file in files)
        if total > limit:
            raise StorageError(
                f"{shown}: {format_bytes(total)} in {len(files)} object(s) is more than the "
                f"{format_bytes(limit)} an artifact may have (max_artifact_bytes); refused"
            )
        progress = Progress(what, shown, total, len(files), self.progress_bytes)
        await _download(
            fs,
            files,
            into,
            read_range=RANGE_READERS[config.family],
            progress=progress,
            fail=fail,
            concurrency=self.concurrency,
            chunk=self.chunk_bytes,
            gate=self._gate(),
        )
        return Fetched(total, into / files[0].parts[0] if single else None)


# -- file systems -------------------------------------------------------------------------

# One file system per distinct configuration, for the whole process (as fsspec's own
# instance cache does): their HTTP clients live on fsspec's I/O loop and are closed by the
# libraries at exit. The key includes the environment the libraries read. An S3 file
# system that fell back to anonymous access is not kept: the credential chain may have
# found nothing only this once (a metadata service that timed out), so the next fetch asks
# it again.
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
            entry = _BUILDERS[config.family](config)
            if not entry[1]:
                _FILESYSTEMS[key] = entry
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

    options = dict(config.options)
    token = options.get("token")
    if isinstance(token, str) and token not in _GCSFS_TOKEN_WORDS:
        token = _key_file(token)  # a secret's service_account_file
    if isinstance(token, Mapping):
        options["token"] = _google_credentials(token)
    return GCSFileSystem(skip_instance_cache=True, **options), False


# The token values gcsfs reads as a method, not as a key file's path.
_GCSFS_TOKEN_WORDS = ("anon", "google_default", "cache", "cloud", "browser")


def _key_file(path: str) -> Any:
    """The JSON content of a key file (a missing one is an error here; gcsfs would take its
    path for a raw access token)."""
    with open(path, "rb") as handle:
        raw = handle.read(_MAX_KEY_FILE_BYTES + 1)
    if len(raw) > _MAX_KEY_FILE_BYTES:
        raise ValueError(f"{path} is larger than 1 MiB: not a key file")
    try:
        return json.loads(raw)
    except ValueError:
        raise ValueError(f"{path} is not JSON: not a key file") from None


def _google_credentials(info: Mapping[str, Any]) -> Any:
    """The credentials of a key file's content (a secret's service_account_credentials).
    Made here rather than by gcsfs, which hides why a service-account key is refused and
    reports a missing 'refresh_token' instead."""
    kind = info.get("type")
    if kind == "service_account":
        from google.oauth2 import service_account

        key_credentials: Any = service_account.Credentials
        return key_credentials.from_service_account_info(dict(info), scopes=[_GCS_READ_SCOPE])
    if kind == "authorized_user":
        from google.oauth2.credentials import Credentials

        user_credentials: Any = Credentials
        return user_credentials.from_authorized_user_info(dict(info), scopes=[_GCS_READ_SCOPE])
    raise ValueError(
        "its 'type' is neither service_account nor authorized_user (the content of a "
        "service-account key file is expected)"
    )


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

    def unusable(self, exc: BaseException) -> StorageError:
        """A file system that cannot be made: its library is missing, or the library
        refuses the credentials (a key file without its fields, a key that does not
        decode, a malformed connection string, ...)."""
        detail = f"{type(exc).__name__}: {_detail(exc, self.config)}"
        if isinstance(exc, ImportError):
            return StorageError(
                f"{self.shown}: the library for {self.uri.scheme}:// cannot be loaded: {detail}"
            )
        return StorageError(
            f"{self.shown}: the credentials from {self.config.source} cannot be used: {detail}"
        )


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
    """The first line of a library's error text, without secrets, at most 300 characters:
    scrubbed whole first (a cut through a secret would leave its beginning unmatched)."""
    lines = scrub(str(exc), config.secrets).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


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

    bucket: str
    key: str
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


# An object a listing names: its key, its size as the store gives it, and whether it is a
# folder marker (Azure's hdi_isfolder metadata).
_Listed = tuple[str, Any, bool]


async def _s3_objects(fs: Any, bucket: str, prefix: str) -> AsyncIterator[_Listed]:
    """Every object whose key starts with `prefix`, a page at a time (ListObjectsV2)."""
    token = ""
    while True:
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE_SIZE}
        if token:
            request["ContinuationToken"] = token
        page = await fs._call_s3("list_objects_v2", **request)
        for entry in page.get("Contents", []):
            yield str(entry["Key"]), entry.get("Size"), False
        token = page.get("NextContinuationToken") or ""
        if not page.get("IsTruncated") or not token:
            return


async def _gcs_objects(fs: Any, bucket: str, prefix: str) -> AsyncIterator[_Listed]:
    """Every object whose name starts with `prefix`, a page at a time (objects.list)."""
    token = None
    while True:
        page = await fs._call(
            "GET",
            "b/{}/o",
            bucket,
            json_out=True,
            prefix=prefix or None,
            maxResults=LIST_PAGE_SIZE,
            pageToken=token,
        )
        for item in page.get("items", []):
            size = item.get("size")
            yield str(item["name"]), int(size) if str(size).isdigit() else None, False
        token = page.get("nextPageToken")
        if not token:
            return


_AZURE_FOLDER_MARKS = ("hdi_isfolder", "Hdi_isfolder", "is_directory")


async def _azure_objects(fs: Any, container: str, prefix: str) -> AsyncIterator[_Listed]:
    """Every blob whose name starts with `prefix`, a page at a time (List Blobs)."""
    async with fs.service_client.get_container_client(container) as client:
        blobs = client.list_blobs(
            name_starts_with=prefix or None, include=["metadata"], results_per_page=LIST_PAGE_SIZE
        )
        async for blob in blobs:
            metadata = blob.metadata or {}
            folder = any(metadata.get(mark) == "true" for mark in _AZURE_FOLDER_MARKS)
            yield str(blob.name), blob.size, folder


_LISTERS: dict[Family, Callable[[Any, str, str], AsyncIterator[_Listed]]] = {
    "s3": _s3_objects,
    "gcs": _gcs_objects,
    "azure": _azure_objects,
}


async def _listing(
    fs: Any, uri: ObjectUri, fail: _Failure, *, limit: int, max_files: int
) -> tuple[list[_File], bool]:
    """The files to fetch, and whether the URI named a single object."""
    try:
        info = await _remote(fs._info(uri.path))
    except Exception as exc:
        raise fail(exc) from None
    if info.get("type") == "file":
        size = _size(info.get("size"), uri.key, fail)
        return [_File(uri.bucket, uri.key, (_single_name(uri.key),), size)], True
    try:
        files = await _remote(_list_prefix(fs, uri, fail, limit=limit, max_files=max_files))
    except StorageError:
        raise
    except Exception as exc:
        raise fail(exc, "listing") from None
    if not files:
        raise StorageError(f"{fail.shown}: the folder holds no object")
    _check_clashes(files, fail.shown)
    return files, False


async def _list_prefix(
    fs: Any, uri: ObjectUri, fail: _Failure, *, limit: int, max_files: int
) -> list[_File]:
    """The objects under the prefix, listed page by page on fsspec's loop; stops as soon as
    they are more than `max_files` or than `limit` bytes (only the files are kept)."""
    prefix = f"{uri.key}/" if uri.key else ""
    files: list[_File] = []
    total = 0
    async for key, listed_size, folder in _LISTERS[fail.config.family](fs, uri.bucket, prefix):
        if not key.startswith(prefix):
            raise StorageError(
                f"{fail.shown}: the listing returned {key!r}, not below {prefix or '/'!r}"
            )
        name = key[len(prefix) :]
        size = _size(listed_size, name, fail)
        if folder or (name.endswith("/") and size == 0):
            continue  # a folder marker, as consoles and Azure's hierarchical namespace make
        why = _key_problem(name)
        if why:
            raise StorageError(
                f"{fail.shown}: object key {name!r} has {why}; refused (keys become file names)"
            )
        files.append(_File(uri.bucket, key, tuple(name.split("/")), size))
        total += size
        if len(files) > max_files:
            raise StorageError(
                f"{fail.shown}: more than {max_files} objects under the prefix (the most an "
                "artifact may have); refused"
            )
        if total > limit:
            raise StorageError(
                f"{fail.shown}: the first {len(files)} object(s) listed hold "
                f"{format_bytes(total)}, more than the {format_bytes(limit)} an artifact may "
                "have (max_artifact_bytes); refused"
            )
    return files


def _size(size: Any, key: str, fail: _Failure) -> int:
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


# -- reading a range ----------------------------------------------------------------------


class _WrongLength(Exception):
    """A store answered a range with another length than asked."""

    def __init__(self, asked: int, received: str) -> None:
        super().__init__(f"{received} where {asked} bytes were asked")
        self.asked = asked
        self.received = received


def _check_declared(declared: Any, asked: int) -> None:
    """Refuse an answer whose declared length (Content-Length, when given) is not the
    range's, before its body is read."""
    if declared is not None and int(declared) != asked:
        raise _WrongLength(asked, f"{int(declared)} bytes")


async def _read_capped(read: Callable[[int], Awaitable[bytes]], asked: int) -> bytearray:
    """Read a body piece by piece; refused as soon as it is longer than `asked`, so that
    no more than `asked` + a piece is ever held."""
    data = bytearray()
    while True:
        piece = await read(min(_READ_PIECE_BYTES, asked + 1 - len(data)))
        if not piece:
            return data
        data += piece
        if len(data) > asked:
            raise _WrongLength(asked, "more than that")


async def _s3_range(fs: Any, file: _File, start: int, end: int) -> bytearray:
    """Bytes [start, end) of an S3 object (GetObject with a Range), retried as s3fs retries
    its own reads."""
    from s3fs.core import _error_wrapper

    async def attempt() -> bytearray:
        response = await fs._call_s3(
            "get_object", Bucket=file.bucket, Key=file.key, Range=f"bytes={start}-{end - 1}"
        )
        body = response["Body"]
        try:
            _check_declared(response.get("ContentLength"), end - start)
            return await _read_capped(body.read, end - start)
        finally:
            body.close()

    result: bytearray = await _error_wrapper(attempt, retries=fs.retries)
    return result


async def _gcs_range(fs: Any, file: _File, start: int, end: int) -> bytearray:
    """Bytes [start, end) of a GCS object (a media download with a Range), retried as gcsfs
    retries its own requests."""
    from gcsfs.retry import retry_request, validate_response

    path = f"{file.bucket}/{file.key}"

    async def attempt() -> bytearray:
        await fs._set_session()
        async with fs.session.get(
            url=fs.url(path),
            params=fs._get_params({}),
            headers=fs._get_headers({"Range": f"bytes={start}-{end - 1}"}),
            timeout=fs.requests_timeout,
        ) as response:
            if response.status >= 400:
                error = await response.content.read(_ERROR_BODY_BYTES)
                validate_response(response.status, error, path)
            _check_declared(response.content_length, end - start)
            return await _read_capped(response.content.read, end - start)

    result: bytearray = await retry_request(retries=fs.retries)(attempt)()
    return result


def _azure_check_length(pipeline_response: Any) -> None:
    """Azure SDK response hook: refuse a successful answer to a ranged download whose
    Content-Length is not the range's, before the SDK reads its body (it reads a range's
    body whole)."""
    response = pipeline_response.http_response
    if not 200 <= response.status_code < 300:
        return
    asked = response.request.headers.get("x-ms-range", "")
    first, _, last = asked.removeprefix("bytes=").partition("-")
    if not (first.isdigit() and last.isdigit()):
        return
    asked_bytes = int(last) - int(first) + 1
    length = response.headers.get("Content-Length")
    try:
        if length is None:
            raise _WrongLength(asked_bytes, "a body of no declared length")
        _check_declared(length, asked_bytes)
    except _WrongLength:
        with contextlib.suppress(Exception):
            response.internal_response.close()
        raise


async def _azure_range(fs: Any, file: _File, start: int, end: int) -> bytes:
    """Bytes [start, end) of a blob (Get Blob with x-ms-range; the SDK retries)."""
    async with fs.service_client.get_blob_client(container=file.bucket, blob=file.key) as blob:
        stream = await blob.download_blob(
            offset=start,
            length=end - start,
            max_concurrency=1,
            raw_response_hook=_azure_check_length,
            **getattr(fs, "_timeout_kwargs", {}),
        )
        data: bytes = await stream.readall()
        return data


# How each store reads a range; runs on fsspec's loop.
_RangeReader = Callable[[Any, _File, int, int], Coroutine[Any, Any, bytes | bytearray]]
RANGE_READERS: dict[Family, _RangeReader] = {
    "s3": _s3_range,
    "gcs": _gcs_range,
    "azure": _azure_range,
}


# -- downloading --------------------------------------------------------------------------


def _write_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


async def _write(fd: int, data: bytes | bytearray, offset: int) -> None:
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


def _remove_written(root: Path, created: list[_File]) -> None:
    """After a failed download: remove the files it created, and the folders that held
    only them."""
    folders: set[Path] = set()
    for file in created:
        with contextlib.suppress(OSError):
            root.joinpath(*file.parts).unlink()
        for depth in range(1, len(file.parts)):
            folders.add(root.joinpath(*file.parts[:depth]))
    for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


async def _download(
    fs: Any,
    files: list[_File],
    into: Path,
    *,
    read_range: _RangeReader,
    progress: Progress,
    fail: _Failure,
    concurrency: int,
    chunk: int,
    gate: asyncio.Semaphore,
) -> None:
    ranges = [
        (file, start, min(start + chunk, file.size))
        for file in files
        for start in range(0, max(file.size, 1), chunk)
    ]
    for file, _start, _end in ranges:
        file.ranges_left += 1
    jobs = iter(ranges)
    created: list[_File] = []

    async def fetch_range(file: _File, start: int, end: int) -> None:
        # The gate holds the range from its request until it is written.
        async with gate:
            try:
                data = await _remote(read_range(fs, file, start, end))
            except _WrongLength as wrong:
                raise _wrong_length(fail, file, start, wrong) from None
            except Exception as exc:
                raise fail(exc, file.name) from None
            if len(data) != end - start:
                raise _wrong_length(
                    fail, file, start, _WrongLength(end - start, f"{len(data)} bytes")
                )
            try:
                await _write(file.fd, data, start)
            except OSError as exc:
                raise StorageError(
                    f"{fail.shown}: {file.name}: cannot be written: {exc.strerror or exc}"
                ) from None
        progress.add(end - start)

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
                created.append(file)
            if end > start:
                await fetch_range(file, start, end)
            file.ranges_left -= 1
            if file.ranges_left == 0:
                os.close(file.fd)
                file.fd = -1

    workers = [asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        await _stop(workers, files)
        await asyncio.to_thread(_remove_written, into, created)
        raise
    await _stop(workers, files)


def _wrong_length(fail: _Failure, file: _File, start: int, wrong: _WrongLength) -> StorageError:
    return StorageError(
        f"{fail.shown}: {file.name}: asked for {wrong.asked} bytes at offset {start}, the "
        f"store sent {wrong.received}: the object changed while it was fetched, or the "
        "endpoint ignores Range requests; refused"
    )


async def _stop(workers: Sequence[asyncio.Future[None]], files: list[_File]) -> None:
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    for file in files:
        if file.fd >= 0:
            os.close(file.fd)
            file.fd = -1
