"""`gpuplace model load|unload|status|wait`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from contract.names import replica_id
from gpuplace.client import ClientError, SchedulerClient
from gpuplace.commands._common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_SCHEDULER,
    add_files_option,
    add_output_option,
    add_scheduler_option,
    connect,
    guarded,
    parse_duration,
    print_warnings,
    report_client_error,
)
from gpuplace.commands._wait import Progress, Waited, wait_models
from gpuplace.output import (
    device_labels,
    dump,
    model_to_dict,
    models_table,
    plan_to_dict,
    plans_table,
    repeats_server_reasons,
    spec_to_dict,
)
from gpuplace.resources import Problem, ResourceError, load_files, to_model_spec
from protos import common_pb2, scheduler_pb2

Reply = TypeVar("Reply")

# A model the scheduler would not place (a dry run's state after the pass).
REFUSED_STATES = ("ScheduleFailed", "Failed")


def register(commands: Any) -> None:
    model: argparse.ArgumentParser = commands.add_parser(
        "model",
        help="load, unload, inspect and wait for models",
        description="Models on the scheduler.",
    )
    actions = model.add_subparsers(dest="action", metavar="ACTION", required=True)

    load = actions.add_parser(
        "load",
        help="send the Models of YAML files to the scheduler",
        description="Check every Model of the files, then send each to the scheduler (LoadModel). "
        "Nothing is sent when any document is invalid (exit code 2). --dry-run only checks "
        "the files; --dry-run=server asks the scheduler where each model would go, and why, "
        "without loading or storing anything (exit code 1 when one would be refused).",
    )
    add_files_option(load, "Model resources")
    load.add_argument(
        "--dry-run",
        nargs="?",
        const="client",
        choices=["client", "server"],
        default=None,
        help="client (the default of a bare --dry-run): check the files, send nothing, no "
        "scheduler needed; server: the scheduler checks each model and plans it from its "
        "live state, changing nothing",
    )
    add_output_option(load)
    load.add_argument(
        "--wait", action="store_true", help="wait until every model is Available or failed"
    )
    load.add_argument(
        "--timeout",
        type=parse_duration,
        default=parse_duration("5m"),
        help="with --wait (default 5m)",
    )
    add_scheduler_option(load)
    load.set_defaults(func=guarded(load_command))

    unload = actions.add_parser("unload", help="unload models by name")
    unload.add_argument("names", nargs="+", metavar="NAME")
    unload.add_argument("--wait", action="store_true", help="wait until the models are gone")
    unload.add_argument(
        "--timeout", type=parse_duration, default=parse_duration("5m"), help="with --wait"
    )
    add_scheduler_option(unload)
    unload.set_defaults(func=guarded(unload_command))

    status = actions.add_parser(
        "status", help="the state and placement of one model or every model"
    )
    status.add_argument("name", nargs="?", metavar="NAME")
    add_output_option(status)
    add_scheduler_option(status)
    status.set_defaults(func=guarded(status_command))

    wait = actions.add_parser(
        "wait",
        help="wait for a model to become available or to be deleted",
        description="Exit 0 when the model reaches the state, 1 when it fails (Failed) or the "
        "timeout passes. While waiting for available, ScheduleFailed is not final: the "
        "scheduler keeps retrying.",
    )
    wait.add_argument("name", metavar="NAME")
    wait.add_argument("--for", dest="goal", choices=["available", "deleted"], default="available")
    wait.add_argument(
        "--timeout", type=parse_duration, default=parse_duration("60s"), help="default 60s"
    )
    add_scheduler_option(wait)
    wait.set_defaults(func=guarded(wait_command))


def _placement(status: scheduler_pb2.ModelStatus, labels: dict[str, str]) -> str:
    parts = []
    for replica in status.replicas:
        if replica.state != "Available":
            continue
        devices = ", ".join(labels.get(uuid, uuid) for uuid in replica.device_uuids)
        parts.append(
            replica_id(replica.server, replica.replica_index) + (f" [{devices}]" if devices else "")
        )
    return ", ".join(parts) or "-"


def report_waited(client: SchedulerClient, results: dict[str, Waited]) -> int:
    """Print how each wait ended; the exit code: 0 when every model got there, else 1."""
    labels: dict[str, str] = {}
    with contextlib.suppress(ClientError):
        labels = device_labels(client.servers())
    code = EXIT_OK
    for name, waited in sorted(results.items()):
        status = waited.status
        if waited.outcome == "available" and status is not None:
            wanted = status.spec.replicas if status.spec.HasField("replicas") else 1
            print(
                f"{name} is Available (version {status.version}, "
                f"{status.available_replicas}/{wanted} replicas): {_placement(status, labels)}"
            )
        elif waited.outcome == "deleted":
            print(f"{name} is deleted")
        else:
            code = EXIT_FAILED
            if waited.outcome == "missing":
                print(f"error: no model named {name!r}", file=sys.stderr)
                continue
            state = status.state if status is not None else "unknown"
            what = "timed out waiting" if waited.outcome == "timeout" else "failed"
            reason = ""
            if status is not None and status.reason and not repeats_server_reasons(status):
                reason = f": {status.reason}"
            print(f"error: {name} {what} (state {state}){reason}", file=sys.stderr)
            if status is not None:
                for item in status.server_reasons:
                    print(f"  {item.server}: {item.reason}", file=sys.stderr)
                for replica in status.replicas:
                    if replica.reason:
                        where = replica_id(replica.server, replica.replica_index)
                        print(f"  {where} ({replica.state}): {replica.reason}", file=sys.stderr)
    return code


def load_command(args: argparse.Namespace) -> int:
    """Check every file, then send each Model (or only plan it: --dry-run); optionally wait."""
    if args.dry_run and args.wait:
        print("error: --wait cannot be used with --dry-run", file=sys.stderr)
        return EXIT_INPUT
    if not args.dry_run and args.output != "table":
        print(f"error: -o {args.output} goes with --dry-run", file=sys.stderr)
        return EXIT_INPUT
    stdin_text = sys.stdin.read() if "-" in args.files else None
    bundle = load_files(args.files, stdin_text=stdin_text)
    print_warnings(bundle.warnings)
    if not bundle.models:
        raise ResourceError(
            [Problem(", ".join(args.files), "no Model in the files given: nothing to load")]
        )
    others = len(bundle.servers) + len(bundle.server_configs) + len(bundle.nodes)
    if others:
        print(
            f"note: ignoring {others} Server/ServerConfig/Node resource(s): "
            "`model load` sends Models only",
            file=sys.stderr,
        )
    specs = [to_model_spec(model) for model in bundle.models]
    if args.dry_run == "client":
        return _checked(specs, args.output)
    sent: dict[str, int] = {}
    with connect(args) as client:
        if args.dry_run == "server":
            return _planned(client, specs, args.output)
        replies, code = _ask_each(specs, client.load)
        for spec, reply in replies:
            sent[spec.name] = reply.version
            change = "requested" if reply.changed else "unchanged"
            print(f"model/{reply.name or spec.name} {change} (version {reply.version})")
        if code == EXIT_SCHEDULER:
            return code
        if args.wait and sent:
            results = wait_models(
                client,
                sent,
                goal="available",
                timeout_s=args.timeout,
                fail_on_schedule_failed=True,
                progress=Progress(),
            )
            code = max(code, report_waited(client, results))
    return code


def _ask_each(
    specs: list[common_pb2.ModelSpec], ask: Callable[[common_pb2.ModelSpec], Reply]
) -> tuple[list[tuple[common_pb2.ModelSpec, Reply]], int]:
    """One call per model, its refusal reported at once; the replies and the exit code so
    far (EXIT_SCHEDULER, and the models after it not asked, when the scheduler is gone)."""
    replies: list[tuple[common_pb2.ModelSpec, Reply]] = []
    code = EXIT_OK
    for spec in specs:
        try:
            replies.append((spec, ask(spec)))
        except ClientError as exc:
            code = max(code, report_client_error(exc, f"model {spec.name}"))
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return replies, EXIT_SCHEDULER
    return replies, code


def _checked(specs: list[common_pb2.ModelSpec], output: str) -> int:
    """--dry-run (client): every file parsed and every rule checked; nothing is sent."""
    if output == "table":
        for spec in specs:
            print(f"model/{spec.name} valid (dry run)")
    else:
        data = {"models": [{"name": spec.name, "spec": spec_to_dict(spec)} for spec in specs]}
        sys.stdout.write(dump(data, output))
    return EXIT_OK


def _planned(client: SchedulerClient, specs: list[common_pb2.ModelSpec], output: str) -> int:
    """--dry-run=server: the scheduler's plan for each model; exit 1 when one would be
    refused (2 invalid, 3 the scheduler could not answer)."""
    plans, code = _ask_each(specs, client.plan)
    if code == EXIT_SCHEDULER:
        return code
    if any(plan.state in REFUSED_STATES for _, plan in plans):
        code = max(code, EXIT_FAILED)
    if output != "table":
        data = {"models": [plan_to_dict(spec, plan) for spec, plan in plans]}
        sys.stdout.write(dump(data, output))
    elif plans:
        servers: list[scheduler_pb2.ServerStatus] = []
        with contextlib.suppress(ClientError):
            servers = client.servers()
        sys.stdout.write(plans_table(plans, servers))
    print("dry run: nothing was loaded or stored", file=sys.stderr)
    return code


def unload_command(args: argparse.Namespace) -> int:
    code = EXIT_OK
    gone: dict[str, int] = {}
    with connect(args) as client:
        for name in args.names:
            try:
                client.unload(name)
            except ClientError as exc:
                if exc.code == grpc.StatusCode.NOT_FOUND:
                    print(f"error: no model named {name!r}", file=sys.stderr)
                    code = max(code, EXIT_FAILED)
                    continue
                code = max(code, report_client_error(exc, f"model {name}"))
                continue
            print(f"model/{name} unloading")
            gone[name] = 0
        if args.wait and gone:
            results = wait_models(
                client, gone, goal="deleted", timeout_s=args.timeout, progress=Progress()
            )
            code = max(code, report_waited(client, results))
    return code


def status_command(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.name:
            try:
                statuses = [client.model(args.name)]
            except ClientError as exc:
                if exc.code == grpc.StatusCode.NOT_FOUND:
                    print(f"error: no model named {args.name!r}", file=sys.stderr)
                    return EXIT_FAILED
                raise
        else:
            statuses = sorted(client.models(), key=lambda status: status.name)
        if args.output != "table":
            data: Any = (
                model_to_dict(statuses[0])
                if args.name
                else {"models": [model_to_dict(status) for status in statuses]}
            )
            sys.stdout.write(dump(data, args.output))
            return EXIT_OK
        try:
            servers = client.servers()
        except ClientError:
            servers = []
        sys.stdout.write(models_table(statuses, servers))
    return EXIT_OK


def wait_command(args: argparse.Namespace) -> int:
    with connect(args) as client:
        try:
            results = wait_models(
                client, {args.name: 0}, goal=args.goal, timeout_s=args.timeout, progress=Progress()
            )
        except ClientError as exc:
            return report_client_error(exc, f"model {args.name}")
        return report_waited(client, results)
