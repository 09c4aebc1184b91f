"""The reconcile loop's pacing: passes right away while work trickles in or comes from one
busy source, a short wait for more while it floods in from many, and back to right away
when the flood ebbs."""

from __future__ import annotations

from scheduler_service.pacing import BATCH_S, FLOODED_BELOW, SHARED_ABOVE, WINDOW_S, Pacing


def run(
    pacing: Pacing, start: float, span: float, *, idle_share: float, items: float, steps: int = 20
) -> float:
    """`span` seconds from `start`: `steps` passes of `items` each (on average), the loop
    idle for `idle_share` of the time."""
    step = span / steps
    taken = 0.0
    for number in range(steps):
        at = start + number * step
        pacing.waited(at, at + step * idle_share)
        taken += items
        pacing.took(int(taken))
        taken -= int(taken)
    return start + span


def test_a_loop_that_waits_for_work_passes_at_once() -> None:
    pacing = Pacing(0.0)
    assert pacing.delay() == 0.0
    run(pacing, 0.0, 3 * WINDOW_S, idle_share=0.9, items=3)
    assert pacing.delay() == 0.0


def test_one_busy_source_never_waits() -> None:
    """A client that sends its next call once the last is answered keeps the loop busy, one
    item per pass: waiting would add to every call and batch nothing."""
    pacing = Pacing(0.0)
    run(pacing, 0.0, 5 * WINDOW_S, idle_share=0.0, items=1)
    assert pacing.delay() == 0.0


def test_a_flood_waits_for_more_and_stops_once_it_ebbs() -> None:
    pacing = Pacing(0.0)
    now = run(pacing, 0.0, WINDOW_S / 2, idle_share=0.0, items=1.5)
    assert pacing.delay() == 0.0  # judged per window: not after half of one
    now = run(pacing, now, WINDOW_S, idle_share=FLOODED_BELOW / 2, items=SHARED_ABOVE + 0.3)
    assert pacing.delay() == BATCH_S
    now = run(pacing, now, WINDOW_S, idle_share=0.0, items=30)  # batched: still flooded
    assert pacing.delay() == BATCH_S
    run(pacing, now, 2 * WINDOW_S, idle_share=FLOODED_BELOW * 2, items=30)
    assert pacing.delay() == 0.0


def test_one_long_wait_ends_a_flood() -> None:
    pacing = Pacing(0.0)
    now = run(pacing, 0.0, 2 * WINDOW_S, idle_share=0.0, items=2)
    assert pacing.delay() == BATCH_S
    pacing.waited(now, now + 1.0)  # nothing came for a second
    assert pacing.delay() == 0.0
