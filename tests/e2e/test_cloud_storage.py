"""Models whose artifacts live in object stores, end to end: a real iris model is put into
each emulator (moto's S3 API, gcp-storage-emulator's GCS JSON API, Azurite's Blob API), the
Model YAML names it as Seldon users write it, and a real agent fetches it for a real MLServer
that then answers an inference.

S3 is reached through a storage secret (`spec.secretName`, Seldon's MinIO example, mounted
into the agent's storage-secrets folder), GCS anonymously through `STORAGE_EMULATOR_HOST`
(as Seldon's public sample bucket is read), Azure through `AZURE_STORAGE_CONNECTION_STRING`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devharness.cluster import LocalCluster, ServerSpec
from devharness.mlserver import http_request
from devharness.object_stores import (
    AzureEmulator,
    GcsEmulator,
    S3Emulator,
    write_storage_secret,
)
from devharness.sklearn_models import IRIS_ROW, IRIS_ROW_CLASS
from tests.e2e.conftest import IrisArtifacts
from tests.support.object_stores import folder_objects, isolate_storage_env, running

pytestmark = pytest.mark.e2e

BUCKET = "models"


@dataclass(frozen=True)
class Emulators:
    s3: S3Emulator
    gcs: GcsEmulator
    azure: AzureEmulator


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    work = tmp_path_factory.mktemp("object-stores")
    with (
        running(S3Emulator(work)) as s3,
        running(GcsEmulator(work)) as gcs,
        running(AzureEmulator(work)) as azure,
    ):
        yield Emulators(s3, gcs, azure)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    mlserver_executable: Path,
    iris_artifacts: IrisArtifacts,
    emulators: Emulators,
) -> Iterator[LocalCluster]:
    """One replica whose agent reaches all three stores; the iris model is in each of them
    under `iris/` (model.joblib and its model-settings.json)."""
    objects = folder_objects(iris_artifacts.with_settings, "iris")
    for emulator in (emulators.s3, emulators.gcs, emulators.azure):
        emulator.put(BUCKET, objects)
    work = tmp_path_factory.mktemp("cloud-cluster")
    secrets = work / "storage-secrets"
    write_storage_secret(secrets, "minio-secret", emulators.s3.remote())
    server = ServerSpec("mlserver", agent_flags={"storage-secrets-dir": str(secrets)})
    cluster = LocalCluster(work, [server], mlserver=mlserver_executable)
    # The agents take the environment they start with.
    with pytest.MonkeyPatch.context() as patch:
        isolate_storage_env(patch)
        for name, value in {**emulators.gcs.environment(), **emulators.azure.environment()}.items():
            patch.setenv(name, value)
        cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
    assert cluster.leftover_pids() == {}


def model(name: str, storage_uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"storageUri": storage_uri, "requirements": ["sklearn"], **spec},
    }


@pytest.mark.parametrize(
    ("name", "resource", "label"),
    [
        ("iris-s3", model("iris-s3", f"s3://{BUCKET}/iris", secretName="minio-secret"), "s3"),
        ("iris-gs", model("iris-gs", f"gs://{BUCKET}/iris"), "gs"),
        ("iris-az", model("iris-az", f"az://{BUCKET}/iris"), "azure"),
    ],
)
def test_a_model_from_an_object_store_serves(
    cluster: LocalCluster, tmp_path: Path, name: str, resource: dict[str, Any], label: str
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(resource, sort_keys=False))
    result = cluster.gpuplace("model", "load", "-f", str(path), "--wait", "--timeout", "60s")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{cluster.log_tails()}"
    replica = cluster.replica("mlserver", 0)
    assert replica.mlserver.model_states().get(name) == "READY"
    assert replica.mlserver.infer(name, [IRIS_ROW]) == [IRIS_ROW_CLASS]
    uri = resource["spec"]["storageUri"]
    assert f"model {name} v1 on mlserver-0: artifact {uri} fetched" in replica.agent.log_text()
    metrics = http_request("GET", replica.agent.metrics_url).body
    samples = {
        (sample.name, sample.labels.get("scheme")): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    assert samples[("gpuplace_agent_artifact_fetched_bytes_total", label)] > 0
