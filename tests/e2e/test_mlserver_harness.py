"""The real-MLServer harness itself: venv, start/ready, load/infer/unload, clean stop."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devharness.mlserver import (
    MLServerHTTPError,
    MLServerProcess,
    http_request,
    process_group_pids,
)
from devharness.sklearn_models import (
    CONSTANT_CLASS,
    IRIS_ROW,
    IRIS_ROW_CLASS,
    TrainJob,
    train_iris_model,
    train_iris_models,
)
from tests.e2e.conftest import MLServerFactory

pytestmark = pytest.mark.e2e


def test_load_infer_unload_and_clean_stop(
    mlserver_executable: Path, mlserver_repository: Path, tmp_path: Path
) -> None:
    train_iris_model(mlserver_repository / "iris", "iris", with_settings=True, version="v1")

    server = MLServerProcess(mlserver_repository, mlserver=mlserver_executable, workdir=tmp_path)
    with server:
        assert server.startup_seconds is not None
        assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3
        assert server.alive_pids() == [server.pid]  # parallel_workers=0: a single process

        # Nothing loaded at startup; the index lists what is on disk, state without prefix.
        assert server.repository_index() == [
            {"name": "iris", "version": "v1", "state": "UNAVAILABLE", "reason": ""}
        ]

        started = time.monotonic()
        server.load_model("iris")
        load_seconds = time.monotonic() - started
        assert server.repository_index() == [
            {"name": "iris", "version": "v1", "state": "READY", "reason": ""}
        ]
        assert server.repository_index(ready=True)[0]["name"] == "iris"
        assert server.infer("iris", [IRIS_ROW]) == [IRIS_ROW_CLASS]
        assert server.load_events("iris") == 1

        assert server.unload_model("iris") is True
        assert server.model_states() == {"iris": "UNAVAILABLE"}
        with pytest.raises(MLServerHTTPError) as not_found:
            server.infer("iris", [IRIS_ROW])
        assert not_found.value.status == 404

        # Unloading a model MLServer does not hold answers 404 (the caller treats it as done).
        assert server.unload_model("no-such-model") is False
        assert server.unload_model("iris") is False

        pgid = server.pgid
        assert pgid is not None
        print(f"MLServer ready in {server.startup_seconds:.2f}s, first load {load_seconds:.2f}s")

    assert not server.is_running()
    assert process_group_pids(pgid) == []
    assert server.alive_pids() == []
    assert "Loaded model 'iris' successfully" in server.log_text()


def test_settings_name_wins_and_reload_picks_up_a_new_artifact(
    mlserver_factory: MLServerFactory, mlserver_repository: Path
) -> None:
    train_iris_models(
        [
            TrainJob(mlserver_repository / "folder-name", "settings-name"),
            TrainJob(mlserver_repository / "swap", "swap", version="v1"),
            TrainJob(mlserver_repository / "no-settings", "no-settings", with_settings=False),
        ]
    )
    server = mlserver_factory(mlserver_repository)

    # MLServer knows a model by the name in its model-settings.json, not by its folder; a
    # folder without model-settings.json is not a model at all.
    index = {entry["name"]: entry for entry in server.repository_index()}
    assert set(index) == {"settings-name", "swap"}
    assert "version" not in index["settings-name"]
    server.load_model("settings-name")
    assert server.model_states()["settings-name"] == "READY"
    for missing in ("folder-name", "no-settings"):
        response = http_request("POST", f"{server.base_url}/v2/repository/models/{missing}/load")
        assert response.status == 404, response.body

    # Load again after the artifact was replaced: MLServer reloads it in place.
    server.load_model("swap")
    assert server.infer("swap", [IRIS_ROW]) == [IRIS_ROW_CLASS]
    train_iris_model(mlserver_repository / "swap", "swap", with_settings=False, kind="constant")
    server.load_model("swap")
    assert server.infer("swap", [IRIS_ROW]) == [CONSTANT_CLASS]
    assert server.load_events("swap") == 2

    # A new parameters.version: the new version is loaded and the old one unloaded.
    settings_path = mlserver_repository / "swap" / "model-settings.json"
    settings = json.loads(settings_path.read_text())
    settings["parameters"]["version"] = "v2"
    settings_path.write_text(json.dumps(settings))
    server.load_model("swap")
    swap_entries = [e for e in server.repository_index() if e["name"] == "swap"]
    assert swap_entries == [{"name": "swap", "version": "v2", "state": "READY", "reason": ""}]
    assert server.infer("swap", [IRIS_ROW], version="v2") == [CONSTANT_CLASS]
    with pytest.raises(MLServerHTTPError) as gone:
        server.infer("swap", [IRIS_ROW], version="v1")
    assert gone.value.status == 404


def test_kill_leaves_nothing_behind_and_restart_keeps_ports(
    mlserver_factory: MLServerFactory, mlserver_repository: Path
) -> None:
    train_iris_model(mlserver_repository / "iris", "iris", with_settings=True)
    server = mlserver_factory(mlserver_repository, parallel_workers=1)
    assert len(server.alive_pids()) >= 2  # MLServer and its inference worker
    server.load_model("iris")
    assert server.infer("iris", [IRIS_ROW]) == [IRIS_ROW_CLASS]
    pgid = server.pgid
    assert pgid is not None
    address = server.base_url, server.grpc_target, server.metrics_url

    server.kill()
    assert not server.is_running()
    assert process_group_pids(pgid) == []

    # A restart comes back on the same addresses, with nothing loaded (load-at-startup off).
    server.start()
    assert (server.base_url, server.grpc_target, server.metrics_url) == address
    assert server.model_states() == {"iris": "UNAVAILABLE"}
