"""The invariants a crash must never break, checked on what the parts themselves hold: the controller's SQLite
store (read-only), the pipelines the GitLab stand-in recorded, and the Deployments on the API server.

`snapshot()` gathers; `check()` is pure and returns one line per violation, so each rule can be shown to fire on a
hand-made bad snapshot (tests/reliability/test_crash_consistency.py).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "rolled_back", "canceled"})
STARTS = frozenset({"accepted", "queued"})
TAKEN = STARTS | {"joined", "duplicate"}  # decisions that tie an episode to a run


@dataclass
class Snapshot:
    runs: list[dict[str, Any]]  # id, phase, trigger, pipeline_id, image, details (dict)
    transitions: list[dict[str, Any]]  # run_id, at, from_phase, to_phase, cause; in order
    decisions: list[dict[str, Any]]  # episode, decision, run_id, labels (dict)
    episodes: dict[str, str]  # episode -> run id
    pipelines: list[dict[str, Any]]  # id, run_id (its RETRAIN_RUN_ID), status
    deployments: dict[str, dict[str, Any]]  # "stable"/"canary" -> image, replicas, settled
    shots: list[str] = field(default_factory=list)  # the `shot` label of every alert delivered or fired
    initial_image: str = ""
    total_replicas: int = 0


def snapshot(rig: Any, shots: list[str]) -> Snapshot:
    from tests.infra import kube
    from tests.reliability.rig import CANARY, INITIAL_IMAGE, NS, STABLE, TOTAL_REPLICAS
    from tests.reliability.world import CONTAINER, _synced

    looks: dict[str, list[dict[str, Any]]] = {}  # each run's canary looks, from their own table, oldest first
    for r in rig.read_store("SELECT run_id, body FROM run_looks ORDER BY id"):
        looks.setdefault(r["run_id"], []).append(json.loads(r["body"]))
    runs = [
        {**dict(r), "details": {**json.loads(r["details"]), "looks": looks.get(r["id"], [])}}
        for r in rig.read_store("SELECT id, phase, trigger, pipeline_id, image, details FROM runs ORDER BY seq")
    ]
    transitions = [dict(r) for r in rig.read_store("SELECT run_id, at, from_phase, to_phase, cause FROM transitions"
                                                   " ORDER BY id")]  # fmt: skip
    decisions = [
        {**dict(r), "labels": json.loads(r["labels"])}
        for r in rig.read_store("SELECT episode, decision, run_id, labels FROM decisions ORDER BY id")
    ]
    episodes = {r["episode"]: r["run_id"] for r in rig.read_store("SELECT episode, run_id FROM episodes")}
    pipelines = [{"id": str(p.id), "run_id": p.vars.get("RETRAIN_RUN_ID"), "status": p.status}
                 for p in rig.gitlab.pipelines()]  # fmt: skip
    apps = kube.client.AppsV1Api(rig.admin)
    deployments = {}
    for track, name in (("stable", STABLE), ("canary", CANARY)):
        dep = apps.read_namespaced_deployment(name, NS)
        image = next(c.image for c in dep.spec.template.spec.containers if c.name == CONTAINER)
        deployments[track] = {"image": image, "replicas": dep.spec.replicas, "settled": _synced(dep)}
    return Snapshot(runs, transitions, decisions, episodes, pipelines, deployments, list(shots), INITIAL_IMAGE,
                    TOTAL_REPLICAS)  # fmt: skip


def check(s: Snapshot) -> list[str]:
    return [*episodes_have_one_run(s), *one_pipeline_per_run(s), *nothing_stuck(s), *promotion_needs_pass(s),
            *deployments_match_runs(s)]  # fmt: skip


def episodes_have_one_run(s: Snapshot) -> list[str]:
    out = []
    runs = {r["id"]: r for r in s.runs}
    for shot in s.shots:
        taken = [d for d in s.decisions if d["labels"].get("shot") == shot and d["decision"] in TAKEN]
        if not taken:
            out.append(f"alert {shot} lost: delivered, but no decision ties it to a run")
        elif taken[0]["episode"] not in s.episodes:
            out.append(f"alert {shot}: episode {taken[0]['episode']} is not recorded against any run")
    starts: dict[str, list[str]] = defaultdict(list)
    for d in s.decisions:
        if d["decision"] not in TAKEN:
            continue
        owner = s.episodes.get(d["episode"])
        if d["run_id"] != owner:
            out.append(f"episode {d['episode']}: a {d['decision']} decision names run {d['run_id']}, the episode "
                       f"belongs to {owner}")  # fmt: skip
        if d["decision"] in STARTS:
            starts[d["episode"]].append(d["run_id"])
            if d["run_id"] not in runs:
                out.append(f"episode {d['episode']} was accepted for run {d['run_id']}, which does not exist")
    for episode, started in starts.items():
        if len(started) > 1:
            out.append(f"episode {episode} started {len(started)} runs: {started}")
    started_by = Counter(r for started in starts.values() for r in started)
    for r in s.runs:
        if r["trigger"] == "alert" and started_by[r["id"]] != 1:
            out.append(f"run {r['id']} was started by {started_by[r['id']]} accepted episodes, not 1")
    return out


def one_pipeline_per_run(s: Snapshot) -> list[str]:
    out = []
    runs = {r["id"]: r for r in s.runs}
    by_run: dict[str, list[str]] = defaultdict(list)
    for p in s.pipelines:
        if p["run_id"] not in runs:
            out.append(f"pipeline {p['id']} belongs to no run (RETRAIN_RUN_ID={p['run_id']})")
        else:
            by_run[p["run_id"]].append(p["id"])
    trained = {t["run_id"] for t in s.transitions if t["to_phase"] == "training"}
    for run_id, r in runs.items():
        have = by_run.get(run_id, [])
        if len(have) > 1:
            out.append(f"run {run_id} has {len(have)} pipelines: {have}")
        if run_id in trained and not have:
            out.append(f"run {run_id} reached training, but GitLab has no pipeline for it")
        if r["pipeline_id"] is not None and have and r["pipeline_id"] not in have:
            out.append(f"run {run_id} follows pipeline {r['pipeline_id']}, but its pipeline is {have}")
    return out


def nothing_stuck(s: Snapshot) -> list[str]:
    out = [f"run {r['id']} stuck in {r['phase']}" for r in s.runs if r["phase"] not in TERMINAL]
    # A deadline is the controller giving up on a run that stopped moving: every phase here takes seconds.
    out += [f"run {t['run_id']} hit a deadline: {t['cause']}" for t in s.transitions if t["cause"].startswith("deadline:")]
    return out


def promotion_needs_pass(s: Snapshot) -> list[str]:
    out = []
    runs = {r["id"]: r for r in s.runs}
    promoted = set()
    for t in s.transitions:
        if t["to_phase"] != "promoting":
            continue
        promoted.add(t["run_id"])
        looks = (runs.get(t["run_id"]) or {}).get("details", {}).get("looks", [])
        at = _at(t["at"])
        before = [m for m in looks if _at(m["at"]) <= at]
        if not before or before[-1]["verdict"] != "pass":
            last = before[-1]["verdict"] if before else "none"
            out.append(f"run {t['run_id']} was promoted without a PASS recorded first (last verdict: {last})")
    for r in s.runs:
        if r["phase"] == "succeeded" and r["id"] not in promoted:
            out.append(f"run {r['id']} succeeded without ever promoting")
    return out


def deployments_match_runs(s: Snapshot) -> list[str]:
    out = []
    stable, canary = s.deployments["stable"], s.deployments["canary"]
    ends = {t["run_id"]: t["at"] for t in s.transitions if t["to_phase"] == "succeeded"}
    winners = sorted((at, run_id) for run_id, at in ends.items())
    images = {r["id"]: r["image"] for r in s.runs}
    want = images[winners[-1][1]] if winners else s.initial_image
    if stable["image"] != want:
        owner = next((r for r in s.runs if r["image"] == stable["image"]), None)
        what = f"the image of run {owner['id']}, which ended {owner['phase']}" if owner else stable["image"]
        out.append(f"stable runs {what}; the last promoted image is {want}")
    if stable["replicas"] != s.total_replicas:
        out.append(f"stable has {stable['replicas']} replicas, not {s.total_replicas}")
    if canary["replicas"] != 0:
        out.append(f"canary has {canary['replicas']} replicas with no run live")
    for track, dep in (("stable", stable), ("canary", canary)):
        if not dep["settled"]:
            out.append(f"{track} Deployment never settled")
    return out


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
