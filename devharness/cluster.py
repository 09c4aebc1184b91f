"""A local gpuplace cluster: the scheduler, and per server replica a real MLServer and a real
agent, all as processes on 127.0.0.1 — used by the end-to-end tests and by `make demo`.

```
with LocalCluster(work_dir, [ServerSpec("mlserver", replicas=2),
                             ServerSpec("gpu", capabilities=(..., "model-on-gpu"),
                                        gpus="fake")]) as cluster:
    cluster.gpuplace("model", "load", "-f", "models.yaml", "--wait")
    cluster.replica("mlserver", 0).mlserver.infer("iris", [row])
```

Layout under ``work_dir`` (every log is a file there):

```
scheduler/state.db, scheduler/scheduler.log
<server>-<index>/repository/     the model repository MLServer and the agent share
<server>-<index>/mlserver/       MLServer's working folder and mlserver.log
<server>-<index>/agent.log
<server>-<index>/nvml-state.txt  what the fake NVML library serves this replica's agent
```

GPUs: every agent reads its GPUs through the real nvidia-ml-py code path. ``gpus="fake"``
points it at the fake ``libnvidia-ml.so.1`` (:mod:`devharness.fake_nvml`) serving two
simulated 80 GiB GPUs; ``gpus="none"`` at the same fake serving no device (so that a replica
has no GPU even on a machine that has one); ``gpus="real"`` leaves the library path alone (the
driver's NVML).

Start: the scheduler first, then each replica's MLServer and agent (replicas in parallel);
:meth:`LocalCluster.start` returns once every agent is connected to the scheduler and
answers ``/ready``. Stop: every model is unloaded through the scheduler, the agents get
SIGTERM (nothing is left to drain, so they exit at once), then the scheduler and the MLServers
stop; :meth:`LocalCluster.stop` raises :class:`LeftoverProcesses` when any process of the
cluster is still alive afterwards, or when a process did not stop cleanly.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from contract.names import replica_id
from devharness import fake_nvml
from devharness.fake_nvml import FakeNvml
from devharness.mlserver import (
    MLServerProcess,
    alive_in_group,
    ensure_mlserver_venv,
    http_request,
)
from devharness.scheduler import SCHEDULER_DEFAULTS, SchedulerProcess
from devharness.wait import wait_until_sync
from gpuplace.client import ClientError, SchedulerClient

REPO_ROOT = Path(__file__).resolve().parents[1]

GpuMode = Literal["none", "fake", "real"]
Log = Callable[[str], None]

DEFAULT_CAPABILITIES: tuple[str, ...] = ("mlserver", "sklearn", "xgboost")

CLUSTER_SCHEDULER_SETTINGS: dict[str, Any] = {
    **SCHEDULER_DEFAULTS,
    # Long enough for every agent to reconnect after a scheduler restart: a shorter grace
    # would drop their copies and load the models again.
    "disconnect_grace_s": 20.0,
    "drain_timeout_s": 5.0,
}
"""The scheduler's settings (ephemeral ports, quick retries); a cluster may override any."""

CLUSTER_AGENT_FLAGS: dict[str, str] = {
    "reconnect-initial-s": "0.2",
    "reconnect-max-s": "1",
    "drain-timeout-s": "5",
    "resource-report-interval-s": "2",
    "load-timeout-s": "60",
}
"""Agent flags every replica gets (quick reconnects after a scheduler restart)."""

_AGENT_HTTP = re.compile(r"HTTP: /ready and /live on [^\s:]+:(\d+), /metrics on [^\s:]+:(\d+)")
_NOT_INHERITED = ("SELDON_", "GPUPLACE_", "MLSERVER_")
_NOT_INHERITED_NAMES = {"MEMORY_REQUEST", "POD_NAME", fake_nvml.STATE_ENV}


def _say_nothing(_message: str) -> None:
    return None


def clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without settings of gpuplace, Seldon or MLServer, and without the fake
    NVML library on ``LD_LIBRARY_PATH``: what every process of the cluster starts from."""
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        if not key.startswith(_NOT_INHERITED) and key not in _NOT_INHERITED_NAMES
    }
    fake_folder = str(fake_nvml.BUILD)
    kept = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != fake_folder]
    if kept:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(kept)
    else:
        env.pop("LD_LIBRARY_PATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def real_gpu_count(timeout: float = 30.0) -> int:
    """How many GPUs the machine's own NVML reports (0 without a driver or device).

    Asked in a subprocess with the normal library path, so that neither the fake library nor
    a pynvml already initialised in this process can answer instead.
    """
    probe = (
        "import pynvml\n"
        "try:\n"
        "    pynvml.nvmlInit()\n"
        "except pynvml.NVMLError:\n"
        "    print(0)\n"
        "else:\n"
        "    print(pynvml.nvmlDeviceGetCount())\n"
        "    pynvml.nvmlShutdown()\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", probe],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return 0
    try:
        return int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else 0
    except (ValueError, IndexError):
        return 0


def cluster_pids(work_dir: Path) -> list[int]:
    """Live processes (not zombies, not this one) that a cluster in ``work_dir`` may have
    started: a ``gpuplace`` command or an MLServer with an argument inside ``work_dir``."""
    found: list[int] = []
    root = str(work_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :].split()[:1] == ["Z"]:
            continue
        ours = "gpuplace.cli" in args or any(Path(arg).name == "mlserver" for arg in args[:2])
        if ours and any(root in arg for arg in args):
            found.append(int(entry.name))
    return found


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# The agent process
# --------------------------------------------------------------------------------------------


class AgentProcess:
    """``gpuplace agent`` as a child process leading its own session, its log in a file.

    The HTTP ports are picked by the agent (``--readiness-port 0 --metrics-port 0``) and read
    from its log, so two agents never race for one port.
    """

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path = REPO_ROOT
    ) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.readiness_port = 0
        self.metrics_port = 0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.readiness_port}/ready"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def alive_pids(self) -> list[int]:
        return [] if self.process is None else alive_in_group(self.process)

    def start(self, timeout: float = 30.0) -> Self:
        if self.is_running():
            raise RuntimeError(f"agent already running (pid {self.pid})")
        self.starts += 1
        marker = f"--- gpuplace cluster: agent start {self.starts}\n"
        with self.log_path.open("ab") as log:
            log.write(marker.encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gpuplace.cli", *self.args],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ports() -> tuple[int, int] | None:
            text = self.log_text().rsplit(marker, 1)[-1]
            match = _AGENT_HTTP.search(text)
            if match:
                return int(match[1]), int(match[2])
            if not self.is_running():
                raise AssertionError(
                    f"agent exited with {self.returncode} at start; {self.log_path}:\n"
                    + self.log_tail()
                )
            return None

        try:
            found = wait_until_sync(
                ports,
                timeout=timeout,
                interval=0.05,
                what=f"the agent's HTTP ports in {self.log_path}",
            )
        except BaseException:
            self.kill()
            raise
        assert found is not None
        self.readiness_port, self.metrics_port = found
        return self

    def ready(self) -> bool:
        """``GET /ready`` answers 200 (connected, MLServer ready, not draining)."""
        try:
            return http_request("GET", self.ready_url, timeout=2.0).status == 200
        except OSError:
            return False

    def signal(self, signum: int) -> None:
        if self.is_running():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0, *, scheduler_up: bool = True) -> int | None:
        """SIGTERM (the agent drains through the scheduler, unloads what it holds and exits);
        when the scheduler is down, a second SIGTERM so that it does not wait for a drain
        answer. SIGKILL after ``timeout``. Returns the exit code (-9 when it was killed)."""
        if self.process is None:
            return None
        if self.is_running():
            self.signal(signal.SIGTERM)
            if not scheduler_up:
                with contextlib.suppress(AssertionError):
                    wait_until_sync(
                        lambda: "draining" in self.log_text() or not self.is_running(),
                        timeout=5.0,
                        what="the agent to start its drain",
                    )
                self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> int | None:
        if self.process is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        return self.process.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


# --------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """One inference server (a Seldon ``Server``): its replicas share these settings."""

    name: str
    replicas: int = 1
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    memory: str = "2Gi"
    overcommit_percentage: int = 10
    gpus: GpuMode = "none"
    fake_gpus: Callable[[Path], FakeNvml] = fake_nvml.two_gpus
    """With ``gpus="fake"``: writes the state file of one replica's simulated GPUs."""
    agent_flags: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Replica:
    """One replica of a server: its MLServer, its agent and their shared model repository."""

    server: str
    index: int
    folder: Path
    repository: Path
    mlserver: MLServerProcess
    agent: AgentProcess
    gpu_mode: GpuMode
    nvml_state: FakeNvml | None = None

    @property
    def name(self) -> str:
        """The pod name, ``<server>-<index>``."""
        return replica_id(self.server, self.index)

    @property
    def key(self) -> tuple[str, int]:
        return self.server, self.index

    @property
    def gpu_label(self) -> str:
        if self.gpu_mode == "fake":
            count = len(self.nvml_state.gpus) if self.nvml_state else 0
            return f"{count} simulated GPUs (fake NVML)"
        if self.gpu_mode == "real":
            return "real GPUs (NVML)"
        return "no GPU"


