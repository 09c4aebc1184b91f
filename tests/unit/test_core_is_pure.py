"""The placement core does no I/O: every module it imports, transitively, is pure.

Parses the source (nothing is imported), follows first-party imports, and checks every
imported module against an allow-list of pure standard-library modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "placement"

FORBIDDEN = frozenset(
    {
        "aiohttp",
        "aiosqlite",
        "asyncio",
        "grpc",
        "importlib",
        "logging",
        "os",
        "prometheus_client",
        "socket",
        "sqlite3",
        "subprocess",
        "threading",
        "time",
    }
)
PURE_STDLIB = frozenset(
    {
        "__future__",
        "collections",
        "dataclasses",
        "decimal",
        "enum",
        "functools",
        "heapq",
        "itertools",
        "math",
        "operator",
        "re",
        "typing",
    }
)
# Pure third-party data structures the core may use (sorted orders kept in memory).
PURE_THIRD_PARTY = frozenset({"sortedcontainers"})
# First-party modules the core may use; their own imports are checked too.
FIRST_PARTY_ALLOWED = ("placement",)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module named by an import statement anywhere in `source` (relative ones resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0]
            if node.module:
                found.add(f"{base}.{node.module}")
            else:  # `from . import filters` names modules
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def top(module: str) -> str:
    return module.partition(".")[0]


def path_of(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def first_party(module: str) -> bool:
    return top(module) in {
        "placement",
        "contract",
        "scheduler_service",
        "gpuplace",
        "agent",
        "protos",
    }


def parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts))}


def allowed(module: str) -> bool:
    if first_party(module):
        return any(module == ok or module.startswith(f"{ok}.") for ok in FIRST_PARTY_ALLOWED)
    return top(module) in PURE_STDLIB | PURE_THIRD_PARTY


def transitive_imports(start: list[Path]) -> dict[str, set[str]]:
    """module name -> what it imports, for the core and the first-party modules it reaches."""
    seen: dict[str, set[str]] = {}
    pending = [(module_name(path), path) for path in start]
    while pending:
        module, path = pending.pop()
        if module in seen:
            continue
        seen[module] = imports_of(path.read_text(), module, is_package=path.name == "__init__.py")
        reached = {name for name in seen[module] if first_party(name) and allowed(name)}
        reached |= parents(module)  # importing a module runs its packages' __init__ too
        pending.extend((name, path_of(name)) for name in reached if path_of(name).exists())
    return seen


CORE_MODULES = sorted(CORE.glob("*.py"))
REACHED = transitive_imports(CORE_MODULES)


def test_core_has_the_expected_modules() -> None:
    names = {path.stem for path in CORE_MODULES}
    assert {"__init__", "types", "filters", "sorters", "schedule", "units"} <= names
    # Only its own modules: nothing first-party outside the core is reached.
    assert {module.partition(".")[0] for module in REACHED} == {"placement"}


@pytest.mark.parametrize("module", sorted(REACHED))
def test_module_imports_nothing_forbidden(module: str) -> None:
    bad = {name for name in REACHED[module] if top(name) in FORBIDDEN}
    assert not bad, f"{module} imports {sorted(bad)}: the placement core must stay pure"


@pytest.mark.parametrize("module", sorted(REACHED))
def test_module_imports_only_pure_modules(module: str) -> None:
    unknown = {name for name in REACHED[module] if not allowed(name)}
    assert not unknown, f"{module} imports {sorted(unknown)}, not on the pure allow-list"


def test_allow_list_excludes_the_forbidden_modules() -> None:
    assert not FORBIDDEN & PURE_STDLIB


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "from time import monotonic",
        "import asyncio as aio",
        "from logging import getLogger",
        "def f():\n    import sqlite3\n",
        "try:\n    import grpc\nexcept ImportError:\n    pass\n",
        "from prometheus_client import Counter",
    ],
)
def test_the_check_catches_io_imports(source: str) -> None:
    names = imports_of(source, "placement.example")
    assert any(top(name) in FORBIDDEN for name in names)
    assert not all(allowed(name) for name in names)


def test_the_check_resolves_relative_imports() -> None:
    names = imports_of("from . import filters\nfrom .. import wire", "placement.sub.a")
    assert names == {"placement.sub.filters", "placement.wire"}
    assert not allowed("contract.wire")
    assert not allowed("scheduler_service.store")
