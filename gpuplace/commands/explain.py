"""`gpuplace explain nodes|model`: where a Server's pods or a model can go, and why not."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import grpc

from contract.names import replica_id
from gpuplace.client import ClientError
from gpuplace.commands._common import (
    EXIT_FAILED,
    EXIT_OK,
    add_files_option,
    add_output_option,
    add_scheduler_option,
    connect,
    guarded,
    print_warnings,
)
from gpuplace.nodes import ServerPlacement, explain_bundle
from gpuplace.output import (
    SETTLED_STATES,
    device_labels,
    dump,
    gpu_memory_text,
    memory_text,
    model_to_dict,
    repeats_server_reasons,
)
from gpuplace.resources import load_files
from protos import scheduler_pb2


def register(commands: Any) -> None:
    explain: argparse.ArgumentParser = commands.add_parser(
        "explain", help="explain where Servers' pods and models can go, and why not elsewhere"
    )
    topics = explain.add_subparsers(dest="topic", metavar="TOPIC", required=True)

    nodes = topics.add_parser(
        "nodes",
        help="which nodes each Server's pods could run on (taints, selectors, affinity, GPUs)",
        description="Judge every Server (its podSpec merged over its ServerConfig's) against "
        "every Node with Kubernetes' rules. Exit 0 when every Server has a node, 1 otherwise.",
    )
    add_files_option(
        nodes, "Server, ServerConfig and Node resources (e.g. kubectl get nodes -o yaml)"
    )
    add_output_option(nodes)
    nodes.set_defaults(func=guarded(nodes_command))

    model = topics.add_parser(
        "model",
        help="the scheduler's reasons, per server, for a model's placement or refusal",
    )
    model.add_argument("name", metavar="NAME")
    add_output_option(model)
    add_scheduler_option(model)
    model.set_defaults(func=guarded(model_command))


def placement_to_dict(placement: ServerPlacement) -> dict[str, Any]:
    return {
        "name": placement.server,
        "namespace": placement.namespace,
        "serverConfig": placement.server_config,
        "fitsOn": placement.fitting,
        "nodes": [
            {
                "name": verdict.node,
                "fits": verdict.fits,
                "reasons": verdict.reasons,
                "preferences": verdict.preferences,
                "notes": verdict.notes,
            }
            for verdict in placement.nodes
        ],
        "warnings": placement.warnings,
    }


def placements_text(placements: list[ServerPlacement]) -> str:
    lines: list[str] = []
    for placement in placements:
        where = f"namespace {placement.namespace}, " if placement.namespace else ""
        lines.append(f"Server {placement.server} ({where}ServerConfig {placement.server_config})")
        fitting = placement.fitting
        lines.append(f"  can run on: {', '.join(fitting) if fitting else 'no node'}")
        refused = [verdict for verdict in placement.nodes if not verdict.fits]
        if refused:
            lines.append("  cannot run on:")
            lines.extend(f"    {verdict.node}: {'; '.join(verdict.reasons)}" for verdict in refused)
        for verdict in placement.nodes:
            lines.extend(f"  preference on {verdict.node}: {item}" for item in verdict.preferences)
            lines.extend(f"  note on {verdict.node}: {item}" for item in verdict.notes)
        lines.extend(f"  warning: {warning}" for warning in placement.warnings)
        lines.append("")
    return "\n".join(lines)


def nodes_command(args: argparse.Namespace) -> int:
    stdin_text = sys.stdin.read() if "-" in args.files else None
    bundle = load_files(args.files, stdin_text=stdin_text)
    print_warnings(bundle.warnings)
    placements = explain_bundle(bundle)
    if args.output == "table":
        sys.stdout.write(placements_text(placements))
    else:
        sys.stdout.write(dump({"servers": [placement_to_dict(p) for p in placements]}, args.output))
    return EXIT_OK if all(placement.fitting for placement in placements) else EXIT_FAILED


def model_text(status: scheduler_pb2.ModelStatus, labels: dict[str, str]) -> str:
    spec = status.spec
    lines = [f"Model {status.name} (version {status.version}): {status.state}"]
    if status.reason and not repeats_server_reasons(status):
        lines.append(f"  reason: {status.reason}")
    wants = []
    if spec.requirements:
        wants.append(f"requirements {', '.join(spec.requirements)}")
    if spec.server:
        wants.append(f"pinned to server {spec.server} (no other server is tried)")
    if spec.memory:
        wants.append(f"memory {spec.memory}")
    if spec.gpu_memory:
        gpus = spec.gpus or 1
        wants.append(
            f"GPU memory {spec.gpu_memory} on each of {gpus} device{'s' if gpus > 1 else ''}"
        )
    wanted = spec.replicas if spec.HasField("replicas") else 1
    wants.append(f"{wanted} replica{'s' if wanted != 1 else ''}")
    if spec.min_replicas:
        wants.append(f"at least {spec.min_replicas} (minReplicas)")
    lines.append(f"  asks for: {'; '.join(wants)}")
    for label, text in (("GPU memory", gpu_memory_text(status)), ("memory", memory_text(status))):
        if text:
            lines.append(f"  {label}: {text}")
    if status.replicas:
        lines.append("  placement:")
        for replica in status.replicas:
            devices = ", ".join(labels.get(uuid, uuid) for uuid in replica.device_uuids)
            text = f"    {replica_id(replica.server, replica.replica_index)}: {replica.state}"
            if devices:
                text += f" on {devices}"
            if replica.reason:
                text += f" ({replica.reason})"
            lines.append(text)
    else:
        lines.append("  placement: none")
    if status.server_reasons:
        placed = status.state in SETTLED_STATES
        lines.append("  the other servers:" if placed else "  servers that could not take it:")
        lines.extend(f"    {item.server}: {item.reason}" for item in status.server_reasons)
    elif status.state in ("Pending", "ScheduleFailed", "Failed"):
        lines.append("  servers that could not take it: the scheduler gave no per-server reason")
    return "\n".join(lines) + "\n"


def model_command(args: argparse.Namespace) -> int:
    with connect(args) as client:
        try:
            status = client.model(args.name)
        except ClientError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                print(f"error: no model named {args.name!r}", file=sys.stderr)
                return EXIT_FAILED
            raise
        if args.output != "table":
            sys.stdout.write(dump(model_to_dict(status), args.output))
            return EXIT_OK
        try:
            labels = device_labels(client.servers())
        except ClientError:
            labels = {}
    sys.stdout.write(model_text(status, labels))
    return EXIT_OK
