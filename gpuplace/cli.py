"""The `gpuplace` command: one entry point, one sub-command per process or task."""

from __future__ import annotations

import argparse
import os
import sys

from contract.logs import LOG_FORMATS, LOG_LEVELS, configure_logging
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
        default=os.environ.get("GPUPLACE_LOG_LEVEL", "INFO").upper(),
        choices=LOG_LEVELS,
        help="log verbosity [env GPUPLACE_LOG_LEVEL; default INFO]",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("GPUPLACE_LOG_FORMAT", "text").lower(),
        choices=LOG_FORMATS,
        help="text for people, or json: one object per line with time, level, logger, "
        "message and, where a line is about them, model, version, server, replica, reason "
        "[env GPUPLACE_LOG_FORMAT; default text]",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A default read from the environment is not checked against `choices` by argparse.
    if args.log_level not in LOG_LEVELS:
        parser.error(f"GPUPLACE_LOG_LEVEL={args.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    if args.log_format not in LOG_FORMATS:
        parser.error(
            f"GPUPLACE_LOG_FORMAT={args.log_format!r}: use one of {', '.join(LOG_FORMATS)}"
        )
    configure_logging(args.log_level, args.log_format, sys.stderr)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
