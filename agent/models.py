"""What the agent does for each command: load and unload models, one model at a time.

Commands for one model run in the order they arrived, never interleaved (a chain of tasks
per model); loads of different models run concurrently up to a limit. A load that asks for
GPU memory takes the lock of each device it targets (every device when it names none), and
an unload takes the locks of the devices its model's footprint is on, so that the free
memory a load checks and the footprint it measures are not disturbed by another load or an
unload on the same device. A load that asks for no GPU memory and names no device (a CPU
model, or one that does not say) takes no lock; GPU memory it took anyway, on devices no
other load or unload touched meanwhile, is reported as its footprint (from 64 MiB on), so
the scheduler charges and learns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent import artifacts
from agent.artifacts import ArtifactError, ModelRepository, Placement, Record
from agent.gpu_monitor import GpuMonitor
from agent.inference_server import (
    LOADING,
    InferenceServer,
    InferenceServerError,
    InferenceServerUnavailable,
)
from agent.metrics import AgentMetrics
from agent.storage import ObjectStores
from contract.logs import log_fields
from contract.names import InvalidName, is_dns1123_label
from contract.protocol import EventKind, GpuDevice, Load, LoadedModel, ModelEvent, Unload
from contract.quantity import format_bytes
from contract.redaction import redact
from placement import DeviceShortfall, NamedShortfall, Policy, fit_devices

log = logging.getLogger(__name__)
# How often the inference server's index is read for models it lost (a restart).
LOST_CHECK_S = 5.0


class Overlaps:
    """Tells whether one run of an operation overlapped any other run tracked here."""

    def __init__(self) -> None:
        self._running = 0
        self._started = 0

    @contextmanager
    def track(self) -> Iterator[Callable[[], bool]]:
        """Track one run; the callable answers, at any point, whether it ran alone so far:
        none ran when it started, none started since."""
        self._running += 1
        self._started += 1
        started = self._started
        alone_at_start = self._running == 1
        try:
            yield lambda: alone_at_start and self._started == started
        finally:
            self._running -= 1


def footprint(
    before: Mapping[str, int],
    after: Iterable[GpuDevice],
    devices: Iterable[str] | None,
    credit: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Free before minus free after (plus `credit`: memory of a replaced version that was
    freed meanwhile), never below 0.

    `devices` given: exactly those devices. None: every device whose memory was taken.
    """
    now = {device.uuid: device.free_bytes for device in after}
    credit = credit or {}

    def taken(uuid: str) -> int:
        start = before.get(uuid, 0)
        return start - now.get(uuid, start) + credit.get(uuid, 0)

    if devices is not None:
        return {uuid: max(0, taken(uuid)) for uuid in devices}
    return {uuid: taken(uuid) for uuid in now if uuid in before and taken(uuid) > 0}


# Memory that appeared off the placed devices counts as the model's only from this much on
# (below it: a CUDA context, another process's jitter).
STRAY_MIN_BYTES = 64 * 2**20


def cuda_placement(visible: Sequence[GpuDevice], placed: Sequence[str]) -> Placement:
    """`placed` (UUIDs) as the inference container's CUDA names them.

    The inference container sees this server's devices (`visible`, the agent's reading,
    already narrowed to the pod's), with `CUDA_DEVICE_ORDER=PCI_BUS_ID`: CUDA ordinal i is
    the i-th whole GPU in NVML's index order (which is PCI bus order). A MIG instance has no
    ordinal to rely on: its MIG UUID stands in its place. The single device a runtime taking
    a `device` loads on: `cuda:<ordinal>` for one whole GPU, `cuda:0` for a MIG instance that
    is the only device visible (CUDA then enumerates it as device 0), otherwise none.
    """
    if not all(device.measured for device in visible):
        # A device NVML cannot read has no index to order by: no ordinal is sure then; the
        # UUIDs stand for themselves.
        return Placement(tuple(placed), tuple(placed), "")
    whole = sorted((d for d in visible if not d.parent_uuid), key=lambda d: d.index)
    ordinals = {device.uuid: position for position, device in enumerate(whole)}
    names: list[int | str] = [ordinals.get(uuid, uuid) for uuid in placed]
    device = ""
    if len(names) == 1:
        if isinstance(names[0], int):
            device = f"cuda:{names[0]}"
        elif len(visible) == 1 and visible[0].uuid == placed[0]:
            device = "cuda:0"
    return Placement(tuple(placed), tuple(names), device)


