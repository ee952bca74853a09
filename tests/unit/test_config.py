from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from controller.cli import main
from controller.config import ConfigError, load_settings
from controller.core.runs import Phase
from tests.conftest import SECRETS_ENV, TOKEN, write_config

ROOT = Path(__file__).resolve().parents[2]


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, SECRETS_ENV if env is None else env)
    return err.value.problems


def test_example_config_is_valid():
    settings = load_settings(ROOT / "examples" / "local.yaml", SECRETS_ENV)
    assert [m.name for m in settings.models] == ["recsys"]
    reasons = {r.alertname: (r.reason, r.notify_only) for r in settings.models[0].rules}
    assert reasons == {
        "RecsysPrecisionAtKDrop": ("precision_drop", False),
        "RecsysFeatureDrift": ("drift", False),
        "RecsysEventStreamDown": ("", True),
    }
    assert not settings.store.path.is_absolute()


def test_every_problem_is_listed_at_once(tmp_path):
    found = problems(
        tmp_path,
        """
server: {port: 8080, colour: blue}
policy: {cooldown: 5x, deadlines: {succeeded: 1h}}
models:
  - name: recsys
    matchers: []
    rules: [{alertname: X}]
    pipeline: {runner: command}
""",
        env={},
    )
    assert "server.colour: unknown key" in found
    assert any(p.startswith("policy.cooldown: bad duration '5x'") for p in found)
    assert any("deadlines only apply to live phases" in p for p in found)
    assert any(p.startswith("models.0.matchers: a model needs at least one matcher") for p in found)
    assert any("needs a `reason`" in p for p in found)
    assert any("needs `command`" in p for p in found)
    assert any("RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN" in p for p in found)


def test_secrets_are_refused_in_the_file(tmp_path):
    found = problems(tmp_path, "secrets: {alertmanager_token: x}\nmodels: []\n")
    assert found == ["secrets: not allowed in the config file; use environment variables or *_FILE"]


def test_secret_from_file_and_env_overrides(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file-token\n")
    env = {
        "RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN_FILE": str(token_file),
        "RETRAIN_CONTROLLER__SERVER__PORT": "9123",
        "RETRAIN_CONTROLLER__POLICY__COOLDOWN": "2h",
        "RETRAIN_CONTROLLER__POLICY__DRY_RUN": "true",
    }
    s = load_settings(write_config(tmp_path), env)
    assert s.secrets.alertmanager_token.get_secret_value() == "from-file-token"
    assert s.server.port == 9123
    assert s.policy.cooldown == timedelta(hours=2)
    assert s.policy.dry_run is True
    assert "from-file-token" not in repr(s)


def test_unreadable_secret_file(tmp_path):
    env = {"RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN_FILE": str(tmp_path / "missing")}
    found = problems(tmp_path, write_config(tmp_path).read_text(), env)
    assert any("cannot read" in p for p in found)


def test_deadline_defaults_are_merged(tmp_path):
    s = load_settings(write_config(tmp_path), SECRETS_ENV)
    assert set(s.policy.deadlines) == {p for p in Phase if not p.terminal}


def test_duplicate_model_names(tmp_path):
    text = write_config(tmp_path).read_text().replace("name: search", "name: recsys")
    assert any("model names must be unique: recsys" in p for p in problems(tmp_path, text))


def test_model_overrides_policy_defaults(tmp_path):
    text = write_config(tmp_path).read_text().replace(
        "  - name: search\n", "  - name: search\n    cooldown: 10m\n    daily_budget: 7\n"
    )
    path = tmp_path / "o.yaml"
    path.write_text(text)
    pc = load_settings(path, SECRETS_ENV).policy_config()
    by_name = {m.name: m for m in pc.models}
    assert by_name["search"].cooldown == timedelta(minutes=10) and by_name["search"].daily_budget == 7
    assert by_name["recsys"].cooldown == timedelta(hours=1) and by_name["recsys"].daily_budget == 3


def test_check_config_cli(tmp_path, capsys, monkeypatch):
    for k, v in SECRETS_ENV.items():
        monkeypatch.setenv(k, v)
    assert main(["check-config", "--config", str(write_config(tmp_path))]) == 0
    assert "config OK: 2 model(s): recsys, search" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: x}]\nstore: {retention: forever}\n")
    assert main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "store.retention: bad duration 'forever'" in err
    assert "models.0.matchers: required key is missing" in err
    assert TOKEN not in err


def test_no_config_at_all():
    with pytest.raises(ConfigError) as err:
        load_settings(None, {})
    assert "--config" in err.value.problems[0]


@pytest.mark.parametrize(
    "selector,ok",
    [
        ('recsys_slot_hits_total{namespace="recsys"}', True),
        ("recsys_slot_hits_total", True),
        ('recsys_slot_hits_total{model=~"a|b",track!="x"}', True),
        ('{__name__="recsys_slot_hits_total",model="recsys"}', True),
        ('m{label="a } b"}', True),  # braces inside a quoted value
        ('sum by (pod, track) (recsys_slot_hits_total{model="recsys"})', False),
        ('recsys_slot_hits_total{model="recsys"}[5m]', False),
        ('rate(recsys_slot_hits_total[5m])', False),
        ('recsys_slot_hits_total{model="recsys"} * 2', False),
        ("", False),
    ],
)
def test_counters_must_be_plain_selectors(selector, ok):
    from controller.config import AnalysisSettings

    if ok:
        AnalysisSettings(hits=selector, trials="t_total")
    else:
        with pytest.raises(ValueError, match="not a counter selector"):
            AnalysisSettings(hits=selector, trials="t_total")
