"""Fixtures for end-to-end tests that run real MLServer processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mlserver import MLServerProcess, ensure_mlserver_venv

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