def misplaced(placed: Mapping[str, int], elsewhere: Mapping[str, int]) -> dict[str, int] | None:
    """Where NVML found a model placed on the devices of `placed` (their measured footprint)
    when most of its memory appeared on other devices (`elsewhere`: what was taken on each
    of them): the devices that took memory, with what they took. None: it is where it was
    placed."""
    stray = {uuid: size for uuid, size in elsewhere.items() if uuid not in placed and size > 0}
    total = sum(stray.values())
    if total < STRAY_MIN_BYTES or total <= sum(placed.values()):
        return None
    return {**{uuid: size for uuid, size in placed.items() if size > 0}, **stray}


@dataclass(frozen=True)
class _Plan:
    """How a load goes ahead once the memory check passed."""

    # Devices to measure (empty: none, a CPU model) and their free memory now.
    targets: list[str]
    before: dict[str, int]
    # The devices as read for the check (the server's, in the probe's order).
    devices: tuple[GpuDevice, ...] = ()
    # Replacing a version: unload it first (its memory is needed) instead of loading the
    # new version next to it (the server then drops the old one: no downtime).
    unload_first: bool = False


class Refused(Exception):
    """A load refused before the inference server was called (not enough GPU memory now)."""

    def __init__(self, kind: EventKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def fit_load(
    request: Load, devices: Sequence[GpuDevice], reclaim: Mapping[str, int]
) -> list[str] | Refused:
    """The devices a load goes on, or why they cannot take the model now.

    The rule is the placement core's (`placement.fit_devices`), over the devices as measured
    now: a device's room is its free memory plus what `reclaim` gives back on it (the
    footprint of the version the load replaces).
    """
    need = request.gpu_memory_bytes
    if not request.device_uuids and not devices:
        return Refused(
            EventKind.LOAD_FAILED_MEMORY,
            f"needs {format_bytes(need)} of GPU memory; this replica has no GPU",
        )
    measured = [
        device.placement_view(extra_free_bytes=reclaim.get(device.uuid, 0)) for device in devices
    ]
    # With no device named, the agent chooses; it has no policy setting of its own and
    # takes the devices with the most room first: the core's SPREAD order.
    fit = fit_devices(
        measured, need, max(1, request.gpus), Policy.SPREAD, named=request.device_uuids
    )
    if isinstance(fit, NamedShortfall):
        if fit.missing:
            present = ", ".join(sorted(device.uuid for device in devices)) or "no GPU"
            return Refused(
                EventKind.LOAD_FAILED_MEMORY,
                f"GPU {', '.join(fit.missing)} is not on this replica (it has {present})",
            )
        return Refused(
            EventKind.LOAD_FAILED_MEMORY,
            f"needs {format_bytes(need)} free on each GPU; "
            + "; ".join(
                f"{gpu.uuid} has {format_bytes(gpu.room_bytes)} free now"
                if gpu.measured
                else f"{gpu.uuid}'s memory is not measured (NVML cannot read it here)"
                for gpu in fit.short
            ),
        )
    if isinstance(fit, DeviceShortfall):
        return Refused(
            EventKind.LOAD_FAILED_MEMORY,
            f"needs {format_bytes(need)} free on {max(1, request.gpus)} GPU(s); "
            f"{fit.fitting} have it, largest free now {format_bytes(fit.largest_rooms[0])}",
        )
    return [gpu.uuid for gpu in fit]


class ModelManager:
    def __init__(
        self,
        *,
        replica: str,
        repository: ModelRepository,
        inference: InferenceServer,
        gpus: GpuMonitor,
        metrics: AgentMetrics,
        emit: Callable[[ModelEvent], None],
        max_concurrent_loads: int,
        fetch_timeout_s: float,
        after_change: Callable[[], Awaitable[None]] | None = None,
        stores: ObjectStores | None = None,
    ) -> None:
        self.replica = replica
        self.repository = repository
        self.inference = inference
        self.gpus = gpus
        self.metrics = metrics
        self.emit = emit
        self.fetch_timeout_s = fetch_timeout_s
        self.stores = stores or ObjectStores()
        self.after_change = after_change
        self.loaded: dict[str, LoadedModel] = {}
        self._slots = asyncio.Semaphore(max_concurrent_loads)
        self._tails: dict[str, asyncio.Task[ModelEvent | None]] = {}
        self._running: set[asyncio.Task[ModelEvent | None]] = set()
        self._device_locks: dict[str, asyncio.Lock] = {}
        # How often each device's lock was taken: a device no one took meanwhile had no
        # load or unload of this agent changing its memory.
        self._device_uses: Counter[str] = Counter()
        # Loads that take no device lock (no GPU memory declared): one that ran alone may be
        # charged the GPU memory it took.
        self._lock_free = Overlaps()
        # Every load and unload of the inference server: one that ran alone measured the
        # host memory its model took.
        self._server_calls = Overlaps()
        # Models the server may be loading still (a timed-out load whose cleanup failed):
        # while its index shows any LOADING, host memory is not measured.
        self._unsettled: set[str] = set()

    # -- scheduling -----------------------------------------------------------------------

    def load(self, request: Load) -> asyncio.Task[ModelEvent | None]:
        """Queue a load after every earlier command for the same model."""
        return self._chain(request.model, lambda: self._timed_load(request))

    def unload(self, request: Unload) -> asyncio.Task[ModelEvent | None]:
        """Queue an unload after every earlier command for the same model."""
        return self._chain(request.model, lambda: self._timed_unload(request))

    def _chain(
        self, name: str, work: Callable[[], Awaitable[ModelEvent | None]]
    ) -> asyncio.Task[ModelEvent | None]:
        previous = self._tails.get(name)

        async def run() -> ModelEvent | None:
            if previous is not None:
                await asyncio.wait([previous])
            event = await work()
            if event is None:  # nothing to tell
                return None
            self.emit(event)
            if self.after_change is not None and event.kind in (
                EventKind.LOADED,
                EventKind.UNLOADED,
            ):
                await self.after_change()
            return event

        task = asyncio.create_task(run(), name=f"model {name}")
        self._tails[name] = task
        self._running.add(task)

        def done(finished: asyncio.Task[ModelEvent | None]) -> None:
            self._running.discard(finished)
            if self._tails.get(name) is finished:
                del self._tails[name]
            if not finished.cancelled() and finished.exception() is not None:
                log.error(
                    "model %s on %s: command crashed",
                    name,
                    self.replica,
                    exc_info=finished.exception(),
                    extra=log_fields(model=name),
                )

        task.add_done_callback(done)
        return task

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no command runs (True), or give up after `timeout_s` (False)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._running:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await asyncio.wait(set(self._running), timeout=left)
        return True

    async def cancel_all(self) -> None:
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def unload_all(self) -> list[ModelEvent]:
        """Unload every model still loaded here (shutdown)."""
        tasks = [
            self.unload(Unload(model.name, model.version)) for model in list(self.loaded.values())
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [result for result in results if isinstance(result, ModelEvent)]

    # -- an inference server that lost its models -----------------------------------------

    async def watch_server(self, interval_s: float = LOST_CHECK_S) -> None:
        """Every `interval_s`, look for models this agent loaded that the inference server
        no longer holds ready (it restarted, or was killed): each is loaded again from its
        folder, after any command for it that is queued."""
        while True:
            await asyncio.sleep(interval_s)
            if not self.loaded:
                continue
            try:
                entries = await self.inference.index()
            except InferenceServerError:
                continue  # down for now (restarting): looked at again next time
            ready = {entry.name for entry in entries if entry.ready}
            for name in sorted(set(self.loaded) - ready - set(self._tails)):
                self._chain(name, functools.partial(self._recover, name))

    async def _recover(self, name: str) -> ModelEvent | None:
        """Load `name` again from its folder, if the inference server still lacks it. When
        that fails it is forgotten here and reported unloaded: the scheduler places it
        again (on this replica or another)."""
        current = self.loaded.get(name)
        if current is None or await self._server_holds(name) is not False:
            return None  # unloaded meanwhile, back already, or the index cannot be read
        version = current.version
        try:
            with self._server_calls.track():
                await self.inference.load(name)
        except InferenceServerError as exc:
            message = f"the inference server lost it and could not load it again: {exc}"
            self._say(logging.WARNING, name, version, "%s", message)
            self._forget(name)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.repository.remove, name)
            return ModelEvent(EventKind.UNLOADED, name, version, message)
        self._say(
            logging.WARNING,
            name,
            version,
            "the inference server had lost it (restarted?); loaded again",
        )
        return ModelEvent(
            EventKind.LOADED, name, version, footprint_bytes=dict(current.footprint_bytes)
        )

    # -- restore --------------------------------------------------------------------------

    async def restore(self) -> None:
        """Adopt what the inference server already holds (after an agent restart)."""
        entries = await self.inference.index()
        ready = {entry.name: entry for entry in entries if entry.ready}
        for name, entry in sorted(ready.items()):
            if not is_dns1123_label(name):
                log.warning(
                    "model %s on %s: loaded in the inference server but its name is not a "
                    "DNS-1123 label; not managed",
                    name,
                    self.replica,
                    extra=log_fields(model=name),
                )
                continue
            record = await asyncio.to_thread(self.repository.read_record, name)
            version = artifacts.parse_version(entry.version)
            if version is None:
                version = record.version if record else 0
            found = dict(record.footprint_bytes) if record else {}
            self.loaded[name] = LoadedModel(name, version, found)
            self.metrics.set_footprint(name, found)
            log.info(
                "model %s on %s: already loaded (version %d)",
                name,
                self.replica,
                version,
                extra=log_fields(model=name, version=version),
            )
        for name in await asyncio.to_thread(self.repository.installed):
            if name not in ready:
                log.info(
                    "model %s on %s: folder left from an earlier run, not loaded; removing it",
                    name,
                    self.replica,
                    extra=log_fields(model=name),
                )
                await asyncio.to_thread(self.repository.remove, name)
        self.metrics.loaded_models.set(len(self.loaded))

    # -- load -----------------------------------------------------------------------------

    async def _timed_load(self, request: Load) -> ModelEvent:
        started = time.monotonic()
        try:
            event = await self._load(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "model %s v%d on %s: load crashed",
                request.model,
                request.version,
                self.replica,
                extra=log_fields(model=request.model, version=request.version),
            )
            event = ModelEvent(
                EventKind.LOAD_FAILED, request.model, request.version, f"agent error: {exc}"
            )
        outcome = {
            EventKind.LOADED: "loaded",
            EventKind.LOAD_FAILED_MEMORY: "failed_memory",
        }.get(event.kind, "failed")
        self.metrics.loads.labels(outcome).inc()
        self.metrics.load_seconds.labels(outcome).observe(time.monotonic() - started)
        return event

    async def _load(self, request: Load) -> ModelEvent:
        name, version = request.model, request.version
        try:
            artifacts.model_name(name)
        except InvalidName as exc:
            log.warning("load refused on %s: %s", self.replica, exc)
            return ModelEvent(EventKind.LOAD_FAILED, name, version, str(exc))
        current = self.loaded.get(name)
        if current is not None and current.version > version:
            message = f"version {current.version} is loaded here; refusing older version {version}"
            log.warning(
                "model %s on %s: %s", name, self.replica, message, extra=log_fields(model=name)
            )
            return ModelEvent(EventKind.LOAD_FAILED, name, version, message)
        if current is not None and current.version == version:
            held = await self._server_holds(name)
            if held is None:
                # Unknown: forgetting the model now would install over the live folder.
                message = (
                    "inference server unavailable: its repository index cannot be read, so "
                    f"whether it still holds version {version} is unknown; nothing changed"
                )
                return self._load_failed(name, version, message)
            if held:
                self._say(logging.INFO, name, version, "already loaded")
                return ModelEvent(
                    EventKind.LOADED, name, version, footprint_bytes=dict(current.footprint_bytes)
                )
            self._say(logging.WARNING, name, version, "the inference server lost it; loading again")
            self._forget(name)
            current = None

        self._say(logging.INFO, name, version, "loading")
        async with self._slots:
            # The devices a load tells apart (`_quiet`) are those of a reading: the
            # hello's, or a first one here.
            if not self.gpus.has_read:
                await self.gpus.refresh()
            # Refuse before a long download (a load that asks for no GPU memory is never
            # refused); checked again, under the device locks, after it.
            if request.device_uuids or request.gpu_memory_bytes > 0:
                try:
                    await self._check_memory(request, current)
                except Refused as refused:
                    return self._refused(request, refused)
            staged = await asyncio.to_thread(self.repository.new_staging_folder, name)
            try:
                try:
                    # No storageUri: a model made of its settings alone (a runtime that
                    # needs no files); describe() insists on an 'implementation'.
                    if request.storage_uri.strip():
                        await self._fetch(request, staged)
                        await asyncio.to_thread(
                            self.repository.select_version, staged, request.artifact_version
                        )
                except ArtifactError as exc:
                    return self._artifact_failed(request, exc)
                async with AsyncExitStack() as stack:
                    mine = frozenset(self._lock_targets(request))
                    for uuid in sorted(mine):
                        await stack.enter_async_context(self._hold(uuid))
                    # Before the devices are read: what other loads and unloads touch from
                    # now on is told apart from this load's memory.
                    quiet = self._quiet(mine)
                    try:
                        plan = await self._check_memory(request, current)
                    except Refused as refused:
                        return self._refused(request, refused)
                    # Described once the devices are known: the placement goes into the
                    # model's settings (none for a CPU model).
                    placement = cuda_placement(plan.devices, plan.targets) if plan.targets else None
                    try:
                        await asyncio.to_thread(
                            self.repository.describe,
                            staged,
                            name,
                            version,
                            request.parameters,
                            placement,
                        )
                    except ArtifactError as exc:
                        return self._artifact_failed(request, exc)
                    if placement is not None:
                        log.info(
                            "model %s v%d on %s: placed on %s",
                            name,
                            version,
                            self.replica,
                            ", ".join(
                                f"{uuid} (CUDA {cuda})"
                                for uuid, cuda in zip(
                                    placement.device_uuids, placement.cuda_ordinals, strict=True
                                )
                            ),
                            extra=log_fields(model=name, version=version),
                        )
                    if mine:
                        return await self._install_and_load(
                            request, current, staged, plan, mine=mine, quiet=quiet
                        )
                    with self._lock_free.track() as alone:
                        return await self._install_and_load(
                            request, current, staged, plan, mine=mine, quiet=quiet, alone=alone
                        )
            finally:
                if staged.exists():  # installed: moved away already
                    await asyncio.to_thread(self.repository.discard, staged)

    async def _fetch(self, request: Load, staged: Path) -> None:
        """Fetch the artifact into `staged`, with its duration and size in the metrics."""
        name, version = request.model, request.version
        scheme = artifacts.scheme_label(request.storage_uri)
        started = time.monotonic()
        try:
            size = await artifacts.fetch(
                self.repository,
                request.storage_uri,
                staged,
                self.fetch_timeout_s,
                secret_name=request.secret_name,
                stores=self.stores,
                what=f"model {name} v{version} on {self.replica}",
            )
        except ArtifactError:
            self.metrics.fetch_seconds.labels(scheme, "failed").observe(time.monotonic() - started)
            raise
        elapsed = time.monotonic() - started
        self.metrics.fetch_seconds.labels(scheme, "ok").observe(elapsed)
        self.metrics.fetched_bytes.labels(scheme).inc(size)
        self._say(
            logging.INFO,
            name,
            version,
            "artifact %s fetched: %s in %.1fs",
            redact(request.storage_uri.strip()),
            format_bytes(size),
            elapsed,
        )

    def _artifact_failed(self, request: Load, exc: ArtifactError) -> ModelEvent:
        return self._load_failed(request.model, request.version, f"artifact: {exc}")

    def _load_failed(self, name: str, version: int, message: str) -> ModelEvent:
        """A load that failed here, logged and reported with the same words."""
        self._say(logging.WARNING, name, version, "%s", message)
        return ModelEvent(EventKind.LOAD_FAILED, name, version, message)

    def _refused(self, request: Load, refused: Refused) -> ModelEvent:
        log.warning(
            "model %s v%d on %s: refused: %s",
            request.model,
            request.version,
            self.replica,
            refused,
            extra=log_fields(model=request.model, version=request.version),
        )
        return ModelEvent(refused.kind, request.model, request.version, str(refused))

    def _lock_targets(self, request: Load) -> list[str]:
        if request.device_uuids:
            return sorted(set(request.device_uuids))
        if request.gpu_memory_bytes > 0:
            return sorted(device.uuid for device in self.gpus.latest)
        return []

    def _device_lock(self, uuid: str) -> asyncio.Lock:
        return self._device_locks.setdefault(uuid, asyncio.Lock())

    @asynccontextmanager
    async def _hold(self, uuid: str) -> AsyncIterator[None]:
        """The device's lock, counted as a use of the device."""
        async with self._device_lock(uuid):
            self._device_uses[uuid] += 1
            yield

    def _quiet(self, held: frozenset[str]) -> dict[str, int]:
        """The devices no other load or unload holds now (`held`: the caller's), with their
        use counts (see `_undisturbed`)."""
        return {
            uuid: self._device_uses[uuid]
            for uuid in (device.uuid for device in self.gpus.latest)
            if uuid in held or not self._device_lock(uuid).locked()
        }

    def _undisturbed(self, quiet_before: Mapping[str, int], held: frozenset[str]) -> set[str]:
        """Devices that no other load or unload of this agent took meanwhile: quiet before,
        still quiet, and never taken since. Only their memory can be charged to this load.
        (A CPU model's load takes no lock: memory it takes on a GPU is not told apart.)"""
        now = self._quiet(held)
        return {uuid for uuid, uses in quiet_before.items() if now.get(uuid) == uses}

    async def _check_memory(self, request: Load, current: LoadedModel | None) -> _Plan:
        """Check that the target devices have the model's GPU memory free right now.

        Raises Refused when they do not, even counting the memory of the version this load
        replaces as free.
        """
        devices = await self.gpus.reading()
        before = {device.uuid: device.free_bytes for device in devices}
        seen = tuple(devices)
        need = request.gpu_memory_bytes
        if not request.device_uuids and need <= 0:
            return _Plan([], before, seen)
        reclaim = dict(current.footprint_bytes) if current is not None else {}
        plan = fit_load(request, devices, {}) if need > 0 else None
        if plan is None or isinstance(plan, Refused):
            with_reclaim = fit_load(request, devices, reclaim)
            if isinstance(with_reclaim, Refused):
                raise with_reclaim
            return _Plan(with_reclaim, before, seen, unload_first=bool(reclaim) and need > 0)
        return _Plan(plan, before, seen)

    async def _install_and_load(
        self,
        request: Load,
        current: LoadedModel | None,
        staged: Path,
        plan: _Plan,
        *,
        mine: frozenset[str],
        quiet: Mapping[str, int],
        alone: Callable[[], bool] = lambda: True,
    ) -> ModelEvent:
        """Install the staged folder and load it; measure its footprint on the plan's
        devices, and on every device that no other load or unload took since `quiet` was
        noted (`mine`: the devices this load holds), to find a model that went elsewhere."""
        name, version = request.model, request.version
        before = plan.before
        credit: dict[str, int] = {}
        if current is not None and plan.unload_first:
            try:
                with self._server_calls.track():
                    await self.inference.unload(name)
            except InferenceServerError as exc:
                message = f"cannot unload version {current.version} to make room: {exc}"
                return self._load_failed(name, version, message)
            log.info(
                "model %s on %s: version %d unloaded first to make room for version %d",
                name,
                self.replica,
                current.version,
                version,
                extra=log_fields(model=name),
            )
            before = {device.uuid: device.free_bytes for device in await self.gpus.reading()}
        elif current is not None:
            # MLServer loads the new version next to the old one, then drops the old one:
            # the memory freed meanwhile belongs to the new version's footprint.
            credit = dict(current.footprint_bytes)
        aside = await asyncio.to_thread(self.repository.install, name, staged)
        try:
            host_bytes = await self._measured_load(
                name, measure=request.measure_host_memory and current is None
            )
        except InferenceServerError as exc:
            self._say(
                logging.WARNING, name, version, "the inference server failed to load it: %s", exc
            )
            old_kept = (
                current is not None
                and not plan.unload_first
                and not isinstance(exc, InferenceServerUnavailable)
            )
            await self._undo_failed_load(name, current, aside, old_kept)
            return ModelEvent(EventKind.LOAD_FAILED, name, version, str(exc))
        after = await self.gpus.reading()
        measured = footprint(before, after, plan.targets, credit)
        message = ""
        if plan.targets:
            elsewhere = footprint(before, after, None, credit)
            undisturbed = self._undisturbed(quiet, mine)
            found = misplaced(
                measured, {uuid: size for uuid, size in elsewhere.items() if uuid in undisturbed}
            )
            if found is not None:
                message = (
                    f"placed on {', '.join(plan.targets)} but its memory appeared on "
                    + ", ".join(f"{uuid} ({format_bytes(size)})" for uuid, size in found.items())
                    + "; reported where it appeared"
                )
                self._say(logging.WARNING, name, version, "%s", message)
                measured = found
        elif before and alone():
            # A model that declares no GPU memory, loaded while no other such load ran: what
            # it took on devices no other load or unload touched meanwhile is its footprint
            # all the same, so the scheduler charges it and learns it (Seldon places such
            # models as 0 bytes).
            undisturbed = self._undisturbed(quiet, mine)
            taken = {
                uuid: size
                for uuid, size in footprint(before, after, None, credit).items()
                if uuid in undisturbed
            }
            if sum(taken.values()) >= STRAY_MIN_BYTES:
                measured = taken
                self._say(
                    logging.INFO,
                    name,
                    version,
                    "declares no GPU memory but took %s",
                    ", ".join(f"{uuid} {format_bytes(size)}" for uuid, size in taken.items()),
                )
        await asyncio.to_thread(self.repository.settle, Record(name, version, measured), aside)
        self.loaded[name] = LoadedModel(name, version, measured)
        self.metrics.set_footprint(name, measured)
        self.metrics.loaded_models.set(len(self.loaded))
        self._say(
            logging.INFO,
            name,
            version,
            "loaded, footprint %s, host memory %s",
            ", ".join(f"{uuid}={format_bytes(size)}" for uuid, size in measured.items()) or "none",
            "not measured" if host_bytes is None else format_bytes(host_bytes),
        )
        return ModelEvent(
            EventKind.LOADED,
            name,
            version,
            message,
            footprint_bytes=measured,
            host_bytes=host_bytes,
        )

    async def _measured_load(self, name: str, *, measure: bool) -> int | None:
        """Load `name`; with `measure` (the scheduler asked, and no version is replaced: the
        old one is dropped in the middle), the host memory the inference server took
        meanwhile, when this load ran alone with it (no other load or unload at any moment);
        None otherwise or when it cannot be read."""
        with self._server_calls.track() as alone:
            measure = measure and await self._settled()
            before = await self._resident(name) if measure else None
            await self.inference.load(name)
            self._unsettled.discard(name)
            if before is None:
                return None
            after = await self._resident(name)
            # Less than before: memory freed meanwhile was reused, the figure means nothing.
            if after is None or after < before or not alone():
                return None
            return after - before

    async def _settled(self) -> bool:
        """No load given up on (timed out, cleanup failed) may still run inside the server:
        one its index no longer shows LOADING moves no memory any more (it is in or out)."""
        if not self._unsettled:
            return True
        try:
            entries = await self.inference.index()
        except InferenceServerError:
            return False
        self._unsettled &= {entry.name for entry in entries if entry.state == LOADING}
        return not self._unsettled

    async def _resident(self, name: str) -> int | None:
        """The inference server's resident memory now; None when it cannot be read (the
        figure only informs: no reading ever fails a load)."""
        try:
            return await self.inference.resident_bytes()
        except Exception:
            log.exception(
                "model %s on %s: the inference server's memory could not be read",
                name,
                self.replica,
                extra=log_fields(model=name),
            )
            return None

    async def _undo_failed_load(
        self, name: str, current: LoadedModel | None, aside: Path | None, old_kept: bool
    ) -> None:
        """Put the previous state back after a failed load.

        `old_kept`: the server refused the new version and still serves the old one (MLServer
        drops only the version that failed). Otherwise make sure the server holds nothing of
        this model (a timed-out load may still finish inside it), then load the old version
        again when there was one.
        """
        if not old_kept:
            try:
                with self._server_calls.track():
                    await self.inference.unload(name)
                self._unsettled.discard(name)
            except InferenceServerError as exc:
                # A load that timed out may still end inside the server: until this model
                # is unloaded or loaded again, no load's host memory is told apart from it.
                self._unsettled.add(name)
                log.warning(
                    "model %s on %s: cleanup unload failed: %s",
                    name,
                    self.replica,
                    exc,
                    extra=log_fields(model=name),
                )
        await asyncio.to_thread(self.repository.roll_back, name, aside)
        if current is None:
            return
        try:
            held = await self._server_holds(name) if old_kept else False
            if held is None:
                log.warning(
                    "model %s on %s: cannot tell whether version %d is still served; "
                    "keeping it as loaded",
                    name,
                    self.replica,
                    current.version,
                    extra=log_fields(model=name),
                )
                return
            if not held:
                with self._server_calls.track():
                    await self.inference.load(name)
            log.info(
                "model %s on %s: version %d kept after the failed replacement",
                name,
                self.replica,
                current.version,
                extra=log_fields(model=name),
            )
        except InferenceServerError as exc:
            log.error(
                "model %s on %s: version %d could not be restored either: %s",
                name,
                self.replica,
                current.version,
                exc,
                extra=log_fields(model=name),
            )
            await asyncio.to_thread(self.repository.remove, name)
            self._forget(name)
            self.emit(
                ModelEvent(
                    EventKind.UNLOADED,
                    name,
                    current.version,
                    f"lost while being replaced by a version that failed to load: {exc}",
                )
            )

    async def _server_holds(self, name: str) -> bool | None:
        """Whether the inference server holds `name` ready: True, False, or None when its
        index cannot be read (unknown: the caller must change nothing)."""
        try:
            entries = await self.inference.index()
        except InferenceServerError as exc:
            log.warning(
                "model %s on %s: reading the inference server's index failed: %s",
                name,
                self.replica,
                exc,
                extra=log_fields(model=name),
            )
            return None
        return any(entry.name == name and entry.ready for entry in entries)

    def _say(self, level: int, name: str, version: int, what: str, *args: object) -> None:
        """A log line about one version of a model on this replica, with its fields."""
        log.log(
            level,
            f"model %s v%d on %s: {what}",
            name,
            version,
            self.replica,
            *args,
            extra=log_fields(model=name, version=version),
        )

    def _forget(self, name: str) -> None:
        self.loaded.pop(name, None)
        self.metrics.clear_footprint(name)
        self.metrics.loaded_models.set(len(self.loaded))

    # -- unload ---------------------------------------------------------------------------

    async def _timed_unload(self, request: Unload) -> ModelEvent:
        started = time.monotonic()
        try:
            event = await self._unload(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "model %s v%d on %s: unload crashed",
                request.model,
                request.version,
                self.replica,
                extra=log_fields(model=request.model, version=request.version),
            )
            event = ModelEvent(
                EventKind.UNLOAD_FAILED, request.model, request.version, f"agent error: {exc}"
            )
        outcome = "unloaded" if event.kind is EventKind.UNLOADED else "failed"
        self.metrics.unloads.labels(outcome).inc()
        self.metrics.unload_seconds.labels(outcome).observe(time.monotonic() - started)
        return event

    async def _unload(self, request: Unload) -> ModelEvent:
        name, version = request.model, request.version
        try:
            artifacts.model_name(name)
        except InvalidName as exc:
            return ModelEvent(EventKind.UNLOAD_FAILED, name, version, str(exc))
        current = self.loaded.get(name)
        if current is not None and version and current.version and version != current.version:
            log.info(
                "model %s on %s: unload of version %d acknowledged; version %d stays loaded",
                name,
                self.replica,
                version,
                current.version,
                extra=log_fields(model=name),
            )
            return ModelEvent(
                EventKind.UNLOADED,
                name,
                version,
                f"version {current.version} is loaded here and stays",
            )
        async with AsyncExitStack() as stack:
            # The memory this unload frees must not count against the footprint of a load
            # measuring the same devices meanwhile.
            devices = sorted(current.footprint_bytes) if current is not None else []
            for uuid in devices:
                await stack.enter_async_context(self._hold(uuid))
            return await self._unload_locked(name, version)

    async def _unload_locked(self, name: str, version: int) -> ModelEvent:
        message = ""
        try:
            with self._server_calls.track():
                await self.inference.unload(name)
            self._unsettled.discard(name)
        except InferenceServerUnavailable as exc:
            message = f"inference server unreachable ({exc}); counted as unloaded"
            self._say(logging.WARNING, name, version, "%s", message)
        except InferenceServerError as exc:
            self._say(logging.WARNING, name, version, "unload failed: %s", exc)
            return ModelEvent(EventKind.UNLOAD_FAILED, name, version, str(exc))
        try:
            await asyncio.to_thread(self.repository.remove, name)
        except OSError as exc:
            log.warning(
                "model %s on %s: unloaded, but its folder could not be removed: %s",
                name,
                self.replica,
                exc,
                extra=log_fields(model=name),
            )
        self._forget(name)  # the devices are read again once the event is sent
        self._say(logging.INFO, name, version, "unloaded")
        return ModelEvent(EventKind.UNLOADED, name, version, message)
