"""`gpuplace scheduler` as a child process of a local cluster or a test: start it on
ephemeral 127.0.0.1 ports, kill it like a crash, restart it on the same ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from devharness.wait import wait_until_sync

SCHEDULER_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "agent_port": 0,
    "http_port": 0,
    "disconnect_grace_s": 0.5,
    "retry_initial_s": 0.1,
    "retry_max_s": 1.0,
    "load_timeout_s": 30.0,
    "drain_timeout_s": 10.0,
}
"""Settings for a scheduler on this machine: ephemeral 127.0.0.1 ports, quick retries."""

_READY = re.compile(r"scheduler ready: client=[^:]+:(\d+) agent=[^:]+:(\d+) http=[^:]+:(\d+)")


class SchedulerProcess:
    """`gpuplace scheduler` as a child process; `kill()` is SIGKILL, `restart()` rebinds the
    same ports so that agents find it again."""

    def __init__(
        self, tmp_path: Path, log_level: str = "DEBUG", log_format: str = "text", **settings: Any
    ) -> None:
        self.tmp_path = tmp_path
        self.log_level = log_level
        self.log_format = log_format
        self.settings = {**SCHEDULER_DEFAULTS, "db": tmp_path / "state.db", **settings}
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: tuple[int, int, int] | None = None
        self.log_path = tmp_path / "scheduler.log"
        self.starts = 0

    @property
    def client_address(self) -> str:
        assert self.ports
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def agent_address(self) -> str:
        assert self.ports
        return f"127.0.0.1:{self.ports[1]}"

    @property
    def http_url(self) -> str:
        assert self.ports
        return f"http://127.0.0.1:{self.ports[2]}"

    def start(self) -> SchedulerProcess:
        values = dict(self.settings)
        if self.ports:
            values.update(port=self.ports[0], agent_port=self.ports[1], http_port=self.ports[2])
        args = [sys.executable, "-m", "gpuplace.cli", "--log-level", self.log_level]
        args += ["--log-format", self.log_format, "scheduler"]
        for key, value in values.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            # Its own session: a Ctrl-C meant for the demo or pytest does not reach it; stop()
            # decides when it goes.
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        marker = f"--- start {self.starts}\n"

        def ready() -> tuple[int, int, int] | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"scheduler exited:\n{self.log_path.read_text()}")
            text = self.log_path.read_text().rsplit(marker, 1)[-1]
            match = _READY.search(text)
            return (int(match[1]), int(match[2]), int(match[3])) if match else None

        try:
            self.ports = wait_until_sync(ready, timeout=30, what="the scheduler to be ready")
        except BaseException:
            self.stop()  # never leave a scheduler that did not get ready running
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush — what a crash looks like."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.terminate()
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def restart(self) -> SchedulerProcess:
        return self.start()
