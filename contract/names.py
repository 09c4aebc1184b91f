"""Names that become paths, labels or keys: DNS-1123 rules, checked before any use."""

from __future__ import annotations

import re

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_RULE = (
    "a DNS-1123 label: at most 63 characters, lower-case letters, digits and '-', "
    "starting and ending with a letter or digit"
)


class InvalidName(ValueError):
    """A name that breaks the DNS-1123 label rule."""


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL.match(value))


SUBDOMAIN_RULE = (
    "a DNS-1123 subdomain: at most 253 characters, lower-case letters, digits, '-' and '.', "
    "each '.'-separated part starting and ending with a letter or digit"
)
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_dns1123_subdomain(value: str) -> bool:
    """A Kubernetes object name (a Secret's, a Node's); never '..', never a '/'."""
    return len(value) <= 253 and bool(_SUBDOMAIN.match(value))


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: str, limit: int = 64) -> str:
    """`value` quoted for a message or a log line: control characters escaped (no forged
    lines), and cut after `limit` characters (no megabyte echoes)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value):,} characters)"


def check_name(value: str, field: str) -> str:
    """Return `value` when it is a DNS-1123 label; raise naming the field and the rule."""
    if not is_dns1123_label(value):
        raise InvalidName(f"{field}: {shown(value)} is not {LABEL_RULE}")
    return value


_ORDINAL = re.compile(r"^(?P<server>.+)-(?P<index>\d+)$")


def replica_id(server: str, index: int) -> str:
    """How every log line, message and table names a replica: `<server>-<index>`, the name of
    its pod (`mlserver-0`)."""
    return f"{server}-{index}"


def split_pod_name(pod_name: str) -> tuple[str, int]:
    """The inverse of `replica_id`: `mlserver-3` → (`mlserver`, 3); a name without an
    ordinal is replica 0."""
    match = _ORDINAL.match(pod_name)
    if match:
        return match["server"], int(match["index"])
    return pod_name, 0
