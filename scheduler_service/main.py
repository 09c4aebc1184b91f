"""Placeholder: replaced by the scheduler service."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("scheduler", help="run the scheduler")
    parser.set_defaults(func=lambda args: 2)
