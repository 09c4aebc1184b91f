"""Object-store artifacts against real protocol servers: moto (S3 API), gcp-storage-emulator
(GCS JSON API) and Azurite (Azure Blob), each started once for this module.

What the agent fetches is compared byte for byte with what was put there; failures are
checked for the reason they give, and for never showing a secret (messages and every log
record). The last tests run a real agent and the real scheduler: a wrong secret is a failed
load that the scheduler retries elsewhere, and the fetch is in the agent's metrics.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
import tarfile
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
import yaml

from agent import storage
from agent.artifacts import ArtifactError, ModelRepository, fetch
from agent.gpus import NoGpus
from agent.main import Agent
from agent.settings import AgentSettings
from agent.storage import ObjectStores
from agent.storage_config import from_environment
from devharness.object_stores import (
    AZURE_ACCOUNT,
    AZURE_KEY,
    AzureEmulator,
    GcsEmulator,
    S3Emulator,
    free_port,
    write_storage_secret,
)
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.fakes.fake_v2 import FakeV2Server
from tests.support.object_stores import RangeIgnoringStore, isolate_storage_env, running
from tests.support.scheduler import SchedulerHandle
from tests.support.wait import wait_until

BUCKET = "models"
SETTINGS = json.dumps({"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel"})
IRIS = {
    "iris/model-settings.json": SETTINGS.encode(),
    "iris/model.joblib": os.urandom(300_000),
    "iris/sub/vocab.txt": b"a b c",
    "iris-twin/model.joblib": b"a prefix that starts like iris/ but is another folder",
}
MANY = {f"many/part-{i:02d}.bin": os.urandom(1000 + 997 * i) for i in range(40)}
MANY["many/big/weights.bin"] = os.urandom(1_500_000)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


COMMON = {
    **IRIS,
    **MANY,
    "single/model.bin": b"one object",
    "archive/iris.tar.gz": tar_gz(
        {"iris/model-settings.json": SETTINGS.encode(), "iris/model.joblib": b"weights"}
    ),
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Emulator]:
    with running(S3Emulator(tmp_path_factory.mktemp("s3"))) as emulator:
        # Keys that cannot all become files (S3 takes any string as a key; the GCS emulator
        # and Azurite refuse a '..' one).
        odd = {"evil/../escape.txt": b"x", "slashes/a//b": b"x", "clash/a": b"1", "clash/a/b": b"2"}
        emulator.put(BUCKET, {**COMMON, **odd})
        # An empty object (gcp-storage-emulator cannot store one).
        emulator.put("other", {"iris/model.joblib": b"in another bucket", "iris/empty": b""})
        yield emulator


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    with running(GcsEmulator(tmp_path_factory.mktemp("gcs"))) as emulator:
        emulator.put(BUCKET, COMMON)
        yield emulator


@pytest.fixture(scope="module")
def azure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureEmulator]:
    with running(AzureEmulator(tmp_path_factory.mktemp("azure"))) as emulator:
        emulator.put(BUCKET, COMMON)
        yield emulator


@pytest.fixture(autouse=True)
def storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_storage_env(monkeypatch)


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    repository = ModelRepository(tmp_path / "models")
    repository.prepare()
    return repository


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir()
    return folder


@pytest.fixture
def stores(secrets: Path) -> ObjectStores:
    return ObjectStores(secrets_dir=secrets, concurrency=4, chunk_bytes=256 * 1024)


@pytest.fixture
def minio(s3: S3Emulator, secrets: Path) -> str:
    """The name of a storage secret for the S3 emulator (Seldon's MinIO shape)."""
    write_storage_secret(secrets, "minio-secret", s3.remote())
    return "minio-secret"


class Store:
    """One scheme, reached one way: `uri(key)`, and the secret to name (or "")."""

    def __init__(self, scheme: str, secret: str = "") -> None:
        self.scheme = scheme
        self.secret = secret

    def uri(self, key: str, bucket: str = BUCKET) -> str:
        return f"{self.scheme}://{bucket}/{key}"


@pytest.fixture(params=["s3", "gs", "az"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, secrets: Path) -> Store:
    """Each scheme, reached as its users usually do: S3 through a Seldon storage secret,
    GCS anonymously through STORAGE_EMULATOR_HOST, Azure through a connection string."""
    scheme: str = request.param
    if scheme == "s3":
        s3: S3Emulator = request.getfixturevalue("s3")
        write_storage_secret(secrets, "minio-secret", s3.remote())
        return Store("s3", "minio-secret")
    emulator: GcsEmulator | AzureEmulator = request.getfixturevalue(
        "gcs" if scheme == "gs" else "azure"
    )
    for name, value in emulator.environment().items():
        monkeypatch.setenv(name, value)
    return Store(scheme)


async def fetched(
    repo: ModelRepository, stores: ObjectStores, uri: str, secret: str = "", timeout_s: float = 30
) -> dict[str, bytes]:
    """Fetch `uri` into a new staging folder; every file there, by relative path."""
    staged = repo.new_staging_folder("m")
    await fetch(repo, uri, staged, timeout_s, secret_name=secret, stores=stores, what="test")
    return {
        path.relative_to(staged).as_posix(): path.read_bytes()
        for path in sorted(staged.rglob("*"))
        if path.is_file()
    }


async def failure(
    repo: ModelRepository, stores: ObjectStores, uri: str, secret: str = "", timeout_s: float = 30
) -> str:
    staged = repo.new_staging_folder("m")
    with pytest.raises(ArtifactError) as caught:
        await fetch(repo, uri, staged, timeout_s, secret_name=secret, stores=stores)
    assert list(staged.iterdir()) == [], "a failed fetch leaves nothing to install"
    return str(caught.value)


def below(objects: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    return {
        key[len(prefix) + 1 :]: data
        for key, data in objects.items()
        if key.startswith(prefix + "/")
    }


# -- what is fetched ----------------------------------------------------------------------


async def test_a_folder_is_every_object_under_the_prefix(
    store: Store, repo: ModelRepository, stores: ObjectStores
) -> None:
    files = await fetched(repo, stores, store.uri("iris"), store.secret)
    assert files == below(IRIS, "iris")  # not iris-twin/, which only starts the same way


async def test_a_single_object_is_one_file_named_after_its_key(
    store: Store, repo: ModelRepository, stores: ObjectStores
) -> None:
    files = await fetched(repo, stores, store.uri("single/model.bin"), store.secret)
    assert files == {"model.bin": b"one object"}


async def test_a_single_archive_is_unpacked(
    store: Store, repo: ModelRepository, stores: ObjectStores
) -> None:
    files = await fetched(repo, stores, store.uri("archive/iris.tar.gz"), store.secret)
    assert files == {"model-settings.json": SETTINGS.encode(), "model.joblib": b"weights"}


async def test_many_files_and_a_large_one_arrive_whole_with_progress(
    store: Store, repo: ModelRepository, secrets: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stores = ObjectStores(
        secrets_dir=secrets, concurrency=8, chunk_bytes=64 * 1024, progress_bytes=1
    )
    caplog.set_level(logging.INFO, logger="agent.storage")
    files = await fetched(repo, stores, store.uri("many"), store.secret)
    assert files == below(MANY, "many")
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.storage"]
    assert all(line.startswith(f"test: fetching {store.uri('many')}: ") for line in lines)
    assert lines[0].endswith(" in 41 file(s)"), lines
    # No range is a tenth of the whole: every tenth gets its own line.
    percents = {int(line.rsplit("(", 1)[1].rstrip("%)")) // 10 for line in lines[1:]}
    assert percents >= set(range(1, 11)), lines


async def test_the_bucket_root_is_a_folder_too(
    minio: str, repo: ModelRepository, stores: ObjectStores
) -> None:
    files = await fetched(repo, stores, "s3://other", minio)
    assert files == {"iris/model.joblib": b"in another bucket", "iris/empty": b""}


# -- what is refused ----------------------------------------------------------------------


async def test_the_size_limit_is_checked_before_anything_is_written(
    store: Store, tmp_path: Path, stores: ObjectStores
) -> None:
    repo = ModelRepository(tmp_path / "small", max_artifact_bytes=100_000)
    repo.prepare()
    message = await failure(repo, stores, store.uri("iris"), store.secret)
    assert "max_artifact_bytes" in message and "refused" in message


async def test_the_listing_stops_as_soon_as_the_size_limit_is_passed(
    store: Store, tmp_path: Path, stores: ObjectStores
) -> None:
    """The listing is not read whole first: the first object listed (many/big/, 1.5 MB)
    is already over the limit."""
    repo = ModelRepository(tmp_path / "small", max_artifact_bytes=1_000_000)
    repo.prepare()
    message = await failure(repo, stores, store.uri("many"), store.secret)
    assert "the first 1 object(s) listed" in message, message
    assert "max_artifact_bytes" in message and "refused" in message


async def test_an_artifact_of_too_many_objects_is_refused(
    store: Store, repo: ModelRepository, secrets: Path
) -> None:
    stores = ObjectStores(secrets_dir=secrets, max_files=10)
    message = await failure(repo, stores, store.uri("many"), store.secret)
    assert "more than 10 objects" in message and "refused" in message, message


async def test_a_large_listing_is_read_page_by_page_and_stopped(
    s3: S3Emulator,
    minio: str,
    repo: ModelRepository,
    secrets: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pages of 4 objects: the listing stops in the third page (objects 9 to 12), never
    asking for the other 7 pages of the folder's 41 objects (moto logs every request)."""
    monkeypatch.setattr(storage, "LIST_PAGE_SIZE", 4)
    stores = ObjectStores(secrets_dir=secrets, max_files=10)
    before = len(s3.log_text())
    message = await failure(repo, stores, f"s3://{BUCKET}/many", minio)
    assert "more than 10 objects" in message
    requests = s3.log_text()[before:].splitlines()
    listed = [line for line in requests if "list-type=2" in line and "max-keys=4&" in line]
    assert len(listed) == 3, listed


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("evil", "'..' component"),
        ("slashes", "empty or '.' component"),
        ("clash", "'a' is both an object and the folder of 'a/b'"),
    ],
)
async def test_keys_that_are_not_plain_relative_paths_are_refused(
    minio: str, repo: ModelRepository, stores: ObjectStores, prefix: str, why: str
) -> None:
    message = await failure(repo, stores, f"s3://{BUCKET}/{prefix}", minio)
    assert why in message and "refused" in message
    assert not (repo.root.parent / "escape.txt").exists()


async def test_a_missing_object_says_not_found(
    store: Store, repo: ModelRepository, stores: ObjectStores
) -> None:
    message = await failure(repo, stores, store.uri("no/such/model"), store.secret)
    assert message.startswith(f"{store.uri('no/such/model')}: not found")


async def test_a_missing_bucket_says_not_found(
    store: Store, repo: ModelRepository, stores: ObjectStores
) -> None:
    message = await failure(repo, stores, store.uri("iris", bucket="no-such-bucket"), store.secret)
    assert "not found" in message and "no-such-bucket" in message


# -- credentials --------------------------------------------------------------------------

WRONG = "wrong-secret-value-0123456789"


async def test_wrong_s3_credentials_are_refused_without_showing_them(
    s3: S3Emulator,
    repo: ModelRepository,
    stores: ObjectStores,
    secrets: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    write_storage_secret(secrets, "minio-secret", s3.remote(secret_key=WRONG))
    message = await failure(repo, stores, f"s3://{BUCKET}/iris", "minio-secret")
    assert "access denied" in message
    assert "secret 'minio-secret'" in message
    assert WRONG not in message and WRONG not in caplog.text
    assert s3.secret_key not in caplog.text


async def test_wrong_s3_credentials_in_the_environment_are_refused(
    s3: S3Emulator, repo: ModelRepository, stores: ObjectStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**s3.environment(), "AWS_SECRET_ACCESS_KEY": WRONG}.items():
        monkeypatch.setenv(name, value)
    message = await failure(repo, stores, f"s3://{BUCKET}/iris")
    assert "access denied" in message and "the agent's environment" in message
    assert WRONG not in message


async def test_s3_credentials_from_the_environment(
    s3: S3Emulator, repo: ModelRepository, stores: ObjectStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.environment().items():
        monkeypatch.setenv(name, value)
    assert await fetched(repo, stores, f"s3://{BUCKET}/iris") == below(IRIS, "iris")


def test_an_anonymous_s3_fallback_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the AWS chain finds nothing once (a metadata service that timed out), the next
    fetch looks again instead of reading anonymously until the agent restarts. (No store
    is contacted; botocore's import opens a socket, hence not a unit test.)"""
    import botocore.credentials
    import botocore.session

    found: list[Any] = [None, botocore.credentials.Credentials("AKIAEXAMPLE", WRONG)]
    monkeypatch.setattr(botocore.session.Session, "get_credentials", lambda _self: found.pop(0))
    monkeypatch.setattr(storage, "_FILESYSTEMS", {})
    config = from_environment("s3", {})  # the AWS chain decides
    first, used = storage._filesystem(config)
    assert first.anon and not used.has_credentials
    second, used = storage._filesystem(config)
    assert not second.anon and used.has_credentials
    # One with credentials is kept: the chain is not asked again.
    assert storage._filesystem(config)[0] is second


async def test_wrong_azure_key_is_refused_without_showing_it(
    azure: AzureEmulator,
    repo: ModelRepository,
    stores: ObjectStores,
    secrets: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = AZURE_KEY.replace("E", "F")
    write_storage_secret(secrets, "azure-secret", azure.remote(key=wrong_key))
    message = await failure(repo, stores, f"az://{BUCKET}/iris", "azure-secret")
    assert "access denied" in message and "secret 'azure-secret'" in message
    assert wrong_key not in message and wrong_key not in caplog.text


async def test_a_tampered_azure_signature_is_refused_without_showing_it(
    azure: AzureEmulator,
    repo: ModelRepository,
    stores: ObjectStores,
    secrets: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = azure.container_sas_url(BUCKET)
    signature = url.partition("sig=")[2].split("&")[0]
    # Another first character (the same one, 1 time in 64, left it valid: a flaky test).
    tampered = url.replace(signature, ("B" if signature[0] == "A" else "A") + signature[1:])
    remote = {"type": "azureblob", "name": "az", "parameters": {"sas_url": tampered}}
    write_storage_secret(secrets, "sas", remote)
    message = await failure(repo, stores, f"az://{BUCKET}/iris", "sas")
    assert "access denied" in message
    for shown in (message, caplog.text):
        assert signature[1:] not in shown and "sig=" not in shown


BROKEN_KEY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"


@pytest.mark.parametrize(
    "case",
    [
        (
            {"type": "service_account", "private_key_id": "k1", "private_key": BROKEN_KEY},
            "missing fields",
        ),
        (
            {
                "type": "service_account",
                "client_email": "agent@project.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.googleapis.com/token",
                "private_key_id": "k1",
                "private_key": f"-----BEGIN PRIVATE KEY-----\n{BROKEN_KEY}\n-----END "
                "PRIVATE KEY-----\n",
            },
            "ValueError",
        ),
        ({"client_id": "c", "private_key": BROKEN_KEY}, "'type'"),
    ],
)
async def test_unusable_gcs_credentials_are_a_clear_failure_naming_the_secret(
    repo: ModelRepository,
    stores: ObjectStores,
    secrets: Path,
    caplog: pytest.LogCaptureFixture,
    case: tuple[dict[str, str], str],
) -> None:
    """A service-account key the library cannot use fails the load with the secret's name
    and the reason (never a traceback, never the key), before any request."""
    credentials, why = case
    caplog.set_level(logging.DEBUG)
    remote = {
        "type": "google cloud storage",
        "name": "gs",
        "parameters": {"service_account_credentials": json.dumps(credentials)},
    }
    write_storage_secret(secrets, "gcs-key", remote)
    message = await failure(repo, stores, f"gs://{BUCKET}/iris", "gcs-key")
    prefix = f"gs://{BUCKET}/iris: the credentials from secret 'gcs-key' cannot be used: "
    assert message.startswith(prefix), message
    assert why in message, message
    for shown in (message, caplog.text):
        assert BROKEN_KEY[:12] not in shown


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "FileNotFoundError"), (BROKEN_KEY, "not JSON"), ('{"type": "x"}', "'type'")],
)
async def test_an_unusable_gcs_key_file_is_a_clear_failure_naming_the_secret(
    repo: ModelRepository, stores: ObjectStores, secrets: Path, content: str | None, why: str
) -> None:
    key_file = secrets.parent / "key.json"
    if content is not None:
        key_file.write_text(content)
    remote = {
        "type": "google cloud storage",
        "name": "gs",
        "parameters": {"service_account_file": str(key_file)},
    }
    write_storage_secret(secrets, "gcs-file", remote)
    message = await failure(repo, stores, f"gs://{BUCKET}/iris", "gcs-file")
    prefix = f"gs://{BUCKET}/iris: the credentials from secret 'gcs-file' cannot be used: "
    assert message.startswith(prefix) and why in message, message
    assert BROKEN_KEY[:12] not in message


async def test_a_library_that_cannot_be_loaded_is_a_clear_failure(
    repo: ModelRepository, stores: ObjectStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gcsfs.core", None)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    message = await failure(repo, stores, f"gs://{BUCKET}/iris")
    assert message.startswith(f"gs://{BUCKET}/iris: the library for gs:// cannot be loaded"), (
        message
    )


# -- memory -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [(scheme, declared) for scheme in ("s3", "gs", "az") for declared in (True, False)],
    ids=lambda case: f"{case[0]}-{'content-length' if case[1] else 'chunked'}",
)
async def test_an_endpoint_that_ignores_range_never_sends_more_than_a_range(
    repo: ModelRepository,
    secrets: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, bool],
) -> None:
    """Each range is checked before it is held: an answer longer than the range asked
    (declared, or streamed without a length) is refused after at most a range and a bit,
    not read whole. (One range at a time: one connection, whose socket buffers alone hold
    a few MiB of what the endpoint sends.)"""
    scheme, declared = case
    stores = ObjectStores(secrets_dir=secrets, concurrency=1, chunk_bytes=256 * 1024)
    give_up = 256 * 2**20
    fake = await RangeIgnoringStore(
        BUCKET, "big.bin", 2**20, declared=declared, give_up_bytes=give_up
    ).start()
    secret = ""
    if scheme == "s3":
        secret = "ignores-range"
        remote = {
            "type": "s3",
            "name": "s3",
            "parameters": {
                "access_key_id": "k",
                "secret_access_key": WRONG,
                "endpoint": fake.endpoint,
            },
        }
        write_storage_secret(secrets, secret, remote)
    elif scheme == "gs":
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.endpoint)
    else:
        monkeypatch.setenv(
            "AZURE_STORAGE_CONNECTION_STRING",
            f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={AZURE_KEY};"
            f"BlobEndpoint={fake.endpoint}/{AZURE_ACCOUNT};",
        )
    try:
        message = await failure(repo, stores, f"{scheme}://{BUCKET}/big.bin", secret)
    finally:
        await fake.stop()
    assert "ignores Range" in message, message
    # A range is 256 KiB here; the sockets' buffers hold a few MiB more. Read whole, the
    # answer would have been read to the end (give_up).
    assert fake.sent < 32 * 2**20, fake.sent


async def test_ranges_in_flight_are_bounded_across_fetches(
    store: Store, repo: ModelRepository, secrets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two fetches of 3 workers each through one ObjectStores never hold more than its
    4 ranges at once (the agent has one ObjectStores: this bounds its memory)."""
    stores = ObjectStores(
        secrets_dir=secrets, concurrency=3, chunk_bytes=64 * 1024, ranges_in_flight=4
    )
    family = {"s3": "s3", "gs": "gcs", "az": "azure"}[store.scheme]
    real = storage.RANGE_READERS[family]
    counts = {"now": 0, "most": 0}

    async def counted(fs: Any, file: Any, start: int, end: int) -> Any:
        counts["now"] += 1
        counts["most"] = max(counts["most"], counts["now"])
        try:
            await asyncio.sleep(0.01)
            return await real(fs, file, start, end)
        finally:
            counts["now"] -= 1

    monkeypatch.setitem(storage.RANGE_READERS, family, counted)
    both = await asyncio.gather(
        fetched(repo, stores, store.uri("many"), store.secret),
        fetched(repo, stores, store.uri("many"), store.secret),
    )
    assert both == [below(MANY, "many")] * 2
    assert 2 <= counts["most"] <= 4, counts


# -- endpoints ----------------------------------------------------------------------------


async def test_an_unreachable_endpoint_says_so(
    store: Store,
    repo: ModelRepository,
    stores: ObjectStores,
    secrets: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    if store.scheme == "s3":
        remote = {
            "type": "s3",
            "name": "s3",
            "parameters": {"access_key_id": "k", "secret_access_key": WRONG, "endpoint": closed},
        }
        write_storage_secret(secrets, store.secret, remote)
    elif store.scheme == "gs":
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", closed)
    else:
        connection = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
        endpoint = connection.split("BlobEndpoint=")[1].split(";")[0]
        port = endpoint.split(":")[2].split("/")[0]
        monkeypatch.setenv(
            "AZURE_STORAGE_CONNECTION_STRING", connection.replace(f":{port}/", closed[16:] + "/")
        )
    message = await failure(repo, stores, store.uri("iris"), store.secret)
    assert "cannot be reached" in message, message
    assert WRONG not in message


async def test_an_endpoint_that_never_answers_is_bounded_by_the_fetch_timeout(
    repo: ModelRepository, stores: ObjectStores, secrets: Path
) -> None:
    release = asyncio.Event()
    held: list[asyncio.Future[Any]] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(asyncio.ensure_future(release.wait()))
        await held[-1]
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    remote = {
        "type": "s3",
        "name": "s3",
        "parameters": {
            "access_key_id": "k",
            "secret_access_key": WRONG,
            "endpoint": f"http://127.0.0.1:{port}",
        },
    }
    write_storage_secret(secrets, "silent", remote)
    try:
        message = await failure(repo, stores, f"s3://{BUCKET}/iris", "silent", timeout_s=1)
    finally:
        server.close()
        release.set()
        await asyncio.gather(*held)
        await server.wait_closed()
    assert message == f"s3://{BUCKET}/iris: not fetched within 1s (fetch_timeout_s)"


# -- secretName: Seldon's rclone remotes --------------------------------------------------


async def test_seldons_minio_secret_as_written(
    s3: S3Emulator, repo: ModelRepository, stores: ObjectStores, secrets: Path
) -> None:
    """The Secret's value is YAML (Seldon's sample writes `env_auth: false` unquoted)."""
    (secrets / "minio-secret").mkdir()
    (secrets / "minio-secret" / "s3").write_text(
        "type: s3\n"
        "name: s3\n"
        "parameters:\n"
        "  provider: minio\n"
        "  env_auth: false\n"
        f"  access_key_id: {s3.access_key}\n"
        f"  secret_access_key: {s3.secret_key}\n"
        f"  endpoint: {s3.endpoint}\n"
    )
    assert await fetched(repo, stores, f"s3://{BUCKET}/iris", "minio-secret") == below(IRIS, "iris")


async def test_a_remote_name_is_a_scheme(
    s3: S3Emulator, repo: ModelRepository, stores: ObjectStores, secrets: Path
) -> None:
    write_storage_secret(secrets, "minio-secret", s3.remote(name="minio"))
    files = await fetched(repo, stores, f"minio://{BUCKET}/single/model.bin", "minio-secret")
    assert files == {"model.bin": b"one object"}


async def test_seldons_public_gcs_secret(
    gcs: GcsEmulator, repo: ModelRepository, stores: ObjectStores, secrets: Path
) -> None:
    """`type: "google cloud storage"`, anonymous, as Seldon's seldon-rclone-gs-public; the
    endpoint parameter points it at the emulator."""
    remote = yaml.safe_dump(gcs.remote())
    (secrets / "gs-public").mkdir()
    (secrets / "gs-public" / "gs").write_text(remote)
    assert await fetched(repo, stores, f"gs://{BUCKET}/iris", "gs-public") == below(IRIS, "iris")


@pytest.mark.parametrize("form", ["account-key", "connection-string", "sas-url", "emulator"])
async def test_azureblob_secrets(
    azure: AzureEmulator, repo: ModelRepository, stores: ObjectStores, secrets: Path, form: str
) -> None:
    parameters: dict[str, Any] = {
        "account-key": azure.remote()["parameters"],
        "connection-string": {"connection_string": azure.connection_string()},
        "sas-url": {"sas_url": azure.container_sas_url(BUCKET)},
        "emulator": {"use_emulator": "true", "endpoint": azure.blob_endpoint},
    }[form]
    write_storage_secret(
        secrets, "azure-secret", {"type": "azureblob", "name": "az", "parameters": parameters}
    )
    files = await fetched(repo, stores, f"az://{BUCKET}/iris", "azure-secret")
    assert files == below(IRIS, "iris")


async def test_a_secret_that_is_not_mounted_names_itself(
    repo: ModelRepository, stores: ObjectStores, secrets: Path
) -> None:
    message = await failure(repo, stores, f"s3://{BUCKET}/iris", "absent-secret")
    assert "secret 'absent-secret' is not mounted" in message
    assert str(secrets / "absent-secret") in message


# -- a real agent, the real scheduler ------------------------------------------------------


async def start_agent(
    stack: AsyncExitStack, scheduler: SchedulerHandle, folder: Path, index: int
) -> tuple[Agent, FakeV2Server]:
    """An agent `mlserver-<index>` next to a fake V2 server, its storage secrets mounted at
    `folder/secrets`."""
    v2 = await FakeV2Server(folder / "models").start()
    stack.push_async_callback(v2.stop)
    host, port = scheduler.agent_address.rsplit(":", 1)
    settings: dict[str, Any] = {
        "pod_name": f"mlserver-{index}",
        "capabilities": ["mlserver", "sklearn"],
        "memory_bytes": 2**30,
        "scheduler_host": host,
        "scheduler_port": int(port),
        "inference_http_port": v2.port,
        "model_repository": v2.repository,
        "storage_secrets_dir": folder / "secrets",
        "http_host": "127.0.0.1",
        "readiness_port": 0,
        "metrics_port": 0,
    }
    agent = Agent(AgentSettings(**settings), probe=NoGpus())
    await agent.start()
    stack.push_async_callback(agent.stop)
    await wait_until(lambda: agent.link.connected, what=f"mlserver-{index} connected")
    return agent, v2


async def load_iris(
    stack: AsyncExitStack, scheduler: SchedulerHandle, *states: str
) -> scheduler_pb2.ModelStatus:
    """Load `s3://models/iris` with secretName minio-secret; the status once a replica is
    in one of `states`."""
    channel = await stack.enter_async_context(grpc.aio.insecure_channel(scheduler.client_address))
    client = scheduler_pb2_grpc.SchedulerStub(channel)
    model = common_pb2.ModelSpec(
        name="iris", storage_uri=f"s3://{BUCKET}/iris", secret_name="minio-secret"
    )
    await client.LoadModel(scheduler_pb2.LoadModelRequest(model=model))

    async def reached() -> scheduler_pb2.ModelStatus | None:
        status = await client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name="iris"))
        return status if any(r.state in states for r in status.replicas) else None

    status: scheduler_pb2.ModelStatus = await wait_until(
        reached, timeout=30, what=f"iris in {states}"
    )
    return status


def fetches(agent: Agent, outcome: str) -> float | None:
    return agent.registry.get_sample_value(
        "gpuplace_agent_artifact_fetch_duration_seconds_count",
        {"scheme": "s3", "outcome": outcome},
    )


async def test_a_wrong_secret_is_a_failed_load_retried_on_another_replica(
    s3: S3Emulator, scheduler: SchedulerHandle, tmp_path: Path
) -> None:
    """Replica 0 holds a wrong key under the Secret's name, replica 1 the right one: the
    load fails on 0 with the reason and lands on 1; both agents count their fetch."""
    async with AsyncExitStack() as stack:
        agents = []
        for index, secret_key in enumerate((WRONG, None)):
            folder = tmp_path / f"mlserver-{index}"
            remote = s3.remote(secret_key=secret_key)
            write_storage_secret(folder / "secrets", "minio-secret", remote)
            agents.append(await start_agent(stack, scheduler, folder, index))
        status = await load_iris(stack, scheduler, "Available")
        assert {r.replica_index: r.state for r in status.replicas}[1] == "Available", status
        (failed_agent, failed_v2), (good_agent, good_v2) = agents
        assert failed_v2.load_count("iris") == 0, "MLServer is not called without the files"
        assert good_v2.loaded == {"iris": "1"}
        weights = (good_v2.repository / "iris" / "model.joblib").read_bytes()
        assert weights == IRIS["iris/model.joblib"]
        assert fetches(failed_agent, "failed") == 1
        assert fetches(good_agent, "ok") == 1
        size = good_agent.registry.get_sample_value(
            "gpuplace_agent_artifact_fetched_bytes_total", {"scheme": "s3"}
        )
        assert size == sum(len(data) for data in below(IRIS, "iris").values())


async def test_a_wrong_secret_everywhere_names_the_reason(
    s3: S3Emulator, scheduler: SchedulerHandle, tmp_path: Path
) -> None:
    write_storage_secret(tmp_path / "secrets", "minio-secret", s3.remote(secret_key=WRONG))
    async with AsyncExitStack() as stack:
        await start_agent(stack, scheduler, tmp_path, 0)
        status = await load_iris(stack, scheduler, "LoadFailed")
    (replica,) = status.replicas
    assert replica.reason.startswith(f"artifact: s3://{BUCKET}/iris: access denied"), replica
    assert "secret 'minio-secret'" in replica.reason
    assert WRONG not in str(status)
