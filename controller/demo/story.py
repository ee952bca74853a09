"""Did the demo's story happen, in order? Pure: reads a run, its history and its alert decisions.

The story: a precision@k alert is accepted (it starts the run or joins it), the pipeline runs and reports an
image, the canary is analysed with verdicts, and the run is promoted after a PASS, or (a bad model) rolled back
after a FAIL. Each chapter is checked on its own so a failed demo says which one is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from controller.core.runs import Phase, Run, Transition
from controller.core.state import Look

PRECISION_ALERT = "RecsysPrecisionAtKDrop"
PROMOTED, ROLLED_BACK = "promoted", "rolled_back"
_PATHS = {
    PROMOTED: (Phase.TRIGGERING, Phase.TRAINING, Phase.DEPLOYING, Phase.ANALYZING, Phase.PROMOTING,
               Phase.SUCCEEDED),  # fmt: skip
    ROLLED_BACK: (Phase.TRIGGERING, Phase.TRAINING, Phase.DEPLOYING, Phase.ANALYZING, Phase.ROLLING_BACK,
                  Phase.ROLLED_BACK),  # fmt: skip
}
_FINAL_VERDICT = {PROMOTED: "pass", ROLLED_BACK: "fail"}


@dataclass(frozen=True)
class Chapter:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Story:
    outcome: str | None  # promoted | rolled_back | None (not finished, or ended otherwise)
    chapters: tuple[Chapter, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chapters)

    @property
    def missing(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.chapters if not c.ok)


def outcome_of(run: Run) -> str | None:
    return {Phase.SUCCEEDED: PROMOTED, Phase.ROLLED_BACK: ROLLED_BACK}.get(run.phase)


def check(run: Run, history: Sequence[Transition], decisions: Iterable[Mapping[str, object]], expect: str,
          looks: Sequence[Look]) -> Story:  # fmt: skip
    """`expect` is the outcome the demo was asked for (`promoted`, or `rolled_back` with --bad-model)."""
    phases = [t.to_phase for t in history]
    chapters = [_alert(decisions), _pipeline(run, phases), _analysis(looks, phases), _ending(run, history, expect)]
    return Story(outcome_of(run), tuple(chapters))


def _alert(decisions: Iterable[Mapping[str, object]]) -> Chapter:
    taken = [d for d in decisions if d.get("alertname") == PRECISION_ALERT and d.get("decision") in ("accepted", "joined")]
    if not taken:
        return Chapter("precision alert", False, f"no {PRECISION_ALERT} alert was accepted into this run")
    first = min(taken, key=lambda d: str(d.get("received_at")))
    return Chapter("precision alert", True, f"{PRECISION_ALERT} {first['decision']} at {first.get('received_at')}")


def _pipeline(run: Run, phases: list[Phase]) -> Chapter:
    if Phase.TRAINING not in phases or Phase.DEPLOYING not in phases:
        return Chapter("pipeline", False, f"the run never went training -> deploying (phases: {_names(phases)})")
    if not run.image or not run.pipeline_id:
        return Chapter("pipeline", False, "no pipeline or no image recorded")
    return Chapter("pipeline", True, f"pipeline {run.pipeline_id} built {run.image}")


def _analysis(looks: Sequence[Look], phases: list[Phase]) -> Chapter:
    if Phase.ANALYZING not in phases:
        return Chapter("canary analysis", False, f"the canary was never analysed (phases: {_names(phases)})")
    if not looks:
        return Chapter("canary analysis", False, "no verdict was recorded")
    counts: dict[str, int] = {}
    for look in looks:
        outcome = look.verdict.outcome.value
        counts[outcome] = counts.get(outcome, 0) + 1
    return Chapter("canary analysis", True, f"{len(looks)} looks: " + ", ".join(f"{n} {v}" for v, n in counts.items()))


def _ending(run: Run, history: Sequence[Transition], expect: str) -> Chapter:
    phases = [t.to_phase for t in history if t.to_phase is not Phase.QUEUED]
    if phases != list(_PATHS[expect]):
        return Chapter(expect, False, f"expected {_names(_PATHS[expect])}, got {_names(phases)}")
    if any(b.at < a.at for a, b in zip(history, history[1:])):
        return Chapter(expect, False, "transitions out of time order")
    outcome = run.verdict.outcome.value if run.verdict else None
    if outcome != _FINAL_VERDICT[expect]:
        return Chapter(expect, False, f"the last verdict was {outcome}, not {_FINAL_VERDICT[expect]}")
    return Chapter(expect, True, f"{run.cause}")


def _names(phases: Iterable[Phase]) -> str:
    return " -> ".join(p.value for p in phases) or "none"
