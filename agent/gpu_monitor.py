"""The latest GPU reading, and whether it moved enough to tell the scheduler."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

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


class GpuMonitor:
    """Reads the probe (in a worker thread), keeps the latest reading, updates the metrics."""

    def __init__(self, probe: GpuProbe, metrics: AgentMetrics, threshold_bytes: int) -> None:
        self._probe = probe
        self._metrics = metrics
        self._threshold = threshold_bytes
        self._lock = asyncio.Lock()
        self.latest: list[GpuDevice] = []
        self.reported: list[GpuDevice] | None = None

    async def refresh(self) -> list[GpuDevice]:
        async with self._lock:
            devices = await asyncio.to_thread(self._probe.devices)
            self.latest = devices
            self._metrics.set_gpus(devices)
            return list(devices)

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
