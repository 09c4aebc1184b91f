"""The reconcile loop's pacing: passes right away while work trickles in, a short wait for
more while it floods in, and back to right away when it ebbs."""

from __future__ import annotations

from scheduler_service.pacing import BATCH_S, FLOODED_BELOW, WINDOW_S, Pacing


def waits(pacing: Pacing, start: float, span: float, idle_share: float, steps: int = 20) -> float:
    """`span` seconds from `start` in `steps` waits, idle for `idle_share` of each step."""
    step = span / steps
    for number in range(steps):
        at = start + number * step
        pacing.waited(at, at + step * idle_share)
    return start + span


def test_a_loop_that_waits_for_work_passes_at_once() -> None:
    pacing = Pacing(0.0)
    assert pacing.delay() == 0.0
    waits(pacing, 0.0, 3 * WINDOW_S, idle_share=0.9)
    assert pacing.delay() == 0.0


def test_a_flooded_loop_waits_for_more_and_stops_once_the_flood_ebbs() -> None:
    pacing = Pacing(0.0)
    now = waits(pacing, 0.0, WINDOW_S / 2, idle_share=0.0)
    assert pacing.delay() == 0.0  # judged per window: not after half of one
    now = waits(pacing, now, WINDOW_S, idle_share=FLOODED_BELOW / 2)
    assert pacing.delay() == BATCH_S
    waits(pacing, now, 2 * WINDOW_S, idle_share=FLOODED_BELOW * 2)
    assert pacing.delay() == 0.0


def test_one_long_wait_ends_a_flood() -> None:
    pacing = Pacing(0.0)
    now = waits(pacing, 0.0, 2 * WINDOW_S, idle_share=0.0)
    assert pacing.delay() == BATCH_S
    pacing.waited(now, now + 1.0)  # nothing came for a second
    assert pacing.delay() == 0.0
