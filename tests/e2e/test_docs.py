"""The README's tour runs as written: its commands, copied out of README.md, against the
cluster its first command starts (real scheduler, MLServers and agents)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from devharness.cluster import REPO_ROOT, clean_env

README = REPO_ROOT / "README.md"
UP = "the cluster stays up"
_BASH = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def bash_blocks(markdown: Path, section: str) -> list[str]:
    """The ```bash blocks of one `## section` of a Markdown file, in order."""
    text = markdown.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return _BASH.findall(text[start : end if end != -1 else len(text)])


def test_the_tour_has_a_cluster_block_and_a_command_block() -> None:
    cluster, commands = bash_blocks(README, "A tour")
    assert cluster.strip() == 'make demo DEMO_ARGS="--keep --no-load"'
    assert "gpuplace model load -f examples/models.yaml --wait" in commands


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    cluster_block, commands = bash_blocks(README, "A tour")
    log_path = tmp_path / "cluster.log"
    with log_path.open("wb") as log:
        cluster = subprocess.Popen(
            ["bash", "-c", cluster_block],
            cwd=REPO_ROOT,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while UP not in log_path.read_text(errors="replace"):
            assert cluster.poll() is None, f"the cluster stopped:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no cluster in 300 s:\n{log_path.read_text()}"
            time.sleep(0.5)
        tour = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-x", "-c", commands],
            cwd=REPO_ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert tour.returncode == 0, f"{tour.stdout}\n{tour.stderr}"
        output = tour.stdout
        assert "iris" in output and "llama3" in output
        assert "1/2" in output  # llama3: one of two replicas fits, minReplicas 1 allows it
        assert "kind: StatefulSet" in output  # render
    finally:
        if cluster.poll() is None:
            # Ctrl-C in its terminal: SIGINT to the foreground group (make and the demo).
            os.killpg(cluster.pid, signal.SIGINT)
        cluster.wait(timeout=120)
    # make dies of the SIGINT once the demo it waits for has stopped cleanly.
    said = log_path.read_text()
    assert "cluster stopped: no process left" in said and "demo done" in said, said
