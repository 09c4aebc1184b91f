"""`gpuplace render`: ServerConfig + Server -> StatefulSet and Service manifests."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gpuplace.commands._common import EXIT_OK, add_files_option, guarded, print_warnings
from gpuplace.output import dump
from gpuplace.render import (
    INFERENCE_CONTAINERS,
    STORAGE_SECRETS_PATH,
    TLS_PATH,
    RenderSettings,
    render_bundle,
    storage_secret_problem,
)
from gpuplace.resources import load_files

_DEFAULTS = RenderSettings()


def register(commands: Any) -> None:
    render: argparse.ArgumentParser = commands.add_parser(
        "render",
        help="render Servers (with their ServerConfigs) as Kubernetes manifests",
        description="Merge each Server's podSpec over its ServerConfig's, add the gpuplace agent "
        "sidecar (in place of Seldon Core 2's agent, when the ServerConfig runs it), and print a "
        "StatefulSet and a headless Service per Server. A ServerConfig named mlserver is built "
        "in (used when the files hold none of that name).",
    )
    add_files_option(render, "Server and ServerConfig resources")
    render.add_argument(
        "--agent-image",
        default=_DEFAULTS.agent_image,
        help="image of the agent sidecar, when the pod's agent has none or runs Seldon Core 2's "
        f"agent (default {_DEFAULTS.agent_image})",
    )
    render.add_argument(
        "--scheduler-host",
        default=_DEFAULTS.scheduler_host,
        help=f"SELDON_SCHEDULER_HOST for the agent (default {_DEFAULTS.scheduler_host})",
    )
    render.add_argument(
        "--scheduler-port",
        type=int,
        default=_DEFAULTS.scheduler_port,
        help=f"SELDON_SCHEDULER_PORT for the agent (default {_DEFAULTS.scheduler_port})",
    )
    render.add_argument(
        "--inference-container",
        metavar="NAME",
        default=None,
        help="name of the inference-server container in the pods (default: the first of "
        f"{', '.join(INFERENCE_CONTAINERS)} there is)",
    )
    render.add_argument(
        "--storage-secret",
        metavar="NAME",
        dest="storage_secrets",
        action="append",
        type=_secret_name,
        default=[],
        help="a Secret with the credentials some models' spec.secretName names, mounted "
        f"read-only into every agent at {STORAGE_SECRETS_PATH}/NAME/ (repeatable)",
    )
    render.add_argument(
        "--tls-secret",
        metavar="NAME",
        default=None,
        type=_secret_name,
        help="a Secret as cert-manager writes it (ca.crt, tls.crt, tls.key), mounted into every "
        f"agent at {TLS_PATH}: the agent verifies the scheduler with ca.crt and shows "
        "tls.crt (for a scheduler with TLS, and mutual TLS)",
    )
    render.add_argument(
        "--namespace",
        default=None,
        help="namespace of resources that name none (default: none set)",
    )
    render.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    render.set_defaults(func=guarded(render_command))


def _secret_name(value: str) -> str:
    problem = storage_secret_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def render_command(args: argparse.Namespace) -> int:
    stdin_text = sys.stdin.read() if "-" in args.files else None
    bundle = load_files(args.files, stdin_text=stdin_text)
    settings = RenderSettings(
        agent_image=args.agent_image,
        scheduler_host=args.scheduler_host,
        scheduler_port=args.scheduler_port,
        namespace=args.namespace,
        inference_container=args.inference_container,
        storage_secrets=tuple(args.storage_secrets),
        tls_secret=args.tls_secret or "",
    )
    rendered = render_bundle(bundle, settings)
    print_warnings(rendered.warnings)
    if args.output == "json":
        sys.stdout.write(
            dump({"apiVersion": "v1", "kind": "List", "items": rendered.manifests}, "json")
        )
    else:
        sys.stdout.write("---\n".join(dump(manifest, "yaml") for manifest in rendered.manifests))
    return EXIT_OK
