"""What stops a scheduler at start says so in one line and exits 2, before it serves: a
state file in use by another scheduler, damaged or unreadable, a port another process has."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devharness.scheduler import SchedulerProcess
from scheduler_service.model import ModelRecord, validate_spec
from scheduler_service.store import Store


def start(db: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """A scheduler on ephemeral ports unless `flags` say otherwise; it must exit by itself."""
    ports = {"--port": "0", "--agent-port": "0", "--http-port": "0"}
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        ports[flag] = value
    return subprocess.run(
        [sys.executable, "-m", "gpuplace.cli", "scheduler", "--host", "127.0.0.1",
         "--db", str(db), *(item for pair in ports.items() for item in pair)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def refused(result: subprocess.CompletedProcess[str], *says: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in says:
        assert text in lines[0], lines[0]


@pytest.fixture
def listener() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_second_scheduler_on_one_state_file_is_refused(tmp_path: Path) -> None:
    first = SchedulerProcess(tmp_path).start()
    try:
        db = first.settings["db"]
        refused(start(db), "in use by another scheduler (pid ", "one scheduler per state file")
        assert first.process is not None and first.process.poll() is None
    finally:
        first.stop()


@pytest.mark.parametrize("flag", ["--port", "--agent-port", "--http-port"])
def test_a_port_another_program_listens_on_is_refused(
    tmp_path: Path, listener: int, flag: str
) -> None:
    refused(start(tmp_path / "s.db", flag, str(listener)), f"127.0.0.1:{listener}", "in use")


def test_with_json_logs_the_refusal_is_one_json_error(tmp_path: Path, listener: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpuplace.cli", "--log-format", "json", "scheduler",
         "--host", "127.0.0.1", "--db", str(tmp_path / "s.db"), "--port", str(listener),
         "--agent-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    error = json.loads(line)
    assert error["level"] == "ERROR" and error["message"].startswith("error: "), error
    assert f"127.0.0.1:{listener}" in error["message"] and "in use" in error["message"]


def test_a_file_that_is_no_state_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    db.write_bytes(b"this is not a database" * 100)
    refused(start(db), "cannot use the state file", "not a database")


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    refused(start(tmp_path / "nowhere" / "s.db"), "is its folder there")


def test_an_unknown_value_in_the_state_file_is_refused_naming_the_model(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = Store(db)
    store.save(ModelRecord(spec=validate_spec("iris"), version=1))
    store.close()
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE models SET state='Bogus'")
    refused(start(db), "model 'iris'", "'Bogus' is not a valid ModelState")


def test_a_certificate_that_is_not_one_is_refused_naming_the_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n")
    result = start(tmp_path / "s.db", "--tls-cert", str(bad), "--tls-key", str(bad))
    refused(result, f"{bad}, {bad}: not a usable certificate, key or CA")
