"""Scheduler metrics, in one registry injected by the composition root."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from placement import Replica
from scheduler_service.model import WAITING_REASONS, ModelState

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class ClusterGauges:
    """What the gauges show, read from the service at scrape time."""

    models_by_state: dict[str, int]
    # Models not Available (deleted ones aside), by `WAITING_REASONS`.
    waiting: Mapping[str, int]
    # The connected replicas as the placement core sees them: memory, devices, the ledger.
    replicas: tuple[Replica, ...]
    # Per model that declares gpuMemory and whose artifact was measured: the largest
    # learned footprint over the declared amount.
    gpu_memory_ratios: Mapping[str, float] = field(default_factory=dict)
    # The same for host memory, per model that declares memory.
    memory_ratios: Mapping[str, float] = field(default_factory=dict)
    # GPU memory the models loaded or loading on a device were placed with (declared, else
    # learned), per (server, replica index, device UUID).
    gpu_placed: Mapping[tuple[str, int, str], int] = field(default_factory=dict)


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], ClusterGauges]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        gauges = self._read()
        models = GaugeMetricFamily("gpuplace_scheduler_models", "Models by state", labels=["state"])
        for state in ModelState:
            models.add_metric([state.value], gauges.models_by_state.get(state.value, 0))
        yield models
        waiting = GaugeMetricFamily(
            "gpuplace_scheduler_models_waiting",
            "Models not Available (deleted ones aside), by what keeps them: placing, "
            "loading, load_failed, or a refusal's nearest miss (no_server, capabilities, "
            "draining, excluded, host_memory, gpu_memory, too_few_replicas)",
            labels=["reason"],
        )
        for reason in WAITING_REASONS:
            waiting.add_metric([reason], gauges.waiting.get(reason, 0))
        yield waiting
        yield GaugeMetricFamily(
            "gpuplace_scheduler_connected_agents",
            "Agents connected now",
            value=len(gauges.replicas),
        )
        capacity = GaugeMetricFamily(
            "gpuplace_scheduler_replica_memory_capacity_bytes",
            "Host memory of a replica with overcommit",
            labels=["server", "replica"],
        )
        available = GaugeMetricFamily(
            "gpuplace_scheduler_replica_memory_available_bytes",
            "Host memory of a replica not yet promised to a model",
            labels=["server", "replica"],
        )
        for replica in gauges.replicas:
            capacity.add_metric([replica.server, str(replica.index)], replica.capacity_bytes)
            available.add_metric(
                [replica.server, str(replica.index)], replica.available_memory_bytes
            )
        yield capacity
        yield available
        labels = ["server", "replica", "uuid", "name"]
        families = {
            "total": GaugeMetricFamily(
                "gpuplace_scheduler_gpu_memory_total_bytes", "GPU memory per device", labels=labels
            ),
            "free": GaugeMetricFamily(
                "gpuplace_scheduler_gpu_memory_free_bytes",
                "Free GPU memory per device, as last measured by its agent",
                labels=labels,
            ),
            "used": GaugeMetricFamily(
                "gpuplace_scheduler_gpu_memory_used_bytes",
                "Used GPU memory per device (total minus free), as last measured by its agent",
                labels=labels,
            ),
            "reserved": GaugeMetricFamily(
                "gpuplace_scheduler_gpu_memory_reserved_bytes",
                "GPU memory promised to loads still in flight",
                labels=labels,
            ),
            "placed": GaugeMetricFamily(
                "gpuplace_scheduler_gpu_memory_placed_bytes",
                "GPU memory the models loaded or loading on a device were placed with "
                "(declared gpuMemory, else learned): compare with the measured used memory",
                labels=labels,
            ),
        }
        for replica in gauges.replicas:
            for gpu in replica.gpus:
                values = [replica.server, str(replica.index), gpu.uuid, gpu.name]
                if gpu.measured:  # an unmeasured device's memory is unknown, not 0
                    families["total"].add_metric(values, gpu.total_bytes)
                    families["free"].add_metric(values, gpu.free_bytes)
                    families["used"].add_metric(values, gpu.total_bytes - gpu.free_bytes)
                families["reserved"].add_metric(values, gpu.reserved_bytes)
                placed = gauges.gpu_placed.get((replica.server, replica.index, gpu.uuid), 0)
                families["placed"].add_metric(values, placed)
        yield from families.values()
        for name, what, ratios in (
            (
                "gpuplace_scheduler_model_gpu_memory_ratio",
                "GPU memory measured (the largest learned footprint per device) over the "
                "declared gpuMemory",
                gauges.gpu_memory_ratios,
            ),
            (
                "gpuplace_scheduler_model_memory_ratio",
                "host memory measured (the largest learned figure) over the declared memory",
                gauges.memory_ratios,
            ),
        ):
            ratio = GaugeMetricFamily(
                name, f"{what}, per model that declares it and was measured", labels=["model"]
            )
            for model, value in sorted(ratios.items()):
                ratio.add_metric([model], value)
            yield ratio


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.placements = Counter(
            "gpuplace_scheduler_placements",
            "Placement decisions by outcome (placed, partial, rejected)",
            ["outcome"],
            registry=registry,
        )
        self.load_failures = Counter(
            "gpuplace_scheduler_load_failures",
            "Loads that failed, by reason (load_failed, load_failed_memory, timeout, "
            "agent_disconnected)",
            ["reason"],
            registry=registry,
        )
        self.dry_runs = Counter(
            "gpuplace_scheduler_dry_runs",
            "LoadModel dry runs answered (validated and planned; nothing loaded or stored)",
            registry=registry,
        )
        self.retries = Counter(
            "gpuplace_scheduler_retries",
            "Placements made again after a failed load or a refusal",
            registry=registry,
        )
        self.auth_refusals = Counter(
            "gpuplace_scheduler_auth_refusals",
            "Calls refused for a missing or wrong bearer token, by API (a client without a "
            "trusted certificate is refused by TLS itself, before any call)",
            ["api"],
            registry=registry,
        )
        self.state_write_errors = Counter(
            "gpuplace_scheduler_state_write_errors",
            "Changes the state file could not take (a model's save, a whole pass, a hello): "
            "each was undone and is tried again",
            registry=registry,
        )
        self.loop_errors = Counter(
            "gpuplace_scheduler_reconcile_errors",
            "Reconcile passes that failed outside any one model's pass (a bug; the loop goes "
            "on after a second)",
            registry=registry,
        )
        self.placement_seconds = Histogram(
            "gpuplace_scheduler_placement_duration_seconds",
            "Time to take one placement decision",
            buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=registry,
        )
        self.load_seconds = Histogram(
            "gpuplace_scheduler_load_duration_seconds",
            "From load requested to loaded, per replica",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.available_seconds = Histogram(
            "gpuplace_scheduler_model_available_duration_seconds",
            "From a client's LoadModel (a new version or a new replica count) to the model "
            "Available, placement and retries included (not observed for requests made "
            "before the scheduler last started)",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )

    def watch_state(self, read: Callable[[], ClusterGauges]) -> None:
        self.registry.register(_StateCollector(read))


def count_states(states: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return counts
