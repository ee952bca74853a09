"""Operator actions: one function per action, one check each, every one audited (on the run or the model).

Repeating an action that already took effect answers `changed: false`; an action the state contradicts raises
Conflict or RunFinished (HTTP 409), an unknown run UnknownRun (404).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable

from controller.core.alerts import format_ts
from controller.core.assess import shift_wait
from controller.core.runs import Phase, Run
from controller.core.state import AuditEntry, ModelControl, Pause
from controller.observability import get_logger
from controller.ports import OpsStore
from controller.service.errors import Conflict, RunFinished, UnknownModel, UnknownRun
from controller.service.intake import Intake
from controller.service.ledger import RunLedger
from controller.service.pipelines import PipelineTracker

RETRYABLE = frozenset({Phase.FAILED, Phase.ROLLED_BACK, Phase.CANCELED})
CANARY_LIVE = (Phase.DEPLOYING, Phase.ANALYZING)


@dataclass(frozen=True)
class Done:
    """What an action did: its detail, whether it changed anything, and a pipeline to cancel after the lock."""

    detail: str
    changed: bool = True
    cancel: Run | None = None


Action = Callable[[Run, str], Awaitable[Done]]


@dataclass
class Operations:
    ledger: RunLedger
    store: OpsStore
    intake: Intake
    pipelines: PipelineTracker
    log: Any = field(default_factory=get_logger)

    async def act_on_run(self, run_id: str, action: str, who: str, why: str = "") -> dict[str, Any]:
        """abort / promote / pause / resume / retry a run on an operator's word, audited on the run."""
        if action == "retry":
            return await self.retry(run_id, who, why)
        act = self._actions().get(action)
        if act is None:
            raise ValueError(f"unknown action {action!r}")
        async with self.ledger.lock:
            run = await self.ledger.get(run_id)
            if run is None:
                raise UnknownRun(run_id)
            done = await act(run, f"{who}: {why}" if why else who)
        if done.cancel is not None:
            # After the lock: a slow GitLab must not hold up every webhook and callback meanwhile. The run's
            # callbacks are refused from here on (it is finished).
            await self.pipelines.cancel(done.cancel)
        entry = AuditEntry(self.ledger.clock.now(), action, who, why, done.changed, done.detail)
        await self.ledger.audit(run_id, entry)
        self.log.info("run_operated", run_id=run_id, model=run.model, action=action, detail=done.detail,
                      changed=done.changed)  # fmt: skip
        self.ledger.wake.set()
        current = await self.ledger.current(run_id)
        return {"run_id": run_id, "phase": current.phase.value, "action": action, "detail": done.detail,
                "changed": done.changed, "audit": entry.to_json()}  # fmt: skip

    def _actions(self) -> dict[str, Action]:
        return {"abort": self._abort, "promote": self._promote, "pause": self._pause, "resume": self._resume}

    async def _abort(self, run: Run, by: str) -> Done:
        if run.phase is Phase.SUCCEEDED:
            raise Conflict(f"run {run.id} succeeded: its image was promoted, there is nothing to abort")
        if run.phase.terminal or run.phase is Phase.ROLLING_BACK:
            return Done(f"run is already {run.phase}: nothing to abort", changed=False)
        if run.phase is Phase.PROMOTING:
            raise Conflict(f"run is {run.phase}: it is already finishing")
        if run.phase in CANARY_LIVE:
            await self.ledger.move_locked(run, Phase.ROLLING_BACK, f"aborted by {by}")
            return Done(f"aborted by {by}")
        moved = await self.ledger.move_locked(run, Phase.CANCELED, f"aborted by {by}")  # queued, triggering, training
        return Done(f"aborted by {by}", cancel=run if moved else None)

    async def _promote(self, run: Run, by: str) -> Done:
        if run.phase in (Phase.PROMOTING, Phase.SUCCEEDED):
            return Done(f"run is already {run.phase}", changed=False)
        if run.phase is not Phase.ANALYZING:
            raise Conflict(f"only an analyzing run can be promoted; run {run.id} is {run.phase}")
        verdict = run.verdict.outcome.value if run.verdict else "none"
        await self.ledger.move_locked(run, Phase.PROMOTING, f"promoted by {by} (last verdict: {verdict})")
        return Done(f"promoted by {by}")

    async def _pause(self, run: Run, by: str) -> Done:
        if run.phase.terminal:
            raise RunFinished(f"run {run.id} is {run.phase}")
        if run.pause is not None:  # also once an abort or a promotion moved the paused run on
            return Done("already paused", changed=False)
        if run.phase not in CANARY_LIVE:
            raise Conflict(f"only a deploying or analyzing run can be paused; this one is {run.phase}")
        await self.store_update(replace(run, pause=Pause(self.ledger.clock.now())))
        return Done(f"paused by {by}: the canary holds its weight, no verdict acts, no deadline runs")

    async def _resume(self, run: Run, by: str) -> Done:
        if run.phase.terminal:
            raise RunFinished(f"run {run.id} is {run.phase}")
        if run.pause is None:
            return Done("not paused", changed=False)
        held = self.ledger.clock.now() - run.pause.since
        # The pause counts neither against the phase's deadline nor against the wait for a ready canary.
        resumed = replace(run, pause=None, deadline_at=run.deadline_at + held if run.deadline_at else None,
                          canary=shift_wait(run.canary, held) if run.canary else None)  # fmt: skip
        await self.store_update(resumed)
        return Done(f"resumed by {by}")

    async def store_update(self, run: Run) -> None:
        """Save a run read under the ledger's lock (the caller holds it)."""
        await self.ledger.store.update_run(run)

    async def retry(self, run_id: str, who: str, why: str) -> dict[str, Any]:
        """A new run for the model of a failed, rolled back or canceled run, with the same reasons."""
        old = await self.ledger.get(run_id)
        if old is None:
            raise UnknownRun(run_id)
        if old.phase not in RETRYABLE:
            raise Conflict(f"only a failed, rolled back or canceled run can be retried; run {run_id} is {old.phase}")
        if old.model not in self.intake.model_names():
            raise Conflict(f"model {old.model} is no longer configured: run {run_id} cannot be retried")
        cause = f"retry of run {run_id} by {who}" + (f": {why}" if why else "")
        entry = AuditEntry(self.ledger.clock.now(), "retry", who, why, True, cause, retry_of=run_id)
        run = await self.intake.start_manual(old.model, old.reasons or ("manual",), cause,
                                             lambda r: replace(r, retry_of=run_id), audit=entry)  # fmt: skip
        await self.ledger.audit(run_id, replace(entry, detail=f"retried as run {run.id}", new_run=run.id))
        await self.store.audit_model(old.model, "retry", who, why, entry.at, run_id=run.id)
        return {"run_id": run.id, "retry_of": run_id, "model": run.model, "phase": run.phase.value,
                "action": "retry", "detail": cause, "changed": True, "audit": entry.to_json()}  # fmt: skip

    async def retrain(self, model: str, who: str, why: str = "") -> dict[str, Any]:
        """A manual run for `model`: not held by cooldown or budget, queued when the concurrency cap is full."""
        cause = f"manual retrain by {who}" + (f": {why}" if why else "")
        entry = AuditEntry(self.ledger.clock.now(), "retrain", who, why, True, cause)
        run = await self.intake.start_manual(model, ("manual",), cause, lambda r: replace(r, manual_reason=why or None),
                                             audit=entry)  # fmt: skip
        await self.store.audit_model(model, "retrain", who, why, entry.at, run_id=run.id)
        return {"run_id": run.id, "model": model, "phase": run.phase.value, "action": "retrain", "detail": cause,
                "changed": True, "audit": entry.to_json()}  # fmt: skip

    async def set_model_paused(self, model: str, paused: bool, who: str, why: str = "") -> dict[str, Any]:
        """Pause (alerts are recorded, start nothing) or resume a model. Persisted and audited; idempotent."""
        if model not in self.intake.model_names():
            raise UnknownModel(model)
        async with self.ledger.lock:  # decisions read the pause under the same lock
            changed, control = await self.store.set_model_paused(model, paused, who, why, self.ledger.clock.now())
        action = "pause" if paused else "resume"
        self.log.info("model_operated", model=model, action=action, by=who, reason=why, changed=changed)
        return {"model": model, "action": action, "changed": changed, **control_json(control)}


def control_json(c: ModelControl) -> dict[str, Any]:
    return {"paused": c.paused, "by": c.by, "since": format_ts(c.at) if c.at else None, "reason": c.reason}
