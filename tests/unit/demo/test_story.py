"""The demo's story check: each chapter on its own, so a failed demo says what was missing."""

from datetime import datetime, timedelta, timezone

import pytest

from controller.core.judge import Outcome, Verdict
from controller.core.runs import Phase, Run, Transition
from controller.core.state import Look
from controller.demo.meter import Meter
from controller.demo.story import check
from controller.demo.service import TrackCounts

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
PROMOTED = ["triggering", "training", "deploying", "analyzing", "promoting", "succeeded"]
ROLLED = ["triggering", "training", "deploying", "analyzing", "rolling_back", "rolled_back"]


def _story(phases, verdict="pass", looks=3, image="img", alerts=(("RecsysPrecisionAtKDrop", "accepted"),),
           expect="promoted", times=None):  # fmt: skip
    history = [Transition("r", T0 + timedelta(seconds=(times or range(len(phases)))[i]),
                          Phase(phases[i - 1]) if i else None, Phase(p), "why")
               for i, p in enumerate(phases)]  # fmt: skip
    outcomes = [Outcome.INCONCLUSIVE] * (looks - 1) + [Outcome(verdict)] if looks else []
    seen = tuple(Look(at=T0, step=1, weight=10, verdict=Verdict(o, "why"), stable={}, canary={}) for o in outcomes)
    run = Run(id="r", model="recsys", phase=Phase(phases[-1]), created_at=T0, phase_entered_at=T0, deadline_at=None,
              pipeline_id="cmd-r" if image else None, image=image,
              verdict=Verdict(Outcome(verdict), "why"))  # fmt: skip
    decisions = [{"alertname": a, "decision": d, "received_at": "t"} for a, d in alerts]
    return check(run, history, decisions, expect, seen)


def _missing(story):
    return [c.name for c in story.chapters if not c.ok]


def test_the_whole_story_promoted():
    s = _story(PROMOTED)
    assert s.ok and s.outcome == "promoted" and _missing(s) == []


def test_the_whole_story_rolled_back():
    s = _story(ROLLED, verdict="fail", expect="rolled_back")
    assert s.ok and s.outcome == "rolled_back"


@pytest.mark.parametrize(
    "kw, missing",
    [
        ({"alerts": ()}, ["precision alert"]),
        ({"alerts": (("RecsysFeatureDrift", "accepted"),)}, ["precision alert"]),  # drift alone is not the story
        ({"alerts": (("RecsysPrecisionAtKDrop", "rate_limited"),)}, ["precision alert"]),
        ({"alerts": (("RecsysFeatureDrift", "accepted"), ("RecsysPrecisionAtKDrop", "joined"))}, []),
        ({"image": None}, ["pipeline"]),
        ({"looks": 0}, ["canary analysis"]),
        ({"verdict": "inconclusive"}, ["promoted"]),  # promoted by hand, not by a PASS
        ({"expect": "rolled_back"}, ["rolled_back"]),  # a bad model that got promoted
        ({"times": [0, 1, 2, 5, 4, 6]}, ["promoted"]),
    ],
)
def test_each_missing_chapter_is_named(kw, missing):
    assert _missing(_story(PROMOTED, **kw)) == missing


def test_a_run_that_failed_in_training_misses_pipeline_analysis_and_ending():
    s = _story(["triggering", "training", "failed"], looks=0, image=None)
    assert s.outcome is None and _missing(s) == ["pipeline", "canary analysis", "promoted"]
    assert "triggering -> training -> failed" in s.missing


def test_a_deadline_rollback_before_analysis_is_not_the_bad_model_story():
    s = _story(["triggering", "training", "deploying", "rolling_back", "rolled_back"], looks=0, verdict="fail",
               expect="rolled_back")  # fmt: skip
    assert _missing(s) == ["canary analysis", "rolled_back"]


def test_meter_precision_is_hits_over_slots_in_the_window():
    m = Meter(horizon_s=100)
    m.add(1.0, {"stable": TrackCounts(slots=100, hits=20), "canary": TrackCounts(slots=10, hits=5)})
    m.add(2.0, {"stable": TrackCounts(slots=100, hits=10)})
    m.add(3.0, {"stable": TrackCounts(slots=0, hits=0)})
    assert m.precision("stable", 0) == pytest.approx(0.15)
    assert m.precision("stable", 1.5) == pytest.approx(0.10)
    assert m.precision("stable", 0, 1.5) == pytest.approx(0.20)
    assert m.precision("canary", 0) == pytest.approx(0.5)
    assert m.precision("canary", 2) is None
    m.add(200.0, {"stable": TrackCounts(slots=10, hits=1)})  # older than the horizon is forgotten
    assert m.precision("stable", 0) == pytest.approx(0.1)


def test_free_ports_are_distinct_and_avoid_the_one_in_use():
    from controller.demo.processes import free_ports

    ports = free_ports(5, avoid=8080)
    assert len(set(ports)) == 5 and 8080 not in ports


def test_one_demo_per_working_directory(tmp_path):
    from controller.demo.main import lock_workdir
    from controller.demo.processes import DemoError

    first = lock_workdir(tmp_path / "demo")
    with pytest.raises(DemoError, match="another demo is running"):
        lock_workdir(tmp_path / "demo")
    first.close()
    lock_workdir(tmp_path / "demo").close()  # free again once the first one ended


def test_kill_pipelines_stops_running_ones_and_leaves_finished_ones_alone(tmp_path):
    import os
    import subprocess
    import time

    from controller.demo.processes import kill_pipelines

    running = subprocess.Popen(["sleep", "60"], start_new_session=True)
    finished = subprocess.Popen(["sleep", "60"], start_new_session=True)  # stands for a reused process group id
    for name, proc, done in (("a", running, False), ("b", finished, True)):
        (tmp_path / name / "started").mkdir(parents=True)
        (tmp_path / name / "pid").write_text(f"{proc.pid}\n")
        if done:
            (tmp_path / name / "exit").write_text("0\n")
    (tmp_path / "c" / "started").mkdir(parents=True)  # launched, no pid yet: waited for briefly, then skipped
    started = time.monotonic()
    try:
        assert kill_pipelines(tmp_path, pid_wait_s=0.3) == 1
        assert running.wait(5) is not None and finished.poll() is None
        assert time.monotonic() - started < 3
    finally:
        for proc in (running, finished):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
