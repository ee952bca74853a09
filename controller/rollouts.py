"""Runs from `deploying` to `succeeded` or `rolled_back`: canary steps on Kubernetes, looks at Prometheus, verdicts.

One step per tick, everything it needs in the run (`extra["canary"]`), so a restarted controller carries on at the
same step with the same counter readings. Decisions are the pure functions of core/canary.py and core/judge.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Mapping

from controller.core.canary import CanaryPlan, CanarySpec, GuardrailSpec, Next, after_look, canary_replicas, due
from controller.core.counters import Tally, advance, series_key, start
from controller.core.durations import format_duration
from controller.core.judge import Arm, Direction, Guardrail, JudgeConfig, Observation, Source, Verdict, breached, judge
from controller.core.runs import Phase, Run
from controller.observability import Metrics, get_logger
from controller.ports import Clock, DeploymentStatus, MetricsSource, QueryResult, Rollout, RolloutError, RolloutStatus

MAX_MEASUREMENTS = 200
ARMS = ("stable", "canary")


Move = Callable[..., Awaitable[bool]]  # (run, to, cause, **changes) -> moved?
Record = Callable[[Run, Mapping[str, object]], Awaitable[bool]]


@dataclass
class Canary:
    """The canary part of the controller's tick for one model."""

    model: str
    spec: CanarySpec
    rollout: Rollout
    source: MetricsSource
    clock: Clock
    metrics: Metrics
    move: Move
    record: Record
    log: Any = field(default_factory=get_logger)

    # ---- phases ---------------------------------------------------------------------------------------------

    async def step(self, run: Run) -> None:
        if run.extra.get("paused") and run.phase in (Phase.DEPLOYING, Phase.ANALYZING):
            return  # the canary holds its weight: no scaling, no look, no timeout
        try:
            if run.phase is Phase.DEPLOYING:
                await self._deploying(run)
            elif run.phase is Phase.ANALYZING:
                await self._analyzing(run)
            elif run.phase is Phase.PROMOTING:
                await self._promoting(run)
            elif run.phase is Phase.ROLLING_BACK:
                await self._rolling_back(run)
        except RolloutError as exc:
            self.metrics.rollout_errors.labels(model=self.model, permanent=str(exc.permanent).lower()).inc()
            if not exc.permanent:
                self.log.warning("rollout_retry", run_id=run.id, model=self.model, phase=run.phase.value, error=str(exc))
                return
            if run.phase in (Phase.DEPLOYING, Phase.ANALYZING):
                await self.move(run, Phase.ROLLING_BACK, f"Kubernetes refused: {exc}")
            else:
                await self.move(run, Phase.FAILED, f"Kubernetes refused while {run.phase}: {exc}; needs a human")

    async def _deploying(self, run: Run) -> None:
        assert run.image is not None
        state = _state(run)
        now = self.clock.now()
        if not state:
            status = await self.rollout.status()
            state = {
                "step": 0, "stage": "rolling", "stage_since": _iso(now), "previous_image": status.stable.image,
                "analysis_started_at": None, "step_started_at": None, "tallies": None, "bad_looks": 0, "looks": 0,
                "last_look_at": None, "carried": 0.0,
                "totals": {arm: {m: 0.0 for m in self.spec.counters()} for arm in ARMS},
            }  # fmt: skip
            # Record the plan before acting on it: after a crash the next process repeats the same call.
            if not await self.record(run, {"canary": state, "previous_image": status.stable.image}):
                return
        await self._roll_to_step(run, state, now)

    async def _roll_to_step(self, run: Run, state: dict[str, Any], now: datetime) -> None:
        """Scale the canary to the current step and wait until it is ready; then judge."""
        assert run.image is not None
        weight = self.spec.plan.steps[state["step"]].weight
        want = self._replicas(state)
        self.metrics.canary_weight.labels(model=self.model).set(weight)
        await self.rollout.set_canary(run.image, want)  # idempotent: the same spec again changes nothing
        status = await self.rollout.status()
        c = status.canary
        if c.image == run.image and c.replicas == want and c.settled:
            reading, why = await self._read_counters()
            if reading is None:
                # No baseline yet: try again next tick, for as long as a canary may take to become ready.
                waited = now - _at(state["stage_since"])
                if waited >= self.spec.ready_timeout:
                    await self.move(run, Phase.ROLLING_BACK, f"no counters for a baseline after "
                                    f"{format_duration(self.spec.ready_timeout)} with the canary ready: {why}")
                return
            # Each step is judged on its own counts (increases since these raw values), with the evidence of the
            # steps before carried in: pooling counts across a change of split is biased when precision drifts.
            tallies = {m: {arm: start(reading[m][arm]).as_dict() for arm in ARMS} for m in reading}
            state = {
                # The first look comes one interval after the baseline: sooner, Prometheus may not have scraped
                # the new split yet, and a look with no new counts would count against max_no_data.
                **state, "stage": "judging", "step_started_at": _iso(now), "stage_since": _iso(now),
                "last_look_at": _iso(now), "tallies": tallies, "totals": {arm: {m: 0.0 for m in reading} for arm in ARMS},
                "analysis_started_at": state["analysis_started_at"] or _iso(now),
            }  # fmt: skip
            cause = f"canary ready: {c.ready_replicas} pod(s) of {run.image} at step {state['step'] + 1} ({weight}%)"
            if run.phase is Phase.DEPLOYING:
                await self.move(run, Phase.ANALYZING, cause, extra={"canary": state})
            else:
                await self.record(run, {"canary": state})
                self.log.info("canary_step", run_id=run.id, model=self.model, detail=cause)
            return
        waited = now - _at(state["stage_since"])
        if waited >= self.spec.ready_timeout:
            why = (f"canary not ready after {format_duration(self.spec.ready_timeout)}: {c.ready_replicas}/{want} ready,"
                   f" {c.updated_replicas} updated, image {c.image}")  # fmt: skip
            await self.move(run, Phase.ROLLING_BACK, why)

    def _replicas(self, state: Mapping[str, Any]) -> int:
        return canary_replicas(self.spec.plan.steps[state["step"]].weight, self.spec.plan.total_replicas)

    async def _analyzing(self, run: Run) -> None:
        state = _state(run)
        now = self.clock.now()
        if run.extra.get("paused"):
            return
        if state.get("stage") != "judging":
            await self._roll_to_step(run, state, now)
            return
        last_look = _at(state["last_look_at"]).timestamp() if state["last_look_at"] else None
        if not due(last_look, now.timestamp(), self.spec.plan.interval):
            return
        # A canary that lost pods or its image since the baseline is not judged on what is left: the look counts
        # as an error (max_no_data of them in a row roll back), like a Prometheus that cannot answer.
        sick = _unhealthy((await self.rollout.status()).canary, run.image, self._replicas(state))
        verdict, state, measurement = await self._look(state, now, sick)
        self.metrics.verdicts.labels(model=self.model, verdict=verdict.outcome.value).inc()
        step_elapsed = now - _at(state["step_started_at"])
        step_trials = state["totals"]["canary"]["trials"]
        move = after_look(self.spec.plan, state["step"], step_elapsed, step_trials, verdict.outcome, verdict.reason,
                          state["bad_looks"])  # fmt: skip
        state = {**state, "bad_looks": move.bad_looks, "last_look_at": _iso(now), "looks": state["looks"] + 1}
        measurements = (list(run.extra.get("measurements", [])) + [measurement])[-MAX_MEASUREMENTS:]  # type: ignore[call-overload]
        self.log.info("canary_verdict", run_id=run.id, model=self.model, verdict=verdict.outcome.value,
                      next=move.next.value, step=state["step"] + 1, reason=verdict.reason)  # fmt: skip
        changes = {"canary": state, "measurements": measurements, "verdict": _verdict_json(verdict)}
        if move.next is Next.ROLLBACK:
            self._analysis_done(state, now, "rolled_back")
            await self.move(run, Phase.ROLLING_BACK, move.reason, extra=changes)
        elif move.next is Next.PROMOTE:
            self._analysis_done(state, now, "promoted")
            await self.move(run, Phase.PROMOTING, move.reason, extra=changes)
        elif move.next is Next.ADVANCE:
            carried = verdict.statistic if verdict.statistic is not None else state.get("carried", 0.0)
            state = {**state, "step": state["step"] + 1, "stage": "rolling", "stage_since": _iso(now), "carried": carried}
            changes["canary"] = state
            if await self.record(run, changes):
                self.log.info("canary_advance", run_id=run.id, model=self.model, detail=move.reason)
                await self._roll_to_step(replace(run, extra={**run.extra, **changes}), state, now)
        else:
            await self.record(run, changes)

    async def _promoting(self, run: Run) -> None:
        """Stable first; the canary's pods go only once stable runs the image on every pod (a canary that passed
        does not prove that stable's pods come up with its image). Stable never ready: it gets its image back."""
        assert run.image is not None
        status = await self.rollout.status()
        if not _stable_on(status, run.image):
            s, previous = status.stable, run.extra.get("previous_image")
            waited = self.clock.now() - run.phase_entered_at
            if s.image == run.image and previous and waited >= self.spec.ready_timeout:
                why = (f"stable not ready on {run.image} after {format_duration(self.spec.ready_timeout)}: "
                       f"{s.ready_replicas}/{s.replicas} ready, {s.updated_replicas} updated; restoring {previous}")
                await self.move(run, Phase.ROLLING_BACK, why, extra={"restore_stable": previous})
                return
            await self.rollout.promote(run.image)  # idempotent: the same image again changes nothing
            status = await self.rollout.status()
            if not _stable_on(status, run.image):
                return
        if status.canary.replicas != 0:
            await self.rollout.set_canary(status.canary.image or run.image, 0)
            status = await self.rollout.status()
        if _promoted(status, run.image):
            self.metrics.canary_weight.labels(model=self.model).set(0)
            self.metrics.promotions.labels(model=self.model).inc()
            await self.move(run, Phase.SUCCEEDED, f"stable runs {run.image} on {status.stable.ready_replicas} pod(s)")

    async def _rolling_back(self, run: Run) -> None:
        restore = run.extra.get("restore_stable")  # set when a promotion's stable never became ready
        status = await self.rollout.status()
        if isinstance(restore, str) and status.stable.image != restore:
            await self.rollout.promote(restore)
            status = await self.rollout.status()
        image = status.canary.image or run.image
        if status.canary.replicas != 0 and image:  # keep the canary's image: only its pods go
            await self.rollout.set_canary(image, 0)
            status = await self.rollout.status()
        stable_back = not restore or (status.stable.image == restore and status.stable.settled)
        if status.canary.replicas == 0 and status.canary.settled and stable_back:
            self.metrics.canary_weight.labels(model=self.model).set(0)
            self.metrics.rollbacks.labels(model=self.model).inc()
            how = "restored to" if restore else "still runs"
            await self.move(run, Phase.ROLLED_BACK, f"canary scaled to 0; stable {how} {status.stable.image}")

    # ---- looking --------------------------------------------------------------------------------------------

    async def _read_counters(self) -> tuple[dict[str, dict[str, float]] | None, str]:
        results = {m: await self.source.query(q) for m, q in self.spec.counters().items()}
        for name, r in results.items():
            if r.outcome != "value":
                return None, f"{name}: {r.error or 'no series'}"
        return {m: _by_arm(r, self.spec.track_label) for m, r in results.items()}, ""

    async def _look(
        self, state: dict[str, Any], now: datetime, sick: str = ""
    ) -> tuple[Verdict, dict[str, Any], dict[str, Any]]:
        results = {m: await self.source.query(q) for m, q in self.spec.counters().items()}
        guardrails = []
        streaks = dict(state.get("breaches") or {})
        for g in self.spec.guardrails:
            res = await self.source.query(g.query)
            value = res.samples[0].value if res.outcome == "value" and len(res.samples) == 1 else None
            reading = Guardrail(g.name, value, g.threshold, g.direction)
            over = value is not None and not math.isnan(value) and breached(reading)
            # Consecutive looks over the threshold; a look without data neither extends nor breaks the streak.
            streaks[g.name] = streaks.get(g.name, 0) + 1 if over else (streaks.get(g.name, 0) if value is None else 0)
            guardrails.append(replace(reading, tolerated=over and streaks[g.name] < g.breaches))
        state = {**state, "breaches": streaks}
        elapsed = now - _at(state["step_started_at"])
        bad = [r for r in results.values() if r.outcome != "value"]
        totals = state["totals"]
        if sick:  # the counts stay unread: the next healthy look adds them up from the last reading
            obs = Observation(None, None, elapsed, tuple(guardrails), Source.UNFIT, sick)
        elif bad:
            worst = min(bad, key=lambda r: r.outcome != "error")  # an error outranks no data
            source = Source.ERROR if worst.outcome == "error" else Source.NO_DATA
            obs = Observation(None, None, elapsed, tuple(guardrails), source, worst.error or "no series")
        else:
            reading = {m: _by_arm(r, self.spec.track_label) for m, r in results.items()}
            tallies = {
                m: {arm: advance(Tally.from_dict(state["tallies"][m][arm]), reading[m][arm]) for arm in ARMS}
                for m in reading
            }
            totals = {arm: {m: tallies[m][arm].total for m in reading} for arm in ARMS}
            resets = sum(t.resets for by_arm in tallies.values() for t in by_arm.values())
            state = {**state, "totals": totals, "resets": resets,
                     "tallies": {m: {arm: t.as_dict() for arm, t in by_arm.items()} for m, by_arm in tallies.items()}}  # fmt: skip
            obs = Observation(
                Arm(**totals["stable"]), Arm(**totals["canary"]), elapsed, tuple(guardrails),
                carried_statistic=float(state.get("carried", 0.0)),
            )
        step = self.spec.plan.steps[state["step"]]
        verdict = judge(obs, replace(self.spec.judge, min_duration=step.min_duration))
        measurement = {
            "at": _iso(now), "step": state["step"] + 1, "weight": self.spec.plan.steps[state["step"]].weight,
            "verdict": verdict.outcome.value, "reason": verdict.reason, "statistic": verdict.statistic,
            "threshold": verdict.threshold, "ratio": verdict.ratio, "design_effect": verdict.design_effect,
            "stable": dict(totals["stable"]), "canary": dict(totals["canary"]),
            "guardrails": {g.name: g.value for g in guardrails},
        }  # fmt: skip
        return verdict, state, measurement

    def _analysis_done(self, state: dict[str, Any], now: datetime, outcome: str) -> None:
        if state.get("analysis_started_at"):
            seconds = (now - _at(state["analysis_started_at"])).total_seconds()
            self.metrics.analysis_duration.labels(model=self.model, outcome=outcome).observe(seconds)


