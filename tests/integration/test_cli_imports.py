"""The CLI is the top floor: a client command never loads a server's module graph."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What only the scheduler or the agent process needs: servers, the state file, NVML, metrics.
SERVER_ONLY = ["aiohttp", "sqlite3", "pynvml", "prometheus_client"]
# Of the processes' own packages, the CLI may load their settings models (for the flags).
ALLOWED = {"agent", "agent.settings", "scheduler_service", "scheduler_service.settings"}

PROBE = """
import json, sys
from gpuplace.cli import build_parser
parser = build_parser()
args = parser.parse_args(sys.argv[1:])
print(json.dumps(sorted(
    m for m in sys.modules
    if m.split(".")[0] in {server_only} + ["agent", "scheduler_service"] and m not in {allowed}
)))
"""


def loaded_after_parsing(*argv: str) -> list[str]:
    probe = PROBE.format(server_only=SERVER_ONLY, allowed=sorted(ALLOWED))
    result = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize(
    "argv",
    [
        ("model", "status"),
        ("server", "status"),
        ("render", "-f", "examples/servers.yaml"),
        ("scheduler", "--port", "1"),
        ("agent", "--pod-name", "mlserver-0"),
    ],
)
def test_parsing_a_command_loads_no_server_module(argv: tuple[str, ...]) -> None:
    assert loaded_after_parsing(*argv) == []


def test_the_probe_sees_a_server_module_once_it_is_imported() -> None:
    """The check above could not pass by looking at the wrong modules."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, scheduler_service.server; print('sqlite3' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "True"


RUN_PROBE = """
import contextlib, io, json, sys
from gpuplace.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(sys.argv[1:])
print(json.dumps([code, sorted(
    m for m in sys.modules
    if m.split(".")[0] in {server_only} + ["agent", "scheduler_service"] and m not in {allowed}
)]))
"""


def test_a_client_dry_run_loads_no_server_module() -> None:
    """`model load --dry-run` checks every rule without the scheduler's code."""
    probe = RUN_PROBE.format(server_only=SERVER_ONLY, allowed=sorted(ALLOWED))
    argv = ["model", "load", "-f", "examples/models.yaml", "--dry-run"]
    result = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [0, []]
