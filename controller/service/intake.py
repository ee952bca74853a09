"""Intake: Alertmanager notifications and manual starts become decisions and runs, durable before any answer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator, Mapping, Protocol

from controller.core.alerts import Alert, Notification, format_ts
from controller.core.policy import Decision, PolicyConfig, PolicyState, decide
from controller.core.runs import Phase, Run, Transition, new_run, transition
from controller.core.state import AuditEntry
from controller.observability import Metrics, get_logger
from controller.ports import IntakeStore, NotificationRecord, OpsStore, StoreUnavailable
from controller.service.errors import Conflict, UnknownModel
from controller.service.ledger import RunLedger, Update


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


class IntakeStoreFaces(IntakeStore, OpsStore, Protocol):
    """Notifications and policy state, and runs created by hand."""


@dataclass
class Intake:
    ledger: RunLedger
    store: IntakeStoreFaces
    policy: PolicyConfig
    deadlines: Mapping[Phase, timedelta]
    metrics: Metrics
    dry_run: bool = False
    new_id: Callable[[], str] = new_run_id
    log: Any = field(default_factory=get_logger)

    def model_names(self) -> list[str]:
        return [m.name for m in self.policy.models]

    async def policy_state(self, models: list[str], episodes: list[str] | None = None) -> PolicyState:
        """What the rate limits read: only as many recent starts per model as its daily budget needs."""
        now = self.ledger.clock.now()
        return await self.store.policy_state(
            episodes=episodes or [], models=models, now=now, window_start=now - self.policy.budget_window,
            dry_run=self.dry_run, recent_limit={m.name: m.daily_budget for m in self.policy.models},
        )  # fmt: skip

    async def handle_notification(self, notification: Notification, body: str) -> list[Decision]:
        """Decide every alert and make notification, decisions and new runs durable in one transaction.

        Raises StoreUnavailable when that write fails: nothing was acknowledged, Alertmanager will retry.
        """
        alerts = notification.alerts
        async with self.ledger.lock:
            now = self.ledger.clock.now()
            state = await self.policy_state(self.model_names(), [a.episode for a in alerts])
            decisions, _ = decide(alerts, state, now, self.policy, _ids(self.new_id))
            new_runs = self._runs_for(decisions, alerts, now)
            record = NotificationRecord(
                received_at=now, body=body, group_key=notification.groupKey, receiver=notification.receiver,
                status=notification.status, truncated_alerts=notification.truncatedAlerts,
                external_url=notification.externalURL,
            )  # fmt: skip
            try:
                await self.store.record_notification(record, alerts, decisions, new_runs)
            except StoreUnavailable:
                self.metrics.store_errors.inc()
                raise
        for d, a in zip(decisions, alerts):
            self.metrics.alerts.labels(model=d.model or "none", decision=d.kind.value).inc()
            self.log.info("alert_decided", decision=d.kind.value, model=d.model, reason=d.reason, run_id=d.run_id,
                          fingerprint=a.fingerprint, alertname=a.alertname, starts_at=format_ts(a.startsAt),
                          detail=d.detail)  # fmt: skip
        for run, _t in new_runs:
            self.ledger.count(run)
        if any(d.starts_run for d in decisions):
            self.ledger.wake.set()
        return decisions

    def _runs_for(self, decisions: list[Decision], alerts: list[Alert], now: datetime) -> list[tuple[Run, Transition]]:
        made: list[tuple[Run, Transition]] = []
        for d in decisions:
            if not d.starts_run:
                continue
            assert d.run_id is not None and d.model is not None
            reasons = tuple(dict.fromkeys(x.reason for x in decisions if x.run_id == d.run_id and x.reason))
            phase = Phase.QUEUED if d.kind.value == "queued" else Phase.TRIGGERING
            cause = f"{d.kind.value}: {alerts[d.index].alertname or 'alert'} ({d.reason})"
            run, t = new_run(d.run_id, d.model, phase, reasons, now, self.deadlines, cause, dry_run=self.dry_run)
            if self.dry_run:
                # Dry run: the decision and its rate-limit consequences are real, the pipeline is not.
                made.append((run, t))
                run, t = transition(run, Phase.CANCELED, "dry run: no pipeline was started", now, self.deadlines)
            made.append((run, t))
        return made

    async def start_manual(
        self, model: str, reasons: tuple[str, ...], cause: str, update: Update | None = None,
        audit: AuditEntry | None = None,
    ) -> Run:  # fmt: skip
        """A run an operator asked for: not held by cooldown or budget, queued when the concurrency cap is full.
        `audit`, the operator's action, is written with the run in one transaction."""
        if model not in self.model_names():
            raise UnknownModel(model)
        async with self.ledger.lock:
            now = self.ledger.clock.now()
            state = await self.policy_state([model])
            live = state.models[model].live_run
            if live is not None:
                raise Conflict(f"model {model} has a live run {live}: abort it or wait for it to end")
            full = state.active_runs >= self.policy.max_concurrent
            queued = full or state.waiting > 0  # behind the runs already waiting, as alerts' runs are
            ahead = f"{self.policy.max_concurrent} runs already active" if full else f"{state.waiting} queued run(s) go first"
            why = f"{cause} (queued: {ahead})" if queued else cause
            run, t = new_run(self.new_id(), model, Phase.QUEUED if queued else Phase.TRIGGERING, reasons, now,
                             self.deadlines, why, trigger="manual", dry_run=self.dry_run)  # fmt: skip
            run = update(run) if update else run
            await self.store.create_run(run, t, audit)
            self.ledger.count(run)
            if self.dry_run:
                await self.ledger.move_locked(run, Phase.CANCELED, "dry run: no pipeline was started")
        self.log.info("manual_run", run_id=run.id, model=model, phase=run.phase.value, cause=why)
        self.ledger.wake.set()
        return await self.ledger.current(run.id)


def _ids(make: Callable[[], str]) -> Iterator[str]:
    while True:
        yield make()
