"""The pipeline's life for a run: trigger it (exactly once), follow it, cancel it, and take its news.

News comes three ways: callbacks from the pipeline itself, GitLab pipeline hooks, and polling. Hooks and polling
are backstops for a lost callback; all three are idempotent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Protocol

from controller.core.callbacks import Effect, FailedEvent, ImageEvent, StageEvent, callback_token, effect_of
from controller.core.runs import Phase, Run
from controller.core.state import TriggerAttempts
from controller.observability import Metrics, get_logger
from controller.ports import (
    PipelineError,
    PipelineHook,
    PipelineRef,
    PipelineRequest,
    PipelineRunner,
    PipelineStatus,
    ReadStore,
    RunStore,
)
from controller.service.errors import Conflict, RunFinished, UnknownRun
from controller.service.ledger import RunLedger


class PipelineStore(RunStore, ReadStore, Protocol):
    """Runs, and the decisions behind a run (its alerts go to the pipeline)."""


@dataclass
class PipelineTracker:
    ledger: RunLedger
    store: PipelineStore
    runners: Mapping[str, PipelineRunner]
    metrics: Metrics
    callback_secret: str | None = None
    callback_base_url: str = ""
    alerts_limit: int = 9000  # GitLab's limit on a variable is 10,000 characters
    log: Any = field(default_factory=get_logger)

    async def trigger(self, run: Run) -> None:
        """Start the run's pipeline, or find the one an earlier attempt (maybe of a dead process) started."""
        runner = self.runners.get(run.model)
        if runner is None:
            await self.ledger.move(run, Phase.FAILED, f"no pipeline runner configured for model {run.model}")
            return
        request = await self.request(run)
        tried = run.attempts.count
        now = self.ledger.clock.now()
        try:
            ref = await runner.find(request) if tried else None
            how = "found the pipeline already started for this run"
            if ref is None:
                last = run.attempts.last_at
                if tried and last is not None and (now - last).total_seconds() < runner.create_settle_s:
                    return  # the last create may still land: keep looking, create again only after the window
                # Persist the attempt before making it: after a crash the next process knows to look first.
                attempts = TriggerAttempts(tried + 1, now)
                if not await self.ledger.record(run, lambda r: replace(r, attempts=attempts)):
                    return  # the run moved on meanwhile (canceled, deadline)
                ref = await runner.trigger(request)
                how = "pipeline started"
        except PipelineError as exc:
            self.metrics.pipeline_errors.labels(model=run.model, kind="permanent" if exc.permanent else "transient").inc()
            if exc.permanent:
                await self.ledger.move(run, Phase.FAILED, f"pipeline could not be started: {exc}")
            else:
                self.log.warning("pipeline_trigger_retry", run_id=run.id, model=run.model, error=str(exc))
            return
        found = ref
        if not await self.ledger.move(run, Phase.TRAINING, f"{how}: {ref.id}",
                                      lambda r: replace(r, pipeline_id=found.id, pipeline_url=found.web_url)):  # fmt: skip
            fresh = await self.ledger.get(run.id)
            if fresh is not None and fresh.phase.terminal:  # aborted or overdue while the create was in flight
                self.log.warning("pipeline_orphaned", run_id=run.id, model=run.model, pipeline_id=ref.id,
                                 detail=f"the run is {fresh.phase}; canceling the pipeline it no longer follows")
                await self.cancel(replace(fresh, pipeline_id=ref.id, pipeline_url=ref.web_url))

    async def follow(self, run: Run) -> None:
        """Poll the pipeline of a training run (a backstop for callbacks and hooks)."""
        if run.image:  # the callback already told us; no need to ask the pipeline
            await self._on_status(run, PipelineStatus("running"))
            return
        runner = self.runners.get(run.model)
        if runner is None or run.pipeline_id is None:
            await self.ledger.move(run, Phase.FAILED, "training run has no pipeline to follow")
            return
        try:
            status = await runner.status(PipelineRef(run.pipeline_id, run.pipeline_url))
        except PipelineError as exc:
            self.metrics.pipeline_errors.labels(model=run.model, kind="status").inc()
            self.log.warning("pipeline_status_retry", run_id=run.id, model=run.model, error=str(exc))
            return
        await self._on_status(run, status)

    async def _on_status(self, run: Run, status: PipelineStatus) -> None:
        if run.image and run.phase is Phase.TRAINING:
            await self.ledger.move(run, Phase.DEPLOYING, f"pipeline reported image {run.image}")
        elif status.finished and status.state == "success":
            await self.ledger.move(run, Phase.FAILED, "pipeline succeeded without reporting an image")
        elif status.finished:
            detail = f": {status.detail}" if status.detail else ""
            await self.ledger.move(run, Phase.FAILED, f"pipeline {status.state}{detail}")

    async def cancel(self, run: Run) -> None:
        """Cancel the run's pipeline; with none on record but a create attempted, the one that create made."""
        runner = self.runners.get(run.model)
        if runner is None:
            return
        try:
            ref: PipelineRef | None = None
            if run.pipeline_id is not None:
                ref = PipelineRef(run.pipeline_id, run.pipeline_url)
            elif run.attempts.count:
                ref = await runner.find(await self.request(run))
            if ref is not None:
                await runner.cancel(ref)
        except PipelineError as exc:
            self.log.warning("pipeline_cancel_failed", run_id=run.id, model=run.model, error=str(exc))

    async def request(self, run: Run) -> PipelineRequest:
        variables: dict[str, str] = {}
        if self.callback_secret:
            variables["RETRAIN_CALLBACK_URL"] = f"{self.callback_base_url.rstrip('/')}/api/v1/runs/{run.id}/events"
            variables["RETRAIN_CALLBACK_TOKEN"] = callback_token(self.callback_secret, run.id)
        decisions = await self.store.list_decisions(200, run_id=run.id)
        return PipelineRequest(run_id=run.id, model=run.model, reasons=run.reasons, created_at=run.created_at,
                               alerts=fit_alerts(decisions, self.alerts_limit), variables=variables)  # fmt: skip

    async def handle_event(self, run_id: str, event: StageEvent | ImageEvent | FailedEvent) -> dict[str, str]:
        """A callback from the run's own pipeline. Idempotent; refuses finished runs."""
        async with self.ledger.lock:
            run = await self.ledger.get(run_id)
            if run is None:
                raise UnknownRun(run_id)
            if run.phase.terminal:
                raise RunFinished(f"run {run_id} is {run.phase}; it takes no more events")
            effect: Effect = effect_of(run, event)
            if effect.kind == "conflict":
                raise Conflict(effect.detail)
            if effect.kind == "record":
                await self.store.update_run(effect.apply(run))
            elif effect.kind == "move":
                assert effect.to is not None
                await self.ledger.move_locked(effect.apply(run), effect.to, effect.detail)
        self.log.info("pipeline_event", run_id=run_id, model=run.model, pipeline_event=event.event,
                      effect=effect.kind, detail=effect.detail)  # fmt: skip
        if effect.kind == "move":
            self.ledger.wake.set()
        current = await self.ledger.current(run_id)
        return {"run_id": run_id, "phase": current.phase.value, "effect": effect.kind, "detail": effect.detail}

    async def handle_hook(self, hook: PipelineHook) -> dict[str, object]:
        """A GitLab pipeline hook: a backstop for lost callbacks and missed polls. Idempotent."""
        run = await self.ledger.get(hook.run_id) if hook.run_id else None
        if run is None:
            run = await self.store.run_by_pipeline(hook.pipeline_id)
        if run is None:
            raise UnknownRun(hook.run_id or f"pipeline {hook.pipeline_id}")
        if run.phase is Phase.TRIGGERING:
            # We created it but lost the answer (or have not stored it yet): this is the run's pipeline.
            await self.ledger.move(run, Phase.TRAINING, f"pipeline hook: {hook.pipeline_id}",
                                   lambda r: replace(r, pipeline_id=hook.pipeline_id, pipeline_url=hook.web_url))  # fmt: skip
            run = await self.ledger.current(run.id)
        if run.phase is Phase.TRAINING and run.pipeline_id == hook.pipeline_id:
            await self._on_status(run, hook.status)
        elif run.phase in (Phase.CANCELED, Phase.FAILED) and not hook.status.finished:
            # Nobody follows this pipeline any more (the run was aborted or timed out, maybe before the create
            # came back): it would only spend a training budget and push an image no one deploys.
            self.log.warning("pipeline_orphaned", run_id=run.id, model=run.model, pipeline_id=hook.pipeline_id,
                             detail=f"hook says {hook.status.state} but the run is {run.phase}; canceling it")
            await self.cancel(replace(run, pipeline_id=hook.pipeline_id, pipeline_url=hook.web_url))
        current = await self.ledger.current(run.id)
        return {"run_id": run.id, "phase": current.phase.value}


def fit_alerts(decisions: list[dict[str, object]], limit: int) -> list[dict[str, object]]:
    """The episodes behind a run, compact, oldest first, cut to fit a pipeline variable (GitLab: 10,000 chars)."""
    seen: dict[object, dict[str, object]] = {}
    for d in reversed(decisions):
        if d["decision"] in ("accepted", "queued", "joined") and d["episode"] not in seen:
            seen[d["episode"]] = {"alertname": d["alertname"], "fingerprint": d["fingerprint"],
                                  "startsAt": d["starts_at"], "reason": d["reason"], "labels": d["labels"]}  # fmt: skip
    out: list[dict[str, object]] = []
    size = 2
    for item in seen.values():
        size += len(json.dumps(item, separators=(",", ":"))) + 1
        if size > limit:
            break
        out.append(item)
    return out
