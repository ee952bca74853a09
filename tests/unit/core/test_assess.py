"""One canary look as a pure function: state and readings in, verdict, new state, look and action out. No store,
no clock, no service: the table below is the whole contract."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from controller.core import assess
from controller.core.assess import Readings
from controller.core.canary import CanaryPlan, CanarySpec, GuardrailSpec, Next, Step
from controller.core.judge import Direction, JudgeConfig, Outcome, Source
from controller.core.state import CanaryStage

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
SPEC = CanarySpec(
    plan=CanaryPlan((Step(10, timedelta(minutes=2)), Step(50, timedelta(minutes=2))), total_replicas=10,
                    interval=timedelta(minutes=1), max_bad_looks=1, min_step_trials=1000),
    judge=JudgeConfig(min_trials=1000, overdispersion=1.0), hits="hits", trials="trials", track_label="track",
    ready_timeout=timedelta(minutes=10), guardrails=(GuardrailSpec("errors", "q", 0.01, Direction.MAX, breaches=2),),
)  # fmt: skip


def reading(stable: tuple[float, float], canary: tuple[float, float]) -> dict[str, dict[str, dict[str, float]]]:
    return {"hits": {"stable": {"s0": stable[0]}, "canary": {"c0": canary[0]}},
            "trials": {"stable": {"s0": stable[1]}, "canary": {"c0": canary[1]}}}  # fmt: skip


def judging():
    return assess.baseline(assess.begin(T0), reading((0, 0), (0, 0)), T0)


def ok(stable, canary, errors=0.001):
    return Readings(reading(stable, canary), {"errors": errors})


# (name, readings, minutes after the baseline, unfit, expected outcome, expected next action)
CASES = [
    ("equal arms, too early to pass", ok((450, 9000), (50, 1000)), 1, "", Outcome.INCONCLUSIVE, Next.WAIT),
    ("canary far worse", ok((4500, 90000), (300, 10000)), 1, "", Outcome.FAIL, Next.ROLLBACK),
    ("source down, first bad look tolerated", Readings(None, {}, Source.ERROR, "connection refused"), 1, "",
     Outcome.ERROR, Next.WAIT),
    ("no series", Readings(None, {}, Source.NO_DATA, ""), 1, "", Outcome.NO_DATA, Next.WAIT),
    ("canary lost its pods", ok((450, 9000), (50, 1000)), 1, "canary unhealthy: 0/1 pod(s) ready", Outcome.ERROR,
     Next.WAIT),
    ("one guardrail spike is tolerated", ok((450, 9000), (50, 1000), errors=0.5), 1, "", Outcome.INCONCLUSIVE,
     Next.WAIT),
    ("enough equal traffic after the step's minimum", ok((45000, 900000), (5000, 100000)), 3, "", Outcome.PASS,
     Next.ADVANCE),
]  # fmt: skip


@pytest.mark.parametrize("name, readings, minutes, unfit, outcome, action", CASES, ids=[c[0] for c in CASES])
def test_one_look(name, readings, minutes, unfit, outcome, action):
    now = T0 + timedelta(minutes=minutes)
    result = assess.assess(SPEC, judging(), readings, now, unfit)
    assert result.verdict.outcome is outcome, result.verdict.reason
    assert result.action.next is action, result.action.reason
    assert result.state.looks == 1 and result.state.last_look_at == now
    assert result.look.at == now and result.look.step == 1 and result.look.weight == 10
    if readings.counters is None or unfit:
        assert result.state.tallies == judging().tallies  # nothing was read: the next look counts from the baseline
    else:
        assert result.look.canary["trials"] == readings.counters["trials"]["canary"]["c0"]


def test_a_guardrail_over_its_bound_twice_in_a_row_fails_and_a_look_without_it_keeps_the_streak():
    state = judging()
    first = assess.assess(SPEC, state, ok((450, 9000), (50, 1000), errors=0.5), T0 + timedelta(minutes=1))
    assert first.state.breaches == {"errors": 1}
    gap = assess.assess(SPEC, first.state, Readings(reading((900, 18000), (100, 2000)), {"errors": None}),
                        T0 + timedelta(minutes=2))  # fmt: skip
    assert gap.state.breaches == {"errors": 1} and gap.verdict.outcome is Outcome.NO_DATA
    second = assess.assess(SPEC, gap.state, ok((1350, 27000), (150, 3000), errors=0.5), T0 + timedelta(minutes=3))
    assert second.verdict.outcome is Outcome.FAIL and second.action.next is Next.ROLLBACK


def test_the_next_step_carries_the_statistic_and_rolls_again():
    result = assess.assess(SPEC, judging(), ok((45000, 900000), (5000, 100000)), T0 + timedelta(minutes=3))
    nxt = assess.next_step(result.state, result.verdict, T0 + timedelta(minutes=3))
    assert nxt.step == 1 and nxt.stage is CanaryStage.ROLLING and nxt.carried == result.verdict.statistic
    assert assess.replicas(SPEC, nxt) == 5


def test_a_pause_does_not_count_against_the_wait_for_a_ready_canary():
    rolling = assess.begin(T0)
    assert assess.shift_wait(rolling, timedelta(minutes=7)).stage_since == T0 + timedelta(minutes=7)


def test_a_baseline_starts_judging_and_the_first_look_waits_an_interval():
    state = judging()
    assert state.stage is CanaryStage.JUDGING and state.step_started_at == T0 and state.analysis_started_at == T0
    assert not assess.due(state, T0 + timedelta(seconds=59), SPEC.plan.interval)
    assert assess.due(state, T0 + timedelta(minutes=1), SPEC.plan.interval)
