"""Object-store emulators on 127.0.0.1 for the tests and for trying gpuplace by hand.

Three real protocol servers, each a child process leading its own session, its log in a file:

- **S3**: moto's server mode (``moto_server``, from the ``moto[server]`` dev dependency), the
  S3 API over HTTP. After start an IAM user with an access key is created and moto's request
  authentication is switched on, so wrong credentials are refused as AWS refuses them.
- **GCS**: ``gcp-storage-emulator`` (PyPI), the GCS JSON API; it checks no credentials, like a
  public bucket.
- **Azure Blob**: Azurite (npm ``azurite``), installed on first use into ``.venv-azurite/``
  (``npm install --prefix``; the tests fail, they are not skipped, when npm is missing). It
  checks shared-key signatures, so a wrong account key is refused. Its telemetry is off.

Each emulator takes a free port, says how a client reaches it (:attr:`endpoint`, the
environment variables an agent needs, an rclone remote config for a storage secret), and can
put objects into a bucket. ``python -m devharness.object_stores`` starts all three and prints
how to reach them until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from devharness.mlserver import alive_in_group
from devharness.wait import wait_until_sync

REPO_ROOT = Path(__file__).resolve().parents[1]
AZURITE_PACKAGE = "azurite@3.35.0"
"""The Azurite release installed (3.36 and later declare Node.js 21+; this one runs on 18)."""
AZURITE_PREFIX = REPO_ROOT / ".venv-azurite"
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
"""Azurite's well-known development account and key (public, documented by Microsoft)."""
S3_REGION = "us-east-1"


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=2.0):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    request = urllib.request.Request(url, data=body, method=method)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    with urllib.request.urlopen(request, timeout=30.0) as response:
        data: bytes = response.read()
        return data


