"""The README's tour and docs/running-locally.md run as written: their commands, copied out of
the Markdown, against real schedulers, MLServers and agents."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
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


def assert_ports_free(ports: tuple[int, ...], what: str) -> None:
    """The docs name fixed ports, as a reader uses them: another process on one of them
    (a demo left running, another test run) would answer in its place."""
    taken = []
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    assert not taken, (
        f"{what} needs 127.0.0.1 ports {taken}, which are in use; stop what holds them"
    )


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    assert_ports_free((9004, 9005, 9999), "the README's tour")
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


RUNNING_LOCALLY = REPO_ROOT / "docs" / "running-locally.md"
LOCAL = REPO_ROOT / "local"  # the folder docs/running-locally.md works in, and removes


def all_bash_blocks(markdown: Path) -> list[str]:
    return _BASH.findall(markdown.read_text(encoding="utf-8"))


def test_running_locally_runs_as_written() -> None:
    """Every command of docs/running-locally.md, in order, in one shell, as a reader would."""
    assert not LOCAL.exists(), f"{LOCAL} exists: not touching it"
    ports = (8080, 8081, 8082, 8090, 8091, 8092, 9004, 9005, 9999, 9006, 9008, 9016, 9018)
    assert_ports_free(ports, "docs/running-locally.md")
    script = "\n".join(all_bash_blocks(RUNNING_LOCALLY))
    try:
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=REPO_ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        # Step 7's inference answers class 0 (setosa); step 8 refuses llama3-405b.
        assert '"data":[0]' in result.stdout.replace(" ", "")
        assert "needs 800 GiB on 1 GPU, largest room 80 GiB" in result.stdout
        assert not LOCAL.exists(), "step 10 removes local/"
    finally:
        _stop_what_the_page_started()


def _stop_what_the_page_started() -> None:
    """After a failure part-way: the processes the page started, by their pid files."""
    if not LOCAL.exists():
        return
    for pid_file in LOCAL.glob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    shutil.rmtree(LOCAL, ignore_errors=True)
