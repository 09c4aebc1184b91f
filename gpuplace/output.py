"""What the CLI prints: stable dictionaries (for -o json|yaml) and plain-text tables.

The dictionaries are the documented JSON output (docs/cli.md): every key is always present
(null or empty when unset), keys are camelCase, byte counts are integers with a `Bytes`
suffix, times are ISO 8601 in UTC. New keys may be added; none is renamed or removed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from contract.names import replica_id
from contract.quantity import format_bytes
from protos import common_pb2, scheduler_pb2

FORMATS = ("table", "json", "yaml")
# A model in one of these states was placed: the per-server reasons then say why the other
# servers ranked lower, which `explain model` shows and the status table leaves out.
SETTLED_STATES = ("Available", "Progressing", "Terminating", "Terminated")


def repeats_server_reasons(status: scheduler_pb2.ModelStatus) -> bool:
    """Whether the model's reason is only its per-server reasons joined."""
    return _joins(status.reason, status.server_reasons)


def _joins(reason: str, server_reasons: Sequence[scheduler_pb2.ServerReason]) -> bool:
    joined = "; ".join(f"{item.server}: {item.reason}" for item in server_reasons)
    return bool(server_reasons) and reason.strip() == joined


def dump(data: Any, fmt: str) -> str:
    """JSON (indented, key order kept) or YAML of `data`."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[index]) for index, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# Dictionaries


def _time(seconds: float) -> str | None:
    if seconds <= 0:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def spec_to_dict(spec: common_pb2.ModelSpec) -> dict[str, Any]:
    return {
        "storageUri": spec.storage_uri or None,
        "requirements": list(spec.requirements),
        "server": spec.server or None,
        "memory": spec.memory or None,
        "gpuMemory": spec.gpu_memory or None,
        "gpus": spec.gpus or None,
        "replicas": spec.replicas if spec.HasField("replicas") else None,
        "minReplicas": spec.min_replicas if spec.HasField("min_replicas") else None,
        "parameters": dict(sorted(spec.parameters.items())),
        "artifactVersion": spec.artifact_version if spec.HasField("artifact_version") else None,
        "namespace": spec.namespace or None,
        "secretName": spec.secret_name or None,
    }


def replica_to_dict(replica: scheduler_pb2.CopyStatus) -> dict[str, Any]:
    return {
        "server": replica.server,
        "replica": replica.replica_index,
        "state": replica.state,
        "reason": replica.reason or None,
        "version": replica.version,
        "devices": list(replica.device_uuids),
        "footprintBytes": dict(sorted(replica.footprint_bytes.items())),
    }


def model_to_dict(status: scheduler_pb2.ModelStatus) -> dict[str, Any]:
    return {
        "name": status.name,
        "version": status.version,
        "state": status.state,
        "reason": status.reason or None,
        "availableReplicas": status.available_replicas,
        "updatedAt": _time(status.updated_at),
        "spec": spec_to_dict(status.spec),
        "replicas": [replica_to_dict(replica) for replica in status.replicas],
        "serverReasons": [
            {"server": item.server, "reason": item.reason} for item in status.server_reasons
        ],
        "gpuMemory": gpu_memory_to_dict(status),
        "memory": memory_to_dict(status),
    }


@dataclass(frozen=True)
class _Figure:
    """One figure a model is placed with, as a status shows it: GPU memory per device or
    host memory; declared in the spec or learned from loads of its artifact."""

    declared: str
    source: str
    placement_bytes: int
    # (product, bytes, loads measured, updated at) per GPU product that measured it
    learned: tuple[tuple[str, int, int, float], ...]
    per: str  # what the placed amount is per: " per device" or ""


def _gpu_figure(status: scheduler_pb2.ModelStatus) -> _Figure:
    return _Figure(
        status.spec.gpu_memory,
        status.gpu_memory_source,
        status.placement_gpu_memory_bytes,
        tuple(
            (i.product, i.gpu_memory_bytes, i.samples, i.updated_at)
            for i in status.learned_footprints
            if i.samples
        ),
        " per device",
    )


def _host_figure(status: scheduler_pb2.ModelStatus) -> _Figure:
    return _Figure(
        status.spec.memory,
        status.memory_source,
        status.placement_memory_bytes,
        tuple(
            (i.product, i.memory_bytes, i.memory_samples, i.updated_at)
            for i in status.learned_footprints
            if i.memory_samples
        ),
        "",
    )


def _figure_to_dict(figure: _Figure, key: str) -> dict[str, Any]:
    return {
        "declared": figure.declared or None,
        "source": figure.source or None,
        "placementBytes": figure.placement_bytes,
        "learned": [
            {"product": product, key: size, "samples": samples, "updatedAt": _time(updated)}
            for product, size, samples, updated in figure.learned
        ],
    }


def gpu_memory_to_dict(status: scheduler_pb2.ModelStatus) -> dict[str, Any]:
    """Declared vs learned GPU memory: what the spec says, what loads of its artifact
    measured per GPU product, and what the scheduler places the model with per device."""
    return _figure_to_dict(_gpu_figure(status), "gpuMemoryBytes")


def memory_to_dict(status: scheduler_pb2.ModelStatus) -> dict[str, Any]:
    """The same for host memory (the inference server's resident memory a load added)."""
    return _figure_to_dict(_host_figure(status), "memoryBytes")


def _figure_text(figure: _Figure) -> str:
    measured = ", ".join(
        f"{format_bytes(size)}{f' on {product}' if product else ''} "
        f"({samples} load{'s' if samples != 1 else ''})"
        for product, size, samples, _ in figure.learned
    )
    if figure.declared:
        return f"declared {figure.declared}, " + (
            f"measured {measured}" if measured else "not measured yet"
        )
    if figure.source == "learned":
        placed = format_bytes(figure.placement_bytes)
        return (
            f"not declared; measured {measured}; placed with the learned {placed}{figure.per} "
            "(the largest measured plus the scheduler's margin)"
        )
    return ""


def gpu_memory_text(status: scheduler_pb2.ModelStatus) -> str:
    """One line of declared vs measured GPU memory ("" for a model that neither declares
    nor was measured): "declared 20Gi, measured 17.3 GiB on NVIDIA H100 (2 loads)"."""
    return _figure_text(_gpu_figure(status))


def memory_text(status: scheduler_pb2.ModelStatus) -> str:
    """The same for host memory: "declared 2Gi, measured 310.2 MiB (1 load)"."""
    return _figure_text(_host_figure(status))


def plan_to_dict(
    spec: common_pb2.ModelSpec, plan: scheduler_pb2.PlanModelResponse
) -> dict[str, Any]:
    """A dry run's answer for one model (`model load --dry-run=server`)."""
    return {
        "name": plan.name or spec.name,
        "version": plan.version,
        "changed": plan.changed,
        "state": plan.state,
        "reason": plan.reason or None,
        "spec": spec_to_dict(spec),
        "replicas": [replica_to_dict(replica) for replica in plan.planned],
        "serverReasons": [
            {"server": item.server, "reason": item.reason} for item in plan.server_reasons
        ],
    }


def gpu_to_dict(gpu: scheduler_pb2.GpuStatus) -> dict[str, Any]:
    device = gpu.device
    return {
        "uuid": device.uuid,
        "name": device.name,
        "index": device.index,
        "parentUuid": device.parent_uuid or None,
        "measured": not device.memory_unknown,
        "totalBytes": None if device.memory_unknown else device.total_bytes,
        "usedBytes": None if device.memory_unknown else device.used_bytes,
        "freeBytes": None if device.memory_unknown else device.free_bytes,
        "reservedBytes": gpu.reserved_bytes,
    }


def server_to_dict(server: scheduler_pb2.ServerStatus) -> dict[str, Any]:
    return {
        "name": server.name,
        "replicas": [
            {
                "index": replica.index,
                "connected": replica.connected,
                "draining": replica.draining,
                "capabilities": list(replica.capabilities),
                "memoryBytes": replica.memory_bytes,
                "overcommitPercentage": replica.overcommit_percentage,
                "availableMemoryBytes": replica.available_memory_bytes,
                "gpus": [gpu_to_dict(gpu) for gpu in replica.gpus],
                "models": list(replica.models),
            }
            for replica in server.replicas
        ],
    }


# ----------------------------------------------------------------------------------------
# Tables


def _short_uuid(uuid: str) -> str:
    return uuid if len(uuid) <= 12 else uuid[:12]


def device_labels(servers: Sequence[scheduler_pb2.ServerStatus]) -> dict[str, str]:
    """uuid -> "gpu0 (GPU-5f0c1a2e)" from the servers' device lists."""
    labels: dict[str, str] = {}
    for server in servers:
        for replica in server.replicas:
            for gpu in replica.gpus:
                device = gpu.device
                labels[device.uuid] = f"gpu{device.index} ({_short_uuid(device.uuid)})"
    return labels


def _devices(replica: scheduler_pb2.CopyStatus, labels: dict[str, str]) -> str:
    uuids = list(replica.device_uuids) or sorted(replica.footprint_bytes)
    if not uuids:
        return "-"
    shown = []
    for uuid in uuids:
        text = labels.get(uuid, _short_uuid(uuid))
        footprint = replica.footprint_bytes.get(uuid)
        if footprint:
            text += f" {format_bytes(footprint)}"
        shown.append(text)
    return ", ".join(shown)


def _wanted(spec: common_pb2.ModelSpec) -> int:
    return spec.replicas if spec.HasField("replicas") else 1


def _model_rows(
    head: list[str],
    server: str,
    copies: Sequence[scheduler_pb2.CopyStatus],
    labels: dict[str, str],
) -> list[list[str]]:
    """The model's columns (`head`) on its first row, then one row per copy."""
    if not copies:
        return [[*head, server or "-", "-", "-", "-"]]
    return [
        [
            *(head if position == 0 else [""] * len(head)),
            copy.server,
            str(copy.replica_index),
            copy.state,
            _devices(copy, labels),
        ]
        for position, copy in enumerate(copies)
    ]


def _model_notes(
    name: str,
    state: str,
    reason: str,
    copies: Sequence[scheduler_pb2.CopyStatus],
    server_reasons: Sequence[scheduler_pb2.ServerReason],
) -> list[str]:
    """The lines under the table: the model's reason (unless it only joins the per-server
    ones), each copy's, and the per-server reasons of a model that is not placed."""
    notes = []
    if reason and not _joins(reason, server_reasons):
        notes.append(f"{name}: {reason}")
    for copy in copies:
        if copy.reason:
            where = replica_id(copy.server, copy.replica_index)
            notes.append(f"{name} on {where}: {copy.reason}")
    if state not in SETTLED_STATES:
        notes.extend(f"{name}: {item.server}: {item.reason}" for item in server_reasons)
    return notes


def _with_namespaces(
    headers: list[str], rows: list[list[str]], namespaces: list[str], copies: list[int]
) -> tuple[list[str], list[list[str]]]:
    """A NAMESPACE column first, when some model has a namespace (as `kubectl get -A`):
    `namespaces[i]` on the first of the `copies[i]` rows of the i-th model."""
    if not any(namespaces):
        return headers, rows
    column: list[str] = []
    for namespace, count in zip(namespaces, copies, strict=True):
        column += [namespace or "-"] + [""] * (count - 1)
    return ["NAMESPACE", *headers], [[cell, *row] for cell, row in zip(column, rows, strict=True)]


def models_table(
    statuses: Sequence[scheduler_pb2.ModelStatus],
    servers: Sequence[scheduler_pb2.ServerStatus] = (),
) -> str:
    """One row per replica of each model; reasons under the table. READY is available of
    wanted replicas ("2/3" while a placement is partial)."""
    labels = device_labels(servers)
    rows: list[list[str]] = []
    counts: list[int] = []
    notes: list[str] = []
    for status in statuses:
        head = [
            status.name,
            str(status.version),
            status.state,
            f"{status.available_replicas}/{_wanted(status.spec)}",
        ]
        model_rows = _model_rows(head, status.spec.server, status.replicas, labels)
        rows += model_rows
        counts.append(len(model_rows))
        notes += _model_notes(
            status.name, status.state, status.reason, status.replicas, status.server_reasons
        )
    if not rows:
        return "No models.\n"
    headers, rows = _with_namespaces(
        ["NAME", "VERSION", "STATE", "READY", "SERVER", "REPLICA", "REPLICA-STATE", "GPU"],
        rows,
        [status.spec.namespace for status in statuses],
        counts,
    )
    return format_table(headers, rows) + ("\n" + "\n".join(notes) + "\n" if notes else "")


def plans_table(
    plans: Sequence[tuple[common_pb2.ModelSpec, scheduler_pb2.PlanModelResponse]],
    servers: Sequence[scheduler_pb2.ServerStatus] = (),
) -> str:
    """A dry run's answers: per model, the version it would get, whether the spec changes
    anything, its state after the next pass and the copies it would have (PLAN `Planned`
    where a load would go, else the state of a copy it keeps); reasons under the table."""
    labels = device_labels(servers)
    rows: list[list[str]] = []
    counts: list[int] = []
    notes: list[str] = []
    for spec, plan in plans:
        name = plan.name or spec.name
        head = [
            name,
            str(plan.version),
            "yes" if plan.changed else "no",
            plan.state,
            f"{len(plan.planned)}/{_wanted(spec)}",
        ]
        model_rows = _model_rows(head, spec.server, plan.planned, labels)
        rows += model_rows
        counts.append(len(model_rows))
        notes += _model_notes(name, plan.state, plan.reason, plan.planned, plan.server_reasons)
    if not rows:
        return "No models.\n"
    headers, rows = _with_namespaces(
        ["NAME", "VERSION", "CHANGED", "STATE", "PLACED", "SERVER", "REPLICA", "PLAN", "GPU"],
        rows,
        [spec.namespace for spec, _ in plans],
        counts,
    )
    return format_table(headers, rows) + ("\n" + "\n".join(notes) + "\n" if notes else "")


def _replica_status(replica: scheduler_pb2.ReplicaStatus) -> str:
    if not replica.connected:
        return "disconnected"
    return "draining" if replica.draining else "connected"


def _host_memory(replica: scheduler_pb2.ReplicaStatus) -> str:
    total = replica.memory_bytes * (100 + replica.overcommit_percentage) // 100
    return f"{format_bytes(replica.available_memory_bytes)} / {format_bytes(total)}"


def _gpu(gpu: scheduler_pb2.GpuStatus) -> list[str]:
    device = gpu.device
    reserved = f" ({format_bytes(gpu.reserved_bytes)} reserved)" if gpu.reserved_bytes else ""
    if device.memory_unknown:
        return [f"{device.uuid} (memory not measured)", "unknown", "unknown"]
    return [
        f"gpu{device.index} {device.name} ({_short_uuid(device.uuid)})",
        f"{format_bytes(device.used_bytes)} / {format_bytes(device.total_bytes)}",
        format_bytes(device.free_bytes) + reserved,
    ]


def servers_table(servers: Sequence[scheduler_pb2.ServerStatus]) -> str:
    """One row per replica (and one more per extra GPU)."""
    rows: list[list[str]] = []
    for server in servers:
        for replica in server.replicas:
            gpus = list(replica.gpus)
            first = _gpu(gpus[0]) if gpus else ["-", "-", "-"]
            rows.append(
                [
                    server.name,
                    str(replica.index),
                    _replica_status(replica),
                    ",".join(replica.capabilities) or "-",
                    _host_memory(replica),
                    *first,
                    ",".join(replica.models) or "-",
                ]
            )
            rows.extend(["", "", "", "", "", *_gpu(gpu), ""] for gpu in gpus[1:])
    if not rows:
        return "No servers.\n"
    return format_table(
        [
            "SERVER",
            "REPLICA",
            "STATUS",
            "CAPABILITIES",
            "HOST-MEMORY (FREE/TOTAL)",
            "GPU",
            "GPU-USED/TOTAL",
            "GPU-FREE",
            "MODELS",
        ],
        rows,
    )
