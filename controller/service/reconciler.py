"""The reconcile loop: one step for every live run per tick, and queued runs started as slots free up.

Everything it needs is in the store, so a tick is safe at any time, after any crash.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Mapping, Protocol

from controller.core.policy import PolicyConfig, runs_to_start
from controller.core.runs import LIVE, Phase, Run, held, overdue
from controller.observability import Metrics, get_logger
from controller.ports import IntakeStore, ReadStore, RunStore, StoreUnavailable
from controller.service.ledger import RunLedger
from controller.service.pipelines import PipelineTracker

CANARY_PHASES = (Phase.DEPLOYING, Phase.ANALYZING, Phase.PROMOTING, Phase.ROLLING_BACK)


class CanaryStep(Protocol):
    async def step(self, run: Run) -> None: ...


class PausedModels(Protocol):
    async def paused_models(self) -> set[str]: ...


class ReconcilerStore(RunStore, ReadStore, IntakeStore, Protocol):
    """Live runs, counts for /metrics, and pruning."""


@dataclass
class Reconciler:
    ledger: RunLedger
    store: ReconcilerStore
    policy: PolicyConfig
    pipelines: PipelineTracker
    pauses: PausedModels
    metrics: Metrics
    canaries: Mapping[str, CanaryStep] = field(default_factory=dict)
    # Steps run concurrently, one at a time per run: a slow GitLab call holds up its own run, not the others.
    # A tick waits `step_wait` seconds for them (None: until done); slower ones go on in the background.
    step_wait: float | None = None
    log: Any = field(default_factory=get_logger)
    _stepping: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def tick(self) -> None:
        """One step for every live run that is not still busy with its previous one."""
        with self.metrics.ticks.time():
            started = []
            for run in await self.store.runs_in(LIVE):
                if run.id in self._stepping:
                    continue  # its previous step is still waiting on something
                task = asyncio.create_task(self._guarded_step(run), name=f"step-{run.id}")
                self._stepping[run.id] = task
                task.add_done_callback(self._forget(run.id))
                started.append(task)
            if started:
                await asyncio.wait(started, timeout=self.step_wait)
            await self.start_queued()
            self.metrics.set_run_counts(await self.store.counts_by_phase())

    def _forget(self, run_id: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._stepping.pop(run_id, None)

        return done

    async def run_loop(self, interval: float) -> None:
        """A tick on every wake-up, and at least every `interval` seconds."""
        while True:
            self.ledger.wake.clear()
            try:
                await self.tick()
            except StoreUnavailable as exc:
                self.ledger.store_error(exc, where="tick")
            except Exception:
                self.log.exception("tick_failed")
            try:
                await asyncio.wait_for(self.ledger.wake.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass

    async def aclose(self) -> None:
        """Stop steps still in flight (shutdown). Their runs are picked up where they are by the next process."""
        tasks = list(self._stepping.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _guarded_step(self, run: Run) -> None:
        try:
            await self.step(run)
        except StoreUnavailable as exc:
            self.ledger.store_error(exc, run_id=run.id, model=run.model)
        except Exception:  # one broken run must not stop the others
            self.log.exception("step_failed", run_id=run.id, model=run.model)

    async def step(self, run: Run) -> None:
        late = None if run.paused else overdue(run, self.ledger.clock.now())  # a paused canary waits for its operator
        if late is not None:
            to, cause = late
            # Ended first, then the pipeline (or the one a create in doubt made) is canceled: nobody follows it.
            if await self.ledger.move(run, to, cause) and run.phase in (Phase.TRIGGERING, Phase.TRAINING):
                await self.pipelines.cancel(run)
            return
        if run.phase is Phase.TRIGGERING:
            await self.pipelines.trigger(run)
        elif run.phase is Phase.TRAINING:
            await self.pipelines.follow(run)
        elif run.phase in CANARY_PHASES:
            canary = self.canaries.get(run.model)
            if canary is not None:
                await canary.step(run)
            elif run.phase is Phase.DEPLOYING:
                # A retrain-only model (batch scoring, a registry push): the image is the outcome.
                await self.ledger.move(run, Phase.SUCCEEDED, f"model {run.model} has no canary: image {run.image} "
                                       "recorded, nothing deployed")  # fmt: skip
            elif run.phase is Phase.ROLLING_BACK:
                await self.ledger.move(run, Phase.ROLLED_BACK, "nothing was deployed")

    async def start_queued(self) -> None:
        async with self.ledger.lock:
            live = await self.store.runs_in(LIVE)
            active = sum(1 for r in live if r.phase.active)
            queued = [r for r in live if r.phase is Phase.QUEUED]  # arrival order from the store
            if not queued:
                return
            paused = await self.pauses.paused_models()
            waiting = frozenset(r.id for r in queued if held(r, paused))
            start = set(runs_to_start([r.id for r in queued], active, self.policy.max_concurrent, waiting))
            for run in queued:
                if run.id in start:
                    await self.ledger.move_locked(run, Phase.TRIGGERING, "a concurrency slot freed up")

    async def prune(self, retention: timedelta) -> int:
        """Forget notifications and decisions older than `retention` (runs and their history stay)."""
        async with self.ledger.lock:
            removed = await self.store.prune(self.ledger.clock.now() - retention)
        if removed:
            self.log.info("store_pruned", decisions=removed, retention_s=retention.total_seconds())
        return removed
