"""What follows a start of a Slurm job, as a pure function of the run's history, how the start ended and the restart
budget: train or not, requeue, leave it to an elastic run's next job, give up, or end."""

from __future__ import annotations

import pytest

from launch.rundir.history import Event
from slurm.task import Next, after, after_start


def history(*kinds: str) -> list[dict]:
    return [{"event": kind, "time": float(index)} for index, kind in enumerate(kinds)]


@pytest.mark.parametrize(
    ("events", "budget", "expected"),
    [
        (history("launch"), 0, Next.train),
        (history("launch", "start", "stopped"), 0, Next.train),  # a clean stop is no failure
        (history("launch", "start", "start"), 1, Next.train),  # one failure, one restart allowed
        (history("launch", "start", "start"), 0, Next.give_up),
        (history("launch", "start", "start", "start", "launch", "start"), 0, Next.train),  # a launch starts again
        (history("launch", "start", "finished"), 5, Next.nothing),
        (history("launch", "start", "start", "gave_up"), 5, Next.nothing),
    ],
)
def test_a_start_trains_unless_the_run_ended_or_spent_its_budget(events, budget, expected) -> None:
    assert after_start(events, budget) == expected


@pytest.mark.parametrize(
    ("ending", "events", "budget", "chained", "kill_switch", "expected"),
    [
        (None, history("launch"), 1, False, False, Next.requeue),
        (None, history("launch"), 1, True, False, Next.next_job),
        (None, history("launch"), 0, False, False, Next.give_up),  # max_restarts=0: the first failure ends it
        (None, history("launch", "start", "start", "start"), 2, True, False, Next.give_up),
        (None, history("launch", "start", "stopped", "start", "stopped"), 1, False, False, Next.requeue),
        (Event.stopped, history("launch"), 0, False, False, Next.requeue),  # a time limit costs no restart
        (Event.stopped, history("launch"), 0, True, False, Next.next_job),
        (Event.stopped, history("launch"), 3, False, True, Next.end),  # the STOP file: no coming back
        (Event.stopped, history("launch"), 3, True, True, Next.end),
        (Event.finished, history("launch", "start", "start"), 3, False, False, Next.end),
        (Event.finished, history("launch"), 3, True, False, Next.end),
    ],
)
def test_what_follows_a_start(ending, events, budget, chained, kill_switch, expected) -> None:
    assert after(ending, events, budget, chained, kill_switch) == expected
