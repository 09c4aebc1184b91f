"""A harness for real MLServer processes: their own virtualenv, start/stop, and small REST calls.

MLServer pins ``protobuf<7`` while gpuplace needs protobuf 7, so MLServer lives in its own
virtual environment (``.venv-mlserver`` at the repository root by default), created once by
:func:`ensure_mlserver_venv`. :class:`MLServerProcess` starts ``mlserver start <repository>``
on 127.0.0.1 with free ports, waits until ``/v2/health/ready`` answers, and on :meth:`stop`
ends its whole process group so that nothing is left behind.

Only the standard library is used, so the module also imports in a bare interpreter.

Behaviour of MLServer 1.7.1 that callers rely on (checked against the real server):

- ``POST /v2/repository/index`` needs a JSON body (``{}``) *and* ``Content-Type:
  application/json``; it answers a list of ``{"name", "version"?, "state", "reason"}``. REST
  states carry no prefix (``READY``, ``UNAVAILABLE``, ...); the gRPC index says
  ``State.READY``. ``version`` is present only when model-settings sets
  ``parameters.version``.
- The index lists every model-settings.json found on disk: an unloaded model whose folder is
  still there shows ``UNAVAILABLE``; once the folder is removed it is gone.
- A model is known by the ``name`` in its model-settings.json (the folder name only when the
  settings have no ``name``). A folder without model-settings.json is not a model: load 404.
- Load of an unknown model and unload of a model that is not loaded answer 404.
- Load of a model that is already loaded reloads it from disk (a replaced artifact is picked
  up; a new ``parameters.version`` is loaded, then the old version unloaded).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The gpuplace repository root (this file is ``devharness/mlserver.py``)."""

DEFAULT_VENV = REPO_ROOT / ".venv-mlserver"
"""Where MLServer's own virtualenv lives unless ``GPUPLACE_MLSERVER_VENV`` says otherwise."""

VENV_ENV_VAR = "GPUPLACE_MLSERVER_VENV"

MLSERVER_REQUIREMENTS: tuple[str, ...] = (
    "mlserver==1.7.1",
    "mlserver-sklearn==1.7.1",
    # mlserver-sklearn 1.7.1 puts no bound on scikit-learn; pin the one checked to work so
    # that the pickles the tests train match what MLServer unpickles.
    "scikit-learn==1.9.1",
    "joblib==1.6.0",
    # uvloop 0.22 crash-loops MLServer 1.7.1's parallel inference workers.
    "uvloop<0.22",
)
"""What MLServer's virtualenv holds. Changing this list re-creates the venv."""

_STAMP_NAME = "gpuplace-mlserver-stamp.json"
_STAMP_FORMAT = 1

Log = Callable[[str], None]


