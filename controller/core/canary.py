"""The canary's step schedule and what a verdict means for it. Pure: the service does the I/O.

One sequential test runs over the whole analysis: each step is judged on its own counts (increases since the
step's canary became ready) and the log-likelihood ratio of the earlier steps is carried into it, so the error
rates hold across steps while no count is pooled across a change of traffic split. Steps bound the blast radius. A step advances when it has lasted its minimum,
the canary has served enough trials in it, and the judge has not found it worse (PASS or INCONCLUSIVE). The
last step needs PASS: no promotion without evidence. FAIL, or too many looks in a row without usable data, rolls
back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from controller.core.durations import format_duration
from controller.core.judge import Direction, JudgeConfig, Outcome


@dataclass(frozen=True)
class Step:
    weight: int  # percent of the replica budget given to the canary
    min_duration: timedelta


@dataclass(frozen=True)
class CanaryPlan:
    steps: tuple[Step, ...]
    total_replicas: int
    interval: timedelta  # time between looks at the metrics
    max_bad_looks: int  # consecutive NO_DATA / ERROR looks tolerated; one more rolls back
    min_step_trials: float  # canary trials a step must see before the next step


def canary_replicas(weight: int, total: int) -> int:
    """Replica-ratio split: weight percent of the budget, at least one pod while there is a canary at all."""
    if weight <= 0:
        return 0
    return max(1, math.ceil(weight * total / 100))


class Next(StrEnum):
    WAIT = "wait"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class AfterLook:
    next: Next
    reason: str
    bad_looks: int


def after_look(
    plan: CanaryPlan, step: int, step_elapsed: timedelta, step_trials: float, outcome: Outcome, reason: str,
    bad_looks: int,
) -> AfterLook:  # fmt: skip
    """What to do after the judge's verdict at step `step` (0-based)."""
    if outcome is Outcome.FAIL:
        return AfterLook(Next.ROLLBACK, f"canary failed analysis: {reason}", 0)
    if outcome in (Outcome.NO_DATA, Outcome.ERROR):
        bad = bad_looks + 1
        if bad > plan.max_bad_looks:
            return AfterLook(Next.ROLLBACK, f"{bad} looks in a row without usable data (limit {plan.max_bad_looks}): {reason}", bad)
        return AfterLook(Next.WAIT, f"{outcome.value} ({bad} of {plan.max_bad_looks} tolerated): {reason}", bad)
    last = step == len(plan.steps) - 1
    if last:
        if outcome is Outcome.PASS:
            return AfterLook(Next.PROMOTE, f"canary passed analysis: {reason}", 0)
        return AfterLook(Next.WAIT, reason, 0)
    current = plan.steps[step]
    if step_elapsed < current.min_duration:
        return AfterLook(Next.WAIT, f"step {step + 1} at {current.weight}% runs {format_duration(current.min_duration)}: {reason}", 0)
    if step_trials < plan.min_step_trials:
        return AfterLook(Next.WAIT, f"step {step + 1} has {step_trials:g} canary trials of {plan.min_step_trials:g}: {reason}", 0)
    nxt = plan.steps[step + 1]
    return AfterLook(Next.ADVANCE, f"step {step + 1} done, canary to {nxt.weight}%: {reason}", 0)


# Counters are read as range selectors, each series' latest sample in this window: an instant query leaves out a
# pod whose last scrape failed (Prometheus marks its series stale), and a baseline missing a pod would later count
# that pod's whole lifetime as the step's traffic. Five minutes, like Prometheus's default lookback.
COUNTER_WINDOW = "5m"


@dataclass(frozen=True)
class GuardrailSpec:
    name: str
    query: str
    threshold: float
    direction: Direction
    breaches: int = 2  # looks in a row over the threshold that roll back


@dataclass(frozen=True)
class CanarySpec:
    """Everything the canary of one model needs from config, in plain values."""

    plan: CanaryPlan
    judge: JudgeConfig
    hits: str
    trials: str
    track_label: str
    ready_timeout: timedelta
    guardrails: tuple[GuardrailSpec, ...] = ()
    units: str | None = None  # requests counter: lets the judge bound the variance of correlated slots

    def counters(self) -> dict[str, str]:
        """Counter reads (range selectors, see COUNTER_WINDOW) by the name the judge's Arm gives them."""
        named = {"hits": self.hits, "trials": self.trials, **({"units": self.units} if self.units else {})}
        return {name: f"{selector}[{COUNTER_WINDOW}]" for name, selector in named.items()}


@dataclass(frozen=True)
class DeploymentStatus:
    """What the API server says of one Deployment. `settled`: the controller has seen the latest spec
    (observedGeneration) and every desired replica is updated and ready."""

    image: str | None
    replicas: int
    ready_replicas: int
    updated_replicas: int
    settled: bool


@dataclass(frozen=True)
class RolloutStatus:
    stable: DeploymentStatus
    canary: DeploymentStatus


def unfit(canary: DeploymentStatus, image: str | None, replicas: int) -> str:
    """Why the canary is not fit to be judged right now; "" when it is."""
    if canary.image != image:
        return f"canary unhealthy: it runs {canary.image}, not {image}"
    if canary.replicas != replicas or canary.ready_replicas < replicas:
        return f"canary unhealthy: {canary.ready_replicas}/{replicas} pod(s) ready"
    return ""


def stable_on(status: RolloutStatus, image: str) -> bool:
    """Stable runs `image` on every pod, all ready."""
    s = status.stable
    return s.image == image and s.settled and s.ready_replicas == s.replicas


def promoted(status: RolloutStatus, image: str) -> bool:
    """Stable runs `image` everywhere and the canary has no pods left."""
    return stable_on(status, image) and status.canary.replicas == 0 and status.canary.settled
