"""`gpuplace server status`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gpuplace.commands._common import (
    EXIT_FAILED,
    EXIT_OK,
    add_output_option,
    add_scheduler_option,
    connect,
    guarded,
)
from gpuplace.output import dump, server_to_dict, servers_table


def register(commands: Any) -> None:
    server: argparse.ArgumentParser = commands.add_parser(
        "server",
        help="inspect inference servers",
        description="Inference servers on the scheduler.",
    )
    actions = server.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        help="replicas, capabilities, host memory and per-GPU memory of every server (or one)",
    )
    status.add_argument("name", nargs="?", metavar="NAME")
    add_output_option(status)
    add_scheduler_option(status)
    status.set_defaults(func=guarded(status_command))


def status_command(args: argparse.Namespace) -> int:
    with connect(args) as client:
        servers = sorted(client.servers(), key=lambda server: server.name)
    if args.name:
        servers = [server for server in servers if server.name == args.name]
        if not servers:
            print(f"error: no server named {args.name!r}", file=sys.stderr)
            return EXIT_FAILED
    if args.output == "table":
        sys.stdout.write(servers_table(servers))
        return EXIT_OK
    data: Any = (
        server_to_dict(servers[0])
        if args.name
        else {"servers": [server_to_dict(server) for server in servers]}
    )
    sys.stdout.write(dump(data, args.output))
    return EXIT_OK
