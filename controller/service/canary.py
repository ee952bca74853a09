"""A run's canary, from `deploying` to `succeeded` or `rolled_back`, one step per tick.

Three parts, as Argo Rollouts separates measuring from assessing: the Analyst only reads the metrics port, the
Driver only moves Deployments through the Rollout port, and core/assess.py decides. The room in between keeps the
state in the run (through the ledger), so a restarted controller carries on at the same step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from controller.core import assess
from controller.core.assess import Reading, Readings
from controller.core.canary import CanarySpec, Next, promoted, stable_on, unfit
from controller.core.counters import series_key
from controller.core.durations import format_duration
from controller.core.judge import Source
from controller.core.runs import Phase, Run
from controller.core.state import ARMS, CanaryStage, CanaryState
from controller.observability import Metrics, get_logger
from controller.ports import Clock, MetricsSource, QueryResult, Rollout, RolloutError, RolloutStatus
from controller.service.ledger import RunLedger

@dataclass
class Analyst:
    """Reads the canary's counters and guardrails; knows PromQL results, not verdicts."""

    spec: CanarySpec
    source: MetricsSource

    async def counters(self) -> tuple[Reading | None, str]:
        """Raw counter values per arm and series, or None and why (which counter, what the source said)."""
        results = await self._counters()
        for name, r in results.items():
            if r.outcome != "value":
                return None, f"{name}: {r.error or 'no series'}"
        return {m: self._by_arm(r) for m, r in results.items()}, ""

    async def readings(self) -> Readings:
        """Counters and guardrails for one look; an error outranks no data."""
        results = await self._counters()
        guardrails: dict[str, float | None] = {}
        for g in self.spec.guardrails:
            res = await self.source.query(g.query)
            guardrails[g.name] = res.samples[0].value if res.outcome == "value" and len(res.samples) == 1 else None
        bad = [r for r in results.values() if r.outcome != "value"]
        if bad:
            worst = min(bad, key=lambda r: r.outcome != "error")
            source = Source.ERROR if worst.outcome == "error" else Source.NO_DATA
            return Readings(None, guardrails, source, worst.error or "no series")
        return Readings({m: self._by_arm(r) for m, r in results.items()}, guardrails)

    async def _counters(self) -> dict[str, QueryResult]:
        return {m: await self.source.query(q) for m, q in self.spec.counters().items()}

    def _by_arm(self, result: QueryResult) -> dict[str, dict[str, float]]:
        """Raw counter values per series (per pod), split by the track label; other tracks are left out."""
        out: dict[str, dict[str, float]] = {arm: {} for arm in ARMS}
        for s in result.samples:
            arm = s.labels.get(self.spec.track_label)
            if arm in out:
                out[arm][series_key(s.labels)] = s.value
        return out


@dataclass
class Driver:
    """Moves the model's Deployments. Every call is idempotent, so a step repeated after a crash changes nothing."""

    rollout: Rollout

    async def status(self) -> RolloutStatus:
        return await self.rollout.status()

    async def scale_canary(self, image: str, replicas: int) -> RolloutStatus:
        await self.rollout.set_canary(image, replicas)
        return await self.rollout.status()

    async def promote(self, image: str, status: RolloutStatus) -> RolloutStatus:
        """Stable first; the canary's pods go only once stable runs the image on every pod, all ready.
        `status` is the one just read, so a tick reads it once before acting."""
        if not stable_on(status, image):
            await self.rollout.promote(image)
            status = await self.rollout.status()
            if not stable_on(status, image):
                return status
        if status.canary.replicas != 0:
            status = await self.scale_canary(status.canary.image or image, 0)
        return status

    async def roll_back(self, image: str | None, restore: str | None) -> RolloutStatus:
        """The canary to zero (keeping its image); stable back to `restore` when a promotion left it unready."""
        status = await self.rollout.status()
        if restore and status.stable.image != restore:
            await self.rollout.promote(restore)
            status = await self.rollout.status()
        image = status.canary.image or image
        if status.canary.replicas != 0 and image:
            status = await self.scale_canary(image, 0)
        return status


