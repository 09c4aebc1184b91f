"""Fixtures for end-to-end tests that run real MLServer processes."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devharness.cluster import LocalCluster
from devharness.mlserver import MLServerProcess, ensure_mlserver_venv
from devharness.sklearn_models import ARTIFACT_NAME, TrainJob, train_iris_models

MLServerFactory = Callable[..., MLServerProcess]


@pytest.fixture(scope="session")
def mlserver_executable() -> Path:
    """MLServer's ``mlserver`` program, its own venv created on first use (about a minute)."""
    return ensure_mlserver_venv()


@pytest.fixture
def mlserver_factory(
    mlserver_executable: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MLServerFactory]:
    """Start MLServers (``factory(repository, **MLServerProcess kwargs)``); each is started
    before it is returned and all are stopped at teardown, which fails if any process of
    theirs is still alive."""
    started: list[MLServerProcess] = []

    def factory(repository: Path, **kwargs: Any) -> MLServerProcess:
        kwargs.setdefault("mlserver", mlserver_executable)
        kwargs.setdefault("workdir", tmp_path_factory.mktemp("mlserver"))
        server = MLServerProcess(repository, **kwargs)
        started.append(server)
        return server.start()

    yield factory

    for server in started:
        server.stop()
    leftovers = {server.log_path: server.alive_pids() for server in started}
    assert not any(leftovers.values()), f"MLServer processes left behind: {leftovers}"


@pytest.fixture
def mlserver_repository(tmp_path: Path) -> Path:
    """An empty model repository folder for one MLServer."""
    repository = tmp_path / "repository"
    repository.mkdir()
    return repository


@dataclass(frozen=True)
class IrisArtifacts:
    """Model artifacts shared by every test of the session (storageUri = these paths)."""

    with_settings: Path
    """``model.joblib`` + ``model-settings.json`` (name ``iris``: the agent renames it)."""
    plain: Path
    """``model.joblib`` only: the agent writes the settings from the Model's parameters."""
    broken: Path
    """``model-settings.json`` and a ``model.joblib`` that is not a pickle: every load fails."""


@pytest.fixture(scope="session")
def iris_artifacts(
    tmp_path_factory: pytest.TempPathFactory, mlserver_executable: Path
) -> IrisArtifacts:
    """Real iris classifiers, trained once per session in MLServer's venv."""
    root = tmp_path_factory.mktemp("artifacts")
    artifacts = IrisArtifacts(root / "iris", root / "iris-plain", root / "broken")
    train_iris_models(
        [
            TrainJob(artifacts.with_settings, "iris"),
            TrainJob(artifacts.plain, "iris-plain", with_settings=False),
            TrainJob(artifacts.broken, "broken"),
        ],
        venv=mlserver_executable.parent.parent,
    )
    (artifacts.broken / ARTIFACT_NAME).write_bytes(b"this is not a joblib pickle\n")
    return artifacts


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """When a test that uses a LocalCluster fails, add the tail of every log of the cluster
    (scheduler, agents, MLServers) to its report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    for value in funcargs.values():
        if isinstance(value, LocalCluster):
            report.sections.append(("cluster log tails", value.log_tails(lines=25)))
