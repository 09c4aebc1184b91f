"""When each model next needs a pass without any event: a heap with lazy deletion, so that
a pass finds the due models at the cost of those, not of every model."""

from __future__ import annotations

import heapq
import math


class Timers:
    def __init__(self) -> None:
        self._at: dict[str, float] = {}  # the current time of each model (the truth)
        self._heap: list[tuple[float, str]] = []  # may hold times overtaken since

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, name: object) -> bool:
        return name in self._at

    def put(self, name: str, at: float) -> None:
        """`name` needs a pass at `at` (inf: never), instead of any time set before."""
        if self._at.get(name) == at:
            return
        if math.isinf(at):
            self._at.pop(name, None)
            return
        self._at[name] = at
        heapq.heappush(self._heap, (at, name))
        if len(self._heap) > 2 * len(self._at) + 1024:  # mostly overtaken: rebuild
            self._heap = [(when, key) for key, when in self._at.items()]
            heapq.heapify(self._heap)

    def discard(self, name: str) -> None:
        self._at.pop(name, None)

    def due(self, now: float) -> set[str]:
        """The models due at `now`, taken out (their pass sets their next time)."""
        found = set()
        while self._heap and self._heap[0][0] <= now:
            at, name = heapq.heappop(self._heap)
            if self._at.get(name) == at:
                del self._at[name]
                found.add(name)
        return found

    def next(self) -> float:
        """The earliest time set (inf: none)."""
        while self._heap and self._at.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else math.inf
