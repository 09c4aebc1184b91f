"""When the reconcile loop should wait a little before a pass, to take more into it.

A pass costs mostly per pass (a transaction, the usage table, the commands it sends), not
per request or event in it. While work trickles in, a pass right away is best: nothing
waits. Under a flood from many sources at once (many clients' calls, many agents' events),
work arrives faster than passes end, each pass takes one or two items, and the loop spends
itself on passes: then a pass that waits a few milliseconds takes tens of items for nearly
the cost of one. The loop is flooded when it has hardly had to wait for work lately and its
passes have taken more than one item each on average. One busy source (a client that sends
its next call as soon as the last is answered) is not a flood: its passes take one item
each however long they wait, so they never wait.
"""

from __future__ import annotations

# How long a pass waits for more when the loop is flooded.
BATCH_S = 0.005
# The loop is flooded when, over the last window, it waited for work less than this share
# of the time, and its passes that took work took more than this many items on average.
WINDOW_S = 0.1
FLOODED_BELOW = 0.2
SHARED_ABOVE = 1.2


class Pacing:
    """The loop's recent waits for work and pass sizes, measured over windows of `WINDOW_S`."""

    def __init__(self, now: float) -> None:
        self._start = now
        self._waited = 0.0
        self._items = 0
        self._passes = 0
        self._flooded = False

    def took(self, items: int) -> None:
        """A pass took `items` requests and events (passes without any are not counted)."""
        if items:
            self._items += items
            self._passes += 1

    def waited(self, started: float, ended: float) -> None:
        """The loop waited for work from `started` to `ended` (monotonic seconds)."""
        self._waited += max(0.0, ended - started)
        span = ended - self._start
        if span >= WINDOW_S:
            busy = self._waited < FLOODED_BELOW * span
            self._flooded = busy and self._items > SHARED_ABOVE * self._passes
            self._start, self._waited, self._items, self._passes = ended, 0.0, 0, 0

    def delay(self) -> float:
        """How long the next pass waits for more work (0: none)."""
        return BATCH_S if self._flooded else 0.0
