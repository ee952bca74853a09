"""The shipped Prometheus artifacts: rules pass promtool (check and unit tests), every alert is unit-tested both
ways, Alertmanager's config passes amtool and routes as intended, and the dashboard reads only defined metrics.

promtool and amtool come with Debian's `prometheus` and `prometheus-alertmanager`; without them these tests skip
(fail under REQUIRE_INTEGRATION=1).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import promql
from tests.infra.procs import require_binary

pytestmark = pytest.mark.integration

TESTS_DIR = promql.PROMETHEUS_DIR / "tests"
EXAMPLE_CONFIG = promql.ROOT / "examples" / "local.yaml"
RETRAIN_URL = "http://retrain-controller.retrain-controller.svc:8080/api/v1/alerts"
TOKEN_FILE = "/etc/alertmanager/secrets/retrain-controller-token"


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=promql.ROOT)


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("PROMTOOL_BIN", ("promtool",))


@pytest.fixture(scope="module")
def amtool() -> str:
    return require_binary("AMTOOL_BIN", ("amtool",))


def _test_files() -> list[Path]:
    return sorted(TESTS_DIR.glob("*.yml"))


def _alerts() -> list[dict[str, Any]]:
    return [r for r in promql.rules(promql.ALERT_RULES) if "alert" in r]


# ---- rules --------------------------------------------------------------------------------------------------


def test_rules_pass_promtool_check_with_lint(promtool: str) -> None:
    result = _run([promtool, "check", "rules", "--lint=all", "--lint-fatal",
                   str(promql.RECORDING_RULES), str(promql.ALERT_RULES)])  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout, result.stdout
    assert "SUCCESS: 9 rules found" in result.stdout, result.stdout


@pytest.mark.parametrize("test_file", _test_files(), ids=lambda p: p.name)
def test_promtool_unit_tests_pass(promtool: str, test_file: Path) -> None:
    result = _run([promtool, "test", "rules", str(test_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_promtool_fails_a_wrong_expectation(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: the same alert with a wrong label is reported."""
    case = yaml.safe_load((TESTS_DIR / "recsys-alerts.test.yml").read_text())
    case["rule_files"] = [str(promql.RECORDING_RULES), str(promql.ALERT_RULES)]
    first = case["tests"][0]
    firing = next(t for t in first["alert_rule_test"] if t["exp_alerts"])
    firing["exp_alerts"][0]["exp_labels"]["action"] = "notify"
    case["tests"] = [first]
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(case, sort_keys=False))
    result = _run([promtool, "test", "rules", str(broken)])
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "FAILED" in output and 'action="notify"' in output, output


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in _test_files():
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names == {
        "RecsysPrecisionAtKDrop", "RecsysFeatureDrift", "RecsysEventStreamDown", "RetrainControllerDown",
        "RetrainControllerRunStuck", "RetrainControllerGitlabErrors", "RetrainControllerWebhookErrors",
    }  # fmt: skip
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_alert_labels_are_what_routing_and_the_controller_expect() -> None:
    for alert in _alerts():
        labels = alert.get("labels", {})
        assert labels.get("severity") in ("warning", "critical"), alert["alert"]
        assert "for" in alert, f"{alert['alert']} has no `for:`"
        assert {"summary", "description"} <= set(alert.get("annotations", {})), alert["alert"]
        if alert["alert"].startswith("Recsys"):
            assert "model" in alert["expr"], f"{alert['alert']} must keep the model label"
            expected = "notify" if alert["alert"] == "RecsysEventStreamDown" else "retrain"
            assert labels.get("action") == expected, alert["alert"]
        else:
            assert "action" not in labels, f"{alert['alert']} is for humans, never the controller"
            assert labels.get("component") == "retrain-controller"


def test_example_config_rules_name_shipped_alerts() -> None:
    """Every alert the example controller config acts on exists, with the action its rule implies."""
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    by_name = {a["alert"]: a for a in _alerts()}
    for model in config["models"]:
        for rule in model["rules"]:
            name = rule.get("alertname")
            if name is None:
                continue
            assert name in by_name, f"examples/local.yaml names {name}, which alert-rules.yml does not define"
            action = by_name[name]["labels"]["action"]
            assert action == ("notify" if rule.get("notify_only") else "retrain"), (name, action)


def test_rules_read_only_defined_metrics() -> None:
    exprs = [r["expr"] for r in promql.rules(promql.RECORDING_RULES) + promql.rules(promql.ALERT_RULES)]
    assert promql.unknown_names(exprs) == {}


def test_recording_rules_pool_counts_never_average_ratios() -> None:
    for rule in promql.rules(promql.RECORDING_RULES):
        name, expr = rule["record"], rule["expr"]
        assert name.count(":") == 2, f"{name} is not level:metric:operations"
        if ":ratio" in name and "psi" not in name:
            assert "avg" not in expr and expr.count("sum by") == 2 and "/" in expr, name


