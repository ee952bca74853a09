"""Crash-consistency trials: runs driven end to end on the rig while the controller is SIGKILLed at chosen points
and started again; after each trial the faults stop, every run must end, and the invariants are checked.

Kill points are reached by phase (the store is polled read-only, the Deployments are watched, the pipeline
stand-in announces its image callback) and by time (a random delay). Each trial arms one point in rotation, so
all are reached over a handful of trials, plus up to two more at random.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from kubernetes import watch

from tests.fakes.gitlab import Fault
from tests.infra import kube
from tests.reliability import invariants
from tests.reliability.rig import ALERTNAME, CANARY, GAUGE, NS, STABLE, Rig
from tests.reliability.world import CONTAINER

POINTS = {
    "webhook": "during webhook handling: 0-8 ms after a direct alert POST is sent",
    "trigger": "mid-trigger: GitLab holds the create (half the time it records it late, after the kill); killed 0.1-0.7 s"
               " into the hold",
    "trigger-after-create": "mid-trigger: GitLab recorded the pipeline and holds the answer; killed on sight",
    "callback": "mid-callback: 0-10 ms after the pipeline's image callback is sent",
    "k8s-deploy": "a canary scale-up reached the API server, before the store records the step",
    "analysis": "mid-analysis: 0.2-2.5 s (bad canary: 0.1-0.9 s) after the run entered analyzing",
    "k8s-promote": "stable took the new image, before the store records success",
    "k8s-rollback": "the canary went to 0 pods for a rollback, before the store records it",
    "random": "a random moment 0-8 s into the trial",
}
GOOD, BAD = 1.0, 0.5  # canary precision relative to stable
CHAOS_WINDOW_S = 40.0  # kills may land this long into a trial
SETTLE_S = 75.0  # then, without faults, everything must end within this


@dataclass
class Plan:
    good: bool
    via_alertmanager: bool
    extra_alerts: int  # further episodes fired while the run is live: they join it
    repeats: int  # re-deliveries of the first alert: duplicates
    kills: list[str]


def make_plan(rng: random.Random, index: int, force: str | None = None) -> Plan:
    first = force or list(POINTS)[index % len(POINTS)]
    kills = {first} | set(rng.sample(sorted(POINTS), rng.choice([0, 0, 1, 2])))
    for pair in (("trigger", "trigger-after-create"), ("k8s-promote", "k8s-rollback")):  # exclusive per trial
        if set(pair) <= kills:
            kills.discard(pair[1] if pair[0] == first else pair[0])
    good = "k8s-promote" in kills or ("k8s-rollback" not in kills and rng.random() < 0.6)
    via_am = "webhook" not in kills and rng.random() < 0.3
    return Plan(good, via_am, rng.choice([0, 0, 1, 2]), rng.choice([0, 1]), sorted(kills))


class Killer:
    """SIGKILLs the controller at most once per armed point per trial and starts it again at once."""

    def __init__(self, rig: Rig, rng: random.Random):
        self.rig, self.rng = rig, rng
        self._lock = threading.Lock()
        self._armed: set[str] = set()
        self.generation = 0
        self.armed: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()
        self.seen: dict[str, Counter[str]] = {p: Counter() for p in POINTS}  # live phases right after each kill

    def arm(self, points: list[str]) -> None:
        with self._lock:
            self.generation += 1
            self._armed = set(points)
            self.armed.update(points)

    def disarm(self) -> None:
        with self._lock:
            self.generation += 1
            self._armed.clear()

    def armed_now(self, point: str) -> bool:
        return point in self._armed

    def fire(self, point: str, generation: int | None = None, still: Callable[[], bool] | None = None) -> bool:
        with self._lock:
            if point not in self._armed or (generation is not None and generation != self.generation):
                return False
            self._armed.discard(point)
            if (still is not None and not still()) or not self.rig.kill_controller():
                return False
            self.hits[point] += 1
            if point != "webhook":  # that one is told by what became of the notification
                self.seen[point].update(self.rig.live_runs().values() or ["no live run"])
            time.sleep(self.rng.uniform(0.0, 0.3))
            self.rig.start_controller()
            return True

    def later(self, point: str, delay: float, still: Callable[[], bool] | None = None) -> None:
        timer = threading.Timer(delay, self.fire, (point, self.generation, still))
        timer.daemon = True
        timer.start()

    @property
    def busy(self) -> bool:
        return self._lock.locked()


class KubeWatch:
    """Watches the model's Deployments and fires the k8s-* points on the spec changes the controller makes."""

    def __init__(self, rig: Rig, killer: Killer):
        self.rig, self.killer = rig, killer

    def run(self, stop: threading.Event) -> None:
        apps = kube.client.AppsV1Api(self.rig.cluster.api_client())
        seen: dict[str, tuple[str | None, int]] = {}  # kept across re-lists, so no change falls between two watches
        while not stop.is_set():
            try:
                listing = apps.list_namespaced_deployment(NS)
                for dep in listing.items:
                    self._saw(dep, seen)
                w = watch.Watch()
                for event in w.stream(apps.list_namespaced_deployment, NS, timeout_seconds=5,
                                      resource_version=listing.metadata.resource_version):  # fmt: skip
                    self._saw(event["object"], seen)
                    if stop.is_set():
                        w.stop()
            except Exception:  # a dropped watch is started again
                stop.wait(0.2)

    def _saw(self, dep: Any, seen: dict[str, tuple[str | None, int]]) -> None:
        name, now = dep.metadata.name, _spec(dep)
        before, seen[name] = seen.get(name), now
        point = _point(name, before, now, seen.get(STABLE))
        if point and self.killer.armed_now(point):
            threading.Thread(target=self.killer.fire, args=(point, self.killer.generation), daemon=True).start()


