"""Memory quantities: Kubernetes' syntax, and bounds that keep every sum inside 64 bits."""

from __future__ import annotations

import pytest

from contract.quantity import MAX_BYTES, QuantityError, parse_bytes


@pytest.mark.parametrize(
    ("written", "expected"),
    [("1Gi", 2**30), ("1.5Gi", 3 * 2**29), ("1e9", 10**9), ("500m", 1), ("1Ei", 2**60), (7, 7)],
)
def test_quantities_are_read_as_kubernetes_reads_them(written: str | int, expected: int) -> None:
    assert parse_bytes(written) == expected


@pytest.mark.parametrize(
    ("written", "says"),
    [
        ("2Ei", "more than 1Ei"),
        ("16Ei", "more than 1Ei"),
        ("2e19", "more than 1Ei"),
        ("1e400", "exponent 400 is out of range"),
        ("1e999999999", "exponent 999999999 is out of range"),
        ("9" * 4400, "4400 characters is too long"),
        pytest.param(10**4400, "bits is too large", id="a-4400-digit-int"),
        (float("inf"), "not a finite number"),
        (float("nan"), "not a finite number"),
        ("-1Gi", "negative"),
        ("12GB", "is not a quantity"),
    ],
)
def test_a_quantity_out_of_bounds_is_refused_saying_why(written: str | float, says: str) -> None:
    with pytest.raises(QuantityError, match=says):
        parse_bytes(written)


def test_the_bound_leaves_room_for_overcommit_in_64_bits() -> None:
    assert MAX_BYTES * (100 + 1000) // 100 < 2**64
