"""What the shipped Prometheus artifacts name: metric names in PromQL, recording rules, documented and own metrics.

A small lexical scan, not a PromQL parser: enough to say which metric names an expression reads, so a test can
check every one of them is defined somewhere (a recording rule, the model service's documented metrics, the
controller's own metrics, or Prometheus' `up`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "prometheus"
RECORDING_RULES = PROMETHEUS_DIR / "recording-rules.yml"
ALERT_RULES = PROMETHEUS_DIR / "alert-rules.yml"
ALERTMANAGER_CONFIG = PROMETHEUS_DIR / "alertmanager.yml"
DASHBOARD = PROMETHEUS_DIR / "grafana-dashboard.json"
OBSERVABILITY = ROOT / "controller" / "observability.py"

BUILTIN = {"up"}  # Prometheus' own series about each target
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "inf", "nan", "atan2",
}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (functions, keywords, labels, durations and variables left out)."""
    text = _STRING.sub(" ", expr)
    text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENT.findall(text) if name.lower() not in KEYWORDS}


def rule_groups(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["groups"])


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in rule_groups(path) for rule in group["rules"]]


def recording_rule_names() -> set[str]:
    return {r["record"] for r in rules(RECORDING_RULES) if "record" in r}


_DOCUMENTED = re.compile(r"^#\s+(recsys_\w+)\{[^}]*\}\s+(counter|gauge|histogram)\b", re.M)


def documented_model_metrics() -> dict[str, str]:
    """The model service's metrics as recording-rules.yml's header documents them: name -> type."""
    return dict(_DOCUMENTED.findall(RECORDING_RULES.read_text()))


_OWN = re.compile(r'\b(Counter|Gauge|Histogram)\(\s*p\s*\+\s*"(\w+)"')


def controller_metrics() -> dict[str, str]:
    """The controller's own metrics (controller/observability.py): full name -> type."""
    return {"retrain_controller_" + name: kind.lower() for kind, name in _OWN.findall(OBSERVABILITY.read_text())}


def series_names(metrics: dict[str, str]) -> set[str]:
    """The series names a set of metrics exposes (a histogram exposes _bucket, _count and _sum)."""
    names: set[str] = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return names


def known_names() -> set[str]:
    return (
        recording_rule_names()
        | series_names(documented_model_metrics())
        | series_names(controller_metrics())
        | BUILTIN
    )


def unknown_names(exprs: Iterable[str]) -> dict[str, set[str]]:
    known = known_names()
    found = {}
    for expr in exprs:
        missing = metric_names(expr) - known
        if missing:
            found[expr] = missing
    return found
