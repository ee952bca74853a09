"""A run: one retraining of one model, from the first accepted alert to promotion, rollback or failure.

Phases move only along the transition table; every move carries a cause, kept in the run's history.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Mapping

from controller.core.durations import format_duration
from controller.core.judge import Verdict
from controller.core.state import (
    EPOCH,
    CanaryState,
    Json,
    Look,
    Pause,
    Stage,
    TriggerAttempts,
    at,
    verdict_from_json,
    verdict_to_json,
)


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
    Phase.DEPLOYING: frozenset({Phase.ANALYZING, Phase.ROLLING_BACK, Phase.SUCCEEDED}),  # succeeded: no canary
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
    # What the run carries beside its phase (stored as one JSON document, see details_json).
    attempts: TriggerAttempts = TriggerAttempts()
    stages: tuple[Stage, ...] = ()
    offline_metrics: Mapping[str, float] = field(default_factory=dict)
    pause: Pause | None = None
    previous_image: str | None = None  # what stable ran when the canary started
    restore_stable: str | None = None  # set when a promotion's stable never became ready: roll stable back to it
    canary: CanaryState | None = None
    verdict: Verdict | None = None  # the latest look's (every look is kept beside the run, see RunStore.apply)
    retry_of: str | None = None
    manual_reason: str | None = None

    @property
    def live(self) -> bool:
        return not self.phase.terminal

    @property
    def paused(self) -> bool:
        """Held by an operator: only a canary that is deploying or analyzing can be."""
        return self.pause is not None and self.phase in (Phase.DEPLOYING, Phase.ANALYZING)

    def details_json(self) -> Json:
        """The fields beside the columns, as the store keeps them."""
        out: Json = {
            "trigger_attempts": self.attempts.to_json(),
            "stages": [s.to_json() for s in self.stages],
            "offline_metrics": dict(self.offline_metrics),
            "pause": self.pause.to_json() if self.pause else None,
            "previous_image": self.previous_image,
            "restore_stable": self.restore_stable,
            "canary": self.canary.to_json() if self.canary else None,
            "verdict": verdict_to_json(self.verdict) if self.verdict else None,
            "retry_of": self.retry_of,
            "manual_reason": self.manual_reason,
        }
        return {k: v for k, v in out.items() if v not in (None, [], {})}


def details_from_json(data: object, fallback: datetime = EPOCH) -> dict[str, Any]:
    """Run fields from what `details_json` wrote, or from a schema-4 store's loose `extra` keys. Never raises:
    a value it cannot read is left out (a run must stay movable whatever an old or damaged store holds).
    `fallback` stands in for a pause whose start was not recorded (the run's phase entry, say)."""
    data = data if isinstance(data, dict) else {}
    attempts = data.get("trigger_attempts")
    if isinstance(attempts, dict):
        tries = TriggerAttempts.from_json(attempts)
    else:  # schema 4: a count, and the time of the last one beside it
        tries = TriggerAttempts.from_json({"count": attempts, "last_at": data.get("trigger_attempt_at")})
    pause = data.get("pause")
    if isinstance(pause, dict):
        paused = Pause.from_json(pause)
    else:  # schema 4: a flag and its time
        paused = Pause(at(data.get("paused_at")) or fallback) if data.get("paused") else None
    canary, verdict = data.get("canary"), data.get("verdict")
    return {
        "attempts": tries,
        "stages": tuple(Stage.from_json(s) for s in _list(data.get("stages")) if isinstance(s, dict)),
        "offline_metrics": {str(k): float(v) for k, v in _map(data.get("offline_metrics")).items()
                            if isinstance(v, (int, float))},
        "pause": paused,
        "previous_image": _str(data.get("previous_image")),
        "restore_stable": _str(data.get("restore_stable")),
        "canary": CanaryState.from_json(canary) if isinstance(canary, dict) and canary else None,
        "verdict": verdict_from_json(verdict) if isinstance(verdict, dict) and verdict else None,
        "retry_of": _str(data.get("retry_of")),
        "manual_reason": _str(data.get("manual_reason")),
    }


def legacy_looks(data: object) -> tuple[Look, ...]:
    """The looks a schema-4 store kept in a run's `extra` (`measurements`), for the migration to move out."""
    looks = _map(data).get("measurements")
    return tuple(look for m in _list(looks) if isinstance(m, dict) and (look := Look.from_json(m)))


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


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
    run: Run, to: Phase, cause: str, now: datetime, deadlines: Mapping[Phase, timedelta]
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
