from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from controller.core.callbacks import EVENT, callback_token, effect_of, token_matches
from controller.core.runs import Phase
from controller.core.state import Stage
from tests.unit.core.test_runs import run_in

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/ml/recsys@{DIGEST}"


def ev(**kw):
    return EVENT.validate_python(kw)


@pytest.mark.parametrize(
    "image",
    [
        IMAGE,
        f"registry.local:5000/recsys@{DIGEST}",
        f"recsys@{DIGEST}",
        f"ghcr.io/org/team/recsys-model_v2@{DIGEST}",
    ],
)
def test_good_image_refs(image):
    assert ev(event="image", image=image).image == image


@pytest.mark.parametrize(
    "image",
    [
        "registry/recsys:latest",  # a tag moves; we deploy what was evaluated, by digest
        f"registry/recsys:v2@{DIGEST}x",
        "registry/recsys@sha256:abc",
        f"registry/ReCsys@{DIGEST}",
        f"https://registry/recsys@{DIGEST}",
        "",
        f"registry/recsys@{DIGEST}; rm -rf /",
    ],
)
def test_malformed_image_refs(image):
    with pytest.raises(ValidationError):
        ev(event="image", image=image)


@pytest.mark.parametrize(
    "body",
    [
        {"event": "stage"},
        {"event": "stage", "stage": "train", "status": "exploded"},
        {"event": "nope"},
        {"event": "failed", "reason": ""},
        {"event": "image", "image": IMAGE, "metrics": {"precision_at_10": "high"}},
        {"event": "image", "image": IMAGE, "extra": 1},
        {},
    ],
)
def test_malformed_events(body):
    with pytest.raises(ValidationError):
        EVENT.validate_python(body)


TRAINING = run_in(Phase.TRAINING)
TRIGGERING = run_in(Phase.TRIGGERING)
WITH_IMAGE = replace(run_in(Phase.DEPLOYING), image=IMAGE)

CASES = [
    ("image while training moves to deploying", TRAINING, dict(event="image", image=IMAGE, metrics={"p@10": 0.2}),
     "move", Phase.DEPLOYING),
    ("image while triggering is recorded (the pipeline ref is still being saved)", TRIGGERING,
     dict(event="image", image=IMAGE), "record", None),
    ("replayed image is a no-op", WITH_IMAGE, dict(event="image", image=IMAGE), "noop", None),
    ("a different image later is a conflict", WITH_IMAGE,
     dict(event="image", image=IMAGE.replace("ab", "cd")), "conflict", None),
    ("failure while training fails the run", TRAINING, dict(event="failed", reason="OOMKilled", stage="train"),
     "move", Phase.FAILED),
    ("failure after the image is ignored", WITH_IMAGE, dict(event="failed", reason="late"), "noop", None),
    ("stage is recorded", TRAINING, dict(event="stage", stage="train", status="running"), "record", None),
]


@pytest.mark.parametrize("case,run,body,kind,to", CASES, ids=[c[0] for c in CASES])
def test_effect_of(case, run, body, kind, to):
    effect = effect_of(run, ev(**body))
    assert effect.kind == kind and effect.to == to


def test_replayed_stage_is_a_noop():
    e = effect_of(TRAINING, ev(event="stage", stage="train", status="running"))
    run = e.apply(TRAINING)
    assert run.stages == (Stage("train", "running"),)
    assert effect_of(run, ev(event="stage", stage="train", status="running")).kind == "noop"
    assert effect_of(run, ev(event="stage", stage="train", status="success")).kind == "record"


def test_failure_cause_names_the_stage():
    effect = effect_of(TRAINING, ev(event="failed", reason="evaluation worse than production by 4%", stage="evaluate"))
    assert effect.detail == "pipeline reported failure in evaluate: evaluation worse than production by 4%"


def test_tokens_are_per_run_and_compared_exactly():
    t = callback_token("s3cret", "run1")
    assert len(t) == 64 and token_matches("s3cret", "run1", t)
    assert not token_matches("s3cret", "run2", t)
    assert not token_matches("other", "run1", t)
    assert not token_matches("s3cret", "run1", t[:-1])
