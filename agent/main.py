"""`gpuplace agent`: the sidecar next to an inference server (the composition root).

Start: read settings (a bad one stops here, exit 2), serve /live, wait for the inference
server, adopt the models it already holds, then keep a stream open to the scheduler.
SIGTERM: ask the scheduler to drain this replica, keep executing its commands until it
answers, unload whatever is left, exit 0 — all within drain_timeout_s (which must stay
below the pod's terminationGracePeriodSeconds); a second signal skips what is left to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry

from agent.artifacts import PRIVATE_FOLDERS, ModelRepository
from agent.gpu_monitor import GpuAssignment, GpuMonitor
from agent.gpus import GpuProbe, NvmlGpuProbe
from agent.http import HttpEndpoints
from agent.inference_server import (
    InferenceServer,
    InferenceServerError,
    MLServerClient,
    serves_folder,
    wait_until_ready,
)
from agent.link import Outbox, SchedulerLink
from agent.metrics import AgentMetrics
from agent.models import ModelManager
from agent.pod_resources import EveryGpu, KubeletGpus
from agent.settings import AgentSettings
from agent.storage import ObjectStores
from contract import __version__
from contract.aio import start_task, stop_tasks
from contract.grpc_tls import channel_credentials
from contract.logs import fatal, tag_process
from contract.tls import TlsError

log = logging.getLogger(__name__)

# How long the last events may take to reach the scheduler before the agent exits.
_FLUSH_S = 5.0


class Agent:
    """Every part of one agent, wired together; `start()`, then `drain_and_stop()`."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        probe: GpuProbe | None = None,
        inference: InferenceServer | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = AgentMetrics(self.registry)
        self.inference: InferenceServer = inference or MLServerClient(
            settings.inference_url,
            load_timeout_s=settings.load_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            metrics_url=settings.inference_metrics_url,
        )
        self.repository = ModelRepository(
            settings.model_repository,
            max_artifact_bytes=settings.max_artifact_bytes,
            private=(*PRIVATE_FOLDERS, settings.storage_secrets_dir),
            local_roots=(
                None
                if settings.local_artifact_roots is None
                else tuple(settings.local_artifact_roots)
            ),
        )
        self.gpus = GpuMonitor(
            probe or NvmlGpuProbe(settings.gpu_uuids),
            self.metrics,
            settings.resource_report_threshold_bytes,
            assignment=gpu_assignment(settings) if probe is None else None,
        )
        self.outbox = Outbox(settings.replica)
        self.manager = ModelManager(
            replica=settings.replica,
            repository=self.repository,
            inference=self.inference,
            gpus=self.gpus,
            metrics=self.metrics,
            emit=self.outbox.event,
            max_concurrent_loads=settings.max_concurrent_loads,
            fetch_timeout_s=settings.fetch_timeout_s,
            after_change=self._after_change,
            stores=ObjectStores(
                secrets_dir=settings.storage_secrets_dir, concurrency=settings.fetch_concurrency
            ),
        )
        self.link = SchedulerLink(settings, self.manager, self.gpus, self.metrics, self.outbox)
        self.http = HttpEndpoints(
            settings.http_host,
            settings.readiness_port,
            settings.metrics_port,
            self.ready,
            self.registry,
        )
        self.linked = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    async def _after_change(self) -> None:
        """After a load or unload: send the fresh GPU reading, after the event, so that the
        scheduler replaces the footprint it charged with what NVML measures now."""
        devices = await self.gpus.reading()
        if devices and self.link.send_resource_update(devices):
            self.gpus.mark_reported(devices)

    async def ready(self) -> tuple[bool, str]:
        if self.link.draining:
            return False, "draining"
        if not self.link.connected:
            return False, "not connected to the scheduler"
        try:
            ok = await asyncio.wait_for(self.inference.ready(), timeout=2.0)
        except TimeoutError:
            ok = False
        return (True, "ready") if ok else (False, "inference server not ready")

    async def start(self) -> None:
        s = self.settings
        log.info(
            "agent %s for %s (pod %s): capabilities [%s], memory %d bytes "
            "(+%d%% overcommit), inference server %s (gRPC port %d), repository %s",
            __version__,
            s.replica,
            s.pod_name,
            ", ".join(s.capabilities),
            s.memory_bytes,
            s.overcommit_percentage,
            s.inference_url,
            s.inference_grpc_port,
            s.model_repository,
        )
        await asyncio.to_thread(self.repository.prepare)
        await self.http.start()
        self._tasks.append(
            start_task(
                self.gpus.run(s.resource_report_interval_s, self.link.send_resource_update),
                name="gpu monitor",
            )
        )
        self._tasks.append(start_task(self._connect(), name="agent startup"))

    async def _connect(self) -> None:
        url = self.settings.inference_url
        if not await wait_until_ready(self.inference, url, self._stopping):
            return
        root = self.settings.model_repository
        if await serves_folder(self.inference, root) is False:
            log.warning(
                "%s: the inference server at %s does not serve --model-repository %s (a probe "
                "model written there is not in its repository index): every load will fail "
                "until both name one folder (MLServer: MLSERVER_MODEL_REPOSITORY_ROOT, or the "
                "folder given to `mlserver start`)",
                self.settings.replica,
                url,
                root,
            )
        while not self._stopping.is_set():
            try:
                await self.manager.restore()
                break
            except InferenceServerError as exc:
                log.warning("reading the inference server's index failed: %s; retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=1.0)
        if self._stopping.is_set():
            return
        self._tasks.append(start_task(self.link.run(), name="scheduler link"))
        self._tasks.append(start_task(self.manager.watch_server(), name="lost-model check"))
        self.linked.set()

    async def drain_and_stop(self, force: asyncio.Event | None = None) -> None:
        """Drain through the scheduler, unload what is left, stop everything.

        The whole shutdown keeps within drain_timeout_s: the wait for the scheduler's
        DrainComplete takes at most 2/3 of it; running commands, the unloads and the last
        events share what is left. `force` set (a second signal) skips every wait left:
        running commands are cancelled and nothing more is unloaded.
        """
        self._stopping.set()
        force = force if force is not None else asyncio.Event()
        loop = asyncio.get_running_loop()
        total = self.settings.drain_timeout_s
        started = loop.time()
        deadline = started + total
        flush_s = min(_FLUSH_S, total / 10)
        work_deadline = deadline - flush_s
        replica = self.settings.replica
        if self.linked.is_set():
            self.link.request_drain()
            drained = await _until(
                self.link.drain_complete.wait(), started + total * 2 / 3, force, loop
            )
            if not drained:
                log.warning(
                    "%s: %s; unloading anyway",
                    replica,
                    "second signal" if force.is_set() else "no drain answer from the scheduler",
                )
            idle_by = loop.time() + max(0.0, work_deadline - loop.time()) / 2
            if not await _until(
                self.manager.wait_idle(idle_by - loop.time() + 1.0), idle_by, force, loop
            ):
                log.warning("%s: commands still running at shutdown; cancelled", replica)
                await self.manager.cancel_all()
            if force.is_set():
                if self.manager.loaded:
                    log.warning(
                        "%s: second signal: exiting with model(s) loaded: %s",
                        replica,
                        ", ".join(sorted(self.manager.loaded)),
                    )
            else:
                unloads = asyncio.ensure_future(self.manager.unload_all())
                if await _until(unloads, work_deadline, force, loop):
                    events = unloads.result()
                    if events:
                        log.info("%s: unloaded %d model(s) at shutdown", replica, len(events))
                else:
                    log.warning(
                        "%s: unloading at shutdown did not finish in time; left: %s",
                        replica,
                        ", ".join(sorted(self.manager.loaded)),
                    )
                    await self.manager.cancel_all()
                closed_by = min(loop.time() + flush_s, deadline)
                if not force.is_set() and not await _until(
                    self.link.close(), closed_by, force, loop
                ):
                    log.warning(
                        "%s: the scheduler did not end the stream in time; the last events "
                        "may be lost (the next hello reports the state)",
                        replica,
                    )
        await self.stop()

    async def stop(self) -> None:
        self._stopping.set()
        await self.manager.cancel_all()
        await stop_tasks(self._tasks)
        self._tasks.clear()
        self.link.set_connected(False)
        await self.http.stop()
        await self.inference.close()
        await asyncio.to_thread(self.gpus.close)


def gpu_assignment(settings: AgentSettings) -> GpuAssignment | None:
    """How the agent tells its pod's GPUs from the others NVML sees: --gpu-uuids (the probe
    selects them), else the kubelet's PodResources API, else every device (a warning)."""
    if settings.gpu_uuids:
        return None
    if settings.pod_resources_socket:
        return KubeletGpus(
            settings.pod_resources_socket,
            settings.pod_name,
            settings.pod_namespace,
            settings.inference_container,
            settings.replica,
        )
    return EveryGpu(settings.replica)


async def run_agent(settings: AgentSettings) -> int:
    """Run until SIGTERM/SIGINT, then drain and exit 0 (a second signal skips the wait)."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    force = asyncio.Event()

    def on_signal(signum: int) -> None:
        if signalled.is_set():
            log.warning("second signal: not waiting for the drain any longer")
            force.set()
        else:
            log.info("signal %s: draining", signal.Signals(signum).name)
            signalled.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    agent = Agent(settings)
    try:
        await agent.start()
    except OSError as exc:
        log.error("the agent cannot start: %s", exc)
        await agent.stop()
        return 1
    await signalled.wait()
    await agent.drain_and_stop(force)
    log.info("%s: stopped", settings.replica)
    return 0


async def _until(
    work: Awaitable[Any], deadline: float, force: asyncio.Event, loop: asyncio.AbstractEventLoop
) -> bool:
    """Run `work` until it finishes (True), `deadline` passes or `force` is set (False; the
    work is cancelled)."""
    task = asyncio.ensure_future(work)
    if force.is_set():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    forced = asyncio.ensure_future(force.wait())
    try:
        await asyncio.wait(
            {task, forced},
            timeout=max(0.0, deadline - loop.time()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        forced.cancel()
    if task.done() and not task.cancelled() and task.exception() is None:
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


def run(settings: AgentSettings) -> int:
    """Run the agent until it has drained and stopped; the exit code."""
    tag_process(replica=settings.replica)
    tls = settings.client_tls()
    try:
        if tls is not None:
            channel_credentials(tls)  # the files are read at every connection: fail now, once
    except TlsError as exc:
        fatal(f"error: {exc}")
        return 2
    code, stuck = run_bounded(run_agent(settings), EXECUTOR_GRACE_S)
    if stuck:
        # Worker threads (a large copy, a hung NVML call) would keep the process alive past
        # the pod's grace period: leave without them.
        log.warning("a file or NVML operation is still running; exiting without it")
        logging.shutdown()
        os._exit(code)
    return code


# How long, after the agent stopped, worker threads may take to finish.
EXECUTOR_GRACE_S = 5.0


def run_bounded(main: Coroutine[Any, Any, int], grace_s: float) -> tuple[int, bool]:
    """Like asyncio.run, but the wait for worker threads is bounded (Python 3.11's
    asyncio.run joins them without a limit). Returns the exit code and whether threads were
    still running when the grace ran out."""
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(thread_name_prefix="agent-io")
    loop.set_default_executor(executor)
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(main)
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    joiner = threading.Thread(target=executor.shutdown, daemon=True)
    joiner.start()
    joiner.join(grace_s)
    return code, joiner.is_alive()
