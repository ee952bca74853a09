"""What a run carries beside its phase, as frozen types. JSON exists only at the store's edge (`to_json`/`from_json`).

`from_json` also reads what stores of schema 4 and older wrote (one `extra` dict of loose keys), so a store carried
forward by its migration and a run written before it read the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Mapping

from controller.core.alerts import format_ts
from controller.core.counters import Tally
from controller.core.judge import Outcome, Verdict

ARMS = ("stable", "canary")
Json = dict[str, Any]


def ts(value: datetime | None) -> str | None:
    return format_ts(value) if value is not None else None


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def at(value: object) -> datetime | None:
    """A stored time; None when missing or unreadable. A time without a zone is UTC, as every stored time is."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _floats(value: object) -> dict[str, float]:
    """Numbers by name; anything that is not a number is left out."""
    return {str(k): float(v) for k, v in _map(value).items() if isinstance(v, (int, float))}


def _opt_float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _int(value: object) -> int:
    return int(value) if isinstance(value, (int, float)) else 0


@dataclass(frozen=True)
class Pause:
    """An operator holds the canary: no scaling, no verdict acts, no deadline runs."""

    since: datetime

    def to_json(self) -> Json:
        return {"since": ts(self.since)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pause | None:
        since = at(data.get("since"))
        return cls(since) if since is not None else None


@dataclass(frozen=True)
class TriggerAttempts:
    """Pipeline creates tried for a run; after one, the next process looks for the pipeline before creating."""

    count: int = 0
    last_at: datetime | None = None

    def to_json(self) -> Json:
        return {"count": self.count, "last_at": ts(self.last_at)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TriggerAttempts:
        return cls(_int(data.get("count")), at(data.get("last_at")))


@dataclass(frozen=True)
class Stage:
    """One pipeline stage as the pipeline reported it."""

    stage: str
    status: str
    detail: str = ""

    def to_json(self) -> Json:
        return {"stage": self.stage, "status": self.status, "detail": self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stage:
        return cls(str(data.get("stage", "")), str(data.get("status", "")), str(data.get("detail", "")))


def verdict_to_json(v: Verdict) -> Json:
    return {"outcome": v.outcome.value, "reason": v.reason, "statistic": v.statistic, "threshold": v.threshold,
            "ratio": v.ratio, "design_effect": v.design_effect}  # fmt: skip


_OUTCOMES = {o.value: o for o in Outcome}


def verdict_from_json(data: Mapping[str, Any], outcome_key: str = "outcome") -> Verdict:
    g = data.get
    return Verdict(_OUTCOMES.get(str(g(outcome_key)), Outcome.ERROR), str(g("reason", "")), _opt_float(g("statistic")),
                   _opt_float(g("threshold")), _opt_float(g("ratio")), _opt_float(g("design_effect")))  # fmt: skip


@dataclass(frozen=True)
class Look:
    """One look at the canary: the verdict and the counts behind it (what the run page charts)."""

    at: datetime
    step: int  # 1-based
    weight: int
    verdict: Verdict
    stable: Mapping[str, float]  # hits, trials (and units) since the step's baseline
    canary: Mapping[str, float]
    guardrails: Mapping[str, float | None] = field(default_factory=dict)

    def to_json(self) -> Json:
        v = verdict_to_json(self.verdict)
        return {"at": ts(self.at), "step": self.step, "weight": self.weight, "verdict": v.pop("outcome"), **v,
                "stable": dict(self.stable), "canary": dict(self.canary), "guardrails": dict(self.guardrails)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Look | None:
        """None for a look without a readable time: it cannot be placed on the chart."""
        when = at(data.get("at"))
        if when is None:
            return None
        guardrails = _map(data.get("guardrails"))
        return cls(
            at=when,
            step=_int(data.get("step")),
            weight=_int(data.get("weight")),
            verdict=verdict_from_json(data, "verdict"),
            stable=_floats(data.get("stable")),
            canary=_floats(data.get("canary")),
            guardrails={str(k): _opt_float(v) for k, v in guardrails.items()},
        )


class CanaryStage(StrEnum):
    ROLLING = "rolling"  # scaling to the step's weight, waiting for the canary to be ready
    JUDGING = "judging"  # the step's baseline is taken; looks every interval


@dataclass(frozen=True)
class CanaryState:
    """Where a run's canary stands, so a restarted controller carries on at the same step with the same readings."""

    step: int  # 0-based index into the plan's steps
    stage: CanaryStage
    stage_since: datetime  # when the current stage began: the wait for a ready canary counts from here
    analysis_started_at: datetime | None = None
    step_started_at: datetime | None = None  # the step's baseline
    last_look_at: datetime | None = None
    tallies: Mapping[str, Mapping[str, Tally]] = field(default_factory=dict)  # counter -> arm -> increase so far
    totals: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # arm -> counter -> the step's count
    bad_looks: int = 0  # NO_DATA / ERROR looks in a row
    looks: int = 0
    carried: float = 0.0  # the sequential test's statistic carried from the earlier steps
    breaches: Mapping[str, int] = field(default_factory=dict)  # guardrail -> looks in a row over its threshold
    resets: int = 0  # counter resets seen in the step

    def to_json(self) -> Json:
        return {
            "step": self.step, "stage": self.stage.value, "stage_since": ts(self.stage_since),
            "analysis_started_at": ts(self.analysis_started_at), "step_started_at": ts(self.step_started_at),
            "last_look_at": ts(self.last_look_at),
            "tallies": {m: {arm: t.as_dict() for arm, t in by_arm.items()} for m, by_arm in self.tallies.items()},
            "totals": {arm: dict(counts) for arm, counts in self.totals.items()},
            "bad_looks": self.bad_looks, "looks": self.looks, "carried": self.carried,
            "breaches": dict(self.breaches), "resets": self.resets,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CanaryState:
        tallies, totals, breaches = _map(data.get("tallies")), _map(data.get("totals")), _map(data.get("breaches"))
        stage = data.get("stage")
        return cls(
            step=_int(data.get("step")),
            # Unknown stage: roll to the step again, which takes a fresh baseline.
            stage=CanaryStage(stage) if stage in {s.value for s in CanaryStage} else CanaryStage.ROLLING,
            # Unknown start: the wait for a ready canary is over, so an unready one rolls back at once.
            stage_since=at(data.get("stage_since")) or EPOCH,
            analysis_started_at=at(data.get("analysis_started_at")),
            step_started_at=at(data.get("step_started_at")),
            last_look_at=at(data.get("last_look_at")),
            tallies={str(m): {str(arm): Tally.from_dict(t) for arm, t in by_arm.items() if isinstance(t, dict)}
                     for m, by_arm in tallies.items() if isinstance(by_arm, dict)},  # fmt: skip
            totals={str(arm): _floats(counts) for arm, counts in totals.items()},
            bad_looks=_int(data.get("bad_looks")),
            looks=_int(data.get("looks")),
            carried=_opt_float(data.get("carried")) or 0.0,
            breaches={str(k): _int(v) for k, v in breaches.items()},
            resets=_int(data.get("resets")),
        )


@dataclass(frozen=True)
class AuditEntry:
    """An operator's action on a run, kept whether or not it changed anything."""

    at: datetime
    action: str
    by: str
    reason: str
    changed: bool
    detail: str
    retry_of: str | None = None  # on a retry's new run: the run it retries
    new_run: str | None = None  # on a retried run: the run that retries it

    def to_json(self) -> Json:
        out: Json = {"at": ts(self.at), "action": self.action, "by": self.by, "reason": self.reason,
                     "changed": self.changed, "detail": self.detail}  # fmt: skip
        if self.retry_of:
            out["retry_of"] = self.retry_of
        if self.new_run:
            out["new_run"] = self.new_run
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], fallback: datetime = EPOCH) -> AuditEntry:
        return cls(at(data.get("at")) or fallback, str(data.get("action", "")), str(data.get("by", "")),
                   str(data.get("reason", "")), bool(data.get("changed", True)), str(data.get("detail", "")),
                   data.get("retry_of") or None, data.get("new_run") or None)  # fmt: skip


@dataclass(frozen=True)
class ModelControl:
    """Whether an operator paused a model (its alerts are recorded and start nothing), by whom and why."""

    paused: bool
    by: str | None = None
    at: datetime | None = None
    reason: str = ""


@dataclass(frozen=True)
class ModelAuditEntry:
    at: datetime
    action: str
    by: str
    reason: str
    changed: bool
    run_id: str | None = None
