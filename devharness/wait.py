"""Poll until a condition holds or a deadline passes — never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until_sync(
    check: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Return the first truthy result of `check`; fail with `what` after `timeout` seconds
    (an ``AssertionError`` that shows the last result). Sleeps ``interval`` between checks."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} (last: {result!r})"
            )
        time.sleep(interval)
