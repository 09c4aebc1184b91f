"""The agent's Prometheus metrics (gpuplace_agent_*), in one injected CollectorRegistry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contract.protocol import GpuDevice

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.loaded_models = Gauge(
            "gpuplace_agent_loaded_models",
            "Models loaded on this replica",
            registry=registry,
        )
        self.loads = Counter(
            "gpuplace_agent_loads",
            "Load commands by outcome (loaded, failed, failed_memory)",
            ["outcome"],
            registry=registry,
        )
        self.load_seconds = Histogram(
            "gpuplace_agent_load_duration_seconds",
            "Time from a load command to its answer, by outcome",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.unloads = Counter(
            "gpuplace_agent_unloads",
            "Unload commands by outcome (unloaded, failed)",
            ["outcome"],
            registry=registry,
        )
        self.unload_seconds = Histogram(
            "gpuplace_agent_unload_duration_seconds",
            "Time from an unload command to its answer, by outcome",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.fetch_seconds = Histogram(
            "gpuplace_agent_artifact_fetch_duration_seconds",
            "Time to fetch a model's artifact (storageUri) into the staging folder, unpacking "
            "included, by scheme (local, http, s3, gs, azure, remote) and outcome (ok, failed)",
            ["scheme", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.fetched_bytes = Counter(
            "gpuplace_agent_artifact_fetched_bytes",
            "Bytes of artifacts fetched (downloaded or copied), by scheme",
            ["scheme"],
            registry=registry,
        )
        labels = ["uuid", "name"]
        self.gpu_total = Gauge(
            "gpuplace_agent_gpu_memory_total_bytes",
            "GPU memory per device, as NVML reports it",
            labels,
            registry=registry,
        )
        self.gpu_free = Gauge(
            "gpuplace_agent_gpu_memory_free_bytes",
            "Free GPU memory per device, as NVML reports it",
            labels,
            registry=registry,
        )
        self.gpu_used = Gauge(
            "gpuplace_agent_gpu_memory_used_bytes",
            "Used GPU memory per device, as NVML reports it",
            labels,
            registry=registry,
        )
        self.gpu_devices = Gauge(
            "gpuplace_agent_gpu_devices", "GPU devices (or MIG instances) in use", registry=registry
        )
        self.footprint = Gauge(
            "gpuplace_agent_model_footprint_bytes",
            "GPU memory a model took when it loaded (free before minus free after), per device",
            ["model", "uuid"],
            registry=registry,
        )
        self.connected = Gauge(
            "gpuplace_agent_scheduler_connected",
            "1 while the stream to the scheduler is up and welcomed",
            registry=registry,
        )
        self.reconnects = Counter(
            "gpuplace_agent_scheduler_reconnects",
            "Times the agent connected to the scheduler again after losing the stream",
            registry=registry,
        )
        self.resource_updates = Counter(
            "gpuplace_agent_resource_updates",
            "Resource updates sent to the scheduler",
            registry=registry,
        )
        self._gpu_labels: set[tuple[str, str]] = set()
        self._footprint_labels: dict[str, set[str]] = {}

    def set_gpus(self, devices: Iterable[GpuDevice]) -> None:
        """Memory gauges for the measured devices only: a device whose memory the agent
        cannot read has no memory series (not a 0 that reads as "full"), but is counted."""
        seen: set[tuple[str, str]] = set()
        count = 0
        for device in devices:
            count += 1
            if not device.measured:
                continue
            key = (device.uuid, device.name)
            seen.add(key)
            self.gpu_total.labels(*key).set(device.total_bytes)
            self.gpu_free.labels(*key).set(device.free_bytes)
            self.gpu_used.labels(*key).set(device.used_bytes)
        for key in self._gpu_labels - seen:
            for gauge in (self.gpu_total, self.gpu_free, self.gpu_used):
                gauge.remove(*key)
        self._gpu_labels = seen
        self.gpu_devices.set(count)

    def set_footprint(self, model: str, footprint: Mapping[str, int]) -> None:
        self.clear_footprint(model)
        for uuid, size in footprint.items():
            self.footprint.labels(model, uuid).set(size)
        self._footprint_labels[model] = set(footprint)

    def clear_footprint(self, model: str) -> None:
        for uuid in self._footprint_labels.pop(model, set()):
            self.footprint.remove(model, uuid)
