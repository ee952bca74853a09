"""One canary step as a pure function: the canary state and the readings in, the new state and what to do out.

Measuring (the analyst) and moving Deployments (the driver) live in service/canary.py; this module only assesses,
as Argo Rollouts separates measurements from their assessment. Everything is in the CanaryState, so a restarted
controller carries on at the same step with the same counter readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Mapping

from controller.core.canary import AfterLook, CanarySpec, after_look, canary_replicas
from controller.core.counters import advance, start
from controller.core.judge import Arm, Guardrail, Observation, Source, Verdict, breached, judge
from controller.core.state import ARMS, CanaryStage, CanaryState, Look

# counter name (hits, trials, units) -> arm -> series key -> raw counter value
Reading = Mapping[str, Mapping[str, Mapping[str, float]]]


@dataclass(frozen=True)
class Readings:
    """What the analyst read for one look. `counters` is None when the source could not say (`source`, `detail`)."""

    counters: Reading | None
    guardrails: Mapping[str, float | None]  # by guardrail name; None: the query had no single value
    source: Source = Source.OK
    detail: str = ""


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    state: CanaryState  # with this look counted (and the next step begun when `action` advances)
    look: Look
    action: AfterLook


def begin(now: datetime) -> CanaryState:
    """A new canary: first step, rolling."""
    return CanaryState(step=0, stage=CanaryStage.ROLLING, stage_since=now)


def replicas(spec: CanarySpec, state: CanaryState) -> int:
    return canary_replicas(spec.plan.steps[state.step].weight, spec.plan.total_replicas)


def baseline(state: CanaryState, reading: Reading, now: datetime) -> CanaryState:
    """The canary is ready at its step: start judging the step on increases since these raw values.

    Each step is judged on its own counts, with the evidence of the steps before carried in: pooling counts across
    a change of split is biased when precision drifts. The first look comes one interval later: sooner, Prometheus
    may not have scraped the new split yet, and a look with no new counts would count against max_no_data."""
    return replace(
        state, stage=CanaryStage.JUDGING, step_started_at=now, stage_since=now, last_look_at=now,
        tallies={m: {arm: start(reading[m][arm]) for arm in ARMS} for m in reading},
        totals={arm: {m: 0.0 for m in reading} for arm in ARMS},
        analysis_started_at=state.analysis_started_at or now,
    )  # fmt: skip


def due(state: CanaryState, now: datetime, interval: timedelta) -> bool:
    """Whether it is time for the next look."""
    return state.last_look_at is None or now - state.last_look_at >= interval


def assess(spec: CanarySpec, state: CanaryState, readings: Readings, now: datetime, unfit: str = "") -> Assessment:
    """The verdict of one look and what follows from it. `unfit`: why the canary cannot be judged now (pods not
    ready, another image); such a look counts as an error, like a metrics source that cannot answer."""
    guardrails, streaks = _guardrails(spec, state, readings.guardrails)
    state = replace(state, breaches=streaks)
    assert state.step_started_at is not None, "a look comes after the step's baseline"
    elapsed = now - state.step_started_at
    if unfit:  # the counts stay unread: the next healthy look adds them up from the last reading
        obs = Observation(None, None, elapsed, guardrails, Source.UNFIT, unfit)
    elif readings.counters is None:
        obs = Observation(None, None, elapsed, guardrails, readings.source, readings.detail or "no series")
    else:
        tallies = {m: {arm: advance(state.tallies[m][arm], readings.counters[m][arm]) for arm in ARMS}
                   for m in readings.counters}  # fmt: skip
        totals = {arm: {m: tallies[m][arm].total for m in tallies} for arm in ARMS}
        resets = sum(t.resets for by_arm in tallies.values() for t in by_arm.values())
        state = replace(state, tallies=tallies, totals=totals, resets=resets)
        obs = Observation(Arm(**totals["stable"]), Arm(**totals["canary"]), elapsed, guardrails,
                          carried_statistic=state.carried)  # fmt: skip
    step = spec.plan.steps[state.step]
    verdict = judge(obs, replace(spec.judge, min_duration=step.min_duration))
    look = Look(now, state.step + 1, step.weight, verdict, dict(state.totals.get("stable", {})),
                dict(state.totals.get("canary", {})), {g.name: g.value for g in guardrails})  # fmt: skip
    step_trials = state.totals.get("canary", {}).get("trials", 0.0)
    action = after_look(spec.plan, state.step, elapsed, step_trials, verdict.outcome, verdict.reason, state.bad_looks)
    state = replace(state, bad_looks=action.bad_looks, last_look_at=now, looks=state.looks + 1)
    return Assessment(verdict, state, look, action)


def next_step(state: CanaryState, verdict: Verdict, now: datetime) -> CanaryState:
    """The next step, rolling: the statistic so far is carried into it."""
    carried = verdict.statistic if verdict.statistic is not None else state.carried
    return replace(state, step=state.step + 1, stage=CanaryStage.ROLLING, stage_since=now, carried=carried)


def shift_wait(state: CanaryState, by: timedelta) -> CanaryState:
    """The state after a pause of `by`: the wait for a ready canary does not count the pause."""
    return replace(state, stage_since=state.stage_since + by)


def _guardrails(
    spec: CanarySpec, state: CanaryState, values: Mapping[str, float | None]
) -> tuple[tuple[Guardrail, ...], dict[str, int]]:
    out = []
    streaks = dict(state.breaches)
    for g in spec.guardrails:
        value = values.get(g.name)
        reading = Guardrail(g.name, value, g.threshold, g.direction)
        over = value is not None and not math.isnan(value) and breached(reading)
        # Consecutive looks over the threshold; a look without data neither extends nor breaks the streak.
        streaks[g.name] = streaks.get(g.name, 0) + 1 if over else (streaks.get(g.name, 0) if value is None else 0)
        out.append(replace(reading, tolerated=over and streaks[g.name] < g.breaches))
    return tuple(out), streaks

