"""The read side: a run as the API documents it, with every field and nothing internal."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import datetime, timedelta, timezone

import jsonschema_rs

from controller.core.canary import CanaryPlan, CanarySpec, Step
from controller.core.judge import JudgeConfig, Outcome, Verdict
from controller.core.policy import PolicyConfig
from controller.core.runs import Phase, Run, details_from_json, new_run
from controller.core.state import CanaryStage, CanaryState, Look, Pause, Stage, TriggerAttempts
from controller.service.views import Views
from controller.web.openapi import RUN_SCHEMAS

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
SPEC = CanarySpec(CanaryPlan((Step(10, timedelta(minutes=5)), Step(50, timedelta(minutes=5))), 10,
                             timedelta(minutes=1), 2, 1000),
                  JudgeConfig(), "hits_total", "trials_total", "track", timedelta(minutes=10))  # fmt: skip


def full_run() -> Run:
    run, _ = new_run("r1", "recsys", Phase.TRIGGERING, ("precision_drop",), NOW, {Phase.TRIGGERING: timedelta(hours=1)},
                     "accepted: RecsysPrecisionAtKDrop (precision_drop)")  # fmt: skip
    verdict = Verdict(Outcome.INCONCLUSIVE, "not enough evidence", -0.5, -3.0, 1.0, 1.0)
    return replace(
        run, phase=Phase.ANALYZING, pipeline_id="42", pipeline_url="https://gitlab.example/p/42",
        image="registry.example/recsys@sha256:" + "b" * 64, previous_image="registry.example/recsys@sha256:" + "a" * 64,
        attempts=TriggerAttempts(1, NOW), stages=(Stage("train", "success"),), offline_metrics={"precision_at_10": 0.2},
        pause=Pause(NOW), canary=CanaryState(1, CanaryStage.JUDGING, NOW, NOW, NOW, NOW), verdict=verdict,
        retry_of="r0", manual_reason="look again",
    )  # fmt: skip


def validate(instance: object, name: str) -> None:
    jsonschema_rs.validate({"$ref": f"#/components/schemas/{name}", "components": {"schemas": RUN_SCHEMAS}}, instance)


def test_the_run_document_has_exactly_the_documented_fields():
    views = Views(store=None, policy=PolicyConfig(models=(), max_concurrent=1), clock=None, specs={"recsys": SPEC})  # type: ignore[arg-type]
    doc = views.run_json(full_run())
    validate(doc, "Run")
    assert set(doc) == set(RUN_SCHEMAS["Run"]["properties"])
    assert doc["canary"] == {"step": 2, "steps": 2, "weight": 50, "stage": "judging"}
    assert doc["pipeline"]["trigger_attempts"] == 1 and doc["paused"] == {"since": "2026-11-24T10:00:00.000000Z"}
    look = Look(NOW, 1, 10, full_run().verdict, {"hits": 5.0, "trials": 100.0}, {"hits": 1.0, "trials": 10.0},
                {"error_ratio": None})  # fmt: skip
    validate(look.to_json(), "Look")
    assert Look.from_json(look.to_json()) == look


def test_a_fresh_run_is_documented_too():
    run, _ = new_run("r2", "search", Phase.QUEUED, (), NOW, {Phase.QUEUED: timedelta(hours=1)}, "queued")
    doc = Views(store=None, policy=PolicyConfig(models=(), max_concurrent=1), clock=None).run_json(run)  # type: ignore[arg-type]
    validate(doc, "Run")
    assert doc["canary"] is None and doc["verdict"] is None and doc["paused"] is None


def test_details_round_trip_through_json():
    run = full_run()
    again = replace(run, **details_from_json(run.details_json()))
    assert again == run
    # every typed field the store keeps is written out: a new field must be added to details_json too
    columns = {"id", "model", "phase", "created_at", "phase_entered_at", "deadline_at", "trigger", "reasons",
               "ended_at", "cause", "dry_run", "pipeline_id", "pipeline_url", "image"}  # fmt: skip
    assert {f.name for f in fields(Run)} - columns == set(details_from_json({}))
