"""Create MLServer's own virtualenv (once) and print the path of its ``mlserver`` program.

Usage: ``python scripts/mlserver_venv.py [--path DIR]`` (default ``<repo>/.venv-mlserver``,
or ``$GPUPLACE_MLSERVER_VENV``). Progress goes to stderr, the path to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devharness.mlserver import default_venv_path, ensure_mlserver_venv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=default_venv_path(), help="venv folder")
    args = parser.parse_args(argv)
    print(ensure_mlserver_venv(args.path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
