"""An NVML probe that counts its readings (over the fake library), for tests that check
which paths read the devices."""

from __future__ import annotations

from agent.gpus import NvmlGpuProbe
from contract.protocol import GpuDevice


class CountingProbe(NvmlGpuProbe):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def devices(self) -> list[GpuDevice]:
        self.reads += 1
        return super().devices()
