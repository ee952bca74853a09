"""Crash consistency: the controller SIGKILLed at every kill point of tests/reliability/chaos.py, on real parts, keeps
every invariant; and every invariant check fires on a state that breaks it (a check that cannot fail proves
nothing). The long version is bench/chaos.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.reliability import invariants
from tests.reliability.invariants import Snapshot, check

TRIALS = 12
OLD = "registry.example/recsys@sha256:" + "0" * 64
IMG_A = "registry.example/recsys@sha256:" + "a" * 64
IMG_B = "registry.example/recsys@sha256:" + "b" * 64


# ---- every check can fail -----------------------------------------------------------------------------------


def healthy() -> Snapshot:
    """Two runs as the controller leaves them: `ra` promoted A (after a PASS), `rb` rolled B back; a third
    alert joined `ra`, a repeat of the first was a duplicate."""
    t = "2026-11-24T10:00:0{}.000000Z"
    return Snapshot(
        runs=[
            {"id": "ra", "phase": "succeeded", "trigger": "alert", "pipeline_id": "1000", "image": IMG_A,
             "details": {"looks": [{"at": "2026-11-24T10:00:03+00:00", "verdict": "inconclusive"},
                                   {"at": "2026-11-24T10:00:04+00:00", "verdict": "pass"}]}},
            {"id": "rb", "phase": "rolled_back", "trigger": "alert", "pipeline_id": "1001", "image": IMG_B,
             "details": {"looks": [{"at": "2026-11-24T10:00:08+00:00", "verdict": "fail"}]}},
        ],
        transitions=[
            {"run_id": "ra", "at": t.format(1), "from_phase": "triggering", "to_phase": "training", "cause": "pipeline started: 1000"},
            {"run_id": "ra", "at": t.format(2), "from_phase": "training", "to_phase": "deploying", "cause": "image"},
            {"run_id": "ra", "at": t.format(3), "from_phase": "deploying", "to_phase": "analyzing", "cause": "ready"},
            {"run_id": "ra", "at": t.format(5), "from_phase": "analyzing", "to_phase": "promoting", "cause": "passed"},
            {"run_id": "ra", "at": t.format(6), "from_phase": "promoting", "to_phase": "succeeded", "cause": "stable"},
            {"run_id": "rb", "at": t.format(7), "from_phase": "triggering", "to_phase": "training", "cause": "pipeline started: 1001"},
            {"run_id": "rb", "at": t.format(8), "from_phase": "analyzing", "to_phase": "rolling_back", "cause": "failed"},
            {"run_id": "rb", "at": t.format(9), "from_phase": "rolling_back", "to_phase": "rolled_back", "cause": "0 pods"},
        ],
        decisions=[
            {"episode": "e1", "decision": "accepted", "run_id": "ra", "labels": {"shot": "s1"}},
            {"episode": "e2", "decision": "joined", "run_id": "ra", "labels": {"shot": "s2"}},
            {"episode": "e1", "decision": "duplicate", "run_id": "ra", "labels": {"shot": "s1"}},
            {"episode": "e3", "decision": "accepted", "run_id": "rb", "labels": {"shot": "s3"}},
        ],
        episodes={"e1": "ra", "e2": "ra", "e3": "rb"},
        pipelines=[{"id": "1000", "run_id": "ra", "status": "success"}, {"id": "1001", "run_id": "rb", "status": "success"}],
        deployments={"stable": {"image": IMG_A, "replicas": 10, "settled": True},
                     "canary": {"image": IMG_B, "replicas": 0, "settled": True}},
        shots=["s1", "s2", "s3"],
        initial_image=OLD,
        total_replicas=10,
    )  # fmt: skip


def test_a_healthy_state_passes() -> None:
    assert check(healthy()) == []


def _run(s: Snapshot, run_id: str) -> dict[str, Any]:
    return next(r for r in s.runs if r["id"] == run_id)


BREAKS: dict[str, tuple[Callable[[Snapshot], None], str]] = {
    "lost alert": (lambda s: s.shots.append("s4"), "alert s4 lost"),
    "alert decided but episode unrecorded": (lambda s: s.episodes.pop("e2"), "episode e2 is not recorded"),
    "episode accepted twice": (
        lambda s: (s.decisions.append({"episode": "e1", "decision": "accepted", "run_id": "rc", "labels": {}}),
                   s.runs.append({**_run(s, "rb"), "id": "rc", "pipeline_id": None, "image": None})),
        "episode e1 started 2 runs",
    ),  # fmt: skip
    "decision names another run": (lambda s: s.decisions[2].update(run_id="rb"), "names run rb, the episode belongs to ra"),
    "accepted run missing": (lambda s: s.decisions.append({"episode": "e9", "decision": "accepted", "run_id": "zz",
                                                          "labels": {}}), "run zz, which does not exist"),  # fmt: skip
    "run without an alert": (lambda s: s.decisions.pop(3), "run rb was started by 0 accepted episodes"),
    "two pipelines": (lambda s: s.pipelines.append({"id": "1002", "run_id": "ra", "status": "created"}),
                      "run ra has 2 pipelines"),  # fmt: skip
    "pipeline of no run": (lambda s: s.pipelines.append({"id": "1003", "run_id": "zz", "status": "created"}),
                           "pipeline 1003 belongs to no run"),  # fmt: skip
    "trained without a pipeline": (lambda s: s.pipelines.pop(1), "run rb reached training, but GitLab has no pipeline"),
    "follows the wrong pipeline": (lambda s: _run(s, "ra").update(pipeline_id="999"), "run ra follows pipeline 999"),
    "stuck run": (lambda s: _run(s, "rb").update(phase="analyzing"), "run rb stuck in analyzing"),
    "deadline": (lambda s: s.transitions[7].update(cause="deadline: rolling_back took longer than 45s"),
                 "run rb hit a deadline"),  # fmt: skip
    "promoted on an inconclusive look": (lambda s: _run(s, "ra")["details"]["looks"].pop(),
                                         "run ra was promoted without a PASS recorded first (last verdict: inconclusive)"),
    "PASS recorded only after promotion": (
        lambda s: _run(s, "ra")["details"]["looks"][-1].update(at="2026-11-24T10:00:05.5+00:00"),
        "run ra was promoted without a PASS",
    ),
    "succeeded without promoting": (lambda s: s.transitions.pop(3), "run ra succeeded without ever promoting"),
    "stable runs a rolled-back image": (lambda s: s.deployments["stable"].update(image=IMG_B),
                                        "stable runs the image of run rb, which ended rolled_back"),  # fmt: skip
    "stable kept the old image": (lambda s: s.deployments["stable"].update(image=OLD), "the last promoted image is"),
    "canary left running": (lambda s: s.deployments["canary"].update(replicas=5), "canary has 5 replicas"),
    "stable scaled": (lambda s: s.deployments["stable"].update(replicas=1), "stable has 1 replicas"),
    "unsettled": (lambda s: s.deployments["canary"].update(settled=False), "canary Deployment never settled"),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_each_check_catches_its_violation(name: str) -> None:
    s = copy.deepcopy(healthy())
    breaks, expected = BREAKS[name]
    breaks(s)
    found = check(s)
    assert any(expected in v for v in found), found


# ---- the bounded chaos run ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_sigkill_at_every_point_keeps_every_invariant(tmp_path: Path) -> None:
    from tests.infra import kube
    from tests.reliability.chaos import POINTS, Chaos
    from tests.reliability.rig import NS, STABLE, Rig

    kube.require_kube()
    lines: list[str] = []
    with Rig(tmp_path, seed=3) as rig:
        chaos = Chaos(rig, seed=3, log=lines.append)
        try:
            chaos.run(TRIALS, make_up=4)
        finally:
            print("\n".join(lines + chaos.summary()))
        report = chaos.report()
        assert report["violations"] == 0, "\n".join(chaos.violations) + "\n" + rig.describe()
        assert [p for p in POINTS if not chaos.killer.hits[p]] == [], chaos.summary()
        ends = {o for t in chaos.trials for o in t.outcomes}
        assert {"succeeded", "rolled_back"} <= ends, ends

        # The same checks on the real parts, after breaking them on purpose, must complain.
        last = rig.read_store("SELECT id FROM runs ORDER BY seq DESC LIMIT 1")[0]["id"]
        rig.gitlab.create_pipeline(variables={"RETRAIN_RUN_ID": last})
        foreign = {"name": "model", "image": "registry.example/x@sha256:" + "f" * 64}
        patch = {"spec": {"template": {"spec": {"containers": [foreign]}}}}
        kube.client.AppsV1Api(rig.admin).patch_namespaced_deployment(STABLE, NS, patch)
        found = check(invariants.snapshot(rig, chaos.shots + ["never-sent"]))
        assert any(f"run {last} has 2 pipelines" in v for v in found), found
        assert any("stable runs registry.example/x@" in v for v in found), found
        assert any("alert never-sent lost" in v for v in found), found
