"""What each alert in a notification means: a pure function of the alert, the current state and the time.

Order of the checks, first match wins:
  resolved -> ignored_resolved; no model or rule -> unmatched; notify-only rule -> notify_only;
  model paused by an operator -> paused (recorded, starts and joins nothing);
  episode already handled by a run -> duplicate; model has a live run -> joined;
  cooldown or daily budget -> rate_limited (with until); concurrency cap -> queued; else accepted.
A rate-limited episode is not marked handled: if it still fires when the limit lifts, Alertmanager's next
repeat starts a run. Alerts in one notification see the effects of the ones before them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Iterator, Mapping

from controller.core.alerts import Alert
from controller.core.durations import format_duration
from controller.core.matchers import Matcher, all_match


class Kind(StrEnum):
    ACCEPTED = "accepted"
    JOINED = "joined"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"
    QUEUED = "queued"
    IGNORED_RESOLVED = "ignored_resolved"
    UNMATCHED = "unmatched"
    NOTIFY_ONLY = "notify_only"
    PAUSED = "paused"


@dataclass(frozen=True)
class Route:
    """Maps an alert of a model to a reason, or marks it notify-only (recorded, never retrains)."""

    matchers: tuple[Matcher, ...]
    reason: str
    notify_only: bool = False


@dataclass(frozen=True)
class ModelPolicy:
    name: str
    matchers: tuple[Matcher, ...]
    routes: tuple[Route, ...]
    cooldown: timedelta
    daily_budget: int


@dataclass(frozen=True)
class PolicyConfig:
    models: tuple[ModelPolicy, ...]
    max_concurrent: int
    budget_window: timedelta = timedelta(days=1)


@dataclass(frozen=True)
class ModelState:
    live_run: str | None = None
    last_ended_at: datetime | None = None
    recent_starts: tuple[datetime, ...] = ()  # creation times of runs inside the budget window
    paused_by: str | None = None  # set while an operator has paused the model
    paused_at: datetime | None = None


@dataclass(frozen=True)
class PolicyState:
    models: Mapping[str, ModelState] = field(default_factory=dict)
    active_runs: int = 0
    handled: Mapping[str, str] = field(default_factory=dict)  # episode -> run id
    waiting: int = 0  # queued runs that will start when a slot frees (not held by a pause): they go first


@dataclass(frozen=True)
class Decision:
    index: int  # position of the alert in the notification
    episode: str
    kind: Kind
    detail: str
    model: str | None = None
    reason: str | None = None
    run_id: str | None = None
    until: datetime | None = None

    @property
    def starts_run(self) -> bool:
        return self.kind in (Kind.ACCEPTED, Kind.QUEUED)


def route(alert: Alert, config: PolicyConfig) -> tuple[ModelPolicy | None, Route | None]:
    """First model whose matchers all match, then its first matching rule (config order, like Alertmanager)."""
    for model in config.models:
        if all_match(model.matchers, alert.labels):
            for r in model.routes:
                if all_match(r.matchers, alert.labels):
                    return model, r
            return model, None
    return None, None


def rate_limit(model: ModelPolicy, ms: ModelState, now: datetime, window: timedelta) -> tuple[str, datetime] | None:
    if ms.last_ended_at is not None and now < ms.last_ended_at + model.cooldown:
        return "cooldown", ms.last_ended_at + model.cooldown
    starts = sorted(t for t in ms.recent_starts if t > now - window)
    if len(starts) >= model.daily_budget:
        # The window frees a slot when the oldest start that keeps us at the budget leaves it.
        return "daily_budget", starts[len(starts) - model.daily_budget] + window
    return None


def decide(
    alerts: list[Alert], state: PolicyState, now: datetime, config: PolicyConfig, new_ids: Iterator[str]
) -> tuple[list[Decision], PolicyState]:
    decisions = []
    for i, alert in enumerate(alerts):
        d, state = _decide_one(i, alert, state, now, config, new_ids)
        decisions.append(d)
    return decisions, state


def _decide_one(
    i: int, alert: Alert, state: PolicyState, now: datetime, config: PolicyConfig, new_ids: Iterator[str]
) -> tuple[Decision, PolicyState]:
    ep = alert.episode
    model, rule = route(alert, config)
    base = Decision(index=i, episode=ep, kind=Kind.UNMATCHED, detail="", model=model.name if model else None)
    if alert.status == "resolved":
        return replace(base, kind=Kind.IGNORED_RESOLVED, detail="resolved alerts are recorded, never acted on"), state
    if model is None:
        return replace(base, detail="no model's matchers match this alert's labels"), state
    if rule is None:
        return replace(base, detail=f"model {model.name} has no rule for alertname={alert.alertname!r}"), state
    base = replace(base, reason=rule.reason)
    if rule.notify_only:
        return replace(base, kind=Kind.NOTIFY_ONLY, detail="notify-only rule: recorded, never retrains"), state
    ms = state.models.get(model.name, ModelState())
    if ms.paused_by is not None:
        since = ms.paused_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if ms.paused_at else "an unknown time"
        detail = f"model paused by {ms.paused_by} since {since}: recorded, starts nothing"
        return replace(base, kind=Kind.PAUSED, detail=detail), state
    if ep in state.handled:
        run_id = state.handled[ep]
        return replace(base, kind=Kind.DUPLICATE, run_id=run_id, detail=f"episode already handled by run {run_id}"), state

    ms = state.models.get(model.name, ModelState())
    if ms.live_run is not None:
        d = replace(base, kind=Kind.JOINED, run_id=ms.live_run, detail=f"joined live run {ms.live_run}")
        return d, replace(state, handled={**state.handled, ep: ms.live_run})

    limit = rate_limit(model, ms, now, config.budget_window)
    if limit is not None:
        which, until = limit
        detail = (
            f"cooldown of {format_duration(model.cooldown)} after the last run"
            if which == "cooldown"
            else f"daily budget of {model.daily_budget} runs used"
        )
        return replace(base, kind=Kind.RATE_LIMITED, detail=f"{which}: {detail}", until=until), state
    return _start(base, model.name, ms, state, now, config, next(new_ids))


def _start(
    base: Decision, model: str, ms: ModelState, state: PolicyState, now: datetime, config: PolicyConfig, run_id: str
) -> tuple[Decision, PolicyState]:
    """A new run: started when a slot is free and nobody waits, else queued behind the runs already waiting."""
    full = state.active_runs >= config.max_concurrent
    queued = full or state.waiting > 0  # a slot that just freed belongs to the oldest queued run
    ms = ModelState(live_run=run_id, last_ended_at=ms.last_ended_at, recent_starts=ms.recent_starts + (now,))
    state = replace(
        state,
        models={**state.models, model: ms},
        active_runs=state.active_runs + (0 if queued else 1),
        handled={**state.handled, base.episode: run_id},
        waiting=state.waiting + (1 if queued else 0),
    )
    if queued:
        why = f"{config.max_concurrent} runs already active" if full else f"{state.waiting - 1} queued run(s) go first"
        detail = f"{why}: run {run_id} waits in the queue"
        return replace(base, kind=Kind.QUEUED, run_id=run_id, detail=detail), state
    return replace(base, kind=Kind.ACCEPTED, run_id=run_id, detail=f"started run {run_id}"), state


def runs_to_start(
    queued_in_arrival_order: list[str], active_runs: int, max_concurrent: int, held: frozenset[str] = frozenset()
) -> list[str]:
    """Queued runs that may start now, oldest first. `held` runs (their model is paused) wait without taking a
    slot, so the runs behind them are not blocked."""
    free = max(0, max_concurrent - active_runs)
    return [run_id for run_id in queued_in_arrival_order if run_id not in held][:free]
