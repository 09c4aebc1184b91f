"""The `gpuplace` command: one entry point, one sub-command per process or task."""

from __future__ import annotations

import argparse
import logging
import sys

from gpuplace import __version__
from gpuplace.commands import register as register_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuplace",
        description="Place ML models on GPU inference-server replicas that can really hold them.",
    )
    parser.add_argument("--version", action="version", version=f"gpuplace {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
