"""What the CLI prints: stable dictionaries (for -o json|yaml) and plain-text tables.

The dictionaries are the documented JSON output (docs/cli.md): every key is always present
(null or empty when unset), keys are camelCase, byte counts are integers with a `Bytes`
suffix, times are ISO 8601 in UTC. New keys may be added; none is renamed or removed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    joined = "; ".join(f"{item.server}: {item.reason}" for item in status.server_reasons)
    return bool(status.server_reasons) and status.reason.strip() == joined


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
    }


def gpu_to_dict(gpu: scheduler_pb2.GpuStatus) -> dict[str, Any]:
    device = gpu.device
    return {
        "uuid": device.uuid,
        "name": device.name,
        "index": device.index,
        "parentUuid": device.parent_uuid or None,
        "totalBytes": device.total_bytes,
        "usedBytes": device.used_bytes,
        "freeBytes": device.free_bytes,
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


def _wanted(status: scheduler_pb2.ModelStatus) -> int:
    return status.spec.replicas if status.spec.HasField("replicas") else 1


def models_table(
    statuses: Sequence[scheduler_pb2.ModelStatus],
    servers: Sequence[scheduler_pb2.ServerStatus] = (),
) -> str:
    """One row per replica of each model; reasons under the table."""
    labels = device_labels(servers)
    rows: list[list[str]] = []
    notes: list[str] = []
    for status in statuses:
        head = [
            status.name,
            str(status.version),
            status.state,
            f"{status.available_replicas}/{_wanted(status)}",
        ]
        replicas = list(status.replicas)
        if not replicas:
            rows.append([*head, status.spec.server or "-", "-", "-", "-"])
        for position, replica in enumerate(replicas):
            cells = head if position == 0 else ["", "", "", ""]
            rows.append(
                [
                    *cells,
                    replica.server,
                    str(replica.replica_index),
                    replica.state,
                    _devices(replica, labels),
                ]
            )
        if status.reason and not repeats_server_reasons(status):
            notes.append(f"{status.name}: {status.reason}")
        for replica in replicas:
            if replica.reason:
                where = replica_id(replica.server, replica.replica_index)
                notes.append(f"{status.name} on {where}: {replica.reason}")
        if status.state not in SETTLED_STATES:
            notes.extend(
                f"{status.name}: {item.server}: {item.reason}" for item in status.server_reasons
            )
    if not rows:
        return "No models.\n"
    table = format_table(
        ["NAME", "VERSION", "STATE", "READY", "SERVER", "REPLICA", "REPLICA-STATE", "GPU"], rows
    )
    return table + ("\n" + "\n".join(notes) + "\n" if notes else "")


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
