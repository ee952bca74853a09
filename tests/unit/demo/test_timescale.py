"""The demo plays the production rules of prometheus/ faster: durations scaled, the precision floor set."""

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from controller.demo.timescale import demo_alertmanager, demo_rules, prom_duration, scale_promql

ROOT = Path(__file__).resolve().parents[3]
S4 = timedelta(seconds=4)


@pytest.mark.parametrize("seconds, text", [(20, "20s"), (0.5, "500ms"), (4, "4s"), (3600, "3600s"), (1.0005, "1s"),
                                           (0.0001, "1ms")])  # fmt: skip
def test_prom_duration(seconds, text):
    assert prom_duration(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(
    "expr, want",
    [
        ("rate(x[5m])", "rate(x[4s])"),  # 2.5 s is under the 4 s floor
        ("rate(x[1h])", "rate(x[30s])"),
        ("rate(x[1h30m])", "rate(x[45s])"),
        ("x offset 1w", "x offset 5040s"),
        ("max_over_time(rate(x[1h])[1d:5m])", "max_over_time(rate(x[30s])[720s:4s])"),
        ("max_over_time(x[1d:])", "max_over_time(x[720s:])"),
        ("model:recsys_precision_at_k:ratio_rate1h < 0.02", "model:recsys_precision_at_k:ratio_rate1h < 0.02"),
        ('x{le="5m"}', 'x{le="5m"}'),  # only range selectors and offsets are durations
    ],
)
def test_scale_promql(expr, want):
    assert scale_promql(expr, 1 / 120, S4) == want


def _rules(path: str, **kw) -> dict:
    text = (ROOT / "prometheus" / path).read_text()
    return {r.get("alert") or r["record"]: r for g in yaml.safe_load(demo_rules(text, 1 / 120, S4, 0.172, **kw))["groups"]
            for r in g["rules"]}  # fmt: skip


def test_the_production_alerts_come_out_scaled_with_the_demo_floor():
    rules = _rules("alert-rules.yml", for_floor=timedelta(seconds=8))
    drop = rules["RecsysPrecisionAtKDrop"]
    assert "ratio_rate1h < 0.172" in drop["expr"]
    assert "< 0.8 * (model:recsys_precision_at_k:ratio_rate1h offset 5040s)" in drop["expr"]  # the relative side stays
    assert drop["for"] == "8s"  # 15m / 120 = 7.5 s, held at least 8 s
    assert "floor of 0.172" in drop["annotations"]["description"]
    assert rules["RecsysFeatureDrift"]["for"] == "15s"
    assert "[4s]" in rules["RecsysEventStreamDown"]["expr"] and "[30s]" in rules["RecsysEventStreamDown"]["expr"]


def test_recording_rules_keep_their_names_and_scale_their_windows():
    rules = _rules("recording-rules.yml")
    assert "model:recsys_precision_at_k:ratio_rate1h" in rules  # a name, not a duration
    assert "[30s]" in rules["model:recsys_precision_at_k:ratio_rate1h"]["expr"]
    assert "[4s]" in rules["model_track:recsys_precision_at_k:ratio_rate5m"]["expr"]


def test_a_precision_alert_without_its_floor_is_an_error_not_a_silent_demo():
    text = "groups: [{name: g, rules: [{alert: RecsysPrecisionAtKDrop, expr: 'x < 0.8 * y', for: 15m}]}]"
    with pytest.raises(ValueError, match="RecsysPrecisionAtKDrop"):
        demo_rules(text, 1 / 120, S4, 0.1)


def test_alertmanager_points_at_the_demo_controller_and_pages_nobody():
    text = (ROOT / "prometheus" / "alertmanager.yml").read_text()
    doc = yaml.safe_load(demo_alertmanager(text, 1 / 120, timedelta(seconds=1), "http://127.0.0.1:9/api/v1/alerts",
                                           "/tmp/token"))  # fmt: skip
    assert doc["route"]["group_wait"] == "1s" and doc["route"]["group_interval"] == "2500ms"
    controller = doc["route"]["routes"][0]
    assert controller["receiver"] == "retrain-controller" and controller["repeat_interval"] == "120s"
    receivers = {r["name"]: r for r in doc["receivers"]}
    hook = receivers["retrain-controller"]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:9/api/v1/alerts"
    assert hook["http_config"]["authorization"]["credentials_file"] == "/tmp/token"
    assert hook["send_resolved"] is True and hook["max_alerts"] == 0
    assert receivers["humans"] == {"name": "humans"}
    assert doc["inhibit_rules"]  # kept as production has them