def _spec(dep: Any) -> tuple[str | None, int]:
    image = next((c.image for c in dep.spec.template.spec.containers if c.name == CONTAINER), None)
    return image, int(dep.spec.replicas or 0)


def _point(name: str, before: Any, now: tuple[str | None, int], stable: Any) -> str | None:
    if before is None or before == now:
        return None
    if name == STABLE and before[0] != now[0]:
        return "k8s-promote"
    if name == CANARY and now[1] > before[1]:
        return "k8s-deploy"
    if name == CANARY and before[1] > 0 and now[1] == 0 and (stable is None or stable[0] != now[0]):
        return "k8s-rollback"
    return None


@dataclass
class Trial:
    index: int
    plan: Plan
    seconds: float = 0.0
    kills: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        how = "alertmanager" if self.plan.via_alertmanager else "webhook"
        return (f"trial {self.index}: {'good' if self.plan.good else 'bad'} canary via {how}, "
                f"+{self.plan.extra_alerts} episodes, armed {self.plan.kills}, killed {self.kills}, "
                f"runs {self.outcomes}, {self.seconds:.1f}s, {len(self.violations)} new violations")  # fmt: skip


def alert(shot: str) -> dict[str, Any]:
    starts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "status": "firing",
        "labels": {"alertname": ALERTNAME, "model": "recsys", "action": "retrain", "shot": shot},
        "annotations": {"summary": f"precision drop ({shot})"},
        "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus.invalid/graph",
        "fingerprint": hashlib.sha256(shot.encode()).hexdigest()[:16],
    }  # fmt: skip


