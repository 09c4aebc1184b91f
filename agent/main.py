"""Placeholder: replaced by the agent work."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("agent", help="run the agent sidecar")
    parser.set_defaults(func=lambda args: 2)
