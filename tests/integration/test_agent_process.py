"""`gpuplace agent` as a process: a bad setting stops it at once, naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devharness.cluster import clean_env


def run_agent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuplace.cli", "agent", *args],
        env={**clean_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ((), {"MEMORY_REQUEST": "lots"}, "MEMORY_REQUEST"),
        (("--memory-bytes", "lots"), {}, "MEMORY_REQUEST (--memory-bytes)"),
        ((), {"SELDON_SCHEDULER_PORT": "99999"}, "SELDON_SCHEDULER_PORT"),
        ((), {"POD_NAME": "Bad_Name-0"}, "POD_NAME"),
    ],
)
def test_bad_setting_exits_with_one_line(
    args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    result = run_agent(*args, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert lines[0].startswith("invalid setting ")
