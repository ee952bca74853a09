"""Use cases over the ports: take a notification, and drive live runs one step per tick."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator, Mapping, Protocol, cast

from controller.core.alerts import Alert, Notification, format_ts, parse_ts
from controller.core.callbacks import FailedEvent, ImageEvent, StageEvent, callback_token, effect_of
from controller.core.policy import Decision, PolicyConfig, decide, rate_limit, runs_to_start
from controller.core.runs import LIVE, TERMINAL as TERMINAL_PHASES, Phase, Run, Transition, held, new_run, overdue, transition
from controller.observability import Metrics, Throttle, get_logger
from controller.ports import (
    Clock,
    MetricsSource,
    Rollout,
    RolloutError,
    NotificationRecord,
    PipelineError,
    PipelineRef,
    PipelineStatus,
    PipelineRequest,
    PipelineRunner,
    Store,
    StoreUnavailable,
)
from controller.core.canary import CanarySpec
from controller.rollouts import Canary, shift_wait

LIVE_STABLE_TTL = timedelta(seconds=30)  # a cluster read of the stable image is shown this long
LIVE_STABLE_TIMEOUT = 2.0  # a status page waits no longer than this for the cluster
CANARY_PHASES = (Phase.DEPLOYING, Phase.ANALYZING, Phase.PROMOTING, Phase.ROLLING_BACK)


class UnknownRun(LookupError):
    pass


class RunFinished(Exception):
    pass


class Conflict(Exception):
    pass


class UnknownModel(LookupError):
    pass


class OpsStore(Protocol):
    """What the operator actions need from the store beyond the Store port."""

    async def create_run(self, run: Run, transition: Transition) -> None: ...

    async def model_controls(self) -> dict[str, dict[str, Any]]: ...

    async def set_model_paused(
        self, model: str, paused: bool, by: str, reason: str, at: datetime
    ) -> tuple[bool, dict[str, Any]]: ...

    async def audit_model(self, model: str, action: str, by: str, reason: str, at: datetime,
                          run_id: str | None = None, changed: bool = True) -> None: ...  # fmt: skip

    async def model_audit(self, model: str, limit: int = 20) -> list[dict[str, Any]]: ...

    async def last_run_in(self, model: str, phases: frozenset[Phase]) -> Run | None: ...


RETRYABLE = frozenset({Phase.FAILED, Phase.ROLLED_BACK, Phase.CANCELED})


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


class Controller:
    def __init__(
        self,
        *,
        policy: PolicyConfig,
        deadlines: Mapping[Phase, timedelta],
        store: Store,
        runners: Mapping[str, PipelineRunner],
        clock: Clock,
        metrics: Metrics,
        dry_run: bool = False,
        new_id: Callable[[], str] = new_run_id,
        callback_secret: str | None = None,
        callback_base_url: str = "",
        alerts_limit: int = 9000,
        step_wait: float | None = None,
        rollouts: Mapping[str, Rollout] | None = None,
        canary_specs: Mapping[str, CanarySpec] | None = None,
        metrics_source: MetricsSource | None = None,
    ):
        self.policy = policy
        self.deadlines = deadlines
        self.store = store
        self.runners = runners
        self.clock = clock
        self.metrics = metrics
        self.dry_run = dry_run
        self.new_id = new_id
        self.callback_secret = callback_secret
        self.callback_base_url = callback_base_url.rstrip("/")
        self.alerts_limit = alerts_limit
        self.log = get_logger()
        # A store that cannot write fails every tick of every run: one line per interval says so.
        self._store_quiet = Throttle()
        # One writer: decisions read state and write it back; nothing may interleave between the two.
        self._lock = asyncio.Lock()
        self.wake = asyncio.Event()
        # Steps run concurrently, one at a time per run: a slow GitLab call holds up its own run, not the others.
        # A tick waits `step_wait` seconds for them (None: until done); slower ones go on in the background.
        self.step_wait = step_wait
        self._stepping: dict[str, asyncio.Task[None]] = {}
        # model -> (when read, stable image the cluster runs): the status page's fallback before any
        # run has recorded one; cached so a page refresh is not a Kubernetes call per model.
        self._live_stable: dict[str, tuple[datetime, str | None]] = {}
        self.canaries: dict[str, Canary] = {}
        for name, spec in (canary_specs or {}).items():
            rollout = (rollouts or {}).get(name)
            if rollout is None or metrics_source is None:
                raise ValueError(f"model {name} has a canary spec but no rollout or metrics source")
            self.canaries[name] = Canary(name, spec, rollout, metrics_source, clock, metrics, self._move, self._record)

    # ---- intake -------------------------------------------------------------------------------------------

    async def handle_notification(self, notification: Notification, body: str) -> list[Decision]:
        """Decide every alert and make notification, decisions and new runs durable in one transaction.

        Raises StoreUnavailable when that write fails: nothing was acknowledged, Alertmanager will retry.
        """
        alerts = notification.alerts
        async with self._lock:
            now = self.clock.now()
            state = await self.store.policy_state(
                episodes=[a.episode for a in alerts],
                models=[m.name for m in self.policy.models],
                now=now,
                window_start=now - self.policy.budget_window,
                dry_run=self.dry_run,
                recent_limit={m.name: m.daily_budget for m in self.policy.models},
            )
            decisions, _ = decide(alerts, state, now, self.policy, _ids(self.new_id))
            new_runs = self._runs_for(decisions, alerts, now)
            record = NotificationRecord(
                received_at=now,
                body=body,
                group_key=notification.groupKey,
                receiver=notification.receiver,
                status=notification.status,
                truncated_alerts=notification.truncatedAlerts,
                external_url=notification.externalURL,
            )
            try:
                await self.store.record_notification(record, alerts, decisions, new_runs)
            except StoreUnavailable:
                self.metrics.store_errors.inc()
                raise
        for d, a in zip(decisions, alerts):
            self.metrics.alerts.labels(model=d.model or "none", decision=d.kind.value).inc()
            self.log.info(
                "alert_decided",
                decision=d.kind.value,
                model=d.model,
                reason=d.reason,
                run_id=d.run_id,
                fingerprint=a.fingerprint,
                alertname=a.alertname,
                starts_at=format_ts(a.startsAt),
                detail=d.detail,
            )
        for run, _t in new_runs:
            self._count_transition(run)
        if any(d.starts_run for d in decisions):
            self.wake.set()
        return decisions

    def _runs_for(self, decisions: list[Decision], alerts: list[Alert], now: datetime) -> list[tuple[Run, Transition]]:
        made: list[tuple[Run, Transition]] = []
        for d in decisions:
            if not d.starts_run:
                continue
            assert d.run_id is not None and d.model is not None
            reasons = tuple(dict.fromkeys(x.reason for x in decisions if x.run_id == d.run_id and x.reason))
            phase = Phase.QUEUED if d.kind.value == "queued" else Phase.TRIGGERING
            alert = alerts[d.index]
            cause = f"{d.kind.value}: {alert.alertname or 'alert'} ({d.reason})"
            run, t = new_run(d.run_id, d.model, phase, reasons, now, self.deadlines, cause, dry_run=self.dry_run)
            if self.dry_run:
                # Dry run: the decision and its rate-limit consequences are real, the pipeline is not.
                made.append((run, t))
                run, t = transition(run, Phase.CANCELED, "dry run: no pipeline was started", now, self.deadlines)
            made.append((run, t))
        return made

    # ---- reconcile loop -------------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One step for every live run. Safe to call at any time, after any crash: it starts from the store."""
        with self.metrics.ticks.time():
            started = []
            for run in await self.store.runs_in(LIVE):
                if run.id in self._stepping:
                    continue  # its previous step is still waiting on something
                task = asyncio.create_task(self._guarded_step(run), name=f"step-{run.id}")
                self._stepping[run.id] = task
                task.add_done_callback(lambda _, run_id=run.id: self._stepping.pop(run_id, None))
                started.append(task)
            if started:
                await asyncio.wait(started, timeout=self.step_wait)
            await self._start_queued()
            self.metrics.set_run_counts(await self.store.counts_by_phase())

    async def _guarded_step(self, run: Run) -> None:
        try:
            await self._step(run)
        except StoreUnavailable as exc:
            self._store_error(exc, run_id=run.id, model=run.model)
        except Exception:  # one broken run must not stop the others
            self.log.exception("step_failed", run_id=run.id, model=run.model)

    def _store_error(self, exc: StoreUnavailable, **where: Any) -> None:
        """Count every write the loop could not make; log what is wrong at most once per interval."""
        self.metrics.store_errors.inc()
        suppressed = self._store_quiet.allow("store")
        if suppressed is not None:
            self.log.error("store_unavailable", error=str(exc), suppressed=suppressed, **where)

    async def aclose(self) -> None:
        """Stop steps still in flight (shutdown). Their runs are picked up where they are by the next process."""
        tasks = list(self._stepping.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _step(self, run: Run) -> None:
        now = self.clock.now()
        paused = bool(run.extra.get("paused")) and run.phase in (Phase.DEPLOYING, Phase.ANALYZING)
        late = None if paused else overdue(run, now)  # a paused canary waits for its operator, not the clock
        if late is not None:
            to, cause = late
            # Ended first, then the pipeline (or the one a create in doubt made) is canceled: nobody follows it.
            if await self._move(run, to, cause) and run.phase in (Phase.TRIGGERING, Phase.TRAINING):
                await self._cancel_pipeline(run)
            return
        if run.phase is Phase.TRIGGERING:
            await self._trigger(run)
        elif run.phase is Phase.TRAINING:
            await self._follow(run)
        elif run.phase in CANARY_PHASES:
            canary = self.canaries.get(run.model)
            if canary is not None:
                await canary.step(run)
            elif run.phase is Phase.DEPLOYING:
                await self._move(run, Phase.ROLLING_BACK, f"model {run.model} has no canary configured; "
                                 f"{run.image} was not deployed")  # fmt: skip
            elif run.phase is Phase.ROLLING_BACK:
                await self._move(run, Phase.ROLLED_BACK, "nothing was deployed")

    async def _start_queued(self) -> None:
        async with self._lock:
            live = await self.store.runs_in(LIVE)
            active = sum(1 for r in live if r.phase.active)
            queued = [r for r in live if r.phase is Phase.QUEUED]  # arrival order from the store
            if not queued:
                return
            paused = await self.paused_models()
            waiting = frozenset(r.id for r in queued if held(r, paused))
            start = set(runs_to_start([r.id for r in queued], active, self.policy.max_concurrent, waiting))
            for run in queued:
                if run.id in start:
                    await self._move_locked(run, Phase.TRIGGERING, "a concurrency slot freed up")

    async def _request(self, run: Run) -> PipelineRequest:
        variables: dict[str, str] = {}
        if self.callback_secret:
            variables["RETRAIN_CALLBACK_URL"] = f"{self.callback_base_url}/api/v1/runs/{run.id}/events"
            variables["RETRAIN_CALLBACK_TOKEN"] = callback_token(self.callback_secret, run.id)
        return PipelineRequest(
            run_id=run.id,
            model=run.model,
            reasons=run.reasons,
            created_at=run.created_at,
            alerts=fit_alerts(await self.store.list_decisions(200, run_id=run.id), self.alerts_limit),
            variables=variables,
        )

    async def _trigger(self, run: Run) -> None:
        runner = self.runners.get(run.model)
        if runner is None:
            await self._move(run, Phase.FAILED, f"no pipeline runner configured for model {run.model}")
            return
        request = await self._request(run)
        attempts = int(run.extra.get("trigger_attempts", 0))  # type: ignore[call-overload]
        now = self.clock.now()
        try:
            # An earlier attempt, maybe by a process that died mid-call, may have started the pipeline already.
            ref = await runner.find(request) if attempts else None
            how = "found the pipeline already started for this run"
            if ref is None:
                if attempts and _settling(run, now, float(getattr(runner, "create_settle_s", 0.0))):
                    return  # the last create may still land: keep looking, create again only after the window
                # Persist the attempt before making it: after a crash the next process knows to look first.
                if not await self._record(run, {"trigger_attempts": attempts + 1, "trigger_attempt_at": format_ts(now)}):
                    return  # the run moved on meanwhile (canceled, deadline)
                ref = await runner.trigger(request)
                how = "pipeline started"
        except PipelineError as exc:
            self.metrics.pipeline_errors.labels(model=run.model, kind="permanent" if exc.permanent else "transient").inc()
            if exc.permanent:
                await self._move(run, Phase.FAILED, f"pipeline could not be started: {exc}")
            else:
                self.log.warning("pipeline_trigger_retry", run_id=run.id, model=run.model, error=str(exc))
            return
        cause = f"{how}: {ref.id}"
        if not await self._move(run, Phase.TRAINING, cause, pipeline_id=ref.id, pipeline_url=ref.web_url):
            fresh = await self.store.get_run(run.id)
            if fresh is not None and fresh.phase.terminal:  # aborted or overdue while the create was in flight
                self.log.warning("pipeline_orphaned", run_id=run.id, model=run.model, pipeline_id=ref.id,
                                 detail=f"the run is {fresh.phase}; canceling the pipeline it no longer follows")
                await self._cancel_pipeline(replace(fresh, pipeline_id=ref.id, pipeline_url=ref.web_url))

    async def _follow(self, run: Run) -> None:
        if run.image:  # the callback already told us; no need to ask the pipeline
            await self._on_pipeline_status(run, PipelineStatus("running"))
            return
        runner = self.runners.get(run.model)
        if runner is None or run.pipeline_id is None:
            await self._move(run, Phase.FAILED, "training run has no pipeline to follow")
            return
        try:
            status = await runner.status(PipelineRef(run.pipeline_id, run.pipeline_url))
        except PipelineError as exc:
            self.metrics.pipeline_errors.labels(model=run.model, kind="status").inc()
            self.log.warning("pipeline_status_retry", run_id=run.id, model=run.model, error=str(exc))
            return
        await self._on_pipeline_status(run, status)

    async def _on_pipeline_status(self, run: Run, status: PipelineStatus) -> None:
        if run.image and run.phase is Phase.TRAINING:
            await self._move(run, Phase.DEPLOYING, f"pipeline reported image {run.image}")
            return
        if not status.finished:
            return
        if status.state == "success":
            await self._move(run, Phase.FAILED, "pipeline succeeded without reporting an image")
            return
        detail = f": {status.detail}" if status.detail else ""
        await self._move(run, Phase.FAILED, f"pipeline {status.state}{detail}")

    async def _cancel_pipeline(self, run: Run) -> None:
        """Cancel the run's pipeline; with none on record but a create attempted, the one that create made."""
        runner = self.runners.get(run.model)
        if runner is None:
            return
        try:
            if run.pipeline_id is not None:
                ref: PipelineRef | None = PipelineRef(run.pipeline_id, run.pipeline_url)
            elif run.extra.get("trigger_attempts"):
                ref = await runner.find(await self._request(run))
            else:
                ref = None
            if ref is not None:
                await runner.cancel(ref)
        except PipelineError as exc:
            self.log.warning("pipeline_cancel_failed", run_id=run.id, model=run.model, error=str(exc))

    async def _move(
        self, run: Run, to: Phase, cause: str, extra: Mapping[str, object] | None = None, **changes: Any
    ) -> bool:
        # `run` may be stale (read at the start of a tick): a callback may have recorded stages or an image
        # since. Move the stored copy, so nothing recorded meanwhile is written over.
        async with self._lock:
            fresh = await self.store.get_run(run.id)
            if fresh is None or fresh.phase is not run.phase:
                self.log.info("transition_skipped", run_id=run.id, model=run.model, to=to.value, why="run moved on")
                return False
            if extra:
                fresh = _with_changes(fresh, extra)
            return await self._move_locked(fresh, to, cause, **changes)

    async def _record(self, run: Run, changes: Mapping[str, object]) -> bool:
        """Save fields on the stored copy of a run still in `run.phase`; False if it moved on."""
        async with self._lock:
            fresh = await self.store.get_run(run.id)
            if fresh is None or fresh.phase is not run.phase:
                return False
            return await self.store.update_run(_with_changes(fresh, changes))

    async def _move_locked(self, run: Run, to: Phase, cause: str, **changes: Any) -> bool:
        updated, t = transition(run, to, cause, self.clock.now(), self.deadlines, **changes)
        if not await self.store.apply(updated, t):
            self.log.info("transition_skipped", run_id=run.id, model=run.model, to=to.value, why="run moved on")
            return False
        self._count_transition(updated)
        log = self.log.warning if to is Phase.FAILED else self.log.info
        log("run_transition", run_id=run.id, model=run.model, from_phase=run.phase.value, phase=to.value, cause=cause)
        if to.terminal:
            self.wake.set()  # a slot may have freed up for a queued run
        return True

    def _count_transition(self, run: Run) -> None:
        self.metrics.transitions.labels(model=run.model, phase=run.phase.value).inc()

    # ---- operator actions -----------------------------------------------------------------------------------

    async def operate(self, run_id: str, action: str, who: str = "operator") -> dict[str, Any]:
        """pause / resume / abort / promote a run. Idempotent where it can be: pausing a paused run is a no-op."""
        to_cancel: Run | None = None
        async with self._lock:
            run = await self.store.get_run(run_id)
            if run is None:
                raise UnknownRun(run_id)
            if run.phase.terminal:
                raise RunFinished(f"run {run_id} is {run.phase}")
            now = self.clock.now()
            canary_live = run.phase in (Phase.DEPLOYING, Phase.ANALYZING)
            if action == "pause":
                if not canary_live:
                    raise Conflict(f"only a deploying or analyzing run can be paused; this one is {run.phase}")
                if not run.extra.get("paused"):
                    await self.store.update_run(_with_changes(run, {"paused": True, "paused_at": now.isoformat()}))
                detail = f"paused by {who}: the canary holds its weight, no verdict acts, no deadline runs"
            elif action == "resume":
                if not run.extra.get("paused"):
                    detail = "not paused"
                else:
                    since = datetime.fromisoformat(str(run.extra["paused_at"]))
                    # The pause does not count against the phase's deadline.
                    deadline = run.deadline_at + (now - since) if run.deadline_at else None
                    changes: dict[str, Any] = {"paused": False, "paused_at": None}
                    if isinstance(run.extra.get("canary"), dict):  # nor against the wait for a ready canary
                        changes["canary"] = shift_wait(cast(dict[str, Any], run.extra["canary"]), now - since)
                    resumed = replace(_with_changes(run, changes), deadline_at=deadline)
                    await self.store.update_run(resumed)
                    detail = f"resumed by {who}"
            elif action == "abort":
                if canary_live:
                    await self._move_locked(run, Phase.ROLLING_BACK, f"aborted by {who}")
                elif run.phase in (Phase.QUEUED, Phase.TRIGGERING, Phase.TRAINING):
                    # Canceled first, the pipeline after the lock: a slow GitLab must not hold up every webhook
                    # and callback meanwhile. Its callbacks are refused from here on (the run is finished).
                    if await self._move_locked(run, Phase.CANCELED, f"aborted by {who}"):
                        to_cancel = run
                else:
                    raise Conflict(f"run is {run.phase}: it is already finishing")
                detail = f"aborted by {who}"
            elif action == "promote":
                if run.phase is not Phase.ANALYZING:
                    raise Conflict(f"only an analyzing run can be promoted; this one is {run.phase}")
                verdict = (run.extra.get("verdict") or {}).get("outcome", "none")  # type: ignore[union-attr]
                await self._move_locked(run, Phase.PROMOTING, f"promoted by {who} (last verdict: {verdict})")
                detail = f"promoted by {who}"
            else:
                raise ValueError(f"unknown action {action!r}")
        if to_cancel is not None:
            await self._cancel_pipeline(to_cancel)
        self.log.info("run_operated", run_id=run_id, model=run.model, action=action, detail=detail)
        self.wake.set()
        current = await self.store.get_run(run_id)
        assert current is not None
        return {"run_id": run_id, "phase": current.phase.value, "action": action, "detail": detail}

    # ---- operator API: audited, idempotent actions on runs and models ------------------------------------------

    @property
    def _ops(self) -> OpsStore:
        return cast(OpsStore, self.store)

    def model_names(self) -> list[str]:
        return [m.name for m in self.policy.models]

    def _audit_entry(self, action: str, who: str, why: str, changed: bool, detail: str, **more: Any) -> dict[str, Any]:
        entry = {"at": format_ts(self.clock.now()), "action": action, "by": who, "reason": why, "changed": changed,
                 "detail": detail}  # fmt: skip
        entry.update(more)
        return entry

    async def _audit_run(self, run_id: str, entry: Mapping[str, Any]) -> None:
        async with self._lock:
            fresh = await self.store.get_run(run_id)
            if fresh is None:
                return
            audit = list(fresh.extra.get("audit") or [])  # type: ignore[call-overload]
            audit.append(dict(entry))
            await self.store.update_run(_with_changes(fresh, {"audit": audit}))

    async def act_on_run(self, run_id: str, action: str, who: str, why: str = "") -> dict[str, Any]:
        """abort / promote / pause / resume / retry a run on an operator's word, audited on the run.

        Raises UnknownRun (404) and Conflict or RunFinished (409). Repeating an action that already took effect
        answers `changed: false`.
        """
        if action == "retry":
            return await self._retry(run_id, who, why)
        before = await self.store.get_run(run_id)
        if before is None:
            raise UnknownRun(run_id)
        by = f"{who}: {why}" if why else who
        unchanged: str | None = None
        if action == "abort":
            if before.phase is Phase.SUCCEEDED:
                raise Conflict(f"run {run_id} succeeded: its image was promoted, there is nothing to abort")
            if before.phase.terminal or before.phase is Phase.ROLLING_BACK:
                unchanged = f"run is already {before.phase}: nothing to abort"
        elif action == "promote":
            if before.phase in (Phase.PROMOTING, Phase.SUCCEEDED):
                unchanged = f"run is already {before.phase}"
            elif before.phase is not Phase.ANALYZING:
                raise Conflict(f"only an analyzing run can be promoted; run {run_id} is {before.phase}")
        elif action == "pause":
            if before.extra.get("paused") and not before.phase.terminal:
                unchanged = "already paused"
        elif action == "resume":
            if not before.extra.get("paused") and not before.phase.terminal:
                unchanged = "not paused"
        else:
            raise ValueError(f"unknown action {action!r}")
        if unchanged is not None:
            result = {"run_id": run_id, "phase": before.phase.value, "action": action, "detail": unchanged}
            changed = False
        else:
            result = await self.operate(run_id, action, by)
            changed = True
        entry = self._audit_entry(action, who, why, changed, str(result["detail"]))
        await self._audit_run(run_id, entry)
        return {**result, "changed": changed, "audit": entry}

    async def _retry(self, run_id: str, who: str, why: str) -> dict[str, Any]:
        old = await self.store.get_run(run_id)
        if old is None:
            raise UnknownRun(run_id)
        if old.phase not in RETRYABLE:
            raise Conflict(f"only a failed, rolled back or canceled run can be retried; run {run_id} is {old.phase}")
        cause = f"retry of run {run_id} by {who}" + (f": {why}" if why else "")
        entry = self._audit_entry("retry", who, why, True, cause, retry_of=run_id)
        run = await self._start_manual(old.model, old.reasons or ("manual",), cause, {"retry_of": run_id,
                                                                                      "audit": [entry]})  # fmt: skip
        await self._audit_run(run_id, {**entry, "detail": f"retried as run {run.id}", "new_run": run.id})
        await self._ops.audit_model(old.model, "retry", who, why, self.clock.now(), run_id=run.id)
        return {"run_id": run.id, "retry_of": run_id, "model": run.model, "phase": run.phase.value,
                "action": "retry", "detail": cause, "changed": True, "audit": entry}  # fmt: skip

    async def retrain(self, model: str, who: str, why: str = "") -> dict[str, Any]:
        """A manual run for `model`: not held by cooldown or budget, queued when the concurrency cap is full."""
        if model not in self.model_names():
            raise UnknownModel(model)
        cause = f"manual retrain by {who}" + (f": {why}" if why else "")
        entry = self._audit_entry("retrain", who, why, True, cause)
        run = await self._start_manual(model, ("manual",), cause, {"manual_reason": why, "audit": [entry]})
        await self._ops.audit_model(model, "retrain", who, why, self.clock.now(), run_id=run.id)
        return {"run_id": run.id, "model": model, "phase": run.phase.value, "action": "retrain", "detail": cause,
                "changed": True, "audit": entry}  # fmt: skip

    async def _start_manual(self, model: str, reasons: tuple[str, ...], cause: str, extra: Mapping[str, Any]) -> Run:
        async with self._lock:
            now = self.clock.now()
            state = await self.store.policy_state(
                episodes=[], models=[model], now=now, window_start=now - self.policy.budget_window,
                dry_run=self.dry_run, recent_limit={m.name: m.daily_budget for m in self.policy.models},
            )  # fmt: skip
            live = state.models[model].live_run
            if live is not None:
                raise Conflict(f"model {model} has a live run {live}: abort it or wait for it to end")
            full = state.active_runs >= self.policy.max_concurrent
            queued = full or state.waiting > 0  # behind the runs already waiting, as alerts' runs are
            phase = Phase.QUEUED if queued else Phase.TRIGGERING
            ahead = f"{self.policy.max_concurrent} runs already active" if full else f"{state.waiting} queued run(s) go first"
            why = f"{cause} (queued: {ahead})" if queued else cause
            run, t = new_run(self.new_id(), model, phase, reasons, now, self.deadlines, why, trigger="manual",
                             dry_run=self.dry_run)  # fmt: skip
            run = _with_changes(run, extra)
            await self._ops.create_run(run, t)
            self._count_transition(run)
            if self.dry_run:
                await self._move_locked(run, Phase.CANCELED, "dry run: no pipeline was started")
        self.log.info("manual_run", run_id=run.id, model=model, phase=run.phase.value, cause=why)
        self.wake.set()
        current = await self.store.get_run(run.id)
        assert current is not None
        return current

    async def set_model_paused(self, model: str, paused: bool, who: str, why: str = "") -> dict[str, Any]:
        """Pause (alerts are recorded, start nothing) or resume a model. Persisted and audited; idempotent."""
        if model not in self.model_names():
            raise UnknownModel(model)
        async with self._lock:  # decisions read the pause under the same lock
            changed, control = await self._ops.set_model_paused(model, paused, who, why, self.clock.now())
        action = "pause" if paused else "resume"
        self.log.info("model_operated", model=model, action=action, by=who, reason=why, changed=changed)
        return {"model": model, "action": action, "changed": changed, "paused": control["paused"],
                "by": control["by"], "since": control["at"], "reason": control["reason"]}  # fmt: skip

    async def paused_models(self) -> set[str]:
        return {m for m, c in (await self._ops.model_controls()).items() if c.get("paused")}

    async def models_status(self) -> list[dict[str, Any]]:
        """model_overview, plus pause, stable image, last outcome and the latest operator actions."""
        controls = await self._ops.model_controls()
        out = []
        for item in await self.model_overview():
            name = item["name"]
            control = controls.get(name) or {"paused": False}
            done = await self._ops.last_run_in(name, frozenset({Phase.SUCCEEDED}))
            last = await self._ops.last_run_in(name, TERMINAL_PHASES)
            stable = done.image if done else None
            if stable is None and last is not None:
                stable = last.extra.get("previous_image")  # type: ignore[assignment]
            if stable is None:
                stable = await self._cluster_stable(name)
            out.append(
                {
                    **item,
                    "paused": {"by": control["by"], "since": control["at"], "reason": control["reason"]}
                    if control["paused"] else None,
                    "stable_image": stable,
                    "last_outcome": {"run_id": last.id, "phase": last.phase.value, "cause": last.cause,
                                     "ended_at": format_ts(last.ended_at) if last.ended_at else None}
                    if last else None,
                    "audit": await self._ops.model_audit(name, 10),
                }
            )  # fmt: skip
        return out

    async def _cluster_stable(self, model: str) -> str | None:
        """The stable image the model's rollout reports; None without a rollout or when it cannot say soon."""
        canary = self.canaries.get(model)
        if canary is None:
            return None
        now = self.clock.now()
        cached = self._live_stable.get(model)
        if cached is not None and timedelta(0) <= now - cached[0] < LIVE_STABLE_TTL:
            return cached[1]
        try:
            image = (await asyncio.wait_for(canary.rollout.status(), LIVE_STABLE_TIMEOUT)).stable.image
        except (RolloutError, TimeoutError) as exc:
            self.log.debug("stable_image_unknown", model=model, error=str(exc) or type(exc).__name__)
            image = None
        self._live_stable[model] = (now, image)
        return image

    # ---- pipeline news ------------------------------------------------------------------------------------

    async def handle_pipeline_event(self, run_id: str, event: StageEvent | ImageEvent | FailedEvent) -> dict[str, Any]:
        """A callback from the run's own pipeline. Idempotent; refuses finished runs."""
        async with self._lock:
            run = await self.store.get_run(run_id)
            if run is None:
                raise UnknownRun(run_id)
            if run.phase.terminal:
                raise RunFinished(f"run {run_id} is {run.phase}; it takes no more events")
            effect = effect_of(run, event)
            if effect.kind == "conflict":
                raise Conflict(effect.detail)
            if effect.kind == "record":
                await self.store.update_run(_with_changes(run, effect.changes or {}))
            elif effect.kind == "move":
                assert effect.to is not None
                updated = _with_changes(run, effect.changes or {})
                await self._move_locked(updated, effect.to, effect.detail)
        self.log.info("pipeline_event", run_id=run_id, model=run.model, pipeline_event=event.event,
                      effect=effect.kind, detail=effect.detail)  # fmt: skip
        if effect.kind == "move":
            self.wake.set()
        current = await self.store.get_run(run_id)
        assert current is not None
        return {"run_id": run_id, "phase": current.phase.value, "effect": effect.kind, "detail": effect.detail}

    async def handle_pipeline_hook(
        self, pipeline_id: str, status: PipelineStatus, run_id: str | None, web_url: str | None
    ) -> dict[str, Any]:
        """A GitLab pipeline hook: a backstop for lost callbacks and missed polls. Idempotent."""
        run = await self.store.get_run(run_id) if run_id else None
        if run is None:
            run = await self.store.run_by_pipeline(pipeline_id)
        if run is None:
            raise UnknownRun(run_id or f"pipeline {pipeline_id}")
        if run.phase is Phase.TRIGGERING:
            # We created it but lost the answer (or have not stored it yet): this is the run's pipeline.
            await self._move(run, Phase.TRAINING, f"pipeline hook: {pipeline_id}", pipeline_id=pipeline_id,
                             pipeline_url=web_url)  # fmt: skip
            run = await self.store.get_run(run.id)
            assert run is not None
        if run.phase is Phase.TRAINING and run.pipeline_id == pipeline_id:
            await self._on_pipeline_status(run, status)
        elif run.phase in (Phase.CANCELED, Phase.FAILED) and not status.finished:
            # Nobody follows this pipeline any more (the run was aborted or timed out, maybe before the create
            # came back): it would only spend a training budget and push an image no one deploys.
            self.log.warning("pipeline_orphaned", run_id=run.id, model=run.model, pipeline_id=pipeline_id,
                             detail=f"hook says {status.state} but the run is {run.phase}; canceling it")
            await self._cancel_pipeline(replace(run, pipeline_id=pipeline_id, pipeline_url=web_url))
        current = await self.store.get_run(run.id)
        assert current is not None
        return {"run_id": run.id, "phase": current.phase.value}

    async def prune(self, retention: timedelta) -> int:
        async with self._lock:
            removed = await self.store.prune(self.clock.now() - retention)
        if removed:
            self.log.info("store_pruned", decisions=removed, retention_s=retention.total_seconds())
        return removed

    async def model_overview(self) -> list[dict[str, Any]]:
        """Per model: live run, and what the rate limits allow right now."""
        now = self.clock.now()
        state = await self.store.policy_state(
            episodes=[],
            models=[m.name for m in self.policy.models],
            now=now,
            window_start=now - self.policy.budget_window,
            dry_run=self.dry_run,
        )
        out = []
        for m in self.policy.models:
            ms = state.models[m.name]
            live = await self.store.get_run(ms.live_run) if ms.live_run else None
            limit = rate_limit(m, ms, now, self.policy.budget_window)
            used = sum(1 for t in ms.recent_starts if t > now - self.policy.budget_window)
            out.append(
                {
                    "name": m.name,
                    "live_run": {"id": live.id, "phase": live.phase.value} if live else None,
                    "rate_limited": {"by": limit[0], "until": format_ts(limit[1])} if limit else None,
                    "cooldown_s": m.cooldown.total_seconds(),
                    "daily_budget": m.daily_budget,
                    "runs_in_window": used,
                    "last_ended_at": format_ts(ms.last_ended_at) if ms.last_ended_at else None,
                }
            )
        return out

    async def run_loop(self, interval: float) -> None:
        """The reconcile loop: a tick on every wake-up, and at least every `interval` seconds."""
        while True:
            self.wake.clear()
            try:
                await self.tick()
            except StoreUnavailable as exc:
                self._store_error(exc, where="tick")
            except Exception:
                self.log.exception("tick_failed")
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass


def _with_changes(run: Run, changes: Mapping[str, object]) -> Run:
    extra = dict(run.extra)
    image = run.image
    for key, value in changes.items():
        if key == "image":
            image = str(value)
        else:
            extra[key] = value
    return replace(run, image=image, extra=extra)


def fit_alerts(decisions: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The episodes behind a run, compact, oldest first, cut to fit a pipeline variable (GitLab: 10,000 chars)."""
    seen: dict[str, dict[str, Any]] = {}
    for d in reversed(decisions):
        if d["decision"] in ("accepted", "queued", "joined") and d["episode"] not in seen:
            seen[d["episode"]] = {
                "alertname": d["alertname"],
                "fingerprint": d["fingerprint"],
                "startsAt": d["starts_at"],
                "reason": d["reason"],
                "labels": d["labels"],
            }
    out: list[dict[str, Any]] = []
    size = 2
    for item in seen.values():
        size += len(json.dumps(item, separators=(",", ":"))) + 1
        if size > limit:
            break
        out.append(item)
    return out


def _ids(make: Callable[[], str]) -> Iterator[str]:
    while True:
        yield make()


def _settling(run: Run, now: datetime, window_s: float) -> bool:
    """Whether the run's last create attempt is too recent to rule out a late pipeline."""
    last = run.extra.get("trigger_attempt_at")
    if not window_s or not isinstance(last, str):
        return False
    return (now - parse_ts(last)).total_seconds() < window_s