@dataclass
class CanaryRoom:
    model: str
    spec: CanarySpec
    analyst: Analyst
    driver: Driver
    ledger: RunLedger
    clock: Clock
    metrics: Metrics
    log: Any = field(default_factory=get_logger)

    async def step(self, run: Run) -> None:
        if run.paused:
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
            elif run.phase in (Phase.DEPLOYING, Phase.ANALYZING):
                await self.ledger.move(run, Phase.ROLLING_BACK, f"Kubernetes refused: {exc}")
            else:
                await self.ledger.move(run, Phase.FAILED, f"Kubernetes refused while {run.phase}: {exc}; needs a human")

    async def _deploying(self, run: Run) -> None:
        now = self.clock.now()
        if run.canary is None:
            stable = (await self.driver.status()).stable.image
            state = assess.begin(now)
            # Record the plan before acting on it: after a crash the next process repeats the same call.
            if not await self.ledger.record(run, lambda r: replace(r, canary=state, previous_image=stable)):
                return
            run = replace(run, canary=state, previous_image=stable)
        await self._roll_to_step(run, now)

    async def _roll_to_step(self, run: Run, now: datetime) -> None:
        """Scale the canary to the current step and wait until it is ready; then take the step's baseline."""
        assert run.image is not None and run.canary is not None
        state = run.canary
        weight = self.spec.plan.steps[state.step].weight
        want = assess.replicas(self.spec, state)
        self.metrics.canary_weight.labels(model=self.model).set(weight)
        c = (await self.driver.scale_canary(run.image, want)).canary  # the same spec again changes nothing
        waited = now - state.stage_since
        if not (c.image == run.image and c.replicas == want and c.settled):
            if waited >= self.spec.ready_timeout:
                await self.ledger.move(run, Phase.ROLLING_BACK, f"canary not ready after "
                                       f"{format_duration(self.spec.ready_timeout)}: {c.ready_replicas}/{want} ready, "
                                       f"{c.updated_replicas} updated, image {c.image}")  # fmt: skip
            return
        reading, why = await self.analyst.counters()
        if reading is None:
            # No baseline yet: try again next tick, for as long as a canary may take to become ready.
            if waited >= self.spec.ready_timeout:
                await self.ledger.move(run, Phase.ROLLING_BACK, f"no counters for a baseline after "
                                       f"{format_duration(self.spec.ready_timeout)} with the canary ready: {why}")  # fmt: skip
            return
        judging = assess.baseline(state, reading, now)
        cause = f"canary ready: {c.ready_replicas} pod(s) of {run.image} at step {state.step + 1} ({weight}%)"
        if run.phase is Phase.DEPLOYING:
            await self.ledger.move(run, Phase.ANALYZING, cause, lambda r: replace(r, canary=judging))
        else:
            await self.ledger.record(run, lambda r: replace(r, canary=judging))
            self.log.info("canary_step", run_id=run.id, model=self.model, detail=cause)

    async def _analyzing(self, run: Run) -> None:
        now = self.clock.now()
        state = run.canary
        assert state is not None
        if state.stage is not CanaryStage.JUDGING:
            await self._roll_to_step(run, now)
            return
        if not assess.due(state, now, self.spec.plan.interval):
            return
        # A canary that lost pods or its image since the baseline is not judged on what is left.
        sick = unfit((await self.driver.status()).canary, run.image, assess.replicas(self.spec, state))
        result = assess.assess(self.spec, state, await self.analyst.readings(), now, sick)
        verdict, action = result.verdict, result.action
        self.metrics.verdicts.labels(model=self.model, verdict=verdict.outcome.value).inc()
        self.log.info("canary_verdict", run_id=run.id, model=self.model, verdict=verdict.outcome.value,
                      next=action.next.value, step=state.step + 1, reason=verdict.reason)  # fmt: skip
        after = result.state
        if action.next is Next.ADVANCE:
            after = assess.next_step(after, verdict, now)
        look = result.look

        def update(r: Run) -> Run:
            return replace(r, canary=after, verdict=verdict)

        if action.next is Next.ROLLBACK:
            self._analysis_done(after, now, "rolled_back")
            await self.ledger.move(run, Phase.ROLLING_BACK, action.reason, update, look)
        elif action.next is Next.PROMOTE:
            self._analysis_done(after, now, "promoted")
            await self.ledger.move(run, Phase.PROMOTING, action.reason, update, look)
        elif await self.ledger.record(run, update, look) and action.next is Next.ADVANCE:
            self.log.info("canary_advance", run_id=run.id, model=self.model, detail=action.reason)
            await self._roll_to_step(update(run), now)

    async def _promoting(self, run: Run) -> None:
        """Stable never ready on the new image within ready_timeout: it gets its previous image back."""
        assert run.image is not None
        status = await self.driver.status()
        waited = self.clock.now() - run.phase_entered_at
        s, previous = status.stable, run.previous_image
        if not stable_on(status, run.image) and s.image == run.image and previous and waited >= self.spec.ready_timeout:
            why = (f"stable not ready on {run.image} after {format_duration(self.spec.ready_timeout)}: "
                   f"{s.ready_replicas}/{s.replicas} ready, {s.updated_replicas} updated; restoring {previous}")
            await self.ledger.move(run, Phase.ROLLING_BACK, why, lambda r: replace(r, restore_stable=previous))
            return
        status = await self.driver.promote(run.image, status)
        if promoted(status, run.image):
            self.metrics.canary_weight.labels(model=self.model).set(0)
            self.metrics.promotions.labels(model=self.model).inc()
            await self.ledger.move(run, Phase.SUCCEEDED, f"stable runs {run.image} on {status.stable.ready_replicas} pod(s)")

    async def _rolling_back(self, run: Run) -> None:
        restore = run.restore_stable
        status = await self.driver.roll_back(run.image, restore)
        stable_back = not restore or (status.stable.image == restore and status.stable.settled)
        if status.canary.replicas == 0 and status.canary.settled and stable_back:
            self.metrics.canary_weight.labels(model=self.model).set(0)
            self.metrics.rollbacks.labels(model=self.model).inc()
            how = "restored to" if restore else "still runs"
            await self.ledger.move(run, Phase.ROLLED_BACK, f"canary scaled to 0; stable {how} {status.stable.image}")

    def _analysis_done(self, state: CanaryState, now: datetime, outcome: str) -> None:
        if state.analysis_started_at is not None:
            seconds = (now - state.analysis_started_at).total_seconds()
            self.metrics.analysis_duration.labels(model=self.model, outcome=outcome).observe(seconds)
