"""Kubernetes resource quantities ("360Gi", "40", "500m", "1e9"), parsed as Kubernetes does."""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from placement.units import format_bytes

__all__ = [
    "ALLOWED",
    "MAX_BYTES",
    "QuantityError",
    "bytes_problem",
    "format_bytes",
    "parse_bytes",
    "parse_quantity",
]

# The largest memory quantity accepted anywhere (1 EiB, far above any machine): a replica's
# capacity with its overcommit, and the sums the scheduler keeps, stay well inside the
# 64-bit integers of the wire and the state file.
MAX_BYTES = 2**60
# A quantity is at most this long, and its exponent at most this large either way.
_MAX_TEXT = 64
_MAX_EXPONENT = 30

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_PATTERN = re.compile(
    r"^(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|(?P<exp>[eE][+-]?\d+))?$"
)
ALLOWED = "a number with an optional suffix: Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or e<exponent>"


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a quantity; raise QuantityError with what is allowed."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity; expected {ALLOWED}")
    if isinstance(value, int) and abs(value) >= 10**_MAX_EXPONENT:
        raise QuantityError(f"a number of {value.bit_length()} bits is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise QuantityError(f"{value!r} is not a finite number; expected {ALLOWED}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    if len(value) > _MAX_TEXT:
        raise QuantityError(f"a quantity of {len(value)} characters is too long (at most 64)")
    match = _PATTERN.match(value.strip())
    if not match:
        raise QuantityError(f"{value!r} is not a quantity; expected {ALLOWED}")
    try:
        number = Decimal(match["number"])
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only numbers
        raise QuantityError(f"{value!r} is not a quantity; expected {ALLOWED}") from exc
    if match["exp"]:
        exponent = int(match["exp"][1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(
                f"{value!r}: exponent {exponent} is out of range (-{_MAX_EXPONENT} to "
                f"{_MAX_EXPONENT})"
            )
        return number.scaleb(exponent)
    suffix = match["suffix"] or ""
    return number * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def parse_bytes(value: str | int | float) -> int:
    """A non-negative quantity of bytes, rounded up to a whole byte as Kubernetes does."""
    amount = parse_quantity(value)
    if amount < 0:
        raise QuantityError(f"{value!r} is negative; a memory quantity must be 0 or more")
    if amount > MAX_BYTES:
        raise QuantityError(f"{value!r} is more than 1Ei, the largest memory quantity accepted")
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


def bytes_problem(size: int) -> str | None:
    """Why a byte count received from elsewhere (an agent, a file) is not accepted, or None."""
    if 0 <= size <= MAX_BYTES:
        return None
    return f"{size} is out of range (0 to 1Ei, {MAX_BYTES} bytes)"
