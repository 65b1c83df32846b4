"""The periodic checkpoint at rest rides on the tick that wrote the held rows (issue 13: an insert
per table fewer every few seconds); busy, it keeps its own clock."""

from __future__ import annotations

from trainmon.stream_processors.checkpoint_cadence import CheckpointCadence


def run(cadence: CheckpointCadence, clock: list[float], seconds: int, written_every: int,
        at_rest: bool) -> list[int]:
    """The seconds at which a checkpoint ran: ticks every second (the held rows all written every
    `written_every`), the timer every interval, as app.py calls them."""
    ran = []
    for second in range(1, seconds + 1):
        clock[0] = float(second)
        checkpoint = cadence.after_tick(second % written_every == 0, at_rest)
        if second % cadence.interval_s == 0:
            checkpoint |= cadence.on_timer(at_rest)
        if checkpoint:
            cadence.began()
            ran.append(second)
    return ran


def test_at_rest_the_checkpoint_waits_for_a_tick_that_wrote_every_held_row() -> None:
    clock = [0.0]
    cadence = CheckpointCadence(5, clock=lambda: clock[0])
    # everything written every 6 s (training rows every 2 s, hardware every 6 s): checkpoints there
    assert run(cadence, clock, 30, 6, at_rest=True) == [6, 12, 18, 24, 30]


def test_at_rest_the_timer_steps_in_when_no_tick_wrote_everything_for_one_and_a_half_intervals() -> None:
    clock = [0.0]
    cadence = CheckpointCadence(5, clock=lambda: clock[0])
    assert run(cadence, clock, 30, 1000, at_rest=True) == [10, 20, 30]


def test_busy_the_timer_checkpoints_every_interval_and_the_tick_never() -> None:
    clock = [0.0]
    cadence = CheckpointCadence(5, clock=lambda: clock[0])
    assert run(cadence, clock, 30, 1, at_rest=False) == [5, 10, 15, 20, 25, 30]