class Chaos:
    """Trials on one rig. `run(n)` returns the trials; counts are on the Killer and in `violations`."""

    def __init__(self, rig: Rig, seed: int, log: Callable[[str], None] = print):
        self.rig, self.rng, self.log = rig, random.Random(seed), log
        self.killer = Killer(rig, random.Random(seed + 7))
        self.shots: list[str] = []
        self.violations: list[str] = []
        self.trials: list[Trial] = []
        rig.background("kube-watch", KubeWatch(rig, self.killer).run)
        rig.ci.before_image = self._before_image

    # ---- one trial ----------------------------------------------------------------------------------------

    def trial(self, index: int, force: str | None = None) -> Trial:
        plan = make_plan(self.rng, index, force)
        t = Trial(index, plan)
        started, hits_before = time.monotonic(), Counter(self.killer.hits)
        runs_before = {r["id"] for r in self.rig.read_store("SELECT id FROM runs")}
        self.rig.ci.quality = GOOD if plan.good else BAD
        self.killer.arm(plan.kills)
        if "trigger" in plan.kills:
            # Late: GitLab commits the create after the client is gone, maybe after the next process looked once.
            late = self.rng.random() < 0.5
            self.rig.gitlab.fail("create", Fault.late(delay=1.0) if late else Fault.timeout(delay=1.0))
        elif "trigger-after-create" in plan.kills:
            self.rig.gitlab.fail("create", Fault.timeout(after=True, delay=1.0))
        if "random" in plan.kills:
            self.killer.later("random", self.rng.uniform(0.0, 8.0))
        senders = self._fire_alerts(index, plan)
        self._watch_phases(senders, started + CHAOS_WINDOW_S)
        self.killer.disarm()
        self.rig.gitlab.clear_faults()
        self._wait_quiet(senders, time.monotonic() + SETTLE_S)
        for shot in self.shots:
            self.rig.exporter.remove(GAUGE, {"model": "recsys", "shot": shot})
        t.seconds = time.monotonic() - started
        t.kills = sorted((self.killer.hits - hits_before).elements())
        rows = self.rig.read_store("SELECT id, phase FROM runs ORDER BY seq")
        t.outcomes = [r["phase"] for r in rows if r["id"] not in runs_before]
        found = invariants.check(invariants.snapshot(self.rig, self.shots)) + self.rig.ci.problems
        t.violations = [v for v in dict.fromkeys(found) if v not in self.violations]
        self.violations += t.violations
        self.trials.append(t)
        return t

    def _fire_alerts(self, index: int, plan: Plan) -> list[threading.Thread]:
        first = f"t{index}-0"
        self.shots.append(first)
        senders = []
        if plan.via_alertmanager:
            self.rig.exporter.set(GAUGE, {"model": "recsys", "shot": first}, 0.02)  # Prometheus fires, Alertmanager delivers
        else:
            senders.append(self._send(alert(first), 0.0, kill="webhook" in plan.kills))
        body = alert(first)
        for _ in range(plan.repeats if not plan.via_alertmanager else 0):
            senders.append(self._send(body, self.rng.uniform(0.2, 3.0)))
        for j in range(1, plan.extra_alerts + 1):
            shot = f"t{index}-{j}"
            self.shots.append(shot)
            senders.append(self._send(alert(shot), self.rng.uniform(0.3, 4.0)))
        return senders

    def _send(self, body: dict[str, Any], delay: float, kill: bool = False) -> threading.Thread:
        def go() -> None:
            time.sleep(delay)
            if kill:
                answer: list[int | None] = []
                first = threading.Thread(target=lambda: answer.append(self.rig.post_alert(body)))
                first.start()
                time.sleep(self.rng.uniform(0.0, 0.008))  # the handler takes a few ms
                killed = self.killer.fire("webhook")
                first.join()
                delivered = bool(answer) and answer[0] is not None and 200 <= answer[0] < 300
                if killed:
                    shot = body["labels"]["shot"]
                    kept = self.rig.read_store("SELECT 1 FROM decisions WHERE json_extract(labels, '$.shot') = ?", (shot,))
                    how = "answered" if delivered else ("kept, answer lost" if kept else "not kept")
                    self.killer.seen["webhook"][f"notification {how}"] += 1
                if delivered:
                    return
            self.rig.deliver_alert(body)

        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        return thread

    def _before_image(self, run_id: str) -> None:
        if self.killer.armed_now("callback"):
            self.killer.later("callback", self.rng.uniform(0.0, 0.01))  # the handler takes a few ms

    def _watch_phases(self, senders: list[threading.Thread], until: float) -> None:
        scheduled: set[str] = set()
        while time.monotonic() < until and not self._quiet(senders):
            live = self.rig.live_runs()
            phases = set(live.values())
            if "triggering" in phases and "trigger" not in scheduled and self.killer.armed_now("trigger"):
                scheduled.add("trigger")
                self.killer.later("trigger", self.rng.uniform(0.1, 0.7), lambda: "triggering" in self.rig.live_runs().values())
            if "analyzing" in phases and "analysis" not in scheduled and self.killer.armed_now("analysis"):
                scheduled.add("analysis")
                # A bad canary is judged within a second or two, a good one takes a few.
                delay = self.rng.uniform(0.2, 2.5) if self.rig.ci.quality == GOOD else self.rng.uniform(0.1, 0.9)
                self.killer.later("analysis", delay, lambda: "analyzing" in self.rig.live_runs().values())
            if self.killer.armed_now("trigger-after-create"):
                triggering = {r for r, p in live.items() if p == "triggering"}
                if triggering & {p.vars.get("RETRAIN_RUN_ID") for p in self.rig.gitlab.pipelines()}:
                    self.killer.fire("trigger-after-create")
            time.sleep(0.02)

    def _quiet(self, senders: list[threading.Thread]) -> bool:
        """Every alert delivered and decided, every run ended, every pipeline done, the cluster settled."""
        if any(s.is_alive() for s in senders) or self.killer.busy or not self.rig.controller.proc.alive:
            return False
        decided = {r[0] for r in self.rig.read_store("SELECT DISTINCT json_extract(labels, '$.shot') FROM decisions")}
        if not set(self.shots) <= decided:
            return False
        return not self.rig.live_runs() and self.rig.ci.busy == 0 and self.rig.kubelet.synced

    def _wait_quiet(self, senders: list[threading.Thread], until: float) -> None:
        while time.monotonic() < until and not self._quiet(senders):
            time.sleep(0.1)
        if not self.killer.busy and not self.rig.controller.proc.alive:
            self.rig.start_controller()  # a restart that failed must not hide the trial's outcome

    # ---- many ---------------------------------------------------------------------------------------------

    def run(self, trials: int, make_up: int = 0) -> list[Trial]:
        """`trials` trials; then up to `make_up` more, each forcing a point no trial has hit yet."""
        for i in range(trials):
            self._one(i)
        for i in range(trials, trials + make_up):
            missed = [p for p in POINTS if not self.killer.hits[p]]
            if not missed:
                break
            self._one(i, missed[0])
        return self.trials

    def _one(self, index: int, force: str | None = None) -> None:
        t = self.trial(index, force)
        self.log(t.line())
        for v in t.violations:
            self.log(f"  VIOLATION: {v}")

    def report(self) -> dict[str, Any]:
        return {"trials": len(self.trials), "kills": sum(self.killer.hits.values()), "violations": len(self.violations)}

    def summary(self) -> list[str]:
        lines = [f"{'kill point':<22} {'armed':>5} {'hit':>5}  how it is reached"]
        for point, how in POINTS.items():
            lines.append(f"{point:<22} {self.killer.armed[point]:>5} {self.killer.hits[point]:>5}  {how}")
            seen = ", ".join(f"{k} {v}" for k, v in self.killer.seen[point].most_common())
            lines.append(f"{'':<35}at the kill: {seen or '-'}")
        ends = Counter(o for t in self.trials for o in t.outcomes)
        lines.append("runs: " + ", ".join(f"{k} {v}" for k, v in sorted(ends.items())))
        lines.append(json.dumps(self.report()))
        return lines
