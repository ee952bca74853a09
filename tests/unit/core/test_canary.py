"""The step schedule's decisions, as a table."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from controller.core.assess import begin, due
from controller.core.canary import CanaryPlan, Next, Step, after_look, canary_replicas
from controller.core.judge import Outcome

PLAN = CanaryPlan(
    steps=(Step(10, timedelta(minutes=5)), Step(25, timedelta(minutes=5)), Step(50, timedelta(minutes=10))),
    total_replicas=10, interval=timedelta(minutes=1), max_bad_looks=2, min_step_trials=1000,
)  # fmt: skip
M = timedelta(minutes=1)


@pytest.mark.parametrize(
    "step, elapsed, trials, outcome, bad, expect, bad_after",
    [
        (0, 1 * M, 5000, Outcome.FAIL, 0, Next.ROLLBACK, 0),
        (2, 20 * M, 99999, Outcome.FAIL, 1, Next.ROLLBACK, 0),
        (0, 1 * M, 5000, Outcome.NO_DATA, 0, Next.WAIT, 1),
        (0, 1 * M, 5000, Outcome.ERROR, 1, Next.WAIT, 2),
        (0, 1 * M, 5000, Outcome.ERROR, 2, Next.ROLLBACK, 3),
        (1, 9 * M, 5000, Outcome.NO_DATA, 2, Next.ROLLBACK, 3),
        (0, 4 * M, 5000, Outcome.PASS, 1, Next.WAIT, 0),  # step too young; a good look clears the streak
        (0, 5 * M, 999, Outcome.PASS, 0, Next.WAIT, 0),  # too few canary trials in the step
        (0, 5 * M, 1000, Outcome.INCONCLUSIVE, 0, Next.ADVANCE, 0),  # not shown worse: more traffic
        (1, 6 * M, 1000, Outcome.PASS, 0, Next.ADVANCE, 0),
        (2, 30 * M, 99999, Outcome.INCONCLUSIVE, 0, Next.WAIT, 0),  # last step: no promotion without PASS
        (2, 10 * M, 1000, Outcome.PASS, 0, Next.PROMOTE, 0),
    ],
)  # fmt: skip
def test_after_look(step, elapsed, trials, outcome, bad, expect, bad_after):
    move = after_look(PLAN, step, elapsed, trials, outcome, "why", bad)
    assert (move.next, move.bad_looks) == (expect, bad_after)
    assert "why" in move.reason


@pytest.mark.parametrize("weight, total, replicas", [(0, 10, 0), (1, 10, 1), (10, 10, 1), (25, 10, 3), (50, 10, 5),
                                                      (100, 10, 10), (10, 3, 1), (50, 1, 1)])  # fmt: skip
def test_canary_replicas(weight, total, replicas):
    assert canary_replicas(weight, total) == replicas


def test_due():
    t0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
    fresh = begin(t0)
    looked = replace(fresh, last_look_at=t0)
    assert due(fresh, t0, M)  # never looked
    assert due(looked, t0 + M, M) and not due(looked, t0 + M - timedelta(seconds=1), M)