# ---- Alertmanager -------------------------------------------------------------------------------------------


def test_alertmanager_config_passes_amtool(amtool: str) -> None:
    result = _run([amtool, "check-config", str(promql.ALERTMANAGER_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "1 inhibit rules" in result.stdout and "2 receivers" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        # Retrain-worthy: the controller, and humans too (continue: true).
        (["alertname=RecsysPrecisionAtKDrop", "model=recsys", "action=retrain", "severity=warning"],
         "retrain-controller,humans"),
        (["alertname=RecsysFeatureDrift", "model=recsys", "action=retrain", "severity=warning"],
         "retrain-controller,humans"),
        # Notify-only and the controller's own alerts: humans only.
        (["alertname=RecsysEventStreamDown", "model=recsys", "action=notify", "severity=critical"], "humans"),
        (["alertname=RetrainControllerDown", "component=retrain-controller", "severity=critical"], "humans"),
        (["alertname=RetrainControllerGitlabErrors", "model=recsys", "component=retrain-controller"], "humans"),
    ],
    ids=["precision-drop", "drift", "stream-down", "controller-down", "gitlab-errors"],
)  # fmt: skip
def test_alertmanager_routes(amtool: str, labels: list[str], receivers: str) -> None:
    result = _run([amtool, "config", "routes", "test", f"--config.file={promql.ALERTMANAGER_CONFIG}",
                   f"--verify.receivers={receivers}", *labels])  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def test_amtool_route_check_can_fail(amtool: str) -> None:
    result = _run([amtool, "config", "routes", "test", f"--config.file={promql.ALERTMANAGER_CONFIG}",
                   "--verify.receivers=retrain-controller,humans", "alertname=RecsysEventStreamDown",
                   "model=recsys", "action=notify"])  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert result.stdout.splitlines()[0] == "humans", result.stdout


def test_alertmanager_config_shape() -> None:
    config = yaml.safe_load(promql.ALERTMANAGER_CONFIG.read_text())
    route = config["route"]
    assert route["receiver"] == "humans"
    retrain = route["routes"][0]
    assert retrain["matchers"] == ['action="retrain"'] and retrain["receiver"] == "retrain-controller"
    assert retrain["continue"] is True and retrain["group_by"] == ["model"]
    assert (retrain["group_wait"], retrain["group_interval"], retrain["repeat_interval"]) == ("30s", "5m", "4h")
    receivers = {r["name"]: r for r in config["receivers"]}
    (hook,) = receivers["retrain-controller"]["webhook_configs"]
    assert hook["url"] == RETRAIN_URL and hook["send_resolved"] is True and hook["max_alerts"] == 0
    assert hook["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": TOKEN_FILE}
    text = promql.ALERTMANAGER_CONFIG.read_text()
    for secret_key in ("credentials:", "password:", "api_key:", "bearer_token:", "routing_key:", "service_key:"):
        assert secret_key not in text, f"a secret ({secret_key}) is committed in alertmanager.yml"
    (inhibit,) = config["inhibit_rules"]
    assert inhibit == {
        "source_matchers": ['alertname="RecsysEventStreamDown"'],
        "target_matchers": ['alertname=~"RecsysPrecisionAtKDrop|RecsysFeatureDrift"'],
        "equal": ["model"],
    }


# ---- Grafana ------------------------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(promql.DASHBOARD.read_text()))


def test_dashboard_is_valid_and_parameterised() -> None:
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query" and variables["model"]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    assert promql.metric_names(variables["model"]["definition"].split("(", 1)[1].split(",")[0]) <= promql.known_names()


def test_dashboard_panels_have_unique_ids_and_queries() -> None:
    panels = _dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"]), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_dashboard_reads_only_defined_metrics() -> None:
    panels = _dashboard()["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert promql.unknown_names(exprs) == {}
    used = set().union(*(promql.metric_names(e) for e in exprs))
    # The panels the dashboard promises are there.
    for name in (
        "model_version:recsys_precision_at_k:ratio_rate5m", "model_track:recsys_precision_at_k:ratio_rate5m",
        "retrain_controller_canary_weight", "retrain_controller_canary_verdicts_total", "retrain_controller_runs",
        "retrain_controller_run_transitions_total", "retrain_controller_pipeline_errors_total",
        "retrain_controller_http_request_duration_seconds_bucket",
    ):  # fmt: skip
        assert name in used, name


def test_metric_name_scan_catches_an_undefined_metric() -> None:
    assert promql.unknown_names(['sum by (model) (rate(recsys_clicks_total{model=~"$model"}[5m]))']) == {
        'sum by (model) (rate(recsys_clicks_total{model=~"$model"}[5m]))': {"recsys_clicks_total"}
    }
    assert promql.metric_names('histogram_quantile(0.99, sum by (le) (rate(x_bucket{a="b or c"}[$__rate_interval]))) offset 1w') == {"x_bucket"}
