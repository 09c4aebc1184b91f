"""The timers heap: the due models at the cost of those, the latest time set wins."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from scheduler_service.timers import Timers


def test_the_latest_time_wins_and_due_takes_them_out() -> None:
    timers = Timers()
    timers.put("a", 10.0)
    timers.put("b", 5.0)
    timers.put("a", 3.0)  # earlier now
    timers.put("b", 20.0)  # later now
    timers.put("c", math.inf)  # never
    assert (len(timers), timers.next()) == (2, 3.0)
    assert timers.due(4.0) == {"a"}
    assert timers.due(19.0) == set()
    timers.discard("b")
    assert (timers.due(100.0), timers.next()) == (set(), math.inf)


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.sampled_from([1.0, 2.0, 5.0, 9.0, math.inf])),
        max_size=60,
    ),
    st.floats(min_value=0, max_value=10),
)
def test_due_is_what_a_scan_of_the_latest_times_finds(
    puts: list[tuple[str, float]], now: float
) -> None:
    timers, latest = Timers(), {}
    for name, at in puts:
        timers.put(name, at)
        latest[name] = at
    expected = {name for name, at in latest.items() if at <= now}
    assert timers.next() == min(latest.values(), default=math.inf)
    assert timers.due(now) == expected
    assert timers.due(now) == set()  # taken out