def _unhealthy(canary: DeploymentStatus, image: str | None, replicas: int) -> str:
    """Why the canary is not fit to be judged right now; "" when it is."""
    if canary.image != image:
        return f"canary unhealthy: it runs {canary.image}, not {image}"
    if canary.replicas != replicas or canary.ready_replicas < replicas:
        return f"canary unhealthy: {canary.ready_replicas}/{replicas} pod(s) ready"
    return ""


def shift_wait(state: dict[str, Any], by: timedelta) -> dict[str, Any]:
    """The canary state after a pause of `by`: the wait for a ready canary does not count the pause."""
    if not state.get("stage_since"):
        return state
    return {**state, "stage_since": _iso(_at(state["stage_since"]) + by)}


def _by_arm(result: QueryResult, track_label: str) -> dict[str, dict[str, float]]:
    """Raw counter values per series (per pod), split by the track label; other tracks are left out."""
    out: dict[str, dict[str, float]] = {arm: {} for arm in ARMS}
    for s in result.samples:
        arm = s.labels.get(track_label)
        if arm in out:
            out[arm][series_key(s.labels)] = s.value
    return out


def _stable_on(status: RolloutStatus, image: str) -> bool:
    s = status.stable
    return s.image == image and s.settled and s.ready_replicas == s.replicas


def _promoted(status: RolloutStatus, image: str) -> bool:
    s, c = status.stable, status.canary
    return s.image == image and s.settled and s.ready_replicas == s.replicas and c.replicas == 0 and c.settled


def _state(run: Run) -> dict[str, Any]:
    return dict(run.extra.get("canary") or {})  # type: ignore[call-overload]


def _verdict_json(v: Verdict) -> dict[str, object]:
    return {"outcome": v.outcome.value, "reason": v.reason, "statistic": v.statistic, "threshold": v.threshold,
            "ratio": v.ratio, "design_effect": v.design_effect}  # fmt: skip


def _iso(t: datetime) -> str:
    return t.isoformat()


def _at(s: str) -> datetime:
    return datetime.fromisoformat(s)
