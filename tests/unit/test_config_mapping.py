"""Config shapes and their mapping to the core: the pipeline union on `runner`, and Settings.canary_specs()."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import CommandPipeline, ConfigError, GitlabPipeline, Settings, load_settings
from controller.core.canary import CanaryPlan, CanarySpec, GuardrailSpec, Step
from controller.core.judge import Direction, JudgeConfig
from controller.demo.configs import Options, controller_config
from tests.conftest import SECRETS_ENV, write_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**SECRETS_ENV, "RETRAIN_CONTROLLER_GITLAB_TOKEN": "gitlab-token-3c5e7a9b1d"}


def model(pipeline: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "recsys", "matchers": ['model="recsys"'], "rules": [{"alertname": "Drop", "reason": "drop"}],
            "pipeline": pipeline, **extra}  # fmt: skip


def load(tmp_path: Path, *models: dict[str, Any]) -> Settings:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"models": list(models)}))
    return load_settings(path, ENV)


def problems(tmp_path: Path, pipeline: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, model(pipeline))
    return err.value.problems


# ---- the pipeline union ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pipeline", "cls", "fields"),
    [
        ({"runner": "command", "command": ["true"]}, CommandPipeline,
         {"runner": "command", "command": ["true"], "env": {}, "workdir": None}),
        ({"command": ["sh", "-c", "x"], "env": {"A": "1"}, "workdir": "/tmp"}, CommandPipeline,  # runner left out
         {"runner": "command", "command": ["sh", "-c", "x"], "env": {"A": "1"}, "workdir": Path("/tmp")}),
        ({"runner": "gitlab", "project": "ml/recsys"}, GitlabPipeline,
         {"runner": "gitlab", "project": "ml/recsys", "ref": "main", "variables": {}, "trigger_token_file": None}),
        ({"runner": "gitlab", "project": 42, "ref": "v2", "variables": {"TRAIN_CPU": "4"}}, GitlabPipeline,
         {"runner": "gitlab", "project": 42, "ref": "v2", "variables": {"TRAIN_CPU": "4"}}),
    ],
    ids=["command", "command-by-default", "gitlab", "gitlab-all-fields"],
)  # fmt: skip
def test_each_runner_parses_into_its_own_class(
    tmp_path: Path, pipeline: dict[str, Any], cls: type, fields: dict[str, Any]
) -> None:
    parsed = load(tmp_path, model(pipeline)).models[0].pipeline
    assert type(parsed) is cls
    assert {k: getattr(parsed, k) for k in fields} == fields


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        # A gitlab key under the command runner (explicit or by default), and the other way round.
        ({"runner": "command", "command": ["true"], "project": "ml/recsys"},
         "models.0.pipeline: `project` is a setting of the gitlab runner, not of the command runner"),
        ({"command": ["true"], "trigger_token_file": "/run/token"},
         "models.0.pipeline: `trigger_token_file` is a setting of the gitlab runner, not of the command runner"),
        ({"command": ["true"], "ref": "main", "variables": {}},
         "models.0.pipeline: `ref`, `variables` are settings of the gitlab runner, not of the command runner"),
        ({"runner": "gitlab", "project": "ml/recsys", "command": ["true"]},
         "models.0.pipeline: `command` is a setting of the command runner, not of the gitlab runner"),
        ({"runner": "gitlab", "project": "ml/recsys", "env": {"A": "1"}, "workdir": "/srv"},
         "models.0.pipeline: `env`, `workdir` are settings of the command runner, not of the gitlab runner"),
        # What every runner already refused, with the same messages.
        ({"runner": "command"}, "models.0.pipeline: the command runner needs `command`"),
        ({}, "models.0.pipeline: the command runner needs `command`"),
        ({"runner": "gitlab"}, "models.0.pipeline: the gitlab runner needs `project`"),
        ({"runner": "gitlab", "project": "p", "variables": {"RETRAIN_RUN_ID": "x"}},
         "models.0.pipeline: variables starting with RETRAIN_ are set by the controller: RETRAIN_RUN_ID"),
        ({"runner": "gitlab", "project": "p", "colour": "blue"}, "models.0.pipeline.colour: unknown key"),
        ({"runner": "jenkins", "command": ["true"]}, "models.0.pipeline: `runner` must be one of command, gitlab"),
    ],
    ids=["project-under-command", "trigger-token-under-default", "two-gitlab-keys", "command-under-gitlab",
         "two-command-keys", "command-missing", "empty", "project-missing", "reserved-variable", "unknown-key",
         "unknown-runner"],
)  # fmt: skip
def test_a_misplaced_or_missing_field_is_named(tmp_path: Path, pipeline: dict[str, Any], expected: str) -> None:
    found = problems(tmp_path, pipeline)
    assert any(p.startswith(expected) for p in found), found


def test_every_shipped_config_still_parses(tmp_path: Path) -> None:
    """Files written before the union (no `runner:`) and every config the repository ships."""
    conftest = load_settings(write_config(tmp_path), ENV)  # its second model has no `runner:`
    assert [type(m.pipeline) for m in conftest.models] == [CommandPipeline, CommandPipeline]
    example = load_settings(ROOT / "examples" / "local.yaml", ENV)
    assert isinstance(example.models[0].pipeline, CommandPipeline)
    demo = Settings(**controller_config(Options(workdir=tmp_path), 8080, 9090))
    assert isinstance(demo.models[0].pipeline, CommandPipeline)
    k8s = tmp_path / "k8s.yaml"
    k8s.write_text(yaml.safe_load((ROOT / "k8s" / "configmap.yaml").read_text())["data"]["config.yaml"])
    pipeline = load_settings(k8s, ENV).models[0].pipeline
    assert isinstance(pipeline, GitlabPipeline) and pipeline.project == "ml/recsys"


# ---- Settings.canary_specs() ----------------------------------------------------------------------------------

CANARY = {"namespace": "recsys", "stable": "recsys", "canary": "recsys-canary", "container": "model",
          "total_replicas": 8, "ready_timeout": "5m",
          "steps": [{"weight": 20, "min_duration": "2m"}, {"weight": 50}]}  # fmt: skip
ANALYSIS = {
    "hits": 'recsys_slot_hits_total{model="recsys"}',
    "trials": 'recsys_slots_served_total{model="recsys"}',
    "units": 'recsys_requests_total{model="recsys"}',
    "track_label": "variant", "tolerance": 0.03, "indifference": 0.02, "alpha": 0.01, "beta": 0.1,
    "overdispersion": 1.5, "min_trials": 500, "interval": "30s", "max_no_data": 3,
    "guardrails": [
        {"name": "error_ratio", "query": "errors / requests", "max": 0.01},
        {"name": "coverage", "query": "covered / requested", "min": 0.9, "breaches": 1},
    ],
}  # fmt: skip

EXPECTED = CanarySpec(
    plan=CanaryPlan(
        steps=(Step(20, timedelta(minutes=2)), Step(50, timedelta(minutes=5))),
        total_replicas=8,
        interval=timedelta(seconds=30),
        max_bad_looks=3,
        min_step_trials=500,
    ),
    judge=JudgeConfig(tolerance=0.03, indifference=0.02, alpha=0.01, beta=0.1, min_trials=500, overdispersion=1.5),
    hits='recsys_slot_hits_total{model="recsys"}',
    trials='recsys_slots_served_total{model="recsys"}',
    track_label="variant",
    ready_timeout=timedelta(minutes=5),
    guardrails=(
        GuardrailSpec("error_ratio", "errors / requests", 0.01, Direction.MAX, 2),
        GuardrailSpec("coverage", "covered / requested", 0.9, Direction.MIN, 1),
    ),
    units='recsys_requests_total{model="recsys"}',
)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"canary": CANARY, "analysis": ANALYSIS}, EXPECTED),
        ({}, None),
        ({"analysis": ANALYSIS}, None),  # analysis alone: nothing to roll out
    ],
    ids=["canary-and-analysis", "no-canary", "analysis-only"],
)
def test_canary_specs_map_config_to_the_core(tmp_path: Path, extra: dict[str, Any], expected: CanarySpec | None) -> None:
    settings = load(tmp_path, model({"command": ["true"]}, **extra))
    assert settings.canary_spec("recsys") == expected
    assert settings.canary_specs() == ({"recsys": expected} if expected else {})


def test_canary_defaults_come_from_the_config_once(tmp_path: Path) -> None:
    bare = {k: ANALYSIS[k] for k in ("hits", "trials")}
    settings = load(tmp_path, model({"command": ["true"]}, canary=CANARY, analysis=bare),
                    {**model({"command": ["true"]}), "name": "search", "matchers": ['model="search"']})  # fmt: skip
    spec = settings.canary_spec("recsys")
    assert spec is not None
    assert spec.judge == JudgeConfig(tolerance=0.05, indifference=0.05, alpha=0.05, beta=0.05, min_trials=1000)
    assert (spec.track_label, spec.units, spec.guardrails) == ("track", None, ())
    assert (spec.plan.interval, spec.plan.max_bad_looks) == (timedelta(minutes=1), 5)
    assert list(settings.canary_specs()) == ["recsys"]
    assert settings.canary_spec("search") is None and settings.canary_spec("nope") is None
