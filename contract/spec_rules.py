"""The rules of a model spec that both the CLI (before sending) and the scheduler (on
receipt) enforce: one definition, so the two can never disagree."""

from __future__ import annotations

from urllib.parse import urlsplit

STORAGE_SCHEMES = ("", "file", "http", "https")
MAX_GPUS = 64


def storage_uri_problem(uri: str) -> str | None:
    scheme = urlsplit(uri).scheme
    if scheme in STORAGE_SCHEMES:
        return None
    return f"scheme {scheme!r} is not supported; use a local path, file://, http:// or https://"


def requirement_problem(requirement: str) -> str | None:
    if requirement.strip() and "," not in requirement:
        return None
    return f"{requirement!r} must be non-empty and contain no comma"


def replicas_problem(replicas: int) -> str | None:
    return None if replicas >= 1 else f"{replicas} is not allowed; expected 1 or more"


def min_replicas_problem(min_replicas: int, replicas: int) -> str | None:
    if 0 <= min_replicas <= replicas:
        return None
    return f"{min_replicas} is not allowed; expected 0 to replicas ({replicas})"


def gpus_problem(gpus: int, gpu_memory_set: bool) -> str | None:
    if not 0 <= gpus <= MAX_GPUS:
        return f"{gpus} is not allowed; expected 1 to {MAX_GPUS}"
    if gpus and not gpu_memory_set:
        return "needs gpuMemory: the GPU memory the model needs on each device"
    return None