class LeftoverProcesses(AssertionError):
    """A process of the cluster outlived :meth:`LocalCluster.stop`, or one did not stop
    cleanly; the message names them and ends with the log tails."""


class LocalCluster:
    """The scheduler plus, for every replica of every server, a real MLServer and a real
    agent; a context manager (see the module's docstring)."""

    def __init__(
        self,
        work_dir: Path,
        servers: Sequence[ServerSpec],
        *,
        scheduler_settings: Mapping[str, Any] | None = None,
        mlserver: Path | None = None,
        log: Log | None = None,
        start_timeout: float = 90.0,
        agent_cwd: Path | None = None,
    ) -> None:
        names = [server.name for server in servers]
        if len(set(names)) != len(names):
            raise ValueError(f"server names must be unique: {names}")
        self.work_dir = Path(work_dir).absolute()
        self.servers = list(servers)
        self.mlserver_executable = mlserver
        self.say: Log = log or _say_nothing
        self.start_timeout = start_timeout
        self.agent_cwd = Path(agent_cwd or REPO_ROOT).absolute()
        """The agents' working directory: a relative ``storageUri`` is read from there."""
        (self.work_dir / "scheduler").mkdir(parents=True, exist_ok=True)
        self.scheduler = SchedulerProcess(
            self.work_dir / "scheduler",
            **{**CLUSTER_SCHEDULER_SETTINGS, **(scheduler_settings or {})},
        )
        self.replicas: list[Replica] = []
        self.problems: list[str] = []
        """What did not stop cleanly at the last :meth:`stop` (an agent's exit code, ...)."""
        self._started = False
        self._stopped = False

    # -- handles ------------------------------------------------------------------------------

    @property
    def client_address(self) -> str:
        """The scheduler's client API (``--scheduler`` / ``GPUPLACE_SCHEDULER``)."""
        return self.scheduler.client_address

    @property
    def agent_address(self) -> str:
        return self.scheduler.agent_address

    @property
    def http_url(self) -> str:
        """The scheduler's ``/live``, ``/ready`` and ``/metrics``."""
        return self.scheduler.http_url

    def replica(self, server: str, index: int = 0) -> Replica:
        for replica in self.replicas:
            if replica.key == (server, index):
                return replica
        raise KeyError(f"no replica {replica_id(server, index)}")

    def server_replicas(self, server: str) -> list[Replica]:
        return [replica for replica in self.replicas if replica.server == server]

    def client(self) -> SchedulerClient:
        """A client of the scheduler's API (close it, or use ``with``)."""
        return SchedulerClient(self.client_address)

    def cli_env(self) -> dict[str, str]:
        """The environment for a ``gpuplace`` command aimed at this cluster's scheduler."""
        return {**clean_env(), "GPUPLACE_SCHEDULER": self.client_address}

    def gpuplace(
        self, *args: str, timeout: float = 120.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``gpuplace ARGS...`` (the real CLI, as a process) against this cluster."""
        result = subprocess.run(
            [sys.executable, "-m", "gpuplace.cli", *args],
            cwd=REPO_ROOT,
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"gpuplace {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def scheduler_metrics(self) -> str:
        response = http_request("GET", f"{self.http_url}/metrics", timeout=5.0)
        assert response.status == 200, response.body
        return response.body

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
        else:  # the first error is the interesting one: clean up without hiding it
            with contextlib.suppress(LeftoverProcesses):
                self.stop()

    def start(self) -> Self:
        if self._started:
            raise RuntimeError("the cluster was started already")
        self._started = True
        try:
            self._start()
        except BaseException:
            with contextlib.suppress(LeftoverProcesses):
                self.stop()
            raise
        return self

    def _start(self) -> None:
        started = time.monotonic()
        mlserver = self.mlserver_executable or ensure_mlserver_venv()
        fake_nvml.build()
        self.scheduler.start()
        self.say(
            f"scheduler: client API {self.client_address}, agents {self.agent_address}, "
            f"HTTP {self.http_url} (log {self.scheduler.log_path})"
        )
        for server in self.servers:
            for index in range(server.replicas):
                self.replicas.append(self._replica(server, index, mlserver))
        with ThreadPoolExecutor(max_workers=len(self.replicas) or 1) as pool:
            futures = [pool.submit(self._start_replica, replica) for replica in self.replicas]
            errors = [future.exception() for future in futures]
        failed = [error for error in errors if error is not None]
        if failed:
            raise failed[0]
        self.wait_connected(timeout=max(10.0, self.start_timeout - (time.monotonic() - started)))
        self.say(f"cluster ready in {time.monotonic() - started:.1f}s")

    def _replica(self, server: ServerSpec, index: int, mlserver: Path) -> Replica:
        folder = self.work_dir / replica_id(server.name, index)
        repository = folder / "repository"
        repository.mkdir(parents=True, exist_ok=True)
        process = MLServerProcess(
            repository,
            mlserver=mlserver,
            workdir=folder / "mlserver",
            server_name=replica_id(server.name, index),
        )
        state: FakeNvml | None = None
        env = clean_env()
        if server.gpus == "fake":
            state = server.fake_gpus(folder / "nvml-state.txt")
        elif server.gpus == "none":
            state = FakeNvml(folder / "nvml-state.txt")
            state.write()
        if state is not None:
            env = fake_nvml.subprocess_env(state, env)
        agent = AgentProcess([], env, folder / "agent.log", cwd=self.agent_cwd)
        return Replica(server.name, index, folder, repository, process, agent, server.gpus, state)

    def _agent_args(self, server: ServerSpec, replica: Replica) -> list[str]:
        host, port = self.agent_address.rsplit(":", 1)
        flags = {
            "pod-name": replica.name,
            "capabilities": ",".join(server.capabilities),
            "memory-bytes": server.memory,
            "overcommit-percentage": str(server.overcommit_percentage),
            "scheduler-host": host,
            "scheduler-port": port,
            "inference-host": "127.0.0.1",
            "inference-http-port": str(replica.mlserver.http_port),
            "inference-grpc-port": str(replica.mlserver.grpc_port),
            "inference-metrics-port": str(replica.mlserver.metrics_port),
            "model-repository": str(replica.repository),
            "http-host": "127.0.0.1",
            "readiness-port": "0",
            "metrics-port": "0",
            **CLUSTER_AGENT_FLAGS,
            **server.agent_flags,
        }
        return ["agent", *(f"--{name}={value}" for name, value in flags.items())]

    def _start_replica(self, replica: Replica) -> None:
        server = next(s for s in self.servers if s.name == replica.server)
        replica.mlserver.start()
        self.say(
            f"{replica.name}: MLServer ready on {replica.mlserver.base_url} "
            f"in {replica.mlserver.startup_seconds or 0:.1f}s"
        )
        replica.agent.args = self._agent_args(server, replica)
        replica.agent.start()
        self.say(f"{replica.name}: agent started ({replica.gpu_label})")

    def connected_replicas(self) -> set[tuple[str, int]]:
        """The replicas the scheduler lists as connected now (empty when it cannot answer)."""
        try:
            with self.client() as client:
                servers = client.servers()
        except ClientError:
            return set()
        return {
            (server.name, replica.index)
            for server in servers
            for replica in server.replicas
            if replica.connected
        }

    def wait_connected(self, timeout: float = 60.0) -> None:
        """Until the scheduler lists every agent as connected and every agent's ``/ready``
        answers 200 (so MLServer is ready too)."""
        wanted = {replica.key for replica in self.replicas}

        def connected() -> bool:
            for replica in self.replicas:
                if not replica.agent.is_running():
                    raise AssertionError(
                        f"agent {replica.name} exited with {replica.agent.returncode}:\n"
                        + replica.agent.log_tail()
                    )
            return wanted <= self.connected_replicas() and all(
                replica.agent.ready() for replica in self.replicas
            )

        try:
            wait_until_sync(connected, timeout=timeout, interval=0.2, what="every agent to connect")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tails()}") from None

    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler (a crash: no clean-up, no flush)."""
        self.scheduler.kill()

    def restart_scheduler(self) -> None:
        """Start the scheduler again on the same ports and state file."""
        self.scheduler.restart()

    def stop(self) -> None:
        """Stop everything, then raise :class:`LeftoverProcesses` if any process of the
        cluster is left or one did not stop cleanly. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.problems = []
        if self._scheduler_running():
            try:
                self._unload_everything(timeout=30.0)
            except Exception as exc:
                # A scheduler that is stopping meanwhile (Ctrl-C reaches it too) is no
                # problem: the agents then unload what they hold themselves.
                if self.scheduler.process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.scheduler.process.wait(5.0)
                if self._scheduler_running():
                    self.problems.append(f"unloading the models at shutdown failed: {exc}")
        scheduler_up = self._scheduler_running()
        if not scheduler_up:
            self.say("the scheduler is not running: each agent unloads its models itself")

        def stop_agent(replica: Replica) -> None:
            code = replica.agent.stop(timeout=30.0, scheduler_up=scheduler_up)
            if code not in (0, None):
                self.problems.append(f"agent {replica.name} exited with {code}")

        with ThreadPoolExecutor(max_workers=len(self.replicas) or 1) as pool:
            list(pool.map(stop_agent, self.replicas))
        code = self.scheduler.stop() if self.scheduler.process is not None else 0
        if code not in (0, -signal.SIGKILL):  # -9: the last thing done to it was a kill
            self.problems.append(f"scheduler exited with {code}")
        with ThreadPoolExecutor(max_workers=len(self.replicas) or 1) as pool:
            list(pool.map(lambda replica: replica.mlserver.stop(), self.replicas))
        left = self.leftover_pids()
        if left or self.problems:
            raise LeftoverProcesses(
                "\n".join(
                    [
                        *self.problems,
                        *(f"left behind: {name} pids {pids}" for name, pids in left.items()),
                    ]
                )
                + "\n"
                + self.log_tails()
            )
        self.say("cluster stopped: no process left")

    def _scheduler_running(self) -> bool:
        process = self.scheduler.process
        return process is not None and process.poll() is None

    def _unload_everything(self, timeout: float) -> None:
        """Unload every model through the scheduler and wait until they are gone, so that
        the agents have nothing left to drain."""
        with self.client() as client:
            names = [status.name for status in client.models()]
            for name in names:
                with contextlib.suppress(ClientError):
                    client.unload(name)
            if names:
                self.say(f"unloading {len(names)} model(s): {', '.join(sorted(names))}")
            wait_until_sync(
                lambda: not client.models(),
                timeout=timeout,
                interval=0.2,
                what="every model unloaded",
            )

    def leftover_pids(self) -> dict[str, list[int]]:
        """Processes of the cluster still alive, by name (empty when none is)."""
        left: dict[str, list[int]] = {}
        scheduler = self.scheduler.process
        if scheduler is not None and scheduler.poll() is None:
            left["scheduler"] = [scheduler.pid]
        for replica in self.replicas:
            if pids := replica.agent.alive_pids():
                left[f"agent {replica.name}"] = pids
            if pids := replica.mlserver.alive_pids():
                left[f"MLServer {replica.name}"] = pids
        if pids := cluster_pids(self.work_dir):
            left[f"other gpuplace / MLServer processes of {self.work_dir}"] = pids
        return left

    # -- logs ---------------------------------------------------------------------------------

    def log_paths(self) -> list[Path]:
        paths = [self.scheduler.log_path]
        for replica in self.replicas:
            paths += [replica.agent.log_path, replica.mlserver.log_path]
        return paths

    def log_tails(self, lines: int = 30) -> str:
        """The last ``lines`` of every log of the cluster, each under its path."""
        return "\n".join(f"==> {path} <==\n{_tail(path, lines)}\n" for path in self.log_paths())

    def describe(self) -> str:
        """The endpoints, one line each (what `--keep` prints)."""
        lines = [
            f"scheduler   client API {self.client_address}  agents {self.agent_address}  "
            f"HTTP {self.http_url}/metrics",
        ]
        for replica in self.replicas:
            lines.append(
                f"{replica.name:<26} MLServer {replica.mlserver.base_url}  "
                f"agent {replica.agent.ready_url} {replica.agent.metrics_url}  "
                f"[{replica.gpu_label}]"
            )
        return "\n".join(lines)