def _default_log(message: str) -> None:
    print(f"[mlserver-venv] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# MLServer's virtualenv
# --------------------------------------------------------------------------------------------


class MLServerVenvError(RuntimeError):
    """Creating MLServer's virtualenv failed; the message ends with pip's last lines."""


def default_venv_path() -> Path:
    """``$GPUPLACE_MLSERVER_VENV`` when set, otherwise ``<repo>/.venv-mlserver``."""
    override = os.environ.get(VENV_ENV_VAR)
    return Path(override) if override else DEFAULT_VENV


def venv_bin(venv: Path, program: str) -> Path:
    """The path of ``program`` (``python``, ``mlserver``, ``pip``) inside ``venv``."""
    return venv / "bin" / program


def _wanted_stamp(python: str | None, requirements: Sequence[str]) -> dict[str, Any]:
    if python is None:
        version = ".".join(map(str, sys.version_info[:3]))
    else:
        version = subprocess.run(
            [python, "-c", "import sys; print('.'.join(map(str, sys.version_info[:3])))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    return {
        "format": _STAMP_FORMAT,
        "python": version,
        "requirements": list(requirements),
    }


def _read_stamp(venv: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((venv / _STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _venv_lock(venv: Path) -> Iterator[None]:
    """An exclusive lock per venv path, so concurrent tests / demo runs build it only once."""
    digest = hashlib.sha1(str(venv.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"gpuplace-mlserver-venv-{digest}.lock"
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_pip_with_progress(cmd: Sequence[str], log_file: Path, log: Log) -> None:
    """Run pip, keep its full output in ``log_file`` and report progress every few seconds."""
    collected = 0
    phase = "resolving and downloading"
    lock = threading.Lock()
    done = threading.Event()
    started = time.monotonic()

    def heartbeat() -> None:
        while not done.wait(10.0):
            with lock:
                log(
                    f"  ... {phase}: {collected} packages collected, "
                    f"{time.monotonic() - started:.0f}s"
                )

    with (
        log_file.open("w") as sink,
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc,  # closes the pipe on the way out
    ):
        ticker = threading.Thread(target=heartbeat, daemon=True)
        ticker.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                with lock:
                    if line.startswith("Collecting "):
                        collected += 1
                    elif line.startswith("Installing collected packages"):
                        phase = "installing"
                        log(f"  installing {collected} packages ...")
            code = proc.wait()
        finally:
            done.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-25:])
        raise MLServerVenvError(f"pip install failed (exit {code}); see {log_file}:\n{tail}")


def ensure_mlserver_venv(
    path: Path | None = None,
    *,
    python: str | None = None,
    requirements: Sequence[str] = MLSERVER_REQUIREMENTS,
    log: Log | None = _default_log,
) -> Path:
    """Create MLServer's own virtualenv once and return the path of its ``mlserver`` program.

    Idempotent: a stamp file inside the venv records the Python version and the pinned
    requirements; while they match (and ``mlserver`` exists) nothing is done. When they
    differ, the venv is removed and built again. Safe to call from concurrent processes.

    ``path`` defaults to :func:`default_venv_path`; ``python`` to the interpreter running this
    code (``python -m venv`` then uses the base interpreter, not gpuplace's venv). A fresh
    install takes about a minute on 2 cores (pip from PyPI).
    """
    venv = (path or default_venv_path()).absolute()
    base_python = python or sys.executable
    say: Log = log or (lambda _message: None)
    mlserver = venv_bin(venv, "mlserver")
    wanted = _wanted_stamp(python, requirements)

    if _read_stamp(venv) == wanted and mlserver.exists():
        return mlserver

    with _venv_lock(venv):
        if _read_stamp(venv) == wanted and mlserver.exists():  # built while we waited
            return mlserver
        started = time.monotonic()
        if venv.exists():
            say(f"requirements changed or venv incomplete: removing {venv}")
            shutil.rmtree(venv)
        say(f"creating MLServer's virtualenv at {venv} (Python {wanted['python']})")
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
        say(f"installing {' '.join(requirements)} (about a minute)")
        _run_pip_with_progress(
            [
                str(venv_bin(venv, "python")),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                *requirements,
            ],
            venv / "pip-install.log",
            say,
        )
        if not mlserver.exists():
            raise MLServerVenvError(f"pip finished but {mlserver} is missing")
        (venv / _STAMP_NAME).write_text(json.dumps(wanted, indent=2) + "\n")
        say(f"MLServer's virtualenv is ready ({time.monotonic() - started:.0f}s)")
    return mlserver


# --------------------------------------------------------------------------------------------
# Small HTTP helpers (stdlib only)
# --------------------------------------------------------------------------------------------


class MLServerHTTPError(RuntimeError):
    """MLServer answered a non-2xx status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class HTTPResponse:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def http_request(
    method: str,
    url: str,
    payload: Any = None,
    *,
    timeout: float = 30.0,
) -> HTTPResponse:
    """One HTTP call; JSON ``payload`` is sent with ``Content-Type: application/json``.

    Never raises for an HTTP status: the caller looks at ``status``. Raises ``OSError`` (e.g.
    ``ConnectionRefusedError`` wrapped in ``urllib.error.URLError``) when nothing answers.
    """
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HTTPResponse(response.status, response.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return HTTPResponse(error.code, error.read().decode(errors="replace"))


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def process_group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid`` (Linux ``/proc``)."""
    pids: list[int] = []
    proc_root = Path("/proc")
    if not proc_root.is_dir():  # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def alive_in_group(process: subprocess.Popen[Any]) -> list[int]:
    """Live processes of the group `process` leads. A leader whose other threads are still
    exiting shows as a zombie in /proc but cannot be reaped yet: it counts as alive until
    poll() reaps it."""
    pids = process_group_pids(process.pid)
    if process.poll() is None and process.pid not in pids:
        pids.append(process.pid)
    return pids


class MLServerStartError(RuntimeError):
    """MLServer exited or did not become ready in time; the message ends with its log."""


_PORT_IN_USE_MARKERS = ("address already in use", "errno 98")


class MLServerProcess:
    """One ``mlserver start <repository>`` process on 127.0.0.1 with free ports.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Ports left at 0 are picked
    when :meth:`start` first runs (and picked again if MLServer loses a race for one); a later
    :meth:`start` after :meth:`stop` / :meth:`kill` reuses them, so a restarted MLServer keeps
    its addresses. The process leads its own session, so :meth:`stop` and :meth:`kill` reach
    its workers too.

    ``parallel_workers=0`` (the default) serves inference in the main process: a single
    process, the fastest to start and to load. With ``parallel_workers>0`` MLServer forks
    workers; this needs ``uvloop<0.22`` (pinned in :data:`MLSERVER_REQUIREMENTS`).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        repository: Path,
        *,
        mlserver: Path | None = None,
        workdir: Path | None = None,
        log_path: Path | None = None,
        parallel_workers: int = 0,
        server_name: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        startup_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.repository = Path(repository).absolute()
        self.mlserver = mlserver
        self.parallel_workers = parallel_workers
        self.server_name = server_name
        self.extra_env = dict(extra_env or {})
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._workdir = workdir
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.startup_seconds: float | None = None
        """How long the last :meth:`start` took until ``/v2/health/ready`` answered 200."""

    # -- addresses --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<http_port>`` (REST, V2 inference protocol)."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:<grpc_port>`` for a gRPC channel."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def workdir(self) -> Path:
        """MLServer's working directory (it writes ``.metrics`` / ``.envs`` there)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="gpuplace-mlserver-"))
        return self._workdir

    @property
    def log_path(self) -> Path:
        """MLServer's combined stdout/stderr."""
        if self._log_path is None:
            self._log_path = self.workdir / "mlserver.log"
        return self._log_path

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def pgid(self) -> int | None:
        """Its process group (== its pid, as it leads its own session)."""
        return self.pid

    # -- lifecycle ---------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def alive_pids(self) -> list[int]:
        """Processes of its group still alive (MLServer itself and any workers)."""
        return [] if self._proc is None else alive_in_group(self._proc)

    def _env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("MLSERVER_")
            and key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
        }
        env.update(
            {
                "MLSERVER_HOST": self.host,
                "MLSERVER_HTTP_PORT": str(self.http_port),
                "MLSERVER_GRPC_PORT": str(self.grpc_port),
                "MLSERVER_METRICS_PORT": str(self.metrics_port),
                "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
                "MLSERVER_PARALLEL_WORKERS": str(self.parallel_workers),
                "MLSERVER_METRICS_DIR": str(self.workdir / ".metrics"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.server_name:
            env["MLSERVER_SERVER_NAME"] = self.server_name
        env.update(self.extra_env)
        return env

    def start(self) -> Self:
        """Start MLServer and wait until ``GET /v2/health/ready`` answers 200.

        Raises :class:`MLServerStartError` (after cleaning up) when it exits or is not ready
        within ``startup_timeout`` seconds.
        """
        if self.is_running():
            raise RuntimeError(f"MLServer already running (pid {self.pid})")
        mlserver = self.mlserver or ensure_mlserver_venv()
        self.mlserver = mlserver
        self.repository.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Ports given to the constructor, or kept from an earlier start, are reused, so a
        # restarted MLServer keeps its addresses; only ports still 0 are picked (and picked
        # again when MLServer loses the race for one to another process).
        wanted = (self.http_port, self.grpc_port, self.metrics_port)
        attempts = 1 if all(wanted) else 3
        for attempt in range(1, attempts + 1):
            picked = _three_free_ports()
            self.http_port, self.grpc_port, self.metrics_port = (
                port or fresh for port, fresh in zip(wanted, picked, strict=True)
            )
            started = time.monotonic()
            with self.log_path.open("ab") as log:
                log_offset = log.tell()
                log.write(
                    f"--- gpuplace harness: mlserver start {self.repository} "
                    f"http={self.http_port} grpc={self.grpc_port} "
                    f"metrics={self.metrics_port} (attempt {attempt})\n".encode()
                )
                log.flush()
                self._proc = subprocess.Popen(
                    [str(mlserver), "start", str(self.repository)],
                    cwd=self.workdir,
                    env=self._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                self._wait_ready(started + self.startup_timeout)
            except MLServerStartError:
                self.kill()
                with self.log_path.open("rb") as log:
                    log.seek(log_offset)
                    this_attempt = log.read().decode(errors="replace").lower()
                if attempt < attempts and any(m in this_attempt for m in _PORT_IN_USE_MARKERS):
                    continue
                raise
            except BaseException:
                self.kill()
                raise
            self.startup_seconds = time.monotonic() - started
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_ready(self, deadline: float) -> None:
        url = f"{self.base_url}/v2/health/ready"
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise MLServerStartError(
                    f"MLServer exited with {code} before it was ready; log {self.log_path}:\n"
                    + self.log_tail()
                )
            try:
                if http_request("GET", url, timeout=2.0).status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise MLServerStartError(
                    f"MLServer not ready after {self.startup_timeout:.0f}s on {url}; "
                    f"log {self.log_path}:\n" + self.log_tail()
                )
            time.sleep(0.1)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM MLServer, wait up to ``timeout`` (default ``stop_timeout``) for its whole
        group to exit, then SIGKILL what is left and wait for it. Returns MLServer's exit code
        (None if it was never started). Idempotent."""
        if self._proc is None:
            return None
        grace = self.stop_timeout if timeout is None else timeout
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                # The leader only: MLServer then shuts its workers down itself.
                self._proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive_pids():
            self.kill()
        return self._proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once (a crash, for failure scenarios) and wait
        until none of it is alive. Returns MLServer's exit code."""
        if self._proc is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        deadline = time.monotonic() + 10.0
        while self.alive_pids() and time.monotonic() < deadline:
            for pid in self.alive_pids():  # stragglers, e.g. a worker that was mid-fork
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        return self._proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- logs ---------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def load_events(self, name: str) -> int:
        """How many times MLServer logged loading (or reloading) model ``name``.

        Exact with ``parallel_workers=0``; with workers MLServer logs each load more than once.
        """
        pattern = re.compile(rf"\b(?:Loaded|Reloaded) model '{re.escape(name)}' successfully")
        return len(pattern.findall(self.log_text()))

    # -- V2 REST calls --------------------------------------------------------------------------

    def repository_index(self, *, ready: bool | None = None) -> list[dict[str, Any]]:
        """``POST /v2/repository/index``: ``[{"name", "version"?, "state", "reason"}]``."""
        payload: dict[str, Any] = {} if ready is None else {"ready": ready}
        response = http_request("POST", f"{self.base_url}/v2/repository/index", payload)
        if response.status != 200:
            raise MLServerHTTPError("POST", "/v2/repository/index", response.status, response.body)
        result: list[dict[str, Any]] = response.json()
        return result

    def model_states(self) -> dict[str, str]:
        """``{name: state}`` from the repository index (e.g. ``{"iris": "READY"}``)."""
        return {entry["name"]: entry["state"] for entry in self.repository_index()}

    def load_model(self, name: str, *, timeout: float = 60.0) -> None:
        """``POST /v2/repository/models/<name>/load``; raises on a non-200 answer."""
        path = f"/v2/repository/models/{name}/load"
        response = http_request("POST", self.base_url + path, timeout=timeout)
        if response.status != 200:
            raise MLServerHTTPError("POST", path, response.status, response.body)

    def unload_model(self, name: str, *, timeout: float = 60.0) -> bool:
        """``POST /v2/repository/models/<name>/unload``. True if it was unloaded, False on 404
        (not loaded / unknown, which counts as done); raises on other answers."""
        path = f"/v2/repository/models/{name}/unload"
        response = http_request("POST", self.base_url + path, timeout=timeout)
        if response.status == 404:
            return False
        if response.status != 200:
            raise MLServerHTTPError("POST", path, response.status, response.body)
        return True

    def infer(
        self,
        name: str,
        rows: Sequence[Sequence[float]],
        *,
        version: str | None = None,
        timeout: float = 30.0,
    ) -> list[Any]:
        """``POST /v2/models/<name>/infer`` with ``rows`` as one FP64 tensor; returns the first
        output's data (for an sklearn classifier: one predicted class per row)."""
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
        response = http_request("POST", self.base_url + path, infer_request(rows), timeout=timeout)
        if response.status != 200:
            raise MLServerHTTPError("POST", path, response.status, response.body)
        data: list[Any] = response.json()["outputs"][0]["data"]
        return data


def infer_request(rows: Sequence[Sequence[float]]) -> dict[str, Any]:
    """A V2 inference request carrying ``rows`` as a single ``[len(rows), width]`` FP64 input."""
    width = len(rows[0]) if rows else 0
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": [len(rows), width],
                "datatype": "FP64",
                "data": [float(value) for row in rows for value in row],
            }
        ]
    }


def _three_free_ports() -> tuple[int, int, int]:
    # Hold all three sockets at once so that the kernel hands out three different ports.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(3)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        first, second, third = (int(sock.getsockname()[1]) for sock in socks)
    return first, second, third
