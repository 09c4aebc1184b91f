"""How secrets in storage URIs and in error texts are kept from being shown: one place for
the agent (its log lines and events) and the scheduler (statuses, its log)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

# Shorter values are not scrubbed: they would blank unrelated words out of messages.
MIN_SECRET_CHARS = 4
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]]+")


def redact(url: str) -> str:
    """`url` without its user:password, its query string and its path parameters (a
    signature, a token), as every message and log line shows a storageUri. A plain path is
    returned unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparseable URI)"
    if not parts.scheme or len(parts.scheme) == 1:  # a path, or a Windows drive letter
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path.split(";", 1)[0], "", ""))


def _variants(secret: str) -> Iterator[str]:
    """The forms in which an error text may quote `secret`: as is, escaped as in a JSON
    text or a repr, and, for one of several lines (a PEM key), each line."""
    yield secret
    yield json.dumps(secret)[1:-1]
    yield repr(secret)[1:-1]
    if "\n" in secret:
        yield from (line.strip() for line in secret.splitlines())


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every URL in it shown as `redact` shows it, and every value of `secrets`
    replaced by `***`."""
    text = _URL_IN_TEXT.sub(lambda match: redact(match.group(0)), text)
    forms = {form for secret in secrets for form in _variants(secret)}
    for form in sorted(forms, key=len, reverse=True):
        if len(form) >= MIN_SECRET_CHARS:
            text = text.replace(form, "***")
    return text


def scrub_uri(text: str, uri: str) -> str:
    """`text` (an error text, an agent's message) scrubbed, with the secrets of `uri`
    (user:password, query, path parameters) taken out wherever else they appear."""
    if not text:  # most events carry none: nothing to parse on the scheduler's hot path
        return text
    try:
        parts = urlsplit(uri)
    except ValueError:
        return scrub(text)
    return scrub(
        text,
        (
            parts.query,
            parts.password or "",
            parts.netloc.rpartition("@")[0],
            parts.path.partition(";")[2],
        ),
    )
