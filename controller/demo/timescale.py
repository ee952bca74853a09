"""The production rules and Alertmanager config of `prometheus/`, played faster for the demo.

Every duration (range windows, `offset`, `for:`, Alertmanager's group and repeat timings) is multiplied by
`factor` (e.g. 1/120: an hour becomes 30 s), but never below `floor`, so a rate window still spans a few scrapes.
The precision floor of RecsysPrecisionAtKDrop is set for the demo's model (production's 0.02 is about half of a
real recommender's precision; the demo's is about 0.2). Pure text in, text out: the demo writes the results
next to its Prometheus and Alertmanager.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import yaml

from controller.core.durations import parse_duration

_DURATION = r"\d+(?:\.\d+)?(?:ms|s|m|h|d|w)(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))*"
_RANGE = re.compile(rf"\[({_DURATION})(?::({_DURATION})?)?\]")
_OFFSET = re.compile(rf"\boffset\s+({_DURATION})")
_FLOOR = re.compile(r"(model:recsys_precision_at_k:ratio_rate1h\s*<\s*)(\d+(?:\.\d+)?)(?![\d.eE])(?!\s*\*)")
PRECISION_ALERT = "RecsysPrecisionAtKDrop"


def scaled(text: str | timedelta, factor: float, floor: timedelta = timedelta(0)) -> timedelta:
    return max(parse_duration(text) * factor, floor)


def prom_duration(value: timedelta) -> str:
    """Whole milliseconds, as Prometheus and Alertmanager parse them."""
    ms = max(1, round(value.total_seconds() * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scale_promql(expr: str, factor: float, floor: timedelta) -> str:
    def window(m: re.Match[str]) -> str:
        out = prom_duration(scaled(m.group(1), factor, floor))
        if m.group(0).find(":") >= 0:  # a subquery [range:step]; an empty step stays the default
            out += ":" + (prom_duration(scaled(m.group(2), factor, floor)) if m.group(2) else "")
        return f"[{out}]"

    expr = _RANGE.sub(window, expr)
    return _OFFSET.sub(lambda m: "offset " + prom_duration(scaled(m.group(1), factor, floor)), expr)


def demo_rules(text: str, factor: float, floor: timedelta, precision_floor: float,
               for_floor: timedelta = timedelta(0)) -> str:
    """A rules file of `prometheus/` (recording or alerting) with its durations scaled (`for:` never below
    `for_floor`); in the alert file, the precision floor replaced. Raises ValueError if the precision alert is there but its floor cannot be found,
    so a change to the production rule cannot silently leave the demo without its story."""
    doc = yaml.safe_load(text)
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            rule["expr"] = scale_promql(rule["expr"], factor, floor)
            if "for" in rule:
                rule["for"] = prom_duration(scaled(rule["for"], factor, max(floor, for_floor)))
            if rule.get("alert") == PRECISION_ALERT:
                rule["expr"], found = _FLOOR.subn(lambda m: f"{m.group(1)}{precision_floor:g}", rule["expr"])
                if not found:
                    raise ValueError(f"{PRECISION_ALERT}: no `ratio_rate1h < <floor>` in its expression")
                for key, value in rule.get("annotations", {}).items():
                    rule["annotations"][key] = value.replace("floor of 0.02", f"floor of {precision_floor:g}")
    return yaml.safe_dump(doc, sort_keys=False, width=120)


def demo_alertmanager(text: str, factor: float, floor: timedelta, webhook_url: str, token_file: str) -> str:
    """prometheus/alertmanager.yml with timings scaled, the controller's receiver pointed at the demo's controller
    and the human receiver silenced (the demo has nobody to page; the status page shows every alert)."""
    doc: dict[str, Any] = yaml.safe_load(text)
    glob = doc.setdefault("global", {})
    if "resolve_timeout" in glob:
        glob["resolve_timeout"] = prom_duration(scaled(glob["resolve_timeout"], factor, floor))

    def route(node: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in node:
                node[key] = prom_duration(scaled(node[key], factor, floor))
        for child in node.get("routes", []):
            route(child)

    route(doc["route"])
    seen = False
    for receiver in doc["receivers"]:
        if receiver["name"] == "retrain-controller":
            seen = True
            for hook in receiver["webhook_configs"]:
                hook["url"] = webhook_url
                hook["http_config"]["authorization"]["credentials_file"] = token_file
        else:
            for key in [k for k in receiver if k.endswith("_configs")]:
                del receiver[key]
    if not seen:
        raise ValueError("alertmanager.yml has no `retrain-controller` receiver")
    return yaml.safe_dump(doc, sort_keys=False, width=120)
