"""The latest GPU reading, and whether it moved enough to tell the scheduler."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from agent.gpus import GpuProbe
from agent.metrics import AgentMetrics
from contract.protocol import GpuDevice

log = logging.getLogger(__name__)


def moved(before: Sequence[GpuDevice], after: Sequence[GpuDevice], threshold_bytes: int) -> bool:
    """True when the device set differs or any device's free memory moved past the threshold."""
    old = {device.uuid: device for device in before}
    new = {device.uuid: device for device in after}
    if old.keys() != new.keys():
        return True
    return any(
        abs(new[uuid].free_bytes - old[uuid].free_bytes) > threshold_bytes
        or new[uuid].total_bytes != old[uuid].total_bytes
        for uuid in new
    )


class GpuAssignment(Protocol):
    """Which of the devices NVML sees are this server's, asked at every refresh."""

    async def uuids(self, visible: Sequence[str]) -> tuple[str, ...] | None:
        """The UUIDs (GPU or MIG) that are this server's, of `visible` (what NVML sees);
        None: every device."""
        ...


class GpuMonitor:
    """Reads the probe (in a worker thread), keeps the latest reading, updates the metrics."""

    def __init__(
        self,
        probe: GpuProbe,
        metrics: AgentMetrics,
        threshold_bytes: int,
        assignment: GpuAssignment | None = None,
    ) -> None:
        self._probe = probe
        self._metrics = metrics
        self._threshold = threshold_bytes
        self._assignment = assignment
        self._unseen: frozenset[str] = frozenset()
        self._visible: list[str] = []
        self._lock = asyncio.Lock()
        self.latest: list[GpuDevice] = []
        self.reported: list[GpuDevice] | None = None
        self._read = False  # whether a refresh has read the probe yet
        # The assignment's answer at the last refresh; None: every device NVML sees.
        self._wanted: tuple[str, ...] | None = None

    @property
    def has_read(self) -> bool:
        """Whether the probe was read yet (the agent reads it for its hello)."""
        return self._read

    async def refresh(self) -> list[GpuDevice]:
        """Ask the assignment which devices are this server's, then read them (the
        periodic refresh and a hello)."""
        # Asked outside the lock (the kubelet may be slow, and readings for loads wait on
        # the lock), of what NVML saw at the last reading.
        if self._assignment is not None:
            self._wanted = await self._assignment.uuids(self._visible)
        return await self._read_devices()

    async def reading(self) -> list[GpuDevice]:
        """A fresh reading for a load or an unload to measure: NVML read again, of the
        devices the assignment gave at the last refresh (a pod's devices do not change
        while it runs, so a load waits on no kubelet). A replica with no device of its own
        (NVML saw none, or the kubelet assigned none) has nothing to measure: no trip to the
        worker thread, its latest (empty) reading; the periodic refresh still looks."""
        if not self._read:
            return await self.refresh()
        nothing_here = not self._wanted if self._wanted is not None else not self._visible
        if nothing_here:
            return list(self.latest)
        return await self._read_devices()

    async def _read_devices(self) -> list[GpuDevice]:
        async with self._lock:
            devices = await asyncio.to_thread(self._probe.devices)
            self._read = True
            self._visible = [device.uuid for device in devices]
            if self._wanted is not None:
                devices = self._assigned(devices, self._wanted)
            self.latest = devices
            self._metrics.set_gpus(devices)
            return list(devices)

    def _assigned(self, devices: list[GpuDevice], wanted: tuple[str, ...]) -> list[GpuDevice]:
        """The devices of `wanted`: those NVML sees here, in NVML's order, then those it
        cannot see (the agent's container lacks them) in `wanted` order, with unknown
        memory (`GpuDevice.unmeasured`: the scheduler puts no GPU model on them); says
        once which those are."""
        found = {device.uuid for device in devices}
        unseen = tuple(dict.fromkeys(uuid for uuid in wanted if uuid not in found))
        if unseen and frozenset(unseen) != self._unseen:
            log.warning(
                "GPU(s) %s are this server's but NVML cannot see them in the agent's "
                "container (set NVIDIA_VISIBLE_DEVICES=all on the agent); reported with "
                "unknown memory: no GPU model is placed on them",
                ", ".join(sorted(unseen)),
            )
        self._unseen = frozenset(unseen)
        chosen = set(wanted)
        return [device for device in devices if device.uuid in chosen] + [
            GpuDevice.unmeasured(uuid) for uuid in unseen
        ]

    def mark_reported(self, devices: Sequence[GpuDevice]) -> None:
        self.reported = list(devices)

    def report_if_moved(self, send: Callable[[list[GpuDevice]], bool]) -> bool:
        """Send the full device list when it moved since the last report; True if sent."""
        if self.reported is None or not moved(self.reported, self.latest, self._threshold):
            return False
        devices = list(self.latest)
        if send(devices):
            self.mark_reported(devices)
            return True
        return False

    async def run(self, interval_s: float, send: Callable[[list[GpuDevice]], bool]) -> None:
        """Refresh every `interval_s` seconds and report what moved."""
        while True:
            try:
                await self.refresh()
                self.report_if_moved(send)
            except Exception:  # one bad reading must not end the monitoring
                log.exception("reading the GPUs failed; trying again in %.0fs", interval_s)
            await asyncio.sleep(interval_s)

    def close(self) -> None:
        self._probe.close()
