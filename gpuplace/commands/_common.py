"""What every client command shares: exit codes, options, error reporting, durations."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import grpc

from contract.tls import ClientTls, TlsError
from gpuplace.client import (
    DEFAULT_SCHEDULER,
    SCHEDULER_ENV,
    AddressError,
    ClientError,
    SchedulerClient,
    scheduler_address,
)
from gpuplace.output import FORMATS
from gpuplace.resources import Problem, ResourceError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_SCHEDULER = 3

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from `60s`, `5m`, `1m30s`, `500ms`, `2h` or a bare number of seconds."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
        position = 0
        total = 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != position:
                break
            total += float(match[1]) * _UNITS[match[2]]
            position = match.end()
        if value and position == len(value):
            seconds = total
    if seconds < 0 or not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; expected e.g. 60s, 5m, 1m30s, 500ms or seconds"
        )
    return seconds


# The flags that say how to reach the scheduler, and their environment variables.
_TLS_FLAGS = {
    "tls_ca": ("--tls-ca", "GPUPLACE_TLS_CA", "CA (PEM) that signed the scheduler's certificate: "
               "connect with TLS and verify it"),
    "tls_cert": ("--tls-cert", "GPUPLACE_TLS_CERT", "your certificate (PEM), for a scheduler "
                 "that asks for one (mutual TLS)"),
    "tls_key": ("--tls-key", "GPUPLACE_TLS_KEY", "your certificate's private key (PEM)"),
    "tls_server_name": ("--tls-server-name", "GPUPLACE_TLS_SERVER_NAME", "the name the "
                        "scheduler's certificate carries, when it is not the host connected to"),
    "token_file": ("--token-file", "GPUPLACE_TOKEN_FILE", "file holding the bearer token the "
                   "scheduler's client API asks for"),
}  # fmt: skip


def add_scheduler_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        metavar="HOST:PORT",
        default=None,
        help=f"the scheduler's client API [env {SCHEDULER_ENV}; default {DEFAULT_SCHEDULER}]",
    )
    for dest, (flag, env, what) in _TLS_FLAGS.items():
        parser.add_argument(flag, dest=dest, default=None, help=f"{what} [env {env}]")


def connect(args: argparse.Namespace) -> SchedulerClient:
    """A client of the scheduler the flags (else the environment) name, over TLS and with
    a bearer token when they say so; AddressError or ConnectionSetupError when they are
    not usable."""
    given = {
        dest: getattr(args, dest, None) or os.environ.get(env) or None
        for dest, (_, env, _) in _TLS_FLAGS.items()
    }
    tls = None
    if given["tls_ca"]:
        tls = ClientTls(
            Path(given["tls_ca"]),
            Path(given["tls_cert"]) if given["tls_cert"] else None,
            Path(given["tls_key"]) if given["tls_key"] else None,
            given["tls_server_name"] or "",
        )
    elif given["tls_cert"] or given["tls_key"]:
        raise ConnectionSetupError("--tls-cert and --tls-key need --tls-ca (GPUPLACE_TLS_CA)")
    token = ""
    if given["token_file"]:
        try:
            token = Path(given["token_file"]).read_text().strip()
        except OSError as exc:
            raise ConnectionSetupError(
                f"--token-file {given['token_file']}: {exc.strerror or exc}"
            ) from None
    try:
        return SchedulerClient(scheduler_address(args.scheduler), tls=tls, token=token)
    except TlsError as exc:
        raise ConnectionSetupError(str(exc)) from None


class ConnectionSetupError(ValueError):
    """TLS or token settings that cannot be used."""


def add_output_option(parser: argparse.ArgumentParser, choices: tuple[str, ...] = FORMATS) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=choices,
        default=choices[0],
        help=f"output format (default {choices[0]})",
    )


def add_files_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        metavar="FILE",
        action="extend",
        nargs="+",
        required=True,
        help=f"{what} (multi-document YAML; repeatable; - reads standard input)",
    )


def print_warnings(warnings: list[Problem]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def report_input_error(error: ResourceError) -> int:
    count = len(error.problems)
    print(f"error: {count} problem{'s' if count != 1 else ''} in the input:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_INPUT


def exit_code_for(error: ClientError) -> int:
    if error.code in (grpc.StatusCode.INVALID_ARGUMENT,):
        return EXIT_INPUT
    if error.code in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        return EXIT_FAILED
    return EXIT_SCHEDULER


def report_client_error(error: ClientError, what: str = "") -> int:
    prefix = f"{what}: " if what else ""
    print(f"error: {prefix}{error.describe()}", file=sys.stderr)
    return exit_code_for(error)


def guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Map the two expected failures to their exit codes with a one-line message."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ResourceError as exc:
            return report_input_error(exc)
        except ClientError as exc:
            return report_client_error(exc)
        except (AddressError, ConnectionSetupError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT

    run.__doc__ = command.__doc__
    return run
