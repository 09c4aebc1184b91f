"""Byte amounts in words, for the reasons the core gives (and everyone else's messages)."""

from __future__ import annotations


def format_bytes(value: int) -> str:
    """A short human form: 20 GiB, 512 MiB, 0 B."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            shown = value / size
            return f"{shown:.0f} {unit}" if shown == int(shown) else f"{shown:.1f} {unit}"
    return f"{value} B"
