"""The rules of a model spec that both the CLI (before sending) and the scheduler (on
receipt) enforce: one definition, so the two can never disagree."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

# The schemes the agent fetches from: local, HTTP, and object stores (Google Cloud Storage,
# Amazon S3 and compatibles, Azure Blob Storage).
LOCAL_SCHEMES = ("", "file")
OBJECT_STORE_SCHEMES = ("gs", "gcs", "s3", "az", "azureblob")
STORAGE_SCHEMES = (*LOCAL_SCHEMES, "http", "https", *OBJECT_STORE_SCHEMES)
# With a secretName, a scheme may also name the remote its rclone config defines.
_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*$")
MAX_GPUS = 64
# More copies of one model than any fleet runs replicas (and a bound on a pass's work).
MAX_REPLICAS = 10_000


# Field sizes: a model's status (its spec, and a reason per server) goes into every list and
# watch message, which gRPC caps at 4 MiB.
MAX_URI = 4096
MAX_REQUIREMENT = 253
MAX_REQUIREMENTS = 64
MAX_PARAMETERS = 64
MAX_PARAMETER_KEY = 253
MAX_PARAMETER_VALUE = 4096


def uri_scheme(uri: str) -> str:
    """The scheme of a storageUri, lower-case; "" for a local path (a Windows drive letter
    is not a scheme)."""
    try:
        scheme = urlsplit(uri).scheme.lower()
    except ValueError:
        return ""
    return "" if len(scheme) == 1 else scheme


def storage_uri_problem(uri: str, secret_name: str = "") -> str | None:
    """Why `uri` cannot be fetched, or None. An empty URI is not checked here (a spec
    without storageUri is allowed; the YAML layer refuses `storageUri: ""`)."""
    if len(uri) > MAX_URI:
        return f"{len(uri):,} characters; at most {MAX_URI:,}"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in uri):
        return "contains a control character (a newline, a NUL, ...); refused"
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        return f"not a valid URI: {exc}"
    try:
        port = parts.port
    except ValueError:  # its text may hold a piece of a password: not echoed
        return "not a valid URI: what follows the host's ':' is not a port number"
    if not parts.scheme and parts.netloc:
        return "a URI without a scheme ('//host/...'): name one (https://, gs://, ...)"
    scheme = parts.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter is not a scheme we know either
        scheme = "?"
    if scheme in STORAGE_SCHEMES:
        if scheme in ("http", "https") and not parts.hostname:
            return f"{scheme}:// needs a host: {scheme}://<host>/<path>"
        if scheme in OBJECT_STORE_SCHEMES and not parts.netloc:
            return f"{scheme}:// needs a bucket (or container): {scheme}://<bucket>/<path>"
        if scheme in OBJECT_STORE_SCHEMES and (parts.username is not None or port is not None):
            return (
                f"a {scheme}:// URI carries no user, password or port (they would be stored "
                "and shown in clear): name the credentials with secretName"
            )
        return None
    if secret_name and _REMOTE.match(scheme) and parts.netloc:
        if parts.username is not None or port is not None:
            return (
                f"a {scheme}:// URI carries no user, password or port: the remote's "
                "credentials are in secretName's config"
            )
        return None  # the remote named in secretName's config; the agent resolves it
    allowed = ", ".join(f"{s}://" for s in STORAGE_SCHEMES if s)
    extra = "" if secret_name else " (or the remote name of a secretName's config)"
    return f"scheme {parts.scheme!r} is not supported; use a local path, {allowed}{extra}"


def requirement_problem(requirement: str) -> str | None:
    if len(requirement) > MAX_REQUIREMENT:
        return f"a requirement of {len(requirement):,} characters; at most {MAX_REQUIREMENT}"
    if requirement.strip() and "," not in requirement:
        return None
    return f"{requirement!r} must be non-empty and contain no comma"


def requirements_problem(requirements: Sequence[str]) -> str | None:
    """The list as a whole (each one: `requirement_problem`)."""
    if len(requirements) > MAX_REQUIREMENTS:
        return f"{len(requirements)} requirements; at most {MAX_REQUIREMENTS}"
    return None


def parameters_problem(parameters: Sequence[tuple[str, str]]) -> str | None:
    if len(parameters) > MAX_PARAMETERS:
        return f"{len(parameters)} parameters; at most {MAX_PARAMETERS}"
    for key, value in parameters:
        if not key or len(key) > MAX_PARAMETER_KEY:
            return f"a parameter name of {len(key)} characters; 1 to {MAX_PARAMETER_KEY}"
        if len(value) > MAX_PARAMETER_VALUE:
            return (
                f"parameter {key[:64]!r}: a value of {len(value):,} characters; at most "
                f"{MAX_PARAMETER_VALUE:,}"
            )
    return None


def replicas_problem(replicas: int) -> str | None:
    if 1 <= replicas <= MAX_REPLICAS:
        return None
    return f"{replicas} is not allowed; expected 1 to {MAX_REPLICAS:,}"


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


def is_gpu_resource(name: str) -> bool:
    """A Kubernetes resource of NVIDIA's device plugin that gives a container GPUs: whole
    GPUs, time-sliced shares (`renameByDefault`) and MIG profiles (the "mixed" strategy)."""
    return name in ("nvidia.com/gpu", "nvidia.com/gpu.shared") or name.startswith("nvidia.com/mig-")
