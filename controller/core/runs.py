"""A run: one retraining of one model, from the first accepted alert to promotion, rollback or failure.

Phases move only along the transition table; every move carries a cause, kept in the run's history.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Mapping

from controller.core.durations import format_duration


class Phase(StrEnum):
    QUEUED = "queued"
    TRIGGERING = "triggering"
    TRAINING = "training"
    DEPLOYING = "deploying"
    ANALYZING = "analyzing"
    PROMOTING = "promoting"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """Holds a concurrency slot: live and past the queue."""
        return not self.terminal and self is not Phase.QUEUED


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK, Phase.CANCELED})
LIVE = frozenset(Phase) - TERMINAL

# A phase with a canary serving traffic never just "fails": it rolls back first.
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.QUEUED: frozenset({Phase.TRIGGERING, Phase.FAILED, Phase.CANCELED}),
    Phase.TRIGGERING: frozenset({Phase.TRAINING, Phase.FAILED, Phase.CANCELED}),
    Phase.TRAINING: frozenset({Phase.DEPLOYING, Phase.FAILED, Phase.CANCELED}),
    Phase.DEPLOYING: frozenset({Phase.ANALYZING, Phase.ROLLING_BACK}),
    Phase.ANALYZING: frozenset({Phase.PROMOTING, Phase.ROLLING_BACK}),
    Phase.PROMOTING: frozenset({Phase.SUCCEEDED, Phase.ROLLING_BACK, Phase.FAILED}),  # back: stable never ready
    Phase.ROLLING_BACK: frozenset({Phase.ROLLED_BACK, Phase.FAILED}),
    Phase.SUCCEEDED: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
    Phase.CANCELED: frozenset(),
}

# Where a run goes when it outlives its phase's deadline.
ON_DEADLINE: Mapping[Phase, Phase] = {
    Phase.QUEUED: Phase.FAILED,
    Phase.TRIGGERING: Phase.FAILED,
    Phase.TRAINING: Phase.FAILED,
    Phase.DEPLOYING: Phase.ROLLING_BACK,
    Phase.ANALYZING: Phase.ROLLING_BACK,
    Phase.PROMOTING: Phase.FAILED,
    Phase.ROLLING_BACK: Phase.FAILED,
}


class IllegalTransition(ValueError):
    pass


@dataclass(frozen=True)
class Transition:
    run_id: str
    at: datetime
    from_phase: Phase | None
    to_phase: Phase
    cause: str


@dataclass(frozen=True)
class Run:
    id: str
    model: str
    phase: Phase
    created_at: datetime
    phase_entered_at: datetime
    deadline_at: datetime | None
    trigger: str = "alert"  # "alert" or "manual"
    reasons: tuple[str, ...] = ()
    ended_at: datetime | None = None
    cause: str = ""
    dry_run: bool = False
    pipeline_id: str | None = None
    pipeline_url: str | None = None
    image: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return not self.phase.terminal


def _deadline(phase: Phase, now: datetime, deadlines: Mapping[Phase, timedelta]) -> datetime | None:
    if phase.terminal:
        return None
    return now + deadlines[phase]


def new_run(
    run_id: str,
    model: str,
    phase: Phase,
    reasons: tuple[str, ...],
    now: datetime,
    deadlines: Mapping[Phase, timedelta],
    cause: str,
    trigger: str = "alert",
    dry_run: bool = False,
) -> tuple[Run, Transition]:
    if phase not in (Phase.QUEUED, Phase.TRIGGERING):
        raise IllegalTransition(f"a run starts queued or triggering, not {phase}")
    run = Run(
        id=run_id,
        model=model,
        phase=phase,
        created_at=now,
        phase_entered_at=now,
        deadline_at=_deadline(phase, now, deadlines),
        trigger=trigger,
        reasons=reasons,
        cause=cause,
        dry_run=dry_run,
    )
    return run, Transition(run_id, now, None, phase, cause)


def transition(
    run: Run, to: Phase, cause: str, now: datetime, deadlines: Mapping[Phase, timedelta], **changes: object
) -> tuple[Run, Transition]:
    if not cause:
        raise IllegalTransition("every transition needs a cause")
    if to not in TRANSITIONS[run.phase]:
        raise IllegalTransition(f"run {run.id}: {run.phase} -> {to} is not allowed")
    updated = replace(
        run,
        phase=to,
        phase_entered_at=now,
        deadline_at=_deadline(to, now, deadlines),
        ended_at=now if to.terminal else None,
        cause=cause,
        **changes,  # type: ignore[arg-type]
    )
    return updated, Transition(run.id, now, run.phase, to, cause)


def add_reasons(run: Run, reasons: tuple[str, ...]) -> Run:
    merged = run.reasons + tuple(r for r in reasons if r not in run.reasons)
    return replace(run, reasons=merged)


def held(run: Run, paused_models: frozenset[str] | set[str]) -> bool:
    """A queued run waits while its model is paused, unless an operator asked for it (theirs to start)."""
    return run.phase is Phase.QUEUED and run.model in paused_models and run.trigger != "manual"


def overdue(run: Run, now: datetime) -> tuple[Phase, str] | None:
    """The move a run must make because it outlived its phase, or None."""
    if run.deadline_at is None or now < run.deadline_at or run.phase.terminal:
        return None
    allowed = format_duration(run.deadline_at - run.phase_entered_at)
    return ON_DEADLINE[run.phase], f"deadline: {run.phase} took longer than {allowed}"
