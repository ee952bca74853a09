"""The read side: what the status page, the JSON API and the CLI show of models and runs. Writes nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping, Protocol

from controller.core.alerts import format_ts
from controller.core.canary import CanarySpec
from controller.core.policy import PolicyConfig, rate_limit
from controller.core.runs import TERMINAL, Phase, Run, Transition
from controller.core.state import verdict_to_json
from controller.observability import get_logger
from controller.ports import Clock, IntakeStore, OpsStore, ReadStore, Rollout, RolloutError, RunStore, ViewStore

LIVE_STABLE_TTL = timedelta(seconds=30)  # a cluster read of the stable image is shown this long
LIVE_STABLE_TIMEOUT = 2.0  # a status page waits no longer than this for the cluster
CANARY_PHASES = (Phase.DEPLOYING, Phase.ANALYZING, Phase.PROMOTING, Phase.ROLLING_BACK)


class ViewStoreFaces(IntakeStore, RunStore, ReadStore, OpsStore, ViewStore, Protocol):
    """Everything a view reads."""


def _ts(value: datetime | None) -> str | None:
    return format_ts(value) if value else None


@dataclass
class Views:
    store: ViewStoreFaces
    policy: PolicyConfig
    clock: Clock
    specs: Mapping[str, CanarySpec] = field(default_factory=dict)
    rollouts: Mapping[str, Rollout] = field(default_factory=dict)
    dry_run: bool = False
    log: Any = field(default_factory=get_logger)
    # model -> (when read, stable image the cluster runs): the status page's fallback before any run has recorded
    # one; cached so a page refresh is not a Kubernetes call per model.
    _live_stable: dict[str, tuple[datetime, str | None]] = field(default_factory=dict)

    # ---- runs ------------------------------------------------------------------------------------------------

    def canary_progress(self, run: Run) -> dict[str, Any] | None:
        """Step (1-based), number of steps, the step's weight and stage, while the run has a canary."""
        spec = self.specs.get(run.model)
        if run.canary is None or run.phase not in CANARY_PHASES:
            return None
        steps = [s.weight for s in spec.plan.steps] if spec else []
        step = run.canary.step
        return {"step": step + 1, "steps": len(steps) or None, "weight": steps[step] if step < len(steps) else None,
                "stage": run.canary.stage.value}  # fmt: skip

    def band(self, model: str) -> tuple[float, float]:
        """The judge's tolerance and indifference for a model's chart."""
        spec = self.specs.get(model)
        return (spec.judge.tolerance, spec.judge.indifference) if spec else (0.0, 0.0)

    def run_json(self, run: Run) -> dict[str, Any]:
        """A run as the API documents it (see web/openapi.py, schema Run)."""
        return {
            "id": run.id, "model": run.model, "phase": run.phase.value, "trigger": run.trigger,
            "reasons": list(run.reasons), "cause": run.cause, "dry_run": run.dry_run,
            "created_at": _ts(run.created_at), "phase_entered_at": _ts(run.phase_entered_at),
            "deadline_at": _ts(run.deadline_at), "ended_at": _ts(run.ended_at),
            "pipeline": {"id": run.pipeline_id, "url": run.pipeline_url, "trigger_attempts": run.attempts.count,
                         "stages": [s.to_json() for s in run.stages]},
            "image": run.image, "previous_image": run.previous_image,
            "offline_metrics": dict(run.offline_metrics),
            "paused": {"since": _ts(run.pause.since)} if run.pause else None,
            "canary": self.canary_progress(run),
            "verdict": verdict_to_json(run.verdict) if run.verdict else None,
            "retry_of": run.retry_of, "manual_reason": run.manual_reason,
        }  # fmt: skip

    async def run_detail(self, run_id: str, decisions_limit: int) -> dict[str, Any] | None:
        run = await self.store.get_run(run_id)
        if run is None:
            return None
        return {
            "run": self.run_json(run),
            "history": [transition_json(t) for t in await self.store.history(run_id)],
            "looks": [look.to_json() for look in await self.store.run_looks(run_id, decisions_limit)],
            "audit": [a.to_json() for a in await self.store.run_audit(run_id)],
            "alerts": await self.store.list_decisions(decisions_limit, run_id=run_id),
        }

    # ---- models -----------------------------------------------------------------------------------------------

    async def paused_models(self) -> set[str]:
        return {m for m, c in (await self.store.model_controls()).items() if c.paused}

    async def model_overview(self) -> list[dict[str, Any]]:
        """Per model: live run, and what the rate limits allow right now."""
        now = self.clock.now()
        window = self.policy.budget_window
        state = await self.store.policy_state(episodes=[], models=[m.name for m in self.policy.models], now=now,
                                              window_start=now - window, dry_run=self.dry_run)  # fmt: skip
        out = []
        for m in self.policy.models:
            ms = state.models[m.name]
            live = await self.store.get_run(ms.live_run) if ms.live_run else None
            limit = rate_limit(m, ms, now, window)
            out.append({
                "name": m.name,
                "live_run": {"id": live.id, "phase": live.phase.value} if live else None,
                "rate_limited": {"by": limit[0], "until": format_ts(limit[1])} if limit else None,
                "cooldown_s": m.cooldown.total_seconds(),
                "daily_budget": m.daily_budget,
                "runs_in_window": sum(1 for t in ms.recent_starts if t > now - window),
                "last_ended_at": _ts(ms.last_ended_at),
            })  # fmt: skip
        return out

    async def models_status(self) -> list[dict[str, Any]]:
        """model_overview, plus pause, stable image, last outcome and the latest operator actions."""
        controls = await self.store.model_controls()
        out = []
        for item in await self.model_overview():
            name = item["name"]
            control = controls.get(name)
            done = await self.store.last_run_in(name, frozenset({Phase.SUCCEEDED}))
            last = await self.store.last_run_in(name, TERMINAL)
            stable = done.image if done else None
            if stable is None and last is not None:
                stable = last.previous_image
            if stable is None:
                stable = await self._cluster_stable(name)
            audit = await self.store.model_audit(name, 10)
            out.append({
                **item,
                "paused": {"by": control.by, "since": _ts(control.at), "reason": control.reason}
                if control is not None and control.paused else None,
                "stable_image": stable,
                "retrain_only": name not in self.specs,  # no canary: the image is the outcome, nothing is deployed
                "last_outcome": {"run_id": last.id, "phase": last.phase.value, "cause": last.cause,
                                 "ended_at": _ts(last.ended_at)} if last else None,
                "audit": [{"at": _ts(a.at), "action": a.action, "by": a.by, "reason": a.reason, "changed": a.changed,
                           "run_id": a.run_id} for a in audit],
            })  # fmt: skip
        return out

    async def _cluster_stable(self, model: str) -> str | None:
        """The stable image the model's rollout reports; None without a rollout or when it cannot say soon."""
        rollout = self.rollouts.get(model)
        if rollout is None:
            return None
        now = self.clock.now()
        cached = self._live_stable.get(model)
        if cached is not None and timedelta(0) <= now - cached[0] < LIVE_STABLE_TTL:
            return cached[1]
        try:
            image = (await asyncio.wait_for(rollout.status(), LIVE_STABLE_TIMEOUT)).stable.image
        except (RolloutError, TimeoutError) as exc:
            self.log.debug("stable_image_unknown", model=model, error=str(exc) or type(exc).__name__)
            image = None
        self._live_stable[model] = (now, image)
        return image


def transition_json(t: Transition) -> dict[str, Any]:
    return {"at": format_ts(t.at), "from": t.from_phase.value if t.from_phase else None, "to": t.to_phase.value,
            "cause": t.cause}  # fmt: skip