class EmulatorProcess:
    """One emulator process: start, wait until it listens, stop (its whole group)."""

    name = "emulator"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.log_path = work_dir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def listening_port(self, log: str) -> int | None:
        """The port the emulator says it listens on, once it does."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """What an agent needs in its environment to read this store without a secret."""
        raise NotImplementedError

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> Self:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            offset = log.tell()
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def listening() -> int | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} at start; "
                    f"{self.log_path}:\n{self.log_text()[-3000:]}"
                )
            port = self.listening_port(self.log_text()[offset:])
            return port if port and _answers(f"http://127.0.0.1:{port}/") else None

        try:
            port = wait_until_sync(
                listening, timeout=timeout, interval=0.1, what=f"{self.name} to listen"
            )
        except BaseException:
            self.stop()
            raise
        assert port is not None
        self.port = port
        self.prepare()
        return self

    def prepare(self) -> None:
        """What to do once it listens (S3: switch authentication on)."""

    def alive_pids(self) -> list[int]:
        return [] if self.process is None else alive_in_group(self.process)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)
            try:
                self.process.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(AssertionError):
            wait_until_sync(lambda: not self.alive_pids(), timeout=timeout, what="exit")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# S3: moto
# --------------------------------------------------------------------------------------------


class S3Emulator(EmulatorProcess):
    """moto's S3 API; authentication on, for the IAM user whose key is :attr:`access_key`."""

    name = "moto"

    def __init__(self, work_dir: Path) -> None:
        super().__init__(work_dir)
        self.access_key = ""
        self.secret_key = ""

    def command(self) -> list[str]:
        moto = Path(sys.executable).parent / "moto_server"
        return [str(moto), "-H", "127.0.0.1", "-p", "0"]

    def listening_port(self, log: str) -> int | None:
        match = re.search(r"Running on http://127\.0\.0\.1:(\d+)", log)
        return int(match[1]) if match else None

    def client(self, service: str, access_key: str = "setup", secret_key: str = "setup") -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
        )

    def prepare(self) -> None:
        """Create a reader with full S3 rights, then make moto check every request's
        signature against IAM (its `reset-auth` API: 0 requests left unauthenticated)."""
        iam = self.client("iam")
        iam.create_user(UserName="gpuplace")
        key = iam.create_access_key(UserName="gpuplace")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="gpuplace", PolicyName="s3", PolicyDocument=json.dumps(policy))
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        _request(
            "POST",
            f"{self.endpoint}/moto-api/reset-auth",
            b"0",
            {"Content-Type": "text/plain"},
        )

    def put(self, bucket: str, objects: Mapping[str, bytes]) -> None:
        """Create `bucket` (when needed) and put `objects` (key → content) into it."""
        s3 = self.client("s3", self.access_key, self.secret_key)
        if bucket not in {entry["Name"] for entry in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        for key, body in objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)

    def environment(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def remote(self, name: str = "s3", secret_key: str | None = None) -> dict[str, Any]:
        """An rclone remote config for a storage secret (Seldon's MinIO example's shape)."""
        return {
            "type": "s3",
            "name": name,
            "parameters": {
                "provider": "Other",
                "env_auth": "false",
                "access_key_id": self.access_key,
                "secret_access_key": self.secret_key if secret_key is None else secret_key,
                "endpoint": self.endpoint,
                "region": S3_REGION,
            },
        }


# --------------------------------------------------------------------------------------------
# GCS: gcp-storage-emulator
# --------------------------------------------------------------------------------------------


class GcsEmulator(EmulatorProcess):
    """The GCS JSON API (no authentication: every bucket is public)."""

    name = "gcs-emulator"

    def command(self) -> list[str]:
        emulator = Path(sys.executable).parent / "gcp-storage-emulator"
        self.port = free_port()
        return [
            str(emulator),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--in-memory",
        ]

    def listening_port(self, log: str) -> int | None:
        return self.port if "All services started" in log else None

    def start(self, timeout: float = 60.0) -> Self:
        # The port is picked before the emulator binds it: pick again if another process
        # took it meanwhile.
        for attempt in range(3):
            try:
                return super().start(timeout)
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in self.log_text():
                    raise
        raise AssertionError("unreachable")

    def put(self, bucket: str, objects: Mapping[str, bytes]) -> None:
        """Create `bucket` (when needed) and upload `objects` (key → content)."""
        with contextlib.suppress(urllib.error.HTTPError):  # 409: it exists
            _request(
                "POST",
                f"{self.endpoint}/storage/v1/b?project=gpuplace",
                json.dumps({"name": bucket}).encode(),
                {"Content-Type": "application/json"},
            )
        for key, body in objects.items():
            query = urllib.parse.urlencode({"uploadType": "media", "name": key})
            _request(
                "POST",
                f"{self.endpoint}/upload/storage/v1/b/{bucket}/o?{query}",
                body,
                {"Content-Type": "application/octet-stream"},
            )

    def environment(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def remote(self, name: str = "gs") -> dict[str, Any]:
        """Seldon's public-GCS remote (anonymous), pointed at this emulator."""
        return {
            "type": "google cloud storage",
            "name": name,
            "parameters": {"anonymous": True, "endpoint": self.endpoint},
        }


# --------------------------------------------------------------------------------------------
# Azure Blob: Azurite
# --------------------------------------------------------------------------------------------


def ensure_azurite(prefix: Path = AZURITE_PREFIX, npm: str | None = None) -> Path:
    """Azurite's blob server program, installed with npm into `prefix` on first use."""
    program = prefix / "node_modules" / ".bin" / "azurite-blob"
    stamp = prefix / "gpuplace-azurite-stamp"
    lock_path = Path(tempfile.gettempdir()) / "gpuplace-azurite.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if program.exists() and stamp.exists() and stamp.read_text() == AZURITE_PACKAGE:
            return program
        command = npm or shutil.which("npm")
        if command is None:
            raise RuntimeError(
                "npm not found: the Azure Blob tests need Azurite, installed with npm "
                "(apt-get install npm; .ci/run does it)"
            )
        print(f"[azurite] installing {AZURITE_PACKAGE} into {prefix} ...", file=sys.stderr)
        result = subprocess.run(
            [
                command,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--loglevel=error",
                AZURITE_PACKAGE,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not program.exists():
            raise RuntimeError(
                f"npm install {AZURITE_PACKAGE} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        stamp.write_text(AZURITE_PACKAGE)
        return program


class AzureEmulator(EmulatorProcess):
    """Azurite's Blob service (in memory), for the well-known development account."""

    name = "azurite"

    def __init__(self, work_dir: Path, program: Path | None = None) -> None:
        super().__init__(work_dir)
        self.program = program

    def command(self) -> list[str]:
        program = self.program or ensure_azurite()
        return [
            str(program),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--inMemoryPersistence",
            "--extentMemoryLimit",
            "256",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]

    def listening_port(self, log: str) -> int | None:
        match = re.search(r"successfully listens on http://127\.0\.0\.1:(\d+)", log)
        return int(match[1]) if match else None

    @property
    def blob_endpoint(self) -> str:
        return f"{self.endpoint}/{AZURE_ACCOUNT}"

    def connection_string(self, key: str = AZURE_KEY) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string())

    def put(self, container: str, objects: Mapping[str, bytes]) -> None:
        """Create `container` (when needed) and upload `objects` (name → content)."""
        from azure.core.exceptions import ResourceExistsError

        with self.service() as service:
            with contextlib.suppress(ResourceExistsError):
                service.create_container(container)
            for name, body in objects.items():
                service.get_blob_client(container, name).upload_blob(body, overwrite=True)

    def container_sas_url(self, container: str) -> str:
        """A read-and-list SAS URL of `container` (rclone's sas_url)."""
        from datetime import UTC, datetime, timedelta

        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        token = generate_container_sas(
            AZURE_ACCOUNT,
            container,
            account_key=AZURE_KEY,
            permission=ContainerSasPermissions(read=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=2),
        )
        return f"{self.blob_endpoint}/{container}?{token}"

    def environment(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string()}

    def remote(self, name: str = "az", key: str = AZURE_KEY) -> dict[str, Any]:
        """An rclone azureblob remote with the account, its key and this endpoint."""
        return {
            "type": "azureblob",
            "name": name,
            "parameters": {"account": AZURE_ACCOUNT, "key": key, "endpoint": self.blob_endpoint},
        }


def write_storage_secret(folder: Path, name: str, remote: Mapping[str, Any]) -> Path:
    """Write `remote` as Kubernetes mounts a Secret with one key: `folder/name/<key>`."""
    secret = folder / name
    secret.mkdir(parents=True, exist_ok=True)
    path = secret / "remote"
    path.write_text(json.dumps(remote))
    return path


def main() -> int:
    """Start the three emulators, print how to reach them, stop them on Ctrl-C."""
    work = Path(tempfile.mkdtemp(prefix="gpuplace-object-stores-"))
    emulators = [S3Emulator(work), GcsEmulator(work), AzureEmulator(work)]
    try:
        for emulator in emulators:
            emulator.start()
            print(f"{emulator.name}: {emulator.endpoint} (log {emulator.log_path})")
        for emulator in emulators:
            for name, value in emulator.environment().items():
                print(f"  export {name}={value!r}")
        print("Ctrl-C stops them.")
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for emulator in emulators:
            emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
