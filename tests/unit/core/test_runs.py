from __future__ import annotations

from datetime import timedelta

import pytest

from controller.core.runs import (
    LIVE,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Phase,
    add_reasons,
    held,
    new_run,
    overdue,
    transition,
)
from tests.unit.core.helpers import T0

DEADLINES = {p: timedelta(minutes=10) for p in LIVE}
P = Phase

ALLOWED = [
    (P.QUEUED, P.TRIGGERING), (P.QUEUED, P.CANCELED), (P.QUEUED, P.FAILED),
    (P.TRIGGERING, P.TRAINING), (P.TRIGGERING, P.FAILED), (P.TRIGGERING, P.CANCELED),
    (P.TRAINING, P.DEPLOYING), (P.TRAINING, P.FAILED), (P.TRAINING, P.CANCELED),
    (P.DEPLOYING, P.ANALYZING), (P.DEPLOYING, P.ROLLING_BACK), (P.DEPLOYING, P.SUCCEEDED),  # no canary: retrain-only
    (P.ANALYZING, P.PROMOTING), (P.ANALYZING, P.ROLLING_BACK),
    (P.PROMOTING, P.SUCCEEDED), (P.PROMOTING, P.ROLLING_BACK), (P.PROMOTING, P.FAILED),
    (P.ROLLING_BACK, P.ROLLED_BACK), (P.ROLLING_BACK, P.FAILED),
]  # fmt: skip


def run_in(phase: Phase):
    run, _ = new_run("r1", "recsys", P.TRIGGERING, ("drift",), T0, DEADLINES, "accepted")
    return run if phase is P.TRIGGERING else run.__class__(**{**run.__dict__, "phase": phase})


@pytest.mark.parametrize("src,dst", [(s, d) for s in Phase for d in Phase])
def test_transition_table(src, dst):
    run = run_in(src)
    if (src, dst) in ALLOWED:
        moved, t = transition(run, dst, "because", T0 + timedelta(minutes=1), DEADLINES)
        assert moved.phase is dst and t.from_phase is src and t.to_phase is dst and t.cause == "because"
        assert (moved.ended_at is not None) == dst.terminal
        assert (moved.deadline_at is None) == dst.terminal
    else:
        with pytest.raises(IllegalTransition):
            transition(run, dst, "because", T0, DEADLINES)


def test_table_matches_the_documented_list():
    assert {(s, d) for s, ds in TRANSITIONS.items() for d in ds} == set(ALLOWED)


def test_terminal_phases_have_no_way_out():
    assert all(not TRANSITIONS[p] for p in TERMINAL)


def test_a_transition_needs_a_cause():
    with pytest.raises(IllegalTransition):
        transition(run_in(P.TRIGGERING), P.TRAINING, "", T0, DEADLINES)


def test_runs_start_queued_or_triggering_only():
    with pytest.raises(IllegalTransition):
        new_run("r", "m", P.TRAINING, (), T0, DEADLINES, "x")


@pytest.mark.parametrize(
    "phase,expected",
    [
        (P.QUEUED, P.FAILED),
        (P.TRIGGERING, P.FAILED),
        (P.TRAINING, P.FAILED),
        (P.DEPLOYING, P.ROLLING_BACK),  # a canary may be serving: roll it back, never just drop it
        (P.ANALYZING, P.ROLLING_BACK),
        (P.PROMOTING, P.FAILED),
        (P.ROLLING_BACK, P.FAILED),
    ],
)
def test_deadline_moves(phase, expected):
    run = run_in(phase)
    assert overdue(run, T0 + timedelta(minutes=9)) is None
    to, cause = overdue(run, T0 + timedelta(minutes=10))
    assert to is expected
    assert cause == f"deadline: {phase} took longer than 10m"
    assert expected in TRANSITIONS[phase]


def test_terminal_run_is_never_overdue():
    run, _ = transition(run_in(P.TRAINING), P.FAILED, "x", T0, DEADLINES)
    assert overdue(run, T0 + timedelta(days=10)) is None


def test_add_reasons_keeps_order_and_no_duplicates():
    run = add_reasons(run_in(P.TRAINING), ("precision_drop", "drift"))
    assert run.reasons == ("drift", "precision_drop")


@pytest.mark.parametrize(
    "phase,trigger,paused,expected",
    [
        (P.QUEUED, "alert", {"recsys"}, True),
        (P.QUEUED, "manual", {"recsys"}, False),  # an operator's run is theirs to start
        (P.QUEUED, "alert", {"search"}, False),
        (P.QUEUED, "alert", set(), False),
        (P.TRAINING, "alert", {"recsys"}, False),  # a pause never stops a run already going
    ],
)
def test_held(phase, trigger, paused, expected):
    run = run_in(phase)
    assert held(run.__class__(**{**run.__dict__, "trigger": trigger}), paused) is expected
