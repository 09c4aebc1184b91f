"""Helpers for tests against the object-store emulators (devharness.object_stores)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

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
